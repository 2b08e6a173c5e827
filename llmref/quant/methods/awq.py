"""AWQ: activation-aware per-input-channel weight scaling, then a clipping search."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..._checks import check_int
from ..formats import quantize
from ..primitives import choose_qparams, dequantize_affine, quantize_affine
from ..tensor import QuantizedTensor
from .base import (
    INT_FORMATS,
    METHODS,
    check_inputs,
    check_weight,
    even_rows,
    int_format_bits,
    method_group_size,
)

__all__ = ["AWQConfig", "awq"]

_SEARCH_OPTIONS = ("bits", "scale_convention", "zero_point", "rounding")
_OUT_CHUNK = 1024  # output rows per step of the clipping search (bounds its memory)


def _check_fraction(name: str, value: object, *, closed_high: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    ok = 0.0 <= value <= 1.0 if closed_high else 0.0 <= value < 1.0
    if not ok:
        interval = "[0, 1]" if closed_high else "[0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return value


def _check_format(fmt: str, options: Mapping[str, Any]) -> None:
    """The format options AWQ honours: its search runs on the integer grid, exactly."""
    unknown = sorted(set(options) - {*_SEARCH_OPTIONS, "symmetric"})
    if unknown:
        raise TypeError(
            f"awq does not accept option(s) {', '.join(map(repr, unknown))}; format options "
            f"accepted: {', '.join((*_SEARCH_OPTIONS, 'symmetric'))}"
        )
    int_format_bits(fmt, dict(options))
    if not isinstance(options.get("symmetric", False), bool):
        raise TypeError(f"symmetric must be a bool, got {type(options['symmetric']).__name__}")
    if options.get("rounding") == "stochastic":
        raise ValueError("rounding='stochastic' is not supported by awq (its search is exact)")


@dataclass(frozen=True, kw_only=True)
class AWQConfig:
    """AWQ's own options (see :func:`~llmref.quant.awq`), validated at construction.

    Parameters
    ----------
    n_grid : int, default 20
    clip : bool, default True
    n_clip_grid : int, default 20
    max_shrink : float, default 0.5
    max_tokens : int, default 512

    Raises
    ------
    TypeError, ValueError
        Naming the option whose type or value is wrong.

    Examples
    --------
    >>> from llmref.quant.methods.awq import AWQConfig
    >>> AWQConfig(max_shrink=1.0)
    Traceback (most recent call last):
    ...
    ValueError: max_shrink must lie in [0, 1), got 1.0
    """

    n_grid: int = 20
    clip: bool = True
    n_clip_grid: int = 20
    max_shrink: float = 0.5
    max_tokens: int = 512

    def __post_init__(self) -> None:
        check_int("n_grid", self.n_grid, minimum=1)
        check_int("n_clip_grid", self.n_clip_grid, minimum=1)
        check_int("max_tokens", self.max_tokens, minimum=1)
        _check_fraction("max_shrink", self.max_shrink)
        if not isinstance(self.clip, bool):
            raise TypeError(f"clip must be a bool, got {type(self.clip).__name__}")


class _IntGrid:
    """Fake quantization (quantize then dequantize, float32) on the format's integer grid.

    Uses the same primitives as :func:`~llmref.quant.quantize` for the ``int*`` formats,
    so the searched error is the error of the weight that is finally stored.
    """

    def __init__(self, bits: int, group: int, symmetric: bool, options: dict[str, Any]) -> None:
        self.bits, self.group, self.symmetric = bits, group, symmetric
        self.scale_convention = options.get("scale_convention", "qmax")
        self.zero_point = options.get("zero_point", "int")
        self.rounding = options.get("rounding", "nearest_even")
        if self.rounding == "stochastic":
            raise ValueError("rounding='stochastic' is not supported by awq (its search is exact)")

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        p = choose_qparams(
            w,
            bits=self.bits,
            symmetric=self.symmetric,
            scale_convention=self.scale_convention,
            zero_point=self.zero_point,
            group_size=self.group,
        )
        q = quantize_affine(
            w,
            p.scale,
            p.zero_point,
            bits=self.bits,
            scale_convention=self.scale_convention,
            rounding=self.rounding,
        )
        return dequantize_affine(q, p.scale, p.zero_point).reshape(w.shape)


def _search_scale(
    w: torch.Tensor, x_mean: torch.Tensor, xs: torch.Tensor, qdq: _IntGrid, n_grid: int
) -> tuple[torch.Tensor, float, float]:
    """Grid search of alpha: returns (s, alpha, loss) minimising ||X (W - Q(W s)/s)^T||^2."""
    best: tuple[torch.Tensor, float, float] | None = None
    for k in range(n_grid):
        alpha = k / n_grid
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / torch.sqrt(s.max() * s.min())
        err = xs @ (qdq(w * s) / s - w).t()
        loss = float(err.pow(2).mean())
        if best is None or loss < best[2]:
            best = (s, alpha, loss)
    assert best is not None
    return best


def _search_clip(
    w: torch.Tensor, xs: torch.Tensor, qdq: _IntGrid, n_clip_grid: int, max_shrink: float
) -> torch.Tensor:
    """Per-group clipping range ``max|w|`` shrunk to minimise each group's output error."""
    out_f, in_f = w.shape
    g = qdq.group
    n_groups = in_f // g
    xg = xs.reshape(-1, n_groups, g).permute(1, 0, 2)  # (G, n, g)
    n_steps = max(1, int(max_shrink * n_clip_grid))
    limits = []
    for start in range(0, out_f, _OUT_CHUNK):
        wc = w[start : start + _OUT_CHUNK]
        wg = wc.reshape(-1, n_groups, g)  # (o, G, g)
        org_max = wg.abs().amax(dim=-1, keepdim=True)  # (o, G, 1)
        best_max = org_max.clone()
        best_err = torch.full_like(org_max, math.inf)
        for i in range(n_steps):
            max_val = org_max * (1 - i / n_clip_grid)
            cur = torch.maximum(torch.minimum(wg, max_val), -max_val)
            diff = (qdq(cur.reshape(wc.shape)).reshape(wg.shape) - wg).permute(1, 2, 0)  # (G, g, o)
            err = torch.bmm(xg, diff).pow(2).mean(dim=1)  # (G, o): per-group output error
            err = err.t().unsqueeze(-1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better, max_val, best_max)
        limits.append(best_max)
    return torch.cat(limits)  # (out, G, 1)


