"""NumPy operations noted as they run, then written out as one straight-line function to run again.

A `Tape` wraps arrays in `Noted` stand-ins (`Tape.note`). Each holds its real array, and
every operation that reaches one (a Python operator, a method, an array attribute such as
``.T``, a NumPy ufunc or function through ``__array_ufunc__`` / ``__array_function__``, so
every ``xp`` call) runs at once on the real arrays and is noted. The code being recorded
therefore runs exactly as it would have, with the same results. `Tape.compile` then writes
the notes out as Python source: one line per operation, the same calls in the same order
on the same kinds of operands, so the same bits. Where a ufunc, ``dot`` or ``sum`` made a
new array that does not leave the function, the line writes it into a buffer allocated once
(``out=``) instead; results that do leave (the outputs, and whatever they are views of) are
new arrays on every call, or are written where the caller says (`Tape.compile`'s
``destinations``).

The function is the recorded code only while nothing that code did depended on the values:
reading an array's value in Python (``bool``, ``float``, ``item``, printing), converting one
to a plain array, or writing into an array that came neither from the inputs nor from the
operations makes `Tape.refusal` say why (the recorded run itself is still right). What the
code reads besides the arrays (settings, shapes) is the caller's to watch.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

__all__ = ["Noted", "Tape", "real"]

# Attributes that describe an array without its values: read from the real array, not noted. A branch on one of
# them holds for every call whose inputs match the recorded ones in shape, dtype and strides (the caller's check).
METADATA = frozenset({"shape", "dtype", "ndim", "size", "strides", "itemsize", "nbytes", "flags", "device"})
# Methods that describe an array without its values (the namespace it belongs to): called on the real array.
METADATA_METHODS = frozenset({"__array_namespace__"})
# Array-valued attributes: a view or a new array, noted like an operation.
ARRAY_ATTRIBUTES = frozenset({"T", "mT", "real", "imag"})
# Methods whose fresh result may be written into a given buffer when replayed (``out=``).
OUT_METHODS = frozenset({"dot", "sum"})
# The ufunc each Python operator calls on ndarrays (``a + b`` is ``np.add(a, b)``), used to replay one into a
# buffer. ``**`` has none: NumPy turns ``x ** 2`` into ``square`` and ``x ** 0.5`` into ``sqrt``, so it runs as written.
BINARY = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "//": np.floor_divide,
          "%": np.remainder, "@": np.matmul, "&": np.bitwise_and, "|": np.bitwise_or, "^": np.bitwise_xor,
          "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal, "==": np.equal,
          "!=": np.not_equal}
IN_PLACE = {"+": operator.iadd, "-": operator.isub, "*": operator.imul, "/": operator.itruediv,
            "//": operator.ifloordiv, "%": operator.imod, "**": operator.ipow, "@": operator.imatmul,
            "&": operator.iand, "|": operator.ior, "^": operator.ixor}


class _Ref:
    """An argument that is a node of the tape (rendered as its variable)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


class _Op:
    """One noted operation: a line of the replayed function.

    The line is ``call(*args, **kwargs)``, or ``args[0].method(*args[1:], **kwargs)``, or `text`
    (a Python operator, ``"{0} + {1}"``) filled with the rendered arguments. `result` is the node
    it makes (None for a line run for its effect). `out_call`, where set, may write a fresh result
    into a given buffer instead, as ``out_call(*args, **kwargs, out=buffer)`` (for a method:
    the method with ``out=``). `reads` are the nodes among the arguments.
    """

    __slots__ = ("call", "method", "args", "kwargs", "result", "out_call", "reads", "text")

    def __init__(self, call: Any, method: str | None, args: tuple, kwargs: dict, result: int | None,
                 out_call: Any, reads: tuple[int, ...], text: str | None) -> None:
        self.call, self.method, self.args, self.kwargs, self.result = call, method, args, kwargs, result
        self.out_call, self.reads, self.text = out_call, reads, text


