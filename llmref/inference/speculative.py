"""Speculative decoding: a cheap draft proposes tokens, the target verifies them in one pass."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .._checks import check_int, check_token_set
from ..cache import DynamicCache, KVCache
from .config import SamplingConfig
from .protocol import check_language_model
from .sampling import process_logits

__all__ = [
    "CachedLanguageModel",
    "SpeculativeStats",
    "dynamic_caches",
    "early_exit_draft",
    "speculative_generate",
]


class CachedLanguageModel(Protocol):
    """A language model that reads and extends one KV cache per layer.

    ``model(input_ids, caches=caches)`` returns logits ``(B, T, V)`` for the
    ``T`` new ids ``(B, T)``, attending to what ``caches`` hold and appending
    the new tokens to them; ``model.config`` has ``vocab_size`` and
    ``n_layers``. :class:`llmref.models.DecoderLM` is one.

    Examples
    --------
    >>> import torch
    >>> from llmref.models import DecoderConfig, DecoderLM
    >>> model = DecoderLM(DecoderConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4,
    ...                                 d_ff=64))
    >>> caches = dynamic_caches(model)
    >>> model(torch.tensor([[1, 2, 3]]), caches=caches).shape  # prefill
    torch.Size([1, 3, 50])
    >>> model(torch.tensor([[4]]), caches=caches).shape, len(caches[0])  # one step
    (torch.Size([1, 1, 50]), 4)
    """

    config: Any

    def __call__(
        self, input_ids: torch.Tensor, *, caches: Sequence[KVCache] | None = None
    ) -> torch.Tensor: ...

    def parameters(self) -> Any: ...


CacheFactory = Callable[[Any], Sequence[KVCache]]
"""``factory(model) -> caches``: one cache per layer of ``model``, each with ``crop(length)``."""


@dataclass(frozen=True)
class SpeculativeStats:
    """What one :func:`speculative_generate` call did.

    Parameters
    ----------
    proposed : int
        Draft tokens proposed to the target.
    accepted : int
        Of those, tokens the target accepted.
    target_calls : int
        Forward passes of the target (one per round; the prompt's prefill is
        part of the first).
    draft_calls : int
        Forward passes of the draft.
    new_tokens : int
        Tokens generated (accepted draft tokens plus one target token per round,
        less any cut at ``max_new_tokens`` or after an end-of-sequence token).

    Examples
    --------
    >>> s = SpeculativeStats(proposed=8, accepted=6, target_calls=2, draft_calls=8,
    ...                      new_tokens=8)
    >>> s.acceptance_rate, s.tokens_per_target_call
    (0.75, 4.0)
    """

    proposed: int
    accepted: int
    target_calls: int
    draft_calls: int
    new_tokens: int

    @property
    def acceptance_rate(self) -> float:
        """``accepted / proposed`` (0 when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        """``new_tokens / target_calls`` (0 when the target never ran)."""
        return self.new_tokens / self.target_calls if self.target_calls else 0.0


def early_exit_draft(model: Any, n_layers: int) -> Any:
    """A self-speculative draft: ``model``'s first ``n_layers`` layers, its final norm and head.

    A shallow copy of ``model`` whose ``layers`` holds only the first
    ``n_layers`` blocks and whose config says so (``config.replace(n_layers=)``);
    every parameter is shared with ``model``, so the draft costs no memory and
    follows any change to the model's weights. It works for models built like
    :class:`llmref.models.DecoderLM` (``layers``, ``config.n_layers``, a final
    norm and head applied after the last layer).

    Parameters
    ----------
    model : DecoderLM
        The target.
    n_layers : int
        Layers the draft keeps, ``1 <= n_layers <= model.config.n_layers``.

    Returns
    -------
    DecoderLM
        The early-exit model (the same class as ``model``).

    Raises
    ------
    TypeError
        If ``model`` has no ``layers`` or ``config.n_layers``, or ``n_layers``
        is not an int.
    ValueError
        If ``n_layers`` is out of range.

    References
    ----------
    Early-exit (layer-skipping) drafts as in LayerSkip and Draft & Verify; see
    the theory page.

    Examples
    --------
    >>> import torch
    >>> from llmref.models import DecoderConfig, DecoderLM
    >>> model = DecoderLM(DecoderConfig(vocab_size=50, d_model=32, n_layers=4, n_heads=4,
    ...                                 d_ff=64))
    >>> draft = early_exit_draft(model, 1)
    >>> len(draft.layers), len(model.layers), draft.lm_head.weight is model.lm_head.weight
    (1, 4, True)
    >>> draft(torch.tensor([[1, 2, 3]])).shape
    torch.Size([1, 3, 50])
    """
    config = getattr(model, "config", None)
    total = getattr(config, "n_layers", None)
    if not isinstance(getattr(model, "layers", None), torch.nn.ModuleList) or not isinstance(
        total, int
    ):
        raise TypeError(
            "model must have a layers ModuleList and config.n_layers (e.g. "
            f"llmref.models.DecoderLM), got {type(model).__name__}"
        )
    n = check_int("n_layers", n_layers, minimum=1)
    if n > total:
        raise ValueError(f"n_layers must be <= the model's {total} layers, got {n}")
    draft = copy.copy(model)  # shares every tensor; needs its own module table to cut layers
    draft._modules = dict(model._modules)
    draft.layers = torch.nn.ModuleList(list(model.layers)[:n])
    draft.config = config.replace(n_layers=n)  # type: ignore[union-attr]
    return draft


def dynamic_caches(model: Any) -> list[KVCache]:
    """The default cache factory of :func:`speculative_generate`: one
    :class:`~llmref.cache.DynamicCache` per layer of ``model``.

    Parameters
    ----------
    model : CachedLanguageModel
        A model with ``config.n_layers``.

    Returns
    -------
    list of llmref.cache.KVCache

    Examples
    --------
    >>> from llmref.models import DecoderConfig, DecoderLM
    >>> model = DecoderLM(DecoderConfig(vocab_size=50, d_model=32, n_layers=3, n_heads=4,
    ...                                 d_ff=64))
    >>> [type(c).__name__ for c in dynamic_caches(model)]
    ['DynamicCache', 'DynamicCache', 'DynamicCache']
    """
    return [DynamicCache() for _ in range(model.config.n_layers)]


def speculative_generate(
    target: CachedLanguageModel,
    draft: CachedLanguageModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    num_draft_tokens: int = 4,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    eos_token_id: int | Iterable[int] | None = None,
    seed: int | None = None,
    caches: CacheFactory | None = None,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, SpeculativeStats]:
    """Generate from ``target`` with speculative decoding: the output distribution is the target's.

    Each round the draft proposes ``num_draft_tokens`` tokens one by one; the
    target scores all of them in **one** forward pass over ``k + 1`` positions
    (through its KV caches) and accepts a prefix of them by the exact rule
    below, then adds one token of its own. The rejected tokens' keys and values
    are cropped from both models' caches.

    Parameters
    ----------
    target : CachedLanguageModel
        The model whose distribution is sampled (e.g. a
        :class:`~llmref.models.DecoderLM`).
    draft : CachedLanguageModel
        A cheaper model with the same vocabulary: a small model, the target's
        first layers (:func:`early_exit_draft`), or a quantized copy.
    input_ids : torch.Tensor
        The prompt ``(1, T)``, ``T >= 1`` (one sequence: rows of a batch would
        accept different numbers of tokens).
    max_new_tokens : int
        Most tokens to add (>= 0).
    num_draft_tokens : int, default 4
        Draft tokens per round, ``k >= 1``.
    do_sample : bool, default False
        Sample (with the acceptance rule); otherwise greedy: a draft token is
        accepted while it equals the target's argmax.
    temperature, top_k, top_p, min_p
        The sampling rules of :class:`~llmref.inference.SamplingConfig`,
        applied to both models' logits when ``do_sample`` (the target's
        processed distribution is the one preserved).
    eos_token_id : int or iterable of int, optional
        Stop after the first of these tokens.
    seed : int, optional
        Seed of a private :class:`torch.Generator` for sampling.
    caches : callable, optional
        ``caches(model) -> list of caches``, one per layer, each with a
        ``crop(length)`` method; default one
        :class:`~llmref.cache.DynamicCache` per layer (:func:`dynamic_caches`).
    return_stats : bool, default False
        Also return a :class:`SpeculativeStats`.

    Returns
    -------
    torch.Tensor or (torch.Tensor, SpeculativeStats)
        ``(1, T + n)`` ids, the prompt then ``n <= max_new_tokens`` new tokens,
        as :func:`llmref.models.generate` returns them.

    Raises
    ------
    TypeError
        If a model is not a language model, an argument has the wrong type, or
        a cache has no ``crop``.
    ValueError
        If the vocabularies differ, the batch is not 1, a count is out of
        range or a sampling option is (as :class:`SamplingConfig` says).

    Notes
    -----
    With target probabilities ``p`` and draft probabilities ``q`` at a
    position, the draft token ``x ~ q`` is accepted with probability
    ``min(1, p(x) / q(x))``; the first rejected one is replaced by a token
    drawn from ``max(0, p - q)`` normalised; when all ``k`` are accepted a
    bonus token is drawn from the target's next distribution. Every emitted
    token is then distributed exactly as the target's own sample
    :cite:p:`leviathan2023fast,chen2023accelerating`. Greedy decoding is the
    limit of one-hot ``p`` and ``q``: the output equals the target's greedy
    output. With acceptance rate ``a`` each target call yields on average
    ``(1 - a^(k+1)) / (1 - a)`` tokens.

    References
    ----------
    leviathan2023fast, chen2023accelerating

    Examples
    --------
    >>> import torch
    >>> from llmref.models import DecoderConfig, DecoderLM, generate
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> target = DecoderLM(DecoderConfig(vocab_size=50, d_model=32, n_layers=4, n_heads=4,
    ...                                  d_ff=64))
    >>> prompt = torch.tensor([[1, 2, 3]])
    >>> out, stats = speculative_generate(target, early_exit_draft(target, 2), prompt, 10,
    ...                                   return_stats=True)
    >>> torch.equal(out, generate(target, prompt, 10))
    True
    >>> stats.new_tokens, stats.target_calls <= 10
    (10, True)
    """
    vocab = check_language_model(target)
    if check_language_model(draft) != vocab:
        raise ValueError(
            f"draft must share the target's vocabulary of {vocab} tokens, got "
            f"{draft.config.vocab_size}"
        )
    ids = _check_prompt(input_ids, vocab)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=0)
    k = check_int("num_draft_tokens", num_draft_tokens, minimum=1)
    for name, flag in (("do_sample", do_sample), ("return_stats", return_stats)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    config = SamplingConfig(
        temperature=temperature if do_sample else 1.0, top_k=top_k, top_p=top_p, min_p=min_p
    )
    eos = set(check_token_set("eos_token_id", eos_token_id, vocab))
    make = dynamic_caches if caches is None else caches
    if not callable(make):
        raise TypeError(f"caches must be a callable model -> caches, got {type(make).__name__}")
    device = next(iter(target.parameters())).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(check_int("seed", seed))
    state = _Decoding(target, draft, make, config if do_sample else None, generator)
    seq = ids[0].to(device).tolist()
    prompt_len = len(seq)
    with torch.no_grad():
        while len(seq) - prompt_len < max_new_tokens:
            left = max_new_tokens - (len(seq) - prompt_len)
            new = state.round(seq, min(k, left - 1))
            seq += new[:left]
            if eos and any(t in eos for t in new[:left]):
                end = next(i for i, t in enumerate(seq[prompt_len:]) if t in eos)
                del seq[prompt_len + end + 1 :]
                break
    out = torch.tensor([seq], dtype=ids.dtype, device=device)
    if not return_stats:
        return out
    return out, state.stats(len(seq) - prompt_len)


class _Decoding:
    """The two models' caches and the round loop's bookkeeping (one sequence)."""

    def __init__(
        self,
        target: Any,
        draft: Any,
        make: CacheFactory,
        config: SamplingConfig | None,
        generator: torch.Generator | None,
    ) -> None:
        self.models = (target, draft)
        self.caches = tuple(
            _made_caches(make, m, name) for m, name in zip(self.models, "td", strict=True)
        )
        self.config, self.generator = config, generator
        self.proposed = self.accepted = self.target_calls = self.draft_calls = 0

    def _logits(self, which: int, seq: list[int]) -> torch.Tensor:
        """Logits ``(n, V)`` of the tokens of ``seq`` the model's caches do not hold yet."""
        model, caches = self.models[which], self.caches[which]
        held = len(caches[0])
        device = next(iter(model.parameters())).device
        new = torch.tensor([seq[held:]], dtype=torch.long, device=device)
        return model(new, caches=caches)[0].float()

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        assert self.config is not None
        return torch.softmax(process_logits(logits, self.config), dim=-1)

    def round(self, seq: list[int], k: int) -> list[int]:
        """Propose ``k`` tokens, verify them; return the new tokens (accepted + one)."""
        proposal = list(seq)
        q_rows = []
        for _ in range(k):
            logits = self._logits(1, proposal)[-1:]
            self.draft_calls += 1
            if self.config is None:
                token = int(logits.argmax(-1))
            else:
                q = self._probs(logits)
                q_rows.append(q[0])
                token = int(torch.multinomial(q, 1, generator=self.generator))
            proposal.append(token)
        drafted = proposal[len(seq) :]
        target_logits = self._logits(0, proposal)[-(k + 1) :]
        self.target_calls += 1
        self.proposed += k
        n, last = self._verify(drafted, target_logits, q_rows)
        self.accepted += n
        keep = len(seq) + n  # both caches must hold seq + accepted drafts, no more
        for caches in self.caches:
            if len(caches[0]) > keep:
                for cache in caches:
                    cache.crop(keep)  # type: ignore[attr-defined]
        return [*drafted[:n], last]

    def _verify(
        self, drafted: list[int], logits: torch.Tensor, q_rows: list[torch.Tensor]
    ) -> tuple[int, int]:
        """(accepted count, the target's token after them) by the exact acceptance rule."""
        if self.config is None:
            best = logits.argmax(-1).tolist()
            n = next((i for i, t in enumerate(drafted) if t != best[i]), len(drafted))
            return n, best[n]
        p_rows = self._probs(logits)
        for i, token in enumerate(drafted):
            p, q = p_rows[i, token], q_rows[i][token]
            u = torch.rand((), device=p.device, generator=self.generator, dtype=p.dtype)
            if u * q >= p:  # reject: u >= p/q (q > 0, as x was drawn from q)
                residual = (p_rows[i] - q_rows[i]).clamp(min=0)
                if float(residual.sum()) <= 0:  # p == q up to rounding: p itself
                    residual = p_rows[i]
                return i, int(torch.multinomial(residual, 1, generator=self.generator))
        bonus = torch.multinomial(p_rows[-1], 1, generator=self.generator)
        return len(drafted), int(bonus)

    def stats(self, new_tokens: int) -> SpeculativeStats:
        return SpeculativeStats(
            proposed=self.proposed,
            accepted=self.accepted,
            target_calls=self.target_calls,
            draft_calls=self.draft_calls,
            new_tokens=new_tokens,
        )


def _made_caches(make: CacheFactory, model: Any, which: str) -> list[KVCache]:
    name = "target" if which == "t" else "draft"
    made = list(make(model))
    if len(made) != model.config.n_layers:
        raise ValueError(
            f"caches must give one cache per layer of the {name} ({model.config.n_layers}), "
            f"got {len(made)}"
        )
    for i, cache in enumerate(made):
        if not callable(getattr(cache, "crop", None)):
            raise TypeError(
                f"caches must give caches with crop(length) (e.g. DynamicCache); the {name}'s "
                f"cache {i} is a {type(cache).__name__}"
            )
    return made


def _check_prompt(input_ids: object, vocab: int) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else input_ids
        raise TypeError(f"input_ids must be a (1, T) tensor of token ids, got {got!r}")
    if (
        input_ids.dtype.is_floating_point
        or input_ids.dtype.is_complex
        or input_ids.dtype == (torch.bool)
    ):
        raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    if input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
        raise ValueError(
            "input_ids must be one sequence (1, T) with T >= 1 (speculative decoding runs "
            f"one sequence at a time), got {tuple(input_ids.shape)}"
        )
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab:
        raise ValueError(
            f"input_ids must be in [0, vocab_size={vocab}), got values in "
            f"[{int(input_ids.min())}, {int(input_ids.max())}]"
        )
    return input_ids.long()
