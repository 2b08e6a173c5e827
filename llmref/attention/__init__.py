"""Attention: the naive reference, fused backends, masks and modules.

Tensors use the ``(B, H, T, D)`` layout; boolean masks mean ``True`` = may attend.
"""

from .chunked import chunked_attention
from .differential import DifferentialAttention, differential_attention
from .flex import flex_attention
from .functional import (
    ATTENTION,
    AttentionBackendSpec,
    attention,
    naive_attention,
    sdpa_attention,
)
from .latent import MultiHeadLatentAttention
from .linear import (
    LinearAttention,
    LinearAttentionState,
    linear_attention,
    linear_attention_quadratic,
    linear_attention_step,
)
from .masks import (
    MASKS,
    MaskSpec,
    as_mask_mod,
    block_sparse_mask,
    block_topk_layout,
    causal_mask,
    dilated_mask,
    document_mask,
    local_window_mask,
    prefix_lm_mask,
    sink_mask,
    sliding_window_mask,
)
from .modules import MultiHeadAttention
from .performer import favor_features, orthogonal_random_features, performer_attention
from .sigmoid import sigmoid_attention
from .split_kv import merge_partial_attention, split_kv_attention
from .variants import VARIANTS, AttentionVariantSpec
from .varlen import varlen_attention

__all__ = [
    "ATTENTION",
    "MASKS",
    "VARIANTS",
    "AttentionBackendSpec",
    "AttentionVariantSpec",
    "DifferentialAttention",
    "LinearAttention",
    "LinearAttentionState",
    "MaskSpec",
    "MultiHeadAttention",
    "MultiHeadLatentAttention",
    "as_mask_mod",
    "attention",
    "block_sparse_mask",
    "block_topk_layout",
    "causal_mask",
    "chunked_attention",
    "differential_attention",
    "dilated_mask",
    "document_mask",
    "favor_features",
    "flex_attention",
    "linear_attention",
    "linear_attention_quadratic",
    "linear_attention_step",
    "local_window_mask",
    "merge_partial_attention",
    "naive_attention",
    "orthogonal_random_features",
    "performer_attention",
    "prefix_lm_mask",
    "sdpa_attention",
    "sigmoid_attention",
    "sink_mask",
    "sliding_window_mask",
    "split_kv_attention",
    "varlen_attention",
]
