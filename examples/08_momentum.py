"""Momentum: plain SGD, the tutorial's momentum, Nesterov momentum and Adam on one problem.

Plain SGD steps along the current gradient only. Momentum keeps a velocity,
v = mu * v - lr * g, then w += v, so steps along a consistent direction add up
while zig-zags cancel. Nesterov momentum looks ahead along the velocity before
taking the gradient. Adam scales every weight's step by a running estimate of
its gradient's size. All four start from the same weights (same seed) and see
the same mini-batches.

    python examples/08_momentum.py [--backend jax] [--quick] [--out DIR]
"""

from _common import parse_args, plt, save_figure
from sklearn.datasets import make_moons

import nnx
from nnx.optim import SGD, Adam, Momentum

args = parse_args(__doc__)

X, y = make_moons(n_samples=300 if args.quick else 1000, noise=0.2, random_state=1)
epochs = 6 if args.quick else 60

OPTIMIZERS = {
    "SGD": lambda params: SGD(params, lr=0.05),
    "Momentum (tutorial)": lambda params: Momentum(params, lr=0.05, momentum=0.9),
    "Nesterov": lambda params: SGD(params, lr=0.05, momentum=0.9, nesterov=True),
    "Adam": lambda params: Adam(params, lr=0.01),
}

curves = {}
for name, make_optimizer in OPTIMIZERS.items():
    model = nnx.Sequential(nnx.Dense(2, 16), nnx.Tanh(), nnx.Dense(16, 16), nnx.Tanh(),
                           nnx.Dense(16, 1), nnx.Sigmoid(), backend=args.backend, seed=0)
    history = model.fit(X, y, loss="bce", optimizer=make_optimizer(model.parameters()), epochs=epochs,
                        batch_size=32, metrics=["accuracy"])
    curves[name] = history["loss"]
    print(f"{name:<20s} loss after {epochs} epochs {history['loss'][-1]:.4f}, "
          f"accuracy {history['accuracy'][-1]:.3f}")

fig, ax = plt.subplots(figsize=(6, 3.6))
for name, loss in curves.items():
    ax.plot(range(1, epochs + 1), loss, label=name)
ax.set(xlabel="epoch", ylabel="training loss (BCE)", yscale="log", title="Same start, four optimizers")
ax.legend()
fig.tight_layout()
save_figure(fig, args, "08_momentum.png")
