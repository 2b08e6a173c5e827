"""Error metrics of a quantized approximation, and model sizes."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_tensor

__all__ = ["cosine_similarity", "max_abs_error", "model_size_bytes", "mse", "sqnr"]


def _pair(reference: object, approx: object) -> tuple[torch.Tensor, torch.Tensor]:
    check_tensor("reference", reference)
    check_tensor("approx", approx)
    assert isinstance(reference, torch.Tensor) and isinstance(approx, torch.Tensor)
    if reference.shape != approx.shape:
        raise ValueError(
            f"reference and approx must have the same shape, got {tuple(reference.shape)} "
            f"and {tuple(approx.shape)}"
        )
    if reference.numel() == 0:
        raise ValueError("reference and approx must be non-empty")
    return reference.detach().to(torch.float64), approx.detach().to(torch.float64)


def mse(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Mean squared error ``mean((reference - approx)^2)``, computed in float64.

    Parameters
    ----------
    reference : torch.Tensor
        The exact values.
    approx : torch.Tensor
        The approximation, same shape.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If the shapes differ or the tensors are empty.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import mse
    >>> mse(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]))
    0.125
    """
    r, a = _pair(reference, approx)
    return float(((r - a) ** 2).mean())


def max_abs_error(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Largest absolute difference ``max |reference - approx|``.

    Parameters
    ----------
    reference : torch.Tensor
        The exact values.
    approx : torch.Tensor
        The approximation, same shape.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If the shapes differ or the tensors are empty.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import max_abs_error
    >>> max_abs_error(torch.tensor([1.0, 2.0]), torch.tensor([0.75, 2.5]))
    0.5
    """
    r, a = _pair(reference, approx)
    return float((r - a).abs().max())


def sqnr(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(Σ x² / Σ (x - x̂)²)``.

    Parameters
    ----------
    reference : torch.Tensor
        The exact values (the signal).
    approx : torch.Tensor
        The approximation, same shape.

    Returns
    -------
    float
        ``inf`` when the approximation is exact; ``-inf`` when the signal is
        zero but the approximation is not.

    Raises
    ------
    ValueError
        If the shapes differ or the tensors are empty.

    Notes
    -----
    For a uniform quantizer with step :math:`\\Delta` the noise power is about
    :math:`\\Delta^2/12`, which gives the rule of thumb
    :math:`\\mathrm{SQNR} \\approx 6.02\\,b + c` dB for ``b`` bits.

    References
    ----------
    :cite:t:`widrow2008quantization`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import sqnr
    >>> x = torch.tensor([3.0, 4.0])
    >>> round(sqnr(x, x + torch.tensor([0.3, 0.4])), 4)  # noise is 1% of the power
    20.0
    """
    r, a = _pair(reference, approx)
    signal = float((r**2).sum())
    noise = float(((r - a) ** 2).sum())
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def cosine_similarity(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Cosine of the angle between the flattened tensors.

    Parameters
    ----------
    reference : torch.Tensor
        The exact values.
    approx : torch.Tensor
        The approximation, same shape.

    Returns
    -------
    float
        In ``[-1, 1]``; 1.0 when both are zero, 0.0 when exactly one is.

    Raises
    ------
    ValueError
        If the shapes differ or the tensors are empty.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import cosine_similarity
    >>> cosine_similarity(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))
    0.7071067811865475
    """
    r, a = _pair(reference, approx)
    nr, na = float(r.norm()), float(a.norm())
    if nr == 0 and na == 0:
        return 1.0
    if nr == 0 or na == 0:
        return 0.0
    return float((r.reshape(-1) @ a.reshape(-1)) / (nr * na))


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers, quantized storage included.

    Parameters
    ----------
    model : torch.nn.Module
        Any module; shared tensors are counted once.

    Returns
    -------
    int

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module``.

    Examples
    --------
    >>> from torch import nn
    >>> from llmref.quant import model_size_bytes, quantize_model
    >>> model = nn.Sequential(nn.Linear(256, 256, bias=False))
    >>> model_size_bytes(model)
    262144
    >>> _ = quantize_model(model, "int8")
    >>> model_size_bytes(model)  # int8 codes + one float32 scale per row
    66560
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        key = t.data_ptr() if t.numel() else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total
