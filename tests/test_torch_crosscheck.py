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

pytestmark = pytest.mark.host  # PyTorch on the CPU against the NumPy path, in float64

if os.environ.get("CI"):
    import torch  # noqa: F401 - under CI a missing torch must fail, not skip
torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_mixer_logits(params, images, model):
    """The Mixer in PyTorch, from the official description: conv stem, (LN, token MLP, LN, channel MLP) x N,
    LN, mean over tokens, head. ``params`` maps the official names to float64 tensors."""
    p = model.patch_size
    x = images.permute(0, 3, 1, 2)  # (B, C_in, H, W) for conv2d
    kernel = params["stem/kernel"].permute(3, 2, 0, 1)  # (P, P, C_in, C) -> (C, C_in, P, P)
    x = F.conv2d(x, kernel, params["stem/bias"], stride=p)  # (B, C, H/P, W/P)
    x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])  # (B, S, C), row-major over the grid
    approximate = "tanh" if model.gelu == "tanh" else "none"

    def mlp(v, prefix):
        h = F.gelu(v @ params[f"{prefix}/Dense_0/kernel"] + params[f"{prefix}/Dense_0/bias"], approximate=approximate)
        return h @ params[f"{prefix}/Dense_1/kernel"] + params[f"{prefix}/Dense_1/bias"]

    def layer_norm(v, prefix):
        return F.layer_norm(v, (v.shape[-1],), params[f"{prefix}/scale"], params[f"{prefix}/bias"], eps=1e-6)

    for i in range(model.num_blocks):
        b = f"MixerBlock_{i}"
        y = layer_norm(x, f"{b}/LayerNorm_0").transpose(1, 2)  # (B, C, S)
        x = x + mlp(y, f"{b}/token_mixing").transpose(1, 2)
        x = x + mlp(layer_norm(x, f"{b}/LayerNorm_1"), f"{b}/channel_mixing")
    x = layer_norm(x, "pre_head_layer_norm").mean(dim=1)  # (B, C)
    return x @ params["head/kernel"] + params["head/bias"]  # (B, K)


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

    t_params = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    t_images = torch.tensor(images, requires_grad=True)
    t_logits = torch_mixer_logits(t_params, t_images, model)
    t_loss = F.cross_entropy(t_logits, torch.tensor(labels), label_smoothing=smoothing)
    t_loss.backward()

    errors = {"logits": normwise_error(logits, t_logits.detach().numpy()),
              "loss": abs(float(loss) - t_loss.item()) / abs(t_loss.item()),
              "images": normwise_error(dimages, t_images.grad.numpy())}
    for name, value in t_params.items():
        if name.endswith("token_mixing/Dense_1/bias"):  # its true gradient is 0 (see test_model): both ~0
            assert np.abs(model.grads[name]).max() < 1e-13 and value.grad.abs().max().item() < 1e-13
            continue
        errors[name] = normwise_error(model.grads[name], value.grad.numpy())
    worst = max(errors, key=errors.get)
    print(f"worst relative difference to PyTorch: {worst} {errors[worst]:.1e}")
    assert errors[worst] < 1e-10, {k: v for k, v in errors.items() if v >= 1e-10}
