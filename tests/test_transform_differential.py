"""A user's gradient transform that declares ``traceable = True`` but keeps state between steps, on JAX's compiled
step and epoch against the plain loop (``with_fastpath(False)``): float64, to 1e-12."""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.backends import backend_status
from nnx.training import GradientTransform

ok, why = backend_status("jax")
pytestmark = pytest.mark.skipif(not ok, reason=f"jax not available: {why}")


class EmaOfGradients(GradientTransform):
    """Replaces each gradient by a running mean of the gradients (an array it keeps), yet declares traceable."""

    traceable = True

    def __init__(self) -> None:
        self.ema = None

    def apply(self, params, rows):
        grads = [p.grad for p in params]
        self.ema = grads if self.ema is None else [0.5 * e + 0.5 * g for e, g in zip(self.ema, grads, strict=True)]
        for p, e in zip(params, self.ema, strict=True):
            p.grad = e
        return True


class SkipEveryThird(GradientTransform):
    """Holds back every third update by a count it keeps, yet declares traceable."""

    traceable = True

    def __init__(self) -> None:
        self.n = 0

    def apply(self, params, rows):
        self.n += 1
        return self.n % 3 != 0


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(24, 2))  # 2-2-2 layers: two parameter shapes for JAX to compile the plain loop's ops for
    return X, (X > 0).astype(float)


@pytest.mark.parametrize(("make", "accumulate"), [(EmaOfGradients, 1), (EmaOfGradients, 2), (SkipEveryThird, 1)])
def test_stateful_traceable_transform_trains_as_the_plain_loop(make, accumulate):
    X, y = _data()
    results = []
    for fast in (True, False):
        model = nnx.Sequential(nnx.Dense(2, 2), nnx.Tanh(), nnx.Dense(2, 2), nnx.Sigmoid(),
                               backend=nnx.get_backend("jax").with_fastpath(fast), dtype="float64", seed=1)
        transform = make()
        history = model.fit(X, y, loss="bce", optimizer="adam", lr=0.05, epochs=2, batch_size=8,
                            clip_norm=0.5, accumulate=accumulate, gradient_transforms=[transform])
        held = transform.ema if isinstance(transform, EmaOfGradients) else [transform.n]
        results.append(([model.backend.to_host(p.value) for p in model.parameters()],
                        [np.asarray(model.backend.to_host(h)) for h in held], history.history["loss"]))
    (fast_w, fast_held, fast_loss), (plain_w, plain_held, plain_loss) = results
    for a, b in zip(fast_w + fast_held, plain_w + plain_held, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-12)


class RunningMeanMetric:
    """A user's metric object that keeps a running mean of the batches' squared errors in an array."""

    def __init__(self) -> None:
        self.m = None

    def __call__(self, xp, y_true, y_pred, from_logits=False):
        v = xp.mean((y_pred - y_true) ** 2)
        self.m = v if self.m is None else 0.5 * self.m + 0.5 * v
        return self.m


def test_metric_object_with_a_running_array_scores_as_the_plain_loop():
    X, y = _data()  # the shapes of the transforms' test: JAX compiled the plain loop's ops for them there
    results = []
    for fast in (True, False):
        model = nnx.Sequential(nnx.Dense(2, 2), nnx.Tanh(), nnx.Dense(2, 2),
                               backend=nnx.get_backend("jax").with_fastpath(fast), dtype="float64", seed=1)
        metric = RunningMeanMetric()
        history = model.fit(X, y, loss="mse", optimizer="adam", epochs=2, batch_size=8, metrics=[("run", metric)])
        results.append((history.history["run"], float(model.backend.to_host(metric.m))))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-12)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-12)
