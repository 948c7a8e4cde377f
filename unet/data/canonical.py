"""The canonical data set: one HDF5 file of subjects, and the subject-level split.

Layout (see DESIGN.md)::

    /                attrs: format="unet-compress/brats-v1", modalities, labels, source,
                             split_fractions=(train, val, test), split_seed, fingerprint
    /subjects/<id>/image   float32 (4, D, H, W), z-scored per channel over brain voxels
                           attrs: norm_mean (4,), norm_std (4,)  (of the raw intensities)
    /subjects/<id>/label   uint8 (D, H, W), values in {0, 1, 2, 4}; absent if unlabelled

Targets are the three nested BraTS regions, in this order: WT = label > 0,
TC = label in {1, 4}, ET = label == 4 (`regions_from_label`).

Writing goes through `CanonicalWriter`, which validates every array, writes to a temporary
file and renames it into place only when everything succeeded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from unet.io import atomic_path

FORMAT = "unet-compress/brats-v1"
MODALITIES = ("flair", "t1", "t1ce", "t2")
LABELS = (0, 1, 2, 4)
REGIONS = ("WT", "TC", "ET")
SPLITS = ("train", "val", "test")
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)


class DataError(ValueError):
    """Bad input data; the message names the file (and subject) and what is wrong."""


def regions_from_label(label: np.ndarray) -> np.ndarray:
    """BraTS label map (..., values 0/1/2/4) -> bool targets (3, ...) in the order WT, TC, ET."""
    return np.stack([label > 0, (label == 1) | (label == 4), label == 4])


def label_from_regions(regions: np.ndarray) -> np.ndarray:
    """Inverse of `regions_from_label` for nested binary maps (3, ...) -> uint8 labels."""
    wt, tc, et = (np.asarray(r, dtype=bool) for r in regions)
    label = np.zeros(wt.shape, dtype=np.uint8)
    label[wt] = 2
    label[wt & tc] = 1
    label[wt & tc & et] = 4
    return label


def zscore_brain(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score each channel over brain voxels (non-zero in any channel); background stays 0.

    Returns ``(normalised float32 image, means (C,), stds (C,))`` of the raw intensities.
    """
    image = np.asarray(image, dtype=np.float32)
    brain = np.any(image != 0, axis=0)
    out = np.zeros_like(image)
    means = np.zeros(image.shape[0], dtype=np.float64)
    stds = np.ones(image.shape[0], dtype=np.float64)
    if brain.any():
        for c in range(image.shape[0]):
            values = image[c][brain].astype(np.float64)
            means[c] = values.mean()
            stds[c] = max(values.std(), 1e-8)
            out[c][brain] = ((values - means[c]) / stds[c]).astype(np.float32)
    return out, means, stds


def split_subjects(
    subject_ids: Sequence[str],
    fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Deterministic subject-level split into train / val / test.

    Subjects are sorted, shuffled with ``seed`` and cut by ``fractions`` (normalised). With
    at least three subjects, val and test each get at least one.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {fractions}")
    ids = sorted(subject_ids)
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(len(ids))]
    total = float(sum(fractions))
    n = len(ids)
    n_val = int(round(n * fractions[1] / total))
    n_test = int(round(n * fractions[2] / total))
    if n >= 3:
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    n_val = min(n_val, n)
    n_test = min(n_test, n - n_val)
    n_train = n - n_val - n_test
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    # A few axial slices x 64x64 tiles: one slice and one 3D patch are both a handful of chunks.
    *lead, d, h, w = shape
    return (*lead, min(d, 4), min(h, 64), min(w, 64))


