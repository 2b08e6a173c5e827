"""speculative_generate: greedy output equal to the target's (float64, three kinds of draft,
and transformers' assisted generation), the sampled distribution equal to the target's
(chi-square), acceptance statistics, and bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from llmref.cache import DynamicCache, QuantizedCache
from llmref.inference import (
    SpeculativeStats,
    early_exit_draft,
    speculative_generate,
)
from llmref.models import DecoderConfig, DecoderLM, from_transformers, generate
from llmref.quant import quantize_model
from tests.models.helpers import make_model

VOCAB = 96


def _model(n_layers: int, seed: int, *, vocab: int = VOCAB, d_model: int = 32, std=0.2):
    torch.manual_seed(seed)
    cfg = DecoderConfig(
        vocab_size=vocab,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=4,
        n_kv_heads=2,
        d_ff=2 * d_model,
        init_std=std,
    )
    return DecoderLM(cfg, dtype=torch.float64).eval()


def _drafts(target: DecoderLM) -> dict[str, DecoderLM]:
    int4 = copy.deepcopy(target)
    quantize_model(int4, "int4")
    return {
        "separate": _model(1, seed=7),
        "early-exit": early_exit_draft(target, 1),
        "int4": int4,
        "itself": target,
    }


@pytest.mark.parametrize("variant", ["gqa-rope", "gqa-llama3-bias", "mqa-nope"])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_output_equals_the_targets_greedy_generate(variant, k):
    target = make_model(variant)
    prompt = torch.tensor([[5, 17, 3, 40, 2]])
    expected = generate(target, prompt, 24)
    for name, draft in _drafts(target).items():
        out, stats = speculative_generate(
            target, draft, prompt, 24, num_draft_tokens=k, return_stats=True
        )
        assert torch.equal(out, expected), f"draft {name!r}, k={k}"
        assert stats.new_tokens == 24
        # every round adds its accepted drafts and one target token
        assert stats.new_tokens == stats.accepted + stats.target_calls
        if name == "itself":  # the target accepts its own proposals: k+1 tokens per call
            assert stats.acceptance_rate == 1.0
            assert stats.target_calls == math.ceil(24 / (k + 1))


@pytest.mark.parametrize("prompt_len", [1, 2])
@pytest.mark.parametrize("new", [0, 1, 2, 7])
def test_short_prompts_and_generations(prompt_len, new):
    target = make_model("gqa-rope")
    prompt = torch.arange(3, 3 + prompt_len)[None]
    draft = early_exit_draft(target, 1)
    out, stats = speculative_generate(
        target, draft, prompt, new, num_draft_tokens=4, return_stats=True
    )
    assert torch.equal(out, generate(target, prompt, new))
    assert stats.new_tokens == new
    assert stats.target_calls == (0 if new == 0 else stats.target_calls)


def test_eos_stops_like_generate():
    target = make_model("gqa-rope")
    prompt = torch.tensor([[5, 17, 3]])
    free = generate(target, prompt, 20)[0, 3:].tolist()
    eos = free[6]  # a token the target emits mid-way
    expected = generate(target, prompt, 20, eos_token_id=eos)
    assert expected.shape[1] < 3 + 20  # it stopped
    for k in (1, 4):
        out = speculative_generate(
            target, early_exit_draft(target, 1), prompt, 20, num_draft_tokens=k, eos_token_id=eos
        )
        assert torch.equal(out, expected)


def test_greedy_equals_transformers_assisted_generation():
    transformers = pytest.importorskip("transformers")

    def llama(layers: int, seed: int):
        config = transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            attn_implementation="sdpa",
        )
        torch.manual_seed(seed)
        return transformers.LlamaForCausalLM(config).double().eval()

    hf_target, hf_draft = llama(3, 0), llama(1, 1)
    prompt = torch.tensor([[5, 17, 3, 40, 2]])
    with torch.no_grad():
        expected = hf_target.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            assistant_model=hf_draft,
            max_new_tokens=20,
            do_sample=False,
            pad_token_id=0,
        )
    target = from_transformers(hf_target, dtype=torch.float64).eval()
    draft = from_transformers(hf_draft, dtype=torch.float64).eval()
    for k in (2, 5):
        out = speculative_generate(target, draft, prompt, 20, num_draft_tokens=k)
        assert torch.equal(out, expected)


# -- sampling: the output distribution is the target's ------------------------------------

V_SMALL, N_RUNS = 6, 4000
ALPHA = 1e-4
"""False-failure rate of each chi-square test: with the seeds drawn at random, a correct
implementation fails it with probability ALPHA (the seeds are fixed, so the test is
deterministic; it passes with these)."""


class TableLM(torch.nn.Module):
    """A second-order Markov model over V_SMALL tokens, with a KV cache of token ids.

    logits(next | ..., a, b) = table[a, b]: a language model as the protocol calls it,
    cheap enough to run speculative decoding thousands of times per test, with
    distributions far from uniform."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(
            2.0 * torch.randn(V_SMALL, V_SMALL, V_SMALL, generator=g, dtype=torch.float64)
        )
        self.config = DecoderConfig(vocab_size=V_SMALL, d_model=4, n_layers=1, n_heads=1, d_ff=4)

    def forward(self, input_ids, caches=None):
        new = input_ids.to(torch.float64)[:, None, :, None]  # the cache stores ids as keys
        ids = new if caches is None else caches[0].update(new, new)[0]
        ids = ids[:, 0, :, 0].long()
        prev = torch.cat([ids[:, :1], ids[:, :-1]], 1)  # the first token repeats itself
        return self.table[prev, ids][:, -input_ids.shape[1] :]


