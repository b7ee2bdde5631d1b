"""Generated shapes, the scan (each step checked for what its docstring and the card say) and the descriptors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from verticals.domains.pointcloud.descriptors import descriptor_names, shape_descriptors
from verticals.domains.pointcloud.shapes import (
    DENSE_FACTOR,
    DOMAINS,
    FAMILY_PARTS,
    IGNORE_INDEX,
    NOVEL_FAMILIES,
    SEEN_FAMILIES,
    SHAPE_FAMILIES,
    check_families,
    family_part_labels,
    generate_shapes,
    normalize_unit_sphere,
    part_names,
    sample_clean,
    scan,
)

POINTS = 96


@pytest.fixture(scope="module")
def clean() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return generate_shapes(24, seed=5, domain="clean", points=POINTS)


@pytest.fixture(scope="module")
def scanned() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return generate_shapes(24, seed=5, domain="scan", points=POINTS)


def _sphere(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points and outward normals on the unit sphere, in antipodal pairs (centroid exactly 0)."""
    normals = np.random.default_rng(seed).normal(size=(1, count // 2, 3))
    normals = np.concatenate([normals, -normals], axis=1) / np.linalg.norm(
        normals, axis=-1, keepdims=True
    ).repeat(2, 0).reshape(1, -1, 1)
    return normals.copy(), normals


# -- families and parts ----------------------------------------------------------------------------
def test_families_parts_and_their_labels_agree() -> None:
    assert len(SHAPE_FAMILIES) == 8 and set(FAMILY_PARTS) == set(SHAPE_FAMILIES)
    assert set(SEEN_FAMILIES) | set(NOVEL_FAMILIES) == set(SHAPE_FAMILIES) and not set(SEEN_FAMILIES) & set(
        NOVEL_FAMILIES
    )
    names = part_names()
    labels = family_part_labels()
    assert len(names) == sum(len(parts) for parts in FAMILY_PARTS.values())
    assert [names[k] for k in labels["chair"]] == ["chair.seat", "chair.back", "chair.leg", "chair.arm"]
    assert part_names(["mug", "table"]) == ["mug.body", "mug.handle", "table.top", "table.leg"]
    assert family_part_labels(["mug", "table"]) == {"mug": [0, 1], "table": [2, 3]}


@pytest.mark.parametrize(
    ("families", "message"),
    [
        (["table", "sofa"], "Unknown shape family 'sofa'"),
        (["mug", "mug"], "repeats"),
        ([], "empty"),
        ("mug", "string"),
    ],
)
def test_bad_family_lists_are_named(families, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_families(families)


# -- the clean domain ------------------------------------------------------------------------------
def test_clean_shapes_have_documented_shapes_balance_parts_and_normalisation(clean) -> None:
    xyz, labels, parts = clean
    assert xyz.shape == (24, POINTS, 3) and xyz.dtype == np.float32
    assert labels.shape == (24,) and labels.dtype == np.int64 and parts.shape == (24, POINTS)
    assert np.bincount(labels, minlength=8).tolist() == [3] * 8  # equal shares
    np.testing.assert_allclose(xyz.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=-1).max(axis=1), 1, atol=1e-5)
    allowed = family_part_labels()
    for cloud_parts, label in zip(parts, labels, strict=True):
        assert set(np.unique(cloud_parts).tolist()) <= set(allowed[SHAPE_FAMILIES[label]])
    assert IGNORE_INDEX not in parts  # no background in the clean domain


def test_generation_is_deterministic_per_seed_and_paired_across_domains(clean, scanned) -> None:
    again = generate_shapes(24, seed=5, domain="clean", points=POINTS)
    for a, b in zip(clean, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = generate_shapes(24, seed=6, domain="clean", points=POINTS)
    assert not np.allclose(other[0], clean[0])
    np.testing.assert_array_equal(scanned[1], clean[1])  # the same shapes in both domains


def test_family_subsets_label_into_the_subset() -> None:
    xyz, labels, parts = generate_shapes(6, seed=0, points=64, families=["mug", "airplane"])
    assert sorted(np.unique(labels).tolist()) == [0, 1]
    assert set(np.unique(parts[labels == 0]).tolist()) <= {0, 1}  # mug.body, mug.handle
    assert set(np.unique(parts[labels == 1]).tolist()) <= {2, 3, 4, 5}


def test_every_part_of_every_family_occurs() -> None:
    # optional pieces (arms, engines, a round top, a foot ring) appear in some shapes of 48
    _, labels, parts = generate_shapes(8 * 12, seed=1, points=256)
    for code, family in enumerate(SHAPE_FAMILIES):
        offset = family_part_labels()[family]
        assert set(np.unique(parts[labels == code]).tolist()) == set(offset), family


def test_surface_samples_have_unit_normals() -> None:
    rng = np.random.default_rng
    for family in SHAPE_FAMILIES:
        xyz, normals, parts = sample_clean(family, 3, 200, rng(0), rng(1))
        np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1, atol=1e-6)
        assert parts.max() < len(FAMILY_PARTS[family])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0, "seed": 0}, "`count` must be an integer >= 1"),
        ({"count": 2, "seed": -1}, "`seed` must be an integer >= 0"),
        ({"count": 2, "seed": 0, "domain": "lidar"}, "`domain` must be one of"),
        ({"count": 2, "seed": 0, "points": 0}, "`points` must be an integer >= 1"),
        ({"count": 2, "seed": 0, "families": ["sofa"]}, "Unknown shape family"),
    ],
)
def test_generator_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_shapes(**kwargs)


