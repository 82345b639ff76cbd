"""examples/predict.py end to end, on checkpoints made here: an official-layout .npz (np.savez of a small Mixer's
parameters, as the published Mixer-B_16.npz files are laid out) and cifar10.py-style checkpoints with metadata."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import put
from PIL import Image

import tinymixer as tm
from tinymixer.data.images import imagenet1k_class_names, load_image
from tinymixer.training.checkpoint import save_checkpoint
from tinymixer.training.evaluate import predict_logits

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "predict.py"
spec = importlib.util.spec_from_file_location("predict_script", SCRIPT)
predict = importlib.util.module_from_spec(spec)
spec.loader.exec_module(predict)

LINE = re.compile(r"^ +(\d+\.\d\d)%  (.+)$")


def small_mixer(num_classes: int, seed: int = 0) -> tm.MlpMixer:
    """A 16x16 Mixer with every parameter random (the head too), so that the classes get distinct scores."""
    model = tm.MlpMixer(num_classes=num_classes, num_blocks=2, patch_size=4, hidden_dim=8, tokens_mlp_dim=6,
                        channels_mlp_dim=16, image_size=16, seed=seed)
    r = np.random.default_rng(seed)
    for value in model.params.values():
        put(value, r.standard_normal(value.shape))
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """An official-layout 1000-class checkpoint, a 7-class one, and a few pictures (one in a folder)."""
    root = tmp_path_factory.mktemp("predict")
    model = small_mixer(1000)
    np.savez(root / "Mixer-T_4.npz", **{name: tm.to_host(value) for name, value in model.params.items()})
    np.savez(root / "seven.npz", **{name: tm.to_host(value) for name, value in small_mixer(7, 1).params.items()})
    r = np.random.default_rng(0)
    Image.fromarray(r.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(root / "photo.png")
    Image.fromarray(r.integers(0, 256, (16, 40), dtype=np.uint8)).save(root / "grey.jpg")
    (root / "album").mkdir()
    Image.fromarray(r.integers(0, 256, (24, 24, 4), dtype=np.uint8)).save(root / "album" / "b.png")
    Image.fromarray(r.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(root / "album" / "a.png")
    (root / "album" / "notes.txt").write_text("skipped: not an image file name")
    (root / "notes.txt").write_text("not a picture")
    return {"root": root, "official": root / "Mixer-T_4.npz", "seven": root / "seven.npz"}


def run(argv: list, capsys) -> tuple[int, str, str]:
    """predict.py's main in this process: (exit code, stdout, stderr)."""
    try:
        code = predict.main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def results(out: str) -> dict[str, list[tuple[float, str]]]:
    """{image path: [(probability, class name), ...]} from predict.py's output."""
    table: dict[str, list[tuple[float, str]]] = {}
    current = None
    for line in out.splitlines()[1:]:  # the first line describes the model
        match = LINE.match(line)
        if match:
            table[current].append((float(match[1]) / 100, match[2]))
        else:
            current = line
            table[current] = []
    return table


def expected_top(checkpoint: Path, path: Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    model = tm.training.checkpoint.load_model(checkpoint)
    logits = predict_logits(model, load_image(path, model.image_size)[None])[0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = np.argsort(-probs)[:k]
    return top, probs[top]


def test_top5_of_an_official_checkpoint_with_imagenet_names(files, capsys):
    photo, grey = files["root"] / "photo.png", files["root"] / "grey.jpg"
    code, out, err = run([photo, grey, "--checkpoint", files["official"]], capsys)
    assert code == 0 and err == ""
    assert "1000 classes (ImageNet-1k)" in out.splitlines()[0]
    table = results(out)
    assert list(table) == [str(photo), str(grey)]
    names = imagenet1k_class_names()
    for path, rows in table.items():
        assert len(rows) == 5
        probs = [p for p, _ in rows]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 5e-5
        top, top_probs = expected_top(files["official"], Path(path), 5)
        assert [name for _, name in rows] == [names[i] for i in top]
        np.testing.assert_allclose(probs, top_probs, atol=5e-5)  # printed to 0.01%


def test_folders_expand_to_their_images_and_top_k(files, capsys):
    code, out, _ = run([files["root"] / "album", "--checkpoint", files["official"], "--top", "2"], capsys)
    table = results(out)
    assert code == 0 and [Path(p).name for p in table] == ["a.png", "b.png"]  # sorted; notes.txt not taken
    assert all(len(rows) == 2 for rows in table.values())


def test_class_names_from_labels_file_checkpoint_meta_or_indices(files, tmp_path, capsys):
    photo = files["root"] / "photo.png"
    _, out, _ = run([photo, "--checkpoint", files["seven"], "--top", "7"], capsys)
    assert sorted(name for _, name in results(out)[str(photo)]) == [f"class {i}" for i in range(7)]
    assert abs(sum(p for p, _ in results(out)[str(photo)]) - 1) < 5e-4  # all 7 classes: the whole softmax

    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"name{i}" for i in range(7)) + "\n")
    top, _ = expected_top(files["seven"], photo, 3)
    _, out, _ = run([photo, "--checkpoint", files["seven"], "--top", "3", "--labels", labels], capsys)
    assert [name for _, name in results(out)[str(photo)]] == [f"name{i}" for i in top]

    model = tm.training.checkpoint.load_model(files["seven"])  # as cifar10.py writes it, class names in meta
    stored = save_checkpoint(tmp_path / "best.npz", model.params,
                             meta={"model": model.config(), "class_names": [f"kind{i}" for i in range(7)]})
    _, out, _ = run([photo, "--checkpoint", stored, "--top", "3"], capsys)
    assert [name for _, name in results(out)[str(photo)]] == [f"kind{i}" for i in top]
    _, out, _ = run([photo, "--checkpoint", stored, "--top", "3", "--labels", labels], capsys)
    assert [name for _, name in results(out)[str(photo)]] == [f"name{i}" for i in top]  # --labels wins


