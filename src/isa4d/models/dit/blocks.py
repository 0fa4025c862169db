"""Transformer blocks of ISA-DiT, all with adaLN-Zero timestep modulation (DiT).

Token layouts (4-D, so modulation `(B, 1, 1, D)` broadcasts over frames and tokens):

* 2-D tokens `x2: (B, T', S, D)`: T' latent frames of S = (h/p)(w/p) patch tokens (row-major).
* 3-D tokens `x3: (B, T, M, D)`: T video frames of M = P·N body-point tokens (person-major).

A block's modulation is `SiLU → Linear(D, k·D)` of the conditioning vector `c: (B, D)`, zero-initialised
by `ISADiT.initialize_weights()`, so every block starts as the identity (gates 0). Blocks on 2-D tokens
also take a per-latent-frame `c: (B, T', D)` (the `prefix` reference mode: the clean prefix frame has its
own time, t = 0).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from isa4d.models.dit.attention import attention
from isa4d.models.dit.conditions import POINT_FRAMES, group_frames, ungroup_frames

NORM_EPS = 1e-6


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: `x · (1 + scale) + shift`."""
    return x * (1 + scale) + shift


class AdaLNModulation(nn.Module):
    """`SiLU → Linear(D, chunks·D)` of c (B, D) → `chunks` tensors (B, 1, 1, D); of a per-latent-frame
    c (B, T', D) (2-D tokens with a clean prefix frame) → `chunks` tensors (B, T', 1, D)."""

    def __init__(self, dim: int, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(dim, chunks * dim)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.linear(nn.functional.silu(c))
        if c.ndim == 2:
            out = out[:, None]
        return tuple(rearrange(out, "b t (k d) -> k b t 1 d", k=self.chunks))


def layer_norm(dim: int) -> nn.LayerNorm:
    """LayerNorm without affine parameters (adaLN supplies them)."""
    return nn.LayerNorm(dim, elementwise_affine=False, eps=NORM_EPS)


class Mlp(nn.Module):
    """FFN: Linear(D, r·D) → GELU(tanh) → Linear(r·D, D)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1, self.act, self.fc2 = (
            nn.Linear(dim, hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class QKNorm(nn.RMSNorm):
    """RMSNorm of queries/keys per head, computed in the input's dtype (mixed precision friendly)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        return nn.functional.rms_norm(x, self.normalized_shape, weight, self.eps)


class HeadProjection(nn.Module):
    """Linear projection to `n` stacked attention inputs (q, k, v, …), split into heads, q/k RMS-normed.

    Args:
        dim: Input width.
        heads: Number of heads (dim % heads == 0).
        names: Which of "q", "k", "v" to produce, in this order.
        qk_norm: RMSNorm on q and k per head (SD3.5 / Flux).
    """

    def __init__(self, dim: int, heads: int, names: str = "qkv", qk_norm: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads, self.names = heads, names
        self.linear = nn.Linear(dim, len(names) * dim)
        head_dim = dim // heads
        self.norms = nn.ModuleDict(
            {
                name: QKNorm(head_dim, eps=NORM_EPS) if qk_norm else nn.Identity()
                for name in names
                if name != "v"
            }
        )

    def weight(self, name: str) -> torch.Tensor:
        """The (D, D) rows of the stacked linear weight that produce `name` (a view)."""
        dim = self.linear.in_features
        i = self.names.index(name)
        return self.linear.weight[i * dim : (i + 1) * dim]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., L, D) -> {name: (..., heads, L, head_dim)}."""
        parts = rearrange(self.linear(x), "... l (n h d) -> n ... h l d", n=len(self.names), h=self.heads)
        return {
            name: self.norms[name](part) if name in self.norms else part
            for name, part in zip(self.names, parts, strict=True)
        }


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., heads, L, head_dim) -> (..., L, heads·head_dim)."""
    return rearrange(x, "... h l d -> ... l (h d)")


class AxisAttentionBlock(nn.Module):
    """adaLN-Zero transformer block (self-attention + FFN) along one axis of a (B, A1, A2, D) tensor.

    `axis=2` attends over the tokens of each A1 slice (spatial); `axis=1` over A1 at each A2 position
    (temporal); `axis=None` over all A1·A2 tokens of a sample (full spatio-temporal). Subclasses fix the
    axis.

    Args:
        dim: Hidden size D.
        heads: Attention heads.
        mlp_ratio: FFN expansion.
        qk_norm: RMS-normalise queries and keys.
    """

    axis: int | None = 2
    _LAYOUTS = {2: "(b t) s d", 1: "(b s) t d", None: "b (t s) d"}
    """How the attention sees the tokens: one sequence per `(b t)`, per `(b s)` or per `b`."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = True) -> None:
        super().__init__()
        self.norm1, self.norm2 = layer_norm(dim), layer_norm(dim)
        self.qkv = HeadProjection(dim, heads, "qkv", qk_norm)
        self.proj = nn.Linear(dim, dim)
        self.mlp = Mlp(dim, mlp_ratio)
        self.adaLN_modulation = AdaLNModulation(dim, 6)
        self.attention_backend = "sdpa"

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (B, A1, A2, D), c: (B, D) or (B, A1, D) -> (B, A1, A2, D)."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c)
        h = modulate(self.norm1(x), shift_a, scale_a)
        layout = self._LAYOUTS[self.axis]
        qkv = self.qkv(rearrange(h, f"b t s d -> {layout}"))
        out = merge_heads(attention(qkv["q"], qkv["k"], qkv["v"], backend=self.attention_backend))
        out = rearrange(out, f"{layout} -> b t s d", b=x.shape[0], t=x.shape[1])
        x = x + gate_a * self.proj(out)
        return x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class SpatialBlock(AxisAttentionBlock):
    """Self-attention over the 2-D tokens of each latent frame (paper eq. 15): x2 (B, T', S, D)."""

    axis = 2


class TemporalBlock(AxisAttentionBlock):
    """Self-attention over the T' latent frames at each 2-D location (eq. 16): x2 (B, T', S, D)."""

    axis = 1


class SpatioTemporalBlock(AxisAttentionBlock):
    """Full self-attention over all T'·S 2-D tokens of a sample: x2 (B, T', S, D).

    `ISADiT(attention_2d="full")` puts it in place of the `SpatialBlock` + `TemporalBlock` pair: the
    cost baseline of the factorised attention (quadratic in T'·S instead of T'·S² + S·T'²).
    """

    axis = None


class PointTemporalBlock(AxisAttentionBlock):
    """Self-attention of each body point over the T video frames (eq. 17): x3 (B, T, M, D).

    Points never attend other points here, so a padded person only ever sees itself.
    """

    axis = 1


class ISABranch(nn.Module):
    """One branch (3-D or 2-D) of the symmetric ISA block: adaLN, q/k/v, output projection and FFN.

    With `pre_only` (the 3-D branch of the last layer, like SD3's last context block) the branch only
    provides keys and values: its output would never be used. `names` restricts the projections to
    the attention inputs that are read (default `"kv"` with `pre_only`, else `"qkv"`).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        qk_norm: bool,
        pre_only: bool = False,
        names: str | None = None,
    ) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = layer_norm(dim)
        self.adaLN_modulation = AdaLNModulation(dim, 2 if pre_only else 6)
        self.qkv = HeadProjection(dim, heads, names or ("kv" if pre_only else "qkv"), qk_norm)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
            self.norm2 = layer_norm(dim)
            self.mlp = Mlp(dim, mlp_ratio)

    def pre(
        self, x: torch.Tensor, c: torch.Tensor, pe: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
        """Attention inputs of x (B, A1, A2, D) with the positional encoding `pe` (broadcastable) added."""
        mods = self.adaLN_modulation(c)
        h = modulate(self.norm1(x), mods[0], mods[1])
        if pe is not None:
            h = h + pe
        return self.qkv(h), mods[2:]

    def post(self, x: torch.Tensor, out: torch.Tensor, mods: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Residual updates from the attention output `out` (B, A1, A2, D)."""
        gate_a, shift_m, scale_m, gate_m = mods
        x = x + gate_a * self.proj(out)
        return x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class ISABlock(nn.Module):
    """Symmetric interspatial transformer block (paper eq. 12–14 and Fig. 7).

    Per latent frame i, the 3-D tokens of exactly the video frames of i (`{0}` or `{4i-3 … 4i}`, each
    projected with its own camera in the ISPE) and the S 2-D tokens of i interact:

    * `mode="cross_pair"` (default, the paper's eq. 13–14): the two cross-attentions alone, 3-D queries →
      2-D keys ("reconstruction", 2D→3D) and 2-D queries → 3-D keys ("rendering", 3D→2D).
    * `mode="joint"` (SD3 MM-DiT, the `isa_joint` ablation): one attention over the concatenation
      `[3-D ; 2-D]` (each branch also attends itself); ~2.4x the cost of `cross_pair` at 33 frames 256².
    Both have per-branch q/k/v/out projections, qk-norms, adaLN and FFNs.

    The ISPE encodings (`InterspatialPE`) go through this block's linear layer `pe_proj` and are added to
    both token sets' attention inputs. 3-D keys of padded persons, of padding slots (the three empty
    slots of latent frame 0 of a clip) and of samples with `drop_smpl` are masked out.

    With `null_key` (not in the paper) each cross-attention's keys start with one learned key/value pair,
    "nothing here" (zero at init: a logit of 0, a zero value): a token with no point near it can attend it
    instead of spreading its softmax over far points, so how much of its attention lands on the other set
    — whether the body covers it — reaches its update linearly. With every 3-D key masked (a dropped body)
    a 2-D query attends only it.

    Args:
        dim: Hidden size D.
        heads: Attention heads.
        mlp_ratio: FFN expansion.
        mode: `"cross_pair"` or `"joint"`.
        pe_dim: Width of the ISPE encoding, or None to disable ISPE (the `isa_no_pe` ablation).
        pre_only: The 3-D branch only gives keys/values (last layer); its tokens are returned unchanged.
        qk_norm: RMS-normalise queries and keys.
        null_key: Prepend a learned null key/value to the keys of each cross-attention (one shared by
            the concatenation in `joint` mode).
    """

    MODES = ("cross_pair", "joint")

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        mode: str = "cross_pair",
        pe_dim: int | None = None,
        pre_only: bool = False,
        qk_norm: bool = True,
        null_key: bool = False,
    ) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"unknown ISA mode {mode!r}; choose from {self.MODES}")
        self.mode, self.pre_only = mode, pre_only
        self.branch3 = ISABranch(dim, heads, mlp_ratio, qk_norm, pre_only=pre_only)
        # cross_pair's last layer: no 3-D queries, so the 2-D keys/values would never be read
        names2 = "q" if mode == "cross_pair" and pre_only else "qkv"
        self.branch2 = ISABranch(dim, heads, mlp_ratio, qk_norm, names=names2)
        self.pe_proj = nn.Linear(pe_dim, dim) if pe_dim else None
        # (direction, key/value, heads, head_dim): direction 0 among the 3-D keys (or joint's), 1 among the
        # 2-D keys (only where 3-D queries read them apart)
        directions = 1 if mode == "joint" or pre_only else 2
        self.null_kv = nn.Parameter(torch.zeros(directions, 2, heads, dim // heads)) if null_key else None
        self.attention_backend = "sdpa"

    def forward(
        self,
        x3: torch.Tensor,
        x2: torch.Tensor,
        c: torch.Tensor,
        key_mask3: torch.Tensor | None,
        pad: int,
        pe3: torch.Tensor | None = None,
        pe2: torch.Tensor | None = None,
        c2: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One symmetric ISA block.

        Args:
            x3: (B, T, M, D) 3-D tokens, T = f·T' - pad with f = 4 slots per latent frame, or f = 2 / 1
                when only every 2nd / 4th video frame carries them (`point_frame_slice`; f is read from T).
            x2: (B, T', S, D) 2-D tokens.
            c: (B, D) conditioning.
            key_mask3: (B, M) bool, False for 3-D tokens nobody may attend (padded persons, dropped
                bodies); None when all are valid.
            pad: Padding slots in front of the video frames (3 for a clip, 0 for a window).
            pe3: (B, T, M, E) ISPE encodings of the 3-D tokens (ignored without `pe_proj`).
            pe2: (S, E) ISPE encodings of the 2-D grid.
            c2: Conditioning of the 2-D branch, (B, D) or per latent frame (B, T', D); None means `c`.

        Returns:
            Updated (x3, x2); x3 is returned unchanged with `pre_only`.
        """
        B, Tl = x2.shape[:2]
        frames = self._frames_per_group(x3.shape[1], pad, Tl)
        use_pe = self.pe_proj is not None and pe3 is not None and pe2 is not None
        qkv3, mods3 = self.branch3.pre(x3, c, self.pe_proj(pe3.to(x3.dtype)) if use_pe else None)
        c2 = c if c2 is None else c2
        qkv2, mods2 = self.branch2.pre(x2, c2, self.pe_proj(pe2.to(x2.dtype)) if use_pe else None)
        # Group the 3-D tokens by latent frame: (B, T, H, M, d) -> (B·T', H, 4·M, d); 2-D: (B·T', H, S, d).
        grouped = {
            name: rearrange(group_frames(value, pad, frames=frames), "b n f h m d -> (b n) h (f m) d")
            for name, value in qkv3.items()
        }
        qkv2 = {name: rearrange(value, "b n h s d -> (b n) h s d") for name, value in qkv2.items()}
        mask3 = self._key_mask(key_mask3, pad, B, Tl, frames, x3)
        S, L3 = qkv2["q"].shape[2], grouped["k"].shape[2]
        out3 = None
        if self.mode == "joint":
            k = torch.cat([grouped["k"], qkv2["k"]], dim=2)
            v = torch.cat([grouped["v"], qkv2["v"]], dim=2)
            mask = None
            if mask3 is not None:
                mask = torch.cat([mask3, mask3.new_ones(mask3.shape[0], 1, 1, S)], dim=-1)
            q = qkv2["q"] if self.pre_only else torch.cat([grouped["q"], qkv2["q"]], dim=2)
            out = attention(q, *self._with_null(k, v, mask, 0), self.attention_backend)
            out2 = out[:, :, -S:]
            if not self.pre_only:
                out3 = out[:, :, :L3]
        else:
            keys3 = self._with_null(grouped["k"], grouped["v"], mask3, 0)
            out2 = attention(qkv2["q"], *keys3, self.attention_backend)
            if not self.pre_only:
                keys2 = self._with_null(qkv2["k"], qkv2["v"], None, 1)
                out3 = attention(grouped["q"], *keys2, self.attention_backend)
        x2 = self.branch2.post(x2, rearrange(out2, "(b n) h s d -> b n s (h d)", b=B), mods2)
        if out3 is not None:
            out3 = rearrange(out3, "(b n) h (f m) d -> b n f m (h d)", b=B, f=frames)
            x3 = self.branch3.post(x3, ungroup_frames(out3, pad), mods3)
        return x3, x2

    def _with_null(
        self, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, direction: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keys, values (B', H, L, d) and key mask (B', 1, 1, L) or None, with the null key/value of
        `direction` prepended (always attendable) when the block has them; unchanged otherwise."""
        if self.null_kv is None:
            return k, v, mask
        null_k, null_v = (
            n.to(k.dtype).expand(k.shape[0], -1, -1)[:, :, None] for n in self.null_kv[direction]
        )
        if mask is not None:
            mask = torch.cat([mask.new_ones(*mask.shape[:-1], 1), mask], dim=-1)
        return torch.cat([null_k, k], dim=2), torch.cat([null_v, v], dim=2), mask

    @torch.no_grad()
    def align_positions(self, pe_gain: float) -> None:
        """Start the two cross-attentions position-aligned (an initialisation, not in the paper).

        The 3-D keys get the 2-D queries' projection (and the 3-D queries the 2-D keys'), so the logit of a
        2-D query and a 3-D key holds the term `(P e2)ᵀ WᵀW (P e3)` of their ISPE encodings e2, e3 (P =
        `pe_proj`, scaled by `pe_gain`): a positive semi-definite form, largest when the point projects onto
        the token. A fresh block then already attends more to the points over each token (with Xavier
        projections the form is random and the attention ignores position); training moves both freely.
        """
        qkv3, qkv2 = self.branch3.qkv, self.branch2.qkv
        for name3, name2 in (("k", "q"), ("q", "k")):
            if name3 in qkv3.names and name2 in qkv2.names:
                qkv3.weight(name3).copy_(qkv2.weight(name2))
        if self.pe_proj is not None:
            self.pe_proj.weight.mul_(pe_gain)

    @staticmethod
    def _frames_per_group(num_frames3: int, pad: int, Tl: int) -> int:
        """Slots per latent frame of the 3-D tokens: 4, or fewer with `point_frames_per_latent`."""
        frames, rest = divmod(num_frames3 + pad, Tl)
        if rest or frames not in POINT_FRAMES:
            raise ValueError(
                f"{num_frames3} frames of 3-D tokens with {pad} padding slots do not fit {Tl} latent "
                f"frames: need T + pad = f·T' with f in {POINT_FRAMES}"
            )
        return frames

    @staticmethod
    def _key_mask(
        key_mask3: torch.Tensor | None, pad: int, B: int, Tl: int, frames: int, x3: torch.Tensor
    ) -> torch.Tensor | None:
        """(B·T', 1, 1, f·M) bool mask of the grouped 3-D keys (f = `frames` slots per latent frame), or
        None when every key is valid."""
        if key_mask3 is None and pad == 0:
            return None
        M = x3.shape[2]
        valid = torch.ones(B, Tl * frames, M, dtype=torch.bool, device=x3.device)
        valid[:, :pad] = False
        if key_mask3 is not None:
            valid = valid & key_mask3[:, None, :]
        return rearrange(valid, "b (n f) m -> (b n) 1 1 (f m)", f=frames)


class CrossAttentionBlock(nn.Module):
    """Cross-attention of the 2-D tokens to the camera tokens and the global identity tokens (eq. 21, 23).

    Per latent frame, the keys are that frame's S Plücker tokens followed by the identity tokens of the
    reference image. adaLN-Zero (shift, scale, gate) modulates the attention; no FFN (PixArt-style: the
    spatial/temporal/ISA blocks carry the FFNs).

    Args:
        dim: Hidden size D.
        heads: Attention heads.
        qk_norm: RMS-normalise queries and keys.
    """

    def __init__(self, dim: int, heads: int, qk_norm: bool = True) -> None:
        super().__init__()
        self.norm = layer_norm(dim)
        self.q = HeadProjection(dim, heads, "q", qk_norm)
        self.kv = HeadProjection(dim, heads, "kv", qk_norm)
        self.proj = nn.Linear(dim, dim)
        self.adaLN_modulation = AdaLNModulation(dim, 3)
        self.attention_backend = "sdpa"

    def forward(
        self, x2: torch.Tensor, c: torch.Tensor, camera: torch.Tensor, identity: torch.Tensor | None
    ) -> torch.Tensor:
        """x2: (B, T', S, D); c: (B, D) or (B, T', D); camera: (B, T', S_c, D); identity: (B, M_id, D)
        or None."""
        shift, scale, gate = self.adaLN_modulation(c)
        context = camera
        if identity is not None:
            context = torch.cat([camera, identity[:, None].expand(-1, camera.shape[1], -1, -1)], dim=2)
        q = self.q(rearrange(modulate(self.norm(x2), shift, scale), "b t s d -> (b t) s d"))["q"]
        kv = self.kv(rearrange(context, "b t l d -> (b t) l d"))
        out = merge_heads(attention(q, kv["k"], kv["v"], backend=self.attention_backend))
        return x2 + gate * self.proj(rearrange(out, "(b t) s d -> b t s d", b=x2.shape[0]))


class ControlAdaLN(nn.Module):
    """PadaLN (DynamiCtrl): control tokens, normalised with a timestep-conditioned shift and scale, gated and
    added to the 2-D tokens: `x2 + gate · (LN(control) · (1 + scale) + shift)`.

    The modulation is an `AdaLNModulation`, zero-initialised by `ISADiT.initialize_weights()`: the gate
    starts at 0, so a fresh block is the identity.

    Args:
        dim: Hidden size D.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = layer_norm(dim)
        self.adaLN_modulation = AdaLNModulation(dim, 3)

    def forward(self, x2: torch.Tensor, control: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x2, control: (B, T', S, D); c: (B, D) or (B, T', D) -> (B, T', S, D)."""
        shift, scale, gate = self.adaLN_modulation(c)
        return x2 + gate * modulate(self.norm(control), shift, scale)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + LayerNorm + Linear(D, p·p·C), both zero-initialised (DiT)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = layer_norm(dim)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = AdaLNModulation(dim, 2)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)
        return self.linear(modulate(self.norm(x), shift, scale))
