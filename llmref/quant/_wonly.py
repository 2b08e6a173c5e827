"""Pack weights for, and call, the exact weight-only kernels in ``wonly.c``.

int4 (``int4``, ``int`` with 4 bits, ggml ``q4_0``/``q4_1``) and int8 (``int8``, ``int``
with 8 bits, ggml ``q8_0``) weights times float32 activations, dequantized in registers
with the reference's own operations and accumulated in float32 (see the C file's
header). Built per instruction-set path (AVX-512, AVX2) by :mod:`llmref.quant._native`;
:func:`library` is the one :func:`~llmref.quant._native.selected_isa` picks.

The C file has two multiplications. For a few rows of activations (decoding), a kernel
streams the packed weights once per four rows of activations and dequantizes them in
registers. From :data:`GEMM_MIN_TOKENS` rows on (per ISA path and bit width), a GEMM
dequantizes each weight once per call into cache-sized transposed panels and a
register-blocked micro-kernel multiplies them with every activation row. Both use
bit-for-bit the reference's weights; only the summation order differs. The thresholds
are the measured crossovers on the machine this was tuned on (an AMD EPYC with AVX-512;
``docs/theory/quant/weight-only.md`` has the numbers).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import torch

from ._native import NativeLibrary
from .formats import int_codes
from .packing import unpack_codes
from .tensor import QuantizedTensor

SOURCE = Path(__file__).with_name("wonly.c")
BLOCK = 32  # inputs per packed block
GEMM_MIN_TOKENS: dict[tuple[str, int], int] = {
    ("avx512", 4): 64,
    ("avx512", 8): 32,
    ("avx2", 4): 16,
    ("avx2", 8): 16,
}
"""Rows of activations from which :func:`linear` takes the GEMM, per (ISA path, bits)."""


class WQ(ctypes.Structure):
    """The C ``wq_t``: a packed weight (pointers into tensors kept alive by the state)."""

    _fields_ = [
        ("codes", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("offset", ctypes.c_void_p),
        ("zero", ctypes.c_void_p),
        ("zconst", ctypes.c_float),
        ("half", ctypes.c_int32),
        ("N", ctypes.c_int64),
        ("K", ctypes.c_int64),
        ("Kp", ctypes.c_int64),
        ("G", ctypes.c_int64),
        ("bpg", ctypes.c_int64),
    ]


def _declare(lib: ctypes.CDLL, isa: str) -> str | None:
    if not lib.llmref_wonly_supported():
        return f"this CPU lacks the {isa} path"
    ptr = ctypes.POINTER(WQ)
    lib.llmref_wonly_linear.restype = ctypes.c_int
    lib.llmref_wonly_linear.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int64,
        ptr,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    lib.llmref_wonly_gemm.restype = ctypes.c_int
    lib.llmref_wonly_gemm.argtypes = lib.llmref_wonly_linear.argtypes
    lib.llmref_wonly_dequantize.restype = ctypes.c_int
    lib.llmref_wonly_dequantize.argtypes = [
        ptr,
        ctypes.c_int,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    return None


library = NativeLibrary(SOURCE, "wonly", ("avx512", "avx2"), _declare)
"""``library(isa=None)``: the compiled kernels for an ISA path (default: the selected
one), or None (``library.unavailable_reason()`` says why)."""


# ------------------------------------------------------------------ formats
def int4_layout(qt: QuantizedTensor) -> str | None:
    """How an int4-family weight maps onto the kernel, or None when it does not.

    ``"sym"`` (signed codes, zero point 8), ``"zero"`` (unsigned codes, uint8 zero
    points), ``"offset"`` (unsigned codes, float offsets), ``"q4_0"``, ``"q4_1"``.
    """
    if len(qt.shape) != 2 or qt.options.get("act_quant") is not None:
        return None
    if qt.fmt in ("q4_0", "q4_1"):
        return qt.fmt
    if qt.fmt not in ("int4", "int") or qt.options.get("bits") != 4:
        return None
    if not _groups_fit(qt):
        return None
    if qt.options.get("symmetric") is True:
        return "sym"
    if "zero_point" in qt.tensors:
        return "zero"
    return "offset" if "offset" in qt.tensors else None


def int8_layout(qt: QuantizedTensor) -> str | None:
    """``"int8"`` (symmetric int8 codes), ``"q8_0"``, or None when the kernel does not apply."""
    if len(qt.shape) != 2 or qt.options.get("act_quant") is not None:
        return None
    if qt.fmt == "q8_0":
        return "q8_0"
    if qt.fmt not in ("int8", "int") or qt.options.get("bits") != 8:
        return None
    if qt.options.get("symmetric") is not True or not _groups_fit(qt):
        return None
    return "int8"


def _groups_fit(qt: QuantizedTensor) -> bool:
    """Groups of whole 32-blocks along a row, or one group per row (any length)."""
    K = qt.shape[1]
    g = int(qt.options.get("group_size", 0))
    return g > 0 and K % g == 0 and (g % BLOCK == 0 or g == K)


def _padded(K: int) -> int:
    return -(-K // BLOCK) * BLOCK


def _pad_cols(t: torch.Tensor, Kp: int) -> torch.Tensor:
    K = t.shape[1]
    return t if K == Kp else torch.nn.functional.pad(t, (0, Kp - K))


def pack4(codes: torch.Tensor) -> torch.Tensor:
    """Unsigned 4-bit codes ``(N, K)`` into ``(N, Kp / 2)`` bytes, ``Kp`` = K rounded up to 32.

    Each block of 32 inputs is 16 bytes, byte ``j`` = ``c[j] | c[j + 16] << 4``
    (ggml's ``q4_0`` order); padding codes are 0.
    """
    N, K = codes.shape
    Kp = _padded(K)
    c = _pad_cols(codes.to(torch.uint8), Kp).reshape(N, Kp // BLOCK, 2, BLOCK // 2)
    return (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(N, Kp // 2).contiguous()


QUAD = 4
"""Rows stored interleaved block by block (the C kernel's ``QUAD``)."""


def interleave_rows(rows: torch.Tensor, block_bytes: int) -> torch.Tensor:
    """Packed rows ``(N, R)`` bytes into the kernel's order: quads of rows, block by block.

    Rows ``4q .. 4q + 3`` are stored together, their block 0 first (row 4q's, then
    4q + 1's ...), then their block 1, and so on, so a pass over four rows reads one
    contiguous stream. N is padded with zero rows to a multiple of 4.
    """
    N, R = rows.shape
    Np = -(-N // QUAD) * QUAD
    padded = torch.nn.functional.pad(rows, (0, 0, 0, Np - N))
    blocks = padded.reshape(Np // QUAD, QUAD, R // block_bytes, block_bytes)
    return blocks.transpose(1, 2).contiguous().reshape(Np, R)


def prepare(qt: QuantizedTensor) -> dict[str, Any]:
    """The kernel's state for a weight accepted by :func:`int4_layout` or :func:`int8_layout`."""
    N, K = qt.shape
    Kp = _padded(K)
    g = int(qt.options["group_size"])
    G = K // g
    bpg = Kp // BLOCK // G
    keep: dict[str, torch.Tensor] = {}
    half, zconst = 0, 0.0
    zero = offset = None
    layout = int4_layout(qt)
    if layout is not None:
        bits = 4
        if layout in ("q4_0", "q4_1"):
            codes = unpack_codes(qt["codes"], 4, qt.numel).reshape(N, K)
            scale, half = qt["d"].reshape(N, G).contiguous(), 1
            if layout == "q4_0":
                zconst = 8.0
            else:
                offset = qt["m"].reshape(N, G).contiguous()
        else:
            q = int_codes(qt)
            scale = qt["scale"].to(torch.float32).reshape(N, G).contiguous()
            if layout == "sym":
                codes, zconst = q + 8, 8.0
            elif layout == "zero":
                codes = q
                zero = qt["zero_point"].to(torch.uint8).reshape(N, G).contiguous()
            else:
                codes = q
                offset = qt["offset"].to(torch.float32).reshape(N, G).contiguous()
        keep["codes"] = interleave_rows(pack4(codes), BLOCK // 2)
    else:
        layout = int8_layout(qt)
        if layout is None:
            raise ValueError(f"the weight-only kernels do not take a {qt.fmt!r} weight")
        bits = 8
        codes8 = _pad_cols(qt["codes"].reshape(N, K).to(torch.int8), Kp)
        keep["codes"] = interleave_rows(codes8.view(torch.uint8), BLOCK).view(torch.int8)
        if layout == "q8_0":
            scale, half = qt["d"].reshape(N, G).contiguous(), 1
        else:
            scale = qt["scale"].to(torch.float32).reshape(N, G).contiguous()
    keep["scale"] = scale
    if offset is not None:
        keep["offset"] = offset
    if zero is not None:
        keep["zero"] = zero
    wq = WQ(
        keep["codes"].data_ptr(),
        scale.data_ptr(),
        None if offset is None else offset.data_ptr(),
        None if zero is None else zero.data_ptr(),
        zconst,
        half,
        N,
        K,
        Kp,
        G,
        bpg,
    )
    return {
        "wq": wq,
        "keep": keep,
        "bits": bits,
        "N": N,
        "K": K,
        "Kp": Kp,
        "lib": library(),  # the ISA path selected now stays the layer's
        "gemm_min": GEMM_MIN_TOKENS.get((library.isa() or "", bits), 16),
    }


def _lib_for(st: dict[str, Any]) -> ctypes.CDLL:
    lib = st.get("lib")
    if lib is None:
        lib = library()
        if lib is None:
            raise RuntimeError(
                f"the weight-only kernels are unavailable: {library.unavailable_reason()}"
            )
        st["lib"] = lib
    return lib


def dequantize(st: dict[str, Any], n0: int = 0, n1: int | None = None) -> torch.Tensor:
    """Rows ``[n0, n1)`` of the weight in float32, ``(n1 - n0, K)``, dequantized by the
    kernel's own register code (what the tests compare with the reference bit for bit)."""
    n1 = st["N"] if n1 is None else n1
    out = torch.empty(n1 - n0, st["Kp"], dtype=torch.float32)
    status = _lib_for(st).llmref_wonly_dequantize(
        ctypes.byref(st["wq"]), st["bits"], n0, n1, out.data_ptr(), torch.get_num_threads()
    )
    if status:
        raise RuntimeError(f"llmref_wonly_dequantize failed with status {status}")
    return out[:, : st["K"]]


def linear(x: torch.Tensor, st: dict[str, Any]) -> torch.Tensor:
    """``y = x W^T`` in float32 for ``x`` of shape ``(M, K)`` (any float dtype, computed in
    float32; the result is float32)."""
    x = x.to(torch.float32).contiguous()
    M = x.shape[0]
    lib = _lib_for(st)
    gemm = M >= st["gemm_min"]
    y = torch.empty(M, st["N"], dtype=torch.float32)
    call = lib.llmref_wonly_gemm if gemm else lib.llmref_wonly_linear
    status = call(
        x.data_ptr(), M, ctypes.byref(st["wq"]), st["bits"], y.data_ptr(), torch.get_num_threads()
    )
    if status:
        name = "llmref_wonly_gemm" if gemm else "llmref_wonly_linear"
        raise RuntimeError(f"{name} failed with status {status} (K={st['K']})")
    return y
