"""Worked example: a new weight method, ``toy_clip`` (shown on docs/extending/quant.md).

Round-to-nearest on a symmetric integer grid whose range is searched per group:
each group's ``max|w|`` is shrunk by the factor (of ``n_grid`` between 1 and
``min_ratio``) that gives the smallest squared weight error, the clipping search
of AWQ and llama.cpp without the activations. Registered by importing this module
(one line in ``tests/conftest.py``); the method contract suite then checks it is
no worse than RTN on held-out inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmref.quant import METHODS, MethodSpec, QuantizedTensor
from llmref.quant.formats import int_tensor_from_codes
from llmref.quant.methods.base import check_inputs, check_weight, int_format_bits, method_group_size


@dataclass(frozen=True, kw_only=True)
class ClipConfig:
    """The method's own options, validated when built.

    Parameters
    ----------
    n_grid : int, default 20
        Shrink factors tried (>= 1).
    min_ratio : float, default 0.5
        Smallest factor tried, in (0, 1].
    """

    n_grid: int = 20
    min_ratio: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.n_grid, bool) or not isinstance(self.n_grid, int) or self.n_grid < 1:
            raise ValueError(f"n_grid must be an int >= 1, got {self.n_grid!r}")
        if not 0 < self.min_ratio <= 1:
            raise ValueError(f"min_ratio must lie in (0, 1], got {self.min_ratio!r}")


def _check_format(fmt: str, options: dict) -> None:
    if options:
        raise TypeError(f"toy_clip takes no format options, got {', '.join(sorted(options))}")
    int_format_bits(fmt, {})


def toy_clip(
    weight: torch.Tensor,
    inputs: torch.Tensor | None = None,
    *,
    fmt: str = "int4",
    group_size: int | str | None = "default",
    n_grid: int = 20,
    min_ratio: float = 0.5,
) -> QuantizedTensor:
    """Symmetric RTN with each group's range shrunk to minimize the squared weight error.

    Parameters
    ----------
    weight : torch.Tensor
        ``(out_features, in_features)``.
    inputs : torch.Tensor, optional
        Ignored (checked if given): the search needs no calibration data.
    fmt : {"int8", "int4", "int2"}, default "int4"
    group_size : int, None or "default", default "default"
        As every llmref method (groups of 128 below 8 bits, per channel at 8).
    n_grid, min_ratio
        See :class:`ClipConfig`.

    Returns
    -------
    QuantizedTensor
        The storage :func:`~llmref.quant.quantize` builds for ``fmt``.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import rtn
    >>> w = torch.randn(16, 256, generator=torch.Generator().manual_seed(0))
    >>> err = lambda qt: float((qt.dequantize() - w).pow(2).mean())
    >>> err(toy_clip(w)) <= err(rtn(w))
    True
    """
    cfg = ClipConfig(n_grid=n_grid, min_ratio=min_ratio)
    w = check_weight(weight)
    check_inputs(inputs, w.shape[1], required=False)
    _check_format(fmt, {})
    bits = int_format_bits(fmt, {})
    g = method_group_size(fmt, group_size, {}, w.shape[1])
    qmax = 2 ** (bits - 1) - 1
    wg = w.reshape(-1, g)
    amax = wg.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny)
    best_err = torch.full_like(amax, float("inf"))
    best_scale = amax / qmax
    for i in range(cfg.n_grid):  # factor 1 first: ties keep plain RTN
        ratio = 1 - (1 - cfg.min_ratio) * i / max(cfg.n_grid - 1, 1)
        scale = amax * ratio / qmax
        q = torch.round(wg / scale[:, None]).clamp(-qmax, qmax)
        err = (q * scale[:, None] - wg).pow(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
    codes = torch.round(wg / best_scale[:, None]).clamp(-qmax, qmax).to(torch.int32)
    qt = int_tensor_from_codes(codes.reshape(w.shape), best_scale, bits=bits, fmt=fmt)
    return QuantizedTensor(qt.fmt, qt.shape, weight.dtype, qt.tensors, qt.options)


METHODS.add(
    MethodSpec(
        name="toy_clip",
        fn=toy_clip,
        paper="nagel2021white",
        reference="llmref.quant.rtn",
        applies_to="weight",
        needs_inputs=False,
        config=ClipConfig,
        formats=("int8", "int4", "int2"),
        check_format=_check_format,
    )
)
