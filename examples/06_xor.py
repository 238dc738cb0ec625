"""XOR: the classic problem one neuron cannot solve and a hidden layer can.

XOR is 1 when exactly one input is 1. No single straight line separates the
ones from the zeros, so a lone neuron (example 01) fails; with a hidden layer
of four units the network bends its decision boundary around the corners.

    python examples/06_xor.py [--backend torch] [--quick] [--out DIR]
"""

import numpy as np
from _common import parse_args, save_figure

import nnx
from nnx.plot import plot_decision_boundary, plot_history

args = parse_args(__doc__)

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
y = np.array([0, 1, 1, 0], dtype=np.float32)

model = nnx.Sequential(
    nnx.Dense(2, 4), nnx.Tanh(),
    nnx.Dense(4, 1), nnx.Sigmoid(),
    backend=args.backend, seed=0)
history = model.fit(X, y, loss="bce", optimizer="adam", lr=0.05, epochs=150 if args.quick else 500,
                    batch_size=None, metrics=["accuracy"])
print(f"after {len(history)} epochs: loss {history['loss'][-1]:.4f}, accuracy {history['accuracy'][-1]:.2f}")

probs = model.backend.to_host(model.predict(X))[:, 0]
for (a, b), target, p in zip(X, y, probs, strict=True):
    print(f"  {int(a)} XOR {int(b)} = {int(target)}   predicted {p:.3f}")

fig = plot_history(history)
fig.suptitle("XOR, 2-4-1 network: training history")
fig.tight_layout()  # make room for the title
save_figure(fig, args, "06_xor_history.png")

fig = plot_decision_boundary(model, X, y)
fig.axes[0].set_title("XOR: the learned decision boundary")
save_figure(fig, args, "06_xor_boundary.png")
