"""Slice and patch datasets: shapes, determinism, oversampling rates, aligned augmentation."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from unet.data.canonical import CanonicalDataset, CanonicalWriter, DataError, regions_from_label
from unet.data.datasets import (
    DrawSampler,
    PatchDataset,
    SliceDataset,
    sample_inputs,
    sample_pairs,
    window_start,
)

SHAPE = (12, 32, 32)


def _ball_label(
    shape: tuple[int, int, int], centre: tuple[float, ...], radius: float
) -> np.ndarray:
    """Nested BraTS label ball: oedema (2) > enhancing rim (4) > necrotic core (1)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
    label = np.zeros(shape, np.uint8)
    label[dist < radius] = 2
    label[dist < 0.6 * radius] = 4
    label[dist < 0.3 * radius] = 1
    return label


def _write(path, labels, shape=SHAPE, encode_label=False, seed=0):
    """Canonical file; with ``encode_label`` the image channels are the three region masks
    (and a ramp), un-normalised, so that image and target alignment is checkable."""
    rng = np.random.default_rng(seed)
    with CanonicalWriter(path, source="test", normalize=not encode_label) as w:
        for i, label in enumerate(labels):
            if encode_label:
                ramp = np.broadcast_to(np.arange(shape[2], dtype=np.float32), shape)
                image = np.concatenate([regions_from_label(label).astype(np.float32), ramp[None]])
            else:
                image = rng.normal(size=(4, *label.shape)).astype(np.float32)
            w.add(f"s{i:02d}", image, label)
    return CanonicalDataset(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 subjects of (4, 12, 32, 32): 6 with one small tumour ball, 2 tumour-free."""
    labels = []
    for i in range(8):
        label = np.zeros(SHAPE, np.uint8)
        if i < 6:
            label = _ball_label(SHAPE, (3 + i, 8 + 2 * i, 20 - i), 3.5)
        labels.append(label)
    return _write(tmp_path_factory.mktemp("ds") / "tiny.h5", labels)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """Image channels 0-2 equal the WT/TC/ET masks (un-normalised), channel 3 a ramp in W."""
    labels = [_ball_label(SHAPE, (3, 10 + 3 * i, 12), 6) for i in range(6)]
    return _write(tmp_path_factory.mktemp("enc") / "enc.h5", labels, encode_label=True)


def _dihedral(x: np.ndarray) -> list[np.ndarray]:
    """The 8 flips / 90-degree turns of the last two axes."""
    out = []
    for k in range(4):
        r = np.rot90(x, k, (-2, -1))
        out += [r, np.flip(r, -1)]
    return out


# ---------------------------------------------------------------- SliceDataset


def test_slice_shapes_dtypes_and_nested_targets(data):
    ds = SliceDataset(data, "train")
    assert len(ds) == len(data.split("train")) * SHAPE[0]
    for i in range(10):
        image, target = ds[i]
        assert image.shape == (4, 32, 32) and image.dtype == torch.float32
        assert target.shape == (3, 32, 32) and target.dtype == torch.float32
        assert set(target.unique().tolist()) <= {0.0, 1.0}
        wt, tc, et = target.bool()
        assert torch.all(tc <= wt) and torch.all(et <= tc)  # nested regions


def test_slice_draws_are_a_function_of_seed_and_index(data):
    a = SliceDataset(data, "train", seed=3)
    b = SliceDataset(data.path, "train", seed=3)  # from a path, other instance, reverse order
    for i in reversed(range(6)):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    c = SliceDataset(data, "train", seed=4)
    assert any(not torch.equal(a[i][0], c[i][0]) for i in range(6))


def test_slice_padding_to_divisor(tmp_path):
    label = _ball_label((4, 30, 20), (2, 15, 10), 5)
    odd = _write(tmp_path / "odd.h5", [label, label, label, label], shape=(4, 30, 20))
    ds = SliceDataset(odd, odd.subjects, divisor=8, augment=False, tumour_fraction=None)
    assert ds.spatial_shape == (32, 24)
    image, target = ds[0]
    s, z = ds.slices[ds.pick(np.random.default_rng((0, 0)))]
    assert image.shape == (4, 32, 24) and target.shape == (3, 32, 24)
    # stored data at the origin, zeros at the high ends (like unet.inference pads)
    np.testing.assert_array_equal(
        image[:, :30, :20].numpy(), odd.image(ds.subjects[s], index=int(z))
    )
    assert not image[:, 30:].any() and not image[:, :, 20:].any() and not target[:, 30:].any()


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.9, 1.0, None])
def test_slice_tumour_oversampling_rate(data, fraction):
    ds = SliceDataset(data, "train", tumour_fraction=fraction)
    base = ds.has_tumour.mean()
    assert 0.05 < base < 0.5  # the fixture really needs oversampling
    n = 4000
    hits = np.mean([ds.has_tumour[ds.pick(np.random.default_rng((0, i)))] for i in range(n)])
    expected = base if fraction is None else fraction
    bound = 4 * math.sqrt(expected * (1 - expected) / n) + 1e-9  # 4 sigma binomial
    assert abs(hits - expected) <= bound


def test_slice_oversampling_shows_in_targets(data):
    """The picked tumour slices really carry tumour in their targets."""
    ds = SliceDataset(data, "train", tumour_fraction=1.0)
    assert all(ds[i][1][0].any() for i in range(20))
    ds = SliceDataset(data, "train", tumour_fraction=0.0)
    assert not any(ds[i][1].any() for i in range(20))


def test_slice_augmentation_keeps_image_and_target_aligned(encoded):
    aug = SliceDataset(encoded, encoded.subjects, augment=True, tumour_fraction=1.0)
    plain = SliceDataset(encoded, encoded.subjects, augment=False, tumour_fraction=1.0)
    seen = set()
    for i in range(40):
        image, target = aug[i]
        torch.testing.assert_close(image[:3], target, rtol=0, atol=0)  # channels 0-2 == target
        # same slice as the un-augmented draw, turned by one of the 8 dihedral transforms
        variants = _dihedral(plain[i][0].numpy())
        matches = [k for k, v in enumerate(variants) if np.array_equal(v, image.numpy())]
        assert matches
        seen.add(matches[0])
    assert len(seen) >= 6  # flips and turns really happen


def test_slice_dataloader_workers_give_the_same_batches(data):
    ds = SliceDataset(data, "train", seed=1)
    assert pickle.loads(pickle.dumps(ds)).data.path == data.path

    def batches(workers: int, start: int) -> list[torch.Tensor]:
        context = "forkserver" if workers else None  # as unet.train_loop: no fork of this process
        loader = DataLoader(
            ds,
            batch_size=4,
            sampler=DrawSampler(start),
            num_workers=workers,
            multiprocessing_context=context,
        )
        it = iter(loader)
        return [next(it)[0] for _ in range(3)]

    serial, parallel = batches(0, 0), batches(2, 0)
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a, b)
    # restarting the sampler at draw 4 reproduces the stream from its second batch on
    assert torch.equal(batches(0, 4)[0], serial[1])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"tumour_fraction": 1.5}, ValueError, "tumour_fraction"),
        ({"divisor": 0}, ValueError, "divisor"),
        ({"patch_size": (8, 8, 8)}, ValueError, "patch_size"),
        ({"patch_size": (0, 8)}, ValueError, "patch_size"),
        ({"subjects": ["nope"]}, DataError, "nope"),
        ({"subjects": []}, DataError, "no labelled subjects"),
    ],
)
def test_slice_bad_arguments(data, kwargs, error, match):
    subjects = kwargs.pop("subjects", "train")
    with pytest.raises(error, match=match):
        SliceDataset(data, subjects, **kwargs)


def test_unlabelled_subject_refused(tmp_path):
    with CanonicalWriter(tmp_path / "u.h5", source="test") as w:
        w.add("a", np.ones((4, 2, 8, 8), np.float32), None)
        w.add("b", np.ones((4, 2, 8, 8), np.float32), np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DataError, match="without a label"):
        SliceDataset(tmp_path / "u.h5", ["a", "b"])


def test_slice_crops_shape_and_determinism(data):
    ds = SliceDataset(data, "train", patch_size=(16, 8))
    image, target = ds[0]
    assert image.shape == (4, 16, 8) and target.shape == (3, 16, 8)
    again = SliceDataset(data.path, "train", patch_size=(16, 8))
    for i in (7, 3):
        assert torch.equal(ds[i][0], again[i][0]) and torch.equal(ds[i][1], again[i][1])


def test_slice_crops_of_tumour_draws_are_centred_on_tumour(data):
    """Tumour draws always keep tumour in a crop that is far smaller than the slice; clear
    draws never show any; a 1x1 crop is its centre: tumour labels are hit about equally."""
    ds = SliceDataset(data, "train", tumour_fraction=1.0, patch_size=(4, 4))
    assert all(ds[i][1][0].any() for i in range(60))
    ds = SliceDataset(data, "train", tumour_fraction=0.0, patch_size=(4, 4))
    assert not any(ds[i][1].any() for i in range(60))
    ds = SliceDataset(data, "train", tumour_fraction=1.0, patch_size=(1, 1), augment=False)
    n = 600
    counts = {1: 0, 2: 0, 4: 0}
    for i in range(n):
        wt, tc, et = ds[i][1].flatten().bool().tolist()
        counts[4 if et else 1 if tc else 2] += wt
    assert sum(counts.values()) == n
    # expected: a uniform tumour slice, then a uniform label among those it shows (not a
    # uniform tumour pixel: label 1 is one voxel per ball, yet is centred in ~1 draw in 7)
    expected = dict.fromkeys(counts, 0.0)
    pool = np.flatnonzero(ds.has_tumour)
    for row in pool:
        s, z = ds.slices[row]
        present = [v for v in (1, 2, 4) if np.any(data.label(ds.subjects[s], index=int(z)) == v)]
        for v in present:
            expected[v] += 1 / len(present) / len(pool)
    for v, c in counts.items():
        bound = 4 * math.sqrt(n * expected[v] * (1 - expected[v]))
        assert abs(c - n * expected[v]) <= bound, (v, c, n * expected[v])


def test_slice_crops_are_windows_of_the_padded_slice(encoded):
    """Without augmentation a crop equals the window of the (padded) slice at the start
    `window_start` gives; crops larger than the slice are zero-padded."""
    ds = SliceDataset(encoded, encoded.subjects, patch_size=(8, 8), augment=False)
    for i in range(10):
        image, target = ds[i]
        ramp = image[3].numpy()  # channel 3 is arange(W): the crop's columns
        left = int(ramp[0, 0])
        np.testing.assert_array_equal(ramp[0], np.arange(left, left + 8))
        np.testing.assert_array_equal(image[:3].numpy(), target.numpy())
    big = SliceDataset(encoded, encoded.subjects, patch_size=(40, 32), augment=False)
    assert big.spatial_shape == (40, 32)
    image, _ = big[0]
    assert image.shape == (4, 40, 32) and not image[:, 32:].any()


@pytest.mark.parametrize("patch_size", [None, (16, 16)])
def test_slice_volume_cache_changes_no_draw_and_keeps_its_budget(data, patch_size):
    """Draws are identical with the whole-volume cache, with a cache too small for any volume
    and with none; the cache holds what fits its budget; a pickled dataset carries none."""
    cached = SliceDataset(CanonicalDataset(data.path), "train", patch_size=patch_size)
    tight = SliceDataset(CanonicalDataset(data.path), "train", patch_size=patch_size, cache_mb=0.2)
    none = SliceDataset(CanonicalDataset(data.path), "train", patch_size=patch_size, cache_mb=0)
    volume = 4 * 4 * math.prod(SHAPE) + math.prod(SHAPE)  # float32 image + uint8 label
    # building the tumour-slice index reads every label: the cache is full before any draw
    assert len(tight.data._volumes) == (0.2 * 2**20) // volume and not none.data._volumes
    assert set(cached.data._volumes) == set(cached.subjects)
    assert cached.data.cached_bytes == volume * len(cached.subjects)
    for i in range(40):
        a, b, c = cached[i], tight[i], none[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0])
        assert torch.equal(a[1], b[1]) and torch.equal(a[1], c[1])
    image, _ = cached[0]
    image.fill_(7.0)  # a draw never aliases the cached volume
    assert not torch.equal(cached[0][0], image)
    clone = pickle.loads(pickle.dumps(cached))
    assert clone.data._volumes == {} and clone.data.cache_bytes == cached.data.cache_bytes
    with pytest.raises(ValueError, match="cache_mb"):
        SliceDataset(CanonicalDataset(data.path), "train", cache_mb=-1)


def test_the_volume_cache_is_shared_by_every_reader_and_returns_copies(data):
    ds = CanonicalDataset(data.path)
    sid = ds.subjects[0]
    assert ds.cache_bytes == 0 and ds.cached_bytes == 0
    ds.reserve_cache(64)
    ds.reserve_cache(1)  # never lowers the budget
    assert ds.cache_bytes == 64 * 2**20
    whole = ds.image(sid)
    np.testing.assert_array_equal(whole, data.image(sid))
    np.testing.assert_array_equal(ds.image(sid, index=3), data.image(sid, index=3))
    np.testing.assert_array_equal(ds.label(sid, index=(3, slice(2, 5))), data.label(sid)[3, 2:5])
    assert list(ds._volumes) == [sid]
    whole.fill(9.0)
    ds.label(sid)[:] = 9
    np.testing.assert_array_equal(ds.image(sid), data.image(sid))
    np.testing.assert_array_equal(ds.label(sid), data.label(sid))
    SliceDataset(ds, "train", cache_mb=0)  # a reader on the same object uses the same cache
    assert set(ds._volumes) >= set(ds.split("train")) and ds.cache_bytes == 64 * 2**20


def test_window_start_keeps_the_centre_and_the_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        shape = tuple(int(n) for n in rng.integers(1, 40, size=2))
        patch = tuple(int(rng.integers(1, n + 1)) for n in shape)
        centre = tuple(int(rng.integers(n)) for n in shape)
        for c in (centre, None):
            start = window_start(rng, patch, shape, c)
            assert all(0 <= s <= n - p for s, p, n in zip(start, patch, shape, strict=True))
            if c is not None:
                assert all(s <= x < s + p for s, x, p in zip(start, c, patch, strict=True))
    # uniform starts reach both ends
    starts = {window_start(rng, (2,), (5,))[0] for _ in range(200)}
    assert starts == {0, 1, 2, 3}


# ---------------------------------------------------------------- PatchDataset


def test_patch_shapes_and_determinism(data):
    ds = PatchDataset(data, "train", patch_size=(4, 16, 16))
    image, target = ds[0]
    assert image.shape == (4, 4, 16, 16) and target.shape == (3, 4, 16, 16)
    assert image.dtype == target.dtype == torch.float32
    again = PatchDataset(data.path, "train", patch_size=(4, 16, 16))
    assert torch.equal(ds[5][0], again[5][0]) and torch.equal(ds[5][1], again[5][1])


@pytest.mark.parametrize("fg_prob", [0.0, 0.5, 1.0])
def test_patch_foreground_sampling(data, fg_prob):
    """fg-centred draws always contain tumour; the rate of tumour patches follows fg_prob."""
    ds = PatchDataset(data, "train", patch_size=(4, 8, 8), fg_prob=fg_prob, augment=False)
    n = 300
    has = np.array([bool(ds[i][1][0].any()) for i in range(n)])
    # uniform patches of 4x8x8 hit the small balls rarely (measured below with fg_prob=0)
    uniform = PatchDataset(data, "train", patch_size=(4, 8, 8), fg_prob=0.0, augment=False)
    base = np.mean([bool(uniform[i][1][0].any()) for i in range(n)])
    assert base < 0.4
    expected = fg_prob + (1 - fg_prob) * base
    bound = 4 * math.sqrt(max(expected * (1 - expected), 0.01) / n)
    assert abs(has.mean() - expected) <= bound
    if fg_prob == 1.0:
        assert has.all()


def test_patch_centres_are_balanced_over_tumour_labels(data):
    """A 1-voxel patch is its centre: fg draws pick labels 1, 2 and 4 about equally often."""
    ds = PatchDataset(data, "train", patch_size=(1, 1, 1), fg_prob=1.0, augment=False)
    assert [bool(f) for f in ds.foreground] == [s < "s06" for s in ds.subjects]
    n = 300
    counts = {1: 0, 2: 0, 4: 0}
    for i in range(n):
        wt, tc, et = ds[i][1].flatten().bool().tolist()
        assert wt
        counts[4 if et else 1 if tc else 2] += 1
    bound = 4 * math.sqrt(n * (1 / 3) * (2 / 3))
    assert all(abs(c - n / 3) <= bound for c in counts.values()), counts


def test_patch_pads_small_volumes(encoded):
    ds = PatchDataset(
        encoded, encoded.subjects, patch_size=(16, 40, 32), fg_prob=0.0, augment=False
    )
    image, target = ds[0]
    assert image.shape == (4, 16, 40, 32)
    # the only placement is the whole volume at the origin, zero-padded at the high ends
    s, start = ds.pick(np.random.default_rng((0, 0)))
    assert start == (0, 0, 0)
    np.testing.assert_array_equal(image[:, :12, :32].numpy(), encoded.image(ds.subjects[s]))
    assert not image[:, 12:].any() and not image[:, :, 32:].any() and not target[:, 12:].any()


def test_patch_augmentation_keeps_alignment(encoded):
    ds = PatchDataset(encoded, encoded.subjects, patch_size=(8, 16, 16), fg_prob=1.0)
    flipped = 0
    for i in range(20):
        image, target = ds[i]
        assert torch.equal(image[:3], target)
        ramp = image[3, 0, 0]  # the W ramp runs backwards or along H after a flip / turn
        flipped += not bool(torch.all(ramp[1:] - ramp[:-1] == 1))
    assert flipped > 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patch_size": (16, 16)}, "patch_size"),
        ({"patch_size": (0, 16, 16)}, "patch_size"),
        ({"fg_prob": -0.1}, "fg_prob"),
    ],
)
def test_patch_bad_arguments(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        PatchDataset(data, "train", **kwargs)


# ---------------------------------------------------------------- sample_inputs


def test_sample_inputs_2d_and_3d(data):
    x = sample_inputs(data, "train", n=6, spatial_dims=2, seed=1)
    assert x.shape == (6, 4, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(x, sample_inputs(data, "train", n=6, spatial_dims=2, seed=1))
    train_images = np.concatenate([data.image(s) for s in data.split("train")], axis=1)
    for sample in x:  # un-augmented training slices
        assert any(np.array_equal(sample, train_images[:, z]) for z in range(train_images.shape[1]))
    v = sample_inputs(data, "train", n=3, spatial_dims=3, patch_size=(8, 16, 16))
    assert v.shape == (3, 4, 8, 16, 16) and v.dtype == np.float32
    with pytest.raises(ValueError, match="spatial_dims"):
        sample_inputs(data, n=2, spatial_dims=1)


def test_sample_pairs_are_the_inputs_with_their_region_masks(data):
    x, y = sample_pairs(data, "val", n=5, spatial_dims=2, seed=2)
    np.testing.assert_array_equal(x, sample_inputs(data, "val", n=5, spatial_dims=2, seed=2))
    assert y.shape == (5, 3, 32, 32) and y.dtype == np.float32
    found = 0
    for sid in data.split("val"):  # each target is the region mask of the slice its input is
        image, regions = data.image(sid), regions_from_label(data.label(sid))
        for i, z in np.argwhere([[np.array_equal(s, image[:, z]) for z in range(image.shape[1])]
                                 for s in x]):  # fmt: skip
            np.testing.assert_array_equal(y[i], regions[:, z])
            found += 1
    assert found >= 5 and y[:, 0].sum() > 0  # some slices show tumour
