"""Generated 3-D shapes with part labels, in a clean CAD-like domain and a scanned domain (numpy, vectorised).

A shape is a few surface primitives (boxes, tubes, frustums, discs, torus arcs) whose sizes, placement and
optional pieces vary per shape; each primitive carries a part label. ``SHAPE_FAMILIES`` lists the eight
families and ``FAMILY_PARTS`` their parts (``table``: top, leg; ``chair``: seat, back, leg, arm; …).
Coordinates are y-up; every cloud is centred on its centroid and scaled into the unit sphere.

- **clean**: ``points`` samples uniform over the surface area of the whole shape, no noise, upright
  (what sampling a CAD mesh gives, as ModelNet40 or ShapeNet do);
- **scan**: :func:`scan` on a denser clean sample: what a depth sensor sees of the object from one
  viewpoint: back faces culled, self-occlusion (a z-buffer), an occluder in front, a density gradient,
  jitter, floor and occluder points as background (part label ``IGNORE_INDEX``), an unknown heading.

Every constant of the scan is named here and in ``datasets_cards/generated_shapes.md``. Draws are vectorised
over the shapes of a family, so ``count`` is part of the stream (``generate_shapes(10, s)[0][:5]`` is not
``generate_shapes(5, s)[0]``); a seed gives the same shapes in both domains (paired).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BACKGROUND_FRACTION",
    "DENSE_FACTOR",
    "DENSITY_GRADIENT",
    "DEPTH_SIGMA",
    "DOMAINS",
    "FAMILY_PARTS",
    "FLOOR_RADIUS",
    "GENERATOR_VERSION",
    "IGNORE_INDEX",
    "JITTER_SIGMA",
    "NOVEL_FAMILIES",
    "OCCLUDER_SHARE",
    "OCCLUDER_SIZE",
    "SEEN_FAMILIES",
    "SHAPE_FAMILIES",
    "VIEW_DISTANCE",
    "VIEW_ELEVATION",
    "ZBUFFER_TOLERANCE",
    "check_families",
    "family_part_labels",
    "generate_shapes",
    "normalize_unit_sphere",
    "part_names",
    "sample_clean",
    "scan",
]

#: Bumped whenever the same seed would give different shapes (cache keys of models trained on them).
GENERATOR_VERSION: int = 1
#: Label value ``k`` of ``generate_shapes(..., families=None)`` is ``SHAPE_FAMILIES[k]``.
SHAPE_FAMILIES: tuple[str, ...] = ("table", "chair", "stool", "lamp", "mug", "bottle", "airplane", "shelf")
#: Families a stand-in encoder is pretrained on; ``NOVEL_FAMILIES`` are kept out of pretraining:
#: ``stool`` resembles seen families (a small table, a chair without back), ``airplane`` resembles none.
NOVEL_FAMILIES: tuple[str, ...] = ("stool", "airplane")
SEEN_FAMILIES: tuple[str, ...] = tuple(name for name in SHAPE_FAMILIES if name not in NOVEL_FAMILIES)
#: Parts of each family, in label order (part label = offset of the family + index here).
FAMILY_PARTS: dict[str, tuple[str, ...]] = {
    "table": ("top", "leg"),
    "chair": ("seat", "back", "leg", "arm"),
    "stool": ("seat", "leg"),
    "lamp": ("base", "pole", "shade"),
    "mug": ("body", "handle"),
    "bottle": ("body", "neck", "cap"),
    "airplane": ("fuselage", "wing", "tail", "engine"),
    "shelf": ("frame", "board"),
}
#: The two domains: clean CAD-like samples and scans.
DOMAINS: tuple[str, ...] = ("clean", "scan")
#: Part label of background points (floor, occluder) in a scan: counted in no loss and no metric.
IGNORE_INDEX: int = 255

# -- the scan's constants (all lengths in units of the unit-sphere-normalised object) ------------
#: A scan starts from ``DENSE_FACTOR × points`` clean samples (with normals), most of which it removes.
DENSE_FACTOR: int = 8
#: Camera elevation above the horizon, degrees (a sensor looks at objects on the floor from above).
VIEW_ELEVATION: tuple[float, float] = (10.0, 50.0)
#: Camera distance from the object's centre.
VIEW_DISTANCE: tuple[float, float] = (2.5, 4.0)
#: A visible point lies within this depth of the nearest point in its z-buffer pixel (plus, with normals,
#: the depth its own surface spans across a pixel: pixel width × tan of its angle to the line of sight,
#: the tangent capped at ``_MAX_SLOPE``).
ZBUFFER_TOLERANCE: float = 0.05
_MAX_SLOPE = 3.0
#: A point more than this behind the nearest depth of its 3×3 pixel neighbourhood is hidden too (a far
#: surface showing through a pixel that no near point happened to fall in).
_SPLAT_MARGIN = 0.25
#: Occluder side as a fraction of the object's image extent (each side drawn apart).
OCCLUDER_SIZE: tuple[float, float] = (0.2, 0.45)
#: Share of the background points that lie on the occluder (the rest on the floor).
OCCLUDER_SHARE: tuple[float, float] = (0.2, 0.5)
#: Share of the output points that are background (floor and occluder).
BACKGROUND_FRACTION: tuple[float, float] = (0.1, 0.25)
#: Floor patch radius, in units of the object's radius, around the object's foot.
FLOOR_RADIUS: tuple[float, float] = (1.0, 1.5)
#: Density falls by ``exp(-g)`` across the image along a random direction, ``g`` drawn from this range.
DENSITY_GRADIENT: tuple[float, float] = (0.5, 2.0)
#: Isotropic Gaussian jitter (standard deviation) and extra range noise along the line of sight.
JITTER_SIGMA: float = 0.01
DEPTH_SIGMA: float = 0.015
#: An occluder that would leave less than this share of the visible object is not placed.
_MIN_UNOCCLUDED = 0.25
#: Shapes per vectorised chunk (bounds memory; part of the stream).
_CHUNK = 256


# -- checks --------------------------------------------------------------------------------------
def _check_int(value: object, name: str, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}; {fix}.")
    return int(value)


def check_families(families: Sequence[str] | None) -> tuple[str, ...]:
    """``families`` as a tuple of known, distinct family names (``None``: all of ``SHAPE_FAMILIES``)."""
    if families is None:
        return SHAPE_FAMILIES
    if isinstance(families, str):
        raise ValueError(
            f"`families` must be a list of family names, got the string {families!r}; write [{families!r}]."
        )
    names = tuple(families)
    unknown = [name for name in names if name not in FAMILY_PARTS]
    if unknown:
        raise ValueError(f"Unknown shape family {unknown[0]!r}; the families are {list(SHAPE_FAMILIES)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"`families` repeats a name: {list(names)}; list each family once.")
    if not names:
        raise ValueError(f"`families` is empty; name at least one of {list(SHAPE_FAMILIES)}.")
    return names


def part_names(families: Sequence[str] | None = None) -> list[str]:
    """Name of each part label of ``families`` (``"table.top"``, ``"table.leg"``, ``"chair.seat"``, …)."""
    return [f"{family}.{part}" for family in check_families(families) for part in FAMILY_PARTS[family]]


def family_part_labels(families: Sequence[str] | None = None) -> dict[str, list[int]]:
    """The part labels each family's points take (what a per-category part metric restricts to)."""
    labels, offset = {}, 0
    for family in check_families(families):
        labels[family] = list(range(offset, offset + len(FAMILY_PARTS[family])))
        offset += len(FAMILY_PARTS[family])
    return labels


