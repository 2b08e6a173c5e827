"""The registry of number formats and its typed spec, below every format family.

:data:`FORMATS` lives here, not with the formats, so that
:class:`~llmref.quant.QuantizedTensor` can dequantize itself through it without
importing the families that register into it (which import the tensor type).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .._registry import Registry, Spec

if TYPE_CHECKING:
    from .tensor import QuantizedTensor

__all__ = [
    "DEFAULT_GROUP_SIZE",
    "FORMATS",
    "FormatOptions",
    "FormatSpec",
    "register_format",
    "resolve_group_size",
]

DEFAULT_GROUP_SIZE = 128
"""Weights per scale of the integer formats below 8 bits when ``group_size="default"``
(AutoGPTQ's, AWQ's and torchao's convention); 8-bit integers default to one scale
per output channel."""

GRANULARITY_KINDS = ("group", "channel", "tensor", "block")


@dataclass(frozen=True, kw_only=True)
class FormatOptions:
    """Base class of a format's options: a frozen dataclass that validates itself.

    Each format declares its options class (:attr:`FormatSpec.options`);
    :func:`~llmref.quant.quantize` and :class:`~llmref.quant.QuantConfig`
    build it from keyword options, so an unknown option or a bad value fails
    before any tensor is touched, with a message naming the option.

    Examples
    --------
    >>> from llmref.quant import FORMATS
    >>> FORMATS["int4"].options.from_kwargs("int4", {"group_size": 64}).group_size
    64
    >>> FORMATS["int4"].options.from_kwargs("int4", {"groupsize": 64})
    Traceback (most recent call last):
    ...
    TypeError: format 'int4' does not accept option(s) 'groupsize'; accepted: group_size, \
granularity, symmetric, scale_convention, zero_point, rounding, generator
    """

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_kwargs(cls, fmt: str, options: Mapping[str, Any]) -> FormatOptions:
        """Build (and so validate) the options of format ``fmt`` from a mapping.

        Raises
        ------
        TypeError
            If an option is not one of this format's (the message names it and
            lists the accepted ones) or has the wrong type.
        ValueError
            If an option's value is invalid.
        """
        accepted = cls.names()
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise TypeError(
                f"format {fmt!r} does not accept option(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(accepted) or 'none'}"
            )
        return cls(**options)

    def as_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of the format's quantize function."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class FormatSpec(Spec):
    """What a number format declares: its codec, storage facts and options.

    Parameters
    ----------
    name, paper, reference, third_party
        As in :class:`~llmref.Spec`.
    quantize : callable
        ``quantize(x, **options) -> QuantizedTensor``; options keyword-only, the
        fields of ``options``.
    dequantize : callable
        ``dequantize(qt) -> torch.Tensor``: float32 values of the codes, any shape
        with ``qt.numel`` elements (the tensor type reshapes and casts).
    values : callable
        ``values() -> torch.Tensor``: the element grid before scaling.
    bits : int or None
        Bits per code (``None``: chosen by the ``bits`` option).
    granularity : {"group", "channel", "tensor", "block"}
        What one scale covers by default (``"block"``: a fixed block the
        format's storage is built around, as ggml's).
    group_size : int or None
        The default group size (``None`` for per-channel or per-tensor
        defaults; the integer formats below 8 bits use
        :data:`~llmref.quant.registry.DEFAULT_GROUP_SIZE`).
    kind : {"int", "codebook", "float", "mx", "ggml"}
        The family.
    options : type
        The :class:`FormatOptions` subclass of this format's options.

    Examples
    --------
    >>> from llmref.quant import FORMATS
    >>> spec = FORMATS["nf4"]
    >>> spec.bits, spec.granularity, spec.group_size, spec.kind
    (4, 'group', 64, 'codebook')
    """

    primary: ClassVar[str | None] = "quantize"

    quantize: Callable[..., QuantizedTensor]
    dequantize: Callable[[QuantizedTensor], torch.Tensor]
    values: Callable[[], torch.Tensor]
    bits: int | None
    granularity: str
    group_size: int | None
    kind: str
    options: type[FormatOptions]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.granularity not in GRANULARITY_KINDS:
            raise ValueError(
                f"FormatSpec {self.name!r}: granularity must be one of "
                f"{', '.join(map(repr, GRANULARITY_KINDS))}, got {self.granularity!r}"
            )
        if not (isinstance(self.options, type) and issubclass(self.options, FormatOptions)):
            raise TypeError(
                f"FormatSpec {self.name!r}: options must be a FormatOptions subclass, "
                f"got {self.options!r}"
            )

    def __call__(self, x: torch.Tensor, **options: Any) -> QuantizedTensor:
        return self.quantize(x, **options)

    @property
    def fn(self) -> Callable[..., QuantizedTensor]:
        """The quantize function (the name registry entries of functions use)."""
        return self.quantize

    @property
    def meta(self) -> dict[str, Any]:
        """Deprecated: the typed fields as the untyped dict they replace."""
        warnings.warn(
            "FORMATS[name].meta is deprecated; read the FormatSpec fields (dequantize, values, "
            "bits, group_size, granularity, kind, options)",
            DeprecationWarning,
            stacklevel=2,
        )
        return {
            "dequantize": self.dequantize,
            "values": self.values,
            "bits": self.bits,
            "group_size": self.group_size,
            "kind": self.kind,
        }


FORMATS: Registry[FormatSpec] = Registry("quantization format", FormatSpec)
"""Registry of number formats, name -> :class:`~llmref.quant.FormatSpec`.

