"""The optimiser, the clipping and the schedule, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tinymixer as tm


def run_sgd_on_half_square(steps, **kwargs):
    """Minimise f(p) = p^2 / 2 (gradient p) from p = 1 with lr 0.1; return p after each step."""
    params, opt, trace = {"p": np.array([1.0])}, tm.SGD(**kwargs), []
    for _ in range(steps):
        opt.step(params, {"p": params["p"].copy()}, lr=0.1)
        trace.append(float(params["p"][0]))
    return trace


def test_sgd_momentum_by_hand():
    # v1 = 1, p1 = 1 - 0.1 = 0.9;  v2 = 0.9 + 0.9 = 1.8, p2 = 0.72;  v3 = 1.62 + 0.72 = 2.34, p3 = 0.486
    assert run_sgd_on_half_square(3, momentum=0.9) == pytest.approx([0.9, 0.72, 0.486], abs=1e-15)


def test_sgd_without_momentum_is_gradient_descent():
    assert run_sgd_on_half_square(2, momentum=0.0) == pytest.approx([0.9, 0.81], abs=1e-15)


def test_sgd_nesterov_by_hand():
    # v1 = 1, p1 = 1 - 0.1 (1 + 0.9) = 0.81;  v2 = 0.9 + 0.81 = 1.71, p2 = 0.81 - 0.1 (0.81 + 1.539) = 0.5751
    assert run_sgd_on_half_square(2, momentum=0.9, nesterov=True) == pytest.approx([0.81, 0.5751], abs=1e-15)


def test_decoupled_weight_decay_by_hand():
    params, opt = {"p": np.array([2.0])}, tm.SGD(momentum=0.9, weight_decay=0.1)
    opt.step(params, {"p": np.array([0.0])}, lr=0.5)  # p <- p - lr * wd * p = 2 - 0.1
    assert params["p"][0] == pytest.approx(1.9, abs=1e-15)


def test_sgd_rejects_bad_settings():
    with pytest.raises(ValueError, match="momentum"):
        tm.SGD(momentum=1.5)
    with pytest.raises(ValueError, match="weight_decay"):
        tm.SGD(weight_decay=-1)


def test_clip_above_threshold_scales_all_gradients_together():
    grads = {"a": np.array([3.0]), "b": np.array([[4.0]])}  # global norm 5
    norm = tm.clip_by_global_norm(grads, 1.0)
    assert float(norm) == 5.0
    np.testing.assert_allclose(grads["a"], [0.6], rtol=1e-15)
    np.testing.assert_allclose(grads["b"], [[0.8]], rtol=1e-15)
    assert float(tm.global_norm(grads)) == pytest.approx(1.0, abs=1e-15)


def test_clip_below_threshold_changes_nothing():
    grads = {"a": np.array([3.0]), "b": np.array([4.0])}
    assert float(tm.clip_by_global_norm(grads, 10.0)) == 5.0
    assert grads["a"][0] == 3.0 and grads["b"][0] == 4.0


def test_clip_of_zero_gradients_stays_zero():
    grads = {"a": np.zeros(3)}
    assert float(tm.clip_by_global_norm(grads, 1.0)) == 0.0
    assert np.all(grads["a"] == 0) and np.all(np.isfinite(grads["a"]))


@pytest.mark.parametrize("step, expected", [
    (0, 0.0),  # warm-up starts at 0
    (5, 0.5),  # half-way through the warm-up
    (10, 1.0),  # the peak
    (35, 0.5 * (1 + math.cos(math.pi / 4))),  # a quarter into the cosine
    (60, 0.5),  # half-way through the cosine
    (110, 0.0),  # the end
    (500, 0.0),  # after the end it stays at end_lr
])
def test_warmup_cosine_at_chosen_steps(step, expected):
    assert tm.warmup_cosine(step, base_lr=1.0, total_steps=110, warmup_steps=10) == pytest.approx(expected, abs=1e-15)


def test_warmup_cosine_end_lr_and_no_warmup():
    assert tm.warmup_cosine(60, 1.0, 110, 10, end_lr=0.1) == pytest.approx(0.55)
    assert tm.warmup_cosine(0, 0.5, 100) == 0.5
    with pytest.raises(ValueError, match="warmup_steps"):
        tm.warmup_cosine(0, 1.0, total_steps=10, warmup_steps=20)


@pytest.mark.parametrize(("spec", "steps"), [("5%", 50), ("0%", 0), ("100%", 1000), ("2ep", 200), ("0.5ep", 50),
                                             ("1 epochs", 100), ("200", 200), (30, 30)])
def test_warmup_in_steps_epochs_or_a_fraction_of_the_run(spec, steps):
    assert tm.warmup_steps(spec, total_steps=1000, steps_per_epoch=100) == steps


@pytest.mark.parametrize(("spec", "message"), [("2000", "longer than the whole run"), ("11ep", "longer than"),
                                               ("-5", "negative"), ("150%", "not understood"),
                                               ("abc", "not understood"), ("5 %%", "not understood")])
def test_a_warmup_that_does_not_fit_is_an_error_not_silently_capped(spec, message):
    with pytest.raises(ValueError, match=message):
        tm.warmup_steps(spec, total_steps=1000, steps_per_epoch=100)


# --- Adam, AdamW, the weight-decay mask, the linear schedule --------------------------------------------------------


def run_adam_on_half_square(steps, optimizer, lr=0.1):
    """Minimise f(p) = p^2 / 2 (gradient p) from p = 1; return p after each step."""
    params, trace = {"p": np.array([1.0])}, []
    for _ in range(steps):
        optimizer.step(params, {"p": params["p"].copy()}, lr=lr)
        trace.append(float(params["p"][0]))
    return trace


def test_adam_by_hand():
    # b1 0.9, b2 0.999, eps 1e-8, lr 0.1, f(p) = p^2 / 2 from p = 1:
    # t = 1: g = 1;  m = 0.1,  v = 0.001;  m_hat = 0.1 / 0.1 = 1,  v_hat = 0.001 / 0.001 = 1
    #        p1 = 1 - 0.1 * 1 / (sqrt(1) + 1e-8) = 0.900000001
    # t = 2: g = p1 = 0.900000001;  m = 0.09 + 0.0900000001 = 0.1800000001,  v = 0.000999 + 0.00081 = 0.001809
    #        m_hat = 0.1800000001 / 0.19 = 0.9473684216,  v_hat = 0.001809 / 0.001999 = 0.9049524771
    #        p2 = 0.900000001 - 0.1 * 0.9473684216 / (0.9512899017 + 1e-8) = 0.8004122297
    trace = run_adam_on_half_square(2, tm.Adam())
    assert trace == pytest.approx([0.900000001, 0.8004122297123382], abs=1e-15)


def test_adamw_by_hand():
    # t = 1 as above, with the decay beside the Adam step: p1 = 1 - 0.1 * (1 / (1 + 1e-8) + 0.5 * 1) = 0.850000001
    assert run_adam_on_half_square(1, tm.AdamW(weight_decay=0.5)) == pytest.approx([0.850000001], abs=1e-15)


def test_adam_first_step_moves_by_lr_times_sign_of_gradient():
    # bias correction: at t = 1, m_hat = g and v_hat = g^2, so the step is lr * g / (|g| + eps), whatever |g| is
    g = np.array([3.0, -0.02, 1e3, -1e-3, 0.0])
    params = {"w": np.zeros(5)}
    tm.Adam().step(params, {"w": g}, lr=0.01)
    np.testing.assert_allclose(params["w"], -0.01 * g / (np.abs(g) + 1e-8), rtol=1e-15, atol=0)
    np.testing.assert_allclose(params["w"], -0.01 * np.sign(g), rtol=1e-5, atol=0)  # eps / |g| <= 1e-5
    assert params["w"][4] == 0.0  # no gradient, no step (0 / (0 + eps))


def test_adamw_decay_is_decoupled_exactly_one_minus_lr_wd_per_step():
    params, opt = {"w": np.array([2.0, -3.0, 0.5])}, tm.AdamW(weight_decay=0.1)
    expected = params["w"].copy()
    for _ in range(3):
        opt.step(params, {"w": np.zeros(3)}, lr=0.5)  # zero gradient: m = v = 0, the Adam step is 0 / (0 + eps) = 0
        expected = expected * (1 - 0.5 * 0.1)
        assert np.array_equal(params["w"], expected)


def test_adam_l2_is_coupled_so_adam_normalises_it_away():
    # Adam's l2 goes through the moments: with no other gradient, the first step is lr * sign(p), however small l2
    # is; AdamW's decay is lr * wd * p. The difference Loshchilov & Hutter point out.
    coupled, decoupled = {"w": np.array([2.0])}, {"w": np.array([2.0])}
    tm.Adam(l2=1e-3).step(coupled, {"w": np.zeros(1)}, lr=0.1)
    tm.AdamW(weight_decay=1e-3).step(decoupled, {"w": np.zeros(1)}, lr=0.1)
    assert coupled["w"][0] == pytest.approx(2.0 - 0.1 * 0.002 / (0.002 + 1e-8), abs=1e-15)  # g = l2 * p = 0.002
    assert decoupled["w"][0] == 2.0 * (1 - 0.1 * 1e-3)


def test_adam_and_adamw_match_pytorch_over_several_steps(rng):
    torch = pytest.importorskip("torch")
    shapes = {"a/kernel": (3, 4), "a/bias": (4,)}
    grads_per_step = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(5)]
    start = {k: rng.normal(size=s) for k, s in shapes.items()}
    for ours, theirs in [(tm.Adam(l2=0.01), lambda ps: torch.optim.Adam(ps, lr=0.1, weight_decay=0.01)),
                         (tm.AdamW(weight_decay=0.2), lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.2))]:
        params = {k: v.copy() for k, v in start.items()}
        t_params = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in start.items()}
        t_opt = theirs(list(t_params.values()))
        for grads in grads_per_step:
            for k, t in t_params.items():
                t.grad = torch.tensor(grads[k])
            t_opt.step()
            ours.step(params, {k: g.copy() for k, g in grads.items()}, lr=0.1)
        for k in shapes:
            np.testing.assert_allclose(params[k], t_params[k].detach().numpy(), rtol=1e-12, atol=1e-14)


def mixer_params():
    """A Mixer's parameters as host arrays (whatever the test backend: these tests give the optimisers NumPy)."""
    return {k: tm.to_host(v).copy() for k, v in tm.MlpMixer.from_name("micro/4", num_classes=10,
                                                                      image_size=32).params.items()}


