"""KV caches: cached decoding equals the full forward, constant memory where promised, errors."""

from __future__ import annotations

import pytest
import torch

from llmref.attention import MultiHeadAttention, MultiHeadLatentAttention, naive_attention
from llmref.attention.masking import cache_mask
from llmref.cache import (
    CACHES,
    DynamicCache,
    LatentCache,
    PagedCache,
    QuantizedCache,
    SinkCache,
    SlidingWindowCache,
    StaticCache,
)
from llmref.position import RotaryEmbedding
from llmref.testing import (
    BOUND_FACTOR,
    assert_identical,
    assert_lower,
    assert_within,
    attention_scale,
    eps,
)
from tests.models.helpers import forward_scale

WINDOW, N_SINK = 4, 2
LIBRARY = {n for n in CACHES if not n.startswith("toy_")}  # worked examples: their own suite


def make_mha(window=None, seed=0, position="rope"):
    torch.manual_seed(seed)
    if position == "alibi":  # an additive bias over (query, key) positions instead of rotations
        from llmref.position import AlibiBias

        return MultiHeadAttention(
            32, 4, n_kv_heads=2, position_bias=AlibiBias(4), window=window
        ).double()
    rope = RotaryEmbedding(8, dtype=torch.float64)
    return MultiHeadAttention(32, 4, n_kv_heads=2, rope=rope, window=window).double()


def decode(layer, x, cache, prefill):
    """Prefill `prefill` tokens, then feed the rest one by one; concatenate the outputs."""
    outs = [layer(x[:, :prefill], is_causal=True, cache=cache)]
    for t in range(prefill, x.shape[1]):
        outs.append(layer(x[:, t : t + 1], is_causal=True, cache=cache))
    return torch.cat(outs, dim=1)


KV_KINDS = {
    "dynamic": (DynamicCache, None),
    "static": (lambda: StaticCache(64), None),
    "sliding_window": (lambda: SlidingWindowCache(WINDOW), WINDOW),
    "paged": (lambda: PagedCache(n_blocks=16, block_size=3), None),
}


def test_every_registered_kind_is_covered():
    assert LIBRARY == {*KV_KINDS, "sink", "latent", "quantized"}


@pytest.mark.parametrize("position", ["rope", "alibi"])
@pytest.mark.parametrize("kind", KV_KINDS)
@pytest.mark.parametrize("prefill", [1, 3, 9])
def test_cached_decoding_equals_full_forward(kind, prefill, position):
    """With ALiBi the bias must follow the cache's key positions (the ring buffer's slot order)."""
    make_cache, window = KV_KINDS[kind]
    layer = make_mha(window, position=position)
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    full = layer(x, is_causal=True)  # with `window`, the masked full forward
    # other GEMM shapes and key splits: the same sums to rounding
    scale = forward_scale(layer, x, is_causal=True)
    assert_within(decode(layer, x, make_cache(), prefill), full, scale=scale)


def test_latent_cache_decoding_equals_full_forward():
    torch.manual_seed(1)
    mla = MultiHeadLatentAttention(
        32, 4, kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=6
    ).double()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    scale = forward_scale(mla, x, is_causal=True)
    assert_within(decode(mla, x, LatentCache(), 4), mla(x, is_causal=True), scale=scale)


@pytest.mark.parametrize("prefill", [1, 3])
def test_sink_cache_equals_full_forward_over_the_kept_tokens(prefill):
    """Each step equals a fresh forward over [sinks + recent window] at positions 0..n-1."""
    layer = make_mha()
    x = torch.randn(2, 14, 32, dtype=torch.float64)
    cache = SinkCache(N_SINK, WINDOW, rope=layer.rope)
    layer(x[:, :prefill], is_causal=True, cache=cache)
    for t in range(prefill, 14):
        step = layer(x[:, t : t + 1], is_causal=True, cache=cache)
        kept = [j for j in range(t + 1) if j < N_SINK or t - j < WINDOW]
        expected = layer(x[:, kept], is_causal=True)[:, -1:]
        assert_within(step, expected, scale=forward_scale(layer, x[:, kept], is_causal=True))


