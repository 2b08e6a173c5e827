"""What every post-training quantization method shares: its registry and input checks.

A method is a plain function on one weight matrix::

    method(weight, inputs=None, *, fmt=..., group_size=..., **options) -> QuantizedTensor

``weight`` is ``(out_features, in_features)``; ``inputs`` are calibration
activations ``(N, in_features)`` (any leading shape is flattened), required
when the entry's ``meta["needs_inputs"]`` is True. Options a method does not
name itself go to the format (:func:`~llmref.quant.quantize`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..._checks import check_int
from ..._registry import Registry
from ..formats import FORMATS
from ..primitives import check_bits, check_float_input

__all__ = [
    "METHODS",
    "check_group_size",
    "check_inputs",
    "check_weight",
    "even_rows",
    "int_format_bits",
]

METHODS = Registry("quantization method")
"""Registry of post-training quantization methods, name -> :class:`~llmref.RegistryEntry`.

``METHODS[name](weight, inputs, **options)`` returns a
:class:`~llmref.quant.QuantizedTensor`. ``meta`` holds ``target``
(``"weight"`` for methods on a weight matrix, ``"kv"`` for KV-cache
quantization, which takes keys and values instead), ``needs_inputs``
(whether calibration activations are required) and ``formats`` (the format
names it accepts, or ``None`` for any registered format).
"""

INT_FORMATS = ("int8", "int4", "int2", "int")


def check_weight(weight: object) -> torch.Tensor:
    """Validate a weight matrix and return it as float32.

    Parameters
    ----------
    weight : torch.Tensor
        Floating tensor of shape ``(out_features, in_features)``, finite.

    Returns
    -------
    torch.Tensor
        float32 copy-free view where possible, detached.

    Raises
    ------
    TypeError
        If ``weight`` is not a floating tensor.
    ValueError
        If it is not 2-D, is empty or holds NaN/Inf.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant.methods.base import check_weight
    >>> check_weight(torch.ones(2, 3, dtype=torch.bfloat16)).dtype
    torch.float32
    """
    w = check_float_input("weight", weight)
    if w.ndim != 2 or w.numel() == 0:
        raise ValueError(
            f"weight must be a non-empty 2-D (out_features, in_features) tensor, "
            f"got shape {tuple(w.shape)}"
        )
    return w.detach().to(torch.float32)


def check_inputs(inputs: object, in_features: int, *, required: bool = True) -> torch.Tensor | None:
    """Validate calibration activations and flatten them to ``(N, in_features)`` float32.

    Parameters
    ----------
    inputs : torch.Tensor or None
        Activations entering the layer, shape ``(..., in_features)``.
    in_features : int
        The weight's input size.
    required : bool, default True
        Whether ``None`` is an error.

    Returns
    -------
    torch.Tensor or None
        float32 ``(N, in_features)``, or None when not given and not required.

    Raises
    ------
    TypeError
        If ``inputs`` is not a floating tensor.
    ValueError
        If required and missing, if the last dimension is not ``in_features``,
        if there are no rows, or if it holds NaN/Inf.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant.methods.base import check_inputs
    >>> check_inputs(torch.zeros(2, 5, 8), 8).shape
    torch.Size([10, 8])
    """
    if inputs is None:
        if required:
            raise ValueError(
                "inputs (calibration activations of shape (N, in_features)) are required "
                "by this method"
            )
        return None
    x = check_float_input("inputs", inputs)
    if x.ndim < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"inputs must have last dimension in_features={in_features}, got shape {tuple(x.shape)}"
        )
    x = x.detach().reshape(-1, in_features).to(torch.float32)
    if x.shape[0] == 0:
        raise ValueError("inputs must hold at least one row of activations, got 0")
    return x


def int_format_bits(fmt: object, options: dict[str, Any]) -> int:
    """The bit width of an integer format, for methods that work on an integer grid.

    Parameters
    ----------
    fmt : str
        ``"int8"``, ``"int4"``, ``"int2"`` or ``"int"`` (then ``options["bits"]``,
        default 8, is used).
    options : dict
        The format options the method was given.

    Returns
    -------
    int
        Bits per code, 2 to 8.

    Raises
    ------
    ValueError
        If ``fmt`` is not an integer format or the bit width is out of range.

    Examples
    --------
    >>> from llmref.quant.methods.base import int_format_bits
    >>> int_format_bits("int4", {}), int_format_bits("int", {"bits": 3})
    (4, 3)
    """
    if fmt not in INT_FORMATS:
        known = ", ".join(repr(f) for f in FORMATS if f in INT_FORMATS)
        raise ValueError(f"fmt must be an integer format ({known}), got {fmt!r}")
    if fmt == "int":
        return check_bits(options.get("bits", 8))
    if "bits" in options:
        raise TypeError(f"format {fmt!r} has a fixed width; pass fmt='int' to choose bits")
    return int(str(fmt)[3:])


def check_group_size(group_size: object, in_features: int) -> int:
    """Columns per quantization group: ``in_features`` for None (per channel).

    Parameters
    ----------
    group_size : int or None
        Requested group size; must divide ``in_features``.
    in_features : int
        The weight's input size.

    Returns
    -------
    int

    Raises
    ------
    TypeError, ValueError
        If ``group_size`` is not a positive int or does not divide ``in_features``.

    Examples
    --------
    >>> from llmref.quant.methods.base import check_group_size
    >>> check_group_size(None, 576), check_group_size(64, 576)
    (576, 64)
    """
    if group_size is None:
        return in_features
    g = check_int("group_size", group_size, minimum=1)
    if in_features % g:
        raise ValueError(f"group_size must divide in_features={in_features}, got group_size={g}")
    return g


def even_rows(x: torch.Tensor, max_rows: int) -> torch.Tensor:
    """At most ``max_rows`` rows of ``x``, evenly spaced (a deterministic subsample).

    Parameters
    ----------
    x : torch.Tensor
        ``(N, ...)``.
    max_rows : int
        How many rows to keep at most.

    Returns
    -------
    torch.Tensor
        ``x`` itself when ``N <= max_rows``, else rows ``i * N // max_rows``.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant.methods.base import even_rows
    >>> even_rows(torch.arange(10), 4).tolist()
    [0, 2, 5, 7]
    """
    n = x.shape[0]
    if n <= max_rows:
        return x
    return x[torch.arange(max_rows, device=x.device) * n // max_rows]
