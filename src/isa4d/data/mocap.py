"""Real motion capture for SMPL bodies: the DeepMimic clips that ship with pybullet, retargeted to SMPL.

Source: the 15 `humanoid3d_*.txt` clips of `pybullet_data/data/motions` (DeepMimic, Peng et al. 2018)
on the DeepMimic humanoid (`pybullet_data/humanoid/humanoid.urdf`, loaded at scale 0.25 so lengths are
metres). Its world is y up with the ground at y = 0; every link frame faces +x with its right side on
+z. Target: SMPL's 24-joint skeleton (y up, metres, rest T-pose facing +z, left side on +x) with the
rest joints of the procedural body by default.

Quaternions are XYZW (roma's order) everywhere below; the clip files store WXYZ. See docs/mocap.md
for the file layout, the joint map and the retargeting rules.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import roma
import torch

from isa4d.body.procedural import rest_joints
from isa4d.body.skeleton import JOINT_INDEX, JOINT_NAMES, NUM_JOINTS, PARENTS

# ---------------------------------------------------------------------------------------------------
# The DeepMimic humanoid
# ---------------------------------------------------------------------------------------------------

DEEPMIMIC_JOINTS: tuple[str, ...] = (
    "root",
    "chest",
    "neck",
    "right_hip",
    "right_knee",
    "right_ankle",
    "right_shoulder",
    "right_elbow",
    "left_hip",
    "left_knee",
    "left_ankle",
    "left_shoulder",
    "left_elbow",
)
"""The 13 moving joints in clip-file order; `root` is the free base (pelvis), the others are local."""
DEEPMIMIC_HINGES: tuple[str, ...] = ("right_knee", "right_elbow", "left_knee", "left_elbow")
"""1-DoF (revolute) joints; they turn about their link's +z axis (the character's right)."""
DEEPMIMIC_POINTS: tuple[str, ...] = (
    *DEEPMIMIC_JOINTS,
    "right_wrist",
    "left_wrist",
    "head_top",
    "right_toe",
    "left_toe",
)
"""Points of :func:`deepmimic_joint_positions`: the joints, the two fixed wrist joints and three end
sites (top of the head sphere; the front edge of each foot box at the sole)."""
DEEPMIMIC_PARENTS: tuple[int, ...] = (-1, 0, 1, 0, 3, 4, 1, 6, 0, 8, 9, 1, 11, 7, 12, 2, 5, 10)
DEEPMIMIC_URDF_SCALE = 0.25
"""pybullet loads `humanoid.urdf` with `globalScaling=0.25`; the clips' root positions are in metres."""

# The ankle links' collision box (URDF units): centre (0.18, -0.09, 0), size (0.708, 0.22, 0.36).
_FOOT_LOW = np.array([0.18, -0.09, 0.0]) - np.array([0.708, 0.22, 0.36]) / 2
_FOOT_HIGH = np.array([0.18, -0.09, 0.0]) + np.array([0.708, 0.22, 0.36]) / 2
_URDF_OFFSETS = np.array(
    [
        [0.0, 0.0, 0.0],  # root
        [0.0, 0.944604, 0.0],  # chest
        [0.0, 0.895576, 0.0],  # neck
        [0.0, 0.0, 0.339548],  # right_hip
        [0.0, -1.686184, 0.0],  # right_knee
        [0.0, -1.639480, 0.0],  # right_ankle
        [-0.0962, 0.974, 0.73244],  # right_shoulder
        [0.0, -1.099152, 0.0],  # right_elbow
        [0.0, 0.0, -0.339548],  # left_hip
        [0.0, -1.686184, 0.0],  # left_knee
        [0.0, -1.639480, 0.0],  # left_ankle
        [-0.0962, 0.974, -0.73244],  # left_shoulder
        [0.0, -1.099152, 0.0],  # left_elbow
        [0.0, -1.035788, 0.0],  # right_wrist
        [0.0, -1.035788, 0.0],  # left_wrist
        [0.0, 0.7 + 0.41, 0.0],  # head_top: neck sphere centre + radius
        [_FOOT_HIGH[0], _FOOT_LOW[1], 0.0],  # right_toe: front edge of the foot box, at the sole
        [_FOOT_HIGH[0], _FOOT_LOW[1], 0.0],  # left_toe
    ]
)
DEEPMIMIC_OFFSETS: np.ndarray = DEEPMIMIC_URDF_SCALE * _URDF_OFFSETS
"""(18, 3) offset of each point from its parent joint in the parent's link frame, metres."""
DEEPMIMIC_SOLE_CORNERS: np.ndarray = DEEPMIMIC_URDF_SCALE * np.array(
    [[x, _FOOT_LOW[1], z] for x in (_FOOT_LOW[0], _FOOT_HIGH[0]) for z in (_FOOT_LOW[2], _FOOT_HIGH[2])]
)
"""(4, 3) bottom corners of a foot box in its ankle's link frame, metres (the sole is 5 cm below it)."""

