"""What the scripts share for their output: JSON to stdout and, optionally, to a file; means with CIs."""
from __future__ import annotations

import json
import math
import pathlib

import numpy as np


def emit_json(report: dict, out: pathlib.Path | None) -> None:
    """Print ``report`` as indented strict JSON (no NaN) and write it to ``out`` when given."""
    text = json.dumps(report, indent=2, allow_nan=False)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def mean_ci(values) -> dict:
    """Mean and the half-width of its 95% confidence interval (normal approximation); None if empty."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return {"mean": None, "ci95": None, "n": 0}
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else None
    return {"mean": float(values.mean()), "ci95": half, "n": len(values)}
