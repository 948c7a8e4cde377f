"""Torch datasets over a canonical file: 2D axial slices and 3D patches for training.

Both datasets are *streams of random draws*: item ``i`` is a pure function of ``(seed, i)``
(subject, position and augmentation all come from ``numpy.random.default_rng((seed, i))``).
So a batch does not depend on the number of DataLoader workers or on the history of the
process, and a training run resumes exactly by restarting the sampler at the next draw
number (`DrawSampler`)::

    from torch.utils.data import DataLoader
    from unet.data.datasets import DrawSampler, SliceDataset

    ds = SliceDataset("runs/phantom.h5", "train", tumour_fraction=0.5, divisor=8)
    loader = DataLoader(ds, batch_size=16, sampler=DrawSampler(start=0), drop_last=True)
    image, target = next(iter(loader))   # (16, 4, H, W), (16, 3, H, W) float32: WT, TC, ET

``len(dataset)`` is one nominal epoch (the number of slices, or of subjects for patches);
any non-negative index is valid. Whole-volume iteration for evaluation lives in
`unet.evaluate`, not here. `sample_inputs` draws un-augmented inputs, e.g. for int8
calibration. HDF5 handles are opened lazily in each worker process (`CanonicalDataset`
pickles as its path).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from unet.data.canonical import LABELS, CanonicalDataset, DataError, regions_from_label
from unet.inference import pad_to, round_up

Subjects = str | Sequence[str]

# Per subject and tumour label, at most this many foreground voxel positions are kept for
# foreground-centred patch sampling (nnU-Net keeps a similar random subset per class).
_MAX_FG_POSITIONS = 2000


def as_dataset(data: CanonicalDataset | str | os.PathLike[str]) -> CanonicalDataset:
    """A `CanonicalDataset` from itself or from a path."""
    return data if isinstance(data, CanonicalDataset) else CanonicalDataset(data)


def resolve_subjects(data: CanonicalDataset, subjects: Subjects) -> list[str]:
    """Subject ids from a split name (``"train"``) or a list of ids; all must be labelled."""
    ids = data.split(subjects) if isinstance(subjects, str) else list(subjects)
    if not ids:
        raise DataError(f"{data.path}: no labelled subjects in {subjects!r}")
    labelled = set(data.labelled)
    missing = [s for s in ids if s not in labelled]
    if missing:
        raise DataError(f"{data.path}: subjects without a label (or unknown): {missing[:5]}")
    return ids


def _augment(
    rng: np.random.Generator, image: np.ndarray, target: np.ndarray, axes: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips along ``axes`` and (if the last two are square) a random 90-degree turn.

    ``axes`` index the spatial axes of ``image`` (C, *spatial) and ``target`` (3, *spatial)
    alike, so the pair stays aligned.
    """
    flips = tuple(a for a in axes if rng.random() < 0.5)
    if flips:
        image, target = np.flip(image, flips), np.flip(target, flips)
    if image.shape[-1] == image.shape[-2]:
        k = int(rng.integers(4))
        if k:
            image, target = np.rot90(image, k, (-2, -1)), np.rot90(target, k, (-2, -1))
    return image, target


