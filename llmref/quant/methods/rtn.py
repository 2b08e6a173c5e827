"""Round-to-nearest: the baseline every post-training method is measured against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..formats import quantize
from ..tensor import QuantizedTensor
from .base import METHODS, check_inputs, check_weight

__all__ = ["RTNConfig", "rtn"]


@dataclass(frozen=True, kw_only=True)
class RTNConfig:
    """Round-to-nearest has no options of its own: every option is the format's.

    Examples
    --------
    >>> from llmref.quant.methods.rtn import RTNConfig
    >>> RTNConfig()
    RTNConfig()
    """


@METHODS.register(
    "rtn",
    paper="nagel2021white",
    reference="llmref.quant.quantize",
    third_party="torchao.quantization.quant_primitives.quantize_affine",
    applies_to="weight",
    needs_inputs=False,
    config=RTNConfig,
)
def rtn(
    weight: torch.Tensor,
    inputs: torch.Tensor | None = None,
    *,
    fmt: str = "int4",
    group_size: int | str | None = "default",
    **options: Any,
) -> QuantizedTensor:
    """Round each weight to the nearest level of ``fmt``, with no calibration.

    Parameters
    ----------
    weight : torch.Tensor
        ``(out_features, in_features)``, floating point.
    inputs : torch.Tensor, optional
        Ignored (checked for shape if given), so that every method in
        :data:`~llmref.quant.METHODS` takes the same arguments.
    fmt : str, default "int4"
        Any format in :data:`~llmref.quant.FORMATS`.
    group_size : int, None or "default", default "default"
        Weights per scale along ``in_features``; ``"default"``: the format's
        default (integer formats: groups of 128 below 8 bits, per channel at 8
        bits); ``None``: as the format reads it (per output channel for the
        integer formats).
    **options
        Further format options (``symmetric``, ``bits`` for ``fmt="int"`` ...).

    Returns
    -------
    QuantizedTensor
        Exactly ``quantize(weight, fmt, group_size=group_size, **options)``
        (without ``group_size`` when it is ``"default"``).

    Raises
    ------
    ValueError
        If ``weight`` is not a finite 2-D matrix, ``inputs`` has the wrong
        last dimension, or the format rejects an option.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import rtn, sqnr
    >>> w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    >>> qt = rtn(w, fmt="int4", group_size=64)
    >>> round(sqnr(w, qt.dequantize()), 1)
    19.3
    """
    w = check_weight(weight)
    check_inputs(inputs, w.shape[1], required=False)
    if group_size != "default":
        options["group_size"] = group_size
    return quantize(weight.detach(), fmt, **options)
