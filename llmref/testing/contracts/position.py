"""Contract of a RoPE frequency rule (:data:`llmref.position.ROPE_SCALING`).

A rule called with its spec's ``example`` must return ``inv_freq`` of shape
``(head_dim // 2,)`` in the requested dtype, finite and non-negative, with the
float32 result the rounding of the float64 one, and a Python float attention
factor (exactly 1.0 unless the spec says the rule scales attention)
(:func:`check_frequencies`). Its declared parameters must be the ones it takes
(:func:`check_declaration`); a missing required parameter, an unknown one and an
odd head dimension must be refused by name (:func:`check_refusals`). Where
transformers' ``ROPE_INIT_FUNCTIONS`` has the rule, the two must agree bit for
bit (:func:`check_against_transformers`).

Contract of a position encoding's module (:data:`llmref.position.POSITION`): as the spec
declares ``traces``, ``torch.compile(backend="aot_eager", fullgraph=True)`` captures the
example call of its ``module`` and equals eager, or (a declared exemption) the capture
really fails (:func:`check_traces`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch

from ...position import ROPE_SCALING, PositionSpec, rope_frequencies
from ...position._registries import RopeRuleSpec
from ..equality import assert_identical, assert_within, forward_scale
from .tracing import capture_as_declared

__all__ = [
    "check_against_transformers",
    "check_declaration",
    "check_frequencies",
    "check_refusals",
    "check_traces",
    "transformers_frequencies",
    "transformers_has",
]

HEAD_DIM = RopeRuleSpec.EXAMPLE_HEAD_DIM
BASE = 10000.0


def _call(spec: RopeRuleSpec, params: Mapping[str, Any], **options: Any) -> tuple[Any, Any]:
    """The rule through :func:`rope_frequencies` if it is registered, else directly."""
    if ROPE_SCALING.get(spec.name) is spec:
        return rope_frequencies(HEAD_DIM, rope_type=spec.name, base=BASE, **params, **options)
    return spec.fn(HEAD_DIM, base=BASE, **params, **options)


def check_declaration(spec: RopeRuleSpec) -> None:
    """Assert ``required`` + ``optional`` are exactly the keywords ``spec.fn`` takes.

    Raises
    ------
    AssertionError
        Naming the undeclared or non-existent keys.
    """
    params = inspect.signature(spec.fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise AssertionError(f"rope_type {spec.name!r}: fn takes **kwargs; name its parameters")
    takes = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    takes -= set(RopeRuleSpec.COMMON)
    undeclared, absent = sorted(takes - spec.accepts), sorted(spec.accepts - takes)
    if undeclared or absent:
        raise AssertionError(
            f"rope_type {spec.name!r}: fn takes undeclared {undeclared}; "
            f"declared but not taken {absent}"
        )


def check_frequencies(spec: RopeRuleSpec) -> None:
    """Assert the rule's output on its example: shape, dtype, values, attention factor.

    Raises
    ------
    AssertionError
        Naming the rule and what is wrong.
    """
    what = f"rope_type {spec.name!r}"
    results = {}
    for dtype in (torch.float32, torch.float64):
        inv_freq, factor = _call(spec, spec.example, dtype=dtype)
        if not isinstance(inv_freq, torch.Tensor) or inv_freq.dtype != dtype:
            raise AssertionError(f"{what}: inv_freq must be a {dtype} tensor, got {inv_freq!r}")
        if inv_freq.shape != (HEAD_DIM // 2,):
            raise AssertionError(
                f"{what}: inv_freq shape {tuple(inv_freq.shape)}, expected ({HEAD_DIM // 2},)"
            )
        if not bool((torch.isfinite(inv_freq) & (inv_freq >= 0)).all()):
            raise AssertionError(f"{what}: inv_freq must be finite and >= 0, got {inv_freq}")
        if not isinstance(factor, float) or not math.isfinite(factor) or factor <= 0:
            raise AssertionError(f"{what}: attention_factor must be a float > 0, got {factor!r}")
        if not spec.scales_attention and factor != 1.0:
            raise AssertionError(
                f"{what}: attention_factor {factor} != 1.0 but the spec says the rule does "
                "not scale attention"
            )
        results[dtype] = inv_freq, factor
    (f32, a32), (f64, a64) = results[torch.float32], results[torch.float64]
    if a32 != a64:
        raise AssertionError(f"{what}: attention_factor depends on dtype: {a32} vs {a64}")
    # float32 rounds the exponent e of base ** -e: |ln(base ** -e)| * eps relative, plus the
    # power's and the rule's own few roundings.
    scale = torch.where(f64 > 0, f64 * (1 + f64.log().abs()), 0.0)
    assert_within(f32, f64, scale=scale, what=f"{what}: float32 against float64")
    meta, _ = _call(spec, spec.example, device="meta")
    if meta.device.type != "meta":
        raise AssertionError(f"{what}: inv_freq ignores device=")


def _expect(what: str, exc: type[Exception], words: list[str], call: Any) -> None:
    try:
        call()
    except exc as error:
        absent = [w for w in words if w not in str(error)]
        if absent:
            raise AssertionError(
                f"{what}: {exc.__name__} {str(error)!r} does not name {absent}"
            ) from None
        return
    raise AssertionError(f"{what}: no {exc.__name__} raised")


def check_refusals(spec: RopeRuleSpec) -> None:
    """Assert bad parameters are refused with errors that name them.

    Each required key left out gives a ``ValueError`` naming the key; an unknown
    key a ``TypeError`` naming it and listing the accepted ones; an odd
    ``head_dim`` a ``ValueError`` naming ``head_dim``.

    Raises
    ------
    AssertionError
        Naming the rule and the case.
    """
    what = f"rope_type {spec.name!r}"
    example = dict(spec.example)
    for key in spec.required:
        params = {k: v for k, v in example.items() if k != key}
        _expect(f"{what} without {key!r}", ValueError, [key], lambda p=params: _call(spec, p))
    # rope_frequencies lists the accepted keys (a direct call only names the bad one)
    accepted = sorted(spec.accepts)[:1] if ROPE_SCALING.get(spec.name) is spec else []
    _expect(
        f"{what} with an unknown key",
        TypeError,
        ["not_a_rope_parameter", *accepted],
        lambda: _call(spec, {**example, "not_a_rope_parameter": 1.0}),
    )
    _expect(
        f"{what} with head_dim 63",
        ValueError,
        ["head_dim"],
        lambda: spec.fn(HEAD_DIM - 1, **example),
    )


def transformers_has(spec: RopeRuleSpec) -> bool:
    """Whether transformers' ``ROPE_INIT_FUNCTIONS`` has a rule named ``spec.name``."""
    try:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    except ImportError:
        return False
    return spec.name in ROPE_INIT_FUNCTIONS


