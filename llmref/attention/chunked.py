"""FlashAttention's algorithm in PyTorch: tiled attention with an online softmax.

The forward pass walks over key blocks keeping, per query row, a running max ``m``, a
running normaliser ``l`` (``norm`` below) and an unnormalised output; each new block
rescales them by ``exp(m_old - m_new)``. A block of queries whose scores are provably
small keeps a fixed shift of 0 instead (``_ScoreBound``). Only one ``(block_q, block_k)``
tile of scores exists at a time. The backward pass recomputes each tile from the saved
log-sum-exp instead of storing the ``T x S`` probabilities.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._checks import (
    AttentionShapes,
    check_bias,
    check_int,
    check_mask,
    check_positive_float,
    check_qkv,
    check_sinks,
    compute_dtype,
    resolve_scale,
)
from .functional import ATTENTION
from .masks import causal_mask, causal_offset

__all__ = ["chunked_attention"]

_NEG_INF = float("-inf")
_LOG2E = math.log2(math.e)
_LN2 = math.log(2.0)


def _grouped(x: torch.Tensor | None, shapes: AttentionShapes) -> torch.Tensor | None:
    """View a (…, H or 1, T, S) mask/bias as (B|1, H_kv|1, G|1, T|1, S|1)."""
    if x is None:
        return None
    while x.ndim < 4:
        x = x.unsqueeze(0)
    H, H_kv = shapes.heads, shapes.kv_heads
    if x.shape[1] == H and H != H_kv:
        return x.unflatten(1, (H_kv, H // H_kv))
    return x.unsqueeze(2)


def _block_reduce(x: torch.Tensor, block_q: int, block_k: int, reduce) -> torch.Tensor:
    """Reduce a ``(T | 1, S | 1)`` tensor over each ``(block_q, block_k)`` tile (a
    broadcast dimension of size 1 stays one block)."""
    for dim, size in ((0, block_q), (1, block_k)):
        n = x.shape[dim]
        if n == 1:
            continue
        full = n // size * size
        parts = []
        if full:
            parts.append(reduce(x.narrow(dim, 0, full).unflatten(dim, (n // size, size)), dim + 1))
        if n > full:
            parts.append(reduce(x.narrow(dim, full, n - full), dim, keepdim=True))
        x = torch.cat(parts, dim)
    return x


def _tile(x: torch.Tensor, qs: int, qe: int, ks: int, ke: int) -> torch.Tensor:
    """The (query, key) tile of a broadcastable 5-D mask or bias."""
    rows = slice(None) if x.shape[-2] == 1 else slice(qs, qe)
    cols = slice(None) if x.shape[-1] == 1 else slice(ks, ke)
    return x[..., rows, cols]


class _Tiles:
    """Everything needed to compute one tile of scores, shared by forward and backward.

    GQA layout: the ``G = H // H_kv`` query heads that share a key/value head are
    consecutive, so a query block is handled as ``(B * H_kv, G * block_q, D)`` -- the
    groups are extra rows of one plain batched matmul against that head's keys (no
    copies of K/V, no broadcasting batched matmul). Masks and biases, grouped as
    ``(B|1, H_kv|1, G|1, T|1, S|1)``, are applied through a 5-D view of the tile.
    """

    def __init__(self, shapes, scale, softcap, bias5, mask5, is_causal, block_q, block_k, offset=0):
        self.shapes, self.scale, self.softcap = shapes, scale, softcap
        self.bias5, self.mask5, self.is_causal = bias5, mask5, is_causal
        # Causal: query i sees keys j <= i + offset (0 top-left, S - T bottom-right).
        self.offset = offset
        self.block_q, self.block_k = block_q, block_k
        # Scores are in units of `unit` natural-log units: the forward pass works in base 2
        # (unit = log2 e), the backward in base e (unit = 1); `alpha` = scale * unit.
        self.unit = 1.0
        self.alpha = scale
        self._causal_cache: dict[tuple, torch.Tensor] = {}
        # Per (query block, key block) of a user mask: does it let anything through (else
        # the tile is skipped, as block-sparse FlashAttention does), and everything (else
        # the tile needs its masked_fill)?
        self._mask_any = self._mask_all = None
        if mask5 is not None:
            seen = mask5.flatten(0, 2)  # (B * H_kv * G | 1, T | 1, S | 1)
            self._mask_any = _block_reduce(seen.any(0), block_q, block_k, torch.any).tolist()
            self._mask_all = _block_reduce(seen.all(0), block_q, block_k, torch.all).tolist()

    def mask_tile(self, qs: int, ks: int) -> tuple[bool, bool]:
        """Whether the user mask lets any / every score of a tile through."""
        if self._mask_any is None or self._mask_all is None:
            return True, True
        i = qs // self.block_q if len(self._mask_any) > 1 else 0
        j = ks // self.block_k if len(self._mask_any[0]) > 1 else 0
        return self._mask_any[i][j], self._mask_all[i][j]

    def query_blocks(self):
        T = self.shapes.query_len
        for qs in range(0, T, self.block_q):
            yield qs, min(qs + self.block_q, T)

    def key_blocks(self, qs: int, qe: int):
        S = self.shapes.key_len
        for ks in range(0, S, self.block_k):
            if self.is_causal and ks > qe - 1 + self.offset:
                return  # every later key is in the future of every query in the block
            if self.mask_tile(qs, ks)[0]:
                yield ks, min(ks + self.block_k, S)

    def _future(self, qs: int, qe: int, ks: int, ke: int, device, dtype) -> torch.Tensor:
        """Causal tile: ``-inf`` where a key is in the future of a query, else 0, for the
        ``G * (qe - qs)`` rows of a tile (the same few diagonal tiles recur, so cache them)."""
        key = (qe - qs, ke - ks, qs - ks, dtype)
        if key not in self._causal_cache:
            G = self.shapes.heads // self.shapes.kv_heads
            shift = qs - ks + self.offset
            hidden = ~causal_mask(qe - qs, ke - ks, offset=shift, device=device)
            tile = torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill_(
                hidden, _NEG_INF
            )
            self._causal_cache[key] = tile.repeat(G, 1).unsqueeze(0)
        return self._causal_cache[key]

    def scores(self, qb, kb, qs, qe, ks, ke, out, keep_tanh=False):
        """Scores ``(B * H_kv, G * bq, bk)`` of one tile, ``alpha * qb @ kb^T`` plus softcap,
        bias and mask, and, if asked, tanh(raw / softcap).

        This tile is the hot loop: it works in place on the matmul result, written into
        ``out`` (a reused buffer, so the loop allocates no tile). The scale enters as the
        matmul's ``alpha`` (no scaled copy of the queries). Only tiles that straddle the
        causal diagonal are masked; without softcapping their ``-inf`` entries come with
        the matmul (``baddbmm`` from a cached additive tile).
        """
        future = self.is_causal and ke - 1 > qs + self.offset  # some key in some row's future
        kt = kb.transpose(1, 2)
        if future and self.softcap is None:
            future_tile = self._future(qs, qe, ks, ke, qb.device, qb.dtype)
            s = torch.baddbmm(
                future_tile.expand(qb.shape[0], -1, -1), qb, kt, alpha=self.alpha, out=out
            )
            future = False
        else:  # beta=0: the buffer's old contents are ignored, NaN included
            s = torch.baddbmm(out, qb, kt, beta=0.0, alpha=self.alpha, out=out)
        t = None
        if self.softcap is not None:
            cap = self.softcap * self.unit  # cap * tanh(s / cap) in the same units as s
            s.div_(cap).tanh_()
            t = s.clone() if keep_tanh else None
            s.mul_(cap)
        masked = self.mask5 is not None and not self.mask_tile(qs, ks)[1]
        if self.bias5 is None and not masked and not future:
            return s, t
        B, H, H_kv = self.shapes.batch, self.shapes.heads, self.shapes.kv_heads
        s5 = s.view(B, H_kv, H // H_kv, qe - qs, ke - ks)
        if self.bias5 is not None:
            s5.add_(_tile(self.bias5, qs, qe, ks, ke))
        if masked:
            s5.masked_fill_(~_tile(self.mask5, qs, qe, ks, ke), _NEG_INF)
        if future:
            s.add_(self._future(qs, qe, ks, ke, s.device, s.dtype))
        return s, t


class _ScoreBound:
    """Whether a query block's scores all lie where ``exp2`` needs no shift.

    Softmax is shift-invariant, and the running max is only there to keep ``exp`` from
    overflowing. By Cauchy-Schwarz every score of query row ``i`` satisfies
    ``|s_ij| <= alpha |q_i| max_j |k_j|`` (at most the softcap after capping) plus the
    largest finite ``|bias|``. When that bound is at most a quarter of the largest
    binary exponent (32 in float32, so ``2**s`` lies within ``[2**-32, 2**32]``) for
    every row of a block, the block can use ``exp2(s)`` as is: no max, no subtraction,
    no rescaling, and no loss of relative precision. Rows that may leave that range
    take the running-max path.
    """

    # The bound costs a pass over K and V; the fixed shift saves about three passes over
    # every (rows x S) tile. So it is used only for at least this many query rows per
    # key/value column (not for decoding a few tokens, where K and V dominate).
    min_rows_per_column = 1.0

    def __init__(self, tiles: _Tiles, key_norm: torch.Tensor, slack: float):
        self.tiles, self.key_norm, self.slack = tiles, key_norm, slack

    @classmethod
    def of(cls, tiles, k3, v3, sink5) -> _ScoreBound | None:
        """The bound for one call, or None when no block may skip the max (too few query
        rows, no keys, huge values, sinks or bias)."""
        _, H, H_kv, T, S, D, Dv = tiles.shapes
        if S == 0 or H // H_kv * T < cls.min_rows_per_column * (D + Dv):
            return None
        max_exp = math.frexp(torch.finfo(k3.dtype).max)[1]  # 128 in float32
        limit = max_exp // 4
        if sink5 is not None and not bool(_max_abs(sink5) <= limit):
            return None
        # acc sums up to S terms 2**s * v with s <= limit: keep that clear of overflow.
        if v3.numel() and not bool(_max_abs(v3) <= 2.0 ** (max_exp - 2 - limit) / S):
            return None
        slack = float(limit)
        if tiles.bias5 is not None and tiles.bias5.numel():
            bias = tiles.bias5.abs()
            slack -= float(torch.where(torch.isfinite(bias), bias, 0.0).amax())
        if not slack >= 0:  # also catches a NaN bias
            return None
        return cls(tiles, k3.norm(dim=-1).amax(dim=-1, keepdim=True), slack)

    def fits(self, qb: torch.Tensor) -> bool:
        """Whether every score of this query block ``(B * H_kv, R, D)`` is within bounds."""
        bound = qb.norm(dim=-1).mul_(self.key_norm).mul_(abs(self.tiles.alpha))
        if self.tiles.softcap is not None:
            bound.clamp_(max=self.tiles.softcap * self.tiles.unit)
        return bool(bound.amax() <= self.slack) if bound.numel() else True


def _max_abs(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, ord=math.inf)  # max |x| without an |x| copy


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _tile_buffer(tiles: _Tiles, rows: int, compute: torch.dtype, device) -> torch.Tensor:
    """Flat storage for the largest score tile, reused by every tile of the loop."""
    cols = min(tiles.block_k, tiles.shapes.key_len)
    return torch.empty(
        rows * min(tiles.block_q, tiles.shapes.query_len) * cols, dtype=compute, device=device
    )


def _tile_view(buf: torch.Tensor, *shape: int) -> torch.Tensor:
    return buf[: math.prod(shape)].view(shape)


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, sinks, tiles: _Tiles):
        B, H, H_kv, T, S, D, Dv = tiles.shapes
        G, BH = H // H_kv, B * H_kv
        compute = compute_dtype(q.dtype)
        device = q.device
        # Work in base 2: every logit is multiplied by log2 e (through the query scale, the
        # bias, the sinks and the softcap) and exp(x) becomes exp2(x log2 e), measured ~5%
        # faster per call on an AVX-512 CPU; the LSE is converted back to base e below.
        tiles.unit, tiles.alpha = _LOG2E, tiles.scale * _LOG2E
        q5 = q.to(compute).unflatten(1, (H_kv, G))
        k3 = k.to(compute).reshape(BH, S, D)
        v3 = v.to(compute).reshape(BH, S, Dv)
        tiles.bias5 = _grouped(None if bias is None else bias.to(compute) * _LOG2E, tiles.shapes)
        sink5 = None if sinks is None else (sinks.to(compute) * _LOG2E).view(1, H_kv, G, 1)
        bound = _ScoreBound.of(tiles, k3, v3, sink5)
        buf = _tile_buffer(tiles, BH * G, compute, device)
        lowest = torch.finfo(compute).min

        out = torch.empty(B, H_kv, G, T, Dv, dtype=compute, device=device)
        lse = torch.empty(B, H_kv, G, T, dtype=compute, device=device)
        for qs, qe in tiles.query_blocks():
            bq = qe - qs
            R = G * bq  # rows of the tile: every query head of the group, every position
            qb = q5[..., qs:qe, :].reshape(BH, R, D)
            # Shift m, normaliser l and unnormalised output acc of every row. The shift is
            # the running max, or a fixed 0 when no score of the block can leave exp2's
            # safe range (see Notes); then no tile needs a max or a rescale.
            fixed = bound is not None and bound.fits(qb)
            m = torch.full((BH, R), 0.0 if fixed else _NEG_INF, dtype=compute, device=device)
            norm = torch.zeros(BH, R, dtype=compute, device=device)
            acc = None
            if sink5 is not None:  # a sink is a key with logit `sink` and a zero value
                sink = sink5.expand(B, H_kv, G, bq).reshape(BH, R)
                if fixed:
                    norm = torch.exp2(sink)
                else:
                    m = sink
                    norm.fill_(1.0)
            for ks, ke in tiles.key_blocks(qs, qe):
                s, _ = tiles.scores(
                    qb, k3[:, ks:ke], qs, qe, ks, ke, out=_tile_view(buf, BH, R, ke - ks)
                )
                correction = None
                if fixed:
                    p = s.exp2_()
                    norm.add_(p.sum(dim=-1))
                else:
                    m_new = torch.maximum(m, s.amax(dim=-1))
                    # A row with nothing visible yet has m_new = -inf; any finite stand-in
                    # keeps its p and correction at exp2(-inf) = 0 (one op, unlike a where()).
                    m_safe = m_new.clamp(min=lowest)
                    p = s.sub_(m_safe.unsqueeze(-1)).exp2_()
                    correction = torch.exp2(m - m_safe)
                    norm.mul_(correction).add_(p.sum(dim=-1))
                    m = m_new
                if acc is None:
                    acc = torch.bmm(p, v3[:, ks:ke])
                else:
                    if correction is not None:
                        acc.mul_(correction.unsqueeze(-1))
                    acc.baddbmm_(p, v3[:, ks:ke])
            visible = norm > 0
            if acc is None:  # no keys at all
                o = torch.zeros(BH, R, Dv, dtype=compute, device=device)
            else:
                o = acc.div_(torch.where(visible, norm, torch.ones_like(norm)).unsqueeze(-1))
            out[..., qs:qe, :] = o.view(B, H_kv, G, bq, Dv)
            row_lse = (_finite_or_zero(m) + torch.log2(norm)) * _LN2  # back to base e
            lse[..., qs:qe] = torch.where(visible, row_lse, _NEG_INF).view(B, H_kv, G, bq)

        tiles._causal_cache.clear()
        tiles.unit, tiles.alpha = 1.0, tiles.scale  # the backward works in base e
        tiles.bias5 = _grouped(None if bias is None else bias.to(compute), tiles.shapes)
        ctx.tiles = tiles
        ctx.save_for_backward(q, k, v, bias, sinks, out, lse)
        out_dtype = out.flatten(1, 2).to(q.dtype)
        return out_dtype, lse.flatten(1, 2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_lse):
        q, k, v, bias, sinks, out, lse = ctx.saved_tensors
        tiles: _Tiles = ctx.tiles
        B, H, H_kv, T, S, D, Dv = tiles.shapes
        G, BH = H // H_kv, B * H_kv
        compute = out.dtype
        device = q.device
        q5 = q.to(compute).unflatten(1, (H_kv, G))
        k3, v3 = k.to(compute).reshape(BH, S, D), v.to(compute).reshape(BH, S, Dv)
        d_out = d_out.to(compute).reshape(B, H_kv, G, T, Dv)
        # D_i = dO_i . O_i ; a gradient flowing into the returned LSE enters the same place.
        delta = (d_out * out).sum(dim=-1)
        if d_lse is not None:
            delta = delta - d_lse.to(compute).reshape(B, H_kv, G, T)
        lse_safe = _finite_or_zero(lse)

        dq = torch.zeros_like(q5)
        dk = torch.zeros(BH, S, D, dtype=compute, device=device)
        dv = torch.zeros(BH, S, Dv, dtype=compute, device=device)
        need_dbias = bias is not None and ctx.needs_input_grad[3]
        dbias5 = torch.zeros_like(tiles.bias5) if need_dbias else None
        buf = _tile_buffer(tiles, BH * G, compute, device)
        for qs, qe in tiles.query_blocks():
            bq = qe - qs
            R = G * bq
            qb = q5[..., qs:qe, :].reshape(BH, R, D)
            dob = d_out[..., qs:qe, :].reshape(BH, R, Dv)
            lse_b = lse_safe[..., qs:qe].reshape(BH, R, 1)
            delta_b = delta[..., qs:qe].reshape(BH, R, 1)
            dqb = torch.zeros(BH, R, D, dtype=compute, device=device)
            for ks, ke in tiles.key_blocks(qs, qe):
                kb, vb = k3[:, ks:ke], v3[:, ks:ke]
                s, t = tiles.scores(
                    qb, kb, qs, qe, ks, ke, keep_tanh=True, out=_tile_view(buf, BH, R, ke - ks)
                )
                p = s.sub_(lse_b).exp_()
                dv[:, ks:ke].baddbmm_(p.transpose(1, 2), dob)
                ds = torch.bmm(dob, vb.transpose(1, 2)).sub_(delta_b).mul_(p)
                if dbias5 is not None:
                    _accumulate_tile(dbias5, ds.view(B, H_kv, G, bq, ke - ks), qs, qe, ks, ke)
                if t is not None:  # d tanh(x)/dx = 1 - tanh(x)^2
                    ds.mul_(1 - t * t)
                dqb.baddbmm_(ds, kb)
                dk[:, ks:ke].baddbmm_(ds.transpose(1, 2), qb, alpha=tiles.scale)
            dq[..., qs:qe, :] = dqb.mul_(tiles.scale).view(B, H_kv, G, bq, D)
        tiles._causal_cache.clear()

        d_sinks = None
        if sinks is not None and ctx.needs_input_grad[4]:
            p_sink = torch.exp(sinks.to(compute).view(1, H_kv, G, 1) - lse_safe)
            d_sinks = -(p_sink * delta).sum(dim=(0, 3)).reshape(H).to(sinks.dtype)
        d_bias = None if dbias5 is None else dbias5.reshape(bias.shape).to(bias.dtype)
        return (
            dq.flatten(1, 2).to(q.dtype),
            dk.view(B, H_kv, S, D).to(k.dtype),
            dv.view(B, H_kv, S, Dv).to(v.dtype),
            d_bias,
            d_sinks,
            None,
        )


def _accumulate_tile(target: torch.Tensor, grad: torch.Tensor, qs, qe, ks, ke) -> None:
    """Add a tile's gradient into a broadcastable bias gradient, summing broadcast dims."""
    dims = tuple(d for d in range(3) if target.shape[d] == 1 and grad.shape[d] != 1)
    if target.shape[-2] == 1:
        dims += (3,)
    if target.shape[-1] == 1:
        dims += (4,)
    if dims:
        grad = grad.sum(dim=dims, keepdim=True)
    _tile(target, qs, qe, ks, ke).add_(grad)


