"""Contract of an attention backend (:data:`llmref.attention.ATTENTION`).

A backend's function must give :func:`~llmref.attention.naive_attention`'s result
under the equality policy on every case its spec says it supports (:func:`check_case`),
and :func:`~llmref.attention.attention` must refuse, by name, every case it does
not support (:func:`check_refuses`): an option outside its ``features``, or a
bias it would round (``bias_precision="input"`` with 16-bit inputs and a wider
bias). Differentiable backends also match the reference's gradients
(:func:`check_gradients`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...attention import attention, causal_mask, naive_attention
from ...attention.functional import AttentionBackendSpec
from ..equality import (
    LOW_PRECISION,
    assert_low_precision,
    assert_within,
    attention_scale,
)

__all__ = [
    "CASES",
    "AttentionCase",
    "check_case",
    "check_gradients",
    "check_refuses",
    "low_precision_reference",
    "supports",
]

# (B, H, H_kv, T, S, D, Dv)
_SHAPES = {
    "mha": (2, 4, 4, 7, 7, 16, 16),
    "gqa": (2, 8, 2, 9, 9, 32, 32),
    "cross": (1, 4, 2, 3, 11, 16, 24),
    "long": (1, 2, 1, 70, 150, 16, 16),  # longer than a block of most tiled kernels
    "tall": (1, 4, 2, 12, 5, 16, 16),  # more queries than keys: bottom-right hides rows
}


@dataclass(frozen=True)
class AttentionCase:
    """One input of the contract: a shape, a dtype and the options used.

    ``bias_dtype`` is the bias's dtype (``None``: no bias; ``"same"``: the
    inputs' dtype). ``masked_rows`` hides query rows 1 and 2 completely.
    ``bottom_right`` aligns the causal mask bottom-right
    (``causal_alignment="bottom_right"``, FlashAttention's).
    """

    shape: str
    dtype: torch.dtype
    causal: bool = False
    mask: bool = False
    bias_dtype: torch.dtype | str | None = None
    softcap: float | None = None
    sinks: bool = False
    masked_rows: bool = False
    bottom_right: bool = False

    @property
    def id(self) -> str:
        parts = [self.shape, str(self.dtype).removeprefix("torch.")]
        parts += ["causal"] * self.causal + ["bottom-right"] * self.bottom_right
        parts += ["mask"] * self.mask
        if self.bias_dtype is not None:
            bias = self.bias_dtype
            parts.append("bias" if bias == "same" else f"bias-{str(bias).removeprefix('torch.')}")
        parts += ["softcap"] * (self.softcap is not None) + ["sinks"] * self.sinks
        return "-".join(parts + ["masked-rows"] * self.masked_rows)

    @property
    def features(self) -> frozenset[str]:
        used = {"bias": self.bias_dtype is not None, "softcap": self.softcap is not None}
        used["sinks"] = self.sinks
        used["causal_alignment"] = self.bottom_right
        return frozenset(name for name, on in used.items() if on)

    def resolved_bias_dtype(self) -> torch.dtype | None:
        if self.bias_dtype == "same":
            return self.dtype
        assert not isinstance(self.bias_dtype, str)
        return self.bias_dtype

    def inputs(self) -> dict[str, Any]:
        """The call's tensors and options, generated from a fixed seed."""
        B, H, H_kv, T, S, D, Dv = _SHAPES[self.shape]
        g = torch.Generator().manual_seed(sum(map(ord, self.id)))
        f64 = torch.float64

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=g, dtype=f64)

        q, k, v = rand(B, H, T, D).to(self.dtype), rand(B, H_kv, S, D), rand(B, H_kv, S, Dv)
        kwargs: dict[str, Any] = {"q": q, "k": k.to(self.dtype), "v": v.to(self.dtype)}
        kwargs["is_causal"] = self.causal
        if self.bottom_right:  # only then: a backend without the feature takes no such keyword
            kwargs["causal_alignment"] = "bottom_right"
        mask = None
        if self.mask:
            mask = torch.rand(B, 1, T, S, generator=g) > 0.3
            mask[..., 0] = True
        if self.masked_rows:
            mask = torch.ones(B, 1, T, S, dtype=torch.bool) if mask is None else mask
            mask[:, :, 1:3] = False
        kwargs["mask"] = mask
        bias_dtype = self.resolved_bias_dtype()
        if bias_dtype is not None:
            # ALiBi-like: a per-head ramp over -60 .. 0, where 16-bit rounding shows.
            ramp = torch.arange(S, dtype=f64) - S + 1
            slopes = torch.linspace(60.0 / S, 4.0 / S, H, dtype=f64).view(H, 1, 1)
            kwargs["bias"] = (slopes * ramp + 0.5 * rand(H, T, S)).to(bias_dtype)
        if self.softcap is not None:
            kwargs["softcap"] = self.softcap
        if self.sinks:
            kwargs["sinks"] = rand(H).to(self.dtype)
        return kwargs