def test_decay_mask_of_a_mixer_is_the_official_kernels_only():
    params = mixer_params()
    mask = tm.decay_mask(params)
    assert mask.keys() == params.keys()
    decayed = {name for name, decays in mask.items() if decays}
    assert decayed == {name for name in params if name.endswith("/kernel")}
    assert {"stem/kernel", "head/kernel", "MixerBlock_0/token_mixing/Dense_0/kernel",
            "MixerBlock_3/channel_mixing/Dense_1/kernel"} <= decayed
    assert len(decayed) == 2 + 4 * 4  # stem, head, four kernels in each of the 4 blocks
    for name in ("stem/bias", "head/bias", "MixerBlock_0/LayerNorm_0/scale", "MixerBlock_0/LayerNorm_1/bias",
                 "pre_head_layer_norm/scale", "pre_head_layer_norm/bias"):
        assert mask[name] is False


@pytest.mark.parametrize("make", [
    lambda mask: tm.SGD(weight_decay=0.1, decay_mask=mask),
    lambda mask: tm.AdamW(weight_decay=0.1, decay_mask=mask),
    lambda mask: tm.Adam(l2=0.1, decay_mask=mask),
], ids=["SGD", "AdamW", "Adam-l2"])
def test_decay_mask_leaves_biases_and_layernorm_untouched(make):
    params = {name: value + 1.0 for name, value in mixer_params().items()}  # no zeros, so a decay would show
    before = {name: value.copy() for name, value in params.items()}
    opt = make(tm.decay_mask(params))
    for _ in range(2):
        opt.step(params, {name: np.zeros_like(value) for name, value in params.items()}, lr=0.5)
    for name, value in params.items():
        if name.endswith("/kernel"):
            assert np.all(np.abs(value) < np.abs(before[name])), name
        else:
            assert np.array_equal(value, before[name]), name