def _exact_two_token_distribution(model, prompt, config) -> torch.Tensor:
    """P(a, b) = p(a | prompt) p(b | prompt, a), float64, over all V^2 continuations."""
    from llmref.inference import process_logits

    def probs(ids):
        with torch.no_grad():
            logits = model(ids)[:, -1].double()
        return torch.softmax(process_logits(logits, config), -1)

    first = probs(prompt)[0]
    rows = torch.cat([prompt.expand(V_SMALL, -1), torch.arange(V_SMALL)[:, None]], 1)
    return first[:, None] * probs(rows)


def _chi_square_p_value(counts: torch.Tensor, expected: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic over the cells with expected count >= 5 (the rest pooled)."""
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = obs.numel() - 1
    # chi-square survival function: the regularised upper incomplete gamma Q(dof/2, stat/2)
    p = float(torch.special.gammaincc(torch.tensor(dof / 2.0), torch.tensor(stat / 2.0)))
    return p, dof


def test_table_model_follows_the_protocol_with_caches():
    model = TableLM(0)
    ids = torch.tensor([[1, 4, 2, 2, 5]])
    caches = [DynamicCache()]
    stepped = torch.cat([model(ids[:, :3], caches=caches), model(ids[:, 3:], caches=caches)], 1)
    assert torch.equal(stepped, model(ids))
    assert torch.equal(model(ids)[0, 2], model.table[4, 2])


@pytest.fixture
def one_thread():
    """Tiny ops run ~400x slower with 2 intra-op threads on a busy 2-core machine (thread
    wake-ups); thousands of tiny decodes need 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("k", "rules"),
    [(1, {}), (3, {}), (3, {"temperature": 0.7, "top_k": 4})],
)
def test_sampled_distribution_equals_the_targets(k, rules, one_thread):
    from llmref.inference import SamplingConfig

    target, draft = TableLM(0), TableLM(1)
    prompt = torch.tensor([[1, 4]])
    config = SamplingConfig(**rules)
    exact = _exact_two_token_distribution(target, prompt, config).flatten()
    counts = torch.zeros(V_SMALL * V_SMALL, dtype=torch.float64)
    accepted = proposed = 0
    for seed in range(N_RUNS):
        # three new tokens: with k >= 2 the first two come from one round's acceptance
        # chain (positions 1 and 2 and their residuals)
        out, stats = speculative_generate(
            target, draft, prompt, 3, num_draft_tokens=k, do_sample=True, seed=seed,
            return_stats=True, **rules,
        )  # fmt: skip
        a, b = out[0, 2:4].tolist()
        counts[a * V_SMALL + b] += 1
        accepted, proposed = accepted + stats.accepted, proposed + stats.proposed
    p, dof = _chi_square_p_value(counts, N_RUNS * exact)
    assert p > ALPHA, f"chi-square p-value {p:.2e} over {dof} degrees of freedom"
    # the test has power: the draft's own distribution sits far outside the critical region
    # (its expected statistic N * sum (q - p)^2 / p is many times dof), and drafts were
    # rejected often enough for the residual distribution to matter
    draft_exact = _exact_two_token_distribution(draft, prompt, config).flatten()
    keep = exact > 0
    shift = N_RUNS * float(((draft_exact - exact)[keep] ** 2 / exact[keep]).sum())
    assert shift > 10 * dof, shift
    assert 0.1 < accepted / proposed < 0.9, accepted / proposed


