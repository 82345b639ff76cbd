"""experiments/ (issue 13: the paper's comparisons, Mixer vs CNN) and tinymixer/data/permutations.py.

The scripts run in-process in their --quick mode on a small random CIFAR-layout folder: the plumbing, the files
and keys they write, and the exact permutation check. The permutations themselves are tested on their own."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import fake_cifar, host, put

import tinymixer as tm
from tinymixer.data import normalize, save_folder
from tinymixer.data.permutations import (
    global_pixel_permutation,
    inverse_order,
    is_permutation,
    patch_and_pixel_permutation,
    permute_images,
    permute_mixer_params,
)
from tinymixer.nn.conv import patchify

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load(name: str):
    """experiments/<name>.py as a module (its folder on sys.path, for its ``import common``)."""
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "fake"
    save_folder(folder, fake_cifar(num_train=300, num_test=80, size=16, classes=4))
    return folder


def run(name: str, data_dir: Path, out: Path, capsys, *extra: str) -> tuple[dict, str]:
    code = load(name).main(["--quick", "--data-dir", str(data_dir), "--out", str(out), "--backend", "numpy",
                            *extra])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.index("expected run time") < printed.index("epoch 1/")  # the estimate comes first
    assert (out / "report.md").read_text().startswith("# ")
    return json.loads((out / "results.json").read_text()), printed


# ----------------------------------------------------------------------------------------------------------------
# tinymixer/data/permutations.py


@pytest.mark.parametrize("hw, patch", [((16, 16), 4), ((8, 12), 4), ((6, 6), 2)])
def test_permutations_are_bijections_and_their_inverses_undo_them(hw, patch):
    images = np.random.default_rng(0).integers(0, 256, (3, *hw, 3), dtype=np.uint8)
    for permutation in (patch_and_pixel_permutation(hw, patch, seed=1), global_pixel_permutation(hw, seed=1)):
        assert is_permutation(permutation.order) and permutation.order.size == hw[0] * hw[1]
        assert not np.array_equal(permutation.order, np.arange(permutation.order.size))  # it does move pixels
        shuffled = permutation(images)
        assert shuffled.dtype == np.uint8 and shuffled.shape == images.shape
        np.testing.assert_array_equal(permutation.inverse()(shuffled), images)
        np.testing.assert_array_equal(permute_images(shuffled, inverse_order(permutation.order)), images)
        # the same pixels, each with its channels together
        np.testing.assert_array_equal(np.sort(shuffled.reshape(3, -1, 3), axis=1), np.sort(images.reshape(3, -1, 3),
                                                                                          axis=1))
    assert not is_permutation(np.array([0, 0, 2])) and is_permutation(np.array([2, 0, 1]))


def test_the_patch_and_pixel_permutation_moves_whole_patches_and_the_same_pixels_in_each():
    """x'[s, q] = x[token_order[s], pixel_order[q]], on the patches as patchify cuts them."""
    permutation = patch_and_pixel_permutation((8, 12), 4, seed=3)
    images = np.random.default_rng(1).integers(0, 256, (2, 8, 12, 3), dtype=np.uint8)
    before = patchify(images, 4).reshape(2, 6, 16, 3)  # (B, S, P*P, C)
    after = patchify(permutation(images), 4).reshape(2, 6, 16, 3)
    np.testing.assert_array_equal(after, before[:, permutation.token_order][:, :, permutation.pixel_order])
    assert is_permutation(permutation.token_order) and is_permutation(permutation.pixel_order)
    same = patch_and_pixel_permutation((8, 12), 4, seed=3)  # a fixed permutation: the seed decides it
    np.testing.assert_array_equal(same.order, permutation.order)


