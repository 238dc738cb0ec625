"""Regularization: L1, L2 and dropout tame an over-parameterised network.

A 2-64-64-1 network (about 4,400 parameters) trained on 60 noisy points learns
the noise: its training loss keeps falling while the loss on fresh validation
data turns back up. Three cures, each trained from the same start:

  L2       adds l/2 * sum(W**2) to the loss: every step shrinks the weights a little
  L1       adds l * sum(|W|): its gradient l * sign(W) pulls every weight towards zero
           with the same force, so the weights the data does not need end up tiny; a
           gradient step lands next to zero, not on it (none is exactly 0 here), so for
           exact zeros, threshold the weights after training
  dropout  zeroes a random half of the hidden units at every training step, so no
           unit can rely on a few others (inference uses them all)

The curves show the data loss alone (no penalty, dropout off), so they compare fairly.

    python examples/09_regularization.py [--backend torch] [--quick] [--out DIR]
"""

from _common import parse_args, plt, save_figure
from sklearn.datasets import make_moons

import nnx
from nnx.regularizers import L1, L2

args = parse_args(__doc__)

X_train, y_train = make_moons(n_samples=60, noise=0.35, random_state=2)
X_val, y_val = make_moons(n_samples=500, noise=0.35, random_state=3)
epochs = 15 if args.quick else 400
bce = nnx.losses.BinaryCrossEntropy()


def build(regularizer=None, dropout=0.0):
    return nnx.Sequential(
        nnx.Dense(2, 64), nnx.ReLU(), nnx.Dropout(dropout),
        nnx.Dense(64, 64), nnx.ReLU(), nnx.Dropout(dropout),
        nnx.Dense(64, 1), nnx.Sigmoid(),
        backend=args.backend, seed=0, regularizer=regularizer)


class DataLoss(nnx.callbacks.Callback):
    """Training and validation loss without the penalty and with dropout off, after every epoch."""

    def __init__(self):
        self.train, self.val = [], []

    def on_epoch_end(self, epoch, logs=None):
        be = self.model.backend
        self.train.append(be.to_float(bce(y_train, self.model.predict(X_train))))
        self.val.append(be.to_float(bce(y_val, self.model.predict(X_val))))


VARIANTS = {
    "no regularization": build(),
    "L2 (l=0.01)": build(regularizer=L2(0.01)),
    "L1 (l=0.003)": build(regularizer=L1(0.003)),
    "dropout 0.5": build(dropout=0.5),
}

fig, axes = plt.subplots(1, len(VARIANTS), figsize=(12, 3.2), sharey=True)
print(f"{'':<20s}{'train loss':>11s}{'val loss':>10s}{'best val':>10s}{'val acc':>9s}")
for ax, (name, model) in zip(axes, VARIANTS.items(), strict=True):
    losses = DataLoss()
    model.fit(X_train, y_train, loss="bce", optimizer="adam", lr=0.01, epochs=epochs, batch_size=None,
              callbacks=[losses])
    accuracy = model.evaluate(X_val, y_val, metrics=["accuracy"])["accuracy"]
    print(f"{name:<20s}{losses.train[-1]:11.4f}{losses.val[-1]:10.4f}{min(losses.val):10.4f}{accuracy:9.3f}")
    ax.plot(losses.train, label="train")
    ax.plot(losses.val, label="validation")
    ax.set(title=name, xlabel="epoch", ylim=(0, 1.0))
axes[0].set_ylabel("loss (BCE, no penalty)")
axes[0].legend()
fig.tight_layout()
save_figure(fig, args, "09_regularization.png")