def test_same_seed_same_tokens_and_global_rng_untouched():
    target, draft = _model(2, seed=0), _model(1, seed=1)
    prompt = torch.tensor([[1, 2, 3]])
    state = torch.random.get_rng_state()
    a = speculative_generate(target, draft, prompt, 12, do_sample=True, seed=5)
    b = speculative_generate(target, draft, prompt, 12, do_sample=True, seed=5)
    assert torch.equal(a, b)
    assert torch.equal(state, torch.random.get_rng_state())


def test_identical_draft_is_always_accepted_when_sampling():
    target = _model(2, seed=0)
    out, stats = speculative_generate(
        target, target, torch.tensor([[1, 2]]), 15, num_draft_tokens=4, do_sample=True,
        seed=0, return_stats=True,
    )  # fmt: skip
    assert stats.acceptance_rate == 1.0 and stats.target_calls == 3
    assert stats == SpeculativeStats(
        proposed=stats.proposed, accepted=stats.proposed, target_calls=3,
        draft_calls=stats.draft_calls, new_tokens=15,
    )  # fmt: skip
    assert out.shape == (1, 17)


def test_custom_cache_factory_is_used():
    target = make_model("gqa-rope")
    made = []

    def factory(model):
        caches = [DynamicCache() for _ in range(model.config.n_layers)]
        made.append(caches)
        return caches

    prompt = torch.tensor([[5, 6, 7]])
    out = speculative_generate(target, early_exit_draft(target, 1), prompt, 9, caches=factory)
    assert torch.equal(out, generate(target, prompt, 9))
    assert len(made) == 2 and len(made[0][0]) == 3 + 9 - 1  # the last token is never fed


def test_early_exit_draft_runs_the_first_layers_then_norm_and_head():
    target = make_model("gqa-rope")
    draft = early_exit_draft(target, 1)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        x = target.embed(ids)
        positions = torch.arange(5)
        cos, sin = target.rope.position_embeddings(positions)
        x = target.layers[0](x, mask=None, is_causal=True, position_embeddings=(cos, sin))
        expected = target.lm_head(target.norm(x))
        assert torch.equal(draft(ids), expected)
    assert len(target.layers) == 2 and target.config.n_layers == 2  # the target is unchanged
    assert {id(p) for p in draft.parameters()} < {id(p) for p in target.parameters()}


def test_bad_input():
    target = make_model("gqa-rope")
    draft = early_exit_draft(target, 1)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"draft must share the target's vocabulary of 96"):
        speculative_generate(target, _model(1, 0, vocab=50), ids, 4)
    with pytest.raises(TypeError, match="model must be a language model"):
        speculative_generate(target, object(), ids, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"one sequence \(1, T\).*got \(2, 3\)"):
        speculative_generate(target, draft, ids.expand(2, -1), 4)
    with pytest.raises(ValueError, match=r"one sequence .*got \(1, 0\)"):
        speculative_generate(target, draft, ids[:, :0], 4)
    with pytest.raises(TypeError, match=r"input_ids must be an integer tensor, got torch\.float32"):
        speculative_generate(target, draft, ids.float(), 4)
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, vocab_size=96\)"):
        speculative_generate(target, draft, ids + 100, 4)
    with pytest.raises(ValueError, match="num_draft_tokens must be >= 1, got 0"):
        speculative_generate(target, draft, ids, 4, num_draft_tokens=0)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0, got -1"):
        speculative_generate(target, draft, ids, -1)
    with pytest.raises(TypeError, match="do_sample must be a bool, got int"):
        speculative_generate(target, draft, ids, 4, do_sample=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(target, draft, ids, 4, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="eos_token_id must be < vocab_size=96, got 500"):
        speculative_generate(target, draft, ids, 4, eos_token_id=500)
    with pytest.raises(TypeError, match=r"crop.*the target's cache 0 is a QuantizedCache"):
        speculative_generate(target, draft, ids, 4, caches=lambda m: [QuantizedCache()] * 2)
    with pytest.raises(ValueError, match=r"one cache per layer of the draft \(1\), got 2"):
        speculative_generate(
            target, draft, ids, 4, caches=lambda m: [DynamicCache() for _ in range(2)]
        )
    with pytest.raises(ValueError, match="n_layers must be <= the model's 2 layers, got 3"):
        early_exit_draft(target, 3)
    with pytest.raises(TypeError, match="model must have a layers ModuleList"):
        early_exit_draft(object(), 1)
