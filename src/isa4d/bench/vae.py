"""Benchmark of chunked VAE coding: peak memory and frames/s, ours against diffusers' CogVideoX VAE.

    python -m isa4d.bench.vae                                  # tiny, CPU, 64x64, 17/33/97/193 frames
    python -m isa4d.bench.vae --sizes sd3 --resolution 256 --device cuda --dtype bf16

For every size and clip length, the causal VAE of this package (`build_vae(size)`) and diffusers'
`AutoencoderKLCogVideoX` built at the same widths (`block_out_channels`), residual blocks per stage,
GroupNorm groups and 16 latent channels encode one random clip `(1, 3, T, R, R)` to the posterior
mean and decode it again, chunked along time: ours with `chunk_frames` frames / `chunk_frames / 4`
latents per chunk, CogVideoX with its built-in frame batching (8 frames / 2 latents per batch,
spatial tiling off). Results go to `<out>/vae.json` and `<out>/vae.md` (atomic writes), with the
ratios ours / CogVideoX of one run.

Method (docs/train_vae.md, "Benchmark"): each (model, size, T) runs in a fresh subprocess, so no
allocation of one measurement survives into another.

* Peak memory, CPU: the process's resident-set high-water mark (`VmHWM`) is reset by writing `5` to
  `/proc/self/clear_refs` right before the first encode + decode, and the reported value is
  `VmHWM - VmRSS` before that run: the extra resident memory of coding (activations, caches,
  output), excluding the weights and the input. The first run is the measured one, before the
  allocator has kept any freed memory. Where `clear_refs` cannot be written, `ru_maxrss` is used
  (then the peak of building the model may dominate; the JSON says which method was used).
* Peak memory, GPU: `torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()` around the
  first run (tensors only; the caching allocator's reserve is not counted).
* Speed: frames / median wall time of `repeats` further encode + decode runs (after that first one,
  which also warms oneDNN/cuDNN up); GPU runs are synchronised.

diffusers is a benchmark-only dependency, imported lazily; without it the CogVideoX columns say
`missing` and nothing fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from isa4d.bench import check_clip_frames, run_or_work
from isa4d.utils.files import write_json_atomic, write_text_atomic

DEFAULT_FRAMES = (17, 33, 97, 193)
MODELS = ("isa4d", "cogvideox")


# ---------------------------------------------------------------------------------------------- worker


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _build(spec: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """The model and its `code(x)` function: (1, 3, T, H, W) -> reconstruction."""
    import torch

    from isa4d.models.vae import build_vae

    ours = build_vae(spec["size"]).eval()
    config = ours.config
    chunk = spec["chunk_frames"]
    if spec["model"] == "isa4d":
        model = ours

        def code(x: torch.Tensor) -> torch.Tensor:
            z = model.encode(x, chunk_frames=chunk).mode()
            return model.decode(z, chunk_latents=chunk // model.temporal_factor)

        return model, code, {"config": config}
    del ours
    from diffusers import AutoencoderKLCogVideoX

    widths = tuple(config["base_channels"] * m for m in config["channel_mults"])
    model = AutoencoderKLCogVideoX(
        block_out_channels=widths,
        down_block_types=("CogVideoXDownBlock3D",) * len(widths),
        up_block_types=("CogVideoXUpBlock3D",) * len(widths),
        layers_per_block=config["num_res_blocks"],
        latent_channels=config["z_channels"],
        norm_num_groups=config["norm_groups"],
        temporal_compression_ratio=4,
    ).eval()
    model.disable_tiling()

    def code(x: torch.Tensor) -> torch.Tensor:
        z = model.encode(x).latent_dist.mode()
        return model.decode(z).sample

    return model, code, {"block_out_channels": list(widths), "layers_per_block": config["num_res_blocks"]}


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement (in its own process): memory of the first run, then speed."""
    import torch

    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    model, code, details = _build(spec)
    model = model.to(device=device, dtype=dtype)
    size = spec["resolution"]
    x = torch.rand(1, 3, spec["frames"], size, size, device=device, dtype=dtype) * 2 - 1
    cuda = device.type == "cuda"

    def once() -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        with torch.no_grad():
            y = code(x)
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, y

    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        first, y = once()
        peak_bytes, method = torch.cuda.max_memory_allocated(device) - base, "cuda.max_memory_allocated"
    else:
        before = _rss_kib("VmRSS") or 0
        if _reset_peak_rss():
            first, y = once()
            peak_bytes, method = ((_rss_kib("VmHWM") or 0) - before) * 1024, "VmHWM reset via clear_refs"
        else:
            first, y = once()
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak_bytes, method = (maxrss - before) * 1024, "ru_maxrss"
    if tuple(y.shape) != tuple(x.shape):
        raise RuntimeError(f"{spec['model']}: output {tuple(y.shape)} for input {tuple(x.shape)}")
    del y
    times = [once()[0] for _ in range(spec["repeats"])]
    seconds = statistics.median(times)
    return {
        **details,
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_mib": peak_bytes / 2**20,
        "memory_method": method,
        "first_run_s": first,
        "seconds": seconds,
        "frames_per_s": spec["frames"] / seconds,
        "times_s": times,
    }


# ---------------------------------------------------------------------------------------------- driver