# -- rotations -------------------------------------------------------------------------------------
def _rotation(axis: str, angle: np.ndarray) -> np.ndarray:
    """``[n, 3, 3]`` rotations by ``angle`` [n] (radians, right-handed) about ``axis``."""
    c, s = np.cos(angle), np.sin(angle)
    one, zero = np.ones_like(angle), np.zeros_like(angle)
    rows = {
        "x": ((one, zero, zero), (zero, c, -s), (zero, s, c)),
        "y": ((c, zero, s), (zero, one, zero), (-s, zero, c)),
        "z": ((c, -s, zero), (s, c, zero), (zero, zero, one)),
    }[axis]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def _align_y(direction: np.ndarray) -> np.ndarray:
    """``[n, 3, 3]`` rotations taking +y onto the unit vectors ``direction`` [n, 3] (none near -y)."""
    v = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    k = np.stack([v[:, 2], np.zeros(len(v)), -v[:, 0]], axis=-1)  # y × v
    cross = np.zeros((len(v), 3, 3))
    cross[:, 0, 1], cross[:, 0, 2] = -k[:, 2], k[:, 1]
    cross[:, 1, 0], cross[:, 1, 2] = k[:, 2], -k[:, 0]
    cross[:, 2, 0], cross[:, 2, 1] = -k[:, 1], k[:, 0]
    scale = (1.0 / (1.0 + v[:, 1]))[:, None, None]
    return np.eye(3)[None] + cross + cross @ cross * scale


