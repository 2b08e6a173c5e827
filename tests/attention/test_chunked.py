"""chunked_attention: FlashAttention in PyTorch, exact to the reference, with its own backward."""

from __future__ import annotations

import types

import pytest
import torch

from llmref.attention import chunked, chunked_attention, naive_attention, sliding_window_mask
from llmref.testing import assert_within, attention_scale
from tests.attention.reference import (
    assert_attention,
    attention_bound,
    attention_err,
    exact,
    grad_scales,
    textbook_attention,
)
from tests.attention.test_functional import CONFIGS, make_qkv, random_mask

BLOCKS = [1, 3, (2, 5), 64, 4096]


def options(config, which, seed=3):
    """Keyword options exercising one feature (or all of them) on a config."""
    B, H, _, T, S, _, _ = config
    g = torch.Generator().manual_seed(seed)
    opts = {}
    if which in ("mask", "all"):
        opts["mask"] = random_mask((B, 1, T, S), seed=seed)
    if which in ("causal", "all"):
        opts["is_causal"] = True
    if which in ("bias", "all"):
        opts["bias"] = torch.randn(1, H, T, S, generator=g, dtype=torch.float64)
    if which in ("softcap", "all"):
        opts["softcap"] = 1.5
    if which in ("sinks", "all"):
        opts["sinks"] = torch.randn(H, generator=g, dtype=torch.float64)
    return opts


FEATURES = ["plain", "mask", "causal", "bias", "softcap", "sinks", "all"]


def spy_on_fixed_shift(monkeypatch, force=None):
    """Record, per query block, whether the forward took the fixed-shift path; ``force``
    False sends every block down the running-max path."""
    taken: list[bool] = []
    fits = chunked._ScoreBound.fits
    monkeypatch.setattr(chunked._ScoreBound, "min_rows_per_column", 0.0)  # tiny test shapes

    def spy(self, qb):
        ok = fits(self, qb) if force is None else force
        taken.append(ok)
        return ok

    monkeypatch.setattr(chunked._ScoreBound, "fits", spy)
    return taken


@pytest.fixture(params=["fixed-shift", "running-max"])
def shift(request, monkeypatch):
    """Run a test through both forward paths (and check the fixed one is really taken)."""
    taken = spy_on_fixed_shift(monkeypatch, None if request.param == "fixed-shift" else False)
    yield request.param
    assert taken, "no query block was processed"
    assert all(taken) == (request.param == "fixed-shift")


