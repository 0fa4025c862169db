"""`isa4d plan`: memory per GPU of a training run, from its model built on the meta device (docs/plan.md).

    isa4d plan                                                    # ISA-DiT paper4b, the trainer's GPUs
    isa4d plan data.num_frames=97 data.batch_size=1 gpus=[8,16,64] strategies=[fsdp,ddp]
    isa4d plan experiment=vae_stage1_33f
    isa4d plan experiment=dit_tiny_cpu vae_model=tiny

The stage's networks are built from the composed config on `torch.device("meta")` (shapes, no memory), so
parameter counts are those of the real model. Per GPU, strategy (single GPU, DDP, FSDP as
`DiTModule.configure_model` shards the DiT) and the trainer's precision it prints the parameters
(trainable / frozen), gradients, optimiser state, activations, the FSDP-gathered and autocast weight copies,
and the tokens of one step. Activations: the ISA-DiT by the per-block formulas of `dit_activation_bytes`
(flash / memory-efficient attention: no attention matrix); the VAE by counting what its blocks save for
backward, run on meta tensors (`vae_activation_bytes`). Both are checked against real forwards on the CPU
in tests/test_plan.py.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from isa4d.config import check_output_file
from isa4d.errors import ConfigError
from isa4d.utils.files import write_text_atomic

GIB = 2**30
STRATEGIES = ("single", "ddp", "fsdp")


# ------------------------------------------------------------------------------------------ precision


@dataclass(frozen=True)
class Precision:
    """Bytes per value under a Lightning `trainer.precision`.

    Attributes:
        name: The canonical Lightning name.
        master: Parameters, gradients and optimiser state (fp32 except in the `-true` half precisions).
        compute: Matmul / convolution inputs and outputs.
        autocast: Whether the forward runs under `torch.autocast` (norms then compute in fp32).
    """

    name: str
    master: int
    compute: int
    autocast: bool

    @property
    def stream(self) -> int:
        """The residual stream and norm tensors: fp32 under autocast, else the compute dtype."""
        return 4 if self.autocast else self.compute

    @property
    def upcast(self) -> int:
        """The fp32 copy autocast makes of a half-precision input to a norm (0 without autocast)."""
        return 4 if self.autocast else 0


PRECISIONS = {
    "32-true": Precision("32-true", 4, 4, False),
    "bf16-mixed": Precision("bf16-mixed", 4, 2, True),
    "16-mixed": Precision("16-mixed", 4, 2, True),
    "bf16-true": Precision("bf16-true", 2, 2, False),
    "16-true": Precision("16-true", 2, 2, False),
}
_ALIASES = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


def precision_of(value: Any) -> Precision:
    """The `Precision` of a `trainer.precision` value (`"bf16-mixed"`, `32`, ...)."""
    name = _ALIASES.get(str(value), str(value))
    if name not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={value!r} is not one isa4d plan knows; use one of {sorted(PRECISIONS)}."
        )
    return PRECISIONS[name]


# ------------------------------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class ParameterCount:
    """What a LightningModule holds, in values (not bytes).

    Attributes:
        trainable: Values of the parameters the optimisers update.
        frozen: Values of the other parameters (frozen VAE, EMA copies).
        buffers: Bytes of the buffers (at the dtype they are built in).
        cast: Values of the trainable Linear / Conv parameters: autocast casts each once per forward and keeps
            the half-precision copy (its cache) until the forward ends.
        sharded_frozen: Frozen values FSDP shards with the trained network (its EMA); the rest is replicated.
        units: Values of each FSDP unit of the trained network (`ISADiT.shard_units`), largest first.
        root: Values of the trained network outside its units (FSDP's root unit).
    """

    trainable: int
    frozen: int
    buffers: int
    cast: int
    sharded_frozen: int = 0
    units: tuple[int, ...] = ()
    root: int = 0

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


def _values(modules: Iterable[nn.Module], trainable: bool | None = None) -> int:
    params = {id(p): p for m in modules for p in m.parameters()}.values()
    return sum(p.numel() for p in params if trainable is None or p.requires_grad == trainable)


def count_parameters(
    module: nn.Module,
    trained: nn.Module | None = None,
    units: Sequence[nn.Module] = (),
    sharded_frozen: Sequence[nn.Module] = (),
) -> ParameterCount:
    """Count a module's parameters and buffers (works on the meta device).

    Args:
        module: The whole LightningModule (or its parts under one root).
        trained: The network run under autocast and sharded by FSDP (default: `module`).
        units: Its FSDP units (each gathered only while it runs).
        sharded_frozen: Frozen modules FSDP shards like `trained` (its EMA).
    """
    trained = module if trained is None else trained
    trainable = _values([module], trainable=True)
    layers = [m for m in trained.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    cast = sum(p.numel() for m in layers for p in m.parameters(recurse=False) if p.requires_grad)
    sizes = sorted((_values([unit]) for unit in units), reverse=True)
    return ParameterCount(
        trainable=trainable,
        frozen=_values([module]) - trainable,
        buffers=sum(b.numel() * b.element_size() for b in module.buffers()),
        cast=cast,
        sharded_frozen=_values(sharded_frozen),
        units=tuple(sizes),
        root=_values([trained]) - sum(sizes),
    )


_OPTIMIZER_STATES = {"Adam": 2, "AdamW": 2, "SGD": 1, "RMSprop": 1, "Adagrad": 1}
"""State tensors per parameter value of `torch.optim` optimisers (Adam: exp_avg, exp_avg_sq)."""


def optimizer_states(optimizer_cfg: Any, key: str) -> int:
    """State tensors per parameter value that the optimiser config `key` keeps (Adam/AdamW: 2, +1 amsgrad).

    Scalar `step` counters are not counted: `torch.optim` keeps them as 4-byte host tensors.
    """
    target = str(OmegaConf.select(optimizer_cfg, "_target_", default="torch.optim.AdamW"))
    name = target.rsplit(".", 1)[-1]
    if not target.startswith("torch.optim.") or name not in _OPTIMIZER_STATES:
        raise ConfigError(
            f"{key}._target_={target!r}: isa4d plan knows the state of torch.optim "
            f"{', '.join(sorted(_OPTIMIZER_STATES))} only; plan with one of them."
        )
    states = _OPTIMIZER_STATES[name]
    if name in ("Adam", "AdamW") and OmegaConf.select(optimizer_cfg, "amsgrad", default=False):
        states += 1
    if name == "SGD" and not OmegaConf.select(optimizer_cfg, "momentum", default=0):
        states = 0
    return states


# ------------------------------------------------------------------------------------------ DiT activations


@dataclass(frozen=True)
class DiTShapes:
    """Token counts of one ISA-DiT training forward on one GPU.

    Attributes:
        batch: Clips per GPU (B).
        latent_frames: 2-D latent frames of the training window, with a `prefix` reference frame (T').
        patches: 2-D tokens per latent frame, S = (h/p)(w/p).
        video_frames: Video frames of the window: the frames of the 3-D tokens (T).
        points: 3-D tokens per frame, M = persons x points.
        identity_tokens: Global identity tokens of the reference image (M_id).
        latent_hw: (h, w) of the latent.
        prefix: 1 with a clean reference prefix frame (`ref_mode="prefix"`), else 0.
        point_frames: Video frames per latent frame whose points are 3-D tokens (`point_frames_per_latent`).
    """

    batch: int
    latent_frames: int
    patches: int
    video_frames: int
    points: int
    identity_tokens: int
    latent_hw: tuple[int, int]
    prefix: int = 0
    point_frames: int = 4

    @property
    def tokens_2d(self) -> int:
        """L2 = B T' S."""
        return self.batch * self.latent_frames * self.patches

    @property
    def tokens_3d(self) -> int:
        """L3 = B T M."""
        return self.batch * self.video_frames * self.points

    @property
    def grouped_3d(self) -> int:
        """G3 = B T'_video k M: the ISA block's 3-D tokens grouped per latent frame (k of its video frames,
        padding slots included)."""
        return self.batch * (self.latent_frames - self.prefix) * self.point_frames * self.points

    @property
    def context(self) -> int:
        """Lc = B T' (S + M_id): keys of the camera / identity cross-attention."""
        return self.batch * self.latent_frames * (self.patches + self.identity_tokens)


def axis_block_bytes(tokens: int, dim: int, ratio: float, qk_norm: bool, p: Precision) -> float:
    """Saved-for-backward bytes of an adaLN self-attention + FFN block (spatial, temporal, point-temporal).

    Per token, in units of D values: the stream x, LN(x), x', LN(x') (4 s); the modulated input, q k v (3),
    attention output, merged heads, projection, modulated FFN input and FFN output (9 c) and the two FFN
    hidden tensors (2 r c); with q/k RMSNorm the two normalised intermediates (2 s), the two outputs (2 c)
    and, under autocast, the fp32 copies of q and k (2 u). s, c, u: `Precision` stream / compute / upcast.
    """
    s, c, u = p.stream, p.compute, p.upcast
    return tokens * dim * (4 * s + (9 + 2 * ratio) * c + qk_norm * (2 * s + 2 * c + 2 * u))


def isa_block_bytes(
    shapes: DiTShapes, dim: int, ratio: float, qk_norm: bool, mode: str, last: bool, p: Precision
):
    """Saved bytes of the two-branch ISA block (cross_pair or joint; `last`: the 3-D branch gives k/v only).

    3-D branch (L3): x, LN(x), x', LN(x') (4 s), input, q k v, projection, FFN input and output (7 c), FFN
    hidden (2 r c), q/k norms (2 s + 2 u); the last layer's: x, LN(x) (2 s), input, k, v (3 c), k norm
    (s + u).
    Grouped 3-D tokens (G3): q, k, v, the 3-D attention output and its merged heads (5 c); last layer: k, v.
    2-D branch (L2): as an axis block, with the joint mode's concatenated q/k/v/output instead of the
    normalised q and k (4 c); last layer (cross_pair: q only): 4 s + (7 + 2r) c + q norm (s + u + c).
    """
    s, c, u = p.stream, p.compute, p.upcast
    L2, L3, G3 = shapes.tokens_2d, shapes.tokens_3d, shapes.grouped_3d
    if not last:
        per3 = 4 * s + (7 + 2 * ratio) * c + qk_norm * (2 * s + 2 * u)
        per2 = 4 * s + (9 + 2 * ratio) * c + qk_norm * (2 * s + 2 * u + 2 * c)
        if mode == "joint":
            per2 = 4 * s + (12 + 2 * ratio) * c + qk_norm * (2 * s + 2 * u)
        return dim * (L3 * per3 + G3 * 5 * c + L2 * per2)
    per3 = 2 * s + 3 * c + qk_norm * (s + u)
    per2 = 4 * s + (7 + 2 * ratio) * c + qk_norm * (s + u + c)
    if mode == "joint":
        per2 = 4 * s + (11 + 2 * ratio) * c + qk_norm * (2 * s + 2 * u + c)
    return dim * (L3 * per3 + G3 * 2 * c + L2 * per2)


def cross_block_bytes(shapes: DiTShapes, dim: int, qk_norm: bool, p: Precision) -> float:
    """Saved bytes of the camera / identity cross-attention: per 2-D token x, LN(x) (2 s), input, q, output,
    merged heads, projection (5 c), q norm (s + u + c); per context token the concatenated context, k, v
    (3 c) and the k norm (s + u + c)."""
    s, c, u = p.stream, p.compute, p.upcast
    norm = qk_norm * (s + u + c)
    return dim * (shapes.tokens_2d * (2 * s + 5 * c + norm) + shapes.context * (3 * c + norm))


def dit_activation_bytes(
    config: Mapping[str, Any],
    shapes: DiTShapes,
    p: Precision,
    checkpointing: bool,
    embed: Mapping[str, int],
) -> dict[str, float]:
    """Activation bytes of one ISA-DiT training forward on one GPU: what autograd keeps for backward.

    Without checkpointing: the sum over layers of the block formulas (`axis_block_bytes`, `isa_block_bytes`,
    `cross_block_bytes`) plus the embeddings and the final layer. With gradient checkpointing every layer
    keeps only its inputs (x2: L2 D s, x3: L3 D s; and once the camera tokens and ISPE encodings all layers
    read) and the backward pass recomputes one layer at a time: embeddings + final + depth x inputs + the
    largest layer.

    Args:
        config: `ISADiT.config`.
        shapes: Token counts.
        p: The precision.
        checkpointing: Gradient checkpointing of the layers.
        embed: Widths the embeddings read: `in_channels`, `point_features` (γ of a body point),
            `pe_dim` (ISPE encoding, 0 without ISPE).

    Returns:
        Bytes of the `embeddings`, the `final` layer, the `resident` part with checkpointing (embeddings,
        final, the layers' inputs), the largest layer (`layer_max`), `with_checkpointing`,
        `without_checkpointing` and the `total` (one of the two).
    """
    D, depth, patch = config["hidden_size"], config["depth"], config["patch_size"]
    ratio = int(D * config["mlp_ratio"]) / D
    qk, mode, three_d = bool(config["qk_norm"]), config["isa_mode"], config["branch_3d"]
    s, c = p.stream, p.compute
    L2, L3 = shapes.tokens_2d, shapes.tokens_3d

    self_attention_2d = (
        1 if config.get("attention_2d") == "full" else 2
    )  # spatio-temporal, or spatial + temporal

    def layer(last: bool) -> float:
        total = self_attention_2d * axis_block_bytes(L2, D, ratio, qk, p) + cross_block_bytes(
            shapes, D, qk, p
        )
        if three_d:
            total += axis_block_bytes(L3, D, ratio, qk, p) + isa_block_bytes(
                shapes, D, ratio, qk, mode, last, p
            )
        else:
            total += axis_block_bytes(L2, D, ratio, qk, p)
        if config["control"] == "padaln":
            total += 2 * L2 * D * s
        return total

    main = [layer(i == depth - 1) for i in range(depth)]
    copies = []
    if config["control"] == "controlnet":
        count = math.ceil(depth / 2) if config["controlnet_layers"] is None else config["controlnet_layers"]
        copies = [layer(i == depth - 1) + L2 * D * c for i in range(count)]
    h, w = shapes.latent_hw
    embeddings = L2 * patch * patch * (embed["in_channels"] + 24) * c  # latent and Plücker patches
    pe = (L3 + shapes.patches) * embed["pe_dim"] if three_d else 0  # ISPE encodings (fp32, shared by layers)
    if three_d:
        embeddings += L3 * (embed["point_features"] + 2 * D) * c  # body-point MLP
        embeddings += shapes.batch * h * w * (config["latent_channels"] * c + D * 4)  # reference sampler
    final = L2 * D * (2 * s + c)
    inputs = (L2 + (L3 if three_d else 0)) * D * s
    # Checkpointing keeps each layer's inputs and the arguments all layers share: the camera tokens, the ISPE.
    resident = embeddings + final + len(main + copies) * inputs + L2 * D * s + pe * 4
    with_checkpointing = resident + max(main + copies)
    # Without, each layer saves the ISPE encodings it reads: the shared fp32 tensor, else a cast per layer.
    without = embeddings + final + sum(main + copies) + pe * (c if c == 4 else depth * c)
    return {
        "embeddings": embeddings,
        "final": final,
        "resident": resident,
        "layer_max": max(main + copies),
        "with_checkpointing": with_checkpointing,
        "without_checkpointing": without,
        "total": with_checkpointing if checkpointing else without,
    }


def token_shapes(
    dit: nn.Module, batch: int, latents: int, frames: int, points: int, latent_hw: tuple[int, int]
) -> DiTShapes:
    """The token counts of `dit` on a window of `latents` latent frames and `frames` video frames (4T' - 3 for
    a clip's start, 4T' mid-clip) with `points` body points per frame, `latent_hw` latents, `batch` clips."""
    from isa4d.models.dit import frame_padding, point_frame_slice

    h, w = latent_hw
    p, prefix = dit.patch_size, int(dit.ref_mode == "prefix")
    k = dit.config.get("point_frames_per_latent", 4)
    kept = len(range(frames)[point_frame_slice(frame_padding(frames, latents), k)[0]]) if k != 4 else frames
    encoder = dit.image_encoder
    return DiTShapes(
        batch=batch,
        latent_frames=latents + prefix,
        patches=(h // p) * (w // p),
        video_frames=kept,
        points=points,
        identity_tokens=0 if encoder is None else encoder.num_tokens,
        latent_hw=latent_hw,
        prefix=prefix,
        point_frames=k,
    )


def dit_shapes(dit: nn.Module, vae: nn.Module, model_cfg: Any, data_cfg: Any, batch: int) -> DiTShapes:
    """Token counts of a DiT training step: the data's clips, the model's training window and persons."""
    height, width = _resolution(data_cfg)
    f = vae.spatial_factor
    if height % f or width % f:
        raise ConfigError(f"data.resolution={height}x{width} must be a multiple of the VAE's {f}.")
    h, w, p = height // f, width // f, dit.patch_size
    if h % p or w % p:
        raise ConfigError(
            f"data.resolution={height}x{width}: its latent {h}x{w} is not divisible by patch {p}."
        )
    clip_latents = _latent_frames(vae, data_cfg)
    window = OmegaConf.select(model_cfg, "window_latents", default=None)
    latents, frames = clip_latents, 4 * clip_latents - 3
    if window is not None and window < clip_latents:
        mid_clip = float(OmegaConf.select(model_cfg, "window_prob", default=0.0)) > 0
        latents, frames = window, 4 * window - 3 * (not mid_clip)  # a mid-clip window has 4 frames per latent
    points = int(OmegaConf.select(data_cfg, "max_persons", default=1)) * int(model_cfg.num_points)
    return token_shapes(dit, batch, latents, frames, points, (h, w))


def dit_embedding_widths(dit: nn.Module) -> dict[str, int]:
    """The input widths `dit_activation_bytes` needs from a built ISA-DiT."""
    return {
        "in_channels": dit.x_embedder.proj.in_features // dit.patch_size**2,
        "point_features": dit.point_encoder.encoding.out_dim if dit.branch_3d else 0,
        "pe_dim": dit.ispe.out_dim if dit.use_ispe else 0,
    }


# ------------------------------------------------------------------------------------------ VAE activations


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def saved_tensor_bytes(
    fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = (), blocks: Sequence[nn.Module] = ()
) -> tuple[int, list[int], list[int]]:
    """Bytes that autograd saves for backward while `fn()` runs (each storage once; `exclude`d ones, e.g. the
    parameters, not at all), on real or meta tensors.

    Returns:
        The total; per block of `blocks` the bytes saved inside it and the bytes of its input.
    """
    excluded = {_storage_key(t) for t in exclude}
    seen: set[int] = set()
    inside: list[int | None] = [None]
    per_block, inputs = [0] * len(blocks), [0] * len(blocks)
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = _storage_key(t)
        if key not in excluded and key not in seen:
            seen.add(key)
            size = t.untyped_storage().nbytes()
            total += size
            if inside[-1] is not None:
                per_block[inside[-1]] += size
        return t

    def leave(*_: Any) -> None:
        inside.pop()

    handles = []
    for index, block in enumerate(blocks):

        def enter(module: nn.Module, args: tuple, index: int = index) -> None:
            inside.append(index)
            inputs[index] = sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor))

        handles.append(block.register_forward_pre_hook(enter))
        handles.append(block.register_forward_hook(leave))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
    finally:
        for handle in handles:
            handle.remove()
    return total, per_block, inputs


def vae_blocks(vae: nn.Module) -> list[nn.Module]:
    """The blocks the VAE checkpoints with `gradient_checkpointing` (encoder/decoder stages, mid blocks)."""
    return [*vae.encoder.down_blocks, vae.encoder.mid_block, vae.decoder.mid_block, *vae.decoder.up_blocks]


def vae_activation_bytes(module: nn.Module, x: torch.Tensor, checkpointing: bool) -> dict[str, float]:
    """Activation bytes of one VAE generator step, counted while it runs on `x` (meta tensors: no memory).

    Runs encode, posterior sample, decode and the generator loss (L1, KL, the auxiliary decoder, the
    discriminators on the reconstruction; LPIPS when built) of `module` (a `VAEModule`, on the device of `x`)
    under `saved_tensor_bytes`: every conv, norm and activation saves fixed tensors of known shape, so on the
    meta device this is what a real step saves (the mid-block attention is counted with the math kernel's
    attention matrix, which a GPU's fused kernel does not keep). With gradient checkpointing each block of
    `vae_blocks` keeps its input and one block is recomputed at a time.

    Args:
        module: The `VAEModule` (its loss is run in eval mode: no adaptive GAN weight, whose two
            `autograd.grad` of the last layer add no activations).
        x: The video batch (B, 3, T, H, W), in the dtype to count (fp32 for 32-true and the mixed
            precisions: an upper bound under autocast, which keeps the norms in fp32 and casts conv inputs).
        checkpointing: Gradient checkpointing of the blocks.
    """
    vae, loss = module.vae, module.loss
    was_training, blocks = loss.training, vae_blocks(vae)
    vae.set_gradient_checkpointing(False)
    loss.eval()

    def step() -> None:
        posterior = vae.encode(x)
        z = posterior.sample()
        loss(x, vae.decode(z), posterior, max(loss.disc_start, 0), z=z)

    try:
        total, per_block, inputs = saved_tensor_bytes(step, module.parameters(), blocks)
    finally:
        vae.set_gradient_checkpointing(checkpointing)
        loss.train(was_training)
    resident = total - sum(per_block) + sum(inputs)
    return {
        "resident": resident,
        "layer_max": max(per_block),
        "with_checkpointing": resident + max(per_block),
        "without_checkpointing": total,
        "total": resident + max(per_block) if checkpointing else total,
    }


# ------------------------------------------------------------------------------------------ the plan


@dataclass
class StagePlan:
    """A stage built on the meta device: what `memory_rows` needs."""

    stage: str
    description: str
    count: ParameterCount
    optimizer_values: int  # values of optimiser state (state tensors x trainable values)
    activation: dict[str, float]  # per GPU (bytes)
    tokens: dict[str, int]  # per GPU step
    checkpointing: bool
    precision: Precision
    notes: list[str] = field(default_factory=list)
    accumulate: int = 1  # trainer.accumulate_grad_batches


def _latent_frames(vae: nn.Module, data_cfg: Any) -> int:
    """Latent frames of `data.num_frames` video frames (a `ConfigError` naming the key if it has none)."""
    try:
        return vae.latent_frames(int(data_cfg.num_frames))
    except ValueError as error:
        raise ConfigError(f"data.num_frames={data_cfg.num_frames}: {error}.") from error


def _resolution(data_cfg: Any) -> tuple[int, int]:
    resolution = data_cfg.resolution
    if isinstance(resolution, int):
        return resolution, resolution
    height, width = resolution
    return int(height), int(width)


def _vae_config(cfg: DictConfig) -> dict[str, Any]:
    """The frozen VAE a DiT run holds: the config in `model.vae_ckpt` when it is a file, else `vae_model`."""
    from isa4d.models.vae import VAE_MODELS, build_vae
    from isa4d.modules.checkpoints import read_checkpoint

    ckpt = OmegaConf.select(cfg, "model.vae_ckpt", default=None, throw_on_missing=False)
    if ckpt not in (None, "???") and Path(str(ckpt)).is_file():
        return dict(read_checkpoint(ckpt, stage="vae", mmap=True)["hyper_parameters"]["vae"])
    name = cfg.get("vae_model")
    if name not in VAE_MODELS:
        raise ConfigError(
            f"vae_model={name!r} (the frozen VAE of a DiT run, without a model.vae_ckpt file) must be one "
            f"of {sorted(VAE_MODELS)}."
        )
    with torch.device("meta"):
        return dict(build_vae(name).config)


def plan_dit(cfg: DictConfig, precision: Precision, batch: int) -> StagePlan:
    """The DiT stage: the ISA-DiT (trainable), its EMA copy and the frozen VAE, on the meta device."""
    from isa4d.models.vae import VideoVAE
    from isa4d.modules.ema import EMA

    model = cfg.model
    states = optimizer_states(model.get("optimizer"), "model.optimizer")  # config errors before building
    vae_config = _vae_config(cfg)
    with torch.device("meta"):
        dit = instantiate(model.dit)
        vae = VideoVAE.from_config(vae_config).requires_grad_(False)
        parts = nn.ModuleDict({"dit": dit, "vae": vae})
        if model.get("ema_decay") is not None:
            parts["ema"] = EMA(dit, model.ema_decay)
    checkpointing = bool(model.get("gradient_checkpointing", False))
    ema = [parts["ema"]] if "ema" in parts else []
    count = count_parameters(parts, trained=dit, units=dit.shard_units(), sharded_frozen=ema)
    shapes = dit_shapes(dit, vae, model, cfg.data, batch)
    activation = dit_activation_bytes(dit.config, shapes, precision, checkpointing, dit_embedding_widths(dit))
    name = OmegaConf.select(model, "dit.name", default="?")
    return StagePlan(
        stage="dit",
        description=(
            f"ISA-DiT `{name}` (D {dit.hidden_size}, {dit.config['depth']} layers), frozen VAE, "
            f"{'EMA, ' if 'ema' in parts else ''}batch {batch} per GPU of {cfg.data.num_frames}-frame clips "
            f"at {'x'.join(map(str, _resolution(cfg.data)))}: {shapes.latent_frames} latent frames, "
            f"3-D tokens on {shapes.video_frames} frames x {shapes.points} body points"
        ),
        count=count,
        optimizer_values=states * count.trainable,
        activation=activation,
        tokens={"2-D tokens": shapes.tokens_2d, "3-D tokens": shapes.tokens_3d if dit.branch_3d else 0},
        checkpointing=checkpointing,
        precision=precision,
        notes=[
            "Not counted: the body model's buffers, the image encoder's activations, the loss and output "
            "tensors (each < 1 % here)."
        ],
    )


def plan_vae(cfg: DictConfig, precision: Precision, batch: int) -> StagePlan:
    """The VAE stage: VAE, auxiliary decoder and discriminators (trainable), EMA, on the meta device."""
    model = copy.deepcopy(cfg.model)
    notes = []
    with open_dict(model):
        for key in ("init_from_sd3", "init_from_ckpt", "shortcut_init_batches"):
            model.pop(key, None)  # weights and data: irrelevant to the sizes
        if model.loss.get("lpips") is not None:
            notes.append("LPIPS (frozen VGG16: 14.7 M buffer values, its activations) is not built: add it.")
            model.loss.lpips = None
    generator_states = optimizer_states(model.get("optimizer"), "model.optimizer")  # before building
    disc_states = optimizer_states(model.get("disc_optimizer"), "model.disc_optimizer")
    with torch.device("meta"):
        module = instantiate(model)
    checkpointing = bool(model.get("gradient_checkpointing", False))
    count = count_parameters(module)
    frames = int(cfg.data.num_frames)
    height, width = _resolution(cfg.data)
    _latent_frames(module.vae, cfg.data)
    latent = module.vae.latent_shape(frames, height, width)
    dtype = torch.float32 if precision.autocast else {4: torch.float32, 2: torch.bfloat16}[precision.compute]
    module.to(dtype)
    video = torch.zeros(batch, 3, frames, height, width, device="meta", dtype=dtype)
    activation = vae_activation_bytes(module, video, checkpointing)
    generator = sum(p.numel() for p in module.parameters() if p.requires_grad) - sum(
        p.numel() for d in module.loss.discriminators().values() for p in d.parameters()
    )
    states = generator_states * generator + disc_states * (count.trainable - generator)
    notes.append("Not counted: the discriminator step's activations (smaller than the generator step's).")
    return StagePlan(
        stage="vae",
        description=(
            f"video VAE (base {module.vae.config['base_channels']}), batch {batch} per GPU of "
            f"{frames} frames at {height}x{width}"
        ),
        count=count,
        optimizer_values=states,
        activation=activation,
        tokens={
            "latent tokens": batch * latent[1] * latent[2] * latent[3],
            "pixels": batch * frames * height * width,
        },
        checkpointing=checkpointing,
        precision=precision,
        notes=notes,
    )


def memory_row(plan: StagePlan, strategy: str, gpus: int, bucket_view: bool = True) -> dict[str, Any]:
    """Bytes per GPU of `plan` trained with `strategy` on `gpus` GPUs (docs/plan.md has the formulas).

    `single` / `ddp`: everything replicated; DDP without `gradient_as_bucket_view` holds its all-reduce
    buckets besides the gradients. `fsdp` (FSDP2 as `DiTModule.configure_model` shards: every layer a unit,
    the rest of the DiT the root unit, the EMA like the DiT, the frozen VAE replicated, parameters kept in
    the master dtype): parameters, gradients and optimiser state of the DiT / the number of GPUs, plus the
    gathered root and two layers (one prefetched) and one layer's unsharded gradient. Under autocast every
    trainable Linear / Conv weight has a half-precision copy in autocast's cache until the forward ends
    (`copies`).
    """
    p, n = plan.precision, plan.count
    shard = gpus if strategy == "fsdp" else 1
    row: dict[str, Any] = {
        "strategy": strategy,
        "gpus": gpus,
        "trainable": n.trainable * p.master / shard,
        "frozen": (n.sharded_frozen / shard + n.frozen - n.sharded_frozen) * p.master + n.buffers,
        "gradients": n.trainable * p.master / shard,
        "optimizer": plan.optimizer_values * p.master / shard,
        "activations": plan.activation["total"],
        "copies": n.cast * p.compute if p.autocast else 0.0,
    }
    if strategy == "fsdp":
        row["copies"] += (n.root + sum(n.units[:2]) + n.units[0]) * p.master
    elif strategy == "ddp" and not bucket_view:
        row["gradients"] *= 2
    row["total"] = sum(
        row[k] for k in ("trainable", "frozen", "gradients", "optimizer", "activations", "copies")
    )
    return row


def strategy_of(trainer_cfg: Any) -> str:
    """`single`, `ddp` or `fsdp` (`FSDPStrategy` or `ModelParallelStrategy`) of a trainer config."""
    strategy = trainer_cfg.get("strategy")
    target = str(strategy.get("_target_", "")) if isinstance(strategy, Mapping) else str(strategy or "")
    if "FSDP" in target or "ModelParallel" in target or target.startswith("fsdp"):
        return "fsdp"
    return "ddp" if "DDP" in target or target.startswith("ddp") else "single"


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def format_plan(plan: StagePlan, rows: list[dict], gpu_memory_gib: float | None) -> str:
    """The plan as markdown: the model, tokens, then one row per strategy x GPU count."""
    n, p = plan.count, plan.precision
    act = plan.activation
    lines = [
        f"# isa4d plan: {plan.stage.upper()} stage",
        "",
        f"{plan.description}; precision {p.name}, "
        f"gradient checkpointing {'on' if plan.checkpointing else 'off'}.",
        "",
        f"Parameters: {n.trainable / 1e6:,.1f} M trainable, {n.frozen / 1e6:,.1f} M frozen "
        f"(buffers {n.buffers / 2**20:,.1f} MiB). "
        f"Optimiser state: {plan.optimizer_values / 1e6:,.1f} M values.",
        "Tokens per GPU step: " + ", ".join(f"{k} {v:,}" for k, v in plan.tokens.items()) + ".",
        f"Activations per GPU: with gradient checkpointing {_gib(act['with_checkpointing'])} GiB "
        f"({_gib(act['resident'])} kept + {_gib(act['layer_max'])} of the largest block recomputed), without "
        f"{_gib(act['without_checkpointing'])} GiB; the table counts the config's "
        f"({'with' if plan.checkpointing else 'without'}).",
        "",
        "| GPUs | strategy | trainable GiB | frozen GiB | gradients GiB | optimizer GiB | activations GiB "
        "| gathered / autocast copies GiB | total GiB | tokens per optimizer step |"
        + (" fits |" if gpu_memory_gib else ""),
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        + (" --- |" if gpu_memory_gib else ""),
    ]
    tokens = plan.accumulate * (
        sum(plan.tokens.values()) if plan.stage == "dit" else plan.tokens["latent tokens"]
    )
    for row in rows:
        fits = ""
        if gpu_memory_gib:
            fits = f" {'yes' if row['total'] <= gpu_memory_gib * GIB else 'no'} |"
        lines.append(
            f"| {row['gpus']} | {row['strategy']} | {_gib(row['trainable'])} | {_gib(row['frozen'])} | "
            f"{_gib(row['gradients'])} | {_gib(row['optimizer'])} | {_gib(row['activations'])} | "
            f"{_gib(row['copies'])} | **{_gib(row['total'])}** | {tokens * row['gpus']:,} |{fits}"
        )
    lines += ["", *plan.notes]
    return "\n".join(lines) + "\n"


def build_plan(cfg: DictConfig) -> tuple[StagePlan, list[dict]]:
    """The stage plan and its rows (strategies x GPU counts) of a composed `conf/plan.yaml`."""
    target = str(OmegaConf.select(cfg, "model._target_", default=""))
    stages = {"isa4d.modules.DiTModule": plan_dit, "isa4d.modules.VAEModule": plan_vae}
    if target not in stages:
        raise ConfigError(
            f"model._target_={target!r}: isa4d plan plans {sorted(stages)}; pick a model= or experiment= of "
            "one of the two stages."
        )
    if cfg.get("data") is None or "num_frames" not in cfg.data:
        raise ConfigError(
            "isa4d plan needs a data config with num_frames and resolution: set data= or experiment=."
        )
    trainer = cfg.trainer
    precision = precision_of(trainer.get("precision", "32-true"))
    own = strategy_of(trainer)
    strategies = list(dict.fromkeys(cfg.get("strategies") or [own]))
    unknown = [name for name in strategies if name not in STRATEGIES]
    if unknown:
        raise ConfigError(f"strategies={unknown}: isa4d plan knows {list(STRATEGIES)}.")
    if "fsdp" in strategies and target.endswith("VAEModule"):
        raise ConfigError(
            "strategies/trainer: the VAE stage trains with DDP (VAEModule refuses FSDP); plan it with "
            "strategies=[ddp] or trainer=ddp."
        )
    devices = trainer.get("devices", 1)
    per_node = devices if isinstance(devices, int) else int(cfg.gpus_per_node)
    gpus = [int(g) for g in (cfg.get("gpus") or [per_node * int(trainer.get("num_nodes", 1))])]
    if any(g < 1 for g in gpus):
        raise ConfigError(f"gpus={gpus}: every GPU count must be >= 1.")
    plan = stages[target](cfg, precision, int(cfg.data.batch_size))
    plan.accumulate = int(trainer.get("accumulate_grad_batches", 1))
    strategy_cfg = trainer.get("strategy") if own == "ddp" else None
    bucket_view = bool(strategy_cfg.get("gradient_as_bucket_view", False)) if strategy_cfg else True
    rows = [memory_row(plan, "single", 1)] if "single" in strategies else []
    rows += [memory_row(plan, name, g, bucket_view) for name in strategies if name != "single" for g in gpus]
    return plan, rows


def main(cfg: DictConfig) -> str:
    """Hydra task of `isa4d plan` (conf/plan.yaml): print the plan (and write it to `output`)."""
    if cfg.get("output"):
        check_output_file(cfg.output, "output", (".md", ".txt"))
    plan, rows = build_plan(cfg)
    text = format_plan(plan, rows, cfg.get("gpu_memory_gib"))
    print(text, end="")
    if cfg.get("output"):
        write_text_atomic(cfg.output, text)
    return text
