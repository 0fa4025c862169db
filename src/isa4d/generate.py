"""`isa4d generate`: a video of the reference persons moving along an SMPL motion, seen by a camera.

Inputs (conf/generate.yaml, docs/generate.md): an ISA-DiT checkpoint; a reference image with its SMPL
and camera (files, or a sample of a shard folder); an SMPL motion (`.npz` in the shard format, or a
bundled mocap clip retargeted on the fly); a camera trajectory (a preset placed around the reference
view, a camera `.npz`, or `clip`: the cameras of the reference's shard sample); optionally a background
video (a file, or `clip`: the reference sample's, the scene the model trained in). Every option, input
file and the output path are checked before the model is loaded (errors: `isa4d.errors`, each naming its
key). Any number of frames: the latent video is sampled in windows (`sample_long`: clean prefix or
overlap-and-blend), decoded by the frozen VAE, and written as an mp4 through a temporary file.

    isa4d generate ckpt_path=logs/train_dit/runs/<run>/checkpoints/last.ckpt motion=walk camera=orbit
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import roma
import torch
import webdataset as wds
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from isa4d.body import rest_joints
from isa4d.callbacks.dit import draw_points, to_device
from isa4d.config import check_output_file, option, option_subset, require_file
from isa4d.data.augment import ClipAugment
from isa4d.data.datamodules import reference_tensors, rgb_tensor
from isa4d.data.format import (
    Cameras,
    Clip,
    Reference,
    SMPLParams,
    decode_camera,
    decode_sample,
    decode_smpl,
)
from isa4d.data.mocap import augment_motion, list_clips, retarget_clip
from isa4d.data.shards import MANIFEST, read_manifest, shard_paths
from isa4d.data.video_io import encode_video, read_video
from isa4d.diffusion import CONDITION_NAMES, STRATEGIES, sample_long
from isa4d.errors import ConfigError, DataError, MissingFileError
from isa4d.geometry import TRAJECTORIES, camera_center, make_trajectory
from isa4d.modules.dit_module import load_dit_module
from isa4d.modules.vae_module import tensor_to_frames
from isa4d.utils.files import atomic_write

log = logging.getLogger(__name__)

Size = tuple[int, int]
CLIP = "clip"
"""`camera` / `background` value: the cameras / background video of the reference's shard sample."""


# ---------------------------------------------------------------------------------------------- inputs


def clip_frames(num_frames: int) -> int:
    """Frames generated for `num_frames`: the smallest `1 + 4k >= num_frames` (the extra ones are cut)."""
    return 1 + 4 * math.ceil((num_frames - 1) / 4)


def check_options(cfg: DictConfig) -> Size:
    """Validate the options, the checkpoint and background paths and the output path (`.mp4`, its folder
    creatable and writable; nothing is created); returns the resolution `(H, W)`.

    Raises:
        ConfigError: a wrong option or output path (the key is named).
        MissingFileError: a checkpoint or background file that does not exist.
    """
    if option(cfg, "num_frames", int) < 1:
        raise ConfigError(f"num_frames must be >= 1, got {cfg.num_frames}")
    if option(cfg, "steps", int) < 1:
        raise ConfigError(f"steps must be >= 1, got {cfg.steps}")
    if option(cfg, "cfg_scale", float) < 0:
        raise ConfigError(f"cfg_scale must be >= 0, got {cfg.cfg_scale}")
    option_subset(cfg, "uncond_drops", CONDITION_NAMES)
    for key in ("shift", "fps", "camera_sweep_deg"):
        option(cfg, key, float)
    option(cfg, "seed", int)
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {STRATEGIES}, got {cfg.strategy!r}")
    window, overlap = option(cfg, "window_frames", int), option(cfg, "overlap_frames", int)
    if window <= 0 or window % 4 or overlap < 0 or overlap % 4 or overlap >= window:
        raise ConfigError(
            f"window_frames ({window}) and overlap_frames ({overlap}) must be multiples of 4 with "
            "0 <= overlap_frames < window_frames"
        )
    size = option(cfg, "resolution", int | list[int])
    size = (size, size) if isinstance(size, int) else tuple(size)
    if len(size) != 2 or any(s <= 0 or s % 8 for s in size):
        raise ConfigError(f"resolution must be a positive multiple of 8 (or [H, W]), got {cfg.resolution}")
    if not cfg.ckpt_path:
        raise ConfigError("ckpt_path is empty: train a DiT first (`make train-dit`) or give ckpt_path=PATH")
    require_file(cfg.ckpt_path, "ckpt_path")
    if cfg.vae_ckpt_path:
        require_file(cfg.vae_ckpt_path, "vae_ckpt_path")
    if cfg.background and cfg.background != CLIP:
        require_file(cfg.background, "background")
    if CLIP in (cfg.camera, cfg.background) and cfg.reference.image:
        raise ConfigError(
            f"camera={cfg.camera} background={cfg.background}: {CLIP!r} takes the scene of the reference's "
            "shard sample, but reference.image is given: use a camera preset or .npz and a background file"
        )
    check_output_file(cfg.output, "output", (".mp4",))
    return size


