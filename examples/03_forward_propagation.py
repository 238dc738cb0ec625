"""Forward propagation: data flows through the layers one after another.

Each Dense layer computes X @ W + b, each activation layer applies its function
elementwise. nnx keeps data samples-first, shape (batch, features) as in
PyTorch, so a Dense(3, 4) layer holds W of shape (3, 4) and turns a (5, 3)
batch into a (5, 4) one. We walk a batch through a 3-4-2-1 network by hand,
print every shape, and check the result equals `model(X)`.

    python examples/03_forward_propagation.py [--backend torch] [--quick] [--out DIR]
"""

import numpy as np
from _common import parse_args, plt, save_figure

import nnx

args = parse_args(__doc__)

model = nnx.Sequential(
    nnx.Dense(3, 4), nnx.Tanh(),
    nnx.Dense(4, 2), nnx.Tanh(),
    nnx.Dense(2, 1), nnx.Sigmoid(),
    backend=args.backend, seed=0)
print(model)

X = np.random.default_rng(0).normal(size=(5, 3))  # a batch of 5 samples with 3 features each
A = model.backend.asarray(X, dtype=model.dtype)   # moved to the model's backend and dtype
stages = [("input X", A)]
print(f"\n{'layer':<12s}{'in':>10s}{'out':>10s}   parameters")
for i, layer in enumerate(model.layers):
    out = layer.forward(A)
    params = ", ".join(f"{p.name} {tuple(p.value.shape)}" for p in layer.parameters()) or "-"
    print(f"{i}: {type(layer).__name__:<9s}{str(tuple(A.shape)):>10s}{str(tuple(out.shape)):>10s}   {params}")
    stages.append((f"{i}: {type(layer).__name__}", out))
    A = out

difference = np.max(np.abs(model.backend.to_host(A) - model.backend.to_host(model(X))))
print(f"\nlayer by layer vs model(X): max difference {difference:.1e}")
assert difference < 1e-6

# One heatmap per stage: rows are the 5 samples, columns the features at that point.
fig, axes = plt.subplots(1, len(stages), figsize=(11, 2.8), gridspec_kw={"width_ratios": [3, 4, 4, 2, 2, 1, 1]})
for ax, (title, value) in zip(axes, stages, strict=True):
    host = model.backend.to_host(value)
    ax.imshow(host, cmap="coolwarm", vmin=-2, vmax=2, aspect="auto")
    ax.set_title(f"{title}\n{host.shape}", fontsize=8)
    ax.set_xticks(range(host.shape[1]))
    ax.set_yticks([])
axes[0].set_ylabel("5 samples")
fig.suptitle("Forward propagation: (batch, features) at every layer", fontsize=10)
fig.tight_layout()
save_figure(fig, args, "03_forward.png")
