"""Gradient analysis: vanishing gradients in a deep sigmoid network, and their cure.

Backpropagation multiplies the error signal, layer by layer, by the weights and
by the activation's derivative. Sigmoid's derivative is at most 0.25, and the
tutorial's initialisation (weights ~ N(0, 0.01^2)) makes the weights small too,
so in a deep sigmoid network the signal shrinks by a large factor at every
layer: the first layers get gradients many orders of magnitude smaller than the
last, and barely learn. ReLU passes gradients through unchanged where it is
active, and He initialisation (std sqrt(2 / fan_in)) keeps the signal's size
from layer to layer, so every layer learns.

`nnx.callbacks.GradientAnalyzer` records mean and max |gradient| per layer at
every step. Both networks train with plain SGD, whose step is proportional to
the gradient, so a vanished gradient means a frozen layer.

    python examples/12_gradient_analysis.py [--backend torch] [--quick] [--out DIR]
"""

import numpy as np
from _common import parse_args, plt, save_figure
from sklearn.datasets import make_moons

import nnx
from nnx.callbacks import GradientAnalyzer

args = parse_args(__doc__)

X, y = make_moons(n_samples=300 if args.quick else 1000, noise=0.2, random_state=0)
DEPTH, WIDTH = 8, 32


def deep_network(activation, init):
    layers = [nnx.Dense(2, WIDTH, init=init), activation()]
    for _ in range(DEPTH - 2):
        layers += [nnx.Dense(WIDTH, WIDTH, init=init), activation()]
    layers += [nnx.Dense(WIDTH, 1, init=init), nnx.Sigmoid()]
    return nnx.Sequential(*layers, backend=args.backend, seed=0)


NETWORKS = {
    "sigmoid, N(0, 0.01^2) init": deep_network(nnx.Sigmoid, "normal"),
    "ReLU, He init": deep_network(nnx.ReLU, "he"),
}

over_training, first_epoch = {}, {}
for name, model in NETWORKS.items():
    # warn=False: the table below reports the same thing, and warnings would clutter the output
    analyzer = GradientAnalyzer(warn=False)
    history = model.fit(X, y, loss="bce", optimizer="sgd", lr=0.1, epochs=3 if args.quick else 40,
                        batch_size=32, metrics=["accuracy"], callbacks=[analyzer])
    stats = analyzer.history()["weight_mean"]  # mean |weight gradient|, shape (steps, layers)
    steps_per_epoch = -(-X.shape[0] // 32)
    over_training[name] = stats
    first_epoch[name] = stats[:steps_per_epoch].mean(axis=0)
    print(f"{name}: accuracy after {len(history)} epochs {history['accuracy'][-1]:.3f}")
    # analyzer.plot() draws its whole record: mean, max and norm, weights and biases

print("\nmean |weight gradient| per layer in the first epoch (layer 1 is next to the input):")
print(f"{'layer':>6s}" + "".join(f"{name:>30s}" for name in first_epoch))
for layer in range(DEPTH):
    print(f"{layer + 1:>6d}" + "".join(f"{values[layer]:>30.2e}" for values in first_epoch.values()))
for name, values in first_epoch.items():
    print(f"{name}: first layer / last layer = {values[0] / values[-1]:.1e}")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
for ax, (name, stats) in zip(axes, over_training.items(), strict=True):
    for layer in range(DEPTH):
        ax.plot(stats[:, layer], lw=0.8, color=plt.cm.viridis(layer / (DEPTH - 1)), label=f"layer {layer + 1}")
    ax.set(yscale="log", xlabel="training step", title=name)
axes[0].set_ylabel("mean |weight gradient|")
axes[1].legend(fontsize=7, ncol=2, loc="lower right")
fig.suptitle(f"{DEPTH}-layer networks: gradient size per layer during training (GradientAnalyzer)")
fig.tight_layout()
save_figure(fig, args, "12_gradients_over_training.png")

fig, ax = plt.subplots(figsize=(6, 3.6))
for name, values in first_epoch.items():
    ax.plot(np.arange(1, DEPTH + 1), values, marker="o", label=name)
ax.axhline(1e-7, color="grey", ls=":", label="GradientAnalyzer's vanishing threshold")
ax.set(yscale="log", xlabel="layer (1 = next to the input)", ylabel="mean |weight gradient|",
       title="Gradient size by depth, first epoch")
ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, args, "12_gradients_by_layer.png")
