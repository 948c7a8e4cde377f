"""The embedded default's cache: phantom and baseline made once, keyed by their settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from studies import defaults
from unet.checkpoint import load_checkpoint
from unet.phantom import PhantomConfig


def test_phantom_cached_by_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = PhantomConfig(subjects=4, shape=(8, 32, 32))
    first = defaults.ensure_phantom(tmp_path, cfg)
    assert first.is_file() and first.parent == tmp_path
    monkeypatch.setattr(defaults, "write_phantom", lambda *a, **k: pytest.fail("regenerated"))
    assert defaults.ensure_phantom(tmp_path, cfg) == first
    other = PhantomConfig(subjects=4, shape=(8, 32, 32), seed=1)
    monkeypatch.undo()
    assert defaults.ensure_phantom(tmp_path, other) != first


def test_baseline_trained_once_and_keyed_by_settings(
    blob_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "BASELINE_MAX_STEPS", 4)
    monkeypatch.setattr(defaults, "BASELINE_VAL_EVERY", 4)
    ckpt = defaults.ensure_baseline(tmp_path, "unet2d-tiny", blob_data)
    model, meta = load_checkpoint(ckpt)
    assert meta["train_config"]["steps"] == 4 and meta["model"] == "unet2d-tiny"
    # converged by rule: early stopping on val with a cap, recorded; precision chosen by device
    assert meta["stopping"]["patience"] == defaults.BASELINE_PATIENCE
    assert meta["stopping"]["max_steps"] == 4 and meta["stopping"]["reason"] == "step cap"
    assert meta["train_config"]["amp"] == "auto" and meta["amp"]["used"] in ("off", "bf16")
    assert ckpt.with_name(ckpt.stem + ".done.json").is_file()
    with monkeypatch.context() as m:
        m.setattr(defaults, "train", lambda cfg: pytest.fail("retrained"))
        assert defaults.ensure_baseline(tmp_path, "unet2d-tiny", blob_data) == ckpt
    monkeypatch.setattr(defaults, "BASELINE_MAX_STEPS", 6)
    assert defaults.ensure_baseline(tmp_path, "unet2d-tiny", blob_data) != ckpt


def test_2d_baselines_train_on_crops_shrunk_to_the_data() -> None:
    """The 2D baseline's training crop is `BASELINE_CROP_2D`, no larger than the padded slices
    (then: whole slices, None); 3D baselines keep their patches (None here: the 3D default)."""
    h, w = defaults.BASELINE_CROP_2D
    assert defaults.baseline_crop("unet2d-small", (240, 240)) == (h, w)
    assert defaults.baseline_crop("unet2d-small", (240, h - 8)) == (h, h - 8)
    assert defaults.baseline_crop("unet2d-small", (h - 3, w - 3)) is None  # padded to (h, w)
    assert defaults.baseline_crop("unet3d-small", (240, 240)) is None
    cfg = defaults.default_training(
        "unet2d-small", "d.h5", "x.pt", device="cpu", seed=0, patch_size=(h, w)
    ).resolved()
    assert cfg.patch_size == (h, w)
