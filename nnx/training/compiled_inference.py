"""Inference as compiled programs on a backend with a compiler (JAX): predict, evaluate, validation.

Run op by op, JAX dispatches every operation of a forward pass, a loss and each metric
on its own, and compiles each one the first time it meets a new shape: a validation
pass of a small model was dozens of compiles and dispatches. Here such a pass is one
program per model and input shape, traced from the model's own code as the training
step is (`nnx.training.compiled`): the parameter and buffer values are the program's
inputs, bound through ``p.value`` and ``b.value`` while tracing and put back after.

Nothing changes for a model the compiler cannot take: where a layer's ``forward`` is
replaced on the object (a hook that counts or raises), its code needs concrete values
(the first trace raises the adapter's ``trace_errors``), or it changes state at inference
that a program would change once or not keep -- draws from the model's random stream
(the same numbers at every call), rebinds a buffer, changes a plain Python attribute --
the pass runs op by op, as on every other backend, and gives the same numbers. So does it while
the model's settings change too often for programs to pay (`nnx.training.churn`: a setting a
callback changes every epoch compiled the validation pass every epoch), until they hold still.

A model's passes run one at a time across threads (`model_lock`): while a program traces, the
model's parameters are bound to its placeholders, which another thread's pass must not read as
the weights, nor a second trace save and put back in their place. A fit's step traces under the
same lock (`nnx.training.compiled`), and while a fit trains the model (`fit_started`), another
thread's pass that would trace runs op by op instead: the fit's steps read the parameters unlocked.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from ..backends.base import TraceRefused
from ..protocols import Model
from .carried import carried_state, rebound_slots, slots_now
from .churn import Churn, SettingsChurn
from .per_model import PerModel
from .shared_programs import SharedProgram, code_of, config_key, definition, known, layer_settings
from .trace_state import (
    HeldArrays,
    changed_state,
    described_with_attributes,
    layer_attributes,
    object_attributes,
    objects_state,
    put_back_arrays,
    python_state,
    restore_objects,
    restore_state,
    slotted_reason,
)

__all__ = ["fit_ended", "fit_started", "inference_program", "model_lock"]

# per model: (the model's signature, {what the program computes: the compiled program, or None once it failed})
_PROGRAMS = PerModel()
_LOCKS = PerModel()  # per model: the lock its compiled passes and traces run under
_MAKING_LOCK = threading.Lock()
_FITTING = PerModel()  # per model: the thread whose fit trains it
_CHURN = PerModel()  # per model: its `_PassChurn`


def model_lock(model: Model) -> threading.RLock:
    """The lock `model`'s compiled passes and its fit's traces run under (re-entrant: a callback's predict inside
    a pass)."""
    with _MAKING_LOCK:  # two threads must not each make one for the same model
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


class _FitRunning(Exception):
    """A pass would trace while another thread's fit trains the model: it runs op by op instead."""


def fit_started(model: Model) -> Any:
    """Mark `model` as trained by this thread's fit, once per fit (never per step); returns what `fit_ended` puts
    back (a fit run by a callback inside another). The fit's steps read the parameters without the lock, so
    another thread's pass must not bind them to a trace's placeholders meanwhile: one tracing already waits out
    here, a later one runs op by op."""
    if not model.backend.can_compile:
        return None
    previous = _FITTING.get(model)
    _FITTING[model] = threading.get_ident()
    with model_lock(model):  # a trace in flight puts the weights back before the first step reads them
        pass
    return previous


def fit_ended(model: Model, previous: Any) -> None:
    """Undo `fit_started` (`previous`: what it returned)."""
    if model.backend.can_compile:
        _FITTING[model] = previous


def _model_signature(model: Model) -> tuple:
    """What a program of `model` closes over besides its inputs: its layers, their settings, its parameters, its
    regularizer's attributes (a strength a callback changes is not in its config), and the code of its layers' classes
    (a class's ``forward`` patched since runs other operations)."""
    return (tuple(map(id, model.layers)), tuple(config_key(layer) for layer in model.layers), layer_settings(model),
            tuple(map(id, model.parameters())), tuple(map(id, model.buffers())),
            described_with_attributes(model.regularizer), code_of(model))


def _compilable(model: Model) -> bool:
    be = model.backend
    if not (be.fastpath_enabled and be.can_compile):
        return False
    # a forward replaced on one object (a test's or a user's hook) must run each call, not once while tracing
    return not any("forward" in vars(layer) for _, layer in model.named_layers()) and slotted_reason(model) is None


def inference_program(model: Model, key: tuple, fn: Callable[..., Any], objects: tuple = ()) -> Callable[..., Any]:
    """``fn(model, *arrays)``, which computes from `model` in inference mode, as a function of the arrays:
    one compiled program where the backend compiles, else `fn` op by op.

    `key` names what `fn` computes, its settings included: one program is kept per model and key, and
    compiled once per input shape. `fn` must not hold the model itself (it is kept while the model lives).
    A program whose trace fails is not tried again. `objects`: others of the user's whose code `fn` runs (a
    metric object), watched as the layers are for state they carry from call to call.
    """
    if not _compilable(model):
        return lambda *arrays: fn(model, *arrays)
    signature = _model_signature(model)
    churn = _CHURN.get(model)
    if churn is None:
        churn = _CHURN[model] = _PassChurn()
    if churn.resting_now(model, signature, key):
        def op_by_op(*arrays: Any) -> Any:
            churn.plain_batches += 1
            return fn(model, *arrays)
        return op_by_op
    held = _PROGRAMS.get(model)
    if held is None or held[0] != signature:
        held = _PROGRAMS[model] = (signature, {})
    programs = held[1]
    if key not in programs:
        programs[key] = _Program(model, key, fn, objects)
    program = programs[key]
    if program is None:
        return lambda *arrays: fn(model, *arrays)

    failed = False
    lock = model_lock(model)

    def run(*arrays: Any) -> Any:
        # a pass calls `run` once per batch: after its first trace failed, the later batches run op by op too
        # (tracing again, the program would count a second trace and take the refusal for the model's error)
        nonlocal failed
        with lock:
            if failed:
                return fn(model, *arrays)
            try:
                out = program(*arrays)
                churn.steps_run += 1
                return out
            except _FitRunning:  # this call alone: the next traces once the fit is over
                return fn(model, *arrays)
            except model.backend.trace_errors:
                if program.traces > 1:
                    raise  # it traced before: the error is the model's own
                programs[key] = None
                failed = True
                return fn(model, *arrays)

    return run


