"""Export to the official layout and conversion to and from timm's MlpMixer (``tinymixer/transfer/convert.py``).

The timm side is checked against an independent PyTorch forward of timm's ``MlpMixer`` written here from timm's
source (conv stem with stride P, row-major flattening of the grid, LayerNorm eps 1e-6, ``Linear`` layers, exact
GELU, mean over tokens): a converted state dict must give tinymixer's logits (``gelu="erf"``) to ~1e-12 in float64.
Those tests need PyTorch (the ``test`` extra): without it they are skipped, except under CI (``CI`` set), where a
missing PyTorch is a failure. If timm itself is importable, one more test loads the state dict into timm's own
class with ``strict=True``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import tinymixer as tm
from tinymixer.training.checkpoint import load_model, save_checkpoint
from tinymixer.transfer import convert

pytestmark = pytest.mark.host  # file formats and PyTorch state dicts: host work

try:
    import torch
except ImportError:
    if os.environ.get("CI"):
        raise  # under CI a missing torch must fail, not skip
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (pip install -e '.[test]')")

SMALL = {"num_classes": 5, "num_blocks": 2, "patch_size": 4, "hidden_dim": 16, "tokens_mlp_dim": 8,
         "channels_mlp_dim": 64}  # D_S = C / 2 and D_C = 4 C: timm's default mlp_ratio (0.5, 4.0)


def small_model(dtype: str = "float32", gelu: str = "tanh", image_size=(16, 12), seed: int = 0) -> tm.MlpMixer:
    """A small Mixer with every parameter randomised (as if trained: no zero head, no unit scales)."""
    model = tm.MlpMixer(**SMALL, image_size=image_size, dtype=dtype, gelu=gelu, seed=seed)
    r = np.random.default_rng(seed + 100)
    for value in model.params.values():
        value[...] += (0.2 * r.standard_normal(value.shape)).astype(value.dtype)
    return model


def images_for(model: tm.MlpMixer, n: int = 3, seed: int = 1) -> np.ndarray:
    h, w = model.image_size
    return np.random.default_rng(seed).uniform(-1, 1, (n, h, w, model.in_channels)).astype(model.dtype)


def vit_like_state_dict() -> dict[str, np.ndarray]:
    """A few entries of a timm ViT state dict: another architecture, lacking the Mixer keys."""
    return {"cls_token": np.zeros((1, 1, 16), np.float32), "pos_embed": np.zeros((1, 13, 16), np.float32),
            "patch_embed.proj.weight": np.zeros((16, 3, 4, 4), np.float32),
            "patch_embed.proj.bias": np.zeros(16, np.float32), "head.weight": np.zeros((5, 16), np.float32)}


# ----------------------------------------------------------------------------------------------------------------
# The official layout


def test_save_official_writes_exactly_the_official_params_and_reloads_to_identical_logits(tmp_path):
    model = small_model(image_size=16)
    path = convert.save_official(model, tmp_path / "official.npz")
    expected = model.param_shapes()
    with np.load(path, allow_pickle=False) as npz:  # as vit_jax's checkpoint.load reads it: no pickles
        arrays = {name: npz[name] for name in npz.files}
    assert list(arrays) == list(expected)  # every official name, forward order, no metadata or optimiser keys
    for name, value in arrays.items():
        assert value.dtype == np.float32 and value.shape == expected[name], name
        np.testing.assert_array_equal(value, model.params[name])
    tree = recover_tree(arrays)  # vit_jax's recover_tree: names split at '/'
    assert list(tree) == ["stem"] + [f"MixerBlock_{i}" for i in range(2)] + ["pre_head_layer_norm", "head"]
    assert set(tree["MixerBlock_0"]) == {"LayerNorm_0", "token_mixing", "LayerNorm_1", "channel_mixing"}
    assert set(tree["MixerBlock_1"]["token_mixing"]["Dense_1"]) == {"kernel", "bias"}

    loaded = load_model(path)
    assert loaded.config() == model.config()
    x = images_for(model)
    np.testing.assert_array_equal(loaded(x), model(x))


def recover_tree(flat: dict[str, np.ndarray]) -> dict:
    """The nesting of vit_jax/checkpoint.py's recover_tree: 'a/b/c' -> tree['a']['b']['c']."""
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *path, leaf = name.split("/")
        for part in path:
            node = node.setdefault(part, {})
        assert isinstance(node, dict) and leaf not in node, name  # no name is both a leaf and a module
        node[leaf] = value
    return tree