@pytest.mark.parametrize("block_size", BLOCKS, ids=str)
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("feature", FEATURES)
def test_equals_naive_reference_float64(block_size, config, feature, shift):
    q, k, v = make_qkv(config)
    opts = options(config, feature)
    expected = naive_attention(q, k, v, **opts)
    out = chunked_attention(q, k, v, block_size=block_size, **opts)
    assert_attention(out, expected, q, k, v, **opts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_low_precision_against_float64(dtype, shift):
    config = CONFIGS["gqa"]
    q, k, v = make_qkv(config, dtype)
    opts = options(config, "all")
    low = {k_: (v_.to(dtype) if k_ in ("bias", "sinks") else v_) for k_, v_ in opts.items()}
    expected = textbook_attention(q, k, v, **low)  # float64 on the same rounded inputs
    out = chunked_attention(q, k, v, block_size=4, **low)
    assert out.dtype == dtype
    assert_attention(out, expected, q, k, v, **low)


def test_lse_is_the_log_sum_exp_of_the_scores(shift):
    config = CONFIGS["cross"]
    q, k, v = make_qkv(config)
    mask = random_mask((2, 4, 3, 11))
    mask[0, 1, 2] = False  # one fully masked row
    _, lse = chunked_attention(q, k, v, mask=mask, block_size=4, return_lse=True)
    k_rep = k.repeat_interleave(2, dim=1)
    scores = (q @ k_rep.transpose(-1, -2) / 4.0).masked_fill(~mask, float("-inf"))
    # The LSE is attention's normaliser: the scale of attention over values of 1.
    ones = torch.ones(*v.shape[:-1], 1, dtype=v.dtype)
    assert_within(lse, torch.logsumexp(scores, dim=-1), scale=attention_scale(q, k, ones)[..., 0])
    assert lse[0, 1, 2] == float("-inf")


@pytest.mark.parametrize("feature", FEATURES)
def test_gradcheck_float64(feature):
    """The custom backward (recomputation from the LSE) against finite differences."""
    config = (1, 4, 2, 5, 7, 3, 2)
    q, k, v = (t.requires_grad_(True) for t in make_qkv(config))
    opts = options(config, feature)
    for name in ("bias", "sinks"):
        if name in opts:
            opts[name].requires_grad_(True)
    tensors = {"q": q, "k": k, "v": v, **{n: opts.pop(n) for n in ("bias", "sinks") if n in opts}}
    names = list(tensors)

    def fn(*args):
        kw = dict(zip(names, args, strict=True))
        out, lse = chunked_attention(
            kw.pop("q"), kw.pop("k"), kw.pop("v"), block_size=3, return_lse=True, **kw, **opts
        )
        return out, lse.masked_fill(torch.isinf(lse), 0.0)

    assert torch.autograd.gradcheck(fn, tuple(tensors.values()))


@pytest.mark.parametrize("feature", ["all", "causal", "sinks"])
def test_gradients_equal_naive_autograd(feature, shift):
    config = CONFIGS["gqa"]
    base = make_qkv(config)
    opts = options(config, feature)
    grads = []
    learned_names = [n for n in ("bias", "sinks") if n in opts]
    fixed = {n: o for n, o in opts.items() if n not in learned_names}
    for fn in (naive_attention, chunked_attention):
        q, k, v = (t.clone().requires_grad_(True) for t in base)
        learned = {n: opts[n].clone().requires_grad_(True) for n in learned_names}
        kwargs = {"block_size": 4} if fn is chunked_attention else {}
        out = fn(q, k, v, **learned, **fixed, **kwargs)
        dout = torch.cos(torch.arange(out.numel(), dtype=out.dtype)).view_as(out)
        (out * dout).sum().backward()
        grads.append([q.grad, k.grad, v.grad, *(t.grad for t in learned.values())])
    errors = [exact(t) for t in base]
    learned_errors = {("eb" if n == "bias" else "es"): exact(opts[n]) for n in learned_names}
    _, err = attention_err(*base, *errors, **opts, **learned_errors)
    scales = grad_scales(err, dout, errors + list(learned_errors.values()))
    names = ["dq", "dk", "dv", *(f"d{n}" for n in learned_names)]
    for got, want, scale, name in zip(grads[1], grads[0], scales, names, strict=True):
        assert_within(got, want, scale=scale, what=name)


def test_fully_masked_rows_are_zero_with_zero_gradients(shift):
    q, k, v = (t.requires_grad_(True) for t in make_qkv(CONFIGS["mha"]))
    mask = random_mask((7, 7))
    mask[3] = False
    out = chunked_attention(q, k, v, mask=mask, block_size=2)
    assert torch.all(out[:, :, 3] == 0) and not out.isnan().any()
    out.sum().backward()
    assert torch.all(q.grad[:, :, 3] == 0) and torch.isfinite(k.grad).all()


def test_causal_skips_future_tiles_and_matches(shift):
    """With top-left causal alignment and T > S some rows see every key; T < S some see few."""
    for T, S in ((9, 4), (4, 9)):
        q, k, v = make_qkv((1, 2, 2, T, S, 8, 8))
        assert_within(
            chunked_attention(q, k, v, is_causal=True, block_size=2),
            naive_attention(q, k, v, is_causal=True),
            scale=attention_scale(q, k, v),
        )


def test_backward_never_saves_a_t_by_s_tensor():
    """The memory claim: autograd keeps nothing of size T x S (only O(T + S) tensors)."""
    T = S = 256
    q, k, v = (torch.randn(1, 2, T, 16, requires_grad=True) for _ in range(3))
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = chunked_attention(q, k, v, is_causal=True, block_size=32)
    assert max(saved) == 2 * T * 16  # q, k, v and out; never 2 * T * S
    out.sum().backward()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        naive_attention(q, k, v, is_causal=True)
    assert max(saved) >= 2 * T * S  # the naive path does store the probabilities


def test_matches_gpt_oss_sinks_from_transformers():
    gpt_oss = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")
    config = CONFIGS["gqa"]
    q, k, v = make_qkv(config)
    sinks = torch.randn(8, dtype=torch.float64)
    module = types.SimpleNamespace(num_key_value_groups=4, sinks=sinks, training=False)
    causal = torch.full((9, 9), float("-inf"), dtype=torch.float64).triu(1)
    ref, _ = gpt_oss.eager_attention_forward(module, q, k, v, causal, scaling=32**-0.5)
    out = chunked_attention(q, k, v, is_causal=True, sinks=sinks, block_size=4)
    # Both sides in float64; the bound covers the rounding of either.
    bound = attention_bound(q, k, v, sinks=sinks).transpose(1, 2)
    assert_within(out.transpose(1, 2), ref, scale=bound, what="chunked vs gpt-oss")
    naive = naive_attention(q, k, v, is_causal=True, sinks=sinks)
    assert_within(naive.transpose(1, 2), ref, scale=bound, what="naive vs gpt-oss")


def test_scores_beyond_the_bound_take_the_running_max_path(monkeypatch):
    """float32 scores of a few hundred nats would overflow exp2 without a shift: the block
    whose bound is exceeded falls back to the running max and stays exact. Small integer
    inputs and a power-of-two scale make every float32 score exact, so the float64
    reference differs only by the softmax's own rounding."""
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-1, 2, (1, 2, 64, 16), generator=g).float()
    q[:, :, 32:] = torch.randint(-64, 65, (1, 2, 32, 16), generator=g).float()
    k = torch.randint(-4, 5, (1, 2, 64, 16), generator=g).float()
    v = torch.randn(1, 2, 64, 16, generator=g)
    taken = spy_on_fixed_shift(monkeypatch)
    out, lse = chunked_attention(
        q, k, v, is_causal=True, scale=0.25, block_size=32, return_lse=True
    )
    assert taken == [True, False]
    scores = (q.double() @ k.double().transpose(-1, -2) * 0.25).masked_fill(
        torch.ones(64, 64, dtype=torch.bool).triu(1), float("-inf")
    )
    assert scores[..., 32:, :].amax() * chunked._LOG2E > 128  # 2**s overflows float32
    expected = torch.softmax(scores, dim=-1) @ v.double()
    # Scores of hundreds of nats: the softmax's own rounding is |s| eps, not eps.
    assert_within(out, expected, scale=attention_scale(q, k, v, scale=0.25))
    ones = torch.ones(1, 2, 64, 1)
    lse_scale = attention_scale(q, k, ones, scale=0.25)[..., 0]
    assert_within(lse, torch.logsumexp(scores, -1), scale=lse_scale, what="lse")


