# %% [markdown]
# # Lesson 3 — GELU: two formulas, two derivatives
#
# **You will learn** the GELU nonlinearity in its exact and its tanh form, their derivatives, and why a backward
# pass must differentiate *exactly the formula its forward computed*.
#
# Both forms are $\mathrm{gelu}(x) = x\,g(x)$, with $g$ a smooth step from 0 to 1:
#
# - exact: $g(x) = \Phi(x) = \tfrac12\big(1 + \mathrm{erf}(x/\sqrt2)\big)$, the standard normal CDF;
# - tanh approximation (the official Mixer's, Flax's default):
#   $g(x) = \tfrac12\big(1 + \tanh(\sqrt{2/\pi}\,(x + 0.044715x^3))\big)$.
#
# The product rule gives the derivative of both: $\mathrm{gelu}'(x) = g(x) + x\,g'(x)$, where
# $g' = \varphi(x) = e^{-x^2/2}/\sqrt{2\pi}$ for the exact form and
# $g' = \tfrac12(1-t^2)\sqrt{2/\pi}\,(1 + 3\cdot0.044715x^2)$, $t = \tanh(\dots)$, for the tanh form.
# The library's forward computes $\mathrm{gelu}'(x)$ right away, while each block of x is in the CPU cache, and
# keeps it for the backward, which is then a single multiply: $dx = dout \cdot \mathrm{gelu}'(x)$.

# %%
import math

import numpy as np
from lesson_utils import plt, print_reference, save_figure

from tinymixer import exercises
from tinymixer.nn import reference
from tinymixer.nn.gradcheck import check_gradients
from tinymixer.nn.layers import gelu_backward, gelu_forward

# Both forms in the plain reference; the forward numbers its steps, the backward undoes them in reverse.
print_reference(reference.gelu_tanh_forward, reference.gelu_tanh_backward,
                reference.gelu_erf_forward, reference.gelu_erf_backward)

x = np.linspace(-4, 4, 801)
ones = np.ones_like(x)
y_tanh, cache_tanh = gelu_forward(x, "tanh")
y_erf, cache_erf = gelu_forward(x, "erf")
d_tanh, d_erf = gelu_backward(ones, cache_tanh), gelu_backward(ones, cache_erf)
print(f"largest gap between the forms: forward {np.abs(y_tanh - y_erf).max():.1e}, "
      f"derivative {np.abs(d_tanh - d_erf).max():.1e}")

# %% [markdown]
# The two forms differ by less than 1e-3 — small enough that using the "wrong" derivative looks harmless, large
# enough that a gradient check with a tight tolerance sees it at once:

# %%
def gelu_tanh_with_the_other_derivative(x):
    """A tanh forward differentiated as if it were the exact form: a real bug shipped in a NumPy library."""
    out, _ = gelu_forward(x, "tanh")
    big_phi = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    return out, (big_phi + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi),)  # the exact form's derivative


probe = np.random.default_rng(0).uniform(-3, 3, 40)
right = check_gradients(lambda x: gelu_forward(x, "tanh"), gelu_backward, {"x": probe})["x"]
wrong = check_gradients(gelu_tanh_with_the_other_derivative, gelu_backward, {"x": probe})["x"]
print(f"tanh forward, tanh derivative: relative error {right:.1e}")
print(f"tanh forward, erf derivative:  relative error {wrong:.1e}   <- caught")
assert right < 1e-8 < 1e-4 < wrong

# %%
fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 3.8))
ax1.plot(x, y_erf, label="exact x·Φ(x)")
ax1.plot(x, y_tanh, "--", label="tanh approximation")
ax1.plot(x, np.maximum(x, 0), ":", color="gray", label="ReLU")
ax1.set(title="GELU", xlabel="x")
ax2.plot(x, d_erf, label="exact")
ax2.plot(x, d_tanh, "--", label="tanh form")
ax2.set(title="derivative", xlabel="x")
ax3.plot(x, y_tanh - y_erf, label="forward")
ax3.plot(x, d_tanh - d_erf, label="derivative")
ax3.set(title="tanh form minus exact", xlabel="x")
for ax in (ax1, ax2, ax3):
    ax.legend()
    ax.grid(alpha=0.3)
save_figure(fig, "03_gelu")

# %% [markdown]
# ## Your turn: the tanh GELU's backward
# The forward keeps x and t = tanh(u); write dx from them (the product rule, then the chain rule through u).

# %%
print(exercises.task("gelu_tanh_backward"))


def my_gelu_tanh_backward(dout, cache):
    x, t = cache
    raise NotImplementedError("your turn: return dx")


print(exercises.check("gelu_tanh_backward", my_gelu_tanh_backward))

# %% [markdown]
# ## Exercises
# 1. Where is GELU's minimum? (Solve gelu'(x) = 0 numerically with the arrays above.) Why is GELU not monotone?
# 2. Derive g'(x) for the tanh form from $\tanh' = 1 - \tanh^2$. The library caches gelu'(x) instead of x:
#    what does that save in the backward, and what does it cost in an evaluation pass (`train=False`)?
# 3. NumPy has no erf; `tinymixer/nn/special.py` builds one. Why must it be accurate to float64 round-off for the
#    gradient check of the exact form to pass at 1e-7?
