"""A single neuron: a weighted sum of its inputs plus a bias, squashed by the sigmoid.

    z = w . x + b            a = sigmoid(z) = 1 / (1 + exp(-z))

In nnx a neuron is a Dense layer with one output followed by a Sigmoid layer.
We set its weights by hand and check its output against the formula; then a
two-input neuron learns the AND gate, a problem one straight line can separate.

    python examples/01_sigmoid_neuron.py [--backend torch] [--quick] [--out DIR]
"""

import math

import numpy as np
from _common import parse_args, plt, save_figure

import nnx
from nnx.plot import plot_decision_boundary

args = parse_args(__doc__)

# -- one neuron with three inputs, weights chosen by hand ----------------------------
neuron = nnx.Sequential(nnx.Dense(3, 1), nnx.Sigmoid(), backend=args.backend, seed=0)
w = np.array([[0.4], [-0.2], [0.7]])  # shape (in_features, out_features)
b = np.array([0.1])
neuron.load_state_dict({"0.weight": w, "0.bias": b})

x = np.array([[0.5, 0.3, 0.2]])  # one sample, three features: shape (1, 3)
z = float(x[0] @ w[:, 0] + b[0])
by_hand = 1 / (1 + math.exp(-z))
by_nnx = float(neuron.backend.to_host(neuron(x))[0, 0])
print(f"z = w.x + b = {z:.4f}")
print(f"sigmoid(z) by hand: {by_hand:.6f}   nnx on {args.backend}: {by_nnx:.6f}")
assert abs(by_hand - by_nnx) < 1e-6

zs = np.linspace(-6, 6, 200)
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(zs, 1 / (1 + np.exp(-zs)), label="sigmoid(z)")
ax.plot([z], [by_nnx], "o", color="C3", label=f"our neuron: z={z:.2f}, a={by_nnx:.3f}")
ax.axhline(0.5, color="grey", lw=0.5)
ax.set(xlabel="z = w.x + b", ylabel="output a", title="A sigmoid neuron")
ax.legend(loc="upper left")
fig.tight_layout()
save_figure(fig, args, "01_sigmoid.png")

# -- a neuron that learns AND --------------------------------------------------------
X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
y = np.array([0, 0, 0, 1], dtype=np.float32)
and_neuron = nnx.Sequential(nnx.Dense(2, 1), nnx.Sigmoid(), backend=args.backend, seed=0)
history = and_neuron.fit(X, y, loss="bce", optimizer="adam", lr=0.1, epochs=100 if args.quick else 300,
                         batch_size=None)
print(f"AND after {len(history)} epochs, loss {history['loss'][-1]:.4f}:")
probs = and_neuron.backend.to_host(and_neuron.predict(X))[:, 0]
for (a, c), p in zip(X, probs, strict=True):
    print(f"  {int(a)} AND {int(c)} -> {p:.3f}")
assert ((probs > 0.5) == (y > 0.5)).all(), "the neuron should have learned AND"

fig = plot_decision_boundary(and_neuron, X, y)
fig.axes[0].set_title("One neuron learns AND (a straight boundary)")
save_figure(fig, args, "01_and_boundary.png")
