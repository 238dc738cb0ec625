"""Losses and their gradients: mean squared error and binary cross-entropy.

A loss turns "how wrong are the predictions" into one number; its gradient with
respect to the predictions is where backpropagation starts. Both losses here
take the mean over all elements, so each gradient entry carries a 1/n.

We compute both on three predictions, check every gradient entry against a
central finite difference (L(p + h) - L(p - h)) / 2h, and plot how each loss
and its slope grow as a prediction moves away from its target.

    python examples/04_losses.py [--backend array_api_strict] [--quick] [--out DIR]
"""

import numpy as np
from _common import parse_args, plt, save_figure

import nnx

args = parse_args(__doc__)
be = nnx.get_backend(args.backend)

y_true = np.array([[1.0], [0.0], [1.0]])
y_pred = np.array([[0.9], [0.1], [0.8]])
print(f"y_true {y_true[:, 0]}   y_pred {y_pred[:, 0]}\n")

for loss in (nnx.losses.MSE(), nnx.losses.BinaryCrossEntropy()):
    t, p = be.asarray(y_true, dtype="float64"), be.asarray(y_pred, dtype="float64")
    value = be.to_float(loss(t, p))
    grad = be.to_host(loss.gradient(t, p))

    # finite differences: nudge one prediction at a time up and down by h
    h = 1e-6
    numeric = np.zeros_like(y_pred)
    for i in range(y_pred.shape[0]):
        up, down = y_pred.copy(), y_pred.copy()
        up[i, 0] += h
        down[i, 0] -= h
        numeric[i, 0] = (be.to_float(loss(t, be.asarray(up))) - be.to_float(loss(t, be.asarray(down)))) / (2 * h)
    error = np.max(np.abs(grad - numeric))
    print(f"{type(loss).__name__}: value {value:.4f}")
    print(f"  gradient      {np.round(grad[:, 0], 5)}")
    print(f"  finite diff.  {np.round(numeric[:, 0], 5)}   max difference {error:.1e}")
    assert error < 1e-6

# How each loss and its gradient behave for one sample whose target is 1.
p = np.linspace(0.01, 0.99, 99)
one = be.asarray(np.ones((1, 1)), dtype="float64")
curves = {}
for loss in (nnx.losses.MSE(), nnx.losses.BinaryCrossEntropy()):
    values, slopes = [], []
    for pi in p:
        value, grad = loss.value_and_grad(one, be.asarray(np.full((1, 1), pi)))
        values.append(be.to_float(value))
        slopes.append(be.to_float(grad[0, 0]))
    curves[type(loss).__name__] = (values, slopes)

fig, (ax_l, ax_g) = plt.subplots(1, 2, figsize=(9, 3.4))
for name, (values, slopes) in curves.items():
    ax_l.plot(p, values, label=name)
    ax_g.plot(p, slopes, label=name)
ax_l.set(title="loss when the target is 1", xlabel="prediction p", ylabel="loss")
ax_g.set(title="its gradient dL/dp", xlabel="prediction p", ylim=(-20, 1))
ax_g.axhline(0, color="grey", lw=0.5)
for ax in (ax_l, ax_g):
    ax.legend()
fig.tight_layout()
save_figure(fig, args, "04_losses.png")
