"""Where the time of one training step goes: a phase profile of the default VAE and DiT steps (`make bench`).

    python -m isa4d.bench.steps                                   # vae_tiny_cpu + dit_tiny_cpu, 3 + 10 steps
    python -m isa4d.bench.steps --stages dit --dit-experiment dit_tiny_cpu --dit-override data.num_workers=2
    python -m isa4d.bench.steps --vae-ckpt logs/train_vae/runs/<run>/checkpoints/last.ckpt --top-ops 0

Both stages are built as `isa4d train-vae` / `isa4d train-dit` build them: the root config
(`conf/train_vae.yaml`, `conf/train_dit.yaml`) composed with `experiment=<name>` and the overrides, then
the datamodule and the LightningModule instantiated from it (seeded like `isa4d.train`). A step is the
module's own `training_step` on the next batch of its training loader, driven the way Lightning drives it
(stage 1: manual optimisation with two optimisers toggled; stage 2: automatic optimisation, i.e.
`training_step`, `zero_grad`, `backward`, gradient clipping with `trainer.gradient_clip_val`, `step`, the
schedulers and `on_train_batch_end`), but without the Trainer: logging calls are no-ops and Lightning's
own per-step bookkeeping (progress bar, callbacks, loggers) is not timed.

Phases are timed by wrapping the methods that do the work (`vae.encode`, `vae.decode`, `loss.forward`,
the discriminators, `ConditionBuilder.encode` / `posed_body` / `render_control`, `dit.forward`, backward,
clipping, the optimisers' `step`, ...) for the duration of the run, with `time.perf_counter`; each phase is
*exclusive* (a nested phase's time is not counted in its parent), so the phases of a step add up to the
step. A method that a step does not call (e.g. VAE encoding when batches carry cached `latent`s and the
`ConditionBuilder` skips it, or the control-video renderer of the ISA models) is reported as absent. After
`--warmup` steps, `--steps` steps are measured and each phase's median is reported. Results go to
`<out>/steps.json` and `<out>/steps.md` (atomic writes; `--name` renames them).

FLOPs: one further step runs under `torch.utils.flop_counter.FlopCounterMode` (matmul, convolution and
attention FLOPs, forward and backward; element-wise ops are not counted), attributed to the same phases.
MFU = FLOPs of the forward + backward phases / their median time / the machine's matmul peak, which is
measured here as the best of several large `torch.matmul`s (`--peak-size`) in the step's precision: fp32, or
bf16 with `--precision bf16-mixed` (the steps then run under bf16 autocast, as Lightning's `bf16-mixed` runs
`training_step`; `--device cuda` for a GPU). `fraction_in_dit` is the
share of the DiT step spent in the DiT itself: forward (with the flow-matching objective), backward and
optimiser (clipping, step, schedulers, EMA). `--top-ops N` appends a `torch.profiler` table of the N ops
with the largest self CPU time of one extra step of each stage (not part of the headline numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from isa4d.utils.files import write_json_atomic, write_text_atomic

# ---------------------------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class Phase:
    """A row of a stage's table: a timed phase, the group it belongs to, and how it is described."""

    key: str
    group: str
    label: str


VAE_PHASES = (
    Phase("data", "data", "data: next batch of the training loader (+ to device)"),
    Phase("encoder", "encoder forward", "encoder forward (`vae.encode`)"),
    Phase("decoder", "decoder forward", "decoder forward (`vae.decode`)"),
    Phase("g_loss", "loss", "generator loss: L1 + KL (+ LPIPS) (`VAELoss.forward`, rest)"),
    Phase("aux_decoder", "loss", "auxiliary image decoder forward (L_reg)"),
    Phase("disc_fwd_g", "loss", "discriminators forward in the generator loss"),
    Phase("adaptive_weight", "loss", "adaptive GAN weight (two `autograd.grad`)"),
    Phase("g_backward", "backward", "generator backward"),
    Phase("g_clip", "optimizer", "generator gradient clipping"),
    Phase("g_step", "optimizer", "generator optimiser step"),
    Phase("ema", "optimizer", "EMA update"),
    Phase("d_loss", "loss", "discriminator loss (`discriminator_loss`, rest)"),
    Phase("disc_fwd_d", "loss", "discriminators forward in the discriminator loss"),
    Phase("d_backward", "backward", "discriminator backward"),
    Phase("d_clip", "optimizer", "discriminator gradient clipping"),
    Phase("d_step", "optimizer", "discriminator optimiser step"),
    Phase("schedulers", "optimizer", "LR schedulers"),
    Phase("other", "other", "rest of `training_step` (posterior sample, toggling, zero_grad, logging)"),
)
VAE_GROUPS = ("data", "encoder forward", "decoder forward", "loss", "backward", "optimizer", "other")
VAE_COMPUTE = ("encoder forward", "decoder forward", "loss", "backward")

DIT_PHASES = (
    Phase("data", "data", "data: next batch of the training loader (+ to device)"),
    Phase("encode_video", "VAE encoding", "VAE encoding of the video (`ConditionBuilder.encode`)"),
    Phase("encode_cond", "VAE encoding", "VAE encoding of reference / background / control video"),
    Phase("body", "body model + points", "body model + surface points (`posed_body`, clip and reference)"),
    Phase("render", "control rendering", "control-video rendering (2-D baselines only)"),
    Phase("conditions", "conditions (rest)", "rest of `ConditionBuilder.conditions` (assembly)"),
    Phase("builder", "conditions (rest)", "rest of `ConditionBuilder.forward`"),
    Phase("dit_forward", "DiT forward", "DiT forward (`dit.forward`)"),
    Phase("flow", "DiT forward", "flow-matching objective around it (t, noise, dropout, MSE)"),
    Phase("dit_backward", "DiT backward", "DiT backward"),
    Phase("zero_grad", "optimizer", "optimiser zero_grad"),
    Phase("clip", "optimizer", "gradient clipping (`trainer.gradient_clip_val`)"),
    Phase("step", "optimizer", "optimiser step"),
    Phase("schedulers", "optimizer", "LR scheduler"),
    Phase("ema", "optimizer", "EMA update (`on_train_batch_end`)"),
    Phase("other", "other", "rest of `training_step` (background dropout, logging)"),
)
DIT_GROUPS = (
    "data",
    "VAE encoding",
    "body model + points",
    "control rendering",
    "conditions (rest)",
    "DiT forward",
    "DiT backward",
    "optimizer",
    "other",
)
DIT_COMPUTE = ("DiT forward", "DiT backward")
IN_DIT = ("DiT forward", "DiT backward", "optimizer")


