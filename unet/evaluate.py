"""Volume-level evaluation: Dice and HD95 per subject and region, and their means.

    python -m unet.evaluate --checkpoint runs/unet2d-small.pt --data runs/phantom.h5 \\
        --split val --out runs/eval-val

prints a table and writes ``DIR/metrics.csv`` (one row per subject) and ``DIR/metrics.json``
(``{"per_subject": [...], "mean": {"dice": {"WT","TC","ET","mean"}, "hd95": {...}}}``).
The binary threshold(s) default to the ones stored in the checkpoint (``meta["threshold"]``,
found by ``compress.threshold`` on the validation split), else 0.5.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from unet.data.canonical import REGIONS, CanonicalDataset, DataError, regions_from_label
from unet.inference import DEFAULT_PATCH_3D, Forward, predict_volume, torch_forward
from unet.io import write_text_atomic
from unet.metrics import region_metrics
from unet.models import UNet

Item = tuple[str, np.ndarray, np.ndarray]  # (subject, probabilities (3, ...), target (3, ...) bool)


def as_thresholds(threshold: float | dict[str, float] | None) -> dict[str, float]:
    """Normalise a threshold spec (None -> 0.5; float -> all regions; dict -> checked)."""
    if threshold is None:
        return dict.fromkeys(REGIONS, 0.5)
    if isinstance(threshold, dict):
        missing = [r for r in REGIONS if r not in threshold]
        if missing:
            raise ValueError(f"threshold dict misses region(s) {missing}")
        return {r: float(threshold[r]) for r in REGIONS}
    return dict.fromkeys(REGIONS, float(threshold))


def binarize(probs: np.ndarray, threshold: float | dict[str, float] | None) -> np.ndarray:
    """Bool region maps (3, ...): ``probs > threshold`` per region (WT, TC, ET)."""
    t = as_thresholds(threshold)
    cut = np.array([t[r] for r in REGIONS], dtype=np.float32)
    return probs > cut.reshape(3, *([1] * (probs.ndim - 1)))


def _subjects(data: CanonicalDataset, split_or_subjects: str | Sequence[str]) -> list[str]:
    if isinstance(split_or_subjects, str):
        return data.split(split_or_subjects)
    return list(split_or_subjects)


def collect_probabilities(
    forward: Forward,
    data: CanonicalDataset,
    subjects: Sequence[str],
    spatial_dims: int,
    divisor: int,
    patch_size: Sequence[int] | None = None,
    *,
    progress: bool = False,
) -> list[Item]:
    """Predict every subject volume; return ``(subject, probs, target)`` triples."""
    if spatial_dims == 3 and patch_size is None:
        patch_size = DEFAULT_PATCH_3D
    items: list[Item] = []
    for sid in tqdm(subjects, desc="predict", disable=not progress, leave=False):
        probs = predict_volume(
            forward, data.image(sid), spatial_dims, divisor, patch_size=patch_size
        )
        items.append((sid, probs, regions_from_label(data.label(sid))))
    return items


def mean_metrics(per_subject: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Average the per-subject metric dicts (``dice`` / ``hd95`` per region and mean)."""
    keys = [k for k in ("dice", "hd95") if per_subject and k in per_subject[0]]
    return {
        k: {r: float(np.mean([s[k][r] for s in per_subject])) for r in (*REGIONS, "mean")}
        for k in keys
    }


def evaluate_probabilities(
    items: Iterable[Item], threshold: float | dict[str, float] | None = 0.5, hd95: bool = True
) -> dict[str, Any]:
    """Binarise each volume with the threshold(s) and compute per-subject and mean metrics."""
    t = as_thresholds(threshold)
    per_subject = []
    for sid, probs, target in items:
        m = region_metrics(binarize(probs, t), target, with_hd95=hd95)
        per_subject.append({"subject": sid, **m})
    return {"per_subject": per_subject, "mean": mean_metrics(per_subject), "threshold": t}


