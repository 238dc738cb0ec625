"""Models that hold models: Sequential inside Sequential inside a user's block, and what walks them.

Reviewed the way a PyTorch or Keras user nests and freezes: changing a container after it is built,
training and inference mode reaching every nested layer, summaries, frozen parts, checkpoints into a
model of another nesting, and the tools (save/load, ONNX, gradient check) on the nested tree.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import nnx


def _data(n=16, features=3, outputs=1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features))
    return X, np.tanh(X @ rng.standard_normal((features, outputs)))


def _host(model, value):
    return np.array(model.backend.to_host(value))


def test_reassigning_a_containers_layers_is_refused_before_it_writes_an_unloadable_file(tmp_path):
    """Found in review: ``model.layers = (model.layers[0], model.layers[2])`` (dropping a layer torch-style) ran
    the new stack in predict and fit, while the dropped layer stayed built and its arrays stayed in parameters()
    and the checkpoint: `save` wrote a file that `nnx.load` then refused, and `to()` failed. Like the list-style
    edits, the assignment (and ``del``) now raises at once, inside nested containers too."""
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.ReLU(), nnx.Sequential(nnx.Dense(4, 4), nnx.Tanh()),
                           nnx.Dense(4, 1), seed=0)
    for container in (model, model.layers[2]):
        kept = container.layers
        with pytest.raises(TypeError, match=r"layers are fixed when it is built"):
            container.layers = (kept[0], kept[-1])
        with pytest.raises(TypeError, match=r"layers are fixed when it is built"):
            del container.layers
        assert container.layers is kept
    X, y = _data()
    model.fit(X, y, loss="mse", epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = nnx.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(_host(loaded, loaded.predict(X)), _host(model, model.predict(X)))


def test_a_model_given_pretrained_values_by_hand_is_not_nested_and_silently_reinitialised(backend):
    """Found in review: values set with ``enc.layers[0].weight.value = W`` (a pretrained encoder, set by hand as
    Keras's set_weights or torch's ``weight.copy_`` would) were dropped without a word when `enc` was then placed
    in a model, which rebuilds it with new weights; load_state_dict and nnx.load were refused there already. A
    model left as built, or a deep copy of one (torch's clones of a block), still nests."""
    X, _ = _data(features=4)
    enc = nnx.Sequential(nnx.Dense(4, 2), nnx.BatchNorm(2), backend=backend, seed=0)
    enc.predict(X)  # inference leaves every array as built
    clones = [copy.deepcopy(enc) for _ in range(2)]
    enc.layers[0].weight.value = enc.backend.asarray(np.full((4, 2), 0.5), dtype=enc.dtype)
    with pytest.raises(ValueError, match=r"'0\.weight' was set after it was built cannot be placed inside"):
        nnx.Sequential(enc, nnx.Dense(2, 1), backend=backend, seed=0)
    with pytest.raises(ValueError, match=r"'0\.weight' was set after it was built"):
        nnx.Sequential(copy.deepcopy(enc), backend=backend, seed=0)
    model = nnx.Sequential(clones[0], nnx.Dense(2, 4), clones[1], backend=backend, seed=1)
    assert [p.name for p in model.parameters()][:2] == ["0.0.weight", "0.0.bias"]
    assert model.predict(X).shape == (16, 2)
    # a BatchNorm that ran a training forward by hand has new running statistics: they would be lost too
    stats = nnx.Sequential(nnx.BatchNorm(4), backend=backend, seed=0)
    stats.forward(X, training=True)
    with pytest.raises(ValueError, match=r"'0\.running_mean' was set after it was built"):
        nnx.Sequential(stats, backend=backend)


def test_a_frozen_nested_layers_regularizer_adds_a_constant_and_moves_nothing():
    """As docs/training.md says: a layer frozen by leaving it out of the optimizer keeps its weights, while its
    regularizer's penalty stays in the reported loss (Keras 3 counts trainable weights only); its BatchNorm
    statistics follow the data in training mode, as torch's do with only requires_grad off."""
    X, y = _data()
    model = nnx.Sequential(nnx.Sequential(nnx.Dense(3, 4, regularizer="l2"), nnx.BatchNorm(4)), nnx.Dense(4, 1),
                           dtype="float64", seed=0)
    frozen = model.layers[0]
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    opt = nnx.optim.SGD([p for p in model.parameters() if all(p is not q for q in frozen.parameters())], lr=0.05)
    history = model.fit(X, y, loss="mse", optimizer=opt, epochs=1, batch_size=16, verbose=0)
    after = model.state_dict()
    for name in ("0.0.weight", "0.0.bias", "0.1.weight", "0.1.bias"):
        np.testing.assert_array_equal(after[name], before[name])
    assert not np.array_equal(after["0.1.running_mean"], before["0.1.running_mean"])
    assert not np.array_equal(after["1.weight"], before["1.weight"])
    penalty = float(nnx.regularizers.get_regularizer("l2").penalty(before["0.0.weight"]))
    # the one batch's reported loss, before its step: the data loss of the training forward plus the frozen penalty
    model.load_state_dict(before)
    data = float(nnx.losses.MSE()(model.prepare_targets(y, nnx.losses.MSE(), 16), model.forward(X, training=True)))
    assert penalty > 1e-6 * data  # far above the tolerance below
    assert np.isclose(history.history["loss"][0], data + penalty, rtol=1e-9)


def test_an_optimizer_state_for_other_parameters_of_the_same_shapes_is_refused_by_name():
    """Found in review: `Optimizer.load_state_dict` kept the state by position and checked only the number of
    parameters (and each state's shape), though the snapshot names them: Adam's moments of a model frozen otherwise,
    or nested otherwise, loaded into other parameters of the same shapes without a word. The names must now agree;
    a nested model's state loads into its standalone copy's optimizer (names one path prefix apart)."""
    X, y = _data(features=4, outputs=4)

    def trained(model, params):
        opt = nnx.optim.Adam(params, lr=0.01)
        model.fit(X, y, loss="mse", optimizer=opt, epochs=1, batch_size=16, verbose=0)
        return opt

    model = nnx.Sequential(nnx.Dense(4, 4), nnx.Tanh(), nnx.Dense(4, 4), nnx.Dense(4, 4), seed=0)
    first_two = trained(model, model.parameters()[:4]).state_dict()  # layer 2 and 3 frozen
    other = nnx.Sequential(nnx.Dense(4, 4), nnx.Tanh(), nnx.Dense(4, 4), nnx.Dense(4, 4), seed=0)
    opt = nnx.optim.Adam(other.parameters()[:2] + other.parameters()[4:], lr=0.01)  # layer 2 frozen instead
    with pytest.raises(ValueError, match=r"its parameter 2 is '2\.weight', this optimizer's is '3\.weight'"):
        opt.load_state_dict(first_two)
    assert opt.step_count == 0 and not opt.state
    opt = nnx.optim.Adam(other.parameters()[:4], lr=0.01)
    opt.load_state_dict(first_two)  # the same parameters: loads
    assert opt.step_count == 1
    # nested otherwise: "0.0.weight" could be "0.weight" one level down, but "1.0.weight" is not "1.weight"
    nested = nnx.Sequential(nnx.Sequential(nnx.Dense(4, 4)), nnx.Sequential(nnx.Dense(4, 4), nnx.Dense(4, 4)),
                            seed=0)
    state = trained(nested, nested.parameters()).state_dict()
    flat = nnx.Sequential(nnx.Dense(4, 4), nnx.Dense(4, 4), nnx.Dense(4, 4), seed=0)
    with pytest.raises(ValueError, match=r"its parameter 2 is '1\.0\.weight', this optimizer's is '1\.weight'"):
        nnx.optim.Adam(flat.parameters(), lr=0.01).load_state_dict(state)
    # a nested model's own optimizer state into a standalone copy of that model: one prefix apart, loads
    inner = nested.layers[1]
    inner_state = trained(inner, inner.parameters()).state_dict()
    assert inner_state["param_names"][0] == "1.0.weight"
    alone = nnx.Sequential(nnx.Dense(4, 4), nnx.Dense(4, 4), seed=0)
    nnx.optim.Adam(alone.parameters(), lr=0.01).load_state_dict(inner_state)


def test_load_state_dict_strict_false_loads_a_pretrained_body_under_a_new_head_as_torch(backend):
    """torch's ``load_state_dict(pretrained, strict=False)`` was a TypeError: a body's weights under a new head
    had to be copied name by name. The names that match load (shapes and values still checked), the others keep
    their values, and torch's (missing_keys, unexpected_keys) come back."""
    X, y = _data(outputs=2)
    pretrained = nnx.Sequential(nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 1), dtype="float64", seed=1)
    pretrained.fit(X, y[:, :1], loss="mse", epochs=2, batch_size=8)
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 2), backend=backend, dtype="float64", seed=2)
    head = {k: _host(model, v) for k, v in model.state_dict().items() if k.startswith("2.")}
    state = {k: v for k, v in pretrained.state_dict().items() if k.startswith("0.")}
    state["extra.weight"] = np.ones(3)
    with pytest.raises(ValueError, match=r"missing \['2.bias', '2.weight'\], unexpected \['extra.weight'\].*strict"):
        model.load_state_dict(state)
    result = model.load_state_dict(state, strict=False)
    assert result == (["2.bias", "2.weight"], ["extra.weight"]) and result.missing_keys == ["2.bias", "2.weight"]
    got = {k: _host(model, v) for k, v in model.state_dict().items()}
    for k in ("0.weight", "0.bias"):
        np.testing.assert_array_equal(got[k], _host(pretrained, pretrained.state_dict()[k]))
    for k, v in head.items():
        np.testing.assert_array_equal(got[k], v)
    with pytest.raises(ValueError, match=r"state_dict\['0.weight'\] has shape \(4, 3\)"):
        model.load_state_dict({"0.weight": np.ones((4, 3))}, strict=False)  # a shape is checked all the same
    assert model.load_state_dict(pretrained.state_dict() | head) == ([], [])
    model.fit(X, y, loss="mse", epochs=1, batch_size=8)  # the loaded model trains


