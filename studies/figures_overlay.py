"""The overlay figure of a sweep: one test subject, the ground truth, the baseline and two
Pareto models (best val Dice; smallest), test Dice in the titles (`studies.figures` draws the
rest). It reads the **test** split, so it is drawn only with the report, after the search.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import optuna

from studies.pareto import TrialModel, baseline_model, trial_models
from unet.data.canonical import REGIONS


def overlay_models(study: optuna.Study) -> list[TrialModel]:
    """The two Pareto models of the overlay: best val Dice, and smallest (if different)."""
    pareto = trial_models(study, pareto_only=True)
    if not pareto:
        return []
    best = max(pareto, key=lambda m: (m.val_dice["mean"], -m.size_bytes))
    rest = [m for m in pareto if m.number != best.number]
    return [best] + ([min(rest, key=lambda m: (m.size_bytes, -m.val_dice["mean"]))] if rest else [])


def write_overlay(
    study: optuna.Study,
    out_dir: Path,
    *,
    data: str | Path | None = None,
    threads: int | None = None,
    formats: Sequence[str] = ("png",),
) -> list[Path]:
    """The overlay grid on the most tumour-rich test subject (reads the test split), one file
    per format in ``formats``."""
    from studies.report import open_data
    from unet.checkpoint import read_checkpoint
    from unet.data.canonical import regions_from_label
    from unet.inference import predict_volume
    from unet.metrics import dice
    from unet.overlay import save_overlay

    ds = open_data(study, data)
    test = ds.split("test")
    if not test:
        return []
    sid = max(test, key=lambda s: int((ds.label(s) > 0).sum()))
    image, target = ds.image(sid), regions_from_label(ds.label(sid))
    entries = []
    for name, m in [("baseline", baseline_model(study))] + [
        (f"#{m.number} {_short(m)}", m) for m in overlay_models(study)
    ]:
        m.check_folder()  # another study's folder: ValueError
        if not m.checkpoint.is_file():
            continue
        forward, mcfg = m.forward(threads)
        patch = read_checkpoint(m.checkpoint)["meta"].get("patch_size")
        entries.append((name, forward, mcfg, patch, m.threshold))
    panels = [("ground truth", target)]
    for name, forward, mcfg, patch, threshold in entries:
        probs = predict_volume(forward, image, mcfg.spatial_dims, mcfg.divisor, patch_size=patch)
        cut = np.array([threshold[r] for r in REGIONS], dtype=np.float32).reshape(3, 1, 1, 1)
        pred = probs > cut
        mean = float(np.mean([dice(pred[i], target[i]) for i in range(len(REGIONS))]))
        panels.append((f"{name}\nDice {mean:.3f}", pred))
    paths = []
    for fmt in formats:
        paths.append(
            save_overlay(
                out_dir / f"overlay.{fmt}",
                image,
                panels,
                title=f"test subject {sid}: ground truth, baseline, two Pareto models",
            )
        )
    return paths


def _short(m: TrialModel) -> str:
    return f"{m.recipe['precision']}, {m.size_bytes / 1e6:.3g} MB"
