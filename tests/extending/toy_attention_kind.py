"""Worked example: a new decoder attention kind, registered by one import.

``toy_single_kv`` builds every layer with one key/value head, whatever the config's
``n_kv_heads`` says (multi-query attention chosen by the kind, not by the config): its
builder is a :class:`~llmref.attention.MultiHeadAttention` with ``n_kv_heads=1``. One
``ATTENTION_KINDS.add`` is the whole registration: :class:`~llmref.models.DecoderConfig`
accepts ``attention="toy_single_kv"``, :class:`~llmref.models.DecoderLM` builds it, and
the contract suite (``tests/testing/test_decoder_contracts.py``) picks it up.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from llmref.attention import MultiHeadAttention
from llmref.models import ATTENTION_KINDS, DecoderConfig
from llmref.models.attention_kinds import AttentionKindSpec


def single_kv_attention(
    config: DecoderConfig,
    index: int,
    *,
    rope: nn.Module | None,
    position_bias: nn.Module | None,
    **kw: Any,
) -> nn.Module:
    """Layer ``index``'s attention: all query heads share one key/value head."""
    assert config.head_dim is not None
    return MultiHeadAttention(
        config.d_model,
        config.n_heads,
        n_kv_heads=1,
        head_dim=config.head_dim,
        window=config.layer(index).window,
        rope=rope,
        position_bias=position_bias,
        **kw,
    )


ATTENTION_KINDS.add(
    AttentionKindSpec(
        name="toy_single_kv",
        fn=single_kv_attention,
        paper="shazeer2019fast",
        rope_dim=lambda config: config.head_dim,
    )
)