@pytest.mark.parametrize("hw, channels", [((16, 16), 3), ((8, 12), 1)])
def test_a_mixer_with_permuted_weights_on_permuted_images_gives_the_same_logits(hw, channels):
    model = tm.MlpMixer(num_classes=5, num_blocks=2, patch_size=4, hidden_dim=8, tokens_mlp_dim=6, channels_mlp_dim=10,
                        image_size=hw, in_channels=channels, dtype="float64")
    rng = np.random.default_rng(2)
    for value in model.params.values():  # every weight random: no zero head, no zero bias hides a wrong index
        put(value, 0.5 * rng.standard_normal(value.shape))
    permuted = tm.MlpMixer(**model.config())
    permutation = patch_and_pixel_permutation(hw, 4, seed=5)
    for name, value in permute_mixer_params(model.params, permutation).items():
        put(permuted.params[name], host(value))
    images = rng.integers(0, 256, (4, *hw, channels), dtype=np.uint8)
    expected = model(normalize(images, np.float64))
    np.testing.assert_allclose(permuted(normalize(permutation(images), np.float64)), expected, rtol=0, atol=1e-12)
    assert np.abs(expected).max() > 0.1  # logits worth comparing
    # the original weights on permuted images, or a global shuffle, are not the same model
    assert np.abs(model(normalize(permutation(images), np.float64)) - expected).max() > 1e-3
    glob = global_pixel_permutation(hw, seed=5)
    assert np.abs(permuted(normalize(glob(images), np.float64)) - expected).max() > 1e-3


def test_permute_mixer_params_refuses_what_weights_cannot_undo():
    params = tm.MlpMixer.from_name("micro/4", num_classes=3, image_size=16).params
    with pytest.raises(ValueError, match="global pixel permutation"):
        permute_mixer_params(params, global_pixel_permutation((16, 16), 0))
    with pytest.raises(ValueError, match="patches of 2"):
        permute_mixer_params(params, patch_and_pixel_permutation((16, 16), 2, 0))
    with pytest.raises(ValueError, match="cannot permute"):
        permute_images(np.zeros((1, 8, 8, 3), np.uint8), np.arange(10))


# ----------------------------------------------------------------------------------------------------------------
# experiments/common.py


def test_stratified_subsets_keep_the_class_shares_and_are_nested():
    common = load("common")
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    small, large = common.stratified_subset(labels, 100, seed=4), common.stratified_subset(labels, 300, seed=4)
    assert np.bincount(labels[small]).tolist() == [50, 30, 20] and np.bincount(labels[large]).tolist() == [150, 90, 60]
    assert set(small) <= set(large) and len(np.unique(large)) == 300
    odd = common.stratified_subset(labels, 7, seed=0)  # largest remainders: 3.5, 2.1, 1.4 -> 4, 2, 1
    assert len(odd) == 7 and np.bincount(labels[odd]).tolist() == [4, 2, 1]


def test_the_automatic_patch_size_keeps_sixteen_tokens():
    assert tm.auto_patch_size(4, (32, 32)) == 4 and tm.auto_patch_size(4, (8, 8)) == 2
    assert tm.auto_patch_size(4, (16, 16)) == 4 and tm.auto_patch_size(4, (12, 12)) == 3
    assert tm.auto_patch_size(4, (3, 3)) == 1  # no patch leaves 16 tokens: pixels as tokens
    assert tm.auto_patch_size(16, (224, 224)) == 16 and tm.auto_patch_size(4, (28, 28)) == 4


