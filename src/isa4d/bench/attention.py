"""Cost of ISA against full spatio-temporal attention: DiT training-step time, peak memory and FLOPs over
clip length and resolution (`make bench`).

    python -m isa4d.bench.attention                                   # CPU-affordable default grid
    python -m isa4d.bench.attention --widths small --frames 17 33 97 --resolutions 256 512 --device cuda
    python -m isa4d.bench.attention --variants cross_pair full --max-step-s 60 --time-budget 3600

Variants (`VARIANTS`) of the same DiT (`build_dit(width)`, `use_canonical=False` as in
conf/model/dit_tiny.yaml): `cross_pair` and `joint` (ISA, factorised spatial + temporal attention of the
2-D tokens), `full` (`attention_2d="full"`: one full spatio-temporal attention block over all T'·S 2-D
tokens in place of the spatial + temporal pair; cross_pair ISA, the same 3-D branch), `no_3d`
(`branch_3d=False`: what the 3-D branch costs is `cross_pair - no_3d`) and `cross_pair_p1` /
`full_p1` (`point_frames_per_latent=1`: 3-D tokens on one video frame per latent frame instead of four).

Method (docs/dit.md, "Attention cost"): every (width, frames, resolution) cell runs in a fresh
subprocess with all its variants (`run_worker`: memory runs one after the other, timed steps round the
variants): batch 1, one person of `--num-points` body
points, a clip of `frames` frames at `resolution`² (latent `resolution/8`, patch 2, so
`T'·(resolution/16)²` 2-D tokens), random conditions; a step is `model(x_t, t, cond)`, the mean squared
velocity, backward (`zero_grad` before).

* Time: the best (`step_s`, the least disturbed by other jobs on a shared machine) and the median of
  `--repeats` steps after the first (which is the memory run), taken in turns with the other variants
  of the cell; CUDA steps are synchronised.
* Peak memory, CPU: the resident-set high-water mark (`VmHWM`, reset through `/proc/self/clear_refs`
  as in `isa4d.bench.vae`) minus the resident set before the first step, after freed heap memory went
  back to the OS (`malloc_trim`): what one forward + backward adds on top of the weights and inputs
  (activations, gradients, allocator slack). Not tracemalloc (torch's allocations bypass it). CUDA:
  `torch.cuda.max_memory_allocated()` minus the memory allocated before the first step (tensors only).
* FLOPs (`analytic_flops`): matmul, convolution and attention FLOPs counted from the shapes, the way
  `torch.utils.flop_counter` counts them (2 per multiply-add; attention `4·L_q·L_k·D` forward, 2.5×
  that backward; a linear's backward 2× its forward, 1× where its input needs no gradient), for every
  cell of the grid, measured or not, and for the paper's training shape (`PAPER_SHAPE`: `paper4b`, 97
  frames, 512²). Tested equal to `FlopCounterMode` per module (tests/test_attention_bench.py).
* A cell is skipped (and listed with the reason) when its estimated step time exceeds `--max-step-s`:
  analytic FLOPs / the best throughput measured so far at its width (before any, a fraction of the
  measured matmul peak), or when the run would pass `--time-budget`.

Reported: per cell and variant the best step time, peak memory and analytic FLOPs, the ratios to
`full`, the 3-D branch's share (`1 - no_3d / cross_pair`, in time and in FLOPs), the slope of log(time)
and log(FLOPs) against log(2-D tokens) per width and variant (least squares), and per clip length the
2-D token count where ISA becomes cheaper than full attention (log-log interpolation between grid
cells). Results go to `<out>/attention.json` and `<out>/attention.md` (atomic writes).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from isa4d.bench import check_clip_frames, run_or_work
from isa4d.bench.vae import _reset_peak_rss, _rss_kib
from isa4d.models.dit import (
    DiTConditions,
    build_dit,
    frame_padding,
    num_latent_frames_for,
    point_frame_slice,
)
from isa4d.utils.files import write_json_atomic, write_text_atomic

VARIANTS: dict[str, dict[str, Any]] = {
    "cross_pair": {"isa_mode": "cross_pair"},
    "joint": {"isa_mode": "joint"},
    "full": {"attention_2d": "full"},
    "no_3d": {"branch_3d": False},
    "cross_pair_p1": {"point_frames_per_latent": 1},
    "full_p1": {"attention_2d": "full", "point_frames_per_latent": 1},
}
"""Overrides of `build_dit(width, use_canonical=False)` per variant."""
ISA_VARIANTS = ("cross_pair", "joint")
WIDTHS = ("tiny", "small", "base", "paper4b")
DEFAULT_FRAMES = (17, 33, 49, 97, 193)
DEFAULT_RESOLUTIONS = (64, 128, 256, 512)
PAPER_SHAPE = {"width": "paper4b", "frames": 97, "resolution": 512}
"""The paper's training shape at the paper's width, where the goal is ISA ≤ 0.5× the full-attention step."""
LATENT_FACTOR = 8
CAMERA_CHANNELS = 24  # Plücker: 6 channels × 4 frames per latent frame
FREQUENCY_DIM = 256  # TimestepEmbedder's table
ASSUMED_PEAK_FRACTION = 0.25  # throughput guess (of the matmul peak) before a width/variant is measured
WORKER_START_S = 4.0  # interpreter + import + model build, for the time estimates

# ---------------------------------------------------------------------------------------- analytic FLOPs


def model_config(width: str, variant: str) -> dict[str, Any]:
    """The `ISADiT.config` of a width and variant (built on the meta device: no memory)."""
    with torch.device("meta"):
        return build_dit(width, use_canonical=False, **VARIANTS[variant]).config


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def analytic_flops(
    config: Mapping[str, Any],
    frames: int,
    resolution: int | tuple[int, int],
    batch: int = 1,
    persons: int = 1,
    num_points: int = 256,
) -> dict[str, tuple[int, int]]:
    """FLOPs of one DiT forward and of forward + backward, per module, from the shapes alone.

    Counted like `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention; not
    element-wise ops nor the few 4×4 camera matmuls of the geometry): a linear `2·n·in·out` forward and
    2× that backward (1× when its input needs no gradient: the embedders of data), attention
    `4·L_q·L_k·D` per sequence forward and 2.5× that backward.

    Args:
        config: `ISADiT.config` (ISA models, the 2-D baselines without control, `ref_mode="concat"`).
        frames: Video frames of a clip, `T = 1 + 4k`.
        resolution: Video H = W (or (H, W)), a multiple of 8 · patch size.
        batch: B.
        persons: P.
        num_points: N body points per person.

    Returns:
        `{module path (as FlopCounterMode names it, without "ISADiT."): (forward, forward + backward)}`.
    """
    if config["control"] is not None or config["ref_mode"] != "concat":
        raise ValueError("analytic_flops covers ref_mode='concat' without a control video")
    H, W = (resolution, resolution) if isinstance(resolution, int) else resolution
    C, p, D = config["latent_channels"], config["patch_size"], config["hidden_size"]
    F = int(D * config["mlp_ratio"])
    Tl = num_latent_frames_for(frames)
    h, w = H // LATENT_FACTOR, W // LATENT_FACTOR
    S = (h // p) * (w // p)
    n2 = batch * Tl * S
    k = config["point_frames_per_latent"]
    kept, _ = point_frame_slice(frame_padding(frames, Tl), k)
    T3 = len(range(frames)[kept])
    M = persons * num_points
    n3 = batch * T3 * M
    G = k * M  # grouped 3-D keys per latent frame (with padding slots)
    flops: dict[str, list[int]] = {}

    def add(name: str, forward: int, backward_factor: float) -> None:
        entry = flops.setdefault(name, [0, 0])
        entry[0] += forward
        entry[1] += forward + int(forward * backward_factor)

    def linear(name: str, n: int, fan_in: int, fan_out: int, input_grad: bool = True) -> None:
        add(name, 2 * n * fan_in * fan_out, 2.0 if input_grad else 1.0)

    def attend(name: str, sequences: int, queries: int, keys: int) -> None:
        add(name, 4 * sequences * queries * keys * D, 2.5)

    def axis_block(name: str, n: int, sequences: int, length: int) -> None:
        linear(name, batch, D, 6 * D)
        for fan_in, fan_out in ((D, 3 * D), (D, D), (D, F), (F, D)):
            linear(name, n, fan_in, fan_out)
        attend(name, sequences, length, length)

    linear("t_embedder", batch, FREQUENCY_DIM, D, input_grad=False)
    linear("t_embedder", batch, D, D)
    linear("x_embedder", n2, p * p * C * 3, D, input_grad=False)
    linear("camera_embedder", n2, p * p * CAMERA_CHANNELS, D, input_grad=False)
    branch_3d = config["branch_3d"]
    if branch_3d:
        point_dim = 3 * (1 + 2 * config["point_bands"])
        linear("point_encoder", n3, point_dim, D, input_grad=False)
        linear("point_encoder", n3, D, D)
        if config["use_canonical"]:
            linear("point_encoder", num_points, point_dim, D, input_grad=False)
            linear("point_encoder", num_points, D, D)
        add("ref_sampler", 2 * batch * h * w * C * D, 1.0)
    identity_tokens = 0
    encoder = _image_encoder_flops(config["image_encoder"], batch, add)
    if encoder is not None:
        identity_tokens, embed_dim = encoder
        linear("identity_proj", batch * identity_tokens, embed_dim, D)
    linear("final_layer", batch, D, 2 * D)
    linear("final_layer", n2, D, p * p * C)

    def isa_block(name: str, last: bool) -> None:
        """The ISA block, split into its 3-D side (`<name>.3d`) and its 2-D side (`<name>.2d`)."""
        joint = config["isa_mode"] == "joint"
        if config["use_ispe"]:
            pe_dim = 3 * (1 + 2 * config["ispe_bands"])
            linear(f"{name}.3d", n3, pe_dim, D, input_grad=False)
            linear(f"{name}.2d", S, pe_dim, D, input_grad=False)
        linear(f"{name}.3d", batch, D, (2 if last else 6) * D)
        linear(f"{name}.3d", n3, D, (2 if last else 3) * D)
        linear(f"{name}.2d", batch, D, 6 * D)
        linear(f"{name}.2d", n2, D, (1 if last and not joint else 3) * D)
        for fan_in, fan_out in ((D, D), (D, F), (F, D)):
            linear(f"{name}.2d", n2, fan_in, fan_out)
            if not last:
                linear(f"{name}.3d", n3, fan_in, fan_out)
        attend(f"{name}.2d", batch * Tl, S, G + S if joint else G)
        if not last:
            attend(f"{name}.3d", batch * Tl, G, G + S if joint else S)

    depth = config["depth"]
    for i in range(depth):
        prefix = f"layers.{i}"
        if config["attention_2d"] == "full":
            axis_block(f"{prefix}.spatio_temporal", n2, batch, Tl * S)
        else:
            axis_block(f"{prefix}.spatial", n2, batch * Tl, S)
            axis_block(f"{prefix}.temporal", n2, batch * S, Tl)
        if branch_3d:
            axis_block(f"{prefix}.point_temporal", n3, batch * M, T3)
            isa_block(f"{prefix}.isa", last=i == depth - 1)
        else:
            axis_block(f"{prefix}.isa_2d", n2, batch * Tl, S)
        cross = f"{prefix}.cross"
        linear(cross, batch, D, 3 * D)
        linear(cross, n2, D, D)
        linear(cross, batch * Tl * (S + identity_tokens), D, 2 * D)
        linear(cross, n2, D, D)
        attend(cross, batch * Tl, S, S + identity_tokens)
    return {name: (f, t) for name, (f, t) in flops.items()}


def _image_encoder_flops(
    spec: Any, batch: int, add: Callable[[str, int, float], None]
) -> tuple[int, int] | None:
    """Add the small image encoder's convolutions (its input is resized to `input_size`, so they do not
    depend on the video size); returns (tokens, embed_dim), or None without an encoder."""
    if spec is None:
        return None
    from isa4d.models.dit import SmallImageEncoder, build_image_encoder

    with torch.device("meta"):
        encoder = build_image_encoder(spec)
    if not isinstance(encoder, SmallImageEncoder):
        raise ValueError(f"analytic_flops counts the small image encoder only, got {type(encoder).__name__}")
    size = encoder.input_size
    first = True
    for conv in (m for m in encoder.net if isinstance(m, torch.nn.Conv2d)):
        size = _conv_out(size, conv.kernel_size[0], conv.stride[0], conv.padding[0])
        forward = 2 * batch * size * size * conv.out_channels * conv.in_channels * conv.kernel_size[0] ** 2
        add("image_encoder", forward, 1.0 if first else 2.0)
        first = False
    return encoder.num_tokens, encoder.embed_dim


def flop_parts(flops: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """Training FLOPs (forward + backward) of `analytic_flops` grouped by what they serve: the 2-D
    self-attention blocks, the 3-D branch (point encoder, reference sampler, point-temporal blocks and the
    ISA block's 3-D side), the ISA block's 2-D side, the cross-attention and the rest (embeddings, final
    layer), and the total."""
    parts = dict.fromkeys(("2d_attention", "3d_branch", "isa_2d", "cross", "rest"), 0)
    for name, (_, train) in flops.items():
        block = name.split(".")[2] if name.startswith("layers.") else name
        if block in ("spatial", "temporal", "spatio_temporal"):
            part = "2d_attention"
        elif block in ("point_temporal", "point_encoder", "ref_sampler") or name.endswith(".3d"):
            part = "3d_branch"
        elif block in ("isa", "isa_2d"):
            part = "isa_2d"
        else:
            part = "cross" if block == "cross" else "rest"
        parts[part] += train
    parts["total"] = sum(parts.values())
    return parts


def grid_shape(frames: int, resolution: int, persons: int, num_points: int) -> dict[str, int]:
    """Token counts of a clip: 2-D tokens `T'·S` (patch 2) and 3-D tokens `T·P·N` (all four frames)."""
    patch_grid = resolution // (2 * LATENT_FACTOR)
    return {
        "latent_frames": num_latent_frames_for(frames),
        "tokens_2d": num_latent_frames_for(frames) * patch_grid**2,
        "tokens_3d": frames * persons * num_points,
    }