def transformers_frequencies(
    rope_type: str, head_dim: int, rope_parameters: Mapping[str, Any]
) -> tuple[torch.Tensor, float]:
    """transformers' ``ROPE_INIT_FUNCTIONS[rope_type]`` on a Llama config.

    ``max_position_embeddings`` and ``seq_len`` in ``rope_parameters`` go to
    the config and the call, as transformers takes them.
    """
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = dict(rope_parameters)
    max_position_embeddings = params.pop("max_position_embeddings", 4096)
    seq_len = params.pop("seq_len", None)
    config = LlamaConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": rope_type, "rope_theta": BASE, **params},
    )
    inv_freq, factor = ROPE_INIT_FUNCTIONS[rope_type](config, None, seq_len=seq_len)
    return inv_freq, float(factor)


def check_against_transformers(spec: RopeRuleSpec) -> None:
    """Assert the rule equals transformers' on its example: inv_freq bit for bit, the same factor.

    llmref runs transformers' float32 operations in their order on the same
    shapes, an identical operation sequence, so the policy asks for identity.

    Raises
    ------
    AssertionError
        Naming the rule.
    """
    what = f"rope_type {spec.name!r} against transformers"
    expected, expected_factor = transformers_frequencies(spec.name, HEAD_DIM, spec.example)
    inv_freq, factor = _call(spec, spec.example)
    assert_identical(inv_freq, expected.to(inv_freq.device), what=what)
    if factor != expected_factor:
        raise AssertionError(f"{what}: attention_factor {factor} != {expected_factor}")


def _tensors(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def check_traces(spec: PositionSpec, *, seed: int = 0) -> None:
    """The encoding's module traces as declared: one graph equal to eager, or a real break.

    The spec's ``example`` (drawn under ``seed``) gives an instance of ``module`` and
    one call's arguments. Declared ``traces=True``: the fullgraph capture succeeds
    and each output is within the float64 bound of eager's, for a scale of the
    call's matrix products (:func:`~llmref.testing.forward_scale`) plus the output's
    magnitude (its elementwise operations). Declared ``False``: the capture fails
    and the eager call succeeds (so the failure is the capture's, not the example's).
    An encoding without a module has nothing to check.

    Raises
    ------
    AssertionError
        Naming the encoding: the example is not an instance of ``module``, or the
        declaration and the capture disagree, or the traced result differs from eager.
    """
    if spec.module is None or spec.example is None:
        return
    what = f"position encoding {spec.name!r} ({spec.module})"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module, args, kwargs = spec.example()
    if type(module).__name__ != spec.module:
        raise AssertionError(f"{what}: the example is a {type(module).__name__}")
    with torch.no_grad():
        traced = capture_as_declared(what, bool(spec.traces), module, *args, **kwargs)
        eager = _tensors(module(*args, **kwargs))
        if traced is None:
            return
        scale = forward_scale(module, *args, **kwargs)
    for i, (out, ref) in enumerate(zip(_tensors(traced), eager, strict=True)):
        magnitude = float(ref.abs().max()) if ref.numel() else 0.0
        assert_within(out, ref, scale=scale + magnitude, what=f"{what}: traced output {i}")