def test_save_official_from_a_training_checkpoint_drops_nothing_it_should_keep(tmp_path):
    """A tinymixer checkpoint (optimiser state, metadata) exported through the CLI's path: parameters only."""
    model = small_model(dtype="float64", image_size=16)
    save_checkpoint(tmp_path / "run.npz", model.params, {k: np.ones_like(v) for k, v in model.params.items()},
                    {"model": model.config(), "step": 7})
    assert convert.main([str(tmp_path / "run.npz"), str(tmp_path / "official.npz")]) == 0
    with np.load(tmp_path / "official.npz", allow_pickle=False) as npz:
        assert npz.files == list(model.param_shapes())
        assert all(npz[k].dtype == np.float32 for k in npz.files)
        np.testing.assert_array_equal(npz["head/kernel"], model.params["head/kernel"].astype(np.float32))


def test_official_params_refuses_extra_missing_or_misshapen_entries():
    model = small_model()
    params = dict(model.params)
    with pytest.raises(convert.ConversionError, match="unexpected optimizer/stem/kernel"):
        convert.official_params({**params, "optimizer/stem/kernel": params["stem/kernel"]})
    with pytest.raises(convert.ConversionError, match="missing MixerBlock_1/LayerNorm_1/bias"):
        convert.official_params({k: v for k, v in params.items() if k != "MixerBlock_1/LayerNorm_1/bias"})
    with pytest.raises(convert.ConversionError, match="wrong shape: head/bias"):
        convert.official_params({**params, "head/bias": np.zeros(4)})
    with pytest.raises(convert.ConversionError, match="no 'stem/kernel'"):
        convert.official_params({"Transformer/encoder_norm/scale": np.ones(16), "embedding/kernel": np.ones(4)})


# ----------------------------------------------------------------------------------------------------------------
# timm's layout


