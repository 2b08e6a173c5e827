"""Format-independent entry points: quantize, dequantize, format_values, fake_quantize.

Each looks the format up in :data:`~llmref.quant.FORMATS`; the families in this
package register into it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..primitives import (
    _StraightThrough,
)
from ..registry import FORMATS
from ..tensor import QuantizedTensor

__all__ = ["dequantize", "fake_quantize", "format_values", "quantize"]


def quantize(x: torch.Tensor, fmt: str, **options: Any) -> QuantizedTensor:
    """Quantize a tensor to a registered number format.

    Parameters
    ----------
    x : torch.Tensor
        Floating tensor (float32, float16, bfloat16 or float64), at least
        1-D, finite. Computation is in float32.
    fmt : str
        A name in :data:`~llmref.quant.FORMATS`: ``int8``, ``int4``, ``int2``, ``int``,
        ``nf4``, ``fp4``, ``fp4_e2m1``, ``fp8_e4m3``, ``fp8_e5m2``,
        ``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxfp6_e2m3``, ``mxfp6_e3m2``,
        ``mxfp4``, ``nvfp4``, ``q8_0``, ``q4_0``, ``q4_1``, ``q4_k``.
    **options
        The format's options, the fields of its options class
        (``FORMATS[fmt].options``), e.g. ``group_size`` (the block size, one
        name for every format), ``bits``, ``symmetric``, ``rounding``,
        ``double_quant``. The integer formats default to one scale per
        output channel at 8 bits and to groups of 128 below.

    Returns
    -------
    QuantizedTensor

    Raises
    ------
    KeyError
        If ``fmt`` is not registered.
    TypeError
        If ``x`` is not a floating tensor, an option is not accepted by ``fmt``
        or has the wrong type (the message names the option).
    ValueError
        If ``x`` has NaN/Inf, is 0-D or empty, or an option value is invalid
        (for example a ``group_size`` that does not divide the last dimension).

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize, dequantize, sqnr
    >>> w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    >>> qt = quantize(w, "int4", group_size=64)
    >>> qt.bits_per_weight
    4.5
    >>> round(sqnr(w, dequantize(qt)), 1)
    19.3
    """
    spec = FORMATS[fmt]
    opts = spec.options.from_kwargs(fmt, options)  # names a bad option before any work
    qt: QuantizedTensor = spec.quantize(x, **opts.as_kwargs())
    return qt


def dequantize(qt: QuantizedTensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Reconstruct the values of a :class:`~llmref.quant.QuantizedTensor`.

    Parameters
    ----------
    qt : QuantizedTensor
        From :func:`~llmref.quant.quantize`.
    dtype : torch.dtype, optional
        Output dtype; defaults to the dtype of the tensor that was quantized.

    Returns
    -------
    torch.Tensor
        Of ``qt.shape``, on ``qt.device``. When ``qt`` has an
        ``input_scale`` ``s`` (AWQ, SmoothQuant: the codes store
        :math:`W \\operatorname{diag}(s)`), the effective weight
        :math:`\\operatorname{dequant}(\\text{codes}) \\operatorname{diag}(1/s)`,
        for every format; ``qt.without_input_scale()`` dequantizes to the
        stored :math:`W \\operatorname{diag}(s)`.

    Raises
    ------
    TypeError
        If ``qt`` is not a QuantizedTensor.
    KeyError
        If its format is not registered.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize, dequantize
    >>> x = torch.tensor([[0.5, -1.0, 0.3, 6.0]])  # scale 1: the E2M1 grid itself
    >>> dequantize(quantize(x, "fp4_e2m1", group_size=4))
    tensor([[ 0.5000, -1.0000,  0.5000,  6.0000]])
    """
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"qt must be a QuantizedTensor, got {type(qt).__name__}")
    return qt.dequantize(dtype)


def format_values(fmt: str) -> torch.Tensor:
    """The representable values of a format's element grid (before scaling).

    Parameters
    ----------
    fmt : str
        A registered format name.

    Returns
    -------
    torch.Tensor
        float32, sorted ascending, duplicates (``±0``) removed. Integer
        formats give their codes ``-qmax .. qmax``; codebook and float
        formats their code values; ggml formats their integer levels.

    Examples
    --------
    >>> from llmref.quant import format_values
    >>> format_values("fp4_e2m1").tolist()
    [-6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    >>> len(format_values("nf4")), len(format_values("int4"))
    (16, 15)
    """
    v = FORMATS[fmt].values().to(torch.float32)
    return torch.unique(v[torch.isfinite(v)])


def fake_quantize(x: torch.Tensor, fmt: str = "int8", **options: Any) -> torch.Tensor:
    """Quantize and dequantize in one step, with a straight-through gradient.

    The forward pass returns ``dequantize(quantize(x, fmt, **options))`` in
    ``x``'s dtype; the backward pass treats the rounding as the identity
    (straight-through estimator), so ``x.grad`` equals the incoming gradient.
    This is the building block of quantization-aware training.

    Parameters
    ----------
    x : torch.Tensor
        Floating tensor (may require grad).
    fmt : str, default "int8"
        Any name in :data:`llmref.quant.FORMATS`.
    **options
        Options of that format (``group_size``, ``bits``, ``rounding`` ...).

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``.

    Raises
    ------
    KeyError
        If ``fmt`` is not a registered format.
    TypeError, ValueError
        As :func:`llmref.quant.quantize`.

    Notes
    -----
    The STE :cite:p:`bengio2013estimating` sets
    :math:`\\partial \\hat x / \\partial x = 1` although the rounding has zero
    derivative almost everywhere. Scales are computed from ``x`` without a
    gradient (they are not learned here).

    References
    ----------
    :cite:t:`bengio2013estimating`, :cite:t:`jacob2018quantization`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import fake_quantize
    >>> w = torch.randn(4, 32, requires_grad=True)
    >>> y = fake_quantize(w, "int4", group_size=16)
    >>> y.sum().backward()
    >>> bool(torch.equal(w.grad, torch.ones_like(w)))
    True
    """

    def qdq(t: torch.Tensor) -> torch.Tensor:
        return dequantize(quantize(t, fmt, **options)).to(t.dtype)

    out: torch.Tensor = _StraightThrough.apply(x, qdq)
    return out
