"""`GraphError`: a serving graph definition is invalid; the message names where.

It lives in its own module for now and will move into `schemas.errors` with the rest of the
hierarchy; import it from here until then.

>>> err = GraphError("root.ensemble.members[1]", 'unknown model "tre"')
>>> str(err)
'root.ensemble.members[1]: unknown model "tre"'
>>> (err.path, err.detail)
('root.ensemble.members[1]', 'unknown model "tre"')
"""

from __future__ import annotations

from schemas.errors import RiverstreamError


class GraphError(RiverstreamError):
    """A graph definition is invalid (or does not fit the models it names): ``path`` says where
    in the document (``root.switch.cases[0].when``), ``detail`` what is wrong."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(path, detail)  # both in args: the error pickles and unpickles
        self.path = path
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"
