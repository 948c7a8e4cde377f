"""Plumbing shared by the command-line tools that write canonical files.

The importers (`unet.data.import_kaggle`, `unet.data.import_nifti`) and the phantom generator
(`unet.phantom`) take the same split options and report bad input the same way: one line
``<prog>: error: <file>: <problem>`` on stderr and exit status 2, no traceback::

    parser = argparse.ArgumentParser(...)
    add_split_arguments(parser)
    args = parser.parse_args(argv)
    fractions, seed = split_options(parser, args)
    return run_cli(parser, lambda: import_something(args.src, args.out, ...))
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from unet.data.canonical import DEFAULT_SPLIT_FRACTIONS, DataError, split_subjects


class MissingDependencyError(ImportError):
    """An optional dependency (e.g. nibabel) is not installed; the message says how to get it."""


def add_split_arguments(
    parser: argparse.ArgumentParser,
    fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
) -> None:
    """Add ``--split-seed`` and ``--split-fractions TRAIN VAL TEST`` (default ``fractions``)."""
    parser.add_argument(
        "--split-seed", type=int, default=0, help="seed of the subject-level train/val/test split"
    )
    parser.add_argument(
        "--split-fractions",
        type=float,
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
        default=list(fractions),
        help="relative sizes of the train / val / test splits (normalised to sum 1)",
    )


def split_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[tuple[float, float, float], int]:
    """Validated ``(split_fractions, split_seed)`` from parsed arguments; `parser.error` if bad."""
    fractions = tuple(float(f) for f in args.split_fractions)
    if not all(math.isfinite(f) for f in fractions):
        parser.error(f"argument --split-fractions: must be finite numbers, got {fractions}")
    try:
        split_subjects(["a", "b", "c"], fractions, args.split_seed)
    except ValueError as exc:
        parser.error(f"argument --split-fractions: {exc}")
    return fractions, int(args.split_seed)  # type: ignore[return-value]


def name_order(names: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    """An argparse ``type=`` that parses ``"a,b,c"`` into a permutation of ``names``."""

    def parse(text: str) -> tuple[str, ...]:
        order = tuple(part.strip().lower() for part in text.split(","))
        if sorted(order) != sorted(names):
            raise argparse.ArgumentTypeError(
                f"{what} must be a comma-separated permutation of {','.join(names)}, got {text!r}"
            )
        return order

    return parse


def run_cli(parser: argparse.ArgumentParser, action: Callable[[], Path]) -> int:
    """Run ``action`` (which writes and returns a file); bad input -> one-line error, exit 2."""
    try:
        out = action()
    except (DataError, MissingDependencyError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(f"wrote {out}", file=sys.stdout)
    return 0
