"""The command-line conventions shared by the programs."""

from __future__ import annotations

import argparse

import pytest

from tinymixer.util.cli import Parser, duration, number


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


def test_every_program_takes_its_backend_default_from_the_environment(monkeypatch):
    """TINYMIXER_BACKEND is honoured by every program: their --backend defaults to it (a program passing its own
    "auto" to set_backend would override it, and put the tests and the benchmark's workers on a GPU unasked)."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "experiments"))
    try:
        import common
        import permutations
    finally:
        sys.path.remove(str(root / "experiments"))
    from tinymixer.tools import bench

    def parser_of(name):
        spec = importlib.util.spec_from_file_location(f"{name}_env", root / "examples" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.build_parser()

    from tinymixer.trainer import options

    builders = {"cifar10": options.build_parser, "predict": lambda: parser_of("predict"),
                "fewshot": lambda: parser_of("fewshot"), "bench": bench._parser,
                "experiments": lambda: common.build_parser("x", "y", permutations.PRESETS, "permutations")}
    for value, bench_default in [(None, "numpy"), ("numpy", "numpy"), ("cupy", "cupy"), ("auto", "auto")]:
        if value is None:
            monkeypatch.delenv("TINYMIXER_BACKEND", raising=False)
        else:
            monkeypatch.setenv("TINYMIXER_BACKEND", value)
        for name, build in builders.items():
            expected = bench_default if name == "bench" else (value or "auto")
            assert build().get_default("backend") == expected, (name, value)


def test_fail_is_one_line_and_exit_2_and_can_stay_quiet(capsys):
    from tinymixer.util import cli

    with pytest.raises(SystemExit) as stop:
        cli.fail("no such file x.npz", "prog.py")
    assert stop.value.code == 2 and capsys.readouterr().err == "prog.py: error: no such file x.npz\n"
    with pytest.raises(SystemExit) as stop:
        cli.fail("the same problem on another rank", "prog.py", speak=False)
    assert stop.value.code == 2 and capsys.readouterr().err == ""
