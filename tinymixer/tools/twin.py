"""The networks in PyTorch: the same MlpMixer and ResNet as plain ``nn.Module``s, loaded with a tinymixer model's
weights, and their gradients read back in tinymixer's layout. One twin, for the benchmark (``tools/bench.py``,
float32) and the float64 cross-checks of every gradient (``tests/test_torch_crosscheck.py``, ``tests/test_cnn.py``).

Layouts: tinymixer keeps a dense kernel as (D_in, D_out) (``x @ W``) and a convolution kernel as
(K, K, C_in, C_out); PyTorch's Linear weight is (D_out, D_in) and its Conv2d weight (C_out, C_in, K, K).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import to_host


def torch_network(torch: Any, model: Any, dtype: str = "float32") -> Any:
    """``model`` (an MlpMixer or a ResNet) as the same PyTorch nn.Module in ``dtype``, with its weights; the module
    takes images (B, H, W, C) as tinymixer does. ``module.tinymixer_names`` pairs each of tinymixer's parameter
    names with the module's parameter (``tinymixer_grads`` reads the gradients back)."""
    from ..nn.cnn import ResNet

    net, pairs = (_resnet if isinstance(model, ResNet) else _mixer)(torch, model)
    net = net.to(getattr(torch, dtype))
    params = {k: to_host(v) for k, v in model.params.items()}
    with torch.no_grad():
        for name, parameter, kind in pairs:
            parameter.copy_(torch.from_numpy(np.ascontiguousarray(_to_torch(params[name], kind))))
    net.tinymixer_names = [(name, parameter, kind) for name, parameter, kind in pairs]
    return net


def tinymixer_grads(net: Any) -> dict[str, np.ndarray]:
    """The gradients of a ``torch_network`` after a backward, by tinymixer's names and in its layouts."""
    return {name: _from_torch(parameter.grad.detach().cpu().numpy(), kind)
            for name, parameter, kind in net.tinymixer_names}


