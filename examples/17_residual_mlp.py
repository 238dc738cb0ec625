"""Residual connections: a deep plain MLP stalls where the same MLP with skip connections trains.

Both networks stack the same 20 blocks, `Dense(16, 16)` then `Tanh`, start from the
tutorial's small initial weights (N(0, 0.01^2)) and train with the same optimizer on
the same data. The only difference: in the residual net each block is wrapped in
`nnx.Residual`, so it computes ``X + tanh(X W + b)`` instead of ``tanh(X W + b)``.

In the plain net every block multiplies the signal, and on the way back the gradient,
by weights of size ~0.01: after 20 blocks almost nothing of the input reaches the
output, and almost nothing of the error reaches the first layers, so the net can
only learn the mean of the targets and its loss stays flat. In the residual net the
skip connections carry the input forward and the gradient backward unchanged
(d(X + f(X))/dX = 1 + f'(X)), so every block gets a gradient and learns. (A
variance-preserving initialisation such as Glorot's also lets a plain net of this
depth train; the skip connections work whatever the initialisation.)

`GradientAnalyzer` walks into the `Residual` blocks: its columns are the Dense layers
inside them, named by path (``"3.0:Dense(16, 16)"``).

    python examples/17_residual_mlp.py [--backend torch] [--quick] [--out DIR]
"""

import numpy as np
from _common import parse_args, plt, save_figure

import nnx
from nnx.callbacks import GradientAnalyzer

args = parse_args(__doc__)

DEPTH, WIDTH = 20, 16
rng = np.random.default_rng(0)
X = rng.uniform(-1.0, 1.0, (256 if args.quick else 512, 2))
y = np.sin(3 * X[:, :1]) * np.cos(2 * X[:, 1:])  # a smooth surface over the square


def network(residual: bool) -> nnx.Sequential:
    blocks = []
    for _ in range(DEPTH):
        block = [nnx.Dense(WIDTH, WIDTH, init="normal"), nnx.Tanh()]
        blocks += [nnx.Residual(*block)] if residual else block
    return nnx.Sequential(nnx.Dense(2, WIDTH, init="normal"), *blocks, nnx.Dense(WIDTH, 1, init="normal"),
                          backend=args.backend, seed=0)


losses, first_epoch = {}, {}
for name, residual in (("plain", False), ("residual", True)):
    model = network(residual)
    analyzer = GradientAnalyzer(warn=False)  # the table below says it; warnings would repeat it
    history = model.fit(X, y, loss="mse", optimizer="adam", lr=3e-3, epochs=5 if args.quick else 40,
                        batch_size=32, callbacks=[analyzer])
    losses[name] = history["loss"]
    steps = -(-X.shape[0] // 32)
    first_epoch[name] = analyzer.history()["weight_mean"][:steps].mean(axis=0)
    table: list[str] = []
    model.summary(print_fn=table.append)
    print(f"{name:>8s}: loss {losses[name][0]:.4f} -> {losses[name][-1]:.4f} after {len(history)} epochs "
          f"({table[0].splitlines()[-1]})")

print(f"\nvariance of the targets (the loss of always predicting their mean): {float(np.var(y)):.4f}")
print("mean |weight gradient| in the first epoch, the first Dense against the last:")
for name, values in first_epoch.items():
    print(f"{name:>8s}: {values[0]:.1e} / {values[-1]:.1e}")

plain, res = losses["plain"][-1], losses["residual"][-1]
assert plain > 0.9 * float(np.var(y)), f"the plain net should stall near the variance, got {plain:.4f}"
assert res < 0.8 * plain, f"the residual net should train where the plain one stalls: {res:.4f} vs {plain:.4f}"

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for name, values in losses.items():
    axes[0].plot(np.arange(1, len(values) + 1), values, marker=".", label=f"{name} ({DEPTH} blocks)")
axes[0].axhline(float(np.var(y)), color="grey", ls=":", label="predicting the mean")
axes[0].set(xlabel="epoch", ylabel="training loss (MSE)", title="same blocks, same start, same optimizer")
axes[0].legend()
for name, values in first_epoch.items():
    axes[1].plot(np.arange(1, len(values) + 1), values, marker="o", ms=3, label=name)
axes[1].set(yscale="log", xlabel="Dense layer (1 = next to the input)", ylabel="mean |weight gradient|",
            title="gradient size by depth, first epoch")
axes[1].legend()
fig.tight_layout()
save_figure(fig, args, "17_residual_mlp.png")
