"""The validation step of the pipeline: threshold(s) and post-processing chosen on val, scored.

    from compress.validation import validate
    val = validate(forward, model, data, "per-region", None, None, components="search")
    val.threshold, val.min_component, val.min_volume, val.val_dice   # chosen and scored on val

``forward`` is the deployed artifact's forward (`compress.deploy.artifact_forward`), so what is
chosen and scored is what the artifact predicts. Only the validation split is read (and the
training split's labels, for the post-processing size caps, `compress.components.size_caps`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from compress.components import search_min_components, size_caps
from compress.threshold import search_thresholds
from unet.components import stored_postprocessing
from unet.data.canonical import CanonicalDataset
from unet.evaluate import as_thresholds, collect_probabilities, evaluate_probabilities
from unet.inference import Forward
from unet.models import UNet
from unet.stats import paired_comparison


@dataclass(frozen=True)
class ValResult:
    """Validation outcome of one model: threshold(s), post-processing (minimum component sizes
    and region volumes), mean Dice, per-subject Dice rows, and the two searches (None where not
    searched)."""

    threshold: dict[str, float]
    min_component: dict[str, int]
    min_volume: dict[str, int]
    val_dice: dict[str, float]
    per_subject: list[dict[str, Any]]
    search: dict[str, Any] | None
    component_search: dict[str, Any] | None = None


def validate(
    forward: Forward,
    model: UNet,
    data: CanonicalDataset,
    mode: str,
    fixed: dict[str, float] | None,
    patch_size: Any,
    *,
    components: str = "keep",
    fixed_post: Mapping[str, Any] | None = None,
    rule: str = "best",
    anchor: dict[str, Any] | None = None,
) -> ValResult:
    """Predict the val split; threshold(s) searched (``mode`` global / per-region) or ``fixed``;
    then the post-processing (minimum component sizes and region volumes) searched
    (``components="search"``, `compress.components`) or kept (``fixed_post``: a checkpoint's
    meta or any mapping with ``min_component`` / ``min_volume``, read by
    `unet.components.stored_postprocessing`; None = remove nothing); per-subject Dice at the chosen threshold(s) and
    post-processing, for paired comparisons. ``rule="one-se"``: the searches keep ``anchor``'s
    ``threshold`` / ``min_component`` / ``min_volume`` (the reference's M) unless val shows a
    gain beyond one standard error (`unet.selection`)."""
    anchor = anchor or {}
    cfg = model.config
    items = collect_probabilities(
        forward, data, data.split("val"), cfg.spatial_dims, cfg.divisor, patch_size
    )
    search = None
    if mode == "fixed":
        threshold = as_thresholds(fixed)
    else:
        found = search_thresholds(items, mode=mode, rule=rule, anchor=anchor.get("threshold"))
        threshold, search = dict(found.thresholds), found.to_dict()
    component_search = None
    if components == "search":
        sized = search_min_components(
            items, threshold, caps=size_caps(data, "train"), rule=rule,
            anchor=anchor.get("min_component"), volume_anchor=anchor.get("min_volume"),
        )  # fmt: skip
        min_component, component_search = sized.min_component, sized.to_dict()
        min_volume = sized.min_volume
    else:
        kept = stored_postprocessing(fixed_post or {})
        min_component, min_volume = kept["min_component"], kept["min_volume"]
    evaluated = evaluate_probabilities(
        items, threshold, hd95=False, min_component=min_component, min_volume=min_volume
    )
    per_subject = [  # Dice and voxel counts (the detection split of `paired_val`), no HD95
        {"subject": r["subject"], "dice": r["dice"], "voxels": r["voxels"]}
        for r in evaluated["per_subject"]
    ]
    return ValResult(
        threshold,
        min_component,
        min_volume,
        dict(evaluated["mean"]["dice"]),
        per_subject,
        search,
        component_search,
    )


def paired_val(
    compressed: dict[str, Any], reference: dict[str, Any], **kwargs: Any
) -> dict[str, Any] | None:
    """Paired val comparison (`unet.stats.paired_comparison`) of two M dicts; None when the
    reference has no per-subject rows (measured by an older version)."""
    if "val_per_subject" not in reference:
        return None
    return paired_comparison(
        compressed["val_per_subject"], reference["val_per_subject"], **kwargs
    ).to_dict()
