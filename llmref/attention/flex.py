"""FlexAttention backend: llmref's masks and biases as ``mask_mod``/``score_mod``.

:func:`torch.nn.attention.flex_attention.flex_attention` computes attention from
a block-sparse mask plus a per-score modification function; with
``torch.compile`` it becomes a fused kernel that skips empty blocks. Eager mode
runs everywhere and is what the tests use; compilation is opt-in because it
takes tens of seconds the first time (the compiled function is then cached).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.attention.flex_attention import create_block_mask
from torch.nn.attention.flex_attention import flex_attention as _torch_flex_attention

from .._checks import (
    AttentionShapes,
    check_bias,
    check_mask,
    check_positive_float,
    check_qkv,
    resolve_scale,
)
from .functional import ATTENTION
from .masks import causal_offset

__all__ = ["flex_attention"]


@functools.cache
def _compiled_flex() -> Callable[..., Any]:
    # Inductor's on-disk FX-graph cache does not key on ATEN_CPU_CAPABILITY (torch 2.13): a
    # kernel cached by an AVX-512 process gave wrong results (|error| ~ 2) in an AVX2 one.
    # Each process compiles its own kernel instead.
    return torch.compile(_torch_flex_attention, dynamic=False, options={"fx_graph_cache": False})


def _full(x: torch.Tensor, shapes: AttentionShapes) -> torch.Tensor:
    """An (expanded, not copied) (B, H, T, S) view of a broadcastable mask or bias."""
    B, H, _, T, S = shapes[:5]
    return x.expand(B, H, T, S)


@ATTENTION.register(
    "flex",
    paper="dong2024flex",
    reference="naive_attention",
    third_party="torch.nn.attention.flex_attention.flex_attention",
    features=frozenset({"bias", "softcap", "causal_alignment"}),
    backward_on_cpu=False,  # PyTorch's FlexAttention has no CPU backward
)
def flex_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    causal_alignment: str = "top_left",
    mask_mod: Callable[..., torch.Tensor] | None = None,
    block_size: int = 128,
    compiled: bool = False,
) -> torch.Tensor:
    """Attention through PyTorch's FlexAttention, with llmref's masks and biases.

    Parameters
    ----------
    q, k, v : torch.Tensor
        Queries ``(B, H, T, D)``, keys ``(B, H_kv, S, D)``, values
        ``(B, H_kv, S, Dv)``; see :func:`~llmref.attention.naive_attention`.
    mask : torch.Tensor, optional
        Boolean mask broadcasting to ``(B, H, T, S)``; ``True`` = may attend.
        Turned into a ``mask_mod`` that indexes it.
    is_causal : bool, default False
        Causal mask aligned as ``causal_alignment`` says, combined with the
        others by AND (as the ``mask_mod`` ``kv_idx <= q_idx + offset``).
    scale : float, optional
        Score scale; defaults to ``1 / sqrt(D)``.
    bias : torch.Tensor, optional
        Additive float bias broadcasting to ``(B, H, T, S)``, applied in a
        ``score_mod``.
    softcap : float, optional
        Logit softcapping ``softcap * tanh(s / softcap)`` in the ``score_mod``,
        before the bias.
    causal_alignment : {"top_left", "bottom_right"}, default "top_left"
        As in :func:`~llmref.attention.naive_attention`: SDPA's alignment
        (``CausalVariant.UPPER_LEFT``, offset 0) or FlashAttention's
        (``CausalVariant.LOWER_RIGHT``, offset ``S - T``).
    mask_mod : callable, optional
        A FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (for example
        from :func:`~llmref.attention.as_mask_mod`), combined with the others
        by AND. Unlike ``mask`` it never materialises a ``T x S`` tensor.
    block_size : int, default 128
        Block size of the :class:`~torch.nn.attention.flex_attention.BlockMask`.
    compiled : bool, default False
        Run the ``torch.compile``-d kernel (compiled once per process and
        shape; the first call takes tens of seconds on CPU).

    Returns
    -------
    torch.Tensor
        Shape ``(B, H, T, Dv)``, dtype of ``q``.

    Raises
    ------
    TypeError, ValueError
        As :func:`~llmref.attention.naive_attention`, or if ``mask_mod`` is not
        callable.

    Notes
    -----
    PyTorch implements no FlexAttention backward on CPU; on CPU this backend
    is for inference (``ATTENTION["flex"].backward_on_cpu`` is False).
    FlexAttention evaluates ``score_mod`` on each scaled score
    :math:`s_{ij}` and drops the pairs where the mask is false; blocks that
    are entirely masked are skipped. Fully masked rows come back as zeros.

    References
    ----------
    :cite:t:`dong2024flex`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention import as_mask_mod, flex_attention, naive_attention
    >>> from llmref.attention import sliding_window_mask
    >>> q, k, v = (torch.randn(1, 2, 40, 16) for _ in range(3))
    >>> out = flex_attention(q, k, v, mask_mod=as_mask_mod("sliding_window", window=8))
    >>> ref = naive_attention(q, k, v, mask=sliding_window_mask(40, window=8))
    >>> torch.allclose(out, ref, atol=1e-5)
    True
    """
    shapes = check_qkv(q, k, v)
    s = resolve_scale(scale, shapes.head_dim)
    mods: list[Callable[..., torch.Tensor]] = []
    if mask is not None:
        dense = _full(check_mask(mask, shapes, q.device), shapes)
        mods.append(lambda b, h, qi, kv: dense[b, h, qi, kv])
    offset = causal_offset(causal_alignment, shapes.query_len, shapes.key_len)
    if is_causal:
        mods.append(lambda b, h, qi, kv: kv <= qi + offset)
    if mask_mod is not None:
        if not callable(mask_mod):
            raise TypeError(f"mask_mod must be callable, got {type(mask_mod).__name__}")
        mods.append(mask_mod)
    block_mask = None
    if mods:

        def combined(b: Any, h: Any, qi: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            allowed = mods[0](b, h, qi, kv)
            for mod in mods[1:]:
                allowed = allowed & mod(b, h, qi, kv)
            return allowed

        # A block mask per batch row and head costs memory and time; build one only when
        # some part of the mask can differ along that axis.
        per_batch = mask_mod is not None or (
            mask is not None and mask.ndim == 4 and mask.shape[0] > 1
        )
        per_head = mask_mod is not None or (
            mask is not None and mask.ndim >= 3 and mask.shape[-3] > 1
        )
        block_mask = create_block_mask(
            combined,
            shapes.batch if per_batch else None,
            shapes.heads if per_head else None,
            shapes.query_len,
            shapes.key_len,
            device=q.device,
            BLOCK_SIZE=block_size,
        )
    cap = None if softcap is None else check_positive_float("softcap", softcap)
    full_bias = None if bias is None else _full(check_bias(bias, shapes, q.device), shapes)
    score_mod = None
    if cap is not None or full_bias is not None:

        def score_mod(score: torch.Tensor, b: Any, h: Any, qi: Any, kv: Any) -> torch.Tensor:
            if cap is not None:
                score = torch.tanh(score / cap) * cap
            if full_bias is not None:
                score = score + full_bias[b, h, qi, kv]
            return score

    flex: Callable[..., Any] = _torch_flex_attention
    if compiled:
        flex = _compiled_flex()
    with warnings.catch_warnings():
        # Eager FlexAttention warns that it is unfused; that is known and documented here.
        warnings.simplefilter("ignore", UserWarning)
        out = flex(
            q,
            k,
            v,
            score_mod=score_mod,
            block_mask=block_mask,
            scale=s,
            enable_gqa=shapes.kv_heads != shapes.heads,
        )
    return out