def load_reference(spec: DictConfig) -> tuple[str, Reference, Clip | None]:
    """The reference frame: `spec.image` with its `smpl`/`camera` npz (default `ref_smpl.npz` /
    `ref_camera.npz` beside the image), or the reference of sample `spec.key` (None: the first) of
    split `spec.split` of the shard folder `spec.shards`. Returns a name for logs, the reference and its
    shard sample (None for an image)."""
    clip = None
    if spec.image:
        image_path = require_file(spec.image, "reference.image")
        smpl = require_file(spec.smpl or image_path.parent / "ref_smpl.npz", "reference.smpl")
        camera = require_file(spec.camera or image_path.parent / "ref_camera.npz", "reference.camera")
        try:
            image = np.asarray(Image.open(image_path).convert("RGB"))
        except OSError as error:
            raise DataError(f"reference.image={image_path} cannot be read as an image ({error})") from error
        reference = Reference(image, decode_smpl(smpl.read_bytes()), decode_camera(camera.read_bytes()))
        name = image_path.name
    else:
        folder = Path(str(spec.shards))
        if not (folder / MANIFEST).is_file():
            raise MissingFileError(
                f"reference.shards={folder} has no {MANIFEST}: run `make data` or give reference.image"
            )
        splits = read_manifest(folder)["splits"]
        if spec.split not in splits:
            raise ConfigError(f"reference.split={spec.split!r} is not in {folder} (it has {sorted(splits)})")
        paths = [str(path) for path in shard_paths(folder, spec.split)]
        raw = next(
            (s for s in wds.WebDataset(paths, shardshuffle=False) if spec.key in (None, s["__key__"])), None
        )
        if raw is None:
            raise ConfigError(f"reference.key={spec.key!r}: no such sample in {folder} split {spec.split!r}")
        clip = decode_sample(raw)
        if clip.reference is None:
            raise DataError(f"sample {clip.key!r} has no reference (ref.png, ref_smpl.npz, ref_camera.npz)")
        reference, name = clip.reference, clip.key
    if reference.smpl.global_orient.shape[1] != 1 or reference.camera.K.shape[0] != 1:
        raise DataError(f"reference {name}: the reference SMPL and camera must hold exactly one frame")
    return name, reference, clip


def _yaw(global_orient: np.ndarray) -> float:
    """Heading (radians about +y) of a body whose root rotation is `global_orient (3,)`: where +z points."""
    forward = roma.rotvec_to_rotmat(torch.as_tensor(global_orient, dtype=torch.float64)) @ torch.tensor(
        [0.0, 0.0, 1.0], dtype=torch.float64
    )
    return math.atan2(float(forward[0]), float(forward[2]))


def load_motion(motion: str, fps: float, num_frames: int, reference: Reference) -> SMPLParams:
    """The SMPL motion of the generated video, `num_frames` frames.

    A `.npz` (shard format `SMPLParams`, P persons, at least `num_frames` frames) is used as it is. A
    mocap clip name (`isa4d.data.mocap.list_clips()`) is retargeted at `fps` and given to every reference
    person: turned to the person's reference heading and started at its reference position, with its
    reference betas.
    """
    if str(motion).endswith(".npz"):
        smpl = decode_smpl(require_file(motion, "motion").read_bytes())
        if smpl.global_orient.shape[1] < num_frames:
            raise ConfigError(
                f"motion={motion} has {smpl.global_orient.shape[1]} frames; {num_frames} are needed"
            )
        return SMPLParams(
            smpl.global_orient[:, :num_frames],
            smpl.body_pose[:, :num_frames],
            smpl.betas,
            smpl.transl[:, :num_frames],
        )
    clips = list_clips()
    if motion not in clips:
        raise ConfigError(f"motion={motion!r} is neither a .npz file nor a mocap clip; clips: {clips}")
    try:
        clip = retarget_clip(motion, fps=fps, num_frames=num_frames)
    except ValueError as error:
        raise ConfigError(f"motion={motion!r}: {error} (ask for fewer frames or a looping clip)") from error
    ref = reference.smpl
    persons = []
    for p in range(ref.num_persons):
        turned = augment_motion(clip, yaw=_yaw(ref.global_orient[p, 0]) - _yaw(clip["global_orient"][0]))
        transl = turned["transl"] - turned["transl"][:1] + ref.transl[p, 0]
        persons.append((turned["global_orient"], turned["body_pose"], transl))
    orient, pose, transl = (np.stack(arrays) for arrays in zip(*persons, strict=True))
    return SMPLParams(orient, pose, ref.betas, transl)


