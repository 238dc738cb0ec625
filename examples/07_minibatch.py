"""Mini-batch gradient descent: batch size 1, 16 and the full batch on the same problem.

Every step uses the gradient of one batch. With one sample per step
(stochastic gradient descent) an epoch is many small, noisy steps: the most
progress per epoch, but the most time per epoch, because each step does
little work. The full batch takes one exact step per epoch: cheap epochs, but
it needs many of them. A mini-batch of 16 sits in between. The same network
starts from the same weights each time (same seed) and trains with plain SGD
at the same learning rate; the time axis is logarithmic.

    python examples/07_minibatch.py [--backend torch] [--quick] [--out DIR]
"""

import time

from _common import parse_args, plt, save_figure
from sklearn.datasets import make_moons
from sklearn.model_selection import train_test_split

import nnx

args = parse_args(__doc__)

X, y = make_moons(n_samples=200 if args.quick else 1000, noise=0.2, random_state=0)
X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=0.2, random_state=0)
epochs = 3 if args.quick else 40


class EpochTimer(nnx.callbacks.Callback):
    """Records the seconds since training began at the end of every epoch."""

    def on_train_begin(self, logs=None):
        self.start, self.seconds = time.perf_counter(), []

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


results = {}
for batch_size in (1, 16, None):
    label = "full batch" if batch_size is None else f"batch size {batch_size}"
    model = nnx.Sequential(nnx.Dense(2, 16), nnx.Tanh(), nnx.Dense(16, 1), nnx.Sigmoid(),
                           backend=args.backend, seed=0)
    timer = EpochTimer()
    history = model.fit(X_train, y_train, loss="bce", optimizer="sgd", lr=0.1, epochs=epochs,
                        batch_size=batch_size, validation_data=(X_val, y_val), metrics=["accuracy"],
                        callbacks=[timer])
    results[label] = (history["val_loss"], timer.seconds)
    steps = epochs * (1 if batch_size is None else -(-X_train.shape[0] // batch_size))
    print(f"{label:<13s} {steps:6d} steps in {timer.seconds[-1]:5.2f} s   validation loss "
          f"{history['val_loss'][-1]:.4f}, accuracy {history['val_accuracy'][-1]:.3f}")

fig, (ax_e, ax_t) = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
for label, (val_loss, seconds) in results.items():
    ax_e.plot(range(1, epochs + 1), val_loss, marker=".", label=label)
    ax_t.plot(seconds, val_loss, marker=".", label=label)
ax_e.set(xlabel="epoch", ylabel="validation loss (BCE)", title="against epochs")
ax_t.set(xlabel="seconds since the start", xscale="log", title=f"against wall-clock time ({args.backend})")
ax_e.legend()
fig.tight_layout()
save_figure(fig, args, "07_minibatch.png")
