"""scikit-learn estimators backed by nnx: `MLPClassifier` and `MLPRegressor`.

They take the parameters of scikit-learn's own `sklearn.neural_network` estimators,
plus `backend`, `dtype` and `dropout`, and reproduce its numbers: the same initial
weights and intercepts drawn from `random_state`, the same shuffles and batches,
scikit-learn's losses and their scale (half squared error, or half the Poisson
deviance with a log link for ``loss="poisson"``; log-loss summed over labels), its L2
term ``alpha / 2 * ||W||^2`` divided by each batch's size (or sum of weights), its
own SGD and Adam (`SklearnSGD`, `SklearnAdam`) with its learning-rate schedules, and
its bookkeeping of `loss_curve_`, `n_iter_`, `t_` and convergence. In float64 (the
default for float64 data, as in scikit-learn) `coefs_`, `intercepts_` and
`loss_curve_` equal scikit-learn's to rounding; docs/sklearn.md says where and why
they can still differ.

Input and output are NumPy arrays by default, whatever the backend, so
``MLPClassifier(backend="cupy")`` drops into a `Pipeline` unchanged. With
scikit-learn's array-API dispatch on (``SCIPY_ARRAY_API=1`` and
``sklearn.config_context(array_api_dispatch=True)``), data stays in its namespace
and on its device: the network runs on the nnx backend of `X` (unless `backend`
names another) and `predict`/`predict_proba` return arrays of `X`'s kind. The
trained network is the `model_` attribute, an `nnx.Sequential`.

Beyond scikit-learn: `solver` also accepts the other nnx optimizers (``"rmsprop"``,
``"adamw"``, ``"adagrad"``, ``"momentum"``), driven by `learning_rate_init` (and `momentum`,
`beta_1`, `beta_2`, `epsilon` where they apply), and
`dropout` adds inverted dropout after every hidden activation.
"""

import importlib.util

if importlib.util.find_spec("sklearn") is None:
    raise ImportError('nnx.sklearn needs scikit-learn, which is not installed: pip install "nnx-mlp[sklearn]"')

from .classifier import MLPClassifier  # noqa: E402
from .optimizers import SklearnAdam, SklearnSGD  # noqa: E402
from .regressor import MLPRegressor  # noqa: E402

__all__ = ["MLPClassifier", "MLPRegressor", "SklearnAdam", "SklearnSGD"]
