"""The training loop behind `Sequential.fit`: epochs of `TrainStep`s, callbacks, validation and History.

The loop owns the order of events and what happens on every way out: a
non-finite step raises `FloatingPointError` naming the epoch and batch before
it is applied, Ctrl-C ends the run between steps, and every callback's
``on_train_end`` runs whatever happened.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from typing import Any

from .. import _validate as check
from ..layers.own_arrays import require_own_arrays
from ..metrics import resolve_metrics
from ..protocols import Model
from .callbacks import Callback, CallbackList, ProgressBar
from .callbacks.base import hooks_of, hooks_skipped, refuse_skipped_hooks
from .callbacks.monitor import added_names
from .churn import RESTING, count_still
from .compiled_inference import fit_ended, fit_started
from .data import prefetch_depth
from .epoch import distributed_reason, plan
from .evaluation import evaluate_batches
from .flat import own_step
from .history import History
from .inference import require_forward_run
from .inputs import column_names, require_backend_state, require_untraced
from .interrupts import InterruptGuard
from .loss_fit import check_loss_fits, check_outputs
from .resolve import require_valid_settings
from .sources import training_source, validation_source
from .step import NonFiniteStep, TrainStep
from .targets import joined_targets
from .transforms import Accumulate, CallbackHook, CallbackLook, ClipByNorm, ClipByValue, GradientTransform
from .weights import average, batch_weight, host_values


def build_transforms(clip_norm: float | None, clip_value: float | None, accumulate: int,
                        extra: list[GradientTransform] | None, callbacks: list[Callback]) -> list[GradientTransform]:
    """The gradient stage `fit` builds: accumulation, then `extra` (e.g. a cross-process average), clipping, hooks;
    in front of them, where there are any, the callbacks' ``on_backward`` (without them `_epoch_steps` calls it)."""
    transforms: list[GradientTransform] = []
    if check.positive_int("accumulate", accumulate) > 1:
        transforms.append(Accumulate(accumulate))
    for t in extra or []:
        if not isinstance(t, GradientTransform):
            raise TypeError("gradient_transforms entries must be nnx.training.GradientTransform, "
                            f"got {type(t).__name__}")
        transforms.append(t)
    if clip_norm is not None:
        transforms.append(ClipByNorm(clip_norm))
    if clip_value is not None:
        transforms.append(ClipByValue(clip_value))
    hook = CallbackHook(callbacks)
    if hook.active():
        transforms.append(hook)
    look = CallbackLook(callbacks)
    if transforms and look.active():
        transforms.insert(0, look)
    return transforms


def _callbacks(callbacks: Any, verbose: int, epochs: int) -> list[Callback]:
    """The fit's callbacks as one flat list (a `CallbackList`, given or inside the list, gives its members), with
    the progress bar `verbose` asks for."""
    if isinstance(callbacks, CallbackList):  # Keras's fit takes one too
        callbacks = callbacks.callbacks
    try:
        cbs = list(callbacks or [])
    except TypeError:
        raise TypeError(f"callbacks must be a list of nnx.callbacks.Callback, got {type(callbacks).__name__}") from None
    cbs = CallbackList(cbs).callbacks  # checked and flat, before the gradient stage and the plan read them
    if verbose and not any(isinstance(cb, ProgressBar) for cb in cbs):
        cbs.append(ProgressBar(epochs))
    return cbs


