"""Build, load and call the W4A8 AVX512-VNNI kernel in ``w4a8.c``.

The C source ships with the package and is compiled on first use by
:mod:`llmref.quant._native` (the system's C compiler, a per-user cache, safe
concurrent builds) and loaded with :mod:`ctypes`. Without a compiler, without
AVX512-VNNI, or with ``LLMREF_CPU_ISA`` set to ``avx2`` or ``none``, the kernel is
simply not available (:func:`unavailable_reason` says why) and kernel selection
skips it.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from ._native import NativeLibrary

SOURCE = Path(__file__).with_name("w4a8.c")
RUN = 128  # inputs per packed run: two nibble planes of 64 (see w4a8.c)


def fits(in_features: int, group_size: int) -> bool:
    """Whether the kernel takes this shape: groups of 32, 64 or a multiple of 128, and
    ``in_features`` a multiple of 64 and of the group size."""
    g = group_size
    return (
        g > 0 and (g in (32, 64) or g % RUN == 0) and in_features % 64 == 0 and in_features % g == 0
    )


def _declare(lib: ctypes.CDLL, isa: str) -> str | None:
    if not lib.llmref_w4a8_supported():
        return "this CPU lacks AVX-512 (F, BW, VL) with VNNI"
    lib.llmref_w4a8_linear.restype = ctypes.c_int
    lib.llmref_w4a8_linear.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 5 + [ctypes.c_int]
    return None


library = NativeLibrary(SOURCE, "w4a8", ("avx512",), _declare)
"""``library()``: the compiled kernel, or None when it cannot be built, this CPU lacks
VNNI or ``LLMREF_CPU_ISA`` selects another path (built by :mod:`llmref.quant._native`)."""


def unavailable_reason() -> str | None:
    """Why :func:`library` is None (no compiler, failed build, no VNNI), else None."""
    return library.unavailable_reason()


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Unsigned 4-bit codes ``(N, K)`` (``K % 64 == 0``) into the kernel's ``(N, K / 2)`` bytes:
    runs of 128 inputs as two planes of 64, a last run of 64 as two planes of 32."""
    N, K = codes.shape
    c = codes.to(torch.uint8)
    full = K // RUN * RUN
    runs = c[:, :full].reshape(N, full // RUN, 2, RUN // 2)
    body = (runs[:, :, 0] | (runs[:, :, 1] << 4)).reshape(N, full // 2)
    if full == K:
        return body.contiguous()
    tail = c[:, full:].reshape(N, 2, 32)
    return torch.cat([body, tail[:, 0] | (tail[:, 1] << 4)], dim=1).contiguous()


def linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group: int,
    per_token: bool,
) -> torch.Tensor:
    """``y = x_q W^T`` for float32 ``x (M, K)``, with ``W = (codes - zero) * scale`` per group.

    ``scale`` is float32 and ``zero`` int32, both ``(N, K / group)`` and contiguous.
    ``x`` is quantized to int8 with one scale per row (``per_token``) or per group.
    """
    lib = library()
    if lib is None:
        raise RuntimeError(f"the W4A8 kernel is unavailable: {unavailable_reason()}")
    x = x.contiguous()
    M, K = x.shape
    N = packed.shape[0]
    y = torch.empty(M, N, dtype=torch.float32)
    status = lib.llmref_w4a8_linear(
        x.data_ptr(),
        packed.data_ptr(),
        scale.data_ptr(),
        zero.data_ptr(),
        y.data_ptr(),
        M,
        N,
        K,
        group,
        K if per_token else group,
        torch.get_num_threads(),
    )
    if status:
        raise RuntimeError(f"llmref_w4a8_linear failed with status {status}")
    return y
