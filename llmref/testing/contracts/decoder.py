"""Contract of a decoder attention kind (:data:`llmref.models.ATTENTION_KINDS`).

Each check builds a small two-layer :class:`~llmref.models.DecoderLM` whose layers use
the kind (with the spec's ``example`` keywords), in float64 unless said otherwise:

- :func:`check_cached_decoding`: a prefill and then one token per step through the
  kind's default cache gives the logits of the full forward, within rounding.
- :func:`check_float32`: the float32 model's logits are within the equality policy's
  float32 bound (:func:`~llmref.testing.forward_scale`) of its float64 twin's.
- :func:`check_traces`: as the spec declares, ``torch.compile(backend="aot_eager",
  fullgraph=True)`` captures the forward and equals eager, or (a declared exemption)
  breaks the graph.
- :func:`check_kv_heads_rule`: a config with ``n_kv_heads`` outside the kind's declared
  rule is refused, naming the rule.
"""

from __future__ import annotations

from typing import Any

import torch

from ...models import DecoderConfig, DecoderLM, make_caches
from ...models.attention_kinds import AttentionKindSpec
from ..equality import assert_within, forward_scale
from .tracing import capture_as_declared

__all__ = [
    "check_cached_decoding",
    "check_float32",
    "check_kv_heads_rule",
    "check_traces",
    "small_model",
    "token_ids",
]

_VOCAB, _B, _T, _PREFILL = 64, 2, 9, 4


def _config(spec: AttentionKindSpec, **changes: Any) -> DecoderConfig:
    kw: dict[str, Any] = dict(
        vocab_size=_VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=48, init_std=0.2
    )
    kw.update(spec.example)
    kw.update(changes)
    return DecoderConfig(attention=spec.name, **kw)


def small_model(
    spec: AttentionKindSpec, *, dtype: torch.dtype = torch.float64, seed: int = 0
) -> DecoderLM:
    """The suite's two-layer :class:`~llmref.models.DecoderLM` of kind ``spec`` (its
    ``example`` keywords), in eval mode, weights drawn from ``seed`` (the global RNG
    is left as it was).

    Parameters
    ----------
    spec : AttentionKindSpec
        The attention kind.
    dtype : torch.dtype, default torch.float64
        The model's dtype.
    seed : int, default 0
        Seed of the weights.

    Returns
    -------
    DecoderLM
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return DecoderLM(_config(spec), dtype=dtype).eval()


def token_ids(seed: int = 0) -> torch.Tensor:
    """Random token ids ``(2, 9)`` for :func:`small_model`, drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, _VOCAB, (_B, _T), generator=g)


def check_cached_decoding(spec: AttentionKindSpec, *, seed: int = 0) -> None:
    """Prefill, then one token per step through the default caches, equals the full forward.

    Raises
    ------
    AssertionError
        Naming the kind and the step whose logits differ beyond rounding.
    """
    model, ids = small_model(spec, dtype=torch.float64, seed=seed), token_ids(seed)
    with torch.no_grad():
        full = model(ids)
        scale = forward_scale(model, ids)
        caches = make_caches(model, None, batch_size=_B, max_len=_T)
        steps = [model(ids[:, :_PREFILL], caches=caches)]
        steps += [model(ids[:, t : t + 1], caches=caches) for t in range(_PREFILL, _T)]
    assert_within(
        torch.cat(steps, dim=1), full, scale=scale, what=f"{spec.name}: cached decoding's logits"
    )


def check_float32(spec: AttentionKindSpec, *, seed: int = 0) -> None:
    """The float32 model is within the float32 bound of the same weights in float64.

    Raises
    ------
    AssertionError
        Naming the kind, if the float32 logits differ beyond that bound.
    """
    model64, ids = small_model(spec, dtype=torch.float64, seed=seed), token_ids(seed)
    model32 = DecoderLM(model64.config, dtype=torch.float32).eval()
    model32.load_state_dict(model64.state_dict())
    with torch.no_grad():
        reference = model64(ids)
        out = model32(ids)
    scale = forward_scale(model64, ids)
    assert_within(out, reference, scale=scale, what=f"{spec.name}: float32 logits")


def check_traces(spec: AttentionKindSpec, *, seed: int = 0) -> None:
    """A declared one-graph kind is captured by ``fullgraph=True`` and equals eager; a
    declared exemption really breaks the graph (:func:`~.tracing.capture_as_declared`).

    Raises
    ------
    AssertionError
        Naming the kind, when the declaration and the capture disagree.
    """
    model, ids = small_model(spec, dtype=torch.float64, seed=seed), token_ids(seed)
    with torch.no_grad():
        out = capture_as_declared(spec.name, spec.traces, model, ids)
        if out is None:
            return
        eager = model(ids)
    assert_within(out, eager, scale=forward_scale(model, ids), what=f"{spec.name}: traced")


def check_kv_heads_rule(spec: AttentionKindSpec) -> None:
    """Every ``n_kv_heads`` dividing ``n_heads = 4`` that the rule refuses raises a
    ``ValueError`` naming the rule; the ones it accepts build.

    Raises
    ------
    AssertionError
        Naming the kind and the ``n_kv_heads`` handled against its rule.
    """
    n_heads = 4
    for kv in (1, 2, 4):
        accepted = spec.kv_heads is None or spec.kv_heads(kv, n_heads)
        try:
            _config(spec, n_kv_heads=kv)
        except ValueError as err:
            rule = spec.kv_heads_rule.format(n_heads=n_heads)
            if accepted or (rule and rule not in str(err)):
                raise AssertionError(
                    f"{spec.name}: n_kv_heads={kv} refused ({err}); its rule is {rule!r}"
                ) from None
            continue
        if not accepted:
            raise AssertionError(f"{spec.name}: n_kv_heads={kv} breaks its rule but was built")
