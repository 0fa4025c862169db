"""DeepMimic motion capture -> SMPL: loading, forward kinematics and retargeting, checked against pybullet's
own clip parser and simulator, the smplx-based body model, and the clips' physical facts."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import roma
import torch

from isa4d.body import JOINT_INDEX, NUM_JOINTS, PARENTS, BodyModel, rest_joints
from isa4d.data import mocap

pybullet = pytest.importorskip("pybullet")
pybullet_data = pytest.importorskip("pybullet_data")

CLIPS = [
    "backflip",
    "cartwheel",
    "crawl",
    "dance_a",
    "dance_b",
    "getup_facedown",
    "getup_faceup",
    "jump",
    "kick",
    "punch",
    "roll",
    "run",
    "spin",
    "spinkick",
    "walk",
]
FIDELITY_CLIPS = ["walk", "run", "cartwheel"]
# (DeepMimic start, DeepMimic end, SMPL start, SMPL end) of each compared bone.
BONES = {
    **{
        f"{side}_{bone}": (f"{side}_{a}", f"{side}_{b}", f"{side}_{a}", f"{side}_{b}")
        for side in ("left", "right")
        for bone, a, b in (
            ("thigh", "hip", "knee"),
            ("shin", "knee", "ankle"),
            ("upper_arm", "shoulder", "elbow"),
            ("forearm", "elbow", "wrist"),
        )
    },
    "trunk": ("root", "neck", "pelvis", "neck"),
}


def _angles(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle in degrees between vectors (..., 3)."""
    cosine = (u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@pytest.fixture(scope="module")
def simulator():
    """pybullet's DeepMimic setup: the humanoid URDF at scale 0.25, and pybullet's own pose parser
    (`HumanoidPoseInterpolator`, loaded from its file since `pybullet_envs` imports gym)."""
    from pybullet_utils import bullet_client

    package = Path(importlib.util.find_spec("pybullet_envs").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location(
        "humanoid_pose_interpolator", package / "deep_mimic" / "env" / "humanoid_pose_interpolator.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    client = bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
    body = client.loadURDF(
        str(Path(pybullet_data.getDataPath()) / "humanoid" / "humanoid.urdf"), [0, 0, 0], globalScaling=0.25
    )
    links = {client.getJointInfo(body, j)[1].decode(): j for j in range(client.getNumJoints(body))}
    yield client, body, links, module.HumanoidPoseInterpolator()
    client.disconnect()


def _pybullet_points(simulator, name: str, frames: range) -> np.ndarray:
    """World positions (F, 15, 3) of the DeepMimic joints and wrists, posed by pybullet itself."""
    client, body, links, interpolator = simulator
    data = json.loads((mocap.motions_dir() / f"humanoid3d_{name}.txt").read_text())["Frames"]
    positions = []
    for frame in frames:  # the interpolator divides by the frame's duration: not the last frame (0 s)
        interpolator.Slerp(0.0, data[frame], data[frame + 1], client)
        client.resetBasePositionAndOrientation(body, interpolator._basePos, interpolator._baseOrn)
        for joint in mocap.DEEPMIMIC_JOINTS[1:]:
            client.resetJointStateMultiDof(body, links[joint], getattr(interpolator, f"_{_camel(joint)}Rot"))
        positions.append(
            [
                interpolator._basePos
                if point == "root"
                else client.getLinkState(body, links[point], computeForwardKinematics=True)[4]
                for point in mocap.DEEPMIMIC_POINTS[:15]
            ]
        )
    return np.asarray(positions)


@pytest.fixture(scope="module")
def body_model() -> BodyModel:
    return BodyModel("procedural")


def _smpl_joints(body_model: BodyModel, motion: dict) -> np.ndarray:
    """SMPL joints (T, 24, 3) from the smplx-based body model."""
    with torch.no_grad():
        output = body_model(
            *(torch.as_tensor(motion[key], dtype=torch.float32) for key in ("global_orient", "body_pose")),
            transl=torch.as_tensor(motion["transl"], dtype=torch.float32),
        )
    return output.joints.double().numpy()


def _fidelity(simulator, body_model: BodyModel, name: str) -> dict[str, np.ndarray]:
    """Per bone, the angle (T,) in degrees between the retargeted SMPL bone and the DeepMimic bone
    posed by pybullet, after the single rotation between the two worlds that best aligns the limb
    bones (it must be a turn about the vertical)."""
    clip = mocap.load_deepmimic(name)
    frames = range(clip.num_frames - 1)
    smpl = _smpl_joints(body_model, mocap.retarget(clip.root_position[:-1], clip.rotations[:-1]))
    source = _pybullet_points(simulator, name, frames)
    index = {point: i for i, point in enumerate(mocap.DEEPMIMIC_POINTS)}
    source_bones = np.stack([source[:, index[b]] - source[:, index[a]] for a, b, _, _ in BONES.values()], 1)
    smpl_bones = np.stack(
        [smpl[:, JOINT_INDEX[d]] - smpl[:, JOINT_INDEX[c]] for _, _, c, d in BONES.values()], 1
    )
    limbs = [i for i, bone in enumerate(BONES) if bone != "trunk"]
    rotation = roma.rigid_vectors_registration(
        *(torch.as_tensor(bones[:, limbs].reshape(-1, 3)) for bones in (source_bones, smpl_bones))
    ).numpy()
    assert rotation[1, 1] == pytest.approx(1.0, abs=1e-4)  # y stays up
    errors = _angles(source_bones @ rotation.T, smpl_bones)
    return {bone: errors[:, i] for i, bone in enumerate(BONES)}


def _global_rotmats(motion: dict) -> np.ndarray:
    """World rotation matrices (T, 24, 3, 3) of the SMPL joints, composed with roma."""
    local = roma.rotvec_to_rotmat(
        torch.as_tensor(np.concatenate([motion["global_orient"], motion["body_pose"]], 1).reshape(-1, 24, 3))
    )
    world = [local[:, 0]]
    for joint in range(1, NUM_JOINTS):
        world.append(world[PARENTS[joint]] @ local[:, joint])
    return torch.stack(world, 1).numpy()


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


def test_list_clips():
    assert mocap.list_clips() == CLIPS


def test_all_clips_load_with_fps_from_durations():
    for name in CLIPS:
        clip = mocap.load_deepmimic(name)
        frames = np.asarray(
            json.loads((mocap.motions_dir() / f"humanoid3d_{name}.txt").read_text())["Frames"]
        )
        assert frames.shape[1] == 44
        assert clip.rotations.shape == (len(frames), 13, 4)
        np.testing.assert_allclose(np.linalg.norm(clip.rotations, axis=-1), 1.0, atol=1e-12)
        np.testing.assert_allclose(clip.times, np.cumsum(np.r_[0.0, frames[:-1, 0]]))
        np.testing.assert_allclose(clip.root_position, frames[:, 1:4])
        assert clip.fps == pytest.approx(1.0 / np.median(frames[:-1, 0]))
    assert {
        name: round(mocap.load_deepmimic(name).fps) for name in ("walk", "cartwheel", "backflip", "spin")
    } == {
        "walk": 30,
        "cartwheel": 60,
        "backflip": 16,
        "spin": 24,
    }
    assert mocap.load_deepmimic("walk").loop and not mocap.load_deepmimic("kick").loop


def test_unknown_clip_lists_available_clips():
    with pytest.raises(ValueError, match="available clips: backflip, cartwheel"):
        mocap.load_deepmimic("moonwalk")


def test_missing_pybullet_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pybullet_data", None)
    with pytest.raises(ImportError, match="pip install pybullet"):
        mocap.list_clips()


# ---------------------------------------------------------------------------------------------------
# DeepMimic forward kinematics
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["walk", "cartwheel", "getup_faceup"])
def test_deepmimic_fk_matches_pybullet(simulator, name):
    clip = mocap.load_deepmimic(name)
    frames = range(0, clip.num_frames - 1, 7)
    ours = mocap.deepmimic_joint_positions(clip.root_position[list(frames)], clip.rotations[list(frames)])
    np.testing.assert_allclose(ours[:, :15], _pybullet_points(simulator, name, frames), atol=1e-5)


def test_deepmimic_skeleton_is_human_sized_and_faces_plus_x():
    clip = mocap.load_deepmimic("walk")
    points = dict(
        zip(
            mocap.DEEPMIMIC_POINTS,
            mocap.deepmimic_joint_positions(clip.root_position, clip.rotations)[0],
            strict=True,
        )
    )
    lowest = min(
        points[ankle][1] + corner[1]
        for ankle in ("left_ankle", "right_ankle")
        for corner in mocap.DEEPMIMIC_SOLE_CORNERS
    )
    assert (
        abs(lowest) < 0.05
    )  # the sole is near the ground y = 0 (the corner heights ignore the small foot tilt)
    assert 1.5 < points["head_top"][1] - lowest < 2.0
    assert 0.8 < points["root"][1] < 1.0
    assert points["right_hip"][2] > points["left_hip"][2]  # right side on +z
    assert points["right_toe"][0] > points["right_ankle"][0]  # feet point along +x


# ---------------------------------------------------------------------------------------------------
# SMPL forward kinematics and retargeting
# ---------------------------------------------------------------------------------------------------


def test_smpl_fk_matches_body_model(body_model):
    generator = torch.Generator().manual_seed(0)
    motion = {
        "global_orient": torch.randn(5, 3, generator=generator).double().numpy(),
        "body_pose": 0.5 * torch.randn(5, 69, generator=generator).double().numpy(),
        "transl": torch.randn(5, 3, generator=generator).double().numpy(),
    }
    np.testing.assert_allclose(
        mocap.smpl_joint_positions(**motion), _smpl_joints(body_model, motion), atol=2e-5
    )


@pytest.mark.parametrize("name", FIDELITY_CLIPS)
def test_retargeting_keeps_bone_lengths(name):
    motion = mocap.retarget_clip(name)
    joints = mocap.smpl_joint_positions(motion["global_orient"], motion["body_pose"], motion["transl"])
    rest = rest_joints()
    children = np.arange(1, NUM_JOINTS)
    parents = np.array(PARENTS[1:])
    lengths = np.linalg.norm(joints[:, children] - joints[:, parents], axis=-1)
    np.testing.assert_allclose(
        lengths,
        np.broadcast_to(np.linalg.norm(rest[children] - rest[parents], axis=-1), lengths.shape),
        atol=1e-9,
    )


@pytest.mark.parametrize("name", FIDELITY_CLIPS)
def test_retargeted_bones_follow_the_source(simulator, body_model, name):
    errors = _fidelity(simulator, body_model, name)
    for bone, error in errors.items():
        assert np.median(error) < 10.0, bone
        assert error.max() < 30.0, bone
    limbs = np.concatenate([error for bone, error in errors.items() if bone != "trunk"])
    assert limbs.max() < 0.1  # limb bones are matched exactly (up to float32 in smplx)
    assert errors["trunk"].max() < 6.0  # the SMPL spine is curved and split over three joints


@pytest.mark.parametrize("name", FIDELITY_CLIPS)
def test_joint_angles_are_plausible(name):
    motion = mocap.retarget_clip(name)
    rotvecs = np.concatenate([motion["global_orient"], motion["body_pose"]], 1).reshape(-1, 24, 3)
    assert np.linalg.norm(rotvecs, axis=-1).max() <= np.pi + 1e-9
    joints = mocap.smpl_joint_positions(motion["global_orient"], motion["body_pose"], motion["transl"])
    world = _global_rotmats(motion)
    for side in ("left", "right"):
        hip, knee, ankle = (JOINT_INDEX[f"{side}_{joint}"] for joint in ("hip", "knee", "ankle"))
        thigh, shin = joints[:, knee] - joints[:, hip], joints[:, ankle] - joints[:, knee]
        bend = _angles(thigh, shin)
        assert 0.0 <= bend.min() and bend.max() <= 160.0
        # Flexion turns the shin backwards: about the thigh's left (+x at rest) axis.
        flexion = np.einsum("tc,tc->t", np.cross(thigh, shin), world[:, hip, :, 0])
        assert (flexion[bend > 2.0] > 0).all()
        shoulder, elbow, wrist = (JOINT_INDEX[f"{side}_{joint}"] for joint in ("shoulder", "elbow", "wrist"))
        elbow_bend = _angles(joints[:, elbow] - joints[:, shoulder], joints[:, wrist] - joints[:, elbow])
        assert elbow_bend.max() <= 160.0


def test_walk_moves_forward_at_walking_speed_on_the_ground():
    motion = mocap.retarget_clip("walk")
    joints = mocap.smpl_joint_positions(motion["global_orient"], motion["body_pose"], motion["transl"])
    pelvis = joints[:, JOINT_INDEX["pelvis"]]
    travel = pelvis[-1] - pelvis[0]
    speed = np.linalg.norm(travel[[0, 2]]) / ((len(pelvis) - 1) / motion["fps"])
    assert 0.8 < speed < 2.0
    assert travel[2] > 0.95 * np.linalg.norm(travel)  # forward is +z
    start = joints[0]
    assert start[JOINT_INDEX["left_hip"], 0] > start[JOINT_INDEX["right_hip"], 0]  # left on +x
    assert start[JOINT_INDEX["head"], 1] > start[JOINT_INDEX["pelvis"], 1] + 0.4
    # The balls of the feet (foot joints) stand FOOT_JOINT_ABOVE_SOLE over the soles.
    foot_height = (
        joints[:, [JOINT_INDEX["left_foot"], JOINT_INDEX["right_foot"]], 1] - mocap.FOOT_JOINT_ABOVE_SOLE
    )
    assert abs(foot_height.min()) < 0.05
    assert abs(foot_height[0].min()) < 0.05


def test_looping_clips_repeat_and_others_refuse():
    once = mocap.retarget_clip("walk", fps=10)
    twice = mocap.retarget_clip("walk", fps=10, num_frames=2 * len(once["transl"]))
    assert twice["transl"][-1, 2] > 1.8 * once["transl"][-1, 2]
    with pytest.raises(ValueError, match="does not loop"):
        mocap.retarget_clip("kick", num_frames=1000)


def test_retarget_clip_returns_fresh_copies():
    motion = mocap.retarget_clip("walk")
    motion["transl"][:] = 0.0
    assert np.abs(mocap.retarget_clip("walk")["transl"]).max() > 0.5


# ---------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------


def _joints(motion: dict) -> np.ndarray:
    return mocap.smpl_joint_positions(motion["global_orient"], motion["body_pose"], motion["transl"])


def test_mirror_twice_is_identity():
    motion = mocap.retarget_clip("cartwheel")
    back = mocap.augment_motion(mocap.augment_motion(motion, mirror=True), mirror=True)
    for key in ("global_orient", "body_pose", "transl"):
        np.testing.assert_allclose(back[key], motion[key], atol=1e-12)


def test_mirror_swaps_left_and_right():
    motion = mocap.retarget_clip("walk")
    original, mirrored = _joints(motion), _joints(mocap.augment_motion(motion, mirror=True))
    reflect = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(
        mirrored[:, JOINT_INDEX["left_ankle"]], original[:, JOINT_INDEX["right_ankle"]] * reflect, atol=1e-9
    )
    np.testing.assert_allclose(
        mirrored[:, JOINT_INDEX["right_wrist"]], original[:, JOINT_INDEX["left_wrist"]] * reflect, atol=1e-9
    )


def test_time_warp_resamples():
    motion = mocap.retarget_clip("walk")
    slow = mocap.augment_motion(motion, time_warp=2.0)
    count = len(motion["transl"])
    assert len(slow["transl"]) == 2 * count - 1 and slow["fps"] == motion["fps"]
    for key in ("global_orient", "body_pose", "transl"):
        np.testing.assert_allclose(slow[key][::2], motion[key], atol=1e-9)
    # Odd frames lie between their neighbours.
    joints = _joints(slow)
    midpoint = (joints[:-2:2] + joints[2::2]) / 2
    assert np.abs(joints[1:-1:2] - midpoint).max() < 0.03
    fast = mocap.augment_motion(motion, time_warp=0.5)
    assert len(fast["transl"]) == (count - 1) // 2 + 1
    np.testing.assert_allclose(fast["transl"], motion["transl"][::2], atol=1e-9)


def test_yaw_and_offset_move_the_whole_body():
    motion = mocap.retarget_clip("walk")
    turned = mocap.augment_motion(motion, yaw=np.pi / 2, root_offset=(1.0, -2.0))
    rotation = roma.rotvec_to_rotmat(torch.tensor([0.0, np.pi / 2, 0.0], dtype=torch.float64)).numpy()
    expected = _joints(motion) @ rotation.T + np.array([1.0, 0.0, -2.0])
    np.testing.assert_allclose(_joints(turned), expected, atol=1e-9)
    pelvis = _joints(turned)[:, 0]
    assert pelvis[-1, 0] - pelvis[0, 0] > 1.0  # walking along +z turned by +90 deg about y walks along +x
