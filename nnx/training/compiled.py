"""The whole training step as one compiled program, on a backend with a compiler (JAX).

Eager dispatch costs far more than the arithmetic of a small network's step. On a
backend whose adapter offers ``jit``, the step -- the layers' own ``forward`` and
``backward``, the loss's ``value_and_grad``, the regularizers, traceable gradient
transforms, the finite check and the optimizer's own pure rule -- is traced once per
input shape into one function

    (parameter values, optimizer state, buffers, lr, counters, batch)
        -> (new values, new state, new buffers, gradients, loss, outputs, counters)

and compiled. Nothing is declared by class: any layer written with ``xp`` traces,
a user's included. Tracing binds traced values through public attributes only
(``p.value``, ``b.value``, the dropout stream's ``counter``) and restores them
afterwards; the optimizer is called through its rule, ``update(xp, value, grad,
state, step, lr)``, with the learning rate and the update count as traced inputs,
so a schedule never recompiles; so is the dropout stream's seed, so models of other
seeds share a program. Hyper-parameters, layer settings, the loss, the model's
regularizer, the gradient transforms and the arrays a layer holds besides its
parameters and buffers are constants of the program; when one changes (a callback
may change any of them between steps), the step is traced again. Where they change
faster than the programs pay for their compiles (`nnx.training.churn`: a callback
annealing a layer's setting every batch, or every epoch of a few batches), the step
runs the plain stages until they hold still again.

What cannot be traced runs the plain stages instead: a method replaced on one
object (a test's or a user's hook, which may count calls or raise), a gradient
transform that keeps host state (accumulation, callbacks, averaging across
processes), a dropout stream whose draws are not a function of its counter, a
layer whose code needs concrete values (the first trace raises the adapter's
``trace_errors``; the step then runs plain for good), and a layer whose step
changes a plain Python attribute (a counter, a flag) or draws from a host random
generator it keeps, and a user's layer that reads an array it keeps and then rebinds it
(a running value outside a buffer, `nnx.training.carried`): a program would run that
code once, when traced, so the first trace raises `TraceRefused` instead (and puts those
attributes back as they were).

The finite check is the deferred one of `nnx.training.TrainStep`, inside the
program: a step applies only while every step of the epoch so far was finite,
and the host reads the verdict once per epoch.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from ..backends.base import TraceRefused
from ..optim import check_rule_result
from .carried import carried_state, rebound_slots, slots_now
from .churn import churn_of
from .compiled_inference import model_lock
from .outside_settings import OutsideWatch, outside_key
from .per_model import PerModel
from .rule_trace import RuleTrace, hyper_constants
from .shared_programs import (
    SettingsWatch,
    SharedProgram,
    code_of,
    config_key,
    definition,
    known,
    layer_settings,
    settings_key,
)
from .trace_state import (
    AttributeWatch,
    HeldArrays,
    changed_state,
    layer_attributes,
    object_attributes,
    objects_state,
    put_back_arrays,
    python_state,
    restore_objects,
    restore_state,
)
from .traceable import traceable

__all__ = ["CARRY_COUNTER", "CARRY_FIRST_BAD", "CARRY_INDEX", "CARRY_OK", "CARRY_SEED", "CARRY_T", "CompiledStep",
           "compile_step", "compiled_step_of", "hyper_constants", "kept_buffers"]

# The step's small integers travel as one int64 vector, the carry (each 0-d input or output of a program costs
# about as much as a small matmul on a CPU): the update count t, the dropout counter, the step's index in the
# epoch, whether every step of the epoch so far was finite (1/0), the first that was not (-1), and the dropout
# stream's seed (an input, not a constant: models of one definition and other seeds share their programs). These
# are their positions.
CARRY_T, CARRY_COUNTER, CARRY_INDEX, CARRY_OK, CARRY_FIRST_BAD, CARRY_SEED = range(6)

def kept_buffers(xp: Any, ok: Any, new: tuple, old: tuple) -> tuple:
    """The buffers a step's forward left (`new`) where `ok`, else those it took (`old`), each in the dtype the
    forward left it: a layer that rebinds a buffer to integers keeps integers, as in the plain loop (a bare
    ``where`` would promote them to the float the buffer was built with)."""
    return tuple(xp.where(ok, n, o if o.dtype == n.dtype else xp.astype(o, n.dtype))
                 for n, o in zip(new, old, strict=True))


def signature(model: Any, loss: Any, optimizer: Any, transforms: list[Any], check_finite: bool) -> tuple:
    """What the program is a function of besides its inputs; a different signature needs another program."""
    return (tuple(map(id, model.layers)), tuple(config_key(layer) for layer in model.layers), layer_settings(model),
            tuple(map(id, model.parameters())), tuple(map(id, model.buffers())), config_key(model.regularizer),
            type(loss), config_key(loss), type(optimizer), hyper_constants(optimizer),
            tuple((type(t), config_key(t)) for t in transforms), bool(check_finite), code_of(model, loss, optimizer),
            outside_key((loss, optimizer, *transforms)))


# one compiled step per model, kept while the model lives, so a later fit reuses its programs
_STEPS = PerModel()


def compiled_step_of(model: Any) -> CompiledStep | None:
    """The compiled step kept for `model` (its programs and trace count), or None."""
    return _STEPS.get(model)


def compile_step(model: Any, loss: Any, optimizer: Any, transforms: list[Any],
                 check_finite: bool) -> CompiledStep | None:
    """The compiled step for these objects, or None where the backend has no compiler or they cannot trace."""
    be = model.backend
    if not be.fastpath_enabled or not be.can_compile or not traceable(model, loss, optimizer, transforms):
        return None
    sig = signature(model, loss, optimizer, transforms, check_finite)
    step = _STEPS.get(model)
    if step is None or step.signature != sig or step.broken:
        step = CompiledStep(model, loss, optimizer, transforms, check_finite, sig)
        _STEPS[model] = step
    else:
        step.rebind(loss, optimizer, transforms)
    return step


class CompiledStep:
    """One training step of a model as a compiled program; see the module docstring.

    Calling it runs forward, loss, backward, the transforms, the finite check and the
    update for one batch and writes the results into the parameters, buffers, gradients
    and optimizer state. It keeps the epoch's deferred verdict (`end_epoch`, `reset`).

    Attributes:
        traces: how many times the step was traced (compiled) so far.
        broken: set when the model's code could not be traced; the caller runs the plain stages.
    """

    def __init__(self, model: Any, loss: Any, optimizer: Any, transforms: list[Any], check_finite: bool,
                 sig: tuple) -> None:
        self.signature = sig
        self._model = weakref.ref(model)  # kept per model: a strong reference would keep it alive
        self.backend = model.backend
        self.xp = model.xp
        self.params = model.parameters()
        self.buffers = model.buffers()
        self.rng = model.dropout_rng
        self.check_finite = bool(check_finite)
        self.traces = 0
        self.broken = False
        self._draws: int | None = None
        self._settings = SettingsWatch()
        self._held = HeldArrays(by_contents=True)
        self._generation = 0  # how often the layers rebound an array the programs held (`HeldArrays`)
        self._head_watch, self._penalty_watch = AttributeWatch(), AttributeWatch()
        self._rule_outside = OutsideWatch()  # what the optimizer's class reads from its class or module
        self._hyper_values: tuple | None = None
        self._churn = churn_of(model)  # programs made again for changed constants (kept per model)
        self._jit = SharedProgram(self.backend, self.pure, self.definition, self)
        self.rebind(loss, optimizer, transforms)
        self.reset()

    @property
    def model(self) -> Any:
        """The model this step trains (held weakly: the step is kept per model)."""
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this compiled step no longer exists")
        return model

    @property
    def draws_per_step(self) -> int:
        """Dropout masks one step draws (known once the step has been traced; 0 before)."""
        return self._draws or 0

    def rebind(self, loss: Any, optimizer: Any, transforms: list[Any]) -> None:
        """Use these (equally configured) objects from now on, e.g. those of a later fit; the programs are traced
        again where what they hold as constants (`constants`) changed since the last step (the next step finds
        that, as it finds a change a callback made)."""
        self.n_run, self.head, _ = self.model.output_head(loss)
        self.optimizer = optimizer
        self.transforms = list(transforms)
        self._transform_watches = [AttributeWatch() for _ in self.transforms]
        self._rule_outside.read((optimizer,))
        self._lr: float | None = None
        self._lr_device: Any = None

    def constants(self) -> tuple:
        """What a callback may change between steps that the programs hold as constants: the optimizer's
        hyper-parameters (`hyper_constants`) and what its class reads from its class or module
        (`nnx.training.outside_settings`), the layers' settings (`layer_settings`), the arrays they
        held when traced (`HeldArrays`), and the attributes of the loss, of the model's regularizer and of the
        gradient transforms (a weight, a strength or a clipping norm a callback anneals)."""
        if self._held.moved():
            self._generation += 1
        rule = (hyper_constants(self.optimizer), self._rule_outside.current((self.optimizer,)))
        return (rule, self._settings.current(self.model), self._generation,
                self._head_watch.current(self.head), self._penalty_watch.current(self.model.regularizer),
                tuple(w.current(t) for w, t in zip(self._transform_watches, self.transforms, strict=True)))

    @property
    def resting(self) -> bool:
        """Whether the plain stages run while the settings change too often for programs to pay (`rest`)."""
        return self._churn.resting is not None

    def program_for(self, constants: tuple, refusable: bool = True,
                    definition: Callable[[], tuple | None] | None = None) -> None:
        """Note a program for `constants` (`constants()`) of `definition` (the step's own by default) about to be
        made or taken; `SettingsChurn` where they change too often for that to pay (`nnx.training.churn`), unless a
        step of this epoch was refused or the program cannot be given up now (not `refusable`)."""
        defined = definition or self.definition
        self._churn.program_for(constants, refusable, self.refused_so_far, lambda: known(defined()))

    def ran(self, steps: int) -> None:
        """Count steps a program ran."""
        self._churn.steps_run += steps

    def rest(self) -> None:
        """Stop running programs after `SettingsChurn`, until the settings hold still (`wake`). The epoch's verdict
        so far is dropped: no step of it was refused."""
        self.reset()
        self._churn.rest(self.constants(), self.optimizer.step_count)

    def wake(self) -> bool:
        """As an epoch or a fit starts: whether the programs run (not resting, or the settings held still)."""
        return self._churn.resting is None or self._churn.wake(self.constants(), self.optimizer.step_count)

    def forget_draws(self) -> None:
        """Let the next trace say how many dropout masks a step draws: a changed setting may change it (a rate
        set to 0 draws none)."""
        self._draws = None

    # -- sharing programs with equally defined models (`nnx.training.shared_programs`) -----------
    def definition(self) -> tuple | None:
        """What this step's programs compute besides their inputs (None: they are this model's alone)."""
        model = definition(self.model)
        settings = settings_key(self.head, self.transforms, type(self.optimizer), hyper_constants(self.optimizer))
        if model is None or settings is None:
            return None
        return (model, self.n_run, settings, self.check_finite, code_of(self.model, self.head, self.optimizer),
                outside_key((self.head, self.optimizer, *self.transforms)))

    def trace_facts(self) -> tuple[dict[str, int], dict[str, Any]]:
        """What tracing the step teaches: how often it was traced, the dropout masks one step draws, the attributes
        it found None that its program needs None still (`HeldArrays.unset`)."""
        return {"traces": self.traces}, {"draws": self._draws, "unset": self._held.unset()}

    def adopt_facts(self, counts: dict[str, int], values: dict[str, Any]) -> None:
        """Take a program traced from an equally defined model (its trace count, dropout draws and what it holds)."""
        self.traces += counts.get("traces", 0)
        self._held.adopt(values.get("unset", ()), [layer for _, layer in self.model.named_layers()])
        draws = values.get("draws")
        if draws is not None:
            if self._draws is not None and self._draws != draws:
                raise RuntimeError(f"a shared program draws {draws} dropout masks a step, this step {self._draws}")
            self._draws = draws

    # -- the epoch's deferred verdict ------------------------------------------------------------
    def reset(self) -> None:
        """Forget the epoch's verdict (a new epoch, or after a refused or interrupted step)."""
        self._index = 0
        self._expect: tuple | None = None  # the host counters (t, dropout counter) the device carry matches
        self._carry: Any = None
        self._start: tuple | None = None

    def host_counters(self) -> tuple:
        """The optimizer's host counters and the dropout counter now, as `hold_verdict` takes them to roll back to."""
        opt = self.optimizer
        return opt.step_count, list(opt.param_steps), set(opt.state), self.rng.counter

    def refused_so_far(self) -> bool:
        """Whether a step of this epoch's so far was refused (one read of the flag the device keeps)."""
        if self._carry is None or not self.check_finite:
            return False
        return not int(self.backend.to_host(self._carry)[CARRY_OK])

    def start_carry(self, t: int, counter: int) -> Any:
        """The carry an epoch's first step takes: update count `t`, dropout `counter`, nothing refused yet, the
        dropout stream's seed."""
        xp = self.xp
        return xp.asarray([t, counter, 0, 1, -1, self.rng.seed], dtype=xp.int64, device=self.backend.device)

    def hold_verdict(self, carry: Any, start: tuple) -> None:
        """Keep an epoch program's final carry for `end_epoch`; `start`: `host_counters` before the epoch."""
        self._carry, self._start = carry, start

    def end_epoch(self, updates_on_device: bool = False) -> int | None:
        """The index of the epoch's first non-finite step (one read), or None; counters put back to match.

        With `updates_on_device` (accumulation, which updates on only some steps) the optimizer's
        host counters follow the number of updates the device counted.
        """
        carry, start = self._carry, self._start
        self.reset()
        if carry is None or start is None or not (self.check_finite or updates_on_device):
            return None
        host = self.backend.to_host(carry)
        first = int(host[CARRY_FIRST_BAD]) if self.check_finite else -1
        if updates_on_device:
            self._restore(start, int(host[CARRY_T]) - (start[1][0] + 1))
        elif first >= 0:
            self._restore(start, first)
        if first >= 0:
            # The plain loop stops at the refused step, after its forward drew its masks; the program ran the
            # epoch's later steps too. The stream goes on from where the plain one stopped, so a fit continued
            # after the error draws the masks it would.
            self.rng.counter = start[3] + self.draws_per_step * (first + 1)
        return first if first >= 0 else None

    def _restore(self, start: tuple, updates: int) -> None:
        """The optimizer's host counters as after `updates` steps from `start` (the device kept those arrays)."""
        opt = self.optimizer
        count, param_steps, had_state, _ = start
        opt.step_count = count + updates
        opt.param_steps[:] = [s + updates for s in param_steps]
        if updates == 0:
            for i in set(opt.state) - had_state:
                del opt.state[i]

    # -- one step -----------------------------------------------------------------------------
    def __call__(self, X: Any, y: Any, sample_weight: Any = None, read_check: bool = False) -> tuple[Any, Any, bool]:
        """Run one step; returns (loss incl. penalty, head outputs, finite).

        `finite` is read from the device only with `read_check` (a callback handles
        non-finite steps itself); otherwise it is True and `end_epoch` tells.
        """
        opt, xp = self.optimizer, self.xp
        hyper = self.constants()
        if hyper != self._hyper_values:
            # the first step, or a callback (or the caller, between fits) changed a hyper-parameter or layer setting
            # the program holds
            self.program_for(hyper)
            if self._hyper_values is not None:
                self._jit = SharedProgram(self.backend, self.pure, self.definition, self)
                self.forget_draws()
            self._hyper_values = hyper
        params = self.params
        steps = opt.param_steps
        t, counter = steps[0] + 1, self.rng.counter
        if self._index == 0:
            self._start = self.host_counters()
            self._carry = self.start_carry(t, counter)
        elif (t, counter, self.rng.seed) != self._expect:  # something moved the host counters mid-epoch: send them
            start = self.start_carry(t, counter)
            self._carry = xp.concat([start[:CARRY_INDEX], self._carry[CARRY_INDEX:CARRY_SEED], start[CARRY_SEED:]])
        lr = opt.lr
        if lr != self._lr:
            self._lr, self._lr_device = lr, xp.asarray(lr, device=self.backend.device)  # weakly typed
        state = opt.state
        had_state = set(state) if read_check else None
        states = tuple(state[i] if i in state else opt.init_state(xp, p.value) for i, p in enumerate(params))
        out = self._jit(tuple(p.value for p in params), states, tuple(b.value for b in self.buffers),
                        self._lr_device, self._carry, X, y, sample_weight)
        values, new_states, bufs, grads, value, Z, carry = out
        self._carry = carry
        self._index += 1
        self._churn.steps_run += 1
        for p, v, g in zip(params, values, grads, strict=True):
            p.value, p.grad = v, g
        for b, v in zip(self.buffers, bufs, strict=True):
            b.value = v
        for i, st in enumerate(new_states):
            state[i] = dict(st)
        opt.step_count += 1
        steps[:] = [s + 1 for s in steps]
        self.rng.counter += self._draws or 0
        self._expect = (t + 1, self.rng.counter, self.rng.seed)
        if not read_check or not self.check_finite or int(self.backend.to_host(carry)[CARRY_OK]):
            return value, Z, True
        # refused, and a callback stops on it: the program kept every array; the counters follow
        opt.step_count -= 1
        steps[:] = [s - 1 for s in steps]
        for i in set(state) - (had_state or set()):
            del state[i]
        self._expect = None
        return value, Z, False

    # -- the step's stages, traced (each binds traced values through public attributes and puts them back) --
    def gradients(self, values: tuple, bufs: tuple, counter: Any, seed: Any, X: Any, y: Any, w: Any) -> tuple:
        """Forward, loss and backward: (loss incl. penalty, head outputs, gradients, buffers, dropout counter,
        finite flag or None without the check). The dropout stream draws from the traced `seed` and `counter`.

        Under the model's lock (`model_lock`), as its inference passes run: while the parameters are bound to this
        trace's placeholders, another thread's predict must not read them as the weights. Only while tracing."""
        with model_lock(self.model):
            return self._gradients(values, bufs, counter, seed, X, y, w)

    def _gradients(self, values: tuple, bufs: tuple, counter: Any, seed: Any, X: Any, y: Any, w: Any) -> tuple:
        xp = self.xp
        self.traces += 1
        model, rng = self.model, self.rng
        params, buffers = self.params, self.buffers
        saved = self._saved()
        draws_before = rng.draws
        state_before = python_state(model)
        # a loss's code runs once per trace too: a count it keeps (a curriculum's weight) would change once
        others = [("the loss", self.head)]
        others_before = objects_state(others)
        attributes_before = layer_attributes(model)
        # the loss's arrays too: one it rebinds (a running value it keeps) must not leave a traced value in it
        head_attributes = object_attributes([self.head])
        slots_before = slots_now(self._runs())
        try:
            for p, v in zip(params, values, strict=True):
                p.value, p.grad = v, None
            for b, v in zip(buffers, bufs, strict=True):
                b.value = v
            # the stream draws from (seed, counter): a traced counter, fresh masks each step; a traced seed, one
            # program for models of other seeds
            rng.counter, rng.seed = counter, seed
            value, Z = self._passes(X, y, w)
            rebound = [p.name for p, v in zip(params, values, strict=True) if p.value is not v]
            if rebound:  # (a layer constraining its weight in its forward): the update starts from the new value
                raise TraceRefused(f"the step rebinds the value of {', '.join(map(repr, rebound))}")
            carried = self._carried(slots_before, X, y, w, others)
            if carried:
                raise TraceRefused(f"{carried[0]}: state carried from step to step, which a compiled program would "
                                   "not carry (a Buffer, `self.add_buffer`, is carried); its steps run plainly")
            self._held.note(attributes_before)
            new_counter = rng.counter
            drawn = rng.draws - draws_before  # a Python int: the same for every call of this program
            new_bufs = tuple(b.value for b in buffers)
            grads = tuple(p.grad for p in params)
            skipped = [p.name for p in params if p.grad is None]
            if skipped:  # the plain loop's optimizer skips them; one program updates every parameter
                raise TraceRefused(f"the backward leaves {', '.join(skipped)} without a gradient")
            ok_now = None
            if self.check_finite:  # `TrainStep.check`, before the transforms
                ok_now = xp.all(xp.isfinite(value))
                for g in grads:
                    ok_now = ok_now & xp.all(xp.isfinite(g))
        except BaseException:
            # a trace given up half way (refused, or code that needs concrete values) ran the layers' Python
            # once: the plain step that runs instead starts from their attributes as they were
            restore_state(model, state_before)
            restore_objects(others, others_before)
            raise
        finally:
            self._put_back(saved)
            put_back_arrays(attributes_before)
            put_back_arrays(head_attributes)
        changed = changed_state(state_before, python_state(model)) or changed_state(others_before,
                                                                                    objects_state(others))
        if changed is not None:
            restore_state(model, state_before)  # the plain step that runs instead starts from where it was
            restore_objects(others, others_before)
            raise TraceRefused(f"the step changes Python state a compiled program would not: {changed}")
        if self._draws is not None and self._draws != drawn:
            raise RuntimeError(f"the compiled step drew {drawn} dropout masks, a previous trace {self._draws}")
        self._draws = drawn
        return value, Z, grads, new_bufs, new_counter, ok_now

    def _passes(self, X: Any, y: Any, w: Any) -> tuple[Any, Any]:
        """Forward, loss (with the penalty) and backward on what the model holds, as `nnx.training.TrainStep`'s
        `forward_loss` and `backward` run them: (loss, head outputs), the gradients left in ``p.grad``."""
        model = self.model
        Z = model.forward_to_head(X, self.n_run, training=True)
        if w is None:
            value, dZ = self.head.value_and_grad(y, Z, check=False)
        else:
            value, dZ = self.head.value_and_grad(y, Z, check=False, sample_weight=w)
        penalty = model.penalty()
        if penalty is not None:
            value = value + penalty
        model.backward_from_head(dZ, self.n_run, need_dX=False)
        return value, Z

    def _runs(self) -> list[Any]:
        """The objects whose code the traced passes run and which keep what they like: the layers and the loss."""
        return [*(layer for _, layer in self.model.named_layers()), self.head]

    def _carried(self, slots_before: dict[tuple, Any], X: Any, y: Any, w: Any, others: list) -> list[str]:
        """The arrays a user's layer or loss rebound in this trace that it read first, in words (none: each is a
        cache for its backward): state a program would not carry (`nnx.training.carried`)."""
        rebound = rebound_slots(self._runs(), slots_before, self.backend.is_traced)
        if not rebound:
            return []
        model, params, buffers = self.model, self.params, self.buffers
        saved, draws = self._saved(), self.rng.draws
        state, others_state = python_state(model), objects_state(others)

        def passes() -> tuple:
            value, Z = self._passes(X, y, w)
            return value, Z, tuple(p.grad for p in params), tuple(b.value for b in buffers)

        try:
            return carried_state(self.backend, rebound, passes, self._runs())
        finally:
            restore_state(model, state)
            restore_objects(others, others_state)
            self._put_back(saved)
            self.rng.draws = draws

    def transformed(self, values: tuple, grads: tuple, rows: int, transforms: list[Any]) -> tuple:
        """`grads` through the traceable gradient transforms (clipping, ...)."""
        if not transforms:
            return grads
        params = self.params
        with model_lock(self.model):  # as `gradients`: the parameters are bound to placeholders meanwhile
            return self._transformed(params, values, grads, rows, transforms)

    def _transformed(self, params: list[Any], values: tuple, grads: tuple, rows: int, transforms: list[Any]) -> tuple:
        # A user's transform declared traceable runs once per trace: one that keeps state between steps (an EMA of
        # the gradients, a count) or holds an update back (returns False) would have the program start every step
        # from the traced state and update anyway, where the plain loop carries it; such a step runs plainly.
        objs = [t for t in transforms if not type(t).__module__.startswith("nnx.")]
        users = [(f"the gradient transform {type(t).__name__}", t) for t in objs]
        state_before, attributes, slots_before = objects_state(users), object_attributes(objs), slots_now(objs)
        saved = self._saved()
        try:
            for p, v, g in zip(params, values, grads, strict=True):
                p.value, p.grad = v, g
            for transform in transforms:
                if not transform.apply(params, rows):
                    raise TraceRefused(f"the gradient transform {type(transform).__name__} held an update back, "
                                       "which a compiled program would not")
            rebound = rebound_slots(objs, slots_before, self.backend.is_traced)
            if rebound:
                raise TraceRefused(f"the gradient transform {type(rebound[0][0]).__name__} keeps "
                                   f"{rebound[0][1]!r} from step to step, which a compiled program would not carry")
            grads = tuple(p.grad for p in params)
        except BaseException:
            restore_objects(users, state_before)
            raise
        finally:
            self._put_back(saved)
            put_back_arrays(attributes)
        changed = changed_state(state_before, objects_state(users))
        if changed is not None:
            restore_objects(users, state_before)
            raise TraceRefused(f"the step changes Python state a compiled program would not: {changed}")
        return grads

    def updated(self, values: tuple, grads: tuple, states: tuple, t: Any, lr: Any) -> tuple[tuple, tuple]:
        """The optimizer's own rule on every parameter: (new values, new states)."""
        opt = self.optimizer
        steps = opt.param_steps
        # Each parameter's own update count, as the plain loop keeps it: the traced count of the first plus a
        # constant of the program (`hyper_constants`). It is made a float as JAX types a Python float (weakly):
        # the rule's arithmetic on it and on Python floats (Adam's beta2 ** t) runs in double precision, as on
        # the host, and meets the parameters in their dtype as a Python number does (a count in the parameters'
        # dtype rounded float32 Adam's bias corrections).
        # traced on a copy of the optimizer (`nnx.training.rule_trace`): a rule that changes what its optimizer
        # holds (a count, a log) would do so once here, with traced values, where the plain loop does it every step;
        # a rule that reads self.lr gets the program's rate too, not a constant
        with RuleTrace(opt) as rule, rule.rate_for_tracing(lr):
            updated = [rule.update(self.xp, v, g, st, (t + (s - steps[0])) * 1.0, lr)
                       for v, g, st, s in zip(values, grads, states, steps, strict=True)]
        for p, v, st, (new_value, new_state) in zip(self.params, values, states, updated, strict=True):
            check_rule_result(opt, p, v, new_value, st, new_state)
        return tuple(u[0] for u in updated), tuple(u[1] for u in updated)

    def _saved(self) -> tuple:
        """What tracing binds to traced values, as it stands, for `_put_back`."""
        return ([(p.value, p.grad) for p in self.params], [b.value for b in self.buffers], self.rng.counter,
                self.rng.seed)

    def _put_back(self, saved: tuple) -> None:
        for p, (v, g) in zip(self.params, saved[0], strict=True):
            p.value, p.grad = v, g
        for b, v in zip(self.buffers, saved[1], strict=True):
            b.value = v
        self.rng.counter, self.rng.seed = saved[2], saved[3]

    # -- the traced function ------------------------------------------------------------------
    def pure(self, values: tuple, states: tuple, bufs: tuple, lr: Any, carry: Any, X: Any, y: Any, w: Any) -> tuple:
        """The step as a pure function of its inputs, to trace (alone, or as a loop's body).

        Returns (new values, new states, new buffers, gradients, loss, head outputs, new carry).
        """
        xp = self.xp
        t, counter, index = carry[CARRY_T], carry[CARRY_COUNTER], carry[CARRY_INDEX]
        seed = carry[CARRY_SEED]
        value, Z, grads, new_bufs, new_counter, ok_now = self.gradients(values, bufs, counter, seed, X, y, w)
        grads = self.transformed(values, grads, int(X.shape[0]), self.transforms)
        new_values, new_states = self.updated(values, grads, states, t, lr)
        if ok_now is None:
            carry = xp.concat([xp.stack([t + 1, new_counter, index + 1]), carry[3:]])
            return new_values, new_states, new_bufs, grads, value, Z, carry
        # the deferred check: apply only while every step of the epoch so far, this one included, was finite
        ok_in = carry[CARRY_OK] != 0
        keep = ok_in & ok_now
        new_values = tuple(xp.where(keep, new, old) for new, old in zip(new_values, values, strict=True))
        new_states = tuple({k: xp.where(keep, arr, states[i][k] if k in states[i] else xp.zeros_like(arr))
                            for k, arr in st.items()} for i, st in enumerate(new_states))
        # buffers move in the forward pass, before the check: as the per-step check leaves them, neither the
        # refused step's forward nor a later one counts
        new_bufs = kept_buffers(xp, keep, new_bufs, bufs)
        first_bad = xp.where(ok_in & ~ok_now, index, carry[CARRY_FIRST_BAD])
        carry = xp.concat([xp.stack([t + 1, new_counter, index + 1, xp.astype(keep, carry.dtype), first_bad]),
                           carry[CARRY_SEED:]])
        return new_values, new_states, new_bufs, grads, value, Z, carry
