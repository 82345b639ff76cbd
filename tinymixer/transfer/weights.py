"""Pretrained weights by name: the official Mixer checkpoints and timm's copies, fetched once, verified, cached.

    python -m tinymixer.transfer.weights list                # every name: trained on, classes, size, top-1
    python -m tinymixer.transfer.weights fetch Mixer-B_16    # fetch (once) and verify; prints the local path
    model = tm.pretrained("Mixer-B_16")                      # a name, or the path of a checkpoint

A name is fetched once from ``$TINYMIXER_WEIGHTS_URL/<path>`` (default: the official bucket,
``https://storage.googleapis.com/mixer_models``; timm's files from ``$TINYMIXER_TIMM_URL/<path>``, default
``https://huggingface.co``) into ``$TINYMIXER_WEIGHTS`` (default ``~/.cache/tinymixer/weights``, beside the data
cache). The transfer is said before it starts, shows a progress bar, resumes after a cut (HTTP Range) and is
written to a ``.part`` file renamed only when complete and verified: the server's length, a readable archive that
holds every parameter the model needs with the right shapes, finite values. Its SHA-256 is then recorded beside it
(``<file>.sha256``) and checked at every later use, so a changed or damaged cached file is noticed. Anything that
fails verification is deleted and said in one line. Offline, the error names the URL and the command that fetches
it by hand.

What the registry says of each file: the paths follow the official README's bucket (``mixer_models``) and timm's
hub names; the sizes of the imagenet1k/ and imagenet21k/ files are those the bucket lists, the others computed from
the parameter counts; top-1 only for timm's copies, from timm's published results (``results/results-imagenet.csv``;
the official README reports none for its files). None of the files could be fetched on the machine this was
written on: the code is tested against a server on the loopback address.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..nn.mixer import SIZES, param_shapes
from ..util.download import DownloadError, fetch
from ..util.files import atomic_open, file_digest
from ..util.safetensors import SafetensorsError, read_safetensors

OFFICIAL_URL = "https://storage.googleapis.com/mixer_models"
TIMM_URL = "https://huggingface.co"


class WeightsError(RuntimeError):
    """A name that is not in the registry, a transfer that failed, or a file that failed verification; the message
    is one line that says what to do."""


@dataclass(frozen=True)
class Weights:
    """One published set of weights. ``path`` is relative to the source's base URL (and to the cache folder);
    ``size`` (a Mixer size of ``nn.mixer.SIZES``), ``num_classes`` and ``image_size`` give every parameter's shape;
    ``gelu`` is the form the weights were trained with; ``mib`` the file's size in MiB, ``top1`` the ImageNet-1k
    top-1 (%) reported for it (None where none is)."""
    name: str
    path: str
    source: str  # "official" (an .npz in the official layout) or "timm" (a safetensors file of timm's names)
    trained_on: str
    size: str
    num_classes: int
    mib: float
    top1: float | None = None
    gelu: str = "tanh"
    image_size: int = 224
    aliases: tuple[str, ...] = ()
    pixels: tuple[float, float] = (-1.0, 1.0)  # the range the weights expect; tinymixer models take [-1, 1]

    @property
    def url(self) -> str:
        base = os.environ.get("TINYMIXER_TIMM_URL", TIMM_URL) if self.source == "timm" else \
            os.environ.get("TINYMIXER_WEIGHTS_URL", OFFICIAL_URL)
        return f"{base.rstrip('/')}/{self.path}"

    @property
    def cache_path(self) -> Path:
        """Where the verified checkpoint lives: the official file itself, or timm's converted to an .npz."""
        return cache_dir() / (f"timm/{self.name[len('timm/'):]}.npz" if self.source == "timm" else self.path)

    @property
    def download_path(self) -> Path:
        """Where the file from ``url`` goes (a hand-fetched copy too): the checkpoint, or timm's safetensors."""
        return self.cache_path.with_suffix(".safetensors") if self.source == "timm" else self.cache_path

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return _shapes(self.size, self.num_classes, self.image_size)