def test_normalize_unit_sphere_centres_and_scales() -> None:
    xyz = np.random.default_rng(0).normal(size=(3, 50, 3)) * 7 + 4
    out = normalize_unit_sphere(xyz)
    np.testing.assert_allclose(out.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1).max(axis=1), 1)
    np.testing.assert_array_equal(normalize_unit_sphere(np.zeros((1, 4, 3))), 0)  # a point cloud of one point


# -- the scan --------------------------------------------------------------------------------------
def test_scans_have_background_labelled_ignore_and_keep_part_labels(scanned, clean) -> None:
    xyz, labels, parts = scanned
    assert xyz.shape == (24, POINTS, 3) and xyz.dtype == np.float32 and np.isfinite(xyz).all()
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=-1).max(axis=1), 1, atol=1e-5)
    background = (parts == IGNORE_INDEX).mean(axis=1)
    assert ((background >= 0.09) & (background <= 0.26)).all()  # BACKGROUND_FRACTION 0.1–0.25, rounded
    allowed = family_part_labels()
    for cloud_parts, label in zip(parts, labels, strict=True):
        kept = set(np.unique(cloud_parts).tolist()) - {IGNORE_INDEX}
        assert kept <= set(allowed[SHAPE_FAMILIES[label]])


def test_scan_with_every_step_off_but_culling_returns_a_normalised_subset() -> None:
    xyz, normals = _sphere(800)
    index = np.arange(800)[None]
    off = {"occluder": False, "background": False, "density": False, "jitter": False, "rotate": False}
    cloud, picked = scan(xyz, np.random.default_rng(0), normals=normals, part_labels=index, points=100, **off)
    assert len(np.unique(picked)) == 100  # drawn without replacement
    np.testing.assert_allclose(cloud, normalize_unit_sphere(xyz[:, picked[0]]), atol=1e-6)
    # back faces culled: every kept normal lies within 90° of the others' mean (one hemisphere, seen from outside)
    kept = normals[0, picked[0]]
    mean = kept.mean(axis=0) / np.linalg.norm(kept.mean(axis=0))
    assert (kept @ mean).min() > 0


def test_zbuffer_alone_hides_the_far_side() -> None:
    xyz, normals = _sphere(3000)
    off = {"occluder": False, "background": False, "density": False, "jitter": False, "rotate": False}
    index = np.arange(3000)[None]
    _, picked, info = scan(
        xyz, np.random.default_rng(1), part_labels=index, points=200, return_info=True, **off
    )
    kept = normals[0, picked[0]]
    mean = kept.mean(axis=0) / np.linalg.norm(kept.mean(axis=0))
    assert (kept @ mean < 0).mean() < 0.02  # (almost) nothing of the far side
    # the cap seen from distance d is (1 - 1/d) / 2 of the sphere (0.30–0.375 for d in 2.5–4); grazing
    # points at its rim are dropped, as by a depth sensor
    assert 0.2 < info["visible_fraction"][0] < 0.375


def test_scan_steps_switch_off_and_report_what_they_did() -> None:
    rng = np.random.default_rng
    xyz, normals, parts = sample_clean("table", 6, 64 * DENSE_FACTOR, rng(0), rng(1))
    full, labels, info = scan(xyz, rng(2), normals=normals, part_labels=parts, return_info=True)
    assert full.shape == (6, 64, 3)  # points default to M // DENSE_FACTOR
    np.testing.assert_array_equal(info["background"], (labels == IGNORE_INDEX).sum(axis=1))
    assert (info["repeated"] == 0).all() and (info["visible_fraction"] < 0.7).all()
    assert (info["occluded_fraction"] > 0).any()
    _, labels, info = scan(
        xyz, rng(2), normals=normals, part_labels=parts, background=False, occluder=False, return_info=True
    )
    assert IGNORE_INDEX not in labels and (info["occluded_fraction"] == 0).all()
    # the same generator state gives the same scan
    a = scan(xyz, rng(3), normals=normals, part_labels=parts)
    b = scan(xyz, rng(3), normals=normals, part_labels=parts)
    np.testing.assert_array_equal(a[0], b[0])
    # jitter moves points off the surface; the heading rotates about the up axis only (heights unchanged)
    off = {"occluder": False, "background": False, "density": False, "jitter": False}
    still, _ = scan(xyz, rng(4), normals=normals, **off, rotate=False)
    turned, _ = scan(xyz, rng(4), normals=normals, **off, rotate=True)
    np.testing.assert_allclose(np.sort(still[..., 1]), np.sort(turned[..., 1]), atol=1e-5)
    assert not np.allclose(still[..., 0], turned[..., 0])


