"""Train an MLP-Mixer from scratch on CIFAR-10 with NumPy (or CuPy on a GPU), every gradient written by hand.

    python examples/cifar10.py                          # download CIFAR-10 once, train, evaluate, plot
    python examples/cifar10.py --data-dir mydata        # your own data: a CIFAR-layout folder (or its parent)
    python examples/cifar10.py --resume --out runs/x    # continue the run in runs/x exactly where it stopped
    python examples/cifar10.py --evaluate runs/x/checkpoint.npz   # accuracy + confusion matrix only
    python examples/cifar10.py --help                   # every option, with its default

The recipe is the paper's fine-tuning recipe: SGD with momentum 0.9, gradient clipping at global norm 1, a linear
warm-up then cosine decay of the learning rate, no weight decay. Images are scaled to [-1, 1] as in the official
input pipeline, and augmented with the standard random crop (zero padding of 1/8 of the image) and horizontal flip.

Any folder in the CIFAR "python version" layout works (--data-dir; `python -m tinymixer.data` makes one from NumPy
arrays): the image size, channels and classes are read from its files. Everything the run produces goes to --out:
checkpoint.npz (rewritten atomically after every epoch, and on Ctrl-C), best.npz (the best epoch so far),
metrics.json, metrics.csv, learning_curves.png and confusion_matrix.png. A new run never replaces a finished one
(--resume continues it, --overwrite replaces it). --resume needs no other option: the run's options are in its
checkpoint; an option given again overrides the remembered one, with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import time
from pathlib import Path

import tinymixer as tm

tm.tune_host()  # first, before NumPy loads its BLAS: threads that sleep at once, freed memory kept

import numpy as np
from tqdm import tqdm

from tinymixer.backend import use_device
from tinymixer.chunks import batch_shards
from tinymixer.data import DataError
from tinymixer.data.pipeline import training_batch
from tinymixer.nn.blocks import masks_rows
from tinymixer.trainer import options, setup, state
from tinymixer.trainer.options import OptionError
from tinymixer.training import distributed
from tinymixer.training.averaging import ExponentialMovingAverage
from tinymixer.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tinymixer.training.evaluate import confusion_matrix, evaluate, format_confusion_matrix
from tinymixer.training.train import run_step
from tinymixer.util import cli
from tinymixer.util.plots import plot_confusion_matrix, plot_learning_curves

Model = tm.MlpMixer | tm.ResNet  # the networks this script trains (tinymixer.nn.network.Network)


# ----------------------------------------------------------------------------------------------------------------
# Speaking (rank 0 alone), and the options of a run continued from a checkpoint


def fail(message: str) -> None:
    """A bad option or combination of options found after parsing: one line on stderr, exit code 2. (In a
    data-parallel run every rank finds the same problem; rank 0 says it.)"""
    cli.fail(message, "cifar10.py", speak=distributed.world().is_root)


def log(message: str = "") -> None:
    """Print a line (between progress bars); in a data-parallel run only rank 0 speaks."""
    if distributed.world().is_root:
        tqdm.write(message)


def continued(meta: dict, argv: list[str], given: set[str], verb: str, path: Path) -> argparse.Namespace:
    """The options of the run a checkpoint holds, overridden by those given now, each change said."""
    args, notes = options.with_remembered_options(meta, argv, given, verb, path)
    for note in notes:
        log(note)
    return args


# ----------------------------------------------------------------------------------------------------------------
# --evaluate


def evaluate_only(args: argparse.Namespace, argv: list[str], given: set[str]) -> int:
    """--evaluate: rebuild the model from the checkpoint, report accuracy and the confusion matrix. The data's
    location comes from the checkpoint unless given; the test set is used unless --validation N is given."""
    model, meta, _ = state.load_model_on_root(args.evaluate)
    if meta.get("options") or meta.get("args"):
        args = continued(meta, argv, given, "evaluated", args.evaluate)
    data = setup.load_data(args, log)
    setup.check_fits(model, data, f"the model in {args.evaluate}", resized=bool(args.image_size))
    split = "validation" if args.validation else "test"
    result = evaluate(model, data.test_images, data.test_labels, args.batch_size, comm=distributed.world(),
                      resize=tuple(model.image_size) != data.image_shape[:2])
    if not distributed.world().is_root:
        return 0
    counts = confusion_matrix(data.test_labels, result["predictions"], data.num_classes)
    print(f"{split} accuracy {100 * result['accuracy']:.2f}%  loss {result['loss']:.4f}  "
          f"({len(data.test_labels)} images)")
    print(format_confusion_matrix(counts, data.class_names))
    out = args.out if "out" in given else args.evaluate.parent
    out.mkdir(parents=True, exist_ok=True)
    print("confusion matrix:", plot_confusion_matrix(counts, data.class_names, out / f"confusion_matrix_{split}.png",
                                                     title=f"{split} set"))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return train(list(sys.argv[1:] if argv is None else argv))
    except OptionError as exc:  # a problem with the options found after parsing: one line, exit code 2
        fail(str(exc))


def train(argv: list[str]) -> int:
    started = time.perf_counter()  # --time-budget counts from here
    args, given = options.parse_args(argv)
    comm = distributed.init()  # one process, or one rank of `mpiexec -n N` (then rank 0 alone speaks and writes)
    if comm.size > 1 and args.backend != "numpy":
        use_device(comm.local_rank)  # one GPU per process, before anything is allocated on one
    try:
        tm.set_backend(args.backend)
    except (RuntimeError, ValueError) as exc:
        fail(f"{cli.backend_label(args.backend)}: {exc}")
    if comm.size > 1 and tm.backend_name() == "cupy":
        log(f"gradients: {comm.choose_gpu_allreduce()}")
    if args.evaluate:
        return evaluate_only(args, argv, given)

    # --- a fresh run, or the run in --out continued with its remembered options -----------------------------------
    out = args.out
    checkpoint_path, best_path = out / "checkpoint.npz", out / "best.npz"
    resumed = None
    if args.resume:
        path = checkpoint_path if args.resume == "auto" else Path(args.resume)
        if args.resume == "auto" and not state.on_root(path.exists):
            fail(f"--resume: {out} holds no run ({path} does not exist); start one without --resume, or give "
                 f"--out the run's folder")
        model, meta, momentum = state.load_model_on_root(path)
        if "state" not in meta:
            fail(f"--resume: {path} holds weights but no training state (best.npz is the best epoch's weights "
                 f"only); resume from the run's checkpoint.npz, or evaluate it with --evaluate")
        args = continued(meta, argv, given, "resumed", path)
        if args.model == "mixer":  # the regularisers are this run's options (a change on --resume is noted: it applies)
            model.dropout, model.stochastic_depth = args.dropout, args.stochastic_depth
        resumed = path, meta
    else:
        def refuse_to_replace_a_run() -> None:
            if checkpoint_path.exists() and not args.overwrite:
                epoch = load_checkpoint(checkpoint_path)[2].get("state", {}).get("epoch", "?")
                fail(f"{out} already holds a run (checkpoint.npz, {epoch} epoch(s) trained). Continue it with "
                     f"--resume --out {out}, choose another --out, or pass --overwrite to replace it")

        state.on_root(refuse_to_replace_a_run)
    options.check_model_options(args)  # --config auto becomes the family's size; the other family's options refused
    data = setup.load_data(args, log)
    split = "validation" if args.validation else "test"  # what the evaluation set is, named so everywhere

    if resumed:
        setup.check_fits(model, data, f"the run in {path}", resized=bool(args.image_size))
    else:
        if args.init and {"config", "patch_size"} & given:
            fail("--init starts from the network its checkpoint holds: --config and --patch-size do not apply to "
                 "it (leave them out)")
        model = setup.build_model(args, data, log)
        comm.broadcast_(model.params)  # the same start on every rank (the seed gives it already: made certain)
    h, w = model.image_size  # the images the model takes (the data's, or --image-size's: resized on the fly)
    resize = (h, w) != data.image_shape[:2]
    augment = setup.augmentation(args, (h, w))  # crop and flip, RandAugment, erasing, mixup or CutMix
    optimizer = setup.make_optimizer(args, model)
    ema = ExponentialMovingAverage(args.ema) if args.ema else None  # an average of the weights, evaluated beside
    rows, steps_per_epoch = setup.batch_layout(args, comm, len(data.train_labels))  # this rank's rows of every batch
    shards = len(batch_shards(rows.stop - rows.start, model.xp))  # how a step spreads over the cores (chunks.py)
    budget_epochs = None
    if args.time_budget:
        if resumed:
            fail("--time-budget sets the length of a new run; a resumed run keeps its schedule (give --epochs to "
                 "change it)")
        budget_epochs, said = state.epochs_in_budget(
            args.time_budget, started, model, setup.make_optimizer(args, model), data, args.batch_size, rows, (h, w),
            steps_per_epoch, {"clip": args.clip, "accumulate": args.accumulate, "head_only": args.head_only})
        log(said)
    total_steps, warmup = setup.plan_schedule(args, given, steps_per_epoch, budget_epochs, log)

    def lr_at(step: int) -> float:
        return tm.schedule(args.schedule, step, args.lr, total_steps, warmup, args.end_lr)

    progress = state.new_state()  # where the run is: epoch, step, history, best (tinymixer/trainer/state.py)
    if resumed:
        try:
            progress = state.continued_state(meta, momentum, model, optimizer, ema, split, args.epochs,
                                    {"batch_size": args.batch_size, "steps_per_epoch": steps_per_epoch,
                                     "total_steps": total_steps, "warmup_steps": warmup}, lr_at, (comm.size, shards),
                                    log)
        except ValueError as exc:
            fail(str(exc))
        log(f"resumed from {path}: epoch {progress['epoch'] + 1}, step {progress['global_step']}")
    for line in setup.describe(args, model, data, split, steps_per_epoch, warmup, augment.crop_padding,
                               tm.backend_name(), shards, comm, rows):
        log(line)
    if split == "test" and not resumed:
        log("note: best.npz is picked by test accuracy, which makes the test set part of model selection; hold "
            "out a validation split (--validation N) for an honest choice")

    def save(reason: str) -> None:
        remembered = options.remembered(args)
        schedule = {"batch_size": args.batch_size, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                    "warmup_steps": warmup, "lr": args.lr, "name": args.schedule, "end_lr": args.end_lr}
        meta = {"model": model.config(), "state": progress, "options": remembered, "schedule": schedule,
                "shards": shards, "processes": comm.size, "class_names": data.class_names}
        if comm.is_root:  # every rank holds the same weights and state: rank 0 writes them
            averages = {f"ema/{k}": v for k, v in ema.state.items()} if ema is not None else {}
            save_checkpoint(checkpoint_path, model.params, optimizer.state | averages, meta)
        log(f"checkpoint ({reason}): {checkpoint_path}")

    interrupted = False

    def on_sigint(signum, frame):  # the first Ctrl-C finishes the step and saves; a second one kills at once
        nonlocal interrupted
        interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous_handler = signal.signal(signal.SIGINT, on_sigint)
    result = None  # the last evaluation
    try:
        # --- the training loop ---------------------------------------------------------------------------------
        for epoch in range(progress["epoch"], args.epochs):
            # The shuffle of an epoch and the augmentation of a step come from generators seeded by (seed, epoch,
            # step): a run resumed at any step sees exactly the batches the uninterrupted run saw.
            order = np.random.default_rng([args.seed, epoch]).permutation(len(data.train_labels))
            run = progress["running"]
            bar = tqdm(range(progress["step_in_epoch"], steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}",
                       initial=progress["step_in_epoch"], total=steps_per_epoch,
                       disable=True if args.no_progress or not comm.is_root else None,  # None: off when piped
                       dynamic_ncols=True, leave=False)
            loss_sum, correct_sum = model.xp.zeros((), np.float64), model.xp.zeros((), np.int64)  # on the device
            lr = lr_at(progress["global_step"])
            mark = time.perf_counter()  # the training time is counted from here to each read of the loss (a sync)
            for step in bar:
                t0 = time.perf_counter()
                rng = np.random.default_rng([args.seed, epoch, step])
                index = order[step * args.batch_size:(step + 1) * args.batch_size]  # the global batch
                # The random crops, flips, RandAugment operations, erased boxes and mixup or CutMix partners are
                # drawn for the whole batch; this process makes only its rows (all of them in a one-process run),
                # so N processes see the one-process batch (tinymixer/data/pipeline.py).
                images, labels, mix = training_batch(data.train_images, data.train_labels, index, rng, augment, (h, w),
                                                     model.dtype, rows)
                t1 = time.perf_counter()

                masks = masks_rows(model.draw_masks(rng, len(index)), rows)  # dropout, stochastic depth (or None)
                lr = lr_at(progress["global_step"])
                # forward -> loss -> backward -> (all-reduce) -> clip -> update (tinymixer/training/train.py)
                loss, logits = run_step(model, optimizer, images, labels, lr, args.clip, masks=masks,
                                        label_smoothing=args.label_smoothing, mix=mix, accumulate=args.accumulate,
                                        head_only=args.head_only, comm=comm, global_batch=len(index))

                if ema is not None:
                    ema.update(model.params)
                loss_sum += loss
                correct_sum += (logits.argmax(axis=1) == model.xp.asarray(labels)).sum()
                progress["global_step"] += 1
                progress["step_in_epoch"] = step + 1
                run["seen"] += len(index)
                run["data_seconds"] += t1 - t0
                if comm.size > 1:  # a Ctrl-C may reach some ranks only: all stop at the same step
                    interrupted = comm.any(interrupted)

                if (step + 1) % args.log_every == 0 or step + 1 == steps_per_epoch or interrupted:
                    # the only reads from the device, every --log-every steps (summed over the ranks)
                    run["loss"] += comm.sum(float(loss_sum))
                    run["correct"] += comm.sum(int(correct_sum))
                    loss_sum[...], correct_sum[...] = 0, 0
                    now = time.perf_counter()  # after the reads: the device has done these steps (img/s is true)
                    run["seconds"], mark = run["seconds"] + now - mark, now
                    if not math.isfinite(run["loss"]):
                        log(f"\nerror: the loss became {run['loss']} at step {progress['global_step']} (epoch "
                              f"{epoch + 1}); stopping without saving this state. The last good checkpoint is "
                              f"{checkpoint_path if checkpoint_path.exists() else 'none'}. Try a lower --lr.")
                        return 3
                    bar.set_postfix(loss=f"{run['loss'] / run['seen'] * args.batch_size:.3f}",
                                    acc=f"{100 * run['correct'] / run['seen']:.1f}%", lr=f"{lr:.4f}",
                                    img_s=f"{run['seen'] / max(run['seconds'], 1e-9):.0f}")
                if interrupted:
                    bar.close()
                    save("interrupted")
                    log(f"interrupted: saved at epoch {epoch + 1}, step {progress['global_step']}. Continue with "
                          f"--resume --out {out}")
                    return 130
            bar.close()

            # --- end of an epoch: evaluate, record, checkpoint (the last and the best), plot ------------------------
            result = evaluate(model, data.test_images, data.test_labels, args.batch_size, comm=comm, resize=resize)
            record = state.epoch_record(epoch + 1, run, result, split, lr, progress["global_step"], args.batch_size)
            candidates = [("weights", result)]
            if ema is not None:  # the average of the weights, evaluated beside them; the better one may be the best
                with ema.swapped_into(model):
                    averaged = evaluate(model, data.test_images, data.test_labels, args.batch_size, comm=comm,
                                        resize=resize)
                record.update({f"ema_{split}_loss": averaged["loss"], f"ema_{split}_accuracy": averaged["accuracy"]})
                candidates.append(("ema", averaged))
            progress["history"].append(record)
            progress.update(epoch=epoch + 1, step_in_epoch=0, running=state.running_totals())
            which, is_best = state.update_best(progress, candidates, epoch + 1, split)
            log(state.epoch_line(record, split, is_best, ema is not None))
            if is_best and comm.is_root:  # the weights alone (no optimiser state): for --evaluate and load_model
                with ema.swapped_into(model) if which == "ema" else contextlib.nullcontext():
                    save_checkpoint(best_path, model.params, None, {"model": model.config(), "best": progress["best"],
                                                                    "options": options.remembered(args),
                                                                    "class_names": data.class_names})
            save(f"epoch {epoch + 1}")
            if comm.is_root:
                state.write_metrics(out, progress["history"], {
                    "config": args.config, "model": model.config(), "num_params": model.num_params(),
                    "processes": comm.size, "evaluated_on": split, f"{split}_accuracy": result["accuracy"],
                    "best": progress["best"], "options": options.remembered(args)})
                plot_learning_curves(progress["history"], out / "learning_curves.png", split=split)
            if args.stop_after_epoch and epoch + 1 >= args.stop_after_epoch and epoch + 1 < args.epochs:
                log(f"stopped after epoch {epoch + 1} as asked; continue with --resume --out {out}")
                return 0
    finally:
        signal.signal(signal.SIGINT, previous_handler)

    if result is None:  # resumed a run that had already finished: nothing trained, evaluate what there is
        result = evaluate(model, data.test_images, data.test_labels, args.batch_size, comm=comm, resize=resize)
    if not comm.is_root:
        return 0
    counts = confusion_matrix(data.test_labels, result["predictions"], data.num_classes)
    print(format_confusion_matrix(counts, data.class_names))
    plot_confusion_matrix(counts, data.class_names, out / "confusion_matrix.png", title=f"{split} set")
    best = progress["best"]
    best_text = f" (best {100 * best['accuracy']:.2f}% at epoch {best['epoch']}, in best.npz)" if best else ""
    print(f"final {split} accuracy {100 * result['accuracy']:.2f}%{best_text}; checkpoint, metrics and plots in {out}")
    return 0


if __name__ == "__main__":
    # An error ends the program with its message; under mpiexec it also ends every other rank (no rank hangs).
    distributed.run(main, expected=(DataError, CheckpointError, distributed.DistributedError))
