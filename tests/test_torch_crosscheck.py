"""An independent reference: the same network written in PyTorch (its autograd, its conv2d, its LayerNorm, its
GELU, its cross-entropy), loaded with the same weights, must give the same logits, loss and every gradient to
~1e-10 relative in float64.

PyTorch is a test-only dependency (the ``test`` extra). Without it this module is skipped, except under CI
(``CI`` set), where a missing PyTorch is a failure: the cross-check must never silently stop running.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import tinymixer as tm
from tinymixer.tools.twin import tinymixer_grads, torch_network

pytestmark = pytest.mark.host  # PyTorch on the CPU against the NumPy path, in float64

if os.environ.get("CI"):
    import torch  # noqa: F401 - under CI a missing torch must fail, not skip
torch = pytest.importorskip("torch")
F = torch.nn.functional


def normwise_error(ours, theirs):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("gelu, smoothing", [("tanh", 0.0), ("erf", 0.1)])
def test_logits_loss_and_every_gradient_match_pytorch(gelu, smoothing):
    model = tm.MlpMixer(num_classes=5, num_blocks=3, patch_size=4, hidden_dim=16, tokens_mlp_dim=12,
                        channels_mlp_dim=24, image_size=(16, 12), dtype="float64", gelu=gelu, seed=0)
    r = np.random.default_rng(0)
    for value in model.params.values():  # randomise everything, so no gradient is trivially zero
        value[...] += 0.2 * r.standard_normal(value.shape)
    images, labels = r.uniform(-1, 1, (4, 16, 12, 3)), np.array([0, 4, 2, 2])

    logits = model.forward(images)
    loss, dlogits = tm.softmax_cross_entropy(logits, labels, smoothing)
    dimages = model.backward(dlogits)

    net = torch_network(torch, model, "float64")  # nn.Conv2d, nn.LayerNorm, nn.Linear, nn.GELU, autograd
    t_images = torch.tensor(images, requires_grad=True)
    t_logits = net(t_images)
    t_loss = F.cross_entropy(t_logits, torch.tensor(labels), label_smoothing=smoothing)
    t_loss.backward()
    t_grads = tinymixer_grads(net)

    errors = {"logits": normwise_error(logits, t_logits.detach().numpy()),
              "loss": abs(float(loss) - t_loss.item()) / abs(t_loss.item()),
              "images": normwise_error(dimages, t_images.grad.numpy())}
    assert set(t_grads) == set(model.params)  # every parameter compared
    for name, grad in t_grads.items():
        if name.endswith("token_mixing/Dense_1/bias"):  # its true gradient is 0 (see test_model): both ~0
            assert np.abs(model.grads[name]).max() < 1e-13 and np.abs(grad).max() < 1e-13
            continue
        errors[name] = normwise_error(model.grads[name], grad)
    worst = max(errors, key=errors.get)
    print(f"worst relative difference to PyTorch: {worst} {errors[worst]:.1e}")
    assert errors[worst] < 1e-10, {k: v for k, v in errors.items() if v >= 1e-10}


@pytest.mark.parametrize("family", ["mixer", "cnn"])
def test_the_plain_reference_matches_pytorch_too(family):
    """nn/reference.py (the textbook code, no shared fast kernels) against PyTorch's autograd, both networks."""
    from tinymixer.nn import reference

    if family == "mixer":
        model = tm.MlpMixer(num_classes=5, num_blocks=2, patch_size=4, hidden_dim=8, tokens_mlp_dim=6,
                            channels_mlp_dim=12, image_size=(8, 12), dtype="float64", seed=0)
        forward, backward = reference.mixer_forward, reference.mixer_backward
    else:
        model = tm.ResNet(num_classes=5, widths=(8, 16), depths=(1, 1), groups=4, image_size=(8, 12),
                          dtype="float64", seed=0)
        forward, backward = (lambda x, p: reference.resnet_forward(x, p, model.groups)), reference.resnet_backward
    r = np.random.default_rng(1)
    for value in model.params.values():
        value[...] += 0.2 * r.standard_normal(value.shape)
    images, labels = r.uniform(-1, 1, (3, 8, 12, 3)), np.array([0, 4, 2])
    logits, cache = forward(images, dict(model.params))
    loss, ce_cache = reference.softmax_cross_entropy_forward(logits, labels)
    dimages, grads = backward(reference.softmax_cross_entropy_backward(1.0, ce_cache), cache)

    net = torch_network(torch, model, "float64")
    t_images = torch.tensor(images, requires_grad=True)
    t_logits = net(t_images)
    t_loss = F.cross_entropy(t_logits, torch.tensor(labels))
    t_loss.backward()
    t_grads = tinymixer_grads(net)
    errors = {"logits": normwise_error(logits, t_logits.detach().numpy()),
              "loss": abs(loss - t_loss.item()) / abs(t_loss.item()),
              "images": normwise_error(dimages, t_images.grad.numpy())}
    assert set(t_grads) == set(grads)
    scale = max(np.abs(g).max() for g in t_grads.values())
    errors.update({name: float(np.abs(grads[name] - g).max() / scale) for name, g in t_grads.items()})
    assert max(errors.values()) < 1e-12, {k: v for k, v in errors.items() if v >= 1e-12}