_DM = {name: index for index, name in enumerate(DEEPMIMIC_POINTS)}
_FILE_PREFIX = "humanoid3d_"
_NUM_COLUMNS = 44  # duration, root position (3), 9 quaternions (4 each), 4 hinge angles

# ---------------------------------------------------------------------------------------------------
# Retargeting constants
# ---------------------------------------------------------------------------------------------------

LIMB_MAP: dict[str, tuple[str, str]] = {
    f"{side}_{smpl}": (f"{side}_{source}", f"{side}_{end}")
    for side in ("left", "right")
    for smpl, source, end in (
        ("hip", "hip", "knee"),
        ("knee", "knee", "ankle"),
        ("ankle", "ankle", "toe"),
        ("shoulder", "shoulder", "elbow"),
        ("elbow", "elbow", "wrist"),
    )
}
"""SMPL limb joint -> (DeepMimic joint, end point of its bone). The SMPL joint's bone (to its first
child) is turned to point along that DeepMimic bone; the twist comes from the DeepMimic link frame."""
SPINE = ("spine1", "spine2", "spine3")
"""The DeepMimic chest rotation is split evenly (same axis, a third of the angle each) over these."""
NECK = ("neck", "head")
"""The DeepMimic neck rotation is split evenly over these."""
FOOT_JOINT_ABOVE_SOLE = 0.03
"""Height of SMPL's foot joints (the balls of the feet) above the soles in the rest pose, metres."""

_FACING_ALIGNMENT = (0.0, -math.sin(math.pi / 4), 0.0, math.cos(math.pi / 4))
"""Rotation by -90 deg about y: DeepMimic axes (forward +x, right +z) -> SMPL axes (forward +z, left +x)."""


def _tensor(array: np.ndarray | Sequence | torch.Tensor) -> torch.Tensor:
    return torch.tensor(np.asarray(array, dtype=np.float64))


