"""Kaggle HDF5-slice and BraTS NIfTI importers: exact round trips, options, bad input, atomicity."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from unet.data import import_kaggle, import_nifti
from unet.data.canonical import MODALITIES, CanonicalDataset, DataError, zscore_brain
from unet.data.import_common import MissingDependencyError

try:
    import nibabel as nib
except ImportError:  # the NIfTI tests need it to write their fixtures
    nib = None
needs_nibabel = pytest.mark.skipif(nib is None, reason="nibabel is not installed")

H = W = 16
KAGGLE_VOLUMES = {2: 11, 10: 5}  # volume number -> slice count (11: "10" sorts before "2")
CLASS_LABEL = {"core": 1, "oedema": 2, "enhancing": 4}


# ------------------------------------------------------------------ fixtures


def _volume(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(image (4, *shape) with a zero background, label (*shape) in {0, 1, 2, 4})."""
    image = np.zeros((4, *shape), dtype=np.float64)
    inner = tuple(slice(1, n - 1) for n in shape)
    image[(slice(None), *inner)] = rng.uniform(10.0, 500.0, size=(4, *(n - 2 for n in shape)))
    label = rng.choice(np.array([0, 0, 1, 2, 2, 4], dtype=np.uint8), size=shape)
    label[image[0] == 0] = 0
    return image, label