def test_sliding_window_prefill_longer_than_the_window():
    layer = make_mha(WINDOW)
    x = torch.randn(1, 11, 32, dtype=torch.float64)
    cache = SlidingWindowCache(WINDOW)
    scale = forward_scale(layer, x, is_causal=True)
    assert_within(decode(layer, x, cache, prefill=9), layer(x, is_causal=True), scale=scale)
    assert len(cache) == WINDOW


@pytest.mark.parametrize(
    "make_cache",
    [lambda: SlidingWindowCache(64), lambda: SinkCache(4, 61)],
    ids=["sliding", "sink"],
)
def test_memory_is_constant_over_4000_tokens(make_cache):
    cache = make_cache()
    k = torch.randn(1, 2, 1, 16)
    sizes = []
    for t in range(4000):
        cache.update(k, k)
        if t in (200, 1000, 3999):
            sizes.append(cache.nbytes)
    assert sizes[0] == sizes[1] == sizes[2] == 2 * 2 * 64 * 16 * 4
    growing = DynamicCache()
    for _ in range(200):
        growing.update(k, k)
    assert growing.nbytes >= 2 * 2 * 200 * 16 * 4


def test_dynamic_cache_grows_geometrically():
    cache = DynamicCache()
    capacities = set()
    for _ in range(300):
        cache.update(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4))
        capacities.add(cache._k.shape[2])
    assert capacities == {16, 32, 64, 128, 256, 512}  # 6 reallocations for 300 appends


def test_reset_and_reuse():
    for cache in (DynamicCache(), StaticCache(8), SlidingWindowCache(3), SinkCache(1, 3)):
        cache.update(torch.randn(1, 1, 5, 2), torch.randn(1, 1, 5, 2))
        cache.reset()
        assert len(cache) == 0 and cache.seen_tokens == 0
        k, _ = cache.update(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
        assert k.shape[2] == 2 and cache.key_positions.tolist() == [[0, 1]]


def test_bad_input():
    with pytest.raises(ValueError, match="static cache is full: it holds 3 of max_len=4"):
        cache = StaticCache(4)
        cache.update(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
        cache.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    cache = DynamicCache()
    cache.update(torch.zeros(2, 1, 3, 2), torch.zeros(2, 1, 3, 2))
    with pytest.raises(ValueError, match=r"k must match the cached \(B, H_kv, \*, D\)"):
        cache.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    with pytest.raises(TypeError, match="k must have the cache's dtype"):
        cache.update(torch.zeros(2, 1, 1, 2, dtype=torch.float64), torch.zeros(2, 1, 1, 2))
    with pytest.raises(ValueError, match=r"k and v must agree on \(B, H_kv, T\)"):
        cache.update(torch.zeros(2, 1, 1, 2), torch.zeros(2, 1, 2, 2))
    with pytest.raises(ValueError, match="k must be 4-D"):
        cache.update(torch.zeros(2, 1, 2), torch.zeros(2, 1, 2))
    for bad in (lambda: StaticCache(0), lambda: SlidingWindowCache(0), lambda: SinkCache(-1, 2)):
        with pytest.raises(ValueError, match="must be >= "):
            bad()


def test_wrong_cache_for_the_attention_kind():
    mha = make_mha()
    x = torch.randn(1, 3, 32, dtype=torch.float64)
    with pytest.raises(TypeError, match="needs a cache of keys and values, got LatentCache"):
        mha(x, is_causal=True, cache=LatentCache())
    mla = MultiHeadLatentAttention(
        32, 4, kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=6
    ).double()
    with pytest.raises(TypeError, match="needs a latent cache"):
        mla(x, is_causal=True, cache=DynamicCache())


def test_paged_cache_with_sequences_of_different_lengths_equals_each_alone():
    """Ragged prefill (left padded), joint decoding, then a finished sequence's blocks reused."""
    g = torch.Generator().manual_seed(7)
    kv = lambda T: torch.randn(2, 2, T, 4, generator=g, dtype=torch.float64)  # noqa: E731
    q_new = lambda T: torch.randn(2, 4, T, 4, generator=g, dtype=torch.float64)  # noqa: E731
    paged, alone = PagedCache(n_blocks=8, block_size=2), [DynamicCache(), DynamicCache()]
    lengths = torch.tensor([5, 2])
    steps = [(q_new(5), kv(5), kv(5), lengths)] + [(q_new(1), kv(1), kv(1), None)] * 3
    for q, k, v, lens in steps:
        T = q.shape[2]
        mask = cache_mask(paged, T, batch_size=2, lengths=lens)
        k_all, v_all = paged.update(k, v, lengths=lens)
        out = naive_attention(q, k_all, v_all, mask=mask)
        for b in range(2):
            n = T if lens is None else int(lens[b])
            ref_mask = cache_mask(alone[b], n)
            kb, vb = alone[b].update(k[b : b + 1, :, T - n :], v[b : b + 1, :, T - n :])
            qb = q[b : b + 1, :, T - n :]
            ref = naive_attention(qb, kb, vb, mask=ref_mask)
            # the same keys, gathered from blocks and padded: rounding only
            assert_within(out[b : b + 1, :, T - n :], ref, scale=attention_scale(qb, kb, vb))
            padding = out[b, :, : T - n]
            assert_identical(padding, torch.zeros_like(padding))  # padding queries see nothing
    assert paged.lengths == [8, 5] and len(paged.free_blocks) == 8 - 4 - 3
    used = paged.block_tables[0]
    paged.free(0)
    assert sorted(paged.free_blocks[-len(used) :]) == sorted(used)
    k, v = kv(1), kv(1)
    k_all, _ = paged.update(k, v)
    assert paged.lengths == [1, 6] and paged.block_tables[0] == [used[0]]
    assert_identical(k_all[0, :, :1], k[0])  # read back as written
    assert paged.key_positions[0, 1:].eq(-1).all()


def test_paged_cache_runs_out_of_blocks():
    cache = PagedCache(n_blocks=2, block_size=2)
    cache.update(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2))
    with pytest.raises(ValueError, match="paged cache is out of blocks: all 2 blocks of 2"):
        cache.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    with pytest.raises(ValueError, match=r"lengths must be 1 ints in \[0, 1\]"):
        cache.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2), lengths=torch.tensor([2]))


