"""KIVI: keys quantized per channel, values per token (KV-cache quantization)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..._checks import check_int
from ..formats import int_tensor_from_codes
from ..primitives import check_bits, check_float_input, choose_qparams, quantize_affine
from ..tensor import QuantizedTensor
from .base import METHODS, MethodSpec

__all__ = ["KIVIConfig", "QuantizedKV", "kivi", "kivi_dequantize"]


@dataclass(frozen=True, kw_only=True)
class KIVIConfig:
    """KIVI's options (see :func:`~llmref.quant.kivi`), validated at construction.

    Parameters
    ----------
    bits : int, default 2
    group_size : int, default 32
    value_group_size : int, optional

    Examples
    --------
    >>> from llmref.quant.methods.kivi import KIVIConfig
    >>> KIVIConfig(bits=1)
    Traceback (most recent call last):
    ...
    ValueError: bits must be between 2 and 8, got 1
    """

    bits: int = 2
    group_size: int = 32
    value_group_size: int | None = None

    def __post_init__(self) -> None:
        check_bits(self.bits)
        check_int("group_size", self.group_size, minimum=1)
        if self.value_group_size is not None:
            check_int("value_group_size", self.value_group_size, minimum=1)


class QuantizedKV(NamedTuple):
    """Quantized keys and values, from :func:`kivi`.

    Parameters
    ----------
    keys : QuantizedTensor
        Keys in KIVI's per-channel layout: shape ``(B, H, T // G, D, G)``
        (each run of ``G`` consecutive tokens of one channel is a group),
        asymmetric with a float offset; ``options["kivi"] == "key"``.
    values : QuantizedTensor
        Values per token: shape ``(B, H, T, D // g, g)`` (``g`` channels of one
        token per group, ``g = D`` by default); ``options["kivi"] == "value"``.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import kivi
    >>> kv = kivi(torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4), bits=2, group_size=8)
    >>> kv.keys.shape, kv.values.shape
    ((1, 2, 1, 4, 8), (1, 2, 8, 1, 4))
    """

    keys: QuantizedTensor
    values: QuantizedTensor


def _quantize_groups(grouped: torch.Tensor, bits: int, dtype: torch.dtype) -> QuantizedTensor:
    """Asymmetric min-max with a float offset over the last dimension (one group per row)."""
    x = grouped.to(torch.float32)
    p = choose_qparams(x, bits=bits, symmetric=False, zero_point="float", group_size=x.shape[-1])
    codes = quantize_affine(x, p.scale, p.zero_point, bits=bits)
    return int_tensor_from_codes(codes, p.scale, p.zero_point, bits=bits, dtype=dtype)


def _check_kv(name: str, x: object) -> torch.Tensor:
    t = check_float_input(name, x)
    if t.ndim != 4:
        raise ValueError(f"{name} must be (B, H, T, D), got shape {tuple(t.shape)}")
    return t


def kivi(
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    bits: int = 2,
    group_size: int = 32,
    value_group_size: int | None = None,
) -> QuantizedKV:
    r"""Quantize keys per channel and values per token, KIVI's asymmetric scheme.

    Unlike the weight methods in :data:`~llmref.quant.METHODS` (``applies_to ==
    "weight"``), this one (``applies_to == "kv"``) takes attention keys and
    values, not a weight matrix and calibration inputs.

    Parameters
    ----------
    keys : torch.Tensor
        ``(B, H, T, D)``, floating point; ``T`` must be a multiple of
        ``group_size`` (a KV cache keeps the remainder in full precision).
    values : torch.Tensor
        ``(B, H, T_v, D_v)``, floating point (any ``T_v``).
    bits : int, default 2
        Bits per number, 2 to 8.
    group_size : int, default 32
        Tokens per key group: each channel of each run of ``group_size``
        tokens gets one scale and one offset.
    value_group_size : int, optional
        Channels per value group (must divide ``D_v``); default ``D_v``: one
        scale and offset per token, as :class:`~llmref.cache.QuantizedCache`.

    Returns
    -------
    QuantizedKV
        ``keys`` and ``values`` as ``int2``/``int4``/``int8``/``int``
        QuantizedTensors (codes packed ``bits`` per number, float32 ``scale``
        and ``offset`` per group) in the grouped layouts described there; use
        :func:`~llmref.quant.kivi_dequantize` to get ``(B, H, T, D)`` back.

    Raises
    ------
    TypeError
        If ``keys``/``values`` are not floating tensors or an option is not
        an int.
    ValueError
        If they are not 4-D or not finite, ``bits`` is outside 2..8,
        ``group_size`` does not divide ``T`` or ``value_group_size`` does not
        divide ``D_v``.

    Notes
    -----
    Per group :math:`g` with range :math:`[m_g, M_g]`, the step is
    :math:`\Delta_g = (M_g - m_g)/(2^b - 1)`, the code
    :math:`q = \operatorname{round}((x - m_g)/\Delta_g)` and the value
    :math:`\Delta_g q + m_g`, so the error is at most :math:`\Delta_g / 2`.
    Keys have a few channels of large magnitude (fixed across tokens), so a
    per-channel group keeps them from inflating every other channel's step;
    values have no such channels and the attention output mixes them per
    token, so they are grouped per token. On one chunk of
    ``group_size`` tokens this is bit-compatible with the storage of
    :class:`~llmref.cache.QuantizedCache` (codes, scales and offsets).

    References
    ----------
    :cite:t:`liu2024kivi`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import kivi, kivi_dequantize
    >>> g = torch.Generator().manual_seed(0)
    >>> k, v = torch.randn(1, 2, 64, 16, generator=g), torch.randn(1, 2, 64, 16, generator=g)
    >>> kv = kivi(k, v, bits=4, group_size=32)
    >>> k2, v2 = kivi_dequantize(kv)
    >>> k2.shape, bool((k2 - k).abs().max() < 0.5)
    (torch.Size([1, 2, 64, 16]), True)
    """
    k = _check_kv("keys", keys)
    v = _check_kv("values", values)
    cfg = KIVIConfig(bits=bits, group_size=group_size, value_group_size=value_group_size)
    bits, G = cfg.bits, cfg.group_size
    B, H, T, D = k.shape
    if T % G:
        raise ValueError(f"group_size must divide the number of key tokens T={T}, got {G}")
    Dv = v.shape[-1]
    gv = Dv if cfg.value_group_size is None else cfg.value_group_size
    if Dv % gv:
        raise ValueError(f"value_group_size must divide the value dimension {Dv}, got {gv}")
    k_grouped = k.reshape(B, H, T // G, G, D).transpose(-1, -2)  # (B, H, T/G, D, G)
    qk = _quantize_groups(k_grouped, bits, k.dtype)
    qv = _quantize_groups(v.reshape(*v.shape[:3], Dv // gv, gv), bits, v.dtype)
    qk.options["kivi"], qv.options["kivi"] = "key", "value"
    return QuantizedKV(qk, qv)


def kivi_dequantize(
    kv: QuantizedKV, *, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`~llmref.quant.kivi`: keys and values as ``(B, H, T, D)``.

    Parameters
    ----------
    kv : QuantizedKV
        From :func:`~llmref.quant.kivi` (or ``(keys, values)`` QuantizedTensors
        in its layouts).
    dtype : torch.dtype, optional
        Output dtype; default: the dtypes the keys and values had.

    Returns
    -------
    tuple of torch.Tensor
        ``(keys, values)``, each ``(B, H, T, D)``.

    Raises
    ------
    ValueError
        If the tensors are not in :func:`~llmref.quant.kivi`'s layouts.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import kivi, kivi_dequantize
    >>> k = torch.tensor([[[[0.0, 1.0], [3.0, -1.0]]]])  # (1, 1, 2, 2)
    >>> kivi_dequantize(kivi(k, k, bits=2, group_size=2))[0]
    tensor([[[[ 0.,  1.],
              [ 3., -1.]]]])
    """
    qk, qv = kv
    for name, qt, kind in (("keys", qk, "key"), ("values", qv, "value")):
        if not isinstance(qt, QuantizedTensor) or qt.options.get("kivi") != kind:
            raise ValueError(f"kv.{name} must be a QuantizedTensor from kivi(), got {qt!r}")
    B, H, n, D, G = qk.shape
    k = qk.dequantize(dtype).transpose(-1, -2).reshape(B, H, n * G, D)
    Bv, Hv, Tv, n_v, gv = qv.shape
    v = qv.dequantize(dtype).reshape(Bv, Hv, Tv, n_v * gv)
    return k, v


METHODS.add(
    MethodSpec(
        name="kivi",
        fn=kivi,
        paper="liu2024kivi",
        reference="llmref.cache.QuantizedCache",
        third_party="transformers.QuantizedCache (quanto/HQQ backends)",
        applies_to="kv",
        needs_inputs=False,
        config=KIVIConfig,
        inverse=kivi_dequantize,
    )
)
