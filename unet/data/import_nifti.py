"""Import BraTS NIfTI case folders into one canonical file (needs nibabel: the ``nifti`` extra).

Both namings are recognised, ``.nii.gz`` or ``.nii``::

    2019-2021:  <case>/<case>_flair.nii.gz  _t1  _t1ce  _t2  [_seg]
    2023+:      <case>/<case>-t2f.nii.gz    -t1n -t1c  -t2w [-seg]     (t2f = flair, t1n = t1,
                                                                        t1c = t1ce, t2w = t2)

    python -m unet.data.import_nifti data/MICCAI_BraTS2020_TrainingData runs/brats2020.h5

Cases are found anywhere below SRC_DIR (so ``HGG/`` and ``LGG/`` sub-folders work) and grouped
by folder and ``<case>`` prefix; the subject id is ``<case>``. A case without a seg file is
imported unlabelled. Labels: 2019-2021 segmentations hold {0, 1, 2, 4}; 2023+ ones hold
{0, 1, 2, 3} with 3 = enhancing tumour, which is mapped to 4 (the canonical BraTS label).

Orientation: nibabel gives arrays in voxel order (i, j, k); BraTS stores axial slices along k.
The canonical (D, H, W) is (k, j, i), i.e. ``array.transpose(2, 1, 0)``, with no flips: the
voxel order of the files is kept (BraTS volumes all share one orientation). An axial slice of
the canonical file is therefore ``nifti[:, :, k].T``.

Bad input (an unreadable file, a missing modality, shapes that differ within a case, NaN or
inf, an unexpected label) is refused with an error naming the file; the output is atomic.
"""

from __future__ import annotations

import argparse
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
from tqdm import tqdm

from unet.data.canonical import DEFAULT_SPLIT_FRACTIONS, MODALITIES, CanonicalWriter, DataError
from unet.data.import_common import (
    MissingDependencyError,
    add_split_arguments,
    run_cli,
    split_options,
)

# file suffix -> (canonical modality or "seg", naming generation)
KINDS = {
    "flair": ("flair", 2019),
    "t1": ("t1", 2019),
    "t1ce": ("t1ce", 2019),
    "t2": ("t2", 2019),
    "t2f": ("flair", 2023),
    "t1n": ("t1", 2023),
    "t1c": ("t1ce", 2023),
    "t2w": ("t2", 2023),
    "seg": ("seg", 0),
}
FILE_PATTERN = re.compile(
    r"^(?P<case>.+)[_-](?P<kind>" + "|".join(KINDS) + r")\.nii(?:\.gz)?$", re.IGNORECASE
)
SEG_LABELS = {2019: (0, 1, 2, 4), 2023: (0, 1, 2, 3)}


def _nibabel() -> ModuleType:
    try:
        import nibabel
    except ImportError:
        raise MissingDependencyError(
            "nibabel is required for NIfTI import: pip install 'unet-compress[nifti]'"
        ) from None
    return nibabel


def find_cases(src_dir: str | os.PathLike[str]) -> dict[str, dict[str, Path]]:
    """``{case id: {"flair"|"t1"|"t1ce"|"t2"|"seg": path}}`` for every case below ``src_dir``.

    NIfTI files that follow neither naming are skipped with a warning.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise DataError(f"{src}: not a directory")
    cases: dict[tuple[Path, str], dict[str, Path]] = {}
    ignored = []
    for path in sorted(src.rglob("*.nii*")):
        if not path.is_file() or not path.name.lower().endswith((".nii", ".nii.gz")):
            continue
        match = FILE_PATTERN.match(path.name)
        if match is None:
            ignored.append(path)
            continue
        kind = KINDS[match.group("kind").lower()][0]
        files = cases.setdefault((path.parent, match.group("case")), {})
        if kind in files:
            raise DataError(f"{path}: a second {kind} file for this case (also {files[kind].name})")
        files[kind] = path
    if ignored:
        warnings.warn(
            f"{src}: ignored {len(ignored)} NIfTI file(s) named like no BraTS modality, "
            f"e.g. {ignored[0]}",
            stacklevel=2,
        )
    if not cases:
        raise DataError(f"{src}: no BraTS NIfTI cases (<case>_flair.nii.gz or <case>-t2f.nii.gz)")
    by_id: dict[str, dict[str, Path]] = {}
    for (folder, case), files in sorted(cases.items()):
        if case in by_id:
            raise DataError(
                f"{folder / case}: case id {case!r} also in {by_id[case]['flair'].parent}"
            )
        missing = [m for m in MODALITIES if m not in files]
        if missing:
            raise DataError(f"{folder}: case {case!r} is missing the {', '.join(missing)} image(s)")
        by_id[case] = files
    return by_id


def _generation(files: dict[str, Path]) -> int:
    years = {
        KINDS[FILE_PATTERN.match(files[m].name).group("kind").lower()][1]  # type: ignore[union-attr]
        for m in MODALITIES
    }
    if len(years) != 1:
        raise DataError(
            f"{files['flair'].parent}: case mixes 2019-2021 (_flair) and 2023+ (-t2f) file names"
        )
    return years.pop()


def _load(nib: ModuleType, path: Path) -> np.ndarray:
    """The file's array as (D, H, W) = (k, j, i)."""
    try:
        data = np.asanyarray(nib.load(path).dataobj)
    except Exception as exc:  # nibabel raises many types for broken files
        raise DataError(
            f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})"
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {data.shape}")
    if data.dtype.kind not in "biuf":
        raise DataError(f"{path}: unsupported data type {data.dtype}")
    return data.transpose(2, 1, 0)


