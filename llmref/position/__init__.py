"""Position encodings: RoPE and its context-extension rules, ALiBi, relative biases and more.

Queries and keys use the ``(B, H, T, D)`` layout; additive biases are float
tensors of shape ``(H, T, S)`` that broadcast to the ``(B, H, T, S)`` scores
(pass them to :func:`llmref.attention.naive_attention` as ``bias=``). Every
encoding is registered in :data:`POSITION`, every RoPE frequency rule in
:data:`ROPE_SCALING`.
"""

from ._registries import POSITION, ROPE_SCALING, PositionSpec, RopeRuleSpec
from .alibi import AlibiBias, alibi_bias, alibi_slopes
from .cope import CoPE, cope_bias, cope_positions
from .learned import LearnedPositionEmbedding, learned_position_embedding
from .mrope import mrope_axes, mrope_cos_sin, mrope_position_ids
from .no_position import NoPE, nope
from .relative import (
    FireBias,
    KerpleBias,
    T5RelativeBias,
    fire_bias,
    kerple_bias,
    t5_bias,
    t5_relative_position_bucket,
)
from .rope import (
    RotaryEmbedding,
    apply_rope,
    convert_rope_weight,
    rope_cos_sin,
    rope_layout_permutation,
)
from .rope_scaling import (
    default_frequencies,
    dynamic_frequencies,
    linear_frequencies,
    llama3_frequencies,
    longrope_frequencies,
    ntk_alpha_frequencies,
    proportional_frequencies,
    rope_frequencies,
    rotary_dim,
    yarn_frequencies,
)
from .sinusoidal import sinusoidal_embedding
from .xpos import XPos, apply_xpos, xpos_scale

__all__ = [
    "POSITION",
    "ROPE_SCALING",
    "AlibiBias",
    "CoPE",
    "FireBias",
    "KerpleBias",
    "LearnedPositionEmbedding",
    "NoPE",
    "PositionSpec",
    "RopeRuleSpec",
    "RotaryEmbedding",
    "T5RelativeBias",
    "XPos",
    "alibi_bias",
    "alibi_slopes",
    "apply_rope",
    "apply_xpos",
    "convert_rope_weight",
    "cope_bias",
    "cope_positions",
    "default_frequencies",
    "dynamic_frequencies",
    "fire_bias",
    "kerple_bias",
    "learned_position_embedding",
    "linear_frequencies",
    "llama3_frequencies",
    "longrope_frequencies",
    "mrope_axes",
    "mrope_cos_sin",
    "mrope_position_ids",
    "nope",
    "ntk_alpha_frequencies",
    "proportional_frequencies",
    "rope_cos_sin",
    "rope_frequencies",
    "rope_layout_permutation",
    "rotary_dim",
    "sinusoidal_embedding",
    "t5_bias",
    "t5_relative_position_bucket",
    "xpos_scale",
    "yarn_frequencies",
]