def test_decay_mask_as_a_function_and_sgd_without_mask_decays_everything():
    params = {"d/kernel": np.array([2.0]), "d/bias": np.array([2.0])}
    tm.SGD(weight_decay=0.1).step(params, {k: np.zeros(1) for k in params}, lr=0.5)  # the behaviour before masks
    assert params["d/kernel"][0] == params["d/bias"][0] == pytest.approx(1.9, abs=1e-15)
    tm.AdamW(weight_decay=0.1, decay_mask=lambda name: name.endswith("/bias")).step(
        params, {k: np.zeros(1) for k in params}, lr=0.5)
    assert params["d/kernel"][0] == pytest.approx(1.9, abs=1e-15)
    assert params["d/bias"][0] == pytest.approx(1.9 * 0.95, abs=1e-15)


def test_a_decay_mask_without_a_parameter_is_an_error():
    params = {"d/kernel": np.ones(1), "d/bias": np.ones(1)}
    with pytest.raises(KeyError, match="d/bias"):
        tm.AdamW(weight_decay=0.1, decay_mask={"d/kernel": True}).step(params, {k: np.ones(1) for k in params}, 0.1)


@pytest.mark.parametrize("make", [tm.Adam, lambda: tm.Adam(l2=0.01),
                                  lambda: tm.AdamW(weight_decay=0.05, decay_mask=tm.decay_mask(mixer_params()))],
                         ids=["Adam", "Adam-l2", "AdamW"])
