"""Matmul kernels for weight-quantized linear layers: y = x W^T + b.

The **reference** kernel dequantizes the whole weight and calls
:func:`torch.nn.functional.linear`; it works for every format and is what
each fast kernel is tested against. The fast kernels are llmref's own C
kernels and PyTorch's packed low-bit CPU kernels:

``int4_w4a32``
    llmref's exact int4 kernel (``llmref/quant/wonly.c``, built with the
    system C compiler on first use, for AVX-512 or AVX2 chosen at run time):
    int4 weights (``int4`` and 4-bit ``int`` with groups of a multiple of 32
    or one group per row, symmetric, with an integer zero point or a float
    offset; ggml ``q4_0`` and ``q4_1``) times float32 activations. Each
    weight is dequantized in registers with the reference's own operations
    (bit-for-bit :func:`~llmref.quant.dequantize`) and the products are
    summed in float32, so only the summation order differs from the
    reference. For many rows of activations a blocked GEMM in the same C
    file dequantizes each weight once per call instead of once per four rows.
``int8_w8a32``
    The same for symmetric int8 weights (per channel or groups of a
    multiple of 32) and ggml ``q8_0``.
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
``int4_w4a8``
    llmref's own C kernel (``llmref/quant/w4a8.c``, built with the system C
    compiler on first use; x86 CPUs with AVX512-VNNI): int4 weights times
    int8 activations with ``vpdpbusd`` integer dot products, the zero point
    and both scales applied per group. Activations are quantized as
    :func:`int8_vectorwise_quant` does (``round(x * 127 / max|x|)``): per row
    when the weight asks for ``act_quant="per_token_int8"`` (then ``auto``
    picks this kernel and it equals the reference), otherwise, when named as
    a backend for a weight-only layer, per weight group (the finer choice:
    about 0.7 % relative error on Gaussian inputs). Groups of 32, 64 or a
    multiple of 128, ``in_features`` a multiple of 64; symmetric codes or an
    integer zero point.
``int8_dynamic``
    Per-channel int8 weights times dynamically quantized int8 activations
    (symmetric, one scale per row of ``x``, ``amax/127``) with
    ``torch._int_mm`` (int8 x int8 -> int32, VNNI/AMX through oneDNN), then
    rescaled: ``y = (x_q W_q^T) s_x s_w``. The activation rounding adds a
    relative error of about ``1/254`` per row (SmoothQuant-free W8A8).
``llm_int8``
    LLM.int8() (:cite:t:`dettmers2022llmint8`) for weights made by
    :func:`~llmref.quant.llm_int8`: the feature columns of ``x`` holding a
    value with ``|x| >= threshold`` are multiplied in float32 with the
    int8-dequantized weight columns; the rest goes through
    ``torch._int_mm`` with per-token int8 activations
    (:func:`~llmref.quant.int8_vectorwise_quant`, bitsandbytes' arithmetic).
``int8_weight``
    ``torch._weight_int8pack_mm``: int8 weights, float activations; exact.
``int8_weight_bf16``
    The same kernel fed bfloat16 activations and scales (its fast path on
    CPUs with AVX512-BF16/AMX); activations, scales and output are rounded
    to bfloat16.

Every kernel returns a 2-D ``(M, N)`` result; :class:`~llmref.quant.QuantLinear`
reshapes and adds the bias.

**Exactness.** Each kernel is a :class:`KernelSpec` in :data:`KERNELS` declaring
whether it is ``exact`` and the activation semantics it implements
(``activations``). *Exact* means equal, under the equality policy
(:mod:`llmref.testing.equality`), to the reference computation with the
activation semantics the weight declares: a weight-only weight declares float
activations, a SmoothQuant weight int8 activations per token, an LLM.int8()
weight its decomposition; so ``int8_dynamic``, ``int4_w4a8`` and ``llm_int8`` are
the exact kernels of those weights, and inexact for weight-only ones.
``backend="auto"`` picks the first kernel exact for the weight in the static
per-ISA order :data:`AUTO_ORDERS`; ``backend="fast"`` (opt-in) the first of
:data:`FAST_ORDERS`, whose measured error it documents.

**Activation quantization.** A weight whose ``options["act_quant"]`` is set
asks for quantized activations: ``"per_token_int8"`` (SmoothQuant's W8A8,
one symmetric ``amax/127`` scale per row of ``x``) or ``"llm_int8"``
(LLM.int8()'s decomposition, with ``options["threshold"]``). The reference
kernel honours it in float (fake quantization: the exact semantics the
integer kernels are tested against); ``backend="auto"`` picks the integer
kernel exact for it (the one implementing those activations) when it supports
the weight, and the weight-only kernels refuse such weights.

**Input scales.** Kernels never see ``input_scale`` (AWQ, SmoothQuant):
:class:`~llmref.quant.QuantLinear` divides ``x`` by it and hands the kernel
``qweight.without_input_scale()``; :func:`select_kernel` rejects a weight
that still carries one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from .._registry import Registry, Spec
from . import _native, _w4a8, _wonly
from .formats import dequantize, int_codes
from .tensor import QuantizedTensor

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_KERNELS",
    "ACT_QUANT",
    "AUTO_ORDER",
    "AUTO_ORDERS",
    "BACKENDS",
    "FAST_ORDERS",
    "KERNELS",
    "Int8VectorwiseQuant",
    "Kernel",
    "KernelSpec",
    "KernelStatus",
    "activation_semantics",
    "check_backend",
    "fast_isa",
    "int8_vectorwise_quant",
    "kernel_status",
    "select_kernel",
]

State = dict[str, Any]

ACT_QUANT = ("per_token_int8", "llm_int8")
"""Values of a weight's ``options["act_quant"]`` (absent or None: weight-only)."""