def fit(model: Model, X: Any, y: Any = None, loss: Any = None, optimizer: Any = None, lr: float | None = None,
        epochs: int = 1, batch_size: int | None = 32, validation_data: Any = None,
        validation_split: float = 0.0, metrics: Any = None, callbacks: Any = None, verbose: int = 0,
        shuffle: bool = True, check_finite: bool = True, sample_weight: Any = None,
        class_weight: dict | None = None, clip_norm: float | None = None, clip_value: float | None = None,
        accumulate: int = 1, gradient_transforms: list[GradientTransform] | None = None,
        steps_per_epoch: int | None = None, validation_steps: int | None = None, prefetch: Any = True,
        distributed: Any = None, chunk_batches: int | None = None, validation_freq: int = 1) -> History:
    """Mini-batch training; returns a `History` of per-epoch loss and metrics.

    Args:
        model: the model to train (``self`` when called as ``model.fit(...)``).
        X, y: training data (NumPy or this backend's arrays); y as class indices or one-hot for
            cross-entropy, else shaped like the outputs ((n,) is accepted for one output).
        loss: a `Loss` or name; None reuses the last one, or picks bce/cross-entropy/mse
            from the output layer.
        optimizer: an `Optimizer` or name (default "adam"); None, or a name matching the model's
            current optimizer, continues with its state (a name with another `lr` makes a new one).
        lr: learning rate for an optimizer created by name, or a new rate for the one passed or kept
            (a learning-rate schedule then decays from it).
        epochs: epochs to run in this call (counting continues in `epochs_trained`).
        batch_size: samples per step; None for full batch. With X an iterable of batches, each step trains
            on a batch as it comes; `batch_size` then sets only the batches of array `validation_data`.
        validation_data: (X_val, y_val) or (X_val, y_val, sample_weight) evaluated after each epoch, in
            batches of `batch_size` rows.
        validation_split: fraction in [0, 1) of the data (taken from the end) held out instead; as in Keras,
            the first ``floor(n * (1 - validation_split))`` rows train.
        metrics: names among `nnx.metrics.METRICS`, or (name, function) pairs; unweighted (sample_weight
            and class_weight weigh the loss only, as Keras's ``metrics=``).
        callbacks: `nnx.callbacks.Callback` instances.
        verbose: 1 prints loss and metrics each epoch; 2 also says how the epochs run (`History.execution_mode`).
        shuffle: reshuffle every epoch with the model's host RNG (same batches on every backend); a memmap or
            other host array-like too. An iterable of batches is read in its own order, as Keras ignores
            shuffle for generators: shuffle in it (a torch ``DataLoader(..., shuffle=True)``).
        check_finite: refuse data holding NaN/inf with a ValueError naming it, and a step whose loss or
            gradients are NaN/inf, before it is applied, with FloatingPointError naming epoch and batch.
        sample_weight: per-sample weights (n,): each batch's loss is sum(w * per-sample loss) / rows,
            as in Keras.
        class_weight: {class index: weight}, multiplied into the sample weights.
        clip_norm: clip the gradients' global L2 norm to this value before each update.
        clip_value: clip every gradient element into [-clip_value, clip_value].
        accumulate: update once every `accumulate` batches with their row-weighted mean gradient
            (weighted by their sums of weights under ``mean_with_sample_weight``), the same as
            batches `accumulate` times larger.
        gradient_transforms: extra `nnx.training.GradientTransform` stages, run after accumulation
            and before clipping (distributed training adds its all-reduce here).
        steps_per_epoch: with X an iterable of (X, y[, sample_weight]) batches (y None): batches per
            epoch; the next epoch continues where it stopped (as Keras reads a dataset), and a list or
            other re-iterable starts a new pass once one has ended.
            X may also be a `np.memmap` or array-like read batch by batch (h5py, ...).
        validation_steps: batches per validation pass when validation_data is an iterable of batches.
        prefetch: prepare the next batch from a memmap or iterable in a background thread while
            the step runs (True, False, or how many batches ahead).
        distributed: a communicator from `nnx.distributed.init()`: data-parallel training where
            `batch_size` is the global batch, each rank computes its slice and gradients are
            averaged; equal to single-process training up to rounding (docs/distributed.md).
            ``nnx.distributed.DataParallel(comm, shard_update=True)`` also shards the optimizer
            update across the ranks (ZeRO-1).
        chunk_batches: on a backend with a compiler, batches per compiled program when the data is
            read batch by batch (memmap, iterable); default from a memory budget (docs/training.md).
        validation_freq: validate after every `validation_freq`-th epoch only, counted as `epochs_trained`
            counts (across fits), as Keras's ``validation_freq`` counts from ``initial_epoch``: the epochs
            between log no ``val_`` values, and callbacks monitoring one skip them.
    """
    require_forward_run(model, "fit")  # it trains through forward_to_head, as predict and evaluate run
    require_own_arrays(model)  # a tied or hand-made array: numbers nothing trains
    require_untraced(model, "fit", X, y, sample_weight)
    require_backend_state(model, "fit")  # p.value = np.load(...) on a torch model: named here, not deep in a layer
    loss_fn = model.resolve_loss(loss)
    look_at_outputs = check_loss_fits(model, loss_fn)  # a loss that cannot fit the outputs is refused up front
    metric_fns = resolve_metrics(metrics, loss_fn)
    validation_split, validation_freq, shuffle, check_finite, depth = _checked_arguments(
        epochs, verbose, chunk_batches, batch_size, validation_split, steps_per_epoch, validation_steps,
        validation_freq, validation_data, shuffle, check_finite, prefetch)
    require_valid_settings(model)  # a BatchNorm momentum set to 1.5 since construction is refused before any step
    # a data frame's column names, kept from the first fit on one, are what later data frames are checked against
    # (validation data included); a fit refused while reading its data keeps none
    recorded = model.feature_names_in_ is None and column_names(X) is not None
    if recorded:
        model.feature_names_in_ = column_names(X)
    try:
        batches, val_rows, validation_data, look_at_outputs = training_source(
            model, X, y, sample_weight, class_weight, loss_fn, batch_size, shuffle, validation_split,
            validation_data, steps_per_epoch, depth, look_at_outputs, check_finite)
    except BaseException:
        if recorded:
            model.feature_names_in_ = None
        raise
    dp = _data_parallel(model, distributed)
    if dp is not None:
        batches = dp.shard(batches)  # batch_size is the global batch; this rank computes its slice
    val = None  # () -> the validation logs
    if val_rows is not None:
        val = lambda: evaluate_batches(model, val_rows, loss_fn, metric_fns)  # noqa: E731
    elif validation_data is not None:
        val = validation_source(model, validation_data, validation_steps, batch_size, loss_fn, metric_fns, depth,
                                check_finite)
    model.loss = loss_fn
    opt = model.optimizer = model.resolve_optimizer(optimizer, lr)
    verbose = verbose if dp is None or dp.is_root else 0  # every rank would print the same: rank 0 prints
    cbs = _callbacks(callbacks, verbose, epochs)
    extra = gradient_transforms if dp is None else [dp.transform, *(gradient_transforms or [])]
    transforms = build_transforms(clip_norm, clip_value, accumulate, extra, cbs)
    cb = CallbackList(cbs)
    cb.set_model(model)
    history = model.history = History()
    model.stop_training = False
    step = TrainStep(model, loss_fn, opt, transforms, check_finite) if dp is None else \
        dp.train_step(loss_fn, opt, transforms, check_finite)
    history.execution = step.execution
    program = plan(history, step, batches, cbs, dp, chunk_batches, verbose)  # whole epochs as programs, or None
    planned = history.execution_mode, history.execution_reason  # (an epoch run otherwise says so in `history`)
    failing = swapped = False
    last_logs: dict[str, Any] = {}  # the last epoch's logs, which on_train_end gets, as in Keras
    guard = InterruptGuard().install()  # Ctrl-C never lands between two parameters' updates
    fitting = fit_started(model)  # another thread's predict must not trace while the steps read the parameters
    try:
        if dp is not None:
            dp.begin(epochs, validation_data if val_rows is None else None, list(metric_fns), validation_steps)
        # "metrics", "validation" and "added" let callbacks reject a monitored name never logged, up front
        hooks = hooks_of(cbs)
        cb.on_train_begin({"epochs": epochs, "steps": batches.steps, "metrics": list(metric_fns),
                           "validation": val is not None, "added": added_names(cbs)})
        compiled = program is not None
        looked = any(isinstance(t, CallbackLook) for t in transforms)  # on_backward called as the stage's first
        staged = frozenset({"on_gradients", "on_backward"} if looked else {"on_gradients"})
        skipped = hooks_skipped(cbs, hooks, compiled, staged)
        if dp is not None:
            # one rank's refusal alone would leave the others waiting in the first collective; a callback handling
            # non-finite steps on some ranks alone would pair other collectives up at every step
            dp.agree("in on_train_begin", {"per-batch hooks set too late to be called": skipped,
                                           "whether a callback handles non-finite steps": _handles_non_finite(cbs)})
        refuse_skipped_hooks(skipped, compiled)
        # batches read one by one are looked at in the first step, before it is applied; with several
        # ranks each sees another slice and a one-sided refusal would leave the others waiting, so not there
        look_at_outputs = look_at_outputs and dp is None
        for run in range(epochs):
            check_loss = loss_fn if look_at_outputs else None
            step.wake()
            if program is not None and program.awake():
                history.execution, (history.execution_mode, history.execution_reason) = "compiled", planned
                logs = program.run_epoch(
                    step, batches, cb, guard, metric_fns, check_loss, _non_finite,
                    lambda c, src, check=None: _run_epoch(model, step, src, c, guard, metric_fns, dp, check), history)
            else:
                logs = _run_epoch(model, step, batches, cb, guard, metric_fns, dp, check_loss)
                history.execution = step.execution  # what the steps proved (a rule's state unsuited to flat buffers)
                if dp is not None:  # (the passes' program given up for code that cannot be traced, or resting)
                    history.execution_reason = distributed_reason(step)
                elif step.resting is not None or program is not None and program.step.resting:
                    history.execution_mode, history.execution_reason = "step", RESTING
            count_still(model, opt)  # (resting programs: a later fit's optimizer counts its updates from 0)
            look_at_outputs = False
            epoch = model.epochs_trained
            if val is not None and (epoch + 1) % validation_freq == 0:
                val_logs = val() if dp is None else dp.agree_on_validation(epoch, val())
                logs.update({f"val_{k}": v for k, v in val_logs.items()})
            model.epochs_trained += 1
            cb.on_epoch_end(epoch, logs)
            swapped = swapped or _swapped_in_fit(model, loss_fn, opt)
            history.append(epoch, logs)  # after the callbacks, so what they add (e.g. "lr") is recorded
            last_logs = logs
            if dp is not None:
                # every rank stops together, at one rate; and runs one kind of step in an epoch still to come
                more = run + 1 < epochs and not model.stop_training
                dp.end_of_epoch(epoch, _handles_non_finite(cbs) if more else None)
            if model.stop_training:
                break
    except KeyboardInterrupt:
        # Ctrl-C between steps: the weights are those of the last finished update; hand back what we have.
        step.reset()
        history.interrupted = True
    except BaseException:
        step.reset()
        failing = True
        raise
    finally:
        model.history = history  # a fit a callback ran inside this one (its epochs are counted) set its own
        fit_ended(model, fitting)
        guard.uninstall()
        if dp is not None:
            dp.end()
        _train_end(cb, history, failing, last_logs)
    return history