def _to_torch(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return value.transpose(3, 2, 0, 1)  # (K, K, C_in, C_out) -> (C_out, C_in, K, K)
    return value.T if kind == "dense" else value  # (D_in, D_out) -> (D_out, D_in)


def _from_torch(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return value.transpose(2, 3, 1, 0)  # (C_out, C_in, K, K) -> (K, K, C_in, C_out)
    return value.T if kind == "dense" else value


def _mixer(torch: Any, model: Any) -> Any:
    """The same network as ``model`` (an MlpMixer) as a plain PyTorch nn.Module: nn.Conv2d stem, LayerNorm, Linear,
    GELU of the model's form, the mean over tokens, a Linear head."""
    nn = torch.nn
    approximate = "tanh" if model.gelu == "tanh" else "none"

    class MlpBlock(nn.Module):
        def __init__(self, dim: int, hidden: int) -> None:
            super().__init__()
            self.fc1, self.fc2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.GELU(approximate)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class MixerBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = model.hidden_dim
            self.ln0, self.ln1 = nn.LayerNorm(c, eps=1e-6), nn.LayerNorm(c, eps=1e-6)
            self.tokens = MlpBlock(model.num_tokens, model.tokens_mlp_dim)
            self.channels = MlpBlock(c, model.channels_mlp_dim)

        def forward(self, x):
            x = x + self.tokens(self.ln0(x).transpose(1, 2)).transpose(1, 2)
            return x + self.channels(self.ln1(x))

    class Mixer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            p, c = model.patch_size, model.hidden_dim
            self.stem = nn.Conv2d(model.in_channels, c, p, stride=p)
            self.blocks = nn.ModuleList(MixerBlock() for _ in range(model.num_blocks))
            self.ln = nn.LayerNorm(c, eps=1e-6)
            self.head = nn.Linear(c, model.num_classes)

        def forward(self, images):  # (B, H, W, C) like tinymixer
            x = self.stem(images.permute(0, 3, 1, 2))  # (B, C, H/P, W/P)
            x = x.flatten(2).transpose(1, 2)  # (B, S, C)
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln(x).mean(dim=1))

    net = Mixer()
    pairs = [("stem/kernel", net.stem.weight, "conv"), ("stem/bias", net.stem.bias, "")]
    for i, block in enumerate(net.blocks):
        b = f"MixerBlock_{i}"
        for ln, name in [(block.ln0, "LayerNorm_0"), (block.ln1, "LayerNorm_1")]:
            pairs += [(f"{b}/{name}/scale", ln.weight, ""), (f"{b}/{name}/bias", ln.bias, "")]
        for mlp, name in [(block.tokens, "token_mixing"), (block.channels, "channel_mixing")]:
            for fc, dense in [(mlp.fc1, "Dense_0"), (mlp.fc2, "Dense_1")]:
                pairs += [(f"{b}/{name}/{dense}/kernel", fc.weight, "dense"), (f"{b}/{name}/{dense}/bias", fc.bias, "")]
    pairs += [("pre_head_layer_norm/scale", net.ln.weight, ""), ("pre_head_layer_norm/bias", net.ln.bias, ""),
              ("head/kernel", net.head.weight, "dense"), ("head/bias", net.head.bias, "")]
    return net, pairs


def _resnet(torch: Any, model: Any) -> Any:
    """The same pre-activation ResNet as ``model`` (cnn.ResNet) as a plain PyTorch nn.Module: bias-free nn.Conv2d,
    nn.GroupNorm, ReLU, an identity or 1x1-projection shortcut from the pre-activation, a final GroupNorm + ReLU,
    the mean over positions and a Linear head."""
    nn = torch.nn
    g = model.groups

    def norm(c: int) -> Any:
        return nn.GroupNorm(g, c, eps=1e-6)

    class Block(nn.Module):
        def __init__(self, c_in: int, c: int, stride: int) -> None:
            super().__init__()
            self.norm1, self.norm2, self.relu = norm(c_in), norm(c), nn.ReLU()
            self.conv1 = nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False)
            self.conv2 = nn.Conv2d(c, c, 3, stride=1, padding=1, bias=False)
            self.shortcut = nn.Conv2d(c_in, c, 1, stride=stride, bias=False) if stride != 1 or c_in != c else None

        def forward(self, x):
            a = self.relu(self.norm1(x))  # the pre-activation, shared by both paths
            shortcut = x if self.shortcut is None else self.shortcut(a)
            return shortcut + self.conv2(self.relu(self.norm2(self.conv1(a))))

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = model.widths[-1]
            self.stem = nn.Conv2d(model.in_channels, model.widths[0], 3, padding=1, bias=False)
            self.blocks = nn.ModuleList(Block(c_in, c_out, stride) for _, c_in, c_out, stride in model.blocks())
            self.norm, self.relu = norm(c), nn.ReLU()
            self.head = nn.Linear(c, model.num_classes)

        def forward(self, images):  # (B, H, W, C) like tinymixer
            x = self.stem(images.permute(0, 3, 1, 2))  # (B, w_0, H, W)
            for block in self.blocks:
                x = block(x)
            return self.head(self.relu(self.norm(x)).mean(dim=(2, 3)))

    net = ResNet()
    pairs = [("stem/kernel", net.stem.weight, "conv")]
    for block, (name, *_) in zip(net.blocks, model.blocks(), strict=True):
        pairs += [(f"{name}/norm1/scale", block.norm1.weight, ""), (f"{name}/norm1/bias", block.norm1.bias, ""),
                  (f"{name}/conv1/kernel", block.conv1.weight, "conv"),
                  (f"{name}/norm2/scale", block.norm2.weight, ""), (f"{name}/norm2/bias", block.norm2.bias, ""),
                  (f"{name}/conv2/kernel", block.conv2.weight, "conv")]
        if block.shortcut is not None:
            pairs.append((f"{name}/shortcut/kernel", block.shortcut.weight, "conv"))
    pairs += [("pre_head_norm/scale", net.norm.weight, ""), ("pre_head_norm/bias", net.norm.bias, ""),
              ("head/kernel", net.head.weight, "dense"), ("head/bias", net.head.bias, "")]
    return net, pairs