def _act_quant(qt: QuantizedTensor) -> str | None:
    act = qt.options.get("act_quant")
    if act is not None and act not in ACT_QUANT:
        known = ", ".join(map(repr, ACT_QUANT))
        raise ValueError(f"options['act_quant'] must be None or one of {known}, got {act!r}")
    return act


class Int8VectorwiseQuant(NamedTuple):
    """Per-row int8 activations with outlier columns, as from :func:`int8_vectorwise_quant`.

    Parameters
    ----------
    codes : torch.Tensor
        int8 ``(M, K)``; zero in every outlier column.
    absmax : torch.Tensor
        float32 ``(M,)``: each row's largest ``|x|`` outside the outlier
        elements (bitsandbytes' ``row_stats``); the scale is ``absmax / 127``.
    outlier_cols : torch.Tensor
        int64 indices of the columns holding an outlier, ascending (empty
        when there are none or ``threshold`` is 0).

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import int8_vectorwise_quant
    >>> int8_vectorwise_quant(torch.tensor([[1.0, -0.5]])).codes
    tensor([[127, -64]], dtype=torch.int8)
    """

    codes: torch.Tensor
    absmax: torch.Tensor
    outlier_cols: torch.Tensor


def int8_vectorwise_quant(x: torch.Tensor, *, threshold: float = 0.0) -> Int8VectorwiseQuant:
    """LLM.int8()'s activation quantization: int8 per row, outlier columns held out.

    Parameters
    ----------
    x : torch.Tensor
        ``(M, K)`` floating activations (computed in float32).
    threshold : float, default 0.0
        Elements with ``|x| >= threshold`` are outliers (``0``: none). Their
        columns are zeroed in ``codes`` (the caller multiplies them in float).

    Returns
    -------
    Int8VectorwiseQuant
        ``codes`` (int8), ``absmax`` (float32 per row) and ``outlier_cols``.

    Raises
    ------
    ValueError
        If ``x`` is not 2-D or ``threshold`` is negative.

    Notes
    -----
    Bit-exact to ``bitsandbytes.functional.int8_vectorwise_quant(A, threshold)``
    (its reference CPU/default backend), including its details: the row
    absmax is taken after zeroing only the outlier *elements* (the other
    entries of an outlier column still count), codes are
    :math:`\\operatorname{round}(x \\cdot (127 / a))` with round-half-even,
    and whole outlier columns are then zeroed. bitsandbytes casts ``A`` to
    float16 first (``MatMul8bitLt``); on float16 input both agree exactly.
    A row with ``absmax = 0`` gets zero codes (bitsandbytes divides by zero).

    References
    ----------
    :cite:t:`dettmers2022llmint8`

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import int8_vectorwise_quant
    >>> x = torch.tensor([[0.5, 8.0, -1.0], [0.25, -0.1, 0.5]])
    >>> q = int8_vectorwise_quant(x, threshold=6.0)
    >>> q.codes.tolist(), q.absmax.tolist(), q.outlier_cols.tolist()
    ([[64, 0, -127], [64, 0, 127]], [1.0, 0.5], [1])
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError(f"x must be a 2-D (M, K) tensor, got {getattr(x, 'shape', type(x))}")
    if not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    xf = x.to(torch.float32)
    cols = torch.zeros(0, dtype=torch.int64, device=x.device)
    if threshold > 0:
        outliers = xf.abs() >= threshold
        cols = torch.nonzero(outliers.any(dim=0)).reshape(-1)
        if cols.numel():
            xf = xf.masked_fill(outliers, 0.0)
    absmax = xf.abs().amax(dim=1)
    inv = torch.where(absmax > 0, 127.0 / absmax, torch.zeros_like(absmax))
    codes = torch.round(xf * inv.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    if cols.numel():
        codes[:, cols] = 0
    return Int8VectorwiseQuant(codes, absmax, cols)


ACTIVATIONS = ("float", "bfloat16", "per_token_int8", "llm_int8")
"""Activation semantics a kernel implements: float activations (``"float"``, the
weight-only reference), activations rounded to bfloat16, or the quantized
activations a weight can declare (``options["act_quant"]``)."""


def activation_semantics(qt: QuantizedTensor) -> str:
    """The activation semantics a weight declares: ``"float"`` or its ``act_quant``.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize, smoothquant
    >>> from llmref.quant.kernels import activation_semantics
    >>> activation_semantics(quantize(torch.randn(4, 32), "int8"))
    'float'
    >>> x = torch.randn(16, 32)
    >>> activation_semantics(smoothquant(torch.randn(4, 32), x))
    'per_token_int8'
    """
    return _act_quant(qt) or "float"


@dataclass(frozen=True, kw_only=True)
class KernelSpec(Spec):
    """A matmul implementation for quantized weights, as registered in :data:`KERNELS`.

    Parameters
    ----------
    name, paper, reference, third_party
        As in :class:`~llmref.Spec`.
    supports : callable
        ``supports(qweight, device) -> bool``: whether it can run this weight
        here (it refuses every other weight when named as a backend).
    prepare : callable
        ``prepare(qweight) -> state``: repack the weight once (cached by the
        layer).
    run : callable
        ``run(x2d, state) -> y2d`` for ``x2d`` of shape ``(M, K)``.
    exact : bool
        Whether its result equals the reference computation with the
        activation semantics it implements, under the equality policy (only
        the float summation order differs).
    activations : str
        The activation semantics it implements (one of :data:`ACTIVATIONS`).
        It is the *exact* kernel of a weight when ``exact`` is True and the
        weight declares these semantics (:func:`activation_semantics`).

    Examples
    --------
    >>> from llmref.quant.kernels import KERNELS
    >>> spec = KERNELS["int8_dynamic"]
    >>> spec.exact, spec.activations
    (True, 'per_token_int8')
    >>> KERNELS["int4_tinygemm_bf16"].exact, KERNELS["int4_tinygemm_bf16"].activations
    (False, 'bfloat16')
    """

    primary: ClassVar[str | None] = "run"

    supports: Callable[[QuantizedTensor, torch.device], bool]
    prepare: Callable[[QuantizedTensor], State]
    run: Callable[[torch.Tensor, State], torch.Tensor]
    exact: bool = True
    activations: str = "float"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.activations not in ACTIVATIONS:
            raise ValueError(
                f"KernelSpec {self.name!r}: activations must be one of "
                f"{', '.join(map(repr, ACTIVATIONS))}, got {self.activations!r}"
            )

    def is_exact_for(self, qweight: QuantizedTensor) -> bool:
        """Whether this kernel is exact for ``qweight``: exact, with its activation semantics."""
        return self.exact and self.activations == activation_semantics(qweight)


class _DeprecatedKernel(type):
    """Metaclass of :class:`Kernel`: calling it builds a :class:`KernelSpec` (warning), and
    ``isinstance``/``issubclass`` checks against it are checks against :class:`KernelSpec`."""

    #: The positional order of the former ``Kernel`` dataclass.
    ORDER = ("name", "supports", "prepare", "run", "exact")

    def __call__(cls, *args: Any, **kwargs: Any) -> KernelSpec:
        if len(args) > len(cls.ORDER):
            raise TypeError(
                f"Kernel takes at most {len(cls.ORDER)} positional arguments "
                f"({', '.join(cls.ORDER)}), got {len(args)}"
            )
        positional = dict(zip(cls.ORDER[: len(args)], args, strict=True))
        twice = sorted(set(positional) & set(kwargs))
        if twice:
            raise TypeError(f"Kernel got {twice} both by position and by keyword")
        warnings.warn(
            "llmref.quant.kernels.Kernel is deprecated; use KernelSpec with keyword "
            "arguments: KernelSpec(name=..., supports=..., prepare=..., run=..., exact=...)",
            DeprecationWarning,
            stacklevel=2,
        )
        return KernelSpec(**positional, **kwargs)

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, KernelSpec)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, KernelSpec)


class Kernel(metaclass=_DeprecatedKernel):
    """Deprecated: the former name of :class:`KernelSpec`, which takes keyword arguments only.

    Calling it accepts the former positional order ``Kernel(name, supports, prepare,
    run, exact=True)`` (and keywords), warns, and returns a :class:`KernelSpec`;
    ``isinstance(spec, Kernel)`` is ``isinstance(spec, KernelSpec)``.

    Parameters
    ----------
    name, supports, prepare, run, exact
        As in :class:`KernelSpec`, by position or by keyword; further
        :class:`KernelSpec` fields (``activations``, ``paper`` ...) by keyword.

    Returns
    -------
    KernelSpec

    Raises
    ------
    TypeError
        If more than five arguments are given by position, or one both by position
        and by keyword.

    Warns
    -----
    DeprecationWarning
        On every call, naming :class:`KernelSpec`.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", DeprecationWarning)
    ...     old = Kernel("mine", KERNELS["reference"].supports, KERNELS["reference"].prepare,
    ...                  KERNELS["reference"].run)
    >>> type(old).__name__, old.exact, isinstance(old, Kernel)
    ('KernelSpec', True, True)
    """


def _is_2d(qt: QuantizedTensor) -> bool:
    return len(qt.shape) == 2


# ------------------------------------------------------------ reference
def _ref_prepare(qt: QuantizedTensor) -> State:
    return {"qweight": qt, "act": _act_quant(qt), "threshold": qt.options.get("threshold")}


def _ref_run(x: torch.Tensor, st: State) -> torch.Tensor:
    act = st["act"]
    if act is None:
        return F.linear(x, dequantize(st["qweight"], dtype=x.dtype))
    # quantized activations, simulated in float32 (the integer kernels' exact semantics);
    # per-token int8 is LLM.int8()'s vector-wise quantization without outlier columns
    w = dequantize(st["qweight"], dtype=torch.float32)
    xf = x.to(torch.float32)
    threshold = float(st["threshold"]) if act == "llm_int8" else 0.0
    q = int8_vectorwise_quant(xf, threshold=threshold)
    y = F.linear(q.codes.to(torch.float32) * (q.absmax / 127).unsqueeze(-1), w)
    if q.outlier_cols.numel():
        y = y + F.linear(xf[:, q.outlier_cols], w[:, q.outlier_cols])
    return y.to(x.dtype)


# --------------------------------------------------------------- int4
_TINYGEMM_GROUPS = (32, 64, 128, 256)


def _int4_supports(qt: QuantizedTensor, device: torch.device) -> bool:
    o = qt.options
    return (
        device.type == "cpu"
        and _act_quant(qt) is None
        and hasattr(torch, "_weight_int4pack_mm_for_cpu")
        and _is_2d(qt)
        and qt.fmt in ("int4", "int")
        and o.get("bits") == 4
        and int(o.get("group_size", 0)) in _TINYGEMM_GROUPS
        and qt.shape[1] % int(o["group_size"]) == 0
        and qt.shape[0] % 16 == 0  # the packing interleaves output rows in 16s
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


# ----------------------------------------------------------- int4 W4A8
def _w4a8_supports(qt: QuantizedTensor, device: torch.device) -> bool:
    o = qt.options
    g = int(o.get("group_size", 0))
    return (
        device.type == "cpu"
        and _act_quant(qt) in (None, "per_token_int8")
        and _is_2d(qt)
        and qt.fmt in ("int4", "int")
        and o.get("bits") == 4
        and _w4a8.fits(qt.shape[1], g)
        and (o.get("symmetric") is True or "zero_point" in qt.tensors)
        and _w4a8.library() is not None
    )


def _w4a8_prepare(qt: QuantizedTensor) -> State:
    N, K = qt.shape
    g = int(qt.options["group_size"])
    q = int_codes(qt)
    if qt.options.get("symmetric") is True:  # signed codes -8..7 as 0..15, zero point 8
        codes, zero = q + 8, torch.full((N, K // g), 8, dtype=torch.int32)
    else:  # unsigned codes, uint8 zero points
        codes, zero = q, qt["zero_point"].reshape(N, K // g).to(torch.int32)
    scale = qt["scale"].to(torch.float32).reshape(N, K // g).contiguous()
    return {
        "packed": _w4a8.pack(codes),
        "scale": scale,
        "zero": zero.contiguous(),
        "group": g,
        "per_token": _act_quant(qt) == "per_token_int8",
    }


def _w4a8_run(x: torch.Tensor, st: State) -> torch.Tensor:
    y = _w4a8.linear(
        x.to(torch.float32), st["packed"], st["scale"], st["zero"], st["group"], st["per_token"]
    )
    return y.to(x.dtype)


# ------------------------------------------------- exact int4/int8 (wonly.c)
def _w4a32_supports(qt: QuantizedTensor, device: torch.device) -> bool:
    return (
        device.type == "cpu" and _wonly.int4_layout(qt) is not None and _wonly.library() is not None
    )


def _w8a32_supports(qt: QuantizedTensor, device: torch.device) -> bool:
    return (
        device.type == "cpu" and _wonly.int8_layout(qt) is not None and _wonly.library() is not None
    )


def _wonly_prepare(qt: QuantizedTensor) -> State:
    return {**_wonly.prepare(qt), "qweight": qt}


def _wonly_run(x: torch.Tensor, st: State) -> torch.Tensor:
    if x.dtype == torch.float64:  # float64 inputs: the reference's float64 arithmetic
        return F.linear(x, dequantize(st["qweight"], dtype=x.dtype))
    return _wonly.linear(x, st).to(x.dtype)


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


def _int8_dynamic_supports(qt: QuantizedTensor, device: torch.device) -> bool:
    return (
        _act_quant(qt) in (None, "per_token_int8")
        and _int8_supports(qt, device)
        and hasattr(torch, "_int_mm")
    )


def _llm_int8_supports(qt: QuantizedTensor, device: torch.device) -> bool:
    return _act_quant(qt) == "llm_int8" and _int8_supports(qt, device) and hasattr(torch, "_int_mm")


def _llm_int8_prepare(qt: QuantizedTensor) -> State:
    return {**_int8_prepare(qt), "threshold": float(qt.options["threshold"])}


def _int8_activations_run(x: torch.Tensor, st: State) -> torch.Tensor:
    """W8A8 through ``torch._int_mm``: per-token int8 activations, and with a
    ``threshold`` in the state (LLM.int8()) outlier feature columns in float32."""
    xf = x.to(torch.float32)
    q = int8_vectorwise_quant(xf, threshold=st.get("threshold", 0.0))
    acc = torch._int_mm(q.codes, st["wt"])
    y = acc.to(torch.float32) * (q.absmax / 127).unsqueeze(-1) * st["scale"]
    cols = q.outlier_cols
    if cols.numel():  # outlier features in float32, times the int8-dequantized weight columns
        w_cols = st["w"][:, cols].to(torch.float32) * st["scale"].unsqueeze(-1)
        y = y + xf[:, cols] @ w_cols.t()
    return y.to(x.dtype)


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
    return (
        _act_quant(qt) is None
        and _int8_supports(qt, device)
        and hasattr(torch, "_weight_int8pack_mm")
    )


KERNELS: Registry[KernelSpec] = Registry("quantized-linear kernel", KernelSpec)
"""The kernels by name (``"reference"`` plus the fast ones described above)."""

for _spec in (
    KernelSpec(
        name="reference",
        supports=lambda qt, d: True,
        prepare=_ref_prepare,
        run=_ref_run,
        reference="llmref.quant.dequantize",
    ),
    KernelSpec(name="int4_w4a32", supports=_w4a32_supports, prepare=_wonly_prepare, run=_wonly_run),
    KernelSpec(name="int8_w8a32", supports=_w8a32_supports, prepare=_wonly_prepare, run=_wonly_run),
    KernelSpec(
        name="int4_tinygemm",
        supports=_int4_supports,
        prepare=_int4_prepare,
        run=_int4_run_in(None),
        third_party="torch._weight_int4pack_mm_for_cpu (private op)",
    ),
    KernelSpec(
        name="int4_tinygemm_bf16",
        supports=_int4_supports,
        prepare=_int4_prepare,
        run=_int4_run_in(torch.bfloat16),
        exact=False,
        activations="bfloat16",
        third_party="torch._weight_int4pack_mm_for_cpu (private op)",
    ),
    KernelSpec(
        name="int4_w4a8",
        supports=_w4a8_supports,
        prepare=_w4a8_prepare,
        run=_w4a8_run,
        activations="per_token_int8",
    ),
    KernelSpec(
        name="int8_dynamic",
        supports=_int8_dynamic_supports,
        prepare=_int8_prepare,
        run=_int8_activations_run,
        activations="per_token_int8",
        third_party="torch._int_mm (private op)",
    ),
    KernelSpec(
        name="llm_int8",
        supports=_llm_int8_supports,
        prepare=_llm_int8_prepare,
        run=_int8_activations_run,
        activations="llm_int8",
        paper="dettmers2022llmint8",
        third_party="bitsandbytes.nn.Linear8bitLt",
    ),
    KernelSpec(
        name="int8_weight",
        supports=_int8_weight_supports,
        prepare=_int8_prepare,
        run=_int8_weight_run,
        third_party="torch._weight_int8pack_mm (private op)",
    ),
    KernelSpec(
        name="int8_weight_bf16",
        supports=_int8_weight_supports,
        prepare=_int8_prepare,
        run=_int8_weight_bf16_run,
        exact=False,
        activations="bfloat16",
        third_party="torch._weight_int8pack_mm (private op)",
    ),
):
    KERNELS.add(_spec)

_EXACT_ORDER = (
    "int4_w4a32",
    "int8_w8a32",
    "int4_tinygemm",
    "int8_weight",
    "int8_dynamic",
    "int4_w4a8",
    "llm_int8",
)
AUTO_ORDERS: dict[str, tuple[str, ...]] = {
    "avx512": _EXACT_ORDER,
    "avx2": _EXACT_ORDER,
    "none": tuple(k for k in _EXACT_ORDER if k not in ("int4_w4a32", "int8_w8a32", "int4_w4a8")),
}
"""The order ``backend="auto"`` tries kernels in, per native path
(``LLMREF_CPU_ISA`` or the CPU's best, as :func:`kernel_status` reports it): the
first that is exact for the weight (:meth:`KernelSpec.is_exact_for`) and
supports it wins, else the reference. Static: nothing is timed at run time.

On ``avx512`` and ``avx2``, llmref's own ``int4_w4a32`` and ``int8_w8a32`` (float
activations, the weight dequantized in registers with the reference's
operations) come first, then PyTorch's exact ``int4_tinygemm`` and
``int8_weight`` (fast at one token only). Weights that declare int8
activations (SmoothQuant: ``per_token_int8``; LLM.int8(): ``llm_int8``) get
their integer kernel: ``int8_dynamic`` or ``int4_w4a8``, and ``llm_int8``. On
``none`` (no C compiler, or ``LLMREF_CPU_ISA=none``) the native kernels are
left out."""

AUTO_ORDER: tuple[str, ...] = _EXACT_ORDER
"""The kernels ``backend="auto"`` tries on the native paths (``AUTO_ORDERS["avx2"]``).

