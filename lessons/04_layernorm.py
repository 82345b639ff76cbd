# %% [markdown]
# # Lesson 4 — LayerNorm, forward and backward
#
# **You will learn** LayerNorm's forward pass, how to derive its backward (the classic hard one), and how to
# check it.
#
# For one token's C channels: $\mu = \frac1C\sum_c x_c$, $\sigma^2 = \frac1C\sum_c (x_c-\mu)^2$,
# $\hat x = (x-\mu)/\sqrt{\sigma^2+\epsilon}$, and $y = \gamma \odot \hat x + \beta$ ($\epsilon$ = 1e-6 as in the
# official code).
#
# Backward. With $g = \partial L/\partial y$: $\partial L/\partial\beta = \sum g$, $\partial L/\partial\gamma =
# \sum g\odot\hat x$ (sums over all tokens), and with $d = g\odot\gamma$ and $r = 1/\sqrt{\sigma^2+\epsilon}$,
#
# $$\frac{\partial L}{\partial x} = r\,\Big(d - \overline{d} - \hat x\;\overline{d\odot\hat x}\Big)$$
#
# where the bars are means over the C channels. The first term is the direct path, the second the path through
# the mean, the third the path through the variance.
#
# The plain reference below derives it the long way, one step at a time: the forward numbers its six steps
# (x → μ → x − μ → σ² → r → x̂ → y), and the backward undoes them in reverse, one line each. Step 3 (σ²) and step 1
# (μ) are where x's other two paths join; summed, the lines give the formula above.

# %%
import numpy as np
from lesson_utils import plt, print_reference, save_figure

from tinymixer import exercises
from tinymixer.nn import reference
from tinymixer.nn.gradcheck import check_gradients, numerical_gradient, rel_error
from tinymixer.nn.layers import layer_norm_backward, layer_norm_forward

print_reference(reference.layer_norm_forward, reference.layer_norm_backward)

rng = np.random.default_rng(0)
C = 32
x = 3.0 + 2.5 * rng.standard_normal((8, 16, C))  # (batch, tokens, channels), far from mean 0 / variance 1
scale, bias = np.ones(C), np.zeros(C)
y, cache = layer_norm_forward(x, scale, bias)
print(f"input : per-token mean {x.mean(-1).mean():.2f}, std {x.std(-1).mean():.2f}")
print(f"output: per-token mean {np.abs(y.mean(-1)).max():.1e}, std {y.std(-1).mean():.4f}")
assert np.allclose(y.mean(-1), 0, atol=1e-12) and np.allclose(y.std(-1), 1, atol=1e-5)

# %% [markdown]
# Check all three gradients (with a random scale and bias so nothing is trivially 0 or 1), then break the
# backward by dropping the variance term and check again.

# %%
inputs = {"x": x[:2, :3].copy(), "scale": rng.standard_normal(C), "bias": rng.standard_normal(C)}
errors = check_gradients(layer_norm_forward, layer_norm_backward, inputs)
print("LayerNorm:", {k: f"{v:.1e}" for k, v in errors.items()})
assert max(errors.values()) < 1e-8


def without_variance_term(dout, cache):
    xhat, rstd, scale = cache
    d = dout * scale
    dx = rstd * (d - d.mean(-1, keepdims=True))
    return dx, (dout * xhat).sum((0, 1)), dout.sum((0, 1))


broken = check_gradients(layer_norm_forward, without_variance_term, inputs)
print("without the variance term:", {k: f"{v:.1e}" for k, v in broken.items()})
assert broken["x"] > 1e-3

# %% [markdown]
# ## The three paths, one at a time
# Each term of dx is the gradient along one path with the other two cut. Let x move only the numerator, with μ and
# σ² held at their values (the direct path); or only the mean; or only the variance. Finite differences of these
# three functions measure the three terms one by one, and their sum is the whole dx.