class _PassChurn(Churn):
    """A model's inference programs made again for changed settings, each batch of a pass a step, and the batches
    its passes ran op by op (what `Churn.wake` counts)."""

    __slots__ = ("plain_batches",)

    def __init__(self) -> None:
        super().__init__()
        self.plain_batches = 0

    def resting_now(self, model: Model, signature: tuple, key: tuple) -> bool:
        """Whether this pass (`key`) runs op by op because the settings change too often for programs to pay."""
        if self.resting is None:
            try:
                self.program_for(signature, True, lambda: False, lambda: known((definition(model), key)))
            except SettingsChurn:
                self.rest(signature, self.plain_batches)
                return True
            return False
        return not self.wake(signature, self.plain_batches)


class _Program:
    """`fn` compiled with the model's parameter and buffer values as inputs."""

    def __init__(self, model: Model, key: tuple, fn: Callable[..., Any], objects: tuple = ()) -> None:
        self._model = weakref.ref(model)  # kept per model: a strong reference would keep it alive
        self.params, self.buffers = model.parameters(), model.buffers()
        self.key, self.fn, self.objects = key, fn, objects
        self.traces = 0
        self._held = HeldArrays(by_contents=True)
        self._jit = SharedProgram(model.backend, self._pure, self.definition, self)

    def definition(self) -> tuple | None:
        """What this program computes besides its inputs (None: it is this model's alone)."""
        model = self._model()
        held = None if model is None else definition(model)
        return None if held is None else (held, self.key)

    def trace_facts(self) -> tuple[dict[str, int], dict[str, Any]]:
        return {"traces": self.traces}, {"unset": self._held.unset()}

    def adopt_facts(self, counts: dict[str, int], values: dict[str, Any]) -> None:
        self.traces += counts.get("traces", 0)
        model = self._model()
        if model is not None:  # (it is: the program is taken for one of its calls)
            self._held.adopt(values.get("unset", ()), [layer for _, layer in model.named_layers()])

    def __call__(self, *arrays: Any) -> Any:
        if self._held.moved():  # a layer holds another array than the trace read: trace again
            self._jit = SharedProgram(self._jit.backend, self._pure, self.definition, self)
        return self._jit(tuple(p.value for p in self.params), tuple(b.value for b in self.buffers), *arrays)

    def _pure(self, values: tuple, bufs: tuple, *arrays: Any) -> Any:
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this inference program no longer exists")
        fitting = _FITTING.get(model)
        if fitting is not None and fitting != threading.get_ident():
            raise _FitRunning  # binding the parameters to placeholders would hand them to the fit's next step
        self.traces += 1
        rng = model.dropout_rng
        saved = ([p.value for p in self.params], [b.value for b in self.buffers], rng.counter)
        draws = rng.draws
        state = python_state(model)
        others = [(f"the {type(obj).__name__} object", obj) for obj in self.objects]
        others_state = objects_state(others)
        attributes = layer_attributes(model) + object_attributes(list(self.objects))
        layers = [layer for _, layer in model.named_layers()] + list(self.objects)
        slots = slots_now(layers)
        try:
            for p, v in zip(self.params, values, strict=True):
                p.value = v
            for b, v in zip(self.buffers, bufs, strict=True):
                b.value = v
            out = self.fn(model, *arrays)
            rebound = rebound_slots(layers, slots, model.backend.is_traced)
            # a user's layer that reads and rebinds an array it keeps at inference (a count, a running value): the
            # program would start every call from the traced one, where the plain pass carries it
            carried = rebound and carried_state(self._jit.backend, rebound, lambda: (self.fn(model, *arrays),), layers)
            if carried:
                raise TraceRefused(f"{carried[0]} at inference: state a program would not carry")
            self._held.note(attributes)
            if rng.draws != draws:
                raise TraceRefused("the pass draws from the model's random stream, which a program would draw once")
            rebound = [b.name for b, v in zip(self.buffers, bufs, strict=True) if b.value is not v]
            if rebound:
                raise TraceRefused(f"the pass rebinds the buffers {rebound}, which a program would not keep")
            changed = changed_state(state, python_state(model)) or changed_state(others_state, objects_state(others))
            if changed is not None:
                raise TraceRefused(f"the pass changes Python state a program would change once: {changed}")
            return out
        except BaseException as error:
            restore_state(model, state)  # the op-by-op pass that runs instead starts from where it was
            if isinstance(error, model.backend.trace_errors):  # (a metric's own error leaves what it did, as plainly)
                restore_objects(others, others_state)
            raise
        finally:
            rng.counter = saved[2]
            for p, v in zip(self.params, saved[0], strict=True):
                p.value = v
            for b, v in zip(self.buffers, saved[1], strict=True):
                b.value = v
            put_back_arrays(attributes)  # what a layer kept of the traced pass must not escape it
