"""CuPy against NumPy: the same code on GPU arrays gives the same numbers (float32 tolerances).

Skipped, with the reason, on machines without CuPy and a usable CUDA GPU.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

import tinymixer as tm
from tinymixer import backend
from tinymixer.nn import blocks, cnn, conv, layers

cupy, WHY_NOT = backend._load_cupy()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(cupy is None, reason=f"needs a GPU: {WHY_NOT}")]

RTOL, ATOL = 2e-4, 2e-5


def both(forward, backward, inputs, rng):
    """Run a forward/backward pair on NumPy and on CuPy float32 copies of the same inputs; return both results."""
    results, dout = [], None
    for to in (np.asarray, cupy.asarray):
        args = {k: ({n: to(a) for n, a in v.items()} if isinstance(v, dict) else to(v)) for k, v in inputs.items()}
        out, cache = forward(**args)
        if dout is None:  # one upstream gradient for both backends (drawn once: a second draw would differ)
            dout = rng.standard_normal(out.shape).astype(np.float32)
        grads = backward(to(dout), cache)
        results.append((out, grads))
    return results


def assert_close(a, b):
    if isinstance(a, dict):
        for k in a:
            assert_close(a[k], b[k])
    elif isinstance(a, tuple):
        for x, y in zip(a, b, strict=True):
            assert_close(x, y)
    else:
        np.testing.assert_allclose(tm.to_host(b), tm.to_host(a), rtol=RTOL, atol=ATOL)


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def mlp(rng, d, h):
    return {"Dense_0/kernel": f32(rng, d, h) / np.float32(np.sqrt(d)), "Dense_0/bias": f32(rng, h),
            "Dense_1/kernel": f32(rng, h, d) / np.float32(np.sqrt(h)), "Dense_1/bias": f32(rng, d)}


CASES = {
    "dense": lambda r: (layers.dense_forward, layers.dense_backward, dict(x=f32(r, 4, 5, 6), w=f32(r, 6, 7),
                                                                         b=f32(r, 7))),
    "gelu_tanh": lambda r: (partial(layers.gelu_forward, approximate="tanh"), layers.gelu_backward,
                            dict(x=f32(r, 4, 50))),
    "gelu_erf": lambda r: (partial(layers.gelu_forward, approximate="erf"), layers.gelu_backward,
                           dict(x=f32(r, 4, 50))),
    "dropout": lambda r: (partial(layers.dropout_forward, rate=0.3), layers.dropout_backward,
                          dict(x=f32(r, 4, 5, 6), mask=r.random((4, 5, 6)) >= 0.3)),
    "stochastic_depth": lambda r: (partial(layers.stochastic_depth_forward, rate=0.25),
                                   layers.stochastic_depth_backward, dict(x=f32(r, 4, 5, 6), mask=r.random(4) >= 0.25)),
    "layer_norm": lambda r: (layers.layer_norm_forward, layers.layer_norm_backward,
                             dict(x=f32(r, 4, 5, 16), scale=f32(r, 16), bias=f32(r, 16))),
    "stem": lambda r: (conv.stem_forward, conv.stem_backward,
                       dict(images=f32(r, 2, 8, 8, 3), kernel=f32(r, 4, 4, 3, 8), bias=f32(r, 8))),
    "mean_pool": lambda r: (layers.mean_pool_forward, layers.mean_pool_backward, dict(x=f32(r, 3, 5, 4))),
    "token_mixing": lambda r: (blocks.token_mixing_forward, blocks.token_mixing_backward,
                               dict(x=f32(r, 2, 16, 8), params=mlp(r, 16, 12))),
    "channel_mixing": lambda r: (blocks.channel_mixing_forward, blocks.channel_mixing_backward,
                                 dict(x=f32(r, 2, 16, 8), params=mlp(r, 8, 12))),
    "conv2d": lambda r: (partial(conv.conv2d_forward, stride=2, padding=1), conv.conv2d_backward,
                         dict(images=f32(r, 2, 7, 6, 3), kernel=f32(r, 3, 3, 3, 8), bias=f32(r, 8))),
    "group_norm": lambda r: (partial(layers.group_norm_forward, groups=4), layers.group_norm_backward,
                             dict(x=f32(r, 2, 5, 4, 8), scale=f32(r, 8), bias=f32(r, 8))),
    "group_norm_relu": lambda r: (partial(layers.group_norm_relu_forward, groups=4), layers.group_norm_relu_backward,
                                  dict(x=f32(r, 2, 5, 4, 8), scale=f32(r, 8), bias=f32(r, 8))),
    "residual_block": lambda r: (partial(cnn.residual_block_forward, stride=2, groups=2), cnn.residual_block_backward,
                                 dict(x=f32(r, 2, 6, 6, 4), p={
                                     "norm1/scale": f32(r, 4), "norm1/bias": f32(r, 4), "norm2/scale": f32(r, 8),
                                     "norm2/bias": f32(r, 8), "conv1/kernel": f32(r, 3, 3, 4, 8) / np.float32(6),
                                     "conv2/kernel": f32(r, 3, 3, 8, 8) / np.float32(8),
                                     "shortcut/kernel": f32(r, 1, 1, 4, 8) / np.float32(2)})),
}


@pytest.mark.parametrize("name", CASES)
def test_layer_parity(name):
    rng = np.random.default_rng(0)
    forward, backward, inputs = CASES[name](rng)
    (out_np, grads_np), (out_cp, grads_cp) = both(forward, backward, inputs, np.random.default_rng(1))
    assert isinstance(out_cp, cupy.ndarray)
    assert_close(out_np, out_cp)
    assert_close(grads_np, grads_cp)


def test_the_folded_residual_paths_match_the_host():
    """The device's fused kernels that fold a residual path in (stochastic depth's product and sum; LayerNorm's
    dx plus the residual gradient) compute what the host computes."""
    rng = np.random.default_rng(2)
    x, residual, mask = f32(rng, 4, 5, 16), f32(rng, 4, 5, 16), rng.random(4) >= 0.25
    host, _ = layers.stochastic_depth_forward(x, 0.25, mask, residual=residual)
    device, _ = layers.stochastic_depth_forward(cupy.asarray(x), 0.25, cupy.asarray(mask),
                                                residual=cupy.asarray(residual))
    assert_close(host, device)
    scale, bias, dout = f32(rng, 16), f32(rng, 16), f32(rng, 4, 5, 16)
    _, cache = layers.layer_norm_forward(x, scale, bias)
    _, device_cache = layers.layer_norm_forward(cupy.asarray(x), cupy.asarray(scale), cupy.asarray(bias))
    assert_close(layers.layer_norm_backward(dout, cache, residual=residual),
                 layers.layer_norm_backward(cupy.asarray(dout), device_cache, residual=cupy.asarray(residual)))


def test_softmax_cross_entropy_parity():
    logits = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    labels = np.arange(8)
    loss_np, d_np = tm.softmax_cross_entropy(logits, labels, 0.1)
    loss_cp, d_cp = tm.softmax_cross_entropy(cupy.asarray(logits), labels, 0.1)
    assert isinstance(loss_cp, cupy.ndarray) and loss_cp.shape == ()  # no host sync for the loss
    assert_close(loss_np, loss_cp)
    assert_close(d_np, d_cp)


@pytest.mark.parametrize("size", ["micro/4", "cnn-micro"])
def test_same_seed_same_model_and_training_step_on_both_backends(size):
    results = []
    for name in ("numpy", "cupy"):
        tm.set_backend(name)
        model = tm.make_model(size, num_classes=10, image_size=16, seed=7)
        x = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
        loss, dlogits = tm.softmax_cross_entropy(model.forward(x), np.arange(8))
        model.backward(dlogits)
        tm.clip_by_global_norm(model.grads, 1.0)
        tm.SGD().step(model.params, model.grads, lr=0.1)
        results.append((loss, {k: tm.to_host(v) for k, v in model.params.items()}))
    assert_close(results[0][0], results[1][0])
    assert_close(results[0][1], results[1][1])


def test_nccl_allreduce_on_one_rank_and_a_step_through_it():
    """Data parallelism's GPU path on one GPU: an MPI communicator of one process, its NCCL communicator, an
    in-place all-reduce of a GPU buffer (one rank: the sum is the buffer itself), and a training step whose
    gradient buffer goes through NCCL and comes back unchanged, on the device."""
    pytest.importorskip("mpi4py")
    from tinymixer.training import distributed

    comm = distributed.MpiCommunicator()  # a singleton MPI world: no mpiexec needed
    comm.use_nccl()
    buffer = cupy.arange(1000, dtype=cupy.float32)
    comm.allreduce_sum_(buffer)
    assert isinstance(buffer, cupy.ndarray) and float(buffer[999]) == 999.0
    tm.set_backend("cupy")
    model = tm.MlpMixer.from_name("micro/4", num_classes=10, image_size=32, seed=0)
    images = cupy.asarray(np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32))
    _, dlogits = tm.softmax_cross_entropy(model.forward(images), np.arange(16) % 10)
    model.backward(dlogits)
    before = model.grad_buffer.copy()
    comm.allreduce_sum_(model.grad_buffer)
    assert isinstance(model.grad_buffer, cupy.ndarray) and bool((model.grad_buffer == before).all())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias_shape", [None, (6,), (5, 1)])
def test_the_fused_gelu_is_the_row_block_gelu(dtype, bias_shape):
    """On the device the tanh GELU is two fused kernels (value, slope); on the host, row blocks. The same function:
    float64 to 1e-13, in the input's dtype, with a bias of the channel or the token layout, and out=x allowed."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 6)).astype(dtype)
    bias = None if bias_shape is None else rng.standard_normal(bias_shape).astype(dtype)
    y_host, (slope_host,) = layers._gelu_bias_forward(x.copy(), bias, "tanh")
    x_dev = cupy.asarray(x)
    y_dev, (slope_dev,) = layers._gelu_bias_forward(x_dev, None if bias is None else cupy.asarray(bias), "tanh",
                                                    out=x_dev)
    assert y_dev.dtype == slope_dev.dtype == np.dtype(dtype)
    tol = 1e-13 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(tm.to_host(y_dev), y_host, rtol=tol, atol=tol)
    np.testing.assert_allclose(tm.to_host(slope_dev), slope_host, rtol=tol, atol=tol)