def _handles_non_finite(callbacks: list[Callback]) -> bool:
    """Whether a callback takes non-finite steps itself: each step then runs other collectives across ranks."""
    return any(getattr(cb, "handles_non_finite", False) for cb in callbacks)


def _checked_arguments(epochs: Any, verbose: Any, chunk_batches: Any, batch_size: Any, validation_split: float,
                       steps_per_epoch: Any, validation_steps: Any, validation_freq: Any, validation_data: Any,
                       shuffle: Any, check_finite: Any, prefetch: Any) -> tuple[float, int, bool, bool, int]:
    """`fit`'s settings checked before anything is read, each refused by name: (validation_split as a fraction,
    validation_freq, shuffle, check_finite, the prefetch depth)."""
    check.integer("epochs", epochs, low=0)
    check.integer("verbose", int(verbose) if isinstance(verbose, bool) else verbose, low=0)
    if chunk_batches is not None:
        check.positive_int("chunk_batches", chunk_batches)
    if batch_size is not None:
        check.positive_int("batch_size", batch_size)
    if not (isinstance(validation_split, numbers.Real) and 0.0 <= validation_split < 1.0):  # NumPy floats too
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    validation_split = _as_fraction(validation_split)
    for name, value in (("steps_per_epoch", steps_per_epoch), ("validation_steps", validation_steps)):
        if value is not None:
            check.positive_int(name, value)
    validation_freq = check.positive_int("validation_freq", validation_freq)
    if validation_freq != 1 and validation_data is None and not validation_split:
        raise ValueError(f"validation_freq={validation_freq} was given but no validation_data or validation_split: "
                         "it says after which epochs to validate")
    if validation_steps is not None and validation_data is None:
        # no pass would read it (Keras ignores it too); a validation_data forgotten must not pass unnoticed
        held_out = " (validation_split holds out arrays, read in full)" if validation_split else ""
        raise ValueError(f"validation_steps={validation_steps} was given but no validation_data{held_out}: it is "
                         "the number of batches read from validation_data given as an iterable of batches")
    # a string is a mistake (Keras's shuffle="batch" is not supported), not a truthy flag
    shuffle, check_finite = check.flag("shuffle", shuffle), check.flag("check_finite", check_finite)
    depth = prefetch_depth(prefetch)
    return validation_split, validation_freq, shuffle, check_finite, depth


