"""Shared fixtures: a tiny canonical data set of random blob subjects."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from unet.data.canonical import CanonicalWriter


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs one worker per core), each worker computes with one
    torch thread: two workers with two OpenMP threads each would oversubscribe the two cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


def write_blob_dataset(
    path: Path,
    subjects: int = 8,
    shape: tuple[int, int, int] = (8, 32, 32),
    seed: int = 0,
    split_fractions: tuple[float, float, float] | None = None,
) -> Path:
    """Random subjects with one nested spherical 'tumour' (oedema > core > enhancing) each."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    splits = {} if split_fractions is None else {"split_fractions": split_fractions}
    with CanonicalWriter(path, source="test-blobs", **splits) as writer:
        for i in range(subjects):
            c = rng.uniform([2, 8, 8], [d - 2, h - 8, w - 8])
            r = np.sqrt(((zz - c[0]) * 2.0) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
            label = np.zeros(shape, dtype=np.uint8)
            label[r < 7] = 2
            label[r < 4.5] = 4
            label[r < 2.5] = 1
            image = rng.normal(0.0, 0.3, size=(4, *shape)).astype(np.float32) + 2.0
            image[0] += 1.5 * (label > 0)
            image[2] += 1.5 * (label == 4)
            image[3] -= 1.0 * (label == 1)
            writer.add(f"s{i:03d}", image, label)
    return path


@pytest.fixture(scope="session")
def blob_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny canonical file: 8 subjects of (4, 8, 32, 32) with nested blob tumours."""
    return write_blob_dataset(tmp_path_factory.mktemp("data") / "blobs.h5")