def read_case(files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray | None]:
    """``(image (4, D, H, W) float32 in MODALITIES order, label (D, H, W) uint8 or None)``."""
    nib = _nibabel()
    generation = _generation(files)
    first = files[MODALITIES[0]]
    image = None
    for c, modality in enumerate(MODALITIES):
        path = files[modality]
        data = _load(nib, path)
        if image is None:
            image = np.empty((len(MODALITIES), *data.shape), dtype=np.float32)
        elif data.shape != image.shape[1:]:
            raise DataError(
                f"{path}: shape {data.shape} differs from {first.name}'s {image.shape[1:]} "
                "(as (D, H, W))"
            )
        image[c] = data
        if not np.all(np.isfinite(image[c])):
            raise DataError(f"{path}: image contains NaN or inf")
    assert image is not None
    if "seg" not in files:
        return image, None
    path = files["seg"]
    seg = _load(nib, path)
    if seg.shape != image.shape[1:]:
        raise DataError(
            f"{path}: shape {seg.shape} differs from {first.name}'s {image.shape[1:]} (as (D, H, W))"
        )
    allowed = SEG_LABELS[generation]
    if seg.dtype.kind == "f" and not np.all(np.isfinite(seg) & (seg == np.round(seg))):
        raise DataError(f"{path}: segmentation has non-integer values")
    bad = np.setdiff1d(np.unique(seg), allowed)
    if bad.size:
        naming = "2023+" if generation == 2023 else "2019-2021"
        raise DataError(
            f"{path}: label values {bad.tolist()} outside {list(allowed)} ({naming} naming)"
        )
    label = np.ascontiguousarray(seg, dtype=np.uint8)
    if generation == 2023:
        label[label == 3] = 4
    return image, label


def import_nifti(
    src_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    split_seed: int = 0,
    progress: bool = False,
) -> Path:
    """Convert the BraTS NIfTI cases below ``src_dir`` into the canonical file ``out`` (atomic)."""
    _nibabel()  # fail before scanning a large tree
    cases = find_cases(src_dir)
    with CanonicalWriter(
        out,
        source="brats-nifti",
        split_fractions=split_fractions,
        split_seed=split_seed,
        attrs={"nifti_source_dir": str(Path(src_dir).resolve()), "nifti_axes": "D,H,W=k,j,i"},
    ) as writer:
        bar = tqdm(cases.items(), desc="cases", unit="case", disable=None if progress else True)
        for case, files in bar:
            image, label = read_case(files)
            writer.add(case, image, label, origin=str(files["flair"].parent))
    return Path(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m unet.data.import_nifti",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("src_dir", type=Path, help="folder holding BraTS case folders")
    parser.add_argument("out", type=Path, help="canonical HDF5 file to write")
    add_split_arguments(parser)
    args = parser.parse_args(argv)
    fractions, split_seed = split_options(parser, args)
    return run_cli(
        parser,
        lambda: import_nifti(
            args.src_dir, args.out, split_fractions=fractions, split_seed=split_seed, progress=True
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
