"""The same training on two backends, side by side in one process: the weights agree.

nnx draws initial weights and the shuffling order on the host from the model's
seed, so two models built with the same seed start identical and see the same
mini-batches on any backend. The math is the same array-API code; only the
library doing the arithmetic differs, and with it the rounding of the last
digits. In float64 the two runs stay equal to about 12 significant digits.

The reference runs on numpy; the other model runs on --backend (when that is
numpy too, on the first of torch, jax, cupy, array_api_strict that runs here).

    python examples/13_two_backends.py [--backend torch] [--quick] [--out DIR]
"""

import numpy as np
from _common import parse_args, plt, save_figure
from sklearn.datasets import make_moons

import nnx

args = parse_args(__doc__)
other = args.backend
if other == "numpy":
    other = next(name for name in ("torch", "jax", "cupy", "array_api_strict") if nnx.backends.backend_status(name)[0])

X, y = make_moons(n_samples=300 if args.quick else 1000, noise=0.2, random_state=0)
epochs = 5 if args.quick else 50


class WeightRecorder(nnx.callbacks.Callback):
    """Host copies of all weights after every epoch."""

    def __init__(self):
        self.snapshots = []

    def on_epoch_end(self, epoch, logs=None):
        be = self.model.backend
        self.snapshots.append({k: be.to_host(v).copy() for k, v in self.model.state_dict().items()})


def max_difference(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


runs = {}
for backend in ("numpy", other):
    model = nnx.Sequential(nnx.Dense(2, 16), nnx.Tanh(), nnx.Dense(16, 16), nnx.Tanh(),
                           nnx.Dense(16, 1), nnx.Sigmoid(), backend=backend, dtype="float64", seed=0)
    recorder = WeightRecorder()
    recorder.snapshots.append({k: model.backend.to_host(v).copy() for k, v in model.state_dict().items()})
    history = model.fit(X, y, loss="bce", optimizer="adam", lr=0.01, epochs=epochs, batch_size=32,
                        metrics=["accuracy"], callbacks=[recorder])
    runs[backend] = (history, recorder.snapshots)
    print(f"{backend:<17s} loss {history['loss'][-1]:.12f}   accuracy {history['accuracy'][-1]:.4f}")

(h_ref, w_ref), (h_other, w_other) = runs["numpy"], runs[other]
gaps = [max_difference(a, b) for a, b in zip(w_ref, w_other, strict=True)]
scale = max(float(np.max(np.abs(v))) for v in w_ref[-1].values())
print(f"largest weight difference: at the start {gaps[0]:.1e}, after {epochs} epochs {gaps[-1]:.1e} "
      f"(largest weight {scale:.2f})")
assert gaps[0] == 0.0, "the same seed must give the same initial weights"
assert gaps[-1] < 1e-8 * scale, "the two backends drifted apart"

fig, (ax_l, ax_d) = plt.subplots(1, 2, figsize=(9, 3.4))
ax_l.plot(range(1, epochs + 1), h_ref["loss"], lw=4, alpha=0.4, label="numpy")
ax_l.plot(range(1, epochs + 1), h_other["loss"], "--", color="k", label=other)
ax_l.set(xlabel="epoch", ylabel="training loss", title="Loss on two backends")
ax_l.legend()
ax_d.plot(range(1, epochs + 1), np.maximum(gaps[1:], 1e-18), marker=".")
ax_d.set(xlabel="epoch", ylabel="max |weight difference|", yscale="log", ylim=(1e-18, 1e-6),
         title=f"numpy vs {other}, float64")
fig.tight_layout()
save_figure(fig, args, "13_two_backends.png")
