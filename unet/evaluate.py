"""Volume-level evaluation: Dice and HD95 per subject and region, and their means.

    python -m unet.evaluate --checkpoint runs/unet2d-small.pt --data runs/phantom.h5 \\
        --split val --out runs/eval-val

prints a table and writes ``DIR/metrics.csv`` (one row per subject) and ``DIR/metrics.json``
(``{"per_subject": [...], "mean": {"dice": {"WT","TC","ET","mean"}, "hd95": {...}}}``).
The binary threshold(s) default to the ones stored in the checkpoint (``meta["threshold"]``,
found by ``compress.threshold`` on the validation split), else 0.5; components smaller than
the stored ``meta["min_component"]`` sizes are then removed and regions whose remaining volume
is below ``meta["min_volume"]`` emptied (`unet.components`, both chosen on val) unless
``--keep-components`` is given.

With ``--reference REF`` (a checkpoint, or the ``metrics.json`` of an earlier run on the same
subjects) ``metrics.json`` gains a ``paired`` block (`unet.stats.paired_comparison`): the Dice
delta (candidate - reference) per region and mean, its 95% paired bootstrap CI over subjects,
HD95 deltas, ``non_inferior`` at ``--margin`` (mean) / ``--region-margin`` (every region), and
``detection``: each region's delta split into subjects whose region is empty in the truth and
the rest (`unet.detection`, from the ``voxels`` counts every per-subject row carries)::

    python -m unet.evaluate --checkpoint runs/s50/checkpoint.pt --reference runs/unet2d-small.pt \\
        --data runs/phantom.h5 --split test --out runs/eval-s50
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from unet.components import as_min_components, as_min_volumes, postprocess, stored_postprocessing
from unet.data.canonical import REGIONS, CanonicalDataset, DataError, regions_from_label
from unet.detection import voxel_counts
from unet.inference import DEFAULT_PATCH_3D, Forward, predict_volume, torch_forward
from unet.io import write_text_atomic
from unet.metrics import HD95_METHOD, region_metrics
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


def binarize(
    probs: np.ndarray,
    threshold: float | dict[str, float] | None,
    min_component: Mapping[str, int] | None = None,
    min_volume: Mapping[str, int] | None = None,
) -> np.ndarray:
    """Bool region maps (3, ...): ``probs > threshold`` per region (WT, TC, ET), then, with
    ``min_component``, each region's connected components below that many voxels removed, and
    with ``min_volume`` each region left smaller than that many voxels emptied
    (`unet.components.postprocess`)."""
    t = as_thresholds(threshold)
    cut = np.array([t[r] for r in REGIONS], dtype=np.float32)
    regions = probs > cut.reshape(3, *([1] * (probs.ndim - 1)))
    return postprocess(regions, min_component, min_volume)


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
    for sid in tqdm(subjects, desc="predict", disable=None if progress else True, leave=False):
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
    items: Iterable[Item],
    threshold: float | dict[str, float] | None = 0.5,
    hd95: bool = True,
    min_component: Mapping[str, int] | None = None,
    min_volume: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Binarise each volume with the threshold(s) (and the ``min_component`` / ``min_volume``
    post-processing) and compute per-subject and mean metrics."""
    t = as_thresholds(threshold)
    sizes, volumes = as_min_components(min_component), as_min_volumes(min_volume)
    per_subject = []
    for sid, probs, target in items:
        pred = binarize(probs, t, sizes, volumes)
        m = region_metrics(pred, target, with_hd95=hd95)
        per_subject.append({"subject": sid, **m, "voxels": voxel_counts(pred, target)})
    return {
        "per_subject": per_subject,
        "mean": mean_metrics(per_subject),
        "threshold": t,
        "min_component": sizes,
        "min_volume": volumes,
    }