def _shapes(size: str, num_classes: int, image_size: int = 224) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape of a named Mixer size with RGB images of ``image_size`` and ``num_classes``."""
    s = SIZES[size]
    return param_shapes(s.num_blocks, s.patch_size, s.hidden_dim, s.tokens_mlp_dim, s.channels_mlp_dim,
                        (image_size // s.patch_size) ** 2, 3, num_classes)


def _mib(size: str, num_classes: int) -> float:
    """An .npz of float32 parameters: 4 bytes each, plus a little for the archive (computed, not published)."""
    return round(4 * sum(int(np.prod(v)) for v in _shapes(size, num_classes).values()) / 2**20, 2)


IN21K = 21_843  # classes of ImageNet-21k's head
_OFFICIAL = [  # (folder, size, trained on, classes, MiB as the official README gives, or None: computed)
    ("imagenet1k", "B/16", "ImageNet-1k", 1000, 228.47), ("imagenet1k", "L/16", "ImageNet-1k", 1000, 794.29),
    ("imagenet21k", "B/16", "ImageNet-21k", IN21K, 289.61), ("imagenet21k", "L/16", "ImageNet-21k", IN21K, 875.78),
    ("sam", "B/16", "ImageNet-1k with SAM", 1000, None), ("sam", "B/32", "ImageNet-1k with SAM", 1000, None),
    ("gsam", "B/16", "ImageNet-1k with GSAM", 1000, None), ("gsam", "B/32", "ImageNet-1k with GSAM", 1000, None),
    ("gsam", "S/8", "ImageNet-1k with GSAM", 1000, None), ("gsam", "S/16", "ImageNet-1k with GSAM", 1000, None),
    ("gsam", "S/32", "ImageNet-1k with GSAM", 1000, None),
]
_TIMM = [  # (timm name, size, trained on, classes, top-1 from timm's results, GELU trained with)
    ("mixer_b16_224.goog_in21k_ft_in1k", "B/16", "ImageNet-21k, fine-tuned on 1k (Google)", 1000, 76.602, "tanh"),
    ("mixer_b16_224.goog_in21k", "B/16", "ImageNet-21k (Google)", IN21K, None, "tanh"),
    ("mixer_l16_224.goog_in21k_ft_in1k", "L/16", "ImageNet-21k, fine-tuned on 1k (Google)", 1000, 72.054, "tanh"),
    ("mixer_l16_224.goog_in21k", "L/16", "ImageNet-21k (Google)", IN21K, None, "tanh"),
    ("mixer_b16_224.miil_in21k_ft_in1k", "B/16", "ImageNet-21k, fine-tuned on 1k (Alibaba MIIL)", 1000, 82.306,
     "erf"),
    ("mixer_b16_224.miil_in21k", "B/16", "ImageNet-21k-P (Alibaba MIIL)", 11_221, None, "erf"),
]
_UNIT_PIXELS = ("miil",)  # trained on pixels in [0, 1] (timm's mean 0, std 1), not [-1, 1]


def _registry() -> dict[str, Weights]:
    entries = []
    for folder, size, trained_on, classes, mib in _OFFICIAL:
        stem = f"Mixer-{size.replace('/', '_')}"
        aliases = (stem,) if folder == "imagenet1k" else ()  # "Mixer-B_16": the ImageNet-1k one
        entries.append(Weights(f"{folder}/{stem}", f"{folder}/{stem}.npz", "official", trained_on, size, classes,
                               mib if mib is not None else _mib(size, classes), aliases=aliases))
    for name, size, trained_on, classes, top1, gelu in _TIMM:
        pixels = (0.0, 1.0) if any(tag in name for tag in _UNIT_PIXELS) else (-1.0, 1.0)
        entries.append(Weights(f"timm/{name}", f"timm/{name}/resolve/main/model.safetensors", "timm", trained_on,
                               size, classes, _mib(size, classes), top1, gelu, pixels=pixels))
    return {w.name: w for w in entries}


REGISTRY: dict[str, Weights] = _registry()
DEFAULT = "imagenet1k/Mixer-B_16"  # what examples/predict.py classifies with when no --checkpoint is given


def cache_dir() -> Path:
    """``$TINYMIXER_WEIGHTS``, else ``$XDG_CACHE_HOME/tinymixer/weights``, else ``~/.cache/tinymixer/weights``."""
    if os.environ.get("TINYMIXER_WEIGHTS"):
        return Path(os.environ["TINYMIXER_WEIGHTS"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinymixer" / "weights"


def lookup(name: str) -> Weights:
    """The registry's entry for a name or an alias (case does not matter); an unknown name is a WeightsError that
    offers the closest names."""
    if name in REGISTRY:
        return REGISTRY[name]
    spellings = {n.lower(): w for w in REGISTRY.values() for n in (w.name, *w.aliases)}
    if name.lower() in spellings:
        return spellings[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(spellings), n=3, cutoff=0.5)
    names = [next(n for w in REGISTRY.values() for n in (w.name, *w.aliases) if n.lower() == c) for c in close]
    hint = f"; did you mean {', '.join(names)}?" if names else ""
    raise WeightsError(f"no pretrained weights named {name!r}{hint} (python -m tinymixer.transfer.weights list "
                       f"shows them all; a path to a checkpoint file works too)")


def _checked_params(weights: Weights, path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The file's parameters in the official layout and the model's configuration, after checking it holds every
    parameter, each with its shape and finite. Raises WeightsError."""
    from ..training.checkpoint import CheckpointError, load_checkpoint, model_config
    from .convert import ConversionError, from_timm_state_dict

    try:
        if path.suffix == ".safetensors":
            params, config = from_timm_state_dict(read_safetensors(path)[0], weights.image_size)
        else:
            params, _, meta = load_checkpoint(path)
            config = model_config(params, meta, path)
    except (CheckpointError, SafetensorsError, ConversionError, ValueError, TypeError, KeyError) as exc:
        raise WeightsError(f"it is not a readable {weights.name} file ({exc})") from None
    expected = weights.param_shapes()
    missing = [k for k in expected if k not in params]
    wrong = [f"{k} {params[k].shape} (expected {expected[k]})" for k in expected
             if k in params and params[k].shape != expected[k]]
    if missing or wrong:
        raise WeightsError(f"it is not {weights.name}: " + (f"no {', '.join(missing[:3])}" if missing else
                                                            f"shapes {', '.join(wrong[:3])}"))
    bad = [k for k in expected if not np.all(np.isfinite(params[k]))]
    if bad:
        raise WeightsError(f"it has values that are not finite (nan or inf) in {', '.join(bad[:3])}")
    return params, config | {"gelu": weights.gelu}


