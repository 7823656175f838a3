"""What the scripts share for their output: JSON to stdout and, optionally, to a file."""
from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np


def _finite(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python numbers and lists, and every NaN or infinite
    float (also in nested dicts, lists and tuples) as None."""
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def json_text(report: dict, indent: int = 2) -> str:
    """``report`` as indented strict JSON: a figure that is NaN or infinite (e.g. the median of no
    live worlds) is written as null, so a long run's report is never lost to one of them."""
    return json.dumps(_finite(report), indent=indent, allow_nan=False)


def emit_json(report: dict, out: pathlib.Path | None) -> None:
    """Print ``report`` as :func:`json_text` and write it to ``out`` when given."""
    text = json_text(report)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