class Tape:
    """The operations run on `Noted` arrays since the tape was made (see the module docstring).

    Args:
        where: the namespace's ``where``, replayed where the code reached ``np.where`` (NumPy's adapter has an
            equal, faster select for large arrays; the code called it through ``xp``).
        where_is_plain: whether the namespace's ``where`` is ``np.where`` itself for a recorded condition (NumPy's:
            one under its bitwise select's size), so that the line calls ``np.where`` without the detour.

    Attributes:
        refusal: why the recorded code cannot be replayed, in words; None while it can.
    """

    def __init__(self, where: Any = None, where_is_plain: Any = None) -> None:
        self._where, self._where_is_plain = where, where_is_plain
        self.refusal: str | None = None
        self.arrays: list[Any] = []  # each node's real array (or NumPy scalar) as recorded
        self.n_inputs = 0
        self.ops: list[_Op] = []

    # -- recording ------------------------------------------------------------------------------
    def note(self, array: Any) -> Noted:
        """`array` as an input of the function (inputs are noted first, in the order the function takes them)."""
        if self.ops:
            raise RuntimeError("a tape's inputs are noted before any operation")
        self.n_inputs += 1
        return self._node(array)

    def refuse(self, why: str) -> None:
        """Mark the tape unreplayable (the first reason is kept)."""
        if self.refusal is None:
            self.refusal = why

    def _node(self, array: Any) -> Noted:
        self.arrays.append(array)
        return Noted(self, len(self.arrays) - 1, array)

    def _arg(self, x: Any, written: bool = False) -> Any:
        """An operand as the tape keeps it: a node's `_Ref`, a container of them, or the object itself (a plain
        array the code read, such as a table a layer keeps, is read each call as it stands then)."""
        if type(x) is Noted:
            if x.tape is not self:
                self.refuse("an array recorded by another tape")
            return _Ref(x.index)
        if type(x) in (tuple, list):
            return type(x)(self._arg(item, written) for item in x)
        if type(x) is dict:
            return {k: self._arg(v, written) for k, v in x.items()}
        if written and isinstance(x, np.ndarray):
            self.refuse("a write into an array that is neither an input nor a result of the recorded code")
        return x

    def record(self, call: Any, args: tuple, kwargs: dict, out_call: Any = None, text: str | None = None,
               method: str | None = None) -> Any:
        """Run ``call(*args, **kwargs)`` on the real arrays and note it; returns the result as the code sees it.

        `out_call` may compute a fresh result into a buffer (``out=``) when replayed; `text` renders a Python
        operator (``"{0} + {1}"``); `method` names the method of ``args[0]`` that `call` calls.
        """
        result = call(*real(args), **real(kwargs))
        written = "out" in kwargs
        refs = self._arg(args)
        ref_kwargs = {k: self._arg(v, written=k == "out") for k, v in kwargs.items()}
        reads = (*_refs(args), *_refs(kwargs))
        if result is None:
            self.ops.append(_Op(call, method, refs, ref_kwargs, None, None, reads, text))
            return None
        if not isinstance(result, (np.ndarray, np.generic)):
            self.refuse(f"a value read in Python ({type(result).__name__} from {_name(call, method)})")
            return result
        for i in reads:  # the code got back an array it gave (``out=``, ``+=``): the same node, a new line
            if self.arrays[i] is result:
                self.ops.append(_Op(call, method, refs, ref_kwargs, i, None, reads, text))
                return Noted(self, i, result)
        node = self._node(result)
        fresh = type(result) is np.ndarray and result.ndim >= 1 and result.base is None and not written
        self.ops.append(_Op(call, method, refs, ref_kwargs, node.index, out_call if fresh else None, reads, text))
        return node

    # -- the replayed function ------------------------------------------------------------------------
    def compile(self, outputs: list[Any], destinations: tuple[int, ...] = (),
                max_scratch_bytes: int | None = None) -> Any:
        """The recorded code as a function of the inputs that returns the nodes `outputs` (each a `Noted` of this
        tape, or None) as a list. `destinations` (positions in `outputs`) are written into arrays the caller
        passes after the inputs, one per position, where the line making them takes ``out=`` (elsewhere the
        caller gets a new array). ValueError where the tape was refused, or where its buffers would hold more
        than `max_scratch_bytes`."""
        if self.refusal is not None:
            raise ValueError(f"the recorded code cannot be replayed: {self.refusal}")
        if any(x is not None and (type(x) is not Noted or x.tape is not self) for x in outputs):
            raise ValueError("an output that is not an array the recorded code made")
        out_nodes = [None if x is None else x.index for x in outputs]
        escaping = self._escaping([i for i in out_nodes if i is not None])
        scratch = sum(self.arrays[i].nbytes for i in [op.result for op in self.ops if op.out_call is not None]
                      if i is not None and i not in escaping)
        if max_scratch_bytes is not None and scratch > max_scratch_bytes:
            raise ValueError(f"its buffers would hold {scratch} bytes (at most {max_scratch_bytes})")
        given = {out_nodes[k]: n for n, k in enumerate(destinations) if out_nodes[k] is not None}
        names: dict[str, Any] = {}

        def named(obj: Any, prefix: str) -> str:
            key = f"{prefix}{len(names)}"
            names[key] = obj
            return key

        def render(x: Any) -> str:
            if type(x) is _Ref:
                return f"v{x.index}"
            if type(x) is tuple:
                return "(" + "".join(render(item) + ", " for item in x) + ")"
            if type(x) is list:
                return "[" + ", ".join(render(item) for item in x) + "]"
            if type(x) is dict:
                return "{" + ", ".join(f"{named(k, 'k')}: {render(v)}" for k, v in x.items()) + "}"
            return named(x, "c")

        lines = []
        for op in self.ops:
            args = [render(a) for a in op.args]
            kwargs = [f"{k}={render(v)}" for k, v in op.kwargs.items()]
            target, call = op.result, op.call
            if op.out_call is not None and target in given:
                kwargs.append(f"out=d{given[target]}")
                call = op.out_call
            elif op.out_call is not None and target is not None and target not in escaping:
                kwargs.append(f"out={named(np.empty_like(self.arrays[target]), 's')}")
                call = op.out_call
            elif op.text is not None:
                call = None
            if call is None:
                assert op.text is not None
                expression = op.text.format(*args)
            elif op.method is not None and call is op.call:
                expression = f"{args[0]}.{op.method}({', '.join(args[1:] + kwargs)})"
            elif call is np.reshape and len(op.args) == 2 and self._is_array(op.args[0]) and \
                    op.kwargs.keys() <= {"order"}:
                # the function calls the array's method with these arguments: 0.8 against 0.2 us a call
                expression = f"{args[0]}.reshape({', '.join(args[1:] + kwargs)})"
            else:
                if call is np.where and self._where is not None and not self._plain_where(op.args[0]):
                    call = self._where
                expression = f"{named(call, 'f')}({', '.join(args + kwargs)})"
            lines.append(expression if target is None else f"v{target} = {expression}")
        params = [f"v{i}" for i in range(self.n_inputs)] + [f"d{n}" for n in range(len(destinations))]
        returned = ", ".join("None" if i is None else f"v{i}" for i in out_nodes)
        source = "".join([f"def replayed({', '.join(params)}):\n", *[f"    {line}\n" for line in lines],
                          f"    return [{returned}]\n"])
        exec(compile(source, "<nnx recorded step>", "exec"), names)  # noqa: S102 - built above from no user text
        replayed = names["replayed"]
        replayed.source = source  # what it runs, for a reader (the names are its globals)
        return replayed

    def _is_array(self, x: Any) -> bool:
        """Whether operand `x` is a node that was a plain NumPy array (not a subclass, not a NumPy scalar)."""
        return type(x) is _Ref and type(self.arrays[x.index]) is np.ndarray

    def _plain_where(self, condition: Any) -> bool:
        """Whether ``np.where`` is what the namespace's where runs for operand `condition` (a node's layout is
        the same at every call of the function)."""
        return self._where_is_plain is not None and type(condition) is _Ref and \
            self._where_is_plain(self.arrays[condition.index])

    def _escaping(self, outputs: list[int]) -> set[int]:
        """The outputs and every node they may share memory with: each is made anew by every call."""
        # every line that gives a node, not only the last: ``g = m.T; g *= 2`` gives g twice, and only the first
        # line reads what g is a view of (m)
        made_by: dict[int, list[_Op]] = {}
        for op in self.ops:
            if op.result is not None:
                made_by.setdefault(op.result, []).append(op)
        escaping, todo = set(), list(outputs)
        while todo:
            i = todo.pop()
            if i in escaping:
                continue
            escaping.add(i)
            for op in made_by.get(i, ()):
                todo.extend(r for r in op.reads if np.may_share_memory(self.arrays[i], self.arrays[r]))
        return escaping