# -- primitives ----------------------------------------------------------------------------------
@dataclass
class _Primitive:
    """One surface piece of every shape of a family: ``kind`` with per-shape ``params``, placed by
    ``rotation`` then ``shift``; ``present`` [n] switches it off per shape (zero area, never sampled).

    Kinds (local frame, y-up, centred): ``box`` (``size`` [n, 3]); ``tube`` (open cylinder: ``r``, ``h``);
    ``frustum`` (open: ``r0`` at the bottom, ``r1`` at the top, ``h``); ``disc`` (annulus ``r_in``..``r``
    in the xz-plane, normal +y, or -y with ``flip``); ``torus`` (tube of radius ``r`` around the arc of
    radius ``R`` in the xy-plane from angle ``phi0`` to ``phi1``). ``inward`` turns tube and frustum
    normals towards the axis (inner walls).
    """

    kind: str
    part: int
    params: dict[str, np.ndarray]
    shift: np.ndarray
    rotation: np.ndarray | None = None
    present: np.ndarray | None = None
    inward: bool = False
    flip: bool = False

    def area(self) -> np.ndarray:
        p = self.params
        if self.kind == "box":
            s = p["size"]
            area = 2 * (s[:, 0] * s[:, 1] + s[:, 1] * s[:, 2] + s[:, 0] * s[:, 2])
        elif self.kind == "tube":
            area = 2 * math.pi * p["r"] * p["h"]
        elif self.kind == "frustum":
            area = math.pi * (p["r0"] + p["r1"]) * np.hypot(p["r0"] - p["r1"], p["h"])
        elif self.kind == "disc":
            area = math.pi * (p["r"] ** 2 - p.get("r_in", 0.0) ** 2) * np.ones(len(self.shift))
        else:  # torus
            area = 2 * math.pi * p["r"] * p["R"] * np.abs(p["phi1"] - p["phi0"])
        area = np.broadcast_to(area, (len(self.shift),)).astype(np.float64)
        return area * self.present if self.present is not None else area

    def sample(self, rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Points and unit normals ``[m, 3]`` uniform on this primitive of shapes ``rows`` [m]."""
        m = len(rows)
        p = {
            key: np.broadcast_to(value, (len(self.shift), *np.shape(value)[1:]))[rows]
            for key, value in self.params.items()
        }
        u = rng.random((m, 3))
        zero = np.zeros(m)
        if self.kind == "box":
            size = p["size"]
            face = np.stack([size[:, 1] * size[:, 2], size[:, 0] * size[:, 2], size[:, 0] * size[:, 1]], -1)
            cdf = np.cumsum(face, -1) / face.sum(-1, keepdims=True)
            axis = np.minimum((u[:, :1] > cdf).sum(-1), 2)
            sign = np.where(rng.random(m) < 0.5, -1.0, 1.0)
            local = (rng.random((m, 3)) - 0.5) * size
            local[np.arange(m), axis] = sign * size[np.arange(m), axis] / 2
            normal = np.zeros((m, 3))
            normal[np.arange(m), axis] = sign
        elif self.kind in ("tube", "frustum"):
            theta = 2 * math.pi * u[:, 0]
            if self.kind == "tube":
                r0 = r1 = p["r"]
            else:
                r0, r1 = p["r0"], p["r1"]
            radius = np.sqrt(r0**2 + u[:, 1] * (r1**2 - r0**2))  # density ∝ radius along the height
            delta = r1 - r0
            safe = np.where(np.abs(delta) > 1e-9, delta, 1.0)
            t = np.where(np.abs(delta) > 1e-9, (radius - r0) / safe, u[:, 1])
            h = p["h"]
            local = np.stack([radius * np.cos(theta), (t - 0.5) * h, radius * np.sin(theta)], -1)
            normal = np.stack([h * np.cos(theta), r0 - r1, h * np.sin(theta)], -1)
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            if self.inward:
                normal = -normal
        elif self.kind == "disc":
            theta = 2 * math.pi * u[:, 0]
            r_in = p.get("r_in", zero)
            radius = np.sqrt(r_in**2 + u[:, 1] * (p["r"] ** 2 - r_in**2))
            local = np.stack([radius * np.cos(theta), zero, radius * np.sin(theta)], -1)
            normal = np.stack([zero, np.full(m, -1.0 if self.flip else 1.0), zero], -1)
        else:  # torus: the tube angle v has density ∝ R + r cos v; 4 candidates by rejection, else the last
            phi = p["phi0"] + u[:, 0] * (p["phi1"] - p["phi0"])
            big, small = p["R"], p["r"]
            candidates = 2 * math.pi * rng.random((m, 4))
            accept = rng.random((m, 4)) * (big + small)[:, None] <= (
                big[:, None] + small[:, None] * np.cos(candidates)
            )
            first = np.where(accept.any(-1), accept.argmax(-1), 3)
            v = candidates[np.arange(m), first]
            radial = np.stack([np.cos(phi), np.sin(phi), zero], -1)
            up = np.stack([zero, zero, np.ones(m)], -1)
            normal = np.cos(v)[:, None] * radial + np.sin(v)[:, None] * up
            local = big[:, None] * radial + small[:, None] * normal
        if self.rotation is not None:
            rotation = self.rotation[rows]
            local = np.einsum("mij,mj->mi", rotation, local)
            normal = np.einsum("mij,mj->mi", rotation, normal)
        return local + self.shift[rows], normal


def _u(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    return rng.uniform(low, high, n)


def _at(x: Any, y: Any, z: Any, n: int) -> np.ndarray:
    """``[n, 3]`` points from per-shape (or shared) coordinates."""
    return np.stack([np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in (x, y, z)], -1)


def _box(part: int, size: np.ndarray, shift: np.ndarray, **kwargs: Any) -> _Primitive:
    return _Primitive("box", part, {"size": size}, shift, **kwargs)


def _capped_tube(
    part: int, r: np.ndarray, h: np.ndarray, centre: np.ndarray, present=None
) -> list[_Primitive]:
    """A closed cylinder (side, top and bottom discs), vertical, centred on ``centre``."""
    up = np.stack([np.zeros_like(h), h / 2, np.zeros_like(h)], -1)
    return [
        _Primitive("tube", part, {"r": r, "h": h}, centre, present=present),
        _Primitive("disc", part, {"r": r}, centre + up, present=present),
        _Primitive("disc", part, {"r": r}, centre - up, present=present, flip=True),
    ]


# -- the families ----------------------------------------------------------------------------------
def _table(rng: np.random.Generator, n: int) -> list[_Primitive]:
    top, leg = 0, 1
    height, thick = _u(rng, n, 0.65, 0.8), _u(rng, n, 0.03, 0.07)
    width, depth = _u(rng, n, 0.9, 1.8), _u(rng, n, 0.55, 1.0)
    round_top = rng.random(n) < 0.3
    box_legs = rng.random(n) < 0.5
    radius = _u(rng, n, 0.4, 0.65)
    leg_w, inset = _u(rng, n, 0.04, 0.08), _u(rng, n, 0.03, 0.12)
    prims = [_box(top, _at(width, thick, depth, n), _at(0, height - thick / 2, 0, n), present=~round_top)]
    prims += _capped_tube(top, radius, thick, _at(0, height - thick / 2, 0, n), present=round_top)
    leg_h = height - thick
    for sx in (-1, 1):
        for sz in (-1, 1):
            centre = _at(
                sx * (width / 2 - inset - leg_w / 2), leg_h / 2, sz * (depth / 2 - inset - leg_w / 2), n
            )
            prims.append(_box(leg, _at(leg_w, leg_h, leg_w, n), centre, present=~round_top & box_legs))
            prims.append(
                _Primitive("tube", leg, {"r": leg_w / 2, "h": leg_h}, centre, present=~round_top & ~box_legs)
            )
    # a round top stands on a pedestal with a foot
    pedestal_r, foot_r, foot_h = _u(rng, n, 0.04, 0.08), _u(rng, n, 0.2, 0.32), _u(rng, n, 0.02, 0.05)
    pedestal = _at(0, foot_h + (leg_h - foot_h) / 2, 0, n)
    prims.append(_Primitive("tube", leg, {"r": pedestal_r, "h": leg_h - foot_h}, pedestal, present=round_top))
    prims += _capped_tube(leg, foot_r, foot_h, _at(0, foot_h / 2, 0, n), present=round_top)
    return prims


def _chair(rng: np.random.Generator, n: int) -> list[_Primitive]:
    seat, back, leg, arm = 0, 1, 2, 3
    width, depth, thick = _u(rng, n, 0.4, 0.55), _u(rng, n, 0.4, 0.55), _u(rng, n, 0.04, 0.08)
    seat_h = _u(rng, n, 0.4, 0.5)
    back_h, back_t, tilt = _u(rng, n, 0.35, 0.6), _u(rng, n, 0.03, 0.06), _u(rng, n, 0.0, 0.25)
    leg_w = _u(rng, n, 0.03, 0.05)
    box_legs = rng.random(n) < 0.5
    arms = rng.random(n) < 0.35
    prims = [_box(seat, _at(width, thick, depth, n), _at(0, seat_h - thick / 2, 0, n))]
    back_centre = _at(
        0, seat_h + back_h / 2 * np.cos(tilt), -depth / 2 + back_t / 2 - back_h / 2 * np.sin(tilt), n
    )
    prims.append(_box(back, _at(width, back_h, back_t, n), back_centre, rotation=_rotation("x", -tilt)))
    leg_h = seat_h - thick
    for sx in (-1, 1):
        for sz in (-1, 1):
            centre = _at(sx * (width / 2 - leg_w), leg_h / 2, sz * (depth / 2 - leg_w), n)
            prims.append(_box(leg, _at(leg_w, leg_h, leg_w, n), centre, present=box_legs))
            prims.append(_Primitive("tube", leg, {"r": leg_w / 2, "h": leg_h}, centre, present=~box_legs))
    arm_h, arm_w = _u(rng, n, 0.18, 0.26), _u(rng, n, 0.04, 0.07)
    for sx in (-1, 1):
        x = sx * (width / 2 - arm_w / 2)
        prims.append(_box(arm, _at(arm_w, 0.04, depth * 0.9, n), _at(x, seat_h + arm_h, 0, n), present=arms))
        prims.append(
            _box(
                arm,
                _at(arm_w * 0.6, arm_h, arm_w * 0.6, n),
                _at(x, seat_h + arm_h / 2, depth * 0.3, n),
                present=arms,
            )
        )
    return prims


def _stool(rng: np.random.Generator, n: int) -> list[_Primitive]:
    seat, leg = 0, 1
    height, radius, thick = _u(rng, n, 0.45, 0.8), _u(rng, n, 0.15, 0.22), _u(rng, n, 0.03, 0.06)
    square = rng.random(n) < 0.3
    legs = np.where(rng.random(n) < 0.5, 3, 4)
    leg_r, splay, turn = _u(rng, n, 0.012, 0.025), _u(rng, n, 0.9, 1.3), _u(rng, n, 0, 2 * math.pi)
    ring = rng.random(n) < 0.5
    centre = _at(0, height - thick / 2, 0, n)
    prims = _capped_tube(seat, radius, thick, centre, present=~square)
    prims.append(_box(seat, _at(2 * radius, thick, 2 * radius, n), centre, present=square))
    leg_top = height - thick
    for k in range(4):
        angle = turn + 2 * math.pi * k / legs
        top = _at(0.75 * radius * np.cos(angle), leg_top, 0.75 * radius * np.sin(angle), n)
        foot = _at(splay * radius * np.cos(angle), 0, splay * radius * np.sin(angle), n)
        axis = top - foot
        length = np.linalg.norm(axis, axis=-1)
        prims.append(
            _Primitive(
                "tube",
                leg,
                {"r": leg_r, "h": length},
                (top + foot) / 2,
                rotation=_align_y(axis),
                present=k < legs,
            )
        )
    ring_y = 0.3 * height
    ring_radius = radius * (splay + (0.75 - splay) * ring_y / leg_top)
    prims.append(
        _Primitive(
            "torus",
            leg,
            {"R": ring_radius, "r": leg_r * 0.8, "phi0": 0.0, "phi1": 2 * math.pi},
            _at(0, ring_y, 0, n),
            rotation=_rotation("x", np.full(n, math.pi / 2)),
            present=ring,
        )
    )
    return prims


def _lamp(rng: np.random.Generator, n: int) -> list[_Primitive]:
    base, pole, shade = 0, 1, 2
    base_r, base_h = _u(rng, n, 0.1, 0.18), _u(rng, n, 0.02, 0.06)
    square = rng.random(n) < 0.3
    pole_r, pole_h, lean = _u(rng, n, 0.01, 0.02), _u(rng, n, 0.35, 0.7), _u(rng, n, -0.3, 0.3)
    shade_r0 = _u(rng, n, 0.12, 0.25)
    shade_r1, shade_h = shade_r0 * _u(rng, n, 0.3, 0.7), _u(rng, n, 0.12, 0.25)
    prims = _capped_tube(base, base_r, base_h, _at(0, base_h / 2, 0, n), present=~square)
    prims.append(_box(base, _at(2 * base_r, base_h, 2 * base_r, n), _at(0, base_h / 2, 0, n), present=square))
    direction = _at(np.sin(lean), np.cos(lean), 0, n)
    tip = _at(0, base_h, 0, n) + direction * pole_h[:, None]
    prims.append(
        _Primitive(
            "tube",
            pole,
            {"r": pole_r, "h": pole_h},
            (tip + _at(0, base_h, 0, n)) / 2,
            rotation=_align_y(direction),
        )
    )
    shade_centre = tip + _at(0, shade_h / 6, 0, n)
    params = {"r0": shade_r0, "r1": shade_r1, "h": shade_h}
    prims.append(_Primitive("frustum", shade, params, shade_centre))
    prims.append(_Primitive("frustum", shade, dict(params), shade_centre, inward=True))
    return prims


def _mug(rng: np.random.Generator, n: int) -> list[_Primitive]:
    body, handle = 0, 1
    radius, height, wall = _u(rng, n, 0.3, 0.45), _u(rng, n, 0.7, 1.1), _u(rng, n, 0.025, 0.045)
    taper = _u(rng, n, 0.8, 1.0)  # top radius / bottom radius
    prims = [
        _Primitive(
            "frustum", body, {"r0": radius, "r1": radius / taper, "h": height}, _at(0, height / 2, 0, n)
        ),
        _Primitive(
            "frustum",
            body,
            {"r0": radius - wall, "r1": radius / taper - wall, "h": height - wall},
            _at(0, (height + wall) / 2, 0, n),
            inward=True,
        ),
        _Primitive("disc", body, {"r": radius}, _at(0, 0, 0, n), flip=True),
        _Primitive("disc", body, {"r": radius - wall}, _at(0, wall, 0, n)),
        _Primitive("disc", body, {"r": radius / taper, "r_in": radius / taper - wall}, _at(0, height, 0, n)),
    ]
    big, small = height * _u(rng, n, 0.22, 0.32), _u(rng, n, 0.025, 0.045)
    side = (radius + radius / taper) / 2
    centre = _at(side - small, height * _u(rng, n, 0.45, 0.6), 0, n)
    params = {"R": big, "r": small, "phi0": -math.pi / 2, "phi1": math.pi / 2}
    prims.append(_Primitive("torus", handle, params, centre))
    return prims


def _bottle(rng: np.random.Generator, n: int) -> list[_Primitive]:
    body, neck, cap = 0, 1, 2
    body_r, body_h = _u(rng, n, 0.12, 0.2), _u(rng, n, 0.35, 0.65)
    square = rng.random(n) < 0.25
    depth = body_r * _u(rng, n, 0.6, 1.0)
    shoulder_h, neck_r, neck_h = _u(rng, n, 0.06, 0.15), _u(rng, n, 0.035, 0.06), _u(rng, n, 0.08, 0.2)
    cap_h = _u(rng, n, 0.03, 0.06)
    prims = [
        _Primitive("tube", body, {"r": body_r, "h": body_h}, _at(0, body_h / 2, 0, n), present=~square),
        _Primitive("disc", body, {"r": body_r}, _at(0, 0, 0, n), flip=True, present=~square),
        _box(body, _at(2 * body_r, body_h, 2 * depth, n), _at(0, body_h / 2, 0, n), present=square),
        _Primitive(
            "frustum",
            body,
            {"r0": body_r, "r1": neck_r, "h": shoulder_h},
            _at(0, body_h + shoulder_h / 2, 0, n),
        ),
        _Primitive("tube", neck, {"r": neck_r, "h": neck_h}, _at(0, body_h + shoulder_h + neck_h / 2, 0, n)),
    ]
    prims += _capped_tube(cap, neck_r * 1.15, cap_h, _at(0, body_h + shoulder_h + neck_h + cap_h / 2, 0, n))
    return prims


def _airplane(rng: np.random.Generator, n: int) -> list[_Primitive]:
    fuselage, wing, tail, engine = 0, 1, 2, 3
    length, radius = _u(rng, n, 1.0, 1.5), _u(rng, n, 0.05, 0.09)
    nose, cone = _u(rng, n, 0.1, 0.25), _u(rng, n, 0.2, 0.35)
    along_x = _rotation("z", np.full(n, -math.pi / 2))  # local +y → +x (nose forward)
    prims = [
        _Primitive("tube", fuselage, {"r": radius, "h": length}, _at(0, 0, 0, n), rotation=along_x),
        _Primitive(
            "frustum",
            fuselage,
            {"r0": radius, "r1": radius * 0.15, "h": nose},
            _at(length / 2 + nose / 2, 0, 0, n),
            rotation=along_x,
        ),
        _Primitive(
            "frustum",
            fuselage,
            {"r0": radius * 0.3, "r1": radius, "h": cone},
            _at(-length / 2 - cone / 2, 0, 0, n),
            rotation=along_x,
        ),
    ]
    span, chord, sweep = length * _u(rng, n, 0.9, 1.4), _u(rng, n, 0.15, 0.3), _u(rng, n, 0.0, 0.5)
    wing_x, wing_y = length * _u(rng, n, -0.05, 0.15), radius * _u(rng, n, -0.6, 0.3)
    engines = rng.random(n) < 0.5
    engine_r, engine_l = _u(rng, n, 0.03, 0.05), _u(rng, n, 0.15, 0.25)
    for side in (-1, 1):
        half = span / 2
        centre = _at(wing_x - half / 2 * np.sin(sweep), wing_y, side * half / 2 * np.cos(sweep), n)
        prims.append(_box(wing, _at(chord, 0.02, half, n), centre, rotation=_rotation("y", side * -sweep)))
        z = side * half * 0.45
        at = _at(wing_x - np.abs(z) * np.tan(sweep), wing_y - 0.01 - engine_r, z, n)
        prims.append(
            _Primitive("tube", engine, {"r": engine_r, "h": engine_l}, at, rotation=along_x, present=engines)
        )
    stab_span, stab_chord = length * _u(rng, n, 0.3, 0.45), _u(rng, n, 0.08, 0.15)
    tail_x = -length / 2 - cone * 0.5
    prims.append(_box(tail, _at(stab_chord, 0.015, stab_span, n), _at(tail_x, 0, 0, n)))
    fin_h, fin_c = _u(rng, n, 0.15, 0.25), _u(rng, n, 0.1, 0.2)
    prims.append(_box(tail, _at(fin_c, fin_h, 0.015, n), _at(tail_x, fin_h / 2 + radius * 0.3, 0, n)))
    return prims


def _shelf(rng: np.random.Generator, n: int) -> list[_Primitive]:
    frame, board = 0, 1
    width, height = _u(rng, n, 0.6, 1.2), _u(rng, n, 0.8, 1.8)
    depth, thick = _u(rng, n, 0.25, 0.4), _u(rng, n, 0.02, 0.04)
    backed = rng.random(n) < 0.6
    boards = rng.integers(1, 5, n)
    prims = []
    for sx in (-1, 1):
        prims.append(
            _box(frame, _at(thick, height, depth, n), _at(sx * (width - thick) / 2, height / 2, 0, n))
        )
    for y in (thick / 2, height - thick / 2):
        prims.append(_box(frame, _at(width, thick, depth, n), _at(0, y, 0, n)))
    prims.append(
        _box(frame, _at(width, height, thick, n), _at(0, height / 2, -(depth - thick) / 2, n), present=backed)
    )
    for k in range(4):
        y = height * (k + 1) / (boards + 1)
        prims.append(
            _box(board, _at(width - 2 * thick, thick, depth * 0.95, n), _at(0, y, 0, n), present=k < boards)
        )
    return prims


_BUILDERS: dict[str, Callable[[np.random.Generator, int], list[_Primitive]]] = {
    "table": _table,
    "chair": _chair,
    "stool": _stool,
    "lamp": _lamp,
    "mug": _mug,
    "bottle": _bottle,
    "airplane": _airplane,
    "shelf": _shelf,
}


def _take(prims: list[_Primitive], rows: np.ndarray) -> list[_Primitive]:
    """The primitives of shapes ``rows`` only."""
    out = []
    for prim in prims:
        n = len(prim.shift)
        params = {
            key: np.broadcast_to(value, (n, *np.shape(value)[1:]))[rows] for key, value in prim.params.items()
        }
        out.append(
            _Primitive(
                prim.kind,
                prim.part,
                params,
                prim.shift[rows],
                None if prim.rotation is None else prim.rotation[rows],
                None if prim.present is None else prim.present[rows],
                prim.inward,
                prim.flip,
            )
        )
    return out


def _sample_surface(
    prims: list[_Primitive], count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` points per shape uniform over the area of all primitives: xyz, normals ``[n, count, 3]``,
    local part labels ``[n, count]``."""
    n = len(prims[0].shift)
    areas = np.stack([prim.area() for prim in prims], axis=1)
    cdf = np.cumsum(areas, axis=1) / areas.sum(axis=1, keepdims=True)
    cdf[:, -1] = 1.0
    offsets = np.arange(n, dtype=np.float64)[:, None]
    u = rng.random((n, count))
    choice = np.searchsorted((cdf + offsets).ravel(), (u + offsets).ravel(), side="right")
    choice = np.minimum(choice - np.repeat(np.arange(n) * len(prims), count), len(prims) - 1)
    rows = np.repeat(np.arange(n), count)
    xyz, normals = np.empty((n * count, 3)), np.empty((n * count, 3))
    parts = np.empty(n * count, dtype=np.int64)
    order = np.argsort(choice, kind="stable")
    bounds = np.searchsorted(choice[order], np.arange(len(prims) + 1))
    for k, prim in enumerate(prims):
        chosen = order[bounds[k] : bounds[k + 1]]
        if len(chosen):
            xyz[chosen], normals[chosen] = prim.sample(rows[chosen], rng)
            parts[chosen] = prim.part
    return xyz.reshape(n, count, 3), normals.reshape(n, count, 3), parts.reshape(n, count)


def normalize_unit_sphere(xyz: np.ndarray) -> np.ndarray:
    """``xyz`` ``[..., P, 3]`` centred on each cloud's centroid and scaled so its farthest point has norm 1."""
    centred = xyz - xyz.mean(axis=-2, keepdims=True)
    radius = np.linalg.norm(centred, axis=-1).max(axis=-1)[..., None, None]
    return centred / np.where(radius > 0, radius, 1.0)


def sample_clean(
    family: str, count: int, points: int, rng_shapes: np.random.Generator, rng_surface: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` new shapes of ``family`` (parameters from ``rng_shapes``), ``points`` uniform surface
    samples each (from ``rng_surface``), unit-sphere normalised: xyz, normals ``[count, points, 3]``,
    local part labels ``[count, points]`` (index into ``FAMILY_PARTS[family]``)."""
    check_families([family])
    prims = _BUILDERS[family](rng_shapes, count)
    xyz, normals, parts = _sample_surface(prims, points, rng_surface)
    return normalize_unit_sphere(xyz), normals, parts


# -- the scan --------------------------------------------------------------------------------------
def _view_frames(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera positions ``[n, 3]`` and frames ``[n, 3, 3]`` (rows: right, up, forward) looking at the origin."""
    azimuth = rng.uniform(0, 2 * math.pi, n)
    elevation = np.radians(rng.uniform(*VIEW_ELEVATION, n))
    distance = rng.uniform(*VIEW_DISTANCE, n)
    camera = distance[:, None] * np.stack(
        [np.cos(elevation) * np.cos(azimuth), np.sin(elevation), np.cos(elevation) * np.sin(azimuth)], -1
    )
    forward = -camera / distance[:, None]
    right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    up = np.cross(right, forward)
    return camera, np.stack([right, up, forward], axis=1)


def _project(xyz: np.ndarray, camera: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole image coordinates ``[n, M, 2]`` and depths ``[n, M]`` of ``xyz`` [n, M, 3]."""
    local = np.einsum("nij,nmj->nmi", frame, xyz - camera[:, None])
    depth = local[..., 2]
    return local[..., :2] / depth[..., None], depth


def _pick(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``counts[i]`` columns of largest finite ``keys`` (cycling, so repeating columns, when
    fewer are finite); ``[n, max(counts)]`` indices and whether each slot is used. Rows with no finite
    key must have count 0."""
    order = np.argsort(-keys, axis=1, kind="stable")
    available = np.isfinite(keys).sum(axis=1)
    width = int(counts.max(initial=0))
    slots = np.arange(width)[None, :]
    index = (
        np.take_along_axis(order, slots % np.maximum(available, 1)[:, None], axis=1)
        if width
        else order[:, :0]
    )
    return index, slots < counts[:, None]


def scan(
    xyz: np.ndarray,
    rng: np.random.Generator,
    *,
    normals: np.ndarray | None = None,
    part_labels: np.ndarray | None = None,
    points: int | None = None,
    cull: bool = True,
    occluder: bool = True,
    background: bool = True,
    density: bool = True,
    jitter: bool = True,
    rotate: bool = True,
    return_info: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """What a depth sensor sees of each object of ``xyz`` ``[n, M, 3]`` (dense clean samples, unit-sphere
    normalised, y-up): ``(xyz [n, points, 3] float32, part_labels [n, points] int64)``, background points
    labelled ``IGNORE_INDEX`` (object points keep ``part_labels``, or 0 when none are given).

    In order, each step switchable (for ablations):

    1. a viewpoint: azimuth uniform, elevation ``VIEW_ELEVATION``°, distance ``VIEW_DISTANCE``, looking at
       the centre;
    2. ``cull``: back faces go (``normals`` · (camera − point) ≤ 0). Then self-occlusion: a z-buffer of
       ``round(sqrt(M / 4))``² pixels over the object's image keeps points within ``ZBUFFER_TOLERANCE``
       (plus, with ``normals``, the depth their own tilted surface spans across a pixel) of their pixel's
       nearest depth, and drops points more than 0.25 behind the nearest depth of their 3×3 neighbourhood
       (a far surface seen through a pixel no near point fell in). Without ``normals`` only the z-buffer
       hides the far side;
    3. ``occluder``: a rectangle (sides ``OCCLUDER_SIZE`` × the object's image extent, centre uniform on the
       central 80 % of it) in front of the object hides every point behind it and shows its own face;
       not placed where it would hide more than 75 % of the visible object;
    4. ``background``: ``BACKGROUND_FRACTION`` of the output points are background: the occluder's face
       (``OCCLUDER_SHARE`` of them, when there is an occluder) and a floor disc under the object (radius
       ``FLOOR_RADIUS`` × the object's), itself hidden where the object covers it;
    5. ``density``: the kept points are drawn without replacement with weight ``exp(-g·s)``, ``s`` in [0, 1]
       the image position along a random direction, ``g`` from ``DENSITY_GRADIENT`` (uniform weights when
       off). Too few visible points (never at ``DENSE_FACTOR`` = 8 in our measurement) repeat some;
    6. ``jitter``: Gaussian noise of ``JITTER_SIGMA`` plus ``DEPTH_SIGMA`` along the line of sight;
    7. ``rotate``: a random heading (rotation about the up axis), since a scan's object frame is unknown;
    8. the cloud (background included, as ScanObjectNN's) is centred and scaled into the unit sphere, its
       points shuffled.

    ``points`` defaults to ``M // DENSE_FACTOR``. With ``return_info`` a third value holds per-object
    ``visible_fraction`` (after culling and z-buffer), ``occluded_fraction`` (of those, hidden by the
    occluder), ``background`` (count) and ``repeated`` (object points drawn twice).
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"`xyz` must be [n, M, 3] (dense clean samples), got shape {xyz.shape}.")
    if not np.isfinite(xyz).all():
        bad = np.argwhere(~np.isfinite(xyz).all(-1))[0]
        raise ValueError(
            f"`xyz` has a non-finite coordinate at object {bad[0]}, point {bad[1]}; drop or repair it."
        )
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"`rng` must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}."
        )
    n, m = xyz.shape[:2]
    points = _check_int(
        m // DENSE_FACTOR if points is None else points, "points", 1, "ask for at least one point"
    )
    if normals is not None:
        normals = np.asarray(normals, dtype=np.float64)
        if normals.shape != xyz.shape:
            raise ValueError(f"`normals` must match `xyz` {xyz.shape}, got {normals.shape}.")
    if part_labels is None:
        part_labels = np.zeros((n, m), dtype=np.int64)
    part_labels = np.asarray(part_labels)
    if part_labels.shape != (n, m):
        raise ValueError(f"`part_labels` must be [n, M] = {(n, m)}, got {part_labels.shape}.")

    camera, frame = _view_frames(rng, n)
    image, depth = _project(xyz, camera, frame)
    rows = np.arange(n)[:, None]
    # 2. back faces, then the z-buffer
    front = np.ones((n, m), dtype=bool)
    if cull and normals is not None:
        front = np.einsum("nmi,nmi->nm", normals, camera[:, None] - xyz) > 0
    low = np.where(front[..., None], image, np.inf).min(axis=1)
    high = np.where(front[..., None], image, -np.inf).max(axis=1)
    span = np.maximum(high - low, 1e-9)
    grid = max(8, round(math.sqrt(m / 4)))

    def pixel_of(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cell = np.floor((coords - low[:, None]) / span[:, None] * grid).astype(np.int64)
        inside = ((cell >= 0) & (cell < grid)).all(-1)
        cell = np.clip(cell, 0, grid - 1)
        return rows * grid * grid + cell[..., 0] * grid + cell[..., 1], inside

    key, _ = pixel_of(image)
    nearest = np.full(n * grid * grid, np.inf)
    np.minimum.at(nearest, key[front], depth[front])
    tolerance = np.full((n, m), ZBUFFER_TOLERANCE)
    if normals is not None:
        # a tilted surface spans more depth within one pixel: allow for it, so that only other surfaces hide
        sight = (xyz - camera[:, None]) / depth[..., None]
        cosine = np.abs(np.einsum("nmi,nmi->nm", normals, sight)) / np.linalg.norm(sight, axis=-1)
        slope = np.minimum(np.sqrt(np.clip(1 - cosine**2, 0, 1)) / np.maximum(cosine, 1e-6), _MAX_SLOPE)
        pixel = (span / grid).max(axis=1)[:, None] * depth
        tolerance = tolerance + pixel * slope
    image_depth = np.pad(nearest.reshape(n, grid, grid), ((0, 0), (1, 1), (1, 1)), constant_values=np.inf)
    splat = np.min([image_depth[:, i : i + grid, j : j + grid] for i in range(3) for j in range(3)], axis=0)
    visible = front & (depth <= nearest[key] + tolerance) & (depth <= splat.reshape(-1)[key] + _SPLAT_MARGIN)

    # 3. the occluder
    shown_low = np.where(visible[..., None], image, np.inf).min(axis=1)
    shown_high = np.where(visible[..., None], image, -np.inf).max(axis=1)
    extent = shown_high - shown_low
    centre = shown_low + extent * rng.uniform(0.1, 0.9, (n, 2))
    half = extent * rng.uniform(*OCCLUDER_SIZE, (n, 2)) / 2
    occluder_depth = np.where(visible, depth, np.inf).min(axis=1) - rng.uniform(0.1, 0.3, n)
    hidden = (np.abs(image - centre[:, None]) < half[:, None]).all(-1)
    kept = visible & ~hidden
    placed = np.full(n, bool(occluder)) & (kept.sum(1) >= _MIN_UNOCCLUDED * visible.sum(1))
    object_keep = np.where(placed[:, None], kept, visible)

    # 4. background candidates: the floor disc (hidden by the object where it covers it) and the occluder
    fraction = rng.uniform(*BACKGROUND_FRACTION, n) if background else np.zeros(n)
    share = np.where(placed, rng.uniform(*OCCLUDER_SHARE, n), 0.0)
    n_background = np.round(points * fraction).astype(np.int64)
    n_occluder = np.round(n_background * share).astype(np.int64)
    floor_count = max(points, 64)
    foot = xyz.mean(axis=1)
    radius = np.linalg.norm(xyz - foot[:, None], axis=-1).max(axis=1) * rng.uniform(*FLOOR_RADIUS, n)
    angle = rng.uniform(0, 2 * math.pi, (n, floor_count))
    r = radius[:, None] * np.sqrt(rng.random((n, floor_count)))
    floor_y = xyz[..., 1].min(axis=1) - 0.005
    floor = np.stack(
        [
            foot[:, None, 0] + r * np.cos(angle),
            np.broadcast_to(floor_y[:, None], r.shape),
            foot[:, None, 2] + r * np.sin(angle),
        ],
        -1,
    )
    floor_image, floor_depth = _project(floor, camera, frame)
    floor_key, floor_inside = pixel_of(floor_image)
    floor_keep = ~(floor_inside & (nearest[floor_key] < floor_depth - ZBUFFER_TOLERANCE))
    behind = floor_depth > occluder_depth[:, None]
    floor_keep &= ~(
        placed[:, None] & behind & (np.abs(floor_image - centre[:, None]) < half[:, None]).all(-1)
    )
    occluder_count = max(points // 2, 32)
    occluder_image = centre[:, None] + half[:, None] * rng.uniform(-1, 1, (n, occluder_count, 2))
    rays = np.concatenate([occluder_image, np.ones((n, occluder_count, 1))], -1)
    occluder_xyz = camera[:, None] + occluder_depth[:, None, None] * np.einsum("nji,nmj->nmi", frame, rays)
    occluder_keep = np.broadcast_to(placed[:, None], (n, occluder_count))
    # a floor with nothing visible gives its points to the object
    n_floor = np.where(floor_keep.any(1), n_background - n_occluder, 0)
    n_object = points - n_floor - n_occluder

    # 5. density-weighted draws (Gumbel top-k: without replacement, probability ∝ weight)
    direction = rng.uniform(0, 2 * math.pi, n)
    gradient = rng.uniform(*DENSITY_GRADIENT, n) if density else np.zeros(n)
    axis = np.stack([np.cos(direction), np.sin(direction)], -1)

    def keys(coords: np.ndarray, keep: np.ndarray) -> np.ndarray:
        along = np.einsum("nmi,ni->nm", coords, axis)
        lo = np.where(visible, np.einsum("nmi,ni->nm", image, axis), np.inf).min(1)[:, None]
        hi = np.where(visible, np.einsum("nmi,ni->nm", image, axis), -np.inf).max(1)[:, None]
        s = np.clip((along - lo) / np.maximum(hi - lo, 1e-9), 0, 1)
        gumbel = -np.log(-np.log(rng.random(keep.shape) * (1 - 2e-12) + 1e-12))
        return np.where(keep, -gradient[:, None] * s + gumbel, -np.inf)

    object_index, object_used = _pick(keys(image, object_keep), n_object)
    floor_index, floor_used = _pick(keys(floor_image, floor_keep), n_floor)
    occluder_index, occluder_used = _pick(keys(occluder_image, occluder_keep), n_occluder)
    pools = [
        (
            np.take_along_axis(xyz, object_index[..., None], 1),
            np.take_along_axis(part_labels, object_index, 1),
            object_used,
        ),
        (np.take_along_axis(floor, floor_index[..., None], 1), None, floor_used),
        (np.take_along_axis(occluder_xyz, occluder_index[..., None], 1), None, occluder_used),
    ]
    cloud = np.concatenate([pool[0] for pool in pools], 1)
    labels = np.concatenate(
        [
            pool[1] if pool[1] is not None else np.full(pool[2].shape, IGNORE_INDEX, dtype=np.int64)
            for pool in pools
        ],
        1,
    )
    used = np.concatenate([pool[2] for pool in pools], 1)
    order = np.argsort(~used, axis=1, kind="stable")[:, :points]  # the used slots, object first
    cloud = np.take_along_axis(cloud, order[..., None], 1)
    labels = np.take_along_axis(labels, order, 1)

    # 6. jitter: isotropic plus range noise along the line of sight
    if jitter:
        sight = cloud - camera[:, None]
        sight /= np.linalg.norm(sight, axis=-1, keepdims=True)
        cloud = cloud + JITTER_SIGMA * rng.standard_normal(cloud.shape)
        cloud = cloud + DEPTH_SIGMA * rng.standard_normal(cloud.shape[:2])[..., None] * sight
    # 7. heading
    if rotate:
        cloud = np.einsum("nij,nmj->nmi", _rotation("y", rng.uniform(0, 2 * math.pi, n)), cloud)
    # 8. shuffle, normalise
    shuffle = np.argsort(rng.random((n, points)), axis=1)
    cloud = normalize_unit_sphere(np.take_along_axis(cloud, shuffle[..., None], 1)).astype(np.float32)
    labels = np.take_along_axis(labels, shuffle, 1).astype(np.int64)
    if not return_info:
        return cloud, labels
    before = np.maximum(visible.sum(1), 1)
    info = {
        "visible_fraction": visible.sum(1) / m,
        "occluded_fraction": np.where(placed, (visible & hidden).sum(1) / before, 0.0),
        "background": n_floor + n_occluder,
        "repeated": np.maximum(n_object - object_keep.sum(1), 0),
    }
    return cloud, labels, info


# -- the generator ---------------------------------------------------------------------------------
def generate_shapes(
    count: int,
    seed: int,
    domain: str = "clean",
    points: int = 512,
    families: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` shapes: ``(xyz float32 [count, points, 3], labels int64 [count], part_labels int64
    [count, points])``; label ``k`` is ``families[k]`` (default ``SHAPE_FAMILIES``), part label ``j`` is
    ``part_names(families)[j]``, ``IGNORE_INDEX`` on a scan's background.

    Families take equal shares (``count mod F`` families get one more), in a seeded order. Deterministic in
    ``seed``: the shapes (families, sizes, pieces) come from ``default_rng([seed, 0])``, surface samples
    from ``[seed, 1]``, the scans from ``[seed, 2]``, so both domains of a seed show the same shapes.
    """
    count = _check_int(count, "count", 1, "ask for at least one shape")
    points = _check_int(points, "points", 1, "ask for at least one point per shape")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0, got {seed!r}.")
    if domain not in DOMAINS:
        raise ValueError(f"`domain` must be one of {list(DOMAINS)}, got {domain!r}.")
    families = check_families(families)
    rng_shapes = np.random.default_rng([int(seed), 0])
    rng_surface = np.random.default_rng([int(seed), 1])
    rng_scan = np.random.default_rng([int(seed), 2])
    labels = rng_shapes.permutation(np.arange(count) % len(families)).astype(np.int64)
    xyz = np.empty((count, points, 3), dtype=np.float32)
    parts = np.empty((count, points), dtype=np.int64)
    offsets = np.cumsum([0, *(len(FAMILY_PARTS[family]) for family in families)])
    dense = points * DENSE_FACTOR if domain == "scan" else points
    for code, family in enumerate(families):
        members = np.flatnonzero(labels == code)
        if not len(members):
            continue
        prims = _BUILDERS[family](rng_shapes, len(members))
        for start in range(0, len(members), _CHUNK):
            rows = np.arange(start, min(start + _CHUNK, len(members)))
            cloud, normals, local = _sample_surface(_take(prims, rows), dense, rng_surface)
            cloud = normalize_unit_sphere(cloud)
            local = local + offsets[code]
            if domain == "scan":
                cloud, local = scan(cloud, rng_scan, normals=normals, part_labels=local, points=points)
            xyz[members[rows]] = cloud
            parts[members[rows]] = local
    return xyz, labels, parts