# -- KIVI quantized cache -------------------------------------------------------------------


def test_quantized_cache_with_everything_in_the_residual_is_exact():
    layer = make_mha()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    cache = QuantizedCache(bits=2, group_size=4, residual_length=16)
    scale = forward_scale(layer, x, is_causal=True)
    assert_within(decode(layer, x, cache, 3), layer(x, is_causal=True), scale=scale)
    assert cache.n_quantized == 0


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantized_cache_error_is_within_half_a_step_per_group(bits):
    """Keys per channel over G tokens, values per token: error <= (max - min) / (2^b - 1) / 2."""
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 2, 24, 8, generator=g)
    k[..., 3] *= 50  # an outlier channel, as real keys have
    v = torch.randn(1, 2, 24, 8, generator=g)
    cache = QuantizedCache(bits=bits, group_size=8, residual_length=0)
    k_hat, v_hat = cache.update(k, v)  # returned before quantization: exact
    assert_identical(k_hat, k)
    assert cache.n_quantized == 24
    k_hat, v_hat = cache.update(k[:, :, :0], v[:, :, :0])  # now read back the quantized chunks
    levels = 2**bits - 1
    for s in range(0, 24, 8):
        kc, vc = k[:, :, s : s + 8], v[:, :, s : s + 8]
        k_step = (kc.amax(2, keepdim=True) - kc.amin(2, keepdim=True)) / levels  # per channel
        v_step = (vc.amax(3, keepdim=True) - vc.amin(3, keepdim=True)) / levels  # per token
        # ... plus the float32 rounding of code * scale + minimum, of the group's magnitude
        k_round = BOUND_FACTOR * eps(torch.float32) * kc.abs().amax(2, keepdim=True)
        v_round = BOUND_FACTOR * eps(torch.float32) * vc.abs().amax(3, keepdim=True)
        assert torch.all((k_hat[:, :, s : s + 8] - kc).abs() <= k_step / 2 + k_round)
        assert torch.all((v_hat[:, :, s : s + 8] - vc).abs() <= v_step / 2 + v_round)
    # per-channel scales keep the outlier from spoiling the other channels
    normal = (k_hat - k)[..., [0, 1, 2, 4, 5, 6, 7]].abs().max()
    assert normal < (k[..., 3].abs().max() / levels / 2)


