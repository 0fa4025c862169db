"""The conditions of ISA-DiT (`DiTConditions`) and the video-frame ↔ latent-frame arithmetic.

The causal video VAE maps video frames `{0}, {1..4}, {5..8}, …` to latent frames `0, 1, 2, …`, so a
clip of `T = 1 + 4(T' - 1)` frames has `T'` latent frames. A *window* cut out of a longer latent
sequence that does not start at latent frame 0 has `T = 4 T'` video frames (every latent frame covers
four). Both layouts are described by the number of padding slots in front, `pad = 4 T' - T ∈ {3, 0}`:
pad the video frames with `pad` slots in front and read them four at a time, and latent frame `i` covers
the real frames of slots `4i … 4i + 3`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from isa4d.geometry import project_points

FRAMES_PER_LATENT = 4
"""Video frames per latent frame (the VAE's temporal compression)."""


def frame_padding(num_video_frames: int, num_latent_frames: int) -> int:
    """Padding slots in front of the video frames: 3 for a clip (`T = 4T' - 3`), 0 for a window (`T = 4T'`).

    Raises:
        ValueError: If `T` is neither `4T' - 3` nor `4T'`.
    """
    pad = FRAMES_PER_LATENT * num_latent_frames - num_video_frames
    if num_latent_frames < 1 or pad not in (0, FRAMES_PER_LATENT - 1):
        raise ValueError(
            f"{num_video_frames} video frames do not fit {num_latent_frames} latent frames: need "
            f"T = 4T' - 3 (a clip starting at latent frame 0) or T = 4T' (a window inside a longer video)"
        )
    return pad


def num_latent_frames_for(num_video_frames: int) -> int:
    """T' of T video frames: `(T + 3) / 4` for a clip (T = 1 + 4k), `T / 4` for a window (T = 4k)."""
    if num_video_frames < 1 or num_video_frames % FRAMES_PER_LATENT not in (0, 1):
        raise ValueError(f"{num_video_frames} video frames: need T = 1 + 4k (a clip) or T = 4k (a window)")
    return -(-num_video_frames // FRAMES_PER_LATENT)


def latent_frame_groups(
    num_video_frames: int, num_latent_frames: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """The video frames of each latent frame.

    Args:
        num_video_frames: T.
        num_latent_frames: T'.
        device: Output device.

    Returns:
        (T', 4) int64: row i holds the video frames of latent frame i, -1 for padding slots (only in
        row 0 of a clip: `[-1, -1, -1, 0]`, then `[1, 2, 3, 4]`, …).
    """
    pad = frame_padding(num_video_frames, num_latent_frames)
    slots = torch.arange(FRAMES_PER_LATENT * num_latent_frames, device=device) - pad
    return rearrange(slots.clamp(min=-1), "(n f) -> n f", f=FRAMES_PER_LATENT)


def group_frames(
    x: torch.Tensor, pad: int, replicate: bool = False, frames: int = FRAMES_PER_LATENT
) -> torch.Tensor:
    """Group per-video-frame data by latent frame.

    Args:
        x: (B, T, ...) with T = frames·T' - pad.
        pad: Padding slots in front (`frame_padding`).
        replicate: Fill the padding with copies of frame 0 (else zeros).
        frames: Slots per latent frame: 4, or fewer for 3-D tokens kept on every (4/frames)-th video
            frame only (`ISADiT(point_frames_per_latent=...)`, `point_frame_slice`).

    Returns:
        (B, T', frames, ...).
    """
    if pad:
        first = (
            x[:, :1].expand(-1, pad, *x.shape[2:])
            if replicate
            else x.new_zeros(x.shape[0], pad, *x.shape[2:])
        )
        x = torch.cat([first, x], dim=1)
    return rearrange(x, "b (n f) ... -> b n f ...", f=frames)


def ungroup_frames(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Inverse of `group_frames`: (B, T', f, ...) -> (B, T, ...), padding slots dropped."""
    return rearrange(x, "b n f ... -> b (n f) ...")[:, pad:]


POINT_FRAMES = (1, 2, 4)
"""Admissible video frames per latent frame that carry 3-D tokens (`ISADiT(point_frames_per_latent=...)`)."""


def point_frame_slice(pad: int, frames: int) -> tuple[slice, int]:
    """The video frames whose body points become 3-D tokens when only `frames` of each latent frame's
    four do, and the padding slots in front of them.

    Every (4/frames)-th video frame is kept, aligned to the last frame of each latent frame: frames
    0, 4, 8, … of a clip with `frames=1`, 0, 2, 4, … with 2, all with 4. A window (`slice_conditions`)
    keeps the same video frames as the whole video.

    Args:
        pad: Padding slots in front of the video frames (`frame_padding`, plus 4 per prefix frame).
        frames: 4, 2 or 1.

    Returns:
        The slice of kept video frames and the padding slots in front of them (`pad // (4 / frames)`),
        so the kept frames group as `group_frames(x, pad, frames=frames)`.
    """
    if frames not in POINT_FRAMES:
        raise ValueError(f"point_frames_per_latent must be one of {POINT_FRAMES}, got {frames}")
    stride = FRAMES_PER_LATENT // frames
    return slice((-pad - 1) % stride, None, stride), pad // stride


def video_frame_range(
    latent_start: int, latent_stop: int, pad: int = FRAMES_PER_LATENT - 1
) -> tuple[int, int]:
    """The video frames `[start, stop)` covered by latent frames `[latent_start, latent_stop)`.

    Args:
        latent_start: First latent frame.
        latent_stop: One past the last latent frame.
        pad: Padding of the sequence the indices refer to (3 for a clip, 0 for a window).

    Returns:
        `(max(0, 4a - pad), 4b - pad)`; e.g. latent frames [0, 6) of a clip are video frames [0, 21),
        latent frames [4, 10) are video frames [13, 37).
    """
    if not 0 <= latent_start < latent_stop:
        raise ValueError(f"bad latent range [{latent_start}, {latent_stop})")
    return max(0, FRAMES_PER_LATENT * latent_start - pad), FRAMES_PER_LATENT * latent_stop - pad


@dataclass
class DiTConditions:
    """Everything ISA-DiT is conditioned on besides the noisy latent and the time.

    Cameras follow docs/conventions.md (OpenCV, world-to-camera `X_cam = R X + t`, K in pixels of an
    `image_size` image). `T` video frames go with `T'` latent frames, `T = 4T' - 3` for a clip or
    `T = 4T'` for a window cut from a longer video (`slice_conditions`).

    Attributes:
        ref_latent: (B, C, 1, h, w) normalised VAE latent of the reference image, at the video latent's
            size (resize the reference image to the video size and its K with `resize_intrinsics`).
        points: (B, P, T, N, 3) body surface points in world coordinates (metres), per person and frame:
            `SurfaceSampler(body_vertices)` of the posed SMPL mesh.
        person_mask: (B, P) bool, True for real persons. Padded persons (False) may hold anything
            (NaN included); they never affect any output.
        K: (B, T, 3, 3) intrinsics of each video frame, in pixels of an `image_size` image.
        R: (B, T, 3, 3) world-to-camera rotations.
        t: (B, T, 3) world-to-camera translations.
        image_size: (H, W) of the video frames that `K` refers to.
        ref_points: (B, P, N, 3) the same surface points on the reference frame's body, world coordinates.
        ref_K: (B, 3, 3) intrinsics of the reference image (in pixels of `ref_image_size`).
        ref_R: (B, 3, 3) world-to-camera rotation of the reference camera.
        ref_t: (B, 3) world-to-camera translation of the reference camera.
        ref_image: (B, 3, H_r, W_r) the reference image in [-1, 1] for the global image encoder; needed
            when the model has one, ignored otherwise.
        canonical_points: (N, 3) the points on the rest-pose body (`SurfaceSampler.canonical_points`);
            needed when the model has `use_canonical=True`.
        background_latent: (B, C, T', h, w) normalised VAE latent of the background video, or None
            (zeros: no background composition). Samples without a background hold zeros.
        ref_image_size: (H_r, W_r) that `ref_K` refers to; None means `image_size`.
        control_latent: (B, C, T', h, w) normalised VAE latent of the rendered body video (normal maps or
            shaded bodies) of the 2-D control baselines (`ISADiT(control=...)`); ignored otherwise.
        drop_ref: (B,) bool, drop the reference (classifier-free guidance): its channel concat becomes
            zeros, the pixel-aligned 3-D features zeros, the global image tokens the learned null tokens.
        drop_smpl: (B,) bool, drop the bodies: every 3-D token is masked out of the interspatial
            attention, so the 2-D tokens see no body (exactly as with `person_mask` all False), and the
            control latent becomes zeros.
        drop_camera: (B,) bool, drop the Plücker camera tokens (replaced by a learned null token). The
            cameras still place the body points in the ISPE; only the explicit camera path is dropped.
    """

    ref_latent: torch.Tensor
    points: torch.Tensor
    person_mask: torch.Tensor
    K: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor
    image_size: tuple[int, int]
    ref_points: torch.Tensor
    ref_K: torch.Tensor
    ref_R: torch.Tensor
    ref_t: torch.Tensor
    ref_image: torch.Tensor | None = None
    canonical_points: torch.Tensor | None = None
    background_latent: torch.Tensor | None = None
    ref_image_size: tuple[int, int] | None = None
    control_latent: torch.Tensor | None = None
    drop_ref: torch.Tensor | None = None
    drop_smpl: torch.Tensor | None = None
    drop_camera: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.points.shape[0]

    @property
    def num_persons(self) -> int:
        return self.points.shape[1]

    @property
    def num_frames(self) -> int:
        """T, the number of video frames."""
        return self.points.shape[2]

    @property
    def num_points(self) -> int:
        return self.points.shape[3]

    def drop_flags(self, name: str) -> torch.Tensor:
        """The (B,) bool drop flags of `"ref"`, `"smpl"` or `"camera"` (all False when unset)."""
        flags = getattr(self, f"drop_{name}")
        if flags is None:
            return torch.zeros(self.batch_size, dtype=torch.bool, device=self.points.device)
        return flags.to(device=self.points.device, dtype=torch.bool).expand(self.batch_size)

    def with_drops(
        self,
        ref: bool | torch.Tensor | None = None,
        smpl: bool | torch.Tensor | None = None,
        camera: bool | torch.Tensor | None = None,
    ) -> DiTConditions:
        """A copy with drop flags replaced (a bool for the whole batch or (B,) flags; None keeps them)."""
        changes = {}
        for name, value in (("ref", ref), ("smpl", smpl), ("camera", camera)):
            if value is not None:
                flags = torch.as_tensor(value, dtype=torch.bool, device=self.points.device)
                changes[f"drop_{name}"] = flags.expand(self.batch_size).clone()
        return dataclasses.replace(self, **changes)

    def unconditional(self, drops: tuple[str, ...] = ("ref", "smpl", "camera")) -> DiTConditions:
        """A copy with the named conditions dropped for every sample (the CFG unconditional pass)."""
        return self.with_drops(**{name: True for name in drops})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DiTConditions:
        """Move every tensor to `device`; floating tensors are also cast to `dtype` when given."""
        changes = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, torch.Tensor):
                cast = dtype if dtype is not None and value.is_floating_point() else None
                changes[item.name] = value.to(device=device, dtype=cast)
        return dataclasses.replace(self, **changes)

    def validate(self, latent: torch.Tensor | None = None) -> None:
        """Check shapes (metadata only, no device synchronisation).

        Args:
            latent: The noisy latent (B, C, T', h, w) the conditions go with, if known.

        Raises:
            ValueError: Naming the first field with a wrong shape.
        """
        B, P, T, N = self.points.shape[:4]
        expected = {
            "points": (B, P, T, N, 3),
            "person_mask": (B, P),
            "K": (B, T, 3, 3),
            "R": (B, T, 3, 3),
            "t": (B, T, 3),
            "ref_points": (B, P, N, 3),
            "ref_K": (B, 3, 3),
            "ref_R": (B, 3, 3),
            "ref_t": (B, 3),
        }
        if self.canonical_points is not None:
            expected["canonical_points"] = (N, 3)
        if latent is not None:
            _, C, Tl, h, w = latent.shape
            expected["ref_latent"] = (B, C, 1, h, w)
            for name in ("background_latent", "control_latent"):
                if getattr(self, name) is not None:
                    expected[name] = (B, C, Tl, h, w)
            frame_padding(T, Tl)
        for name, shape in expected.items():
            value = getattr(self, name)
            if tuple(value.shape) != shape:
                raise ValueError(f"DiTConditions.{name}: expected shape {shape}, got {tuple(value.shape)}")
        for name in ("drop_ref", "drop_smpl", "drop_camera"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (B,):
                raise ValueError(f"DiTConditions.{name}: expected shape ({B},), got {tuple(value.shape)}")
        if self.ref_image is not None and (self.ref_image.ndim != 4 or self.ref_image.shape[:2] != (B, 3)):
            raise ValueError(
                f"DiTConditions.ref_image: expected (B, 3, H, W), got {tuple(self.ref_image.shape)}"
            )


def slice_conditions(
    cond: DiTConditions, latent_start: int, latent_stop: int, num_latent_frames: int | None = None
) -> DiTConditions:
    """The conditions of latent frames `[latent_start, latent_stop)` of a longer video.

    Per-video-frame fields (points, cameras) are cut to `video_frame_range(latent_start, latent_stop,
    pad)`; the background and control latents to the latent range; the reference and drop flags are
    kept. A window starting at latent frame 0 of a clip is again a clip (`T = 4T' - 3`); any other window
    has every latent frame covering four video frames (`T = 4T'`), which the model reads from the frame
    counts. Each latent frame of the window therefore sees exactly the video frames (and cameras) it has
    in the whole video.

    Args:
        cond: Conditions of the whole video (T video frames).
        latent_start: First latent frame of the window.
        latent_stop: One past its last latent frame.
        num_latent_frames: T' of the whole video; None infers it from T (`num_latent_frames_for`).

    Returns:
        The window's conditions.
    """
    if num_latent_frames is None:
        num_latent_frames = num_latent_frames_for(cond.num_frames)
    if latent_stop > num_latent_frames:
        raise ValueError(f"window [{latent_start}, {latent_stop}) exceeds {num_latent_frames} latent frames")
    pad = frame_padding(cond.num_frames, num_latent_frames)
    start, stop = video_frame_range(latent_start, latent_stop, pad)
    latents = {
        name: None if value is None else value[:, :, latent_start:latent_stop]
        for name, value in (
            ("background_latent", cond.background_latent),
            ("control_latent", cond.control_latent),
        )
    }
    return dataclasses.replace(
        cond,
        points=cond.points[:, :, start:stop],
        K=cond.K[:, start:stop],
        R=cond.R[:, start:stop],
        t=cond.t[:, start:stop],
        **latents,
    )


def person_cells(
    cond: DiTConditions, num_latent_frames: int, latent_size: tuple[int, int], dilation: int = 1
) -> torch.Tensor:
    """The latent cells that show a person: those a real person's body point projects into, in any video
    frame of the latent frame, grown by `dilation` cells (the points are a sample of the surface).

    Args:
        cond: Conditions of T video frames (`points`, `person_mask`, `K`, `R`, `t`, `image_size`).
        num_latent_frames: T' (T = 4T' - 3 for a clip, 4T' for a window).
        latent_size: (h, w) of the latent; a cell covers (H/h, W/w) pixels of `image_size`.
        dilation: Cells added around the hit cells (a (2·dilation+1)² max filter).

    Returns:
        (B, T', h, w) bool.
    """
    B, P, T, N, _ = cond.points.shape
    (h, w), (H, W) = latent_size, cond.image_size
    real = cond.person_mask[:, :, None, None].expand(B, P, T, N)
    points = torch.where(real[..., None], cond.points, torch.zeros_like(cond.points))  # padded may be NaN
    uv, depth = project_points(rearrange(points, "b p t n c -> b t (p n) c"), cond.K, cond.R, cond.t)
    col = torch.floor((uv[..., 0] + 0.5) * (w / W))  # top-left pixel centre at (0, 0)
    row = torch.floor((uv[..., 1] + 0.5) * (h / H))
    inside = (depth > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    hit = rearrange(real, "b p t n -> b t (p n)") & inside
    index = torch.where(hit, row * w + col, torch.zeros_like(col)).long()
    cells = torch.zeros(B, T, h * w, device=points.device)
    cells.scatter_reduce_(2, index, hit.float(), "amax")
    grouped = group_frames(cells, frame_padding(T, num_latent_frames))  # (B, T', 4, h·w), padding slots 0
    cells = rearrange(grouped.amax(dim=2), "b n (h w) -> (b n) 1 h w", h=h)
    if dilation:
        cells = F.max_pool2d(cells, 2 * dilation + 1, stride=1, padding=dilation)
    return rearrange(cells, "(b n) 1 h w -> b n h w", b=B) > 0


def pad_persons(tensors: list[torch.Tensor], num_persons: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-sample person tensors (P_b, ...) into (B, P, ...) with zeros, and the person mask (B, P).

    A convenience for collating samples with different numbers of persons.
    """
    padded, mask = [], []
    for tensor in tensors:
        missing = num_persons - tensor.shape[0]
        if missing < 0:
            raise ValueError(f"{tensor.shape[0]} persons exceed num_persons={num_persons}")
        padded.append(F.pad(tensor, (0, 0) * (tensor.ndim - 1) + (0, missing)))
        mask.append(torch.arange(num_persons, device=tensor.device) < tensor.shape[0])
    return torch.stack(padded), torch.stack(mask)