# %%
x0, g0, b0 = inputs["x"], inputs["scale"], inputs["bias"]
eps = 1e-6
mu0, var0 = x0.mean(-1, keepdims=True), x0.var(-1, keepdims=True)
r0 = 1 / np.sqrt(var0 + eps)
xhat0 = (x0 - mu0) * r0
dout = rng.standard_normal(x0.shape)
d = dout * g0
paths = {  # (x -> the normalised x along one path only, the analytic term of that path)
    "direct:    r d": (lambda x: (x - mu0) * r0, r0 * d),
    "through μ: -r mean(d)": (lambda x: (x0 - x.mean(-1, keepdims=True)) * r0, -r0 * d.mean(-1, keepdims=True)
                              * np.ones_like(x0)),
    "through σ²: -r x̂ mean(d x̂)": (lambda x: (x0 - mu0) / np.sqrt(x.var(-1, keepdims=True) + eps),
                                   -r0 * xhat0 * (d * xhat0).mean(-1, keepdims=True)),
}
probe = x0.copy()
total = 0
for name, (along, analytic) in paths.items():
    numerical = numerical_gradient(lambda along=along: along(probe) * g0 + b0, probe, dout)
    total = total + numerical
    print(f"  {name:30s} relative error {rel_error(analytic, numerical):.1e}")
    assert rel_error(analytic, numerical) < 1e-7
full_dx = layer_norm_backward(dout, layer_norm_forward(x0, g0, b0)[1])[0]
print(f"the three paths summed vs the whole backward: relative error {rel_error(full_dx, total):.1e}")
assert rel_error(full_dx, total) < 1e-7

# %%
# One panel per token, before and after on the same axis: LayerNorm works on each token on its own.
bins = np.linspace(min(x[0, :4].min(), y[0, :4].min()), max(x[0, :4].max(), y[0, :4].max()), 31)
fig, axes = plt.subplots(1, 4, figsize=(14, 3.4), sharex=True, sharey=True)
for token, ax in enumerate(axes):
    before, after = x[0, token], y[0, token]
    ax.hist(before, bins=bins, histtype="step", lw=2, color="gray", label="before")
    ax.hist(after, bins=bins, alpha=0.6, color="tab:blue", label="after")
    ax.axvline(0, color="black", lw=0.8, ls=":")
    ax.set(title=f"token {token}: mean {before.mean():.1f} → {round(after.mean(), 1) + 0.0:.1f}\n"  # + 0.0: no -0.0
                 f"std {before.std():.1f} → {after.std():.1f}", xlabel="channel value")
axes[0].set(ylabel=f"channels (of {C})")
axes[0].legend()
fig.suptitle("the C channels of 4 tokens, before and after LayerNorm: every token gets mean 0, variance 1")
save_figure(fig, "04_layernorm")

# %% [markdown]
# ## Your turn: LayerNorm, forward and backward
# First the forward (mind where eps goes, and which axis the statistics run over), then the backward from the
# reference's cache (xc, r, xhat, scale): the three paths, or the steps undone one by one.

# %%
print(exercises.task("layer_norm_forward"))


def my_layer_norm_forward(x, scale, bias):
    raise NotImplementedError("your turn: return out (and a cache of your choice)")


print(exercises.check("layer_norm_forward", my_layer_norm_forward))

# %%
print(exercises.task("layer_norm_backward"))


def my_layer_norm_backward(dout, cache):
    xc, r, xhat, scale = cache
    raise NotImplementedError("your turn: return dx, dscale, dbias")


print(exercises.check("layer_norm_backward", my_layer_norm_backward))

# %% [markdown]
# ## Exercises
# 1. Show that LayerNorm's output does not change if you add the same constant to every channel of a token. What
#    does that imply for the gradient of such a shift? (Lesson 6 meets a parameter whose gradient is exactly 0
#    for this reason.)
# 2. Derive the mean term of dx: differentiate $\hat x_c$ with respect to $x_k$ through $\mu$ only.
# 3. Why does the library cache $\hat x$ and $r$ instead of $x$, $\mu$ and $\sigma^2$?
