"""One attention function for every block of ISA-DiT, with a PyTorch SDPA and an xformers backend.

`attention(q, k, v, mask, backend)` takes `(B, heads, L, head_dim)` tensors and an optional boolean
mask (True = may attend) that broadcasts to `(B, heads, L_q, L_k)`; a key-padding mask is `(B, 1, 1, L_k)`.

* `"sdpa"` (default): `torch.nn.functional.scaled_dot_product_attention`, which picks FlashAttention
  (no mask), memory-efficient attention (masks; broadcast masks are not materialised) or the math
  kernel. Under `torch.compile` or on CPU it is the only backend.
* `"xformers"`: `xformers.ops.memory_efficient_attention` for attention WITHOUT a mask, when xformers is
  importable (`pip install isa4d[xformers]`) AND the tensors are on CUDA; otherwise, and for every masked
  call (the ISA blocks of clips, whose latent frame 0 has padding slots), SDPA is used, whose
  memory-efficient kernel takes broadcast key-padding masks without materialising them (xformers would
  need a dense `(B, heads, L_q, L_k)` bias). A config may therefore ask for xformers anywhere.

A query whose keys are all masked out (e.g. a frame whose persons are all padded in a cross-attention)
gets a zero output instead of NaN, forward and backward.
"""

from __future__ import annotations

import importlib
from functools import cache

import torch
import torch.nn.functional as F
from einops import rearrange

ATTENTION_BACKENDS = ("sdpa", "xformers")


@cache
def _xformers_ops():
    try:
        return importlib.import_module("xformers.ops")
    except ImportError:
        return None


def xformers_available() -> bool:
    """Whether `xformers.ops` can be imported."""
    return _xformers_ops() is not None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    backend: str = "sdpa",
) -> torch.Tensor:
    """Scaled dot-product attention `softmax(q kᵀ / √d) v`.

    Args:
        q: Queries, (B, heads, L_q, head_dim).
        k: Keys, (B, heads, L_k, head_dim).
        v: Values, (B, heads, L_k, head_dim).
        mask: Bool, True where a query may attend a key, broadcastable to (B, heads, L_q, L_k); None for
            full attention.
        backend: `"sdpa"` or `"xformers"` (see the module docstring).

    Returns:
        (B, heads, L_q, head_dim); zero for queries without any admissible key.
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {ATTENTION_BACKENDS}")
    if k.shape[-2] == 0:  # nothing to attend (e.g. no body tokens at all)
        return q.new_zeros(*q.shape[:-1], v.shape[-1])
    has_key = None
    if mask is not None:
        has_key = mask.any(dim=-1, keepdim=True)
        mask = mask | ~has_key  # rows without keys attend everything, then are zeroed below
    xops = _xformers_ops() if backend == "xformers" and q.is_cuda and mask is None else None
    if xops is not None:
        out = rearrange(
            xops.memory_efficient_attention(*(rearrange(x, "b h l d -> b l h d") for x in (q, k, v))),
            "b l h d -> b h l d",
        )
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if has_key is not None:
        out = out * has_key.to(out.dtype)
    return out
