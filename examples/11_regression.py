"""Regression: predict a number (house prices) instead of a class.

The network ends in a plain Dense layer (no activation, any real output) and is
trained on the mean squared error, with dropout and early stopping against
over-fitting (the diabetes data has only 442 samples). Features and target are standardised for
training; predictions are mapped back, so RMSE is reported in the target's own
units, next to the RMSE of always guessing the mean, and R2 (1 is perfect,
0 is no better than the mean).

Data: California housing (scikit-learn downloads it once, then reads its
cache). Without a network connection the script says so and uses scikit-learn's
bundled diabetes data instead. `--data FILE.csv` uses your own table: a header
row, numeric columns, the target in the last column.

    python examples/11_regression.py [--data FILE.csv] [--backend torch] [--quick] [--out DIR]
"""

import socket
import warnings
from pathlib import Path

import numpy as np
from _common import parse_args, plt, save_figure
from matplotlib.ticker import EngFormatter
from sklearn.datasets import fetch_california_housing, load_diabetes
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import nnx
from nnx.plot import plot_history

args = parse_args(__doc__, lambda p: p.add_argument(
    "--data", type=Path, help="a CSV file with a header row; the last column is the target"))


def load_data():
    """(X, y, name, unit, scale): y * scale is the target in `unit`."""
    if args.data is not None:
        names = args.data.read_text().splitlines()[0].split(",")
        table = np.loadtxt(args.data, delimiter=",", skiprows=1, ndmin=2)
        return table[:, :-1], table[:, -1], f"{args.data.name} ({names[-1].strip()})", "", 1.0
    socket.setdefaulttimeout(10)  # fail fast where the network is firewalled rather than absent
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # scikit-learn's "Retry downloading" notice
            housing = fetch_california_housing(n_retries=1, delay=0.5)
        return housing.data, housing.target, "California housing (median house value)", "$", 100_000.0
    except OSError as exc:  # no network, DNS failure, timeout: all are OSErrors
        print(f"California housing could not be fetched ({exc}); using scikit-learn's bundled diabetes data.")
        diabetes = load_diabetes()
        return diabetes.data, diabetes.target, "diabetes (disease progression after one year)", "", 1.0


X, y, name, unit, scale = load_data()
y = y * scale
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)
x_scaler = StandardScaler().fit(X_train)
y_scaler = StandardScaler().fit(y_train[:, None])
X_train_s, X_test_s = x_scaler.transform(X_train), x_scaler.transform(X_test)
y_train_s = y_scaler.transform(y_train[:, None])
print(f"{name}: {X.shape[0]} samples, {X.shape[1]} features")

model = nnx.Sequential(
    nnx.Dense(X.shape[1], 64), nnx.ReLU(), nnx.Dropout(0.3),
    nnx.Dense(64, 32), nnx.ReLU(),
    nnx.Dense(32, 1),
    backend=args.backend, seed=0)
# Stop once the validation loss has not improved for 20 epochs, and keep the best weights seen.
stop = nnx.callbacks.EarlyStopping("val_loss", patience=20, restore_best_weights=True)
big = X_train.shape[0] > 5000
history = model.fit(X_train_s, y_train_s, loss="mse", optimizer="adam", lr=1e-3,
                    epochs=(3 if big else 20) if args.quick else (100 if big else 300),
                    batch_size=64 if big else 32, validation_split=0.2, metrics=["r2"], callbacks=[stop])

predicted = y_scaler.inverse_transform(model.backend.to_host(model.predict(X_test_s)))[:, 0]
rmse = np.sqrt(np.mean((predicted - y_test) ** 2))
baseline = np.sqrt(np.mean((y_train.mean() - y_test) ** 2))
r2 = 1 - np.sum((y_test - predicted) ** 2) / np.sum((y_test - y_test.mean()) ** 2)
best = "" if stop.best_epoch is None else f", best weights from epoch {stop.best_epoch + 1}"
print(f"trained {len(history)} epochs on {args.backend}{best}")
print(f"test set, {len(y_test)} samples:")
print(f"  RMSE {unit}{rmse:,.2f}   (always guessing the mean: {unit}{baseline:,.2f})")
print(f"  R2   {r2:.3f}")

fig = plot_history(history)
fig.suptitle(f"Regression on {name.split(' (')[0]}: training history")
fig.tight_layout()  # make room for the title
save_figure(fig, args, "11_regression_history.png")

fig, ax = plt.subplots(figsize=(4.5, 4.2))
ax.scatter(y_test, predicted, s=8, alpha=0.5)
low, high = min(y_test.min(), predicted.min()), max(y_test.max(), predicted.max())
ax.plot([low, high], [low, high], color="k", lw=1, label="perfect prediction")
in_unit = f" ({unit})" if unit else ""
ax.set(xlabel=f"true value{in_unit}", ylabel=f"predicted{in_unit}",
       title=f"{name.split(' (')[0]}: RMSE {unit}{rmse:,.2f}, R2 {r2:.2f}")
for axis in (ax.xaxis, ax.yaxis):
    axis.set_major_formatter(EngFormatter())  # 200 k rather than 200000
ax.legend(loc="upper left")
fig.tight_layout()
save_figure(fig, args, "11_regression_predictions.png")