def _cases() -> list[AttentionCase]:
    cases = []
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        for shape in _SHAPES:
            cases.append(AttentionCase(shape, dtype))
            cases.append(AttentionCase(shape, dtype, causal=True, mask=True))
        cases.append(AttentionCase("gqa", dtype, causal=True, bias_dtype="same"))
        cases.append(AttentionCase("gqa", dtype, mask=True, softcap=5.0))
        cases.append(AttentionCase("cross", dtype, sinks=True, causal=True))
        cases.append(AttentionCase("gqa", dtype, mask=True, masked_rows=True))
        for shape in ("cross", "long", "tall"):
            cases.append(AttentionCase(shape, dtype, causal=True, bottom_right=True))
        cases.append(AttentionCase("long", dtype, causal=True, bottom_right=True, mask=True))
        if dtype in LOW_PRECISION:
            # A wider bias than the inputs: the reference adds it in float32.
            cases.append(AttentionCase("cross", dtype, bias_dtype=torch.float32))
            cases.append(AttentionCase("gqa", dtype, causal=True, bias_dtype=torch.float32))
    cases.append(
        AttentionCase("gqa", torch.float32, causal=True, bias_dtype="same", softcap=8.0, sinks=True)
    )
    return cases


CASES: tuple[AttentionCase, ...] = tuple(_cases())
"""Every input the contract tries; a backend runs those it :func:`supports`."""


def supports(spec: AttentionBackendSpec, case: AttentionCase) -> bool:
    """Whether ``spec`` declares support for ``case`` (its features, and its bias precision)."""
    bias_dtype = case.resolved_bias_dtype()
    if not case.features <= spec.features:
        return False
    return bias_dtype is None or not spec.rounds_bias(case.dtype, bias_dtype)


