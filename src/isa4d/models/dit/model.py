"""ISA-DiT (paper §5, SPEC §2): a video DiT with a 2-D latent branch and a 3-D body-point branch joined by
symmetric interspatial attention; identity, camera and background conditioning; named sizes.

Read top to bottom: `ISADiTLayer` (the five steps of one layer), `ISADiT` (embeddings → layers → final
layer), `initialize_weights()`, the size factories and `DIT_MODELS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from isa4d.models.dit.attention import ATTENTION_BACKENDS
from isa4d.models.dit.blocks import (
    AdaLNModulation,
    CrossAttentionBlock,
    FinalLayer,
    ISABlock,
    PointTemporalBlock,
    SpatialBlock,
    TemporalBlock,
)
from isa4d.models.dit.conditions import DiTConditions, frame_padding
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


class ISADiTLayer(nn.Module):
    """One ISA-DiT layer (paper eq. 15–18 + conditioning), in the SPEC order:

    1. `SpatialBlock` on the 2-D tokens; 2. `TemporalBlock` on the 2-D tokens; 3. `PointTemporalBlock` on
    the 3-D tokens; 4. `ISABlock` (3-D ↔ 2-D); 5. `CrossAttentionBlock` (2-D → camera + identity).
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
    ) -> None:
        super().__init__()
        self.spatial = SpatialBlock(dim, heads, mlp_ratio, qk_norm)
        self.temporal = TemporalBlock(dim, heads, mlp_ratio, qk_norm)
        self.point_temporal = PointTemporalBlock(dim, heads, mlp_ratio, qk_norm)
        self.isa = ISABlock(dim, heads, mlp_ratio, isa_mode, pe_dim, pre_only=last, qk_norm=qk_norm)
        self.cross = CrossAttentionBlock(dim, heads, qk_norm)

    def forward(
        self,
        x2: torch.Tensor,
        x3: torch.Tensor,
        c: torch.Tensor,
        key_mask3: torch.Tensor | None,
        pad: int,
        pe3: torch.Tensor | None,
        pe2: torch.Tensor | None,
        camera: torch.Tensor,
        identity: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x2 = self.temporal(self.spatial(x2, c), c)
        x3 = self.point_temporal(x3, c)
        x3, x2 = self.isa(x3, x2, c, key_mask3, pad, pe3, pe2)
        return self.cross(x2, c, camera, identity), x3


class ISADiT(nn.Module):
    """The ISA diffusion transformer: `forward(x_t, t, cond) -> v`, the flow-matching velocity.

    Args:
        latent_channels: C of the VAE latent (16).
        patch_size: p.
        hidden_size: D (both branches).
        depth: Number of `ISADiTLayer`s.
        num_heads: Attention heads (D % heads == 0).
        mlp_ratio: FFN expansion.
        isa_mode: `"joint"` (MM-DiT) or `"cross_pair"`.
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
    """

    def __init__(
        self,
        latent_channels: int = 16,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 8,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        isa_mode: str = "joint",
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
    ) -> None:
        super().__init__()
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
        }
        D, C, p = hidden_size, latent_channels, patch_size
        self.latent_channels, self.patch_size, self.hidden_size = C, p, D
        self.gradient_checkpointing = gradient_checkpointing

        self.t_embedder = TimestepEmbedder(D)
        self.x_embedder = PatchEmbed(3 * C, D, p)  # [noisy ; reference ; background]
        self.camera_embedder = PatchEmbed(4 * PLUCKER_CHANNELS, D, p)
        self.point_encoder = SMPLTokenEncoder(D, point_bands, point_max_period, use_canonical)
        self.ref_sampler = ReferenceFeatureSampler(C, D)
        self.ispe = InterspatialPE(ispe_bands, near=ispe_near, far=ispe_far)
        self.use_ispe = use_ispe
        self.image_encoder = build_image_encoder(self.config["image_encoder"])
        if self.image_encoder is not None:
            self.identity_proj = nn.Linear(self.image_encoder.embed_dim, D)
            self.null_identity = nn.Parameter(torch.zeros(self.image_encoder.num_tokens, D))
        self.null_camera = nn.Parameter(torch.zeros(D))

        pe_dim = self.ispe.out_dim if use_ispe else None
        self.layers = nn.ModuleList(
            [
                ISADiTLayer(D, num_heads, mlp_ratio, isa_mode, pe_dim, last=i == depth - 1, qk_norm=qk_norm)
                for i in range(depth)
            ]
        )
        self.final_layer = FinalLayer(D, p, C)
        self.set_attention_backend(attention_backend)
        self.initialize_weights()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ISADiT:
        """Rebuild a model from its `config` (stored in checkpoints)."""
        return cls(**config)

    def initialize_weights(self) -> None:
        """DiT initialisation: Xavier linears with zero bias (the image encoder keeps its own, possibly
        pretrained, weights); N(0, 0.02) timestep MLP and null tokens; adaLN modulations and the final
        linear zero, so every block starts as the identity and the model outputs exactly zero velocity."""
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

    def set_attention_backend(self, backend: str) -> None:
        """Use `"sdpa"` or `"xformers"` in every attention."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose from {ATTENTION_BACKENDS}")
        self.config["attention_backend"] = backend
        for module in self.modules():
            if hasattr(module, "attention_backend"):
                module.attention_backend = backend

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each layer's activations in the backward pass (training only)."""
        self.gradient_checkpointing = enabled

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float, cond: DiTConditions) -> torch.Tensor:
        """Predict the flow-matching velocity `v ≈ ε - x_0` (see `isa4d.diffusion`).

        Args:
            x_t: (B, C, T', h, w) noisy latent.
            t: (B,) or scalar time in [0, 1] (1 = pure noise).
            cond: The conditions, with T = 4T' - 3 (a clip) or 4T' (a window) video frames.

        Returns:
            (B, C, T', h, w) velocity.
        """
        cond.validate(x_t)
        B, C, Tl, h, w = x_t.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"latent size {(h, w)} is not divisible by the patch size {p}")
        hp, wp = h // p, w // p
        pad = frame_padding(cond.num_frames, Tl)
        dtype = self.x_embedder.proj.weight.dtype
        device = x_t.device
        t = torch.as_tensor(t, device=device, dtype=torch.float32).expand(B)
        drop_ref, drop_smpl, drop_camera = (cond.drop_flags(name) for name in ("ref", "smpl", "camera"))
        c = self.t_embedder(t)

        # 2-D tokens: [noisy ; reference (broadcast over time) ; background or zeros] -> patches.
        ref = torch.where(drop_ref[:, None, None, None, None], 0.0, cond.ref_latent).expand(
            -1, -1, Tl, -1, -1
        )
        background = cond.background_latent if cond.background_latent is not None else torch.zeros_like(x_t)
        x2 = self.x_embedder(torch.cat([x_t, ref, background], dim=1).to(dtype))
        x2 = x2 + self._position_table(Tl, hp, wp, device).to(dtype)

        # 3-D tokens: γ(points) MLP (+ canonical) + frame index + pixel-aligned reference features.
        person_mask = cond.person_mask.to(torch.bool)
        points = torch.where(person_mask[:, :, None, None, None], cond.points, 0.0)
        ref_points = torch.where(person_mask[:, :, None, None], cond.ref_points, 0.0)
        pe3, pe2, ref_ndc, rays = self._geometry(cond, points, ref_points, (h, w), Tl)
        x3 = self.point_encoder(points, cond.canonical_points)
        frames = torch.arange(cond.num_frames, device=device)
        x3 = x3 + sincos_1d(frames, self.hidden_size)[None, :, None].to(dtype)
        ref_features = self.ref_sampler(cond.ref_latent, ref_ndc)
        x3 = x3 + torch.where(drop_ref[:, None, None, None], 0.0, ref_features[:, None])
        N = cond.num_points
        key_mask3 = (person_mask & ~drop_smpl[:, None]).repeat_interleave(N, dim=1)
        if bool(key_mask3.all()):  # the common case: no mask (FlashAttention-eligible when pad == 0)
            key_mask3 = None

        # Context: Plücker tokens per latent frame (null when dropped) and the global identity tokens.
        camera = self.camera_embedder(rays.to(dtype)) + sincos_2d(hp, wp, self.hidden_size, device).to(dtype)
        camera = torch.where(drop_camera[:, None, None, None], self.null_camera.to(dtype), camera)
        identity = self._identity_tokens(cond, drop_ref)

        for layer in self.layers:
            args = (x2, x3, c, key_mask3, pad, pe3, pe2, camera, identity)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x2, x3 = checkpoint(layer, *args, use_reentrant=False)
            else:
                x2, x3 = layer(*args)
        return unpatchify(self.final_layer(x2, c), p, h, w).to(x_t.dtype)

    def _geometry(
        self,
        cond: DiTConditions,
        points: torch.Tensor,
        ref_points: torch.Tensor,
        latent_size: tuple[int, int],
        Tl: int,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Camera geometry in float32 with autocast off (bf16 cameras are too coarse, and some linear
        algebra has no bf16 kernel): ISPE encodings of the 3-D tokens (B, T, M, E) and of the patch grid
        (S, E) (None without ISPE), reference-point NDC (B, P·N, 3) and Plücker rays (B, 24, T', h, w)."""
        h, w = latent_size
        p = self.patch_size
        with torch.autocast(points.device.type, enabled=False):
            K, R, t = cond.K.float(), cond.R.float(), cond.t.float()
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
            rays = camera_rays(K, R, t, cond.image_size, (h, w), Tl)
        return pe3, pe2, ref_ndc, rays

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
