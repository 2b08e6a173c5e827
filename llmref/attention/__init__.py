"""Attention: the naive reference, fused backends, masks and modules.

Tensors use the ``(B, H, T, D)`` layout; boolean masks mean ``True`` = may attend.
"""

from .functional import ATTENTION, attention, naive_attention, sdpa_attention
from .masks import MASKS, causal_mask
from .modules import MultiHeadAttention

__all__ = [
    "ATTENTION",
    "MASKS",
    "MultiHeadAttention",
    "attention",
    "causal_mask",
    "naive_attention",
    "sdpa_attention",
]
