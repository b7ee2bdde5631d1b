"""Point grouping for point transformers: farthest-point sampling, k-nearest neighbours, the grouper that cuts a
cloud into local patches, and the inverse-distance interpolation that carries patch features back to points.

Everything is vectorised over the batch in plain torch (no CUDA extension), deterministic, and written so
that each function equals the obvious per-cloud loop (the tests check it against one):

- :func:`farthest_point_sample` starts from a given index (0 by default, as the CUDA FPS of PointNet++ that
  Point-MAE and Point-BERT use) and adds, one at a time, the point farthest from those already chosen;
  ties go to the lowest index. Unlike that CUDA kernel, no point is skipped for lying near the origin.
- :func:`knn_group` ranks every point by squared distance to each centre (``torch.topk``: equally distant
  points, such as duplicates, come in topk's order, fixed for a given input and device).
- :class:`PointGrouper` = FPS centres + the ``group_size`` nearest points of each, centred on it
  (Point-MAE's ``Group``): a centre picked from the cloud is its own nearest point, first in its group.
- :func:`inverse_distance_interpolate` is PointNet++'s feature propagation weighting (weights
  ``1 / (squared distance + 1e-8)`` over the 3 nearest support points), as in Point-MAE's segmentation head.
"""

from __future__ import annotations

import operator

import torch
from torch import nn

__all__ = [
    "PointGrouper",
    "farthest_point_sample",
    "index_points",
    "inverse_distance_interpolate",
    "knn_group",
    "square_distance",
]


def _check_cloud(xyz: torch.Tensor, name: str) -> tuple[int, int, int]:
    """``(B, N, D)`` of a batch of clouds ``[B, N, D]``; a clear error for anything else."""
    if not isinstance(xyz, torch.Tensor):
        raise TypeError(
            f"`{name}` must be a tensor [B, N, D] of point coordinates, got {type(xyz).__name__}."
        )
    if xyz.ndim != 3 or min(xyz.shape) < 1:
        raise ValueError(
            f"`{name}` must be a batch of clouds [B, N, D] (B clouds of N points in D dimensions), got shape "
            f"{tuple(xyz.shape)}."
        )
    if not xyz.is_floating_point():
        raise TypeError(f"`{name}` must hold float coordinates, got dtype {xyz.dtype}.")
    batch, points, dims = xyz.shape
    return int(batch), int(points), int(dims)


def _exact(xyz: torch.Tensor) -> torch.Tensor:
    """Coordinates for distance comparisons: detached, and half precision (under autocast) raised to float32,
    whose rounding would otherwise merge near neighbours."""
    xyz = xyz.detach()
    return xyz.float() if xyz.dtype in (torch.float16, torch.bfloat16) else xyz


def _positive_int(value: object, name: str) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return number


def square_distance(queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[B, M, N]`` between ``queries [B, M, D]`` and ``points [B, N, D]``:
    ``dx·dx + dy·dy + …`` summed coordinate by coordinate, in that order (exact differences, not the
    ``|a|² + |b|² - 2ab`` expansion, which can go negative and reorder near neighbours)."""
    total = None
    for axis in range(queries.shape[-1]):
        difference = queries[:, :, None, axis] - points[:, None, :, axis]
        total = difference * difference if total is None else total + difference * difference
    return total


def index_points(points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``points [B, N, C]`` gathered at ``index [B, *S]`` (per-cloud indices): ``[B, *S, C]``.

    Differentiable in ``points`` (adapters regroup token features with it).
    """
    if points.ndim != 3:
        raise ValueError(f"`points` must be [B, N, C], got shape {tuple(points.shape)}.")
    if index.ndim < 2 or index.shape[0] != points.shape[0]:
        raise ValueError(
            f"`index` must be [B, ...] with the B={points.shape[0]} clouds of `points`, got shape "
            f"{tuple(index.shape)}."
        )
    if index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"`index` must hold integer indices, got dtype {index.dtype}.")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= points.shape[1]):
        raise IndexError(
            f"`index` holds values in [{int(index.min())}, {int(index.max())}], outside the "
            f"{points.shape[1]} points of each cloud."
        )
    return _gather(points, index.long())


