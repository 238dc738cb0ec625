"""Review of the recorded passes (`nnx.training.recorded`, `nnx.backends.recording`): ways a replay could differ
from the plain passes that the first tests did not try. Each compares with the plain passes (the backend's `tape`
switched off) or checks what a replayed step must leave."""

from __future__ import annotations

import numpy as np

from nnx.backends.recording import Tape


def test_a_view_of_a_result_written_in_place_leaves_as_a_new_array():
    """``g = (a @ b).T; g *= 2``: the output is a view of the product, so the product must be made anew by every
    call, not written into a buffer the next call overwrites."""
    tape = Tape()
    a, b = tape.note(np.arange(6.0).reshape(2, 3)), tape.note(np.ones((3, 2)))
    g = (a @ b).T
    g *= 2.0
    replayed = tape.compile([g])
    first = replayed(np.arange(6.0).reshape(2, 3), np.ones((3, 2)))[0]
    kept = first.copy()
    replayed(np.arange(6.0).reshape(2, 3) * 10, np.ones((3, 2)))
    assert np.array_equal(first, kept)

