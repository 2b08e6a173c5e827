"""Split-KV decoding (Flash-Decoding): a few queries against a long cache, split along the keys.

Decoding has one query per sequence, so a FlashAttention kernel that parallelises over
batch, heads and query blocks has only ``B * H_kv`` units of work; Flash-Decoding also
splits the keys into chunks, attends to each chunk independently (each a plain
FlashAttention call returning its output and log-sum-exp) and merges the partial results
with the log-sum-exp rule. Here the chunks become extra key/value heads of one
:func:`~llmref.attention.chunked_attention` call (a free view of a contiguous cache),
which is how the splits run side by side.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .._checks import check_int, check_mask, check_qkv, check_sinks, compute_dtype
from .chunked import chunked_attention
from .functional import _combined_mask

__all__ = ["merge_partial_attention", "split_kv_attention"]


def merge_partial_attention(
    outs: torch.Tensor,
    lses: torch.Tensor,
    *,
    dim: int = 0,
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge attention results over disjoint key sets by their log-sum-exps.

    Parameters
    ----------
    outs : torch.Tensor
        Partial outputs stacked along ``dim``, each the softmax attention of
        the same queries over one key set: shape ``(..., n, ..., T, Dv)``.
    lses : torch.Tensor
        Their log-sum-exps, ``outs``'s shape without the last dimension
        (``-inf`` for a key set a row cannot see), as
        ``chunked_attention(..., return_lse=True)`` returns them.
    dim : int, default 0
        The dimension of ``lses`` that indexes the key sets.
    sinks : torch.Tensor, optional
        Per-head sink logits broadcasting against ``lses`` with ``dim``
        removed: one more softmax entry with a zero value, counted once.

    Returns
    -------
    out : torch.Tensor
        The attention over the union of the key sets, ``outs`` without ``dim``,
        in ``outs``'s dtype; zero for a row that sees no key.
    lse : torch.Tensor
        Its log-sum-exp (``-inf`` for such a row).

    Raises
    ------
    ValueError
        If ``lses``'s shape is not ``outs``'s without the last dimension.

    Notes
    -----
    With :math:`L_i` the log-sum-exp of split :math:`i` and :math:`O_i` its
    output, :math:`L = \\log \\sum_i e^{L_i}` and
    :math:`O = \\sum_i e^{L_i - L} O_i`: each split's softmax is rescaled to
    the shared normaliser, as FlashAttention's online softmax does tile by
    tile. The largest :math:`L_i` is subtracted first so no ``exp`` overflows.

    References
    ----------
    :cite:t:`dao2022flashattention`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention import chunked_attention, naive_attention
    >>> q = torch.randn(1, 2, 1, 8, dtype=torch.float64)
    >>> k, v = (torch.randn(1, 2, 10, 8, dtype=torch.float64) for _ in range(2))
    >>> parts = [chunked_attention(q, k[:, :, s], v[:, :, s], return_lse=True)
    ...          for s in (slice(0, 4), slice(4, 10))]
    >>> out, lse = merge_partial_attention(
    ...     torch.stack([o for o, _ in parts]), torch.stack([l for _, l in parts]))
    >>> torch.allclose(out, naive_attention(q, k, v))
    True
    """
    if lses.shape != outs.shape[:-1]:
        raise ValueError(
            f"lses must have outs's shape without the last dim {tuple(outs.shape[:-1])}, "
            f"got {tuple(lses.shape)}"
        )
    dim = dim % lses.ndim
    top = lses.amax(dim=dim)
    if sinks is not None:
        top = torch.maximum(top, sinks.to(top.dtype))
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = torch.exp(lses - shift.unsqueeze(dim))  # exp(-inf) = 0 for an empty split
    denom = weights.sum(dim=dim)
    if sinks is not None:
        denom = denom + torch.exp(sinks.to(shift.dtype) - shift)
    seen = denom > 0
    safe = torch.where(seen, denom, torch.ones_like(denom))
    out = (weights.unsqueeze(-1) * outs).sum(dim=dim) / safe.unsqueeze(-1)
    lse = torch.where(seen, shift + torch.log(safe), torch.full_like(shift, float("-inf")))
    return out.to(outs.dtype), lse


