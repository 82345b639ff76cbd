# %% [markdown]
# # Lesson 5 — Token mixing and channel mixing: one MLP, two axes
#
# **You will learn** the two MLPs at the heart of the Mixer: the same Dense→GELU→Dense block, applied along
# the token axis and along the channel axis of the (S, C) table; how weight sharing sets their parameter counts;
# and what each can "see" — measured with the backward pass itself.
#
# - token mixing: $U_{*,c} = W_2\,\mathrm{GELU}(W_1 X_{*,c})$ for every channel c — one MLP of width D_S
#   applied to each column, the same weights for all C columns;
# - channel mixing: $Y_{s,*} = W_4\,\mathrm{GELU}(W_3 U_{s,*})$ for every token s — one MLP of width D_C applied
#   to each row, the same weights for all S rows.
#
# The equations use column vectors, as the paper does. The code stores each kernel as (inputs, outputs), as the
# official checkpoints do — the token-mixing `Dense_0/kernel` K₁ is (S, D_S) — and multiplies row vectors from the
# right: `v @ K1` is $W_1 v$ with $W_1 = K_1^\top$ (D_S, S).
#
# In code both are the same `mlp_block_forward`: channel mixing along the last axis, token mixing along axis -2
# (the tokens), as `W1ᵀ @ x[b]` for each image b. The official code swaps the two axes, applies the MLP to the
# last axis and swaps back: the same numbers (checked below), but two copies of the table.

# %%
import numpy as np
from lesson_utils import code_after_docstring, plt, print_reference, save_figure
from matplotlib.ticker import MaxNLocator

from tinymixer import exercises
from tinymixer.nn import blocks, reference
from tinymixer.nn.blocks import (
    channel_mixing_backward,
    channel_mixing_forward,
    token_mixing_backward,
    token_mixing_forward,
)

print("In tinymixer/nn/blocks.py, each mixing is one call of the same MLP block, on a different axis:")
for function in (token_mixing_forward, channel_mixing_forward):
    print(f"  {function.__name__:22s} {code_after_docstring(function)}")  # the whole code after the docstring

rng = np.random.default_rng(0)
grid, C, D_S, D_C = 4, 8, 12, 16
S = grid * grid


def mlp_params(d, hidden):
    return {"Dense_0/kernel": rng.standard_normal((d, hidden)) / np.sqrt(d), "Dense_0/bias": np.zeros(hidden),
            "Dense_1/kernel": rng.standard_normal((hidden, d)) / np.sqrt(hidden), "Dense_1/bias": np.zeros(d)}


token_params, channel_params = mlp_params(S, D_S), mlp_params(C, D_C)
x = rng.standard_normal((1, S, C))  # one image: S tokens x C channels
u, token_cache = token_mixing_forward(x, token_params)
y, channel_cache = channel_mixing_forward(x, channel_params)
print("table", x.shape, "-> token mixing", u.shape, "| channel mixing", y.shape)
via_swap = blocks.mlp_block_forward(x.swapaxes(1, 2), token_params)[0].swapaxes(1, 2)  # the official code's way
print(f"token mixing on axis -2 vs swap-MLP-swap: largest difference {np.abs(u - via_swap).max():.1e}")
print()
# The plain reference does it the official way: transpose, the MLP on the last axis, transpose back.
print_reference(reference.mlp_forward, reference.token_mixing_forward, reference.token_mixing_backward)
assert np.abs(u - reference.token_mixing_forward(x, token_params)[0]).max() < 1e-12

# %% [markdown]
# ## Weight sharing, checked
# Apply the token MLP to one column by hand: the library's result for that column is the same.

# %%
def mlp_on_vector(v, p):
    h = v @ p["Dense_0/kernel"] + p["Dense_0/bias"]
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    return h @ p["Dense_1/kernel"] + p["Dense_1/bias"]


for c in range(C):
    assert np.allclose(u[0, :, c], mlp_on_vector(x[0, :, c], token_params))
