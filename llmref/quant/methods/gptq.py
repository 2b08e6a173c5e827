"""GPTQ: second-order (Hessian-aware) rounding of a weight matrix, one column at a time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..._checks import check_int, check_positive_float
from ..formats import int_tensor_from_codes
from ..primitives import _code_range, choose_qparams, round_values
from ..tensor import QuantizedTensor
from .base import (
    INT_FORMATS,
    METHODS,
    check_inputs,
    check_weight,
    int_format_bits,
    method_group_size,
)

__all__ = ["GPTQConfig", "gptq", "gptq_hessian"]

# Format options GPTQ passes to the integer grid; the rest of quantize_int's options
# (granularity, stochastic rounding's generator) have no meaning for a column-wise solver.
_GRID_OPTIONS = ("bits", "symmetric", "scale_convention", "zero_point", "rounding")


def gptq_hessian(
    inputs: torch.Tensor,
    *,
    hessian: torch.Tensor | None = None,
    n_samples: int = 0,
) -> tuple[torch.Tensor, int]:
    """The GPTQ Hessian :math:`H = \\tfrac{2}{N} X^\\top X`, accumulated over batches.

    Lets :func:`~llmref.quant.gptq` run on more calibration data than fits in
    memory at once: feed the batches one by one, keep the running ``(H, n)``,
    and pass ``hessian=H`` to :func:`~llmref.quant.gptq` instead of ``inputs``.

    Parameters
    ----------
    inputs : torch.Tensor
        One batch of activations entering the layer, ``(..., in_features)``
        (leading dimensions are flattened into rows).
    hessian : torch.Tensor, optional
        The running Hessian from the previous batches, float64
        ``(in_features, in_features)``; None for the first batch.
    n_samples : int, default 0
        Rows behind ``hessian`` (the second value returned by the previous call).

    Returns
    -------
    hessian : torch.Tensor
        float64 ``(in_features, in_features)``: :math:`\\tfrac{2}{n} \\sum x x^\\top`
        over every row seen so far, on the device of ``inputs``.
    n_samples : int
        Rows seen so far.

    Raises
    ------
    TypeError
        If ``inputs`` is not a floating tensor or ``n_samples`` not an int.
    ValueError
        If ``inputs`` holds NaN/Inf or no rows, ``hessian`` has the wrong shape,
        or ``hessian`` and ``n_samples`` disagree (one given without the other).

    Notes
    -----
    The sum is accumulated in float64: a calibration set has up to millions
    of rows, and a float32 running sum of that many outer products loses
    several digits on exactly the small eigenvalues GPTQ's inverse depends
    on; the cost (one ``in_features``-square GEMM per batch) is small next to
    the solver. The reference code accumulates in float32 on the GPU, as a
    running mean :math:`H \\leftarrow \\tfrac{n}{n+m} H + \\tfrac{2}{n+m} X^\\top X`;
    this is the same quantity. GPTQ is invariant to a positive rescaling of
    :math:`H` (its damping is relative), so only the relative weight of the
    batches matters.

    References
    ----------
    :cite:t:`frantar2023gptq`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import gptq_hessian
    >>> x = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    >>> h, n = gptq_hessian(x[:60])
    >>> h, n = gptq_hessian(x[60:], hessian=h, n_samples=n)
    >>> n, bool(torch.allclose(h, 2 * x.double().T @ x.double() / 100))
    (100, True)
    """
    if inputs is None:
        raise ValueError("inputs must be a batch of activations (N, in_features), got None")
    in_features = getattr(inputs, "shape", (0,))[-1] if getattr(inputs, "ndim", 0) else 0
    if hessian is not None:
        h_prev = _check_hessian(hessian)
        in_features = h_prev.shape[0]
    x = check_inputs(inputs, in_features)
    assert x is not None
    n_samples = check_int("n_samples", n_samples, minimum=0)
    if (hessian is None) != (n_samples == 0):
        raise ValueError(
            "hessian and n_samples go together: pass both (from the previous call) or neither, "
            f"got hessian={'a tensor' if hessian is not None else None}, n_samples={n_samples}"
        )
    m = x.shape[0]
    xd = x.to(torch.float64)
    total = n_samples + m
    h = (2.0 / total) * (xd.T @ xd)
    if hessian is not None:
        h = h + h_prev.to(device=h.device, dtype=torch.float64) * (n_samples / total)
    return h, total


def _check_hessian(hessian: object, in_features: int | None = None) -> torch.Tensor:
    if not isinstance(hessian, torch.Tensor) or not hessian.is_floating_point():
        raise TypeError(
            f"hessian must be a floating tensor, got {getattr(hessian, 'dtype', type(hessian))}"
        )
    d = hessian.shape[0] if hessian.ndim == 2 else -1
    if hessian.ndim != 2 or hessian.shape[1] != d or (in_features is not None and d != in_features):
        want = f"({in_features}, {in_features})" if in_features is not None else "(d, d)"
        raise ValueError(f"hessian must have shape {want}, got {tuple(hessian.shape)}")
    if not bool(torch.isfinite(hessian).all()):
        raise ValueError("hessian must be finite, got NaN or Inf")
    if bool((torch.diagonal(hessian) < 0).any()):
        raise ValueError("hessian must have a non-negative diagonal (it is 2 X^T X / N)")
    tol = 1e-6 * float(hessian.abs().max())
    if float((hessian - hessian.T).abs().max()) > tol:
        raise ValueError("hessian must be symmetric (it is 2 X^T X / N)")
    return hessian.detach()


def _grid_options(fmt: str, options: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    unknown = sorted(set(options) - set(_GRID_OPTIONS))
    if unknown:
        raise TypeError(
            f"option(s) {', '.join(map(repr, unknown))} not accepted; GPTQ passes "
            f"{', '.join(_GRID_OPTIONS)} to the integer format"
        )
    bits = int_format_bits(fmt, options)
    grid = {k: v for k, v in options.items() if k != "bits"}
    symmetric = grid.setdefault("symmetric", True)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
    grid.setdefault("scale_convention", "qmax")
    grid.setdefault("zero_point", "int")
    if grid.setdefault("rounding", "nearest_even") == "stochastic":
        raise ValueError(
            "rounding='stochastic' is not supported by gptq: GPTQ compensates the rounding "
            "error it makes, so it rounds to nearest ('nearest_even' or 'half_away')"
        )
    return bits, grid


def _check_format(fmt: str, options: Mapping[str, Any]) -> None:
    _grid_options(fmt, dict(options))


@dataclass(frozen=True, kw_only=True)
class GPTQConfig:
    """GPTQ's own options (see :func:`~llmref.quant.gptq`), validated at construction.

    Parameters
    ----------
    damp : float, default 0.01
    act_order : bool, default False
    static_groups : bool, default False
    block_size : int, default 128
    max_damp : float, default 1.0

    Raises
    ------
    TypeError, ValueError
        Naming the option whose type or value is wrong.

    Examples
    --------
    >>> from llmref.quant.methods.gptq import GPTQConfig
    >>> GPTQConfig(damp=2.0)
    Traceback (most recent call last):
    ...
    ValueError: damp must be <= max_damp=1, got damp=2
    """

    damp: float = 0.01
    act_order: bool = False
    static_groups: bool = False
    block_size: int = 128
    max_damp: float = 1.0

    def __post_init__(self) -> None:
        damp = check_positive_float("damp", self.damp)
        max_damp = check_positive_float("max_damp", self.max_damp)
        if damp > max_damp:
            raise ValueError(f"damp must be <= max_damp={max_damp:g}, got damp={damp:g}")
        check_int("block_size", self.block_size, minimum=1)
        for name in ("act_order", "static_groups"):
            flag = getattr(self, name)
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")


def _cholesky_inverse_upper(
    h: torch.Tensor, damp: float, max_damp: float
) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + λ I)^-1, λ = damp · mean(diag H), raising damp on failure."""
    mean_diag = float(torch.diagonal(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    tried = []
    d = damp
    while True:
        hd = h + (d * mean_diag) * eye
        lower, info = torch.linalg.cholesky_ex(hd)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()):
                return upper, d
        tried.append(d)
        if d >= max_damp:
            break
        d = min(d * 10, max_damp)
    raise ValueError(
        "gptq: the damped Hessian is not positive definite; Cholesky factorization failed "
        f"with damp={', '.join(f'{t:g}' for t in tried)} (final damp={tried[-1]:g}, "
        f"max_damp={max_damp:g}). The calibration inputs are degenerate or the hessian "
        "passed is not a Gram matrix; raise max_damp or use more calibration data"
    )


@METHODS.register(
    "gptq",
    paper="frantar2023gptq",
    reference="https://github.com/IST-DASLab/gptq (gptq.py, GPTQ.fasterquant)",
    third_party="auto_gptq / gptqmodel GPTQ.fasterquant",
    applies_to="weight",
    needs_inputs=True,
    config=GPTQConfig,
    formats=INT_FORMATS,
    check_format=_check_format,
    takes_hessian=True,
)
def gptq(
    weight: torch.Tensor,
    inputs: torch.Tensor | None = None,
    *,
    fmt: str = "int4",
    group_size: int | str | None = "default",
    damp: float = 0.01,
    act_order: bool = False,
    static_groups: bool = False,
    block_size: int = 128,
    hessian: torch.Tensor | None = None,
    max_damp: float = 1.0,
    **format_options: Any,
) -> QuantizedTensor:
    """Quantize a weight matrix with GPTQ: round column by column, fixing the error downstream.

    Each column is rounded to the integer grid, and its rounding error is
    spread over the columns not yet quantized so that the layer's output on
    the calibration inputs changes as little as possible (the optimal-brain-
    surgeon update with the input Hessian). The result has the same storage
    as :func:`~llmref.quant.quantize` with ``fmt`` (so
    :class:`~llmref.quant.QuantLinear` and its kernels run it unchanged);
    only the codes (and, through the updated weights, the group scales) differ.

    Parameters
    ----------
    weight : torch.Tensor
        ``(out_features, in_features)``, floating point. float64 weights are
        processed in float64, any other dtype in float32.
    inputs : torch.Tensor, optional
        Calibration activations entering the layer, ``(N, in_features)``
        (leading dimensions are flattened). Exactly one of ``inputs`` and
        ``hessian`` is required.
    fmt : {"int4", "int8", "int2", "int"}, default "int4"
        Integer format; ``"int"`` takes ``bits`` (2 to 8) in ``format_options``.
    group_size : int, None or "default", default "default"
        Columns per scale along ``in_features`` (must divide it); ``None``: one
        scale per output channel; ``"default"``: the format's default (groups
        of 128 below 8 bits, per channel at 8 bits, as
        :func:`~llmref.quant.quantize` and :func:`~llmref.quant.quantize_model`).
    damp : float, default 0.01
        Relative damping: :math:`\\lambda = \\text{damp} \\cdot
        \\operatorname{mean}(\\operatorname{diag} H)` is added to the diagonal
        (the reference's ``percdamp``).
    act_order : bool, default False
        Process columns by descending :math:`H_{ii}` (the reference's
        ``actorder``, AutoGPTQ's ``desc_act``). With ``group_size`` set it
        needs ``static_groups=True`` (see Notes).
    static_groups : bool, default False
        Choose every group's scale from the original weights before the
        updates, instead of from the updated weights when the solver reaches
        the group (the reference's default).
    block_size : int, default 128
        Columns per lazy batch update (the reference's ``blocksize``). Changes
        speed only: the result is the same up to floating-point rounding.
    hessian : torch.Tensor, optional
        A precomputed :math:`H` (``(in_features, in_features)``, any positive
        multiple of :math:`X^\\top X`), e.g. accumulated over calibration
        batches with :func:`~llmref.quant.gptq_hessian`; instead
        of ``inputs``.
    max_damp : float, default 1.0
        Largest relative damping tried: when the Cholesky factorization fails,
        ``damp`` is multiplied by 10 up to this value before giving up.
    **format_options
        ``bits`` (with ``fmt="int"``), ``symmetric`` (default True, as the
        integer formats and AutoGPTQ's ``sym``), ``scale_convention``,
        ``zero_point`` (``"int"`` as the reference's asymmetric quantizer, or
        ``"float"``) and ``rounding`` (``"nearest_even"`` or ``"half_away"``),
        with the meanings of :func:`~llmref.quant.quantize`.

    Returns
    -------
    QuantizedTensor
        Format ``fmt``, shape and dtype of ``weight``, storage as
        :func:`~llmref.quant.quantize` builds it.

    Raises
    ------
    TypeError
        If ``weight``, ``inputs`` or ``hessian`` is not a floating tensor, a
        flag is not a bool, an int option is not an int, or a format option is
        unknown.
    ValueError
        If neither or both of ``inputs``/``hessian`` are given, a shape is
        wrong, ``group_size`` does not divide ``in_features``, ``damp`` or
        ``max_damp`` is not > 0 (or ``damp > max_damp``), ``block_size < 1``,
        ``act_order`` is used with groups but without ``static_groups``, or the
        damped Hessian cannot be factorized even at ``max_damp`` (the message
        names the damping values tried).

    Notes
    -----
    GPTQ minimizes :math:`\\lVert X W^\\top - X \\hat W^\\top \\rVert_F^2` row
    by row, with Hessian :math:`H = \\tfrac{2}{N} X^\\top X` (the same for every
    row). Quantizing column :math:`q` of row :math:`w` and re-optimizing the
    columns :math:`F` not yet quantized gives the OBS/OBQ update
    :cite:p:`hassibi1993obs,frantar2022obc`

    .. math::

        \\delta_F = -\\frac{w_q - \\operatorname{quant}(w_q)}{[H_F^{-1}]_{qq}}
        \\,(H_F^{-1})_{:,q},
        \\qquad
        H_{F \\setminus q}^{-1} = \\Bigl(H_F^{-1} - \\frac{(H_F^{-1})_{:,q}
        (H_F^{-1})_{q,:}}{[H_F^{-1}]_{qq}}\\Bigr)_{F \\setminus q}.

    GPTQ fixes the column order (left to right, or by descending
    :math:`H_{ii}` with ``act_order``) so :math:`H_F^{-1}` is shared by all
    rows, and notes that the rows :math:`(H_F^{-1})_{q,F} /
    \\sqrt{[H_F^{-1}]_{qq}}` of the successive eliminations are the rows of the
    upper Cholesky factor :math:`U` of :math:`H^{-1} = U^\\top U`. So
    :math:`U` is computed once (in float64 here), the error of column
    :math:`j` is :math:`e_j = (w_j - \\operatorname{quant}(w_j)) / U_{jj}` and
    the update is :math:`w_{j:} \\mathrel{-}= e_j U_{j,j:}`; within a block
    of ``block_size`` columns the update is applied eagerly, to the columns
    after the block once per block (:math:`W_{:,B'} \\mathrel{-}= E\\,
    U_{B,B'}`: the lazy batch update).

    *Damping and dead inputs.* Inputs that are zero on every calibration row
    (:math:`H_{ii} = 0`) get :math:`H_{ii} = 1` and their weights are set to
    0, as in the reference (the output does not depend on them). Then
    :math:`\\lambda I` is added; when a Cholesky factorization still fails
    (a rank-deficient or ill-conditioned :math:`H`), ``damp`` is raised ×10
    up to ``max_damp``.

    *Groups.* A group's scale is chosen (with the format's own
    :func:`~llmref.quant.choose_qparams`) when the solver reaches the group's
    first column, from the group's weights *as updated so far*. The reference
    reads those weights from its block-level copy, which misses the updates of
    the current block when a group starts inside a block (``group_size <
    block_size``); llmref uses the fully updated weights, so that the result
    does not depend on ``block_size``. With ``static_groups`` the scales come
    from the original weights, up front. Per-channel scales (``group_size=None``)
    always come from the original weights. Dead columns are zeroed before any
    scale is chosen (the reference chooses per-channel scales before zeroing).

    *act_order with groups.* The reference forms groups of consecutive
    columns in the *permuted* order, so a group is a scattered set of input
    columns; AutoGPTQ stores a per-column group index ``g_idx`` for that.
    llmref's :class:`~llmref.quant.QuantizedTensor` stores groups as contiguous
    runs of columns in the original order (what ``quantize`` and the fast
    kernels read), so ``act_order`` with ``group_size`` raises unless
    ``static_groups=True``: groups are then the original contiguous runs, their
    scales fixed up front, and columns are still processed by descending
    :math:`H_{ii}` (the reference's ``static_groups`` + ``actorder``).
    It raises rather than silently switching to static groups, which would
    change the scales the user asked for.

    The column loop runs in float32 (float64 for float64 weights), as the
    reference; codes and scales are computed by the format's own
    :func:`~llmref.quant.choose_qparams` / :func:`~llmref.quant.quantize_affine`
    so they are always valid codes of ``fmt``. The function is deterministic
    (ties in ``act_order`` are broken by column index).

    References
    ----------
    :cite:t:`frantar2023gptq`, :cite:t:`frantar2022obc`, :cite:t:`hassibi1993obs`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import gptq, rtn
    >>> g = torch.Generator().manual_seed(0)
    >>> w = torch.randn(64, 128, generator=g)
    >>> x = torch.randn(512, 16, generator=g) @ torch.randn(16, 128, generator=g)
    >>> x = x + 0.1 * torch.randn(512, 128, generator=g)  # correlated inputs
    >>> qt = gptq(w, x, fmt="int4", group_size=64)
    >>> def err(q):
    ...     return float(((x @ w.T - x @ q.dequantize().T) ** 2).sum())
    >>> qt.fmt, err(qt) < 0.5 * err(rtn(w, fmt="int4", group_size=64))
    ('int4', True)
    """
    w = check_weight(weight)
    out_features, in_features = w.shape
    bits, grid = _grid_options(fmt, format_options)
    g = method_group_size(fmt, group_size, format_options, in_features)
    cfg = GPTQConfig(
        damp=damp,
        act_order=act_order,
        static_groups=static_groups,
        block_size=block_size,
        max_damp=max_damp,
    )
    grouped = g != in_features
    if act_order and grouped and not static_groups:
        raise ValueError(
            "act_order=True with group_size needs static_groups=True: llmref stores groups "
            "as contiguous runs of columns in the original order, while act_order's dynamic "
            "groups are runs in the permuted order (AutoGPTQ's g_idx); pass "
            "static_groups=True, or group_size=None"
        )
    if (inputs is None) == (hessian is None):
        raise ValueError(
            "gptq needs exactly one of inputs (calibration activations (N, in_features)) "
            f"and hessian ((in_features, in_features)), got "
            f"{'both' if inputs is not None else 'neither'}"
        )
    if hessian is not None:
        h = _check_hessian(hessian, in_features).to(device=w.device, dtype=torch.float64)
    else:
        x = check_inputs(inputs, in_features)
        assert x is not None  # required=True
        h, _ = gptq_hessian(x)
        h = h.to(w.device)
    h = h.clone()

    compute = torch.float64 if weight.dtype == torch.float64 else torch.float32
    W = weight.detach().to(device=w.device, dtype=compute).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    W[:, dead] = 0.0

    n_groups = in_features // g
    scales = torch.empty(out_features, n_groups, dtype=torch.float32, device=w.device)
    zp_float = not grid["symmetric"] and grid["zero_point"] == "float"
    zps = None
    if not grid["symmetric"]:
        zps = torch.empty(
            out_features,
            n_groups,
            dtype=torch.float32 if zp_float else torch.uint8,
            device=w.device,
        )

    per_group: dict[int, tuple[torch.Tensor, ...]] = {}  # 1/scale, scale[, zero] per group

    def set_params(k: int, cols: torch.Tensor) -> None:
        p = choose_qparams(
            cols.to(torch.float32),
            bits=bits,
            symmetric=grid["symmetric"],
            scale_convention=grid["scale_convention"],
            zero_point=grid["zero_point"],
            group_size=cols.shape[1],
        )
        scales[:, k] = p.scale
        per_group.pop(k, None)
        if zps is not None:
            assert p.zero_point is not None
            zps[:, k] = p.zero_point

    lo, hi = _code_range(bits, zps, grid["scale_convention"])
    rounding = grid["rounding"]

    def qdq(k: int, col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # quantize_affine / dequantize_affine for one column, same float32 arithmetic
        if k not in per_group:
            sk = scales[:, k]
            zk = zps[:, k].to(torch.float32) if zps is not None else None
            per_group[k] = (1.0 / sk, sk) if zk is None else (1.0 / sk, sk, zk)
        inv, s, *z = per_group[k]
        x = col.to(torch.float32)
        if not z:
            q = round_values(x * inv, rounding).clamp_(lo, hi)
            return q.to(torch.int32), q * s
        if zp_float:
            q = round_values((x - z[0]) * inv, rounding).clamp_(lo, hi)
            return q.to(torch.int32), q * s + z[0]
        q = (round_values(x * inv, rounding) + z[0]).clamp_(lo, hi)
        return q.to(torch.int32), (q - z[0]) * s

    dynamic = grouped and not static_groups
    if not dynamic:
        for k in range(n_groups):
            set_params(k, W[:, k * g : (k + 1) * g])

    if act_order:
        perm = torch.argsort(torch.diagonal(h), descending=True, stable=True)
        W = W[:, perm]
        h = h[perm][:, perm]
    else:
        perm = torch.arange(in_features, device=w.device)
    group_of = (perm // g).tolist()

    U, _ = _cholesky_inverse_upper(h, cfg.damp, cfg.max_damp)
    U = U.to(compute)

    codes = torch.empty(out_features, in_features, dtype=torch.int32, device=w.device)
    for i1 in range(0, in_features, cfg.block_size):
        i2 = min(i1 + cfg.block_size, in_features)
        W1 = W[:, i1:i2].clone()
        err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if dynamic and j % g == 0:
                # the group's weights with every update so far: those inside the block are
                # current in W1; those after it still miss this block's errors
                cols = W1[:, i : i + g]
                if j + g > i2:
                    rest = W[:, i2 : j + g] - err1[:, :i] @ U[i1:j, i2 : j + g]
                    cols = torch.cat([cols, rest], dim=1)
                set_params(j // g, cols)
            col = W1[:, i]
            q, deq = qdq(group_of[j], col)
            codes[:, j] = q
            deq = deq.to(compute)
            e = (col - deq) / U1[i, i]
            W1[:, i:] -= e.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            err1[:, i] = e
        W[:, i2:] -= err1 @ U[i1:i2, i2:]

    if act_order:
        codes = codes[:, torch.argsort(perm)]
    return int_tensor_from_codes(
        codes,
        scales.reshape(-1),
        None if zps is None else zps.reshape(-1),
        bits=bits,
        dtype=weight.dtype,
        fmt=fmt,
        scale_convention=grid["scale_convention"],
        rounding=grid["rounding"],
    )
