"""Tests of isa4d.body against independent references (trimesh, smplx, a numpy LBS, scipy)."""

from __future__ import annotations

import argparse
import builtins
import os
import pickle
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse
import scipy.stats
import smplx
import torch
import trimesh
from scipy.spatial.transform import Rotation

from isa4d.body import (
    JOINT_INDEX,
    PARENTS,
    SMPL_KEYS,
    BodyModel,
    SurfaceSampler,
    convert_smpl_pickle,
    descendants,
    generate_procedural_body,
    load_body_model,
    procedural_body_data,
    rest_joints,
    write_procedural_npz,
)
from isa4d.body.cli import add_cli
from isa4d.errors import DataError
from isa4d.utils.files import file_sha256


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return procedural_body_data()


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return load_body_model("procedural")


def random_pose(rng: np.random.Generator, scale: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """Global orientation (3,) and body pose (69,) axis-angle vectors."""
    pose = rng.normal(scale=scale, size=72).astype(np.float32)
    return torch.from_numpy(pose[:3]), torch.from_numpy(pose[3:])


def numpy_smpl(
    data: dict[str, np.ndarray], pose: np.ndarray, betas: np.ndarray, transl: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Reference SMPL forward kinematics + linear blend skinning in float64 numpy.

    Args:
        pose: (72,) axis-angle of the 24 joints; betas: (K,); transl: (3,).

    Returns:
        vertices (V, 3), joints (24, 3).
    """
    shapedirs = data["shapedirs"].astype(np.float64)[..., : len(betas)]
    v_shaped = data["v_template"].astype(np.float64) + shapedirs @ betas
    joints = data["J_regressor"].astype(np.float64) @ v_shaped
    rotations = Rotation.from_rotvec(pose.reshape(24, 3).astype(np.float64)).as_matrix()
    world = np.zeros((24, 4, 4))
    for joint, parent in enumerate(PARENTS):
        local = np.eye(4)
        local[:3, :3] = rotations[joint]
        local[:3, 3] = joints[joint] - (joints[parent] if parent >= 0 else 0.0)
        world[joint] = local if parent < 0 else world[parent] @ local
    skinning = world.copy()
    skinning[:, :3, 3] -= np.einsum("jab,jb->ja", world[:, :3, :3], joints)
    blended = np.einsum("vj,jab->vab", data["weights"].astype(np.float64), skinning)
    vertices = np.einsum("vab,vb->va", blended[:, :3, :3], v_shaped) + blended[:, :3, 3]
    return vertices + transl, world[:, :3, 3] + transl


# --- procedural body -------------------------------------------------------------------------------


def test_procedural_mesh_is_a_closed_outward_single_component(data):
    mesh = trimesh.Trimesh(data["v_template"], data["f"], process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.body_count == 1
    assert mesh.volume > 0.04  # m^3, outward normals
    assert 6890 <= len(mesh.vertices) <= 9000  # > 6787: smplx's default landmark vertex ids exist
    height = mesh.bounds[1, 1] - mesh.bounds[0, 1]
    assert 1.65 < height < 1.78
    assert np.abs(rest_joints()[JOINT_INDEX["pelvis"]] - [0.0, -0.22, 0.02]).max() < 1e-12


def test_procedural_generation_is_deterministic(data):
    again = generate_procedural_body()
    assert set(again) == set(data) == set(SMPL_KEYS)
    for key in SMPL_KEYS:
        np.testing.assert_array_equal(again[key], data[key], err_msg=key)


def test_procedural_arrays_have_smpl_layout(data):
    num_vertices = len(data["v_template"])
    assert data["J_regressor"].shape == (24, num_vertices)
    assert data["weights"].shape == (num_vertices, 24)
    assert data["shapedirs"].shape == (num_vertices, 3, 10)
    assert data["posedirs"].shape == (num_vertices, 3, 207)
    np.testing.assert_array_equal(data["kintree_table"], [PARENTS, np.arange(24)])
    assert not data["posedirs"].any() and not data["shapedirs"][..., 5:].any()
    weights = data["weights"]
    assert weights.min() >= 0.0 and ((weights > 0).sum(axis=1) <= 3).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    regressor = data["J_regressor"].astype(np.float64)
    np.testing.assert_allclose(regressor.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(regressor @ data["v_template"], rest_joints(), atol=1e-5)


# --- body model ------------------------------------------------------------------------------------


def test_wrapper_matches_plain_smplx(data, body):
    smpl = smplx.SMPL("", data_struct=SimpleNamespace(**data))
    global_orient, body_pose = random_pose(np.random.default_rng(0))
    betas, transl = (
        torch.randn(1, 10, generator=torch.Generator().manual_seed(0)),
        torch.tensor([[0.3, -0.1, 2.0]]),
    )
    reference = smpl(global_orient=global_orient[None], body_pose=body_pose[None], betas=betas, transl=transl)
    output = body(global_orient, body_pose, betas[0], transl[0])
    torch.testing.assert_close(output.vertices, reference.vertices[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(output.joints, reference.joints[0, :24], rtol=0, atol=1e-6)
    assert len(body.state_dict()) == 0 and len(list(body.parameters())) == 0  # nothing SMPL in checkpoints


def test_zero_pose_is_the_template_and_transl_shifts_everything(data, body):
    template = torch.from_numpy(data["v_template"].copy())
    output = body(torch.zeros(3), torch.zeros(69))
    torch.testing.assert_close(output.vertices, template, rtol=0, atol=1e-6)
    torch.testing.assert_close(output.joints, torch.from_numpy(rest_joints()).float(), rtol=0, atol=1e-5)
    shift = torch.tensor([1.0, -2.0, 0.5])
    moved = body(torch.zeros(3), torch.zeros(69), transl=shift)
    torch.testing.assert_close(moved.vertices, template + shift, rtol=0, atol=1e-6)


def test_wrapper_matches_numpy_forward_kinematics_and_skinning(data, body):
    rng = np.random.default_rng(1)
    global_orient, body_pose = random_pose(rng, scale=0.6)
    betas, transl = rng.normal(size=10).astype(np.float32), np.array([0.2, 0.1, -0.4], np.float32)
    vertices, joints = numpy_smpl(data, torch.cat([global_orient, body_pose]).numpy(), betas, transl)
    output = body(global_orient, body_pose, torch.from_numpy(betas), torch.from_numpy(transl))
    np.testing.assert_allclose(output.vertices.numpy(), vertices, atol=2e-5)
    np.testing.assert_allclose(output.joints.numpy(), joints, atol=2e-5)


def test_leading_dims_are_flattened_and_broadcast(body):
    generator = torch.Generator().manual_seed(2)
    global_orient, body_pose = 0.3 * torch.randn(2, 3, 3, generator=generator), torch.randn(2, 3, 69) * 0.3
    betas, transl = torch.randn(2, 1, 4, generator=generator), torch.randn(2, 3, 3, generator=generator)
    output = body(global_orient, body_pose, betas, transl)
    assert output.vertices.shape == (2, 3, body.num_vertices, 3) and output.joints.shape == (2, 3, 24, 3)
    single = body(global_orient[1, 2], body_pose[1, 2], betas[1, 0], transl[1, 2])
    torch.testing.assert_close(output.vertices[1, 2], single.vertices, rtol=0, atol=1e-6)


def test_rotating_one_joint_moves_only_the_vertices_it_skins(data, body):
    global_orient, body_pose = random_pose(np.random.default_rng(3))
    elbow = JOINT_INDEX["left_elbow"]
    bent = body_pose.clone()
    bent[3 * (elbow - 1) : 3 * elbow] += torch.tensor([0.0, -1.2, 0.3])
    before, after = body(global_orient, body_pose).vertices, body(global_orient, bent).vertices
    skinned = data["weights"][:, sorted(descendants(elbow))].sum(axis=1) > 0
    torch.testing.assert_close(after[~skinned], before[~skinned], rtol=0, atol=1e-6)
    assert (after[skinned] - before[skinned]).norm(dim=-1).max() > 0.1
    assert 0.02 < skinned.mean() < 0.1  # forearm and hand only


def test_betas_change_the_body_plausibly(data, body):
    def pose_with(beta: int, value: float):
        betas = torch.zeros(10)
        betas[beta] = value
        return body(torch.zeros(3), torch.zeros(69), betas)

    rest = pose_with(0, 0.0)
    taller = pose_with(0, 1.0)
    extent = lambda vertices: (vertices[:, 1].max() - vertices[:, 1].min()).item()
    assert 0.03 < extent(taller.vertices) - extent(rest.vertices) < 0.08
    head, ankle = JOINT_INDEX["head"], JOINT_INDEX["left_ankle"]
    assert (
        taller.joints[head, 1] > rest.joints[head, 1] + 0.01
        and taller.joints[ankle, 1] < rest.joints[ankle, 1]
    )
    regressor = torch.from_numpy(data["J_regressor"].copy())
    torch.testing.assert_close(taller.joints, regressor @ taller.vertices, rtol=0, atol=1e-5)

    volume = lambda output: trimesh.Trimesh(output.vertices.numpy(), data["f"], process=False).volume
    assert volume(pose_with(1, 1.0)) > 1.1 * volume(rest)
    longer = pose_with(2, 1.0)
    for root, tip in (("left_hip", "left_ankle"), ("right_shoulder", "right_wrist")):
        bone = [JOINT_INDEX[tip], JOINT_INDEX[root]]
        ratio = (longer.joints[bone[0]] - longer.joints[bone[1]]).norm() / (
            rest.joints[bone[0]] - rest.joints[bone[1]]
        ).norm()
        assert 1.03 < ratio < 1.07


# --- surface sampler -------------------------------------------------------------------------------


def test_sampled_points_lie_on_the_posed_surface(data, body):
    sampler = SurfaceSampler(body.faces, body.v_template, num_points=2000, seed=0)
    assert torch.allclose(sampler.barycentric.sum(-1), torch.ones(2000)) and sampler.barycentric.min() >= 0
    rng = np.random.default_rng(4)
    for _ in range(3):
        vertices = body(*random_pose(rng, scale=0.5)).vertices
        points = sampler(vertices).numpy()
        triangles = vertices.numpy()[data["f"][sampler.face_ids.numpy()]]
        closest = trimesh.triangles.closest_point(triangles, points)
        assert np.linalg.norm(closest - points, axis=1).max() < 1e-5
    rest_triangles = data["v_template"][data["f"][sampler.face_ids.numpy()]]
    closest = trimesh.triangles.closest_point(rest_triangles, sampler.canonical_points.numpy())
    assert np.linalg.norm(closest - sampler.canonical_points.numpy(), axis=1).max() < 1e-5


def test_sampled_points_keep_their_identity_across_frames(body):
    sampler = SurfaceSampler(body.faces, body.v_template, num_points=500, seed=1)
    again = SurfaceSampler(body.faces, body.v_template, num_points=500, seed=1)
    torch.testing.assert_close(sampler.canonical_points, again.canonical_points, rtol=0, atol=0)
    _, body_pose = random_pose(np.random.default_rng(5))
    orientations = torch.tensor([[0.3, -1.0, 0.2], [1.5, 0.4, -0.7]])
    translations = torch.tensor([[0.0, 0.0, 0.0], [1.0, -0.5, 3.0]])
    output = body(orientations, body_pose.expand(2, 69), transl=translations)
    points = sampler(output.vertices)  # (frames, N, 3)
    assert points.shape == (2, 500, 3)
    relative = torch.from_numpy(
        (Rotation.from_rotvec(orientations[1]) * Rotation.from_rotvec(orientations[0]).inv()).as_matrix()
    ).float()
    pelvis = output.joints[:, 0]
    expected = (points[0] - pelvis[0]) @ relative.T + pelvis[1]
    torch.testing.assert_close(points[1], expected, rtol=0, atol=2e-5)


def test_sampling_is_area_weighted(data, body):
    num_points = 200_000
    sampler = SurfaceSampler(body.faces, body.v_template, num_points=num_points, seed=2)
    areas = trimesh.Trimesh(data["v_template"], data["f"], process=False).area_faces
    counts = np.bincount(sampler.face_ids.numpy(), minlength=len(areas))
    deciles = np.array_split(np.argsort(areas), 10)
    observed = np.array([counts[faces].sum() for faces in deciles])
    expected = np.array([areas[faces].sum() for faces in deciles]) / areas.sum() * num_points
    assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3
    uniform_over_faces = np.array([len(faces) for faces in deciles]) / len(areas) * num_points
    assert scipy.stats.chisquare(observed, uniform_over_faces).pvalue < 1e-12


# --- files, converter and CLI ----------------------------------------------------------------------


@pytest.fixture
def smpl_pickle(tmp_path, data) -> Path:
    """A fake SMPL pickle: Python-2 protocol, chumpy `Ch` values, a sparse regressor, extra keys."""
    package, module = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:  # mimics chumpy: the value lives in the `x` entry of the pickled __dict__
        def __init__(self, x):
            self.x = np.asarray(x, np.float64)
            self._dirty_vars = {"x"}
            self._depends_on_deps = {}

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    module.Ch, package.ch = Ch, module
    kintree_table = data["kintree_table"].astype(np.uint32)  # SMPL stores the root's parent as 2**32 - 1
    content = {
        "v_template": Ch(data["v_template"]),
        "shapedirs": Ch(data["shapedirs"]),
        "weights": Ch(data["weights"]),
        "J": Ch(rest_joints()),
        "posedirs": data["posedirs"].astype(np.float64),
        "J_regressor": scipy.sparse.csc_matrix(data["J_regressor"].astype(np.float64)),
        "f": data["f"].astype(np.uint32),
        "kintree_table": kintree_table,
        "bs_style": "lbs",
    }
    path = tmp_path / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"
    sys.modules.update({"chumpy": package, "chumpy.ch": module})
    try:
        path.write_bytes(pickle.dumps(content, protocol=2))
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    return path


def test_converted_smpl_pickle_runs_like_the_original(smpl_pickle, tmp_path, body):
    destination = convert_smpl_pickle(smpl_pickle, tmp_path / "SMPL_NEUTRAL.npz", file_sha256(smpl_pickle))
    assert "chumpy" not in sys.modules
    assert sorted(np.load(destination).files) == sorted(SMPL_KEYS)
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no temp files
    converted = load_body_model(tmp_path)  # a folder holding SMPL_NEUTRAL.npz
    global_orient, body_pose = random_pose(np.random.default_rng(6))
    betas = torch.linspace(-1.0, 1.0, 10)
    expected, actual = body(global_orient, body_pose, betas), converted(global_orient, body_pose, betas)
    torch.testing.assert_close(actual.vertices, expected.vertices, rtol=0, atol=0)
    torch.testing.assert_close(actual.joints, expected.joints, rtol=0, atol=0)


def test_converter_checks_the_checksum(smpl_pickle, tmp_path):
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        convert_smpl_pickle(smpl_pickle, tmp_path / "out.npz", expected_sha256="0" * 64)
    assert not (tmp_path / "out.npz").exists()


def test_converter_lists_missing_keys(tmp_path, data):
    path = tmp_path / "partial.pkl"
    path.write_bytes(pickle.dumps({"v_template": data["v_template"], "f": data["f"]}, protocol=2))
    with pytest.raises(DataError, match="J_regressor.*kintree_table.*weights.*shapedirs.*posedirs"):
        convert_smpl_pickle(path, tmp_path / "out.npz")


class _Exploit:
    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("function", [os.system, builtins.eval], ids=["os.system", "builtins.eval"])
def test_converter_refuses_code_execution(tmp_path, data, function):
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w')"
    path = tmp_path / "evil.pkl"
    path.write_bytes(
        pickle.dumps({"v_template": data["v_template"], "f": _Exploit(function, command)}, protocol=2)
    )
    with pytest.raises(DataError, match=f"refusing to load the global .*{function.__name__}"):
        convert_smpl_pickle(path, tmp_path / "out.npz")
    assert not marker.exists() and not (tmp_path / "out.npz").exists()


def test_missing_body_model_explains_what_to_do(tmp_path):
    for source in (None, tmp_path / "SMPL_NEUTRAL.npz"):
        with pytest.raises(FileNotFoundError, match=r"SMPL_NEUTRAL\.npz.*isa4d body convert.*procedural"):
            load_body_model(source)
    with pytest.raises(ValueError, match="convert it once"):
        load_body_model(tmp_path / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl")


def test_cli_writes_and_converts(tmp_path, smpl_pickle, capsys, body):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command", required=True))
    commands = {
        tmp_path / "procedural.npz": ["body", "procedural", str(tmp_path / "procedural.npz")],
        tmp_path / "smpl.npz": [
            "body",
            "convert",
            str(smpl_pickle),
            str(tmp_path / "smpl.npz"),
            "--sha256",
            file_sha256(smpl_pickle),
        ],
    }
    for destination, argv in commands.items():
        args = parser.parse_args(argv)
        args.func(args)
        assert capsys.readouterr().out.startswith(f"wrote {destination}: {body.num_vertices} vertices")
        torch.testing.assert_close(load_body_model(destination).v_template, body.v_template, rtol=0, atol=0)
    args = parser.parse_args(
        ["body", "convert", str(smpl_pickle), str(tmp_path / "bad.npz"), "--sha256", "0" * 64]
    )
    with pytest.raises(SystemExit, match="SHA-256 mismatch"):
        args.func(args)


def test_write_procedural_npz_round_trips(tmp_path, data):
    loaded = np.load(write_procedural_npz(tmp_path / "body.npz"))
    for key in SMPL_KEYS:
        np.testing.assert_array_equal(loaded[key], data[key])