def window_start(
    rng: np.random.Generator,
    patch: Sequence[int],
    shape: Sequence[int],
    centre: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Start of a ``patch``-sized window inside an array of ``shape`` (each ``patch <= shape``).

    With ``centre``: the window centred on it, shifted only as far as needed to stay inside
    (so ``centre`` is always in the window); without: a uniformly random position.
    """
    if centre is None:
        return tuple(int(rng.integers(n - p + 1)) for p, n in zip(patch, shape, strict=True))
    return tuple(
        int(np.clip(c - p // 2, 0, n - p)) for c, p, n in zip(centre, patch, shape, strict=True)
    )


def _to_tensors(image: np.ndarray, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)),
    )


class DrawSampler(Sampler[int]):
    """Infinite sampler yielding draw numbers ``start, start + 1, ...``.

    Its whole state is the next draw number, so resuming a run means
    ``DrawSampler(start=step * batch_size)``.
    """

    def __init__(self, start: int = 0) -> None:
        if start < 0:
            raise ValueError(f"DrawSampler start must be >= 0, got {start}")
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        i = self.start
        while True:
            yield i
            i += 1


class SliceDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random 2D axial slices: ``(image (4, H, W), target (3, H, W))`` float32, WT/TC/ET.

    Args:
        data: canonical dataset or its path.
        subjects: split name (``"train"``) or list of labelled subject ids.
        tumour_fraction: probability that a draw comes from the slices that contain tumour
            (else from the tumour-free slices); ``None`` draws uniformly from all slices.
            If one of the two pools is empty, all slices are used.
        seed: draws are a pure function of ``(seed, index)``.
        augment: random flips of H and W and random 90-degree turns (square slices).
        divisor: the slices are zero-padded (at the high end of H and W, like
            `unet.inference`) to a common ``(H, W)``: the largest in-plane size among
            ``subjects`` rounded up to a multiple of ``divisor`` (pass
            ``model.config.divisor``). Padding is done here, not by the trainer.
        patch_size: ``(H, W)`` crops instead of whole slices (None: whole slices). A draw
            from the tumour slices is centred on one pixel of a tumour label (a label value
            picked uniformly among those in the slice, then a pixel of it), shifted only as
            far as needed to stay inside the padded slice; other draws are cropped at a
            uniformly random position. Slices smaller than the crop are zero-padded first.
            Crops make a training step ~5x cheaper for ``unet2d-small`` (64x64 vs 128x128).
        cache_mb: whole subject volumes (image and label) are kept in memory after their first
            draw, up to at least this many MiB per process: reading one slice from the
            compressed file costs more than a training step on crops. The cache belongs to
            the `CanonicalDataset` (`CanonicalDataset.reserve_cache`), so every reader of the
            same object shares it (a sweep worker's trials, a run's validation). Draws are
            the same with and without it; a DataLoader worker fills its own.

    The index of tumour slices is built once, reading every label volume once.
    """

    def __init__(
        self,
        data: CanonicalDataset | str | os.PathLike[str],
        subjects: Subjects,
        *,
        tumour_fraction: float | None = 0.5,
        seed: int = 0,
        augment: bool = True,
        divisor: int = 1,
        patch_size: Sequence[int] | None = None,
        cache_mb: float = 2048,
    ) -> None:
        if tumour_fraction is not None and not 0.0 <= tumour_fraction <= 1.0:
            raise ValueError(f"tumour_fraction must be in [0, 1] or None, got {tumour_fraction}")
        if divisor < 1:
            raise ValueError(f"divisor must be >= 1, got {divisor}")
        if patch_size is not None and (len(patch_size) != 2 or min(patch_size) < 1):
            raise ValueError(f"patch_size must be two positive ints (H, W), got {patch_size}")
        self.patch_size = None if patch_size is None else (int(patch_size[0]), int(patch_size[1]))
        self.data = as_dataset(data)
        self.data.reserve_cache(cache_mb)
        self.subjects = resolve_subjects(self.data, subjects)
        self.tumour_fraction = tumour_fraction
        self.seed = int(seed)
        self.augment = augment
        slices, tumour = [], []
        height = width = 0
        for s, sid in enumerate(self.subjects):
            label = self.data.label(sid)
            has_tumour = np.any(label > 0, axis=(1, 2))
            for z in range(label.shape[0]):
                slices.append((s, z))
                tumour.append(bool(has_tumour[z]))
            height, width = max(height, label.shape[1]), max(width, label.shape[2])
        #: (subject number, axial index) of every slice, and whether it contains tumour
        self.slices = np.asarray(slices, dtype=np.int64)
        self.has_tumour = np.asarray(tumour, dtype=bool)
        self._pools = (np.flatnonzero(self.has_tumour), np.flatnonzero(~self.has_tumour))
        self.spatial_shape = (round_up(height, divisor), round_up(width, divisor))
        if self.patch_size is not None:
            self.spatial_shape = (
                max(self.spatial_shape[0], self.patch_size[0]),
                max(self.spatial_shape[1], self.patch_size[1]),
            )

    def __len__(self) -> int:
        return len(self.slices)

    def _read(self, s: int, z: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (4, H, W) and label (H, W) of slice ``z`` of subject number ``s`` (copies)."""
        sid = self.subjects[s]
        return self.data.image(sid, index=z), self.data.label(sid, index=z)

    def pick(self, rng: np.random.Generator) -> int:
        """Row of `slices` for one draw (applies the tumour oversampling)."""
        tumour, clear = self._pools
        if self.tumour_fraction is None or not len(tumour) or not len(clear):
            return int(rng.integers(len(self.slices)))
        pool = tumour if rng.random() < self.tumour_fraction else clear
        return int(pool[rng.integers(len(pool))])

    def _crop(
        self, rng: np.random.Generator, image: np.ndarray, label: np.ndarray, row: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``patch_size`` window of a padded slice (tumour-centred for tumour draws)."""
        assert self.patch_size is not None
        centre = None
        if self.tumour_fraction is not None and self.has_tumour[row]:
            values = [v for v in LABELS[1:] if np.any(label == v)]
            where = np.argwhere(label == values[rng.integers(len(values))])
            centre = where[rng.integers(len(where))]
        top, left = window_start(rng, self.patch_size, label.shape, centre)
        window = (slice(top, top + self.patch_size[0]), slice(left, left + self.patch_size[1]))
        return image[(slice(None), *window)], label[window]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            raise IndexError(f"draw index must be >= 0, got {index}")
        rng = np.random.default_rng((self.seed, int(index)))
        row = self.pick(rng)
        s, z = self.slices[row]
        image, label = self._read(int(s), int(z))
        image, label = pad_to(image, self.spatial_shape), pad_to(label, self.spatial_shape)
        if self.patch_size is not None:
            image, label = self._crop(rng, image, label, row)
        target = regions_from_label(label)
        if self.augment:
            image, target = _augment(rng, image, target, axes=(1, 2))
        return _to_tensors(image, target)


class PatchDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random 3D patches: ``(image (4, *patch_size), target (3, *patch_size))`` float32.

    Args:
        data: canonical dataset or its path.
        subjects: split name or list of labelled subject ids.
        patch_size: (D, H, W) of every patch; volumes smaller than it are zero-padded (at
            the high end of each axis) first.
        fg_prob: probability that a draw is foreground-centred: a subject with tumour, a
            tumour label value (1, 2 or 4) among those it has, and one voxel of that label
            as the patch centre (shifted only as far as needed to keep the patch inside the
            padded volume, so the voxel is always in the patch). Otherwise: a uniformly
            random subject and a uniformly random patch position.
        seed: draws are a pure function of ``(seed, index)``.
        augment: random flips of D, H and W and random 90-degree turns in the H-W plane.

    Foreground positions (a random subset of at most 2000 per subject and label) are found
    once, reading every label volume once.
    """

    def __init__(
        self,
        data: CanonicalDataset | str | os.PathLike[str],
        subjects: Subjects,
        *,
        patch_size: Sequence[int] = (64, 64, 64),
        fg_prob: float = 0.5,
        seed: int = 0,
        augment: bool = True,
    ) -> None:
        patch = tuple(int(p) for p in patch_size)
        if len(patch) != 3 or min(patch) < 1:
            raise ValueError(f"patch_size must be three positive ints (D, H, W), got {patch_size}")
        if not 0.0 <= fg_prob <= 1.0:
            raise ValueError(f"fg_prob must be in [0, 1], got {fg_prob}")
        self.data = as_dataset(data)
        self.subjects = resolve_subjects(self.data, subjects)
        self.patch_size = patch
        self.fg_prob = float(fg_prob)
        self.seed = int(seed)
        self.augment = augment
        index_rng = np.random.default_rng(self.seed)
        #: per subject: {label value: (n, 3) int array of voxel positions (D, H, W)}
        self.foreground: list[dict[int, np.ndarray]] = []
        self._shapes: list[tuple[int, ...]] = []
        for sid in self.subjects:
            label = self.data.label(sid)
            self._shapes.append(label.shape)
            positions = {}
            for value in LABELS[1:]:
                where = np.argwhere(label == value)
                if len(where) > _MAX_FG_POSITIONS:
                    where = where[index_rng.choice(len(where), _MAX_FG_POSITIONS, replace=False)]
                if len(where):
                    positions[value] = where
            self.foreground.append(positions)
        self._with_tumour = np.array(
            [i for i, p in enumerate(self.foreground) if p], dtype=np.int64
        )
        self._padded = [
            tuple(max(n, p) for n, p in zip(shape, patch, strict=True)) for shape in self._shapes
        ]

    def __len__(self) -> int:
        return len(self.subjects)

    def pick(self, rng: np.random.Generator) -> tuple[int, tuple[int, ...]]:
        """Subject number and patch start (in the padded volume) for one draw."""
        if len(self._with_tumour) and rng.random() < self.fg_prob:
            s = int(self._with_tumour[rng.integers(len(self._with_tumour))])
            positions = self.foreground[s]
            values = sorted(positions)
            where = positions[values[rng.integers(len(values))]]
            centre = where[rng.integers(len(where))]
            return s, window_start(rng, self.patch_size, self._padded[s], centre)
        s = int(rng.integers(len(self.subjects)))
        start = window_start(rng, self.patch_size, self._padded[s])
        return s, start

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            raise IndexError(f"draw index must be >= 0, got {index}")
        rng = np.random.default_rng((self.seed, int(index)))
        s, start = self.pick(rng)
        sid = self.subjects[s]
        # The padded volume is the stored one plus zeros at the high ends: read what exists.
        read, place = [], []
        for st, p, n in zip(start, self.patch_size, self._shapes[s], strict=True):
            read.append(slice(st, min(st + p, n)))
            place.append(slice(0, min(st + p, n) - st))
        image = np.zeros((4, *self.patch_size), dtype=np.float32)
        label = np.zeros(self.patch_size, dtype=np.uint8)
        image[(slice(None), *place)] = self.data.image(sid, index=tuple(read))
        label[tuple(place)] = self.data.label(sid, index=tuple(read))
        target = regions_from_label(label)
        if self.augment:
            image, target = _augment(rng, image, target, axes=(1, 2, 3))
        return _to_tensors(image, target)


def sample_inputs(
    data: CanonicalDataset | str | os.PathLike[str],
    split: str = "train",
    n: int = 32,
    spatial_dims: int = 2,
    patch_size: Sequence[int] | None = None,
    seed: int = 0,
    *,
    divisor: int = 1,
) -> np.ndarray:
    """``n`` un-augmented model inputs from ``split``, float32 ``(n, 4, *spatial)``.

    2D: axial slices padded as in `SliceDataset` (to a multiple of ``divisor``); 3D: patches
    of ``patch_size`` (default 64^3) as in `PatchDataset`. About half of them show tumour
    (tumour slices / foreground-centred patches with probability 0.5). Meant for int8
    calibration and similar statistics.
    """
    return sample_pairs(data, split, n, spatial_dims, patch_size, seed, divisor=divisor)[0]


def sample_pairs(
    data: CanonicalDataset | str | os.PathLike[str],
    split: str = "train",
    n: int = 32,
    spatial_dims: int = 2,
    patch_size: Sequence[int] | None = None,
    seed: int = 0,
    *,
    divisor: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The inputs of `sample_inputs` with their targets: float32 ``(n, 4, *spatial)`` and
    ``(n, 3, *spatial)`` region masks (WT, TC, ET) of the same slices / patches."""
    if n < 1:
        raise ValueError(f"sample_inputs: n must be >= 1, got {n}")
    dataset: SliceDataset | PatchDataset
    if spatial_dims == 2:
        dataset = SliceDataset(
            data, split, tumour_fraction=0.5, seed=seed, augment=False, divisor=divisor
        )
    elif spatial_dims == 3:
        dataset = PatchDataset(
            data,
            split,
            patch_size=patch_size or (64, 64, 64),
            fg_prob=0.5,
            seed=seed,
            augment=False,
        )
    else:
        raise ValueError(f"sample_inputs: spatial_dims must be 2 or 3, got {spatial_dims}")
    items = [dataset[i] for i in range(n)]
    return (
        np.stack([x.numpy() for x, _ in items]),
        np.stack([y.numpy().astype(np.float32) for _, y in items]),
    )
