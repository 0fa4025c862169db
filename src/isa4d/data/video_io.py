"""Encoding and decoding the videos of a shard sample with PyAV (see docs/data.md, "Videos").

RGB videos are H.264 (`libx264`, yuv420p, constant rate factor), tagged BT.601 limited range, which is
also the matrix used to convert RGB to YUV and back, so frames survive a round trip up to codec loss.
Where the PyAV build lacks `libx264`, `mpeg4` (Part 2, fixed quantiser) is used instead. yuv420p needs
an even height and width: odd sizes are refused, never padded (padding would change `image_size` and `K`).

Decoding is strict: a bitstream error raises (`err_detect=explode`) instead of being concealed, and
the container's frame count can be checked against the sample's. (Half of all single-bit flips in an
H.264 stream still decode without any error: shard members are also checked by SHA-256, see format.py.)

Person masks are label maps `(T, H, W)` uint8 stored losslessly: H.264 in its lossless mode (`qp=0`)
on a grey (luma-only) picture, or FFV1 where `libx264` is missing. They are read back from the luma
plane without any colour conversion, so labels come back exactly.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path

import av
import numpy as np

DEFAULT_CRF = 18
"""Constant rate factor of RGB videos (libx264: 0 lossless .. 51 worst; 18 is visually lossless)."""
DEFAULT_PRESET = "medium"
"""libx264 speed/size preset (`ultrafast` .. `veryslow`)."""

VideoSource = bytes | str | Path
"""An encoded video: its bytes, or a path to a file PyAV can read."""

_RGB_PIX_FMT = "yuv420p"
_COLORSPACE_BT601 = 6  # AVCOL_SPC_SMPTE170M: BT.601 matrix
_COLOR_RANGE_LIMITED = 1  # AVCOL_RANGE_MPEG


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says, read without decoding frames.

    Attributes:
        num_frames: frame count from the container (0 where the container does not store it).
        height: frame height in pixels.
        width: frame width in pixels.
        fps: average frame rate (0.0 where unknown).
    """

    num_frames: int
    height: int
    width: int
    fps: float