def split_kv_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    num_splits: int = 8,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    causal_alignment: str = "top_left",
    scale: float | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    block_size: int | tuple[int, int] = 256,
    return_lse: bool = False,
) -> Any:
    """Exact attention with the keys split into chunks that are attended independently
    and merged (Flash-Decoding).

    Meant for decoding: one (or a few) queries per sequence against a long KV
    cache. Gives :func:`~llmref.attention.naive_attention`'s result under the
    equality policy for any number of splits.

    Parameters
    ----------
    q : torch.Tensor
        Queries of shape ``(B, H, T, D)``; ``T = 1`` when decoding.
    k : torch.Tensor
        Keys of shape ``(B, H_kv, S, D)``, ``H % H_kv == 0`` (GQA/MQA).
    v : torch.Tensor
        Values of shape ``(B, H_kv, S, Dv)``.
    num_splits : int, default 8
        Number of key chunks, ``1 <= num_splits <= S``. Chunks hold
        ``ceil(S / num_splits)`` keys; when that does not divide ``S`` the
        cache is padded with masked keys (a copy), so a divisor of ``S``
        avoids copying K and V. ``1`` is plain chunked attention.
    mask : torch.Tensor, optional
        Boolean mask broadcasting to ``(B, H, T, S)``; ``True`` = may attend.
    is_causal : bool, default False
        Causal mask aligned as ``causal_alignment`` says. A decoding step
        after a cache needs none (``"bottom_right"`` with ``T = 1`` hides
        nothing).
    causal_alignment : {"top_left", "bottom_right"}, default "top_left"
        As in :func:`~llmref.attention.attention`.
    scale : float, optional
        Score scale; defaults to ``1 / sqrt(D)``.
    softcap : float, optional
        Logit softcapping ``softcap * tanh(s / softcap)``, inside each chunk.
    sinks : torch.Tensor, optional
        Per-head sink logits of shape ``(H,)``, entering the merge once.
    block_size : int or tuple of int, default 256
        Tile size of the chunked kernel within each split.
    return_lse : bool, default False
        Also return each row's log-sum-exp, shape ``(B, H, T)``.

    Returns
    -------
    out : torch.Tensor
        Shape ``(B, H, T, Dv)``, dtype of ``q``.
    lse : torch.Tensor
        Only if ``return_lse``: shape ``(B, H, T)`` in the compute dtype
        (float32 for 16-bit inputs); ``-inf`` for rows that see no key.

    Raises
    ------
    TypeError, ValueError
        As :func:`~llmref.attention.naive_attention`; or if ``num_splits`` is
        not an int in ``[1, S]``.

    Notes
    -----
    Split :math:`i` holds keys :math:`K_i` and gives
    :math:`O_i = \\operatorname{softmax}(s\\,q K_i^\\top) V_i` and its
    log-sum-exp :math:`L_i`; :func:`merge_partial_attention` combines them as
    :math:`O = \\sum_i e^{L_i - L} O_i`, :math:`L = \\log\\sum_i e^{L_i}`.
    The ``n`` splits of a contiguous ``(B, H_kv, S, D)`` cache are the view
    ``(B, H_kv * n, S / n, D)``, run as ``H_kv * n`` key/value heads of one
    chunked call, the queries repeated once per split (a copy of ``q`` only).
    Partial outputs stay in the compute dtype (float32 for 16-bit inputs, so
    K and V are converted first): rounding them to 16 bits before the merge
    would add an error the reference does not have.

    On a CPU the splits change the shape of the work, not its amount: the same
    ``S`` scores and ``S`` value rows per query, in ``S / n / block`` tiles of
    ``n`` times the batch instead of ``S / block`` tiles one after another. At
    one decoding step with B=1, H=8, H_kv=1, D=64, float32 and a cache of 16384
    (2-core AMD EPYC, one thread, ``benchmarks/bench_attention_split_kv.py``)
    that took 0.90 ms with 16 splits and 0.81 ms with 64, against 3.00 ms
    unsplit (64 tiles of 256 keys) and 1.52 ms through SDPA: the gain is fewer
    small PyTorch calls, not parallelism, and one tile as long as the cache
    (0.69 ms) is faster still. On a GPU the splits fill otherwise idle
    multiprocessors; see the Flash-Decoding section of the FlashAttention
    theory page.

    References
    ----------
    :cite:t:`dao2022flashattention`, :cite:t:`dao2023flashdecoding`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention import naive_attention, split_kv_attention
    >>> q = torch.randn(1, 8, 1, 16, dtype=torch.float64)
    >>> k, v = (torch.randn(1, 2, 1000, 16, dtype=torch.float64) for _ in range(2))
    >>> out = split_kv_attention(q, k, v, num_splits=4)
    >>> torch.allclose(out, naive_attention(q, k, v))
    True
    """
    shapes = check_qkv(q, k, v)
    B, H, H_kv, T, S, D, Dv = shapes
    n = check_int("num_splits", num_splits, minimum=1)
    if n > max(S, 1):
        raise ValueError(f"num_splits must be <= S (the number of keys) = {S}, got {n}")
    if mask is not None:
        check_mask(mask, shapes, q.device)
    if sinks is not None:
        check_sinks(sinks, shapes, q.device)
    full_mask = _combined_mask(mask, is_causal, T, S, q.device, causal_alignment)
    dtype, compute = q.dtype, compute_dtype(q.dtype)
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    G = H // H_kv
    L = -(-S // n) if S else 0
    pad = n * L - S
    if pad:
        k, v = F.pad(k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
        keep = torch.arange(n * L, device=q.device) < S
        full_mask = keep if full_mask is None else F.pad(full_mask, (0, pad)) & keep
    # Split j of key/value head h becomes head h * n + j; query head h * G + g becomes
    # (h * n + j) * G + g, so each split's query heads are that split's GQA group.
    k_split = k.reshape(B, H_kv * n, L, D)
    v_split = v.reshape(B, H_kv * n, L, Dv)
    q_split = q.reshape(B, H_kv, 1, G, T, D).expand(B, H_kv, n, G, T, D).reshape(B, -1, T, D)
    split_mask = None
    if full_mask is not None:
        m6 = full_mask.expand(B, H, T, n * L).view(B, H_kv, G, T, n, L)
        split_mask = m6.permute(0, 1, 4, 2, 3, 5).reshape(B, H_kv * n * G, T, L)
    out, lse = chunked_attention(
        q_split,
        k_split,
        v_split,
        mask=split_mask,
        scale=scale,
        softcap=softcap,
        block_size=block_size,
        return_lse=True,
    )
    sink = None if sinks is None else sinks.view(H_kv, G, 1)
    merged, lse = merge_partial_attention(
        out.view(B, H_kv, n, G, T, Dv), lse.view(B, H_kv, n, G, T), dim=2, sinks=sink
    )
    out = merged.reshape(B, H, T, Dv).to(dtype)
    return (out, lse.reshape(B, H, T)) if return_lse else out
