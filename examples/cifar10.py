"""Train an MLP-Mixer from scratch on CIFAR-10 with NumPy (or CuPy on a GPU), every gradient written by hand.

    python examples/cifar10.py                          # download CIFAR-10 once, train, evaluate, plot
    python examples/cifar10.py --resume                 # continue the run in --out exactly where it stopped
    python examples/cifar10.py --evaluate runs/cifar10/checkpoint.npz   # accuracy + confusion matrix only
    python examples/cifar10.py --help                   # every option

The recipe is the paper's fine-tuning recipe: SGD with momentum 0.9, gradient clipping at global norm 1, a linear
warm-up then cosine decay of the learning rate, no weight decay. Images are scaled to [-1, 1] as in the official
input pipeline, and augmented with the standard random crop (4-pixel zero padding) and horizontal flip.

Any folder in the CIFAR "python version" layout works (--data-dir): the image size and the classes are read from
its files. Everything the run produces goes to --out: metrics.json, learning_curves.png, confusion_matrix.png and
checkpoint.npz (rewritten atomically after every epoch, and on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

# isort: off
import tinymixer as tm  # before NumPy loads its BLAS: see tinymixer/_blas_threads.py
# isort: on
import numpy as np
from tqdm import tqdm

from tinymixer.checkpoint import CheckpointError, load_checkpoint, load_model, load_params_into, save_checkpoint
from tinymixer.chunks import batch_shards
from tinymixer.data import (
    CIFAR10_MD5,
    CIFAR10_URL,
    DATA_DIR_ENV,
    DataError,
    Dataset,
    augment,
    ensure_cifar10,
    load_folder,
    mixup,
    normalize,
)
from tinymixer.evaluate import confusion_matrix, evaluate, format_confusion_matrix
from tinymixer.plots import plot_confusion_matrix, plot_learning_curves
from tinymixer.train import train_step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="micro/4", choices=list(tm.SIZES), help="model size (default micro/4)")
    p.add_argument("--patch-size", type=int, help="override the size's patch size")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    p.add_argument("--clip", type=float, default=1.0, help="clip gradients at this global norm (0: off)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay (the recipe: 0)")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off)")
    p.add_argument("--crop-padding", type=int, default=4, help="random-crop padding in pixels (0: no crop)")
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips (e.g. for digits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    p.add_argument("--data-dir", type=Path, help=f"data folder (default ${DATA_DIR_ENV} or ~/.cache/tinymixer)")
    p.add_argument("--no-download", action="store_true", help="never touch the network")
    p.add_argument("--data-url", default=CIFAR10_URL, help="where to download the archive from (e.g. a mirror)")
    p.add_argument("--data-md5", default=CIFAR10_MD5, help="the MD5 the downloaded archive must have")
    p.add_argument("--validation", type=int, default=0, help="hold out N training images and report on them "
                                                             "instead of the test set")
    p.add_argument("--limit-train", type=int, help="use only the first N training images (quick runs)")
    p.add_argument("--limit-test", type=int, help="evaluate on only the first N test images")
    p.add_argument("--out", type=Path, default=Path("runs/cifar10"), help="run directory")
    p.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (default: --out/checkpoint.npz)")
    p.add_argument("--stop-after-epoch", type=int, metavar="N", help="stop (with a checkpoint) after epoch N, keeping "
                                                                     "the schedule of --epochs; --resume continues")
    p.add_argument("--evaluate", type=Path, metavar="CHECKPOINT", help="only evaluate this checkpoint on the test set")
    p.add_argument("--log-every", type=int, default=10, help="steps between progress-bar updates (each reads the "
                                                              "loss back from the device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def load_data(args: argparse.Namespace) -> Dataset:
    folder = ensure_cifar10(args.data_dir, url=args.data_url, md5=args.data_md5, download_ok=not args.no_download,
                            progress=not args.no_progress)
    data = load_folder(folder)
    if args.validation:
        data = data.split_validation(args.validation, seed=args.seed)
    n, m = args.limit_train, args.limit_test  # None keeps everything
    return Dataset(data.train_images[:n], data.train_labels[:n], data.test_images[:m], data.test_labels[:m],
                   data.class_names)


def evaluate_only(args: argparse.Namespace) -> int:
    """--evaluate: rebuild the model from the checkpoint, report accuracy and the confusion matrix."""
    model = load_model(args.evaluate)
    data = load_data(args)
    result = evaluate(model, data.test_images, data.test_labels, args.batch_size)
    counts = confusion_matrix(data.test_labels, result["predictions"], data.num_classes)
    print(f"test accuracy {100 * result['accuracy']:.2f}%  loss {result['loss']:.4f}  ({len(data.test_labels)} images)")
    print(format_confusion_matrix(counts, data.class_names))
    args.out.mkdir(parents=True, exist_ok=True)
    print("confusion matrix:", plot_confusion_matrix(counts, data.class_names, args.out / "confusion_matrix.png"))
    return 0


def write_json_atomically(path: Path, obj: object) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tm.set_backend(args.backend)
    if args.evaluate:
        return evaluate_only(args)
    data = load_data(args)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "checkpoint.npz"

    # --- the model, the optimiser and the training state (fresh, or restored from a checkpoint) ---------------
    h, w, c = data.image_shape
    overrides = {"patch_size": args.patch_size} if args.patch_size else {}
    model = tm.MlpMixer.from_name(args.config, num_classes=data.num_classes, image_size=(h, w), in_channels=c,
                                  seed=args.seed, dtype=args.dtype, **overrides)
    optimizer = tm.SGD(momentum=args.momentum, weight_decay=args.weight_decay)
    shards = len(batch_shards(args.batch_size, model.xp))  # how a step spreads over the cores (see chunks.py)
    steps_per_epoch = len(data.train_labels) // args.batch_size
    if steps_per_epoch == 0:
        raise SystemExit(f"error: {len(data.train_labels)} training images is less than one batch of "
                         f"{args.batch_size}; lower --batch-size")
    total_steps = args.epochs * steps_per_epoch
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "history": [],
             "running": {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "data_seconds": 0.0}}
    if args.resume:
        path = checkpoint_path if args.resume == "auto" else Path(args.resume)
        params, momentum, meta = load_checkpoint(path)
        if meta.get("model") != model.config():
            raise CheckpointError(f"{path} was trained with model {meta.get('model')}, but the options now give "
                                  f"{model.config()}; pass the same --config/--patch-size/--dtype")
        load_params_into(model, params, path)
        optimizer.state = {k: model.xp.asarray(v) for k, v in momentum.items()}
        state = meta["state"]
        print(f"resumed from {path}: epoch {state['epoch'] + 1}, step {state['global_step']}")
        before = meta.get("args", {})
        for name in ("epochs", "batch_size", "lr", "warmup", "seed", "limit_train", "validation"):
            if name in before and before[name] != str(getattr(args, name)):
                print(f"note: --{name.replace('_', '-')} is {getattr(args, name)} now, {before[name]} in the run "
                      f"being resumed: the schedule or the data order changes from here on")
        if meta.get("shards", shards) != shards:
            print(f"note: the batch was cut into {meta['shards']} shard(s) (one per thread) in the run being resumed "
                  f"and {shards} now: the weights will differ from an uninterrupted run in the last bits")
    print(f"MLP-Mixer {args.config}: {model.num_params():,} parameters, {model.flops_per_image() / 1e6:.1f} MFLOPs "
          f"per image (forward); {len(data.train_labels)} training and {len(data.test_labels)} test images "
          f"{h}x{w}x{c}, {data.num_classes} classes; backend {tm.backend_name()}, {args.dtype}, batch in {shards} "
          f"shard(s) (one per thread; TINYMIXER_THREADS sets it)")

    def save(reason: str) -> None:
        meta = {"model": model.config(), "state": state, "args": {k: str(v) for k, v in vars(args).items()},
                "shards": shards}
        save_checkpoint(checkpoint_path, model.params, optimizer.state, meta)
        tqdm.write(f"checkpoint ({reason}): {checkpoint_path}")

    interrupted = False

    def on_sigint(signum, frame):  # the first Ctrl-C finishes the step and saves; a second one kills at once
        nonlocal interrupted
        interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous_handler = signal.signal(signal.SIGINT, on_sigint)
    test = None  # the last evaluation
    try:
        # --- the training loop ---------------------------------------------------------------------------------
        for epoch in range(state["epoch"], args.epochs):
            # The shuffle of an epoch and the augmentation of a step come from generators seeded by (seed, epoch,
            # step): a run resumed at any step sees exactly the batches the uninterrupted run saw.
            order = np.random.default_rng([args.seed, epoch]).permutation(len(data.train_labels))
            run = state["running"]
            bar = tqdm(range(state["step_in_epoch"], steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}",
                       initial=state["step_in_epoch"], total=steps_per_epoch, disable=args.no_progress,
                       dynamic_ncols=True, leave=False)
            loss_sum, correct_sum = model.xp.zeros((), np.float64), model.xp.zeros((), np.int64)  # on the device
            for step in bar:
                t0 = time.perf_counter()
                rng = np.random.default_rng([args.seed, epoch, step])
                index = order[step * args.batch_size:(step + 1) * args.batch_size]
                images = augment(data.train_images[index], rng, args.crop_padding, flip=not args.no_flip)
                images, labels = normalize(images, model.dtype), data.train_labels[index]
                t1 = time.perf_counter()

                mix = None
                if args.mixup:
                    images, labels, partner, lam = mixup(images, labels, args.mixup, rng)
                    mix = (partner, lam)
                lr = tm.warmup_cosine(state["global_step"], args.lr, total_steps, min(args.warmup, total_steps))
                # forward -> loss -> backward -> clip -> SGD update (tinymixer/train.py, ten lines)
                loss, logits = train_step(model, optimizer, images, labels, lr, args.clip, args.label_smoothing, mix)

                loss_sum += loss
                correct_sum += (logits.argmax(axis=1) == model.xp.asarray(labels)).sum()
                state["global_step"] += 1
                state["step_in_epoch"] = step + 1
                run["seen"] += len(index)
                run["seconds"] += time.perf_counter() - t0
                run["data_seconds"] += t1 - t0

                if (step + 1) % args.log_every == 0 or step + 1 == steps_per_epoch or interrupted:
                    run["loss"] += float(loss_sum)  # the only reads from the device, every --log-every steps
                    run["correct"] += int(correct_sum)
                    loss_sum[...], correct_sum[...] = 0, 0
                    if not math.isfinite(run["loss"]):
                        print(f"\nerror: the loss became {run['loss']} at step {state['global_step']} (epoch "
                              f"{epoch + 1}); stopping without saving this state. The last good checkpoint is "
                              f"{checkpoint_path if checkpoint_path.exists() else 'none'}. Try a lower --lr.")
                        return 3
                    bar.set_postfix(loss=f"{run['loss'] / run['seen'] * args.batch_size:.3f}",
                                    acc=f"{100 * run['correct'] / run['seen']:.1f}%", lr=f"{lr:.4f}",
                                    img_s=f"{run['seen'] / max(run['seconds'], 1e-9):.0f}")
                if interrupted:
                    bar.close()
                    save("interrupted")
                    print(f"interrupted: saved at epoch {epoch + 1}, step {state['global_step']}. Continue with "
                          f"--resume --out {out}")
                    return 130
            bar.close()

            # --- end of an epoch: evaluate, record, checkpoint, plot -----------------------------------------------
            test = evaluate(model, data.test_images, data.test_labels, args.batch_size)
            record = {"epoch": epoch + 1, "train_loss": run["loss"] / run["seen"] * args.batch_size,
                      "train_accuracy": run["correct"] / run["seen"], "test_loss": test["loss"],
                      "test_accuracy": test["accuracy"], "lr": lr, "step": state["global_step"],
                      "wall_time": run["seconds"], "images_per_sec": run["seen"] / run["seconds"],
                      "data_time_fraction": run["data_seconds"] / run["seconds"]}
            state["history"].append(record)
            state.update(epoch=epoch + 1, step_in_epoch=0,
                         running={"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "data_seconds": 0.0})
            tqdm.write(f"epoch {epoch + 1:3d}  train loss {record['train_loss']:.4f} acc "
                       f"{100 * record['train_accuracy']:5.2f}%  |  test loss {record['test_loss']:.4f} acc "
                       f"{100 * record['test_accuracy']:5.2f}%  |  {record['wall_time']:.0f}s, "
                       f"{record['images_per_sec']:.0f} img/s, data {100 * record['data_time_fraction']:.1f}%")
            save(f"epoch {epoch + 1}")
            write_json_atomically(out / "metrics.json", {
                "config": args.config, "model": model.config(), "num_params": model.num_params(),
                "epochs": state["history"], "test_accuracy": record["test_accuracy"],
                "evaluated_on": "validation split" if args.validation else "test_batch"})
            plot_learning_curves(state["history"], out / "learning_curves.png")
            if args.stop_after_epoch and epoch + 1 >= args.stop_after_epoch and epoch + 1 < args.epochs:
                print(f"stopped after epoch {epoch + 1} as asked; continue with --resume --out {out}")
                return 0
    finally:
        signal.signal(signal.SIGINT, previous_handler)

    if test is None:  # resumed a run that had already finished: nothing trained, evaluate what there is
        test = evaluate(model, data.test_images, data.test_labels, args.batch_size)
    counts = confusion_matrix(data.test_labels, test["predictions"], data.num_classes)
    print(format_confusion_matrix(counts, data.class_names))
    plot_confusion_matrix(counts, data.class_names, out / "confusion_matrix.png")
    print(f"final test accuracy {100 * test['accuracy']:.2f}%; metrics, plots and checkpoint in {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (DataError, CheckpointError) as error:
        sys.exit(f"error: {error}")