def test_a_nested_models_weights_carry_both_its_penalty_and_the_outer_ones():
    """Found by mutation testing: an inner model with a regularizer of its own inside one with another penalizes
    its weights by both; a penalty() that kept the inner one only (0.246 where 0.431 is right) went unseen, and
    the loss evaluate reports then disagreed with the gradient backward applies."""
    X, y = _data(outputs=3)
    inner = nnx.Sequential(nnx.Dense(3, 3), regularizer=nnx.regularizers.L2(0.1))
    model = nnx.Sequential(inner, nnx.Tanh(), nnx.Dense(3, 3), regularizer=nnx.regularizers.L2(0.1),
                           dtype="float64", seed=0)
    inner_w, outer_w = (np.asarray(model.layers[i].layers[0].weight.value if i == 0 else model.layers[i].weight.value)
                        for i in (0, 2))
    expected = 2 * 0.5 * 0.1 * float(np.sum(inner_w ** 2)) + 0.5 * 0.1 * float(np.sum(outer_w ** 2))
    assert float(model.penalty()) == pytest.approx(expected, rel=1e-12)
    mse = float(nnx.losses.get_loss("mse")(y, model.predict(X)))
    assert model.evaluate(X, y, loss="mse")["loss"] == pytest.approx(mse + expected, rel=1e-12)
    assert nnx.check_gradients(model, X, y, "mse") < 1e-6

