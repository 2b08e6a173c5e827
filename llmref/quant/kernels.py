"""Matmul kernels for weight-quantized linear layers: y = x W^T + b.

The **reference** kernel dequantizes the whole weight and calls
:func:`torch.nn.functional.linear`; it works for every format and is what
each fast kernel is tested against. The fast kernels use PyTorch's packed
low-bit CPU kernels:

``int4_tinygemm``
    ``torch._weight_int4pack_mm_for_cpu``: 4-bit weights with one scale and
    one zero per group (group size 32-256), activations in their own dtype.
    Exact up to float rounding: the kernel computes
    ``(q - 8) * scale + zero`` per group, with ``zero`` folded from llmref's
    zero point or offset.
``int4_tinygemm_bf16``
    The same kernel fed bfloat16 activations, scales and zeros (the fastest
    configuration on CPUs with AVX512-BF16/AMX). Activations are rounded to
    bfloat16 (relative error up to 2^-9) and the output comes back in the
    input dtype.
``int8_dynamic``
    Per-channel int8 weights times dynamically quantized int8 activations
    (symmetric, one scale per row of ``x``, ``amax/127``) with
    ``torch._int_mm`` (int8 x int8 -> int32, VNNI/AMX through oneDNN), then
    rescaled: ``y = (x_q W_q^T) s_x s_w``. The activation rounding adds a
    relative error of about ``1/254`` per row (SmoothQuant-free W8A8).
``int8_weight``
    ``torch._weight_int8pack_mm``: int8 weights, float activations; exact.
``int8_weight_bf16``
    The same kernel fed bfloat16 activations and scales (its fast path on
    CPUs with AVX512-BF16/AMX); activations, scales and output are rounded
    to bfloat16.

Every kernel returns a 2-D ``(M, N)`` result; :class:`~llmref.quant.QuantLinear`
reshapes and adds the bias.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .formats import dequantize, int_codes
from .tensor import QuantizedTensor

__all__ = ["KERNELS", "Kernel", "select_kernel"]

State = dict[str, Any]


@dataclass(frozen=True)
class Kernel:
    """A matmul implementation for quantized weights.

    Parameters
    ----------
    name : str
        Name used by ``QuantLinear(backend=...)``.
    supports : callable
        ``supports(qweight, device) -> bool``.
    prepare : callable
        ``prepare(qweight) -> state``: repack the weight once (cached by the
        layer).
    run : callable
        ``run(x2d, state) -> y2d`` for ``x2d`` of shape ``(M, K)``.
    exact : bool
        Whether the result equals the reference up to float summation order
        (``False`` for kernels that round activations).

    Examples
    --------
    >>> from llmref.quant.kernels import KERNELS
    >>> sorted(KERNELS)  # doctest: +NORMALIZE_WHITESPACE
    ['int4_tinygemm', 'int4_tinygemm_bf16', 'int8_dynamic', 'int8_weight',
     'int8_weight_bf16', 'reference']
    """

    name: str
    supports: Callable[[QuantizedTensor, torch.device], bool]
    prepare: Callable[[QuantizedTensor], State]
    run: Callable[[torch.Tensor, State], torch.Tensor]
    exact: bool = True


def _is_2d(qt: QuantizedTensor) -> bool:
    return len(qt.shape) == 2


# ------------------------------------------------------------ reference
def _ref_prepare(qt: QuantizedTensor) -> State:
    return {"qweight": qt}


def _ref_run(x: torch.Tensor, st: State) -> torch.Tensor:
    return F.linear(x, dequantize(st["qweight"], dtype=x.dtype))


# --------------------------------------------------------------- int4
_TINYGEMM_GROUPS = (32, 64, 128, 256)


def _int4_supports(qt: QuantizedTensor, device: torch.device) -> bool:
    o = qt.options
    return (
        device.type == "cpu"
        and hasattr(torch, "_weight_int4pack_mm_for_cpu")
        and _is_2d(qt)
        and qt.fmt in ("int4", "int")
        and o.get("bits") == 4
        and int(o.get("group_size", 0)) in _TINYGEMM_GROUPS
        and qt.shape[1] % int(o["group_size"]) == 0
    )


def _int4_prepare(qt: QuantizedTensor) -> State:
    N, K = qt.shape
    g = int(qt.options["group_size"])
    q = int_codes(qt)
    scale = qt["scale"].to(torch.float32).reshape(N, K // g)
    if qt.options["symmetric"]:
        codes, zero = q + 8, torch.zeros_like(scale)
    elif "zero_point" in qt.tensors:
        codes = q
        zero = (8 - qt["zero_point"].to(torch.float32).reshape(N, K // g)) * scale
    else:
        codes = q
        zero = qt["offset"].to(torch.float32).reshape(N, K // g) + 8 * scale
    packed = torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
    sz = torch.stack([scale.t(), zero.t()], dim=-1).contiguous()  # (K/g, N, 2)
    return {"packed": packed, "group_size": g, "scales_zeros": sz, "cache": {}}


def _int4_run_in(dtype: torch.dtype | None) -> Callable[[torch.Tensor, State], torch.Tensor]:
    def run(x: torch.Tensor, st: State) -> torch.Tensor:
        compute = dtype or x.dtype
        sz = st["cache"].get(compute)
        if sz is None:
            sz = st["cache"][compute] = st["scales_zeros"].to(compute)
        y = torch._weight_int4pack_mm_for_cpu(x.to(compute), st["packed"], st["group_size"], sz)
        return y.to(x.dtype)

    return run


# --------------------------------------------------------------- int8
def _int8_supports(qt: QuantizedTensor, device: torch.device) -> bool:
    o = qt.options
    return (
        device.type == "cpu"
        and _is_2d(qt)
        and qt.fmt in ("int8", "int")
        and o.get("bits") == 8
        and o.get("symmetric") is True
        and int(o.get("group_size", 0)) == qt.shape[1]
    )


def _int8_prepare(qt: QuantizedTensor) -> State:
    w = qt["codes"].reshape(qt.shape).contiguous()
    return {"w": w, "wt": w.t(), "scale": qt["scale"].to(torch.float32), "cache": {}}


def _int8_dynamic_run(x: torch.Tensor, st: State) -> torch.Tensor:
    xf = x.to(torch.float32)
    sx = (xf.abs().amax(dim=1, keepdim=True) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    xq = torch.round(xf * (1.0 / sx)).clamp(-127, 127).to(torch.int8)
    acc = torch._int_mm(xq, st["wt"])
    return (acc.to(torch.float32) * sx * st["scale"]).to(x.dtype)


def _int8_dynamic_supports(qt: QuantizedTensor, device: torch.device) -> bool:
    return _int8_supports(qt, device) and hasattr(torch, "_int_mm")


def _int8_weight_run(x: torch.Tensor, st: State) -> torch.Tensor:
    scale = st["cache"].get(x.dtype)
    if scale is None:
        scale = st["cache"][x.dtype] = st["scale"].to(x.dtype)
    return torch._weight_int8pack_mm(x, st["w"], scale)


def _int8_weight_bf16_run(x: torch.Tensor, st: State) -> torch.Tensor:
    scale = st["cache"].get(torch.bfloat16)
    if scale is None:
        scale = st["cache"][torch.bfloat16] = st["scale"].to(torch.bfloat16)
    return torch._weight_int8pack_mm(x.to(torch.bfloat16), st["w"], scale).to(x.dtype)


def _int8_weight_supports(qt: QuantizedTensor, device: torch.device) -> bool:
    return _int8_supports(qt, device) and hasattr(torch, "_weight_int8pack_mm")


KERNELS: dict[str, Kernel] = {
    k.name: k
    for k in (
        Kernel("reference", lambda qt, d: True, _ref_prepare, _ref_run),
        Kernel("int4_tinygemm", _int4_supports, _int4_prepare, _int4_run_in(None)),
        Kernel(
            "int4_tinygemm_bf16",
            _int4_supports,
            _int4_prepare,
            _int4_run_in(torch.bfloat16),
            exact=False,
        ),
        Kernel(
            "int8_dynamic", _int8_dynamic_supports, _int8_prepare, _int8_dynamic_run, exact=False
        ),
        Kernel("int8_weight", _int8_weight_supports, _int8_prepare, _int8_weight_run),
        Kernel(
            "int8_weight_bf16",
            _int8_weight_supports,
            _int8_prepare,
            _int8_weight_bf16_run,
            exact=False,
        ),
    )
}
"""The kernels by name (``"reference"`` plus the fast ones described above)."""

AUTO_ORDER: tuple[str, ...] = ("int4_tinygemm_bf16", "int8_weight_bf16")
"""Kernels ``backend="auto"`` tries, in order, before falling back to the reference.

