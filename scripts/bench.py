"""Measure treeworld's speed figures and write them as JSON.

Each suite lives in scripts/benchmarks/<name>.py and exposes
``run(repeats: int, device: str, quick: bool) -> dict``; every figure is the median of
``repeats`` timed runs after a warm-up, and where a baseline exists it is measured in the
same run and reported as a ratio.

Examples:
    python scripts/bench.py                       # all suites, JSON to stdout
    python scripts/bench.py --suites env --out out/bench.json
    python scripts/bench.py --quick               # tiny sizes, a smoke run
"""
from __future__ import annotations

import argparse
import importlib
import pathlib
import platform
import sys

import treeworld  # noqa: F401  (first: its OpenMP spin setting must precede torch and numba)

import numba
import numpy as np
import torch

from reporting import emit_json
from treeworld.envs.batch import check_device  # noqa: E402

SUITES = ("env", "fourier", "topography", "memory", "agent", "training", "rl")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated subset of {SUITES}")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device for the batched/tensor figures (CPU figures are always taken)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="write the JSON here as well")
    args = parser.parse_args(argv)
    suites = [s for s in args.suites.split(",") if s]
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        parser.error(f"--suites: unknown suite(s) {unknown}; expected names from {SUITES}")
    if args.repeats < 1:
        parser.error(f"--repeats: expected >= 1, got {args.repeats}")
    try:
        args.device = check_device(args.device)
    except ValueError as e:
        parser.error(f"--{e}")

    torch.set_num_threads(1)
    report = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "numpy": np.__version__, "numba": numba.__version__, "torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "repeats": args.repeats,
    }
    for name in suites:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"[bench] {name} ...", file=sys.stderr)
        report[name] = module.run(repeats=args.repeats, device=args.device, quick=args.quick)
    emit_json(report, args.out)
    return report


if __name__ == "__main__":
    main()
