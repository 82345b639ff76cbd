"""examples/cifar10.py as a newcomer meets it: own data, runs that are never lost, resume with only --out, honest
defaults and names, and every bad option a one-line error with exit code 2."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cifar10_script import DIGITS_ARGS, SCRIPT, cifar10, digits_folder, params_of

from tinymixer.trainer import options
from tinymixer.training.checkpoint import load_checkpoint, load_model

QUICK = ["--limit-train", "256", "--no-progress"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("digits"))


def run_script(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=env)


# --- 1. own data: --data-dir takes the folder or its parent, says what it found, never downloads into it ---------


@pytest.mark.slow
def test_data_dir_takes_the_folder_itself_or_its_parent(tmp_path, digits, capsys):
    folder = digits / "cifar-10-batches-py"
    for i, where in enumerate([digits, folder]):
        assert cifar10.main(["--data-dir", str(where), "--epochs", "1", "--out", str(tmp_path / str(i))] + QUICK) == 0
        assert f"data: {folder} (1437 training and 360 test images, 8x8x1, 10 classes)" in capsys.readouterr().out


def test_data_dir_without_data_is_an_error_and_nothing_is_downloaded_into_it(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data_batch_1").write_bytes(b"x")
    result = run_script("--data-dir", str(mine), "--out", str(tmp_path / "run"), "--data-url", "http://127.0.0.1:9/x")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no data set in" in result.stderr and "batches without batches.meta" in result.stderr
    assert "--download" in result.stderr  # says how to download there, if that is what the user wants
    assert sorted(p.name for p in mine.iterdir()) == ["data_batch_1"]  # untouched: no archive, no partial file


def test_arrays_to_folder_converter(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.random((50, 6, 6)), rng.integers(0, 3, 50)  # grey floats in [0, 1]
    np.savez(tmp_path / "a.npz", images=images, labels=labels, class_names=np.array(["a", "b", "c"]))
    result = subprocess.run([sys.executable, "-m", "tinymixer.data", str(tmp_path / "a.npz"), str(tmp_path / "f"),
                             "--test-size", "10"], capture_output=True, text=True)
    assert result.returncode == 0 and "40 training and 10 test images, 6x6x1, 3 classes (a, b, c)" in result.stdout
    from tinymixer.data import load_folder

    data = load_folder(tmp_path / "f")
    assert data.train_images.dtype == np.uint8 and data.class_names == ["a", "b", "c"]
    all_images = np.concatenate([data.train_images, data.test_images])[..., 0]
    assert sorted(map(bytes, all_images)) == sorted(map(bytes, np.round(images * 255).astype(np.uint8)))
    channels_first = tmp_path / "b.npz"
    np.savez(channels_first, images=rng.integers(0, 256, (20, 3, 8, 8)), labels=labels[:20])
    bad = subprocess.run([sys.executable, "-m", "tinymixer.data", str(channels_first), str(tmp_path / "g")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "channels first? Transpose" in bad.stderr and "Traceback" not in bad.stderr


def readme_own_data_commands() -> list[str]:
    import re

    page = (SCRIPT.parents[1] / "docs" / "training.md").read_text()
    section = page.split("## Train on your own data", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert blocks, "docs/training.md: no bash block in 'Train on your own data'"
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.slow
def test_readme_own_data_section_runs_as_written(tmp_path):
    """The commands of docs/training.md's "Train on your own data", as written, in a fresh folder (the script
    found at examples/ as in a checkout)."""
    pytest.importorskip("sklearn")
    (tmp_path / "examples").symlink_to(SCRIPT.parent)
    for command in readme_own_data_commands():
        result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                                env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"))
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    metrics = json.loads(next(tmp_path.glob("runs/*/metrics.json")).read_text())
    assert metrics["test_accuracy"] > 0.9  # the digits run the README quotes (97% measured; chance is 10%)


# --- 2. a finished run is never overwritten; --evaluate writes beside the checkpoint --------------------------------


@pytest.mark.slow
def test_a_new_run_refuses_to_replace_a_finished_one(tmp_path, digits):
    base = ["--data-dir", str(digits), "--epochs", "1", "--out", str(tmp_path)] + QUICK
    assert cifar10.main(base) == 0
    before = (tmp_path / "checkpoint.npz").read_bytes()
    result = run_script(*base)
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert "already holds a run" in result.stderr and "--resume" in result.stderr and "--overwrite" in result.stderr
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    assert cifar10.main(base + ["--overwrite", "--seed", "1"]) == 0
    assert (tmp_path / "checkpoint.npz").read_bytes() != before


def test_evaluate_writes_beside_the_checkpoint(tmp_path, digits, monkeypatch):
    run = tmp_path / "run"
    assert cifar10.main(["--data-dir", str(digits), "--epochs", "1", "--out", str(run)] + QUICK) == 0
    monkeypatch.chdir(tmp_path)  # where runs/cifar10 would have been created
    assert cifar10.main(["--evaluate", str(run / "best.npz")]) == 0
    assert (run / "confusion_matrix_test.png").exists() and not (tmp_path / "runs").exists()


# --- 3. --resume --out DIR alone continues exactly; changes are noted; the schedule is re-fitted, never 0 ---------


@pytest.mark.slow
def test_resume_with_only_out_continues_exactly(tmp_path, digits):
    base = ["--data-dir", str(digits), "--epochs", "3", "--limit-train", "256", "--seed", "3"] + DIGITS_ARGS
    assert cifar10.main(base + ["--out", str(tmp_path / "straight")]) == 0
    assert cifar10.main(base + ["--out", str(tmp_path / "split"), "--stop-after-epoch", "1"]) == 0
    resumed = run_script("--resume", "--out", str(tmp_path / "split"), "--no-progress")  # nothing else
    assert resumed.returncode == 0, resumed.stderr
    assert "note:" not in resumed.stdout  # nothing changed, nothing to note
    straight, split = params_of(tmp_path / "straight/checkpoint.npz"), params_of(tmp_path / "split/checkpoint.npz")
    assert all(np.array_equal(straight[k], split[k]) for k in straight)


@pytest.mark.slow
def test_resume_with_another_batch_size_refits_the_schedule(tmp_path, digits, capsys):
    out = tmp_path / "run"
    assert cifar10.main(["--data-dir", str(digits), "--epochs", "4", "--out", str(out), "--stop-after-epoch", "2",
                         "--batch-size", "16"] + QUICK) == 0
    assert cifar10.main(["--resume", "--out", str(out), "--batch-size", "64", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "note: --batch-size is 64 now, 16 in the run being resumed" in printed
    assert "the schedule is re-fitted" in printed and "continuing at step 8, learning rate" in printed
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert all(h["lr"] > 0 for h in history[:-1])  # the old bug: a whole epoch at learning rate 0.0
    assert [h["step"] for h in history] == [16, 32, 12, 16]  # 256 images: 16 steps of 16, then 4 of 64


@pytest.mark.slow
def test_resume_refuses_fewer_epochs_than_trained(tmp_path, digits, capsys):
    out = tmp_path / "run"
    assert cifar10.main(["--data-dir", str(digits), "--epochs", "2", "--out", str(out)] + QUICK) == 0
    with pytest.raises(SystemExit) as stop:
        cifar10.main(["--resume", "--out", str(out), "--epochs", "1"])
    assert stop.value.code == 2 and "has trained 2 epochs already" in capsys.readouterr().err


def test_resume_notes_overrides_and_augmentation_changes(tmp_path, digits, capsys):
    out = tmp_path / "run"
    assert cifar10.main(["--data-dir", str(digits), "--epochs", "2", "--out", str(out), "--stop-after-epoch", "1",
                         "--crop-padding", "0", "--no-flip"] + QUICK) == 0
    assert cifar10.main(["--resume", "--out", str(out), "--lr", "0.01", "--flip", "--crop-padding", "1"]) == 0
    printed = capsys.readouterr().out
    for note in ["--lr is 0.01 now, 0.05", "--flip is True now, False", "--crop-padding is 1 now, 0"]:
        assert f"note: {note} in the run being resumed" in printed


def test_a_resume_applies_its_regularisers_and_refuses_a_new_split_or_recipe(tmp_path, digits, capsys):
    """--dropout on --resume is noted and applies (it was noted and ignored: the weights came out as without it);
    --validation and --recipe cannot change on a resume (a new split would mix what the history measures; a
    recipe's values give way to the remembered options)."""
    out = tmp_path / "run"
    start = ["--data-dir", str(digits), "--epochs", "2", "--stop-after-epoch", "1", "--batch-size", "32"] + QUICK
    assert cifar10.main(start + ["--out", str(out)]) == 0
    plain, dropped = tmp_path / "plain", tmp_path / "dropped"
    for copy in (plain, dropped):
        copy.mkdir()
        (copy / "checkpoint.npz").write_bytes((out / "checkpoint.npz").read_bytes())
    assert cifar10.main(["--resume", "--out", str(plain), "--no-progress"]) == 0
    assert cifar10.main(["--resume", "--out", str(dropped), "--no-progress", "--dropout", "0.5"]) == 0
    assert "note: --dropout is 0.5 now, 0.0 in the run being resumed" in capsys.readouterr().out
    a, b = params_of(plain / "checkpoint.npz"), params_of(dropped / "checkpoint.npz")
    assert any(not np.array_equal(a[k], b[k]) for k in a)  # the second epoch trained with dropout
    for change, says in ((["--validation", "100"], "--validation 100 cannot change on --resume: the held-out"),
                         (["--recipe", "pretrain"], "--recipe pretrain cannot change on --resume: a recipe"),
                         (["--optimizer", "adam", "--lr", "0.001"], "--optimizer adam cannot change on --resume")):
        result = run_script("--resume", "--out", str(out), "--no-progress", *change)
        assert result.returncode == 2 and says in result.stderr, result.stderr


def test_resume_of_a_checkpoint_written_before_options_were_remembered(tmp_path, digits, capsys):
    """Older checkpoints kept every option as text under 'args' (and --no-flip as no_flip)."""
    out = tmp_path / "run"
    assert cifar10.main(["--data-dir", str(digits), "--epochs", "2", "--out", str(out), "--stop-after-epoch", "1",
                         "--no-flip"] + QUICK) == 0
    from tinymixer.training.checkpoint import save_checkpoint

    params, momentum, meta = load_checkpoint(out / "checkpoint.npz")
    options = meta.pop("options")
    meta.pop("schedule")
    meta["args"] = {k: str(v) for k, v in options.items() if k != "flip"} | {"no_flip": "True", "resume": "None"}
    save_checkpoint(out / "checkpoint.npz", params, momentum, meta)
    assert cifar10.main(["--resume", "--out", str(out), "--no-progress"]) == 0
    assert "flip off" in capsys.readouterr().out


# --- 4. defaults that learn on small and short runs, shown by --help ------------------------------------------------


@pytest.mark.slow
def test_defaults_fit_small_images_and_short_runs(tmp_path, digits, capsys):
    assert cifar10.main(["--data-dir", str(digits), "--epochs", "2", "--out", str(tmp_path)] + QUICK) == 0
    printed = capsys.readouterr().out
    assert "note: patch size 2: micro/4's 4 would leave 4 tokens on 8x8 images" in printed
    assert "patch 2 (16 tokens)" in printed and "crop padding 1" in printed
    assert "2 epochs of 2 steps, warm-up 0 steps" in printed  # 5% of a 4-step run, not "all of it"


def test_help_shows_every_default():
    import re

    result = run_script("--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: cifar10.py")
    help_text = " ".join(result.stdout.split())
    for expected in ["(default: mixer)", "(default: 5%)", "(default: auto)", "(default: 128)", "(default: 0.05)",
                     "(default: 15)", "(default: runs/cifar10)", "(default: True)", "(default: 1.0)"]:
        assert expected in help_text, expected
    # every option whose default is a value (0 included: --seed, --weight-decay, --mixup ...) shows it
    parser = options.build_parser()
    formatter = parser.formatter_class("cifar10.py")
    for action in parser._actions:
        if action.default is not None and action.default is not False and action.dest != "help":
            assert "%(default)" in formatter._get_help_string(action), action.option_strings
    for flag, default in [("--seed", "0"), ("--weight-decay", "0.0"), ("--label-smoothing", "0.0"),
                          ("--mixup", "0.0"), ("--end-lr", "0.0"), ("--validation", "0")]:
        entry = re.search(rf"^  {flag} .*?(?=^  -)", result.stdout, re.S | re.M)[0]  # its lines of --help
        assert f"(default: {default})" in " ".join(entry.split()), (flag, entry)


# --- 5. the validation split is called validation, everywhere --------------------------------------------------


def test_validation_is_named_validation_everywhere(tmp_path, digits, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(cifar10, "plot_learning_curves", lambda history, path, split: calls.append(split))
    out = tmp_path / "run"
    assert cifar10.main(["--data-dir", str(digits), "--epochs", "1", "--out", str(out), "--validation", "200"]
                        + QUICK) == 0
    printed = capsys.readouterr().out
    assert "validation loss" in printed and "final validation accuracy" in printed
    assert "test loss" not in printed and "test accuracy" not in printed and calls == ["validation"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "validation_accuracy" in metrics and "test_accuracy" not in metrics
    assert "validation_accuracy" in metrics["epochs"][0] and metrics["evaluated_on"] == "validation"
    assert "validation_accuracy" in (out / "metrics.csv").read_text().splitlines()[0].split(",")


# --- 6. bad options: one line, exit code 2, no traceback ---------------------------------------------------------


@pytest.mark.parametrize("options", [
    ["--batch-size", "0"], ["--limit-test", "0"], ["--lr", "-1"], ["--epochs", "0"], ["--warmup", "5x"],
    ["--momentum", "1.5"], ["--validation", "5000"], ["--patch-size", "3"], ["--limit-train", "10"],
    ["--warmup", "100ep"], ["--backend", "cupy"], ["--resume"], ["--config", "Z/9"]])
def test_bad_options_end_in_one_line_and_exit_code_2(tmp_path, digits, options):
    env = None
    if options == ["--backend", "cupy"]:  # as where no CuPy imports: the stand-in (if on the path) taken off it
        from tinymixer.backend import _load_cupy

        if _load_cupy()[0] is not None and not hasattr(_load_cupy()[0], "standin"):
            pytest.skip("CuPy runs here")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = run_script("--data-dir", str(digits), "--out", str(tmp_path / "run"), "--no-progress", *options,
                        env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


# --- 9 and 12: files a user can share, metrics.csv, the best checkpoint -------------------------------------------


@pytest.mark.slow
def test_outputs_honour_the_umask_and_the_best_checkpoint_is_kept(tmp_path, digits):
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert cifar10.main(["--data-dir", str(digits), "--epochs", "3", "--out", str(out)] + QUICK) == 0
    finally:
        os.umask(old)
    for name in ["checkpoint.npz", "best.npz", "metrics.json", "metrics.csv", "learning_curves.png"]:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    metrics = json.loads((out / "metrics.json").read_text())
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and rows[0].startswith("epoch,train_loss")
    best = metrics["best"]
    assert best["accuracy"] == max(h["test_accuracy"] for h in metrics["epochs"])
    from tinymixer.data import load_folder
    from tinymixer.training.evaluate import evaluate

    data = load_folder(digits / "cifar-10-batches-py")
    again = evaluate(load_model(out / "best.npz"), data.test_images, data.test_labels)["accuracy"]
    assert again == best["accuracy"]


def test_resume_from_the_best_weights_alone_is_a_clear_error(tmp_path, digits, capsys):
    out = tmp_path / "run"
    assert cifar10.main(["--data-dir", str(digits), "--epochs", "1", "--out", str(out)] + QUICK) == 0
    with pytest.raises(SystemExit) as stop:
        cifar10.main(["--resume", str(out / "best.npz"), "--out", str(out)])
    assert stop.value.code == 2 and "holds weights but no training state" in capsys.readouterr().err


@pytest.mark.slow
def test_a_time_budget_sets_the_epochs_from_a_measured_step(tmp_path, digits, capsys):
    import re

    out = tmp_path / "run"
    assert cifar10.main(["--data-dir", str(digits), "--time-budget", "4s", "--out", str(out)] + QUICK) == 0
    printed = capsys.readouterr().out
    found = re.search(r"time budget 4 s: a step takes [0-9.e-]+ s, an epoch about [0-9.]+ s with its evaluation: "
                      r"(\d+) epoch\(s\) in the [0-9.]+ s left", printed)
    assert found, printed
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    assert len(epochs) == int(found[1]) >= 1
    assert epochs[-1]["lr"] > 0 and f"{len(epochs)} epochs of 2 steps" in printed  # the schedule fits the budget
    with pytest.raises(SystemExit) as stop:
        cifar10.main(["--resume", "--out", str(out), "--time-budget", "4s"])
    assert stop.value.code == 2 and "keeps its schedule" in capsys.readouterr().err


@pytest.mark.slow
def test_the_weight_average_is_evaluated_beside_and_resumes_exactly(tmp_path, digits):
    base = ["--data-dir", str(digits), "--epochs", "2", "--ema", "0.9", "--validation", "100"] + QUICK
    assert cifar10.main(base + ["--out", str(tmp_path / "straight")]) == 0
    assert cifar10.main(base + ["--out", str(tmp_path / "split"), "--stop-after-epoch", "1"]) == 0
    assert cifar10.main(["--resume", "--out", str(tmp_path / "split"), "--no-progress"]) == 0
    straight, _, _ = load_checkpoint(tmp_path / "straight/checkpoint.npz")
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.npz")[1] for run in ("straight", "split"))
    assert {k for k in a if k.startswith("ema/")} == {f"ema/{k}" for k in straight} | {"ema/step"}
    assert all(np.array_equal(a[k], b[k]) for k in a)  # the optimiser's state and the average, bit-exact
    metrics = json.loads((tmp_path / "straight/metrics.json").read_text())
    assert "ema_validation_accuracy" in metrics["epochs"][0] and metrics["best"]["weights"] in ("weights", "ema")


@pytest.mark.slow
def test_a_time_budget_scales_a_recipes_warmup_and_a_whole_run_warmup_is_refused(tmp_path, digits, capsys):
    """scratch-cifar's 5-epoch warm-up belongs to its 300 epochs: under a budget of a few epochs it keeps its share
    (1.67%) instead of being the whole run; without a budget, a recipe's warm-up as long as the run is refused with
    the recipe and the option named."""
    out = tmp_path / "run"
    assert cifar10.main(["--data-dir", str(digits), "--recipe", "scratch-cifar", "--config", "micro/4",
                         "--time-budget", "3s", "--out", str(out)] + QUICK) == 0
    printed = capsys.readouterr().out
    assert ("note: --recipe scratch-cifar's warm-up of 5ep is 1.67% of its 300 epochs; the time budget's") in printed
    options = json.loads((out / "metrics.json").read_text())["options"]
    assert options["warmup"] == "1.66667%"  # remembered: --resume keeps the same schedule
    lrs = [e["lr"] for e in json.loads((out / "metrics.json").read_text())["epochs"]]
    assert len(lrs) == 1 or lrs[-1] < lrs[0]  # the learning rate decays, it does not only rise
    with pytest.raises(SystemExit) as stop:
        cifar10.main(["--data-dir", str(digits), "--recipe", "scratch-cifar", "--config", "micro/4", "--epochs", "5",
                      "--out", str(tmp_path / "other")] + QUICK)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--recipe scratch-cifar's warm-up of 5ep is the whole run" in err
    assert "give a shorter --warmup" in err


@pytest.mark.slow
def test_checkpoint_paths_work_from_any_folder(tmp_path, digits, capsys, monkeypatch):
    """A run started with a relative --data-dir is evaluated and resumed from another folder: the checkpoint stores
    the path absolute; an older checkpoint's relative path is found from the checkpoint's folder; a folder that is
    gone is an error that names the checkpoint it came from."""
    import shutil

    project = tmp_path / "project"
    shutil.copytree(digits, project / "digits")
    monkeypatch.chdir(project)
    assert cifar10.main(["--data-dir", "digits", "--epochs", "2", "--stop-after-epoch", "1", "--out",
                         "runs/digits"] + QUICK) == 0
    run = project / "runs/digits"
    assert json.loads((run / "metrics.json").read_text())["options"]["data_dir"] == str(project / "digits")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert cifar10.main(["--evaluate", str(run / "best.npz")]) == 0
    assert "test accuracy" in capsys.readouterr().out
    # an older checkpoint, with the relative path as it was given: found from the checkpoint's folder upwards
    params, state, meta = load_checkpoint(run / "checkpoint.npz")
    meta["options"]["data_dir"] = "digits"
    from tinymixer.training.checkpoint import save_checkpoint

    save_checkpoint(run / "checkpoint.npz", params, state, meta)
    assert cifar10.main(["--resume", "--out", str(run)]) == 0
    assert f"note: the --data-dir digits remembered by {run / 'checkpoint.npz'} is {project / 'digits'}" in \
        capsys.readouterr().out
    shutil.rmtree(project / "digits")
    result = run_script("--evaluate", str(run / "best.npz"), cwd=elsewhere)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"is the one remembered by {run / 'best.npz'}; give --data-dir" in result.stderr, result.stderr


def test_the_settings_line_shows_only_what_applies(tmp_path, digits, capsys):
    assert cifar10.main(["--data-dir", str(digits), "--epochs", "1", "--optimizer", "adam", "--lr", "0.003",
                         "--out", str(tmp_path / "run")] + QUICK) == 0
    settings = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("settings: "))
    assert "optimizer adam" in settings and f"data-dir {digits}" in settings
    assert "momentum" not in settings and "data-url" not in settings and "data-md5" not in settings, settings


def test_under_mpiexec_rank_0_alone_says_a_bad_option(monkeypatch, capsys):
    """Every rank reads the options before MPI starts; the launcher's environment tells them apart."""
    for rank, says in (("1", False), ("0", True)):
        monkeypatch.setenv("PMI_SIZE", "2")
        monkeypatch.setenv("PMI_RANK", rank)
        with pytest.raises(SystemExit) as stop:
            options.parse_args(["--lr", "-1"])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and ("argument --lr" in err) == says, (rank, err)


def test_options_that_contradict_each_other_are_refused_not_dropped(capsys):
    for argv, says in ((["--time-budget", "5s", "--epochs", "2"], "--time-budget sets the number of epochs"),
                       (["--optimizer", "adam", "--momentum", "0.5"], "--momentum is SGD's"),
                       (["--lr", "0.05", "--end-lr", "0.5"], "--end-lr 0.5 is above the peak learning rate 0.05")):
        with pytest.raises(SystemExit) as stop:
            options.parse_args(argv)
        assert stop.value.code == 2 and says in capsys.readouterr().err, argv
    for argv in (["--time-budget", "5s"], ["--optimizer", "adam"], ["--lr", "0.05", "--end-lr", "0.001"]):
        options.parse_args(argv)  # each alone is fine


@pytest.mark.parametrize("recipe", ["pretrain", "scratch-cifar", "finetune"])
def test_every_recipe_trains_the_cnn_too(recipe):
    """A recipe's Mixer settings (its size, dropout, stochastic depth) do not reach --model cnn (they were refused
    as if the user had given them); what the user gives still is."""
    args, _ = options.parse_args(["--model", "cnn", "--recipe", recipe])
    options.check_model_options(args)
    assert args.config == "cnn-micro" and not args.dropout and not args.stochastic_depth
    args, _ = options.parse_args(["--model", "cnn", "--recipe", recipe, "--dropout", "0.1"])
    with pytest.raises(options.OptionError, match="--dropout 0.1: the CNN has no"):
        options.check_model_options(args)


def test_the_environment_is_named_where_it_is_wrong(tmp_path, digits):
    """A wrong $TINYMIXER_BACKEND or $TINYMIXER_THREADS is blamed on the variable (no --backend was given), in one
    line with exit code 2, before anything runs."""
    for variable, value, says in (("TINYMIXER_BACKEND", "gpu", "$TINYMIXER_BACKEND=gpu: unknown backend 'gpu'"),
                                  ("TINYMIXER_THREADS", "abc", "TINYMIXER_THREADS='abc' is not a number of threads")):
        result = run_script("--data-dir", str(digits), "--out", str(tmp_path / "run"), "--no-progress",
                            env=dict(os.environ, **{variable: value}))
        assert result.returncode == 2 and says in result.stderr, result.stderr
        assert "--backend gpu" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_limits_above_the_data_and_a_stop_after_the_end_are_said(tmp_path, digits, capsys):
    assert cifar10.main(["--data-dir", str(digits), "--epochs", "1", "--stop-after-epoch", "3", "--limit-train",
                         "5000", "--limit-test", "100", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "--limit-train 5000: there are only 1437 images; using all of them" in out
    assert "--limit-test" not in out.split("settings: ")[0]  # 100 of 360: a real limit, nothing to say
    assert "--stop-after-epoch 3: the run has 1 epoch, so it runs to its end" in out
    assert (tmp_path / "run" / "confusion_matrix.png").exists()  # written when the run ends, as the docs say


def test_a_data_set_without_test_images_is_refused_when_loaded(tmp_path):
    from helpers import fake_cifar

    from tinymixer.data import Dataset, save_folder

    full = fake_cifar(num_train=40, num_test=4, size=8)
    save_folder(tmp_path / "no-test", Dataset(full.train_images, full.train_labels, full.test_images[:0],
                                              full.test_labels[:0], full.class_names))
    result = run_script("--data-dir", str(tmp_path / "no-test"), "--out", str(tmp_path / "run"), "--no-progress")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "holds 40 training and 0 test images: a run needs both" in result.stderr


def test_a_folder_of_images_by_class_is_pointed_to_its_converter(tmp_path):
    photos = tmp_path / "photos"
    for name in ("cat", "dog"):
        (photos / name).mkdir(parents=True)
    result = run_script("--data-dir", str(photos), "--out", str(tmp_path / "run"), "--no-progress")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "it holds cat/, dog/" in result.stderr
    assert f"python -m tinymixer.data.images {photos} OUT --size 32" in result.stderr


def test_the_first_command_offline_points_to_the_offline_route_and_leaves_no_folder(tmp_path):
    cache = tmp_path / "cache" / "tinymixer"
    result = subprocess.run([sys.executable, str(SCRIPT), "--data-url", "http://127.0.0.1:9/cifar-10-python.tar.gz",
                             "--out", str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, TINYMIXER_DATA=str(cache)))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "the download of http://127.0.0.1:9/cifar-10-python.tar.gz failed" in result.stderr
    assert "let the script download it" not in result.stderr  # it just tried
    assert "Without CIFAR-10: train on your own images or arrays" in result.stderr, result.stderr
    assert not cache.exists()
