"""Global shape descriptors for the classical baseline (numpy, vectorised over clouds).

A random forest on these is the baseline every point-cloud table carries: in an earlier measurement on
generated scans it beat every deep method. All three parts ignore point order and rotation, and each
cloud is first centred on its centroid and scaled into the unit sphere, so they ignore position and size:

- **D2** (Osada et al., "Shape distributions", ACM TOG 2002): the histogram of distances between random
  point pairs, ``d2_bins`` bins over [0, 2];
- **radial**: the histogram of distances from the centroid, ``radial_bins`` bins over [0, 1], plus
  their mean and standard deviation;
- **PCA**: the covariance eigenvalues λ1 ≥ λ2 ≥ λ3 normalised to sum 1, and linearity (λ1 − λ2)/λ1,
  planarity (λ2 − λ3)/λ1, scattering λ3/λ1.

The pairs are drawn once from ``seed`` (the same index pairs for every cloud of a call), so a cloud's
descriptor depends only on it, its point count and ``seed``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["descriptor_names", "shape_descriptors"]


def descriptor_names(d2_bins: int = 16, radial_bins: int = 12) -> list[str]:
    """Name of each column of :func:`shape_descriptors` (for feature importances)."""
    return [
        *(f"d2_{k}" for k in range(d2_bins)),
        *(f"radial_{k}" for k in range(radial_bins)),
        "radial_mean",
        "radial_std",
        "pca_l1",
        "pca_l2",
        "pca_l3",
        "linearity",
        "planarity",
        "scattering",
    ]


def _histogram(values: np.ndarray, bins: int, top: float) -> np.ndarray:
    """Row-wise histograms ``[n, bins]`` (shares summing to 1) of ``values`` [n, k] over [0, top]."""
    n, k = values.shape
    cell = np.clip((values / top * bins).astype(np.int64), 0, bins - 1) + np.arange(n)[:, None] * bins
    return np.bincount(cell.ravel(), minlength=n * bins).reshape(n, bins) / k


def shape_descriptors(
    xyz: np.ndarray, *, d2_bins: int = 16, radial_bins: int = 12, pairs: int = 2048, seed: int = 0
) -> np.ndarray:
    """Descriptors ``float32 [n, d2_bins + radial_bins + 8]`` of clouds ``xyz`` ``[n, P, 3]`` (columns named
    by :func:`descriptor_names`)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 3 or xyz.shape[-1] != 3 or xyz.shape[1] < 2:
        raise ValueError(f"`xyz` must be [n, P, 3] with P >= 2 points per cloud, got shape {xyz.shape}.")
    bad = ~np.isfinite(xyz).all(-1)
    if bad.any():
        cloud, point = np.argwhere(bad)[0]
        raise ValueError(
            f"Cloud {cloud} has a non-finite coordinate at point {point}; drop or repair it first."
        )
    for name, value in (("d2_bins", d2_bins), ("radial_bins", radial_bins), ("pairs", pairs)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    centred = xyz - xyz.mean(axis=1, keepdims=True)
    radius = np.linalg.norm(centred, axis=-1)
    scale = radius.max(axis=1, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    centred, radius = centred / scale[..., None], radius / scale
    n, points = xyz.shape[:2]
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, points, pairs), rng.integers(0, points, pairs)
    distance = np.linalg.norm(centred[:, first] - centred[:, second], axis=-1)
    covariance = np.einsum("npi,npj->nij", centred, centred) / points
    eigen = np.clip(np.linalg.eigvalsh(covariance)[:, ::-1], 0.0, None)  # descending
    total = np.maximum(eigen.sum(axis=1, keepdims=True), 1e-12)
    l1 = np.maximum(eigen[:, :1], 1e-12)
    shape = np.concatenate(
        [
            eigen / total,
            (eigen[:, :1] - eigen[:, 1:2]) / l1,
            (eigen[:, 1:2] - eigen[:, 2:]) / l1,
            eigen[:, 2:] / l1,
        ],
        axis=1,
    )
    features = np.concatenate(
        [
            _histogram(distance, d2_bins, 2.0),
            _histogram(radius, radial_bins, 1.0),
            radius.mean(axis=1, keepdims=True),
            radius.std(axis=1, keepdims=True),
            shape,
        ],
        axis=1,
    )
    return features.astype(np.float32)
