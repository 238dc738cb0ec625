"""A whole epoch (or a chunk of k batches) of the compiled step as one program, on a backend with a compiler.

Per-step execution pays the host a call per batch: dispatching a program, writing its
results back, reading nothing. For a small network that is most of the time. Here the
step of `nnx.training.compiled` (the model's own layer code and the optimizer's own
rule, traced) becomes the body of a loop the compiler runs (``backend.scan``):

- arrays already on the device (`ArrayBatches`): one program per epoch. The epoch's
  permutation is drawn on the host from the model's shuffle stream, exactly as every
  other backend draws it, and passed in; each step of the program gathers its batch's
  rows from the data (never a shuffled copy of it, which would double its memory). It
  runs every step (dropout's counter, the finite check and the rollback select carried
  on the device) and a partial last batch after the loop, in the same program. The
  losses (and outputs, for metrics) come back once per epoch.
- data read batch by batch (memmaps, iterables): consecutive batches of one shape are
  stacked into chunks of k and each chunk runs as one program. k comes from a memory
  budget (`CHUNK_BUDGET` bytes of batches) unless ``fit(chunk_batches=k)`` sets it.

Programs are cached by the compiler per input shape, so one epoch layout compiles
once whatever the number of epochs; `EpochProgram.compiles` counts the traces.

Accumulation (``fit(accumulate=k)``) is gathered inside the epoch program
(`nnx.training.accumulated`). A progress bar, whose per-batch hook only draws, is handed
the epoch's batch losses after the program. What needs the host between batches keeps
the per-step loop (`mode_of` says which and why): a callback with a per-batch hook,
``on_backward`` or ``on_gradients`` (and `GradientAnalyzer`), a callback that handles non-finite steps
itself, distributed training, accumulation over data read batch by batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..backends.base import CarryChanged, TraceRefused
from . import accumulated
from .callbacks import CallbackList
from .callbacks.base import BATCH_HOOKS, display_only, overrides
from .churn import RESTING, SettingsChurn
from .compiled import CompiledStep, compile_step
from .data import ArrayBatches
from .loss_fit import check_outputs
from .per_model import PerModel
from .shared_programs import SharedProgram
from .targets import joined_targets
from .traceable import untraceable_reason
from .transforms import Accumulate
from .weights import average, batch_weight, counts_by_weight, host_values

__all__ = ["CHUNK_BUDGET", "EpochProgram", "distributed_reason", "epoch_program_of", "mode_of", "plan"]

CHUNK_BUDGET = 64 * 2**20
"""Bytes of stacked batches one chunk program may take on the device (data read batch by batch)."""

# epoch layouts (batch size, outputs kept, accumulation) a model keeps programs for, least recently used dropped
# first: a notebook fitting with ever new batch sizes held a program for each (4.3 MiB for a small MLP)
MAX_LAYOUTS = 8


def per_batch_reason(callbacks: list[Any]) -> str | None:
    """Why these callbacks need the host between batches, or None. A callback may declare
    `batch_hooks_display_only` (a progress bar): its on_batch_end then only sees whole epochs (`display_only`)."""
    for cb in callbacks:
        name = type(cb).__name__
        if getattr(cb, "handles_non_finite", False):
            return f"callback {name} handles non-finite steps itself, batch by batch"
        for hook in BATCH_HOOKS:
            # only on_batch_end is handed the epoch's batches after the program (`_replay`)
            if overrides(cb, hook) and not (hook == "on_batch_end" and display_only(cb, hook)):
                return f"callback {name} overrides {hook}"
    return None


def mode_of(step: Any, batches: Any, callbacks: list[Any], distributed: Any) -> tuple[str, str, Any, int]:
    """How `fit` runs its epochs: ``("epoch" | "chunks" | "step", why, compiled step, batches per update)``.

    `step` is the fit's `TrainStep`; per step when it is not compiled, when a callback needs
    the host between batches, or for distributed training. Accumulation, which the per-step
    program leaves to the host, is gathered inside an epoch program.
    """
    model = step.model
    be = model.backend
    if distributed is not None:
        return "step", distributed_reason(step), None, 1
    compiled, k = step.compiled or step.resting, 1  # (a resting step's program runs once it wakes: `churn`)
    transforms = step.transforms
    if compiled is None and be.can_compile and be.fastpath_enabled and transforms and \
            isinstance(transforms[0], Accumulate) and untraceable_reason(model, step.loss, step.optimizer,
                                                                        transforms[1:]) is None:
        if not isinstance(batches, ArrayBatches):
            return "step", "accumulation over data read batch by batch runs step by step", None, 1
        if per_batch_reason(callbacks) is None:
            compiled = compile_step(model, step.loss, step.optimizer, transforms[1:], step.check_finite)
            k = transforms[0].steps
    if compiled is None:
        if not be.can_compile:
            # JAX's adapter compiles only in 64-bit mode and outside jax.disable_jit() (`JaxBackend.can_compile`)
            off = be.compiler_off()
            return "step", f"backend {be.spec!r} has no compiler" + (f" {off}" if off else ""), None, 1
        if not be.fastpath_enabled:
            return "step", "derived executions are off (backend.with_fastpath(False))", None, 1
        why = per_batch_reason(callbacks) or untraceable_reason(model, step.loss, step.optimizer, transforms)
        return "step", why or "the model's code needs concrete values (it did not trace)", None, 1
    why = per_batch_reason(callbacks)
    if why is not None:
        return "step", why, None, 1
    if isinstance(batches, ArrayBatches):
        return "epoch", "each epoch is one compiled program (shuffle, steps, finite check on the device)", compiled, k
    return "chunks", "data read batch by batch: chunks of k batches, each one compiled program", compiled, k


def distributed_reason(step: Any) -> str:
    """Why a data-parallel fit runs step by step, and whether its passes run as one program (`TrainStep.passes`)."""
    why = "distributed training runs step by step (the gradient all-reduce sits between batches)"
    if step.passes is not None:
        why += f"; {RESTING}" if step.passes.resting else \
            "; each batch's forward, loss and backward run as one compiled program"
    return why


def plan(history: Any, step: Any, batches: Any, callbacks: list[Any], distributed: Any,
         chunk_batches: int | None, verbose: int) -> EpochProgram | None:
    """Decide how `fit` runs its epochs, record it in `history` (``verbose >= 2`` prints it); the program or None."""
    mode, why, compiled, k = mode_of(step, batches, callbacks, distributed)
    history.execution_mode, history.execution_reason = mode, why
    if compiled is not None:
        history.execution = "compiled"
    if verbose >= 2:
        print(f"fit: {'per-step' if mode == 'step' else mode} execution ({history.execution} step): {why}",
              flush=True)
    if compiled is None:
        return None
    program = epoch_program(step.model, compiled, chunk_batches)
    program.accumulate = k
    return program


class _Begun(CallbackList):
    """The fit's callbacks for an epoch whose ``on_epoch_begin`` already ran."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        pass


