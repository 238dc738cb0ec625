"""The sharded optimizer update across ranks (ZeRO-1): each rank updates its own slice of the parameters.

An all-reduce is a reduce-scatter followed by an all-gather. With ``shard_update=True`` the optimizer's
rule runs between the two, on this rank's contiguous slice of all parameters concatenated:

1. the gradients, each rank's scaled by its share of the global batch, are concatenated (or taken
   as they lie, where the layers wrote them into a flat buffer the update offered: `offer_grads`)
   and reduce-scattered: this rank receives its slice of the global batch's mean gradient;
2. the transforms after the average (clipping) run on the slice (`GradientTransform.apply_flat`;
   a global norm sums one scalar over the ranks), then the finite check (one flag summed over the ranks);
3. the optimizer's ``elementwise`` rule updates the slice of the flat parameter buffer and the same
   slice of each flat state buffer (replayed into them, as the flat update does, where
   `nnx.training.replay` applies);
4. the parameters are all-gathered, so every rank holds all of them again.

The bytes moved are those of one all-reduce; the rule's work is divided by the ranks. The slices
are `rank_rows` of the flat size, so they may be uneven. Every rank keeps full-size state buffers
but updates only its slice of them; the whole state is all-gathered at every epoch's end and before
a refused (non-finite) step is reported, so ``optimizer.state_dict()`` (and a checkpoint) holds the
full state then, and loads on any number of ranks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..elementwise_check import watched
from ..layers.parameter import Parameter
from ..optim import check_rule_result
from ..shape_reads import shape_dependence
from ..training import replay
from ..training.flat import flat_layout, offer_grads, own_step, taken_offer, write_in_place
from ..training.transforms import GradientTransform
from .average import AverageGradients, rank_rows
from .comm import Communicator, offsets


class ShardedUpdate(AverageGradients):
    """The gradient average and the optimizer update of data-parallel training, sharded over the ranks.

    Args:
        comm: the `Communicator` of the ranks.

    `bind` gives it the fit's optimizer and the transforms that follow the average; the training step
    then calls it as its gradient stage (`apply`) and as its update over flat buffers (`applies`,
    `offer_grads`, `gather_grads`, `run`), like `nnx.training.flat.FlatUpdate`.
    """

    execution = "sharded"

    def __init__(self, comm: Communicator) -> None:
        super().__init__(comm)
        self.optimizer: Any = None
        self.backend: Any = None
        self.later: list[GradientTransform] = []
        self.check_finite = True
        self.finite = True  # the last step's verdict, the same on every rank
        self.counts: list[int] = []
        self.start = self.stop = 0
        self.shapes: list[tuple[int, ...]] = []  # the parameters' shapes, and their bounds in the flat buffers
        self.bounds: list[tuple[int, int]] = []
        self.values: Any = None  # the flat parameter buffer the parameters are views of
        self.value_views: list[Any] = []
        self.state: dict[str, Any] | None = None  # flat state buffers the optimizer's state arrays are views of
        self.state_views: list[dict[str, Any]] = []
        self.mutable = True
        self.grad_shard: Any = None  # this step's slice of the averaged, transformed gradient
        self.replay: replay.RuleReplay | None = None  # the rule replayed into the slices (`nnx.training.replay`)
        self.rule_checked = False  # whether the rule ran once on `watched` xp (`nnx.elementwise_check`)
        self.shard: tuple[Any, dict[str, Any]] = (None, {})  # this rank's slices of the value and state buffers
        self._local: Any = None  # this step's own gradients, concatenated
        self._sources: list[Any] = []
        self._offered: tuple[Any, list[Any]] | None = None  # this step's offered gradient buffer and its views
        self._offered_taken: Any = None  # that buffer, once the gradients were found written into it

    def bind(self, optimizer: Any, backend: Any, later: list[GradientTransform], check_finite: bool) -> None:
        """Use `optimizer` (its rule must be elementwise) and run `later` (shardable transforms) on the slice."""
        if not getattr(optimizer, "elementwise", False):
            raise ValueError(f"shard_update=True needs an optimizer whose rule is elementwise; "
                             f"{type(optimizer).__name__} declares elementwise = False. Use "
                             f"DataParallel(comm, shard_update=False) (the all-reduce) for it")
        if not own_step(optimizer):
            # the slices are updated by the rule alone, in place of `Optimizer.step`: a step of the user's would be
            # skipped without a word (a constraint after the update), where the all-reduce runs it as written
            raise ValueError(f"shard_update=True runs the optimizer's rule on each rank's slice in place of "
                             f"Optimizer.step, but the step of {type(optimizer).__name__} is its own (overridden "
                             f"by its class or replaced on the object). Use DataParallel(comm, shard_update=False) "
                             f"(the all-reduce) for it")
        depends = shape_dependence(optimizer)
        if depends is not None:
            raise ValueError(f"shard_update=True runs the optimizer's rule on each rank's slice of all parameters "
                             f"concatenated, but {depends}: there it would see the slice's shape, not a parameter's. "
                             f"Use DataParallel(comm, shard_update=False) (the all-reduce) for it")
        for t in later:
            if not getattr(t, "shardable", False):
                raise ValueError(f"shard_update=True cannot run {type(t).__name__} after the gradient average: "
                                 "it needs every parameter's whole gradient, and each rank holds only its slice "
                                 "(shardable transforms: clip_norm, clip_value). Use shard_update=False with it")
        self.optimizer, self.backend, self.later = optimizer, backend, list(later)
        self.check_finite = check_finite
        self.shapes, self.bounds, size = flat_layout([p.value for p in optimizer.params])
        ranks = [rank_rows(size, r, self.comm.size) for r in range(self.comm.size)]
        self.counts = [b - a for a, b in ranks]
        self.start, self.stop = ranks[self.comm.rank]
        self.values, self.state = None, None
        self.replay = replay.for_update(optimizer, backend, self.stop - self.start)
        self.rule_checked = False

    # -- the gradient stage ---------------------------------------------------------------------
    def apply(self, params: list[Parameter], rows: int) -> bool:
        share = self.take_share()
        if share is None:
            return True
        flat = self.gather_grads()  # gathered once a step: the finite check may have asked first
        owned = self._offered_taken is not flat  # the concatenation, not the buffer the gradients are views of
        self._local, self._sources, self._offered_taken = None, [], None
        if not isinstance(share, float) or share != 1.0:  # a share of the weights is a 0-d array
            if owned:
                flat *= share  # a fresh array: the concatenation
            else:
                flat = flat * share  # leave p.grad (views of the offered buffer) as the backward wrote it
        shard = self.comm.reduce_scatter(flat, self.counts)
        xp = self.backend.xp
        for t in self.later:
            shard = t.apply_flat(xp, shard, self.comm.allreduce)
        self.grad_shard = shard
        self.finite = not self.check_finite or self._all_finite(shard)
        if not self.finite:
            self.gather_state()  # the step is refused on every rank: leave the whole state of the last one
        return True

    def _all_finite(self, shard: Any) -> bool:
        """Whether every rank's slice is finite: a local verdict, one flag summed over the ranks."""
        xp, be = self.backend.xp, self.backend
        ok = math.isfinite(be.to_float(xp.sum(shard))) or bool(be.to_host(xp.all(xp.isfinite(shard))))
        bad = self.comm.allreduce(np.asarray([0.0 if ok else 1.0]))
        return float(bad[0]) == 0.0

    def reset(self) -> None:
        super().reset()
        self.grad_shard, self._local, self._sources, self._offered_taken = None, None, [], None
        self.finite = True

    # -- the update stage (what TrainStep asks of an update over flat buffers) -----------------------
    def applies(self) -> bool:
        """Always: every step of a sharded fit runs here (a missing gradient is an error in `gather_grads`)."""
        return True

    def gather_grads(self) -> Any:
        """This rank's own gradients, concatenated into one fresh flat array (kept while ``p.grad`` stays)."""
        opt = self.optimizer
        grads = [p.grad for p in opt.params]
        if self._local is not None and all(g is s for g, s in zip(grads, self._sources, strict=True)):
            return self._local
        for p, g in zip(opt.params, grads, strict=True):
            if g is None:
                raise ValueError(f"shard_update=True needs a gradient for every parameter; {p.name!r} has none")
        opt.check_grads()
        offered, self._offered = self._offered, None
        self._offered_taken = taken = taken_offer(offered, grads)
        self._local = self.backend.concat_flat(grads) if taken is None else taken
        self._sources = grads
        return self._local

    def offer_grads(self) -> dict[Any, Any] | None:
        """Where this step's own gradients may be written, as `nnx.training.flat.FlatUpdate.offer_grads` offers
        them (from `replay.MIN_ELEMENTS` parameters in all): the reduce-scatter then starts from that buffer."""
        size = self.bounds[-1][1] if self.bounds else 0
        if size < replay.MIN_ELEMENTS or not self.mutable:
            return None
        self._offered = offer_grads(self.optimizer.params, size, self._views, self.backend)
        return None if self._offered is None else dict(zip(self.optimizer.params, self._offered[1], strict=True))

    def run(self, keep: Any = None) -> bool:
        """Apply the rule to this rank's slice and all-gather the parameters; `keep` as in `FlatUpdate.run`."""
        opt, xp = self.optimizer, self.backend.xp
        steps = opt.param_steps
        if any(s != steps[0] for s in steps):
            raise ValueError(f"shard_update=True needs every parameter updated equally often, got {steps}")
        self._layout()
        assert self.state is not None
        t = steps[0] + 1
        opt.step_count += 1  # counted before the rule runs, as `Optimizer.step` counts it
        old_values, old_state = self.shard
        if self.replay is not None and self.mutable and \
                self.replay.apply(old_values, self.grad_shard, old_state, t, opt.lr, keep=keep):
            values, state = self.values, self.state  # the slices were written in place
        else:
            new_values, new_state = opt.update(xp if self.rule_checked else watched(opt, xp, old_values), old_values,
                                               self.grad_shard, old_state, t, opt.lr)
            self.rule_checked = True
            check_rule_result(opt, "this rank's slice of the parameters", old_values, new_values, old_state, new_state)
            if keep is not None:
                new_values = xp.where(keep, new_values, old_values)
                # a key the rule adds (momentum switched on) has no old array: a refused step leaves zeros
                new_state = {k: xp.where(keep, arr, old_state[k] if k in old_state else xp.zeros_like(arr))
                             for k, arr in new_state.items()}
            values = self._put(self.values, new_values)
            # the state's keys are the rule's: a key it adds gets a new flat buffer, one it drops goes
            state = {k: self._put(self.state[k] if k in self.state else xp.zeros_like(self.values), arr)
                     for k, arr in new_state.items()}
        self.grad_shard = None
        values = self.comm.allgather(values, self.counts)
        if values is not self.values or state.keys() != self.state.keys() or \
                any(state[k] is not arr for k, arr in self.state.items()):
            self._install(values, state)  # immutable arrays (JAX): new buffers, new views
        opt.param_steps[:] = [t] * len(opt.param_steps)
        return True

    def gather_state(self) -> None:
        """Every rank's slice of the optimizer state on every rank (a collective: all ranks call it together)."""
        if self.state is None or not self._state_in_place():
            return  # the optimizer's state was replaced since (load_state_dict): it is whole already
        state = {k: self.comm.allgather(arr, self.counts) for k, arr in self.state.items()}
        if any(state[k] is not arr for k, arr in self.state.items()):
            self._install(self.values, state)

    # -- the flat layout ------------------------------------------------------------------------
    def _put(self, flat: Any, part: Any) -> Any:
        """`flat` with this rank's slice replaced by `part` (in place where the arrays are mutable)."""
        a, b = self.start, self.stop
        if self.mutable and write_in_place(flat[a:b], part):
            return flat
        self.mutable = False
        xp = self.backend.xp
        return xp.concat([flat[:a], xp.astype(part, flat.dtype), flat[b:]])

    def _views(self, flat: Any) -> list[Any]:
        return self.backend.split_flat(flat, self.bounds, self.shapes)

    def _install(self, values: Any, state: dict[str, Any]) -> None:
        """Bind the parameters and the optimizer's state to views of these flat buffers."""
        opt = self.optimizer
        if values is not self.values or not self.value_views:
            self.values, self.value_views = values, self._views(values)
            for p, view in zip(opt.params, self.value_views, strict=True):
                p.value = view
        self.state = dict(state)
        a, b = self.start, self.stop
        self.shard = (self.values[a:b], {k: arr[a:b] for k, arr in self.state.items()})
        per_key = {k: self._views(flat) for k, flat in self.state.items()}
        self.state_views = [{k: views[i] for k, views in per_key.items()} for i in range(len(self.shapes))]
        opt.state = {i: dict(views) for i, views in enumerate(self.state_views)}

    def _state_in_place(self) -> bool:
        state = self.optimizer.state
        for i, views in enumerate(self.state_views):
            entry = state.get(i)
            if entry is None or len(entry) != len(views) or any(entry.get(k) is not v for k, v in views.items()):
                return False
        return True

    def _layout(self) -> None:
        """Gather the parameters and the state into flat buffers again where anything was rebound since."""
        opt, xp = self.optimizer, self.backend.xp
        values = self.values
        if values is None or any(p.value is not v for p, v in zip(opt.params, self.value_views, strict=True)):
            dtypes = {str(p.value.dtype) for p in opt.params}
            if len(dtypes) > 1:  # one buffer would promote them all to one dtype silently
                raise ValueError(f"shard_update=True needs parameters of one dtype, to join them into one buffer; "
                                 f"{type(opt).__name__}'s parameters have the dtypes {sorted(dtypes)}. "
                                 "Use shard_update=False")
            values = self.backend.concat_flat([p.value for p in opt.params])
            self.value_views = []
        elif self.state is not None and self._state_in_place():
            return
        n = len(opt.params)
        have = [i for i in range(n) if i in opt.state]
        # made parameter by parameter, as the plain loop makes them (joined, `init_state` would see the joined shape)
        states = [opt.init_state(xp, p.value) for p in opt.params] if not have else \
            [opt.state[i] for i in range(n)] if len(have) == n else None
        if states is not None and len({tuple(state) for state in states}) == 1:
            for state, p in zip(states, opt.params, strict=True):
                self._require_shaped(state, tuple(p.value.shape), repr(p.name))
            state = {k: self.backend.concat_flat([states[i][k] for i in range(n)]) for k in states[0]}
        elif states is not None and not have:
            raise ValueError(f"shard_update=True needs an optimizer whose state holds the same arrays for every "
                             f"parameter, to join them; {type(opt).__name__}.init_state makes other keys for some. "
                             "Use shard_update=False")
        else:
            raise ValueError("shard_update=True needs optimizer state for every parameter or for none; "
                             f"this optimizer has state for parameters {have} of {n}")
        self._install(values, state)

    def _require_shaped(self, state: dict[str, Any], shape: tuple[int, ...], of: str) -> None:
        """ValueError unless every state array has `shape`, its parameters' (`init_state`'s promise): a 0-d count
        cannot be cut into the ranks' slices."""
        for key, arr in state.items():
            got = getattr(arr, "shape", None)
            if got is None or tuple(int(d) for d in got) != shape:
                raise ValueError(f"shard_update=True needs an optimizer whose state is shaped like the parameters, "
                                 f"to cut it into the ranks' slices; {type(self.optimizer).__name__}'s state {key!r} "
                                 f"for {of} has shape {None if got is None else tuple(got)}, not {shape}. "
                                 "Use shard_update=False, or keep such a value as a hyper-parameter")

    def __repr__(self) -> str:
        return f"ShardedUpdate({self.comm!r}, slices={self.counts}, offsets={offsets(self.counts)})"
