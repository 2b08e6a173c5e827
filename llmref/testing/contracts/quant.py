"""Contract suites of quantization: what every format, method and kernel must satisfy.

Each ``check_*`` function takes a registry spec (a
:class:`~llmref.quant.FormatSpec`, :class:`~llmref.quant.MethodSpec` or
:class:`~llmref.quant.kernels.KernelSpec`) and raises ``AssertionError`` naming
the entry when the contract does not hold. ``tests/testing/test_quant_contracts.py``
runs them over every registered entry, the worked examples of
``tests/extending/`` included.

Comparisons follow the equality policy (:mod:`llmref.testing.equality`):
storage round trips and re-quantization bit for bit (identical operations),
kernels within ``c · eps · |x| |W|`` of the float64 reference computed with the
activation semantics they implement, quality as a ratio with a stated margin.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ...quant import FORMATS, QuantizedTensor, QuantLinear, quantize, rtn
from ...quant.kernels import KernelSpec, activation_semantics, int8_vectorwise_quant
from ...quant.methods.base import MethodSpec
from ...quant.registry import FormatSpec
from ..equality import assert_identical, assert_within, matmul_scale

__all__ = [
    "KERNEL_WEIGHTS",
    "METHOD_MARGIN",
    "check_format_bad_input",
    "check_format_packing",
    "check_format_ragged_rows",
    "check_format_round_trip",
    "check_format_storage",
    "check_kernel_matches_reference",
    "check_kernel_refuses_unsupported",
    "check_kv_method",
    "check_weight_method",
    "outlier_inputs",
]

CPU = torch.device("cpu")

METHOD_MARGIN = 0.05
"""A weight method's output MSE on held-out inputs may exceed round-to-nearest's
by at most this fraction. Measured as MSE over RTN's (seeds 0, 1, 2; 64 x 256
weights; 512 calibration and 256 held-out rows of :func:`outlier_inputs`): GPTQ
0.05, AWQ 0.34-0.38, HQQ 0.64-0.74, SmoothQuant 0.22-0.23 (against naive W8A8),
LLM.int8() 1.00 (its weights are RTN's int8 weights, so only the margin's
rounding room applies). On independent Gaussian inputs GPTQ is *worse* than RTN
on held-out rows (1.3-1.7 at 512 rows): with nothing to exploit between features
it fits the calibration sample's noise, hence correlated inputs here.
"""


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _block(spec: FormatSpec) -> int:
    """The elements per scale of ``spec`` by default (ggml's fixed block, or 32)."""
    return spec.group_size or 32


def _sample(spec: FormatSpec, rows: int = 6, seed: int = 0) -> torch.Tensor:
    """A float32 tensor whose rows are a few of the format's default blocks long."""
    n = max(4 * _block(spec), 256)
    return torch.randn(rows, n, generator=_generator(seed))


def _q(spec: FormatSpec, x: Any, **options: Any) -> QuantizedTensor:
    """Quantize through the spec's own declared fields (options class, quantize)."""
    opts = spec.options.from_kwargs(spec.name, options)
    qt: QuantizedTensor = spec.quantize(x, **opts.as_kwargs())
    return qt


def _dq(spec: FormatSpec, qt: QuantizedTensor) -> torch.Tensor:
    """Dequantize through the spec's own ``dequantize``."""
    return spec.dequantize(qt).reshape(qt.shape).to(qt.dtype)


def _group_absmax(x: torch.Tensor, qt: QuantizedTensor) -> torch.Tensor:
    g = int(qt.options.get("group_size") or x.shape[-1])
    a = x.detach().double().abs().reshape(-1, g).amax(dim=1, keepdim=True)
    return a.expand(-1, g).reshape(x.shape)


def _relative_step(spec: FormatSpec, qt: QuantizedTensor) -> float:
    """The largest gap of the format's grid over its largest magnitude."""
    v = spec.values().to(torch.float64)
    if spec.bits is None and "bits" in qt.options:  # the "int" family: its grid at qt's width
        qmax = 2 ** (int(qt.options["bits"]) - 1) - 1
        v = torch.arange(-qmax, qmax + 1, dtype=torch.float64)
    v = torch.unique(v[torch.isfinite(v)])
    return float((v[1:] - v[:-1]).max() / v.abs().max())


def check_format_round_trip(spec: FormatSpec, seed: int = 0) -> None:
    """Quantize then dequantize: shape, dtype and device kept, error within the grid's step.

    Every element is within ``2 · step · max|x|`` of its group, where ``step`` is
    the largest gap of the format's grid relative to its largest value (half a
    step is the round-to-nearest bound; the factor 2 leaves room for scales
    rounded to a power of two or to a few bits). Quantizing twice gives the
    same codes (deterministic), and 1-D and 3-D tensors keep their shape.
    """
    x = _sample(spec, seed=seed)
    qt = _q(spec, x)
    y = _dq(spec, qt)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device, (
        f"format {spec.name!r}: dequantize gave {tuple(y.shape)} {y.dtype}, "
        f"expected {tuple(x.shape)} {x.dtype}"
    )
    assert bool(torch.isfinite(y).all()), f"format {spec.name!r}: non-finite values decoded"
    bound = 2 * _relative_step(spec, qt) * _group_absmax(x, qt)
    err = (y.double() - x.double()).abs()
    worst = float((err - bound).max())
    assert worst <= 0, (
        f"format {spec.name!r}: round-trip error exceeds 2 grid steps of the group absmax "
        f"by {worst:.3g}"
    )
    assert_identical(_dq(spec, _q(spec, x)), y, what=f"format {spec.name!r} twice")
    for shape in ((x.shape[-1],), (2, 3, x.shape[-1])):
        xs = torch.randn(*shape, generator=_generator(seed + 1))
        assert _dq(spec, _q(spec, xs)).shape == xs.shape, (
            f"format {spec.name!r}: shape {shape} not kept"
        )
    zeros = torch.zeros(2, x.shape[-1])
    assert_identical(_dq(spec, _q(spec, zeros)), zeros, what=f"format {spec.name!r} on zeros")


def check_format_packing(spec: FormatSpec, seed: int = 0) -> None:
    """Storage holds at least the codes' bits, and little more: packed codes.

    ``bits_per_weight`` below the declared code width would mean lost codes. The
    overhead (scales, zero points, block headers) may be at most 64 bits per group
    or 1 bit per weight, whichever is larger, plus 64 bits per tensor: 4-bit codes
    stored one per byte would exceed it.
    """
    x = _sample(spec, seed=seed)
    qt = _q(spec, x)
    bits = spec.bits if spec.bits is not None else int(qt.options["bits"])
    n = x.numel()
    g = int(qt.options.get("group_size") or x.shape[-1])
    stored = qt.nbytes * 8
    assert stored >= n * bits, (
        f"format {spec.name!r}: {stored} bits stored for {n} codes of {bits} bits"
    )
    slack = max(64 * (n // g), n) + 64
    assert stored <= n * bits + slack, (
        f"format {spec.name!r}: {stored} bits stored for {n} codes of {bits} bits "
        f"(more than max(64 bits per group of {g}, 1 bit per weight) of overhead: "
        "codes not packed?)"
    )
    assert math.isclose(qt.bits_per_weight, stored / n), (
        f"format {spec.name!r}: bits_per_weight {qt.bits_per_weight} != nbytes * 8 / numel"
    )


def check_format_storage(spec: FormatSpec, seed: int = 0) -> None:
    """``state_dict`` round trips bit for bit, alone and inside a :class:`QuantLinear`."""
    x = _sample(spec, seed=seed)
    qt = quantize(x, spec.name)
    again = QuantizedTensor.from_state_dict(qt.state_dict(prefix="w."), prefix="w.")
    assert again.equal(qt), f"format {spec.name!r}: state_dict round trip changed the storage"
    assert_identical(again.dequantize(), qt.dequantize(), what=f"format {spec.name!r} reloaded")
    layer = QuantLinear(qt, backend="reference")
    other = QuantLinear(quantize(torch.zeros_like(x), spec.name), backend="reference")
    other.load_state_dict(layer.state_dict())
    assert other.qweight.equal(qt), f"format {spec.name!r}: QuantLinear state_dict round trip"


def check_format_bad_input(spec: FormatSpec) -> None:
    """NaN/Inf, integer, 0-D and empty tensors, unknown options and bad group sizes are refused."""
    x = _sample(spec)
    cases: list[tuple[Any, dict[str, Any], type[Exception], str]] = [
        (x.masked_fill(x > 1.5, float("nan")), {}, ValueError, "finite"),
        (x.masked_fill(x > 1.5, float("inf")), {}, ValueError, "finite"),
        (x.to(torch.int32), {}, TypeError, "dtype"),
        (torch.tensor(1.0), {}, ValueError, "1-D"),
        (torch.zeros(0, 32), {}, ValueError, "non-empty"),
        (x, {"not_an_option": 1}, TypeError, "not_an_option"),
        (x, {"group_size": 0}, ValueError, "group_size"),
    ]
    for value, options, error, words in cases:
        try:
            _q(spec, value, **options)
        except error as exc:
            assert words in str(exc), (
                f"format {spec.name!r}: {type(exc).__name__} should name {words!r}, got: {exc}"
            )
        else:
            raise AssertionError(
                f"format {spec.name!r}: no {error.__name__} for {words!r} input {options or ''}"
            )


def check_format_ragged_rows(spec: FormatSpec) -> None:
    """Rows that are not a whole number of blocks: a ``ValueError`` naming ``group_size``.

    Formats whose default scale covers a whole row or tensor (no blocks) must
    instead quantize such rows within the round-trip bound.
    """
    block = _block(spec)
    x = torch.randn(3, 2 * block + block // 2 + 1, generator=_generator(5))
    if spec.granularity in ("channel", "tensor"):
        qt = _q(spec, x)
        bound = 2 * _relative_step(spec, qt) * _group_absmax(x, qt)
        assert bool(((_dq(spec, qt).double() - x.double()).abs() <= bound).all()), (
            f"format {spec.name!r}: rows of {x.shape[-1]} elements decoded out of bound"
        )
        return
    try:
        _q(spec, x)
    except ValueError as exc:
        assert "group_size" in str(exc), (
            f"format {spec.name!r}: the error for rows of {x.shape[-1]} (blocks of {block}) "
            f"should name group_size, got: {exc}"
        )
    else:
        raise AssertionError(
            f"format {spec.name!r}: rows of {x.shape[-1]} elements are not a whole number of "
            f"blocks of {block}, yet no ValueError"
        )


# -- methods ---------------------------------------------------------------------------


def outlier_inputs(n: int, d: int, *, seed: int, outliers: int = 8, factor: float = 10.0):
    """Correlated activations ``(n, d)`` whose first ``outliers`` channels are ``factor`` x larger.

    The distribution LLM activations have: features that are far from independent
    (here ``d / 4`` latent factors mixed by a fixed random matrix, plus 10 % noise)
    and a few channels of large magnitude (:cite:t:`dettmers2022llmint8`). The
    mixing matrix depends on ``d`` only, so calibration and held-out rows drawn
    with different seeds come from the same distribution.

    Examples
    --------
    >>> from llmref.testing.contracts.quant import outlier_inputs
    >>> x = outlier_inputs(512, 64, seed=0)
    >>> bool(x[:, :8].abs().mean() > 5 * x[:, 8:].abs().mean())
    True
    """
    mixing = torch.randn(d // 4, d, generator=_generator(d)) / math.sqrt(d // 4)
    g = _generator(seed)
    x = torch.randn(n, d // 4, generator=g) @ mixing + 0.1 * torch.randn(n, d, generator=g)
    x[:, :outliers] *= factor
    return x


def _method_format(spec: MethodSpec) -> str:
    if spec.formats is None or "int4" in spec.formats:
        return "int4"
    return spec.formats[0]


def _output_mse(qt: QuantizedTensor, w: torch.Tensor, x: torch.Tensor) -> float:
    layer = QuantLinear(qt, backend="reference")
    with torch.no_grad():
        return float(F.mse_loss(layer(x).double(), (x @ w.T).double()))


def check_weight_method(spec: MethodSpec, seed: int = 0, *, margin: float = METHOD_MARGIN) -> float:
    """On held-out outlier inputs, output MSE at most ``(1 + margin)`` times RTN's.

    Both use the method's default options and the same format; the RTN weight
    gets the same activation semantics as the method's (``act_quant``), so a
    W8A8 method is compared with naive W8A8. Returns the ratio.
    """
    assert spec.applies_to == "weight", f"method {spec.name!r} is not a weight method"
    fmt = _method_format(spec)
    w = torch.randn(64, 256, generator=_generator(seed)) / 16
    calib = outlier_inputs(512, 256, seed=seed + 1)
    held_out = outlier_inputs(256, 256, seed=seed + 2)
    qt = spec.fn(w, calib if spec.needs_inputs else None, fmt=fmt)
    assert isinstance(qt, QuantizedTensor) and qt.shape == w.shape, (
        f"method {spec.name!r} must return a QuantizedTensor of the weight's shape"
    )
    act: dict[str, Any] = {k: qt.options[k] for k in ("act_quant", "threshold") if k in qt.options}
    base = rtn(w, fmt=fmt)
    base = QuantizedTensor(base.fmt, base.shape, base.dtype, base.tensors, {**base.options, **act})
    ours, theirs = _output_mse(qt, w, held_out), _output_mse(base, w, held_out)
    assert ours <= (1 + margin) * theirs, (
        f"method {spec.name!r}: output MSE {ours:.4g} on held-out inputs exceeds RTN's "
        f"{theirs:.4g} by more than {margin:.0%} ({fmt})"
    )
    return ours / theirs


def check_kv_method(spec: MethodSpec, seed: int = 0) -> None:
    """The cache contract of a KV method.

    Keys and values ``(B, H, T, D)`` come back in their shape and dtype; quantizing
    the tokens in chunks of the method's group (as a cache does while decoding)
    gives exactly the result of quantizing them at once; more bits give a smaller
    error; bad shapes raise ``ValueError``.
    """
    assert spec.applies_to == "kv" and spec.inverse is not None, (
        f"method {spec.name!r} is not a KV method with an inverse"
    )
    cfg = spec.make_config({})
    group = int(getattr(cfg, "group_size", 32))
    g = _generator(seed)
    k = torch.randn(1, 2, 2 * group, 16, generator=g)
    k[..., :2] *= 8  # keys have outlier channels
    v = torch.randn(1, 2, 2 * group, 16, generator=g)
    k_hat, v_hat = spec.inverse(spec.fn(k, v))
    assert k_hat.shape == k.shape and v_hat.shape == v.shape and k_hat.dtype == k.dtype, (
        f"KV method {spec.name!r}: shapes or dtype not kept"
    )
    chunks = [
        spec.inverse(spec.fn(k[:, :, part], v[:, :, part]))
        for part in (slice(0, group), slice(group, 2 * group))
    ]
    for i, what in ((0, "keys"), (1, "values")):
        assert_identical(
            torch.cat([c[i] for c in chunks], dim=2),
            (k_hat, v_hat)[i],
            what=f"KV method {spec.name!r}: {what} quantized by chunks",
        )
    if hasattr(cfg, "bits"):
        errors = []
        for bits in (2, 4, 8):
            kb, _ = spec.inverse(spec.fn(k, v, bits=bits))
            errors.append(float((kb - k).abs().max()))
        assert errors[0] > errors[1] > errors[2], (
            f"KV method {spec.name!r}: error does not fall with bits 2, 4, 8: {errors}"
        )
    try:
        spec.fn(k[0], v[0])
    except ValueError:
        pass
    else:
        raise AssertionError(f"KV method {spec.name!r}: 3-D keys accepted")


# -- kernels ---------------------------------------------------------------------------


def _with_options(qt: QuantizedTensor, **options: Any) -> QuantizedTensor:
    return QuantizedTensor(qt.fmt, qt.shape, qt.dtype, qt.tensors, {**qt.options, **options})


def _kernel_weights() -> dict[str, QuantizedTensor]:
    w = torch.randn(64, 512, generator=_generator(11)) / 8
    weights = {
        "int4 g32": quantize(w, "int4", group_size=32),
        "int4 g128 asym": quantize(w, "int4", group_size=128, symmetric=False),
        "int4 g64 float zero": quantize(
            w, "int4", group_size=64, symmetric=False, zero_point="float"
        ),
        "int4 per channel": quantize(w, "int4", group_size=None),
        "int8 per channel": quantize(w, "int8"),
        "int8 g64": quantize(w, "int8", group_size=64),
        "q4_0": quantize(w, "q4_0"),
        "q8_0": quantize(w, "q8_0"),
        "nf4": quantize(w, "nf4"),
        "int4 odd rows": quantize(w[:60], "int4", group_size=64),
    }
    weights["int8 W8A8"] = _with_options(weights["int8 per channel"], act_quant="per_token_int8")
    weights["int4 W4A8"] = _with_options(weights["int4 g128 asym"], act_quant="per_token_int8")
    weights["int8 LLM.int8()"] = _with_options(
        weights["int8 per channel"], act_quant="llm_int8", threshold=3.0
    )
    return weights


KERNEL_WEIGHTS = _kernel_weights()
"""The weights every kernel is tried on: int4 and int8 layouts, ggml blocks, NF4, and
weights that declare int8 activations (per token, LLM.int8())."""


def _reference(x: torch.Tensor, qt: QuantizedTensor, semantics: str) -> tuple[torch.Tensor, ...]:
    """``x W^T`` in float64 with ``semantics``' activations, and those activations."""
    xs = x.double()
    if semantics in ("per_token_int8", "llm_int8"):
        threshold = float(qt.options["threshold"]) if semantics == "llm_int8" else 0.0
        q = int8_vectorwise_quant(x, threshold=threshold)
        xs = q.codes.double() * (q.absmax.double() / 127).unsqueeze(-1)
        xs[:, q.outlier_cols] = x[:, q.outlier_cols].double()  # LLM.int8(): float columns
    return xs @ qt.dequantize(dtype=torch.float64).T, xs


def _magnitude(qt: QuantizedTensor) -> torch.Tensor:
    """Per weight, what an integer kernel's terms are made of: ``|w| + 2 (2^bits - 1) s``.

    Kernels that keep codes unsigned and apply the zero point after sum terms up to
    that size (a weight near zero in a group of large scale rounds like one of
    ``(2^bits - 1) s``).
    """
    w = qt.dequantize(dtype=torch.float64).abs()
    scale = qt.tensors.get("scale", qt.tensors.get("d"))
    if scale is None:
        return w
    bits = int(qt.options.get("bits") or FORMATS[qt.fmt].bits or 8)
    g = qt.numel // scale.numel()
    s = scale.double().abs().reshape(-1, 1).expand(-1, g).reshape(qt.shape)
    return w + 2 * (2**bits - 1) * s


def check_kernel_matches_reference(spec: KernelSpec, seed: int = 0) -> int:
    """On every weight it supports, the kernel equals the reference under the policy.

    The reference is the float64 product with the activation semantics the
    weight declares (float, or int8 per token, or LLM.int8()'s decomposition),
    checked where the kernel implements them (``spec.activations``); a kernel
    run by name on a weight of other semantics trades exactness for speed and
    is not held to it. Exact kernels: within ``c · eps(float32) · |x| |W|``;
    bfloat16 kernels: within ``c · eps(bfloat16) · |x| |W|``. Returns the
    number of weights checked.
    """
    checked = 0
    for label, qt in KERNEL_WEIGHTS.items():
        semantics = activation_semantics(qt)
        lossy = spec.activations == "bfloat16" and semantics == "float"
        if not spec.supports(qt, CPU) or not (lossy or semantics == spec.activations):
            continue
        layer = QuantLinear(qt, backend=spec.name)
        dtype = torch.bfloat16 if lossy else torch.float32
        for m in (1, 5, 33):
            x = torch.randn(m, qt.shape[1], generator=_generator(seed + m))
            with torch.no_grad():
                y = layer(x)
            ref, xs = _reference(x, qt, semantics)
            scale = matmul_scale(xs, _magnitude(qt).T)
            assert_within(y, ref, scale=scale, dtype=dtype, what=f"kernel {spec.name!r} on {label}")
        checked += 1
    return checked


def check_kernel_refuses_unsupported(spec: KernelSpec) -> None:
    """Named as a backend, a kernel refuses (``ValueError`` naming it) what it does not support.

    Also: a weight that still carries an ``input_scale`` is refused by
    :func:`~llmref.quant.kernels.select_kernel`, and ``auto`` picks this
    kernel only for weights it is exact for.
    """
    from ...quant.kernels import select_kernel

    for label, qt in KERNEL_WEIGHTS.items():
        if spec.supports(qt, CPU):
            chosen = select_kernel(qt, CPU, "auto")
            assert chosen.name != spec.name or spec.is_exact_for(qt), (
                f"auto picked kernel {spec.name!r} for {label}, which it is not exact for"
            )
            continue
        layer = QuantLinear(qt, backend=spec.name)
        try:
            layer(torch.zeros(1, qt.shape[1]))
        except ValueError as exc:
            assert spec.name in str(exc), (
                f"kernel {spec.name!r}: refusal of {label} should name the backend: {exc}"
            )
        else:
            raise AssertionError(f"kernel {spec.name!r} ran {label}, which it does not support")
    scaled = KERNEL_WEIGHTS["int8 per channel"].with_input_scale(torch.ones(512))
    try:
        select_kernel(scaled, CPU, spec.name)
    except ValueError as exc:
        assert "input_scale" in str(exc), f"kernel {spec.name!r}: input_scale refusal: {exc}"
    else:
        raise AssertionError(f"kernel {spec.name!r} accepted a weight with an input_scale")