# ------------------------------------------------------------------------------------------------ worker


def synthetic_conditions(
    frames: int,
    resolution: int,
    persons: int,
    num_points: int,
    batch: int = 1,
    latent_channels: int = 16,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> DiTConditions:
    """Random but valid conditions: `persons` boxes of points (the box is the canonical pose) walking in
    front of a slowly orbiting camera (fov 50°), the reference = frame 0, random reference and background
    latents."""
    from isa4d.geometry import intrinsics_from_fov, look_at

    g = torch.Generator().manual_seed(seed)
    h = resolution // LATENT_FACTOR
    Tl = num_latent_frames_for(frames)
    box = (torch.rand(num_points, 3, generator=g) - 0.5) * torch.tensor([0.5, 1.7, 0.3])
    offsets = torch.zeros(batch, persons, 1, 1, 3)
    offsets[..., 0] = torch.linspace(-0.6, 0.6, persons)[:, None, None]
    walk = 0.02 * torch.randn(batch, persons, frames, 1, 3, generator=g).cumsum(dim=2)
    points = box + offsets + walk
    azimuth = torch.linspace(0.0, 0.4, frames).expand(batch, frames)
    eye = torch.stack([3.5 * azimuth.sin(), torch.full_like(azimuth, 0.3), 3.5 * azimuth.cos()], dim=-1)
    R, t = look_at(eye, torch.zeros_like(eye))
    K = intrinsics_from_fov(torch.full((batch, frames), 50.0), (resolution, resolution))
    cond = DiTConditions(
        ref_latent=torch.randn(batch, latent_channels, 1, h, h, generator=g),
        points=points,
        person_mask=torch.ones(batch, persons, dtype=torch.bool),
        K=K,
        R=R,
        t=t,
        image_size=(resolution, resolution),
        ref_points=points[:, :, 0],
        ref_K=K[:, 0],
        ref_R=R[:, 0],
        ref_t=t[:, 0],
        ref_image=torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1,
        canonical_points=box,
        background_latent=torch.randn(batch, latent_channels, Tl, h, h, generator=g),
    )
    return cond.to(device)


def _release_freed_memory() -> None:
    """Return freed heap memory to the OS (glibc `malloc_trim`), so the next variant's resident-set growth
    is its own; a no-op where glibc is absent."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def prepare_variant(
    spec: Mapping[str, Any], variant: str, device: torch.device
) -> tuple[dict[str, Any], Callable[[], float]]:
    """Build one variant's model and inputs and run its first training step, measuring its peak memory.

    Returns:
        The result so far (parameters, first step, peak memory) and a function running one more step
        (returns its seconds).
    """
    model = build_dit(spec["width"], use_canonical=False, **VARIANTS[variant]).to(device).train()
    if spec.get("compile"):
        model.compile_blocks()  # inductor compiles on the first step, which is then not a timed one
    frames, resolution = spec["frames"], spec["resolution"]
    cond = synthetic_conditions(frames, resolution, spec["persons"], spec["num_points"], device=device)
    h = resolution // LATENT_FACTOR
    x_t = torch.randn(1, model.latent_channels, num_latent_frames_for(frames), h, h, device=device)
    t = torch.rand(1, device=device)
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["dtype"] == "bf16")

    def step() -> float:
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = model(x_t, t, cond).float().square().mean()
        loss.backward()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        first = step()
        peak_bytes, method = torch.cuda.max_memory_allocated(device) - base, "cuda.max_memory_allocated"
    else:
        _release_freed_memory()
        before = _rss_kib("VmRSS") or 0
        reset = _reset_peak_rss()
        first = step()
        if reset:
            peak_bytes, method = ((_rss_kib("VmHWM") or 0) - before) * 1024, "VmHWM reset via clear_refs"
        else:
            peak_bytes, method = None, "unavailable (/proc/self/clear_refs not writable)"
    result = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "first_step_s": first,
        "peak_mib": None if peak_bytes is None else peak_bytes / 2**20,
        "memory_method": method,
    }
    return result, step


def run_worker(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The variants of one cell in one process (one start-up): `{variant: result}`, `{"error": ...}` for a
    variant that failed.

    Each variant is warmed up on a 1-frame 16² clip (library code loaded on first use is not counted as
    memory; not with `compile`, which would compile for that shape too), then built and its first step
    measured for memory; the `repeats` timed steps then go round the variants (A B C, A B C, …), so a
    burst of load from other jobs hits them alike. `step_s` is the best of a variant's timed steps (the
    least disturbed), `median_s` their median.
    """
    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    if not spec.get("compile"):  # a compiled warm-up would compile for another shape
        for variant in spec["variants"]:
            prepare_variant({**spec, "frames": 1, "resolution": 2 * LATENT_FACTOR}, variant, device)
    results, steps = {}, {}
    for variant in spec["variants"]:
        try:
            results[variant], steps[variant] = prepare_variant(spec, variant, device)
            results[variant]["times_s"] = []
        except (RuntimeError, MemoryError) as error:  # e.g. out of memory: the other variants still run
            message = str(error).partition("\n")[0]
            results[variant] = {"error": f"{type(error).__name__}: {message}"}
    for _ in range(spec["repeats"]):
        for variant, step in steps.items():
            results[variant]["times_s"].append(step())
    for variant in steps:
        times = results[variant]["times_s"]
        results[variant].update(step_s=min(times), median_s=statistics.median(times))
    return results


def measure(spec: Mapping[str, Any], timeout: float) -> dict[str, dict[str, Any]]:
    """Run one cell's variants in a fresh interpreter; each variant `{"error": ...}` if it fails or the
    process times out."""
    command = [sys.executable, "-m", "isa4d.bench.attention", "--worker", json.dumps(dict(spec))]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return dict.fromkeys(spec["variants"], {"error": f"timed out after {timeout:g} s"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return dict.fromkeys(spec["variants"], {"error": f"exit {done.returncode}: " + " | ".join(tail)})
    return json.loads(lines[-1])


def matmul_peak(size: int = 1024, repeats: int = 5) -> float:
    """Best fp32 `torch.matmul` throughput of `repeats` size² products, FLOP/s (for the time estimates)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


# ------------------------------------------------------------------------------------------------ summary


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> dict[str, float] | None:
    """Least-squares slope of log y against log x (and its R²); None with fewer than two distinct x."""
    if len(set(x)) < 2:
        return None
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    sxy = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True))
    syy = sum((b - my) ** 2 for b in ly)
    slope = sxy / sxx
    return {"slope": slope, "r2": 1.0 if syy == 0 else sxy * sxy / (sxx * syy), "points": len(lx)}


def crossover(tokens: Sequence[float], ratios: Sequence[float]) -> dict[str, Any]:
    """Where `ratio = ISA / full` falls below 1 along increasing 2-D token counts.

    Returns `{"kind": "always" | "never" | "crossing", "tokens": ...}`: "crossing" interpolates log ratio
    linearly in log tokens between the last cell with ratio ≥ 1 and the next one.
    """
    pairs = sorted(zip(tokens, ratios, strict=True))
    if all(r < 1 for _, r in pairs):
        return {"kind": "always", "tokens": None}
    last = max(i for i, (_, r) in enumerate(pairs) if r >= 1)
    if last == len(pairs) - 1:
        return {"kind": "never", "tokens": None}
    (x0, r0), (x1, r1) = pairs[last], pairs[last + 1]
    if r0 == r1:
        return {"kind": "crossing", "tokens": x1}
    f = math.log(r0) / (math.log(r0) - math.log(r1))
    return {"kind": "crossing", "tokens": math.exp(math.log(x0) + f * (math.log(x1) - math.log(x0)))}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def summarize(analytic: Sequence[Mapping[str, Any]], measured: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Ratios to `full`, the 3-D branch's share, log-log slopes and ISA/full crossovers, measured and
    analytic (`analytic` rows: one per width and cell with every variant's training FLOPs; `measured`
    rows: one per width, cell and variant with `step_s` when measured)."""
    times: dict[tuple[str, int, int], dict[str, float]] = {}
    for row in measured:
        if row.get("step_s") is not None:
            times.setdefault((row["width"], row["frames"], row["resolution"]), {})[row["variant"]] = row[
                "step_s"
            ]
    tokens = {(r["width"], r["frames"], r["resolution"]): r["tokens_2d"] for r in analytic}
    cells = []
    for key, by_variant in sorted(times.items()):
        cell = {"width": key[0], "frames": key[1], "resolution": key[2], "tokens_2d": tokens[key]}
        for variant in VARIANTS:
            if variant != "full":
                cell[f"{variant}/full"] = _ratio(by_variant.get(variant), by_variant.get("full"))
        no_3d, isa = by_variant.get("no_3d"), by_variant.get("cross_pair")
        cell["share_3d"] = None if no_3d is None or not isa else 1 - no_3d / isa
        cell["cross_pair_p1/cross_pair"] = _ratio(by_variant.get("cross_pair_p1"), isa)
        cells.append(cell)
    flops = {
        (r["width"], r["frames"], r["resolution"]): {v: x["train_flops"] for v, x in r["variants"].items()}
        for r in analytic
    }
    slopes: dict[str, dict[str, Any]] = {}
    for source, table in (("measured", times), ("analytic", flops)):
        for width in sorted({key[0] for key in table}):
            for variant in VARIANTS:
                keys = [key for key in table if key[0] == width and variant in table[key]]
                fit = loglog_slope([tokens[key] for key in keys], [table[key][variant] for key in keys])
                if fit is not None:
                    slopes.setdefault(source, {}).setdefault(width, {})[variant] = fit
    crossovers = []
    for source, table in (("measured", times), ("analytic", flops)):
        for width, frames in sorted({key[:2] for key in table}):
            for variant in ISA_VARIANTS:
                keys = [k for k in table if k[:2] == (width, frames) and {variant, "full"} <= table[k].keys()]
                if len(keys) < 1:
                    continue
                found = crossover(
                    [tokens[k] for k in keys], [table[k][variant] / table[k]["full"] for k in keys]
                )
                crossovers.append(
                    {"source": source, "width": width, "frames": frames, "variant": variant, **found}
                )
    return {"cells": cells, "slopes": slopes, "crossovers": crossovers}


def analytic_row(
    width: str, frames: int, resolution: int, persons: int, num_points: int, configs: Mapping[str, Any]
) -> dict[str, Any]:
    """Every variant's training FLOPs (and their parts) of one width and cell, with the ratios to full."""
    variants = {}
    for variant in VARIANTS:
        parts = flop_parts(
            analytic_flops(
                configs[width, variant], frames, resolution, persons=persons, num_points=num_points
            )
        )
        variants[variant] = {"train_flops": parts["total"], "parts": parts}
    full = variants["full"]["train_flops"]
    return {
        "width": width,
        "frames": frames,
        "resolution": resolution,
        **grid_shape(frames, resolution, persons, num_points),
        "variants": variants,
        "ratio_to_full": {v: x["train_flops"] / full for v, x in variants.items()},
        "share_3d": variants["cross_pair"]["parts"]["3d_branch"] / variants["cross_pair"]["train_flops"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Analytic FLOPs of the whole grid, then the affordable cells measured; writes the reports."""
    from isa4d.bench.steps import git_state

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    started, load_start = time.monotonic(), os.getloadavg()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)  # as the workers will run
    peak = matmul_peak() if device == "cpu" else None
    torch.set_num_threads(threads)
    configs = {(w, v): model_config(w, v) for w in WIDTHS for v in VARIANTS}
    grid_frames = sorted(set(DEFAULT_FRAMES) | set(args.frames))
    grid_resolutions = sorted(set(DEFAULT_RESOLUTIONS) | set(args.resolutions))
    analytic = [
        analytic_row(w, f, r, args.persons, args.num_points, configs)
        for w in WIDTHS
        for f in grid_frames
        for r in grid_resolutions
    ]
    paper = next(
        r for r in analytic if (r["width"], r["frames"], r["resolution"]) == tuple(PAPER_SHAPE.values())
    )

    flops = {(r["width"], r["frames"], r["resolution"]): r for r in analytic}
    cells = sorted(
        ((w, f, r) for w in args.widths for f in args.frames for r in args.resolutions),
        key=lambda key: (args.widths.index(key[0]), flops[key]["variants"]["cross_pair"]["train_flops"]),
    )
    rates: dict[str, float] = {}  # the best training FLOP/s measured so far per width
    overhead = WORKER_START_S  # per cell: interpreter start-up and model builds (updated as measured)
    measured: list[dict[str, Any]] = []
    for width, frames, resolution in cells:
        rows = {}
        for variant in args.variants:
            train_flops = flops[width, frames, resolution]["variants"][variant]["train_flops"]
            rate = rates.get(width, ASSUMED_PEAK_FRACTION * peak if peak else None)
            estimate = train_flops / rate if rate else None
            rows[variant] = row = {
                "width": width,
                "frames": frames,
                "resolution": resolution,
                "variant": variant,
                "train_flops": train_flops,
                "estimated_step_s": estimate,
            }
            if estimate is not None and estimate > args.max_step_s:
                row["skipped"] = f"estimated step {estimate:.0f} s > --max-step-s {args.max_step_s:g}"
        run_variants = [v for v, row in rows.items() if "skipped" not in row]
        cost = overhead + sum((1 + args.repeats) * (rows[v]["estimated_step_s"] or 0) for v in run_variants)
        elapsed = time.monotonic() - started
        if run_variants and elapsed + cost > args.time_budget:
            for variant in run_variants:
                rows[variant]["skipped"] = (
                    f"the cell (~{cost:.0f} s) would pass --time-budget {args.time_budget:g} s "
                    f"({elapsed:.0f} s used)"
                )
        elif run_variants:
            print(f"{width} T={frames} {resolution}²: {', '.join(run_variants)} ...", flush=True)
            spec = {
                "width": width,
                "variants": run_variants,
                "frames": frames,
                "resolution": resolution,
                "persons": args.persons,
                "num_points": args.num_points,
                "device": device,
                "dtype": args.dtype,
                "repeats": args.repeats,
                "threads": args.threads,
                "compile": args.compile,
            }
            start = time.monotonic()
            results = measure(spec, args.cell_timeout)
            stepped = 0.0
            for variant, result in results.items():
                rows[variant].update(result)
                if result.get("step_s"):
                    achieved = rows[variant]["train_flops"] / result["step_s"]
                    rows[variant]["achieved_gflops"] = achieved / 1e9
                    rates[width] = max(rates.get(width, 0.0), achieved)
                    stepped += result["first_step_s"] + sum(result["times_s"])
            if all("error" not in r for r in results.values()):
                overhead = max(WORKER_START_S, time.monotonic() - start - stepped)
        measured.extend(rows.values())

    report = {
        "setup": {
            "device": device,
            "device_name": torch.cuda.get_device_name(device)
            if device.startswith("cuda")
            else platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads or torch.get_num_threads(),
            "dtype": args.dtype,
            "compile": args.compile,
            "batch": 1,
            "persons": args.persons,
            "num_points": args.num_points,
            "repeats": args.repeats,
            "max_step_s": args.max_step_s,
            "time_budget_s": args.time_budget,
            "matmul_peak_gflops": peak / 1e9 if peak else None,
            "memory_method": ", ".join(
                sorted({r["memory_method"] for r in measured if r.get("memory_method")})
            )
            or "-",
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "wall_s": round(time.monotonic() - started, 1),
            "torch": torch.__version__,
            "git": git_state(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(["python -m isa4d.bench.attention", *sys.argv[1:]]),
        },
        "variants": VARIANTS,
        "paper_shape": paper,
        "measured": measured,
        "analytic": analytic,
        "summary": summarize(analytic, measured),
    }
    out = Path(args.out)
    write_json_atomic(out / "attention.json", report)
    write_text_atomic(out / "attention.md", markdown(report))
    print(markdown(report))
    return report


# ------------------------------------------------------------------------------------------------ report


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return [f"| {' | '.join(header)} |", f"| {' | '.join(align)} |", *(f"| {' | '.join(r)} |" for r in rows)]


def markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown: paper shape, measured cells, slopes, crossovers, the analytic grid."""
    s, paper = report["setup"], report["paper_shape"]
    measured_variants = list(dict.fromkeys(r["variant"] for r in report["measured"]))
    compiled = ", compiled layers" if s.get("compile") else ""
    lines = [
        "# Attention cost: ISA against full spatio-temporal attention",
        "",
        f"Machine: {s['cpu_count']} CPU cores ({s['device_name']}), device {s['device']}, "
        f"{s['threads']} torch threads, {s['dtype']}{compiled}; load average {s['loadavg_start']} at the "
        f"start, {s['loadavg_end']} at the end (a shared machine: other jobs ran at the same time, so the "
        f"measured times are noisy; the ratios are of one run). {s['date']}, {s['wall_s']:.0f} s.",
        "",
        f"Command: `{s['command']}` (git {s['git']}, torch {s['torch']}).",
        "",
        'Method (`python -m isa4d.bench.attention --help`, docs/dit.md, "Attention cost"): one DiT '
        f"training step (forward, mean squared velocity, backward), batch 1, {s['persons']} person(s) of "
        f"{s['num_points']} body points, `use_canonical=False`; one process per cell; time = the best of "
        f"{s['repeats']} steps after the first, taken in turns across the cell's variants; peak memory = "
        f"{s['memory_method']}: the extra resident memory of the first step over weights and inputs. FLOPs "
        "are analytic (`analytic_flops`, equal to `FlopCounterMode` per module): forward + backward "
        "matmul, convolution and attention FLOPs. `full` = the cross_pair model with one full "
        "spatio-temporal attention block in place of the spatial + temporal pair; `no_3d` = no 3-D "
        "branch (1 - its time / cross_pair's = the 3-D branch's share); `_p1` = 3-D tokens on one video "
        "frame per latent frame (`point_frames_per_latent=1`) instead of four.",
        "",
        "## The paper's training shape (analytic)",
        "",
        f"`{paper['width']}`, {paper['frames']} frames at {paper['resolution']}² "
        f"({paper['latent_frames']} latent frames, {paper['tokens_2d']:,} 2-D tokens; {s['persons']} "
        f"person(s) of {s['num_points']} points: {paper['tokens_3d']:,} 3-D tokens). Goal: ISA ≤ 0.5× "
        "the full-attention step.",
        "",
    ]
    rows = []
    for variant, x in paper["variants"].items():
        parts = x["parts"]
        rows.append(
            [
                f"`{variant}`",
                _fmt(x["train_flops"] / 1e12, ".1f"),
                _fmt(paper["ratio_to_full"][variant], ".3f"),
                *(
                    _fmt(100 * parts[k] / parts["total"], ".1f")
                    for k in ("2d_attention", "3d_branch", "isa_2d", "cross")
                ),
            ]
        )
    lines += _table(
        [
            "variant",
            "train TFLOP / step",
            "÷ full",
            "2-D attention %",
            "3-D branch %",
            "ISA 2-D side %",
            "cross-attn %",
        ],
        rows,
    )
    ratios = paper["ratio_to_full"]
    lines += [
        "",
        "ISA ÷ full at the paper shape: "
        + ", ".join(
            f"`{v}` {ratios[v]:.3f} ({'meets' if ratios[v] <= 0.5 else 'misses'} the 0.5 goal)"
            for v in ("cross_pair", "joint", "cross_pair_p1")
        )
        + "; with 3-D tokens on one frame per latent frame in both, `cross_pair_p1` ÷ `full_p1` = "
        f"{ratios['cross_pair_p1'] / ratios['full_p1']:.3f}.",
        "",
        "## Measured cells",
        "",
    ]
    times: dict[tuple, dict[str, Mapping[str, Any]]] = {}
    for row in report["measured"]:
        times.setdefault((row["width"], row["frames"], row["resolution"]), {})[row["variant"]] = row
    analytic = {(r["width"], r["frames"], r["resolution"]): r for r in report["analytic"]}
    summary = {(c["width"], c["frames"], c["resolution"]): c for c in report["summary"]["cells"]}
    rows, memory_rows = [], []
    for key, by_variant in times.items():
        if not any(row.get("step_s") for row in by_variant.values()):
            continue
        a, c = analytic[key], summary.get(key, {})
        shape = [key[0], str(key[1]), f"{key[2]}²", f"{a['tokens_2d']:,}", f"{a['tokens_3d']:,}"]
        step = [
            _fmt(by_variant[v].get("step_s") and 1000 * by_variant[v]["step_s"], ".0f")
            for v in measured_variants
        ]
        ratios = [
            f"{_fmt(c.get(f'{v}/full'))} ({a['ratio_to_full'][v]:.2f})"
            for v in ISA_VARIANTS
            if v in measured_variants
        ]
        rows.append(
            [
                *shape,
                *step,
                *ratios,
                _fmt(c.get("share_3d") and 100 * c["share_3d"], ".0f") + f" ({100 * a['share_3d']:.0f})",
                f"{_fmt(c.get('cross_pair_p1/cross_pair'))} "
                f"({a['ratio_to_full']['cross_pair_p1'] / a['ratio_to_full']['cross_pair']:.2f})",
            ]
        )
        memory_rows.append([*shape, *(_fmt(by_variant[v].get("peak_mib"), ".0f") for v in measured_variants)])
    lines += _table(
        [
            "width",
            "T",
            "res",
            "2-D tokens",
            "3-D tokens",
            *(f"{v} ms" for v in measured_variants),
            *(f"{v} ÷ full (analytic)" for v in ISA_VARIANTS if v in measured_variants),
            "3-D share % (analytic)",
            "cross_pair_p1 ÷ cross_pair (analytic)",
        ],
        rows,
        right_from=1,
    )
    lines += ["", "Peak memory of the first step (MiB):", ""]
    lines += _table(
        ["width", "T", "res", "2-D tokens", "3-D tokens", *(f"{v} MiB" for v in measured_variants)],
        memory_rows,
    )
    lines += ["", "## Slopes: log(step time) and log(training FLOPs) against log(2-D tokens)", ""]
    rows = []
    slopes = report["summary"]["slopes"]
    for width in (w for w in WIDTHS if any(w in slopes.get(source, {}) for source in slopes)):
        for variant in VARIANTS:
            fits = [slopes.get(source, {}).get(width, {}).get(variant) for source in ("measured", "analytic")]
            if any(fits):
                rows.append(
                    [
                        width,
                        f"`{variant}`",
                        *(
                            f"{f['slope']:.2f} (R² {f['r2']:.2f}, {f['points']} cells)" if f else "-"
                            for f in fits
                        ),
                    ]
                )
    lines += _table(["width", "variant", "measured", "analytic (whole grid)"], rows, right_from=2)
    lines += [
        "",
        "## Crossover: the 2-D token count from which ISA is cheaper than full attention",
        "",
        "Per clip length, along the resolutions (log-log interpolation); `always` = cheaper in every cell of "
        "the row, `never` = in none.",
        "",
    ]
    rows = [
        [
            c["source"],
            c["width"],
            str(c["frames"]),
            f"`{c['variant']}`",
            c["kind"] if c["tokens"] is None else f"{c['tokens']:,.0f}",
        ]
        for c in report["summary"]["crossovers"]
    ]
    lines += _table(["source", "width", "T", "variant", "crossover (2-D tokens)"], rows, right_from=4)
    lines += ["", "## Analytic training FLOPs of the whole grid (GFLOP per step)", ""]
    rows = []
    for a in report["analytic"]:
        v = a["variants"]
        rows.append(
            [
                a["width"],
                str(a["frames"]),
                f"{a['resolution']}²",
                f"{a['tokens_2d']:,}",
                f"{a['tokens_3d']:,}",
                *(
                    _fmt(v[name]["train_flops"] / 1e9, ".4g")
                    for name in ("cross_pair", "joint", "full", "cross_pair_p1")
                ),
                *(_fmt(a["ratio_to_full"][name], ".3f") for name in ("cross_pair", "joint", "cross_pair_p1")),
                _fmt(100 * a["share_3d"], ".0f"),
            ]
        )
    lines += _table(
        [
            "width",
            "T",
            "res",
            "2-D tokens",
            "3-D tokens",
            "cross_pair",
            "joint",
            "full",
            "cross_pair_p1",
            "cross_pair ÷ full",
            "joint ÷ full",
            "cross_pair_p1 ÷ full",
            "3-D share %",
        ],
        rows,
    )
    skipped = [r for r in report["measured"] if "skipped" in r or "error" in r]
    if skipped:
        lines += ["", "## Cells not measured", ""]
        lines += [
            f"- {r['width']} T={r['frames']} {r['resolution']}² `{r['variant']}` "
            f"({r['train_flops'] / 1e9:.4g} GFLOP): {r.get('skipped') or r.get('error')}"
            for r in skipped
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m isa4d.bench.attention", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--widths", nargs="+", default=["tiny", "small"], choices=WIDTHS, help="measured DiT sizes"
    )
    parser.add_argument(
        "--frames", nargs="+", type=int, default=[17, 33, 49], help="measured clip lengths 1+4k"
    )
    parser.add_argument(
        "--resolutions", nargs="+", type=int, default=[64, 128, 256], help="measured H = W (multiples of 16)"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["cross_pair", "joint", "full", "no_3d", "cross_pair_p1"],
        choices=list(VARIANTS),
        help="measured variants (the analytic tables have all)",
    )
    parser.add_argument("--persons", type=int, default=1, help="P")
    parser.add_argument(
        "--num-points", type=int, default=256, help="N body points per person (conf/model: num_points)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after the first")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every DiT layer (`dit.compile`; the first step, untimed, compiles)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default); 1 by default: on a shared, loaded CPU torch's OpenMP "
        "threads wait on each other and a step took 10-20x longer with 2 threads than with 1",
    )
    parser.add_argument(
        "--max-step-s", type=float, default=15.0, help="skip cells with a longer estimated step"
    )
    parser.add_argument("--time-budget", type=float, default=540.0, help="seconds for the whole run")
    parser.add_argument("--cell-timeout", type=float, default=300.0, help="seconds per measured cell")
    parser.add_argument(
        "--out", default="experiments/bench", help="folder of attention.json and attention.md"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_clip_frames(parser, args.frames)
    for resolution in args.resolutions:
        if resolution <= 0 or resolution % (2 * LATENT_FACTOR):
            parser.error(
                f"--resolutions must be positive multiples of 16 (latent /8, patch 2), got {resolution}"
            )
    if args.persons < 1 or args.num_points < 1 or args.repeats < 1:
        parser.error("--persons, --num-points and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m isa4d.bench.attention`."""
    run_or_work(parse_args(argv), run, run_worker)


if __name__ == "__main__":
    main()
