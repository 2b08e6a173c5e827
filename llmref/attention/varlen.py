"""Variable-length packed batches: sequences of different lengths concatenated along T.

FlashAttention's ``flash_attn_varlen_func`` takes a batch without padding: the
sequences are concatenated into one row and delimited by cumulative lengths
``cu_seqlens``. Here the tensors keep llmref's layout with a batch of one,
``(1, H, sum T_i, D)`` -- the one exception to the ``(B, H, T, D)`` rule -- and the
sequences are kept apart by a block-diagonal mask built from the offsets, which the
chunked kernel turns into skipped tiles and FlexAttention into a ``mask_mod``.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from .._checks import check_qkv, check_tensor
from .flex import flex_attention
from .functional import ATTENTION
from .masks import causal_offset

__all__ = ["varlen_attention"]

#: The backends that take a packed batch.
VARLEN_BACKENDS = ("naive", "chunked", "flex")


def _check_offsets(name: str, offsets: object, total: int, what: str) -> torch.Tensor:
    check_tensor(name, offsets)
    assert isinstance(offsets, torch.Tensor)
    if offsets.dtype.is_floating_point or offsets.dtype.is_complex or offsets.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer offsets, got {offsets.dtype}")
    if offsets.ndim != 1 or offsets.numel() < 2:
        raise ValueError(f"{name} must be 1-D with n + 1 >= 2 offsets, got {tuple(offsets.shape)}")
    values = offsets.tolist()
    if values[0] != 0 or values[-1] != total:
        raise ValueError(
            f"{name} must start at 0 and end at the packed length of {what} ({total}), "
            f"got {values[0]} .. {values[-1]}"
        )
    if any(b < a for a, b in itertools.pairwise(values)):
        raise ValueError(f"{name} must be non-decreasing, got {values}")
    return offsets.to(torch.long)


def _check_max(name: str, value: object, lengths: torch.Tensor) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    longest = int(lengths.max())
    if value < longest:
        raise ValueError(f"{name} must be >= the longest sequence ({longest}), got {value}")


def _segments(offsets: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per packed position: its sequence index and its position within the sequence."""
    lengths = offsets.diff()
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=offsets.device), lengths)
    local = torch.arange(total, device=offsets.device) - offsets[seq]
    return seq, local


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor | None = None,
    *,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    is_causal: bool = False,
    causal_alignment: str = "top_left",
    scale: float | None = None,
    softcap: float | None = None,
    backend: str = "chunked",
) -> torch.Tensor:
    """Attention over a packed batch of variable-length sequences (``flash_attn_varlen_func``).

    Sequence ``b`` holds queries ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]`` and keys
    ``cu_seqlens_k[b]:cu_seqlens_k[b + 1]``; no query attends across sequences,
    so the result equals running each sequence alone.

    Parameters
    ----------
    q : torch.Tensor
        Packed queries of shape ``(1, H, sum T_i, D)``.
    k : torch.Tensor
        Packed keys of shape ``(1, H_kv, sum S_i, D)``, ``H % H_kv == 0``.
    v : torch.Tensor
        Packed values of shape ``(1, H_kv, sum S_i, Dv)``.
    cu_seqlens_q : torch.Tensor
        Integer offsets ``[0, T_0, T_0 + T_1, ..., sum T_i]``, shape ``(n + 1,)``;
        empty sequences allowed.
    cu_seqlens_k : torch.Tensor, optional
        The keys' offsets; defaults to ``cu_seqlens_q`` (self-attention).
    max_seqlen_q, max_seqlen_k : int, optional
        The longest sequence, as FlashAttention takes it to size its grid; here
        only checked to be at least the longest one.
    is_causal : bool, default False
        Causal within each sequence, aligned per sequence as
        ``causal_alignment`` says (``"bottom_right"``: the ``T_i`` queries are
        the last of the ``S_i`` keys, FlashAttention's convention).
    causal_alignment : {"top_left", "bottom_right"}, default "top_left"
        As in :func:`~llmref.attention.attention`.
    scale : float, optional
        Score scale; defaults to ``1 / sqrt(D)``.
    softcap : float, optional
        Logit softcapping ``softcap * tanh(s / softcap)``.
    backend : {"naive", "chunked", "flex"}, default "chunked"
        The backend that runs the packed batch. ``"naive"`` and ``"chunked"``
        get the block-diagonal mask as a tensor (the chunked kernel skips the
        tiles it hides); ``"flex"`` gets it as a ``mask_mod``.

    Returns
    -------
    torch.Tensor
        Shape ``(1, H, sum T_i, Dv)``, dtype of ``q``; rows that see no key
        (a query sequence with no keys, or hidden by bottom-right alignment)
        are zeros.

    Raises
    ------
    TypeError
        If an offset tensor is not an integer tensor or a maximum not an int;
        otherwise as :func:`~llmref.attention.naive_attention`.
    ValueError
        If the batch is not 1, the offsets are not 1-D, do not start at 0 and end
        at the packed length, decrease, or do not describe the same number of
        sequences; a maximum is below the longest sequence; or ``backend`` is
        not one of ``"naive"``, ``"chunked"``, ``"flex"``.

    Notes
    -----
    With :math:`\\sigma(i)` the sequence of packed position :math:`i` and
    :math:`\\lambda(i)` its position within it, query :math:`i` may attend key
    :math:`j` iff :math:`\\sigma_q(i) = \\sigma_k(j)` and, if causal,
    :math:`\\lambda_k(j) \\le \\lambda_q(i) + o_{\\sigma(i)}` with the offset
    :math:`o_b = 0` (top-left) or :math:`S_b - T_b` (bottom-right). This is
    :func:`~llmref.attention.document_mask` with per-sequence alignment.

    References
    ----------
    :cite:t:`dao2024flashattention2`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention import naive_attention, varlen_attention
    >>> lengths = [3, 5, 2]
    >>> cu = torch.tensor([0, 3, 8, 10])
    >>> q, k, v = (torch.randn(1, 4, 10, 8, dtype=torch.float64) for _ in range(3))
    >>> out = varlen_attention(q, k, v, cu, is_causal=True)
    >>> alone = naive_attention(q[:, :, 3:8], k[:, :, 3:8], v[:, :, 3:8], is_causal=True)
    >>> torch.allclose(out[:, :, 3:8], alone)
    True
    """
    shapes = check_qkv(q, k, v)
    if shapes.batch != 1:
        raise ValueError(
            f"a packed batch has batch size 1 (sequences concatenated along T), got {shapes.batch}"
        )
    if backend not in VARLEN_BACKENDS:
        raise ValueError(f"backend must be one of {VARLEN_BACKENDS}, got {backend!r}")
    T, S = shapes.query_len, shapes.key_len
    cq = _check_offsets("cu_seqlens_q", cu_seqlens_q, T, "q")
    ck = cq if cu_seqlens_k is None else _check_offsets("cu_seqlens_k", cu_seqlens_k, S, "k")
    if ck.numel() != cq.numel():
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, "
            f"got {cq.numel() - 1} and {ck.numel() - 1}"
        )
    _check_max("max_seqlen_q", max_seqlen_q, cq.diff())
    _check_max("max_seqlen_k", max_seqlen_k, ck.diff())
    device = q.device
    cq, ck = cq.to(device), ck.to(device)
    q_seq, q_local = _segments(cq, T)
    k_seq, k_local = _segments(ck, S)
    # Per sequence, the causal offset of its queries among its keys.
    offset = causal_offset(causal_alignment, 0, 0) + (
        (ck.diff() - cq.diff()) if causal_alignment == "bottom_right" else torch.zeros_like(cq[1:])
    )
    q_offset = offset[q_seq]

    def allowed(qi: torch.Tensor, kj: torch.Tensor) -> torch.Tensor:
        same = q_seq[qi] == k_seq[kj]
        if is_causal:
            same = same & (k_local[kj] <= q_local[qi] + q_offset[qi])
        return same

    options: dict[str, Any] = {"scale": scale}
    if softcap is not None:
        options["softcap"] = softcap
    if backend == "flex":
        return flex_attention(q, k, v, mask_mod=lambda b, h, qi, kj: allowed(qi, kj), **options)
    mask = allowed(torch.arange(T, device=device).unsqueeze(-1), torch.arange(S, device=device))
    return ATTENTION[backend].fn(q, k, v, mask=mask, **options)