for s in range(S):
    assert np.allclose(y[0, s, :], mlp_on_vector(x[0, s, :], channel_params))
print("every column went through the same token MLP, every row through the same channel MLP")
count = {name: sum(v.size for v in p.values()) for name, p in [("token", token_params), ("channel", channel_params)]}
print(f"parameters: token mixing 2*S*D_S + D_S + S = {count['token']}, channel mixing 2*C*D_C + D_C + C = "
      f"{count['channel']}")
assert count["token"] == 2 * S * D_S + D_S + S and count["channel"] == 2 * C * D_C + D_C + C

# %% [markdown]
# ## What one output can see
# Which inputs does one output number depend on? Send a gradient of 1 into that single output and run the backward
# pass: the input gradient is non-zero exactly where the output looks.

# %%
s0, c0 = 5, 3
one_hot = np.zeros((1, S, C))
one_hot[0, s0, c0] = 1.0
see_token = np.abs(token_mixing_backward(one_hot, token_cache)[0][0])  # (S, C)
see_channel = np.abs(channel_mixing_backward(one_hot, channel_cache)[0][0])
assert np.count_nonzero(see_token[:, c0]) == S and np.count_nonzero(np.delete(see_token, c0, axis=1)) == 0
assert np.count_nonzero(see_channel[s0]) == C and np.count_nonzero(np.delete(see_channel, s0, axis=0)) == 0
print(f"output (token {s0}, channel {c0}): token mixing sees all {S} tokens of channel {c0}; "
      f"channel mixing sees all {C} channels of token {s0}")

fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), gridspec_kw={"width_ratios": [1.3, 1.3, 1]})
panels = [(see_token.T, "token mixing: |d out / d in|", "token", "channel", (s0, c0)),
          (see_channel.T, "channel mixing: |d out / d in|", "token", "channel", (s0, c0)),
          (see_token[:, c0].reshape(grid, grid), f"token mixing, channel {c0}, on the {grid}x{grid} patch grid:\n"
           "every patch, at any distance", "patch column", "patch row", (s0 % grid, s0 // grid))]
for ax, (picture, title, xlabel, ylabel, (col, row)) in zip(axes, panels, strict=True):
    shown = ax.imshow(picture, cmap="viridis", vmin=0, aspect="auto" if ax is not axes[2] else "equal")
    ax.scatter([col], [row], marker="x", color="red", label="the output's own position")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # tokens, channels and patches are whole numbers
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(shown, ax=ax, label="|d out / d in|")
axes[0].legend(loc="upper right", fontsize=8)
save_figure(fig, "05_receptive_fields")

# %% [markdown]
# ## Your turn: token mixing, forward and backward
# Write token mixing with the tanh GELU from the equation at the top (the first check uses S = C, so mixing the
# wrong axis runs without an error: the check notices). Then its backward, with `reference.mlp_backward` for
# the MLP itself: the exercise is getting the axes right on the way back.

# %%
print(exercises.task("token_mixing_forward"))


def my_token_mixing_forward(x, params):
    raise NotImplementedError("your turn: return out (B, S, C)")


print(exercises.check("token_mixing_forward", my_token_mixing_forward))

# %%
print(exercises.task("token_mixing_backward"))


def my_token_mixing_backward(dout, cache):
    raise NotImplementedError("your turn: return dx, grads (use reference.mlp_backward)")


print(exercises.check("token_mixing_backward", my_token_mixing_backward))

# %% [markdown]
# ## Exercises
# 1. For Mixer-B/16 at 224 px (S = 196, C = 768, D_S = 384, D_C = 3072), compare the parameter counts of one
#    token-mixing and one channel-mixing MLP. Which dominates, and why does a higher resolution change that?
# 2. A stack of a token-mixing then a channel-mixing layer: what does one output see now? Check it with a backward.
# 3. Why is token mixing's receptive field indifferent to distance, unlike a 3×3 convolution's?
