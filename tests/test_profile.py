"""The profiler (tools/profile.py): exclusive times that add up to the step, every row where it belongs, and the
layers put back afterwards. What it measures is never asserted (timing is not a test); how it counts is."""

from __future__ import annotations

import itertools

import pytest

from tinymixer.nn import blocks, conv, layers
from tinymixer.tools import profile


def test_times_are_exclusive_and_per_thread(monkeypatch):
    clock = itertools.count()  # a fake clock: each reading one second later
    monkeypatch.setattr(profile.time, "perf_counter", lambda: float(next(clock)))
    timers = profile._Timers()
    inner = timers.wrap("inner", lambda: profile.time.perf_counter())  # start 2, own reading 3, end 4: 2 s
    outer = timers.wrap("outer", lambda: inner() + profile.time.perf_counter())  # start 1 ... reading 5, end 6
    outer()
    caller = profile.threading.get_ident()
    assert timers.critical_path(caller, shards=1)[0] == {"inner": 2.0, "outer": 3.0}  # outer's 5 s less inner's 2


def test_with_shards_the_calling_threads_rows_join_one_shards(monkeypatch):
    """The optimiser runs on the calling thread, the shards' layers on pool threads (one of which may run two
    shards of a step): the table holds the caller's rows plus one shard's, the pool threads' time over the
    number of shards; each elementwise call with its share."""
    timers = profile._Timers()
    caller, pool_a, pool_b = 1, 2, 3
    timers.spent[caller]["optimiser and clipping"] = 0.5
    timers.spent[pool_a]["GELU forward"] = 2.0  # one shard
    timers.spent[pool_b]["GELU forward"] = 4.0  # two shards: pool_b picked up a second one
    timers.calls[pool_a].append(("GELU forward", (2, 3), "<f4"))
    timers.calls[pool_b] += [("GELU forward", (2, 3), "<f4")] * 2
    rows, calls = timers.critical_path(caller, shards=3)
    assert rows == {"optimiser and clipping": 0.5, "GELU forward": 2.0}
    assert calls == [("GELU forward", (2, 3), "<f4", 1 / 3)] * 3
    monkeypatch.setenv("TINYMIXER_THREADS", "2")  # and real steps on two shards of 8 images
    calls = []
    rows = profile.profile_step(profile.training_step("micro/4", batch_size=16, image_size=16), 3, calls, shards=2)
    assert rows["optimiser and clipping"] > 0 and rows["GELU forward"] > 0
    gelu = [(shape, share) for row, shape, _, share in calls if row == "GELU forward"]
    assert {shape[0] for shape, _ in gelu} == {8}  # the shards' calls
    assert sum(share for _, share in gelu) == pytest.approx(8)  # one shard's of one step: 2 a block, 4 blocks


def test_a_mixer_step_profiled_row_by_row_and_the_layers_put_back():
    originals = (layers.dense_forward, blocks.dense_forward, blocks.layer_norm_forward, conv.im2col)
    step = profile.training_step("micro/4", batch_size=4, image_size=16)
    rows = profile.profile_step(step, steps=1)
    assert (layers.dense_forward, blocks.dense_forward, blocks.layer_norm_forward, conv.im2col) == originals
    for row in (*profile.GEMM_ROWS, "GELU forward", "GELU backward", "LayerNorm forward", "LayerNorm backward",
                "optimiser and clipping", "loss, mean pool", "windows (im2col)"):  # the stem's patches: im2col
        assert rows[row] > 0, row
    assert "GroupNorm (+ ReLU) forward" not in rows  # only what ran
    assert sum(v for k, v in rows.items() if k != "step") == pytest.approx(rows["step"])
    assert 0 < profile.gemm_ms(rows) < rows["step"]


