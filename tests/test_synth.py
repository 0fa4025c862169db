"""The synthetic-data generator `isa4d synth` (isa4d.data.synth, docs/synth.md), on tiny clips."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from isa4d.body import BodyModel, procedural_body_data
from isa4d.config import compose
from isa4d.data import decode_sample, read_manifest, shard_paths, validate_clip, write_shards
from isa4d.data.appearance import (
    PART_NAMES,
    available_photos,
    body_part_labels,
    body_uvs,
    load_photo,
    random_appearance,
)
from isa4d.data.synth import (
    MIN_SEPARATION,
    _sole_shift,
    generate_clip,
    generate_dataset,
    iter_clips,
    main,
    save_frame_strip,
)
from isa4d.geometry import project_points
from isa4d.render import render_meshes

pytest.importorskip("pybullet_data", reason="the DeepMimic clips ship with pybullet")

SMALL = {"size": 64, "frames": 9, "persons": (1, 2)}


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return BodyModel("procedural")


@pytest.fixture(scope="module")
def clips() -> dict:
    """One tiny clip of each kind, shared by the tests."""
    return {
        "video": generate_clip("video", 0, **SMALL),
        "camera": generate_clip("camera", 0, **SMALL),
        "mask": generate_clip("mask", 1, **SMALL),
        "orbit": generate_clip("camera", 2, trajectory="orbit", **SMALL),
        "two": generate_clip("train", 0, size=96, frames=9, persons=2),
    }


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.float64))


def _joints_uv(body: BodyModel, smpl, camera) -> tuple[np.ndarray, np.ndarray]:
    """Projected GT joints `(P, T, 24, 2)` and their depths, from the GT SMPL and cameras."""
    joints = body(
        torch.from_numpy(smpl.global_orient),
        torch.from_numpy(smpl.body_pose),
        torch.from_numpy(smpl.betas)[:, None],
        torch.from_numpy(smpl.transl),
    ).joints.double()
    uv, depth = project_points(joints, _tensor(camera.K), _tensor(camera.R), _tensor(camera.t))
    return uv.numpy(), depth.numpy()


# ---------------------------------------------------------------------------------------------- ground truth


@pytest.mark.parametrize("name", ["video", "camera", "mask", "orbit", "two"])
def test_projected_joints_land_on_their_person(clips, body, name):
    clip = clips[name]
    uv, depth = _joints_uv(body, clip.smpl, clip.camera)
    H, W = clip.video.shape[1:3]
    hits = total = 0
    for person in range(clip.smpl.num_persons):
        for frame in range(clip.meta.num_frames):
            pixel = np.round(uv[person, frame]).astype(int)
            inside = (pixel[:, 0] >= 0) & (pixel[:, 0] < W) & (pixel[:, 1] >= 0) & (pixel[:, 1] < H)
            inside &= depth[person, frame] > 0
            labels = clip.mask[frame][pixel[inside, 1], pixel[inside, 0]]
            # the person itself, or another person in front of it
            hits += int(((labels == person + 1) | ((labels > 0) & (labels != person + 1))).sum())
            own = labels == person + 1
            assert own.sum() >= 0.5 * inside.sum() or inside.sum() < 4
            total += int(inside.sum())
    assert total >= 24 * clip.meta.num_frames // 2  # most joints are in view
    assert hits >= 0.9 * total


def test_mask_split_rerenders_from_the_ground_truth(clips):
    """The video (black background) is the GT bodies rendered with the GT camera and the recorded look."""
    clip = clips["mask"]
    extra = clip.meta.extra
    colors = [random_appearance(person["appearance_seed"]).vertex_colors for person in extra["persons"]]
    vertices = BodyModel("procedural")(
        torch.from_numpy(clip.smpl.global_orient),
        torch.from_numpy(clip.smpl.body_pose),
        torch.from_numpy(clip.smpl.betas)[:, None],
        torch.from_numpy(clip.smpl.transl),
    ).vertices.double()
    faces = procedural_body_data()["f"]
    light, ambient = np.array(extra["light"]["direction"]), extra["light"]["ambient"]
    for frame in (0, clip.meta.num_frames - 1):
        out = render_meshes(
            [(vertices[p, frame], faces) for p in range(len(colors))],
            colors,
            clip.camera.K[frame],
            clip.camera.R[frame],
            clip.camera.t[frame],
            clip.video.shape[1:3],
            light=light,
            ambient=ambient,
        )
        assert np.mean(out["mask"] + 1 == clip.mask[frame]) > 0.995
        close = np.abs(out["rgb"].astype(int) - clip.video[frame].astype(int)).max(axis=-1) <= 2
        assert close.mean() > 0.99


def test_clip_is_valid_and_round_trips_through_shards(clips, tmp_path):
    clip = clips["camera"]
    assert validate_clip(clip) == []
    manifest = write_shards([clip], tmp_path, "camera", 8, 1e9, progress=False)
    assert manifest["splits"]["camera"]["members"]["ref.png"] == 1
    [decoded] = list(
        wds.WebDataset([str(p) for p in shard_paths(tmp_path, "camera")], shardshuffle=False).map(
            decode_sample
        )
    )
    assert decoded.key == clip.key
    assert decoded.meta.extra == json.loads(json.dumps(clip.meta.extra))
    assert np.array_equal(decoded.mask, clip.mask)
    assert np.array_equal(decoded.reference.image, clip.reference.image)
    for name in ("global_orient", "body_pose", "betas", "transl"):
        assert np.array_equal(getattr(decoded.smpl, name), getattr(clip.smpl, name))
        assert np.array_equal(getattr(decoded.reference.smpl, name), getattr(clip.reference.smpl, name))
    for name in ("K", "R", "t", "image_size"):
        assert np.array_equal(getattr(decoded.camera, name), getattr(clip.camera, name))
    error = np.abs(decoded.video.astype(float) - clip.video.astype(float))
    assert 10 * math.log10(255**2 / np.mean(error**2)) > 24  # H.264 on tiny, detailed frames


def test_clip_contents(clips):
    clip = clips["two"]
    T, H, W = 9, 96, 96
    assert clip.video.shape == (T, H, W, 3) and clip.background.shape == (T, H, W, 3)
    assert clip.mask.shape == (T, H, W) and clip.mask.dtype == np.uint8
    assert clip.smpl.body_pose.shape == (2, T, 69) and clip.smpl.betas.shape == (2, 10)
    assert clip.reference.smpl.body_pose.shape == (2, 1, 69) and clip.reference.image.shape == (H, W, 3)
    assert set(np.unique(clip.mask)) <= {0, 1, 2}
    assert clip.meta.fps == 30 and clip.meta.source == "isa4d-synth"
    assert np.all(clip.smpl.betas[:, 5:] == 0) and np.any(clip.smpl.betas[:, :5] != 0)
    assert "photos:" in clip.meta.licence and "DeepMimic" in clip.meta.licence
    assert json.dumps(clip.meta.extra)  # JSON-ready


def test_persons_stay_apart():
    for index in range(2):
        clip = generate_clip("train", index, size=32, frames=9, persons=3)
        paths = clip.smpl.transl[:, :, [0, 2]]
        gaps = np.linalg.norm(paths[:, None] - paths[None], axis=-1)[np.triu_indices(3, 1)]
        assert gaps.min() >= MIN_SEPARATION - 1e-4
        assert clip.meta.extra["min_separation_m"] == pytest.approx(gaps.min(), abs=1e-3)


def test_soles_stay_on_the_mean_bodys_level():
    data = procedural_body_data()
    betas = np.random.default_rng(0).normal(0, 1, size=(3, 10))
    betas[:, 5:] = 0
    rest = data["v_template"][None] + np.einsum("vck,pk->pvc", data["shapedirs"], betas)
    lowest = rest[..., 1].min(axis=1) + _sole_shift(betas)
    assert np.allclose(lowest, data["v_template"][:, 1].min(), atol=1e-5)


# ------------------------------------------------------------------------------------------------ determinism


def _assert_same(a, b):
    assert a.key == b.key and a.meta.to_dict() == b.meta.to_dict()
    for name in ("video", "mask", "background"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.reference.image, b.reference.image)
    for name in ("global_orient", "body_pose", "betas", "transl"):
        assert np.array_equal(getattr(a.smpl, name), getattr(b.smpl, name))
    assert np.array_equal(a.camera.R, b.camera.R) and np.array_equal(a.camera.t, b.camera.t)


def test_same_seed_same_clip_other_seed_other_clip(clips):
    _assert_same(generate_clip("camera", 0, **SMALL), clips["camera"])
    other = generate_clip("camera", 0, seed=1, **SMALL)
    assert not np.array_equal(other.video, clips["camera"].video)
    assert (
        not np.array_equal(other.smpl.betas, clips["camera"].smpl.betas)
        or other.smpl.num_persons != clips["camera"].smpl.num_persons
    )
    assert generate_clip("camera", 1, **SMALL).key != clips["camera"].key


@pytest.mark.slow  # starting the two "spawn" workers (torch imports) takes ~5-10 s
def test_parallel_generation_equals_serial():
    settings = {"seed": 3, "size": 32, "frames": 5, "persons": (1, 2)}
    serial = list(iter_clips("train", 2, start=1, workers=1, **settings))
    parallel = list(iter_clips("train", 2, start=1, workers=2, **settings))
    assert [clip.key for clip in parallel] == ["synth3-train-000001", "synth3-train-000002"]
    for a, b in zip(serial, parallel, strict=True):
        _assert_same(a, b)
    _assert_same(generate_clip("train", 2, **settings), serial[1])  # any clip regenerates alone


# ------------------------------------------------------------------------------------------------ splits


def test_video_split_has_a_static_camera(clips):
    camera = clips["video"].camera
    assert np.all(camera.R == camera.R[0]) and np.all(camera.t == camera.t[0])
    assert clips["video"].meta.extra["mode"] == "video"
    background = clips["video"].background
    assert np.all(background == background[0])  # static camera, static scene
    assert background.std() > 10  # a photo, not a flat colour


def test_camera_split_cameras_move(clips):
    for index in range(3):
        clip = clips["camera"] if index == 0 else generate_clip("camera", index, size=32, frames=5, persons=1)
        centres = -np.einsum("tji,tj->ti", clip.camera.R, clip.camera.t)
        moved = np.linalg.norm(centres - centres[0], axis=-1).max()
        turned = np.abs(clip.camera.R - clip.camera.R[0]).max()
        assert moved > 1e-3 or turned > 1e-3, clip.meta.extra["camera"]


def test_mask_split_is_black_outside_the_people(clips):
    clip = clips["mask"]
    assert clip.meta.extra["mode"] == "mask" and clip.meta.extra["background_kind"] == "black"
    assert np.all(clip.video[clip.mask == 0] == 0)
    assert np.all(clip.background == 0)
    assert (clip.mask > 0).any() and clip.video[clip.mask > 0].max() > 0


@pytest.mark.parametrize("name", ["video", "camera", "mask", "orbit", "two"])
def test_background_equals_the_video_outside_the_mask(clips, name):
    clip = clips[name]
    outside = clip.mask == 0
    assert np.array_equal(clip.video[outside], clip.background[outside])
    assert not np.array_equal(clip.video[~outside], clip.background[~outside])


def test_orbit_background_shows_parallax(clips):
    clip = clips["orbit"]
    assert clip.meta.extra["camera"]["trajectory"] == "orbit"
    first, last = clip.background[0].astype(float), clip.background[-1].astype(float)
    assert np.abs(first - last).mean() > 5  # the room is rendered from each camera, not pasted
    # the floor (bottom rows) and the walls move differently: not one image shift
    shifts = [np.abs(np.roll(first, dx, axis=1) - last)[:, 8:-8].mean() for dx in range(-12, 13)]
    assert min(shifts) > 2


# ------------------------------------------------------------------------------------------------ reference


def test_reference_shows_the_same_persons_in_another_pose_or_view(clips, body):
    for name in ("video", "camera", "mask", "two"):
        clip = clips[name]
        ref = clip.reference
        assert np.array_equal(ref.smpl.betas, clip.smpl.betas)
        persons = clip.meta.extra["persons"]
        assert len(persons) == clip.smpl.num_persons
        assert all(isinstance(person["appearance_seed"], int) for person in persons)
        assert all(person["reference_pose"]["motion"] != person["motion"] for person in persons)
        # another view: the reference camera looks along another direction than every video frame
        cosines = clip.camera.R[:, 2] @ ref.camera.R[0, 2]
        assert cosines.max() < math.cos(math.radians(30))
        # the ref image shows its persons where the ref SMPL + ref camera put them
        uv, _ = _joints_uv(body, ref.smpl, ref.camera)
        pixel = np.round(uv[:, 0, 0]).astype(int)  # pelvis of each person
        H, W = ref.image.shape[:2]
        inside = (pixel[:, 0] >= 0) & (pixel[:, 0] < W) & (pixel[:, 1] >= 0) & (pixel[:, 1] < H)
        assert inside.all()
        if name == "mask":
            assert (ref.image[pixel[:, 1], pixel[:, 0]].max(axis=-1) > 0).all()


def test_reference_rerenders_with_the_recorded_appearance(clips):
    clip = clips["mask"]
    extra, ref = clip.meta.extra, clip.reference
    colors = [random_appearance(person["appearance_seed"]).vertex_colors for person in extra["persons"]]
    vertices = BodyModel("procedural")(
        torch.from_numpy(ref.smpl.global_orient),
        torch.from_numpy(ref.smpl.body_pose),
        torch.from_numpy(ref.smpl.betas)[:, None],
        torch.from_numpy(ref.smpl.transl),
    ).vertices.double()
    faces = procedural_body_data()["f"]
    out = render_meshes(
        [(vertices[p, 0], faces) for p in range(len(colors))],
        colors,
        ref.camera.K[0],
        ref.camera.R[0],
        ref.camera.t[0],
        ref.image.shape[:2],
        light=np.array(extra["light"]["direction"]),
        ambient=extra["light"]["ambient"],
    )
    close = np.abs(out["rgb"].astype(int) - ref.image.astype(int)).max(axis=-1) <= 2
    assert close.mean() > 0.99 and (out["mask"] >= 0).sum() > 20


# ------------------------------------------------------------------------------------------------ appearance


def test_photos_come_from_installed_packages():
    names = available_photos()
    assert {"astronaut", "coffee", "brick"} <= set(names)
    photo = load_photo("coffee")
    assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
    assert set(available_photos("texture")) <= set(names)


def test_appearance_is_seeded_and_per_part():
    labels = body_part_labels()
    assert labels.shape == (7770,) and set(np.unique(labels)) == set(range(len(PART_NAMES)))
    uv = body_uvs()
    assert np.isfinite(uv).all() and uv[:, 0].min() >= 0 and uv[:, 0].max() <= 1
    a, b, c = random_appearance(5), random_appearance(5), random_appearance(6)
    assert np.array_equal(a.vertex_colors, b.vertex_colors) and a.description == b.description
    assert not np.array_equal(a.vertex_colors, c.vertex_colors)
    assert a.vertex_colors.shape == (7770, 3) and 0 <= a.vertex_colors.min() and a.vertex_colors.max() <= 1
    shirt = a.vertex_colors[labels == PART_NAMES.index("torso")]
    shoes = a.vertex_colors[labels == PART_NAMES.index("foot")]
    assert shirt.std(axis=0).max() > 0  # textured, not flat
    assert not np.allclose(shirt.mean(axis=0), shoes.mean(axis=0))


# ------------------------------------------------------------------------------------------------ datasets


def test_generate_dataset_writes_every_split_and_refuses_to_overwrite(tmp_path):
    counts = {"train": 2, "video": 1, "mask": 1, "camera": 0}
    settings = {"size": 32, "frames": 5, "persons": 1, "workers": 1, "progress": False}
    manifest = generate_dataset(tmp_path, counts, **settings)
    assert set(manifest["splits"]) == {"train", "video", "mask"}
    assert manifest["splits"]["train"]["num_samples"] == 2
    assert manifest["splits"]["video"]["members"]["background.mp4"] == 1
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path, {"video": 1}, **settings)
    generate_dataset(tmp_path, {"video": 1}, overwrite=True, **settings)
    assert read_manifest(tmp_path)["splits"]["train"]["num_samples"] == 2


def test_hydra_task(tmp_path, capsys):
    cfg = compose(
        "synth",
        [
            f"output_dir={tmp_path / 'synth'}",
            "counts={train: 1, video: 0, camera: 1, mask: 0}",
            "size=[32, 48]",
            "frames=5",
            "persons=1",
            "workers=1",
        ],
    )
    assert cfg.task_name == "synth" and cfg.counts.train == 1
    main(cfg)
    manifest = read_manifest(tmp_path / "synth")
    assert manifest["splits"]["camera"]["resolutions"] == {"32x48": 1}
    assert "wrote 1 'train' clip(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(cfg)


def test_default_config_values():
    cfg = compose("synth")
    assert cfg.size == 256 and cfg.frames == 33 and list(cfg.persons) == [1, 3] and cfg.workers == 2
    assert cfg.output_dir.endswith("shards/synth")


def test_frame_strip(clips, tmp_path):
    path = save_frame_strip(clips["two"], tmp_path / "strip.png", frames=(0, 4, 8, 40), tile=48, palette=True)
    with Image.open(path) as image:
        width, height = image.size
    assert width == 4 * 48 + 3 * 2  # 3 frames + the reference
    assert height == 3 * (48 + 12 + 2)  # video, mask, background rows
    assert len(io.BytesIO(path.read_bytes()).getvalue()) < 300_000