def real(x: Any) -> Any:
    """`x` with every `Noted` in it (also in a tuple, list or dict) replaced by its real array; `x` itself where
    it holds none."""
    if type(x) is Noted:
        return x.array
    if type(x) in (tuple, list):
        items = [real(item) for item in x]
        return x if all(a is b for a, b in zip(items, x, strict=True)) else type(x)(items)
    if type(x) is dict:
        items = {k: real(v) for k, v in x.items()}
        return x if all(items[k] is v for k, v in x.items()) else items
    return x


def _refs(x: Any) -> list[int]:
    """The nodes in `x`."""
    if type(x) is Noted:
        return [x.index]
    if type(x) in (tuple, list):
        return [r for item in x for r in _refs(item)]
    if type(x) is dict:
        return [r for v in x.values() for r in _refs(v)]
    return []


def _name(call: Any, method: str | None) -> str:
    return f".{method}()" if method is not None else getattr(call, "__name__", type(call).__name__)


def _ufunc_operand(x: Any) -> bool:
    """Whether a Python operator on an ndarray and `x` is its ufunc on them: `x` a node, a number or a NumPy
    array or scalar."""
    return type(x) in (Noted, int, float, bool, complex) or isinstance(x, (np.ndarray, np.generic))


def _binary(symbol: str, reflected: bool) -> Any:
    """The operator method of `Noted` for `symbol` (``__add__``, or ``__radd__`` where `reflected`)."""
    fn, ufunc = OPERATORS[symbol], BINARY.get(symbol)
    text = "{0} %s {1}" % symbol  # noqa: UP031 - a template for str.format

    def method(self: Noted, other: Any) -> Any:
        left, right = (other, self) if reflected else (self, other)
        on_arrays = ufunc is not None and _ufunc_operand(other)
        return self.tape.record(fn, (left, right), {}, ufunc if on_arrays else None, text)
    return method


