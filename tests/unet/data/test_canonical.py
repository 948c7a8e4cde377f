"""The canonical file: atomic writer, validation, subject-level split, z-scoring, reader."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from unet.data.canonical import (
    FORMAT,
    LABELS,
    MODALITIES,
    CanonicalDataset,
    CanonicalWriter,
    DataError,
    label_from_regions,
    regions_from_label,
    split_subjects,
    zscore_brain,
)

SHAPE = (4, 8, 8)


def _subject(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = np.zeros((4, *SHAPE), dtype=np.float32)
    image[:, 1:3, 2:6, 2:6] = rng.uniform(1.0, 5.0, size=(4, 2, 4, 4))
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[1:3, 2:6, 2:6] = 2
    label[2, 3:5, 3:5] = 4
    label[2, 3, 3] = 1
    return image, label


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------ writer


def test_writer_round_trip(tmp_path: Path) -> None:
    image, label = _subject()
    with CanonicalWriter(tmp_path / "d.h5", source="test", split_seed=3, attrs={"x": 7}) as w:
        w.add("b", image, label)
        w.add("a", image * 2, None)
    data = CanonicalDataset(tmp_path / "d.h5")
    assert data.attrs["format"] == FORMAT
    assert list(data.attrs["modalities"]) == list(MODALITIES)
    assert list(data.attrs["labels"]) == list(LABELS)
    assert data.attrs["source"] == "test" and data.attrs["x"] == 7
    assert data.attrs["split_seed"] == 3
    assert data.subjects == ["a", "b"] and data.labelled == ["b"]
    assert np.array_equal(data.label("b"), label)
    assert data.shape("b") == SHAPE
    assert np.array_equal(data.image("b", index=2), data.image("b")[:, 2])
    with pytest.raises(KeyError, match="no label"):
        data.label("a")
    with pytest.raises(KeyError, match="no subject"):
        data.image("zz")
    assert len(data.fingerprint) == 16
    with h5py.File(tmp_path / "d.h5") as f:
        mean = f["subjects/b/image"].attrs["norm_mean"]
    brain = image.any(axis=0)
    assert np.allclose(mean, [image[c][brain].mean() for c in range(4)], rtol=1e-5)
    assert _leftovers(tmp_path) == []


def test_fingerprint_depends_on_content_only(tmp_path: Path) -> None:
    image, label = _subject()
    labels = {"1.h5": label, "2.h5": label, "3.h5": np.where(label == 4, 1, label)}
    prints = []
    for name, lab in labels.items():
        with CanonicalWriter(tmp_path / name, source=name, split_seed=len(prints)) as w:
            w.add("s", image, lab)
        prints.append(CanonicalDataset(tmp_path / name).fingerprint)
    assert prints[0] == prints[1] != prints[2]


def test_writer_exception_leaves_existing_file_untouched(tmp_path: Path) -> None:
    out = tmp_path / "d.h5"
    out.write_bytes(b"old content")
    image, label = _subject()
    with pytest.raises(RuntimeError), CanonicalWriter(out, source="test") as w:
        w.add("s", image, label)
        raise RuntimeError("interrupted")
    assert out.read_bytes() == b"old content"
    assert _leftovers(tmp_path) == []


def test_writer_exception_leaves_no_new_file(tmp_path: Path) -> None:
    image, _ = _subject()
    with pytest.raises(DataError), CanonicalWriter(tmp_path / "d.h5", source="test") as w:
        w.add("s", image, np.full(SHAPE, 3))
    assert list(tmp_path.iterdir()) == []


def test_empty_writer_refused_without_leftovers(tmp_path: Path) -> None:
    writer = CanonicalWriter(tmp_path / "d.h5", source="test")
    with pytest.raises(DataError, match="no subjects"), writer:
        pass
    assert not (tmp_path / "d.h5").exists()
    assert _leftovers(tmp_path) == []


def _bad_inputs() -> list[tuple[str, str, object, object]]:
    image, label = _subject()
    return [
        ("empty-id", "", image, label),
        ("slash-id", "a/b", image, label),
        ("3d-image", "s", image[0], label),
        ("3-channels", "s", image[:3], label),
        ("complex", "s", image.astype(np.complex64), label),
        ("strings", "s", np.full((4, *SHAPE), "x"), label),
        ("nan", "s", np.where(image > 4.9, np.nan, image), label),
        ("inf", "s", np.where(image > 4.9, np.inf, image), label),
        ("label-shape", "s", image, label[:-1]),
        ("label-value-3", "s", image, np.where(label == 4, 3, label)),
        ("label-negative", "s", image, label.astype(np.int16) - 1),
        ("label-fraction", "s", image, label.astype(np.float32) / 2),
        ("label-nan", "s", image, np.where(label == 4, np.nan, label.astype(np.float32))),
        ("label-bool", "s", image, label > 0),
    ]


@pytest.mark.parametrize(
    ("case", "sid", "image", "label"), _bad_inputs(), ids=[c[0] for c in _bad_inputs()]
)
def test_writer_rejects_bad_subject(
    tmp_path: Path, case: str, sid: str, image: np.ndarray, label: np.ndarray
) -> None:
    good_image, good_label = _subject()
    out = tmp_path / "d.h5"
    with (
        pytest.raises(DataError, match="origin-file.nii") as exc,
        CanonicalWriter(out, source="test") as w,
    ):
        w.add("ok", good_image, good_label)
        w.add(sid, image, label, origin="origin-file.nii")
    assert "\n" not in str(exc.value)
    assert not out.exists()


def test_writer_rejects_duplicate_subject(tmp_path: Path) -> None:
    image, label = _subject()
    with (
        pytest.raises(DataError, match="duplicate"),
        CanonicalWriter(tmp_path / "d.h5", source="test") as w,
    ):
        w.add("s", image, label)
        w.add("s", image, label)


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (-0.1, 0.5, 0.6), (0.0, 0.0, 0.0)])
def test_writer_rejects_bad_split_fractions(tmp_path: Path, fractions) -> None:
    with pytest.raises(ValueError, match="split fractions"):
        CanonicalWriter(tmp_path / "d.h5", source="test", split_fractions=fractions)


def test_integer_and_float_labels_are_accepted(tmp_path: Path) -> None:
    image, label = _subject()
    with CanonicalWriter(tmp_path / "d.h5", source="test") as w:
        w.add("i", image, label.astype(np.int64))
        w.add("f", image, label.astype(np.float64))
    data = CanonicalDataset(tmp_path / "d.h5")
    for sid in ("i", "f"):
        assert data.label(sid).dtype == np.uint8
        assert np.array_equal(data.label(sid), label)


# ------------------------------------------------------------------ split


def test_split_is_deterministic_disjoint_and_covering() -> None:
    ids = [f"s{i:02d}" for i in range(20)]
    split = split_subjects(ids, (0.7, 0.15, 0.15), seed=1)
    assert split == split_subjects(list(reversed(ids)), (0.7, 0.15, 0.15), seed=1)
    assert [len(split[k]) for k in ("train", "val", "test")] == [14, 3, 3]
    assert sorted(split["train"] + split["val"] + split["test"]) == ids
    assert split != split_subjects(ids, (0.7, 0.15, 0.15), seed=2)
    assert all(split[k] == sorted(split[k]) for k in split)


def test_split_seed_changes_the_test_set() -> None:
    ids = [f"s{i}" for i in range(30)]
    seen = {tuple(split_subjects(ids, seed=s)["test"]) for s in range(5)}
    assert len(seen) == 5  # seeds really change the test set


@pytest.mark.parametrize(
    ("n", "fractions"),
    [
        (1, (0.7, 0.15, 0.15)),
        (2, (0.7, 0.15, 0.15)),
        (3, (0.7, 0.15, 0.15)),
        (3, (1.0, 0.0, 0.0)),
        (10, (7, 2, 1)),
        (40, (0.7, 0.15, 0.15)),
    ],
)
def test_split_sizes(n: int, fractions) -> None:
    ids = [f"s{i}" for i in range(n)]
    split = split_subjects(ids, fractions, seed=0)
    sizes = [len(split[k]) for k in ("train", "val", "test")]
    assert sum(sizes) == n
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(ids)
    if n >= 3:
        for size, fraction in zip(sizes[1:], fractions[1:], strict=True):
            assert (size >= 1) == (fraction > 0)


@pytest.mark.parametrize("n", [3, 7])
def test_split_never_puts_a_subject_in_two_splits(n: int) -> None:
    ids = [f"s{i}" for i in range(n)]
    split = split_subjects(ids, (0.0, 0.5, 0.5), seed=0)
    together = split["train"] + split["val"] + split["test"]
    assert sorted(together) == ids


def test_dataset_split_uses_file_attributes_and_labelled_subjects(tmp_path: Path) -> None:
    image, label = _subject()
    with CanonicalWriter(
        tmp_path / "d.h5", source="test", split_fractions=(1, 1, 1), split_seed=5
    ) as w:
        for i in range(9):
            w.add(f"s{i}", image, label if i < 6 else None)
    data = CanonicalDataset(tmp_path / "d.h5")
    expected = split_subjects([f"s{i}" for i in range(6)], (1, 1, 1), 5)
    assert {k: data.split(k) for k in ("train", "val", "test")} == expected
    with pytest.raises(ValueError, match="split must be one of"):
        data.split("validation")


# ------------------------------------------------------------------ z-score, regions


def test_zscore_brain() -> None:
    image, _ = _subject()
    image[1] *= 100.0
    out, means, stds = zscore_brain(image)
    brain = image.any(axis=0)
    assert out.dtype == np.float32
    assert not out[:, ~brain].any()
    for c in range(4):
        assert abs(out[c][brain].mean()) < 1e-5
        assert abs(out[c][brain].std() - 1.0) < 1e-4
        assert np.isclose(means[c], image[c][brain].mean(), rtol=1e-6)
        assert np.isclose(stds[c], image[c][brain].std(), rtol=1e-5)


def test_zscore_constant_and_empty_images_stay_finite() -> None:
    image = np.zeros((4, *SHAPE), dtype=np.float32)
    out, means, stds = zscore_brain(image)
    assert not out.any() and np.array_equal(stds, np.ones(4))
    image[:, 1, 1, 1:4] = 5.0
    out, means, stds = zscore_brain(image)
    assert np.all(np.isfinite(out)) and np.allclose(means, 5.0)
    assert not out.any()  # a constant channel maps to 0, not NaN


def test_regions_round_trip() -> None:
    _, label = _subject()
    regions = regions_from_label(label)
    assert regions.shape == (3, *SHAPE) and regions.dtype == bool
    wt, tc, et = regions
    assert np.array_equal(wt, label > 0)
    assert np.array_equal(tc, np.isin(label, (1, 4)))
    assert np.array_equal(et, label == 4)
    assert np.array_equal(label_from_regions(regions), label)


# ------------------------------------------------------------------ reader


def test_dataset_pickles_as_its_path(tmp_path: Path) -> None:
    image, label = _subject()
    with CanonicalWriter(tmp_path / "d.h5", source="test") as w:
        w.add("s", image, label)
    data = CanonicalDataset(tmp_path / "d.h5")
    data.image("s")
    blob = pickle.dumps(data)
    assert len(blob) < 1000
    copy = pickle.loads(blob)
    assert np.array_equal(copy.image("s"), data.image("s"))
    data.close()


@pytest.mark.parametrize("content", ["missing", "text", "other-hdf5", "no-subjects"])
def test_dataset_rejects_non_canonical_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.h5"
    if content == "text":
        path.write_text("not hdf5")
    elif content == "other-hdf5":
        with h5py.File(path, "w") as f:
            f["image"] = np.zeros(3)
    elif content == "no-subjects":
        with h5py.File(path, "w") as f:
            f.attrs["format"] = FORMAT
            f.create_group("subjects")
    with pytest.raises(DataError, match="x.h5"):
        CanonicalDataset(path)
