"""HQQ: calibration-free zero-point (and scale) optimization by half-quadratic splitting."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..._checks import check_int, check_positive_float
from ..formats import int_tensor_from_codes
from ..primitives import _EPS, choose_qparams, dequantize_affine, quantize_affine
from ..tensor import QuantizedTensor
from .base import (
    INT_FORMATS,
    METHODS,
    check_inputs,
    check_weight,
    int_format_bits,
    method_group_size,
)

__all__ = ["HQQConfig", "hqq"]

_GRID_OPTIONS = ("bits", "symmetric", "scale_convention", "zero_point", "rounding")


def _shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalized soft-thresholding: the proximal step of |x|^p, p <= 1."""
    a = x.abs()
    if p == 1:
        return torch.sign(x) * torch.relu(a - 1.0 / beta)
    # |x|^(p-1) is inf at x = 0; relu(-inf) = 0 and sign(0) = 0, so zeros stay zeros
    return torch.sign(x) * torch.relu(a - torch.pow(a, p - 1) / beta)


def _check_format(fmt: str, options: Mapping[str, Any]) -> None:
    """The format options HQQ honours: an asymmetric grid with a real zero point."""
    unknown = sorted(set(options) - set(_GRID_OPTIONS))
    if unknown:
        raise TypeError(
            f"option(s) {', '.join(map(repr, unknown))} not accepted; HQQ passes "
            f"{', '.join(_GRID_OPTIONS)} to the integer format"
        )
    int_format_bits(fmt, dict(options))
    symmetric = options.get("symmetric", False)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
    if symmetric:
        raise ValueError("hqq optimizes a zero point: symmetric must be False, got True")
    zero_point = options.get("zero_point", "float")
    if zero_point != "float":
        raise ValueError(
            f"hqq optimizes a real-valued zero point: zero_point must be 'float', got "
            f"{zero_point!r} (the zero-point steps are a fraction of a code, so rounding "
            "them to integers would undo them)"
        )
    rounding = options.get("rounding", "nearest_even")
    if rounding not in ("nearest_even", "half_away"):
        raise ValueError(
            f"rounding must be 'nearest_even' or 'half_away' for hqq, got {rounding!r}"
        )
    scale_convention = options.get("scale_convention", "qmax")
    if scale_convention not in ("qmax", "half_range"):
        raise ValueError(
            f"scale_convention must be 'qmax' or 'half_range', got {scale_convention!r}"
        )


@dataclass(frozen=True, kw_only=True)
class HQQConfig:
    """HQQ's own options (see :func:`~llmref.quant.hqq`), validated at construction.

    Parameters
    ----------
    iters : int, default 20
    lp_norm : float, default 0.7
    beta : float, default 10.0
    kappa : float, default 1.01
    optimize_scale : bool, default False
    early_stop : bool, default True

    Raises
    ------
    TypeError, ValueError
        Naming the option whose type or value is wrong.

    Examples
    --------
    >>> from llmref.quant.methods.hqq import HQQConfig
    >>> HQQConfig(lp_norm=2.0)
    Traceback (most recent call last):
    ...
    ValueError: lp_norm must be in (0, 1], got 2.0
    """

    iters: int = 20
    lp_norm: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    optimize_scale: bool = False
    early_stop: bool = True

    def __post_init__(self) -> None:
        check_int("iters", self.iters, minimum=0)
        lp_norm = check_positive_float("lp_norm", self.lp_norm)
        if lp_norm > 1:
            raise ValueError(f"lp_norm must be in (0, 1], got {lp_norm}")
        check_positive_float("beta", self.beta)
        kappa = check_positive_float("kappa", self.kappa)
        if kappa < 1:
            raise ValueError(f"kappa must be >= 1 (beta grows each iteration), got {kappa}")
        for name in ("optimize_scale", "early_stop"):
            flag = getattr(self, name)
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")