def _in_place(symbol: str) -> Any:
    """The in-place operator method of `Noted` for `symbol` (``__iadd__``)."""
    fn = IN_PLACE[symbol]

    def method(self: Noted, other: Any) -> Any:
        return self.tape.record(fn, (self, other), {})
    return method


class _MethodCall:
    """``obj.<name>(*args, **kwargs)`` as a function of obj: what a noted method call runs."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, obj: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(obj, self.name)(*args, **kwargs)


class Noted:
    """An array whose operations a `Tape` notes; it behaves as its real array (``.array``) does."""

    __slots__ = ("tape", "index", "array")

    def __init__(self, tape: Tape, index: int, array: Any) -> None:
        self.tape, self.index, self.array = tape, index, array

    # -- NumPy's protocols: every ufunc and array function reaching a noted array ---------------------
    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        if type(out) is tuple and len(out) == 1:
            kwargs["out"] = out[0]
        call = ufunc if method == "__call__" else getattr(ufunc, method)
        fresh = ufunc.nout == 1 and method in ("__call__", "reduce")
        return self.tape.record(call, inputs, kwargs, call if fresh else None)

    def __array_function__(self, func: Any, types: Any, args: tuple, kwargs: dict) -> Any:
        return self.tape.record(func, args, kwargs, func if func is np.dot else None)

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        self.tape.refuse("an array converted to a plain one (np.asarray)")
        return self.array if dtype is None else self.array.astype(dtype)

    # -- attributes and methods -------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        value = getattr(self.array, name)
        if name in METADATA or name in METADATA_METHODS:
            return value
        if name in ARRAY_ATTRIBUTES:
            return self.tape.record(getattr, (self, name), {}, None, "{0}.%s" % name)  # noqa: UP031
        if callable(value):
            tape, call = self.tape, _MethodCall(name)

            def noted_method(*args: Any, **kwargs: Any) -> Any:
                return tape.record(call, (self, *args), kwargs, call if name in OUT_METHODS else None, method=name)
            return noted_method
        self.tape.refuse(f"the attribute {name!r} read in Python")
        return value

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key: Any) -> Any:
        return self.tape.record(operator.getitem, (self, key), {}, None, "{0}[{1}]")

    def __setitem__(self, key: Any, value: Any) -> None:
        self.tape.record(operator.setitem, (self, key, value), {})

    def __neg__(self) -> Any:
        return self.tape.record(np.negative, (self,), {}, np.negative)

    def __pos__(self) -> Any:
        return self.tape.record(np.positive, (self,), {}, np.positive)

    def __abs__(self) -> Any:
        return self.tape.record(np.absolute, (self,), {}, np.absolute)

    def __invert__(self) -> Any:
        return self.tape.record(np.invert, (self,), {}, np.invert)

    # -- values read in Python: the recorded code branched on them ------------------------------------
    def _value(self, convert: Any, what: str) -> Any:
        self.tape.refuse(f"an array's value read in Python ({what})")
        return convert(self.array)

    def __bool__(self) -> bool:
        return self._value(bool, "bool")

    def __float__(self) -> float:
        return self._value(float, "float")

    def __int__(self) -> int:
        return self._value(int, "int")

    def __index__(self) -> int:
        return self._value(operator.index, "index")

    def __complex__(self) -> complex:
        return self._value(complex, "complex")

    def __iter__(self) -> Any:
        return iter(self._value(list, "iteration"))

    def __repr__(self) -> str:
        return self._value(repr, "repr")

    def __format__(self, spec: str) -> str:
        return self._value(lambda a: format(a, spec), "format")

    __hash__ = object.__hash__


OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
             "//": operator.floordiv, "%": operator.mod, "@": operator.matmul, "&": operator.and_,
             "|": operator.or_, "^": operator.xor, "<": operator.lt, "<=": operator.le, ">": operator.gt,
             ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "**": operator.pow}
_DUNDER = {"+": "add", "-": "sub", "*": "mul", "/": "truediv", "//": "floordiv", "%": "mod", "@": "matmul",
           "&": "and", "|": "or", "^": "xor", "<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne",
           "**": "pow"}
_COMPARISONS = frozenset({"<", "<=", ">", ">=", "==", "!="})
for _symbol, _dunder in _DUNDER.items():
    setattr(Noted, f"__{_dunder}__", _binary(_symbol, reflected=False))
    if _symbol not in _COMPARISONS:
        setattr(Noted, f"__r{_dunder}__", _binary(_symbol, reflected=True))
        setattr(Noted, f"__i{_dunder}__", _in_place(_symbol))