class CanonicalWriter:
    """Write a canonical file atomically; use as a context manager.

    >>> with CanonicalWriter("out.h5", source="phantom") as w:           # doctest: +SKIP
    ...     w.add("s000", image, label)          # image (4, D, H, W), label (D, H, W) or None

    Nothing appears at ``path`` unless the ``with`` block finishes without an exception.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        source: str,
        split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
        split_seed: int = 0,
        normalize: bool = True,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.source = source
        self.split_fractions = tuple(float(f) for f in split_fractions)
        split_subjects(["a", "b", "c"], self.split_fractions, split_seed)  # validates fractions
        self.split_seed = int(split_seed)
        self.normalize = normalize
        self.extra_attrs = dict(attrs or {})
        self._ctx: Any = None
        self._file: h5py.File | None = None
        self._hash = hashlib.sha256()
        self.subject_ids: list[str] = []

    def __enter__(self) -> CanonicalWriter:
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._file = h5py.File(tmp, "w")
        f = self._file
        f.attrs["format"] = FORMAT
        f.attrs["modalities"] = list(MODALITIES)
        f.attrs["labels"] = list(LABELS)
        f.attrs["source"] = self.source
        f.attrs["split_fractions"] = list(self.split_fractions)
        f.attrs["split_seed"] = self.split_seed
        for k, v in self.extra_attrs.items():
            f.attrs[k] = v
        f.create_group("subjects")
        return self

    def add(
        self,
        subject_id: str,
        image: np.ndarray,
        label: np.ndarray | None,
        *,
        origin: str | None = None,
    ) -> None:
        """Validate and append one subject. ``origin`` names the input file(s) for errors."""
        assert self._file is not None, "use CanonicalWriter as a context manager"
        where = f"{origin or self.path}: subject {subject_id!r}"
        if "/" in subject_id or not subject_id:
            raise DataError(f"{where}: subject id must be non-empty and contain no '/'")
        if subject_id in self._file["subjects"]:
            raise DataError(f"{where}: duplicate subject id")
        image = np.asarray(image)
        if image.ndim != 4 or image.shape[0] != len(MODALITIES):
            raise DataError(f"{where}: image must have shape (4, D, H, W), got {image.shape}")
        if not np.issubdtype(image.dtype, np.number) or np.issubdtype(
            image.dtype, np.complexfloating
        ):
            raise DataError(f"{where}: image must be real numeric, got dtype {image.dtype}")
        if not np.all(np.isfinite(image)):
            raise DataError(f"{where}: image contains NaN or inf")
        if label is not None:
            label = np.asarray(label)
            if label.shape != image.shape[1:]:
                raise DataError(
                    f"{where}: label shape {label.shape} does not match image shape {image.shape[1:]}"
                )
            if not (
                np.issubdtype(label.dtype, np.integer) or np.issubdtype(label.dtype, np.floating)
            ):
                raise DataError(f"{where}: label must be integer, got dtype {label.dtype}")
            if np.issubdtype(label.dtype, np.floating) and (
                not np.all(np.isfinite(label)) or np.any(label != np.round(label))
            ):
                raise DataError(f"{where}: label has non-integer values")
            bad = np.setdiff1d(np.unique(label), np.array(LABELS))
            if bad.size:
                raise DataError(f"{where}: label values {bad.tolist()} outside {list(LABELS)}")
            label = label.astype(np.uint8)
        if self.normalize:
            image, means, stds = zscore_brain(image)
        else:
            image = image.astype(np.float32)
            means, stds = np.zeros(4), np.ones(4)
        g = self._file["subjects"].create_group(subject_id)
        d = g.create_dataset("image", data=image, chunks=_chunks(image.shape), compression="lzf")
        d.attrs["norm_mean"] = means
        d.attrs["norm_std"] = stds
        if label is not None:
            g.create_dataset("label", data=label, chunks=_chunks(label.shape), compression="lzf")
        self._hash.update(subject_id.encode())
        self._hash.update(np.ascontiguousarray(image).tobytes())
        if label is not None:
            self._hash.update(label.tobytes())
        self.subject_ids.append(subject_id)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._file is not None
        try:
            if exc_type is None:
                if not self.subject_ids:
                    raise DataError(f"{self.path}: no subjects to write")
                self._file.attrs["fingerprint"] = self._hash.hexdigest()[:16]
        except BaseException as error:
            exc_type, exc, tb = type(error), error, error.__traceback__
            raise
        finally:
            self._file.close()
            self._file = None
            self._ctx.__exit__(exc_type, exc, tb)  # renames on success, else removes the tmp
        return False


class CanonicalDataset:
    """Read-only view of a canonical file; opens the HDF5 handle lazily, once per process.

    Pickles as its path (and cache budget), so it is safe to hand to DataLoader workers.
    ``cache_mb``: an in-memory volume cache per process (`reserve_cache`; default none).

    >>> ds = CanonicalDataset("runs/phantom.h5")                     # doctest: +SKIP
    >>> ds.split("val"), ds.image("s003").shape, ds.label("s003").dtype
    """

    def __init__(self, path: str | os.PathLike[str], *, cache_mb: float = 0) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        f = self.file  # validate eagerly: a bad file fails here, naming the path
        self.attrs: dict[str, Any] = {k: f.attrs[k] for k in f.attrs}
        self.subjects: list[str] = sorted(f["subjects"].keys())
        self.labelled: list[str] = [s for s in self.subjects if "label" in f["subjects"][s]]
        self.cache_bytes = 0
        self._volumes: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        self._cached_bytes = 0
        self.reserve_cache(cache_mb)

    # pickling: only the path and the cache budget travel; each process opens its own handle
    # and fills its own cache
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "cache_mb": self.cache_bytes / 2**20}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], cache_mb=state.get("cache_mb", 0))

    def reserve_cache(self, cache_mb: float) -> None:
        """Keep whole subject volumes (image and label) in memory after their first read, up to
        at least ``cache_mb`` MiB in this process (never lowers the budget; 0 = no cache).

        Reading a volume from the compressed file costs more than a training step on crops or
        a forward pass of a small model, and a sweep reads the same volumes in every trial:
        everything that reads through this object (training draws, validation, calibration)
        shares the cache. Reads return copies, so a caller never changes the cache.
        """
        if not (cache_mb >= 0):
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.cache_bytes = max(self.cache_bytes, int(cache_mb * 2**20))

    @property
    def cached_bytes(self) -> int:
        """Bytes of the volumes in this process's cache."""
        return self._cached_bytes

    def _cached(self, subject_id: str) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The subject's (image, label or None) from the cache, read into it if it fits."""
        hit = self._volumes.get(subject_id)
        if hit is not None or not self.cache_bytes:
            return hit
        g = self._group(subject_id)
        image_ds, label_ds = g["image"], g.get("label")
        size = image_ds.size * image_ds.dtype.itemsize
        size += 0 if label_ds is None else label_ds.size * label_ds.dtype.itemsize
        if self._cached_bytes + size > self.cache_bytes:
            return None
        hit = (image_ds[...], None if label_ds is None else label_ds[...])
        self._volumes[subject_id] = hit
        self._cached_bytes += size
        return hit

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = open_canonical(self.path)
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def fingerprint(self) -> str:
        return str(self.attrs.get("fingerprint", ""))

    def split(self, name: str) -> list[str]:
        """Subject ids of split ``name`` (train / val / test); labelled subjects only."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        fractions = tuple(self.attrs.get("split_fractions", DEFAULT_SPLIT_FRACTIONS))
        seed = int(self.attrs.get("split_seed", 0))
        return split_subjects(self.labelled, fractions, seed)[name]

    def _group(self, subject_id: str) -> h5py.Group:
        try:
            return self.file["subjects"][subject_id]
        except KeyError:
            raise KeyError(f"{self.path}: no subject {subject_id!r}") from None

    def shape(self, subject_id: str) -> tuple[int, int, int]:
        """Spatial shape (D, H, W) of a subject."""
        return tuple(self._group(subject_id)["image"].shape[1:])  # type: ignore[return-value]

    def image(self, subject_id: str, index: Any = ...) -> np.ndarray:
        """float32 image (4, D, H, W), or ``image[:, index]`` when ``index`` is given."""
        where = ... if index is ... else (slice(None), *np.index_exp[index])
        hit = self._cached(subject_id)
        if hit is not None:
            return np.array(hit[0][where])  # a copy: callers never change the cache
        return self._group(subject_id)["image"][where]

    def label(self, subject_id: str, index: Any = ...) -> np.ndarray:
        """uint8 BraTS labels (D, H, W) (or a part by ``index``); KeyError if unlabelled."""
        hit = self._cached(subject_id)
        if hit is not None and hit[1] is not None:
            return np.array(hit[1][index])
        g = self._group(subject_id)
        if "label" not in g:
            raise KeyError(f"{self.path}: subject {subject_id!r} has no label")
        return g["label"][index]


def open_canonical(path: str | os.PathLike[str]) -> h5py.File:
    """Open and check a canonical file; `DataError` naming the file if it is not one."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such data file")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise DataError(f"{p}: not a readable HDF5 file ({exc})") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise DataError(
            f"{p}: not a canonical unet-compress data file (format attribute is not {FORMAT!r})"
        )
    if "subjects" not in f or not len(f["subjects"]):
        f.close()
        raise DataError(f"{p}: canonical file has no subjects")
    return f
