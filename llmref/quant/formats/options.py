"""The options of each format family: frozen dataclasses that validate themselves.

:func:`~llmref.quant.quantize` and :class:`~llmref.quant.QuantConfig` build a
format's options class from keyword options, so a misspelt option or a bad value
fails at once, naming the option, before any tensor or layer is touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._checks import check_int
from ..primitives import (
    GRANULARITIES,
    ROUNDING_MODES,
    SCALE_CONVENTIONS,
    _check_choice,
    check_bits,
)
from ..registry import FormatOptions

__all__ = [
    "CodebookOptions",
    "FP4Options",
    "FP8Options",
    "GGMLOptions",
    "IntBitsOptions",
    "IntOptions",
    "MXOptions",
    "NVFP4Options",
]


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def _check_group(group_size: object, *, allow_default: bool = False) -> None:
    if group_size is None or (allow_default and group_size == "default"):
        return
    check_int("group_size", group_size, minimum=1)


@dataclass(frozen=True, kw_only=True)
class IntOptions(FormatOptions):
    """Options of the affine integer formats ``int8``, ``int4``, ``int2``.

    Parameters
    ----------
    group_size : int, None or "default", default "default"
        Elements per scale along the last dimension. ``"default"``: per
        channel at 8 bits, groups of :data:`~llmref.quant.registry.DEFAULT_GROUP_SIZE`
        (128) below (a row of at most 128 elements is one group); ``None``:
        per channel (one scale per row).
    granularity : {"tensor", "channel", "group"}, optional
        See :func:`llmref.quant.primitives.group_length`.
    symmetric : bool, default True
    scale_convention : {"qmax", "half_range"}, default "qmax"
    zero_point : {"int", "float"}, default "int"
    rounding : {"nearest_even", "half_away", "stochastic"}, default "nearest_even"
    generator : torch.Generator, optional
        Random source of stochastic rounding.

    Raises
    ------
    TypeError, ValueError
        Naming the option whose type or value is wrong.

    Examples
    --------
    >>> from llmref.quant.formats.options import IntOptions
    >>> IntOptions(rounding="up")
    Traceback (most recent call last):
    ...
    ValueError: rounding must be one of 'nearest_even', 'half_away', 'stochastic', got 'up'
    """

    group_size: int | str | None = "default"
    granularity: str | None = None
    symmetric: bool = True
    scale_convention: str = "qmax"
    zero_point: str = "int"
    rounding: str = "nearest_even"
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        _check_group(self.group_size, allow_default=True)
        if self.granularity is not None:
            _check_choice("granularity", self.granularity, GRANULARITIES)
            if isinstance(self.group_size, int) and self.granularity != "group":
                raise ValueError(
                    f"group_size={self.group_size} conflicts with "
                    f"granularity={self.granularity!r}; pass granularity='group' or leave "
                    "group_size out"
                )
        _check_bool("symmetric", self.symmetric)
        _check_choice("scale_convention", self.scale_convention, SCALE_CONVENTIONS)
        _check_choice("zero_point", self.zero_point, ("int", "float"))
        _check_choice("rounding", self.rounding, ROUNDING_MODES)
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(self.generator).__name__}"
            )


@dataclass(frozen=True, kw_only=True)
class IntBitsOptions(IntOptions):
    """Options of the ``int`` format: :class:`IntOptions` plus ``bits`` (2 to 8, default 8).

    Examples
    --------
    >>> from llmref.quant.formats.options import IntBitsOptions
    >>> IntBitsOptions(bits=3).bits
    3
    """

    bits: int = 8

    def __post_init__(self) -> None:
        check_bits(self.bits)
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class CodebookOptions(FormatOptions):
    """Options of bitsandbytes' 4-bit codebooks ``nf4`` and ``fp4``.

    Parameters
    ----------
    group_size : int, default 64
        Block size (bitsandbytes' ``blocksize``).
    double_quant : bool, default False
        Quantize the block absmaxes to 8 bits (QLoRA's double quantization).

    Examples
    --------
    >>> from llmref.quant.formats.options import CodebookOptions
    >>> CodebookOptions().group_size
    64
    """

    group_size: int = 64
    double_quant: bool = False

    def __post_init__(self) -> None:
        _check_group(self.group_size)
        _check_bool("double_quant", self.double_quant)


@dataclass(frozen=True, kw_only=True)
class FP4Options(FormatOptions):
    """Options of ``fp4_e2m1``: ``group_size`` (default 32) elements per float32 scale.

    Examples
    --------
    >>> from llmref.quant.formats.options import FP4Options
    >>> FP4Options(group_size=16).group_size
    16
    """

    group_size: int = 32

    def __post_init__(self) -> None:
        _check_group(self.group_size)


@dataclass(frozen=True, kw_only=True)
class FP8Options(FormatOptions):
    """Options of ``fp8_e4m3`` and ``fp8_e5m2``.

    Parameters
    ----------
    group_size : int, optional
        Elements per scale (implies ``granularity="group"``).
    granularity : {"tensor", "channel", "group"}, default "tensor"
    scaled : bool, default True
        Without a scale, values are cast directly (and saturate).

    Examples
    --------
    >>> from llmref.quant.formats.options import FP8Options
    >>> FP8Options().granularity
    'tensor'
    """

    group_size: int | None = None
    granularity: str | None = "tensor"
    scaled: bool = True

    def __post_init__(self) -> None:
        _check_group(self.group_size)
        if self.granularity is not None:
            _check_choice("granularity", self.granularity, GRANULARITIES)
        _check_bool("scaled", self.scaled)


@dataclass(frozen=True, kw_only=True)
class MXOptions(FormatOptions):
    """Options of the OCP MX formats: ``group_size`` (default 32, the OCP block).

    Examples
    --------
    >>> from llmref.quant.formats.options import MXOptions
    >>> MXOptions().group_size
    32
    """

    group_size: int = 32

    def __post_init__(self) -> None:
        _check_group(self.group_size)


@dataclass(frozen=True, kw_only=True)
class NVFP4Options(FormatOptions):
    """Options of ``nvfp4``: ``group_size`` (default 16), ``tensor_scale`` (default True).

    Examples
    --------
    >>> from llmref.quant.formats.options import NVFP4Options
    >>> NVFP4Options(tensor_scale=False).tensor_scale
    False
    """

    group_size: int = 16
    tensor_scale: bool = True

    def __post_init__(self) -> None:
        _check_group(self.group_size)
        _check_bool("tensor_scale", self.tensor_scale)


@dataclass(frozen=True, kw_only=True)
class GGMLOptions(FormatOptions):
    """Options of ggml's block formats: ``group_size`` (optional; the format's fixed block).

    Examples
    --------
    >>> from llmref.quant.formats.options import GGMLOptions
    >>> GGMLOptions().group_size is None
    True
    """

    group_size: int | None = None

    def __post_init__(self) -> None:
        _check_group(self.group_size)
