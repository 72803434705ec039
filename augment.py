"""Write reaction-intermediate augmented training tables, one per fold (docs/protocol.md §6, docs/augmentation.md).

    python augment.py                          # paper split, seed 0, 5 folds, 10 rows per training recipe
    python augment.py --split grouped --out data/augmented-grouped
    python augment.py --object_name PbSe Au --out data/augmented-lopo
"""
from __future__ import annotations

import argparse
import sys
import time

from nanocrystal.augment import augment_split
from nanocrystal.cli import guarded
from nanocrystal.config import Config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default=defaults.split, choices=["paper", "grouped"])
    parser.add_argument("--seed", type=int, default=defaults.seed, help="split seed, as in training")
    parser.add_argument("--n_folds", type=int, default=defaults.n_folds)
    parser.add_argument("--object_name", nargs="+", default=[], metavar="P",
                        help="leave-one-product-out: one table per product P, without any row of P")
    parser.add_argument("--k", type=int, default=10, help="generated rows per training recipe (before duplicates)")
    parser.add_argument("--augment_seed", type=int, default=0, help="seed of the augmentation draws")
    parser.add_argument("--out", default="data/augmented", help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a folder made with other settings")
    parser.add_argument("--data_dir", default=defaults.data_dir)
    parser.add_argument("--feats", default=defaults.feats_path, help="descriptor .pkl (names the intermediates)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded(lambda: augment(args))


def augment(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    manifest = augment_split(args.data_dir, args.feats, args.out, args.split, args.seed, args.n_folds,
                             args.object_name, args.k, args.augment_seed, args.overwrite)
    files = manifest["files"].values()
    for name, entry in manifest["files"].items():
        print(f"{name}: {entry['sources']:,} training recipes -> {entry['generated']:,} generated, "
              f"{entry['dropped']:,} dropped as duplicates ({entry['unchanged']:,} unchanged), "
              f"{entry['written']:,} written ({entry['file']}); success rate {entry['success_rate']:.1%}")
    written, dropped = sum(e["written"] for e in files), sum(e["dropped"] for e in files)
    sources = sum(e["sources"] for e in files)
    success = sum(e["success_rate"] * e["sources"] for e in files) / max(sources, 1)
    print(f"rows written {written:,}; rows dropped (duplicates) {dropped:,} of {written + dropped:,} "
          f"({dropped / max(written + dropped, 1):.1%}); success rate {success:.1%}")
    print(f"wrote {args.out}/ ({len(files)} tables + manifest.json) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