def test_density_gradient_skews_the_kept_points() -> None:
    # a flat square seen from above: uniform weights keep the picked points centred on it, the gradient
    # (weights down to exp(-2) across the image) pulls them towards one side
    square = np.random.default_rng(0).uniform(-1, 1, (1, 4000, 3)) * [1, 0, 1]
    normals = np.broadcast_to([0.0, 1.0, 0.0], square.shape)
    index = np.arange(4000)[None]
    off = {"occluder": False, "background": False, "jitter": False, "rotate": False, "points": 500}
    shift = {}
    for density in (False, True):
        offsets = []
        for seed in range(6):
            _, picked = scan(
                square,
                np.random.default_rng(seed),
                normals=normals,
                part_labels=index,
                density=density,
                **off,
            )
            offsets.append(np.linalg.norm(square[0, picked[0]].mean(axis=0)))
        shift[density] = float(np.mean(offsets))
    assert shift[False] < 0.06 and shift[True] > 2 * shift[False]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"xyz": np.zeros((5, 3))}, r"\[n, M, 3\]"),
        ({"xyz": np.full((1, 8, 3), np.nan)}, "non-finite coordinate at object 0, point 0"),
        ({"normals": np.zeros((1, 7, 3))}, "`normals` must match"),
        ({"part_labels": np.zeros((1, 7))}, "`part_labels` must be"),
        ({"rng": 0}, "numpy Generator"),
    ],
)
def test_scan_refuses_bad_inputs(kwargs: dict, message: str) -> None:
    arguments = {
        "xyz": np.random.default_rng(0).normal(size=(1, 16, 3)),
        "rng": np.random.default_rng(0),
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        scan(**arguments)


# -- descriptors -----------------------------------------------------------------------------------
def test_descriptors_shape_names_and_histograms(clean) -> None:
    features = shape_descriptors(clean[0])
    names = descriptor_names()
    assert features.shape == (24, len(names)) and features.dtype == np.float32
    d2 = [k for k, name in enumerate(names) if name.startswith("d2_")]
    radial = [k for k, name in enumerate(names) if name.startswith("radial_") and name[7:].isdigit()]
    np.testing.assert_allclose(features[:, d2].sum(axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(features[:, radial].sum(axis=1), 1, atol=1e-6)
    assert len(descriptor_names(8, 4)) == shape_descriptors(clean[0], d2_bins=8, radial_bins=4).shape[1]


def test_descriptors_ignore_position_size_and_rotation(clean) -> None:
    xyz = clean[0][:6].astype(np.float64)
    angle = 0.7
    rotation = np.array(
        [[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]]
    )
    moved = 3.5 * xyz @ rotation.T + [1.0, -2.0, 0.5]
    np.testing.assert_allclose(shape_descriptors(moved), shape_descriptors(xyz), atol=2 / 2048 + 1e-5)


def test_pca_part_matches_known_shapes() -> None:
    t = np.linspace(-1, 1, 200)
    line = np.stack([t, 0 * t, 0 * t], -1)[None]
    u, v = np.meshgrid(t[::10], t[::10])
    square = np.stack([u.ravel(), v.ravel(), 0 * u.ravel()], -1)[None]
    names = descriptor_names()
    pick = [
        names.index(name) for name in ("pca_l1", "pca_l2", "pca_l3", "linearity", "planarity", "scattering")
    ]
    np.testing.assert_allclose(shape_descriptors(line)[0, pick], [1, 0, 0, 1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(shape_descriptors(square)[0, pick], [0.5, 0.5, 0, 0, 1, 0], atol=1e-6)
    sphere, _ = _sphere(500)
    radial = [k for k, name in enumerate(names) if name.startswith("radial_") and name[7:].isdigit()]
    assert shape_descriptors(sphere)[0, radial[-1]] == pytest.approx(1.0)  # all points at the radius


def test_descriptors_separate_the_clean_families() -> None:
    from sklearn.ensemble import RandomForestClassifier

    train, test = generate_shapes(160, seed=0, points=256), generate_shapes(80, seed=1, points=256)
    forest = RandomForestClassifier(50, random_state=0, n_jobs=1).fit(shape_descriptors(train[0]), train[1])
    assert (forest.predict(shape_descriptors(test[0])) == test[1]).mean() > 0.85


@pytest.mark.parametrize(
    ("xyz", "kwargs", "message"),
    [
        (np.zeros((2, 1, 3)), {}, "P >= 2"),
        (np.array([[[0.0, 0, 0], [np.nan, 0, 0]]]), {}, "Cloud 0 has a non-finite coordinate at point 1"),
        (np.zeros((1, 4, 3)), {"pairs": 0}, "`pairs` must be an integer >= 1"),
    ],
)
def test_descriptors_refuse_bad_inputs(xyz: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        shape_descriptors(xyz, **kwargs)


def test_domains_constant() -> None:
    assert DOMAINS == ("clean", "scan")
