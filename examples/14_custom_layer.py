"""A layer of your own: written against the public Layer API, then used like any built-in.

`CenteredTanh` subtracts each feature's batch mean (a running mean at inference,
kept in a buffer like BatchNorm's) and applies a tanh with a trained
per-feature scale. The script writes it in a few lines of `xp` code, checks
its hand-written backward with `nnx.check_gradients`, trains it with `fit`
next to a plain Tanh network, saves and reloads it on another backend, and
watches its gradients with `GradientAnalyzer`. The guide is docs/custom_layers.md.

    python examples/14_custom_layer.py [--backend torch] [--quick] [--out DIR]
"""

import tempfile
from pathlib import Path

import numpy as np
from _common import parse_args, save_figure
from sklearn.datasets import make_moons

import nnx
from nnx.callbacks import GradientAnalyzer
from nnx.plot import plot_decision_boundary


class CenteredTanh(nnx.Layer):
    """y = scale * tanh(x - mean(x)): the batch mean in training, a running mean at inference.

    Args:
        momentum: weight of the newest batch in the running mean.
    """

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = float(momentum)
        self._cache = None

    def build(self, input_shape):
        (features,) = input_shape
        self.scale = self.add_parameter("scale", (features,), init="ones")
        self.running_mean = self.add_buffer("running_mean", (features,), init="zeros")

    def forward(self, X, training=False):
        xp = self.xp
        if not training:
            return self.scale.value * xp.tanh(X - self.running_mean.value)
        mean = xp.mean(X, axis=0)
        T = xp.tanh(X - mean)
        m = self.momentum
        self.running_mean.value = (1.0 - m) * self.running_mean.value + m * mean
        self._cache = T
        return self.scale.value * T

    def backward(self, dY, need_dX=True):
        xp = self.xp
        T, self._cache = self._cache, None
        self.scale.grad = xp.sum(dY * T, axis=0)
        if not need_dX:
            return None
        dZ = dY * self.scale.value * (1.0 - T * T)
        return dZ - xp.mean(dZ, axis=0)


args = parse_args(__doc__)
X, y = make_moons(n_samples=300 if args.quick else 1000, noise=0.2, random_state=0)
EPOCHS = 10 if args.quick else 200


def network(hidden):
    return nnx.Sequential(nnx.Dense(2, 16), hidden, nnx.Dense(16, 16), nnx.ReLU(), nnx.Dense(16, 1), nnx.Sigmoid(),
                          backend=args.backend, seed=0)


# 1. the backward pass, checked against finite differences (float64, on a copy of the model)
model = network(CenteredTanh())
err = nnx.check_gradients(model, X[:8], y[:8], loss="bce")
print(f"check_gradients: largest relative error {err:.1e} (below 1e-6 means the backward is right)")
assert err < 1e-6, err
model.summary()

# 2. training, next to the same network with a plain Tanh
analyzer = GradientAnalyzer(warn=False)
results = {}
for name, candidate in (("CenteredTanh", model), ("Tanh", network(nnx.Tanh()))):
    callbacks = [analyzer] if candidate is model else []
    history = candidate.fit(X, y, loss="bce", optimizer="adam", lr=0.01, epochs=EPOCHS, batch_size=32,
                            metrics=["accuracy"], callbacks=callbacks)
    results[name] = history["accuracy"][-1]
    print(f"{name:>12}: loss {history['loss'][-1]:.4f}, training accuracy {results[name]:.3f}")

# 3. save, load on another backend, move back: the running mean travels with the weights
other = "torch" if args.backend != "torch" and nnx.backends.backend_status("torch")[0] else "numpy"
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "centered.npz"
    model.save(path)
    loaded = nnx.load(path, backend=other)
back = loaded.to(args.backend)
before = model.backend.to_host(model.predict(X))
gap = float(np.max(np.abs(loaded.backend.to_host(loaded.predict(X)) - before)))
print(f"saved, loaded on {other}: largest prediction difference {gap:.1e}")
np.testing.assert_array_equal(back.backend.to_host(back.predict(X)), before)
# (its values follow the first Dense's bias, whose true gradient is 0, since the layer subtracts the batch mean:
# Adam turns what rounding leaves of it into steps of about lr, so they differ from backend to backend)
np.testing.assert_array_equal(back.backend.to_host(back.layers[1].running_mean.value),
                              model.backend.to_host(model.layers[1].running_mean.value))
print(f"moved back to {args.backend}: predictions and running mean identical to the original's")

# 4. figures: its gradients during training, and what it learned
fig = analyzer.plot(stats=("mean", "max"))
fig.suptitle("GradientAnalyzer sees the custom layer like any built-in")
fig.tight_layout()
save_figure(fig, args, "14_custom_layer_gradients.png")

fig = plot_decision_boundary(model, X, y)
fig.axes[0].set_title(f"with CenteredTanh: training accuracy {results['CenteredTanh']:.3f}")
save_figure(fig, args, "14_custom_layer_boundary.png")