def evaluate_model(
    model_or_forward: nn.Module | Forward,
    data: CanonicalDataset | str | Path,
    split_or_subjects: str | Sequence[str],
    threshold: float | dict[str, float] | None = None,
    hd95: bool = True,
    *,
    spatial_dims: int | None = None,
    divisor: int | None = None,
    patch_size: Sequence[int] | None = None,
    device: str = "cpu",
    amp: str = "off",
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a `UNet` (or any `Forward` with ``spatial_dims``/``divisor`` given) per volume."""
    if not isinstance(data, CanonicalDataset):
        data = CanonicalDataset(data)
    if isinstance(model_or_forward, UNet):
        spatial_dims = model_or_forward.config.spatial_dims
        divisor = model_or_forward.config.divisor
        was_training = model_or_forward.training
        forward = torch_forward(model_or_forward, device, amp)
    else:
        if spatial_dims is None or divisor is None:
            raise ValueError("evaluate_model: a plain forward needs spatial_dims and divisor")
        was_training = None
        forward = model_or_forward
    subjects = _subjects(data, split_or_subjects)
    if not subjects:
        raise DataError(f"{data.path}: no labelled subjects in {split_or_subjects!r}")
    items = collect_probabilities(
        forward, data, subjects, spatial_dims, divisor, patch_size, progress=progress
    )
    result = evaluate_probabilities(items, threshold, hd95)
    if was_training:
        model_or_forward.train()
    return result


def metrics_table(result: dict[str, Any]) -> str:
    """Fixed-width text table: one row per subject and a mean row."""
    has_hd = "hd95" in result["mean"]
    cols = [f"dice_{r}" for r in (*REGIONS, "mean")] + (
        [f"hd95_{r}" for r in (*REGIONS, "mean")] if has_hd else []
    )
    lines = [f"{'subject':<14}" + "".join(f"{c:>11}" for c in cols)]
    rows = [*result["per_subject"], {"subject": "MEAN", **result["mean"]}]
    for row in rows:
        vals = [row["dice"][r] for r in (*REGIONS, "mean")] + (
            [row["hd95"][r] for r in (*REGIONS, "mean")] if has_hd else []
        )
        lines.append(f"{row['subject']:<14}" + "".join(f"{v:>11.4f}" for v in vals))
    return "\n".join(lines)


def metrics_csv(result: dict[str, Any]) -> str:
    """CSV text, one row per subject: subject, dice_<region>..., hd95_<region>..."""
    buf = io.StringIO()
    has_hd = "hd95" in result["mean"]
    header = ["subject"] + [f"dice_{r}" for r in (*REGIONS, "mean")]
    header += [f"hd95_{r}" for r in (*REGIONS, "mean")] if has_hd else []
    writer = csv.writer(buf)
    writer.writerow(header)
    for row in result["per_subject"]:
        vals = [row["dice"][r] for r in (*REGIONS, "mean")]
        vals += [row["hd95"][r] for r in (*REGIONS, "mean")] if has_hd else []
        writer.writerow([row["subject"], *(f"{v:.6f}" for v in vals)])
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    from unet.checkpoint import CheckpointError, load_checkpoint

    parser = argparse.ArgumentParser(
        prog="python -m unet.evaluate",
        description="Per-volume Dice and HD95 (WT, TC, ET) of a checkpoint on one split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    parser.add_argument("--data", required=True, help="canonical HDF5 data file")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument(
        "--out", required=True, help="output folder for metrics.csv and metrics.json"
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="override the stored threshold(s)"
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        default=None,
        help="3D sliding-window size (default: stored, else 64^3)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-hd95", action="store_true", help="skip HD95 (faster)")
    args = parser.parse_args(argv)
    try:
        model, meta = load_checkpoint(args.checkpoint)
        data = CanonicalDataset(args.data)
    except (CheckpointError, DataError) as exc:
        parser.error(str(exc))
    threshold = args.threshold if args.threshold is not None else meta.get("threshold")
    patch = args.patch_size or meta.get("patch_size")
    result = evaluate_model(
        model,
        data,
        args.split,
        threshold,
        hd95=not args.no_hd95,
        patch_size=patch,
        device=args.device,
        progress=True,
    )
    result["checkpoint"] = str(args.checkpoint)
    result["split"] = args.split
    out = Path(args.out)
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
    write_text_atomic(out / "metrics.csv", metrics_csv(result))
    print(metrics_table(result))
    print(f"wrote {out / 'metrics.csv'} and {out / 'metrics.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