def test_quantized_cache_decoding_error_falls_with_bits():
    layer = make_mha()
    x = torch.randn(1, 40, 32, dtype=torch.float64)
    full = layer(x, is_causal=True)
    errors = []
    for bits in (2, 4, 8):
        cache = QuantizedCache(bits=bits, group_size=4, residual_length=4)
        out = decode(layer, x.float().double(), cache, 8)
        errors.append((out - full).abs().max().item())
    # max |error| for 2/4/8 bits, make_mha seeds 0/1/2, measured alike natively and with
    # ATEN_CPU_CAPABILITY=avx2, 1 and 2 threads: 0.0593/0.0115/0.00077,
    # 0.0477/0.0079/0.00050, 0.0453/0.0118/0.00071. Smallest gaps: 2 -> 4 bits 0.0335,
    # 4 -> 8 bits 0.0074, 8 bits to 1e-2 0.0092; the margins are at most half of them.
    assert_lower(errors[1], errors[0], margin=0.016, what="4-bit error below 2-bit")
    assert_lower(errors[2], errors[1], margin=0.0035, what="8-bit error below 4-bit")
    assert_lower(errors[2], 1e-2, margin=0.0045, what="8-bit error below 1e-2")


def test_quantized_cache_memory():
    k = torch.randn(1, 2, 4096, 64, dtype=torch.float16)
    dense, kivi = DynamicCache(), QuantizedCache(bits=2, group_size=32, residual_length=128)
    dense.update(k, k)
    kivi.update(k, k)
    # 2-bit codes + float32 scale/offset per group + a 128-token fp16 residual: < 1/4 of fp16
    assert kivi.nbytes < dense.nbytes / 4
    with pytest.raises(ValueError, match="bits must be 2, 4 or 8, got 3"):
        QuantizedCache(bits=3)


def test_kv_bytes_per_token_matches_measured_caches():
    from llmref.cache import kv_bytes_per_token

    cfg = {"n_layers": 3, "n_heads": 8, "n_kv_heads": 2, "head_dim": 16}
    k = torch.randn(1, 2, 64, 16, dtype=torch.float16)
    static = StaticCache(64)
    static.update(k, k)
    assert kv_bytes_per_token(cfg) == 3 * static.nbytes // 64
    kivi = QuantizedCache(bits=4, group_size=32, residual_length=0)
    kivi.update(k, k)
    assert kv_bytes_per_token(cfg, "quantized", bits=4, group_size=32) == 3 * kivi.nbytes // 64
    mla = {"n_layers": 2, "kv_lora_rank": 12, "qk_rope_head_dim": 4}
    latent = LatentCache()
    latent.update(torch.randn(1, 1, 10, 12), torch.randn(1, 1, 10, 4))
    assert kv_bytes_per_token(mla, "latent", dtype=torch.float32) == 2 * latent.nbytes // 16
    transformers = pytest.importorskip("transformers")
    llama = transformers.LlamaConfig(
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, hidden_size=4096
    )
    assert kv_bytes_per_token(llama, dtype=torch.bfloat16) == 131072
    with pytest.raises(ValueError, match="kind must be one of"):
        kv_bytes_per_token(cfg, "ring")
    with pytest.raises(ValueError, match="needs kv_lora_rank"):
        kv_bytes_per_token(cfg, "latent")


# -- positions: what caches report instead of masks ------------------------------------------

POSITION_KINDS = {
    "dynamic": DynamicCache,
    "static": lambda: StaticCache(32),
    "sliding_window": lambda: SlidingWindowCache(3),
    "paged": lambda: PagedCache(n_blocks=16, block_size=2),
    "latent": LatentCache,
    "quantized": lambda: QuantizedCache(bits=4, group_size=2, residual_length=1),
    "sink": lambda: SinkCache(2, 3),
}


def test_every_kind_reports_positions():
    assert set(POSITION_KINDS) == LIBRARY