def test_float32_stays_float32(make, rng):
    params = mixer_params()
    opt = make()
    for _ in range(3):
        opt.step(params, {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}, lr=1e-3)
    assert {v.dtype for v in params.values()} == {np.dtype(np.float32)}
    assert opt.state["step"].shape == () and opt.state["step"].dtype == np.int64 and opt.state["step"] == 3
    assert set(opt.state) == {"step"} | {f"{moment}/{name}" for moment in "mv" for name in params}
    assert {v.dtype for k, v in opt.state.items() if k != "step"} == {np.dtype(np.float32)}


def random_grads(params, seed):
    gen = np.random.default_rng(seed)
    return {k: gen.normal(size=v.shape).astype(v.dtype) for k, v in params.items()}


@pytest.mark.parametrize("make", [lambda: tm.AdamW(weight_decay=0.1, decay_mask=tm.decay_mask(mixer_params())),
                                  tm.Adam, lambda: tm.SGD(momentum=0.9, weight_decay=0.1)],
                         ids=["AdamW", "Adam", "SGD"])
@pytest.mark.parametrize("resume", ["assign", "load_state"])
def test_resume_from_saved_state_is_bit_exact(make, resume):
    def lr_at(step):
        return tm.warmup_linear_decay(step, 1e-2, total_steps=8, warmup_steps=2)

    straight, opt = mixer_params(), make()
    for step in range(8):
        opt.step(straight, random_grads(straight, step), lr=lr_at(step))

    params, first = mixer_params(), make()
    for step in range(4):
        first.step(params, random_grads(params, step), lr=lr_at(step))
    saved = {name: np.asarray(value).copy() for name, value in first.state.items()}  # as a checkpoint holds it
    params = {name: np.asarray(value).copy() for name, value in params.items()}
    second = make()
    if resume == "assign":
        second.state = saved
    else:
        second.load_state(params, saved)
    for step in range(4, 8):
        second.step(params, random_grads(params, step), lr=lr_at(step))

    for name in straight:
        assert np.array_equal(params[name], straight[name]), name
    assert second.state.keys() == opt.state.keys()
    for name in opt.state:
        assert np.array_equal(second.state[name], opt.state[name]), name


