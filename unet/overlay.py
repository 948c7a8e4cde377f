"""Overlay figures: the four modalities, then ground truth and predictions on one axial slice.

Regions are drawn as filled colours with contours: WT (oedema and all) yellow, TC orange,
ET red, on the FLAIR image. Used by ``unet.predict --overlay`` and by the sweep's overlay grid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unet.data.canonical import MODALITIES, REGIONS

REGION_COLOURS = {"WT": "#ffd400", "TC": "#ff7f0e", "ET": "#d62728"}


def most_tumour_slice(regions: np.ndarray) -> int:
    """Axial index with the most whole-tumour voxels (the middle slice if there is none)."""
    area = regions[0].reshape(regions.shape[1], -1).sum(1)
    return int(area.argmax()) if area.any() else regions.shape[1] // 2


def _draw_regions(ax, background: np.ndarray, regions: np.ndarray) -> None:
    from matplotlib.colors import to_rgba

    ax.imshow(background, cmap="gray", interpolation="nearest")
    for i, r in enumerate(REGIONS):
        mask = regions[i]
        if not mask.any():
            continue
        rgba = np.zeros((*mask.shape, 4))
        rgba[mask] = to_rgba(REGION_COLOURS[r], alpha=0.35)
        ax.imshow(rgba, interpolation="nearest")
        ax.contour(mask.astype(float), levels=[0.5], colors=[REGION_COLOURS[r]], linewidths=0.8)


def save_overlay(
    path: str | os.PathLike[str],
    image: np.ndarray,
    panels: Sequence[tuple[str, np.ndarray]],
    *,
    slice_index: int | None = None,
    title: str = "",
) -> Path:
    """Write a PNG (or PDF by suffix): 4 modality panels, then one panel per (name, regions).

    ``image`` is (4, D, H, W); each ``regions`` is bool (3, D, H, W) in the order WT, TC, ET.
    The slice defaults to the most tumour-rich one of the first panel (the ground truth).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from unet.io import atomic_path

    z = most_tumour_slice(panels[0][1]) if slice_index is None else int(slice_index)
    n = len(MODALITIES) + len(panels)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6), constrained_layout=True)
    for ax, (c, name) in zip(axes, enumerate(MODALITIES), strict=False):
        ax.imshow(image[c, z], cmap="gray", interpolation="nearest")
        ax.set_title(name.upper(), fontsize=9)
    for ax, (name, regions) in zip(axes[len(MODALITIES) :], panels, strict=True):
        _draw_regions(ax, image[0, z], regions[:, z])
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    handles = [Patch(color=REGION_COLOURS[r], label=r) for r in REGIONS]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"{title}  (axial slice {z})".strip(), fontsize=10)
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=110, format=target.suffix.lstrip(".") or "png")
    plt.close(fig)
    return target