@METHODS.register(
    "awq",
    paper="lin2024awq",
    reference="https://github.com/mit-han-lab/llm-awq (awq/quantize/auto_scale.py, auto_clip.py)",
    third_party="awq.quantize.quantizer.AwqQuantizer (AutoAWQ)",
    applies_to="weight",
    needs_inputs=True,
    config=AWQConfig,
    formats=INT_FORMATS,
    check_format=_check_format,
)
def awq(
    weight: torch.Tensor,
    inputs: torch.Tensor | None = None,
    *,
    fmt: str = "int4",
    group_size: int | str | None = "default",
    n_grid: int = 20,
    clip: bool = True,
    n_clip_grid: int = 20,
    max_shrink: float = 0.5,
    max_tokens: int = 512,
    symmetric: bool = False,
    **options: Any,
) -> QuantizedTensor:
    r"""Activation-aware weight quantization: protect salient input channels by scaling.

    Parameters
    ----------
    weight : torch.Tensor
        ``(out_features, in_features)``, floating point.
    inputs : torch.Tensor
        Calibration activations entering the layer, ``(N, in_features)``
        (any leading shape is flattened). Required.
    fmt : str, default "int4"
        An integer format: ``"int8"``, ``"int4"``, ``"int2"`` or ``"int"``
        (with ``bits``).
    group_size : int, None or "default", default "default"
        Weights per scale along ``in_features`` (must divide it); ``None``:
        one scale per output channel; ``"default"``: the format's default
        (groups of 128 below 8 bits, per channel at 8 bits).
    n_grid : int, default 20
        Grid points of the scale exponent :math:`\alpha \in \{0, 1/n, \dots,
        (n-1)/n\}` (>= 1). :math:`\alpha = 0` is plain round-to-nearest.
    clip : bool, default True
        Run the clipping search after the scale search.
    n_clip_grid : int, default 20
        Resolution of the clipping search: ranges ``max|w| * (1 - i/n_clip_grid)``.
    max_shrink : float, default 0.5
        Largest fraction of the range the clipping search may cut, in [0, 1):
        ``i < max_shrink * n_clip_grid``.
    max_tokens : int, default 512
        Calibration rows used for the two losses (evenly spaced rows when
        ``N`` is larger); the activation statistic :math:`\bar{|x|}` always uses
        all ``N`` rows.
    symmetric : bool, default False
        Integer grid with a zero point (AWQ's default) or symmetric.
    **options
        Further integer-format options: ``bits`` (for ``fmt="int"``),
        ``scale_convention``, ``zero_point``, ``rounding`` (not stochastic).

    Returns
    -------
    QuantizedTensor
        In ``fmt``, holding the codes of the clipped, scaled weight
        :math:`\operatorname{clip}(W \operatorname{diag}(s))` and ``input_scale``
        :math:`s` (float32, ``(in_features,)``): ``dequantize()`` gives
        :math:`\operatorname{dequant}(\text{codes}) \operatorname{diag}(1/s)`,
        and :class:`~llmref.quant.QuantLinear` computes
        :math:`(x / s)\, \operatorname{dequant}(\text{codes})^\top`.

    Raises
    ------
    ValueError
        If ``inputs`` is missing or its last dimension is not ``in_features``,
        ``fmt`` is not an integer format, ``group_size`` does not divide
        ``in_features``, ``n_grid``/``n_clip_grid``/``max_tokens`` < 1,
        ``max_shrink`` is outside [0, 1), or ``weight``/``inputs`` hold
        NaN/Inf.
    TypeError
        If an option has the wrong type or is not an integer-format option.

    Notes
    -----
    Per input channel :math:`j`, let :math:`\bar{x}_j` be the mean of
    :math:`|X_{:, j}|` over the calibration tokens. For each
    :math:`\alpha` on the grid, :math:`s = \bar{x}^{\alpha}` (floored at
    :math:`10^{-4}`) is normalised by :math:`\sqrt{\max s \cdot \min s}` (as
    llm-awq and AutoAWQ do), and

    .. math::

        \mathcal{L}(\alpha) = \bigl\| X W^\top - (X \operatorname{diag}(s)^{-1})
        \, Q(W \operatorname{diag}(s))^\top \bigr\|_F^2 ,

    where :math:`Q` is round-to-nearest on ``fmt``'s grid. Scaling a salient
    channel up before rounding shrinks its relative rounding error; the
    :math:`1/s` goes to the activations. The best :math:`s` is kept (ties:
    the smaller :math:`\alpha`, so the loss is never above RTN's on the rows
    searched). Then, for every quantization group of
    :math:`W' = W \operatorname{diag}(s)` and activations
    :math:`X' = X \operatorname{diag}(s)^{-1}`, the clipping range
    :math:`m = (1 - i/n)\max|W'_g|` minimising that group's share of the
    output error :math:`\| X'_g (Q(\operatorname{clamp}(W'_g, -m, m)) -
    W'_g)^\top \|^2` is chosen (llm-awq's ``auto_clip``; the range is
    symmetric about zero even for an asymmetric grid, as there).

    **Cost.** Each grid point quantizes :math:`W` once and multiplies the
    ``max_tokens`` rows by an ``(in, out)`` error matrix: ``n_grid`` GEMMs of
    :math:`2 \cdot \text{max\_tokens} \cdot \text{in} \cdot \text{out}`
    FLOPs, then ``max_shrink * n_clip_grid`` more for the clipping search
    (batched per group, 1024 output rows at a time). Subsampling the
    calibration rows to ``max_tokens`` keeps a 4096x4096 layer with 65,536
    calibration tokens at about 30 GEMMs of 512x4096x4096 instead of 30 of
    65536x4096x4096 (llm-awq itself samples 512 tokens for the clipping
    search; its scale search uses the whole calibration batch on a GPU).

    Differences from the references: one linear layer at a time (llm-awq
    and AutoAWQ score a scale shared by the q/k/v or gate/up projections on
    the output of the whole attention or MLP block, and fold :math:`1/s` into
    the preceding norm), and AutoAWQ's default ``duo_scaling`` (which also
    divides by a weight statistic) is not used: this is the paper's
    :math:`s = \bar{x}^{\alpha}`.

    References
    ----------
    :cite:t:`lin2024awq`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import awq, rtn
    >>> g = torch.Generator().manual_seed(0)
    >>> w = torch.randn(64, 128, generator=g)
    >>> x = torch.randn(256, 128, generator=g)
    >>> x[:, :4] *= 20  # four outlier input channels
    >>> qa = awq(w, x, fmt="int4", group_size=64)
    >>> qa.input_scale.shape
    torch.Size([128])
    >>> def loss(qt):
    ...     return float((x @ (qt.dequantize() - w).T).pow(2).mean())
    >>> loss(qa) < loss(rtn(w, fmt="int4", group_size=64, symmetric=False))
    True
    """
    w = check_weight(weight)
    out_f, in_f = w.shape
    x = check_inputs(inputs, in_f, required=True)
    assert x is not None
    _check_format(fmt, {**options, "symmetric": symmetric})
    bits = int_format_bits(fmt, options)
    cfg = AWQConfig(
        n_grid=n_grid,
        clip=clip,
        n_clip_grid=n_clip_grid,
        max_shrink=max_shrink,
        max_tokens=max_tokens,
    )
    group = method_group_size(fmt, group_size, options, in_f)
    qdq = _IntGrid(bits, group, symmetric, options)

    x_mean = x.abs().mean(dim=0)
    xs = even_rows(x, cfg.max_tokens)
    s, _, _ = _search_scale(w, x_mean, xs, qdq, cfg.n_grid)
    ws = w * s
    if clip:
        limit = _search_clip(ws, xs / s, qdq, cfg.n_clip_grid, cfg.max_shrink)
        wg = ws.reshape(out_f, -1, group)
        ws = torch.maximum(torch.minimum(wg, limit), -limit).reshape(out_f, in_f)

    qt = quantize(ws, fmt, group_size=group, symmetric=symmetric, **options)
    qt = QuantizedTensor(qt.fmt, qt.shape, weight.dtype, qt.tensors, qt.options)
    return qt.with_input_scale(s)
