"""Argument checks shared by the sampling rules (messages name the argument, the
expectation and the value, as everywhere in llmref)."""

from __future__ import annotations

import math
import numbers

import torch

from .._checks import check_int, check_tensor


def check_logits(logits: object) -> torch.Tensor:
    """Scores ``(..., V)`` with ``V >= 1``, of a floating dtype."""
    x = check_tensor("logits", logits)
    if x.ndim == 0:
        raise ValueError("logits must have a vocabulary dimension (..., V), got a 0-D tensor")
    if not x.dtype.is_floating_point:
        raise TypeError(f"logits must be a floating tensor, got {x.dtype}")
    if x.shape[-1] == 0:
        raise ValueError(f"logits must have V >= 1 scores per row, got shape {tuple(x.shape)}")
    return x


def check_real(name: str, value: object) -> float:
    """A finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def check_interval(
    name: str, value: object, low: float, high: float, *, open_low: bool, open_high: bool
) -> float:
    """A real number in the interval ``(low|[low, high)|high]``."""
    value = check_real(name, value)
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    if not (above and below):
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def check_min_tokens_to_keep(value: object) -> int:
    """``min_tokens_to_keep``: an int >= 1."""
    return check_int("min_tokens_to_keep", value, minimum=1)


def check_filter_value(value: object) -> float:
    """``filter_value``: any real number or -inf (not NaN, not +inf)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"filter_value must be a float, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or value == math.inf:
        raise ValueError(f"filter_value must be a real number or -inf, got {value}")
    return value


def as_rows(logits: torch.Tensor) -> torch.Tensor:
    """``(..., V)`` as ``(N, V)``: the rules are written for rows, as transformers' are."""
    return logits.reshape(-1, logits.shape[-1])


def check_token_ids(name: str, ids: object, batch: int) -> torch.Tensor:
    """Integer ids ``(B, L)`` with ``B == batch`` and no negative id."""
    x = check_tensor(name, ids, ndim=2)
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
    if x.shape[0] != batch:
        raise ValueError(
            f"{name} must have one row per row of logits ({batch}), got shape {tuple(x.shape)}"
        )
    if x.numel() and int(x.min()) < 0:
        raise ValueError(f"{name} must hold token ids >= 0, got {int(x.min())}")
    return x.long()


def check_ids_mask(mask: object, ids: torch.Tensor) -> torch.Tensor | None:
    """``attention_mask`` of the shape of ``ids``: nonzero = a token that counts."""
    if mask is None:
        return None
    m = check_tensor("attention_mask", mask, ndim=2)
    if tuple(m.shape) != tuple(ids.shape):
        raise ValueError(
            f"attention_mask must have the shape of the ids {tuple(ids.shape)}, "
            f"got {tuple(m.shape)}"
        )
    return m.to(device=ids.device) != 0
