"""What the command-line programs share (``examples/*.py``, ``python -m tinymixer...``): ``--help`` that shows
every default, one-line errors with exit code 2, and option types that check their range up front."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from ..backend import ENV_VAR


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default, except the empty ones (None, and False for on/off flags)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=120)

    def _get_help_string(self, action: argparse.Action) -> str:
        # ``is``, not ``in (None, False)``: 0 == False, and a default of 0 (--seed, --weight-decay) is shown
        empty = action.default is None or action.default is False
        return action.help if empty else super()._get_help_string(action)


class HelpWithExamples(HelpWithDefaults, argparse.RawDescriptionHelpFormatter):
    """--help with every default shown, and the description's and epilog's lines (examples) kept as written."""


def fail(message: str, prog: str | None = None, speak: bool = True) -> NoReturn:
    """A problem found after parsing (a missing file, options that do not fit together): one line on stderr,
    ``prog: error: message``, and exit code 2, as ``Parser``'s own errors. ``speak=False`` exits without a word
    (the other ranks of a data-parallel run, which find the same problem as rank 0)."""
    if speak:
        print(f"{prog}: error: {message}" if prog else f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (argparse's own prints the whole usage first), exit code 2,
    and whose --help shows the defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpWithDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def number(kind: type, low: float, high: float | None = None, low_open: bool = False, high_open: bool = False
           ) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` (int or float) in [low, high] (open at either end with ``low_open``,
    ``high_open``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            kind_name = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind_name}") from None
        too_low = value < low or (low_open and value == low)
        too_high = high is not None and (value > high or (high_open and value == high))
        if not math.isfinite(value) or too_low or too_high:
            bounds = f"{'>' if low_open else '>='} {low}" + (f" and {'<' if high_open else '<='} {high}"
                                                            if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value
    return parse


positive_int = number(int, 1)


def duration(text: str) -> float:
    """An argparse type: a duration in seconds from "90s", "10m", "1.5h" or a bare number of seconds (> 0)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number_part, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number_part) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: give e.g. 90s, 10m or 1.5h") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"a duration must be positive, got {text}")
    return seconds


def backend_label(backend: str) -> str:
    """How an error names the backend a program was asked for: ``--backend X``, or ``$TINYMIXER_BACKEND=X`` when
    the value is the variable's (``add_backend_option``'s default; a user who never typed --backend should not
    be told to fix it). A value outside --backend's choices can only have come from the variable."""
    from_environment = os.environ.get(ENV_VAR, "").strip().lower() == backend
    return f"${ENV_VAR}={backend}" if from_environment else f"--backend {backend}"


def add_backend_option(parser: argparse.ArgumentParser, fallback: str = "auto") -> None:
    """--backend numpy|cupy|auto, defaulting to $TINYMIXER_BACKEND when it is set (so the variable is honoured by
    every program: a program that passed its own "auto" would override it), else to ``fallback``."""
    default = os.environ.get(ENV_VAR, "").strip().lower() or fallback
    parser.add_argument("--backend", default=default, choices=["auto", "numpy", "cupy"],
                        help=f"array library: numpy (CPU), cupy (GPU), auto (cupy where a GPU runs it); the default "
                             f"is ${ENV_VAR} when set, else {fallback}")