def test_the_sweep_scores_on_held_out_training_images_and_extends_past_the_grids_edge(monkeypatch, tmp_path):
    """A validation accuracy that peaks at lr 0.27: the grid 0.01, 0.03 is extended by its ratio (x3) twice, to
    0.09 and 0.27, and 0.27 wins. The sweep never sees the test set. --lr-cnn skips the CNNs' sweep."""
    common = load("common")
    data = fake_cifar(num_train=200, num_test=40, size=8, classes=4)
    data.test_images[...] = 0  # a marker: the sweep's validation images must come from the training set
    seen = []

    def fake_train(model, split, preset, lr, **kwargs):
        seen.append((lr, len(split.train_labels), len(split.test_labels), bool(split.test_images.any())))
        return {"test_accuracy": 1.0 / (1.0 + abs(np.log(lr / 0.27)))}

    monkeypatch.setattr(common, "train", fake_train)
    preset = common.Preset(sized_for="test", models=("micro/4", "cnn-micro"), epochs=1, batch_size=16,
                           sweep=(0.01, 0.03), sweep_epochs=1, sweep_train=None, sweep_validation=30)
    args = type("Args", (), {"lr_mixer": None, "lr_cnn": 0.2, "seed": 0, "out": tmp_path / "one"})()
    lrs, how = common.choose_lrs(["micro/4", "cnn-micro"], data, preset, args)
    assert lrs == {"Mixer": 0.27, "CNN": 0.2} and how["CNN"]["how"] == "given on the command line"
    assert [lr for lr, *_ in seen] == [0.01, 0.03, 0.09, 0.27]
    assert all(tuple(rest) == (170, 30, True) for _, *rest in seen)  # 30 held out of the 200 training images
    assert list(how["Mixer"]["validation_accuracy"]) == ["0.01", "0.03", "0.09", "0.27"]
    # the next experiment beside it, on the same data and settings, reuses the sweep; other data does not
    seen.clear()
    args.out = tmp_path / "two"
    again, how = common.choose_lrs(["micro/4", "cnn-micro"], data, preset, args)
    assert again == lrs and not seen and "reused" in how["Mixer"]["how"]
    assert how["Mixer"]["validation_accuracy"]["0.27"] == 1.0
    data.train_labels[0] = (data.train_labels[0] + 1) % 4
    assert common.choose_lrs(["micro/4"], data, preset, args)[0] == {"Mixer": 0.27} and len(seen) == 4
    seen.clear()
    args.fresh_sweep = True
    common.choose_lrs(["micro/4"], data, preset, args)
    assert len(seen) == 4
    seen.clear()
    no_sweep = common.replace(preset, sweep=())
    args.lr_cnn = None
    assert common.choose_lrs(["micro/4", "cnn-micro"], data, no_sweep, args)[0] == common.DOCUMENTED_LR
    assert not seen


# ----------------------------------------------------------------------------------------------------------------
# The scripts, in --quick mode


def test_permutations_script_writes_its_report_and_the_exact_check_holds(data_dir, tmp_path, capsys):
    results, _ = run("permutations", data_dir, tmp_path / "perm", capsys)
    for name in ("report.md", "results.json", "learning_curves.png", "inputs.png"):
        assert (tmp_path / "perm" / name).stat().st_size > 0
    versions = ["original", "patch + pixel shuffle", "global pixel shuffle"]
    assert set(results["final_test_accuracy"]) == {"micro/4", "cnn-micro"}
    for runs in results["runs"].values():
        assert list(runs) == versions
        for version in versions:
            history = runs[version]["history"]
            assert [r["epoch"] for r in history] == [1, 2] and all("test_accuracy" in r for r in history)
    check = results["exact_check"]
    assert check["dtype"] == "float64" and check["steps"] >= 3
    assert check["max_logit_difference"] < 1e-10 and check["max_weight_difference"] < 1e-10
    assert check["max_weight_change"] > 1e-3  # training moved the weights: the agreement is not trivial
    assert set(results["learning_rates"]) == {"Mixer", "CNN"}
    report = (tmp_path / "perm" / "report.md").read_text()
    assert "| micro/4 (Mixer) |" in report and "| cnn-micro (CNN) |" in report and "Exact check" in report