``FORMATS[name].quantize(x, **options)`` returns a
:class:`~llmref.quant.QuantizedTensor`; the spec declares its ``dequantize``,
``values``, ``bits``, default ``granularity`` and ``group_size``, ``kind`` and
``options`` class.
"""


def register_format(
    name: str, **fields_: Any
) -> Callable[[Callable[..., QuantizedTensor]], Callable[..., QuantizedTensor]]:
    """Decorator: register a quantize function as ``FormatSpec(name=name, quantize=fn, **fields_)``.

    The function is returned unchanged.

    Examples
    --------
    >>> from llmref.quant.registry import FORMATS, register_format
    >>> "int4" in FORMATS and callable(register_format)
    True
    """

    def decorator(fn: Callable[..., QuantizedTensor]) -> Callable[..., QuantizedTensor]:
        FORMATS.add(FormatSpec(name=name, quantize=fn, **fields_))
        return fn

    return decorator


def resolve_group_size(group_size: object, bits: int, last: int) -> int | None:
    """The group size ``group_size="default"`` stands for in an integer format of ``bits`` bits.

    ``None`` (per channel) at 8 bits and for rows of at most
    :data:`DEFAULT_GROUP_SIZE` elements, else :data:`DEFAULT_GROUP_SIZE`; any
    other value is returned as given.

    Raises
    ------
    ValueError
        If the default applies and :data:`DEFAULT_GROUP_SIZE` does not divide
        ``last`` (the message names a group size that does): never a silent
        change of granularity.

    Examples
    --------
    >>> from llmref.quant.registry import resolve_group_size
    >>> resolve_group_size("default", 4, 512), resolve_group_size("default", 8, 576)
    (128, None)
    >>> resolve_group_size("default", 4, 64), resolve_group_size(32, 4, 64)
    (None, 32)
    """
    if group_size != "default":
        return group_size  # type: ignore[return-value]
    if bits >= 8 or last <= DEFAULT_GROUP_SIZE:
        return None
    if last % DEFAULT_GROUP_SIZE:
        raise ValueError(
            f"group_size must divide the last dimension {last}: the default below 8 bits is "
            f"groups of {DEFAULT_GROUP_SIZE}, which does not; pass a group_size that divides "
            f"{last} (e.g. {math.gcd(last, DEFAULT_GROUP_SIZE)}) or group_size=None (per channel)"
        )
    return DEFAULT_GROUP_SIZE
