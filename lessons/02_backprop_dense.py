# %% [markdown]
# # Lesson 2 — Backpropagation by hand: the dense layer, and how to prove a gradient
#
# **You will learn** the dense layer's backward pass from its forward, and the tool that proves every backward in
# this project: the finite-difference gradient check, and how to read its relative error.
#
# Forward, for a batch of rows x (N, D_in): $\;y = x W + b$.
# For a scalar loss L with upstream gradient $\partial L/\partial y$ (N, D_out), the chain rule gives
#
# $$\frac{\partial L}{\partial x} = \frac{\partial L}{\partial y} W^\top,\qquad
#   \frac{\partial L}{\partial W} = x^\top \frac{\partial L}{\partial y},\qquad
#   \frac{\partial L}{\partial b} = \sum_{n} \frac{\partial L}{\partial y_n}.$$
#
# (Check the shapes: each gradient has the shape of what it is the gradient of. That alone finds most bugs.)

# %%
import numpy as np
from lesson_utils import plt, print_reference, save_figure

from tinymixer import exercises
from tinymixer.nn import reference
from tinymixer.nn.gradcheck import check_gradients, numerical_gradient, rel_error
from tinymixer.nn.layers import dense_backward, dense_forward

# The plain reference: nothing more than the three equations. The library's dense layer (nn/layers.py) computes
# the same numbers faster (one GEMM over all leading axes, the bias sum as a matrix-vector product).
print_reference(reference.dense_forward, reference.dense_backward)

# %%
rng = np.random.default_rng(0)
x, w, b = rng.standard_normal((5, 4)), rng.standard_normal((4, 3)), rng.standard_normal(3)  # float64!
y, cache = dense_forward(x, w, b)
dy = rng.standard_normal(y.shape)  # pretend this came from the layers above
dx, dw, db = dense_backward(dy, cache)
print("shapes: x", x.shape, "dx", dx.shape, "| w", w.shape, "dw", dw.shape, "| b", b.shape, "db", db.shape)

# %% [markdown]
# ## The gradient check
# Take the scalar $L = \sum y \odot dy$ (so that $\partial L/\partial y = dy$). Nudge one input element by ±h and
# watch L change: $\partial L/\partial x_i \approx (L(x_i+h) - L(x_i-h))/2h$, with an error that shrinks like h².
# Compare with the backward through the relative error $|a-b| / (|a|+|b|)$:
# about 1e-7 or less means right; 1e-2 or more means a bug.

# %%
def loss():
    return (dense_forward(x, w, b)[0] * dy).sum()


numeric_dw = numerical_gradient(loss, w, order=2)  # the textbook two-point formula, h = 1e-5
print(f"dW: relative error {rel_error(dw, numeric_dw):.1e}")
errors = check_gradients(dense_forward, dense_backward, {"x": x, "w": w, "b": b})
print("all inputs:", {k: f"{v:.1e}" for k, v in errors.items()})
assert max(errors.values()) < 1e-8

# %% [markdown]
# A check must be able to fail. Give it a dx that is 10% off and see what it reports:

# %%
def wrong_backward(dout, cache):
    dx, dw, db = dense_backward(dout, cache)
    return dx * 0.9, dw, db  # a plausible-looking but wrong dx


wrong = check_gradients(dense_forward, wrong_backward, {"x": x, "w": w, "b": b})
print("with a wrong dx:", {k: f"{v:.1e}" for k, v in wrong.items()})
assert wrong["x"] > 1e-3

# %% [markdown]
# ## Choosing h
# Too large an h and the difference quotient is off by its truncation error (∝ h² for the two-point formula,
# ∝ h⁴ for the four-point one the library uses by default); too small and round-off in L (≈1e-16·|L|) divided by
# h takes over. The plot shows both regimes on a nonlinear function, where truncation error is not zero.

# %%
def cubic():
    return (np.tanh(x) ** 3 * 2.0).sum()


exact = 6.0 * np.tanh(x) ** 2 * (1 - np.tanh(x) ** 2)
steps = np.logspace(-9, -1, 17)
two = [rel_error(exact, numerical_gradient(cubic, x, h=h, order=2)) for h in steps]
four = [rel_error(exact, numerical_gradient(cubic, x, h=h, order=4)) for h in steps]
fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(steps, two, "o-", label="two-point (error ~ h²)")
ax.loglog(steps, four, "s-", label="four-point (error ~ h⁴)")
ax.set(xlabel="step h", ylabel="relative error", title="finite differences: truncation vs round-off")
ax.legend()
ax.grid(alpha=0.3)
save_figure(fig, "02_gradient_check_step_size")
print(f"best two-point error {min(two):.1e} at h = {steps[np.argmin(two)]:.0e}; "
      f"best four-point {min(four):.1e} at h = {steps[np.argmin(four)]:.0e}")

# %% [markdown]
# ## Your turn: the dense layer's backward
# Write it yourself below, from the three equations at the top (no peeking at the reference), and run the cell.
# `exercises.check` runs your function and the reference on random inputs of three shapes, compares with finite
# differences too, and tells you which output is wrong, by how much, and which classic mistake it looks like.

# %%
print(exercises.task("dense_backward"))


def my_dense_backward(dout, cache):
    x, w = cache
    raise NotImplementedError("your turn: return dx, dw, db")


print(exercises.check("dense_backward", my_dense_backward))

# %% [markdown]
# ## Exercises
# 1. Derive dW for y = x W by writing one element $y_{nj} = \sum_i x_{ni} W_{ij}$ and differentiating.
# 2. Why must gradient checks run in float64? Rerun the check with float32 arrays: `check_gradients` refuses them
#    and says why. Then pass `allow_float32=True` to see the relative errors float32 gives for this correct
#    backward, compare them with float64's, and explain the size of the difference from float32's epsilon
#    (`np.finfo(np.float32).eps`) and the step h.
# 3. Write the backward of y = x * W (elementwise, same shapes) and check it with `check_gradients`.
