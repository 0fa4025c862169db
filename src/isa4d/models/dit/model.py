"""ISA-DiT (paper §5, SPEC §2): a video DiT with a 2-D latent branch and a 3-D body-point branch joined by
symmetric interspatial attention; identity, camera and background conditioning; named sizes. The
ablation baselines of SPEC §3 are options of the same network (docs/baselines.md): no 3-D branch, a
rendered control video (ControlNet copy, PadaLN or channel concatenation), the reference as a prefix frame.

Read top to bottom: `ISADiTLayer` (the five steps of one layer), `ISADiT` (embeddings → layers → final
layer), `initialize_weights()`, the size factories and `DIT_MODELS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from isa4d.geometry import plucker_image
from isa4d.models.dit.attention import ATTENTION_BACKENDS
from isa4d.models.dit.blocks import (
    AdaLNModulation,
    ControlAdaLN,
    CrossAttentionBlock,
    FinalLayer,
    ISABlock,
    PointTemporalBlock,
    SpatialBlock,
    SpatioTemporalBlock,
    TemporalBlock,
)
from isa4d.models.dit.conditions import (
    FRAMES_PER_LATENT,
    DiTConditions,
    frame_padding,
    point_frame_slice,
)
from isa4d.models.dit.embeddings import (
    InterspatialPE,
    PatchEmbed,
    ReferenceFeatureSampler,
    SMPLTokenEncoder,
    TimestepEmbedder,
    camera_rays,
    sincos_1d,
    sincos_2d,
    unpatchify,
)
from isa4d.models.dit.image_encoders import build_image_encoder

PLUCKER_CHANNELS = 6
REF_MODES = ("concat", "prefix")
"""How the reference latent enters the 2-D branch: concatenated on channels, or a clean prefix frame."""
CONTROLS = ("controlnet", "padaln", "concat")
"""How a rendered control video enters the 2-D branch (`control=None`: no control video)."""
ATTENTION_2D = ("factorized", "full")
"""Self-attention of the 2-D tokens: spatial + temporal blocks (the paper), or one spatio-temporal block."""
ISA_INITS = ("xavier", "aligned")
"""Initialisation of the ISA blocks' projections: DiT's Xavier, or aligned (`ISABlock.align_positions`)."""
ALIGNED_PE_GAIN = 3.0
"""Default `pe_proj` gain of `isa_init="aligned"` (`aligned_pe_gain`): with it a fresh tiny model puts 1.8x
the uniform share of its rendering attention on the points over each token (1.2x at gain 1, 1.0x with
Xavier; docs/dit.md; ×10 trains no better, docs/train_dit.md)."""


class ISADiTLayer(nn.Module):
    """One ISA-DiT layer (paper eq. 15–18 + conditioning), in the SPEC order:

    1. `SpatialBlock` on the 2-D tokens; 2. `TemporalBlock` on the 2-D tokens; 3. `PointTemporalBlock` on
    the 3-D tokens; 4. `ISABlock` (3-D ↔ 2-D); 5. `CrossAttentionBlock` (2-D → camera + identity).

    With `attention_2d="full"` (the cost baseline) steps 1 and 2 are one `SpatioTemporalBlock`: full
    self-attention over all T'·S 2-D tokens.

    Without the 3-D branch (`branch_3d=False`, the 2-D baselines) step 3 is gone and step 4 is the ISA
    block's 2-D branch alone: with no 3-D keys that is a `SpatialBlock` (`isa_2d`: adaLN, self-attention
    over the latent frame's tokens, FFN; the same parameters as the ISA block's 2-D branch).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        isa_mode: str,
        pe_dim: int | None,
        last: bool,
        qk_norm: bool,
        branch_3d: bool = True,
        attention_2d: str = "factorized",
        isa_null_key: bool = False,
    ) -> None:
        super().__init__()
        if attention_2d not in ATTENTION_2D:
            raise ValueError(f"unknown attention_2d {attention_2d!r}; choose from {ATTENTION_2D}")
        self.branch_3d, self.full = branch_3d, attention_2d == "full"
        if self.full:
            self.spatio_temporal = SpatioTemporalBlock(dim, heads, mlp_ratio, qk_norm)
        else:
            self.spatial = SpatialBlock(dim, heads, mlp_ratio, qk_norm)
            self.temporal = TemporalBlock(dim, heads, mlp_ratio, qk_norm)
        if branch_3d:
            self.point_temporal = PointTemporalBlock(dim, heads, mlp_ratio, qk_norm)
            self.isa = ISABlock(
                dim, heads, mlp_ratio, isa_mode, pe_dim, pre_only=last, qk_norm=qk_norm, null_key=isa_null_key
            )
        else:
            self.isa_2d = SpatialBlock(dim, heads, mlp_ratio, qk_norm)
        self.cross = CrossAttentionBlock(dim, heads, qk_norm)

    def forward(
        self,
        x2: torch.Tensor,
        x3: torch.Tensor | None,
        c: torch.Tensor,
        c2: torch.Tensor,
        key_mask3: torch.Tensor | None,
        pad: int,
        pe3: torch.Tensor | None,
        pe2: torch.Tensor | None,
        camera: torch.Tensor,
        identity: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x2: (B, T', S, D) 2-D tokens; x3: (B, T, M, D) 3-D tokens (None without the 3-D branch); c: (B, D)
        conditioning; c2: (B, D) or (B, T', D) conditioning of the 2-D tokens; the rest as in `ISABlock` and
        `CrossAttentionBlock`. Returns the updated (x2, x3)."""
        x2 = self.spatio_temporal(x2, c2) if self.full else self.temporal(self.spatial(x2, c2), c2)
        if self.branch_3d:
            x3 = self.point_temporal(x3, c)
            x3, x2 = self.isa(x3, x2, c, key_mask3, pad, pe3, pe2, c2=c2)
        else:
            x2 = self.isa_2d(x2, c2)
        return self.cross(x2, c2, camera, identity), x3


class ISADiT(nn.Module):
    """The ISA diffusion transformer: `forward(x_t, t, cond) -> v`, the flow-matching velocity.

    Args:
        latent_channels: C of the VAE latent (16).
        patch_size: p.
        hidden_size: D (both branches).
        depth: Number of `ISADiTLayer`s.
        num_heads: Attention heads (D % heads == 0).
        mlp_ratio: FFN expansion.
        isa_mode: `"cross_pair"` (the paper's two cross-attentions) or `"joint"` (MM-DiT).
        use_ispe: Interspatial positional encoding; False is the `isa_no_pe` ablation.
        ispe_bands: L of the ISPE γ (keep `4 / 2^(L-1) ≥ 2 / min(h/p, w/p)`, see `InterspatialPE`).
        ispe_near: Near plane of the ISPE MVP (metres).
        ispe_far: Far plane of the ISPE MVP (metres).
        point_bands: L of the body-point γ.
        point_max_period: Lowest band's period of the body-point γ (metres).
        use_canonical: Add the canonical-position term to the 3-D tokens (not in the paper).
        image_encoder: Global identity encoder spec (`build_image_encoder`): None, `"small"` or a dict.
        qk_norm: RMS-normalise queries and keys in every attention.
        attention_backend: `"sdpa"` or `"xformers"` (see `isa4d.models.dit.attention`).
        gradient_checkpointing: Recompute each layer's activations in the backward pass.
        branch_3d: The 3-D branch (body-point tokens, ISPE, ISA, pixel-aligned identity); False keeps the
            2-D blocks only (`ISADiTLayer`) and ignores the point, ISA and ISPE options (2-D baselines).
        ref_mode: `"concat"`: the reference latent on channels of every frame; `"prefix"` (HumanDiT): the
            reference latent as a clean latent frame 0 (time 0 in its adaLN, no 3-D keys, the reference
            camera's Plücker tokens), dropped from the output, so the loss never sees it.
        control: How `DiTConditions.control_latent` enters (None: not at all): `"controlnet"` (a trainable
            copy of the first `controlnet_layers` layers, fed `x2 + zero-linear(control patches)`, each
            output through a zero-init linear added to the main layer's 2-D tokens), `"padaln"` (control
            patches through `ControlAdaLN` before every layer, zero gate) or `"concat"` (C more input
            channels with zero-initialised patch weights).
        control_video: What `ConditionBuilder` renders for `control_latent`: `"normal"` (normal maps) or
            `"body"` (shaded part-coloured bodies); required with `control`, None without.
        controlnet_layers: Layers copied by the ControlNet; None: half the depth (rounded up).
        attention_2d: `"factorized"` (spatial + temporal blocks, the paper) or `"full"` (one block of full
            spatio-temporal self-attention over all T'·S 2-D tokens in their place: the cost baseline;
            the 3-D branch, ISA and cross-attention are unchanged).
        point_frames_per_latent: Video frames of each latent frame whose body points become 3-D tokens:
            4 (all, the paper), 2 or 1 (every 2nd / 4th video frame, `point_frame_slice`): the 3-D branch
            carries 4·M tokens per latent frame through every layer, this cuts them (and its cost) by 2×
            or 4×; the ISPE of each kept token still uses its own frame's camera.
        compile: `torch.compile` every layer in place (`compile_blocks`: one full graph per layer, state
            dict keys unchanged).
        isa_init: `"xavier"` (DiT's initialisation) or `"aligned"`: every ISA block starts with its 3-D
            key/query projections equal to the 2-D query/key ones and the ISPE projection ×
            `aligned_pe_gain`, so its cross-attentions favour the points over each token from the first
            step (`ISABlock.align_positions`; an initialisation, not in the paper).
        isa_null_key: Every ISA cross-attention also has a learned null key/value ("nothing here"), so a
            token with no point over it can attend that instead (`ISABlock`; not in the paper).
        aligned_pe_gain: The ISPE projection's gain of `isa_init="aligned"` (`ALIGNED_PE_GAIN`).
    """

    def __init__(
        self,
        latent_channels: int = 16,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 8,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        isa_mode: str = "cross_pair",
        use_ispe: bool = True,
        ispe_bands: int = 6,
        ispe_near: float = 0.5,
        ispe_far: float = 20.0,
        point_bands: int = 10,
        point_max_period: float = 16.0,
        use_canonical: bool = True,
        image_encoder: str | Mapping[str, Any] | None = "small",
        qk_norm: bool = True,
        attention_backend: str = "sdpa",
        gradient_checkpointing: bool = False,
        branch_3d: bool = True,
        ref_mode: str = "concat",
        control: str | None = None,
        control_video: str | None = None,
        controlnet_layers: int | None = None,
        attention_2d: str = "factorized",
        point_frames_per_latent: int = FRAMES_PER_LATENT,
        compile: bool = False,
        isa_init: str = "xavier",
        isa_null_key: bool = False,
        aligned_pe_gain: float = ALIGNED_PE_GAIN,
    ) -> None:
        super().__init__()
        if isa_init not in ISA_INITS:
            raise ValueError(f"unknown isa_init {isa_init!r}; choose from {ISA_INITS}")
        if ref_mode not in REF_MODES:
            raise ValueError(f"unknown ref_mode {ref_mode!r}; choose from {REF_MODES}")
        if control is not None and control not in CONTROLS:
            raise ValueError(f"unknown control {control!r}; choose None or one of {CONTROLS}")
        if (control is None) != (control_video is None):
            raise ValueError(
                f"control={control!r} needs control_video (what to render, e.g. 'normal') and vice versa"
            )
        point_frame_slice(0, point_frames_per_latent)  # raises for a count other than 1, 2, 4
        num_copies = math.ceil(depth / 2) if controlnet_layers is None else controlnet_layers
        if control == "controlnet" and not 1 <= num_copies <= depth:
            raise ValueError(f"controlnet_layers must be in [1, depth={depth}], got {controlnet_layers}")
        self.config: dict[str, Any] = {
            "latent_channels": latent_channels,
            "patch_size": patch_size,
            "hidden_size": hidden_size,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "isa_mode": isa_mode,
            "use_ispe": use_ispe,
            "ispe_bands": ispe_bands,
            "ispe_near": ispe_near,
            "ispe_far": ispe_far,
            "point_bands": point_bands,
            "point_max_period": point_max_period,
            "use_canonical": use_canonical,
            "image_encoder": dict(image_encoder) if isinstance(image_encoder, Mapping) else image_encoder,
            "qk_norm": qk_norm,
            "attention_backend": attention_backend,
            "gradient_checkpointing": gradient_checkpointing,
            "branch_3d": branch_3d,
            "ref_mode": ref_mode,
            "control": control,
            "control_video": control_video,
            "controlnet_layers": controlnet_layers,
            "attention_2d": attention_2d,
            "point_frames_per_latent": point_frames_per_latent,
            "compile": compile,
            "isa_init": isa_init,
            "isa_null_key": isa_null_key,
            "aligned_pe_gain": aligned_pe_gain,
        }
        D, C, p = hidden_size, latent_channels, patch_size
        self.latent_channels, self.patch_size, self.hidden_size = C, p, D
        self.gradient_checkpointing = gradient_checkpointing
        self.branch_3d, self.ref_mode, self.control = branch_3d, ref_mode, control
        self.use_ispe = use_ispe and branch_3d
        self.point_frames_per_latent = point_frames_per_latent

        self.t_embedder = TimestepEmbedder(D)
        # [noisy ; reference (ref_mode "concat") ; background ; control (control "concat")]
        in_channels = C * (2 + (ref_mode == "concat") + (control == "concat"))
        self.x_embedder = PatchEmbed(in_channels, D, p)
        self.camera_embedder = PatchEmbed(4 * PLUCKER_CHANNELS, D, p)
        if branch_3d:
            self.point_encoder = SMPLTokenEncoder(D, point_bands, point_max_period, use_canonical)
            self.ref_sampler = ReferenceFeatureSampler(C, D)
            self.ispe = InterspatialPE(ispe_bands, near=ispe_near, far=ispe_far)
        self.image_encoder = build_image_encoder(self.config["image_encoder"])
        if self.image_encoder is not None:
            self.identity_proj = nn.Linear(self.image_encoder.embed_dim, D)
            self.null_identity = nn.Parameter(torch.zeros(self.image_encoder.num_tokens, D))
        self.null_camera = nn.Parameter(torch.zeros(D))

        pe_dim = self.ispe.out_dim if self.use_ispe else None

        def layer(i: int) -> ISADiTLayer:
            return ISADiTLayer(
                D,
                num_heads,
                mlp_ratio,
                isa_mode,
                pe_dim,
                last=i == depth - 1,
                qk_norm=qk_norm,
                branch_3d=branch_3d,
                attention_2d=attention_2d,
                isa_null_key=isa_null_key,
            )

        self.layers = nn.ModuleList([layer(i) for i in range(depth)])
        if control in ("controlnet", "padaln"):
            self.control_embedder = PatchEmbed(C, D, p)
        if control == "padaln":
            self.control_adaln = nn.ModuleList([ControlAdaLN(D) for _ in range(depth)])
        if control == "controlnet":
            self.controlnet = nn.ModuleList([layer(i) for i in range(num_copies)])
            self.controlnet_proj = nn.ModuleList([nn.Linear(D, D) for _ in range(num_copies)])
        self.final_layer = FinalLayer(D, p, C)
        self.set_attention_backend(attention_backend)
        self.initialize_weights()
        if compile:
            self.compile_blocks()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ISADiT:
        """Rebuild a model from its `config` (stored in checkpoints)."""
        return cls(**config)

    def initialize_weights(self) -> None:
        """DiT initialisation: Xavier linears with zero bias (the image encoder keeps its own, possibly
        pretrained, weights); N(0, 0.02) timestep MLP and null tokens; adaLN modulations and the final
        linear zero, so every block starts as the identity and the model outputs exactly zero velocity.

        Control paths start switched off, so a fresh model equals the same model without its control
        input: `"concat"` zeroes the control channels' patch weights; `"padaln"` has zero gates (its
        modulations are adaLN ones); `"controlnet"` zeroes the input linear (`control_embedder`) and the
        output linears (`controlnet_proj`) and copies the weights of the first layers into the copy.
        `isa_init="aligned"` then aligns the ISA blocks' projections (`ISABlock.align_positions`)."""
        pretrained = (
            {id(m) for m in self.image_encoder.modules()} if self.image_encoder is not None else set()
        )
        for module in self.modules():
            if isinstance(module, nn.Linear) and id(module) not in pretrained:
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for linear in self.t_embedder.mlp[0], self.t_embedder.mlp[2]:
            nn.init.normal_(linear.weight, std=0.02)
        for parameter in (self.null_camera, getattr(self, "null_identity", None)):
            if parameter is not None:
                nn.init.normal_(parameter, std=0.02)
        for module in self.modules():
            if isinstance(module, AdaLNModulation):
                nn.init.zeros_(module.linear.weight)
                nn.init.zeros_(module.linear.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.branch_3d and self.config["isa_init"] == "aligned":
            for layer in self.layers:
                layer.isa.align_positions(self.config["aligned_pe_gain"])
        if self.control == "concat":  # weight columns are ordered (p1 p2 c): the control is the last C of c
            p = self.patch_size
            columns = self.x_embedder.proj.weight.view(self.hidden_size, p, p, -1)
            nn.init.zeros_(columns[..., -self.latent_channels :])
        if self.control == "controlnet":
            for linear in (self.control_embedder.proj, *self.controlnet_proj):
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
            for copy, layer in zip(self.controlnet, self.layers, strict=False):
                copy.load_state_dict(layer.state_dict())

    def set_attention_backend(self, backend: str) -> None:
        """Use `"sdpa"` or `"xformers"` in every attention."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose from {ATTENTION_BACKENDS}")
        self.config["attention_backend"] = backend
        for module in self.modules():
            if hasattr(module, "attention_backend"):
                module.attention_backend = backend

    def compile_blocks(self, **options: Any) -> None:
        """`torch.compile` every layer (and ControlNet copy) in place with `fullgraph=True`: one graph per
        layer, a graph break is an error. Parameters and state-dict keys are unchanged (checkpoints load
        either way); the embeddings, geometry and final layer stay eager. `options` go to `compile`."""
        for layer in (*self.layers, *getattr(self, "controlnet", ())):
            layer.compile(**{"fullgraph": True, **options})

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each layer's activations in the backward pass (training only)."""
        self.gradient_checkpointing = enabled

    def shard_units(self) -> list[nn.Module]:
        """The modules FSDP shards as units of their own (each all-gathered only while it runs): every
        layer, of the main stack and of the ControlNet copy. The rest (embeddings, image encoder, final
        layer) forms the root unit (`DiTModule.configure_model`)."""
        return [*self.layers, *getattr(self, "controlnet", ())]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float, cond: DiTConditions) -> torch.Tensor:
        """Predict the flow-matching velocity `v ≈ ε - x_0` (see `isa4d.diffusion`).

        Args:
            x_t: (B, C, T', h, w) noisy latent.
            t: (B,) or scalar time in [0, 1] (1 = pure noise).
            cond: The conditions, with T = 4T' - 3 (a clip) or 4T' (a window) video frames.

        Returns:
            (B, C, T', h, w) velocity (with `ref_mode="prefix"` the prefix frame is dropped).
        """
        cond.validate(x_t)
        B, C, Tl, h, w = x_t.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"latent size {(h, w)} is not divisible by the patch size {p}")
        prefix = int(self.ref_mode == "prefix")  # 2-D latent frames: the prefix (if any), then the video's
        pad = frame_padding(cond.num_frames, Tl) + FRAMES_PER_LATENT * prefix  # the prefix has no 3-D frames
        point_frames, pad = point_frame_slice(pad, self.point_frames_per_latent)  # the 3-D tokens' frames
        dtype = self.x_embedder.proj.weight.dtype
        device = x_t.device
        t = torch.as_tensor(t, device=device, dtype=torch.float32).expand(B)
        drop_ref, drop_smpl, drop_camera = (cond.drop_flags(name) for name in ("ref", "smpl", "camera"))
        c = self.t_embedder(t)
        c2 = c  # conditioning of the 2-D tokens: per latent frame with a prefix (time 0 there)
        if prefix:
            c0 = self.t_embedder(torch.zeros_like(t))
            c2 = torch.cat([c0[:, None], c[:, None].expand(-1, Tl, -1)], dim=1)

        # 2-D tokens: [noisy ; reference (broadcast over time) ; background or zeros (; control)] -> patches;
        # or with a prefix: [reference ; zeros] as latent frame 0, then [noisy ; background (; control)].
        ref = torch.where(drop_ref[:, None, None, None, None], 0.0, cond.ref_latent)
        background = cond.background_latent if cond.background_latent is not None else torch.zeros_like(x_t)
        control = self._control_latent(cond, drop_smpl)
        channels = [x_t, background] if prefix else [x_t, ref.expand(-1, -1, Tl, -1, -1), background]
        if self.control == "concat":
            channels.append(control)
        inputs = torch.cat(channels, dim=1)
        if prefix:
            inputs = torch.cat([F.pad(ref, (0, 0, 0, 0, 0, 0, 0, inputs.shape[1] - C)), inputs], dim=2)
            control = None if control is None else F.pad(control, (0, 0, 0, 0, 1, 0))
        x2 = self.x_embedder(inputs.to(dtype))
        x2 = x2 + self._position_table(Tl + prefix, h // p, w // p, device).to(dtype)
        control_tokens = None
        if self.control in ("controlnet", "padaln"):
            control_tokens = self.control_embedder(control.to(dtype))

        # 3-D tokens (with the ISPE encodings and the ISA key mask); context: camera and identity tokens.
        x3 = key_mask3 = pe3 = pe2 = None
        if self.branch_3d:
            x3, key_mask3, pe3, pe2 = self._body_tokens(cond, drop_ref, drop_smpl, (h, w), point_frames)
        camera = self._camera_tokens(cond, drop_camera, (h, w), Tl, prefix)
        identity = self._identity_tokens(cond, drop_ref)

        args = (c, c2, key_mask3, pad, pe3, pe2, camera, identity)
        residuals = []
        if self.control == "controlnet":
            h2, h3 = x2 + control_tokens, x3
            for copy, proj in zip(self.controlnet, self.controlnet_proj, strict=True):
                h2, h3 = self._run(copy, h2, h3, args)
                residuals.append(proj(h2))
        for i, layer in enumerate(self.layers):
            if self.control == "padaln":
                x2 = self.control_adaln[i](x2, control_tokens, c2)
            x2, x3 = self._run(layer, x2, x3, args)
            if i < len(residuals):
                x2 = x2 + residuals[i]
        return unpatchify(self.final_layer(x2, c2), p, h, w)[:, :, prefix:].to(x_t.dtype)

    def _run(
        self, layer: ISADiTLayer, x2: torch.Tensor, x3: torch.Tensor | None, args: tuple[Any, ...]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One layer, recomputed in backward with gradient checkpointing."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, x2, x3, *args, use_reentrant=False)
        return layer(x2, x3, *args)

    def _control_latent(self, cond: DiTConditions, drop_smpl: torch.Tensor) -> torch.Tensor | None:
        """(B, C, T', h, w) control latent, zeros where the bodies are dropped; None without control."""
        if self.control is None:
            return None
        if cond.control_latent is None:
            raise ValueError(
                f"this ISADiT has control={self.control!r}: set DiTConditions.control_latent (the VAE latent "
                f"of the rendered {self.config['control_video']!r} video, `ConditionBuilder` does it)"
            )
        return torch.where(drop_smpl[:, None, None, None, None], 0.0, cond.control_latent)

    def _body_tokens(
        self,
        cond: DiTConditions,
        drop_ref: torch.Tensor,
        drop_smpl: torch.Tensor,
        latent_size: tuple[int, int],
        frames: slice,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """3-D tokens of the video frames `frames` (`point_frame_slice`): γ(points) MLP (+ canonical) +
        frame index + pixel-aligned reference features.

        Returns:
            x3 (B, T3, P·N, D); the ISA key mask (B, P·N) (None when every key is valid); the ISPE
            encodings of the 3-D tokens (B, T3, P·N, E) and of the patch grid (S, E) (None without ISPE).
        """
        dtype = self.x_embedder.proj.weight.dtype
        person_mask = cond.person_mask.to(torch.bool)
        points = torch.where(person_mask[:, :, None, None, None], cond.points[:, :, frames], 0.0)
        ref_points = torch.where(person_mask[:, :, None, None], cond.ref_points, 0.0)
        cameras = cond.K[:, frames], cond.R[:, frames], cond.t[:, frames]
        pe3, pe2, ref_ndc = self._geometry(cond, cameras, points, ref_points, latent_size)
        x3 = self.point_encoder(points, cond.canonical_points)
        indices = torch.arange(cond.num_frames, device=points.device)[frames]
        x3 = x3 + sincos_1d(indices, self.hidden_size)[None, :, None].to(dtype)
        ref_features = self.ref_sampler(cond.ref_latent, ref_ndc)
        x3 = x3 + torch.where(drop_ref[:, None, None, None], 0.0, ref_features[:, None])
        key_mask3 = (person_mask & ~drop_smpl[:, None]).repeat_interleave(cond.num_points, dim=1)
        # The common case, no mask, is FlashAttention-eligible (when pad == 0); finding it reads the mask
        # (a device sync), so under torch.compile (where it would break the graph) the mask is kept.
        if not torch.compiler.is_compiling() and bool(key_mask3.all()):
            key_mask3 = None
        return x3, key_mask3, pe3, pe2

    def _geometry(
        self,
        cond: DiTConditions,
        cameras: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        points: torch.Tensor,
        ref_points: torch.Tensor,
        latent_size: tuple[int, int],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Body geometry in float32 with autocast off (bf16 cameras are too coarse, and some linear algebra
        has no bf16 kernel): ISPE encodings of the 3-D tokens (B, T, M, E) seen by `cameras` (K, R, t of
        their frames) and of the patch grid (S, E) (None without ISPE) and reference-point NDC (B, P·N, 3)."""
        h, w = latent_size
        p = self.patch_size
        with torch.autocast(points.device.type, enabled=False):
            K, R, t = (x.float() for x in cameras)
            pe3 = pe2 = None
            if self.use_ispe:
                flat = rearrange(points.float(), "b p t n c -> b t (p n) c")
                pe3 = self.ispe.points(flat, K, R, t, cond.image_size)
                pe2 = self.ispe.grid(h // p, w // p, points.device)
            ref_ndc = self.ispe.ndc(
                rearrange(ref_points.float(), "b p n c -> b (p n) c"),
                cond.ref_K.float(),
                cond.ref_R.float(),
                cond.ref_t.float(),
                cond.ref_image_size or cond.image_size,
            )
        return pe3, pe2, ref_ndc

    def _camera_tokens(
        self,
        cond: DiTConditions,
        drop_camera: torch.Tensor,
        latent_size: tuple[int, int],
        Tl: int,
        prefix: int,
    ) -> torch.Tensor:
        """(B, prefix + T', S, D) Plücker tokens per latent frame (the null token where dropped); a prefix
        frame gets the reference camera's rays (four times, like latent frame 0 of a clip)."""
        dtype = self.x_embedder.proj.weight.dtype
        h, w = latent_size
        with torch.autocast(cond.K.device.type, enabled=False):  # float32 cameras, as in `_geometry`
            rays = camera_rays(cond.K.float(), cond.R.float(), cond.t.float(), cond.image_size, (h, w), Tl)
            if prefix:
                ref_size = cond.ref_image_size or cond.image_size
                ref_rays = plucker_image(
                    cond.ref_K.float(), cond.ref_R.float(), cond.ref_t.float(), ref_size, (h, w)
                )
                ref_rays = repeat(ref_rays, "b c h w -> b (f c) 1 h w", f=FRAMES_PER_LATENT)
                rays = torch.cat([ref_rays, rays], dim=2)
        p = self.patch_size
        camera = self.camera_embedder(rays.to(dtype)) + sincos_2d(
            h // p, w // p, self.hidden_size, rays.device
        ).to(dtype)
        return torch.where(drop_camera[:, None, None, None], self.null_camera.to(dtype), camera)

    def _position_table(self, Tl: int, hp: int, wp: int, device: torch.device) -> torch.Tensor:
        """Fixed sin-cos positions of the 2-D tokens: patch grid + latent frame index, (T', S, D)."""
        space = sincos_2d(hp, wp, self.hidden_size, device)
        time = sincos_1d(torch.arange(Tl, device=device), self.hidden_size)
        return space[None] + time[:, None]

    def _identity_tokens(self, cond: DiTConditions, drop_ref: torch.Tensor) -> torch.Tensor | None:
        """(B, M_id, D) global identity tokens, the learned null tokens where the reference is dropped."""
        if self.image_encoder is None:
            return None
        if cond.ref_image is None:
            raise ValueError("this ISADiT has an image encoder: set DiTConditions.ref_image")
        tokens = self.identity_proj(self.image_encoder(cond.ref_image).to(self.identity_proj.weight.dtype))
        return torch.where(drop_ref[:, None, None], self.null_identity.to(tokens.dtype), tokens)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def dit_tiny(**overrides: Any) -> ISADiT:
    """CPU-sized model for tests: D = 128, 2 layers, 4 heads; ISPE bands 4 (exact nearest-token property
    on patch grids down to 4×4)."""
    config = {
        "hidden_size": 128,
        "depth": 2,
        "num_heads": 4,
        "ispe_bands": 4,
        "point_bands": 6,
        "image_encoder": {"name": "small", "embed_dim": 64, "width": 16, "input_size": 64},
    }
    return ISADiT(**{**config, **overrides})


def dit_small(**overrides: Any) -> ISADiT:
    """D = 384, 8 layers, 6 heads (head dim 64)."""
    return ISADiT(**{"hidden_size": 384, "depth": 8, "num_heads": 6, **overrides})


def dit_base(**overrides: Any) -> ISADiT:
    """D = 768, 12 layers, 12 heads (head dim 64)."""
    return ISADiT(**{"hidden_size": 768, "depth": 12, "num_heads": 12, **overrides})


def dit_paper4b(**overrides: Any) -> ISADiT:
    """≈ 4 B parameters like the paper's model: D = 1536, 18 layers, 24 heads (head dim 64).

    One layer holds five adaLN-Zero sub-blocks (spatial, temporal, point-temporal, the two-branch ISA
    block, cross-attention) ≈ 97·D² parameters, i.e. about 5.4 "DiT blocks" of width D per layer, so
    18 layers × 1536 ≈ 97 DiT-style blocks; a plain 4 B DiT would be D = 3072 × ~28 single blocks.
    Build it on the meta device to count parameters without allocating memory.
    """
    return ISADiT(**{"hidden_size": 1536, "depth": 18, "num_heads": 24, **overrides})


DIT_MODELS = {"tiny": dit_tiny, "small": dit_small, "base": dit_base, "paper4b": dit_paper4b}


def build_dit(name: str, **overrides: Any) -> ISADiT:
    """Build a registered size (`"tiny"`, `"small"`, `"base"`, `"paper4b"`) with arguments overridden."""
    if name not in DIT_MODELS:
        raise KeyError(f"unknown ISA-DiT size {name!r}; choose from {sorted(DIT_MODELS)}")
    return DIT_MODELS[name](**overrides)