def diffusers_version() -> str | None:
    """The installed diffusers version, or None (it is imported in the workers only)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("diffusers")
    except PackageNotFoundError:
        return None


def measure(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one spec in a fresh interpreter; `{"error": ...}` if it fails or times out."""
    command = [sys.executable, "-m", "isa4d.bench.vae", "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def _ratio(ours: dict[str, Any], theirs: dict[str, Any] | None, key: str) -> float | None:
    if not theirs or "error" in ours or "error" in theirs or not theirs.get(key):
        return None
    return ours[key] / theirs[key]


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table."""
    setup = report["setup"]
    lines = [
        "# VAE benchmark: chunked encode + decode",
        "",
        f"{setup['device']} ({setup['device_name']}, {setup['threads']} threads), {setup['dtype']}, "
        f"{setup['resolution']}x{setup['resolution']}, batch 1, ours chunked by {setup['chunk_frames']} "
        f"frames; "
        f"torch {setup['torch']}, "
        f"diffusers {setup['diffusers'] or 'missing'}; {setup['date']}.",
        "Peak memory: extra memory of the first encode + decode beyond weights and input "
        f"({setup['memory_method']}); speed: median of {setup['repeats']} runs after it.",
        "",
        "| size | T | ours frames/s | CogVideoX frames/s | speed ratio | ours peak MiB | CogVideoX peak MiB "
        "| memory ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cell(result: dict[str, Any] | None, key: str, fmt: str) -> str:
        if result is None:
            return "missing"
        return "error" if "error" in result else format(result[key], fmt)

    for row in report["results"]:
        ours, theirs = row["isa4d"], row["cogvideox"]
        speed = "-" if row["speed_ratio"] is None else f"{row['speed_ratio']:.2f}"
        memory = "-" if row["memory_ratio"] is None else f"{row['memory_ratio']:.2f}"
        lines.append(
            f"| {row['size']} | {row['frames']} | {cell(ours, 'frames_per_s', '.1f')} | "
            f"{cell(theirs, 'frames_per_s', '.1f')} | {speed} | {cell(ours, 'peak_mib', '.0f')} | "
            f"{cell(theirs, 'peak_mib', '.0f')} | {memory} |"
        )
    lines += ["", "Ratios are ours / CogVideoX (speed > 1: we are faster; memory < 1: we use less)."]
    errors = [
        f"- {row['size']} T={row['frames']} {name}: {row[name]['error']}"
        for row in report["results"]
        for name in MODELS
        if row[name] is not None and "error" in row[name]
    ]
    return "\n".join(lines + (["", "Errors:", *errors] if errors else [])) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every (size, T) for both models and write the JSON and markdown reports."""
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    version = diffusers_version()
    if version is None:
        print("diffusers is not installed: CogVideoX is reported as missing (pip install diffusers)")
    results = []
    methods = set()
    for size in args.sizes:
        for frames in args.frames:
            spec = {
                "size": size,
                "frames": frames,
                "resolution": args.resolution,
                "chunk_frames": args.chunk_frames,
                "device": device,
                "dtype": args.dtype,
                "repeats": args.repeats,
                "threads": args.threads,
            }
            row: dict[str, Any] = {"size": size, "frames": frames}
            for name in MODELS:
                if name == "cogvideox" and (version is None or args.no_cogvideox):
                    row[name] = None
                    continue
                print(f"{size} T={frames} {name} ...", flush=True)
                row[name] = measure({**spec, "model": name}, args.timeout)
                methods.add(row[name].get("memory_method"))
            row["speed_ratio"] = _ratio(row["isa4d"], row["cogvideox"], "frames_per_s")
            row["memory_ratio"] = _ratio(row["isa4d"], row["cogvideox"], "peak_mib")
            results.append(row)
    report = {
        "setup": {
            "device": device,
            "device_name": torch.cuda.get_device_name(device)
            if device.startswith("cuda")
            else platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads or torch.get_num_threads(),
            "dtype": args.dtype,
            "resolution": args.resolution,
            "chunk_frames": args.chunk_frames,
            "repeats": args.repeats,
            "torch": torch.__version__,
            "diffusers": version,
            "memory_method": ", ".join(sorted(m for m in methods if m)) or "-",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(["python -m isa4d.bench.vae", *sys.argv[1:]]),
        },
        "results": results,
    }
    out = Path(args.out)
    write_json_atomic(out / "vae.json", report)
    write_text_atomic(out / "vae.md", markdown(report))
    print(markdown(report))
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m isa4d.bench.vae", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", default=["tiny"], help="VAE sizes (isa4d.models.vae.VAE_MODELS)"
    )
    parser.add_argument(
        "--frames", nargs="+", type=int, default=list(DEFAULT_FRAMES), help="clip lengths 1+4k"
    )
    parser.add_argument("--resolution", type=int, default=64, help="H = W, a multiple of 8")
    parser.add_argument("--chunk-frames", type=int, default=8, help="our temporal chunk (multiple of 4)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    parser.add_argument("--no-cogvideox", action="store_true", help="skip the diffusers comparison")
    parser.add_argument("--out", default="experiments/bench", help="folder of vae.json and vae.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_clip_frames(parser, args.frames)
    if args.chunk_frames <= 0 or args.chunk_frames % 4 or args.resolution % 8:
        parser.error("--chunk-frames must be a positive multiple of 4 and --resolution a multiple of 8")
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m isa4d.bench.vae`."""
    run_or_work(parse_args(argv), run, run_worker)


if __name__ == "__main__":
    main()
