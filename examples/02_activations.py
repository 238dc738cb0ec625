"""Activation functions and their derivatives: sigmoid, tanh, ReLU and leaky ReLU.

The activation is what makes a network more than one big linear map. Training
needs its derivative too, and the derivative explains a lot: sigmoid's is at
most 0.25 and vanishes for large |z|, tanh's peaks at 1, ReLU's is exactly 1
for every positive input, and leaky ReLU keeps a small slope below zero so a
unit is never completely dead.

Each derivative in `nnx.activations` is checked here against a finite
difference, on the chosen backend.

    python examples/02_activations.py [--backend jax] [--quick] [--out DIR]
"""

import numpy as np
from _common import parse_args, plt, save_figure

import nnx
from nnx import activations as act

args = parse_args(__doc__)
be = nnx.get_backend(args.backend)

# (function, derivative) pairs; leaky ReLU gets alpha=0.1 so its slope is visible in the plot
FUNCTIONS = {
    "sigmoid": (act.sigmoid, act.sigmoid_derivative),
    "tanh": (act.tanh, act.tanh_derivative),
    "relu": (act.relu, act.relu_derivative),
    "leaky_relu": (lambda z: act.leaky_relu(z, 0.1), lambda z: act.leaky_relu_derivative(z, 0.1)),
}

z_host = np.linspace(-5, 5, 401)
z = be.asarray(z_host, dtype="float64")
h = 1e-5
print(f"{'':12s}{'f(-2)':>9s}{'f(0)':>9s}{'f(2)':>9s}{'max slope':>10s}   derivative vs finite difference")
curves = {}
for name, (f, df) in FUNCTIONS.items():
    values, slopes = be.to_host(f(z)), be.to_host(df(z))
    # central difference (f(z+h) - f(z-h)) / 2h, away from ReLU's kink at 0 where it is undefined
    numeric = (be.to_host(f(z + h)) - be.to_host(f(z - h))) / (2 * h)
    smooth = np.abs(z_host) > 1e-3
    error = np.max(np.abs(numeric - slopes)[smooth])
    at = {v: values[np.argmin(np.abs(z_host - v))] for v in (-2, 0, 2)}
    print(f"{name:12s}{at[-2]:9.4f}{at[0]:9.4f}{at[2]:9.4f}{slopes.max():10.4f}   max error {error:.1e}")
    assert error < 1e-6, f"{name}: derivative disagrees with the finite difference"
    curves[name] = (values, slopes)

fig, (ax_f, ax_d) = plt.subplots(1, 2, figsize=(9, 3.4))
for name, (values, slopes) in curves.items():
    ax_f.plot(z_host, values, label=name)
    ax_d.plot(z_host, slopes, label=name)
ax_f.set(title="activation f(z)", xlabel="z", ylim=(-1.5, 3))
ax_d.set(title="derivative f'(z)", xlabel="z", ylim=(-0.1, 1.15))
for ax in (ax_f, ax_d):
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.legend(loc="upper left", fontsize=8)
fig.tight_layout()
save_figure(fig, args, "02_activations.png")
