"""Contract of a KV cache kind (:data:`llmref.cache.CACHES`).

Each check builds the kind's example instance (``spec.example``, else ``spec.fn()``)
and drives it with random keys, values and queries in float64:

- :func:`check_cached_decoding`: a prefill and then one token per step, attending
  to what :meth:`~llmref.cache.KVCache.update` returns under the mask built from the
  positions it reports, equals attention over the whole sequence under the kind's
  declared rule (:func:`~llmref.attention.masking.cache_mask_mods`). Exact kinds
  within rounding; lossy ones (``exact=False``) within the bound their own storage
  error gives (derived below), which must then be above rounding.
- :func:`check_positions`: :meth:`~llmref.cache.KVCache.next_key_positions` predicts
  the update's ``key_positions``, with and without left padding.
- :func:`check_left_padding`: a left-padded row returns, for its real tokens, exactly
  the keys and values the row returns alone (bit for bit).
- :func:`check_memory`: ``nbytes`` holds at least what is kept (or, lossy, less than
  full precision), stays constant when the declared rule bounds the keys kept, and
  ``reset`` empties the cache.
- :func:`check_traces`: as the spec declares ``traces``, a decoding step of a small
  decoder through the cache is captured as one graph by ``torch.compile(backend=
  "aot_eager", fullgraph=True)``, equal to the eager step and leaving the cache as
  eager does, or (a declared exemption) the capture really fails.
"""

from __future__ import annotations

import torch

from ...attention import naive_attention
from ...attention.masking import cache_mask, cache_mask_mods, positions_mask
from ...cache import CacheSpec, KVCache
from ...models import ATTENTION_KINDS, make_caches
from ..equality import (
    BOUND_FACTOR,
    assert_identical,
    assert_within,
    attention_scale,
    eps,
    forward_scale,
)
from .decoder import small_model, token_ids
from .tracing import capture_as_declared

__all__ = [
    "check_cached_decoding",
    "check_left_padding",
    "check_memory",
    "check_positions",
    "check_traces",
]

_B, _H, _H_KV, _D, _T, _PREFILL = 2, 4, 2, 8, 14, 3


def _make(spec: CacheSpec) -> KVCache:
    cache = spec.example() if spec.example is not None else spec.fn()
    if not isinstance(cache, KVCache):
        raise AssertionError(f"{spec.name}: the example is a {type(cache).__name__}, not a KVCache")
    return cache


def _inputs(seed: int, B: int = _B, T: int = _T) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, _H, T, _D, generator=g, dtype=torch.float64)
    k = torch.randn(B, _H_KV, T, _D, generator=g, dtype=torch.float64)
    v = torch.randn(B, _H_KV, T, _D, generator=g, dtype=torch.float64)
    return q, k, v


def check_cached_decoding(spec: CacheSpec, *, seed: int = 0) -> None:
    """Decoding through the cache equals attention over the whole sequence, under its rule.

    For a lossy kind the bound is the one its own storage error gives: with
    ``dk``, ``dv`` the largest errors of the returned keys and values and ``q`` a
    query, each score moves by at most ``ds = scale * max_j sum_d |q_d| |dk_jd|``, the
    softmax weights by at most ``2 ds`` in l1 (its Jacobian ``diag(p) - p p^T`` has
    l-inf-to-l1 norm <= 2), so an output moves by at most ``2 ds max|v| + max|dv|``.

    Raises
    ------
    AssertionError
        Naming the kind, if a step is outside the bound.
    """
    cache = _make(spec)
    q, k, v = _inputs(seed)
    keys = torch.arange(_T)
    full_mask = positions_mask(keys, keys, mask_mods=cache_mask_mods(cache))
    reference = naive_attention(q, k, v, mask=full_mask)
    scale = attention_scale(q, k, v)
    lossy_error = []
    start = 0
    for stop in [_PREFILL, *range(_PREFILL + 1, _T + 1)]:
        T = stop - start
        mask = cache_mask(cache, T, batch_size=_B)
        k_all, v_all = cache.update(k[:, :, start:stop], v[:, :, start:stop])
        what = f"{spec.name}: tokens {start}..{stop - 1} decoded through the cache"
        if k_all.shape[2] != mask.shape[-1]:
            raise AssertionError(
                f"{what}: update returned {k_all.shape[2]} keys, its positions predicted "
                f"{mask.shape[-1]}"
            )
        out = naive_attention(q[:, :, start:stop], k_all, v_all, mask=mask)
        ref = reference[:, :, start:stop]
        if spec.exact:
            assert_within(out, ref, scale=scale[:, :, start:stop], what=what)
        else:
            bound = _storage_bound(q[:, :, start:stop], k, v, k_all, v_all, cache)
            rounding = BOUND_FACTOR * eps(torch.float64) * scale[:, :, start:stop]
            err = (out - ref).abs().amax(-1, keepdim=True)
            if not bool((err <= bound + rounding).all()):
                worst = float((err - bound - rounding).max())
                raise AssertionError(f"{what}: outside its storage bound by {worst:.3g}")
            lossy_error.append(float(err.max()))
        start = stop
    if not spec.exact and max(lossy_error) <= BOUND_FACTOR * eps(torch.float64) * float(
        scale.max()
    ):
        raise AssertionError(f"{spec.name}: declared exact=False but decodes within rounding")


