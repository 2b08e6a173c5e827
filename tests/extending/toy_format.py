"""Worked example: a new number format, ``toy_ternary`` (shown on docs/extending/quant.md).

Every weight becomes one of ``{-s, 0, +s}`` with one float32 scale ``s`` per group of
consecutive weights (the mean magnitude of the group, as ternary networks use). It
is a toy: it lives in the tests, and ``tests/conftest.py`` registers it by importing
this module, which is all it takes for the format contract suite to test it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmref.quant import FormatOptions, QuantizedTensor
from llmref.quant.packing import pack_codes, unpack_codes
from llmref.quant.primitives import check_float_input, group_length
from llmref.quant.registry import register_format


@dataclass(frozen=True, kw_only=True)
class TernaryOptions(FormatOptions):
    """``group_size``: weights per scale (default 32); validated when built."""

    group_size: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise TypeError(f"group_size must be an int, got {self.group_size!r}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")


def _dequantize_ternary(qt: QuantizedTensor) -> torch.Tensor:
    codes = unpack_codes(qt["codes"], 2, qt.numel).to(torch.float32) - 1  # 0, 1, 2 -> -1, 0, 1
    return codes.reshape(-1, int(qt.options["group_size"])) * qt["scale"].reshape(-1, 1)


@register_format(
    "toy_ternary",
    paper="nagel2021white",
    dequantize=_dequantize_ternary,
    values=lambda: torch.tensor([-1.0, 0.0, 1.0]),
    bits=2,
    granularity="group",
    group_size=32,
    kind="int",
    options=TernaryOptions,
)
def quantize_ternary(x: torch.Tensor, *, group_size: int = 32) -> QuantizedTensor:
    """Ternary quantization: ``round(x / s)`` clamped to -1..1, ``s`` the group's mean ``|x|``.

    Parameters
    ----------
    x : torch.Tensor
        Floating tensor, at least 1-D, finite.
    group_size : int, default 32
        Weights per scale; must divide the last dimension.

    Returns
    -------
    QuantizedTensor
        2-bit ``codes`` and a float32 ``scale`` per group.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize
    >>> quantize(torch.tensor([[0.1, -2.0, 1.0, 0.9]]), "toy_ternary", group_size=4).dequantize()
    tensor([[ 0., -1.,  1.,  1.]])
    """
    check_float_input("x", x)
    g = group_length(x.shape, group_size=group_size)
    xg = x.detach().to(torch.float32).reshape(-1, g)
    scale = xg.abs().mean(dim=1).clamp(min=torch.finfo(torch.float32).tiny)
    codes = torch.round(xg / scale[:, None]).clamp(-1, 1).to(torch.int32) + 1
    tensors = {"codes": pack_codes(codes.reshape(-1), 2), "scale": scale}
    return QuantizedTensor("toy_ternary", tuple(x.shape), x.dtype, tensors, {"group_size": g})
