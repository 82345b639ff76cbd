"""A training run's state (tinymixer/trainer/state.py), called directly: resuming re-fits the schedule only when the
options changed, the best epoch and its weights are chosen as said, records and metrics files hold what they say."""

from __future__ import annotations

import csv
import json
import math

import pytest

from tinymixer.trainer.state import (
    epoch_record,
    new_state,
    on_root,
    refit_schedule,
    resumed_state,
    running_totals,
    update_best,
    write_metrics,
)

SCHEDULE = {"batch_size": 32, "steps_per_epoch": 10, "total_steps": 50, "warmup_steps": 5, "lr": 0.1,
            "name": "cosine", "end_lr": 0.0}


def state_at(epoch: int, step_in_epoch: int, steps_per_epoch: int = 10) -> dict:
    return new_state() | {"epoch": epoch, "step_in_epoch": step_in_epoch,
                          "global_step": epoch * steps_per_epoch + step_in_epoch}


def test_an_unchanged_run_continues_where_it_stopped():
    state = state_at(2, 3)
    now = {k: SCHEDULE[k] for k in ("batch_size", "steps_per_epoch", "total_steps", "warmup_steps")}
    assert refit_schedule(state, SCHEDULE, now) == (23, None) and state["step_in_epoch"] == 3


def test_a_doubled_batch_continues_at_the_same_images_on_the_new_schedule():
    state = state_at(2, 4)  # 4 steps of 32 images into epoch 3: 128 images
    now = {"batch_size": 64, "steps_per_epoch": 5, "total_steps": 25, "warmup_steps": 2}
    global_step, was = refit_schedule(state, SCHEDULE, now)
    assert state["step_in_epoch"] == 2 and global_step == 2 * 5 + 2  # the same 128 images of the epoch seen
    assert 0 < was < 0.1  # the old schedule's rate at the old step, for the note


def test_a_checkpoint_without_its_schedule_says_nothing_of_the_old_rate():
    state = state_at(1, 0)
    now = {"batch_size": 32, "steps_per_epoch": 12, "total_steps": 60, "warmup_steps": 3}
    global_step, was = refit_schedule(state, {"batch_size": 32}, now)
    assert global_step == 12 and math.isnan(was)


def test_the_best_epoch_and_which_weights():
    state = new_state()
    assert update_best(state, [("weights", {"accuracy": 0.5})], 1, "test") == ("weights", True)
    assert update_best(state, [("weights", {"accuracy": 0.4}), ("ema", {"accuracy": 0.5})], 2, "test") == \
        ("ema", False)  # equal to the best so far: not better
    assert update_best(state, [("weights", {"accuracy": 0.6}), ("ema", {"accuracy": 0.6})], 3, "test") == \
        ("weights", True)  # a tie goes to the weights themselves
    assert state["best"] == {"epoch": 3, "accuracy": 0.6, "split": "test", "weights": "weights"}


def test_an_epoch_record_and_the_metrics_files(tmp_path):
    run = running_totals() | {"loss": 20.0, "correct": 30, "seen": 40, "seconds": 2.0, "data_seconds": 0.5}
    record = epoch_record(3, run, {"loss": 0.7, "accuracy": 0.8}, "validation", 0.01, 30, batch_size=10)
    assert record == {"epoch": 3, "train_loss": 5.0, "train_accuracy": 0.75, "validation_loss": 0.7,
                      "validation_accuracy": 0.8, "lr": 0.01, "step": 30, "wall_time": 2.0, "images_per_sec": 20.0,
                      "data_time_fraction": 0.25}
    write_metrics(tmp_path, [record], {"config": "micro/4"})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"config": "micro/4", "epochs": [record]}
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 1 and float(rows[0]["train_loss"]) == 5.0
    later = record | {"epoch": 4, "ema_validation_accuracy": 0.85}  # --ema given on a resume: a column from now on
    write_metrics(tmp_path, [record, later], {"config": "micro/4"})
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["ema_validation_accuracy"] for r in rows] == ["", "0.85"]


def test_an_old_checkpoints_records_are_named_after_the_split():
    saved = {"epoch": 1, "step_in_epoch": 0, "global_step": 10, "running": running_totals(),
             "history": [{"epoch": 1, "test_loss": 0.5, "test_accuracy": 0.9}]}
    state = resumed_state(saved, "validation")
    assert state["best"] is None and state["history"] == [{"epoch": 1, "validation_loss": 0.5,
                                                           "validation_accuracy": 0.9}]


def test_an_options_error_on_rank_0_ends_every_rank_as_a_bad_option(monkeypatch):
    """Under mpiexec an --init that cannot be read is found by rank 0 alone: the other ranks get its OptionError
    too, so that every rank exits with code 2 (they exited 1, and mpiexec reported 3)."""
    from tinymixer.trainer import state
    from tinymixer.trainer.options import OptionError

    class OtherRank:
        size, is_root = 2, False

        def broadcast_object(self, outcome):
            return ("error", OptionError("--init missing.npz: does not exist")) if outcome is None else outcome

    monkeypatch.setattr(state.distributed, "world", lambda: OtherRank())
    with pytest.raises(OptionError, match="--init missing.npz"):
        state.on_root(lambda: None)
    OtherRank.broadcast_object = lambda self, outcome: ("error", state.WeightsError("no such weights"))
    with pytest.raises(state.WeightsError):  # --init's file, read by rank 0: its caller makes it an option error
        state.on_root(lambda: None)
    OtherRank.broadcast_object = lambda self, outcome: ("error", ValueError("a file rank 0 could not read"))
    with pytest.raises(SystemExit) as stop:  # any other error: this rank stops quietly, rank 0 says why
        state.on_root(lambda: None)
    assert stop.value.code == 1


def test_one_process_runs_the_root_task_itself():
    assert on_root(lambda: 42) == 42