def _storage_bound(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_all: torch.Tensor,
    v_all: torch.Tensor,
    cache: KVCache,
) -> torch.Tensor:
    """Per query row, the output error the stored keys' and values' errors allow."""
    positions = cache.key_positions  # (B, S): which true token each returned slot holds
    index = positions.clamp(min=0)[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
    valid = (positions >= 0)[:, None, :, None]
    dk = torch.where(valid, k_all - k.gather(2, index), 0.0).abs()  # (B, H_kv, S, D)
    dv = torch.where(valid, v_all - v.gather(2, index), 0.0).abs()
    group = q.shape[1] // k.shape[1]
    dk, dv = dk.repeat_interleave(group, 1), dv.repeat_interleave(group, 1)
    ds = (q.abs() @ dk.transpose(-1, -2)).amax(-1, keepdim=True) / q.shape[-1] ** 0.5
    return 2 * ds * v.abs().max() + dv.amax((-1, -2))[..., None, None]


def check_positions(spec: CacheSpec, *, seed: int = 0) -> None:
    """``next_key_positions`` and ``query_positions`` agree with what ``update`` does.

    Raises
    ------
    AssertionError
        Naming the kind and the step.
    """
    cache = _make(spec)
    _, k, _ = _inputs(seed, T=5)
    steps = [(5, torch.tensor([5, 2])), (1, None), (3, torch.tensor([3, 3])), (1, None)]
    for i, (T, lengths) in enumerate(steps):
        predicted = cache.next_key_positions(T, batch_size=_B, lengths=lengths)
        queries = cache.query_positions(T, batch_size=_B, lengths=lengths)
        new = k[:, :, :T]
        k_all, _ = cache.update(new, new, lengths=lengths)
        what = f"{spec.name} step {i}"
        assert_identical(cache.key_positions.cpu(), predicted, what=f"{what}: key_positions")
        if k_all.shape[2] != predicted.shape[1]:
            raise AssertionError(
                f"{what}: {k_all.shape[2]} keys for {predicted.shape[1]} positions"
            )
        for b in range(_B):
            real = queries[b][queries[b] >= 0].tolist()
            expected = T if lengths is None else int(lengths[b])
            if len(real) != expected or not set(real) <= set(cache.key_positions[b].tolist()):
                raise AssertionError(
                    f"{what}: row {b}'s new tokens are not keys at their positions"
                )


def check_left_padding(spec: CacheSpec, *, seed: int = 0) -> None:
    """A left-padded row stores and returns what it does alone, bit for bit.

    Raises
    ------
    AssertionError
        Naming the kind, the step and the row.
    """
    _, k, v = _inputs(seed, T=12)
    pads = [0, 3]
    batched = _make(spec)
    alone = [_make(spec) for _ in pads]
    prompt = 6
    lengths = torch.tensor([prompt - p for p in pads])
    out = batched.update(k[:, :, :prompt], v[:, :, :prompt], lengths=lengths)
    refs = [
        a.update(k[b : b + 1, :, p:prompt], v[b : b + 1, :, p:prompt])
        for b, (a, p) in enumerate(zip(alone, pads, strict=True))
    ]
    for t in range(prompt, 12):
        for b, (got, ref) in enumerate(zip(_rows(batched, out), refs, strict=True)):
            mine = _real(alone[b], ref, 0)
            for name, x, y in (("keys", got[0], mine[0]), ("values", got[1], mine[1])):
                assert_identical(x, y, what=f"{spec.name}, before token {t}, row {b}: {name}")
        out = batched.update(k[:, :, t : t + 1], v[:, :, t : t + 1])
        refs = [
            a.update(k[b : b + 1, :, t : t + 1], v[b : b + 1, :, t : t + 1])
            for b, a in enumerate(alone)
        ]


def _real(
    cache: KVCache, kv: tuple[torch.Tensor, torch.Tensor], b: int
) -> tuple[torch.Tensor, ...]:
    """Row ``b``'s real keys and values, in order of position."""
    positions = cache.key_positions[b]
    order = positions.argsort()[(positions.sort().values >= 0)]
    return kv[0][b][:, order.to(kv[0].device)], kv[1][b][:, order.to(kv[1].device)]


def _rows(cache: KVCache, kv: tuple[torch.Tensor, torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
    return [_real(cache, kv, b) for b in range(kv[0].shape[0])]


def check_memory(spec: CacheSpec, *, steps: int = 60) -> None:
    """``nbytes`` is honest: what is kept (less, for lossy kinds), bounded under a window rule.

    Raises
    ------
    AssertionError
        Naming the kind.
    """
    cache = _make(spec)
    token = torch.randn(1, _H_KV, 1, _D)
    per_token = 2 * _H_KV * _D * token.element_size()
    sizes = []
    for _ in range(steps):
        cache.update(token, token)
        sizes.append(cache.nbytes)
    kept = len(cache) * per_token
    if spec.exact and sizes[-1] < kept:
        raise AssertionError(f"{spec.name}: nbytes={sizes[-1]} < the {kept} bytes it keeps")
    if not spec.exact and sizes[-1] >= steps * per_token:
        raise AssertionError(f"{spec.name}: a lossy cache holds no less than full precision")
    if spec.mask is not None and sizes[steps // 2] != sizes[-1]:
        raise AssertionError(f"{spec.name}: memory grows ({sizes[steps // 2]} -> {sizes[-1]})")
    cache.reset()
    if len(cache) != 0 or cache.seen_tokens != 0:
        raise AssertionError(f"{spec.name}: reset() left {len(cache)} tokens")


def check_traces(spec: CacheSpec, *, seed: int = 0) -> None:
    """A decoding step through the cache is one graph equal to eager, as ``traces`` declares.

    The model is the decoder suite's two-layer float64 model
    (:func:`~llmref.testing.contracts.decoder.small_model`) of the first attention
    kind whose caches store what this one stores (``"kv"``: MHA; ``"latent"``: MLA),
    every layer with the kind's example cache. Two copies of the caches take the same
    prefill of 6 tokens eagerly (longer than the examples' windows of 4, and two whole
    blocks of the paged example's 3, so the step evicts or takes a new block); then
    the 7th token goes through each, compiled and eager.

    Raises
    ------
    AssertionError
        Naming the kind: the declaration and the capture disagree, the traced step's
        logits are outside the float64 bound of the eager step's, or the traced step
        left other key positions in the cache than the eager one.
    """
    kind = next((k for k in ATTENTION_KINDS.values() if k.stores == spec.stores), None)
    if kind is None:
        raise AssertionError(f"{spec.name}: no decoder attention kind stores {spec.stores!r}")
    model, ids = small_model(kind, dtype=torch.float64, seed=seed), token_ids(seed)
    prefill, B = 6, ids.shape[0]
    ids = ids[:, : prefill + 1]
    eager_caches, traced_caches = (
        make_caches(model, lambda i: _make(spec), batch_size=B, max_len=ids.shape[1])
        for _ in range(2)
    )
    what = f"cache {spec.name!r}: a decoding step"
    with torch.no_grad():
        model(ids[:, :prefill], caches=eager_caches)
        model(ids[:, :prefill], caches=traced_caches)
        step = ids[:, prefill:]
        out = capture_as_declared(what, spec.traces, model, step, caches=traced_caches)
        if out is None:
            return
        eager = model(step, caches=eager_caches)
    assert_within(out, eager, scale=forward_scale(model, ids), what=f"{what}, traced")
    for i, (traced, ref) in enumerate(zip(traced_caches, eager_caches, strict=True)):
        assert_identical(
            traced.key_positions.cpu(),
            ref.key_positions.cpu(),
            what=f"{what}, traced: layer {i}'s key_positions",
        )