def test_accuracy_on_an_image_folder(files, tmp_path, capsys):
    photo = files["root"] / "photo.png"
    top, _ = expected_top(files["seven"], photo, 7)
    for folder, image in [(str(top[0]), "x.png"), (str(top[1]), "y.png")]:  # folders named by class index
        (tmp_path / folder).mkdir()
        Image.open(photo).save(tmp_path / folder / image)
    code, out, _ = run(["--image-folder", tmp_path, "--checkpoint", files["seven"], "--top", "2"], capsys)
    assert code == 0
    assert "2 images in 2 classes: top-1 accuracy 50.00% (1/2), top-2 accuracy 100.00% (2/2)" in out
    (tmp_path / "walrus").mkdir()
    Image.open(photo).save(tmp_path / "walrus" / "z.png")
    code, _, err = run(["--image-folder", tmp_path, "--checkpoint", files["seven"]], capsys)
    assert code == 2 and "match no class of the model" in err and "walrus" in err


def one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(fragment in lines[0] for fragment in fragments), err


def test_a_wrong_backend_variable_is_a_one_line_error(files, capsys, monkeypatch):
    monkeypatch.setenv("TINYMIXER_BACKEND", "bogus")
    code, _, err = run([files["root"] / "photo.png", "--checkpoint", files["official"]], capsys)
    assert code == 2
    one_line_error(err, "$TINYMIXER_BACKEND=bogus", "unknown backend 'bogus'")


def test_bad_inputs_are_one_line_errors(files, tmp_path, capsys):
    photo, official = files["root"] / "photo.png", files["official"]
    code, out, err = run([photo, files["root"] / "notes.txt", "--checkpoint", official], capsys)
    assert code == 1 and str(photo) in out  # the readable image is still classified
    one_line_error(err, "notes.txt", "not an image")

    not_a_mixer = tmp_path / "weights.npz"
    np.savez(not_a_mixer, w=np.zeros(3))
    code, _, err = run([photo, "--checkpoint", not_a_mixer], capsys)
    assert code == 2
    one_line_error(err, "weights.npz", "not in the Mixer checkpoint layout")
    code, _, err = run([photo, "--checkpoint", files["root"] / "notes.txt"], capsys)
    assert code == 2
    one_line_error(err, "notes.txt is not a checkpoint")

    (tmp_path / "empty").mkdir()
    for argv, fragment in [([tmp_path / "empty"], "no image files in"), ([tmp_path / "gone.jpg"], "no such file"),
                           ([], "give image files")]:
        code, _, err = run(argv + ["--checkpoint", official], capsys)
        assert code == 2
        one_line_error(err, fragment)

    wrong = tmp_path / "three.txt"
    wrong.write_text("a\nb\nc\n")
    code, _, err = run([photo, "--checkpoint", official, "--labels", wrong], capsys)
    assert code == 2
    one_line_error(err, "has 3 class names but the model has 1000 classes")
    code, _, err = run([photo, "--checkpoint", official, "--top", "0"], capsys)
    assert code == 2
    one_line_error(err, "--top", "must be >= 1")


def test_as_a_program(files):
    """The real exit code and streams of `python examples/predict.py`, and --help with its defaults."""
    done = subprocess.run([sys.executable, str(SCRIPT), str(files["root"] / "notes.txt"), "--checkpoint",
                           str(files["official"])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    one_line_error(done.stderr, "notes.txt")
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "(default: 5)" in done.stdout and "--image-folder" in done.stdout