def test_the_one_pass_floor_counts_each_elementwise_call_of_one_step(monkeypatch):
    """Every elementwise call of one step is recorded (its row, shape, dtype: not the optimiser's, not a GEMM's),
    its one pass timed per shape, and the fused step is the step less those rows' time plus their passes."""
    calls: list = []
    step = profile.training_step("micro/4", batch_size=4, image_size=16)
    rows = profile.profile_step(step, steps=2, calls=calls)
    depth = 4  # micro/4's blocks: per block 2 LayerNorms and 2 GELUs forward, the same backward
    by_row = {row: round(sum(share for r, _, _, share in calls if r == row)) for row in profile.ELEMENTWISE_ROWS}
    assert by_row["LayerNorm forward"] == by_row["LayerNorm backward"] == 2 * depth + 1  # and the final one
    assert by_row["GELU forward"] == by_row["GELU backward"] == 2 * depth
    assert {row for row, _, _, _ in calls} <= set(profile.ELEMENTWISE_ROWS)
    gelu_shapes = {shape for row, shape, _, _ in calls if row == "GELU forward"}
    assert gelu_shapes == {(4, 32, 64), (4, 16, 256)}  # token mixing's (B, D_S, C), channel mixing's (B, S, D_C)
    clock = itertools.count()  # each pass "takes" one second: the floor is the number of calls, in ms x 1000
    monkeypatch.setattr(profile.time, "perf_counter", lambda: float(next(clock)))
    passes = profile.one_pass_ms(calls, repeats=2)
    assert passes == {row: 1000.0 * n for row, n in by_row.items() if n}
    fused = profile.fused_step_ms(rows, passes)
    assert fused == pytest.approx(rows["step"] - sum(rows[r] for r in passes) + sum(passes.values()))
    text = profile.format_rows("micro/4", rows, passes)
    assert "| **elementwise layers at one pass each**" in text and "| **the step with them fused** |" in text


def test_a_name_picked_up_while_profiling_is_put_back_and_profiles_do_not_nest():
    import tinymixer as tm

    vars(tm).pop("softmax_cross_entropy", None)  # not looked up yet: the facade keeps what it finds on first use
    step = profile.training_step("micro/4", batch_size=2, image_size=16)
    rows = profile.profile_step(lambda: (step(), tm.softmax_cross_entropy), steps=1)  # first looked up meanwhile
    assert rows["loss, mean pool"] > 0
    assert tm.softmax_cross_entropy is layers.softmax_cross_entropy  # the function, not its timer
    with pytest.raises(RuntimeError, match="do not nest"):
        profile.profile_step(lambda: profile.profile_step(step, steps=1), steps=1)
    assert blocks.dense_forward is layers.dense_forward  # restored after the refusal too
    assert profile.profile_step(step, steps=1)["step"] > 0  # and the next profile runs


def test_a_cnn_step_counts_its_windows_apart_from_its_matrix_multiplies():
    rows = profile.profile_step(profile.training_step("cnn-micro", batch_size=2, image_size=8), steps=1)
    for row in (*profile.GEMM_ROWS, "windows (im2col)", "GroupNorm (+ ReLU) forward", "GroupNorm (+ ReLU) backward"):
        assert rows[row] > 0, row
    assert "GELU forward" not in rows and "LayerNorm forward" not in rows


def test_command_line(capsys):
    assert profile.main(["--configs", "micro/4", "--batch-size", "2", "--image-size", "16", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "micro/4, batch 2, 1 thread(s)" in out and "| **GEMMs alone** |" in out and "| GELU forward |" in out
    for wrong, says in ((["--configs", "nope"], "invalid choice"), (["--image-size", "0"], "at least 1"),
                        (["--configs", "micro/4", "--image-size", "15"], "micro/4 at --image-size 15")):
        with pytest.raises(SystemExit) as stop:
            profile.main(wrong)
        assert stop.value.code == 2 and says in capsys.readouterr().err  # a usage error, not a traceback


@pytest.mark.gpu
def test_the_profiler_refuses_a_gpu_step():
    from tinymixer import backend

    if backend._load_cupy()[0] is None:
        pytest.skip("needs CuPy (a GPU, or --cupy-standin)")
    backend.set_backend("cupy")
    try:
        with pytest.raises(SystemExit, match="NumPy steps"):
            profile.training_step("micro/4", batch_size=2, image_size=16)
    finally:
        backend.set_backend("numpy")
