"""Seeded fuzzing of the recorded passes (`nnx.training.recorded`): random small models, losses, optimizers and fit
arguments, each fit run with the recorded passes and again with the backend's `tape` switched off (the plain
passes). Weights, buffers and history must match bit for bit, and the recording must actually have been replayed.

Each seed draws one configuration (`_draw`); its description is in the assertion message, so a failing seed says
what it fitted.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from test_recorded import Counts, _bits

import nnx
from nnx.training import recorded
from nnx.training.step import NonFiniteStep

OPTIMIZERS = {
    "sgd": lambda r: (nnx.optim.SGD, dict(lr=0.05)),
    "sgd momentum": lambda r: (nnx.optim.SGD, dict(lr=0.05, momentum=0.9)),
    "sgd nesterov": lambda r: (nnx.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "momentum": lambda r: (nnx.optim.Momentum, dict(lr=0.05)),
    "adam": lambda r: (nnx.optim.Adam, dict(lr=0.01, amsgrad=bool(r.integers(2)))),
    "adamw": lambda r: (nnx.optim.AdamW, dict(lr=0.01)),
    "rmsprop": lambda r: (nnx.optim.RMSprop, dict(lr=0.01, momentum=float(r.choice([0.0, 0.5])),
                                                  centered=bool(r.integers(2)))),
    "adagrad": lambda r: (nnx.optim.Adagrad, dict(lr=0.05)),
    "lion": lambda r: (nnx.optim.Lion, dict(lr=0.001, weight_decay=0.01)),
}
HEADS = ["mse", "mae", "bce_with_logits", "bce", "cross_entropy indices", "cross_entropy one-hot", "ce logits"]


def _layers(model, kind):
    return [layer for _, layer in model.named_layers() if type(layer) is kind]


def _set(layers, name, value):
    for layer in layers:
        setattr(layer, name, value)


# what may change between two fits of a model (each a setting the replay must follow)
MUTATIONS = {
    "leaky slope": lambda m: _set(_layers(m, nnx.LeakyReLU), "alpha", 0.3),
    "batchnorm momentum": lambda m: _set(_layers(m, nnx.BatchNorm), "momentum", 0.9),
    "batchnorm eps": lambda m: _set(_layers(m, nnx.BatchNorm), "eps", 0.25),
    "layernorm eps": lambda m: _set(_layers(m, nnx.LayerNorm), "eps", 0.25),
    "dense regularizer rebound": lambda m: _set(_layers(m, nnx.Dense), "regularizer", nnx.regularizers.L1(0.05)),
    "dense regularizer strength": lambda m: [_set([d.regularizer], "l", 0.2) for d in _layers(m, nnx.Dense)
                                             if isinstance(d.regularizer, (nnx.regularizers.L1, nnx.regularizers.L2))],
    "model regularizer": lambda m: setattr(m, "regularizer", nnx.regularizers.ElasticNet(0.02, 0.03)),
    "model regularizer strength": lambda m: m.regularizer is not None and hasattr(m.regularizer, "l")
    and setattr(m.regularizer, "l", 0.3),
}


def _regularizer(r):
    kind = int(r.integers(5))
    return [None, None, nnx.regularizers.L1(0.01), nnx.regularizers.L2(0.01),
            nnx.regularizers.ElasticNet(0.01, 0.02)][kind]


def _body(r, width, depth):
    """Layers from `width` features to `width` features (the layer kinds drawn at random)."""
    layers = []
    for _ in range(depth):
        kind = int(r.integers(10))
        if kind <= 2:
            out = int(r.integers(2, 9))
            layers.append(nnx.Dense(width, out, regularizer=_regularizer(r)))
            width = out
        elif kind == 3:
            layers.append(nnx.LayerNorm(width))
        elif kind == 4:
            layers.append(nnx.BatchNorm(width, momentum=float(r.choice([0.1, 0.5]))))
        elif kind == 5:
            layers.append(nnx.Residual(nnx.Dense(width, width, regularizer=_regularizer(r)), nnx.Tanh()))
        elif kind == 6 and depth > 1:
            inner, width = _body(r, width, 2)
            layers.append(nnx.Sequential(*inner))
        elif kind == 7:
            layers.append(nnx.Identity())
        else:
            activations = [nnx.ReLU(), nnx.LeakyReLU(0.1), nnx.Tanh(), nnx.Sigmoid(), nnx.Softplus()]
            layers.append(activations[int(r.integers(5))])
    return layers, width


def _draw(seed):
    """One random configuration: (description, build(backend), fits [(X, y, fit arguments)], head)."""
    r = np.random.default_rng(seed)
    dtype, features, head, outputs, flat_input, layers = _architecture(r)
    model_regularizer = _regularizer(r) if r.integers(3) == 0 else None
    configs = [type(layer).__name__ for layer in layers]
    layer_seed = int(r.integers(1000))

    def build(backend):
        # the same layers anew for each fit (a fresh draw from the same seed)
        fresh = _architecture(np.random.default_rng(seed))[-1]
        return nnx.Sequential(*fresh, backend=backend, dtype=dtype, seed=layer_seed,
                              regularizer=copy.deepcopy(model_regularizer))

    opt_name = str(r.choice(sorted(OPTIMIZERS)))
    opt_class, opt_args = OPTIMIZERS[opt_name](r)

    def loss_spec():
        """The loss as a name, or as a (class, arguments) pair each run makes anew (a setting changed between
        fits must not carry over into the other run)."""
        reduction = str(r.choice(nnx.losses.REDUCTIONS))
        if head == "ce logits":
            return nnx.losses.CrossEntropy, dict(from_logits=True, reduction=reduction)
        if head == "bce_with_logits" and r.integers(2):
            return nnx.losses.BinaryCrossEntropy, dict(from_logits=True, reduction=reduction)
        return {"cross_entropy indices": "cross_entropy", "cross_entropy one-hot": "cross_entropy"}.get(head, head)

    def data(n):
        shape = (n, features) if not flat_input else (n, 1, features) if features % 2 else (n, 2, features // 2)
        X = r.standard_normal(shape).astype(dtype)
        layout = int(r.integers(5))
        if layout == 0:  # column-major rows
            X = np.asfortranarray(X)
        elif layout == 1:  # every other row of a larger array
            X = np.repeat(X, 2, axis=0)[::2]
        elif layout == 2 and X.ndim == 2:  # some columns of a wider array
            X = np.concatenate([X, X], axis=1)[:, :features]
        if head in ("mse", "mae"):
            y = r.standard_normal((n, outputs)).astype(dtype)
            if outputs == 1 and r.integers(3) == 0:
                y = y[:, 0]  # one value per row
        elif head in ("bce", "bce_with_logits"):
            y = (r.random((n, 1)) < 0.5).astype(dtype)
        else:
            y = r.integers(0, outputs, n)
            if head == "cross_entropy one-hot":
                y = np.eye(outputs, dtype=dtype)[y]
        return X, y

    def fit_args(n, first):
        batch_size = int(r.choice([4, 7, 8, 16, n]))
        while n % batch_size == 1:  # a last batch of one row: BatchNorm refuses it in training
            batch_size += 1
        args = dict(epochs=int(r.integers(2, 4)), batch_size=batch_size, shuffle=bool(r.integers(2)))
        if first or r.integers(4) == 0:
            args["loss"] = loss_spec()
        if not first and r.integers(2):
            args["mutate"] = str(r.choice(sorted(MUTATIONS)))
        if r.integers(3) == 0:
            args["sample_weight"] = r.random(n).astype(dtype) + 0.5
        if head not in ("mse", "mae") and r.integers(3) == 0:
            classes = 2 if head.startswith("bce") else outputs
            args["class_weight"] = {c: float(0.5 + c) for c in range(classes)}
        if r.integers(4) == 0:
            args["clip_norm"] = 0.5
        if r.integers(4) == 0:
            args["accumulate"] = 2
        if r.integers(4) == 0:
            args["metrics"] = ["mse"] if head in ("mse", "mae") else ["accuracy"]
        return args

    n = int(r.integers(20, 65))
    fits = [(*data(n), fit_args(n, True))]
    while len(fits) < 3 and r.integers(3) == 0:  # a later fit of the same model, on other data
        n2 = int(r.choice([n, int(r.integers(12, 65))]))
        fits.append((*data(n2), fit_args(n2, False)))
    shown = [(X.shape, X.strides, {k: v for k, v in a.items() if k != "sample_weight"}, "sample_weight" in a)
             for X, _, a in fits]
    description = (f"seed {seed}: {dtype}, layers {configs}, model regularizer {model_regularizer!r}, "
                   f"optimizer {opt_name} {opt_args}, fits (shape, strides, arguments, sample_weight given) {shown}")
    return description, build, (opt_class, opt_args), fits


def _architecture(r):
    """(dtype, features, head, outputs, flattened input, layers): the first draws of a configuration, so that the
    same generator state gives the same layers anew (each fit needs its own)."""
    dtype = str(r.choice(["float32", "float64"]))
    features = int(r.integers(2, 7))
    head = str(r.choice(HEADS))
    outputs = {"mse": int(r.integers(1, 4)), "mae": int(r.integers(1, 3))}.get(head, 1)
    if head.startswith(("cross_entropy", "ce")):
        outputs = int(r.integers(2, 5))
    flat_input = bool(r.integers(4) == 0)  # (n, a, b) rows, flattened by the first layer
    depth = int(r.integers(1, 5))
    body, width = _body(r, features, depth)
    layers = ([nnx.Flatten()] if flat_input else []) + body + [nnx.Dense(width, outputs, regularizer=_regularizer(r))]
    if head == "bce":
        layers.append(nnx.Sigmoid())
    elif head.startswith("cross_entropy"):
        layers.append(nnx.Softmax())
    return dtype, features, head, outputs, flat_input, layers


def _fits(monkeypatch, backend, build, optimizer, fits, plain):
    """Weights, buffers and each fit's history after the fits, with the recorded passes or the plain ones."""
    with monkeypatch.context() as m:
        counts = None
        if plain:
            m.setattr(type(backend), "tape", lambda self: None)
        else:
            counts = Counts(m)
        model = build(backend)
        opt_class, opt_args = optimizer
        opt = opt_class(model.parameters(), **opt_args)
        histories = []
        for X, y, args in fits:
            args = dict(args)
            if "mutate" in args:
                MUTATIONS[args.pop("mutate")](model)
            if type(args.get("loss")) is tuple:
                loss_class, loss_args = args["loss"]
                args["loss"] = loss_class(**loss_args)
            try:
                history = model.fit(X, y, optimizer=opt, **args)
            except NonFiniteStep as exc:  # a fit that diverged stops at the same step with the same weights
                histories.append(str(exc))
                break
            histories.append({k: [_bits(v) for v in vs] for k, vs in history.history.items()})
        weights = [_bits(p.value) for p in model.parameters()] + [_bits(b.value) for b in model.buffers()]
        return (weights, histories), counts