def _swapped_in_fit(model: Model, loss_fn: Any, opt: Any) -> bool:
    """Whether a callback (or a fit it ran) rebound ``model.loss`` or ``model.optimizer`` in this fit, which the steps
    (and their recorded or compiled programs) hold from its start: warned once, as the change takes effect only at
    the next fit. Read once an epoch, outside the steps."""
    held = (("loss", loss_fn), ("optimizer", opt))
    names = [f"model.{name}" for name, value in held if getattr(model, name) is not value]
    if names:
        warnings.warn(f"{' and '.join(names)} was set while fit was running (by a callback?): this fit goes on "
                      "training with the one it started with, and the new one is used from the next call to fit. To "
                      "switch mid-training, set model.stop_training = True and call fit again (fit(loss=..., "
                      "optimizer=...)); to change the learning rate of the running fit, set model.optimizer.lr",
                      RuntimeWarning, stacklevel=3)
    return bool(names)


def _as_fraction(value: numbers.Real) -> float:
    """`value` as the Python float of the decimal it prints as: NumPy's float32 0.2 widened is 0.20000000298, and
    the split of 20 rows then holds out 5 (floor(20 * 0.79999999702) = 15 train), where 0.2 (and Keras, computing
    in float32) holds out 4. A Python float or a float64 prints as itself, so it is unchanged."""
    try:
        return float(str(value))
    except ValueError:  # a Fraction prints as "1/5"
        return float(value)