def _block_sizes(block_size: object) -> tuple[int, int]:
    if isinstance(block_size, tuple):
        if len(block_size) != 2:
            raise ValueError(f"block_size must be an int or (block_q, block_k), got {block_size}")
        return (
            check_int("block_size[0]", block_size[0], minimum=1),
            check_int("block_size[1]", block_size[1], minimum=1),
        )
    size = check_int("block_size", block_size, minimum=1)
    return size, size


@ATTENTION.register(
    "chunked",
    paper="dao2022flashattention",
    reference="naive_attention",
    third_party="torch.nn.functional.scaled_dot_product_attention",
    features=frozenset({"bias", "softcap", "sinks", "causal_alignment"}),
    auto_order=1,
)
def chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    causal_alignment: str = "top_left",
    block_size: int | tuple[int, int] = 256,
    return_lse: bool = False,
) -> Any:
    """Exact attention computed tile by tile with an online softmax (FlashAttention in PyTorch).

    Gives the same result as :func:`~llmref.attention.naive_attention` while
    never holding more than one ``(block_q, block_k)`` tile of scores: memory
    grows linearly with sequence length. The backward pass is a custom
    :class:`torch.autograd.Function` that recomputes each tile from the saved
    log-sum-exp, so the ``T x S`` probability matrix is never stored either.

    Parameters
    ----------
    q : torch.Tensor
        Queries of shape ``(B, H, T, D)``.
    k : torch.Tensor
        Keys of shape ``(B, H_kv, S, D)``, ``H % H_kv == 0`` (GQA/MQA).
    v : torch.Tensor
        Values of shape ``(B, H_kv, S, Dv)``.
    mask : torch.Tensor, optional
        Boolean mask broadcasting to ``(B, H, T, S)``; ``True`` = may attend.
        Tiles it hides completely (in every batch row and head) are skipped,
        forward and backward, so sliding windows and block-sparse layouts cost
        only the tiles they touch.
    is_causal : bool, default False
        Causal mask aligned as ``causal_alignment`` says; tiles entirely in
        the future are skipped in either alignment, which halves the work of
        a square prefill.
    scale : float, optional
        Score scale; defaults to ``1 / sqrt(D)``.
    bias : torch.Tensor, optional
        Additive float bias broadcasting to ``(B, H, T, S)`` (ALiBi, relative
        position biases); it receives a gradient if it requires one.
    softcap : float, optional
        Logit softcapping ``softcap * tanh(s / softcap)`` before bias and mask.
    sinks : torch.Tensor, optional
        Learned per-head sink logits of shape ``(H,)``: an extra softmax entry
        with no value (gpt-oss), which lets a head attend to "nothing".
    causal_alignment : {"top_left", "bottom_right"}, default "top_left"
        As in :func:`~llmref.attention.naive_attention`: SDPA's alignment
        (``CausalVariant.UPPER_LEFT``) or FlashAttention's
        (``CausalVariant.LOWER_RIGHT``, the queries are the last ``T`` keys).
    block_size : int or tuple of int, default 256
        Tile size, or ``(block_q, block_k)``. Any size >= 1; the last tile may
        be partial. A speed knob only: tiles of ``B * H * block_q * block_k``
        scores that fit in the CPU's L2 cache are fastest.
    return_lse : bool, default False
        Also return the log-sum-exp of each row's scores (differentiable).

    Returns
    -------
    out : torch.Tensor
        Shape ``(B, H, T, Dv)``, dtype of ``q``.
    lse : torch.Tensor
        Only if ``return_lse``: shape ``(B, H, T)``, in float32 for 16-bit
        inputs (else the input dtype); ``-inf`` for fully masked rows.

    Raises
    ------
    TypeError, ValueError
        As :func:`~llmref.attention.naive_attention`; also for a bad
        ``block_size``, ``bias`` or ``sinks``.

    Notes
    -----
    For each query row and key tile :math:`j` with scores :math:`s^{(j)}`:

    .. math::

        m^{(j)} = \\max\\bigl(m^{(j-1)}, \\max_k s^{(j)}_k\\bigr), \\quad
        \\ell^{(j)} = e^{m^{(j-1)} - m^{(j)}} \\ell^{(j-1)} + \\sum_k e^{s^{(j)}_k - m^{(j)}},

        o^{(j)} = e^{m^{(j-1)} - m^{(j)}} o^{(j-1)} + \\sum_k e^{s^{(j)}_k - m^{(j)}} v_k,

    and finally :math:`O = o / \\ell`, :math:`\\mathrm{LSE} = m + \\log \\ell`. Any
    shift :math:`m` gives the same result; the maximum only keeps ``exp`` in range. So a
    block of queries whose scores are provably small (by Cauchy-Schwarz,
    :math:`|s_{ij}| \\le \\text{scale}\\,\\lVert q_i\\rVert \\max_j \\lVert k_j\\rVert`, or the
    softcap) keeps :math:`m = 0` and skips the max and the rescaling; other blocks use
    the running max. The
    backward uses :math:`P = \\exp(S - \\mathrm{LSE})` and
    :math:`dS = P \\circ (dP - \\operatorname{rowsum}(dO \\circ O))`. Fully masked
    rows give zeros (and zero gradients), as everywhere in llmref.

    References
    ----------
    :cite:t:`milakov2018online`, :cite:t:`dao2022flashattention`,
    :cite:t:`dao2024flashattention2`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention import chunked_attention, naive_attention
    >>> q, k, v = (torch.randn(1, 4, 300, 32, dtype=torch.float64) for _ in range(3))
    >>> out, lse = chunked_attention(q, k, v, is_causal=True, block_size=64, return_lse=True)
    >>> torch.allclose(out, naive_attention(q, k, v, is_causal=True))
    True
    >>> lse.shape
    torch.Size([1, 4, 300])
    """
    shapes = check_qkv(q, k, v)
    s = resolve_scale(scale, shapes.head_dim)
    if mask is not None:
        check_mask(mask, shapes, q.device)
    if bias is not None:
        check_bias(bias, shapes, q.device)
    if sinks is not None:
        check_sinks(sinks, shapes, q.device)
    cap = None if softcap is None else check_positive_float("softcap", softcap)
    block_q, block_k = _block_sizes(block_size)
    offset = causal_offset(causal_alignment, shapes.query_len, shapes.key_len)
    mask5 = _grouped(mask, shapes)
    tiles = _Tiles(shapes, s, cap, None, mask5, bool(is_causal), block_q, block_k, offset)
    out, lse = _ChunkedAttention.apply(q, k, v, bias, sinks, tiles)
    return (out, lse) if return_lse else out
