"""Token embeddings of ISA-DiT: timestep, 2-D patches, camera (Plücker) patches, 3-D body points, the
interspatial positional encoding (ISPE, paper eq. 10–12) and the pixel-aligned reference features
(eq. 19).

Sinusoidal encodings come in two kinds:

* `SinusoidalEncoding` (γ of NeRF / paper eq. 8, 12): coordinates → `[x, sin(ω_k x), cos(ω_k x)]`
  with `ω_k = 2π / max_period · 2^k`, `k = 0 … L-1`; used for body points (world metres) and for ISPE
  (ISA NDC). It is continuous, so nearby points get nearby encodings.
* `sincos_1d` / `sincos_2d` (Transformer / DiT position tables over integer indices); used for the
  frame index of the temporal attentions and the patch-grid position of the spatial attention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from isa4d.geometry import grid_ndc, mvp_matrix, plucker_image, project_to_ndc
from isa4d.models.dit.conditions import frame_padding, group_frames


class SinusoidalEncoding(nn.Module):
    """γ(x) = [x, sin(ω_k x), cos(ω_k x)] per coordinate, `ω_k = 2π / max_period · 2^k`, k < num_bands.

    Args:
        num_bands: L, the number of frequency bands.
        max_period: Period of the lowest band (in the input's units); inputs within ±max_period/2 are
            encoded without wrap-around even without the raw `x` term.
        in_dim: Number of coordinates.
    """

    def __init__(self, num_bands: int, max_period: float, in_dim: int = 3) -> None:
        super().__init__()
        self.num_bands, self.max_period, self.in_dim = num_bands, max_period, in_dim
        self.register_buffer(
            "frequencies", 2 * math.pi / max_period * 2.0 ** torch.arange(num_bands), persistent=False
        )

    @property
    def out_dim(self) -> int:
        return self.in_dim * (1 + 2 * self.num_bands)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode (..., in_dim) coordinates -> (..., in_dim · (1 + 2L)), in x's dtype."""
        angles = rearrange(x[..., None] * self.frequencies.to(x.dtype), "... c k -> ... (c k)")
        return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


def sincos_1d(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoidal table: positions (...,) -> (..., dim) `[cos(p ω_i), sin(p ω_i)]`."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / half
    )
    angles = positions.float()[..., None] * freqs
    table = torch.cat([angles.cos(), angles.sin()], dim=-1)
    return F.pad(table, (0, dim - 2 * half))


def sincos_2d(h: int, w: int, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """DiT's 2-D table for an h×w grid, row-major (v outer, u inner): (h·w, dim), half rows, half columns."""
    v, u = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    half = dim // 2
    return torch.cat([sincos_1d(v.flatten(), half), sincos_1d(u.flatten(), dim - half)], dim=-1)


class TimestepEmbedder(nn.Module):
    """DiT's timestep embedder: `t ∈ [0, 1]` → sinusoid of `1000 t` (256 dims) → MLP → (B, dim).

    Args:
        dim: Hidden size D.
        frequency_dim: Size of the sinusoidal table.
    """

    def __init__(self, dim: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) times in [0, 1] -> (B, dim)."""
        table = sincos_1d(t * 1000.0, self.frequency_dim)
        return self.mlp(table.to(self.mlp[0].weight.dtype))


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, T, h, w) -> (B, T, (h/p)(w/p), p·p·C) patches, row-major over the patch grid."""
    return rearrange(x, "b c t (h p1) (w p2) -> b t (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def unpatchify(x: torch.Tensor, patch_size: int, h: int, w: int) -> torch.Tensor:
    """(B, T, (h/p)(w/p), p·p·C) -> (B, C, T, h, w); inverse of `patchify`."""
    return rearrange(
        x, "b t (h w) (p1 p2 c) -> b c t (h p1) (w p2)", h=h // patch_size, p1=patch_size, p2=patch_size
    )


class PatchEmbed(nn.Module):
    """p×p patches of a (B, in_channels, T', h, w) latent → linear → (B, T', (h/p)(w/p), D) tokens.

    Args:
        in_channels: Channels of the input (3C for `[noisy ; reference ; background]`, 24 for cameras).
        dim: Hidden size D.
        patch_size: p.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int = 2) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(patch_size * patch_size * in_channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify(x, self.patch_size))


def camera_rays(
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    image_size: Sequence[int],
    latent_size: Sequence[int],
    num_latent_frames: int,
) -> torch.Tensor:
    """Plücker images of the video frames stacked per latent frame (paper eq. 22).

    Args:
        K: (B, T, 3, 3) intrinsics for `image_size`.
        R: (B, T, 3, 3) world-to-camera rotations.
        t: (B, T, 3) world-to-camera translations.
        image_size: (H, W) of the video.
        latent_size: (h, w) of the latent; the rays go through the latent pixel centres.
        num_latent_frames: T'.

    Returns:
        (B, 24, T', h, w): channels `(frame f, (m, d))` for the four frames f of each latent frame
        (frame 0 repeated four times for latent frame 0 of a clip).
    """
    rays = plucker_image(K, R, t, image_size, out_size=latent_size)  # (B, T, 6, h, w)
    grouped = group_frames(rays, frame_padding(K.shape[1], num_latent_frames), replicate=True)
    return rearrange(grouped, "b n f c h w -> b (f c) n h w")


def points_to_ndc(
    points: torch.Tensor,
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    image_size: Sequence[int],
    near: float,
    far: float,
    clip: float = 2.0,
) -> torch.Tensor:
    """World points → ISA NDC with the MVP matrix (`mvp_matrix` + `project_to_ndc`), made finite.

    Points behind the camera (or at zero depth) go to `(clip, clip, clip)`; all coordinates are clamped to
    `[-clip, clip]` (with the default 2, points more than half an image outside the view saturate).

    Args:
        points: (..., N, 3) world points.
        K: (..., 3, 3) intrinsics for `image_size`.
        R: (..., 3, 3) world-to-camera rotations.
        t: (..., 3) world-to-camera translations.
        image_size: (H, W).
        near: Depth at z_ndc = -1.
        far: Depth at z_ndc = +1.
        clip: Saturation bound.

    Returns:
        (..., N, 3) NDC.
    """
    ndc = project_to_ndc(points, mvp_matrix(K, R, t, image_size, near, far))
    # z_ndc = a + b / depth with a = (f+n)/(f-n) > 1, b < 0: depth > 0 <=> z_ndc < a (NaN compares False).
    in_front = ndc[..., 2:] < (far + near) / (far - near)
    ndc = torch.where(in_front, ndc, torch.full_like(ndc, clip))
    return ndc.nan_to_num(clip, clip, -clip).clamp(-clip, clip)


class InterspatialPE(nn.Module):
    """Encodings of the interspatial positional encoding (ISPE, paper eq. 10–12), before the linear layer.

    3-D token: `γ(ndc)` with `ndc = project_to_ndc(p, MVP_t)` of its own frame's camera. 2-D token at grid
    cell (u, v) of an `h_p × w_p` patch grid: `γ(2(u+½)/w_p - 1, 2(v+½)/h_p - 1, 0)` (`grid_ndc`). Same γ,
    same coordinate system, so a body point and the token under its pixel get nearby encodings: the 2-D
    token nearest in encoding space to a point's encoding is the token under it as long as the finest band
    is not finer than a grid cell, `max_period / 2^(L-1) ≥ 2 / min(h_p, w_p)` (always for power-of-two
    grids). Each ISA block owns a linear layer mapping this encoding to its width.

    Args:
        num_bands: L.
        max_period: Period of the lowest band in NDC units (4 covers [-2, 2]).
        near: Near plane of the MVP (metres).
        far: Far plane of the MVP (metres).
        clip: NDC saturation (see `points_to_ndc`).
    """

    def __init__(
        self,
        num_bands: int = 6,
        max_period: float = 4.0,
        near: float = 0.5,
        far: float = 20.0,
        clip: float = 2.0,
    ) -> None:
        super().__init__()
        self.encoding = SinusoidalEncoding(num_bands, max_period, in_dim=3)
        self.near, self.far, self.clip = near, far, clip

    @property
    def out_dim(self) -> int:
        return self.encoding.out_dim

    def points(
        self,
        points: torch.Tensor,
        K: torch.Tensor,
        R: torch.Tensor,
        t: torch.Tensor,
        image_size: Sequence[int],
    ) -> torch.Tensor:
        """Encode (..., N, 3) world points seen by cameras K, R (..., 3, 3), t (..., 3) -> (..., N, E)."""
        return self.encoding(self.ndc(points, K, R, t, image_size))

    def ndc(
        self,
        points: torch.Tensor,
        K: torch.Tensor,
        R: torch.Tensor,
        t: torch.Tensor,
        image_size: Sequence[int],
    ) -> torch.Tensor:
        """The finite ISA NDC of the points (`points_to_ndc` with this module's near/far/clip)."""
        return points_to_ndc(points, K, R, t, image_size, self.near, self.far, self.clip)

    def grid(self, h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Encode the cells of an h×w patch grid (z = 0) -> (h·w, E), row-major."""
        return self.encoding(grid_ndc(h, w, device=device))


class SMPLTokenEncoder(nn.Module):
    """3-D body tokens (paper eq. 8): `f_{t,n} = MLP(γ(p_{t,n}))` (+ `MLP_c(γ(p_n^canonical))`).

    The optional canonical term (rest-pose position, `use_canonical`) tells a token which body part it is;
    the paper encodes the posed position only (its faithful config sets `use_canonical=False`).

    Args:
        dim: Hidden size D.
        num_bands: L of γ.
        max_period: Period of γ's lowest band in metres (16 covers ±8 m without wrap-around).
        use_canonical: Add the canonical-position term.
    """

    def __init__(
        self, dim: int, num_bands: int = 10, max_period: float = 16.0, use_canonical: bool = True
    ) -> None:
        super().__init__()
        self.encoding = SinusoidalEncoding(num_bands, max_period, in_dim=3)
        E = self.encoding.out_dim
        self.mlp = nn.Sequential(nn.Linear(E, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.canonical_mlp = (
            nn.Sequential(nn.Linear(E, dim), nn.SiLU(), nn.Linear(dim, dim)) if use_canonical else None
        )

    def forward(self, points: torch.Tensor, canonical: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens of (B, P, T, N, 3) world points -> (B, T, P·N, D); `canonical`: (N, 3)."""
        dtype = self.mlp[0].weight.dtype  # γ in float32 (high bands of bf16 positions are noise), then cast
        tokens = self.mlp(self.encoding(points.float()).to(dtype))
        if self.canonical_mlp is not None:
            if canonical is None:
                raise ValueError(
                    "this SMPLTokenEncoder uses canonical points: set DiTConditions.canonical_points"
                )
            tokens = tokens + self.canonical_mlp(self.encoding(canonical.float()).to(dtype))
        return rearrange(tokens, "b p t n d -> b t (p n) d")


class ReferenceFeatureSampler(nn.Module):
    """Pixel-aligned identity features for the 3-D tokens (paper eq. 19).

    The reference latent is linearly projected (a 1×1 conv, C → D) and sampled bilinearly
    (`grid_sample`, `align_corners=False`, whose normalised coordinates are the ISA NDC) at the NDC of
    the reference-frame body points seen by the reference camera; points outside the image get zeros.

    Args:
        latent_channels: C.
        dim: Hidden size D.
    """

    def __init__(self, latent_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(latent_channels, dim, kernel_size=1)

    def forward(self, ref_latent: torch.Tensor, ndc: torch.Tensor) -> torch.Tensor:
        """Sample (B, C, 1, h, w) latents at (B, M, 2+) NDC -> (B, M, D)."""
        dtype = self.proj.weight.dtype
        features = self.proj(ref_latent[:, :, 0].to(dtype)).float()  # sample at float32 NDC
        grid = ndc[:, :, None, :2].float()
        sampled = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return rearrange(sampled, "b d m 1 -> b m d").to(dtype)
