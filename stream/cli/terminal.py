"""What the CLI writes for people: errors and other text that is never read as rich markup.

rich reads ``[word]`` in a printed string as a style tag and drops it, so an exception or a
path printed inside an f-string loses part of itself: ``pip install 'riverstream[parquet]'``
came out as ``pip install 'riverstream'``. Text from outside the code (exceptions, rejection
reasons, paths, names, reasons given by operators) is therefore printed as a rich `Text`, which
is never parsed, with its style given apart: `print_error` and `print_text` here, and `Text`
cells in tables. ``rich.markup.escape`` is not used: it doubles a trailing backslash.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from schemas.errors import RiverstreamError

err = Console(stderr=True)


def print_error(message: object, console: Console = err) -> None:
    """``error: MESSAGE`` (the label in bold red, the message exactly as it is), unwrapped."""
    console.print(Text.assemble(("error:", "bold red"), " ", str(message)), soft_wrap=True)


def print_text(text: object, console: Console = err, *, style: str = "") -> None:
    """``text`` exactly as it is, in ``style`` (``"dim"``, ``"yellow"``...), unwrapped."""
    console.print(Text(str(text), style=style), soft_wrap=True)


def emit(console: Console, as_json: bool, data: Any, text: str) -> None:
    """``data`` as JSON (``--json``), else ``text`` exactly as it is, on ``console``."""
    if as_json:
        console.print_json(json.dumps(data))
    else:
        print_text(text, console)


def local_time(t: float) -> str:
    """Epoch seconds ``t`` as this machine's local date and time, to the second.

    >>> len(local_time(0.0)) == len("1970-01-01 00:00:00")
    True
    """
    return dt.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="seconds")


@contextlib.contextmanager
def exit_on_error(code: int = 2) -> Iterator[None]:
    """A `RiverstreamError` raised inside becomes ``error: …`` on stderr and exit ``code``."""
    try:
        yield
    except RiverstreamError as exc:
        print_error(exc)
        raise typer.Exit(code) from None