def _rotate(quat: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """Rotate `vector` (..., 3) by unit quaternions `quat` (..., 4), broadcasting."""
    shape = torch.broadcast_shapes(quat.shape[:-1], vector.shape[:-1])
    return roma.quat_action(quat.expand(*shape, 4), vector.expand(*shape, 3), is_normalized=True)


def _compose(*quats: torch.Tensor) -> torch.Tensor:
    """Product q1 q2 ... of unit quaternions (broadcasting); applies the last one first."""
    return functools.reduce(roma.quat_product, quats)


def _relative(parent: torch.Tensor, child: torch.Tensor) -> torch.Tensor:
    """Local rotation `parent^-1 child` of unit quaternions (..., 4)."""
    return roma.quat_product(roma.quat_conjugation(parent), child)


def _power(quat: torch.Tensor, fraction: torch.Tensor | float) -> torch.Tensor:
    """The rotation `fraction` of the way along the shortest arc from identity to `quat` (..., 4)."""
    return roma.rotvec_to_unitquat(fraction * roma.unitquat_to_rotvec(quat))


def _slerp(q0: torch.Tensor, q1: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """Element-wise shortest-arc slerp of unit quaternions (..., 4) at `fraction` (...) in [0, 1].

    (`roma.unitquat_slerp` interpolates every pair at every step; here each pair has its own step.)
    """
    return roma.quat_product(q0, _power(_relative(q0, q1), fraction[..., None]))


def _yaw_quat(angle: torch.Tensor | float) -> torch.Tensor:
    """Rotation by `angle` (...) radians about +y as unit quaternions (..., 4)."""
    angle = torch.as_tensor(angle, dtype=torch.float64)
    return roma.rotvec_to_unitquat(torch.stack([torch.zeros_like(angle), angle, torch.zeros_like(angle)], -1))


def _shortest_rotation(source: np.ndarray, target: np.ndarray) -> torch.Tensor:
    """Unit quaternion (4,) of the smallest rotation turning direction `source` (3,) onto `target` (3,)."""
    a, b = (_tensor(v / np.linalg.norm(v)) for v in (source, target))
    return roma.quat_normalize(torch.cat([torch.linalg.cross(a, b), (1.0 + a @ b)[None]]))


# ---------------------------------------------------------------------------------------------------
# Loading and sampling clips
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DeepMimicClip:
    """One DeepMimic clip (arrays are read-only).

    Attributes:
        name: clip name, e.g. "walk".
        loop: True for "wrap" clips, which DeepMimic plays cyclically.
        fps: nominal frame rate, 1 / median frame duration.
        times: (T,) time of each frame in seconds, from 0 (the file's per-frame durations, summed).
        root_position: (T, 3) world position of the root (pelvis) joint, metres, y up.
        rotations: (T, 13, 4) XYZW unit quaternions in :data:`DEEPMIMIC_JOINTS` order: the root's world
            rotation, then each joint's rotation relative to its parent link; hinges turn about +z.
    """

    name: str
    loop: bool
    fps: float
    times: np.ndarray
    root_position: np.ndarray
    rotations: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.times)

    @property
    def duration(self) -> float:
        """Seconds from the first to the last frame."""
        return float(self.times[-1])


def motions_dir() -> Path:
    """Folder of the DeepMimic clips in the installed `pybullet_data`.

    Raises:
        ImportError: if pybullet is not installed.
    """
    try:
        import pybullet_data
    except ImportError as error:
        raise ImportError(
            "The DeepMimic motion clips ship with pybullet, which is not installed: pip install pybullet"
        ) from error
    return Path(pybullet_data.getDataPath()) / "data" / "motions"


def list_clips() -> list[str]:
    """Names of the available DeepMimic humanoid clips, sorted (e.g. "walk", "backflip")."""
    return sorted(path.stem.removeprefix(_FILE_PREFIX) for path in motions_dir().glob(f"{_FILE_PREFIX}*.txt"))


@functools.cache
def load_deepmimic(name: str) -> DeepMimicClip:
    """Load a DeepMimic clip (cached; the arrays are read-only).

    Each file row is `[duration, root_pos(3), root_rot(4), chest(4), neck(4), right_hip(4),
    right_knee(1), right_ankle(4), right_shoulder(4), right_elbow(1), left_hip(4), left_knee(1),
    left_ankle(4), left_shoulder(4), left_elbow(1)]` with WXYZ quaternions and hinge angles in radians.

    Raises:
        ValueError: for an unknown clip name (lists the available ones).
    """
    path = motions_dir() / f"{_FILE_PREFIX}{name}.txt"
    if not path.is_file():
        raise ValueError(f"Unknown DeepMimic clip {name!r}; available clips: {', '.join(list_clips())}")
    data = json.loads(path.read_text())
    frames = np.asarray(data["Frames"], dtype=np.float64)
    durations = frames[:-1, 0]
    if frames.ndim != 2 or frames.shape[1] != _NUM_COLUMNS:
        raise ValueError(f"{path}: expected frames of {_NUM_COLUMNS} numbers, got shape {frames.shape}")
    rotations, column = [], 4
    for joint in DEEPMIMIC_JOINTS:
        if joint in DEEPMIMIC_HINGES:
            half = frames[:, column] / 2
            rotations.append(np.stack([0 * half, 0 * half, np.sin(half), np.cos(half)], -1))
            column += 1
        else:
            wxyz = frames[:, column : column + 4]
            rotations.append(wxyz[:, [1, 2, 3, 0]] / np.linalg.norm(wxyz, axis=-1, keepdims=True))
            column += 4
    arrays = {
        "times": np.concatenate([[0.0], np.cumsum(durations)]),
        "root_position": frames[:, 1:4].copy(),
        "rotations": np.stack(rotations, axis=1),
    }
    for array in arrays.values():
        array.flags.writeable = False
    return DeepMimicClip(name, data.get("Loop") == "wrap", float(1.0 / np.median(durations)), **arrays)


def sample_clip(clip: DeepMimicClip, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate a clip at arbitrary times (root linearly, rotations by slerp), like DeepMimic.

    Looping clips wrap around: each completed cycle shifts the root by the clip's horizontal
    start-to-end displacement (pybullet's `computeCycleOffset`); the pose jumps at the seam wherever
    the last frame differs from the first.

    Args:
        clip: the clip.
        times: (K,) seconds from the clip's first frame.

    Returns:
        root_position (K, 3) and rotations (K, 13, 4), as in :class:`DeepMimicClip`.

    Raises:
        ValueError: for times outside [0, duration] of a non-looping clip, or negative times.
    """
    times = np.asarray(times, dtype=np.float64)
    if times.min() < 0.0 or (not clip.loop and times.max() > clip.duration + 1e-9):
        raise ValueError(
            f"Clip {clip.name!r} lasts {clip.duration:.3f} s and does not loop; "
            f"asked for times in [{times.min():.3f}, {times.max():.3f}] s"
        )
    cycles = np.floor(times / clip.duration) if clip.loop else np.zeros_like(times)
    local = np.clip(times - cycles * clip.duration, 0.0, clip.duration)
    index = np.clip(np.searchsorted(clip.times, local, side="right") - 1, 0, clip.num_frames - 2)
    fraction = (local - clip.times[index]) / (clip.times[index + 1] - clip.times[index])
    offset = (clip.root_position[-1] - clip.root_position[0]) * np.array([1.0, 0.0, 1.0])
    start, end = clip.root_position[index], clip.root_position[index + 1]
    root = start + fraction[:, None] * (end - start)
    rotations = _slerp(
        _tensor(clip.rotations[index]),
        _tensor(clip.rotations[index + 1]),
        _tensor(fraction)[:, None].expand(-1, len(DEEPMIMIC_JOINTS)),
    )
    return root + cycles[:, None] * offset, rotations.numpy()


# ---------------------------------------------------------------------------------------------------
# Forward kinematics
# ---------------------------------------------------------------------------------------------------


def _deepmimic_fk(root_position: torch.Tensor, rotations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepMimic forward kinematics: (..., 3), (..., 13, 4) -> points (..., 18, 3), world rotations
    (..., 13, 4) of the joints' link frames."""
    offsets = _tensor(DEEPMIMIC_OFFSETS)
    world: list[torch.Tensor] = []
    points: list[torch.Tensor] = []
    for index, parent in enumerate(DEEPMIMIC_PARENTS):
        if parent < 0:
            points.append(root_position)
            world.append(rotations[..., 0, :])
            continue
        points.append(points[parent] + _rotate(world[parent], offsets[index]))
        if index < len(DEEPMIMIC_JOINTS):
            world.append(roma.quat_product(world[parent], rotations[..., index, :]))
    return torch.stack(points, -2), torch.stack(world, -2)


def deepmimic_joint_positions(root_position: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """World positions of the DeepMimic joints and end sites (:data:`DEEPMIMIC_POINTS`).

    Args:
        root_position: (..., 3) root position, metres.
        rotations: (..., 13, 4) XYZW root world rotation and local joint rotations.

    Returns:
        (..., 18, 3) positions in the DeepMimic world (y up, metres).
    """
    return _deepmimic_fk(_tensor(root_position), _tensor(rotations))[0].numpy()


def _smpl_fk(
    global_orient: torch.Tensor, body_pose: torch.Tensor, transl: torch.Tensor, rest: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SMPL forward kinematics -> joints (..., 24, 3) and world joint rotations (..., 24, 4)."""
    rotvecs = torch.cat([global_orient[..., None, :], body_pose.unflatten(-1, (-1, 3))], -2)
    local = roma.rotvec_to_unitquat(rotvecs)
    world: list[torch.Tensor] = []
    joints: list[torch.Tensor] = []
    for index, parent in enumerate(PARENTS):
        if parent < 0:
            world.append(local[..., 0, :])
            joints.append(rest[0] + transl)
            continue
        world.append(roma.quat_product(world[parent], local[..., index, :]))
        joints.append(joints[parent] + _rotate(world[parent], rest[index] - rest[parent]))
    return torch.stack(joints, -2), torch.stack(world, -2)


def smpl_joint_positions(
    global_orient: np.ndarray,
    body_pose: np.ndarray,
    transl: np.ndarray,
    rest: np.ndarray | None = None,
) -> np.ndarray:
    """SMPL forward kinematics of the skeleton alone (no mesh), as `smplx.SMPL` computes the joints.

    Args:
        global_orient: (..., 3) axis-angle pelvis rotation about the pelvis joint.
        body_pose: (..., 69) axis-angle local rotations of joints 1-23.
        transl: (..., 3) translation added after posing.
        rest: (24, 3) rest (zero-pose) joints; None for the procedural body's.

    Returns:
        (..., 24, 3) world joint positions.
    """
    rest = rest_joints() if rest is None else rest
    joints, _ = _smpl_fk(_tensor(global_orient), _tensor(body_pose), _tensor(transl), _tensor(rest))
    return joints.numpy()


# ---------------------------------------------------------------------------------------------------
# Retargeting
# ---------------------------------------------------------------------------------------------------


def _first_child(joint: int) -> int:
    return PARENTS.index(joint)


def _smpl_sole_y(rest: np.ndarray) -> float:
    return float(rest[[JOINT_INDEX["left_foot"], JOINT_INDEX["right_foot"]], 1].min() - FOOT_JOINT_ABOVE_SOLE)


def _leg_length_ratio(rest: np.ndarray) -> float:
    """SMPL over DeepMimic leg length (hip to knee to ankle, plus ankle height above the sole)."""
    sole_y = _smpl_sole_y(rest)
    smpl = np.mean(
        [
            np.linalg.norm(rest[JOINT_INDEX[f"{side}_knee"]] - rest[JOINT_INDEX[f"{side}_hip"]])
            + np.linalg.norm(rest[JOINT_INDEX[f"{side}_ankle"]] - rest[JOINT_INDEX[f"{side}_knee"]])
            + rest[JOINT_INDEX[f"{side}_ankle"], 1]
            - sole_y
            for side in ("left", "right")
        ]
    )
    source = (
        np.linalg.norm(DEEPMIMIC_OFFSETS[_DM["left_knee"]])
        + np.linalg.norm(DEEPMIMIC_OFFSETS[_DM["left_ankle"]])
        - DEEPMIMIC_SOLE_CORNERS[0, 1]
    )
    return float(smpl / source)


def _smpl_sole_points(rest: np.ndarray) -> np.ndarray:
    """(2, 2, 3) heel and ball points of the (left, right) soles relative to their ankle, rest pose:
    the ankle and foot joints dropped to the sole level."""
    sole_y = _smpl_sole_y(rest)
    points = []
    for side in ("left", "right"):
        ankle = rest[JOINT_INDEX[f"{side}_ankle"]]
        heel, ball = ankle.copy(), rest[JOINT_INDEX[f"{side}_foot"]].copy()
        heel[1] = ball[1] = sole_y
        points.append([heel - ankle, ball - ankle])
    return np.asarray(points)


def _limb_rest_alignment(rest: np.ndarray) -> dict[str, torch.Tensor]:
    """Per SMPL limb joint, the smallest rotation (4,) turning its rest bone onto the DeepMimic rest
    bone (in SMPL axes); e.g. about 90 deg for the shoulders (T-pose arms -> arms hanging down)."""
    align = _tensor(_FACING_ALIGNMENT)
    return {
        joint: _shortest_rotation(
            rest[_first_child(JOINT_INDEX[joint])] - rest[JOINT_INDEX[joint]],
            _rotate(align, _tensor(DEEPMIMIC_OFFSETS[_DM[end]])).numpy(),
        )
        for joint, (_, end) in LIMB_MAP.items()
    }


def _smpl_world_rotations(source: torch.Tensor, rest: np.ndarray) -> torch.Tensor:
    """World rotations (T, 24, 4) of the SMPL joints from the DeepMimic link frames `source`
    (T, 13, 4), both in SMPL axes and world."""
    limb_alignment = _limb_rest_alignment(rest)
    chest = _power(_relative(source[:, _DM["root"]], source[:, _DM["chest"]]), 1.0 / len(SPINE))
    neck = _power(_relative(source[:, _DM["chest"]], source[:, _DM["neck"]]), 1.0 / len(NECK))
    world: list[torch.Tensor] = []
    for index, joint in enumerate(JOINT_NAMES):
        if joint == "pelvis":
            world.append(source[:, _DM["root"]])
        elif joint in LIMB_MAP:
            world.append(roma.quat_product(source[:, _DM[LIMB_MAP[joint][0]]], limb_alignment[joint]))
        elif joint in SPINE:
            world.append(roma.quat_product(world[PARENTS[index]], chest))
        elif joint in NECK:
            world.append(roma.quat_product(world[PARENTS[index]], neck))
        else:  # collars, feet, wrists and hands keep their rest pose relative to their parent
            world.append(world[PARENTS[index]])
    return torch.stack(world, 1)


def _lowest_sole(
    joints: torch.Tensor, world: torch.Tensor, ankles: Sequence[int], points: torch.Tensor
) -> torch.Tensor:
    """Lowest height (T,) of sole `points` (2, P, 3) given relative to two `ankles` of a skeleton with
    joints (T, J, 3) and world joint rotations (T, J', 4)."""
    return (joints[:, ankles, None] + _rotate(world[:, ankles, None], points))[..., 1].amin((1, 2))


def retarget(
    root_position: np.ndarray, rotations: np.ndarray, rest: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Retarget DeepMimic poses to SMPL parameters (see docs/mocap.md for the rules).

    The result faces +z at the first frame (the root's twist about y is removed), starts with the hip
    midpoint at x = z = 0, and moves the SMPL hip midpoint with the DeepMimic root (its hip midpoint)
    scaled by the leg-length ratio; the height is shifted so that the lowest sole point at the first
    frame is as high as DeepMimic's (on the ground for clips starting on their feet).

    Args:
        root_position: (T, 3) DeepMimic root positions, metres.
        rotations: (T, 13, 4) XYZW DeepMimic rotations (see :class:`DeepMimicClip`).
        rest: (24, 3) SMPL rest joints; None for the procedural body's.

    Returns:
        `global_orient (T, 3)`, `body_pose (T, 69)` (axis-angle, local to the SMPL rest pose) and
        `transl (T, 3)`, float64.
    """
    rest = rest_joints() if rest is None else np.asarray(rest, dtype=np.float64)
    rest_t = _tensor(rest)
    scale = _leg_length_ratio(rest)
    points, world = _deepmimic_fk(_tensor(root_position), _tensor(rotations))
    align = _tensor(_FACING_ALIGNMENT)
    heading = 2.0 * torch.atan2(world[0, 0, 1], world[0, 0, 3])  # the root's twist about y
    to_smpl = roma.quat_product(_yaw_quat(-heading), align)  # DeepMimic world -> SMPL world
    smpl_world = _smpl_world_rotations(_compose(to_smpl, world, roma.quat_conjugation(align)), rest)
    local = _relative(smpl_world[:, [max(parent, 0) for parent in PARENTS]], smpl_world)
    local[:, 0] = smpl_world[:, 0]
    rotvecs = roma.unitquat_to_rotvec(local)

    hip_mid = (rest_t[JOINT_INDEX["left_hip"]] + rest_t[JOINT_INDEX["right_hip"]]) / 2
    target = scale * _rotate(to_smpl, points[:, _DM["root"]])
    target = target - target[0] * _tensor([1.0, 0.0, 1.0])
    transl = target - _rotate(smpl_world[:, 0], hip_mid - rest_t[0]) - rest_t[0]
    first_smpl = _lowest_sole(
        _smpl_fk(rotvecs[:1, 0], rotvecs[:1, 1:].flatten(1), transl[:1], rest_t)[0],
        smpl_world[:1],
        [JOINT_INDEX["left_ankle"], JOINT_INDEX["right_ankle"]],
        _tensor(_smpl_sole_points(rest)),
    )
    first_source = _lowest_sole(
        points[:1],
        world[:1],
        [_DM["left_ankle"], _DM["right_ankle"]],
        _tensor(DEEPMIMIC_SOLE_CORNERS).expand(2, -1, -1),
    )
    transl[:, 1] += scale * first_source - first_smpl
    return {
        "global_orient": rotvecs[:, 0].numpy(),
        "body_pose": rotvecs[:, 1:].flatten(1).numpy(),
        "transl": transl.numpy(),
    }


@functools.lru_cache(maxsize=64)
def _retarget_clip_cached(
    name: str, fps: float, num_frames: int | None, start: float
) -> dict[str, np.ndarray]:
    clip = load_deepmimic(name)
    if num_frames is None:
        num_frames = int(np.floor((clip.duration - start) * fps + 1e-6)) + 1
    if num_frames < 1:
        raise ValueError(f"No frames to sample from clip {name!r} ({clip.duration:.3f} s) from {start} s")
    root, rotations = sample_clip(clip, start + np.arange(num_frames) / fps)
    motion = retarget(root, rotations)
    for array in motion.values():
        array.flags.writeable = False
    return motion


def retarget_clip(
    name: str, fps: float = 30.0, num_frames: int | None = None, start: float = 0.0
) -> dict[str, np.ndarray | float]:
    """A DeepMimic clip as SMPL parameters for the procedural body (cached in-process).

    Args:
        name: clip name (see :func:`list_clips`).
        fps: output frame rate; the clip is resampled by slerp.
        num_frames: number of frames; None for as many as fit in the clip from `start`. Looping clips
            repeat when longer (see :func:`sample_clip`); others raise a ValueError.
        start: time of the first frame in seconds.

    Returns:
        `global_orient (T, 3)`, `body_pose (T, 69)`, `transl (T, 3)` (float64, fresh copies) and
        `fps` (float).
    """
    motion = _retarget_clip_cached(name, float(fps), num_frames, float(start))
    return {**{key: array.copy() for key, array in motion.items()}, "fps": float(fps)}


# ---------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------

_MIRROR_PERMUTATION = [
    JOINT_INDEX[name.replace("left_", "@").replace("right_", "left_").replace("@", "right_")]
    for name in JOINT_NAMES
]


def augment_motion(
    motion: dict[str, np.ndarray | float],
    time_warp: float = 1.0,
    mirror: bool = False,
    root_offset: tuple[float, float] = (0.0, 0.0),
    yaw: float = 0.0,
    rest: np.ndarray | None = None,
) -> dict[str, np.ndarray | float]:
    """Vary an SMPL motion, in this order: time warp, mirror, yaw about the world y axis, root offset.

    Args:
        motion: `global_orient (T, 3)`, `body_pose (T, 69)`, `transl (T, 3)` (other keys such as `fps`
            are passed through unchanged).
        time_warp: slow-down factor: the result has `floor((T - 1) * time_warp) + 1` frames at the same
            fps and frame k is the input at frame k / time_warp (slerp for rotations, linear for transl).
        mirror: swap left and right and reflect x (axis-angle (ax, ay, az) -> (ax, -ay, -az)); exact
            for a left-right symmetric rest skeleton.
        root_offset: (x, z) metres added to the translation.
        yaw: radians about +y (through the world origin) applied to the whole motion.
        rest: (24, 3) rest joints (the pelvis rest position matters for yaw and mirror); None for the
            procedural body's.

    Returns:
        A new motion dict with the same keys.

    Raises:
        ValueError: for a non-positive `time_warp`.
    """
    if time_warp <= 0:
        raise ValueError(f"time_warp must be positive, got {time_warp}")
    rest = rest_joints() if rest is None else np.asarray(rest, dtype=np.float64)
    global_orient, body_pose = _tensor(motion["global_orient"]), _tensor(motion["body_pose"])
    rotvecs = torch.cat([global_orient[:, None], body_pose.unflatten(-1, (-1, 3))], 1)
    transl = _tensor(motion["transl"])
    if time_warp != 1.0:
        last = len(transl) - 1
        num_frames = int(np.floor(last * time_warp + 1e-9)) + 1
        position = torch.clamp(torch.arange(num_frames, dtype=torch.float64) / time_warp, 0.0, last)
        lower = torch.clamp(position.floor().long(), max=last - 1)
        fraction = position - lower
        quats = roma.rotvec_to_unitquat(rotvecs)
        rotvecs = roma.unitquat_to_rotvec(
            _slerp(quats[lower], quats[lower + 1], fraction[:, None].expand(-1, NUM_JOINTS))
        )
        transl = (1 - fraction[:, None]) * transl[lower] + fraction[:, None] * transl[lower + 1]
    pelvis = transl + _tensor(rest[0])
    if mirror:
        rotvecs = rotvecs[:, _MIRROR_PERMUTATION] * _tensor([1.0, -1.0, -1.0])
        pelvis = pelvis * _tensor([-1.0, 1.0, 1.0])
    if yaw:
        turn = _yaw_quat(yaw)
        pelvis_rotation = roma.quat_product(turn, roma.rotvec_to_unitquat(rotvecs[:, 0]))
        rotvecs[:, 0] = roma.unitquat_to_rotvec(pelvis_rotation)
        pelvis = _rotate(turn, pelvis)
    pelvis = pelvis + _tensor([root_offset[0], 0.0, root_offset[1]])
    return {
        **motion,
        "global_orient": rotvecs[:, 0].numpy(),
        "body_pose": rotvecs[:, 1:].flatten(1).numpy(),
        "transl": (pelvis - _tensor(rest[0])).numpy(),
    }
