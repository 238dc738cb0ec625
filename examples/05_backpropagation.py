"""Backpropagation by hand for a 2-3-1 network, compared with nnx.

The chain rule, applied from the loss backwards, gives every gradient:

    forward:  Z1 = X W1 + b1, A1 = sigmoid(Z1), Z2 = A1 W2 + b2, A2 = sigmoid(Z2), L = mean((A2 - Y)^2)
    backward: dA2 = 2 (A2 - Y) / n,  dZ2 = dA2 * A2 (1 - A2),  dW2 = A1^T dZ2,  db2 = sum(dZ2)
              dA1 = dZ2 W2^T,        dZ1 = dA1 * A1 (1 - A1),  dW1 = X^T dZ1,   db1 = sum(dZ1)

We write exactly that with the backend's array functions, compare it with
`model.backward` and with `nnx.check_gradients` (finite differences), and then
train twice from the same start, by hand and with `model.fit`: the loss
curves lie on top of each other. float64 keeps the comparison free of rounding.

    python examples/05_backpropagation.py [--backend jax] [--quick] [--out DIR]
"""

import numpy as np
from _common import parse_args, plt, save_figure

import nnx

args = parse_args(__doc__)

model = nnx.Sequential(nnx.Dense(2, 3), nnx.Sigmoid(), nnx.Dense(3, 1), nnx.Sigmoid(),
                       backend=args.backend, dtype="float64", seed=1)
xp, be = model.xp, model.backend
X_host = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
y_host = np.array([[0.0], [1.0], [1.0], [0.0]])
X, Y = be.asarray(X_host, dtype="float64"), be.asarray(y_host, dtype="float64")
n = X.shape[0]


def sigmoid(z):
    return 1 / (1 + xp.exp(-z))


def loss_and_gradients(W1, b1, W2, b2):
    """The loss and its gradient for every parameter, by the chain rule."""
    A1 = sigmoid(X @ W1 + b1)
    A2 = sigmoid(A1 @ W2 + b2)
    loss = xp.mean((A2 - Y) ** 2)
    dA2 = 2 * (A2 - Y) / n          # derivative of the mean squared error
    dZ2 = dA2 * A2 * (1 - A2)       # sigmoid'(z) = sigmoid(z) (1 - sigmoid(z))
    dA1 = dZ2 @ W2.T                # send the error back through W2
    dZ1 = dA1 * A1 * (1 - A1)
    grads = {"0.weight": X.T @ dZ1, "0.bias": xp.sum(dZ1, axis=0),
             "2.weight": A1.T @ dZ2, "2.bias": xp.sum(dZ2, axis=0)}
    return loss, grads


start = model.state_dict()  # {"0.weight": W1, "0.bias": b1, "2.weight": W2, "2.bias": b2}
loss, by_hand = loss_and_gradients(*start.values())

# nnx: forward in training mode, loss gradient, backward fills p.grad
mse = nnx.losses.MSE()
output = model.forward(X, training=True)
model.backward(mse.gradient(Y, output))
print(f"loss {be.to_float(loss):.6f}\n{'parameter':<10s}{'shape':>8s}   max |by hand - model.backward|")
for p in model.parameters():
    diff = np.max(np.abs(be.to_host(by_hand[p.name]) - be.to_host(p.grad)))
    print(f"{p.name:<10s}{str(p.shape):>8s}   {diff:.1e}")
    assert diff < 1e-12
error = nnx.check_gradients(model, X_host, y_host, "mse")
print(f"check_gradients (finite differences): relative error {error:.1e}")
assert error < 1e-6

# Train from the same start twice: plain gradient descent by hand, and model.fit with SGD.
lr, epochs = 2.0, 100 if args.quick else 1000
weights, hand_losses = list(start.values()), []
for _ in range(epochs):
    loss, grads = loss_and_gradients(*weights)
    hand_losses.append(be.to_float(loss))
    weights = [w - lr * g for w, g in zip(weights, grads.values(), strict=True)]
history = model.fit(X_host, y_host, loss="mse", optimizer=nnx.optim.SGD(model.parameters(), lr=lr),
                    epochs=epochs, batch_size=None, shuffle=False)
gap = np.max(np.abs(np.array(hand_losses) - np.array(history["loss"])))
print(f"{epochs} epochs of gradient descent: final loss by hand {hand_losses[-1]:.6f}, "
      f"model.fit {history['loss'][-1]:.6f}, largest gap {gap:.1e}")
assert gap < 1e-9

fig, ax = plt.subplots(figsize=(5.5, 3.4))
ax.plot(hand_losses, lw=4, alpha=0.4, label="backprop by hand")
ax.plot(history["loss"], "--", color="k", label="model.fit (SGD)")
ax.set(xlabel="epoch", ylabel="MSE", title="Same start, same gradients, same curve")
ax.legend()
fig.tight_layout()
save_figure(fig, args, "05_backprop.png")