def test_load_state_rejects_another_optimisers_state():
    params = {"d/kernel": np.ones(2)}
    sgd = tm.SGD()
    sgd.step(params, {"d/kernel": np.ones(2)}, lr=0.1)
    with pytest.raises(ValueError, match="missing .*'m/d/kernel'.*unexpected .*'d/kernel'"):
        tm.Adam().load_state(params, sgd.state)
    with pytest.raises(ValueError, match="shape"):
        tm.SGD().load_state(params, {"d/kernel": np.ones(3)})


class Tripwire(np.ndarray):
    """An array that fails the test whenever Python asks for its value on the host (float(), int(), bool(), .item(),
    .tolist(), ...): on a GPU each of these waits for the device. Results of NumPy functions on it, even 0-d ones
    (which NumPy would otherwise turn into scalars), are Tripwires too."""

    def __array_wrap__(self, array, context=None, return_scalar=False):
        return np.asarray(array).view(Tripwire)

    def _trip(self, *args, **kwargs):
        raise AssertionError("the host asked for a device array's value (a GPU sync)")

    __float__ = __int__ = __bool__ = __index__ = __complex__ = item = tolist = _trip


def test_the_tripwire_trips():
    step = np.array(3, dtype=np.int64).view(Tripwire)
    for read in (float, int, bool, lambda a: a.item()):
        with pytest.raises(AssertionError, match="GPU sync"):
            read(1.0 - 0.9 ** (step + 1))  # also on values computed from it


@pytest.mark.parametrize("make", [tm.Adam, lambda: tm.AdamW(weight_decay=0.1, decay_mask=tm.decay_mask(mixer_params())),
                                  lambda: tm.Adam(l2=0.1), lambda: tm.SGD(weight_decay=0.1, nesterov=True)],
                         ids=["Adam", "AdamW", "Adam-l2", "SGD"])
def test_step_never_reads_an_array_on_the_host(make, rng):
    params = {k: v.view(Tripwire) for k, v in mixer_params().items()}
    grads = {k: rng.normal(size=v.shape).astype(np.float32).view(Tripwire) for k, v in params.items()}
    opt = make()
    opt.init(params)
    opt.state = {k: v.view(Tripwire) for k, v in opt.state.items()}  # the step counter too
    for step in range(3):
        opt.step(params, grads, lr=tm.warmup_linear_decay(step, 1e-2, 10, 2))
        tm.clip_by_global_norm(grads, 1.0)
    assert all(type(v) is Tripwire for v in params.values())


@pytest.mark.parametrize("step, expected", [
    (0, 0.0),  # warm-up starts at 0
    (5, 0.5),  # half-way through the warm-up
    (10, 1.0),  # the peak
    (35, 0.75),  # a quarter into the decay
    (60, 0.5),  # half-way through the decay
    (110, 0.0),  # the end
    (500, 0.0),  # after the end it stays at end_lr
])
def test_warmup_linear_decay_at_chosen_steps(step, expected):
    assert tm.warmup_linear_decay(step, 1.0, total_steps=110, warmup_steps=10) == pytest.approx(expected, abs=1e-15)


def test_warmup_linear_decay_end_lr_and_no_warmup():
    assert tm.warmup_linear_decay(60, 1.0, 110, 10, end_lr=0.1) == pytest.approx(0.55, abs=1e-15)
    assert tm.warmup_linear_decay(110, 1e-3, 110, 10, end_lr=1e-8) == pytest.approx(1e-8, rel=1e-12)
    assert tm.warmup_linear_decay(5, 1.0, 110, 10, end_lr=0.1) == 0.5  # the warm-up starts at 0, not end_lr
    assert tm.warmup_linear_decay(0, 0.5, 100) == 0.5
    assert tm.warmup_linear_decay(50, 0.5, 100) == 0.25
    with pytest.raises(ValueError, match="warmup_steps"):
        tm.warmup_linear_decay(0, 1.0, total_steps=10, warmup_steps=20)


