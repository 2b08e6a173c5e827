"""The decoder's attention kinds: one spec per kind, read by the config, the blocks and the caches.

Adding a kind is one :meth:`~llmref.Registry.add` of an
:class:`~llmref.models.attention_kinds.AttentionKindSpec` here (or in a user's
module): :class:`~llmref.models.DecoderConfig` validates a layer against the
spec's declared constraints, :class:`~llmref.models.DecoderBlock`
builds the module with its ``fn``, and :class:`~llmref.models.DecoderLM` and
:func:`~llmref.models.make_caches` pick caches by what it ``stores``. (A kind that
needs sizes of its own, as MLA does, also needs a field of
:class:`~llmref.models.DecoderConfig` to hold them, named by ``section``.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from .._registry import Registry, Spec
from ..attention import MultiHeadAttention, MultiHeadLatentAttention

if TYPE_CHECKING:
    from .config import DecoderConfig

__all__ = ["ATTENTION_KINDS", "AttentionKindSpec"]


@dataclass(frozen=True, kw_only=True)
class AttentionKindSpec(Spec):
    """What a decoder attention kind declares.

    Parameters
    ----------
    name, paper, reference, third_party
        As in :class:`~llmref.Spec`.
    fn : callable
        ``fn(config, index, *, rope, position_bias, device, dtype) -> nn.Module``:
        the attention module of layer ``index``.
    stores : {"kv", "latent"}
        What its cache stores (:attr:`llmref.cache.CacheSpec.stores`).
    default_cache : str
        The :data:`~llmref.cache.CACHES` kind :func:`~llmref.models.make_caches`
        gives its layers by default.
    kv_heads : callable or None
        ``kv_heads(n_kv_heads, n_heads) -> bool``: which ``n_kv_heads`` the kind
        accepts (None: any that divides ``n_heads``), ...
    kv_heads_rule : str
        ... said in words for the error message (``{n_heads}`` is filled in).
    rope_dim : callable
        ``rope_dim(config) -> int``: the channels its RoPE rotates.
    rope : str
        The :class:`~llmref.models.DecoderLM` attribute holding its rotary
        embedding (``"rope"``, or ``"mla_rope"`` for MLA's decoupled key).
    windows : bool
        Whether it supports a sliding window.
    position_bias : bool
        Whether it supports an additive position bias (ALiBi).
    section : str or None
        The :class:`~llmref.models.DecoderConfig` field holding its own sizes.
    example : dict
        Further :class:`~llmref.models.DecoderConfig` keywords for a small model
        of this kind (``n_kv_heads``, its ``section``): what the contract suite
        (``llmref.testing.contracts.decoder``) builds.
    traces : bool
        Whether a decoder of this kind is captured as one graph by
        ``torch.compile(fullgraph=True)`` (the contract checks it either way: a
        declared exemption must really break the graph).

    Examples
    --------
    >>> from llmref.models import ATTENTION_KINDS, DecoderConfig
    >>> ATTENTION_KINDS["mla"].stores, ATTENTION_KINDS["gqa"].kv_heads(2, 8)
    ('latent', True)
    >>> DecoderConfig(vocab_size=10, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
    ...               d_ff=64).n_kv_heads  # "mha", the default, is the whole family
    2
    """

    primary: ClassVar[str | None] = "fn"

    fn: Callable[..., nn.Module]
    stores: str = "kv"
    default_cache: str = "dynamic"
    kv_heads: Callable[[int, int], bool] | None = None
    kv_heads_rule: str = ""
    rope_dim: Callable[[Any], int]
    rope: str = "rope"
    windows: bool = True
    position_bias: bool = True
    section: str | None = None
    example: Mapping[str, Any] = field(default_factory=dict)
    traces: bool = True


ATTENTION_KINDS: Registry[AttentionKindSpec] = Registry("decoder attention kind", AttentionKindSpec)
"""Attention kinds a decoder layer can use, by name, each an
:class:`~llmref.models.attention_kinds.AttentionKindSpec`.

``"mha"`` is :class:`~llmref.attention.MultiHeadAttention` with any ``n_kv_heads``
(so it covers GQA and MQA); ``"gqa"`` and ``"mqa"`` are the same module that also
check ``1 < n_kv_heads < n_heads`` and ``n_kv_heads == 1``; ``"mla"`` is
:class:`~llmref.attention.MultiHeadLatentAttention`."""


def _multi_head(
    config: DecoderConfig,
    index: int,
    *,
    rope: nn.Module | None,
    position_bias: nn.Module | None,
    **kw: Any,
) -> nn.Module:
    """Layer ``index``'s :class:`~llmref.attention.MultiHeadAttention` (MHA, GQA, MQA)."""
    return MultiHeadAttention(
        config.d_model,
        config.n_heads,
        n_kv_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        bias=config.attention_bias != "none",
        out_bias=config.attention_bias == "all",  # "qkv": Qwen2, no output bias
        scale=config.attention_scale,
        window=config.layer(index).window,
        rope=rope,
        position_bias=position_bias,
        **kw,
    )


def _latent(
    config: DecoderConfig,
    index: int,
    *,
    rope: nn.Module | None,
    position_bias: nn.Module | None,
    **kw: Any,
) -> nn.Module:
    """Layer ``index``'s :class:`~llmref.attention.MultiHeadLatentAttention`."""
    mla = config.mla
    assert mla is not None  # DecoderConfig checked it
    return MultiHeadLatentAttention(
        config.d_model,
        config.n_heads,
        kv_lora_rank=mla.kv_lora_rank,
        qk_nope_head_dim=mla.qk_nope_head_dim,
        qk_rope_head_dim=mla.qk_rope_head_dim,
        v_head_dim=mla.v_head_dim,
        q_lora_rank=mla.q_lora_rank,
        rope=rope,
        scale=config.attention_scale,
        bias=config.attention_bias == "all",
        norm_eps=mla.norm_eps,
        **kw,
    )


def _head_dim(config: DecoderConfig) -> int:
    assert config.head_dim is not None
    return config.head_dim


for _name, _paper, _rule, _words, _kv in (
    ("mha", "vaswani2017attention", None, "", 4),
    ("gqa", "ainslie2023gqa", lambda kv, h: 1 < kv < h, "1 < n_kv_heads < n_heads={n_heads}", 2),
    ("mqa", "shazeer2019fast", lambda kv, h: kv == 1, "n_kv_heads == 1", 1),
):
    ATTENTION_KINDS.add(
        AttentionKindSpec(
            name=_name,
            fn=_multi_head,
            paper=_paper,
            third_party="transformers.models.llama.modeling_llama.LlamaAttention",
            kv_heads=_rule,
            kv_heads_rule=_words,
            rope_dim=_head_dim,
            example={"n_kv_heads": _kv},
        )
    )

ATTENTION_KINDS.add(
    AttentionKindSpec(
        name="mla",
        fn=_latent,
        paper="deepseek2024v2",
        third_party="transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3Attention",
        stores="latent",
        default_cache="latent",
        rope_dim=lambda config: config.mla.qk_rope_head_dim,
        rope="mla_rope",
        windows=False,
        position_bias=False,
        section="mla",
        example={
            "mla": {
                "kv_lora_rank": 12,
                "qk_nope_head_dim": 8,
                "qk_rope_head_dim": 4,
                "v_head_dim": 8,
                "q_lora_rank": 16,
            }
        },
    )
)
