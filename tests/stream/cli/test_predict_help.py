"""`riverstream score --help` names every format `score` reads and writes: Parquet too."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from stream.cli.main import app


def test_the_help_names_parquet_for_input_and_output() -> None:
    result = CliRunner().invoke(app, ["score", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
    assert "FILE (.jsonl, .csv or .parquet, as `publish features` reads them)" in text, text
    assert "Answers: .jsonl, .csv or .parquet (by suffix)" in text, text