def test_schedule_by_name():
    assert set(tm.SCHEDULES) == {"cosine", "linear"}
    for step in (0, 7, 35, 60, 200):
        assert tm.schedule("linear", step, 0.1, 110, 10, 1e-3) == tm.warmup_linear_decay(step, 0.1, 110, 10, 1e-3)
        assert tm.schedule("cosine", step, 0.1, 110, 10) == tm.warmup_cosine(step, 0.1, 110, 10)
    with pytest.raises(ValueError, match="cosine, linear"):
        tm.schedule("step", 0, 0.1, 110)


def test_adam_rejects_bad_settings():
    for kwargs, message in [({"b1": 1.0}, "b1"), ({"b2": -0.1}, "b2"), ({"eps": -1.0}, "eps"), ({"l2": -1.0}, "l2")]:
        with pytest.raises(ValueError, match=message):
            tm.Adam(**kwargs)
    with pytest.raises(ValueError, match="weight_decay"):
        tm.AdamW(weight_decay=-0.1)
    with pytest.raises(TypeError):
        tm.AdamW()  # no default decay: optax's and PyTorch's differ (1e-4, 1e-2); say which
    with pytest.raises(TypeError):
        tm.Adam(weight_decay=0.1)  # Adam has l2 (coupled); decoupled decay is AdamW's


@pytest.mark.gpu
def test_adamw_on_cupy_matches_numpy_and_keeps_its_state_on_the_device():
    from tinymixer import backend

    cupy, why_not = backend._load_cupy()
    if cupy is None:
        pytest.skip(f"needs a GPU: {why_not}")
    host = mixer_params()
    mask = tm.decay_mask(host)
    results = []
    for to in (np.asarray, cupy.asarray):
        params, opt = {k: to(v.copy()) for k, v in host.items()}, tm.AdamW(weight_decay=0.1, decay_mask=mask)
        for step in range(3):
            opt.step(params, {k: to(v) for k, v in random_grads(host, step).items()}, lr=1e-2)
        results.append((params, opt))
    (np_params, np_opt), (cp_params, cp_opt) = results
    assert all(isinstance(v, cupy.ndarray) for v in cp_opt.state.values())
    assert cp_opt.state["step"].shape == () and cp_opt.state["step"].dtype == np.int64
    for name in np_params:
        assert cp_params[name].dtype == np.float32
        np.testing.assert_allclose(cupy.asnumpy(cp_params[name]), np_params[name], rtol=2e-5, atol=2e-6)
    resumed = tm.AdamW(weight_decay=0.1, decay_mask=mask)
    resumed.load_state(cp_params, {k: cupy.asnumpy(v) for k, v in cp_opt.state.items()})
    assert all(isinstance(v, cupy.ndarray) for v in resumed.state.values())