def _hqq_solve(
    wg: torch.Tensor,
    *,
    bits: int,
    zero_point: str,
    rounding: str,
    iters: int,
    lp_norm: float,
    beta: float,
    kappa: float,
    optimize_scale: bool,
    early_stop: bool,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Optimize per-group ``(scale, zero_point)`` of ``wg`` ``(n_groups, g)``, float32.

    Returns the best parameters seen per group (by mean absolute error) and the
    history of the mean absolute error over the whole tensor, one value per
    evaluated iterate (the first is min-max round-to-nearest's).
    """
    scale, zp = choose_qparams(
        wg, bits=bits, symmetric=False, zero_point=zero_point, group_size=wg.shape[1]
    )
    assert zp is not None
    best_err = torch.full_like(scale, math.inf)
    best_scale, best_zp = scale.clone(), zp.clone()
    history: list[float] = []
    for it in range(iters + 1):
        q = quantize_affine(wg, scale, zp, bits=bits, rounding=rounding)
        wr = dequantize_affine(q, scale, zp)
        err = (wg - wr).abs().mean(dim=1)
        total = float(err.mean())
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zp = torch.where(better, zp, best_zp)
        stop = early_stop and len(history) > 0 and total >= history[-1]
        history.append(total)
        if it == iters or stop:
            break
        # half-quadratic splitting: W_e = shrink(W - dq(q)) (the l_p proximal step), then
        # the parameters that make dq(q) closest in l2 to W - W_e (closed form, per group)
        target = wg - _shrink_lp(wg - wr, beta, lp_norm)
        qf = q.to(torch.float32)
        if optimize_scale:
            qm, tm = qf.mean(dim=1), target.mean(dim=1)
            dq, dt = qf - qm.unsqueeze(1), target - tm.unsqueeze(1)
            var, cov = (dq * dq).mean(dim=1), (dq * dt).mean(dim=1)
            ok = (var > 0) & (cov > 0)
            scale = torch.where(ok, cov / torch.where(ok, var, 1.0), scale).clamp(min=_EPS)
            offset = tm - scale * qm
        else:
            offset = (target - scale.unsqueeze(1) * qf).mean(dim=1)
        zp = offset
        beta *= kappa
    return best_scale, best_zp, history


@METHODS.register(
    "hqq",
    paper="badri2023hqq",
    reference="https://github.com/mobiusml/hqq (hqq/core/optimize.py, optimize_weights_proximal)",
    third_party="hqq.core.quantize.Quantizer.quantize(..., optimize=True)",
    applies_to="weight",
    needs_inputs=False,
    config=HQQConfig,
    formats=INT_FORMATS,
    check_format=_check_format,
)
def hqq(
    weight: torch.Tensor,
    inputs: torch.Tensor | None = None,
    *,
    fmt: str = "int4",
    group_size: int | str | None = "default",
    iters: int = 20,
    lp_norm: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    optimize_scale: bool = False,
    early_stop: bool = True,
    **format_options: Any,
) -> QuantizedTensor:
    """Quantize a weight matrix with HQQ (Half-Quadratic Quantization), without calibration data.

    Starts from min-max asymmetric round-to-nearest and moves each group's
    zero point (and, with ``optimize_scale``, its scale) to minimize the
    sparsity-promoting :math:`\\ell_p` (:math:`p < 1`) norm of the
    quantization error, with a half-quadratic solver whose steps are all in
    closed form. The result has the storage of :func:`~llmref.quant.quantize`
    with ``fmt`` and ``symmetric=False``.

    Parameters
    ----------
    weight : torch.Tensor
        ``(out_features, in_features)``, floating point (computed in float32).
    inputs : torch.Tensor, optional
        Ignored (checked for shape if given): HQQ needs no calibration data.
    fmt : {"int4", "int8", "int2", "int"}, default "int4"
        Integer format; ``"int"`` takes ``bits`` (2 to 8) in ``format_options``.
    group_size : int, None or "default", default "default"
        Weights per scale along ``in_features`` (must divide it); ``None``: one
        group per output channel; ``"default"``: the format's default (groups
        of 128 below 8 bits, per channel at 8 bits), as every llmref method.
        The hqq library's own default is 64.
    iters : int, default 20
        Most half-quadratic iterations (0: plain min-max round-to-nearest).
    lp_norm : float, default 0.7
        :math:`p` of the error norm, in ``(0, 1]``.
    beta : float, default 10
        Initial penalty :math:`\\beta` of the splitting.
    kappa : float, default 1.01
        :math:`\\beta` is multiplied by ``kappa`` (>= 1) after each iteration.
    optimize_scale : bool, default False
        Also update the scale (least squares together with the zero point in
        the second sub-problem). HQQ itself optimizes the zero point only.
    early_stop : bool, default True
        Stop when the mean absolute error over the whole tensor stops
        decreasing, as the reference does.
    **format_options
        ``bits`` (with ``fmt="int"``), ``zero_point`` (must be ``"float"``, the
        default: HQQ's zero point is a real number), ``symmetric`` (must be
        False), ``scale_convention`` (unused, recorded) and ``rounding``
        (``"nearest_even"`` or ``"half_away"``).

    Returns
    -------
    QuantizedTensor
        Format ``fmt``, asymmetric, shape and dtype of ``weight``.

    Raises
    ------
    TypeError
        If ``weight`` is not a floating tensor, an option has the wrong type,
        or a format option is unknown.
    ValueError
        If ``weight`` is not a finite 2-D matrix, ``group_size`` does not
        divide ``in_features``, ``iters < 0``, ``lp_norm`` is outside
        ``(0, 1]``, ``beta <= 0``, ``kappa < 1``, ``symmetric=True``,
        ``zero_point="int"`` or ``rounding="stochastic"``.

    Notes
    -----
    With codes :math:`Q_z(W) = \\operatorname{clamp}(\\operatorname{round}(
    (W - m)/s), 0, 2^b - 1)` and :math:`\\hat W = s\\,Q_z(W) + m` (llmref's
    float offset :math:`m = -s z`), HQQ solves :math:`\\min_{m}
    \\lVert W - \\hat W \\rVert_p^p` per group by splitting the error into
    an auxiliary :math:`W_e`: :math:`\\min_{m, W_e} \\lVert W_e \\rVert_p^p
    + \\tfrac{\\beta}{2} \\lVert W_e - (W - \\hat W) \\rVert_2^2`, alternating

    .. math::

        W_e &\\leftarrow \\operatorname{shrink}_{\\ell_p}(W - \\hat W, \\beta),
        \\quad \\operatorname{shrink}_{\\ell_p}(x, \\beta) =
        \\operatorname{sign}(x) \\max\\bigl(|x| - \\tfrac{1}{\\beta}|x|^{p-1},
        0\\bigr), \\\\
        m &\\leftarrow \\langle W - W_e - s\\,Q_z(W) \\rangle, \\qquad
        \\beta \\leftarrow \\kappa \\beta,

    where :math:`\\langle\\cdot\\rangle` is the mean over the group (the
    reference writes the same step for its zero point :math:`z = -m/s`
    in the code domain). With ``optimize_scale`` the second step fits
    :math:`(s, m)` by least squares of :math:`s\\,Q_z(W) + m` on
    :math:`W - W_e`. The generalized soft-thresholding is the reference's
    ``shrink_lp_op`` :cite:p:`badri2023hqq`.

    Early stopping follows the reference: after each evaluated iterate, stop
    once the mean absolute error over the whole tensor has not decreased.
    llmref then keeps, for every group, the best parameters seen (by that
    group's mean absolute error); the first iterate is min-max
    round-to-nearest (``quantize(weight, fmt, symmetric=False,
    zero_point="float", group_size=...)``), computed with the same arithmetic, so
    the mean absolute error of every group is at most round-to-nearest's.
    The reference keeps one set of parameters for the whole tensor (and its
    legacy default returns the parameters updated once past the best).

    Groups are runs of ``group_size`` consecutive weights along ``in_features``
    (llmref's storage; the reference's ``axis=1``). The solver is
    deterministic.

    References
    ----------
    :cite:t:`badri2023hqq`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import hqq, quantize
    >>> w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    >>> qt = hqq(w, fmt="int4", group_size=64)
    >>> rtn = quantize(w, "int4", group_size=64, symmetric=False, zero_point="float")
    >>> def l1(q):
    ...     return float((w - q.dequantize()).abs().mean())
    >>> qt.options["zero_point"], l1(qt) < l1(rtn)
    ('float', True)
    """
    w = check_weight(weight)
    in_features = w.shape[1]
    check_inputs(inputs, in_features, required=False)
    _check_format(fmt, format_options)
    bits = int_format_bits(fmt, format_options)
    zero_point = format_options.get("zero_point", "float")
    rounding = format_options.get("rounding", "nearest_even")
    scale_convention = format_options.get("scale_convention", "qmax")
    g = method_group_size(fmt, group_size, format_options, in_features)
    cfg = HQQConfig(
        iters=iters,
        lp_norm=lp_norm,
        beta=beta,
        kappa=kappa,
        optimize_scale=optimize_scale,
        early_stop=early_stop,
    )

    wg = w.reshape(-1, g)
    scale, zp, _ = _hqq_solve(
        wg,
        bits=bits,
        zero_point=zero_point,
        rounding=rounding,
        **asdict(cfg),
    )
    codes = quantize_affine(wg, scale, zp, bits=bits, rounding=rounding).reshape(w.shape)
    return int_tensor_from_codes(
        codes,
        scale,
        zp,
        bits=bits,
        dtype=weight.dtype,
        fmt=fmt,
        scale_convention=scale_convention,
        rounding=rounding,
    )
