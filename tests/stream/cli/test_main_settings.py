"""A setting that does not parse is the operator's to fix: one line naming the variable, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
RUN = "import sys; from stream.cli.main import main; sys.argv = ['riverstream', *sys.argv[1:]]; main()"


def test_a_setting_that_does_not_parse_is_named_without_its_value_or_a_traceback(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "RIVERSTREAM_SERVE_PORT": "not-a-port-7f3a",
           "RIVERSTREAM_PARTITIONS": "many-9c1e"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", RUN, "serve"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    said = result.stdout + result.stderr
    assert result.returncode == 2, said
    assert "Traceback" not in said
    assert "RIVERSTREAM_SERVE_PORT" in said and "RIVERSTREAM_PARTITIONS" in said
    assert "not-a-port-7f3a" not in said and "many-9c1e" not in said  # a value may be a secret
