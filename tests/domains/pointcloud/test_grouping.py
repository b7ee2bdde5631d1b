"""Point grouping: farthest-point sampling and kNN against plain per-cloud Python loops, the grouper's patches,
inverse-distance interpolation, and the errors that name a bad input."""

from __future__ import annotations

import math

import pytest
import torch

from verticals.domains.pointcloud.grouping import (
    PointGrouper,
    farthest_point_sample,
    index_points,
    inverse_distance_interpolate,
    knn_group,
    square_distance,
)


def _clouds(
    batch: int = 3, points: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, points, 3, generator=generator, dtype=dtype)


def _distance(a: list[float], b: list[float]) -> float:
    total = 0.0
    for x, y in zip(a, b):
        total += (x - y) * (x - y)
    return total


def reference_fps(cloud: list[list[float]], count: int, start: int) -> list[int]:
    """Farthest-point sampling of one cloud, one point at a time (Python floats)."""
    chosen = [start]
    nearest = [math.inf] * len(cloud)
    while len(chosen) < count:
        last = cloud[chosen[-1]]
        for index, point in enumerate(cloud):
            nearest[index] = min(nearest[index], _distance(point, last))
        best = max(range(len(cloud)), key=lambda index: (nearest[index], -index))  # first maximum
        chosen.append(best)
    return chosen


def reference_knn(cloud: list[list[float]], centre: list[float], k: int) -> list[int]:
    return sorted(range(len(cloud)), key=lambda index: (_distance(cloud[index], centre), index))[:k]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_farthest_point_sample_equals_the_reference_loop(dtype: torch.dtype) -> None:
    xyz = _clouds(dtype=dtype)
    starts = torch.tensor([0, 5, 63])
    result = farthest_point_sample(xyz, 16, start=starts)
    assert result.shape == (3, 16) and result.dtype == torch.long
    for row in range(3):
        expected = reference_fps(xyz[row].double().tolist(), 16, int(starts[row]))
        assert result[row].tolist() == expected
    # one int start for every cloud; the default is index 0, as PointNet++'s CUDA FPS
    assert farthest_point_sample(xyz, 16).tolist() == farthest_point_sample(xyz, 16, start=0).tolist()
    assert farthest_point_sample(xyz, 16)[:, 0].tolist() == [0, 0, 0]
    assert farthest_point_sample(xyz, 16, start=torch.tensor(5))[:, 0].tolist() == [5, 5, 5]


def test_farthest_point_sample_spreads_points_and_is_deterministic() -> None:
    xyz = _clouds(batch=2, points=40)
    first = farthest_point_sample(xyz, 40)
    assert all(sorted(row) == list(range(40)) for row in first.tolist())  # every point exactly once
    assert torch.equal(first, farthest_point_sample(xyz.clone(), 40))
    # the samples are the extremes: the second point is the one farthest from the start
    assert first[0, 1] == torch.argmax(((xyz[0] - xyz[0, 0]) ** 2).sum(-1))
    # a cloud of one repeated point has nothing farther: it repeats the start (lowest index on a tie)
    same = torch.zeros(1, 5, 3)
    assert farthest_point_sample(same, 3).tolist() == [[0, 0, 0]]


