"""Counts the reliability tests report (examples tried, cases, faults) for a closing note.

Set NNX_HYPOTHESIS_COUNTS to a file path and each counting test file appends one
JSON line per module to it; unset, nothing is written.
"""

from __future__ import annotations

import json
import os


def write_counts(record: dict) -> None:
    """Append one JSON record to the file named by NNX_HYPOTHESIS_COUNTS, if set."""
    target = os.environ.get("NNX_HYPOTHESIS_COUNTS")
    if target:
        with open(target, "a") as handle:
            handle.write(json.dumps(record) + "\n")