@pytest.mark.parametrize(
    "which", ["huge values", "huge sinks", "huge bias", "huge softcap", "small softcap"]
)
def test_no_overflow_where_the_fixed_shift_would_overflow(monkeypatch, which):
    """Each input that could push ``2**s * v`` or ``2**sink`` past float32's range
    disables the fixed shift (without the checks these give inf or NaN); a small softcap
    bounds even huge raw scores, so it keeps the fixed shift."""
    config = (1, 2, 2, 8, 8, 16, 16)
    q, k, v = make_qkv(config, torch.float32)
    opts = {}
    if which == "huge values":
        v = v * 1e30
    elif which == "huge sinks":
        opts["sinks"] = torch.tensor([60.0, -1.0])
    elif which == "huge bias":
        opts["bias"] = torch.zeros(1, 2, 8, 8).index_fill_(-1, torch.tensor([3]), 80.0)
    else:
        q = q * 60.0  # raw scores of hundreds of nats
        # softcapping bounds the scores by 50 nats = 72 in base 2, or by 10 = 14.4
        opts["softcap"] = 50.0 if which == "huge softcap" else 10.0
    taken = spy_on_fixed_shift(monkeypatch)
    out = chunked_attention(q, k, v, block_size=4, **opts)
    assert (bool(taken) and all(taken)) == (which == "small softcap")
    assert torch.isfinite(out).all()
    unit = 1e30 if which == "huge values" else 1.0  # compare at unit scale
    expected = textbook_attention(
        q,
        k,
        v / unit,
        **{n: t.double() if isinstance(t, torch.Tensor) else t for n, t in opts.items()},
    )
    bound = attention_bound(q, k, v / unit, bias=opts.get("bias"), sinks=opts.get("sinks"))
    assert_within(out / unit, expected, scale=bound)


def test_decoding_few_tokens_skips_the_bound(monkeypatch):
    """With fewer query rows than key/value columns the bound's pass over K and V would
    cost more than the passes it saves: a single-token decode takes the running max."""
    q, k, v = make_qkv((1, 4, 2, 1, 300, 64, 64), torch.float32)
    checked = []
    monkeypatch.setattr(chunked._ScoreBound, "fits", lambda self, qb: checked.append(qb))
    out = chunked_attention(q, k, v, block_size=64)
    assert not checked
    assert_within(out, textbook_attention(q, k, v), scale=attention_scale(q, k, v))


