"""Drawing one phantom subject: anatomy, nested tumours, mimics, and the "scanner".

`unet.phantom` is the public side (config, determinism, files, CLI); this module holds the
appearance model it draws with. ``Knobs.from_difficulty`` maps the one ``difficulty`` number to
every appearance parameter; `anatomy`, `add_tumour`, `add_mimic` and `acquire` are applied in
that order to one subject, all drawing from the subject's own generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from unet.data.canonical import MODALITIES

# Mean intensity per tissue class and modality (flair, t1, t1ce, t2); white matter on T1 = 1.
# Mean intensity per tissue class and modality (flair, t1, t1ce, t2); white matter on T1 = 1.
_CSF, _GM, _WM, _BACKGROUND = 0, 1, 2, 3
_HEALTHY_MEANS = (
    (0.20, 0.35, 0.38, 1.80),  # CSF: dark on FLAIR / T1, bright on T2
    (0.95, 0.70, 0.72, 0.95),  # grey matter
    (0.75, 1.00, 1.00, 0.62),  # white matter
    (0.00, 0.00, 0.00, 0.00),  # background
)
_OEDEMA, _NECROSIS, _NON_ENHANCING, _ENHANCING = 0, 1, 2, 3
_TUMOUR_MEANS = (
    (1.45, 0.72, 0.75, 1.40),  # oedema: bright on FLAIR and T2
    (0.85, 0.45, 0.42, 1.55),  # necrosis: dark on T1 / T1ce, fluid-bright on T2
    (1.25, 0.68, 0.78, 1.25),  # non-enhancing solid core
    (1.20, 0.80, 1.65, 1.05),  # enhancing rim: bright on T1ce
)
_LESION_MEANS = (1.40, 0.85, 0.90, 1.35)  # unlabelled white-matter lesion (FLAIR / T2 bright)
_VESSEL_MEANS = (0.55, 0.55, 1.60, 0.55)  # unlabelled vessel (T1ce bright)


@dataclass(frozen=True)
class Knobs:
    """Appearance parameters that ``difficulty`` controls (see `from_difficulty`)."""

    noise_std: float  # Rician noise sigma, in units of white matter on T1 (= 1)
    blur_px: float  # partial-volume Gaussian blur sigma, in-plane voxels
    bias_std: float  # standard deviation of the log bias field
    contrast_min: float  # lowest tumour mixing weight (1: full tumour contrast, 0: invisible)
    oedema_fade: float  # width of the oedema intensity fade at its border (fraction of radius)
    small_fraction: float  # probability that a tumour is small (core radius 2-4 px in-plane)
    mimics_mean: float  # mean number of unlabelled tumour mimics per subject

    @classmethod
    def from_difficulty(cls, difficulty: float) -> Knobs:
        d = float(difficulty)
        return cls(
            noise_std=0.04 * d,
            blur_px=0.3 + 0.4 * d,
            bias_std=0.04 + 0.08 * d,
            contrast_min=float(np.clip(0.9 - 0.35 * d, 0.1, 1.0)),
            oedema_fade=0.1 + 0.25 * d,
            small_fraction=float(np.clip(0.1 + 0.2 * d, 0.0, 0.9)),
            mimics_mean=1.5 * d,
        )


# --------------------------------------------------------------------------- random fields


def _axis_basis(x: np.ndarray, length: float) -> np.ndarray:
    """Gaussian bumps every ``length`` across the span of ``x`` (plus a margin): (len(x), k)."""
    lo = float(x[0]) - length
    k = int(math.ceil((float(x[-1]) + length - lo) / length)) + 1
    centres = lo + length * np.arange(k)
    basis = np.exp(-0.5 * ((x[:, None] - centres[None, :]) / (0.6 * length)) ** 2)
    basis[basis < 1e-6] = 0.0  # no denormals: they make the products below 100x slower
    return basis


def _smooth_field(
    rng: np.random.Generator, axes: Sequence[np.ndarray], length: float
) -> np.ndarray:
    """Smooth Gaussian random field on the grid ``axes`` (three 1D coordinate arrays).

    ``length`` is the correlation length in normalised coordinates (the volume spans [-1, 1]
    on every axis). Zero mean and unit variance at every point.
    """
    # dividing each basis row by its norm makes the variance 1 at every point
    bd, bh, bw = (
        (b / np.sqrt((b**2).sum(1, keepdims=True))).astype(np.float32)
        for b in (_axis_basis(np.asarray(a, dtype=np.float64), length) for a in axes)
    )
    coeffs = rng.standard_normal((bd.shape[1], bh.shape[1], bw.shape[1]), dtype=np.float32)
    # plain einsum loops, not BLAS: multithreaded GEMMs stall badly on a busy 2-core machine
    field = np.einsum("dk,klm->dlm", bd, coeffs)
    field = np.einsum("hl,dlm->dhm", bh, field)
    return np.einsum("dhm,wm->dhw", field, bw)


# --------------------------------------------------------------------------- anatomy


@dataclass
class _Subject:
    """Working state of one subject while it is being built."""

    axes: tuple[np.ndarray, np.ndarray, np.ndarray]  # normalised coordinates per axis
    brain: np.ndarray  # bool (D, H, W)
    tissue: np.ndarray  # int8 (D, H, W): _CSF / _GM / _WM / _BACKGROUND
    depth: np.ndarray  # float32 (D, H, W): 1 - normalised radius; > 0 inside the brain
    image: np.ndarray  # float32 (4, D, H, W)
    regions: np.ndarray  # bool (3, D, H, W): WT, TC, ET
    ventricles: np.ndarray  # bool (D, H, W)
    midline: float  # W coordinate of the interhemispheric fissure

    @property
    def pixel(self) -> float:
        """In-plane voxel size in normalised coordinates."""
        return 2.0 / max(len(self.axes[1]), len(self.axes[2]))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along (D, H, W) in in-plane pixels (slices are thicker)."""
        return tuple(2.0 / len(a) / self.pixel for a in self.axes)  # type: ignore[return-value]