Every one is exact for the weights it is picked for. Name
``backend="fast"`` (see :data:`FAST_ORDERS`) or an inexact kernel
(``"int4_tinygemm_bf16"``, ``"int8_weight_bf16"``, ``"int4_w4a8"`` on a
weight-only weight) to trade exactness for speed."""

ACTIVATION_KERNELS: dict[str, tuple[str, ...]] = {
    "per_token_int8": ("int8_dynamic", "int4_w4a8"),
    "llm_int8": ("llm_int8",),
}
"""The kernels implementing each quantized-activation semantics (those of
:data:`KERNELS` with that ``activations``), in ``auto``'s order. Where none
supports the weight (another device, no ``torch._int_mm``), ``"auto"`` falls
back to the reference, which fake-quantizes the activations in float32 with the
same arithmetic."""

FAST_ORDERS: dict[str, tuple[str, ...]] = {
    "avx512_vnni": ("int4_w4a8", "int8_dynamic"),
    "avx512": (),
    "avx2": (),
    "none": (),
}
"""The kernels ``backend="fast"`` tries first, per machine (:func:`fast_isa`),
before ``auto``'s exact order: speed over exactness, opt-in.

On CPUs with AVX512-VNNI: ``int4_w4a8`` (int4 weights, int8 activations
quantized per weight group, or per token when the weight declares it) and
``int8_dynamic`` (int8 weights, int8 activations per token). Elsewhere ``fast``
is ``auto``: without VNNI the int8 products are slower than the exact kernels at
one token (forced onto AVX2, 4096 x 4096 int8: ``int8_dynamic`` 3.95 ms against
``int8_w8a32``'s 1.07 ms). The bfloat16 kernels are never faster than these on
the machines measured, so ``fast`` does not pick them (name them).

Measured (AMD EPYC, AVX-512 with VNNI and BF16, one thread, CPU time, medians
of 7; 4096 x 4096 Gaussian weights, default groups): int4 ``int4_w4a8`` 0.25 /
3.63 / 16.2 ms at M = 1 / 16 / 128 tokens against ``int4_w4a32``'s 0.38 / 4.01 /
34.1 ms; int8 ``int8_dynamic`` 0.71 / 4.81 / 9.77 ms against ``int8_w8a32``'s
0.75 / 4.95 / 36.2 ms. Error, max ``|y - y64|`` over max ``|y64|`` against the
float64 product with the same quantized weight (2048 x 2048, M = 1, 8, 64):
0.61-0.73 % for ``int4_w4a8``, 0.75-0.83 % for ``int8_dynamic``, where ``auto``
gives 1.5e-7 (float32 rounding); the bfloat16 kernels give 0.33-0.42 %. For
scale, int4 weight quantization itself costs about 7 % on Gaussian weights."""


def fast_isa() -> str:
    """The key of :data:`FAST_ORDERS` for this machine.

    ``"avx512_vnni"`` when the native path is ``avx512`` and the CPU has
    AVX512-VNNI, else the native path (``LLMREF_CPU_ISA`` or the CPU's best, as
    :func:`kernel_status` reports it).

    Examples
    --------
    >>> from llmref.quant.kernels import FAST_ORDERS, fast_isa
    >>> fast_isa() in FAST_ORDERS
    True
    """
    isa = _native.selected_isa()
    if isa == "avx512" and ({"avx512_vnni", "avx512vnni"} & _native.cpu_flags()):
        return "avx512_vnni"
    return isa


BACKENDS = ("auto", "fast")
"""The backend names that choose a kernel: ``"auto"`` (exact) and ``"fast"``."""


def check_backend(backend: object) -> str:
    """Validate a ``backend`` name: ``"auto"``, ``"fast"`` or a name in :data:`KERNELS`.

    Raises
    ------
    ValueError
        Naming the backends there are.

    Examples
    --------
    >>> from llmref.quant.kernels import check_backend
    >>> check_backend("fast")
    'fast'
    """
    if backend not in BACKENDS and backend not in KERNELS:
        known = ", ".join(repr(k) for k in (*BACKENDS, *KERNELS))
        raise ValueError(f"backend must be one of {known}, got {backend!r}")
    return str(backend)


def select_kernel(
    qweight: QuantizedTensor, device: torch.device, backend: str = "auto"
) -> KernelSpec:
    """Choose the kernel for a weight: a named one, the first exact one, or the first fast one.

    Parameters
    ----------
    qweight : QuantizedTensor
        The 2-D quantized weight ``(N, K)``.
    device : torch.device
        Where the layer runs.
    backend : str, default "auto"
        ``"auto"`` (the first kernel of :data:`AUTO_ORDERS` that is exact for
        the weight and supports it, else the reference), ``"fast"`` (the
        first of :data:`FAST_ORDERS`, then ``auto``'s order, that supports it,
        exact or not), ``"reference"`` or a name in :data:`KERNELS`.

    Returns
    -------
    KernelSpec

    Raises
    ------
    ValueError
        If ``backend`` is unknown or does not support this weight, if the
        weight still carries an ``input_scale``, or if its
        ``options["act_quant"]`` is unknown.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize
    >>> from llmref.quant.kernels import select_kernel
    >>> w = quantize(torch.randn(64, 256), "int4", group_size=64)
    >>> kernel = select_kernel(w, torch.device("cpu"))
    >>> kernel.exact, kernel.name in ("int4_w4a32", "int4_tinygemm")
    (True, True)
    >>> select_kernel(quantize(torch.randn(64, 256), "nf4"), torch.device("cpu")).name
    'reference'
    """
    if qweight.input_scale is not None:
        raise ValueError(
            "qweight has an input_scale: kernels multiply by the stored codes only; divide x by "
            "qweight.input_scale and pass qweight.without_input_scale() (QuantLinear does this)"
        )
    if backend in BACKENDS:
        names: tuple[str, ...] = AUTO_ORDERS[_native.selected_isa()]
        if backend == "fast":
            names = FAST_ORDERS[fast_isa()] + names
        for name in names:
            kernel = KERNELS[name]
            if (backend == "fast" or kernel.is_exact_for(qweight)) and kernel.supports(
                qweight, device
            ):
                return kernel
        return KERNELS["reference"]
    check_backend(backend)
    kernel = KERNELS[backend]
    if not kernel.supports(qweight, device):
        raise ValueError(
            f"backend {backend!r} does not support a {qweight.fmt!r} weight with options "
            f"{qweight.options} on {device}"
        )
    return kernel


@dataclass(frozen=True)
class KernelStatus:
    """Whether a kernel of :data:`KERNELS` can run here, and on what.

    Parameters
    ----------
    name : str
        The kernel's name.
    available : bool
        Whether it can run on this machine's CPU (for some weight).
    detail : str
        What it runs on (``"native avx512"``, ``"native avx2"``, ``"PyTorch"``)
        or why it is unavailable.
    exact : bool
        The kernel's :attr:`KernelSpec.exact`.

    Examples
    --------
    >>> from llmref.quant.kernels import kernel_status
    >>> kernel_status()["reference"].available
    True
    """

    name: str
    available: bool
    detail: str
    exact: bool


def kernel_status() -> dict[str, KernelStatus]:
    """Which kernels are active on this machine, and why the others are not.

    llmref's C kernels (``int4_w4a32``, ``int8_w8a32``, ``int4_w4a8``) need a C
    compiler and a CPU path (AVX-512 or AVX2, detected at run time and lowered by
    ``LLMREF_CPU_ISA=avx512|avx2|none``); without them ``backend="auto"`` uses
    PyTorch's exact kernels, with the same numerics up to summation order. The
    first call may compile the C kernels (about a second).

    Returns
    -------
    dict of str to KernelStatus
        One entry per name in :data:`KERNELS`, in its order.

    Raises
    ------
    ValueError
        If ``LLMREF_CPU_ISA`` is set to something other than ``avx512``,
        ``avx2`` or ``none``.

    Examples
    --------
    >>> from llmref.quant.kernels import kernel_status
    >>> status = kernel_status()
    >>> status["int4_w4a32"].detail in ("native avx512", "native avx2") or not status[
    ...     "int4_w4a32"].available
    True
    """
    _native.selected_isa()  # validates LLMREF_CPU_ISA
    native = {"int4_w4a32": _wonly.library, "int8_w8a32": _wonly.library}
    native["int4_w4a8"] = _w4a8.library
    torch_ops = {
        "int4_tinygemm": "_weight_int4pack_mm_for_cpu",
        "int4_tinygemm_bf16": "_weight_int4pack_mm_for_cpu",
        "int8_weight": "_weight_int8pack_mm",
        "int8_weight_bf16": "_weight_int8pack_mm",
        "int8_dynamic": "_int_mm",
        "llm_int8": "_int_mm",
    }
    out: dict[str, KernelStatus] = {}
    for name, kernel in KERNELS.items():
        if name in native:
            lib = native[name]
            ok = lib() is not None
            detail = f"native {lib.isa()}" if ok else str(lib.unavailable_reason())
        elif name in torch_ops:
            ok = hasattr(torch, torch_ops[name])
            detail = "PyTorch" if ok else f"this PyTorch lacks torch.{torch_ops[name]}"
        else:
            ok, detail = True, "PyTorch"
        out[name] = KernelStatus(name, ok, detail, kernel.exact)
    return out