@pytest.mark.parametrize("train", [True, False])
def test_the_fused_layer_norm_is_the_row_block_layer_norm(train):
    """On the device LayerNorm is matrix-vector products and fused kernels; on the host, row blocks. Forward and
    backward agree in float64 to 1e-13, and out=dout in the backward is allowed."""
    rng = np.random.default_rng(4)
    x, scale, bias = rng.standard_normal((3, 7, 16)), rng.standard_normal(16), rng.standard_normal(16)
    dout = rng.standard_normal((3, 7, 16))
    host_out, host_cache = layers.layer_norm_forward(x, scale, bias, train=train)
    dev_out, dev_cache = layers.layer_norm_forward(*map(cupy.asarray, (x, scale, bias)), train=train)
    np.testing.assert_allclose(tm.to_host(dev_out), host_out, rtol=1e-13, atol=1e-13)
    if not train:
        assert dev_cache is None
        return
    host_grads = layers.layer_norm_backward(dout.copy(), host_cache)
    dev_dout = cupy.asarray(dout)
    dev_grads = layers.layer_norm_backward(dev_dout, dev_cache, out=dev_dout)
    for host_grad, dev_grad in zip(host_grads, dev_grads, strict=True):
        np.testing.assert_allclose(tm.to_host(dev_grad), host_grad, rtol=1e-12, atol=1e-13)