def _open_grid(
    axes: Sequence[np.ndarray], centre: Sequence[float] = (0.0, 0.0, 0.0)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates relative to ``centre``, shaped (D, 1, 1), (1, H, 1), (1, 1, W)."""
    z, y, x = (np.asarray(a, np.float32) - np.float32(c) for a, c in zip(axes, centre, strict=True))
    return z[:, None, None], y[None, :, None], x[None, None, :]


def _ellipsoid_radius(
    axes: Sequence[np.ndarray], centre: Sequence[float], semi: Sequence[float]
) -> np.ndarray:
    z, y, x = _open_grid(axes, centre)
    return np.sqrt((z / semi[0]) ** 2 + (y / semi[1]) ** 2 + (x / semi[2]) ** 2)


def anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> _Subject:
    axes = tuple(((np.arange(n) + 0.5) / n * 2.0 - 1.0).astype(np.float32) for n in shape)
    Z, Y, X = _open_grid(axes)

    # brain: a deformed ellipsoid, longer front-to-back (H) than left-to-right (W)
    semi = (rng.uniform(0.80, 0.90), rng.uniform(0.82, 0.90), rng.uniform(0.66, 0.74))
    centre = rng.normal(0.0, 0.02, 3)
    radius = _ellipsoid_radius(axes, centre, semi)
    radius *= 1.0 + 0.05 * _smooth_field(rng, axes, 0.6)
    brain = radius < 1.0
    depth = (1.0 - radius).astype(np.float32)

    # cortex: a ribbon of varying thickness, cut by sulci (zero crossings of a random field)
    ribbon = depth < 0.07 * (1.0 + 0.6 * np.abs(_smooth_field(rng, axes, 0.06)))
    sulcal = _smooth_field(rng, axes, 0.10)
    sulci = ribbon & (np.abs(sulcal) < 0.12)
    fissure = (np.abs(X - centre[2]) < 0.012) & (depth < 0.3)
    outer_csf = depth < 0.02 * (sulcal > 0.3)

    # lateral ventricles: two curved ellipsoids either side of the midline
    size = rng.uniform(0.8, 1.35)
    wobble = 1.0 + 0.15 * _smooth_field(rng, axes, 0.25)
    ventricles = np.zeros(shape, dtype=bool)
    deep_grey = np.zeros(shape, dtype=bool)
    posterior = np.maximum(Y, 0.0)  # H grows front to back: the horns diverge at the back
    for side in (-1.0, 1.0):
        bend = centre[2] + side * (0.075 * size + 0.6 * posterior**2)
        width = 0.055 * size * (1.0 + 0.3 * np.clip(-Y / 0.3, 0.0, 1.0))  # wide frontal horns
        r = np.sqrt(
            ((Z - 0.10) / (0.26 * size)) ** 2
            + ((Y - 0.02) / (0.34 * size)) ** 2
            + ((X - bend) / width) ** 2
        )
        ventricles |= r * wobble < 1.0
        deep_grey |= (
            _ellipsoid_radius(axes, (-0.05, 0.0, centre[2] + side * 0.22), (0.16, 0.22, 0.09))
            * wobble
            < 1.0
        )

    tissue = np.full(shape, _BACKGROUND, dtype=np.int8)
    tissue[brain] = _WM
    tissue[brain & (ribbon | deep_grey)] = _GM
    ventricles &= np.abs(X - centre[2]) > 0.012  # septum pellucidum
    tissue[brain & (sulci | fissure | outer_csf | ventricles)] = _CSF

    means = np.asarray(_HEALTHY_MEANS, dtype=np.float32).T  # (4, classes)
    image = means[:, tissue]
    texture = 1.0 + 0.035 * _smooth_field(rng, axes, 0.08) + 0.02 * _smooth_field(rng, axes, 0.05)
    image *= texture
    regions = np.zeros((3, *shape), dtype=bool)
    return _Subject(
        axes,  # type: ignore[arg-type]
        brain,
        tissue,
        depth,
        image,
        regions,
        ventricles & brain,
        float(centre[2]),
    )


# --------------------------------------------------------------------------- lesions


def _lesion_box(
    s: _Subject, centre: np.ndarray, extent: float
) -> tuple[tuple[slice, slice, slice], tuple[np.ndarray, ...]]:
    """Index box (and its coordinates) of the voxels within ``extent`` of ``centre``."""
    box, coords = [], []
    for a, c in zip(s.axes, centre, strict=True):
        inside = np.flatnonzero(np.abs(a - c) <= extent)
        if inside.size == 0:  # thinner than a voxel: take the nearest slice
            inside = np.array([int(np.argmin(np.abs(a - c)))])
        box.append(slice(int(inside[0]), int(inside[-1]) + 1))
        coords.append(a[box[-1]])
    return tuple(box), tuple(coords)  # type: ignore[return-value]


def _blob_radius(
    rng: np.random.Generator,
    coords: Sequence[np.ndarray],
    centre: np.ndarray,
    radius: float,
    stretch: tuple[float, float] = (0.75, 1.3),
) -> np.ndarray:
    """Normalised radius of a randomly rotated and stretched ellipsoid (1 on its surface)."""
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    scales = rng.uniform(*stretch, size=3)
    a = (rotation / scales[None, :]).T.astype(np.float32)  # (3, 3): rows = scaled principal axes
    dz, dy, dx = _open_grid(coords, centre)
    squared = sum((a[i, 0] * dz + a[i, 1] * dy + a[i, 2] * dx) ** 2 for i in range(3))
    return np.sqrt(squared) / radius


def _pick_centre(rng: np.random.Generator, s: _Subject, min_depth: float) -> np.ndarray:
    """A random point inside the brain at ``depth >= min_depth``, away from the ventricles."""
    ok = np.flatnonzero((s.depth >= min_depth) & (s.tissue != _CSF))
    if ok.size == 0:
        ok = np.array([int(np.argmax(s.depth))])
    index = np.unravel_index(int(ok[rng.integers(ok.size)]), s.depth.shape)
    jitter = rng.uniform(-0.5, 0.5, 3) * np.array([2.0 / len(a) for a in s.axes])
    return np.array([a[i] for a, i in zip(s.axes, index, strict=True)]) + jitter


def _paint(
    image: np.ndarray,
    where: np.ndarray,
    alpha: np.ndarray | float,
    means: np.ndarray,
    texture: np.ndarray | float = 1.0,
) -> None:
    """Mix ``means`` (4,) x ``texture`` into ``image`` (4, ...) with weight ``alpha`` at ``where``."""
    weight = np.where(where, alpha, 0.0).astype(np.float32)
    image *= 1.0 - weight
    image += weight * texture * means.astype(np.float32)[:, None, None, None]


def add_tumour(rng: np.random.Generator, s: _Subject, knobs: Knobs, difficulty: float) -> None:
    small = rng.random() < knobs.small_fraction
    radius = rng.uniform(0.035, 0.07) if small else rng.uniform(0.1, 0.24)  # core radius
    oedema_ratio = min(rng.uniform(1.25, 2.3), 0.4 / radius)  # oedema radius / core radius
    centre = _pick_centre(rng, s, min_depth=0.7 * radius / 0.8)
    # the box holds everything: stretch <= 1.3, perturbations clipped to 2 sigma
    box, coords = _lesion_box(s, centre, extent=1.3 * 1.6 * max(oedema_ratio, 1.4) * radius)

    rho = _blob_radius(rng, coords, centre, radius)
    rho_core = rho / (1.0 + 0.2 * np.clip(_smooth_field(rng, coords, 0.7 * radius), -2, 2))
    rim_texture = _smooth_field(rng, coords, 0.5 * radius)
    oedema_field = np.clip(_smooth_field(rng, coords, 0.8 * radius * oedema_ratio), -2, 2)
    enhance_field = _smooth_field(rng, coords, 0.6 * radius)

    brain, tissue = s.brain[box], s.tissue[box]
    core = (rho_core < 1.0) & brain
    rim = rng.uniform(1.3, 3.0) * s.pixel / radius  # rim thickness, fraction of core radius
    necrotic = rng.random() < 0.75 and rim < 0.75
    thickness = rim * (1.0 + 0.35 * np.clip(rim_texture, -2, 2))
    necrosis = core & (rho_core < 1.0 - thickness) if necrotic else None
    shell = core & ~necrosis if necrosis is not None else core
    if rng.random() < 0.04 + 0.04 * difficulty:  # a non-enhancing tumour
        enhancing = np.zeros_like(core)
    else:
        enhancing = shell & (enhance_field > rng.uniform(-1.6, -0.4))
    # oedema spreads in white matter more than in grey matter, never into the ventricles nor
    # across the midline, and always surrounds the core by a margin of 2-4 pixels
    reach = oedema_ratio * (1.0 + 0.3 * oedema_field) * np.where(tissue == _GM, 0.8, 1.0)
    side = np.sign(centre[2] - s.midline) * (coords[2] - s.midline)[None, None, :] > -0.01
    margin = ndimage.distance_transform_edt(~core, sampling=s.spacing) <= rng.uniform(2.0, 4.0)
    oedema = ((rho < reach) & side) | margin
    oedema &= brain & ~s.ventricles[box] & ~core

    # intensities: mix tumour class means into the healthy tissue with a per-tumour contrast
    contrast = rng.uniform(knobs.contrast_min, 1.0)
    means = np.asarray(_TUMOUR_MEANS) * np.exp(rng.normal(0.0, 0.07, (4, 4)))
    image = s.image[(slice(None), *box)]
    earlier_core = s.regions[1][box]
    fade = np.clip((reach - rho) / (knobs.oedema_fade * reach), 0.0, 1.0)
    _paint(image, oedema & ~earlier_core, contrast * (0.3 + 0.7 * fade), means[_OEDEMA])
    _paint(image, core & ~enhancing, contrast, means[_NON_ENHANCING])
    if necrosis is not None:
        _paint(image, necrosis, contrast, means[_NECROSIS], 1.0 + 0.1 * rim_texture)
    _paint(image, enhancing, contrast, means[_ENHANCING])

    wt, tc, et = (r[box] for r in s.regions)
    wt |= oedema | core
    tc |= core
    et &= ~core  # this tumour's core overrides an earlier tumour's labels
    et |= enhancing


def add_mimic(rng: np.random.Generator, s: _Subject) -> None:
    """An unlabelled look-alike: a FLAIR-bright lesion or a T1ce-bright vessel."""
    vessel = rng.random() < 0.5
    radius = rng.uniform(0.012, 0.03) if vessel else rng.uniform(0.015, 0.04)
    centre = _pick_centre(rng, s, min_depth=0.02 if vessel else 0.15)
    stretch = (0.5, 3.0) if vessel else (0.8, 1.25)
    box, coords = _lesion_box(s, centre, extent=3.0 * 1.25 * radius)
    rho = _blob_radius(rng, coords, centre, radius, stretch)
    where = (rho < 1.0) & (s.tissue[box] != _CSF) & ~s.regions[0][box]
    means = np.asarray(_VESSEL_MEANS if vessel else _LESION_MEANS)
    _paint(s.image[(slice(None), *box)], where, rng.uniform(0.5, 1.0), means)


# --------------------------------------------------------------------------- acquisition


def acquire(rng: np.random.Generator, s: _Subject, knobs: Knobs) -> np.ndarray:
    """Partial-volume blur, bias field, Rician noise; background set to exactly 0."""
    d, h, w = s.brain.shape
    sigma = (knobs.blur_px * d / max(h, w), knobs.blur_px, knobs.blur_px)
    image = np.empty_like(s.image)
    for m in range(len(MODALITIES)):
        ndimage.gaussian_filter(s.image[m], sigma=sigma, output=image[m], mode="constant")
        image[m] *= np.exp(knobs.bias_std * _smooth_field(rng, s.axes, 0.9))
    if knobs.noise_std > 0:
        noise = rng.standard_normal((2, *image.shape), dtype=np.float32) * knobs.noise_std
        image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)
    image *= s.brain
    np.maximum(image, 1e-4, out=image, where=s.brain)  # brain voxels never exactly 0
    return image
