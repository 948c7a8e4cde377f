"""Import the Kaggle "BraTS2020 training data" HDF5 slices into one canonical file.

That data set is a folder of ``volume_<v>_slice_<s>.h5`` files (plus e.g. ``meta_data.csv``,
which is ignored), each one axial slice with ``image`` (H, W, 4) float and ``mask`` (H, W, 3)
one-hot uint8 (240 x 240 in the original; any H, W is accepted). Slices are grouped back into
volumes by ``<v>`` and stacked in numeric ``<s>`` order; subject ids are ``volume_<v>``::

    python -m unet.data.import_kaggle data/BraTS2020_training_data/content/data runs/brats.h5
    python -m unet.data.import_kaggle SRC OUT.h5 --mask-order core,oedema,enhancing \\
        --image-order flair,t1,t1ce,t2 --split-seed 0 --split-fractions 0.7 0.15 0.15

Mask channels map to BraTS labels core -> 1, oedema -> 2, enhancing -> 4. Copies of this data
set disagree on the channel orders, so both are options; check one volume (FLAIR: oedema
bright, CSF dark; T2: CSF bright; T1ce: enhancing rim bright) before trusting the defaults.
Every slice is validated (keys, shapes, dtypes, finite values, one-hot mask) and a volume with
a gap in its slice numbers is refused; errors name the file. The output is written atomically.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from unet.data.canonical import DEFAULT_SPLIT_FRACTIONS, MODALITIES, CanonicalWriter, DataError
from unet.data.import_common import add_split_arguments, name_order, run_cli, split_options

MASK_CLASSES = ("core", "oedema", "enhancing")
CLASS_LABELS = {"core": 1, "oedema": 2, "enhancing": 4}
FILE_PATTERN = re.compile(r"^volume_(\d+)_slice_(\d+)\.h5$")


def find_volumes(src_dir: str | os.PathLike[str]) -> dict[int, list[Path]]:
    """``{volume number: slice files in slice order}``; `DataError` on no files or a gap."""
    src = Path(src_dir)
    if not src.is_dir():
        raise DataError(f"{src}: not a directory")
    slices: dict[int, dict[int, Path]] = {}
    for path in src.iterdir():
        match = FILE_PATTERN.match(path.name)
        if match is None or not path.is_file():
            continue
        v, s = int(match.group(1)), int(match.group(2))
        if s in slices.setdefault(v, {}):
            raise DataError(f"{path}: duplicate of slice {s} of volume {v} ({slices[v][s].name})")
        slices[v][s] = path
    if not slices:
        raise DataError(f"{src}: no volume_<v>_slice_<s>.h5 files")
    volumes = {}
    for v in sorted(slices):
        numbers = sorted(slices[v])
        missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            raise DataError(
                f"{src}/volume_{v}_slice_*.h5: volume {v} is missing slice(s) {shown} "
                f"(has {numbers[0]}..{numbers[-1]})"
            )
        volumes[v] = [slices[v][s] for s in numbers]
    return volumes


def read_slice(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(image (H, W, 4), mask (H, W, 3))`` of one slice file."""
    try:
        with h5py.File(path, "r") as f:
            arrays = []
            for key, channels in (("image", 4), ("mask", 3)):
                if not isinstance(f.get(key), h5py.Dataset):
                    raise DataError(f"{path}: missing dataset {key!r} (has {sorted(f.keys())})")
                d = f[key]
                if d.ndim != 3 or d.shape[2] != channels:
                    raise DataError(
                        f"{path}: {key!r} must have shape (H, W, {channels}), got {d.shape}"
                    )
                if d.dtype.kind not in ("biuf" if key == "mask" else "iuf"):
                    raise DataError(f"{path}: {key!r} has unsupported dtype {d.dtype}")
                arrays.append(d[()])
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
    image, mask = arrays
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(f"{path}: image {image.shape[:2]} and mask {mask.shape[:2]} sizes differ")
    if not np.all(np.isfinite(image)):
        raise DataError(f"{path}: image contains NaN or inf")
    if not np.all((mask == 0) | (mask == 1)):
        raise DataError(f"{path}: mask values must be 0 or 1")
    overlap = int(np.count_nonzero(mask.sum(axis=2, dtype=np.int64) > 1))
    if overlap:
        raise DataError(f"{path}: mask is not one-hot: {overlap} voxel(s) have several classes set")
    return image, mask


