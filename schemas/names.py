"""The one rule for names of models and graphs: used by specs, the store, the registry and
serving alike.

>>> is_model_name("lr"), is_model_name("fraud.v2-b_1"), is_model_name("-x"), is_model_name("a" * 129)
(True, True, False, False)
"""

from __future__ import annotations

import re

MODEL_NAME_MAX = 128
MODEL_NAME_RULE = (
    f"letters, digits and _ . - (at most {MODEL_NAME_MAX} characters, "
    "starting with a letter or digit)"
)
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MODEL_NAME_MAX - 1}}}")


def is_model_name(name: str) -> bool:
    """Whether ``name`` may name a model or a graph (it is used inside Redis keys)."""
    return _NAME.fullmatch(name) is not None
