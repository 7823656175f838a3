"""What the scripts share for their output: JSON to stdout and, optionally, to a file."""
from __future__ import annotations

import json
import pathlib


def emit_json(report: dict, out: pathlib.Path | None) -> None:
    """Print ``report`` as indented strict JSON (no NaN) and write it to ``out`` when given."""
    text = json.dumps(report, indent=2, allow_nan=False)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
