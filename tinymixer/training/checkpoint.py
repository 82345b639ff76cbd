"""Checkpoints: one ``.npz`` file, written atomically, readable like an official Mixer checkpoint.

Layout: the model's parameters under their official names (``stem/kernel``, ``MixerBlock_0/...``, ``head/bias``),
so ``np.load`` of our file looks like an official one; the optimiser's state under ``optimizer/<name>``; and the
training state (step, epoch, model configuration, metrics so far) as JSON text under ``__meta__``.

Writing goes to a temporary file in the same folder, which is flushed to disk and then renamed over the old
file (``files.atomic_open``): a crash or Ctrl-C while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import to_host
from ..util.files import atomic_open

META_KEY = "__meta__"
OPTIMIZER_PREFIX = "optimizer/"


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit; the message says which file and what to do."""


def save_checkpoint(path: Path | str, params: dict[str, Any], optimizer_state: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write parameters (and optionally optimiser state and JSON-able metadata) to ``path`` atomically. For
    ``load_model`` to rebuild the very model (a ResNet at all; a Mixer's GELU form, dtype and dropout, which its
    parameters' shapes do not show), the metadata must hold ``{"model": model.config()}``: ``save_model`` does
    that."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: to_host(value) for name, value in params.items()}
    for name, value in (optimizer_state or {}).items():
        arrays[OPTIMIZER_PREFIX + name] = to_host(value)
    arrays[META_KEY] = np.array(json.dumps(meta or {}))
    with atomic_open(path) as f:
        np.savez(f, **arrays)
    return path


def save_model(path: Path | str, model: Any, optimizer_state: dict[str, Any] | None = None,
               meta: dict[str, Any] | None = None) -> Path:
    """``save_checkpoint`` of a network with its configuration, so that ``load_model(path)`` builds the same network
    (either family, every setting) with these weights."""
    return save_checkpoint(path, model.params, optimizer_state, {"model": model.config()} | (meta or {}))


def load_checkpoint(path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint: (params, optimizer_state, meta), all on the host. Official Mixer ``.npz`` files load
    too (with empty optimiser state and meta). A missing, truncated or corrupted file raises CheckpointError."""
    path = Path(path)
    if path.is_dir():
        inside = path / "checkpoint.npz"
        hint = f"; did you mean {inside}?" if inside.exists() else ""
        raise CheckpointError(f"{path} is a folder; a checkpoint is a .npz file{hint}")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        start = f.read(4)
    if not start:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it is truncated or corrupted; it cannot be "
                              f"used. Copy it again or choose another checkpoint.")
    if start != b"PK\x03\x04":  # every .npz is a zip archive, and every zip archive starts so
        raise CheckpointError(f"{path} is not a checkpoint: a checkpoint is a .npz (zip) file, and this file is not "
                              f"one (it starts with {start!r})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}  # reading every array surfaces any damage now
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise _unreadable(path, exc) from exc
        raise CheckpointError(f"checkpoint {path} holds Python objects (pickled arrays), which no checkpoint of "
                              f"parameters does; such files are not opened here (unpickling can run code)") from exc
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise _unreadable(path, exc) from exc
    meta_text = arrays.pop(META_KEY, None)
    try:
        meta = json.loads(str(meta_text)) if meta_text is not None else {}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path} has corrupted metadata ({exc})") from exc
    optimizer_state = {k[len(OPTIMIZER_PREFIX):]: v for k, v in arrays.items() if k.startswith(OPTIMIZER_PREFIX)}
    params = {k: v for k, v in arrays.items() if not k.startswith(OPTIMIZER_PREFIX)}
    return params, optimizer_state, meta


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}): the file is truncated or corrupted "
        f"(a copy or a disk that ran out of space while it was written?). It cannot be used; copy it again or "
        f"choose another checkpoint.")


def load_model(path: Path | str, dtype: str | None = None) -> Any:
    """Rebuild the model a checkpoint holds and load its weights: ``model = load_model(path); logits = model(x)``.

    A checkpoint written by this project carries its configuration; an official Mixer ``.npz`` (parameters only)
    has its configuration read off the parameter shapes (``config_from_params``). ``dtype`` overrides the saved one.
    """
    from ..nn.architectures import model_from_config

    params, _, meta = load_checkpoint(path)
    config = model_config(params, meta, path)
    if dtype is not None:
        config["dtype"] = dtype
    try:
        model = model_from_config(config)
    except (TypeError, ValueError) as exc:  # a configuration edited, or written by another program
        raise CheckpointError(f"{path}: its model configuration {config} builds no network ({exc})") from exc
    load_params_into(model, params, path)
    return model


def config_from_params(params: dict[str, np.ndarray], path: Path | str = "checkpoint") -> dict[str, Any]:
    """The MlpMixer keywords implied by parameter shapes in the official layout (``nn.mixer.sizes_from_params``:
    the stem kernel (P, P, C_in, C) gives the patch size, input channels and width; the blocks counted give the
    depth; the first block's MLP kernels give D_S, D_C and the number of tokens S, taken as a square grid of
    sqrt(S) * P pixels a side; the head, the classes)."""
    from ..nn.mixer import sizes_from_params

    try:
        sizes = sizes_from_params(params)
    except ValueError as exc:
        raise CheckpointError(f"{path} is not in the Mixer checkpoint layout and carries no model configuration: "
                              f"{exc}. Save a network with save_model(path, model) (its configuration inside), "
                              f"or build it yourself and call load_params_into") from None
    num_tokens, p = sizes.pop("num_tokens"), sizes["patch_size"]
    side = int(round(num_tokens ** 0.5))
    if side * side != num_tokens:
        raise CheckpointError(f"{path}: {num_tokens} tokens is not a square grid; build the MlpMixer yourself "
                              f"with its image_size=(H, W) and call load_params_into")
    return sizes | {"image_size": side * p, "dtype": "float32"}


def model_config(params: dict[str, np.ndarray], meta: dict[str, Any], path: Path | str = "checkpoint"
                 ) -> dict[str, Any]:
    """The configuration of the model a checkpoint holds: the one it carries (``meta["model"]``, written by this
    project), else the Mixer's read off an official file's parameter shapes."""
    return dict(meta["model"]) if "model" in meta else config_from_params(params, path)


def load_params_into(model: Any, params: dict[str, np.ndarray], path: Path | str = "checkpoint") -> None:
    """Copy checkpoint arrays into ``model.params`` (in place, on the model's device and dtype), insisting that
    names and shapes match exactly."""
    missing = [k for k in model.params if k not in params]
    unexpected = [k for k in params if k not in model.params]
    wrong = [f"{k}: {params[k].shape} vs model {tuple(v.shape)}" for k, v in model.params.items()
             if k in params and params[k].shape != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not fit this model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}, shape mismatches {wrong[:3]}. "
            f"Build the model with the configuration the checkpoint was trained with."
        )
    for name, value in model.params.items():
        value[...] = model.xp.asarray(params[name], dtype=value.dtype)