class PhaseTimer:
    """Exclusive wall time (and optionally FLOPs) per named phase of one step.

    `phase(name)` blocks may nest: a parent's time excludes its children's, so the phases of a step sum
    to the time spent inside the outermost blocks. `sync` runs at every boundary (a CUDA synchronise on
    GPUs). With `flops` set to a running `FlopCounterMode`, the FLOPs counted in a phase are attributed to
    it the same way.
    """

    def __init__(self, sync: Callable[[], None] = lambda: None) -> None:
        self.sync = sync
        self.flops: Any = None
        self.stack: list[str] = []
        self._frames: list[list[float]] = []
        self.reset()

    def reset(self) -> None:
        """Start a new step."""
        self.times: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.info: dict[str, Any] = {}  # what a step notes about itself (e.g. its clip length)
        self.flop_counts: dict[str, int] = {}

    def _total_flops(self) -> int:
        return 0 if self.flops is None else int(self.flops.get_total_flops())

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase `name` (exclusive of nested phases)."""
        self.sync()
        frame = [0.0, 0.0]  # seconds and FLOPs of nested phases
        self._frames.append(frame)
        self.stack.append(name)
        flops = self._total_flops()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            elapsed = time.perf_counter() - start
            flops = self._total_flops() - flops
            self._frames.pop()
            self.stack.pop()
            self.times[name] = self.times.get(name, 0.0) + elapsed - frame[0]
            self.flop_counts[name] = self.flop_counts.get(name, 0) + int(flops - frame[1])
            self.calls[name] = self.calls.get(name, 0) + 1
            if self._frames:
                self._frames[-1][0] += elapsed
                self._frames[-1][1] += flops

    def wrap(self, stack: contextlib.ExitStack, owner: Any, attr: str, name: str | Callable[[], str]) -> bool:
        """Time every call of `owner.attr` as a phase until `stack` closes (False: no such attribute).

        `name` may be a function, evaluated at each call (a phase named by the context it runs in).
        """
        original = getattr(owner, attr, None)
        if owner is None or original is None:
            return False

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name() if callable(name) else name):
                return original(*args, **kwargs)

        stack.enter_context(patched(owner, attr, timed))
        return True


@contextlib.contextmanager
def patched(owner: Any, attr: str, value: Any) -> Iterator[None]:
    """Set `owner.attr = value` for the block (an instance attribute; the class is not touched)."""
    own = vars(owner)
    had, old = attr in own, own.get(attr)
    _set(owner, attr, value)
    try:
        yield
    finally:
        if had:
            _set(owner, attr, old)
        else:
            try:
                delattr(owner, attr)
            except AttributeError:  # frozen dataclass
                object.__delattr__(owner, attr)


def _set(owner: Any, attr: str, value: Any) -> None:
    try:
        setattr(owner, attr, value)
    except AttributeError:  # frozen dataclass (dataclasses.FrozenInstanceError)
        object.__setattr__(owner, attr, value)


def linear_flops(batch: int, in_features: int, out_features: int, backward: bool = True) -> int:
    """FLOPs of `nn.Linear` on `(batch, in)`: 2 B in out forward, twice that backward (input, weight).

    The bias is not counted (nor by `FlopCounterMode`).
    """
    forward = 2 * batch * in_features * out_features
    return 3 * forward if backward else forward


def _sdpa_cpu(q, k, v, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(q, k, v)


def _sdpa_cpu_backward(grad, q, k, v, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad, q, k, v)


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
}
"""`FlopCounterMode` formulas for the CPU flash-attention kernels (without them it counts 0 for them)."""


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs that `FlopCounterMode` counts while `fn()` runs (forward and any backward inside it),
    attention on the CPU included (`CPU_ATTENTION_FLOPS`)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(
    size: int = 2048, repeats: int = 10, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """The best `torch.matmul` rate of `(size, size) @ (size, size)` in `dtype`, over `repeats` runs."""
    dev = torch.device(device)
    a, b = (torch.randn(size, size, device=dev, dtype=dtype) for _ in range(2))
    sync = _sync_of(dev)
    torch.matmul(a, b)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        times.append(time.perf_counter() - start)
    flops = 2 * size**3
    return {
        "size": size,
        "dtype": str(dtype).removeprefix("torch."),
        "repeats": repeats,
        "best_s": min(times),
        "median_s": statistics.median(times),
        "flops": flops,
        "peak_flops_per_s": flops / min(times),
        "median_flops_per_s": flops / statistics.median(times),
    }


_START = time.perf_counter()


def log(message: str) -> None:
    """A progress line on stdout, with the seconds since the start."""
    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", flush=True)


def _sync_of(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# ---------------------------------------------------------------------------------------------- building


def compose_stage(root: str, experiment: str, overrides: Sequence[str]) -> Any:
    """The root config `root` composed with `experiment=<experiment>` and the overrides (as a run sees it)."""
    from isa4d.config import compose

    return compose(root, [f"experiment={experiment}", *overrides])


def build_stage(cfg: Any, device: torch.device) -> tuple[Any, Any]:
    """Instantiate the datamodule and the module of a composed config as `isa4d.train` does (seeded)."""
    import lightning as L
    from hydra.utils import instantiate

    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model)
    return datamodule, module.to(device).train()


def split_optimizers(config: Any) -> tuple[list[torch.optim.Optimizer], list[Any]]:
    """The optimisers and LR schedulers of a `configure_optimizers()` result (the forms Lightning accepts)."""
    if isinstance(config, torch.optim.Optimizer):
        return [config], []
    if isinstance(config, dict):
        scheduler = config.get("lr_scheduler")
        scheduler = scheduler.get("scheduler") if isinstance(scheduler, dict) else scheduler
        return [config["optimizer"]], [scheduler] if scheduler is not None else []
    if isinstance(config, tuple) and len(config) == 2 and isinstance(config[0], list | tuple):
        optimizers, schedulers = config
        return list(optimizers), [s.get("scheduler") if isinstance(s, dict) else s for s in schedulers]
    return list(config), []


class Batches:
    """The training loader of a datamodule as an endless iterator (a new epoch when one ends).

    `epoch_size` is raised to hold `steps` batches, so a measured run does not hit the (per-epoch) worker
    start-up; that start-up is timed once as `startup_s` (the first batch).
    """

    def __init__(self, datamodule: Any, steps: int, device: torch.device) -> None:
        from lightning.fabric.utilities.apply_func import move_data_to_device

        self.datamodule, self.device, self.move = datamodule, device, move_data_to_device
        datamodule.setup("fit")
        if hasattr(datamodule, "epoch_size") and hasattr(datamodule, "batch_size"):
            datamodule.epoch_size = max(datamodule.epoch_size, steps * datamodule.batch_size)
        self.iterator: Iterator[Any] | None = None
        self.startup_s: float | None = None
        self.batches = 0

    def next(self) -> Any:
        if self.iterator is None:
            start = time.perf_counter()
            self.iterator = iter(self.datamodule.train_dataloader())
            batch = next(self.iterator)
            self.startup_s = time.perf_counter() - start if self.startup_s is None else self.startup_s
        else:
            try:
                batch = next(self.iterator)
            except StopIteration:
                self.iterator = None
                return self.next()
        self.batches += 1
        return self.move(batch, self.device)

    def close(self) -> None:
        self.iterator = None  # stops the workers


def _frames_of(batch: Any) -> int | None:
    """T of a batch's video (1 for the image batches of the VAE stage), None without one."""
    video = batch.get("video") if isinstance(batch, dict) else batch
    return int(video.shape[2]) if isinstance(video, torch.Tensor) and video.ndim == 5 else None


