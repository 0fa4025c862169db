"""A procedural body in SMPL format: a STAND-IN for SMPL, not SMPL and not a fitted human shape.

SMPL is licensed and cannot ship with the code, yet every code path (data preparation, rendering,
the ISA positional encodings, the tests) needs a body model. This module builds, deterministically
(bit-identical on a given platform) and in about a second, a simple articulated human with exactly
SMPL's arrays, keys and shapes, so `smplx.SMPL(data_struct=...)` and :class:`isa4d.body.BodyModel`
run it unchanged:

* the SMPL skeleton (24 joints, SMPL order and kinematic tree) in a T-pose with SMPL-like rest joint
  positions of a 1.72 m adult; y up, metres, the body faces +z (toes and belly point +z) and its
  left side is +x; the pelvis joint is at (0, -0.22, 0.02) as in SMPL's template, the soles at
  y = -1.20 and the crown at y = +0.52;
* a closed, watertight, single-component surface: the zero level set of a smooth union of
  capsules and ellipsoids around the bones, extracted with marching cubes (outward normals,
  counter-clockwise faces seen from outside, positive volume);
* local linear-blend-skinning weights: each vertex is skinned to its 1-3 nearest body parts, with
  exact zeros elsewhere, so rotating a joint moves only the vertices of that joint and its children;
* a joint regressor with `J_regressor @ v_template == rest joints`, made of affine weights over a ring
  of vertices around each joint, so joints follow the shape blend shapes;
* ten shape blend shapes: 0 height, 1 girth, 2 limb length, 3 shoulder breadth, 4 belly; 5-9 are zero;
* zero pose correctives (`posedirs`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from skimage.measure import marching_cubes

from isa4d.body.skeleton import JOINT_INDEX, JOINT_NAMES, NUM_JOINTS, PARENTS
from isa4d.body.storage import canonical_body_arrays, save_body_npz

NUM_BETAS = 10
NUM_POSE_BASIS = 9 * (NUM_JOINTS - 1)

GRID_SPACING = 0.017  # marching-cubes voxel size (m); sets the vertex count (7770)
LIMB_BLEND = 0.025  # smooth-union radius (m): how far a limb part fillets into the parts before it
TORSO_BLEND = 0.06  # the same for the torso parts, which merge into one smooth trunk
SKIN_FALLOFF = 0.03  # a part this much further away (m) than a vertex's nearest part gets no weight
MAX_INFLUENCES = 3  # joints per vertex at most
REGRESSOR_SLAB = 1.5 * GRID_SPACING  # half-thickness (m) of the slab of vertices regressing a joint
REGRESSOR_SECTORS = 16  # angular sectors of that slab, one vertex per sector and side

# Rest joints of the left half and the midline (x >= 0); the right side mirrors x.
_LEFT_AND_CENTRE_JOINTS: dict[str, tuple[float, float, float]] = {
    "pelvis": (0.0, -0.22, 0.02),
    "left_hip": (0.07, -0.31, 0.015),
    "spine1": (0.0, -0.105, 0.0),
    "left_knee": (0.105, -0.69, 0.01),
    "spine2": (0.0, 0.03, 0.015),
    "left_ankle": (0.09, -1.11, -0.03),
    "spine3": (0.0, 0.09, 0.025),
    "left_foot": (0.11, -1.165, 0.095),
    "neck": (0.0, 0.29, -0.01),
    "left_collar": (0.075, 0.21, -0.005),
    "head": (0.0, 0.37, 0.04),
    "left_shoulder": (0.175, 0.235, -0.015),
    "left_elbow": (0.43, 0.22, -0.03),
    "left_wrist": (0.68, 0.225, -0.03),
    "left_hand": (0.765, 0.215, -0.035),
}
# End points of the bones of the leaf joints (the bone of any other joint ends at its first child).
_LEAF_ENDS: dict[str, tuple[float, float, float]] = {
    "head": (0.0, 0.52, 0.03),
    "left_foot": (0.12, -1.165, 0.175),
    "left_hand": (0.86, 0.21, -0.035),
}


@dataclass(frozen=True)
class _Capsule:
    """A capsule whose radius varies linearly from `radius_a` at `a` to `radius_b` at `b`."""

    joint: str
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    radius_a: float
    radius_b: float
    blend: float = LIMB_BLEND

    def sdf(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (approximate for tapered capsules) of `points` (N, 3) -> (N,)."""
        a, b = np.asarray(self.a), np.asarray(self.b)
        t = _segment_parameter(points, a, b)
        radius = self.radius_a + t * (self.radius_b - self.radius_a)
        return np.linalg.norm(points - (a + t[:, None] * (b - a)), axis=-1) - radius


