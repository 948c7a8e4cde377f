"""The phantom generator: determinism, anatomy and label invariants, contrasts, knobs, CLI."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import ndimage

from unet.data.canonical import CanonicalDataset, regions_from_label
from unet.phantom import (
    Knobs,
    PhantomConfig,
    generate_subject,
    main,
    tumour_count,
    write_phantom,
)

SHAPE = (24, 64, 64)  # the default's slice-to-pixel ratio, 1/8 of its voxels


@pytest.fixture(scope="module")
def cfg() -> PhantomConfig:
    return PhantomConfig(subjects=10, shape=SHAPE, seed=3)


@pytest.fixture(scope="module")
def subjects(cfg: PhantomConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    return [generate_subject(cfg, i) for i in range(cfg.subjects)]


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory: pytest.TempPathFactory, cfg: PhantomConfig) -> Path:
    return write_phantom(tmp_path_factory.mktemp("phantom") / "phantom.h5", cfg)


def _noise_level(image: np.ndarray) -> float:
    """Median absolute high-pass response inside the brain (away from its border)."""
    brain = ndimage.binary_erosion(image.any(axis=0), iterations=2)
    highpass = image - ndimage.uniform_filter(image, size=(1, 1, 3, 3))
    return float(np.median(np.abs(highpass[:, brain])))


def test_same_seed_gives_byte_identical_subjects(cfg: PhantomConfig, subjects) -> None:
    image, label = generate_subject(cfg, 4)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert image.shape == (4, *SHAPE) and label.shape == SHAPE
    assert image.tobytes() == subjects[4][0].tobytes()
    assert label.tobytes() == subjects[4][1].tobytes()


def test_subject_does_not_depend_on_count_and_seed_matters(cfg: PhantomConfig, subjects) -> None:
    more = PhantomConfig(subjects=50, shape=SHAPE, seed=3)
    assert generate_subject(more, 7)[0].tobytes() == subjects[7][0].tobytes()
    other = PhantomConfig(subjects=10, shape=SHAPE, seed=4)
    assert not np.array_equal(generate_subject(other, 7)[0], subjects[7][0])
    assert not np.array_equal(subjects[1][0], subjects[2][0])


def test_written_file_is_deterministic(tmp_path: Path, phantom_file: Path) -> None:
    small = PhantomConfig(subjects=3, shape=SHAPE, seed=3)
    again = CanonicalDataset(write_phantom(tmp_path / "again.h5", small, workers=2))
    ref = CanonicalDataset(phantom_file)
    assert again.subjects == ref.subjects[:3]
    for sid in again.subjects:
        assert again.image(sid).tobytes() == ref.image(sid).tobytes()
        assert np.array_equal(again.label(sid), ref.label(sid))
    twice = CanonicalDataset(write_phantom(tmp_path / "twice.h5", small, workers=1))
    assert twice.fingerprint == again.fingerprint  # the same file from 2 processes and from 1
    with pytest.raises(ValueError, match="workers"):
        write_phantom(tmp_path / "none.h5", small, workers=0)


def test_background_is_exactly_zero_and_brain_never_zero(subjects) -> None:
    for image, label in subjects:
        brain = image[0] != 0
        assert 0.15 < brain.mean() < 0.45
        for channel in image:
            assert np.array_equal(channel != 0, brain)  # same brain mask in every modality
        assert not label[~brain].any()
        assert brain[0].sum() < brain[len(brain) // 2].sum()  # rounded top and bottom


def test_labels_are_brats_and_nested(subjects) -> None:
    for _, label in subjects:
        assert set(np.unique(label)) <= {0, 1, 2, 4}
        wt, tc, et = regions_from_label(label)
        assert not (tc & ~wt).any() and not (et & ~tc).any()


def test_cores_are_wrapped_in_oedema_and_mostly_enhance(cfg: PhantomConfig) -> None:
    wrapped, with_et, with_tumour = [], 0, 0
    for i in range(24):
        image, label = generate_subject(cfg, i)
        if not label.any():
            continue
        with_tumour += 1
        wt, tc, et = regions_from_label(label)
        ring = ndimage.binary_dilation(tc) & ~tc & image.any(axis=0)
        wrapped.append((label[ring] == 2).mean())
        with_et += bool(et.any())
        assert (label == 2).sum() > 0
    assert np.median(wrapped) > 0.8  # the rest touches ventricles or the brain surface
    assert with_et >= 0.75 * with_tumour


@pytest.mark.parametrize(
    ("fraction", "low", "high"), [(0.0, 0, 0), (0.15, 4, 8), (0.5, 17, 23), (1.0, 40, 40)]
)
def test_tumour_free_fraction(fraction: float, low: int, high: int) -> None:
    cfg = PhantomConfig(subjects=40, shape=SHAPE, tumour_free_fraction=fraction)
    free = sum(tumour_count(cfg, i) == 0 for i in range(40))
    assert low <= free <= high
    counts = {tumour_count(cfg, i) for i in range(40)}
    assert counts <= {0, 1, 2}


def test_tumour_free_subjects_have_empty_labels(cfg: PhantomConfig, subjects) -> None:
    counts = [tumour_count(cfg, i) for i in range(cfg.subjects)]
    assert 0 in counts and any(c > 0 for c in counts)
    for count, (_, label) in zip(counts, subjects, strict=True):
        assert label.any() == (count > 0)


def test_file_is_zscored_over_the_brain(phantom_file: Path, cfg: PhantomConfig) -> None:
    data = CanonicalDataset(phantom_file)
    assert data.attrs["source"] == "phantom"
    assert data.attrs["phantom_seed"] == cfg.seed
    assert data.attrs["phantom_difficulty"] == cfg.difficulty
    assert list(data.attrs["phantom_shape"]) == list(SHAPE)
    assert data.attrs["phantom_knob_noise_std"] == Knobs.from_difficulty(cfg.difficulty).noise_std
    for sid in data.subjects:
        image = data.image(sid)
        brain = image.any(axis=0)
        for channel in image:
            assert abs(float(channel[brain].mean())) < 1e-3
            assert abs(float(channel[brain].std()) - 1.0) < 1e-3


def test_contrasts_mimic_mri(subjects) -> None:
    """Oedema bright on FLAIR and T2, enhancing rim bright on T1ce, tumour dark-ish on T1."""
    from unet.data.canonical import zscore_brain

    gaps = []
    for image, label in subjects:
        if not ((label == 4).any() and (label == 1).any()):
            continue
        z, _, _ = zscore_brain(image)
        healthy = (label == 0) & image.any(axis=0)
        ref = z[:, healthy].mean(axis=1)
        gaps.append(
            [
                z[0, label == 2].mean() - ref[0],  # FLAIR oedema
                z[3, label == 2].mean() - ref[3],  # T2 oedema
                z[2, label == 4].mean() - ref[2],  # T1ce enhancing
                ref[1] - z[1, np.isin(label, (1, 4))].mean(),  # T1 core darker
                z[2, label == 4].mean() - z[2, label == 1].mean(),  # T1ce rim > necrosis
            ]
        )
    assert len(gaps) >= 3
    assert np.all(np.median(gaps, axis=0) > 0.3), np.median(gaps, axis=0)


def test_difficulty_scales_noise_and_knobs() -> None:
    easy = PhantomConfig(shape=SHAPE, difficulty=0.5, tumour_free_fraction=1.0)
    hard = PhantomConfig(shape=SHAPE, difficulty=2.0, tumour_free_fraction=1.0)
    clean = PhantomConfig(shape=SHAPE, difficulty=0.0, tumour_free_fraction=1.0)
    noise = [_noise_level(generate_subject(c, 0)[0]) for c in (clean, easy, hard)]
    assert noise[0] < noise[1] < noise[2]
    assert noise[2] > 2.5 * noise[1]
    knobs = [Knobs.from_difficulty(d) for d in (0.0, 0.5, 1.0, 2.0)]
    for lo, hi in zip(knobs, knobs[1:], strict=False):
        assert hi.noise_std > lo.noise_std and hi.blur_px > lo.blur_px
        assert hi.small_fraction > lo.small_fraction and hi.mimics_mean > lo.mimics_mean
        assert hi.contrast_min < lo.contrast_min and hi.oedema_fade > lo.oedema_fade


@pytest.mark.parametrize(
    "bad",
    [
        {"subjects": 0},
        {"shape": (4, 64, 64)},
        {"shape": (16, 64)},
        {"difficulty": -0.1},
        {"difficulty": float("nan")},
        {"tumour_free_fraction": 1.5},
        {"two_tumour_fraction": -0.5},
    ],
)
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        PhantomConfig(**bad)


def test_cli_writes_file_and_preview(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, png = tmp_path / "p.h5", tmp_path / "p.png"
    argv = ["--out", str(out), "--subjects", "3", "--shape", "12", "40", "40", "--seed", "5"]
    argv += ["--difficulty", "0.7", "--split-seed", "2", "--split-fractions", "1", "1", "1"]
    assert main([*argv, "--preview", str(png)]) == 0
    data = CanonicalDataset(out)
    assert data.subjects == ["phantom_000", "phantom_001", "phantom_002"]
    assert data.attrs["phantom_seed"] == 5 and data.attrs["phantom_difficulty"] == 0.7
    assert data.attrs["split_seed"] == 2 and list(data.attrs["split_fractions"]) == [1, 1, 1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--subjects", "0"], "subjects must be >= 1"),
        (["--difficulty", "-1"], "difficulty"),
        (["--split-fractions", "-1", "1", "1"], "--split-fractions"),
        ([], "nothing to do"),
    ],
)
def test_cli_rejects_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    if argv:
        argv = ["--out", str(tmp_path / "x.h5"), *argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_failed_generation_leaves_existing_file_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import unet.phantom as phantom

    out = tmp_path / "p.h5"
    out.write_bytes(b"previous")
    calls = []

    def broken(cfg: PhantomConfig, index: int):
        calls.append(index)
        if index == 1:
            raise RuntimeError("boom")
        return generate_subject(cfg, index)

    monkeypatch.setattr(phantom, "generate_subject", broken)
    with pytest.raises(RuntimeError, match="boom"):
        write_phantom(out, PhantomConfig(subjects=3, shape=(8, 32, 32)))
    assert calls == [0, 1]
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.h5"]
    with h5py.File(tmp_path / "other.h5", "w"):
        pass  # h5py still usable: no handle left open on the temporary file