def _train_end(cb: CallbackList, history: History, failing: bool, last_logs: dict[str, Any]) -> None:
    """Every callback's on_train_end, given the last epoch's logs with the history and whether fit is failing;
    when it is, a callback's error must not hide fit's."""
    try:
        cb.on_train_end({**last_logs, "history": history, "failed": failing})
    except Exception as exc:
        if not failing:
            raise
        # fit's own error is on its way out and stays the one the caller sees; this one is reported beside it
        warnings.warn(f"a callback's on_train_end failed while fit was stopping on an error: {exc!r}",
                      RuntimeWarning, stacklevel=3)


def _data_parallel(model: Any, distributed: Any) -> Any:
    """The data-parallel parts of this fit for communicator `distributed` (None alone or without one)."""
    model.distributed = None
    if distributed is None:
        return None
    dp = model.data_parallel(distributed)  # checks the type, also for a single process
    if dp.comm.engine == "single":
        return None  # (a world of one on a real engine still runs its collectives: the GPU check uses that)
    model.distributed = dp.comm  # rank 0 writes the checkpoints (nnx.io.save_model)
    return dp


def _run_epoch(model: Model, step: TrainStep, batches: Any, cb: CallbackList, guard: InterruptGuard,
               metric_fns: dict, dp: Any = None, check_loss: Any = None) -> dict[str, float]:
    """One pass over the batches; returns the epoch's logs (mean loss weighted by `batch_weight`, metrics).

    With `check_loss` (a `Loss`), the first batch's outputs are checked to fit it before the first step.
    """
    with contextlib.closing(batches.epoch()) as source:  # closing stops a prefetch thread on any way out
        try:
            return _epoch_steps(model, step, source, cb, guard, metric_fns, dp, check_loss,
                                getattr(batches, "library_only", False))
        except BaseException as exc:
            # Reading a batch failed (or Ctrl-C landed) mid-epoch. A check deferred on the device may hold a step
            # refused before that: the run's first failure, which a check read at every step raises when it
            # happens; reading it also puts the optimizer's counters back to the weights kept.
            refused = step.end_epoch() if dp is None and not isinstance(exc, NonFiniteStep) else None
            if refused is not None:
                raise _non_finite(model.epochs_trained, refused) from exc
            raise


