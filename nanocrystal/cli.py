"""`python -m nanocrystal <command>`: fetch, validate, convert, report, predict, design."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ROOT


def cmd_fetch(args: argparse.Namespace) -> int:
    from .fetch import FetchError, fetch_all

    try:
        fetch_all(Path(args.root), args.mirror)
    except FetchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .descriptors import DescriptorError, load_descriptors
    from .recipes import RecipeError, load_shapes, pool_counts, read_table

    try:
        shapes = load_shapes(args.shapes)
        table = read_table(args.file, len(shapes))
    except RecipeError as error:
        print("\n".join(error.problems), file=sys.stderr)
        print(f"{args.file}: {len(error.problems)} problem(s)", file=sys.stderr)
        return 2
    counts = pool_counts(table)
    print(f"{args.file}: {counts['rows']:,} rows")
    print("  pools: " + ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "rows"))
    products = table.loc[~table["failed"], "T2"].value_counts()
    print(f"  products: {len(products):,} (most rows: " + ", ".join(f"{n} {c}" for n, c in products.head(5).items())
          + ")")
    if args.feats:
        try:
            store = load_descriptors(args.feats)
        except DescriptorError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        coverage = store.coverage(table)
        for role, missing in coverage.items():
            print(f"  {role} without a descriptor: {len(missing)} names in {sum(missing.values())} rows")
            for name, count in missing.most_common():
                print(f"    {name}: {count}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nanocrystal", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    fetch = commands.add_parser("fetch", help="download (or copy from $NANOCRYSTAL_MIRROR) and verify the dataset")
    fetch.add_argument("--root", default=str(ROOT), help="project folder that receives data/ and feats/")
    fetch.add_argument("--mirror", default=None, help="local copy of the upstream repository files")
    fetch.set_defaults(handler=cmd_fetch)

    validate = commands.add_parser("validate", help="check a recipe CSV and print a summary, or every error")
    validate.add_argument("file")
    validate.add_argument("--feats", default=None, help="descriptor .pkl: also report substances without one")
    validate.add_argument("--shapes", default=str(ROOT / "data" / "shapes_list.txt"))
    validate.set_defaults(handler=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)