@pytest.mark.parametrize("kind", POSITION_KINDS)
def test_next_key_positions_predicts_the_update(kind):
    """The model builds masks before the layers run: the prediction must be the update's."""
    cache = POSITION_KINDS[kind]()
    g = torch.Generator().manual_seed(0)
    steps = [(5, torch.tensor([5, 2])), (1, None), (3, torch.tensor([3, 3])), (1, None)]
    for T, lengths in steps:
        predicted = cache.next_key_positions(T, batch_size=2, lengths=lengths)
        queries = cache.query_positions(T, batch_size=2, lengths=lengths)
        k = torch.randn(2, 1, T, 4, generator=g)
        k_all, _ = cache.update(k, k) if lengths is None else cache.update(k, k, lengths=lengths)
        assert_identical(cache.key_positions, predicted)
        assert k_all.shape[2] == predicted.shape[1]
        real = queries >= 0
        if lengths is not None:
            assert real.sum(-1).tolist() == lengths.tolist()
        # every real query is a key of the update, at its own position
        for b in range(2):
            assert set(queries[b][real[b]].tolist()) <= set(cache.key_positions[b].tolist())


def test_left_padding_positions_count_real_tokens_only():
    cache = DynamicCache()
    k = torch.randn(2, 1, 4, 2)
    cache.update(k, k, lengths=torch.tensor([4, 1]))
    assert cache.key_positions.tolist() == [[0, 1, 2, 3], [-1, -1, -1, 0]]
    assert cache.positions_for(2, batch_size=2).tolist() == [[4, 5], [1, 2]]
    assert cache.ragged


def test_sink_cache_renumbers_rope_positions_but_reports_sequence_positions():
    cache = SinkCache(n_sink=1, window=2)
    for _ in range(5):
        cache.update(torch.randn(1, 1, 1, 2), torch.randn(1, 1, 1, 2))
    assert cache.key_positions.tolist() == [[0, 3, 4]]  # sink 0, then the newest
    assert cache.positions_for(1).tolist() == [[2]]  # 2 kept: the next token is rotated to 2
    assert cache.query_positions(1).tolist() == [[5]]  # but it is the 6th token


def test_cache_specs_declare_rules_instead_of_masks():
    from llmref.attention.masking import cache_mask_mods
    from llmref.cache import spec_of

    assert CACHES["sliding_window"].mask == "sliding_window"
    assert CACHES["sink"].mask == "sink" and CACHES["sink"].renumbers_positions
    assert not CACHES["quantized"].exact and CACHES["dynamic"].traces
    assert spec_of(StaticCache(2)).name == "static"  # not its base class's
    for name, spec in CACHES.items():
        if name not in LIBRARY:
            continue
        assert "attention_mask" not in vars(spec.fn), name  # no cache kind defines a mask
        assert spec.layout == "dense" and not spec.per_head_positions and not spec.needs_scores
    assert len(cache_mask_mods(DynamicCache())) == 0
    assert len(cache_mask_mods(SinkCache(1, 2), window=4)) == 2


def test_cache_spec_checks_itself():
    from llmref.cache import CacheSpec

    with pytest.raises(ValueError, match="stores must be one of"):
        CacheSpec(name="x", fn=DynamicCache, stores="both")
    with pytest.raises(ValueError, match="layout must be one of"):
        CacheSpec(name="x", fn=DynamicCache, layout="sparse")
    with pytest.raises(ValueError, match=r"mask_params .* without a mask"):
        CacheSpec(name="x", fn=DynamicCache, mask_params=("window",))


def test_deprecated_names_warn_and_still_work():
    cache = DynamicCache()
    cache.update(torch.randn(1, 1, 3, 2), torch.randn(1, 1, 3, 2))
    with pytest.warns(DeprecationWarning, match="positions_for"):
        assert cache.next_position == 3
    with pytest.warns(DeprecationWarning, match="masking.cache_mask"):
        mask = cache.attention_mask(3)
    assert_identical(mask[0, 0], torch.ones(3, 3, dtype=torch.bool).tril())


def test_bad_lengths():
    cache = DynamicCache()
    k = torch.zeros(2, 1, 3, 2)
    with pytest.raises(TypeError, match="lengths must be an integer tensor"):
        cache.update(k, k, lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"lengths must be \(B,\) = \(2,\)"):
        cache.update(k, k, lengths=torch.tensor([1]))
    with pytest.raises(ValueError, match=r"lengths must be 2 ints in \[0, 3\]"):
        QuantizedCache().update(k, k, lengths=torch.tensor([1, 4]))