def write_kaggle(
    folder: Path,
    *,
    image_order=MODALITIES,
    mask_order=("core", "oedema", "enhancing"),
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write Kaggle-layout slices; return {subject id: (image in MODALITIES order, label)}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    expected = {}
    for v, depth in KAGGLE_VOLUMES.items():
        image, label = _volume(rng, (depth, H, W))
        for s in range(depth):
            stored = np.stack([image[MODALITIES.index(m), s] for m in image_order], axis=-1)
            mask = np.stack([label[s] == CLASS_LABEL[c] for c in mask_order], axis=-1)
            with h5py.File(folder / f"volume_{v}_slice_{s}.h5", "w") as f:
                f["image"] = stored
                f["mask"] = mask.astype(np.uint8)
        expected[f"volume_{v}"] = (image, label)
    (folder / "meta_data.csv").write_text("slice_path,target\n")
    (folder / "volume_2_slice_x.h5").write_text("not a slice name")
    (folder / "sub").mkdir()
    return expected


NIFTI_SHAPE = (9, 8, 6)  # (i, j, k); i != j so a wrong transpose is caught
NAMINGS = {
    2019: ({"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}, "_"),
    2023: ({"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}, "-"),
}


def write_nifti_case(
    folder: Path,
    case: str,
    generation: int,
    *,
    seed: int = 0,
    seg: bool = True,
    ext: str = ".nii.gz",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Write one case; return (image (4, D, H, W) in MODALITIES order, label (D, H, W))."""
    names, sep = NAMINGS[generation]
    rng = np.random.default_rng(seed)
    image, label = _volume(rng, NIFTI_SHAPE)  # in NIfTI (i, j, k) order
    (folder / case).mkdir(parents=True, exist_ok=True)
    for c, modality in enumerate(MODALITIES):
        data = image[c].astype(np.float32)
        nib.save(
            nib.Nifti1Image(data, np.eye(4)), folder / case / f"{case}{sep}{names[modality]}{ext}"
        )
    if seg:
        stored = np.where(label == 4, 3, label) if generation == 2023 else label
        nib.save(
            nib.Nifti1Image(stored.astype(np.uint8), np.eye(4)),
            folder / case / f"{case}{sep}seg{ext}",
        )
    return image.transpose(0, 3, 2, 1), label.transpose(2, 1, 0) if seg else None


def _assert_subject(data: CanonicalDataset, sid: str, image: np.ndarray, label) -> None:
    expected, _, _ = zscore_brain(image.astype(np.float32))
    np.testing.assert_allclose(data.image(sid), expected, rtol=1e-5, atol=1e-5)
    if label is None:
        assert sid not in data.labelled
    else:
        assert np.array_equal(data.label(sid), label)


def _assert_refused(
    run: Callable[[Path], object], tmp_path: Path, names: str | list[str]
) -> DataError:
    """``run(out)`` raises DataError naming ``names``; a new output never appears and an
    existing one is left untouched."""
    names = [names] if isinstance(names, str) else names
    fresh = tmp_path / "fresh.h5"
    with pytest.raises(DataError) as exc:
        run(fresh)
    message = str(exc.value)
    for name in names:
        assert name in message, message
    assert "\n" not in message
    assert not fresh.exists()
    existing = tmp_path / "existing.h5"
    existing.write_bytes(b"previous import")
    with pytest.raises(DataError):
        run(existing)
    assert existing.read_bytes() == b"previous import"
    assert not [p for p in tmp_path.rglob("*.tmp")]
    return exc.value


# ------------------------------------------------------------------ Kaggle


def test_kaggle_round_trip(tmp_path: Path) -> None:
    expected = write_kaggle(tmp_path / "src")
    out = import_kaggle.import_kaggle(tmp_path / "src", tmp_path / "out.h5", split_seed=4)
    data = CanonicalDataset(out)
    assert data.subjects == ["volume_10", "volume_2"]
    assert data.attrs["source"] == "kaggle-brats2020-slices"
    assert data.attrs["split_seed"] == 4
    assert list(data.attrs["kaggle_mask_order"]) == ["core", "oedema", "enhancing"]
    for sid, (image, label) in expected.items():
        assert data.shape(sid) == label.shape
        _assert_subject(data, sid, image, label)


@pytest.mark.parametrize(
    ("image_order", "mask_order"),
    [
        (("t1", "t1ce", "t2", "flair"), ("core", "oedema", "enhancing")),
        (MODALITIES, ("enhancing", "core", "oedema")),
        (("t2", "flair", "t1ce", "t1"), ("oedema", "enhancing", "core")),
    ],
)
def test_kaggle_channel_orders(tmp_path: Path, image_order, mask_order) -> None:
    expected = write_kaggle(tmp_path / "src", image_order=image_order, mask_order=mask_order)
    out = import_kaggle.import_kaggle(
        tmp_path / "src", tmp_path / "out.h5", image_order=image_order, mask_order=mask_order
    )
    data = CanonicalDataset(out)
    for sid, (image, label) in expected.items():
        _assert_subject(data, sid, image, label)
    wrong = import_kaggle.import_kaggle(tmp_path / "src", tmp_path / "default.h5")
    if mask_order != ("core", "oedema", "enhancing"):
        assert not np.array_equal(
            CanonicalDataset(wrong).label("volume_2"), expected["volume_2"][1]
        )


def test_kaggle_rejects_non_permutation_orders(tmp_path: Path) -> None:
    write_kaggle(tmp_path / "src")
    with pytest.raises(ValueError, match="mask_order"):
        import_kaggle.import_kaggle(
            tmp_path / "src", tmp_path / "o.h5", mask_order=("core", "core", "oedema")
        )
    assert not (tmp_path / "o.h5").exists()


def _rewrite(path: Path, **arrays: np.ndarray | None) -> None:
    """Replace datasets of a slice file (None deletes one)."""
    with h5py.File(path, "a") as f:
        for key, value in arrays.items():
            del f[key]
            if value is not None:
                f[key] = value


def _two_classes(p: Path) -> None:
    mask = np.zeros((H, W, 3), np.uint8)
    mask[3, 4, :2] = 1
    _rewrite(p, mask=mask)


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


KAGGLE_BAD = {
    "missing-mask": lambda p: _rewrite(p, mask=None),
    "missing-image": lambda p: _rewrite(p, image=None),
    "image-3-channels": lambda p: _rewrite(p, image=np.ones((H, W, 3))),
    "image-2d": lambda p: _rewrite(p, image=np.ones((H, W))),
    "mask-4-channels": lambda p: _rewrite(p, mask=np.zeros((H, W, 4), np.uint8)),
    "mask-size": lambda p: _rewrite(p, mask=np.zeros((H, W + 1, 3), np.uint8)),
    "image-strings": lambda p: _rewrite(p, image=np.full((H, W, 4), b"ab")),
    "mask-not-one-hot": _two_classes,
    "mask-value-255": lambda p: _rewrite(p, mask=np.full((H, W, 3), 255, np.uint8)),
    "image-nan": lambda p: _rewrite(p, image=np.full((H, W, 4), np.nan)),
    "image-inf": lambda p: _rewrite(p, image=np.full((H, W, 4), -np.inf)),
    "truncated": _truncate,
    "not-hdf5": lambda p: p.write_text("this is not HDF5"),
    "slice-size-differs": lambda p: _rewrite(
        p, image=np.ones((H + 2, W, 4)), mask=np.zeros((H + 2, W, 3), np.uint8)
    ),
}


@pytest.mark.parametrize("case", sorted(KAGGLE_BAD))
def test_kaggle_bad_slice_is_refused_naming_the_file(tmp_path: Path, case: str) -> None:
    write_kaggle(tmp_path / "src")
    bad = tmp_path / "src" / "volume_2_slice_7.h5"
    KAGGLE_BAD[case](bad)
    _assert_refused(
        lambda out: import_kaggle.import_kaggle(tmp_path / "src", out), tmp_path, bad.name
    )


def test_kaggle_gap_in_slices_is_refused(tmp_path: Path) -> None:
    write_kaggle(tmp_path / "src")
    (tmp_path / "src" / "volume_2_slice_4.h5").unlink()
    (tmp_path / "src" / "volume_2_slice_6.h5").unlink()
    error = _assert_refused(
        lambda out: import_kaggle.import_kaggle(tmp_path / "src", out), tmp_path, "volume_2_slice"
    )
    assert "missing slice(s) 4, 6" in str(error)


@pytest.mark.parametrize("layout", ["empty", "only-other-files", "not-a-directory"])
def test_kaggle_no_slices_is_refused(tmp_path: Path, layout: str) -> None:
    src = tmp_path / "src"
    if layout == "not-a-directory":
        src.write_text("x")
    else:
        src.mkdir()
        if layout == "only-other-files":
            (src / "meta_data.csv").write_text("a,b\n")
            (src / "volume_1.h5").write_text("")
    _assert_refused(lambda out: import_kaggle.import_kaggle(src, out), tmp_path, str(src))


def test_kaggle_bool_and_float_masks_are_accepted(tmp_path: Path) -> None:
    expected = write_kaggle(tmp_path / "src")
    for s in range(KAGGLE_VOLUMES[10]):
        p = tmp_path / "src" / f"volume_10_slice_{s}.h5"
        with h5py.File(p, "r") as f:
            mask = f["mask"][()]
        _rewrite(p, mask=mask.astype(bool) if s % 2 else mask.astype(np.float32))
    data = CanonicalDataset(import_kaggle.import_kaggle(tmp_path / "src", tmp_path / "o.h5"))
    assert np.array_equal(data.label("volume_10"), expected["volume_10"][1])


def test_kaggle_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    expected = write_kaggle(tmp_path / "src", mask_order=("oedema", "core", "enhancing"))
    out = tmp_path / "out.h5"
    argv = [str(tmp_path / "src"), str(out), "--mask-order", "oedema,core,enhancing"]
    assert import_kaggle.main([*argv, "--split-fractions", "1", "0", "1"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    data = CanonicalDataset(out)
    assert list(data.attrs["split_fractions"]) == [1, 0, 1]
    assert np.array_equal(data.label("volume_2"), expected["volume_2"][1])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mask-order", "core,oedema"], "--mask-order"),
        (["--image-order", "flair,t1,t1ce,t1ce"], "--image-order"),
        (["--split-fractions", "0", "0", "0"], "--split-fractions"),
        (["--split-fractions", "nan", "1", "1"], "must be finite"),
        (["--corrupt"], "volume_10_slice_3.h5"),
    ],
)
def test_kaggle_cli_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    write_kaggle(tmp_path / "src")
    if extra == ["--corrupt"]:
        (tmp_path / "src" / "volume_10_slice_3.h5").write_text("garbage")
        extra = []
    with pytest.raises(SystemExit) as exc:
        import_kaggle.main([str(tmp_path / "src"), str(tmp_path / "o.h5"), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "o.h5").exists()


def test_kaggle_help_documents_orders(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        import_kaggle.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "flair,t1,t1ce,t2" in text and "core,oedema,enhancing" in text
    assert "t1,t1ce,t2,flair" in text  # the alternative order some copies document


# ------------------------------------------------------------------ NIfTI


@needs_nibabel
@pytest.mark.parametrize("generation", [2019, 2023])
@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_nifti_round_trip(tmp_path: Path, generation: int, ext: str) -> None:
    src = tmp_path / "src"
    expected = {
        "caseA": write_nifti_case(src, "caseA", generation, seed=1, ext=ext),
        "caseB": write_nifti_case(src, "caseB", generation, seed=2, ext=ext, seg=False),
    }
    data = CanonicalDataset(import_nifti.import_nifti(src, tmp_path / "out.h5"))
    assert data.subjects == ["caseA", "caseB"] and data.labelled == ["caseA"]
    assert data.attrs["source"] == "brats-nifti"
    for sid, (image, label) in expected.items():
        assert data.shape(sid) == NIFTI_SHAPE[::-1]
        _assert_subject(data, sid, image, label)
    assert 4 in np.unique(data.label("caseA"))  # 2023's 3 became 4


@needs_nibabel
def test_nifti_nested_folders_and_ignored_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    a = write_nifti_case(src / "HGG", "BraTS19_A_1", 2019, seed=1)
    b = write_nifti_case(src / "LGG", "BraTS19_B_1", 2019, seed=2)
    (src / "HGG" / "BraTS19_A_1" / "notes_mask.nii.gz").write_bytes(b"")
    (src / "survival.csv").write_text("id\n")
    with pytest.warns(UserWarning, match="ignored 1 NIfTI"):
        out = import_nifti.import_nifti(src, tmp_path / "out.h5")
    data = CanonicalDataset(out)
    _assert_subject(data, "BraTS19_A_1", *a)
    _assert_subject(data, "BraTS19_B_1", *b)


def _nifti_src(tmp_path: Path, generation: int = 2019) -> Path:
    src = tmp_path / "src"
    write_nifti_case(src, "ok", generation, seed=1)
    write_nifti_case(src, "case", generation, seed=2)
    return src


def _save(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


NIFTI_BAD = {
    # name: (generation, change(case folder) -> None, text the error must contain)
    "missing-modality": (2019, lambda d: (d / "case_t1ce.nii.gz").unlink(), ["case", "t1ce"]),
    "shape-mismatch": (
        2019,
        lambda d: _save(d / "case_t2.nii.gz", np.ones((9, 8, 5), np.float32)),
        "case_t2.nii.gz",
    ),
    "seg-shape-mismatch": (
        2023,
        lambda d: _save(d / "case-seg.nii.gz", np.zeros((9, 9, 6), np.uint8)),
        "case-seg.nii.gz",
    ),
    "nan": (
        2019,
        lambda d: _save(d / "case_flair.nii.gz", np.full(NIFTI_SHAPE, np.nan, np.float32)),
        "case_flair.nii.gz",
    ),
    "corrupt": (2023, lambda d: (d / "case-t1n.nii.gz").write_bytes(b"garbage"), "case-t1n.nii.gz"),
    "truncated": (
        2019,
        lambda d: (d / "case_t1.nii.gz").write_bytes((d / "case_t1.nii.gz").read_bytes()[:-80]),
        "case_t1.nii.gz",
    ),
    "label-3-in-2019": (
        2019,
        lambda d: _save(d / "case_seg.nii.gz", np.full(NIFTI_SHAPE, 3, np.uint8)),
        ["case_seg.nii.gz", "[3]"],
    ),
    "label-4-in-2023": (
        2023,
        lambda d: _save(d / "case-seg.nii.gz", np.full(NIFTI_SHAPE, 4, np.uint8)),
        ["case-seg.nii.gz", "[4]"],
    ),
    "label-fraction": (
        2019,
        lambda d: _save(d / "case_seg.nii.gz", np.full(NIFTI_SHAPE, 0.5, np.float32)),
        "case_seg.nii.gz",
    ),
    "2d-image": (
        2019,
        lambda d: _save(d / "case_t1.nii.gz", np.ones((9, 8), np.float32)),
        "case_t1.nii.gz",
    ),
    "mixed-naming": (
        2019,
        lambda d: (d / "case_t2.nii.gz").rename(d / "case-t2w.nii.gz"),
        ["case", "mixes"],
    ),
    "duplicate-modality": (
        2019,
        lambda d: (d / "case_t2.nii").write_bytes((d / "case_t2.nii.gz").read_bytes()),
        "case_t2",
    ),
}


@needs_nibabel
@pytest.mark.parametrize("case", sorted(NIFTI_BAD))
def test_nifti_bad_case_is_refused_naming_the_file(tmp_path: Path, case: str) -> None:
    generation, change, names = NIFTI_BAD[case]
    src = _nifti_src(tmp_path, generation)
    change(src / "case")
    _assert_refused(lambda out: import_nifti.import_nifti(src, out), tmp_path, names)


@pytest.mark.parametrize("layout", ["empty", "no-nifti", "not-a-directory"])
def test_nifti_no_cases_is_refused(tmp_path: Path, layout: str) -> None:
    src = tmp_path / "src"
    if layout == "not-a-directory":
        src.write_text("x")
    else:
        (src / "case").mkdir(parents=True)
        if layout == "no-nifti":
            (src / "case" / "case_flair.png").write_bytes(b"")
    _assert_refused(lambda out: import_nifti.import_nifti(src, out), tmp_path, str(src))


@needs_nibabel
def test_nifti_without_nibabel(tmp_path: Path, monkeypatch, capsys) -> None:
    src = _nifti_src(tmp_path)
    monkeypatch.setitem(sys.modules, "nibabel", None)  # makes `import nibabel` fail
    message = "nibabel is required for NIfTI import: pip install 'unet-compress[nifti]'"
    with pytest.raises(MissingDependencyError) as exc:
        import_nifti.import_nifti(src, tmp_path / "o.h5")
    assert str(exc.value) == message
    with pytest.raises(SystemExit) as stop:
        import_nifti.main([str(src), str(tmp_path / "o.h5")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"error: {message}")
    assert not (tmp_path / "o.h5").exists()


@needs_nibabel
def test_nifti_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _nifti_src(tmp_path, 2023)
    out = tmp_path / "out.h5"
    assert import_nifti.main([str(src), str(out), "--split-seed", "9"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert CanonicalDataset(out).attrs["split_seed"] == 9
    (src / "case" / "case-t1c.nii.gz").unlink()
    with pytest.raises(SystemExit) as exc:
        import_nifti.main([str(src), str(tmp_path / "o2.h5")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "t1ce" in err and "Traceback" not in err