def test_tiles_the_mask_hides_are_skipped(monkeypatch):
    """Block-sparse FlashAttention: a tile where the mask hides every score is never
    computed, forward or backward, and the result and gradients still equal the reference."""
    T, block = 64, 8
    mask = sliding_window_mask(T, window=10)
    tiles = mask.unflatten(0, (T // block, block)).unflatten(2, (T // block, block))
    visible_tiles = int(tiles.any(dim=(1, 3)).sum())
    computed = []
    scores = chunked._Tiles.scores

    def spy(self, *args, **kwargs):
        computed.append(args[2:6])
        return scores(self, *args, **kwargs)

    monkeypatch.setattr(chunked._Tiles, "scores", spy)
    q, k, v = (t.requires_grad_(True) for t in make_qkv((1, 4, 2, T, T, 8, 8)))
    out = chunked_attention(q, k, v, mask=mask, block_size=block)
    # query block i sees key blocks i-2, i-1 and i: 1 + 2 + 6 * 3 of the 36 causal tiles
    assert len(computed) == visible_tiles == 21
    out.sum().backward()
    assert len(computed) == 2 * visible_tiles
    grads = [t.grad for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    naive_attention(q, k, v, mask=mask).sum().backward()
    assert_within(out, naive_attention(q, k, v, mask=mask), scale=attention_scale(q, k, v))
    errors = [exact(t) for t in (q, k, v)]
    _, err = attention_err(q, k, v, *errors, mask=mask)
    scales = grad_scales(err, torch.ones_like(out), errors)
    for got, t, scale, name in zip(grads, (q, k, v), scales, "qkv", strict=True):
        assert_within(got, t.grad, scale=scale, what=f"d{name}")


def test_key_padding_skips_only_tiles_hidden_in_every_batch():
    """A (B, 1, 1, S) padding mask: a key tile is skipped only if every sequence hides it."""
    q, k, v = make_qkv((2, 4, 2, 12, 24, 8, 8))
    keep = torch.ones(2, 1, 1, 24, dtype=torch.bool)
    keep[0, ..., 8:] = False  # sequence 0 has 8 keys, sequence 1 all 24
    keep[:, ..., 20:] = False  # both pad the last 4
    tiles = chunked._Tiles(
        chunked.check_qkv(q, k, v),
        1.0,
        None,
        None,
        chunked._grouped(keep, chunked.check_qkv(q, k, v)),
        False,
        4,
        4,
    )
    assert [ks for ks, _ in tiles.key_blocks(0, 4)] == [0, 4, 8, 12, 16]
    assert tiles.mask_tile(0, 4) == (True, True) and tiles.mask_tile(0, 8) == (True, False)
    assert_within(
        chunked_attention(q, k, v, mask=keep, block_size=4),
        naive_attention(q, k, v, mask=keep),
        scale=attention_scale(q, k, v),
    )


BAD = [
    ({"block_size": 0}, ValueError, "block_size must be >= 1, got 0"),
    ({"block_size": (4,)}, ValueError, r"block_size must be an int or \(block_q, block_k\)"),
    ({"block_size": (4, 0)}, ValueError, r"block_size\[1\] must be >= 1"),
    ({"block_size": 2.5}, TypeError, "block_size must be an int"),
    ({"bias": torch.zeros(3, 9, 9)}, ValueError, "bias of shape"),
    ({"bias": torch.zeros(9, 9, dtype=torch.long)}, TypeError, "bias must have a floating"),
    ({"sinks": torch.zeros(2)}, ValueError, r"sinks must have shape \(H,\) = \(8,\)"),
    ({"sinks": [0.0] * 8}, TypeError, "sinks must be a torch.Tensor"),
    ({"softcap": 0.0}, ValueError, "softcap must be a finite number > 0"),
    ({"mask": torch.ones(9, 9)}, TypeError, "mask must be a torch"),
]


@pytest.mark.parametrize("kwargs,exc,message", BAD)
def test_bad_input(kwargs, exc, message):
    q, k, v = make_qkv(CONFIGS["gqa"], torch.float32)
    with pytest.raises(exc, match=message):
        chunked_attention(q, k, v, **kwargs)