def low_precision_reference(inputs: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
    """The naive computation with every step in ``dtype``: FlashAttention's ``ref_lp``.

    A bias of a wider dtype is added as it is (type promotion makes the scores
    wider from there on), as naive code written in ``dtype`` would.
    """
    q, k, v = (inputs[name] for name in "qkv")
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    cap = inputs.get("softcap")
    if cap is not None:
        scores = torch.tanh(scores / cap) * cap
    bias = inputs.get("bias")
    if bias is not None:
        scores = scores + bias
    mask = inputs.get("mask")
    T, S = scores.shape[-2:]
    if inputs.get("is_causal"):
        offset = S - T if inputs.get("causal_alignment") == "bottom_right" else 0
        causal = causal_mask(T, S, offset=offset)
        mask = causal if mask is None else mask & causal
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    sinks = inputs.get("sinks")
    if sinks is not None:
        column = sinks.to(scores.dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        scores = torch.cat([scores, column], dim=-1)
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)[..., :S]
    return (weights.to(dtype) @ v).to(dtype)


def check_case(spec: AttentionBackendSpec, case: AttentionCase) -> None:
    """Assert ``spec``'s backend equals the float64 naive reference on ``case``.

    float32/float64 results are held to ``c * eps * attention_scale``; 16-bit
    results to FlashAttention's rule against the naive computation in the low
    dtype. Fully masked rows must be exactly zero.

    Raises
    ------
    AssertionError
        Naming the backend and the case.
    """
    what = f"attention backend {spec.name!r} on {case.id}"
    inputs = case.inputs()
    out = spec.fn(**inputs)
    if out.dtype != case.dtype or out.shape != inputs["q"].shape[:-1] + inputs["v"].shape[-1:]:
        raise AssertionError(
            f"{what}: output {out.dtype} {tuple(out.shape)}, expected {case.dtype}"
        )
    if not spec.exact:  # held to no bound; it runs only when named, or as "fast"
        if not bool(torch.isfinite(out).all()):
            raise AssertionError(f"{what}: non-finite output")
        return
    wide = {
        key: value.double()
        if isinstance(value, torch.Tensor) and value.is_floating_point()
        else value
        for key, value in inputs.items()
    }
    reference = naive_attention(**wide)
    if case.masked_rows and not bool((out[:, :, 1:3] == 0).all()):
        raise AssertionError(f"{what}: fully masked rows are not zero")
    T, S = out.shape[-2], inputs["k"].shape[-2]
    if case.causal and case.bottom_right and T > S and not bool((out[:, :, : T - S] == 0).all()):
        raise AssertionError(f"{what}: the {T - S} rows bottom-right alignment hides are not zero")
    if case.dtype in LOW_PRECISION:
        reference_lp = low_precision_reference(inputs, case.dtype)
        assert_low_precision(out, reference, reference_lp, what=what)
        return
    q, k, v = (wide[name] for name in "qkv")
    bias = wide.get("bias")
    scale = attention_scale(q, k, v, bias=bias)
    sinks = wide.get("sinks")
    if sinks is not None:  # the sink logit joins every row's normalising sum
        scale = scale + sinks.abs().max() * v.abs().max()
    assert_within(out, reference, scale=scale, what=what)


def check_refuses(spec: AttentionBackendSpec, case: AttentionCase) -> None:
    """Assert :func:`~llmref.attention.attention` refuses ``case`` for ``spec`` with a clear error.

    The ``ValueError`` must name the backend and, for a missing feature, the
    feature; for a bias the backend would round, say so.

    Raises
    ------
    AssertionError
        If the call runs, or the error does not say why.
    """
    what = f"attention backend {spec.name!r} on {case.id}"
    try:
        attention(**case.inputs(), backend=spec.name)
    except ValueError as error:
        message = str(error)
        missing = case.features - spec.features
        expected = [repr(spec.name), *(repr(f) for f in sorted(missing))]
        if not missing:
            expected.append("round")
        absent = [word for word in expected if word not in message]
        if absent:
            raise AssertionError(f"{what}: refusal {message!r} does not mention {absent}") from None
        return
    raise AssertionError(f"{what}: ran, but its spec says it does not support this case")


def check_gradients(spec: AttentionBackendSpec) -> None:
    """Assert a differentiable backend's float64 gradients equal the naive reference's.

    Uses every feature the backend supports at once, on a GQA shape with a mask
    (queries fewer than keys when it takes a bottom-right causal mask).

    Raises
    ------
    AssertionError
        Naming the backend and the input whose gradient is off.
    """
    bottom_right = "causal_alignment" in spec.features
    case = AttentionCase(
        "cross" if bottom_right else "gqa",  # T < S: bottom-right differs from top-left
        torch.float64,
        causal=True,
        mask=True,
        bias_dtype="same" if "bias" in spec.features else None,
        softcap=6.0 if "softcap" in spec.features else None,
        sinks="sinks" in spec.features,
        bottom_right=bottom_right,
    )
    inputs = case.inputs()
    names = [n for n in ("q", "k", "v", "bias", "sinks") if isinstance(inputs.get(n), torch.Tensor)]
    grads = {}
    for label, fn in (("impl", spec.fn), ("ref", naive_attention)):
        leaves = {n: inputs[n].clone().requires_grad_(True) for n in names}
        out = fn(**{**inputs, **leaves})
        dout = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
        grads[label] = torch.autograd.grad(out, list(leaves.values()), dout)
    q, k, v = (inputs[n] for n in "qkv")
    # Each gradient sums products of probabilities, |dout| <= 1, values and (scaled) keys or
    # queries over the T x S scores: bound the summed magnitude by the attention scale times
    # the largest such factor, and the row and column counts.
    s = 1.0 / math.sqrt(q.shape[-1])
    big = max(float(t.abs().max()) for t in (q, k, v))
    T, S = q.shape[-2], k.shape[-2]
    scale = float(attention_scale(q, k, v, bias=inputs.get("bias")).max())
    scale *= (1.0 + s * big * q.shape[-1]) * (T + S)
    for name, got, want in zip(names, grads["impl"], grads["ref"], strict=True):
        assert_within(got, want, scale=scale, what=f"backend {spec.name!r}: d{name}")