Both run bfloat16 activations through PyTorch's packed CPU kernels: on the
2-core AVX512-BF16/AMX machine this project is measured on they are the
fastest int4 and int8 paths at small ``M``, and their extra error (about 0.3 %
relative to the exact reference output, from rounding activations and output
to bfloat16) is below the weight quantization error itself. Pass
``backend="int8_weight"``, ``"int4_tinygemm"`` or ``"reference"`` for float32
activations."""


def select_kernel(qweight: QuantizedTensor, device: torch.device, backend: str = "auto") -> Kernel:
    """Choose the kernel for a weight: a named one, or the first fast one that applies.

    Parameters
    ----------
    qweight : QuantizedTensor
        The 2-D quantized weight ``(N, K)``.
    device : torch.device
        Where the layer runs.
    backend : str, default "auto"
        ``"auto"``, ``"reference"`` or a name in :data:`~llmref.quant.kernels.KERNELS`.

    Returns
    -------
    Kernel

    Raises
    ------
    ValueError
        If ``backend`` is unknown or does not support this weight.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize
    >>> from llmref.quant.kernels import select_kernel
    >>> w = quantize(torch.randn(64, 256), "int4", group_size=64)
    >>> select_kernel(w, torch.device("cpu")).name
    'int4_tinygemm_bf16'
    >>> select_kernel(quantize(torch.randn(64, 256), "nf4"), torch.device("cpu")).name
    'reference'
    """
    if backend == "auto":
        for name in AUTO_ORDER:
            if KERNELS[name].supports(qweight, device):
                return KERNELS[name]
        return KERNELS["reference"]
    if backend not in KERNELS:
        known = ", ".join(repr(k) for k in ("auto", *KERNELS))
        raise ValueError(f"backend must be one of {known}, got {backend!r}")
    kernel = KERNELS[backend]
    if not kernel.supports(qweight, device):
        raise ValueError(
            f"backend {backend!r} does not support a {qweight.fmt!r} weight with options "
            f"{qweight.options} on {device}"
        )
    return kernel