def from_unit_pixels(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weights trained on pixels u in [0, 1], made to take x = 2u - 1 in [-1, 1] as every tinymixer model does.
    The stem is linear, so this is exact: W u + b = W (x + 1) / 2 + b = (W / 2) x + (b + W 1 / 2), with W 1 the
    kernel summed over its (P, P, C_in) inputs."""
    kernel, bias = params["stem/kernel"], params["stem/bias"]  # (P, P, C_in, C), (C,)
    return params | {"stem/kernel": kernel / 2, "stem/bias": bias + kernel.sum(axis=(0, 1, 2)) / 2}


def _write_checkpoint(weights: Weights, params: dict[str, np.ndarray], config: dict[str, Any]) -> Path:
    """timm's weights as a tinymixer checkpoint: the official layout, with the configuration and the source."""
    from ..training.checkpoint import save_checkpoint

    if weights.pixels == (0.0, 1.0):
        params = from_unit_pixels(params)
    meta = {"model": {"architecture": "mixer", **config, "dtype": "float32"}, "source": weights.url,
            "weights": weights.name}
    return save_checkpoint(weights.cache_path, {k: v.astype(np.float32) for k, v in params.items()}, meta=meta)


def _record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _recorded(path: Path) -> str | None:
    """The SHA-256 recorded for ``path``, or None (no record, or an unreadable one: then it is verified anew)."""
    try:
        digest = _record(path).read_text().split()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    return digest if len(digest) == 64 else None


def _write_record(path: Path) -> None:
    with atomic_open(_record(path), "w") as f:
        f.write(f"{file_digest(path)}  {path.name}\n")


def _verified_cache(weights: Weights, say: Any) -> Path | None:
    """The cached checkpoint when it is the one verified (its recorded SHA-256), or verified now (a copy put there
    by hand, with no record or another file's); None when there is none, or it failed verification (then it is
    deleted, and said)."""
    path = weights.cache_path
    if not path.exists():
        return None
    recorded = _recorded(path)
    if recorded is not None and file_digest(path) == recorded:
        return path
    try:
        _checked_params(weights, path)
    except WeightsError as exc:
        changed = "its SHA-256 changed since it was verified, and it " if recorded is not None else "it "
        why = f"{changed}failed verification ({exc})"
    else:
        if recorded is not None:
            say(f"note: the cached {weights.name} ({path}) is another file than the one verified before; it passes "
                f"verification and is used (SHA-256 recorded anew)")
        _write_record(path)
        return path
    say(f"note: the cached {weights.name} ({path}): {why}: deleted, fetching it again")
    path.unlink()
    _record(path).unlink(missing_ok=True)
    return None


def fetch_weights(name: str, progress: bool = True, say: Any = print) -> Path:
    """The local path of the named weights' checkpoint: the cached one once its recorded SHA-256 is confirmed,
    else fetched (resuming a cut transfer; a copy fetched by hand into ``download_path`` is used as it is),
    verified, converted where it is timm's, and cached. Raises WeightsError with a one-line reason."""
    weights = lookup(name)
    cached = _verified_cache(weights, say)
    if cached is not None:
        return cached
    source = weights.download_path
    if not source.exists():
        part = source.with_name(source.name + ".part")
        resumed = f", resuming at {part.stat().st_size / 1e6:.0f} MB" if part.exists() else ""
        say(f"downloading {weights.name}, {weights.mib:.0f} MiB, once (from {weights.url} into "
            f"{source.parent}{resumed})")
        try:
            fetch(weights.url, part, weights.name, progress)
        except DownloadError as exc:
            if exc.offline:
                raise WeightsError(f"{exc}: offline? Fetch it by hand: curl -L -o {source} {weights.url} (or set "
                                   f"TINYMIXER_{'TIMM' if weights.source == 'timm' else 'WEIGHTS'}_URL to a "
                                   f"mirror)") from None
            variable = f"TINYMIXER_{'TIMM' if weights.source == 'timm' else 'WEIGHTS'}_URL"
            if exc.status is not None and 400 <= exc.status < 500:  # the server has no such file: nothing to resume
                raise WeightsError(f"{exc}: no such file at that address (is ${variable} the right server?)") from None
            again = "resume" if part.exists() and part.stat().st_size else "retry"
            raise WeightsError(f"{exc}; run the same command again to {again} it") from None
        os.replace(part, source)  # complete: verified next, deleted if it fails
    try:
        params, config = _checked_params(weights, source)
    except WeightsError as exc:
        source.unlink(missing_ok=True)
        raise WeightsError(f"{weights.name} from {weights.url} failed verification and was deleted: {exc}") from None
    if weights.source == "timm":
        _write_checkpoint(weights, params, config)
        source.unlink()
    path = weights.cache_path
    _write_record(path)
    return path


def resolve(name_or_path: str | Path, progress: bool = True, say: Any = print) -> Path:
    """A checkpoint's local path: an existing file as it is, else the named weights (fetched once)."""
    candidate = Path(name_or_path).expanduser()
    if candidate.exists():  # a file (a folder too: the checkpoint reader says what it expected)
        return candidate
    if candidate.suffix in (".npz", ".safetensors", ".pth", ".pt"):
        raise WeightsError(f"checkpoint {candidate} does not exist (nor is it the name of pretrained weights: "
                           f"python -m tinymixer.transfer.weights list shows them)")
    return fetch_weights(str(name_or_path), progress, say)


def pretrained(name_or_path: str | Path, dtype: str | None = None, progress: bool = True) -> Any:
    """A model with pretrained weights: ``tm.pretrained("Mixer-B_16")`` (fetched once) or a checkpoint's path
    (an official-layout or tinymixer ``.npz``)."""
    from ..training.checkpoint import load_model

    return load_model(resolve(name_or_path, progress), dtype)


def describe() -> str:
    """The registry as a table."""
    lines = [f"{'name':42s} {'trained on':46s} {'classes':>7s} {'MiB':>6s} {'top-1':>6s}"]
    for w in REGISTRY.values():
        name = w.name + (f" ({', '.join(w.aliases)})" if w.aliases else "")
        top1 = f"{w.top1:.1f}" if w.top1 is not None else "-"
        lines.append(f"{name:42s} {w.trained_on:46s} {w.num_classes:7,d} {w.mib:6.0f} {top1:>6s}")
    lines.append("MiB: as the official bucket lists imagenet1k/ and imagenet21k/, else computed from the parameter "
                 "count; top-1: timm's results on ImageNet-1k validation, '-' where none is reported; 224 x 224 "
                 "images")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tinymixer.transfer.weights",
                                     description="List or fetch pretrained Mixer weights by name.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every name: what it was trained on, classes, size, top-1")
    fetch_parser = sub.add_parser("fetch", help="fetch (once) and verify; print the local path")
    fetch_parser.add_argument("names", nargs="+", metavar="NAME")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(describe())
        return 0
    for name in args.names:
        try:
            print(fetch_weights(name))
        except WeightsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