def test_farthest_point_sample_errors_name_the_bad_value() -> None:
    xyz = _clouds(points=8)
    with pytest.raises(ValueError, match="clouds have 8 points, `count` is 9"):
        farthest_point_sample(xyz, 9)
    with pytest.raises(ValueError, match="`count` must be a positive int, got 0"):
        farthest_point_sample(xyz, 0)
    with pytest.raises(ValueError, match=r"`start` indices must lie in \[0, 7\]"):
        farthest_point_sample(xyz, 2, start=8)
    with pytest.raises(ValueError, match="one start index per cloud, B=3"):
        farthest_point_sample(xyz, 2, start=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="`start` must be an int"):
        farthest_point_sample(xyz, 2, start=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[B, N, D\].*got shape \(8, 3\)"):
        farthest_point_sample(xyz[0], 2)
    with pytest.raises(TypeError, match="float coordinates"):
        farthest_point_sample(xyz.long(), 2)
    with pytest.raises(TypeError, match="must be a tensor"):
        farthest_point_sample([[0.0, 0.0, 0.0]], 1)  # type: ignore[arg-type]


def test_knn_group_equals_the_reference_loop() -> None:
    xyz = _clouds(points=50)
    centres = _clouds(points=7, seed=1)
    result = knn_group(xyz, centres, 6)
    assert result.shape == (3, 7, 6)
    for row in range(3):
        cloud = xyz[row].tolist()
        for group in range(7):
            assert result[row, group].tolist() == reference_knn(cloud, centres[row, group].tolist(), 6)
    with pytest.raises(ValueError, match="clouds have 50 points, `k` is 51"):
        knn_group(xyz, centres, 51)
    with pytest.raises(ValueError, match="B=3 clouds and D=3 coordinates"):
        knn_group(xyz, centres[:2], 4)
    with pytest.raises(ValueError, match="`k` must be a positive int"):
        knn_group(xyz, centres, True)  # type: ignore[arg-type]


def test_square_distance_and_index_points() -> None:
    xyz = _clouds(points=10)
    distances = square_distance(xyz[:, :4], xyz)
    expected = torch.cdist(xyz[:, :4].double(), xyz.double()).pow(2)
    torch.testing.assert_close(distances.double(), expected, atol=1e-5, rtol=1e-5)
    index = torch.tensor([[[0, 1], [2, 3]], [[9, 9], [0, 0]], [[4, 5], [6, 7]]])
    gathered = index_points(xyz.requires_grad_(), index)
    assert gathered.shape == (3, 2, 2, 3)
    assert torch.equal(gathered[1, 0, 0], xyz[1, 9].detach())
    gathered.sum().backward()
    assert xyz.grad is not None and xyz.grad[1, 9].tolist() == [2.0, 2.0, 2.0]  # gathered twice
    with pytest.raises(IndexError, match=r"values in \[0, 10\], outside the 10 points"):
        index_points(xyz, torch.tensor([[10], [0], [0]]))
    with pytest.raises(ValueError, match="B=3 clouds"):
        index_points(xyz, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="integer indices"):
        index_points(xyz, torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"`points` must be \[B, N, C\]"):
        index_points(xyz[0], torch.zeros(3, 1, dtype=torch.long))


def test_point_grouper_cuts_centred_patches() -> None:
    xyz = _clouds(points=32)
    grouper = PointGrouper(num_groups=8, group_size=4)
    neighbourhoods, centres, centre_index, neighbour_index = grouper.group(xyz)
    assert neighbourhoods.shape == (3, 8, 4, 3) and centres.shape == (3, 8, 3)
    assert torch.equal(centre_index, farthest_point_sample(xyz, 8))
    assert torch.equal(neighbour_index, knn_group(xyz, centres, 4))
    assert torch.equal(centres, index_points(xyz, centre_index))
    # a centre is a point of the cloud, so its own nearest point: first in its group, at offset zero
    assert torch.equal(neighbour_index[..., 0], centre_index)
    assert torch.count_nonzero(neighbourhoods[:, :, 0]) == 0
    torch.testing.assert_close(neighbourhoods + centres[:, :, None], index_points(xyz, neighbour_index))
    forward_neighbourhoods, forward_centres = grouper(xyz)
    assert torch.equal(forward_neighbourhoods, neighbourhoods) and torch.equal(forward_centres, centres)
    assert "num_groups=8, group_size=4" in repr(grouper)


def test_point_grouper_errors() -> None:
    grouper = PointGrouper(num_groups=16, group_size=8)
    with pytest.raises(ValueError, match="needs at least 16 points; got 12"):
        grouper(_clouds(points=12))
    with pytest.raises(ValueError, match="`num_groups` must be a positive int, got 0"):
        PointGrouper(0, 8)
    with pytest.raises(ValueError, match="`group_size` must be a positive int"):
        PointGrouper(4, -1)
    with pytest.raises(ValueError, match="`start` must be a non-negative int"):
        PointGrouper(4, 4, start=-1)


def test_inverse_distance_interpolate() -> None:
    generator = torch.Generator().manual_seed(0)
    support = torch.randn(2, 6, 3, generator=generator)
    features = torch.randn(2, 6, 5, generator=generator, requires_grad=True)
    queries = torch.randn(2, 9, 3, generator=generator)
    result = inverse_distance_interpolate(queries, support, features)
    assert result.shape == (2, 9, 5)
    for row in range(2):
        for query in range(9):
            distances = [_distance(queries[row, query].tolist(), p) for p in support[row].tolist()]
            nearest = sorted(range(6), key=lambda index: distances[index])[:3]
            weights = [1.0 / (distances[index] + 1e-8) for index in nearest]
            expected = sum(w * features[row, index].detach() for w, index in zip(weights, nearest)) / sum(
                weights
            )
            torch.testing.assert_close(result[row, query].detach(), expected.float(), rtol=1e-5, atol=1e-6)
    # at a support point: (almost exactly) its feature; a constant feature stays constant
    on_support = inverse_distance_interpolate(support, support, features)
    torch.testing.assert_close(on_support, features, rtol=1e-4, atol=1e-4)
    constant = inverse_distance_interpolate(queries, support, torch.ones(2, 6, 1))
    torch.testing.assert_close(constant, torch.ones(2, 9, 1))
    # fewer support points than k: all of them; one support point is copied everywhere
    single = inverse_distance_interpolate(queries, support[:, :1], features[:, :1])
    torch.testing.assert_close(single, features[:, :1].expand(-1, 9, -1))
    result.sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one row per support point"):
        inverse_distance_interpolate(queries, support, features[:, :4])
    with pytest.raises(ValueError, match="B=2 clouds and D=3 coordinates"):
        inverse_distance_interpolate(queries, support[:1], features[:1])