def test_to_timm_names_shapes_and_order():
    model = small_model()
    state = convert.to_timm_state_dict(model)
    c, k, s = 16, 5, 12
    expected = {"stem.proj.weight": (c, 3, 4, 4), "stem.proj.bias": (c,)}
    for i in range(2):
        expected |= {f"blocks.{i}.norm1.weight": (c,), f"blocks.{i}.norm1.bias": (c,),
                     f"blocks.{i}.mlp_tokens.fc1.weight": (8, s), f"blocks.{i}.mlp_tokens.fc1.bias": (8,),
                     f"blocks.{i}.mlp_tokens.fc2.weight": (s, 8), f"blocks.{i}.mlp_tokens.fc2.bias": (s,),
                     f"blocks.{i}.norm2.weight": (c,), f"blocks.{i}.norm2.bias": (c,),
                     f"blocks.{i}.mlp_channels.fc1.weight": (64, c), f"blocks.{i}.mlp_channels.fc1.bias": (64,),
                     f"blocks.{i}.mlp_channels.fc2.weight": (c, 64), f"blocks.{i}.mlp_channels.fc2.bias": (c,)}
    expected |= {"norm.weight": (c,), "norm.bias": (c,), "head.weight": (k, c), "head.bias": (k,)}
    assert {name: value.shape for name, value in state.items()} == expected
    assert list(state) == list(expected)  # timm's module order
    np.testing.assert_array_equal(state["stem.proj.weight"], model.params["stem/kernel"].transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(state["head.weight"], model.params["head/kernel"].T)
    assert all(v.flags.c_contiguous and v.dtype == np.float32 for v in state.values())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_timm_round_trip_is_exact(dtype):
    model = small_model(dtype=dtype)
    params, config = convert.from_timm_state_dict(convert.to_timm_state_dict(model), image_size=(16, 12))
    assert list(params) == list(model.params)
    for name, value in params.items():
        assert value.dtype == model.dtype
        np.testing.assert_array_equal(value, model.params[name])
    assert config == model.config() | {"gelu": "erf"}


def test_from_timm_reads_a_square_grid_by_default_and_asks_for_the_size_otherwise():
    _, config = convert.from_timm_state_dict(convert.to_timm_state_dict(small_model(image_size=16)))
    assert config["image_size"] == [16, 16]
    state = convert.to_timm_state_dict(small_model(image_size=(16, 12)))  # 12 tokens: not a square
    with pytest.raises(convert.ConversionError, match="not a square grid"):
        convert.from_timm_state_dict(state)
    with pytest.raises(convert.ConversionError, match="does not give"):
        convert.from_timm_state_dict(state, image_size=16)


def test_from_timm_refuses_other_architectures():
    with pytest.raises(convert.ConversionError, match="not a timm MlpMixer state dict: no 'stem.proj.weight'"):
        convert.from_timm_state_dict(vit_like_state_dict())
    state = convert.to_timm_state_dict(small_model())
    resmlp = {k.replace("mlp_tokens.fc1", "linear_tokens"): v for k, v in state.items()}
    with pytest.raises(convert.ConversionError, match="no 'blocks.0.mlp_tokens.fc1.weight'"):
        convert.from_timm_state_dict(resmlp)
    with pytest.raises(convert.ConversionError, match="unexpected blocks.0.ls1"):
        convert.from_timm_state_dict({**state, "blocks.0.ls1": np.ones(16)})
    with pytest.raises(convert.ConversionError, match="no 'blocks.1.norm2.bias'"):
        convert.from_timm_state_dict({k: v for k, v in state.items() if k != "blocks.1.norm2.bias"})
    with pytest.raises(convert.ConversionError, match="consistent shapes"):
        convert.from_timm_state_dict({**state, "blocks.1.mlp_channels.fc2.bias": np.zeros(3)})


def test_tanh_to_erf_changes_logits_only_slightly():
    """What converting an official (tanh) checkpoint to timm (erf) does to a small model's function: a change of
    order 1e-4 relative, not 0 and not large."""
    tanh_model = small_model(dtype="float64", gelu="tanh", image_size=16)
    erf_model = tm.MlpMixer(**(tanh_model.config() | {"gelu": "erf"}))
    for name, value in erf_model.params.items():
        value[...] = tanh_model.params[name]
    x = images_for(tanh_model, n=8)
    a, b = tanh_model(x), erf_model(x)
    relative = np.abs(a - b).max() / np.abs(a).max()
    assert 1e-6 < relative < 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Against PyTorch (an independent forward of timm's MlpMixer; timm's own class when it is installed)


def timm_mixer_forward(state: dict, images):
    """timm's MlpMixer.forward, written from timm/models/mlp_mixer.py with torch.nn.functional: PatchEmbed
    (Conv2d, kernel = stride = P, then flatten(2).transpose(1, 2)), MixerBlocks (x + mlp_tokens(norm1(x)^T)^T,
    x + mlp_channels(norm2(x))), LayerNorm(eps=1e-6), mean over tokens, Linear head; Mlp = fc1, nn.GELU(), fc2."""
    f = torch.nn.functional
    patch = state["stem.proj.weight"].shape[-1]
    x = f.conv2d(images, state["stem.proj.weight"], state["stem.proj.bias"], stride=patch)  # (B, C, H/P, W/P)
    x = x.flatten(2).transpose(1, 2)  # (B, S, C)

    def norm(v, prefix):
        return f.layer_norm(v, (v.shape[-1],), state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-6)

    def mlp(v, prefix):
        h = f.gelu(f.linear(v, state[f"{prefix}.fc1.weight"], state[f"{prefix}.fc1.bias"]), approximate="none")
        return f.linear(h, state[f"{prefix}.fc2.weight"], state[f"{prefix}.fc2.bias"])

    num_blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(num_blocks):
        x = x + mlp(norm(x, f"blocks.{i}.norm1").transpose(1, 2), f"blocks.{i}.mlp_tokens").transpose(1, 2)
        x = x + mlp(norm(x, f"blocks.{i}.norm2"), f"blocks.{i}.mlp_channels")
    return f.linear(norm(x, "norm").mean(dim=1), state["head.weight"], state["head.bias"])


@needs_torch
def test_timm_state_dict_computes_tinymixer_erf_logits_in_pytorch():
    model = small_model(dtype="float64", gelu="erf")
    x = images_for(model)
    state = convert.to_torch(convert.to_timm_state_dict(model))
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in state.values())
    theirs = timm_mixer_forward(state, torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    ours = model(x)
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-12

    back = convert.model_from_timm(state, image_size=(16, 12))  # and the reverse direction: tensors in
    assert back.gelu == "erf" and back.dtype == np.float64
    np.testing.assert_array_equal(back(x), ours)


@needs_torch
def test_timm_module_loads_the_state_dict_strictly_and_gives_the_same_logits():
    mlp_mixer = pytest.importorskip("timm.models.mlp_mixer")  # timm is optional: not in the test extra
    model = small_model(dtype="float64", gelu="erf")
    kwargs = convert.timm_kwargs(model.config())
    assert kwargs == {"num_classes": 5, "img_size": (16, 12), "in_chans": 3, "patch_size": 4, "num_blocks": 2,
                      "embed_dim": 16, "mlp_ratio": (0.5, 4.0)}
    net = mlp_mixer.MlpMixer(**kwargs).double().eval()
    net.load_state_dict(convert.to_torch(convert.to_timm_state_dict(model)), strict=True)
    x = images_for(model)
    with torch.no_grad():
        theirs = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert np.abs(model(x) - theirs).max() / np.abs(theirs).max() < 1e-12
    params, _ = convert.from_timm_state_dict(net.state_dict(), image_size=(16, 12))
    for name, value in params.items():
        np.testing.assert_array_equal(value, model.params[name])


@needs_torch
def test_load_pth_unwraps_training_checkpoints(tmp_path):
    state = convert.to_torch(convert.to_timm_state_dict(small_model()))
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "ckpt.pth")
    loaded = convert.load_pth(tmp_path / "ckpt.pth")
    assert list(loaded) == list(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_torch_is_not_imported_by_the_module_and_its_absence_is_a_clear_error(monkeypatch):
    code = "import sys, tinymixer.transfer.convert; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "torch", None)  # what an environment without PyTorch looks like
    with pytest.raises(ImportError, match="needs PyTorch"):
        convert.to_torch({"head.bias": np.zeros(3)})


# ----------------------------------------------------------------------------------------------------------------
# Command line


@needs_torch
def test_cli_npz_to_pth_and_back(tmp_path, capsys):
    model = small_model(dtype="float64", gelu="erf", image_size=16)
    save_checkpoint(tmp_path / "run.npz", model.params, {}, {"model": model.config()})
    assert convert.main([str(tmp_path / "run.npz"), str(tmp_path / "mixer.pth")]) == 0
    out = capsys.readouterr().out
    assert "timm.models.mlp_mixer.MlpMixer(num_classes=5, img_size=16" in out and "gelu='erf'" in out
    state = torch.load(tmp_path / "mixer.pth", weights_only=True)
    x = images_for(model)
    theirs = timm_mixer_forward(state, torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert np.abs(model(x) - theirs).max() / np.abs(theirs).max() < 1e-12

    assert convert.main([str(tmp_path / "mixer.pth"), str(tmp_path / "back.npz")]) == 0
    assert "erf" in capsys.readouterr().out
    back = load_model(tmp_path / "back.npz")
    assert back.config() == model.config() | {"gelu": "tanh", "dtype": "float32"}  # the official layout's default
    for name, value in back.params.items():
        np.testing.assert_array_equal(value, model.params[name].astype(np.float32))


def test_cli_runs_as_a_module(tmp_path):
    """``python -m tinymixer.transfer.convert`` itself, .npz -> .npz (no torch needed)."""
    convert.save_official(small_model(image_size=16), tmp_path / "a.npz")
    done = subprocess.run([sys.executable, "-m", "tinymixer.transfer.convert", str(tmp_path / "a.npz"),
                           str(tmp_path / "b.npz")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and zipfile.is_zipfile(tmp_path / "b.npz")


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Name -> (argv, a piece of the error line)."""
    np.savez(tmp_path / "vit.npz", **{"embedding/kernel": np.zeros((4, 4, 3, 16)), "cls": np.zeros((1, 1, 16))})
    (tmp_path / "garbage.pth").write_bytes(b"not a pickle at all")
    (tmp_path / "notes.txt").write_text("hello")
    convert.save_official(small_model(image_size=16), tmp_path / "good.npz")
    cases = {
        "official layout of another architecture": (["vit.npz", "out.pth"], "no 'stem/kernel'"),
        "missing input": (["absent.npz", "out.pth"], "does not exist"),
        "unknown suffix": (["notes.txt", "out.npz"], "unknown file type '.txt'"),
        "two state dicts": (["garbage.pth", "out.pt"], "one side must be an .npz"),
        "existing output": (["good.npz", "vit.npz"], "exists; choose another name or pass --overwrite"),
    }
    if torch is not None:
        torch.save(convert.to_torch(vit_like_state_dict()), tmp_path / "vit.pth")
        torch.save([1, 2, 3], tmp_path / "list.pth")
        torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a whole module: refused by weights_only
        cases |= {"timm ViT state dict": (["vit.pth", "out.npz"], "no 'stem.proj.weight'"),
                  "not a PyTorch file": (["garbage.pth", "out.npz"], "cannot read"),
                  "a list, not a state dict": (["list.pth", "out.npz"], "list.pth holds a list, not a state dict"),
                  "a pickled module": (["module.pth", "out.npz"], "cannot read")}
    return {name: ([str(tmp_path / a) for a in argv], message) for name, (argv, message) in cases.items()}


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    for name, (argv, message) in bad_inputs(tmp_path).items():
        assert convert.main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (name, err)
        assert "\x1b[" not in err and err.count(".pth:") <= 1, (name, err)  # no terminal colours, the path once
    assert not (tmp_path / "out.npz").exists() and not (tmp_path / "out.pth").exists()
    assert convert.main([str(tmp_path / "good.npz"), str(tmp_path / "vit.npz"), "--overwrite"]) == 0


def test_cli_without_torch_is_exit_2(tmp_path, capsys, monkeypatch):
    convert.save_official(small_model(image_size=16), tmp_path / "good.npz")
    monkeypatch.setitem(sys.modules, "torch", None)
    assert convert.main([str(tmp_path / "good.npz"), str(tmp_path / "out.pth")]) == 2
    assert "needs PyTorch" in capsys.readouterr().err