# --- the whole-buffer path (flat.FlatArrays) computes exactly what the per-parameter reference computes -----------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", [
    lambda mask: tm.SGD(momentum=0.9, weight_decay=0.1, decay_mask=mask),
    lambda mask: tm.SGD(momentum=0.8, nesterov=True),
    lambda mask: tm.Adam(l2=0.01, decay_mask=mask),
    lambda mask: tm.AdamW(weight_decay=0.05, decay_mask=mask),
], ids=["sgd-wd", "sgd-nesterov", "adam-l2", "adamw"])
def test_the_whole_buffer_update_equals_the_per_parameter_reference(make, dtype):
    from tinymixer.flat import FlatArrays

    rng = np.random.default_rng(0)
    shapes = {"stem/kernel": (2, 2, 3, 4), "stem/bias": (4,), "Dense_0/kernel": (4, 5), "head/bias": (3,)}
    start = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    mask = tm.decay_mask(start)
    reference, fast = {k: v.copy() for k, v in start.items()}, FlatArrays.of(start, np, dtype)
    plain, flat = make(mask), make(mask)
    for step in range(4):
        g = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
        grads = FlatArrays.of(g, np, dtype)
        plain.step(reference, {k: v.copy() for k, v in g.items()}, lr=0.1 / (step + 1))
        flat.step(fast, grads, lr=0.1 / (step + 1))
        assert isinstance(flat.state, dict) and all(np.array_equal(plain.state[k], flat.state[k]) for k in plain.state)
    for name in shapes:
        assert np.array_equal(reference[name], fast[name]), name  # bit for bit
    # the state a checkpoint saves has the same names either way; loaded back as plain arrays, the path continues
    resumed = make(mask)
    resumed.state = {k: np.array(v) for k, v in flat.state.items()}
    g = FlatArrays.of({k: np.ones(s, dtype) for k, s in shapes.items()}, np, dtype)
    again = FlatArrays.of(dict(fast), np, dtype)
    resumed.step(again, g, lr=0.01)
    flat.step(fast, g, lr=0.01)
    assert np.array_equal(again.buffer, fast.buffer)


def test_clipping_the_gradient_buffer_matches_clipping_each_gradient():
    from tinymixer.flat import FlatArrays

    rng = np.random.default_rng(1)
    g = {f"p{i}": rng.standard_normal((7, i + 1)) for i in range(5)}
    flat, plain = FlatArrays.of(g, np, np.float64), {k: v.copy() for k, v in g.items()}
    norm_flat, norm_plain = tm.clip_by_global_norm(flat, 0.5), tm.clip_by_global_norm(plain, 0.5)
    assert float(norm_flat) == pytest.approx(float(norm_plain), rel=1e-14)
    assert all(np.allclose(flat[k], plain[k], rtol=1e-14, atol=0) for k in g)
    assert float(tm.global_norm(flat)) == pytest.approx(0.5, rel=1e-12)


def test_flat_arrays_keep_their_views():
    from tinymixer.flat import FlatArrays

    flat = FlatArrays.of({"a": np.ones((2, 2)), "b": np.zeros(3)}, np, np.float32)
    flat["a"] = np.full((2, 2), 5.0)  # assignment writes into the view: the buffer stays the truth
    assert flat.buffer.tolist() == [5, 5, 5, 5, 0, 0, 0] and flat["a"].base is not None
    with pytest.raises(KeyError, match="cannot grow"):
        flat["c"] = np.ones(1)
    flat.update({"b": np.full(3, 2.0)})  # dict.update would replace the view; this one copies into it
    assert flat.buffer.tolist() == [5, 5, 5, 5, 2, 2, 2] and flat.intact()
    with pytest.raises(TypeError, match=r"fixed set of names: nothing can be removed \(to change values, assign"):
        flat.pop("a")
    with pytest.raises(ValueError, match=r"'a' is \(2, 2\); the value given is \(2,\)"):
        flat["a"] = np.arange(2.0)  # broadcast silently into both rows before
    flat["b"] = 2.0  # a scalar fills the parameter
    assert flat.buffer.tolist() == [5, 5, 5, 5, 2, 2, 2]
    dict.__setitem__(flat, "a", np.zeros((2, 2)))  # forced past the guards: no longer a view of the buffer
    assert not flat.intact()
    grads = FlatArrays.of({"a": np.ones((2, 2)), "b": np.ones(3)}, np, np.float32)
    tm.SGD(momentum=0.0).step(flat, grads, lr=1.0)  # so the per-parameter reference runs, on what the dict holds
    assert flat["a"].tolist() == [[-1, -1], [-1, -1]] and flat["b"].tolist() == [1, 1, 1]


def test_a_schedule_refuses_a_step_before_the_first():
    with pytest.raises(ValueError, match="step counts from 0, got -5"):
        tm.warmup_cosine(-5, 0.1, 100, 10)  # was -0.05: a negative learning rate
    with pytest.raises(ValueError, match="step counts from 0"):
        tm.warmup_linear_decay(-1, 0.1, 100, 10)
