"""Synthetic BraTS-like phantom: brains with nested tumours, written as a canonical file.

No data can be downloaded where this project is built and tested, so this module makes a
BraTS-like data set on the spot::

    python -m unet.phantom --out runs/phantom.h5                  # 100 subjects of 48x128x128
    python -m unet.phantom --out runs/hard.h5 --difficulty 1.5 --preview runs/hard.png

Each subject is a skull-stripped brain (a randomly deformed ellipsoid; background exactly 0)
with grey / white matter texture, a cortical ribbon cut by sulci, an interhemispheric fissure,
lateral ventricles and deep grey nuclei, and 0-2 tumours. A tumour is nested: necrotic /
non-enhancing core (label 1) inside an enhancing rim (label 4) inside oedema (label 2), each
boundary a random-field-perturbed blob around a randomly rotated and stretched ellipsoid.
Per-modality contrasts mimic MRI: FLAIR (oedema bright, CSF dark), T1 (tumour slightly dark),
T1ce (enhancing rim bright, necrosis dark), T2 (oedema and CSF bright). Unlabelled tumour
mimics (small FLAIR/T2-bright white-matter lesions, T1ce-bright vessels) sit in healthy tissue.
The "scanner" then applies a partial-volume blur, a smooth multiplicative bias field per
modality and Rician noise.

``difficulty`` (float >= 0, default 0.8) is the one knob for how hard the data set is; it sets
every field of `Knobs` (noise, blur, bias, how far tumour contrast may fade into the tissue
around it, how soft oedema boundaries are, the share of small tumours, the number of mimics),
so that a higher difficulty gives a lower Dice.

Determinism: subject ``i`` draws only from ``SeedSequence(seed, spawn_key=(i,))``, so the same
seed gives byte-identical arrays, and subject ``i`` does not depend on how many subjects are
generated. Tumour-free subjects follow a low-discrepancy sequence, so any run of consecutive
subjects holds close to ``tumour_free_fraction`` of them.

Smooth random fields are sums of Gaussian bumps on a coarse grid, evaluated separably (three
small tensor contractions, no full-resolution filtering), which keeps the default file
(100 subjects of 48x128x128) at about half a second per subject. The drawing itself is
`unet.phantom_draw`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from unet.data.canonical import (
    MODALITIES,
    CanonicalWriter,
    label_from_regions,
    zscore_brain,
)
from unet.data.import_common import add_split_arguments, split_options
from unet.io import atomic_path
from unet.phantom_draw import Knobs, acquire, add_mimic, add_tumour, anatomy

PHANTOM_VERSION = 1
PARALLEL_VOXELS = 2**24  # ~8 s of generation on one core: worth a process pool
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


PHANTOM_SPLIT_FRACTIONS = (0.5, 0.25, 0.25)


@dataclass(frozen=True)
class PhantomConfig:
    """What to generate; primitives only, so it can be recorded in the file and in reports."""

    subjects: int = 100
    shape: tuple[int, int, int] = (48, 128, 128)  # (D, H, W); D is the axial (slice) axis
    seed: int = 0
    difficulty: float = 0.8
    tumour_free_fraction: float = 0.15
    two_tumour_fraction: float = 0.3  # among subjects with a tumour
    split_seed: int = 0
    # Half of the subjects for evaluation: val and test hold 25 subjects each by default, so a
    # paired comparison over subjects has the power to decide a 1-point Dice difference.
    split_fractions: tuple[float, float, float] = PHANTOM_SPLIT_FRACTIONS

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        if self.subjects < 1:
            raise ValueError(f"subjects must be >= 1, got {self.subjects}")
        if len(self.shape) != 3 or min(self.shape) < 8:
            raise ValueError(f"shape must be three sizes (D, H, W) >= 8, got {self.shape}")
        if not (math.isfinite(self.difficulty) and self.difficulty >= 0):
            raise ValueError(f"difficulty must be a finite number >= 0, got {self.difficulty}")
        for name in ("tumour_free_fraction", "two_tumour_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- public API


def tumour_count(cfg: PhantomConfig, index: int) -> int:
    """How many tumours subject ``index`` has (0, 1 or 2); cheap, no image is made."""
    offset = np.random.SeedSequence(cfg.seed).generate_state(1)[0] / 2.0**32
    if (offset + index * _GOLDEN) % 1.0 < cfg.tumour_free_fraction:
        return 0
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(index, 1)))
    return 2 if rng.random() < cfg.two_tumour_fraction else 1


def generate_subject(cfg: PhantomConfig, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Subject ``index`` of ``cfg``: (raw image (4, D, H, W) float32, label (D, H, W) uint8).

    The image is in arbitrary positive units (white matter on T1 ~ 1), background exactly 0;
    `write_phantom` z-scores it like any importer. Labels are BraTS: 0, 1, 2, 4.
    """
    if index < 0:
        raise ValueError(f"subject index must be >= 0, got {index}")
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(index,)))
    knobs = Knobs.from_difficulty(cfg.difficulty)
    subject = anatomy(rng, cfg.shape)
    for _ in range(tumour_count(cfg, index)):
        add_tumour(rng, subject, knobs, cfg.difficulty)
    for _ in range(rng.poisson(knobs.mimics_mean)):
        add_mimic(rng, subject)
    image = acquire(rng, subject, knobs)
    return image, label_from_regions(subject.regions)


