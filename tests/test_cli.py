"""The command-line conventions shared by the programs."""

from __future__ import annotations

import argparse

import pytest

from tinymixer.tools.cli import Parser, duration, number


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("1.5h", 5400), ("42", 42)])
def test_durations(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5m", "ten", "5x", "infm", ""])
def test_bad_durations(text):
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_numbers_are_range_checked_and_errors_are_one_line(capsys):
    parser = Parser(prog="p")
    parser.add_argument("--lr", type=number(float, 0, low_open=True), default=0.1, help="rate")
    assert parser.parse_args(["--lr", "0.5"]).lr == 0.5
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--lr", "0"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "must be > 0, got 0" in err
    assert "(default: 0.1)" in parser.format_help()
