"""Every lesson runs top to bottom, headless, in quick mode, and writes its figures (a failing lesson fails CI).

Quick mode must still show each lesson's point, so some tests read what a lesson prints. The notebooks
lessons/NN_*.ipynb are generated from the scripts; one test keeps them in step, another executes them in a real
Jupyter kernel.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

LESSONS_DIR = Path(__file__).resolve().parents[1] / "lessons"
LESSONS = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.py"))


def quick_env(figures: Path) -> dict[str, str]:
    env = dict(os.environ, TINYMIXER_QUICK="1", TINYMIXER_FIGURES=str(figures), MPLBACKEND="Agg",
               TINYMIXER_BACKEND="numpy")
    env.pop("DISPLAY", None)
    return env


@dataclass
class LessonRun:
    returncode: int
    stdout: str
    stderr: str
    figures: list[Path]


@pytest.fixture(scope="session")
def run_lesson(tmp_path_factory):
    """Runs a lesson script in quick mode once per test session and returns what it printed and drew."""
    done: dict[str, LessonRun] = {}

    def run(stem: str) -> LessonRun:
        if stem not in done:
            figures = tmp_path_factory.mktemp(stem)
            result = subprocess.run([sys.executable, f"{stem}.py"], cwd=LESSONS_DIR, env=quick_env(figures),
                                    capture_output=True, text=True, timeout=300)
            done[stem] = LessonRun(result.returncode, result.stdout, result.stderr, sorted(figures.glob("*.png")))
        return done[stem]

    return run


def test_there_are_eighteen_lessons():
    assert len(LESSONS) == 18


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
@pytest.mark.slow
def test_lesson_runs_in_quick_mode(lesson, run_lesson):
    run = run_lesson(lesson.stem)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.figures and all(f.stat().st_size > 5000 for f in run.figures), run.figures


def printed_line(stdout: str, start: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith(start)]
    assert len(lines) == 1, f"expected one line starting with {start!r} in:\n{stdout}"
    return lines[0]


def accuracies(stdout: str, start: str) -> dict[str, float]:
    """{"train": 99.7, "test": 55.2} from the line '<start> ... train accuracy 99.7%, test accuracy 55.2%'."""
    found = re.findall(r"(train|test) accuracy\s+(\d+\.\d)%", printed_line(stdout, start))
    return {kind: float(value) for kind, value in found}


def test_lesson_5_opens_with_a_sentence_then_the_two_labelled_lines_of_code(run_lesson):
    lines = run_lesson("05_token_vs_channel_mixing").stdout.splitlines()
    assert lines[0].startswith("In tinymixer/nn/blocks.py"), lines[:3]  # not a bare line of source code
    assert re.fullmatch(r"\s+token_mixing_forward\s+return mlp_block_forward\(.*axis=-2.*\)", lines[1]), lines[1]
    assert re.fullmatch(r"\s+channel_mixing_forward\s+return mlp_block_forward\(.*axis=-1.*\)", lines[2]), lines[2]


def chance(stdout: str) -> float:
    """The chance level in percent, as the lesson prints it: '(chance: 33%)'."""
    return float(re.search(r"\(chance: (\d+)%\)", stdout).group(1))


def test_lesson_9_quick_mode_learns_overfits_and_augmentation_narrows_the_gap(run_lesson):
    out = run_lesson("09_training").stdout
    plain, augmented = accuracies(out, "no augmentation"), accuracies(out, "crop + flip")
    assert min(plain["test"], augmented["test"]) > 1.5 * chance(out), out  # it learns: far above chance
    assert plain["train"] - plain["test"] > 20, out  # it overfits: a wide train-test gap
    assert augmented["train"] - augmented["test"] < (plain["train"] - plain["test"]) / 2, out  # augmentation narrows it


def test_lesson_10_quick_mode_learns_and_moves_the_weights_away_from_the_initialisation(run_lesson):
    out = run_lesson("10_looking_inside").stdout
    assert accuracies(out, "trained:")["train"] > 1.5 * chance(out), out
    moved = re.search(r"moved (\d+)% of its norm", printed_line(out, "token-mixing kernel"))
    assert int(moved.group(1)) >= 25, out  # visibly different pictures (about half in full mode)
    smooth = re.search(r"at initialisation (\S+), trained (\S+), trained - initial (\S+)",
                       printed_line(out, "neighbouring patches"))
    initial, _, added = (float(x) for x in smooth.groups())
    assert abs(initial) < 0.2 and added > 0.3 and added > initial + 0.25, out  # what training added is smooth
    assert float(re.search(r"what training added (\S+)", printed_line(out, "stem filters"))[1]) > 0.5, out


def test_lesson_11_quick_mode_shows_exact_invariance_and_the_global_shuffle_costing_accuracy(run_lesson):
    out = run_lesson("11_permutation_invariance").stdout
    original, shuffled = accuracies(out, "original"), accuracies(out, "patches + pixels shuffled")
    global_shuffle = accuracies(out, "all pixels shuffled")
    assert original == shuffled, out  # the same model in permuted coordinates: the same accuracies
    assert original["test"] > 1.5 * chance(out), out  # far above chance, so that the equality means something
    assert global_shuffle["test"] < original["test"] - 10, out


def test_lesson_13_quick_mode_ranks_add_up_to_one_process_and_the_mean_of_means_does_not(run_lesson):
    out = run_lesson("13_data_parallel").stdout
    differences = {split: [float(x) for x in printed_line(out, split).split()[-2:]]  # [weighted sum, mean of means]
                   for split in ["2 ranks, shard_of", "3 ranks, shard_of", "3 ranks, lopsided"]}
    assert all(right < 1e-13 for right, _ in differences.values()), out  # the one-process gradient, to rounding
    assert differences["2 ranks, shard_of"][1] < 1e-13, out  # equal shards: averaging means is the same thing
    assert min(differences["3 ranks, shard_of"][1], differences["3 ranks, lopsided"][1]) > 1e-3, out  # unequal: wrong
    after = re.search(r"largest weight difference / largest weight (\S+); the 3 ranks' weights bit-identical: True",
                      printed_line(out, "after "))
    assert after and float(after.group(1)) < 1e-13, out
    assert printed_line(out, "tiny/4 ").split()[1:3] == ["1,132,170", "4.5"], out  # 4 bytes per parameter




def test_lesson_15_checks_crops_flips_and_that_mixing_losses_is_mixing_labels(run_lesson):
    out = run_lesson("15_data_and_augmentation").stdout
    assert "every view is a shifted window of the padded image; a flip undone by a second flip: checked" in out
    mixed = re.search(r"mixed loss (\S+); cross-entropy on the mixed labels (\S+); gradient \(p - q\)/B: largest "
                      r"difference (\S+)", printed_line(out, "mixed loss"))
    assert mixed[1] == mixed[2] and float(mixed[3]) < 1e-15, out
    cut = re.search(r"lam (\S+) = 1 - box area / image area; pixels still the image's own: (\S+)",
                    printed_line(out, "mixup: lam"))
    assert abs(float(cut[1]) - float(cut[2])) < 0.02, out
    assert "the same seed gives the same batch; the first 8 rows made alone are the batch's first 8 rows" in out


def test_lesson_16_keeps_the_expectation_checks_both_backwards_and_regularises(run_lesson):
    out = run_lesson("16_dropout_and_stochastic_depth").stdout
    assert float(re.search(r"largest gap (\S+) standard errors", out)[1]) < 5, out
    assert "evaluation equals the plain network: True; two training passes with the same seed agree: True; with " \
           "another seed they differ: True" in out
    depth = [float(x) for x in re.findall(r"\(0\.1, (\S+)\)", printed_line(out, "micro/4 with dropout"))]
    assert depth == [0.0, 0.033, 0.067, 0.1], out  # rising linearly from 0 at the first block
    plain = re.search(r"final train loss ([\d.]+), test loss ([\d.]+)", printed_line(out, "plain "))
    noisy = re.search(r"final train loss ([\d.]+), test loss ([\d.]+)", printed_line(out, "dropout 0.1 + depth 0.2"))
    assert float(noisy[1]) > float(plain[1]) and float(noisy[2]) < float(plain[2]), out


def test_lesson_17_shows_equivariance_locality_and_the_cnns_lead_on_local_motifs(run_lesson):
    out = run_lesson("17_cnn_beside_the_mixer").stdout
    assert "one 3x3 convolution 9 pixels, two 25 pixels, one token mixing 16 of 16 tokens" in out
    conv = float(re.search(r"away from the border: largest difference (\S+)", out)[1])
    mixing = float(re.search(r"mix then roll: largest difference (\S+)", out)[1])
    assert conv < 1e-13 and mixing > 0.1, out
    cnn, mixer = accuracies(out, "CNN   on  400 images"), accuracies(out, "Mixer on  400 images")
    more = accuracies(out, "Mixer on 2000 images")
    assert cnn["test"] > 95 and mixer["test"] < cnn["test"] - 20 and mixer["train"] > 90, out  # it memorises
    assert more["test"] > mixer["test"] + 20, out  # and learns the task from more data


def test_lesson_18_reads_the_layout_starts_at_ln_k_transfers_and_keeps_the_mosaic_property(run_lesson):
    out = run_lesson("18_pretrained_models").stdout
    assert "the loaded model's logits equal the saved one's: True" in out
    assert re.search(r"with the zero head: test loss 0\.69314\d \(ln 2 = 0\.693147\)", out), out
    tuned = float(re.search(r"fine-tuned from x/plus: test accuracy (\S+)%", out)[1])
    scratch = float(re.search(r"from scratch\s+: test accuracy (\S+)%", out)[1])
    assert tuned > scratch + 10, out
    assert float(re.search(r"on the tiles: largest difference (\S+)", out)[1]) < 1e-4, out
    big = re.search(r"before fine-tuning (\S+)%, after 3 epochs on \d+ images (\S+)%; a fresh 32x32 Mixer after "
                    r"the same 3 epochs (\S+)%", out)
    assert 55 < float(big[1]) and float(big[2]) > float(big[3]) + 10, out


def test_the_answers_that_can_be_checked_hold():
    """lessons/ANSWERS.md: every python block runs and its assertions hold (from lessons/, as a learner runs it)."""
    text = (LESSONS_DIR / "ANSWERS.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 24
    for code in blocks:
        exec(compile(code, str(LESSONS_DIR / "ANSWERS.md"), "exec"), {})
    sections = dict(re.findall(r"^## Lesson (\d+) .*?\n(.*?)(?=^## |\Z)", text, re.S | re.M))
    for lesson in LESSONS:  # every numbered exercise of every lesson has its answer
        source = lesson.read_text()
        exercises = re.findall(r"^# (\d+)\. ", source.split("# ## Exercises")[-1], re.M)
        number = str(int(lesson.stem[:2]))
        assert exercises and number in sections, lesson.name
        answered = re.findall(r"^\*\*(\d+)\.", sections[number], re.M)
        assert answered == exercises, (lesson.name, exercises, answered)
    for lesson in LESSONS[14:]:  # the new chapters point to their answers
        assert "lessons/ANSWERS.md" in lesson.read_text()

# ----------------------------------------------------------------------------------------------------------------
# "Your turn": every one of lessons 2-8 has a stub a learner fills in, and a check of it


YOUR_TURN = re.compile(r'exercises\.check\("(\w+)", (my_\w+)\)')


@pytest.mark.parametrize("lesson", LESSONS[1:8], ids=[p.stem for p in LESSONS[1:8]])
@pytest.mark.slow
def test_lessons_2_to_8_each_have_a_checkable_exercise(lesson, run_lesson):
    from tinymixer import exercises

    source = lesson.read_text()
    found = YOUR_TURN.findall(source)
    assert found, f"{lesson.name} has no 'your turn' cell calling exercises.check"
    run = run_lesson(lesson.stem)
    for name, stub in found:
        assert name in exercises.names()
        assert re.search(rf"def {stub}\(.*\):\n(    .*\n)*    raise NotImplementedError", source), stub
        assert f"{name}: not implemented yet" in run.stdout  # the stub, checked: what a learner sees first
        assert exercises._exercise(name).lesson == int(lesson.name[:2])


def test_every_exercise_is_in_a_lesson():
    from tinymixer import exercises

    in_lessons = {name for lesson in LESSONS for name, _ in YOUR_TURN.findall(lesson.read_text())}
    assert in_lessons == set(exercises.names())


# ----------------------------------------------------------------------------------------------------------------
# The notebooks


def load_make_notebooks():
    spec = importlib.util.spec_from_file_location("make_notebooks", LESSONS_DIR / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_cuts_cells_at_the_percent_markers():
    make_notebooks = load_make_notebooks()
    script = "# %% [markdown]\n# # Title\n#\n# Some *text*.\n\n# %%\nx = 1\n\n\ny = x\n\n# %%\nprint(y)\n"
    assert make_notebooks.split_cells(script) == [("markdown", ["# Title", "", "Some *text*."]),
                                                  ("code", ["x = 1", "", "", "y = x"]),
                                                  ("code", ["print(y)"])]


def test_committed_notebooks_are_what_the_generator_writes_from_the_scripts():
    make_notebooks = load_make_notebooks()
    assert [p.stem for p in sorted(LESSONS_DIR.glob("[0-9][0-9]_*.ipynb"))] == [p.stem for p in LESSONS]
    stale = make_notebooks.stale_notebooks(LESSONS_DIR)
    assert not stale, (f"notebooks out of date with their scripts: {', '.join(p.name for p in stale)}; "
                       f"regenerate them with: {make_notebooks.COMMAND}")


def notebook_tools():
    """nbformat and nbclient; under CI (the CI variable set) they are required, elsewhere the test is skipped."""
    if os.environ.get("CI"):
        import ipykernel  # noqa: F401 - the kernel the notebooks run in
        import nbclient
        import nbformat
    else:
        pytest.importorskip("ipykernel")
        nbclient = pytest.importorskip("nbclient")
        nbformat = pytest.importorskip("nbformat")
    return nbclient, nbformat


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
@pytest.mark.slow
def test_notebook_executes_in_a_jupyter_kernel_in_quick_mode(lesson, tmp_path, monkeypatch):
    nbclient, nbformat = notebook_tools()
    # The kernel inherits this process's environment: quick mode, and no MPLBACKEND (as CI sets), so that it uses
    # Jupyter's inline backend and shows the figures in the cells, as a learner's kernel does.
    monkeypatch.setenv("TINYMIXER_QUICK", "1")
    monkeypatch.setenv("TINYMIXER_FIGURES", str(tmp_path))
    monkeypatch.setenv("TINYMIXER_BACKEND", "numpy")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    notebook = nbformat.read(lesson.with_suffix(".ipynb"), as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(LESSONS_DIR)}})  # cwd: lessons/
    client.execute()

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    outputs = [output for cell in code_cells for output in cell.outputs]
    text = "\n".join(str(output) for output in outputs)
    assert "PosixPath" not in text
    stray = [cell.source.splitlines()[-1] for cell in code_cells
             if any(output.output_type == "execute_result" for output in cell.outputs)]
    assert not stray, f"cells whose last line displays a value: {stray}"
    shown = sum("image/png" in output.get("data", {}) for output in outputs)
    assert shown == len(list(tmp_path.glob("*.png"))) > 0  # every saved figure is also shown in the notebook


@pytest.mark.slow
def test_lesson_9_exercise_1_warmup_shows_at_a_large_rate():
    """Lesson 9's first exercise says: in quick mode, 3 epochs at lr 2.0 without warm-up drive the train loss far
    above chance (ln 3), with 30 warm-up steps it stays near it; at lr 0.5 the two are alike."""
    import math

    import numpy as np

    import tinymixer as tm
    from tinymixer.data import SHAPE_NAMES, synthetic_shapes
    from tinymixer.training.train import fit

    images, labels = synthetic_shapes(1800, size=16, seed=0)
    new_label = np.full(len(SHAPE_NAMES), -1)
    new_label[[SHAPE_NAMES.index(n) for n in ("disc", "square", "bar")]] = np.arange(3)
    keep = new_label[labels] >= 0
    x, y = images[keep][:600], new_label[labels[keep]][:600]

    def worst_loss(lr, warmup):
        model = tm.MlpMixer(num_classes=3, num_blocks=2, patch_size=4, hidden_dim=32, tokens_mlp_dim=16,
                            channels_mlp_dim=64, image_size=16)  # lesson_utils.training_model in quick mode
        return max(e["train_loss"] for e in fit(model, x, y, epochs=3, batch_size=32, lr=lr, warmup=warmup))

    chance = math.log(3)
    assert worst_loss(2.0, 0) > 2 * chance and worst_loss(2.0, 30) < 1.3 * chance
    assert abs(worst_loss(0.5, 0) - worst_loss(0.5, 30)) < 0.1
