"""Attention: the naive reference, fused backends, masks and modules.

Tensors use the ``(B, H, T, D)`` layout; boolean masks mean ``True`` = may attend.
"""

from .chunked import chunked_attention
from .flex import flex_attention
from .functional import ATTENTION, attention, naive_attention, sdpa_attention
from .latent import MultiHeadLatentAttention
from .masks import (
    MASKS,
    as_mask_mod,
    block_sparse_mask,
    block_topk_layout,
    causal_mask,
    dilated_mask,
    document_mask,
    prefix_lm_mask,
    sink_mask,
    sliding_window_mask,
)
from .modules import MultiHeadAttention

__all__ = [
    "ATTENTION",
    "MASKS",
    "MultiHeadAttention",
    "MultiHeadLatentAttention",
    "as_mask_mod",
    "attention",
    "block_sparse_mask",
    "block_topk_layout",
    "causal_mask",
    "chunked_attention",
    "dilated_mask",
    "document_mask",
    "flex_attention",
    "naive_attention",
    "prefix_lm_mask",
    "sdpa_attention",
    "sink_mask",
    "sliding_window_mask",
]
