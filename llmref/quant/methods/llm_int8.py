"""LLM.int8(): vector-wise int8 matmul with outlier feature columns kept in float."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from ..formats import int_tensor_from_codes
from ..kernels import Int8VectorwiseQuant, int8_vectorwise_quant
from ..primitives import _EPS
from ..tensor import QuantizedTensor
from .base import METHODS, check_inputs, check_per_channel, check_weight, int8_only

__all__ = ["Int8VectorwiseQuant", "LLMInt8Config", "int8_vectorwise_quant", "llm_int8"]


@dataclass(frozen=True, kw_only=True)
class LLMInt8Config:
    """LLM.int8()'s own option, validated at construction.

    Parameters
    ----------
    threshold : float, default 6.0
        Outlier magnitude, > 0 (see :func:`~llmref.quant.llm_int8`).

    Examples
    --------
    >>> from llmref.quant.methods.llm_int8 import LLMInt8Config
    >>> LLMInt8Config(threshold=0.0)
    Traceback (most recent call last):
    ...
    ValueError: threshold must be > 0, got 0.0
    """

    threshold: float = 6.0

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, numbers.Real):
            raise TypeError(f"threshold must be a float, got {type(t).__name__}")
        if not float(t) > 0:
            raise ValueError(f"threshold must be > 0, got {t}")


@METHODS.register(
    "llm_int8",
    paper="dettmers2022llmint8",
    reference="llmref.quant.kernels.KERNELS['llm_int8']",
    third_party="bitsandbytes.nn.Linear8bitLt",
    applies_to="weight",
    needs_inputs=False,
    config=LLMInt8Config,
    formats=("int8",),
    check_format=int8_only("llm_int8"),
)
def llm_int8(
    weight: torch.Tensor,
    inputs: torch.Tensor | None = None,
    *,
    fmt: str = "int8",
    group_size: int | str | None = "default",
    threshold: float = 6.0,
) -> QuantizedTensor:
    r"""LLM.int8(): int8 weights per row, int8 activations per token, outliers in float.

    Parameters
    ----------
    weight : torch.Tensor
        ``(out_features, in_features)``, floating point.
    inputs : torch.Tensor, optional
        Ignored (checked for shape if given): the outlier columns are found
        at run time, per batch.
    fmt : str, default "int8"
        Must be ``"int8"``.
    group_size : int, None or "default", default "default"
        Must be ``"default"``, ``None`` or ``in_features`` (vector-wise: one
        scale per row, int8's default).
    threshold : float, default 6.0
        Activation magnitude from which a feature column is an outlier
        (bitsandbytes' ``llm_int8_threshold``); > 0.

    Returns
    -------
    QuantizedTensor
        ``int8`` codes ``round(W_i * 127 / max|W_i|)`` with scale
        ``max|W_i| / 127`` per row (bitsandbytes' ``CB``/``SCB``, bit-exact on
        float16 weights), ``options["act_quant"] = "llm_int8"`` and
        ``options["threshold"]``. :class:`~llmref.quant.QuantLinear` runs it
        with the ``"llm_int8"`` kernel (reference kernel elsewhere: the same
        decomposition in float32). ``dequantize()`` gives the int8 weight.

    Raises
    ------
    ValueError
        If ``threshold`` is not > 0, ``fmt`` is not ``"int8"``,
        ``group_size`` is not per row, or ``inputs`` has the wrong last
        dimension.
    TypeError
        If ``threshold`` is not a number.

    Notes
    -----
    For a batch :math:`X` (tokens by features), the outlier columns are
    :math:`O = \{j : \exists t,\ |X_{t,j}| \ge \tau\}` and

    .. math::

        Y = \underbrace{\operatorname{diag}(c_X / 127)\,
        \bigl(Q_X^{\bar O} (Q_W^{\bar O})^\top\bigr)_{\text{int32}}\,
        \operatorname{diag}(c_W / 127)}_{\text{int8 GEMM, columns} \notin O}
        \;+\; X_{:, O}\, \hat W_{:, O}^\top ,

    with :math:`Q_X = \operatorname{round}(127 X / c_X)` per row (outlier
    elements zeroed before the row max :math:`c_X` is taken, whole outlier
    columns zeroed after: :func:`~llmref.quant.int8_vectorwise_quant`) and
    :math:`Q_W` likewise per weight row. The float part uses
    :math:`\hat W = Q_W \operatorname{diag}(c_W/127)`, the int8-dequantized
    weight columns, as bitsandbytes' ``Linear8bitLt`` does in inference
    (``has_fp16_weights=False``: only the int8 weight is stored). The paper
    keeps those columns in fp16; storing them would cost
    ``2 * out_features`` bytes per outlier column and its gain is the weight
    rounding of a few columns, which the tests show is small next to what
    the decomposition itself removes (the activation rounding of the
    outlier features). bitsandbytes rounds activations to float16 first;
    here they stay in their dtype and are computed in float32.

    References
    ----------
    :cite:t:`dettmers2022llmint8`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import QuantLinear, llm_int8
    >>> g = torch.Generator().manual_seed(0)
    >>> w, x = torch.randn(16, 64, generator=g) / 8, torch.randn(4, 64, generator=g)
    >>> x[:, 5] = 40.0  # an outlier feature
    >>> layer = QuantLinear(llm_int8(w, threshold=6.0))
    >>> layer.kernel.name
    'llm_int8'
    >>> err = (layer(x) - x @ w.T).abs().max() / (x @ w.T).abs().max()
    >>> bool(err < 0.02)
    True
    """
    w = check_weight(weight)
    check_inputs(inputs, w.shape[1], required=False)
    threshold = LLMInt8Config(threshold=threshold).threshold
    int8_only("llm_int8")(fmt, {})
    check_per_channel("llm_int8", group_size, w.shape[1])
    q = int8_vectorwise_quant(w)
    qt = int_tensor_from_codes(q.codes, (q.absmax / 127).clamp(min=_EPS), bits=8, fmt="int8")
    options = {**qt.options, "act_quant": "llm_int8", "threshold": float(threshold)}
    return QuantizedTensor("int8", qt.shape, weight.dtype, qt.tensors, options)
