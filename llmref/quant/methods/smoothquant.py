"""SmoothQuant: migrate activation outliers into the weights, then W8A8."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..formats import quantize
from ..tensor import QuantizedTensor
from .awq import _check_fraction
from .base import METHODS, check_inputs, check_per_channel, check_weight, int8_only

__all__ = ["OutlierStats", "SmoothQuantConfig", "activation_outliers", "smoothquant"]


@dataclass(frozen=True, kw_only=True)
class SmoothQuantConfig:
    """SmoothQuant's own option, validated at construction.

    Parameters
    ----------
    alpha : float, default 0.5
        Migration strength in [0, 1] (see :func:`~llmref.quant.smoothquant`).

    Examples
    --------
    >>> from llmref.quant.methods.smoothquant import SmoothQuantConfig
    >>> SmoothQuantConfig(alpha=1.5)
    Traceback (most recent call last):
    ...
    ValueError: alpha must lie in [0, 1], got 1.5
    """

    alpha: float = 0.5

    def __post_init__(self) -> None:
        _check_fraction("alpha", self.alpha, closed_high=True)


_FLOOR = 1e-5  # the reference implementation's floor on max|W_j| and on s_j


class OutlierStats(NamedTuple):
    """Per-channel activation magnitudes, from :func:`activation_outliers`.

    Parameters
    ----------
    channel_max : torch.Tensor
        float32 ``(in_features,)``: :math:`\\max_t |X_{t, j}|` per input channel.
    ratio : float
        ``max(channel_max) / median(channel_max)``: how far the largest
        channel sticks out (1 for perfectly even channels).

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import activation_outliers
    >>> activation_outliers(torch.tensor([[1.0, -2.0, 10.0]])).ratio
    5.0
    """

    channel_max: torch.Tensor
    ratio: float


def activation_outliers(
    inputs: torch.Tensor, input_scale: torch.Tensor | None = None
) -> OutlierStats:
    """Per-channel max ``|x|`` of activations and their outlier ratio, optionally smoothed.

    Parameters
    ----------
    inputs : torch.Tensor
        Activations ``(..., in_features)``, floating point.
    input_scale : torch.Tensor, optional
        Smoothing factors ``s`` ``(in_features,)`` (a SmoothQuant weight's
        ``input_scale``): the statistics are then those of ``inputs / s``,
        what the int8 activation quantizer sees.

    Returns
    -------
    OutlierStats
        ``channel_max`` and ``ratio`` (max over median of ``channel_max``).

    Raises
    ------
    TypeError
        If ``inputs`` is not a floating tensor.
    ValueError
        If ``inputs`` is empty or not finite, or ``input_scale`` does not have
        shape ``(in_features,)``.

    Notes
    -----
    Per-token int8 quantization gives every channel of a token the step
    :math:`\\max_j |x_j| / 127`; a channel a hundred times larger than the
    median leaves the other channels a handful of levels. SmoothQuant divides
    channel :math:`j` by :math:`s_j`, lowering this ratio; the docs plot
    ``channel_max`` before and after.

    References
    ----------
    :cite:t:`xiao2023smoothquant`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import activation_outliers
    >>> x = torch.tensor([[1.0, 1.0, 100.0], [-1.0, 2.0, 50.0]])
    >>> st = activation_outliers(x)
    >>> st.channel_max.tolist(), st.ratio
    ([1.0, 2.0, 100.0], 50.0)
    >>> activation_outliers(x, torch.tensor([1.0, 1.0, 50.0])).ratio  # channel max 1, 2, 2
    1.0
    """
    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 1:
        raise TypeError(f"inputs must be a floating tensor, got {type(inputs).__name__}")
    x = check_inputs(inputs, inputs.shape[-1], required=True)
    assert x is not None
    if input_scale is not None:
        if not isinstance(input_scale, torch.Tensor) or input_scale.shape != (x.shape[1],):
            raise ValueError(
                f"input_scale must be a tensor of shape ({x.shape[1]},), got "
                f"{getattr(input_scale, 'shape', type(input_scale).__name__)}"
            )
        x = x / input_scale.to(torch.float32)
    cmax = x.abs().amax(dim=0)
    med = float(cmax.median())
    ratio = float(cmax.max()) / med if med > 0 else float("inf")
    return OutlierStats(cmax, ratio)


def smooth_scales(
    act_max: torch.Tensor, weight: torch.Tensor, *, alpha: float = 0.5
) -> torch.Tensor:
    """SmoothQuant's factors ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``.

    Parameters
    ----------
    act_max : torch.Tensor
        ``(in_features,)`` per-channel max ``|x|`` over the calibration tokens.
    weight : torch.Tensor
        ``(out_features, in_features)``.
    alpha : float, default 0.5
        Migration strength in [0, 1].

    Returns
    -------
    torch.Tensor
        float32 ``(in_features,)``, at least ``1e-5``.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant.methods.smoothquant import smooth_scales
    >>> smooth_scales(torch.tensor([16.0, 1.0]), torch.tensor([[1.0, 4.0]]))
    tensor([4.0000, 0.5000])
    """
    w_max = weight.detach().abs().amax(dim=0).to(torch.float32).clamp(min=_FLOOR)
    s = act_max.to(torch.float32).pow(alpha) / w_max.pow(1 - alpha)
    return s.clamp(min=_FLOOR)


@METHODS.register(
    "smoothquant",
    paper="xiao2023smoothquant",
    reference="https://github.com/mit-han-lab/smoothquant (smoothquant/smooth.py)",
    third_party="llmcompressor.modifiers.smoothquant.SmoothQuantModifier",
    applies_to="weight",
    needs_inputs=True,
    config=SmoothQuantConfig,
    formats=("int8",),
    check_format=int8_only("smoothquant"),
)
def smoothquant(
    weight: torch.Tensor,
    inputs: torch.Tensor | None = None,
    *,
    fmt: str = "int8",
    group_size: int | str | None = "default",
    alpha: float = 0.5,
) -> QuantizedTensor:
    r"""SmoothQuant W8A8: per-channel smoothing, int8 weights, int8 per-token activations.

    Parameters
    ----------
    weight : torch.Tensor
        ``(out_features, in_features)``, floating point.
    inputs : torch.Tensor
        Calibration activations ``(N, in_features)`` (any leading shape is
        flattened); only their per-channel max ``|x|`` is used. Required.
    fmt : str, default "int8"
        Must be ``"int8"`` (the weights of a W8A8 integer GEMM).
    group_size : int, None or "default", default "default"
        Must be ``"default"``, ``None`` or ``in_features``: one scale per
        output channel (int8's default), as the int8 GEMM's epilogue needs.
    alpha : float, default 0.5
        Migration strength in [0, 1]: 0 leaves the activations alone
        (``s = 1 / max|W_j|``), 1 moves all of their range into the weights.
        The paper uses 0.5 for OPT/BLOOM and up to 0.8-0.85 for models with
        stronger outliers (GLM-130B, Llama).

    Returns
    -------
    QuantizedTensor
        ``int8`` codes of :math:`W \operatorname{diag}(s)` (symmetric, one
        ``amax/127`` scale per output channel), ``input_scale`` :math:`s`, and
        ``options["act_quant"] = "per_token_int8"``:
        :class:`~llmref.quant.QuantLinear` divides ``x`` by :math:`s`,
        quantizes it to int8 per token at run time and multiplies with
        ``torch._int_mm`` (kernel ``"int8_dynamic"``; where that is not
        available the reference kernel fake-quantizes the activations in
        float32 with the same arithmetic). ``dequantize()`` gives the
        effective weight :math:`\operatorname{dequant}(\text{codes})
        \operatorname{diag}(1/s)`.

    Raises
    ------
    ValueError
        If ``inputs`` is missing or its last dimension is not
        ``in_features``, ``alpha`` is outside [0, 1], ``fmt`` is not
        ``"int8"`` or ``group_size`` is not per channel.
    TypeError
        If ``alpha`` is not a number or ``weight``/``inputs`` are not floating
        tensors.

    Notes
    -----
    With :math:`m_j = \max_t |X_{t,j}|` over the calibration tokens,

    .. math::

        s_j = \frac{m_j^{\alpha}}{\max_i |W_{i,j}|^{1-\alpha}}, \qquad
        Y = X W^\top = (X \operatorname{diag}(s)^{-1}) \,
        (W \operatorname{diag}(s))^\top ,

    both floored at :math:`10^{-5}` as in the reference code. The smoothed
    activations have a far smaller max/median channel ratio (see
    :func:`~llmref.quant.activation_outliers`), so per-token int8 loses
    little; the weights absorb the range and are quantized per output
    channel. This is SmoothQuant-O1's activation scheme (per-token dynamic)
    with finer, per-channel weights (O1-O3 use one weight scale per tensor;
    O2 and O3 quantize activations per tensor, dynamically and statically);
    it is the setting of the reference repository's ``W8A8Linear``
    (``weight_quant="per_channel"``, ``act_quant="per_token"``). The
    smoothing is not fused into the preceding LayerNorm here (see
    :class:`~llmref.quant.QuantLinear`: one elementwise divide per call).

    References
    ----------
    :cite:t:`xiao2023smoothquant`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import QuantLinear, activation_outliers, smoothquant
    >>> g = torch.Generator().manual_seed(0)
    >>> w, x = torch.randn(32, 64, generator=g), torch.randn(128, 64, generator=g)
    >>> x[:, 3] *= 50  # an outlier channel
    >>> qt = smoothquant(w, x, alpha=0.5)
    >>> QuantLinear(qt).kernel.name
    'int8_dynamic'
    >>> activation_outliers(x, qt.input_scale).ratio < activation_outliers(x).ratio / 5
    True
    """
    w = check_weight(weight)
    x = check_inputs(inputs, w.shape[1], required=True)
    assert x is not None
    alpha = SmoothQuantConfig(alpha=alpha).alpha
    int8_only("smoothquant")(fmt, {})
    check_per_channel("smoothquant", group_size, w.shape[1])
    s = smooth_scales(x.abs().amax(dim=0), w, alpha=alpha)
    qt = quantize(w * s, "int8")
    options = {**qt.options, "act_quant": "per_token_int8"}
    return QuantizedTensor("int8", qt.shape, weight.dtype, qt.tensors, options).with_input_scale(s)
