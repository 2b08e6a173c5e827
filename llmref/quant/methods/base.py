"""What every post-training quantization method shares: its spec, registry and input checks.

A weight method is a plain function on one weight matrix::

    method(weight, inputs=None, *, fmt=..., group_size="default", **options) -> QuantizedTensor

``weight`` is ``(out_features, in_features)``; ``inputs`` are calibration
activations ``(N, in_features)`` (any leading shape is flattened), required
when its spec's ``needs_inputs`` is True. ``group_size="default"`` is the
format's default (integer formats: per channel at 8 bits, groups of 128 below);
``None`` is one scale per output channel. The method's own options are the
fields of its frozen ``config`` class; options it does not name itself go to
the format (:func:`~llmref.quant.quantize`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from ..._checks import check_int
from ..._registry import Registry, Spec
from ..formats import FORMATS
from ..primitives import check_bits, check_float_input
from ..registry import resolve_group_size

__all__ = [
    "APPLIES_TO",
    "METHODS",
    "MethodSpec",
    "check_group_size",
    "check_inputs",
    "check_per_channel",
    "check_weight",
    "even_rows",
    "int8_only",
    "int_format_bits",
    "method_group_size",
]

APPLIES_TO = ("weight", "kv")
"""What a method quantizes: a linear layer's weight matrix, or attention keys and values."""


@dataclass(frozen=True, kw_only=True)
class MethodSpec(Spec):
    """What a post-training quantization method declares.

    Parameters
    ----------
    name, paper, reference, third_party
        As in :class:`~llmref.Spec`.
    fn : callable
        The method: ``fn(weight, inputs=None, *, fmt, group_size, **options)``
        for weight methods, ``fn(keys, values, **options)`` for KV methods.
    applies_to : {"weight", "kv"}
        What it quantizes.
    needs_inputs : bool
        Whether calibration activations are required.
    config : type
        The frozen dataclass of the method's own options (``GPTQConfig`` ...):
        building it validates them, naming the bad one.
    formats : tuple of str or None
        The format names it accepts (``None``: any registered format).
    check_format : callable or None
        ``check_format(fmt, format_options)`` raises ``TypeError``/``ValueError``
        naming a format option the method cannot honour (GPTQ refuses
        stochastic rounding); ``None``: every option of the format.
    takes_hessian : bool
        Whether ``fn`` accepts a precomputed ``hessian`` instead of ``inputs``
        (then :func:`~llmref.quant.quantize_model` accumulates it over all
        calibration rows).
    inverse : callable or None
        KV methods: ``inverse(result) -> (keys, values)``, the dequantized
        keys and values (weight methods return a
        :class:`~llmref.quant.QuantizedTensor`, which dequantizes itself).

    Examples
    --------
    >>> from llmref.quant import METHODS
    >>> spec = METHODS["gptq"]
    >>> spec.applies_to, spec.needs_inputs, spec.takes_hessian, spec.config.__name__
    ('weight', True, True, 'GPTQConfig')
    """

    primary: ClassVar[str | None] = "fn"

    fn: Callable[..., Any]
    applies_to: str
    needs_inputs: bool
    config: type
    formats: tuple[str, ...] | None = None
    check_format: Callable[[str, Mapping[str, Any]], None] | None = None
    takes_hessian: bool = False
    inverse: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.applies_to == "kv" and self.inverse is None:
            raise ValueError(f"MethodSpec {self.name!r}: a KV method must declare its inverse")
        if self.applies_to not in APPLIES_TO:
            raise ValueError(
                f"MethodSpec {self.name!r}: applies_to must be one of "
                f"{', '.join(map(repr, APPLIES_TO))}, got {self.applies_to!r}"
            )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def make_config(self, options: Mapping[str, Any]) -> Any:
        """Build (and so validate) the method's config from keyword options.

        Raises
        ------
        TypeError
            If an option is not one of the config's fields (the message names
            it and lists the accepted ones) or has the wrong type.
        ValueError
            If an option's value is invalid.
        """
        accepted = [f.name for f in fields(self.config)]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise TypeError(
                f"method {self.name!r} does not accept option(s) "
                f"{', '.join(map(repr, unknown))}; accepted: {', '.join(accepted) or 'none'}"
            )
        return self.config(**options)

    @property
    def meta(self) -> dict[str, Any]:
        """Deprecated: the typed fields as the untyped dict they replace."""
        warnings.warn(
            "METHODS[name].meta is deprecated; read the MethodSpec fields (applies_to, "
            "needs_inputs, formats, config)",
            DeprecationWarning,
            stacklevel=2,
        )
        return {
            "target": self.applies_to,
            "needs_inputs": self.needs_inputs,
            "formats": self.formats,
        }


METHODS: Registry[MethodSpec] = Registry("quantization method", MethodSpec)
"""Registry of post-training quantization methods, name -> :class:`~llmref.quant.MethodSpec`.

``METHODS[name](weight, inputs, **options)`` returns a
:class:`~llmref.quant.QuantizedTensor` (``applies_to == "weight"``); KV methods
(``applies_to == "kv"``) take keys and values instead.
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


def int8_only(method: str) -> Callable[[str, Mapping[str, Any]], None]:
    """The ``check_format`` of a W8A8 method: ``fmt="int8"``, no further format options.

    Examples
    --------
    >>> from llmref.quant.methods.base import int8_only
    >>> int8_only("smoothquant")("int4", {})
    Traceback (most recent call last):
    ...
    ValueError: fmt must be 'int8' for smoothquant, got 'int4'
    """

    def check(fmt: str, options: Mapping[str, Any]) -> None:
        if fmt != "int8":
            raise ValueError(f"fmt must be 'int8' for {method}, got {fmt!r}")
        if options:
            raise TypeError(
                f"{method} takes no format options (its int8 grid is fixed: symmetric, "
                f"per channel), got {', '.join(map(repr, sorted(options)))}"
            )

    return check


def check_per_channel(method: str, group_size: object, in_features: int) -> None:
    """Refuse a group size other than per channel (``None``, ``"default"`` or ``in_features``).

    Examples
    --------
    >>> from llmref.quant.methods.base import check_per_channel
    >>> check_per_channel("llm_int8", 64, 128)
    Traceback (most recent call last):
    ...
    ValueError: group_size must be None (one scale per output channel) for llm_int8, got 64
    """
    if group_size not in (None, "default", in_features):
        raise ValueError(
            f"group_size must be None (one scale per output channel) for {method}, "
            f"got {group_size!r}"
        )


def method_group_size(
    fmt: str, group_size: object, options: Mapping[str, Any], in_features: int
) -> int:
    """Columns per group an integer-format method uses: ``"default"`` resolved, checked.

    Parameters
    ----------
    fmt : str
        The integer format.
    group_size : int, None or "default"
        As the method was given it.
    options : mapping
        The format options (``bits`` for ``fmt="int"``).
    in_features : int
        The weight's input size.

    Returns
    -------
    int
        ``in_features`` for per channel, else the group size.

    Examples
    --------
    >>> from llmref.quant.methods.base import method_group_size
    >>> method_group_size("int4", "default", {}, 512), method_group_size("int8", "default", {}, 576)
    (128, 576)
    """
    bits = int_format_bits(fmt, dict(options))
    return check_group_size(resolve_group_size(group_size, bits, in_features), in_features)


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
