"""Reading a function's compiled code: the code objects nested in it, which its comprehensions and inner
functions run (what `elementwise_check` and `training.outside_settings` look through)."""

from __future__ import annotations

import types

__all__ = ["nested_codes"]


def nested_codes(code: types.CodeType) -> list[types.CodeType]:
    """`code` and every code object nested in it (comprehensions, inner functions, lambdas)."""
    found = [code]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found.extend(nested_codes(const))
    return found