def scaled_intrinsics(K: np.ndarray, src_size: Size, resolution: Size) -> torch.Tensor:
    """Intrinsics `(T, 3, 3)` of `src_size` images after the cover-resize and centre crop to `resolution`."""
    plan = ClipAugment.off().plan(None, num_available=1, src_size=src_size, out_size=resolution, num_frames=1)
    return plan.intrinsics(torch.from_numpy(K).double()).float()


def _fixed_cameras(
    cameras: Cameras, label: str, num_frames: int, resolution: Size
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first `num_frames` cameras of `cameras` (1 frame: held), intrinsics scaled to `resolution`."""
    frames = cameras.K.shape[0]
    if frames != 1 and frames < num_frames:
        raise ConfigError(f"{label} has {frames} frames; 1 or >= {num_frames} are needed")
    index = np.minimum(np.arange(num_frames), frames - 1)
    K = scaled_intrinsics(cameras.K[index], tuple(cameras.image_size), resolution)
    return K, torch.from_numpy(cameras.R[index]), torch.from_numpy(cameras.t[index])


def load_cameras(
    camera: str,
    sweep_deg: float,
    num_frames: int,
    reference: Reference,
    resolution: Size,
    clip: Clip | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame `K (T, 3, 3)`, `R (T, 3, 3)`, `t (T, 3)` for `resolution` images.

    A preset (`isa4d.geometry.TRAJECTORIES`) starts at the reference camera: `static` is the reference
    camera itself; the others look at the reference persons' pelvis centre from the reference camera's
    distance, azimuth and elevation (`orbit` turns `sweep_deg`, `dolly` moves to 0.7x the distance,
    `pan` turns `sweep_deg` in place, `handheld` shakes). A `.npz` (shard `Cameras`, 1 or >= T frames)
    and `clip` (the cameras of the reference's shard sample `clip`) are used as they are. The intrinsics
    are the reference's (presets) or the file's / sample's, scaled to `resolution`.
    """
    if str(camera).endswith(".npz"):
        cameras = decode_camera(require_file(camera, "camera").read_bytes())
        return _fixed_cameras(cameras, f"camera={camera}", num_frames, resolution)
    if camera == CLIP:
        if clip is None:
            raise ConfigError(f"camera={CLIP}: the reference is not a shard sample")
        return _fixed_cameras(clip.camera, f"camera={CLIP} (sample {clip.key})", num_frames, resolution)
    if camera not in TRAJECTORIES:
        raise ConfigError(
            f"camera={camera!r} is neither a .npz file, {CLIP!r} nor a preset {sorted(TRAJECTORIES)}"
        )
    ref_camera: Cameras = reference.camera
    K = scaled_intrinsics(ref_camera.K, tuple(ref_camera.image_size), resolution).expand(num_frames, 3, 3)
    R0, t0 = torch.from_numpy(ref_camera.R[0]).double(), torch.from_numpy(ref_camera.t[0]).double()
    if camera == "static":
        return K, R0.float().expand(num_frames, 3, 3), t0.float().expand(num_frames, 3)
    target = torch.from_numpy(reference.smpl.transl[:, 0].mean(0) + rest_joints()[0]).double()
    offset = camera_center(R0, t0) - target
    distance = float(offset.norm())
    azimuth = math.degrees(math.atan2(float(offset[0]), float(offset[2])))
    elevation = math.degrees(math.asin(float(offset[1]) / distance))
    place = {"target": target.tolist(), "azimuth_deg": azimuth, "elevation_deg": elevation}
    kwargs: dict[str, Any] = {
        "orbit": {
            "target": place["target"],
            "distance": distance,
            "elevation_deg": elevation,
            "start_deg": azimuth,
            "end_deg": azimuth + sweep_deg,
        },
        "dolly": {**place, "start_distance": distance, "end_distance": 0.7 * distance},
        "pan": {**place, "distance": distance, "start_deg": 0.0, "end_deg": sweep_deg},
        "handheld": {**place, "distance": distance},
    }[camera]
    R, t = make_trajectory(camera, num_frames, **kwargs)
    return K, R.float(), t.float()


def load_background(path: str, num_frames: int, resolution: Size, clip: Clip | None = None) -> torch.Tensor:
    """Background video `(3, T, H, W)` in [-1, 1]: its first `num_frames` frames, resized and cropped. `path`
    is a video file or `clip`: the background video of the reference's shard sample `clip`."""
    if path == CLIP:
        if clip is None or clip.background is None:
            what = "the reference is not a shard sample" if clip is None else f"sample {clip.key} has none"
            raise ConfigError(f"background={CLIP}: {what}")
        frames = clip.background
    else:
        frames = read_video(path)
    if len(frames) < num_frames:
        raise ConfigError(f"background={path} has {len(frames)} frames; {num_frames} are needed")
    plan = ClipAugment.off().plan(
        None, num_available=num_frames, src_size=frames.shape[1:3], out_size=resolution, num_frames=num_frames
    )
    return rgb_tensor(plan, frames[plan.source_indices])


def build_batch(cfg: DictConfig, resolution: Size) -> tuple[dict[str, Any], str]:
    """Read and check every input (no model needed): a one-sample batch in the `HumanVideoDataModule`
    layout (without `video`) for `clip_frames(num_frames)` frames, and the reference's name."""
    frames = clip_frames(int(cfg.num_frames))
    name, reference, clip = load_reference(cfg.reference)
    smpl = load_motion(str(cfg.motion), float(cfg.fps), frames, reference)
    K, R, t = load_cameras(str(cfg.camera), float(cfg.camera_sweep_deg), frames, reference, resolution, clip)
    persons = smpl.num_persons
    ref = reference_tensors(reference, resolution, persons)
    sample: dict[str, Any] = {
        "key": f"generate/{name}",
        "smpl": {
            key: torch.from_numpy(getattr(smpl, key))
            for key in ("global_orient", "body_pose", "betas", "transl")
        },
        "person_mask": torch.ones(persons, dtype=torch.bool),
        "K": K,
        "R": R,
        "t": t,
        **ref,
    }
    if cfg.background:
        sample["background"] = load_background(str(cfg.background), frames, resolution, clip)
        sample["has_background"] = torch.tensor(True)
    return _batched(sample), name


def _batched(sample: Any) -> Any:
    if isinstance(sample, torch.Tensor):
        return sample[None]
    if isinstance(sample, dict):
        return {key: _batched(value) for key, value in sample.items()}
    return [sample]


# ---------------------------------------------------------------------------------------------- generation


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def generate(cfg: DictConfig) -> dict[str, Any]:
    """Check the options, inputs and output path, load the model, sample, decode and write the video(s)
    (an existing output file is replaced); returns a summary."""
    resolution = check_options(cfg)
    batch, name = build_batch(cfg, resolution)
    output = Path(str(cfg.output))
    device = _device(str(cfg.device))
    module = load_dit_module(cfg.ckpt_path, cfg.vae_ckpt_path or None, map_location=device)
    batch = to_device(batch, device)
    shape = (1, *module.vae.latent_shape(clip_frames(int(cfg.num_frames)), *resolution))
    generator = torch.Generator().manual_seed(int(cfg.seed))
    noise = torch.randn(*shape, generator=generator).to(device)
    with torch.no_grad(), module.ema_scope():
        cond = module.builder.conditions(batch)
        latents = sample_long(
            module.dit,
            noise,
            cond,
            strategy=cfg.strategy,
            window_frames=int(cfg.window_frames),
            overlap_frames=int(cfg.overlap_frames),
            num_steps=int(cfg.steps),
            shift=float(cfg.shift),
            guidance_scale=float(cfg.cfg_scale),
            uncond_drops=tuple(cfg.uncond_drops),
            progress=True,
        )
        video = tensor_to_frames(module.builder.decode(latents)[0])[: int(cfg.num_frames)]
        points, _ = module.builder.pose(batch["smpl"])
    with atomic_write(output, "wb") as file:
        file.write(encode_video(video, float(cfg.fps)))
    summary = {"output": str(output), "frames": len(video), "reference": name}
    if cfg.overlay:
        n = int(cfg.num_frames)
        drawn = draw_points(
            video, points[0, :, :n], batch["person_mask"][0], cond.K[0, :n], cond.R[0, :n], cond.t[0, :n]
        )
        overlay = output.with_name(f"{output.stem}_smpl.mp4")
        with atomic_write(overlay, "wb") as file:
            file.write(encode_video(np.concatenate([video, drawn], axis=2), float(cfg.fps)))
        summary["overlay"] = str(overlay)
    return summary


def main(cfg: DictConfig) -> None:
    """Hydra task of `isa4d generate` (conf/generate.yaml)."""
    log.debug("generate config:\n%s", OmegaConf.to_yaml(cfg))
    summary = generate(cfg)
    print(f"isa4d generate: {summary['frames']} frames from reference {summary['reference']}")
    print(f"Video: {summary['output']}")
    if "overlay" in summary:
        print(f"SMPL overlay: {summary['overlay']}")


__all__ = [
    "build_batch",
    "check_options",
    "clip_frames",
    "generate",
    "load_cameras",
    "load_motion",
    "load_reference",
    "main",
]
