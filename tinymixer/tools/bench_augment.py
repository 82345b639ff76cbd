"""``python -m tinymixer.tools.bench_augment``: images/s of each augmentation (``data/augment.py``) on random
uint8 batches, and their share of a training step on the same batch."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..data.augment import (
    BIG_VISION_OPS,
    apply_augmentation,
    cutmix,
    draw_augmentation,
    randaugment,
    random_erasing,
)
from ..util.cli import Parser
from ..util.host import tune_host


def _time(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """The median and the fastest seconds of ``repeats`` calls (after one warm-up call). On a machine shared with
    other work the fastest is the closer to what the code costs; the median is what a run saw."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def _step_seconds(config: str, images: np.ndarray, labels: np.ndarray, repeats: int) -> tuple[float, float]:
    """The median and fastest seconds of one float32 training step of ``config`` on ``images`` (normalised here)."""
    from ..backend import synchronize
    from ..data import normalize
    from ..nn.mixer import MlpMixer
    from ..training.optim import SGD
    from ..training.train import train_step

    model = MlpMixer.from_name(config, num_classes=10, image_size=images.shape[1])
    x = model.xp.asarray(normalize(images))
    optimizer = SGD(momentum=0.9)

    def step() -> None:
        train_step(model, optimizer, x, labels, 0.01)
        synchronize()

    return _time(step, repeats)


def bench(batch_size: int = 128, image_size: int = 32, repeats: int = 20, step: str | None = "tiny/4",
          step_repeats: int = 5, seed: int = 0) -> list[tuple[str, float]]:
    """Images/s of each augmentation on random uint8 (batch_size, image_size, image_size, 3) batches (medians of
    ``repeats``), printed as a table; with ``step``, also one training step of that model on the same batch, and
    each augmentation's time as a share of it. Returns [(name, images/s)]."""
    from ..data import normalize

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, batch_size)
    n = batch_size
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("crop + flip", lambda: apply_augmentation(images, draw_augmentation(rng, n, image_size // 8))),
        ("normalize (data.py)", lambda: normalize(images)),
        ("RandAugment(2, 9)", lambda: randaugment(images, rng, 2, 9)),
        ("RandAugment(2, 15)", lambda: randaugment(images, rng, 2, 15)),
        ("RandAugment(2, 15), paper ops", lambda: randaugment(images, rng, 2, 15, ops="paper")),
        ("CutMix(1.0)", lambda: cutmix(images, labels, 1.0, rng)),
        ("random erasing(0.5)", lambda: random_erasing(images, rng, 0.5)),
    ]
    for name in BIG_VISION_OPS:  # each operation alone on the whole batch at magnitude 15
        cases.append((f"  {name} alone (M 15)", lambda name=name: randaugment(images, rng, 1, 15, ops=[name])))
    step_s = _step_seconds(step, images, labels, step_repeats) if step else None
    print(f"augmentation of ({batch_size}, {image_size}, {image_size}, 3) uint8 batches: median and fastest of "
          f"{repeats} (images/s and the share of a step from the median)")
    if step_s:
        print(f"one {step} training step on the same batch: median {step_s[0] * 1e3:.0f} ms, fastest "
              f"{step_s[1] * 1e3:.0f} ms ({n / step_s[0]:.0f} images/s)")
    print(f"{'operation':34s} {'median ms':>9s} {'fastest':>8s} {'images/s':>10s}"
          + (f" {'of a step':>10s}" if step_s else ""))
    results = []
    for name, fn in cases:
        median, fastest = _time(fn, repeats)
        results.append((name, n / median))
        share = f" {100 * median / step_s[0]:9.1f}%" if step_s else ""
        print(f"{name:34s} {median * 1e3:9.2f} {fastest * 1e3:8.2f} {n / median:10.0f}{share}")
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m tinymixer.tools.bench_augment --bench``: the benchmark; without --bench, the help."""
    p = Parser(prog="python -m tinymixer.tools.bench_augment", description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", action="store_true", help="measure images/s of each augmentation")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats of each augmentation (the median is shown)")
    p.add_argument("--step", default="tiny/4", help="also time one training step of this size ('none': skip)")
    p.add_argument("--step-repeats", type=int, default=5, help="timed repeats of the training step")
    args = p.parse_args(argv)
    if not args.bench:
        p.print_help()
        return 0
    tune_host()  # kept memory; the BLAS threads' settings only where the shell set them (NumPy is loaded by now)
    bench(args.batch_size, args.image_size, args.repeats, None if args.step == "none" else args.step,
          args.step_repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