def read_volume(
    files: Sequence[Path],
    *,
    mask_order: Sequence[str] = MASK_CLASSES,
    image_order: Sequence[str] = MODALITIES,
) -> tuple[np.ndarray, np.ndarray]:
    """Stack slice files into ``(image (4, D, H, W) float32 in MODALITIES order, label uint8)``."""
    channel_of = [image_order.index(m) for m in MODALITIES]  # stored channel per modality
    labels = np.array([CLASS_LABELS[c] for c in mask_order], dtype=np.uint8)
    image = label = None
    for z, path in enumerate(files):
        img, mask = read_slice(path)
        if image is None:
            image = np.empty((4, len(files), *img.shape[:2]), dtype=np.float32)
            label = np.empty((len(files), *img.shape[:2]), dtype=np.uint8)
        elif img.shape[:2] != image.shape[2:]:
            raise DataError(
                f"{path}: slice size {img.shape[:2]} differs from {files[0].name}'s "
                f"{image.shape[2:]}"
            )
        image[:, z] = np.moveaxis(img[..., channel_of], -1, 0)
        label[z] = (mask.astype(np.uint8) * labels).sum(axis=2, dtype=np.uint8)
    assert image is not None and label is not None
    return image, label


def import_kaggle(
    src_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mask_order: Sequence[str] = MASK_CLASSES,
    image_order: Sequence[str] = MODALITIES,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    split_seed: int = 0,
    progress: bool = False,
) -> Path:
    """Convert the slice folder ``src_dir`` into the canonical file ``out`` (atomic)."""
    for order, names, what in (
        (mask_order, MASK_CLASSES, "mask_order"),
        (image_order, MODALITIES, "image_order"),
    ):
        if sorted(order) != sorted(names):
            raise ValueError(f"{what} must be a permutation of {names}, got {tuple(order)}")
    volumes = find_volumes(src_dir)  # validates the whole layout before reading any slice
    attrs = {
        "kaggle_source_dir": str(Path(src_dir).resolve()),
        "kaggle_mask_order": list(mask_order),
        "kaggle_image_order": list(image_order),
    }
    with CanonicalWriter(
        out,
        source="kaggle-brats2020-slices",
        split_fractions=split_fractions,
        split_seed=split_seed,
        attrs=attrs,
    ) as writer:
        bar = tqdm(volumes.items(), desc="volumes", unit="vol", disable=None if progress else True)
        for v, files in bar:
            image, label = read_volume(files, mask_order=mask_order, image_order=image_order)
            writer.add(f"volume_{v}", image, label, origin=f"{Path(src_dir)}/volume_{v}_slice_*.h5")
    return Path(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m unet.data.import_kaggle",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("src_dir", type=Path, help="folder of volume_<v>_slice_<s>.h5 files")
    parser.add_argument("out", type=Path, help="canonical HDF5 file to write")
    parser.add_argument(
        "--mask-order",
        type=name_order(MASK_CLASSES, "--mask-order"),
        default=",".join(MASK_CLASSES),
        help="class held by each mask channel (labels: core 1, oedema 2, enhancing 4)",
    )
    parser.add_argument(
        "--image-order",
        type=name_order(MODALITIES, "--image-order"),
        default=",".join(MODALITIES),
        help="modality held by each image channel; the default is the commonly documented "
        "order, but some copies are documented as t1,t1ce,t2,flair: check one volume",
    )
    add_split_arguments(parser)
    args = parser.parse_args(argv)
    fractions, split_seed = split_options(parser, args)
    return run_cli(
        parser,
        lambda: import_kaggle(
            args.src_dir,
            args.out,
            mask_order=args.mask_order,
            image_order=args.image_order,
            split_fractions=fractions,
            split_seed=split_seed,
            progress=True,
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