# ---------------------------------------------------------------------------------------------- stage 1


def forward_context(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """What `training_step` runs under: bf16 autocast for `bf16-mixed` (as Lightning), else nothing."""
    if precision == "bf16-mixed":
        return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


class VAEStep:
    """One `VAEModule.training_step` (generator + discriminator) with its phases timed."""

    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def __init__(self, module: Any, batches: Batches, timer: PhaseTimer) -> None:
        self.module, self.batches, self.timer = module, batches, timer
        self.optimizers, self.schedulers = split_optimizers(module.configure_optimizers())
        self.role = "generator"
        self.stack = contextlib.ExitStack()
        self._instrument()

    def _toggled(self, optimizer: torch.optim.Optimizer) -> contextlib.AbstractContextManager:
        """LightningModule.toggled_optimizer without a Trainer: only this optimiser's parameters get grads."""

        @contextlib.contextmanager
        def toggled() -> Iterator[None]:
            state = {}
            for opt in self.optimizers:
                for group in opt.param_groups:
                    for param in group["params"]:
                        state.setdefault(param, param.requires_grad)
                        param.requires_grad = False
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.requires_grad = state[param]
            previous, self.role = (
                self.role,
                ("generator" if optimizer is self.optimizers[0] else "discriminator"),
            )
            try:
                yield
            finally:
                self.role = previous
                for param, requires_grad in state.items():
                    param.requires_grad = requires_grad

        return toggled()

    def _clip(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, **_: Any
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_val and params:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def _instrument(self) -> None:
        module, timer, stack = self.module, self.timer, self.stack

        def role(keys: tuple[str, str]) -> Callable[[], str]:  # the phase of the optimiser toggled now
            return lambda: keys[0] if self.role == "generator" else keys[1]

        schedulers = self.schedulers
        stack.enter_context(patched(module, "optimizers", lambda *a, **k: list(self.optimizers)))
        stack.enter_context(
            patched(
                module,
                "lr_schedulers",
                lambda: None if not schedulers else schedulers[0] if len(schedulers) == 1 else schedulers,
            )
        )
        stack.enter_context(patched(module, "toggled_optimizer", self._toggled))
        stack.enter_context(patched(module, "manual_backward", lambda loss, *a, **k: loss.backward(*a, **k)))
        stack.enter_context(patched(module, "clip_gradients", self._clip))
        timer.wrap(stack, module, "manual_backward", role(("g_backward", "d_backward")))
        timer.wrap(stack, module, "clip_gradients", role(("g_clip", "d_clip")))
        timer.wrap(stack, module, "_step_schedulers", "schedulers")
        timer.wrap(stack, module.vae, "encode", "encoder")
        timer.wrap(stack, module.vae, "decode", "decoder")
        loss = module.loss
        timer.wrap(stack, loss, "forward", "g_loss")
        timer.wrap(stack, loss, "discriminator_loss", "d_loss")
        timer.wrap(stack, getattr(loss, "aux_decoder", None), "forward", "aux_decoder")
        for discriminator in loss.discriminators().values():
            timer.wrap(stack, discriminator, "forward", role(("disc_fwd_g", "disc_fwd_d")))
        timer.wrap(stack, inspect.getmodule(type(loss)), "adaptive_weight", "adaptive_weight")
        if module.ema is not None:
            timer.wrap(stack, module.ema, "update", "ema")
        for index, optimizer in enumerate(self.optimizers):
            timer.wrap(stack, optimizer, "step", "g_step" if index == 0 else "d_step")

    def __call__(self, index: int) -> None:
        with self.timer.phase("data"):
            batch = self.batches.next()
        self.timer.info["frames"] = _frames_of(batch)
        with self.timer.phase("other"), warnings.catch_warnings(), self.forward_context():
            warnings.simplefilter("ignore")  # self.log() without a Trainer
            self.module.training_step(batch, index)

    def close(self) -> None:
        self.stack.close()


# ---------------------------------------------------------------------------------------------- stage 2


class DiTStep:
    """One `DiTModule` step as Lightning's automatic optimisation runs it, with its phases timed."""

    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def __init__(
        self, module: Any, batches: Batches, timer: PhaseTimer, gradient_clip_val: float | None
    ) -> None:
        self.module, self.batches, self.timer = module, batches, timer
        self.optimizers, self.schedulers = split_optimizers(module.configure_optimizers())
        if len(self.optimizers) != 1:
            raise ValueError(f"expected one DiT optimiser, got {len(self.optimizers)}")
        self.gradient_clip_val = gradient_clip_val
        self.stack = contextlib.ExitStack()
        builder, timer, stack = module.builder, self.timer, self.stack

        def encode_name() -> str:  # the video latents vs the conditions' (reference, background, control)
            return "encode_cond" if "conditions" in timer.stack else "encode_video"

        timer.wrap(stack, builder, "forward", "builder")
        timer.wrap(stack, builder, "conditions", "conditions")
        timer.wrap(stack, builder, "encode", encode_name)
        timer.wrap(stack, builder, "posed_body", "body")
        timer.wrap(stack, builder, "render_control", "render")
        timer.wrap(stack, module.dit, "forward", "dit_forward")
        timer.wrap(stack, module.flow, "loss", "flow")

    def __call__(self, index: int) -> None:
        module, timer, optimizer = self.module, self.timer, self.optimizers[0]
        with timer.phase("data"):
            batch = self.batches.next()
        timer.info["frames"] = _frames_of(batch)
        if isinstance(batch, dict) and "latent" in batch:
            timer.info["latent_frames"] = int(batch["latent"].shape[2])
        with timer.phase("other"), warnings.catch_warnings(), self.forward_context():
            warnings.simplefilter("ignore")  # self.log() without a Trainer
            loss = module.training_step(batch, index)
        with timer.phase("zero_grad"):
            optimizer.zero_grad(set_to_none=True)
        with timer.phase("dit_backward"):
            module.backward(loss)
        if self.gradient_clip_val:
            with timer.phase("clip"):
                params = [
                    p for group in optimizer.param_groups for p in group["params"] if p.grad is not None
                ]
                torch.nn.utils.clip_grad_norm_(params, self.gradient_clip_val)
        with timer.phase("step"):
            optimizer.step()
        if self.schedulers:
            with timer.phase("schedulers"):
                for scheduler in self.schedulers:
                    scheduler.step()
        if module.ema is not None:
            with timer.phase("ema"):
                module.on_train_batch_end(loss, batch, index)

    def close(self) -> None:
        self.stack.close()


# ---------------------------------------------------------------------------------------------- running


def run_steps(
    step: Callable[[int], None], timer: PhaseTimer, warmup: int, steps: int, first: int = 0
) -> list:
    """`warmup` untimed then `steps` timed steps; per timed step its total and per-phase seconds and calls."""
    records = []
    for index in range(first, first + warmup + steps):
        timer.reset()
        start = time.perf_counter()
        step(index)
        total = time.perf_counter() - start
        if index - first >= warmup:
            records.append(
                {
                    "total_s": total,
                    "phases_s": dict(timer.times),
                    "calls": dict(timer.calls),
                    "info": timer.info,
                }
            )
    return records


def count_step_flops(
    step: Callable[[int], None], timer: PhaseTimer, index: int
) -> tuple[dict[str, int], dict[str, Any]]:
    """FLOPs per phase of one step run under `FlopCounterMode`, and what the step noted (its clip length)."""
    from torch.utils.flop_counter import FlopCounterMode

    timer.reset()
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        timer.flops = counter
        try:
            step(index)
        finally:
            timer.flops = None
    return dict(timer.flop_counts), dict(timer.info)


def top_ops(step: Callable[[int], None], index: int, rows: int) -> str:
    """`torch.profiler` table of the `rows` ops with the largest self CPU time in one step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        step(index)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def summarise(
    records: list[dict[str, Any]],
    phases: Sequence[Phase],
    groups: Sequence[str],
    compute_groups: Sequence[str],
    flops: dict[str, int],
    peak: float,
    flop_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per-phase medians, shares of the median step, per-group medians, FLOPs and MFU of measured steps.

    The FLOPs are those of one counted step (`flop_info`: what it noted, e.g. its clip length); the MFU
    divides them by the median time of the measured steps like it (all of them if none is).
    """
    known = {p.key for p in phases}
    extra = sorted({k for r in records for k in r["phases_s"] if k not in known})
    rows_of = [*phases, *(Phase(k, "other", k) for k in extra)]
    totals = [r["total_s"] for r in records]
    step_s = statistics.median(totals)
    group_of = {p.key: p.group for p in rows_of}

    def per_step(keys: set[str]) -> list[float]:
        return [sum(v for k, v in r["phases_s"].items() if k in keys) for r in records]

    rows = []
    for phase in rows_of:
        seconds = [r["phases_s"].get(phase.key, 0.0) for r in records]
        calls = [r["calls"].get(phase.key, 0) for r in records]
        median = statistics.median(seconds)
        rows.append(
            {
                "key": phase.key,
                "group": phase.group,
                "label": phase.label,
                "present": any(calls),
                "calls_per_step": statistics.median(calls),
                "median_ms": 1e3 * median,
                "share": median / step_s,
                "gflop": flops.get(phase.key, 0) / 1e9,
            }
        )
    group_rows = {}
    for group in groups:
        keys = {k for k, g in group_of.items() if g == group}
        median = statistics.median(per_step(keys))
        group_rows[group] = {"median_ms": 1e3 * median, "share": median / step_s}
    compute_keys = {k for k, g in group_of.items() if g in compute_groups}
    alike = [r for r in records if flop_info is None or r["info"] == flop_info] or records
    compute_s = statistics.median(
        [sum(v for k, v in r["phases_s"].items() if k in compute_keys) for r in alike]
    )
    alike_step_s = statistics.median([r["total_s"] for r in alike])
    compute_flops = sum(v for k, v in flops.items() if k in compute_keys)
    total_flops = sum(flops.values())
    return {
        "step_ms": 1e3 * step_s,
        "step_ms_min": 1e3 * min(totals),
        "step_ms_max": 1e3 * max(totals),
        "sum_of_phase_medians_ms": sum(r["median_ms"] for r in rows),
        "phases": rows,
        "groups": group_rows,
        "flops": {
            "compute_groups": list(compute_groups),
            "forward_backward_gflop": compute_flops / 1e9,
            "forward_backward_ms": 1e3 * compute_s,
            "achieved_gflop_per_s": compute_flops / compute_s / 1e9 if compute_s else None,
            "mfu": compute_flops / compute_s / peak if compute_s and peak else None,
            "step_gflop": total_flops / 1e9,
            "step_achieved_gflop_per_s": total_flops / alike_step_s / 1e9,
            "step_mfu": total_flops / alike_step_s / peak if peak else None,
            "counted_step": flop_info,
            "steps_like_it": len(alike),
            "per_phase_gflop": {k: v / 1e9 for k, v in flops.items() if v},
        },
        "steps_s": [{"total_s": r["total_s"], **r["phases_s"]} for r in records],
        "steps_info": [r["info"] for r in records],
    }


def profile_vae(args: argparse.Namespace, device: torch.device, peak: float) -> tuple[list[dict], Any]:
    """Stage 1: each requested regime (before / after `disc_start`); returns them and the model config."""
    cfg = compose_stage("train_vae", args.vae_experiment, args.vae_override)
    datamodule, module = build_stage(cfg, device)
    timer = PhaseTimer(_sync_of(device))
    per_regime = args.warmup + args.steps + 1 + (1 if args.top_ops else 0)
    batches = Batches(datamodule, per_regime * len(args.vae_regimes), device)
    step = VAEStep(module, batches, timer)
    step.forward_context = forward_context(args.precision, device)
    disc_start = int(module.loss.disc_start) if module.loss.discriminators() else None
    results = []
    try:
        for regime in args.vae_regimes:
            if disc_start is None and regime == "after":
                continue
            start = 0 if regime == "before" else disc_start
            if regime == "before" and disc_start is not None and args.warmup + args.steps + 2 > disc_start:
                raise ValueError(f"--warmup + --steps must stay below disc_start={disc_start}")
            module.batch_step = start
            log(f"VAE ({args.vae_experiment}), {regime} disc_start: {args.warmup} + {args.steps} steps")
            records = run_steps(step, timer, args.warmup, args.steps, first=start)
            module.batch_step = start + args.warmup + args.steps
            flops, info = count_step_flops(step, timer, module.batch_step)
            summary = summarise(records, VAE_PHASES, VAE_GROUPS, VAE_COMPUTE, flops, peak, info)
            summary.update(
                {
                    "stage": "vae",
                    "regime": regime,
                    "batch_step": start,
                    "disc_start": disc_start,
                    "disc_active": disc_start is not None and start >= disc_start,
                    "loader_startup_s": batches.startup_s,
                }
            )
            if args.top_ops:
                summary["top_ops"] = top_ops(step, module.batch_step, args.top_ops)
            results.append(summary)
    finally:
        step.close()
        batches.close()
    setup = _stage_setup(cfg, module, datamodule, "train_vae", args.vae_experiment, args.vae_override)
    for summary in results:
        summary["setup"] = setup
    return results, cfg.model


def _stage_setup(cfg: Any, module: Any, datamodule: Any, root: str, experiment: str, overrides: list) -> dict:
    return {
        "root_config": f"conf/{root}.yaml",
        "experiment": experiment,
        "overrides": list(overrides),
        "model": cfg.model._target_,
        "parameters": sum(p.numel() for p in module.parameters()),
        "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "batch_size": getattr(datamodule, "batch_size", None),
        "num_frames": getattr(datamodule, "num_frames", None),
        "resolution": "x".join(map(str, getattr(datamodule, "resolution", ()))),
        "num_workers": getattr(datamodule, "num_workers", None),
        "train_dirs": [str(d) for d in getattr(datamodule, "dirs", {}).get("train", [])],
    }


def newest_vae_checkpoint(log_dir: str) -> str | None:
    """The newest `<log_dir>/train_vae/runs/*/checkpoints/last.ckpt` (what `make train-dit` uses)."""
    found = glob.glob(os.path.join(log_dir, "train_vae", "runs", "*", "checkpoints", "last.ckpt"))
    return max(found, key=os.path.getmtime) if found else None


def fresh_vae_checkpoint(vae_model_cfg: Any, folder: str) -> str:
    """A checkpoint of a freshly initialised (untrained) VAE of a VAE model config: enough for timing."""
    from hydra.utils import instantiate

    from isa4d.modules import VAEModule

    module = VAEModule(instantiate(vae_model_cfg.vae))
    path = os.path.join(folder, "fresh_vae.ckpt")
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def build_latent_cache(cfg: Any, vae_ckpt: str, folder: str, versions: int) -> str:
    """`isa4d encode` of the synthetic `train` split into `folder`, at the DiT config's size, with `vae_ckpt`.

    What `make latents` builds for `make train-dit` (there with 4 versions per clip), for a DiT data config
    that reads the latent cache but is given no `data.train_dirs`.
    """
    from isa4d.config import compose
    from isa4d.encode import encode

    control = OmegaConf.select(cfg, "model.dit.control_video")
    encode_cfg = compose(
        "encode",
        [
            f"ckpt_path={vae_ckpt}",
            f"output_dir={folder}",
            f"data.num_frames={cfg.data.num_frames}",
            f"data.resolution={cfg.data.resolution}",
            f"num_versions={versions}",
            f"control_videos=[{control or ''}]",
            "overwrite=true",
        ],
    )
    encode(encode_cfg)
    return folder


def _needs_cache(data: Any) -> bool:
    """Whether a DiT data config reads a latent cache (`HumanLatentDataModule`) but names none."""
    if "latent" not in str(data.get("_target_", "")).lower() or "train_dirs" not in data:
        return False
    return OmegaConf.is_missing(data, "train_dirs") or not data.train_dirs


def profile_dit(args: argparse.Namespace, device: torch.device, peak: float, vae_model_cfg: Any) -> dict:
    """Stage 2: the DiT step on the configured data with a VAE checkpoint (given, newest, or fresh).

    A DiT data config that reads a latent cache without `data.train_dirs` gets one built by the bench
    (`build_latent_cache`, `--cache-versions` versions per clip) with that VAE checkpoint.
    """
    with tempfile.TemporaryDirectory() as scratch:
        overrides = list(args.dit_override)
        cfg = compose_stage("train_dit", args.dit_experiment, overrides)
        vae_ckpt, source = args.vae_ckpt, "given (--vae-ckpt)"
        if vae_ckpt is None and not OmegaConf.is_missing(cfg.model, "vae_ckpt") and cfg.model.vae_ckpt:
            vae_ckpt, source = cfg.model.vae_ckpt, "given (model.vae_ckpt override)"
        if vae_ckpt is None:
            vae_ckpt, source = newest_vae_checkpoint(cfg.paths.log_dir), "newest train_vae run"
        if vae_ckpt is None:
            if vae_model_cfg is None:
                vae_model_cfg = compose_stage("train_vae", args.vae_experiment, args.vae_override).model
            vae_ckpt = fresh_vae_checkpoint(vae_model_cfg, scratch)
            source = f"fresh untrained VAE of experiment {args.vae_experiment} (timing only)"
        overrides_ckpt = [*overrides, f"model.vae_ckpt={vae_ckpt}"]
        cfg = compose_stage("train_dit", args.dit_experiment, overrides_ckpt)
        latent = "latent" in str(cfg.data.get("_target_", "")).lower()
        cache = "given (data.train_dirs)" if latent else "none (pixel batches, encoded in the step)"
        if _needs_cache(cfg.data):
            log(f"building a latent cache ({args.cache_versions} version(s) per clip) with {vae_ckpt}")
            start = time.perf_counter()
            folder = build_latent_cache(
                cfg, str(vae_ckpt), os.path.join(scratch, "cache"), args.cache_versions
            )
            cache = (
                f"built by the bench: `isa4d encode` of the synthetic train split, {args.cache_versions} "
                f"version(s) per clip, {time.perf_counter() - start:.0f} s"
            )
            cfg = compose_stage(
                "train_dit", args.dit_experiment, [*overrides_ckpt, f"data.train_dirs=[{folder}]"]
            )
        datamodule, module = build_stage(cfg, device)
        timer = PhaseTimer(_sync_of(device))
        batches = Batches(datamodule, args.warmup + args.steps + 2, device)
        clip = cfg.trainer.get("gradient_clip_val")
        step = DiTStep(module, batches, timer, clip)
        step.forward_context = forward_context(args.precision, device)
        log(f"DiT ({args.dit_experiment}): {args.warmup} + {args.steps} steps")
        try:
            records = run_steps(step, timer, args.warmup, args.steps)
            flops, info = count_step_flops(step, timer, args.warmup + args.steps)
            summary = summarise(records, DIT_PHASES, DIT_GROUPS, DIT_COMPUTE, flops, peak, info)
            if args.top_ops:
                summary["top_ops"] = top_ops(step, args.warmup + args.steps + 1, args.top_ops)
        finally:
            step.close()
            batches.close()
    in_dit = {p.key for p in DIT_PHASES if p.group in IN_DIT}
    fractions = [sum(v for k, v in r["phases_s"].items() if k in in_dit) / r["total_s"] for r in records]
    summary.update(
        {
            "stage": "dit",
            # per step, then the median: robust to a shared machine slowing some phases of some steps
            "fraction_in_dit": statistics.median(fractions),
            "fraction_in_dit_per_step": fractions,
            "fraction_in_dit_of_medians": sum(summary["groups"][g]["median_ms"] for g in IN_DIT)
            / summary["sum_of_phase_medians_ms"],
            "fraction_in_dit_groups": list(IN_DIT),
            "gradient_clip_val": clip,
            "control_video": module.dit.config.get("control_video"),
            "vae_ckpt": str(vae_ckpt) if source.startswith(("given", "newest")) else None,
            "vae_ckpt_source": source,
            "latent_cache": cache,
            "loader_startup_s": batches.startup_s,
            "setup": _stage_setup(cfg, module, datamodule, "train_dit", args.dit_experiment, overrides),
        }
    )
    return summary


# ---------------------------------------------------------------------------------------------- report


def _lengths(infos: list[dict[str, Any]]) -> list[str]:
    return [
        f"T = {i['frames']}"
        if i.get("frames") is not None
        else f"{i.get('latent_frames', '?')} cached latents"
        for i in infos
    ]


def _stage_markdown(summary: dict[str, Any], title: str, peak: float, command: str) -> list[str]:
    setup, measured = summary["setup"], summary.get("measured") or {}
    peak = measured.get("peak_flops_per_s", peak)
    lengths = _lengths(summary["steps_info"])
    frames = f"{lengths[0]} (all {len(lengths)})" if len(set(lengths)) == 1 else ", ".join(lengths)
    override = "".join(f" {o}" for o in setup["overrides"])
    lines = [
        f"## {title}",
        "",
        *(
            [
                f"Measured {measured['date']} by `{measured['command']}` (git {measured.get('git') or '-'}; "
                "an earlier run, with its matmul peak).",
                "",
            ]
            if measured.get("command", command) != command
            else []
        ),
        f"`{setup['root_config']}` + `experiment={setup['experiment']}{override}`: `{setup['model']}` "
        f"({setup['trainable_parameters'] / 1e6:.2f} M trainable parameters), batch {setup['batch_size']}, "
        f"{setup['num_frames']} frames at {setup['resolution']}, {setup['num_workers']} loader worker(s).",
        "",
        "| phase | group | calls / step | median ms | share of step % | GFLOP |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in summary["phases"]:
        if not row["present"]:
            continue
        lines.append(
            f"| {row['label']} | {row['group']} | {row['calls_per_step']:g} | {row['median_ms']:.1f} | "
            f"{100 * row['share']:.1f} | {row['gflop']:.3g} |"
        )
    lines += [
        f"| sum of the phase medians | | | {summary['sum_of_phase_medians_ms']:.1f} | "
        f"{100 * summary['sum_of_phase_medians_ms'] / summary['step_ms']:.1f} | |",
        f"| **step (median)** | | | **{summary['step_ms']:.1f}** | 100 | "
        f"{summary['flops']['step_gflop']:.3g} |",
        "",
        f"Step min / max over the measured steps: {summary['step_ms_min']:.0f} / "
        f"{summary['step_ms_max']:.0f} ms. "
        f"Loader start-up (first batch, once per epoch): {summary['loader_startup_s']:.2f} s.",
        f"Clip length per measured step: {frames}. "
        "Absent (not called in this step): "
        + (", ".join(r["label"] for r in summary["phases"] if not r["present"]) or "none")
        + ".",
        "",
        "By group: "
        + ", ".join(
            f"{group} {g['median_ms']:.0f} ms ({100 * g['share']:.0f} %)"
            for group, g in summary["groups"].items()
            if g["median_ms"] > 0
        )
        + ".",
        "",
    ]
    f = summary["flops"]
    mfu = "-" if f["mfu"] is None else f"{100 * f['mfu']:.1f} %"
    lines.append(
        f"**MFU** (forward + backward: {' + '.join(f['compute_groups'])}; FLOPs of one counted step, "
        f"{_lengths([f.get('counted_step') or {}])[0]}, time the median of the {f.get('steps_like_it', '?')} "
        "measured steps of that length): "
        f"{f['forward_backward_gflop']:.3g} GFLOP "
        f"in {f['forward_backward_ms']:.0f} ms = {f['achieved_gflop_per_s']:.1f} GFLOP/s = **{mfu}** of the "
        f"{peak / 1e9:.1f} GFLOP/s matmul peak; whole step {f['step_gflop']:.3g} GFLOP / "
        f"{summary['step_ms']:.0f} ms"
        f" = {f['step_achieved_gflop_per_s']:.1f} GFLOP/s ({100 * (f['step_mfu'] or 0):.1f} %)."
    )
    if "fraction_in_dit" in summary:
        ckpt = f" `{summary['vae_ckpt']}`" if summary["vae_ckpt"] else ""
        lines += [
            "",
            f"**fraction_in_dit** (DiT forward + backward + optimiser over the step, per step, median): "
            f"**{100 * summary['fraction_in_dit']:.1f} %** (target >= 60 %; from the phase medians: "
            f"{100 * summary['fraction_in_dit_of_medians']:.1f} %). VAE checkpoint: "
            f"{summary['vae_ckpt_source']}{ckpt}. Latent cache: {summary.get('latent_cache', '-')}.",
        ]
    return [*lines, ""]


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: machine, command, one table per stage (and regime), MFU, top ops."""
    m, peak = report["machine"], report["peak"]["peak_flops_per_s"]
    lines = [
        "# Training-step profile: where one default training step goes",
        "",
        f"Machine: {m['cpu_count']} CPU cores ({m['processor']}), device {m['device']}, torch {m['torch']}, "
        f"{m['threads']} torch threads (training's setting); load average {m['loadavg_start']} at the start, "
        f"{m['loadavg_end']} at the end (the machine is shared: other jobs may have run). {report['date']}.",
        "",
        f"Command: `{report['command']}` (git {report.get('git') or '-'})",
        "",
        f"Method: precision {report.get('precision', '32-true')}; {report['warmup']} warm-up steps, then the "
        f"median of {report['steps']} steps per phase "
        "(`time.perf_counter`, phases exclusive of nested ones; no profiler in these numbers). "
        "The module's own "
        "`training_step` runs as Lightning drives it, without the Trainer's per-step bookkeeping "
        "(`python -m isa4d.bench.steps --help`, docs/train_dit.md). Matmul peak: best of "
        f"{report['peak']['repeats']} {report['peak'].get('dtype', 'float32')} {report['peak']['size']}^2 "
        f"`torch.matmul`s = "
        f"{peak / 1e9:.1f} GFLOP/s "
        f"(median {report['peak']['median_flops_per_s'] / 1e9:.1f}). FLOPs: `FlopCounterMode` "
        "(matmul / conv / attention, forward + backward) of one further step.",
        "",
    ]
    for summary in report["vae"]:
        regime = "before" if summary["regime"] == "before" else "after"
        title = (
            f"Stage 1: VAE step, {regime} disc_start (batch_step {summary['batch_step']}, "
            f"disc_start {summary['disc_start']}: GAN terms {'on' if summary['disc_active'] else 'off'})"
        )
        lines += _stage_markdown(summary, title, peak, report["command"])
    if report["dit"] is not None:
        lines += _stage_markdown(report["dit"], "Stage 2: DiT step", peak, report["command"])
    if report.get("dit_compare"):
        c = report["dit_compare"]
        groups = ", ".join(f"{g} {ms:.0f} ms" for g, ms in c["groups_ms"].items() if ms > 0)
        lines += [
            f"### The same DiT step with `{' '.join(c['overrides'])}`, measured in this run",
            "",
            f"Step (median) **{c['step_ms']:.0f} ms** ({groups}); fraction_in_dit "
            f"{100 * c['fraction_in_dit']:.1f} %; latent cache: {c['latent_cache']}. The default step above "
            f"is **{c['speedup']:.1f}x faster**.",
            "",
        ]
    appendix = [(s, f"VAE, {s['regime']} disc_start") for s in report["vae"] if s.get("top_ops")]
    if report["dit"] is not None and report["dit"].get("top_ops"):
        appendix.append((report["dit"], "DiT"))
    if appendix:
        lines += [
            "## Appendix: top ops (torch.profiler, one extra step, by self CPU time)",
            "",
            "With profiler overhead; not part of the numbers above.",
            "",
        ]
        for summary, name in appendix:
            lines += [f"### {name}", "", "```", summary["top_ops"].rstrip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def git_state() -> str | None:
    """The HEAD commit of the working tree, `+dirty` with uncommitted changes (None: no git)."""
    import subprocess

    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "-uno"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Profile the requested stages and write `<name>.json` and `<name>.md` (after each stage)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    load_start = os.getloadavg()
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32
    peak = matmul_peak(args.peak_size, args.peak_repeats, str(device), dtype)
    log(f"matmul peak: {peak['peak_flops_per_s'] / 1e9:.1f} GFLOP/s")
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m isa4d.bench.steps", *(args.argv or [])]),
        "git": git_state(),
        "warmup": args.warmup,
        "precision": args.precision,
        "steps": args.steps,
        "machine": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": None,
        },
        "peak": peak,
        "vae": [],
        "dit": None,
        "fraction_in_dit": None,
    }
    out = Path(args.out)
    previous = out / f"{args.name}.json"
    if args.update and previous.is_file():  # keep the stages not measured now
        old = json.loads(previous.read_text())
        report["vae"] = old.get("vae", []) if "vae" not in args.stages else []
        report["dit"] = old.get("dit") if "dit" not in args.stages else None
        report["fraction_in_dit"] = None if report["dit"] is None else report["dit"]["fraction_in_dit"]
        report["earlier"] = {k: old.get(k) for k in ("date", "command", "machine", "peak")}
        stamp = {"command": old.get("command"), "date": old.get("date"), "git": old.get("git")}
        stamp["peak_flops_per_s"] = (old.get("peak") or {}).get("peak_flops_per_s")
        for summary in [*report["vae"], *([report["dit"]] if report["dit"] else [])]:
            summary.setdefault("measured", stamp)

    def write() -> None:  # after each stage, so that a later failure keeps what was measured
        report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        write_json_atomic(out / f"{args.name}.json", report)
        write_text_atomic(out / f"{args.name}.md", markdown(report))

    vae_model_cfg = None
    stamp = {
        "command": report["command"],
        "date": report["date"],
        "git": report["git"],
        "peak_flops_per_s": peak["peak_flops_per_s"],
    }
    if "vae" in args.stages:
        report["vae"], vae_model_cfg = profile_vae(args, device, peak["peak_flops_per_s"])
        for summary in report["vae"]:
            summary["measured"] = stamp
        write()
    if "dit" in args.stages:
        report["dit"] = {
            **profile_dit(args, device, peak["peak_flops_per_s"], vae_model_cfg),
            "measured": stamp,
        }
        report["fraction_in_dit"] = report["dit"]["fraction_in_dit"]
        write()
    if "dit" in args.stages and args.dit_compare:
        # The same DiT step with other overrides (e.g. data=human: pixel batches encoded in the step),
        # in this run: the speed-up is measured under the same load, not across runs.
        compare = argparse.Namespace(
            **{**vars(args), "dit_override": [*args.dit_override, *args.dit_compare]}
        )
        other = profile_dit(compare, device, peak["peak_flops_per_s"], vae_model_cfg)
        report["dit_compare"] = {
            "overrides": list(args.dit_compare),
            "step_ms": other["step_ms"],
            "fraction_in_dit": other["fraction_in_dit"],
            "latent_cache": other["latent_cache"],
            "groups_ms": {group: g["median_ms"] for group, g in other["groups"].items()},
            "speedup": other["step_ms"] / report["dit"]["step_ms"],
        }
        write()
    print(markdown(report))
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m isa4d.bench.steps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", choices=("vae", "dit"), default=["vae", "dit"])
    parser.add_argument(
        "--dit-compare",
        action="append",
        default=[],
        help="also time the DiT step with this extra override (repeatable; e.g. data=human for the pixel "
        "path) in the same run, and report the speed-up of the default over it",
    )
    parser.add_argument("--vae-experiment", default="vae_tiny_cpu", help="conf/experiment/ of the VAE step")
    parser.add_argument("--vae-override", action="append", default=[], help="Hydra override (repeatable)")
    parser.add_argument(
        "--vae-regimes",
        nargs="+",
        choices=("before", "after"),
        default=["before", "after"],
        help="VAE steps before disc_start (no GAN) and/or after it (GAN terms and discriminator updates)",
    )
    parser.add_argument("--dit-experiment", default="dit_tiny_cpu", help="conf/experiment/ of the DiT step")
    parser.add_argument("--dit-override", action="append", default=[], help="Hydra override (repeatable)")
    parser.add_argument(
        "--vae-ckpt",
        help="stage-1 checkpoint of the DiT step (default: model.vae_ckpt if overridden, else the newest "
        "logs/train_vae/runs/*/checkpoints/last.ckpt, else a fresh untrained VAE)",
    )
    parser.add_argument(
        "--cache-versions",
        type=int,
        default=1,
        help="versions per clip of the latent cache the bench builds (a DiT reading one, none given)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (medians over them)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default, as training)"
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument(
        "--precision",
        choices=("32-true", "bf16-mixed"),
        default="32-true",
        help="bf16-mixed: training_step under bf16 autocast, MFU against the bf16 matmul peak",
    )
    parser.add_argument("--peak-size", type=int, default=2048, help="N of the N x N matmul peak")
    parser.add_argument("--peak-repeats", type=int, default=10)
    parser.add_argument(
        "--top-ops", type=int, default=15, help="rows of the torch.profiler appendix (0: none)"
    )
    parser.add_argument("--out", default="experiments/bench", help="folder of the outputs")
    parser.add_argument("--name", default="steps", help="their name: <out>/<name>.json and .md")
    parser.add_argument(
        "--update", action="store_true", help="keep the other stages' results of an existing <name>.json"
    )
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.steps < 1:
        parser.error("--warmup must be >= 0 and --steps >= 1")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of `python -m isa4d.bench.steps`."""
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
