"""Pair sensitivity study (the cs231n experiment): which conv pair can lose channels?

    python -m studies.pair_sensitivity --checkpoint runs/unet2d-small.pt \\
        --data runs/phantom.h5 --out runs/pair-sensitivity --amounts 0.25,0.5,0.75

prunes each conv pair (the two convs of one encoder or decoder block) alone at each amount
(`compress.sensitivity`), evaluates the val split with the checkpoint's threshold(s), and writes
``OUT/pair_sensitivity.csv`` (pair, amount, params, val_dice_mean, dice_drop) and a heat-map
``OUT/pair_sensitivity.png`` (+ ``.pdf``): pair x amount -> val mean Dice drop.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compress.sensitivity import pair_sensitivity
from unet.checkpoint import CheckpointError, load_checkpoint
from unet.data.canonical import CanonicalDataset, DataError
from unet.io import atomic_path, write_text_atomic

COLUMNS = ("pair", "amount", "params", "val_dice_mean", "dice_drop")


def rows_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text of sensitivity rows (floats with 6 decimals)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow(
            [
                r["pair"],
                f"{r['amount']:g}",
                r["params"],
                f"{r['val_dice_mean']:.6f}",
                f"{r['dice_drop']:.6f}",
            ]
        )
    return buf.getvalue()


def plot_heatmap(rows: Sequence[dict[str, Any]], out: Path, title: str) -> list[Path]:
    """Draw pair x amount -> Dice drop as an annotated heat-map; write ``out``.png and .pdf."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    amounts = sorted({r["amount"] for r in rows})
    drop = np.full((len(pairs), len(amounts)), np.nan)
    for r in rows:
        drop[pairs.index(r["pair"]), amounts.index(r["amount"])] = r["dice_drop"]
    limit = max(float(np.nanmax(np.abs(drop))), 1e-3)
    norm = TwoSlopeNorm(vmin=-limit, vcenter=0.0, vmax=limit)  # red: Dice lost; blue: gained

    fig = Figure(figsize=(1.6 + 1.1 * len(amounts), 1.2 + 0.45 * len(pairs)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(drop, cmap="RdBu_r", norm=norm, aspect="auto")
    for (i, j), value in np.ndenumerate(drop):
        colour = "white" if abs(value) > 0.6 * limit else "black"
        ax.text(j, i, f"{value:+.3f}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(amounts)), [f"{a:.0%}" for a in amounts])
    ax.set_yticks(range(len(pairs)), pairs)
    ax.set_xlabel("channels removed from the pair")
    ax.set_ylabel("conv pair (block)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="val mean Dice drop (baseline - pruned)")
    written = []
    for suffix in ("png", "pdf"):
        path = out.with_suffix(f".{suffix}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix, dpi=150)
        written.append(path)
    return written


def _amounts(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None
    if not values or any(not 0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"amounts must be numbers in [0, 1), got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studies.pair_sensitivity",
        description="Prune each conv pair alone at several amounts; heat-map of the val Dice drop.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="trained checkpoint (.pt)")
    parser.add_argument("--data", required=True, help="canonical HDF5 data file (val split used)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--amounts",
        type=_amounts,
        default=[0.25, 0.5, 0.75],
        help="comma-separated fractions of a pair's channels to remove",
    )
    args = parser.parse_args(argv)
    try:
        model, meta = load_checkpoint(args.checkpoint)
        data = CanonicalDataset(args.data)
        if not data.split("val"):
            raise DataError(f"{args.data}: the val split is empty")
    except (CheckpointError, DataError) as exc:
        parser.error(str(exc))
    rows = pair_sensitivity(
        model,
        data,
        args.amounts,
        threshold=meta.get("threshold"),
        patch_size=meta.get("patch_size"),
        progress=True,
    )
    out = Path(args.out)
    write_text_atomic(out / "pair_sensitivity.csv", rows_csv(rows))
    baseline = rows[0]["val_dice_mean"] + rows[0]["dice_drop"]
    title = (
        f"{Path(args.checkpoint).name}: pair sensitivity (baseline val mean Dice {baseline:.3f})"
    )
    figures = plot_heatmap(rows, out / "pair_sensitivity", title)
    print(rows_csv(rows), end="")
    print(f"wrote {out / 'pair_sensitivity.csv'}, {', '.join(map(str, figures))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