def _gather(points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """:func:`index_points` without the checks (for indices this module computed itself)."""
    batch = torch.arange(points.shape[0], device=points.device).view(-1, *([1] * (index.ndim - 1)))
    return points[batch, index]


def farthest_point_sample(xyz: torch.Tensor, count: int, start: torch.Tensor | int = 0) -> torch.Tensor:
    """Indices ``[B, count]`` of ``count`` points per cloud of ``xyz [B, N, D]``, chosen by farthest-point
    sampling from ``start`` (one index for all clouds, or a tensor ``[B]`` of one per cloud).

    Each step adds the point whose distance to the nearest chosen point is largest (the lowest index on a
    tie), so the result is deterministic. A cloud with fewer distinct points than ``count`` repeats points
    (the remaining distances are all zero). Indices carry no gradient.
    """
    batch, points, _ = _check_cloud(xyz, "xyz")
    count = _positive_int(count, "count")
    if count > points:
        raise ValueError(
            f"Farthest-point sampling needs `count` <= the number of points: the clouds have {points} points, "
            f"`count` is {count}. Sample fewer centres, or give clouds of at least {count} points."
        )
    current = _start_index(start, batch, points, xyz.device)
    chosen = torch.empty(batch, count, dtype=torch.long, device=xyz.device)
    rows = torch.arange(batch, device=xyz.device)
    with torch.no_grad():
        coords = _exact(xyz)
        nearest = torch.full((batch, points), float("inf"), dtype=coords.dtype, device=coords.device)
        for step in range(count):
            chosen[:, step] = current
            latest = coords[rows, current]  # [B, D]
            nearest = torch.minimum(nearest, square_distance(latest[:, None, :], coords)[:, 0])
            current = nearest.argmax(dim=1)  # the first maximum: lowest index on a tie
    return chosen


def _start_index(start: torch.Tensor | int, batch: int, points: int, device: torch.device) -> torch.Tensor:
    if isinstance(start, torch.Tensor):
        if start.dtype not in (torch.int64, torch.int32) or start.shape not in ((batch,), ()):
            raise ValueError(
                f"`start` must be an int or an integer tensor [B] (one start index per cloud, B={batch}), got "
                f"dtype {start.dtype} and shape {tuple(start.shape)}."
            )
        index = start.to(device=device, dtype=torch.long).expand(batch).clone()
    else:
        try:
            value = operator.index(start)
        except TypeError:
            raise TypeError(f"`start` must be an int or an integer tensor [B], got {start!r}.") from None
        index = torch.full((batch,), value, dtype=torch.long, device=device)
    if bool((index < 0).any()) or bool((index >= points).any()):
        raise ValueError(
            f"`start` indices must lie in [0, {points - 1}] (the clouds have {points} points), got "
            f"{index.tolist()}."
        )
    return index


def knn_group(xyz: torch.Tensor, centres: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[B, G, k]`` of the ``k`` points of ``xyz [B, N, D]`` nearest to each of ``centres [B, G, D]``,
    nearest first (equally near points in ``torch.topk``'s order)."""
    batch, points, dims = _check_cloud(xyz, "xyz")
    centre_batch, _, centre_dims = _check_cloud(centres, "centres")
    if centre_batch != batch or centre_dims != dims:
        raise ValueError(
            f"`centres` {tuple(centres.shape)} must be [B, G, D] with the B={batch} clouds and D={dims} "
            f"coordinates of `xyz` {tuple(xyz.shape)}."
        )
    k = _positive_int(k, "k")
    if k > points:
        raise ValueError(
            f"kNN grouping needs `k` <= the number of points: the clouds have {points} points, `k` is {k}. Use "
            f"smaller groups, or clouds of at least {k} points."
        )
    with torch.no_grad():
        distances = square_distance(_exact(centres), _exact(xyz))
        return torch.topk(distances, k, dim=-1, largest=False, sorted=True).indices


class PointGrouper(nn.Module):
    """Cuts clouds into ``num_groups`` local patches of ``group_size`` points (Point-MAE's ``Group``): FPS
    centres, the kNN of each centre, coordinates relative to the centre.

    Args:
        num_groups: patches (tokens) per cloud.
        group_size: points per patch.
        start: the index FPS starts from (0, as PointNet++'s CUDA FPS).
    """

    def __init__(self, num_groups: int, group_size: int, start: int = 0) -> None:
        super().__init__()
        self.num_groups = _positive_int(num_groups, "num_groups")
        self.group_size = _positive_int(group_size, "group_size")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"`start` must be a non-negative int, got {start!r}.")
        self.start = start

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, group_size={self.group_size}"

    def check_points(self, num_points: int) -> None:
        """Raise a ``ValueError`` naming the fix unless clouds of ``num_points`` points can be grouped."""
        needed = max(self.num_groups, self.group_size)
        if num_points < needed:
            raise ValueError(
                f"The grouper takes {self.num_groups} centres and groups of {self.group_size} points, so each "
                f"cloud needs at least {needed} points; got {num_points}. Sample more points per cloud, or set "
                f"`num_groups` / `group_size` to at most {num_points}."
            )

    def group(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(neighbourhoods [B, G, k, 3], centres [B, G, 3], centre_index [B, G], neighbour_index
        [B, G, k])`` for ``xyz [B, N, 3]``; the neighbourhoods are relative to their centre."""
        _, points, _ = _check_cloud(xyz, "xyz")
        self.check_points(points)
        centre_index = farthest_point_sample(xyz, self.num_groups, self.start)
        centres = _gather(xyz, centre_index)
        neighbour_index = knn_group(xyz, centres, self.group_size)
        neighbourhoods = _gather(xyz, neighbour_index) - centres[:, :, None, :]
        return neighbourhoods, centres, centre_index, neighbour_index

    def forward(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(neighbourhoods [B, G, k, 3], centres [B, G, 3])`` (see :meth:`group`)."""
        neighbourhoods, centres, _, _ = self.group(xyz)
        return neighbourhoods, centres


def inverse_distance_interpolate(
    queries: torch.Tensor, support: torch.Tensor, features: torch.Tensor, k: int = 3, eps: float = 1e-8
) -> torch.Tensor:
    """Features ``[B, M, C]`` at ``queries [B, M, D]``, interpolated from ``features [B, S, C]`` known at
    ``support [B, S, D]``: the ``k`` nearest support points (fewer when ``S < k``) weighted by
    ``1 / (squared distance + eps)``, normalised to sum to one (PointNet++'s feature propagation).

    A query on a support point takes (almost exactly) its feature; a single support point is copied to all.
    Differentiable in ``features``.
    """
    batch, _, dims = _check_cloud(queries, "queries")
    support_batch, count, support_dims = _check_cloud(support, "support")
    if support_batch != batch or support_dims != dims:
        raise ValueError(
            f"`support` {tuple(support.shape)} must be [B, S, D] with the B={batch} clouds and D={dims} "
            f"coordinates of `queries` {tuple(queries.shape)}."
        )
    if features.ndim != 3 or features.shape[:2] != support.shape[:2]:
        raise ValueError(
            f"`features` must be [B, S, C] with one row per support point ({tuple(support.shape[:2])}), got "
            f"shape {tuple(features.shape)}."
        )
    k = min(_positive_int(k, "k"), count)
    with torch.no_grad():
        distances = square_distance(_exact(queries), _exact(support))
        nearest, index = torch.topk(distances, k, dim=-1, largest=False, sorted=True)  # [B, M, k]
        weights = 1.0 / (nearest + eps)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(features.dtype)
        # The weights as a dense [B, M, S] matrix (k non-zeros a row): one batched matmul, in both directions.
        matrix = features.new_zeros(batch, queries.shape[1], count).scatter_(-1, index, weights)
    return torch.bmm(matrix, features)