SEEDS = range(48)  # (about 1.5 s in all; 2500 seeds ran clean when this was written)


@pytest.fixture
def numpy_backend():
    backend = nnx.get_backend("numpy")
    assert backend.tape() is not None
    return backend


@pytest.mark.parametrize("seed", SEEDS)
def test_a_random_fit_replays_the_plain_passes_bit_for_bit(monkeypatch, numpy_backend, seed):
    description, build, optimizer, fits = _draw(seed)
    got, counts = _fits(monkeypatch, numpy_backend, build, optimizer, fits, plain=False)
    plain, _ = _fits(monkeypatch, numpy_backend, build, optimizer, fits, plain=True)
    assert got == plain, description
    assert counts.refusals == [], description
    if isinstance(got[1][-1], dict):  # (not a fit that diverged)
        assert counts.replayed >= _fewest_replays(fits), (description, counts.replayed, counts.recorded)


def _fewest_replays(fits):
    """The replays the recorded passes' policy gives these fits at least. A fit's first batch is not recorded (its
    inputs are checked first) but replays what an earlier fit recorded; any other batch replays the recording of its
    layout (its shapes: whole batches and the last, weighted or not) or is recorded, the recordings all dropped
    where `recorded.MAX_RECORDINGS` are held (stale ones too). A setting or the loss changed between fits may (where
    it changes anything) make them all stale: both are counted, and the fewer taken."""
    ways = [()]
    for index, (_, _, args) in enumerate(fits):
        changes = index > 0 and ("mutate" in args or "loss" in args)
        ways = [way + (stale,) for way in ways for stale in ((False, True) if changes else (False,))]
    fewest = None
    for way in ways:
        held, replays, generation = {}, 0, 0  # layout: the generation of settings it was recorded under
        for (X, _, args), stale in zip(fits, way, strict=True):
            generation += stale  # (stale recordings still count against `MAX_RECORDINGS`)
            n, size, weighted = len(X), args["batch_size"], "sample_weight" in args or "class_weight" in args
            sizes = [min(n, size)] * (n // size if n > size else 1) + ([n % size] if n > size and n % size else [])
            for epoch in range(args["epochs"]):
                for k, rows in enumerate(sizes):
                    if held.get((rows, weighted)) == generation:
                        replays += 1
                    elif epoch or k:
                        if len(held) >= recorded.MAX_RECORDINGS:
                            held = {}
                        held[rows, weighted] = generation
        fewest = replays if fewest is None else min(fewest, replays)
    return fewest