@dataclass(frozen=True)
class _Ellipsoid:
    """An axis-aligned ellipsoid."""

    joint: str
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    blend: float = LIMB_BLEND

    def sdf(self, points: np.ndarray) -> np.ndarray:
        """Approximate signed distance (exact on the surface, Quilez's bound) of `points` (N, 3) -> (N,)."""
        radii = np.asarray(self.radii)
        local = points - np.asarray(self.centre)
        k0 = np.linalg.norm(local / radii, axis=-1)
        k1 = np.maximum(np.linalg.norm(local / radii**2, axis=-1), 1e-12)
        return k0 * (k0 - 1.0) / k1


_Primitive = _Capsule | _Ellipsoid

# Body parts of the left half and the midline; each belongs to the joint whose rotation moves it.
_LEFT_AND_CENTRE_PARTS: tuple[_Primitive, ...] = (
    _Ellipsoid("pelvis", (0.0, -0.23, 0.0), (0.16, 0.12, 0.105), TORSO_BLEND),
    _Ellipsoid("spine1", (0.0, -0.09, 0.01), (0.145, 0.15, 0.1), TORSO_BLEND),
    _Ellipsoid("spine2", (0.0, 0.05, 0.02), (0.155, 0.15, 0.105), TORSO_BLEND),
    _Ellipsoid("spine3", (0.0, 0.17, 0.0), (0.165, 0.12, 0.1), TORSO_BLEND),
    _Capsule("neck", (0.0, 0.25, -0.01), (0.0, 0.37, 0.01), 0.052, 0.048),
    _Ellipsoid("head", (0.0, 0.425, 0.03), (0.078, 0.095, 0.092)),
    _Capsule("left_collar", (0.06, 0.225, -0.01), (0.175, 0.235, -0.015), 0.055, 0.052),
    _Capsule("left_shoulder", (0.175, 0.235, -0.015), (0.43, 0.22, -0.03), 0.05, 0.04),
    _Capsule("left_elbow", (0.43, 0.22, -0.03), (0.68, 0.225, -0.03), 0.039, 0.03),
    _Ellipsoid("left_wrist", (0.72, 0.22, -0.032), (0.06, 0.025, 0.045)),
    _Ellipsoid("left_hand", (0.8, 0.214, -0.035), (0.065, 0.021, 0.043)),
    _Capsule("left_hip", (0.07, -0.31, 0.015), (0.105, -0.69, 0.01), 0.08, 0.058),
    _Capsule("left_knee", (0.105, -0.69, 0.01), (0.09, -1.11, -0.03), 0.055, 0.04),
    _Capsule("left_ankle", (0.09, -1.16, -0.05), (0.11, -1.16, 0.095), 0.035, 0.034),
    _Capsule("left_foot", (0.11, -1.16, 0.095), (0.12, -1.165, 0.17), 0.034, 0.028),
)


