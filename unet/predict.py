"""Predict one subject with a checkpoint; write the prediction and an overlay PNG.

    python -m unet.predict --checkpoint runs/unet2d-small.pt --data runs/phantom.h5 \\
        --subject phantom_003 --out runs/phantom_003-pred.h5 --overlay runs/phantom_003.png

``pred.h5`` holds ``probabilities`` (float32, (3, D, H, W), WT/TC/ET), ``regions`` (uint8 0/1,
same shape) and ``label`` (uint8 (D, H, W) BraTS values 0/1/2/4), plus the threshold used
(the checkpoint's stored one unless ``--threshold`` is given) and the stored post-processing
(``meta["min_component"]``, ``meta["min_volume"]``, `unet.components`; ``--keep-components``
skips it). The
overlay shows the four modalities and ground truth (if the subject is labelled) vs prediction
on the most tumour-rich slice.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np

from unet.checkpoint import CheckpointError, load_checkpoint
from unet.components import stored_postprocessing
from unet.data.canonical import (
    CanonicalDataset,
    DataError,
    label_from_regions,
    regions_from_label,
)
from unet.evaluate import as_thresholds, binarize
from unet.inference import DEFAULT_PATCH_3D, predict_volume, torch_forward
from unet.io import atomic_path
from unet.overlay import save_overlay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m unet.predict",
        description="Segment one subject (WT, TC, ET) and write the prediction and an overlay PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    parser.add_argument("--data", required=True, help="canonical HDF5 data file")
    parser.add_argument("--subject", required=True, help="subject id in the data file")
    parser.add_argument("--out", required=True, help="output HDF5 file for the prediction")
    parser.add_argument(
        "--overlay", default=None, help="optional PNG of ground truth vs prediction"
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="override the stored threshold(s)"
    )
    parser.add_argument(
        "--keep-components",
        action="store_true",
        help="skip the stored post-processing (meta['min_component'], meta['min_volume'])",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    try:
        model, meta = load_checkpoint(args.checkpoint)
        data = CanonicalDataset(args.data)
    except (CheckpointError, DataError) as exc:
        parser.error(str(exc))
    if args.subject not in data.subjects:
        parser.error(
            f"{args.data}: no subject {args.subject!r} (have e.g. {', '.join(data.subjects[:5])})"
        )
    cfg = model.config
    image = data.image(args.subject)
    patch = meta.get("patch_size") or (DEFAULT_PATCH_3D if cfg.spatial_dims == 3 else None)
    probs = predict_volume(
        torch_forward(model, args.device), image, cfg.spatial_dims, cfg.divisor, patch_size=patch
    )
    t = as_thresholds(args.threshold if args.threshold is not None else meta.get("threshold"))
    post = stored_postprocessing(meta, keep=args.keep_components)
    regions = binarize(probs, t, **post)
    with atomic_path(args.out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("probabilities", data=probs, compression="gzip")
        f.create_dataset("regions", data=regions.astype(np.uint8), compression="gzip")
        f.create_dataset("label", data=label_from_regions(regions), compression="gzip")
        f.attrs["subject"] = args.subject
        f.attrs["threshold"] = json.dumps(t)
        f.attrs["min_component"] = json.dumps(post["min_component"])
        f.attrs["min_volume"] = json.dumps(post["min_volume"])
        f.attrs["checkpoint"] = str(args.checkpoint)
    print(f"wrote {args.out} (threshold {t})")
    if args.overlay:
        panels = [("prediction", regions)]
        if args.subject in data.labelled:
            panels.insert(0, ("ground truth", regions_from_label(data.label(args.subject))))
        save_overlay(
            args.overlay, image, panels, title=f"{args.subject}: {Path(args.checkpoint).name}"
        )
        print(f"wrote {args.overlay}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