def evaluate_model(
    model_or_forward: nn.Module | Forward,
    data: CanonicalDataset | str | Path,
    split_or_subjects: str | Sequence[str],
    threshold: float | dict[str, float] | None = None,
    hd95: bool = True,
    *,
    min_component: Mapping[str, int] | None = None,
    min_volume: Mapping[str, int] | None = None,
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
    result = evaluate_probabilities(items, threshold, hd95, min_component, min_volume)
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
    """CSV text, one row per subject: subject, dice_<region>..., hd95_<region>..., then the
    voxel counts truth_<region>... and pred_<region>... (after post-processing)."""
    buf = io.StringIO()
    has_hd = "hd95" in result["mean"]
    has_voxels = all("voxels" in row for row in result["per_subject"])
    header = ["subject"] + [f"dice_{r}" for r in (*REGIONS, "mean")]
    header += [f"hd95_{r}" for r in (*REGIONS, "mean")] if has_hd else []
    header += [f"{k}_{r}" for k in ("truth", "pred") for r in REGIONS] if has_voxels else []
    writer = csv.writer(buf)
    writer.writerow(header)
    for row in result["per_subject"]:
        vals = [row["dice"][r] for r in (*REGIONS, "mean")]
        vals += [row["hd95"][r] for r in (*REGIONS, "mean")] if has_hd else []
        counts = (
            [row["voxels"][k][r] for k in ("truth", "pred") for r in REGIONS] if has_voxels else []
        )
        writer.writerow([row["subject"], *(f"{v:.6f}" for v in vals), *counts])
    return buf.getvalue()


def reference_results(
    reference: str | Path,
    data: CanonicalDataset,
    subjects: Sequence[str],
    *,
    hd95: bool,
    device: str = "cpu",
) -> dict[str, Any]:
    """Per-subject results of the ``reference`` of a paired comparison.

    ``reference`` is a checkpoint (evaluated here on ``subjects`` with its stored threshold(s) and
    post-processing) or the ``metrics.json`` of an earlier `unet.evaluate` run (its
    ``per_subject`` rows are used as they are; `unet.stats.paired_comparison` refuses them if
    they cover other subjects).
    """
    from unet.checkpoint import load_checkpoint

    ref = Path(reference)
    if ref.suffix == ".json":
        try:
            stored = json.loads(ref.read_text(encoding="utf-8"))
            rows = stored["per_subject"]
        except FileNotFoundError:
            raise ValueError(f"--reference {ref}: no such file") from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(
                f"--reference {ref}: not a metrics.json of unet.evaluate (no per_subject rows)"
            ) from None
        fingerprint = stored.get("data_fingerprint")
        if fingerprint is not None and fingerprint != data.fingerprint:
            raise ValueError(
                f"--reference {ref}: evaluated on other data (fingerprint {fingerprint} != "
                f"{data.fingerprint})"
            )
        return {"per_subject": rows, "source": "metrics.json"}
    model, meta = load_checkpoint(ref)
    result = evaluate_model(
        model,
        data,
        subjects,
        meta.get("threshold"),
        hd95=hd95,
        **stored_postprocessing(meta),
        patch_size=meta.get("patch_size"),
        device=device,
        progress=True,
    )
    return {**result, "source": "checkpoint"}


def _parser() -> argparse.ArgumentParser:
    from unet.stats import DEFAULT_MARGIN, DEFAULT_REGION_MARGIN, DEFAULT_RESAMPLES

    parser = argparse.ArgumentParser(
        prog="python -m unet.evaluate",
        description="Per-volume Dice and HD95 (WT, TC, ET) of a checkpoint on one split; with "
        "--reference, a paired comparison over the same subjects (Dice delta, 95% bootstrap CI, "
        "non-inferiority).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    parser.add_argument("--data", required=True, help="canonical HDF5 data file")
    parser.add_argument(
        "--split", choices=("val", "test"), default="val", help="which split to evaluate"
    )
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
    parser.add_argument(
        "--keep-components",
        action="store_true",
        help="skip the stored post-processing (meta['min_component'] and meta['min_volume'], "
        "unet.components)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-hd95", action="store_true", help="skip HD95 (faster)")
    parser.add_argument(
        "--reference",
        default=None,
        help="compare paired with this reference: a checkpoint (.pt, evaluated on the same "
        "subjects with its stored threshold) or an earlier metrics.json",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN,
        help="non-inferiority margin of the mean Dice (Dice units)",
    )
    parser.add_argument(
        "--region-margin",
        type=float,
        default=DEFAULT_REGION_MARGIN,
        help="non-inferiority margin of every region's Dice (Dice units)",
    )
    parser.add_argument(
        "--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples (>= 2000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return parser


def main(argv: list[str] | None = None) -> int:
    from unet.checkpoint import CheckpointError, load_checkpoint
    from unet.stats import MIN_RESAMPLES, paired_comparison

    parser = _parser()
    args = parser.parse_args(argv)
    if not (args.margin >= 0 and args.region_margin >= 0):
        parser.error(
            f"--margin and --region-margin must be >= 0, got {args.margin}, {args.region_margin}"
        )
    if args.resamples < MIN_RESAMPLES:
        parser.error(f"--resamples must be >= {MIN_RESAMPLES}, got {args.resamples}")
    if args.reference is not None and not Path(args.reference).is_file():
        parser.error(f"--reference {args.reference}: no such file")
    try:
        model, meta = load_checkpoint(args.checkpoint)
        data = CanonicalDataset(args.data)
        subjects = data.split(args.split)
        if not subjects:
            raise DataError(f"{data.path}: no labelled subjects in the {args.split} split")
        threshold = args.threshold if args.threshold is not None else meta.get("threshold")
        patch = args.patch_size or meta.get("patch_size")
        result = evaluate_model(
            model,
            data,
            subjects,
            threshold,
            hd95=not args.no_hd95,
            **stored_postprocessing(meta, keep=args.keep_components),
            patch_size=patch,
            device=args.device,
            progress=True,
        )
        result["checkpoint"] = str(args.checkpoint)
        result["split"] = args.split
        result["data_fingerprint"] = data.fingerprint
        result["hd95_method"] = None if args.no_hd95 else HD95_METHOD
        if args.reference is not None:
            ref = reference_results(
                args.reference, data, subjects, hd95=not args.no_hd95, device=args.device
            )
            paired = paired_comparison(
                result["per_subject"],
                ref["per_subject"],
                margin=args.margin,
                region_margin=args.region_margin,
                resamples=args.resamples,
                seed=args.seed,
            )
            result["paired"] = {"reference": str(args.reference), **paired.to_dict()}
    except (CheckpointError, DataError) as exc:
        parser.error(str(exc))
    except ValueError as exc:
        parser.error(str(exc))
    out = Path(args.out)
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
    write_text_atomic(out / "metrics.csv", metrics_csv(result))
    print(metrics_table(result))
    if "paired" in result:
        print(paired.summary())
    print(f"wrote {out / 'metrics.csv'} and {out / 'metrics.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