def _available(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
    except av.codec.codec.UnknownCodecError:
        return False
    return True


@cache
def rgb_codec() -> str:
    """The encoder used for RGB videos: `libx264`, else `mpeg4`."""
    return "libx264" if _available("libx264") else "mpeg4"


@cache
def mask_codec() -> str:
    """The lossless encoder used for label-map videos: `libx264` (qp=0), else `ffv1`."""
    return "libx264" if _available("libx264") else "ffv1"


def odd_size_problem(height: int, width: int) -> str | None:
    """Why an RGB video of this size cannot be stored, or None if it can (yuv420p needs even sizes)."""
    if height % 2 or width % 2:
        return (
            f"height x width {height}x{width} must both be even for H.264 yuv420p; "
            "crop or pad the frames (and shift K's principal point accordingly)"
        )
    return None


def _encode(
    frames: np.ndarray,
    fps: float,
    codec: str,
    pix_fmt: str,
    options: dict[str, str],
    to_frame: Callable[[np.ndarray], av.VideoFrame],
    configure: Callable[[av.video.stream.VideoStream], None] = lambda stream: None,
) -> bytes:
    buffer = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.codec_context.time_base = 1 / rate
        configure(stream)
        for index, array in enumerate(frames):
            frame = to_frame(np.ascontiguousarray(array))
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def encode_video(
    frames: np.ndarray, fps: float, crf: int = DEFAULT_CRF, preset: str = DEFAULT_PRESET
) -> bytes:
    """Encode RGB frames as an mp4 (H.264 yuv420p, or MPEG-4 Part 2 without libx264).

    Args:
        frames: `(T, H, W, 3)` uint8 RGB, T >= 1, H and W even.
        fps: frame rate written to the container.
        crf: libx264 constant rate factor; without libx264, the fixed quantiser `clip(crf // 6 + 1, 1, 31)`.
        preset: libx264 preset (ignored by the fallback).

    Returns:
        The mp4 file's bytes.

    Raises:
        ValueError: on a wrong shape or dtype, an empty video or an odd height or width.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"expected (T>=1, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    problem = odd_size_problem(*frames.shape[1:3])
    if problem:
        raise ValueError(problem)
    codec = rgb_codec()
    if codec == "libx264":
        options = {"crf": str(crf), "preset": preset}
    else:  # a fixed quantiser: qmin = qmax
        options = dict.fromkeys(("qmin", "qmax"), str(int(np.clip(crf // 6 + 1, 1, 31))))

    def configure(stream: av.video.stream.VideoStream) -> None:
        stream.codec_context.colorspace = _COLORSPACE_BT601
        stream.codec_context.color_range = _COLOR_RANGE_LIMITED

    def to_frame(rgb: np.ndarray) -> av.VideoFrame:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        return frame.reformat(format=_RGB_PIX_FMT, dst_colorspace="ITU601")

    return _encode(frames, fps, codec, _RGB_PIX_FMT, options, to_frame, configure)


def encode_mask_video(labels: np.ndarray, fps: float) -> bytes:
    """Encode a label map losslessly as an mp4 (any height and width).

    Args:
        labels: `(T, H, W)` uint8, T >= 1.
        fps: frame rate written to the container.

    Returns:
        The mp4 file's bytes; :func:`read_mask_video` returns `labels` exactly.
    """
    if labels.ndim != 3 or labels.dtype != np.uint8 or len(labels) == 0:
        raise ValueError(f"expected (T>=1, H, W) uint8 labels, got {labels.shape} {labels.dtype}")
    codec = mask_codec()
    options = {"qp": "0", "preset": "medium"} if codec == "libx264" else {}
    return _encode(labels, fps, codec, "gray", options, lambda gray: av.VideoFrame.from_ndarray(gray, "gray"))


def _open(src: VideoSource) -> av.container.InputContainer:
    return av.open(io.BytesIO(src) if isinstance(src, bytes) else str(src), mode="r")


def video_info(src: VideoSource) -> VideoInfo:
    """Read frame count, size and frame rate from a video's header (no decoding)."""
    with _open(src) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(stream.frames, stream.height, stream.width, float(rate) if rate else 0.0)


def _decode(
    src: VideoSource,
    frame_indices: Sequence[int] | None,
    convert: Callable[[av.VideoFrame], np.ndarray],
    channels: tuple[int, ...],
    num_frames: int | None,
) -> np.ndarray:
    """Decode strictly: a bitstream error raises instead of being concealed; the container's frame count
    (where it lists one) must be `num_frames` (where given)."""
    wanted = None if frame_indices is None else set(frame_indices)
    if wanted is not None and any(index < 0 for index in wanted):
        raise IndexError(f"frame indices must be >= 0, got {sorted(wanted)}")
    last = max(wanted, default=-1) if wanted is not None else None
    decoded: dict[int, np.ndarray] = {}
    with _open(src) as container:
        stream = container.streams.video[0]
        listed = stream.frames  # 0 where the container does not say
        if num_frames is not None and listed and listed != num_frames:
            raise ValueError(f"the container lists {listed} frames, but the sample has {num_frames}")
        stream.codec_context.options = {"err_detect": "explode"}
        size = (stream.height, stream.width, *channels)
        count = 0
        for count, frame in enumerate(container.decode(stream), start=1):
            index = count - 1
            if wanted is None or index in wanted:
                decoded[index] = convert(frame)
            if last is not None and index >= last:
                break
    order = range(count) if frame_indices is None else list(frame_indices)
    missing = sorted(set(order) - decoded.keys())
    if missing:
        raise IndexError(f"frame indices {missing} are out of range: the video has {count} frames")
    if not order:
        return np.empty((0, *size), np.uint8)
    return np.stack([decoded[index] for index in order])


def read_video(
    src: VideoSource, frame_indices: Sequence[int] | None = None, num_frames: int | None = None
) -> np.ndarray:
    """Decode RGB frames, strictly (a corrupt stream raises rather than decoding to garbage).

    Frames are decoded in order up to the last one asked for; only those asked for are converted to RGB.
    Decoder errors raise (`err_detect=explode`) instead of being concealed.

    Args:
        src: mp4 bytes or a path to any video PyAV reads.
        frame_indices: frames to return, in this order (repeats allowed); None for all.
        num_frames: the frame count the video must have (e.g. its sample's `meta.json`); checked against
            the container's count without decoding. None: not checked.

    Returns:
        `(N, H, W, 3)` uint8.

    Raises:
        IndexError: if an index is negative or beyond the last frame.
        ValueError: if the container lists another frame count than `num_frames`.
        av.FFmpegError: on a decoder error (a corrupt stream).
    """
    return _decode(src, frame_indices, lambda frame: frame.to_ndarray(format="rgb24"), (3,), num_frames)


def _luma(frame: av.VideoFrame) -> np.ndarray:
    fmt = frame.format
    if fmt.is_rgb or fmt.components[0].bits != 8:
        raise ValueError(f"a label-map video must be 8-bit grey or YUV, got pixel format {fmt.name}")
    plane = frame.planes[0]
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width].copy()


def read_mask_video(
    src: VideoSource, frame_indices: Sequence[int] | None = None, num_frames: int | None = None
) -> np.ndarray:
    """Decode a label-map video's luma plane (exact for lossless grey/YUV videos), strictly.

    Args:
        src: mp4 bytes or a path to any 8-bit grey or YUV video PyAV reads.
        frame_indices, num_frames: as for :func:`read_video`.

    Returns:
        `(N, H, W)` uint8.
    """
    return _decode(src, frame_indices, _luma, (), num_frames)
