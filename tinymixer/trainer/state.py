"""A training run between its steps: the state a checkpoint carries besides the weights, resuming it (the schedule
re-fitted when the options changed), the record of each epoch and the best of them, the metrics files, the time a
budget allows, and the parts of a data-parallel run that rank 0 does alone. What ``examples/cifar10.py`` keeps.

The state is a plain dict (it is stored as JSON in the checkpoint's metadata):

    epoch, step_in_epoch, global_step    where the run is (the next step to take)
    history                              one record per finished epoch (``epoch_record``)
    best                                 the best epoch so far: epoch, accuracy, split, weights ("weights" or "ema")
    running                              the epoch in progress: loss and correct summed, images seen, seconds
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import synchronize
from ..data import normalize, resize_batch
from ..nn.architectures import model_from_config
from ..nn.blocks import masks_rows
from ..training import distributed
from ..training.checkpoint import load_checkpoint, load_params_into, model_config, save_checkpoint
from ..training.evaluate import evaluate
from ..training.optim import schedule
from ..training.train import run_step
from ..transfer.weights import WeightsError
from ..util.files import atomic_open
from ..util.plots import plot_learning_curves
from .options import OptionError


def running_totals() -> dict[str, float]:
    """The sums of an epoch in progress (all zero at its start)."""
    return {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "data_seconds": 0.0}


def new_state() -> dict[str, Any]:
    return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "history": [], "best": None,
            "running": running_totals()}


def resumed_state(saved: dict[str, Any], split: str) -> dict[str, Any]:
    """A checkpoint's state, its records' evaluation keys named after ``split`` (checkpoints before the split was
    named called it "test")."""
    state = {"best": None} | saved
    for record in state["history"]:
        for key in ("loss", "accuracy"):
            record.setdefault(f"{split}_{key}", record.pop(f"test_{key}", None))
    return state


def refit_schedule(state: dict[str, Any], before: dict[str, Any], now: dict[str, Any]) -> tuple[int, float | None]:
    """Where a resumed run continues when its batch size, data or length changed: at the same place in its epoch
    (the same images seen), on the schedule of the options now. ``before``/``now``: the schedules (batch_size,
    steps_per_epoch, total_steps, warmup_steps; ``before`` also lr, name, end_lr). Updates ``state``'s
    step_in_epoch; returns the global step to continue at and, if the schedule changed, the learning rate the old
    schedule had there (for the note; NaN when the checkpoint does not say), else None."""
    old_batch = int(before.get("batch_size", now["batch_size"]))
    state["step_in_epoch"] = min(now["steps_per_epoch"], state["step_in_epoch"] * old_batch // now["batch_size"])
    global_step = state["epoch"] * now["steps_per_epoch"] + state["step_in_epoch"]
    changed = before and any(before.get(k) != v for k, v in now.items()) or global_step != state["global_step"]
    was = None
    if changed:
        was = float("nan")
        if {"lr", "total_steps", "warmup_steps"} <= before.keys():
            was = schedule(before.get("name", "cosine"), state["global_step"], before["lr"], before["total_steps"],
                           before["warmup_steps"], before.get("end_lr", 0.0))
    return global_step, was


def epoch_record(epoch: int, run: dict[str, float], result: dict[str, Any], split: str, lr: float, step: int,
                 batch_size: int) -> dict[str, float]:
    """One finished epoch: its training loss (per batch) and accuracy from the running totals, the evaluation on
    ``split``, the learning rate and step reached, its training time, images/s and the share of data time."""
    seen, seconds = max(run["seen"], 1), max(run["seconds"], 1e-9)
    return {"epoch": epoch, "train_loss": run["loss"] / seen * batch_size, "train_accuracy": run["correct"] / seen,
            f"{split}_loss": result["loss"], f"{split}_accuracy": result["accuracy"], "lr": lr, "step": step,
            "wall_time": run["seconds"], "images_per_sec": run["seen"] / seconds,
            "data_time_fraction": run["data_seconds"] / seconds}


def update_best(state: dict[str, Any], candidates: list[tuple[str, dict[str, Any]]], epoch: int, split: str
                ) -> tuple[str, bool]:
    """The better of the evaluated ``candidates`` (("weights", result), and ("ema", result) when averaged; ties go
    to the weights themselves), and whether it beats the best so far (then ``state["best"]`` is it)."""
    which, chosen = max(candidates, key=lambda c: c[1]["accuracy"])
    is_best = state["best"] is None or chosen["accuracy"] > state["best"]["accuracy"]
    if is_best:
        state["best"] = {"epoch": epoch, "accuracy": chosen["accuracy"], "split": split, "weights": which}
    return which, is_best


def write_metrics(out: Path, history: list[dict], summary: dict) -> None:
    """metrics.json (everything) and metrics.csv (one row per epoch), each replaced atomically."""
    with atomic_open(out / "metrics.json", "w") as f:
        json.dump(summary | {"epochs": history}, f, indent=2)
    with atomic_open(out / "metrics.csv", "w") as f:
        columns = list(dict.fromkeys(key for row in history for key in row))  # every epoch's (--ema may start late)
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(history)


# ----------------------------------------------------------------------------------------------------------------
# Several processes (mpiexec -n N): rank 0 reads and writes the run's files, every rank trains


def on_root(task: Callable[[], Any]) -> Any:
    """Run ``task`` on rank 0 alone (it reads the run's files, which the other ranks may not see) and give every
    rank its result; if it fails, every rank stops (rank 0 with its error, the others quietly)."""
    comm = distributed.world()
    if comm.size == 1:
        return task()
    outcome = None
    if comm.is_root:
        try:
            outcome = ("ok", task())
        except SystemExit as stop:
            outcome = ("exit", stop.code)
        except Exception as error:  # noqa: BLE001 - handed on below
            outcome = ("error", error)
    kind, value = comm.broadcast_object(outcome)
    if kind == "ok":
        return value
    if kind == "error" and (comm.is_root or isinstance(value, (OptionError, WeightsError))):
        raise value  # an option's error (--init's file): every rank ends as a bad option does (exit code 2 on all)
    raise SystemExit(value if kind == "exit" else 1)


def load_model_on_root(path: Path) -> tuple[Any, dict, dict]:
    """The model a checkpoint holds and its metadata, on every rank (rank 0 reads the file and broadcasts the
    weights), and the optimiser state it holds (on rank 0; empty on the others)."""
    held: dict = {}

    def read() -> tuple[dict, dict]:
        params, held["optimizer"], meta = load_checkpoint(path)
        held["params"] = params
        return model_config(params, meta, path), meta

    config, meta = on_root(read)
    model = model_from_config(config)
    if held:
        load_params_into(model, held["params"], path)
    distributed.world().broadcast_(model.params)
    return model, meta, held.get("optimizer", {})


def share_optimizer_state(held: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The optimiser state (and the weights' average) a checkpoint held, read by rank 0, on every rank: the others,
    which got an empty dict, make room for it first."""
    comm = distributed.world()
    if comm.size > 1:
        layout = comm.broadcast_object({k: (v.shape, str(v.dtype)) for k, v in held.items()})
        held = held or {k: np.zeros(shape, dtype) for k, (shape, dtype) in layout.items()}
        comm.broadcast_(held)
    return held


# ----------------------------------------------------------------------------------------------------------------
# How many epochs fit in a time budget


def epochs_in_budget(budget: float, started: float, model: Any, optimizer: Any, data: Any, batch_size: int,
                     rows: slice, size: tuple[int, int], steps_per_epoch: int, step_options: dict[str, Any]
                     ) -> tuple[int, str]:
    """How many epochs fit in ``budget`` seconds counted from ``started`` (the program's start, so that loading
    and this probe count too), and a line saying why. Training steps of a model of the same shape as ``model``
    (not the one being trained) on a real batch, one evaluation batch, the checkpoints and the plot are timed
    (each warm: the first call pays for imports, buffers and the first figure, once); an epoch is its steps, its
    evaluation and what it writes. ``step_options``: run_step's (clip, accumulate, head_only). Rank 0's
    estimate is everyone's."""
    probe = model_from_config(model.config())
    index = np.arange(batch_size)[rows]
    images = normalize(resize_batch(data.train_images[index], size), probe.dtype)
    times: list[float] = []
    probe_start = time.perf_counter()
    # The first step pays for allocating buffers; then up to 5 timed ones (a few steps vary by 20% on a busy
    # machine), fewer if they would take more than 5% of the budget: the median counts.
    while len(times) < 6 and (len(times) < 3 or time.perf_counter() - probe_start < 0.05 * budget):
        t0 = time.perf_counter()
        run_step(probe, optimizer, images, data.train_labels[index], 0.0, comm=distributed.world(),
                 global_batch=batch_size, masks=masks_rows(probe.draw_masks(np.random.default_rng(0), batch_size),
                                                           rows), **step_options)
        synchronize()  # on a GPU the step has only been queued: the clock is read when it is done
        times.append(time.perf_counter() - t0)
    step = float(np.median(times[1:]))

    def seconds(task: Callable[[], Any]) -> tuple[float, float]:  # (the first run, the second)
        t0 = time.perf_counter()
        task()
        t1 = time.perf_counter()
        task()
        return t1 - t0, time.perf_counter() - t1

    test_batch = min(batch_size, len(data.test_labels))
    _, evaluation = seconds(lambda: evaluate(probe, data.test_images[:test_batch], data.test_labels[:test_batch],
                                             batch_size, resize=size != data.image_shape[:2]))
    evaluation *= len(data.test_labels) / test_batch
    record = {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "test_loss": 1.0, "test_accuracy": 0.5, "lr": 0.1}
    with tempfile.TemporaryDirectory() as scratch:  # what the end of every epoch writes: two checkpoints, the plot
        _, checkpoint = seconds(lambda: save_checkpoint(Path(scratch) / "probe.npz", probe.params, optimizer.state))
        cold, plot = seconds(lambda: plot_learning_curves([record, record | {"epoch": 2}], Path(scratch) / "probe.png"))
    # 5% for loading and augmenting the data; once: the first figure's set-up, the final confusion-matrix plot
    epoch = steps_per_epoch * step * 1.05 + evaluation + 2 * checkpoint + plot
    left = budget - (time.perf_counter() - started) - max(cold - plot, 0.0) - plot - evaluation
    epochs = distributed.world().broadcast_object(max(1, int(left // epoch)))
    said = (f"time budget {budget:.0f} s: a step takes {step:.3g} s, an epoch about {epoch:.3g} s with its "
            f"evaluation: {epochs} epoch(s) in the {max(left, 0):.3g} s left"
            + (" (one epoch takes longer than the budget: --limit-train shortens it)" if epoch > left else ""))
    return epochs, said


def continued_state(meta: dict[str, Any], held: dict[str, np.ndarray], model: Any, optimizer: Any, ema: Any,
                    split: str, epochs: int, now: dict[str, int], lr_at: Callable[[int], float],
                    layout: tuple[int, int], say: Callable[[str], None] = print) -> dict[str, Any]:
    """The state of a run resumed from a checkpoint's ``meta`` and ``held`` optimiser state (rank 0's; shared with
    every rank here): the optimiser and the weights' average restored, the schedule re-fitted when the options
    changed (``now``: batch_size, steps_per_epoch, total_steps, warmup_steps; ``lr_at``: the new schedule), and
    the notes said. ``layout``: (processes, shards) now. Raises ValueError when ``epochs`` is fewer than done."""
    held = share_optimizer_state(held)
    optimizer.state = {k: model.xp.asarray(v) for k, v in held.items() if not k.startswith("ema/")}
    if ema is not None:
        ema.state = {k[4:]: (v if k == "ema/step" else model.xp.asarray(v)) for k, v in held.items()
                     if k.startswith("ema/")}
    state = resumed_state(meta["state"], split)
    if state["epoch"] > epochs:
        raise ValueError(f"the run being resumed has trained {state['epoch']} epochs already; --epochs {epochs} is "
                         f"fewer (give at least {state['epoch']})")
    # The schedule counts steps; if the batch size, the data or the number of epochs changed, the run continues at
    # the same place in its epoch (the same images seen) on the schedule fitted to the new run.
    global_step, was = refit_schedule(state, meta.get("schedule", {}), now)
    if was is not None:
        say(f"note: the schedule is re-fitted to the options now: {epochs} epochs of {now['steps_per_epoch']} steps "
            f"({now['total_steps']} steps, {now['warmup_steps']} of warm-up); continuing at step {global_step}, "
            f"learning rate {lr_at(global_step):.4g}" + (f" (it was {was:.4g})" if was == was else ""))
    state["global_step"] = global_step
    before = (meta.get("processes", 1), meta.get("shards", layout[1]))
    if before != layout:
        say(f"note: the run being resumed ran as {before[0]} process(es) with the batch in {before[1]} shard(s) "
            f"each, and now as {layout[0]} with {layout[1]}: the weights will differ from an uninterrupted run in "
            f"the last bits")
    return state


def epoch_line(record: dict[str, float], split: str, is_best: bool, with_ema: bool) -> str:
    """The line a finished epoch prints."""
    return (f"epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f} acc "
            f"{100 * record['train_accuracy']:5.2f}%  |  {split} loss {record[f'{split}_loss']:.4f} acc "
            f"{100 * record[f'{split}_accuracy']:5.2f}%"
            + (f", ema {100 * record[f'ema_{split}_accuracy']:5.2f}%" if with_ema else "")
            + f"{' (best)' if is_best else ''}  |  lr {record['lr']:.4g}  |  "
            f"{record['wall_time']:.0f}s, {record['images_per_sec']:.0f} img/s, data "
            f"{100 * record['data_time_fraction']:.1f}%")
