"""Input validation shared by every public function.

Each check raises a ``TypeError`` (wrong kind of object or dtype) or a
``ValueError`` (wrong value or shape) whose message names the argument, what
was expected and what was given, so users never see a bare shape error from
deep inside torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import NamedTuple

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a computation on ``dtype`` inputs runs in: float32 for 16-bit floats."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_tensor(name: str, x: object, *, ndim: int | None = None) -> torch.Tensor:
    """Check that ``x`` is a tensor (with ``ndim`` dimensions if given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got {x.ndim}-D of shape {tuple(x.shape)}")
    return x


def check_model_input(name: str, x: object, d_model: int) -> torch.Tensor:
    """Check a module input of shape ``(B, T, d_model)``."""
    x = check_tensor(name, x, ndim=3)
    if x.shape[-1] != d_model:
        raise ValueError(f"{name} must have last dim d_model={d_model}, got shape {tuple(x.shape)}")
    return x


def check_float_dtype(name: str, x: torch.Tensor) -> None:
    """Check that ``x`` holds one of the floating dtypes llmref supports."""
    if x.dtype not in FLOAT_DTYPES:
        allowed = ", ".join(str(d) for d in FLOAT_DTYPES)
        raise TypeError(f"{name} must have a floating dtype ({allowed}), got {x.dtype}")


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """Check that ``value`` is an integer (not a bool), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class HeadConfig(NamedTuple):
    """Validated head layout of an attention module."""

    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int


def check_token_set(name: str, value: object, vocab: int) -> list[int]:
    """An id or iterable of ids (e.g. ``eos_token_id``) as a list, each in ``[0, vocab)``;
    ``None`` gives ``[]``."""
    if value is None:
        return []
    ids = list(value) if isinstance(value, Iterable) else [value]
    out = []
    for t in ids:
        t = check_int(name, t, minimum=0)
        if t >= vocab:
            raise ValueError(f"{name} must be < vocab_size={vocab}, got {t}")
        out.append(t)
    return out


def check_heads(
    d_model: object, n_heads: object, n_kv_heads: object = None, head_dim: object = None
) -> HeadConfig:
    """Check a module's head layout; ``n_kv_heads`` defaults to ``n_heads`` and
    ``head_dim`` to ``d_model // n_heads`` (which must then divide evenly)."""
    d = check_int("d_model", d_model, minimum=1)
    h = check_int("n_heads", n_heads, minimum=1)
    h_kv = h if n_kv_heads is None else check_int("n_kv_heads", n_kv_heads, minimum=1)
    if h % h_kv != 0:
        raise ValueError(
            f"n_heads must be a multiple of n_kv_heads, got n_heads={h} and n_kv_heads={h_kv}"
        )
    if head_dim is None:
        if d % h != 0:
            raise ValueError(
                f"d_model must be divisible by n_heads when head_dim is not given, "
                f"got d_model={d} and n_heads={h}"
            )
        head_dim = d // h
    return HeadConfig(d, h, h_kv, check_int("head_dim", head_dim, minimum=1))


def check_positive_float(name: str, value: object) -> float:
    """Check that ``value`` is a real number, finite and > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


class AttentionShapes(NamedTuple):
    """The sizes of one attention call: ``q`` is (B, H, T, D), ``k`` (B, H_kv, S, D)."""

    batch: int
    heads: int
    kv_heads: int
    query_len: int
    key_len: int
    head_dim: int
    value_dim: int


def check_qkv(q: object, k: object, v: object) -> AttentionShapes:
    """Validate queries, keys and values in the (B, H, T, D) layout.

    Keys and values may have fewer heads than queries (GQA/MQA) as long as
    the query heads divide evenly into groups; the value head dim may differ
    from the query/key head dim.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x, ndim=4)
        check_float_dtype(name, x)  # type: ignore[arg-type]
    assert isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor)
    assert isinstance(v, torch.Tensor)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"q, k and v must be on one device, got q {q.device}, k {k.device}, v {v.device}"
        )
    B, H, T, D = q.shape
    if D == 0:
        raise ValueError(f"q head dim (dim 3) must be >= 1, got shape {tuple(q.shape)}")
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(
            f"batch size (dim 0) must match: q has {B}, k has {k.shape[0]}, v has {v.shape[0]}"
        )
    if k.shape[3] != D:
        raise ValueError(f"k head dim (dim 3) must equal q head dim {D}, got {k.shape[3]}")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(
            "k and v must have the same heads and length (dims 1, 2), got k "
            f"{tuple(k.shape)} and v {tuple(v.shape)}"
        )
    H_kv, S = k.shape[1], k.shape[2]
    if H_kv == 0 or H % H_kv != 0:
        raise ValueError(
            f"query heads must be a multiple of key/value heads (H % H_kv == 0), "
            f"got H={H} and H_kv={H_kv}"
        )
    return AttentionShapes(B, H, H_kv, T, S, D, v.shape[3])


def check_mask(mask: object, shapes: AttentionShapes, device: torch.device) -> torch.Tensor:
    """Validate a boolean mask (True = may attend) that broadcasts to (B, H, T, S)."""
    check_tensor("mask", mask)
    assert isinstance(mask, torch.Tensor)
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must be a torch.bool tensor (True = may attend), got {mask.dtype}; "
            "convert an additive float mask with `mask = bias == 0`"
        )
    full = (shapes.batch, shapes.heads, shapes.query_len, shapes.key_len)
    if not _broadcasts(tuple(mask.shape), full):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to (B, H, T, S) = {full}"
        )
    if mask.device != device:
        raise ValueError(f"mask must be on the same device as q ({device}), got {mask.device}")
    return mask


def resolve_scale(scale: object, head_dim: int) -> float:
    """Return ``scale``, or ``1/sqrt(head_dim)`` when it is None."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    return check_positive_float("scale", scale)


def _broadcasts(shape: tuple[int, ...], full: tuple[int, ...]) -> bool:
    return len(shape) <= len(full) and all(
        m in (1, f) for m, f in zip(reversed(shape), reversed(full), strict=False)
    )


def check_bias(bias: object, shapes: AttentionShapes, device: torch.device) -> torch.Tensor:
    """Validate an additive float bias that broadcasts to (B, H, T, S)."""
    check_tensor("bias", bias)
    assert isinstance(bias, torch.Tensor)
    check_float_dtype("bias", bias)
    full = (shapes.batch, shapes.heads, shapes.query_len, shapes.key_len)
    if not _broadcasts(tuple(bias.shape), full):
        raise ValueError(
            f"bias of shape {tuple(bias.shape)} does not broadcast to (B, H, T, S) = {full}"
        )
    if bias.device != device:
        raise ValueError(f"bias must be on the same device as q ({device}), got {bias.device}")
    return bias


def check_sinks(sinks: object, shapes: AttentionShapes, device: torch.device) -> torch.Tensor:
    """Validate per-head attention-sink logits of shape (H,)."""
    check_tensor("sinks", sinks)
    assert isinstance(sinks, torch.Tensor)
    check_float_dtype("sinks", sinks)
    if tuple(sinks.shape) != (shapes.heads,):
        raise ValueError(
            f"sinks must have shape (H,) = ({shapes.heads},), got {tuple(sinks.shape)}"
        )
    if sinks.device != device:
        raise ValueError(f"sinks must be on the same device as q ({device}), got {sinks.device}")
    return sinks