def _look(cb: CallbackList, step: TrainStep, compiled: bool) -> None:
    """The callbacks' ``on_backward``. After a compiled step, which has applied the update already, a gradient
    rebound there (the only change JAX's immutable arrays allow) is refused: elsewhere it changes the update,
    and is checked against its parameter now (the flat update gathers the gradients of nnx's own layers
    unchecked, and a transposed one of the same size would pass its concatenation)."""
    params = step.params
    grads = [p.grad for p in params]
    cb.on_backward()
    changed = [p.name for p, g in zip(params, grads, strict=True) if p.grad is not g]
    if changed and not compiled:
        step.optimizer.check_grads()
    elif changed:
        raise RuntimeError(
            f"a callback's on_backward rebound the gradient of {', '.join(map(repr, changed))}, but this fit runs "
            "each step as one compiled program, which has applied the update already; on_backward is only to "
            "look: change gradients with on_gradients (it returns replacements) or a gradient transform")


def _epoch_steps(model: Model, step: TrainStep, source: Any, cb: CallbackList, guard: InterruptGuard,
                 metric_fns: dict, dp: Any = None, check_loss: Any = None,
                 library_only: bool = False) -> dict[str, float]:
    """The epoch's steps over `source`; `library_only`: reading a batch from it runs none of the user's code."""
    xp = model.xp
    handles_non_finite = any(getattr(c, "handles_non_finite", False) for c in cb.callbacks)
    batch_begin, batch_end = cb.uses("on_batch_begin"), cb.uses("on_batch_end")
    # without gradient transforms, p.grad after the step is the batch's gradient: on_backward is called here
    # (with them, `CallbackLook` calls it before the first, and the step may still be one compiled program)
    look = cb.uses("on_backward") and not any(isinstance(t, CallbackLook) for t in step.transforms)
    # with no per-batch hook, no gradient transform, batches the library reads itself and the optimizer's step
    # nnx's (an overridden one runs after each update, and may set a layer's setting), no code of the user's runs
    # between two steps of this epoch: each after the first follows its last back to back
    unobserved = library_only and dp is None and not (batch_begin or batch_end or look or step.transforms) \
        and own_step(step.optimizer)
    epoch = model.epochs_trained
    cb.on_epoch_begin(epoch, {})
    if not step.penalized:
        # a callback may have added a regularizer (a penalty turned on after a warm-up): the backward applies its
        # gradient, so the reported loss includes it, as a compiled epoch's does (looked at again before each
        # step that a per-batch hook may have changed it for)
        step.penalized = model.penalizes()
    losses, weights, outputs, targets = [], [], [], []
    for b, (Xb, yb, wb) in enumerate(source):
        size = int(Xb.shape[0]) if dp is None else dp.local_rows  # rows of this rank's slice (0: a placeholder)
        # what the batch (this rank's slice) counts for
        weight = batch_weight(xp, step.head, size, wb) if dp is None else dp.local_weight
        if check_loss is not None and b == 0:
            check_outputs(model, check_loss, model.forward_to_head(Xb, len(model.layers), training=False))
        if batch_begin:
            cb.on_batch_begin(b, {"size": size})
        if (batch_begin or batch_end) and not step.penalized:
            step.penalized = model.penalizes()  # (before the passes are recorded, which hold it)
        # every stage in one compiled call, which updates only a finite step; read each batch, since a first
        # trace that fails runs that batch's stages plainly and leaves the rest of the fit to them
        compiled = step.compiled is not None
        applied = False  # whether the update is done (one compiled call, or a replay back to back)
        if compiled:
            guard.in_step = True
            value, Z, finite = step.run_compiled(Xb, yb, wb, read_check=handles_non_finite)
            guard.end_step()
            # a first trace refused ran only this batch's forward and backward plainly: its transforms and
            # update are still to run below, as a plain step's (else the batch's update was dropped)
            compiled = applied = step.compiled is not None
        else:
            step.back_to_back = unobserved and b > 0
            # every stage in one call where the last step's update ran flat (and on NumPy, its recording holds)
            whole = step.run_back_to_back(Xb, yb, wb, read_check=handles_non_finite, guard=guard) \
                if step.back_to_back else None
            if whole:
                value, Z, finite, applied = whole
            else:
                value, Z = step.forward_loss(Xb, yb, wb)
                step.backward()
                finite = step.check(value, read=handles_non_finite)
        if look:
            _look(cb, step, compiled)
        due = False
        if dp is not None and step.check_finite and handles_non_finite:
            # the callback stops at the first step not finite on any rank, also while accumulating (no all-reduce
            # until the update): every rank hears of it now, with one number, and stops at this batch
            finite = not dp.anywhere(not finite)
            if finite:
                due = step.transform(weight)
                finite = not due or dp.gradients_finite(step)
        elif dp is not None and step.check_finite:
            # one collective per step: a rank's non-finite step poisons the gradient all-reduce, and
            # every rank then refuses the update (and raises) together
            if not finite:
                dp.poison(b)
            elif step.deferred:
                dp.poison_unless(step.verdict)
            due = step.transform(weight)
            finite = not due or dp.gradients_finite(step)
        elif finite and not applied:
            due = step.transform(weight)
        if not finite and handles_non_finite:
            # a callback that stops on NaN (TerminateOnNaN) sees the bad loss; nothing is updated
            step.reset()
            losses.append(value)
            weights.append(weight)
            cb.on_batch_end(b, {"loss": value, "size": size})
            model.stop_training = True
            break
        if not finite:
            raise _non_finite(epoch, b if dp is None else dp.first_refused(b))
        if due:
            guard.in_step = True
            step.update()
            guard.end_step()
        losses.append(value)
        weights.append(weight)
        if metric_fns:
            outputs.append(Z if size else None)
            targets.append(yb if size else None)
        if batch_end:
            cb.on_batch_end(b, {"loss": value, "size": size})
        if dp is not None and handles_non_finite and not step.check_finite:
            # unchecked, TerminateOnNaN stops on its own rank's loss: every rank stops after this batch
            model.stop_training = dp.anywhere(bool(model.stop_training))
        if model.stop_training:
            break  # a callback (e.g. TerminateOnNaN) stops mid-epoch
    step.back_to_back = False
    if step.flush():
        if dp is not None and step.check_finite and not dp.gradients_finite(step):
            raise _non_finite(epoch, dp.first_refused(len(losses) - 1))
        guard.in_step = True
        step.update()
        guard.end_step()
    refused = step.end_epoch()  # a deferred (on-device) check is read here, once per epoch
    if refused is not None:
        raise _non_finite(epoch, refused)
    values, counts = host_values(model, losses, weights)
    if dp is not None:
        dp.end_epoch()
        return dp.epoch_logs(values, counts, metric_fns, targets, outputs, step.from_logits)
    logs = {"loss": average(values, counts)}
    if metric_fns and not outputs:  # stopped (TerminateOnNaN) at the epoch's first step: no batch to score
        logs.update(dict.fromkeys(metric_fns, math.nan))
    elif metric_fns:
        logs.update(model.metric_values(metric_fns, joined_targets(model, targets), xp.concat(outputs, axis=0),
                                        step.from_logits))
    return logs


def _non_finite(epoch: int, batch: int) -> NonFiniteStep:
    """The error for a refused step, at 0-based `epoch` and `batch`; people read them counted from 1."""
    return NonFiniteStep(
        f"training loss or gradients became NaN or infinite at epoch {epoch + 1}, batch {batch + 1}; the weights "
        "and optimizer state are those after the last finite step. Lower the learning rate, clip the "
        "gradients (clip_norm=...), scale the inputs, or pass check_finite=False to keep going"
    )