def _segment_parameter(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Clamped parameter t in [0, 1] of the point of segment a-b closest to each of `points` (N, 3)."""
    direction = b - a
    return np.clip((points - a) @ direction / (direction @ direction), 0.0, 1.0)


def _mirror_name(name: str) -> str:
    return name.replace("left_", "right_")


def _mirror_point(point: tuple[float, float, float]) -> tuple[float, float, float]:
    return (-point[0], point[1], point[2])


def _mirrored_part(part: _Primitive) -> _Primitive:
    if isinstance(part, _Capsule):
        return _Capsule(
            _mirror_name(part.joint),
            _mirror_point(part.a),
            _mirror_point(part.b),
            part.radius_a,
            part.radius_b,
            part.blend,
        )
    return _Ellipsoid(_mirror_name(part.joint), _mirror_point(part.centre), part.radii, part.blend)


def _with_right_side(items: dict, mirror: Callable) -> dict:
    """Add the right-side mirror image of every `left_*` entry of `items`."""
    right = {_mirror_name(name): mirror(value) for name, value in items.items() if name.startswith("left_")}
    return items | right


def rest_joints() -> np.ndarray:
    """Rest-pose (T-pose) joint positions of the procedural body, SMPL order -> (24, 3) float64."""
    joints = _with_right_side(_LEFT_AND_CENTRE_JOINTS, _mirror_point)
    return np.array([joints[name] for name in sorted(joints, key=JOINT_INDEX.__getitem__)])


def _bone_ends(joints: np.ndarray) -> np.ndarray:
    """End point of each joint's bone: its first child, or a fixed tip for leaves -> (24, 3)."""
    leaf_ends = _with_right_side(_LEAF_ENDS, _mirror_point)
    ends = np.empty_like(joints)
    for joint in range(NUM_JOINTS):
        children = [child for child, parent in enumerate(PARENTS) if parent == joint]
        ends[joint] = joints[children[0]] if children else leaf_ends[JOINT_NAMES[joint]]
    return ends


def _body_parts() -> tuple[_Primitive, ...]:
    mirrored = tuple(
        _mirrored_part(part) for part in _LEFT_AND_CENTRE_PARTS if part.joint.startswith("left_")
    )
    return _LEFT_AND_CENTRE_PARTS + mirrored


def _smooth_union(a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """Polynomial smooth minimum of two signed-distance fields (Quilez)."""
    h = np.clip(0.5 + 0.5 * (b - a) / radius, 0.0, 1.0)
    return b * (1.0 - h) + a * h - radius * h * (1.0 - h)


def _body_field(points: np.ndarray, parts: Sequence[_Primitive]) -> np.ndarray:
    """Signed distance-like field of the body at `points` (N, 3) -> (N,), negative inside."""
    return functools.reduce(
        lambda field, part: _smooth_union(field, part.sdf(points), part.blend),
        parts[1:],
        parts[0].sdf(points),
    )


def _part_bounds(parts: Sequence[_Primitive]) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounding box (lower, upper corners) of all body parts."""
    corners = []
    for part in parts:
        if isinstance(part, _Capsule):
            radius = max(part.radius_a, part.radius_b)
            corners += [np.minimum(part.a, part.b) - radius, np.maximum(part.a, part.b) + radius]
        else:
            corners += [np.subtract(part.centre, part.radii), np.add(part.centre, part.radii)]
    return np.min(corners, axis=0), np.max(corners, axis=0)


def _extract_surface(parts: Sequence[_Primitive]) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes surface of the body field.

    Returns:
        Vertices (V, 3) float64 (rounded to float32 precision) and faces (F, 3) int64 of a watertight,
        single-component mesh with outward normals.

    Raises:
        RuntimeError: if the surface is not a single closed component (a broken part layout).
    """
    lower, upper = _part_bounds(parts)
    lower, upper = lower - 3 * GRID_SPACING, upper + 3 * GRID_SPACING
    axes = [np.arange(low, high + GRID_SPACING, GRID_SPACING) for low, high in zip(lower, upper, strict=True)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    field = _body_field(grid.reshape(-1, 3), parts).reshape(grid.shape[:3])
    vertices, faces, _, _ = marching_cubes(field, level=0.0, spacing=(GRID_SPACING,) * 3)
    mesh = trimesh.Trimesh(vertices + lower, faces, process=True)
    if mesh.volume < 0:
        mesh.invert()
    if not mesh.is_watertight or len(mesh.split(only_watertight=False)) != 1:
        raise RuntimeError("the procedural body surface is not a single closed component")
    return mesh.vertices.astype(np.float32).astype(np.float64), mesh.faces.astype(np.int64)


def _part_distances(points: np.ndarray, parts: Sequence[_Primitive]) -> np.ndarray:
    """Signed distance of `points` (N, 3) to the body parts of each joint -> (N, 24)."""
    distances = np.full((len(points), NUM_JOINTS), np.inf)
    for part in parts:
        joint = JOINT_INDEX[part.joint]
        distances[:, joint] = np.minimum(distances[:, joint], part.sdf(points))
    return distances


def _skinning_weights(vertices: np.ndarray, parts: Sequence[_Primitive]) -> np.ndarray:
    """Local LBS weights (V, 24): the nearest part gets weight 1 before normalisation, the next two
    nearest get (1 - excess / SKIN_FALLOFF)^2 where `excess` is how much further away they are, and
    every other joint exactly 0. Rows sum to 1."""
    distances = _part_distances(vertices, parts)
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :MAX_INFLUENCES]
    nearest_distances = np.take_along_axis(distances, nearest, axis=1)
    excess = nearest_distances - nearest_distances[:, :1]
    raw = np.clip(1.0 - excess / SKIN_FALLOFF, 0.0, 1.0) ** 2
    weights = np.zeros_like(distances)
    np.put_along_axis(weights, nearest, raw / raw.sum(axis=1, keepdims=True), axis=1)
    return weights


def _joint_regressor(vertices: np.ndarray, joints: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """J_regressor (24, V) with `J_regressor @ vertices == joints` and rows summing to 1.

    Each joint is the least-norm affine combination of a ring of vertices around it: the vertices in
    a thin slab across its bone, split into REGRESSOR_SECTORS angular sectors about the bone and the
    two sides of the slab, keeping the nearest vertex of each cell (within twice the distance of the
    nearest one). The joint lies inside that ring, so the weights stay small and the joint follows
    the surface under the shape blend shapes.
    """
    regressor = np.zeros((NUM_JOINTS, len(vertices)))
    for joint, (position, end) in enumerate(zip(joints, ends, strict=True)):
        ring = _ring_around(vertices - position, end - position)
        constraints = np.vstack([(vertices[ring] - position).T, np.ones(len(ring))])
        regressor[joint, ring] = np.linalg.lstsq(constraints, np.array([0.0, 0.0, 0.0, 1.0]), rcond=None)[0]
    if not np.allclose(regressor @ vertices, joints, rtol=0.0, atol=1e-9):
        raise RuntimeError("the procedural joint regressor does not reproduce the rest joints")
    return regressor


def _ring_around(offsets: np.ndarray, bone: np.ndarray) -> np.ndarray:
    """Indices of the ring vertices (see :func:`_joint_regressor`) given vertex offsets (V, 3) from a
    joint and its bone vector (3,)."""
    axis = bone / np.linalg.norm(bone)
    side = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
    side /= np.linalg.norm(side)
    along = offsets @ axis
    in_slab = np.flatnonzero(np.abs(along) < REGRESSOR_SLAB)
    distance = np.linalg.norm(offsets[in_slab], axis=1)
    near = distance < 2.0 * distance.min()
    in_slab, distance = in_slab[near], distance[near]
    angle = np.arctan2(offsets[in_slab] @ np.cross(axis, side), offsets[in_slab] @ side)
    sector = np.floor((angle + np.pi) / (2.0 * np.pi) * REGRESSOR_SECTORS).astype(np.int64)
    cell = 2 * sector + (along[in_slab] > 0)
    order = np.argsort(distance, kind="stable")
    _, first = np.unique(cell[order], return_index=True)
    return np.sort(in_slab[order[first]])


def _radial_offsets(vertices: np.ndarray, joints: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Offset of each vertex from the closest point of each joint's bone segment -> (V, 24, 3)."""
    offsets = np.empty((len(vertices), NUM_JOINTS, 3))
    for joint, (start, end) in enumerate(zip(joints, ends, strict=True)):
        t = _segment_parameter(vertices, start, end)
        offsets[:, joint] = vertices - (start + t[:, None] * (end - start))
    return offsets


def _membership(weights: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Total skinning weight (V,) of the named joints."""
    return weights[:, [JOINT_INDEX[name] for name in names]].sum(axis=1)


def _limb_stretch(
    vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray, chain: Sequence[str]
) -> np.ndarray:
    """Displacement (V, 3) lengthening the straight limb `chain` (root first) by 1 in relative terms:
    each limb vertex moves along the limb axis by its distance along that axis from the root joint."""
    root, tip = joints[JOINT_INDEX[chain[0]]], joints[JOINT_INDEX[chain[-1]]]
    axis = (tip - root) / np.linalg.norm(tip - root)
    return ((vertices - root) @ axis * _membership(weights, chain))[:, None] * axis


def _shape_directions(
    vertices: np.ndarray, joints: np.ndarray, ends: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Shape blend shapes (V, 3, 10), per unit beta:

    0. height: y scaled by 3% about the pelvis joint (about +5 cm of stature);
    1. girth: every vertex moved 10% further from its bones (skinning-weighted): +20% volume;
    2. limb length: arms and legs 5% longer, from the shoulders and hips (+4 cm hip to ankle);
    3. shoulder breadth: collars and arms shifted 2 cm outwards;
    4. belly: the front of the abdomen pushed forwards by up to ~3 cm;
    5-9. zero (no effect).
    """
    directions = np.zeros((len(vertices), 3, NUM_BETAS))
    directions[:, 1, 0] = 0.03 * (vertices[:, 1] - joints[JOINT_INDEX["pelvis"], 1])
    directions[:, :, 1] = 0.1 * np.einsum("vj,vjc->vc", weights, _radial_offsets(vertices, joints, ends))
    for side in ("left", "right"):
        arm = [f"{side}_{name}" for name in ("shoulder", "elbow", "wrist", "hand")]
        leg = [f"{side}_{name}" for name in ("hip", "knee", "ankle", "foot")]
        directions[:, :, 2] += 0.05 * (
            _limb_stretch(vertices, joints, weights, arm) + _limb_stretch(vertices, joints, weights, leg)
        )
        outwards = np.sign(joints[JOINT_INDEX[arm[0]], 0])
        directions[:, 0, 3] += 0.02 * outwards * _membership(weights, [f"{side}_collar", *arm])
    front = np.clip(vertices[:, 2] - joints[JOINT_INDEX["spine1"], 2], 0.0, None) / 0.1
    directions[:, 2, 4] = (
        0.03 * front * (_membership(weights, ["spine1"]) + 0.5 * _membership(weights, ["spine2"]))
    )
    return directions


def generate_procedural_body() -> dict[str, np.ndarray]:
    """Generate the procedural SMPL-format body (deterministic, about a second; uncached).

    Returns:
        SMPL's arrays: `v_template (V, 3)`, `f (F, 3)` int64, `J_regressor (24, V)`,
        `kintree_table (2, 24)` int64 (root parent -1), `weights (V, 24)`, `shapedirs (V, 3, 10)`,
        `posedirs (V, 3, 207)` (zeros); float arrays are float32.
    """
    parts = _body_parts()
    joints = rest_joints()
    ends = _bone_ends(joints)
    vertices, faces = _extract_surface(parts)
    weights = _skinning_weights(vertices, parts)
    return canonical_body_arrays(
        {
            "v_template": vertices,
            "f": faces,
            "J_regressor": _joint_regressor(vertices, joints, ends),
            "kintree_table": np.stack([np.array(PARENTS), np.arange(NUM_JOINTS)]),
            "weights": weights,
            "shapedirs": _shape_directions(vertices, joints, ends, weights),
            "posedirs": np.zeros((len(vertices), 3, NUM_POSE_BASIS)),
        }
    )


@functools.lru_cache(maxsize=1)
def _cached_body() -> dict[str, np.ndarray]:
    data = generate_procedural_body()
    for array in data.values():
        array.flags.writeable = False
    return data


def procedural_body_data() -> dict[str, np.ndarray]:
    """The procedural body of :func:`generate_procedural_body`, generated once per process.

    Returns:
        A new dict of the cached, read-only arrays.
    """
    return dict(_cached_body())


def write_procedural_npz(path: str | Path) -> Path:
    """Write the procedural body to an SMPL-format `.npz` (loadable by :class:`isa4d.body.BodyModel`).

    Returns:
        The path written.
    """
    return save_body_npz(procedural_body_data(), path)