def test_data_size_script_gives_every_subset_the_same_number_of_steps(data_dir, tmp_path, capsys):
    results, _ = run("data_size", data_dir, tmp_path / "size", capsys)
    assert (tmp_path / "size" / "data_size.png").stat().st_size > 0
    subsets = results["subsets"]
    assert [s["fraction"] for s in subsets] == [0.1, 0.3, 1.0] and [s["images"] for s in subsets] == [30, 90, 300]
    assert subsets[-1]["steps"] == 2 * (300 // 16)  # the preset's 2 epochs of the whole set
    for s in subsets:  # the same steps for every subset, up to rounding the epochs to whole ones
        assert abs(s["steps"] - subsets[-1]["steps"]) <= s["steps_per_epoch"] / 2
    assert subsets[0]["epochs"] > subsets[1]["epochs"] > subsets[2]["epochs"] == 2  # epochs ~ 1 / fraction
    assert set(results["test_accuracy"]) == {"micro/4", "cnn-micro"}
    assert {"cnn_minus_mixer_points", "shrinks"} <= set(results["gap"])
    assert "| CNN - Mixer (points) |" in (tmp_path / "size" / "report.md").read_text()


def test_seeds_repeat_every_run_and_the_reports_give_mean_and_spread(data_dir, tmp_path, capsys):
    common = load("common")
    results, printed = run("permutations", data_dir, tmp_path / "perm", capsys, "--seeds", "2", "--seed", "5")
    assert results["seeds"] == [5, 6] and "seed 6" in printed
    for name, by_version in results["runs"].items():
        for version, first in by_version.items():
            repeats = first["repeats"]
            assert first["seed"] == 5 and [r["seed"] for r in repeats] == [6]
            by_seed = [first["test_accuracy"], repeats[0]["test_accuracy"]]
            assert first["test_accuracy_by_seed"] == by_seed
            assert results["final_test_accuracy"][name][version] == pytest.approx(np.mean(by_seed))
            # another seed is another run (other initial weights), not a copy of the first
            assert [r["train_loss"] for r in first["history"]] != [r["train_loss"] for r in repeats[0]["history"]]
    report = (tmp_path / "perm" / "report.md").read_text()
    assert "Mean ± standard deviation over 2 seeds (5, 6" in report and report.count(" ± ") >= 6

    results, _ = run("data_size", data_dir, tmp_path / "size", capsys, "--seeds", "2")
    for rs in results["runs"].values():
        for r in rs:
            assert r["test_accuracy_by_seed"] == [r["test_accuracy"], r["repeats"][0]["test_accuracy"]]
    full = results["runs"]["micro/4"][-1]
    assert results["test_accuracy"]["micro/4"]["1.0"] == pytest.approx(np.mean(full["test_accuracy_by_seed"]))
    assert "Mean ± standard deviation over 2 seeds" in (tmp_path / "size" / "report.md").read_text()

    # one seed: the same results.json layout as before --seeds existed, and no spread in the cells
    assert common.repeated(lambda seed: {"test_accuracy": 0.5}, [3]) == {"test_accuracy": 0.5, "seed": 3}
    assert common.percent_spread([0.975]) == "97.50" and common.percent_spread([-0.01], signed=True) == "-1.00"
    assert common.percent_spread([0.9, 0.8]) == "85.00 ± 7.07"  # sample standard deviation (ddof 1)


def test_compute_script_measures_flops_time_and_throughput(data_dir, tmp_path, capsys):
    results, _ = run("compute", data_dir, tmp_path / "compute", capsys)
    assert (tmp_path / "compute" / "compute.png").stat().st_size > 0
    rows = {r["model"]: r for r in results["models"]}
    assert set(rows) == {"micro/4", "cnn-micro"}
    for r in rows.values():
        assert r["train_flops"] == 3 * r["flops_per_image"] * r["images_seen"] and r["images_seen"] == 4 * 32
        assert r["train_seconds"] > 0 and r["inference_images_per_second"] > 0 and 0 <= r["test_accuracy"] <= 1
    assert set(results["pareto"]) == {"train_flops", "train_seconds", "inference_images_per_second"}


@pytest.mark.slow
def test_token_weights_script_draws_the_trained_and_the_initial_units(data_dir, tmp_path, capsys):
    results, _ = run("token_weights", data_dir, tmp_path / "tokens", capsys)
    for name in ("token_weights.png", "token_weights_init.png"):
        assert (tmp_path / "tokens" / name).stat().st_size > 0
    for label in ("trained", "initial"):
        blocks = results["blocks"][label]
        assert len(blocks) == 3
        for block in blocks:
            units = sorted(u for pair in block["pairs"] for u in pair)
            assert units == list(range(32))  # micro/4: D_S = 32 units, each in exactly one pair
            assert block["pair_frequency"] == sorted(block["pair_frequency"])


def test_pairing_finds_opposite_units_and_the_frequency_measure_orders_pictures():
    tw = load("token_weights")
    rng = np.random.default_rng(0)
    a, b, c = rng.standard_normal((3, 16))
    kernel = np.stack([a, b, -a + 0.01 * c, c, -b, -c], axis=1)  # (S=16, D=6): three opposite pairs
    assert sorted(tw.pair_units(kernel)) == [[0, 2], [1, 4], [3, 5]]
    assert sorted(tw.pair_units(kernel[:, :5]))[-1:] == [[3]]  # an odd unit out stands alone
    smooth = np.outer(np.cos(np.linspace(0, np.pi, 8)), np.ones(8))  # half a cycle over the grid
    checkerboard = (-1.0) ** np.add.outer(np.arange(8), np.arange(8))
    assert tw.unit_frequency(np.ones((8, 8))) == 0.0
    assert tw.unit_frequency(smooth) < 0.2 < tw.unit_frequency(checkerboard) == pytest.approx(np.sqrt(0.5))


def test_a_bad_option_or_a_missing_data_set_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load("data_size").main(["--quick", "--fractions", "0.5,2", "--data-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        load("compute").main(["--quick", "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "no data set" in error
    assert "--download" not in error and "Leave out --data-dir to use CIFAR-10" in error  # no option they lack
    for name, options, says in (
            ("compute", ["--models", "foo,cnn-micro"], "unknown model 'foo'"),
            ("compute", ["--models", "micro/4,cnn-foo"], "unknown model 'cnn-foo'"),
            ("compute", ["--models", "micro/4,cnn-micro,micro/4"], "a model named twice"),
            ("permutations", ["--seed", "-1"], "--seed"),
            ("data_size", ["--fractions", "0.5"], "two different fractions or more"),
            ("data_size", ["--fractions", "0.5,0.5"], "two different fractions or more")):
        with pytest.raises(SystemExit) as exit_info:
            load(name).main(["--quick", "--data-dir", str(tmp_path), *options])
        error = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(error.splitlines()) == 1 and says in error, (options, error)


def test_an_experiment_refuses_a_data_set_without_test_images(tmp_path, capsys):
    full = fake_cifar(num_train=40, num_test=4, size=8)
    save_folder(tmp_path / "no-test", tm.data.Dataset(full.train_images, full.train_labels, full.test_images[:0],
                                                      full.test_labels[:0], full.class_names))
    with pytest.raises(SystemExit) as exit_info:
        load("compute").main(["--quick", "--data-dir", str(tmp_path / "no-test"), "--out", str(tmp_path / "o")])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "holds 40 training and 0 test images: an experiment needs both" in error


def test_the_data_size_verdict_names_the_largest_subset_it_trained():
    verdict = load("data_size").gap_verdict
    gap = {"smallest": 3.0, "largest": 1.0, "shrinks": True}
    assert verdict(gap, largest=0.6).endswith("+3.00 points on the smallest subset and +1.00 on the largest subset "
                                              "(60%)")
    assert verdict(gap, largest=1.0).endswith("on the whole set")
    assert verdict({"smallest": 2.0, "largest": -1.0, "shrinks": True}, 0.5).endswith("leads on the largest subset "
                                                                                      "(50%)")


def test_fewer_training_images_than_a_batch_is_one_line_and_exit_2(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load("permutations").main(["--quick", "--data-dir", str(data_dir), "--out", str(tmp_path), "--train-size",
                                   "20", "--backend", "numpy"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "less than one batch of 32" in error
