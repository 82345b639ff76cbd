"""Export and conversion: the official JAX ``.npz`` layout, and the state dict of timm's ``MlpMixer``.

**Official layout.** ``save_official(model_or_params, path)`` writes the parameters alone (no optimiser state, no
metadata) as float32 under exactly the official names and shapes (``stem/kernel`` (P, P, C_in, C), ...,
``head/bias`` (K,)). That is what the official code reads: ``vit_jax/checkpoint.py``'s ``load`` takes every array
of the file with ``np.load(allow_pickle=False)``, splits the names at '/' into a nested tree (``recover_tree``)
and renumbers ``Name_i`` submodules per class (``convert_pre_linen``, which leaves this layout as it is).
``tinymixer.training.checkpoint.load_model`` reads it back, its configuration taken off the shapes.

**timm.** ``to_timm_state_dict(params)`` gives the state dict of ``timm.models.mlp_mixer.MlpMixer`` as NumPy
arrays (``to_torch`` makes tensors of them), ``from_timm_state_dict(state_dict)`` the reverse, with the
configuration read off the shapes. The names, from timm's ``MlpMixer`` (``PatchEmbed`` stem, ``MixerBlock``s of
two ``Mlp``s, ``LayerNorm(eps=1e-6)``, a ``Linear`` head):

==========================================  ================================================  =========================
official (Flax)                             timm                                              array
==========================================  ================================================  =========================
``stem/kernel`` (P, P, C_in, C)             ``stem.proj.weight`` (C, C_in, P, P)              HWIO -> OIHW
``stem/bias``                               ``stem.proj.bias``
``MixerBlock_i/LayerNorm_0/{scale,bias}``   ``blocks.i.norm1.{weight,bias}``
``MixerBlock_i/token_mixing/Dense_j/...``   ``blocks.i.mlp_tokens.fc{j+1}.{weight,bias}``     kernel (in, out)
``MixerBlock_i/LayerNorm_1/{scale,bias}``   ``blocks.i.norm2.{weight,bias}``                  -> weight (out, in)
``MixerBlock_i/channel_mixing/Dense_j/...`` ``blocks.i.mlp_channels.fc{j+1}.{weight,bias}``   (transposed)
``pre_head_layer_norm/{scale,bias}``        ``norm.{weight,bias}``
``head/{kernel,bias}``                      ``head.{weight,bias}``                            transposed
==========================================  ================================================  =========================

timm itself has no reader of the official Mixer ``.npz`` (its ``mixer_*.goog_*`` weights are published already
converted to ``.pth``, and its ``checkpoint_filter_fn`` only renames Facebook's ResMLP keys), so this module is the
bridge. Both flatten the patch grid row-major into tokens (official: ``rearrange('n h w c -> n (h w) c')``; timm:
``flatten(2).transpose(1, 2)`` of the conv's NCHW output), so the token axis needs no permutation.

**GELU.** The official Mixer uses Flax's ``nn.gelu``, the tanh approximation; timm's ``MlpMixer`` uses
``nn.GELU()``, the exact erf form. The arrays convert exactly, but the function changes slightly: a timm model
computes what tinymixer computes with ``gelu="erf"``. The two GELUs differ by at most 4.7e-4 (near |x| = 2.7);
converting a tanh checkpoint to timm moved the logits of random ``micro/4`` and ``tiny/4`` models (float64, 32x32
inputs in [-1, 1], logits of order 1) by 0.9e-4 to 2.6e-4, 0.4e-4 to 2.7e-4 of the largest logit, and changed no
predicted class (``tests/test_convert.py`` checks the order of magnitude). Trained, deeper models may move more;
fine-tuning in timm absorbs it. ``model_from_timm`` builds the tinymixer model of a timm state dict with
``gelu="erf"``, which reproduces timm's logits; weights that came from the official JAX code (timm's
``mixer_*.goog_*``) were trained with tanh, so ``gelu="tanh"`` is their original function.

PyTorch is not needed by this module except to read or write ``.pth`` files (``to_torch``, ``load_pth``,
``save_pth``, the command line), which import it when called.

Command line: ``python -m tinymixer.transfer.convert IN OUT``; the direction follows the suffixes:
``.npz -> .pth``/``.pt`` (a tinymixer or official checkpoint to a timm state dict), ``.pth``/``.pt -> .npz`` (to
the official layout), ``.npz -> .npz`` (a tinymixer checkpoint's parameters alone, in the official layout).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import to_host
from ..nn.mixer import param_shapes, sizes_from_params
from ..training.checkpoint import CheckpointError, load_checkpoint
from ..util.cli import Parser
from ..util.files import atomic_open

NPZ_SUFFIXES = (".npz",)
TORCH_SUFFIXES = (".pth", ".pt")


class ConversionError(ValueError):
    """The input is not an MLP-Mixer in the expected layout, or cannot be converted; the message says why."""


# ----------------------------------------------------------------------------------------------------------------
# The official layout


def _host_params(model_or_params: Any) -> dict[str, np.ndarray]:
    """The parameters of a model (anything with a ``params`` dict) or of a params dict, as NumPy arrays."""
    params = model_or_params.params if hasattr(model_or_params, "params") else model_or_params
    if not isinstance(params, Mapping):
        raise ConversionError(f"expected an MlpMixer or a dict of parameters, got {type(model_or_params).__name__}")
    return {str(name): to_host(value) for name, value in params.items()}


def official_config(params: Mapping[str, Any]) -> dict[str, int]:
    """The sizes implied by parameters in the official layout (``nn.mixer.sizes_from_params``: every official name
    present with its exact shape, and nothing else). Raises ConversionError naming what is missing, extra or of
    the wrong shape."""
    try:
        return sizes_from_params(params)
    except ValueError as exc:
        raise ConversionError(f"not an MLP-Mixer in the official layout: {exc}") from None


def official_params(model_or_params: Any) -> dict[str, np.ndarray]:
    """The parameters in the official layout: exactly the official names, in forward order, as float32 NumPy
    arrays. Accepts an ``MlpMixer`` or its ``params`` dict (on any backend); anything else in the dict (an
    optimiser's state, metadata) is an error rather than silently dropped."""
    params = _host_params(model_or_params)
    order = param_shapes(**official_config(params))
    return {name: np.ascontiguousarray(params[name], dtype=np.float32) for name in order}


def save_official(model_or_params: Any, path: Path | str) -> Path:
    """Write a model's parameters as an official-layout ``.npz`` (float32, parameters only), atomically.

    ``vit_jax``'s ``checkpoint.load`` and ``tinymixer.training.checkpoint.load_model`` read it; a model loaded back
    gives the same logits as the one saved (a float64 model's weights are rounded to float32, as in any official file).
    """
    path = Path(path)
    arrays = official_params(model_or_params)
    with atomic_open(path) as f:
        np.savez(f, **arrays)
    return path


# ----------------------------------------------------------------------------------------------------------------
# timm's MlpMixer


def _timm_name(official: str) -> str:
    """The timm state-dict name of an official parameter name."""
    parts = official.split("/")
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[parts[-1]]
    if parts[0] == "stem":
        return f"stem.proj.{leaf}"
    if parts[0] == "pre_head_layer_norm":
        return f"norm.{leaf}"
    if parts[0] == "head":
        return f"head.{leaf}"
    block = parts[0].removeprefix("MixerBlock_")
    if parts[1] in ("LayerNorm_0", "LayerNorm_1"):
        return f"blocks.{block}.norm{int(parts[1][-1]) + 1}.{leaf}"
    mlp = {"token_mixing": "mlp_tokens", "channel_mixing": "mlp_channels"}[parts[1]]
    return f"blocks.{block}.{mlp}.fc{int(parts[2].removeprefix('Dense_')) + 1}.{leaf}"


def _to_timm_array(official: str, value: np.ndarray) -> np.ndarray:
    """An official array in timm's layout: the conv kernel HWIO -> OIHW, Dense kernels (in, out) -> (out, in)."""
    if official == "stem/kernel":
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if official.endswith("/kernel"):
        return np.ascontiguousarray(value.T)
    return np.ascontiguousarray(value)


def _from_timm_array(official: str, value: np.ndarray) -> np.ndarray:
    """The inverse of ``_to_timm_array``."""
    if official == "stem/kernel":
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    if official.endswith("/kernel"):
        return np.ascontiguousarray(value.T)
    return np.ascontiguousarray(value)


def timm_names(num_blocks: int) -> dict[str, str]:
    """Official name -> timm name for a Mixer of ``num_blocks`` blocks, in forward order (timm's order too)."""
    shapes = param_shapes(num_blocks, 1, 1, 1, 1, 1, 1, 1)
    return {name: _timm_name(name) for name in shapes}


def to_timm_state_dict(model_or_params: Any) -> dict[str, np.ndarray]:
    """The state dict of ``timm.models.mlp_mixer.MlpMixer`` for a tinymixer model or official-layout params, as
    NumPy arrays in timm's order (``to_torch`` turns it into tensors for ``load_state_dict``). The dtype is kept.

    The timm model to load it into: ``MlpMixer(num_classes=K, img_size=(H, W), in_chans=C_in, patch_size=P,
    num_blocks=N, embed_dim=C, mlp_ratio=(D_S / C, D_C / C))`` (``timm_kwargs`` gives them). It runs the exact
    (erf) GELU: it computes what tinymixer computes with ``gelu="erf"``; see the module docstring for the
    difference from the official tanh form.
    """
    params = _host_params(model_or_params)
    config = official_config(params)
    return {timm: _to_timm_array(name, params[name]) for name, timm in timm_names(config["num_blocks"]).items()}


def _as_numpy(value: Any) -> np.ndarray:
    """A NumPy array of a NumPy/CuPy array or a torch tensor (on any device; half and bfloat16 become float32)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch here
        value = value.detach().cpu()
        if value.dtype.is_floating_point and value.element_size() < 4:
            value = value.float()
        return value.numpy()
    return to_host(value)


def from_timm_state_dict(state_dict: Mapping[str, Any], image_size: int | tuple[int, int] | None = None,
                         ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Official-layout params and the ``MlpMixer`` keywords of a timm ``MlpMixer`` state dict (torch tensors or
    arrays). Returns ``(params, config)``; ``MlpMixer(**config)`` then ``load_params_into`` (or ``model_from_timm``)
    gives the model.

    The configuration is read off the shapes. A state dict does not say the image's height and width, only the
    number of tokens S: by default the grid is square (side sqrt(S) * P); give ``image_size`` otherwise.
    ``config["gelu"]`` is ``"erf"``, the form timm computes. Float64 arrays stay float64; every other float
    dtype becomes float32. Any missing, unexpected or misshapen entry (another architecture: a ViT, ResMLP, gMLP)
    raises ConversionError.
    """
    arrays = {str(k): _as_numpy(v) for k, v in state_dict.items()}
    required = ["stem.proj.weight", "blocks.0.mlp_tokens.fc1.weight", "blocks.0.mlp_channels.fc1.weight",
                "head.weight"]
    missing = [k for k in required if k not in arrays]
    if missing:
        found = ", ".join(list(arrays)[:4]) + (", ..." if len(arrays) > 4 else "")
        raise ConversionError(f"not a timm MlpMixer state dict: no {missing[0]!r} (found {found or 'nothing'})")
    block_ids = {k.split(".")[1] for k in arrays if k.startswith("blocks.")}
    names = timm_names(len(block_ids))
    extra = [k for k in arrays if k not in names.values()]
    if extra:
        raise ConversionError(f"not a timm MlpMixer state dict: unexpected {', '.join(extra[:3])}"
                              f"{', ...' if len(extra) > 3 else ''}")
    float64 = all(a.dtype == np.float64 for a in arrays.values())
    dtype = np.float64 if float64 else np.float32
    params = {}
    for official, timm in names.items():
        if timm not in arrays:
            raise ConversionError(f"not a timm MlpMixer state dict: no {timm!r}")
        value = arrays[timm]
        expected_ndim = 4 if official == "stem/kernel" else 2 if official.endswith("/kernel") else 1
        if value.ndim != expected_ndim:
            raise ConversionError(f"{timm} has shape {value.shape}; a timm MlpMixer's is {expected_ndim}-D")
        params[official] = _from_timm_array(official, value).astype(dtype, copy=False)
    try:
        sizes = official_config(params)
    except ConversionError as exc:
        raise ConversionError(f"not a timm MlpMixer state dict of consistent shapes ({exc})") from exc
    p, s = sizes["patch_size"], sizes["num_tokens"]
    if image_size is None:
        side = int(round(s ** 0.5))
        if side * side != s:
            raise ConversionError(f"{s} tokens is not a square grid: give image_size=(H, W)")
        h, w = side * p, side * p
    else:
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if h % p or w % p or (h // p) * (w // p) != s:
            raise ConversionError(f"image size {h}x{w} with patch {p} does not give the state dict's {s} tokens")
    config = {"num_classes": sizes["num_classes"], "num_blocks": sizes["num_blocks"], "patch_size": p,
              "hidden_dim": sizes["hidden_dim"], "tokens_mlp_dim": sizes["tokens_mlp_dim"],
              "channels_mlp_dim": sizes["channels_mlp_dim"], "image_size": [h, w],
              "in_channels": sizes["in_channels"], "gelu": "erf", "dtype": np.dtype(dtype).name}
    return params, config


def model_from_timm(state_dict: Mapping[str, Any], image_size: int | tuple[int, int] | None = None,
                    dtype: str | None = None, gelu: str = "erf") -> Any:
    """A tinymixer ``MlpMixer`` holding a timm ``MlpMixer`` state dict, with the exact GELU that timm computes
    (``gelu="tanh"`` for weights trained by the official JAX code, whose function that is)."""
    from ..nn.mixer import MlpMixer
    from ..training.checkpoint import load_params_into

    params, config = from_timm_state_dict(state_dict, image_size)
    config["gelu"] = gelu
    if dtype is not None:
        config["dtype"] = dtype
    model = MlpMixer(**config)
    load_params_into(model, params, "timm state dict")
    return model


def timm_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``timm.models.mlp_mixer.MlpMixer`` keywords of a tinymixer model configuration (``model.config()``
    or the ``config`` of ``from_timm_state_dict``). timm computes each MLP width as ``int(ratio * C)``."""
    c = config["hidden_dim"]
    image_size = config.get("image_size", 224)
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return {"num_classes": config["num_classes"], "img_size": h if h == w else (h, w),
            "in_chans": config.get("in_channels", 3), "patch_size": config["patch_size"],
            "num_blocks": config["num_blocks"], "embed_dim": c,
            "mlp_ratio": (config["tokens_mlp_dim"] / c, config["channels_mlp_dim"] / c)}


# ----------------------------------------------------------------------------------------------------------------
# PyTorch files (torch imported only here)


def _torch() -> Any:
    """The torch module, or an ImportError saying that only ``.pth`` conversion needs it and how to get it."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError("converting to or from PyTorch tensors or .pth files needs PyTorch, which tinymixer does "
                          "not otherwise use: pip install torch (CPU build: --index-url "
                          "https://download.pytorch.org/whl/cpu)") from exc
    return torch


def to_torch(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The same state dict as torch tensors (copies, contiguous), ready for ``load_state_dict`` or
    ``torch.save``."""
    torch = _torch()
    return {name: torch.tensor(np.ascontiguousarray(_as_numpy(value))) for name, value in state_dict.items()}


def save_pth(state_dict: Mapping[str, Any], path: Path | str) -> Path:
    """``torch.save`` a state dict (arrays or tensors) as tensors, atomically."""
    torch = _torch()
    path = Path(path)
    with atomic_open(path) as f:
        torch.save(to_torch(state_dict), f)
    return path


def load_pth(path: Path | str) -> dict[str, Any]:
    """Read a ``.pth``/``.pt`` state dict with ``torch.load(weights_only=True)`` (no code in the file runs).
    A training checkpoint that wraps the weights under ``state_dict`` or ``model`` is unwrapped, and a
    ``module.`` prefix (DistributedDataParallel) is dropped."""
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist or is not a file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, KeyError ...)
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch colours some of its messages
        first_line = text.splitlines()[0][:200] if text else ""
        hint = "" if len(first_line) > 8 else "; is it a file torch.save wrote?"  # e.g. "KeyError: 101" on text
        raise ConversionError(f"cannot read {path} as a PyTorch state dict ({type(exc).__name__}: "
                              f"{first_line}){hint}") from exc
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping):
        raise ConversionError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return {str(k).removeprefix("module."): v for k, v in loaded.items()}


# ----------------------------------------------------------------------------------------------------------------
# Command line


def _describe(config: Mapping[str, Any]) -> str:
    h, w = config["image_size"] if not isinstance(config["image_size"], int) else [config["image_size"]] * 2
    return (f"{config['num_blocks']} blocks, patch {config['patch_size']}, C {config['hidden_dim']}, "
            f"D_S {config['tokens_mlp_dim']}, D_C {config['channels_mlp_dim']}, {h}x{w}x{config['in_channels']} "
            f"images, {config['num_classes']} classes")


def _npz_model(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
    """Params, configuration and GELU form of a tinymixer or official ``.npz``."""
    try:
        params, _, meta = load_checkpoint(path)
    except CheckpointError as exc:
        raise ConversionError(str(exc)) from exc
    try:
        sizes = official_config(params)
    except ConversionError as exc:
        raise ConversionError(f"{path}: {exc}") from exc
    model = meta.get("model", {})
    side = int(round(sizes["num_tokens"] ** 0.5)) * sizes["patch_size"]
    config = {**{k: v for k, v in sizes.items() if k != "num_tokens"},
              "image_size": model.get("image_size", [side, side]), "gelu": model.get("gelu", "tanh")}
    return params, config, ("a tinymixer checkpoint" if model else "an official-layout checkpoint")


def convert_file(source: Path | str, target: Path | str) -> str:
    """Convert ``source`` to ``target``, the direction following the suffixes (see the module docstring); returns
    a summary of what was written. Raises ConversionError for anything that cannot be converted."""
    source, target = Path(source), Path(target)
    src, dst = source.suffix.lower(), target.suffix.lower()
    known = NPZ_SUFFIXES + TORCH_SUFFIXES
    for path, suffix in [(source, src), (target, dst)]:
        if suffix not in known:
            raise ConversionError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; use .npz (official "
                                  f"layout, tinymixer checkpoints) or .pth/.pt (timm state dict)")
    if src in TORCH_SUFFIXES and dst in TORCH_SUFFIXES:
        raise ConversionError("both files are PyTorch state dicts; one side must be an .npz")
    if not source.is_file():
        raise ConversionError(f"{source} does not exist or is not a file")
    if source.resolve() == target.resolve():
        raise ConversionError(f"{source} is both the input and the output")

    if src in TORCH_SUFFIXES:
        state_dict = load_pth(source)  # its errors name the file already
        try:
            params, config = from_timm_state_dict(state_dict)
        except ConversionError as exc:
            raise ConversionError(f"{source}: {exc}") from exc
        save_official(params, target)
        return (f"wrote {target}: official-layout Mixer ({_describe(config)}), float32.\n"
                f"GELU: timm computes these weights with the exact (erf) form; tinymixer.training.checkpoint.load_model"
                f"('{target}') builds the official tanh form (the original function of weights trained by the "
                f"official JAX code), which differs slightly; for timm's function use gelu='erf': "
                f"tinymixer.transfer.convert.model_from_timm(tinymixer.transfer.convert.load_pth('{source}'))")

    params, config, kind = _npz_model(source)
    if dst in NPZ_SUFFIXES:
        save_official(params, target)
        return f"wrote {target}: the parameters of {kind} in the official layout ({_describe(config)}), float32"
    save_pth(to_timm_state_dict(params), target)
    kwargs = ", ".join(f"{k}={v!r}" for k, v in timm_kwargs(config).items())
    note = ("the same function as this tinymixer model (gelu='erf')" if config["gelu"] == "erf" else
            "this checkpoint uses the tanh GELU (the official form) and timm the exact erf form, so its logits "
            "differ slightly (about 1e-4 on logits of order 1 in small models)")
    return (f"wrote {target}: timm MlpMixer state dict of {kind} ({_describe(config)}).\n"
            f"load it with timm.models.mlp_mixer.MlpMixer({kwargs}).load_state_dict(torch.load('{target}'))\n"
            f"GELU: {note}")


def main(argv: list[str] | None = None) -> int:
    """``python -m tinymixer.transfer.convert IN OUT``: exit 0 on success, 2 with a one-line error on bad input."""
    parser = Parser(
        prog="python -m tinymixer.transfer.convert",
        description="Convert MLP-Mixer weights; the direction follows the suffixes. IN.npz (a tinymixer checkpoint "
                    "or the official layout) -> OUT.pth/.pt: a timm MlpMixer state dict (needs PyTorch). "
                    "IN.pth/.pt (a timm MlpMixer state dict) -> OUT.npz: the official layout. IN.npz -> OUT.npz: "
                    "the parameters alone in the official layout (float32, no optimiser state or metadata).")
    parser.add_argument("source", type=Path, help="the file to convert (.npz, .pth or .pt)")
    parser.add_argument("target", type=Path, help="the file to write (.npz, .pth or .pt)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    args = parser.parse_args(argv)
    try:
        if args.target.exists() and not args.overwrite:
            raise ConversionError(f"{args.target} exists; choose another name or pass --overwrite")
        print(convert_file(args.source, args.target))
    except (ConversionError, ImportError) as exc:
        print(f"error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
