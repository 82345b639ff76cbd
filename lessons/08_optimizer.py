# %% [markdown]
# # Lesson 8 — The optimiser: SGD with momentum, global-norm clipping, warm-up + cosine
#
# **You will learn** the paper's fine-tuning recipe, piece by piece, each with a picture:
#
# - SGD with momentum: $v \leftarrow \mu v + g$, $\;\theta \leftarrow \theta - \eta v$ ($\mu$ = 0.9);
# - clipping by global norm: $g \leftarrow g\cdot\min(1, c/\lVert g\rVert)$ with the norm over *all* gradients;
# - learning rate: linear warm-up to the peak, then a cosine decay to zero.

# %%
import numpy as np
from lesson_utils import plt, print_code, save_figure

import tinymixer as tm
from tinymixer import exercises

print_code(tm.warmup_cosine)
total, warmup = 1000, 100
lrs = [tm.warmup_cosine(step, 0.1, total, warmup) for step in range(total + 1)]
assert lrs[0] == 0 and lrs[warmup] == 0.1 and abs(lrs[550] - 0.05) < 1e-12 and lrs[total] == 0

# %% [markdown]
# ## Momentum on an ill-conditioned valley
# $f(\theta) = \tfrac12(\theta_1^2 + 25\,\theta_2^2)$: steep in one direction, flat in the other. The step must
# stay small for the steep direction; plain gradient descent then crawls along the flat one: each step multiplies
# θ₁ by 1 − 0.01 = 0.99 and θ₂ by 1 − 0.01·25 = 0.75, so neither ever changes sign — no oscillation at all, just
# slow progress along θ₁. Momentum accumulates speed along the consistent direction (up to 1/(1 − 0.9) = 10 times
# the step) and pays for it in the steep one: it overshoots, and θ₂ swings from side to side with a shrinking
# amplitude. The run counts both.

# %%
curvature = np.array([1.0, 25.0])


def descend(momentum, steps=60, lr=0.01):
    params, optimizer, path = {"theta": np.array([-9.0, 1.5])}, tm.SGD(momentum=momentum), []
    for _ in range(steps):
        path.append(params["theta"].copy())
        optimizer.step(params, {"theta": curvature * params["theta"]}, lr)
    return np.array(path)


plain, heavy = descend(0.0), descend(0.9)
print(f"distance to the minimum after 60 steps: plain {np.linalg.norm(plain[-1]):.3f}, "
      f"momentum {np.linalg.norm(heavy[-1]):.4f}")
sign_changes = {name: int((np.diff(np.sign(path[:, 1])) != 0).sum()) for name, path in
                [("plain", plain), ("momentum", heavy)]}
print(f"times θ₂ changes sign: plain {sign_changes['plain']}, momentum {sign_changes['momentum']}")
assert np.linalg.norm(heavy[-1]) < np.linalg.norm(plain[-1])
assert sign_changes["plain"] == 0 < sign_changes["momentum"]  # what the text says: only momentum oscillates

# %% [markdown]
# ## Clipping keeps the direction
# All gradients are scaled by the same factor, so the update points the same way; only its length is capped.

# %%
grads = {"a": np.array([3.0, 0.0]), "b": np.array([0.0, 4.0])}
norm = tm.clip_by_global_norm(grads, 1.0)
print(f"norm before {float(norm)}, after {float(tm.global_norm(grads)):.3f}; a = {grads['a']}, b = {grads['b']}")
assert abs(float(tm.global_norm(grads)) - 1.0) < 1e-12 and np.allclose(grads["a"] / grads["b"].sum(), [0.75, 0])

# %%
fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
ax1.plot(lrs)
ax1.axvline(warmup, ls=":", color="gray")
ax1.set(title="warm-up + cosine", xlabel="step", ylabel="learning rate")
t1, t2 = np.meshgrid(np.linspace(-10, 3, 200), np.linspace(-2.5, 2.5, 200))
ax2.contour(t1, t2, 0.5 * (t1**2 + 25 * t2**2), levels=20, colors="lightgray")
ax2.plot(*plain.T, "o-", ms=3, label="plain SGD")
ax2.plot(*heavy.T, "o-", ms=3, label="momentum 0.9")
ax2.set(title="60 steps, learning rate 0.01, on an ill-conditioned valley")
ax2.legend()
for angle, length in [(0.3, 3.0), (1.2, 2.2), (2.4, 0.7), (4.0, 1.6)]:  # gradients (a, b) before and after
    g = {"a": np.array([length * np.cos(angle)]), "b": np.array([length * np.sin(angle)])}
    before = (g["a"][0], g["b"][0])
    tm.clip_by_global_norm(g, 1.0)
    ax3.annotate("", before, (0, 0), arrowprops={"arrowstyle": "->", "color": "lightgray", "lw": 2})
    ax3.annotate("", (g["a"][0], g["b"][0]), (0, 0), arrowprops={"arrowstyle": "->", "color": "tab:blue", "lw": 2})
ax3.add_patch(plt.Circle((0, 0), 1.0, fill=False, ls=":", color="gray"))
ax3.set(xlim=(-3.2, 3.2), ylim=(-3.2, 3.2), aspect="equal", xlabel="gradient of a", ylabel="gradient of b",
        title="clip at global norm 1: gray before, blue after —\nthe same direction, the length capped at 1")
for ax in (ax1, ax3):
    ax.grid(alpha=0.3)
save_figure(fig, "08_optimizer")

# %% [markdown]
# ## Your turn: SGD with momentum, and warm-up + cosine
# One step of the rule at the top (on plain arrays: return the new parameters and velocity), then the schedule as
# a function of the step (the check calls it for every step of three schedules, one without warm-up).

# %%
print(exercises.task("sgd_momentum"))


def my_sgd_momentum(p, g, v, lr, momentum):
    raise NotImplementedError("your turn: return p_new, v_new")


print(exercises.check("sgd_momentum", my_sgd_momentum))

# %%
print(exercises.task("warmup_cosine"))


def my_warmup_cosine(step, base_lr, total_steps, warmup_steps):
    raise NotImplementedError("your turn: return the learning rate at this step")


print(exercises.check("warmup_cosine", my_warmup_cosine))

# %% [markdown]
# ## Exercises
# 1. Work out by hand two momentum steps on f(θ) = θ²/2 from θ = 1 with η = 0.1 (the tests hold the answer).
# 2. Why clip by the *global* norm rather than each tensor separately? Construct two gradients where per-tensor
#    clipping changes the update's direction.
# 3. What goes wrong without warm-up when the peak learning rate is large? Lesson 9's first exercise measures it
#    (at a rate where it shows: `lr=2.0`; at 0.5 it does not).