def subject_id(index: int) -> str:
    return f"phantom_{index:03d}"


def phantom_attrs(cfg: PhantomConfig) -> dict[str, Any]:
    """Root attributes recording everything needed to regenerate the file."""
    attrs: dict[str, Any] = {"phantom_version": PHANTOM_VERSION}
    attrs.update({f"phantom_{k}": v for k, v in cfg.to_dict().items()})
    knobs = Knobs.from_difficulty(cfg.difficulty)
    attrs.update({f"phantom_knob_{f.name}": getattr(knobs, f.name) for f in fields(knobs)})
    attrs["phantom_config"] = json.dumps(cfg.to_dict(), sort_keys=True)
    return attrs


def write_phantom(
    path: str | Path, cfg: PhantomConfig, *, progress: bool = False, workers: int | None = None
) -> Path:
    """Generate ``cfg.subjects`` subjects into the canonical file ``path`` (atomic).

    ``workers``: processes generating subjects (1 = in this process; default: the cores this
    process may use for a phantom of >= `PARALLEL_VOXELS` voxels in all, else 1, since
    starting a process costs ~1 s). Each subject is a pure function of ``(cfg, index)`` and
    they are written in index order, so the file is the same for every worker count.
    """
    if workers is None:
        big = cfg.subjects * math.prod(cfg.shape) >= PARALLEL_VOXELS
        workers = default_workers() if big else 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    workers = min(workers, cfg.subjects)
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(
            CanonicalWriter(
                path,
                source="phantom",
                split_fractions=cfg.split_fractions,
                split_seed=cfg.split_seed,
                attrs=phantom_attrs(cfg),
            )
        )
        draw = functools.partial(generate_subject, cfg)
        if workers > 1:  # spawn: the caller may hold OpenMP threads (torch) that fork would copy
            pool = stack.enter_context(
                ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            )
            subjects = pool.map(draw, range(cfg.subjects))
        else:
            subjects = map(draw, range(cfg.subjects))
        bar = tqdm(
            subjects,
            total=cfg.subjects,
            desc="phantom",
            unit="subject",
            disable=None if progress else True,
        )
        for i, (image, label) in enumerate(bar):
            writer.add(subject_id(i), image, label, origin=f"phantom subject {i}")
    return Path(path)


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def save_preview(path: str | Path, image: np.ndarray, label: np.ndarray, title: str = "") -> Path:
    """PNG of the four modalities and the label: the axial slice and the coronal plane through
    the largest tumour cross-section (or the middle of the volume if there is none)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    image, _, _ = zscore_brain(image)
    d, h, w = label.shape
    area = (label > 0).sum(axis=(1, 2))
    z = int(np.argmax(area)) if area.any() else d // 2
    rows = (label[z] > 0).sum(axis=1)
    y = int(np.argmax(rows)) if rows.any() else h // 2
    planes = [
        (f"axial z={z}", lambda a: a[..., z, :, :], 1.0),
        (f"coronal y={y}", lambda a: a[..., :, y, :][..., ::-1, :], w / d),
    ]
    colours = ListedColormap(["black", "tab:red", "tab:green", "black", "yellow"])
    fig = Figure(figsize=(15, 6.5), layout="constrained")
    axs = fig.subplots(2, 5)
    brain = image.any(axis=0)
    for row, (plane_name, take, aspect) in enumerate(planes):
        for m, name in enumerate(MODALITIES):
            values = image[m][brain]
            lo, hi = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 1.0)
            shown = np.where(take(brain), take(image[m]), lo)  # background black
            axs[row, m].imshow(shown, cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
            axs[row, m].set_title(f"{name} ({plane_name})", fontsize=9)
        axs[row, 4].imshow(
            take(label), cmap=colours, vmin=0, vmax=4, aspect=aspect, interpolation="nearest"
        )
        axs[row, 4].set_title("label: 1 core red, 2 oedema green, 4 enh. yellow", fontsize=8)
    for ax in axs.flat:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return Path(path)


def _parser() -> argparse.ArgumentParser:
    defaults = PhantomConfig()
    p = argparse.ArgumentParser(
        prog="python -m unet.phantom",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, help="canonical HDF5 file to write")
    p.add_argument("--subjects", type=int, default=defaults.subjects, help="number of subjects")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("D", "H", "W"),
        default=defaults.shape,
        help="volume shape (voxels)",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the draws")
    p.add_argument(
        "--difficulty",
        type=float,
        default=defaults.difficulty,
        help="0 = clean and easy; higher = more noise/blur/bias, fainter and smaller "
        "tumours, more mimics",
    )
    p.add_argument(
        "--tumour-free-fraction",
        type=float,
        default=defaults.tumour_free_fraction,
        help="share of subjects without a tumour",
    )
    p.add_argument(
        "--two-tumour-fraction",
        type=float,
        default=defaults.two_tumour_fraction,
        help="share of subjects with two tumours among those with any",
    )
    add_split_arguments(p, PHANTOM_SPLIT_FRACTIONS)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes generating subjects (default: this machine's cores for a phantom of "
        f">= {PARALLEL_VOXELS} voxels in all, else 1)",
    )
    p.add_argument("--preview", type=Path, help="also write a PNG of one subject")
    p.add_argument(
        "--preview-subject",
        type=int,
        default=None,
        help="subject index for --preview (default: the first one with a tumour)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.out is None and args.preview is None:
        parser.error("nothing to do: give --out and/or --preview")
    fractions, split_seed = split_options(parser, args)
    try:
        cfg = PhantomConfig(
            subjects=args.subjects,
            shape=tuple(args.shape),
            seed=args.seed,
            difficulty=args.difficulty,
            tumour_free_fraction=args.tumour_free_fraction,
            two_tumour_fraction=args.two_tumour_fraction,
            split_seed=split_seed,
            split_fractions=fractions,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.out is not None:
        start = time.perf_counter()
        if args.workers is not None and args.workers < 1:
            parser.error(f"--workers must be >= 1, got {args.workers}")
        write_phantom(args.out, cfg, progress=sys.stderr.isatty(), workers=args.workers)
        free = sum(tumour_count(cfg, i) == 0 for i in range(cfg.subjects))
        size_mb = args.out.stat().st_size / 1e6
        print(
            f"wrote {args.out}: {cfg.subjects} subjects ({free} tumour-free) of shape "
            f"{cfg.shape}, difficulty {cfg.difficulty}, {size_mb:.0f} MB in "
            f"{time.perf_counter() - start:.1f} s"
        )
    if args.preview is not None:
        index = args.preview_subject
        if index is None:
            index = next((i for i in range(cfg.subjects) if tumour_count(cfg, i) > 0), 0)
        image, label = generate_subject(cfg, index)
        save_preview(
            args.preview,
            image,
            label,
            title=f"{subject_id(index)}, difficulty {cfg.difficulty}, seed {cfg.seed}",
        )
        print(f"wrote {args.preview}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