# one program set per model, kept while its compiled step is the model's
_PROGRAMS = PerModel()


def epoch_program_of(model: Any) -> EpochProgram | None:
    """The epoch programs kept for `model` (with their trace count), or None."""
    return _PROGRAMS.get(model)


def epoch_program(model: Any, step: CompiledStep, chunk_batches: int | None) -> EpochProgram:
    """The `EpochProgram` over `model`'s compiled `step`, reused while that step is."""
    program = _PROGRAMS.get(model)
    if program is None or program.step is not step:
        program = EpochProgram(step)
        _PROGRAMS[model] = program
    program.chunk_batches = chunk_batches
    return program


class EpochProgram:
    """Epochs (or chunks of batches) of a `CompiledStep` as single compiled programs; see the module docstring.

    Attributes:
        step: the `CompiledStep` whose traced step is the loop's body.
        compiles: how many programs were traced so far (one per epoch layout and batch shape).
        chunk_batches: batches per chunk for data read batch by batch (None: from `CHUNK_BUDGET`).
    """

    def __init__(self, step: CompiledStep) -> None:
        self.step = step
        self.compiles = 0
        self.chunk_batches: int | None = None
        self.accumulate = 1  # batches per update (`fit(accumulate=k)`), gathered inside the program
        self._programs: dict[tuple, Any] = {}
        self._hyper: tuple | None = None
        self._guard: Any = None  # the fit's `InterruptGuard`, set by `run_epoch`
        self._chunked = False  # whether this epoch runs chunks (else one program)

    def awake(self) -> bool:
        """As an epoch starts: whether it runs as a program (the step traces, and does not rest, or woke)."""
        return not self.step.broken and self.step.wake()

    # -- the programs ----------------------------------------------------------------------------
    def _program(self, key: tuple, make: Callable[[], Any], refusable: bool = True) -> Any:
        """The program `key`, made by `make` where new (`SettingsChurn`: `CompiledStep.program_for`)."""
        hyper = self.step.constants()
        if hyper != self._hyper:  # a callback changed a hyper-parameter or layer setting the programs hold
            self.step.program_for(hyper, refusable, lambda: self._definition(key))
            self._programs.clear()
            self._hyper = hyper
            self.step.forget_draws()
        program = self._programs.pop(key, None)
        if program is None:
            program = SharedProgram(self.step.backend, make(), lambda: self._definition(key), self)
        self._programs[key] = program  # (most recent last)
        if len(self._programs) > MAX_LAYOUTS:
            del self._programs[next(iter(self._programs))]
        return program

    def _definition(self, key: tuple) -> tuple | None:
        """What the program `key` computes besides its inputs (None: it is this model's alone)."""
        step = self.step.definition()
        return None if step is None else (step, key, self.accumulate)

    def trace_facts(self) -> tuple[dict[str, int], dict[str, Any]]:
        """What tracing an epoch teaches: the program count, and the step's own facts (`CompiledStep`)."""
        counts, values = self.step.trace_facts()
        return {**counts, "compiles": self.compiles}, values

    def adopt_facts(self, counts: dict[str, int], values: dict[str, Any]) -> None:
        """Take an epoch program traced from an equally defined model."""
        self.compiles += counts.get("compiles", 0)
        self.step.adopt_facts(counts, values)

    def _steps(self, values: tuple, states: tuple, bufs: tuple, lr: Any, ints: Any, acc: tuple, Xs: Any, ys: Any,
               ws: Any, outputs: bool, rows: Any = None) -> tuple:
        """The scan of the traced step over stacked batches (leading axis: the step); with `rows` (stacked row
        indices), over the batches ``(Xs[r], ys[r], ws[r])`` gathered per step from the whole arrays."""
        xp, step = self.step.xp, self.step

        def body(carry: tuple, batch: tuple) -> tuple:
            vals, sts, bfs, _, its, acc = carry
            if rows is not None:
                (r,) = batch
                batch = tuple(None if a is None else step.backend.take_rows(a, r) for a in (Xs, ys, ws))
            new_vals, new_sts, new_bfs, grads, value, Z, new_its, acc = self._one(vals, sts, bfs, lr, its, acc, *batch)
            return ((new_vals, tuple(dict(s) for s in new_sts), new_bfs, grads, new_its, acc),
                    (value, Z if outputs else None))

        zeros = tuple(xp.zeros_like(v) for v in values)
        carry = (values, tuple(dict(s) for s in states), bufs, zeros, ints, acc)
        return step.backend.scan(body, carry, (Xs, ys, ws) if rows is None else (rows,))

    def _one(self, values: tuple, states: tuple, bufs: tuple, lr: Any, ints: Any, acc: tuple, X: Any, y: Any,
             w: Any) -> tuple:
        """One traced step; `acc` is what accumulation carries (empty without it)."""
        if self.accumulate == 1:
            return (*self.step.pure(values, states, bufs, lr, ints, X, y, w), acc)
        return accumulated.step(self.step, self.accumulate, values, states, bufs, lr, ints, acc, X, y, w)

    def _arrays_fn(self, batch: int, outputs: bool) -> Callable[..., tuple]:
        """The epoch over device arrays: gather by the permutation, full batches in a loop, then the partial one."""
        xp, step = self.step.xp, self.step

        def stacked(a: Any, full: int) -> Any:
            return None if a is None else xp.reshape(a[:full * batch, ...], (full, batch) + tuple(a.shape[1:]))

        def epoch(values: tuple, states: tuple, bufs: tuple, lr: Any, t: Any, counter: Any, seed: Any, X: Any, y: Any,
                  w: Any, perm: Any) -> tuple:
            self.compiles += 1
            # the counters and the dropout seed come in as host ints (no host-to-device copy of a built vector):
            # the step's carry (see `CompiledStep`) is made here
            ints = xp.stack([xp.astype(xp.asarray(t), xp.int64), xp.astype(xp.asarray(counter), xp.int64)]
                            + [xp.asarray(v, dtype=xp.int64) for v in (0, 1, -1)]
                            + [xp.astype(xp.asarray(seed), xp.int64)])
            n = int(X.shape[0])
            full = n // batch
            losses, Zs = [], []
            grads: Any = None
            acc = () if self.accumulate == 1 else accumulated.start(step, values, w)
            if full:
                # shuffled: each step gathers its batch's rows from the data (a shuffled copy would double it)
                data, rows = ((X, y, w), stacked(perm, full)) if perm is not None else \
                    ((stacked(X, full), stacked(y, full), stacked(w, full)), None)
                (values, states, bufs, grads, ints, acc), (value, Z) = self._steps(
                    values, states, bufs, lr, ints, acc, *data, outputs, rows)
                losses.append(value)
                if outputs:
                    Zs.append(xp.reshape(Z, (full * batch,) + tuple(Z.shape[2:])))
            if n > full * batch:
                rest = slice(full * batch, n)
                last = [None if a is None else a[rest, ...] if perm is None else step.backend.take_rows(a, perm[rest])
                        for a in (X, y, w)]
                values, states, bufs, grads, value, Z, ints, acc = self._one(values, states, bufs, lr, ints, acc,
                                                                             *last)
                losses.append(xp.reshape(value, (1,)))
                Zs.append(Z)
            if self.accumulate > 1:  # the epoch's last, shorter group of batches
                values, states, grads, ints = accumulated.flush(step, values, states, grads, ints, acc, lr)
            loss = losses[0] if len(losses) == 1 else xp.concat(losses)
            Z_all = (Zs[0] if len(Zs) == 1 else xp.concat(Zs, axis=0)) if outputs else None
            targets = None if not outputs else y if perm is None else step.backend.take_rows(y, perm)
            return values, states, bufs, grads, ints, loss, Z_all, targets

        return epoch

    def _chunk_fn(self, outputs: bool) -> Callable[..., tuple]:
        """A chunk of stacked batches of one shape."""

        def chunk(values: tuple, states: tuple, bufs: tuple, lr: Any, ints: Any, Xs: Any, ys: Any, ws: Any) -> tuple:
            self.compiles += 1
            (values, states, bufs, grads, ints, _), (loss, Z) = self._steps(values, states, bufs, lr, ints, (), Xs, ys,
                                                                            ws, outputs)
            return values, states, bufs, grads, ints, loss, Z, None

        return chunk

    # -- running them -------------------------------------------------------------------------
    def _call(self, program: Any, counters: tuple, n_steps: int, *data: Any) -> tuple[Any, Any, Any, Any]:
        """Run `program` from the live parameters, state and counters and write its results back.

        Returns (the device counters after it, the steps' losses, their outputs, their targets).
        """
        step = self.step
        opt, xp = step.optimizer, step.xp
        params = step.params
        lr = float(opt.lr)  # a Python float is a weakly typed input, as the per-step program's lr
        states = tuple(opt.state[i] if i in opt.state else opt.init_state(xp, p.value) for i, p in enumerate(params))
        guard = self._guard  # Ctrl-C lands between programs, never inside a write-back
        guard.in_step = True
        try:
            values, new_states, bufs, grads, ints, losses, Z, targets = program(
                tuple(p.value for p in params), states, tuple(b.value for b in step.buffers), lr, *counters, *data)
        except BaseException:
            guard.in_step = False
            raise
        for p, v, g in zip(params, values, grads, strict=True):
            p.value, p.grad = v, g
        for b, v in zip(step.buffers, bufs, strict=True):
            b.value = v
        for i, st in enumerate(new_states):
            opt.state[i] = dict(st)
        if self.accumulate == 1:  # else the updates are counted on the device (`CompiledStep.end_epoch` reads them)
            opt.step_count += n_steps
            opt.param_steps[:] = [s + n_steps for s in opt.param_steps]
        step.rng.counter += step.draws_per_step * n_steps
        if self._chunked:  # a chunk's counters are complete here; an epoch's once `end_epoch` has read its verdict
            guard.end_step()
        return ints, losses, Z, targets

    def _begin(self) -> tuple[tuple[int, int, int], tuple]:
        """The update count, dropout counter and seed an epoch starts from, and the host counters to roll back to."""
        step = self.step
        return (step.optimizer.param_steps[0] + 1, step.rng.counter, step.rng.seed), step.host_counters()

    def run_arrays(self, batches: ArrayBatches, outputs: bool) -> tuple[Any, list[int], list[Any], Any, Any]:
        """One epoch over device arrays; returns (losses, rows and `batch_weight` per step, outputs, targets)."""
        model = batches.model
        batch = batches.slices[0].stop - batches.slices[0].start
        key = ("arrays", batch, outputs, self.accumulate)
        try:
            program = self._program(key, lambda: self._arrays_fn(batch, outputs))
        except SettingsChurn as exc:
            raise _NotTraced(batches, exc) from None  # (before the permutation: the per-step epoch draws it)
        perm = None
        shuffled = model.shuffle_rng.bit_generator.state
        if batches.shuffle:  # the permutation every backend draws, from the model's shuffle stream
            perm = model.backend.asarray(model.shuffle_rng.permutation(batches.n_samples), argname="permutation")
        counters, start = self._begin()
        traced = self.compiles
        try:
            ints, losses, Z, targets = self._call(program, counters, batches.steps, batches.X, batches.y, batches.w,
                                                  perm)
        except CarryChanged:
            model.shuffle_rng.bit_generator.state = shuffled
            raise _StateChanged(batches) from None
        except model.backend.trace_errors as exc:
            # (after a program of an earlier fit too: a sub-layer dropped since leaves parameters without gradients)
            model.shuffle_rng.bit_generator.state = shuffled  # the per-step epoch draws the same permutation
            raise _NotTraced(batches, exc) from None
        except Exception as exc:
            if self.compiles == traced:
                raise
            # The model's code raised while the epoch was traced, at one batch shape (BatchNorm given a last batch
            # of one row): the per-step loop applies the batches before that one and raises there, with those
            # weights left; this epoch runs step by step to do the same
            model.shuffle_rng.bit_generator.state = shuffled
            raise _NotTraced(batches, exc, raised=True) from exc
        self.step.hold_verdict(ints, start)
        self.step.ran(batches.steps)
        rows = [s.stop - s.start for s in batches.slices]
        return losses, rows, self._batch_weights(batches, perm, rows), Z, targets

    def _batch_weights(self, batches: ArrayBatches, perm: Any, rows: list[int]) -> list[Any]:
        """Each batch's `batch_weight` in the epoch's order: its rows, or its sum of weights."""
        step = self.step
        if not counts_by_weight(step.head, batches.w):
            return list(rows)
        xp = step.xp
        w = batches.w if perm is None else step.backend.take_rows(batches.w, perm)
        return [batch_weight(xp, step.head, r, w[s, ...]) for r, s in zip(rows, batches.slices, strict=True)]

    def run_chunks(self, batches: Any, outputs: bool, check_loss: Any) -> tuple[Any, list[int], list[Any], Any, Any]:
        """One epoch over a batch source, k batches of one shape per program."""
        step = self.step
        xp = step.xp
        model = step.model
        (t, counter, _), start = self._begin()
        ints = step.start_carry(t, counter)  # carried from chunk to chunk
        losses, rows, weights, Zs, targets = [], [], [], [], []
        group: list[tuple[Any, Any, Any]] = []
        limit = self.chunk_batches

        def key(item: tuple[Any, Any, Any]) -> tuple:
            return tuple(None if a is None else (tuple(a.shape), str(a.dtype)) for a in item)

        def flush(taken: list[tuple[Any, Any, Any]]) -> None:
            """Run the group; `taken`: the batch after it, already taken from the source."""
            stack = [None if group[0][j] is None else xp.stack([item[j] for item in group]) for j in range(3)]
            try:
                program = self._program(("chunk", outputs), lambda: self._chunk_fn(outputs), refusable=not losses)
            except SettingsChurn as exc:
                raise _NotTraced(_Resumed(group + taken, source), exc) from None
            try:
                out, loss, Z, _ = self._call(program, (ints_now[0],), len(group), *stack)
            except CarryChanged:
                if losses:
                    raise  # the state's keys changed inside the epoch, with no callback between its programs
                raise _StateChanged(_Resumed(group + taken, source)) from None
            except model.backend.trace_errors as exc:
                if losses:
                    raise  # chunks of this epoch ran: the step-by-step loop cannot take the rest over
                raise _NotTraced(_Resumed(group + taken, source), exc) from None
            ints_now[0] = out
            step.ran(len(group))
            losses.append(loss)
            rows.extend(int(item[0].shape[0]) for item in group)
            weights.extend(batch_weight(xp, step.head, int(X.shape[0]), w) for X, _, w in group)
            if outputs:
                Zs.append(xp.reshape(Z, (-1,) + tuple(Z.shape[2:])))
                targets.extend(item[1] for item in group)
            group.clear()

        ints_now = [ints]
        source = batches.epoch()
        handed_over = False  # to the per-step loop, with the batches taken so far, when the first program fails
        try:
            for b, item in enumerate(_read(source, group, flush)):
                if check_loss is not None and b == 0:
                    check_outputs(model, check_loss, model.forward_to_head(item[0], len(model.layers), training=False))
                if limit is None:
                    limit = max(1, CHUNK_BUDGET // max(1, sum(_nbytes(a) for a in item if a is not None)))
                if group and (key(item) != key(group[0]) or len(group) >= limit):
                    flush([item])
                group.append(item)
            if group:
                flush([])
        except _NotTraced:
            handed_over = True
            raise
        finally:
            if not handed_over:
                source.close()
            # also on an error: `run_epoch` reads what the programs that ran refused, and the counters follow
            step.hold_verdict(ints_now[0], start)
        loss = losses[0] if len(losses) == 1 else xp.concat(losses)
        if not outputs:
            return loss, rows, weights, None, None
        return loss, rows, weights, xp.concat(Zs, axis=0), joined_targets(model, targets)

    def run_epoch(self, train: Any, batches: Any, cb: CallbackList, guard: Any, metric_fns: dict,
                  check_loss: Any, non_finite: Callable[[int, int], BaseException],
                  per_step: Callable[..., dict], history: Any) -> dict[str, float]:
        """One epoch of `fit` (`train`: its `TrainStep`); returns the epoch's logs.

        Raises what `non_finite(epoch, batch)` makes for a refused step. When the first program
        cannot be traced (the model's code needs concrete values), the step runs plain from now
        on and this epoch runs through ``per_step(callbacks, batches[, check_loss])`` over the same batches;
        when the optimizer's state changed its keys (or a buffer its dtype), or a callback set
        ``model.stop_training`` before the epoch's first batch (the per-step loop then trains on one batch),
        only this epoch does.
        """
        model = train.model
        epoch = model.epochs_trained
        cb.on_epoch_begin(epoch, {})
        if model.stop_training:
            # a callback stopped the fit before this epoch's first batch (a time budget checked in on_epoch_begin):
            # the per-step loop looks at the flag after each batch, so it trains on one batch and stops, as Keras does
            return per_step(_Begun(cb.callbacks), batches, check_loss)
        outputs = bool(metric_fns)
        self._guard = guard
        self._chunked = not isinstance(batches, ArrayBatches)
        try:
            if not self._chunked:
                losses, rows, weights, Z, targets = self.run_arrays(batches, outputs)
            else:
                losses, rows, weights, Z, targets = self.run_chunks(batches, outputs, check_loss)
        except _StateChanged as exc:
            self.step.reset()
            return per_step(_Begun(cb.callbacks), exc.batches)
        except _NotTraced as exc:
            if exc.churned:  # the plain stages run until the settings hold still (`awake`)
                self.step.rest()
                if train.compiled is self.step:  # (not with accumulation, whose steps are no compiled step's)
                    train.resting, train.compiled = self.step, None
            else:
                self.step.broken = True
                train.compiled = None
                self.step.reset()
            history.execution, history.execution_mode = train.execution, "step"
            history.execution_reason = RESTING if exc.churned else str(exc)
            return per_step(_Begun(cb.callbacks), exc.batches)
        except BaseException as exc:
            # the source failed (or Ctrl-C landed) mid-epoch: a step refused before it is the run's first
            # failure, as the per-step loop raises it when it happens; the counters follow the weights kept
            refused = self.step.end_epoch()
            if refused is not None:
                raise non_finite(epoch, refused) from exc
            raise
        try:
            refused = self.step.end_epoch(updates_on_device=self.accumulate > 1)
        finally:
            if not self._chunked:
                guard.end_step()  # a Ctrl-C during the program lands here, with the counters matching the weights
        if refused is not None:
            # the per-step loop draws the batches before the refused one (a progress bar): so they are here
            _replay(cb.callbacks, rows[:refused], host_values(model, losses, weights)[0][:refused])
            raise non_finite(epoch, refused)
        host, host_weights = host_values(model, losses, weights)
        _replay(cb.callbacks, rows, host)
        logs = {"loss": average(host, host_weights)}
        if outputs:
            logs.update(model.metric_values(metric_fns, targets, Z, train.from_logits))
        return logs


class _NotTraced(Exception):
    """The first program could not be traced, or its settings change too often for programs to pay (`churned`:
    `SettingsChurn`); `batches` gives this epoch's batches to the per-step loop."""

    def __init__(self, batches: Any, cause: BaseException, raised: bool = False) -> None:
        """`raised`: `cause` is an error of the model's code met while tracing, not a limit of tracing."""
        # nnx's own refusal says why; the compiler's errors all mean the code needs concrete values
        if isinstance(cause, TraceRefused):
            why = str(cause)
        elif raised:
            why = f"tracing the epoch raised {type(cause).__name__}: {cause}"
        else:
            why = "the model's code needs concrete values (it did not trace)"
        super().__init__(why)
        self.batches = batches
        self.churned = isinstance(cause, SettingsChurn)


class _StateChanged(_NotTraced):
    """The optimizer's state changed its keys (a callback turned a hyper-parameter such as amsgrad or momentum on or
    off) or a step changed the dtype of what it carries (a layer rebinds a buffer to integers), which one program's
    loop cannot carry: this epoch runs step by step, each step compiled, and the next epoch compiles its program for
    the new carry."""

    def __init__(self, batches: Any) -> None:
        Exception.__init__(self, "the loop's carry changed")
        self.batches = batches


class _Resumed:
    """A batch source for the rest of an epoch: the batches already taken, then the open source's others."""

    def __init__(self, taken: list[Any], source: Any) -> None:
        self.taken, self.source = taken, source
        self.error: BaseException | None = None  # what reading the source after them raised, if it did

    def epoch(self) -> Any:
        """The batches, once; closing it closes the source."""
        try:
            yield from self.taken
            if self.error is not None:
                raise self.error
            yield from self.source
        finally:
            self.source.close()


def _read(source: Any, group: list[Any], flush: Callable[[list[Any]], None]) -> Any:
    """The batches of `source`; when reading one fails (or Ctrl-C lands), the batches read before it are
    trained on first, as the per-step loop has trained on each before reading the next."""
    iterator = iter(source)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except BaseException as exc:
            if group:
                try:
                    flush([])
                except _NotTraced as handed:  # the per-step loop trains on them, then meets the same error
                    handed.batches.error = exc
                    raise
            raise
        yield item


def _replay(callbacks: list[Any], rows: list[int], losses: Any) -> None:
    """The epoch's batches, after its program, to callbacks whose per-batch hook only draws (a progress bar)."""
    display = [cb for cb in callbacks if overrides(cb, "on_batch_end") and display_only(cb, "on_batch_end")]
    for b, (size, value) in enumerate(zip(rows, losses, strict=True)) if display else ():
        for cb in display:
            cb.on_batch_end(b, {"loss": float(value), "size": size})


def _nbytes(a: Any) -> int:
    size = 1
    for d in a.shape:
        size *= int(d)
    return size * int(getattr(a.dtype, "itemsize", 8))
