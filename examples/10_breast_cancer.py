"""Breast-cancer classification: a 30-16-8-1 network on scikit-learn's Wisconsin data.

569 tumours, 30 measurements each, labelled malignant or benign. The features
are standardised (mean 0, standard deviation 1, fitted on the training part
only), the split is stratified so train and test keep the same share of
malignant cases, and every seed is fixed, so a rerun prints the same numbers.
"Positive" here means malignant, the case a screening test must not miss:
precision is the share of tumours called malignant that are, recall the share
of malignant tumours that are caught.

    python examples/10_breast_cancer.py [--backend cupy] [--quick] [--out DIR]
"""

import numpy as np
from _common import parse_args, plt, save_figure
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import nnx
from nnx.plot import plot_history

args = parse_args(__doc__)

data = load_breast_cancer()
y = 1 - data.target  # scikit-learn codes malignant as 0; make malignant the positive class, 1
X_train, X_test, y_train, y_test = train_test_split(data.data, y, test_size=0.2, stratify=y, random_state=42)
scaler = StandardScaler().fit(X_train)
X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)

model = nnx.Sequential(
    nnx.Dense(30, 16), nnx.ReLU(),
    nnx.Dense(16, 8), nnx.ReLU(),
    nnx.Dense(8, 1), nnx.Sigmoid(),
    backend=args.backend, seed=0)
history = model.fit(X_train, y_train, loss="bce", optimizer="adam", lr=1e-3,
                    epochs=15 if args.quick else 100, batch_size=32,
                    validation_split=0.2, metrics=["accuracy"])
print(f"trained {len(history)} epochs on {args.backend}: loss {history['loss'][-1]:.4f}, "
      f"validation accuracy {history['val_accuracy'][-1]:.4f}")

scores = model.evaluate(X_test, y_test, metrics=["accuracy", "precision", "recall", "f1"])
predicted = model.backend.to_host(model.predict(X_test))[:, 0] > 0.5
actual = y_test == 1
confusion = np.array([[np.sum(~actual & ~predicted), np.sum(~actual & predicted)],
                      [np.sum(actual & ~predicted), np.sum(actual & predicted)]])

print(f"\ntest set, {len(y_test)} tumours ({int(actual.sum())} malignant):")
for name in ("accuracy", "precision", "recall", "f1"):
    print(f"  {name:<10s}{scores[name]:.4f}")
print("confusion matrix (rows: actual, columns: predicted)")
print(f"{'':>12s}{'benign':>10s}{'malignant':>10s}")
for label, row in zip(("benign", "malignant"), confusion, strict=True):
    print(f"{label:>12s}{row[0]:10d}{row[1]:10d}")

fig = plot_history(history)
fig.suptitle("Breast cancer, 30-16-8-1 network")
fig.tight_layout()  # make room for the title
save_figure(fig, args, "10_breast_cancer_history.png")

fig, ax = plt.subplots(figsize=(3.6, 3.2))
ax.imshow(confusion, cmap="Blues")
for (i, j), count in np.ndenumerate(confusion):
    ax.text(j, i, str(count), ha="center", va="center", color="white" if count > confusion.max() / 2 else "black")
ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["benign", "malignant"], yticklabels=["benign", "malignant"],
       xlabel="predicted", ylabel="actual", title=f"test accuracy {scores['accuracy']:.3f}")
fig.tight_layout()
save_figure(fig, args, "10_breast_cancer_confusion.png")
