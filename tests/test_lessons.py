"""Every lesson runs top to bottom, headless, in quick mode, and writes its figures (a failing lesson fails CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LESSONS = sorted((Path(__file__).resolve().parents[1] / "lessons").glob("[0-9][0-9]_*.py"))


def test_there_are_twelve_lessons():
    assert len(LESSONS) == 12


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_in_quick_mode(lesson, tmp_path):
    env = dict(os.environ, TINYMIXER_QUICK="1", TINYMIXER_FIGURES=str(tmp_path), MPLBACKEND="Agg",
               TINYMIXER_BACKEND="numpy")
    env.pop("DISPLAY", None)
    result = subprocess.run([sys.executable, str(lesson)], cwd=lesson.parent, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = list(tmp_path.glob("*.png"))
    assert figures and all(f.stat().st_size > 5000 for f in figures), figures
