"""Autoregressive generation: greedy or sampled, batched with left padding, through any KV cache."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch

from .._checks import check_int, check_tensor, check_token_set
from ..cache import CACHES, KVCache
from ..inference import SamplingConfig, beam_search, process_logits, sample
from .attention_kinds import ATTENTION_KINDS
from .decoder import DecoderLM

__all__ = ["Streamer", "generate", "make_caches"]

CacheFactory = Callable[[int], KVCache]
"""``factory(layer_index) -> KVCache``: builds the cache of one layer."""


class Streamer(Protocol):
    """What :func:`generate` streams tokens to (transformers' ``TextStreamer`` fits).

    ``put`` receives the prompt ids ``(B, T)`` first, then each step's new
    tokens ``(B,)``, on the CPU; ``end`` is called once at the end.
    """

    def put(self, value: torch.Tensor) -> None: ...

    def end(self) -> None: ...


def make_caches(
    model: DecoderLM,
    cache: str | CacheFactory | None = None,
    *,
    batch_size: int,
    max_len: int,
    block_size: int = 16,
) -> list[KVCache]:
    """One KV cache per layer of ``model``, by kind name or from a factory.

    Parameters
    ----------
    model : DecoderLM
        The model the caches are for.
    cache : str, callable or None
        ``None``: each layer's attention kind's ``default_cache``
        (:class:`~llmref.cache.DynamicCache` for the MHA family,
        :class:`~llmref.cache.LatentCache` for MLA). A name in
        :data:`llmref.cache.CACHES`: that kind for every layer, with settings
        taken from the model and the lengths (``"static"``: ``max_len``
        tokens; ``"sliding_window"``: each layer's window; ``"paged"``:
        blocks of ``block_size`` enough for ``batch_size`` sequences of
        ``max_len``; kinds without required settings: their defaults). A
        callable: ``cache(layer_index) -> KVCache`` for full control (the
        sink cache, quantized cache settings, a different kind per layer).
    batch_size : int
        Sequences in the batch.
    max_len : int
        Longest sequence the caches must hold (prompt plus new tokens).
    block_size : int, default 16
        Tokens per block of the ``"paged"`` kind.

    Returns
    -------
    list of llmref.cache.KVCache

    Raises
    ------
    TypeError
        If ``model`` is not a :class:`DecoderLM`, ``cache`` is of the wrong
        type, a factory returns something that is not a KVCache, or a cache
        stores the wrong thing for its layer's attention kind (keys and
        values for MHA/GQA/MQA, latents for MLA).
    ValueError
        If the kind is unknown or needs settings this function cannot infer
        (``"sliding_window"`` on a layer without a window, ``"sink"``).

    Examples
    --------
    >>> from llmref.models import DecoderConfig, DecoderLM
    >>> model = DecoderLM(DecoderConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4,
    ...                                 d_ff=64, window=8))
    >>> [type(c).__name__ for c in make_caches(model, "sliding_window", batch_size=1,
    ...                                        max_len=100)]
    ['SlidingWindowCache', 'SlidingWindowCache']
    >>> make_caches(model, "latent", batch_size=1, max_len=100)
    Traceback (most recent call last):
    ...
    TypeError: caches[0] is a LatentCache, which stores 'latent', but layer 0 uses 'mha' \
attention, which needs a cache that stores 'kv' (e.g. DynamicCache)
    """
    if not isinstance(model, DecoderLM):
        raise TypeError(f"model must be a llmref.models.DecoderLM, got {type(model).__name__}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    max_len = check_int("max_len", max_len, minimum=1)
    block_size = check_int("block_size", block_size, minimum=1)
    n = model.config.n_layers
    caches: list[KVCache] = []
    if cache is None:
        for i in range(n):
            kind = ATTENTION_KINDS[model.config.layer(i).attention]
            caches.append(CACHES[kind.default_cache].fn())
    elif isinstance(cache, str):
        if cache not in CACHES:
            known = ", ".join(repr(k) for k in CACHES)
            raise ValueError(f"cache must be one of {known} or a factory, got {cache!r}")
        for i in range(n):
            caches.append(_named_cache(cache, model, i, batch_size, max_len, block_size))
    elif callable(cache):
        for i in range(n):
            made = cache(i)
            if not isinstance(made, KVCache):
                raise TypeError(
                    f"the cache factory must return a llmref.cache.KVCache, got "
                    f"{type(made).__name__} for layer {i}"
                )
            caches.append(made)
    else:
        raise TypeError(
            f"cache must be None, a name in llmref.cache.CACHES or a factory, "
            f"got {type(cache).__name__}"
        )
    model._check_caches(caches)
    return caches


def _named_cache(
    name: str, model: DecoderLM, i: int, batch_size: int, max_len: int, block_size: int
) -> KVCache:
    window = model.config.layer(i).window
    cls = CACHES[name].fn
    if name == "static":
        return cls(max_len)
    if name == "sliding_window":
        if window is None:
            raise ValueError(
                f"the 'sliding_window' cache needs a layer with a window; layer {i} has full "
                "attention (pass a factory to mix cache kinds per layer)"
            )
        return cls(window)
    if name == "paged":
        n_blocks = batch_size * math.ceil(max_len / block_size)
        return cls(n_blocks, block_size)
    if name == "sink":
        raise ValueError(
            "the 'sink' cache needs n_sink and a window; pass a factory, e.g. "
            "lambda i: SinkCache(4, 1020, rope=model.layers[i].attn.rope)"
        )
    try:
        return cls()
    except TypeError as exc:
        raise ValueError(
            f"the {name!r} cache needs settings that cannot be inferred ({exc}); pass a factory"
        ) from None


# -- generation ----------------------------------------------------------------------------


def generate(
    model: DecoderLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    cache: str | CacheFactory | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    typical_p: float | None = None,
    epsilon_cutoff: float | None = None,
    eta_cutoff: float | None = None,
    repetition_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    min_tokens_to_keep: int = 1,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    eos_token_id: int | Iterable[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    streamer: Streamer | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Continue ``input_ids`` by up to ``max_new_tokens`` tokens: greedy, sampled or beam search.

    The prompt is processed in one forward pass (prefill) that fills one KV
    cache per layer; each further token costs one forward pass over a single
    position (decode) that reads the caches.

    Parameters
    ----------
    model : DecoderLM
        The language model (put in eval mode by the caller if it matters;
        :class:`DecoderLM` has no dropout).
    input_ids : torch.Tensor
        Prompt ids ``(B, T)``. A batch of prompts of different lengths is
        **left**-padded, with ``attention_mask`` marking the padding.
    max_new_tokens : int
        Most tokens to add (>= 0).
    cache : str, callable or None
        KV cache kind per layer, see :func:`make_caches` (default: dynamic
        caches, latent caches for MLA layers).
    do_sample : bool, default False
        Sample from the processed distribution; otherwise take the argmax.
    temperature, top_k, top_p, min_p, typical_p, epsilon_cutoff, eta_cutoff
        The sampling rules of :class:`llmref.inference.SamplingConfig` (same
        names, meanings and "off" values as transformers' ``GenerationConfig``),
        applied by :func:`llmref.inference.process_logits` when ``do_sample``.
    repetition_penalty, presence_penalty, frequency_penalty, min_tokens_to_keep
        Also :class:`~llmref.inference.SamplingConfig`'s: the repetition
        penalty counts the prompt and the generated tokens (padding excluded),
        the presence and frequency penalties the generated tokens only. The
        penalties apply to greedy decoding too, as in transformers.
    num_beams : int, default 1
        More than 1: beam search (:func:`llmref.inference.beam_search`, with
        ``length_penalty`` and ``early_stopping``); it recomputes every beam
        each step and takes no ``cache``, ``do_sample``, penalties, ``seed``
        or ``streamer``.
    length_penalty : float, default 1.0
        Beam search only: see :func:`~llmref.inference.beam_search`.
    early_stopping : bool or "never", default False
        Beam search only: see :func:`~llmref.inference.beam_search`.
    eos_token_id : int or iterable of int, optional
        A sequence that produces one of these is finished; the batch stops when
        every sequence is.
    pad_token_id : int, optional
        Fills finished sequences; default the first ``eos_token_id``.
    seed : int, optional
        Seed of a private :class:`torch.Generator` for sampling: the same seed
        gives the same tokens, and the global RNG is untouched.
    streamer : Streamer, optional
        Receives the prompt, then each step's tokens (``put``), then ``end()``.
    attention_mask : torch.Tensor, optional
        ``(B, T)``, ``1`` for prompt tokens and ``0`` for left padding.
        Padding is never attended to and positions count real tokens only,
        so each row generates what it would generate alone.

    Returns
    -------
    torch.Tensor
        ``(B, T + n)`` ids: the prompt followed by the ``n <= max_new_tokens``
        generated tokens.

    Raises
    ------
    TypeError
        For arguments of the wrong type (see also :func:`make_caches`).
    ValueError
        For a sampling option out of range (as :class:`~llmref.inference.SamplingConfig`
        says), beam search combined with sampling options, an ``attention_mask`` whose shape
        differs from ``input_ids`` (batch or length), padding that is not on
        the left, a row with no real token, or cache settings that do not fit.

    Notes
    -----
    Each step's logits go through :func:`llmref.inference.process_logits`
    (penalties, temperature, then the truncation rules, in transformers'
    order); sampling draws from their softmax with
    :func:`llmref.inference.sample`, greedy decoding takes their argmax.
    Greedy decoding with any exact cache kind gives the same tokens as
    transformers' ``generate(do_sample=False)`` on the same weights (tested
    for Llama, Mistral, Qwen2, DeepSeek-V2/V3 and SmolLM2).

    Examples
    --------
    >>> import torch
    >>> from llmref.models import DecoderConfig, DecoderLM, generate
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = DecoderLM(DecoderConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4,
    ...                                 d_ff=64))
    >>> prompts = torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4]])  # the first is left-padded
    >>> mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    >>> out = generate(model, prompts, 5, attention_mask=mask)
    >>> out.shape
    torch.Size([2, 9])
    >>> torch.equal(out[0, 2:], generate(model, prompts[:1, 2:], 5)[0])  # as if alone
    True
    >>> a = generate(model, prompts, 5, attention_mask=mask, do_sample=True, top_p=0.9, seed=1)
    >>> b = generate(model, prompts, 5, attention_mask=mask, do_sample=True, top_p=0.9, seed=1)
    >>> torch.equal(a, b)
    True
    """
    if not isinstance(model, DecoderLM):
        raise TypeError(f"model must be a llmref.models.DecoderLM, got {type(model).__name__}")
    ids = model._check_ids(input_ids)
    B, T = ids.shape
    if T == 0:
        raise ValueError("input_ids must hold at least one token per sequence, got T=0")
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=0)
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be a bool, got {type(do_sample).__name__}")
    config = SamplingConfig(
        temperature=temperature if do_sample else 1.0,  # greedy: any temperature, same argmax
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        typical_p=typical_p,
        epsilon_cutoff=epsilon_cutoff,
        eta_cutoff=eta_cutoff,
        repetition_penalty=repetition_penalty,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        min_tokens_to_keep=min_tokens_to_keep,
    )
    if check_int("num_beams", num_beams, minimum=1) > 1:
        return _beam_search(
            model, ids, max_new_tokens, num_beams, length_penalty, early_stopping,
            eos_token_id, pad_token_id, attention_mask, config, do_sample, cache, seed, streamer,
        )  # fmt: skip
    eos = check_token_set("eos_token_id", eos_token_id, model.config.vocab_size)
    pad = eos[0] if pad_token_id is None and eos else pad_token_id
    if pad is not None:
        pad = check_int("pad_token_id", pad, minimum=0)
    if streamer is not None and not (hasattr(streamer, "put") and hasattr(streamer, "end")):
        raise TypeError(f"streamer must have put() and end(), got {type(streamer).__name__}")
    mask = _check_prompt_mask(attention_mask, ids)
    caches = make_caches(model, cache, batch_size=B, max_len=T + max_new_tokens)
    device = model.embed.weight.device
    ids = ids.to(device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(check_int("seed", seed))
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    out = [ids]
    if streamer is not None:
        streamer.put(ids.cpu())
    with torch.no_grad():
        step_ids = ids
        for _ in range(max_new_tokens):
            hidden = model.hidden_states(step_ids, attention_mask=mask, caches=caches)
            logits = model.lm_head(hidden[:, -1]).float()
            # the tokens so far, only for a penalty (joining them every step costs O(n^2))
            seen = _seen(out, T, mask) if _penalised(config) else {}
            if do_sample:
                next_ids = sample(logits, config, **seen, generator=generator)
            elif seen:
                next_ids = process_logits(logits, config, **seen).argmax(dim=-1)
            else:
                next_ids = logits.argmax(dim=-1)
            if eos:
                if pad is not None:
                    next_ids = torch.where(finished, pad, next_ids)
                finished |= torch.isin(next_ids, eos_ids)
            out.append(next_ids[:, None])
            if streamer is not None:
                streamer.put(next_ids.cpu())
            if eos and bool(finished.all()):
                break
            step_ids = next_ids[:, None]
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
    if streamer is not None:
        streamer.end()
    return torch.cat(out, dim=1)


def _penalised(config: SamplingConfig) -> bool:
    return (
        config.repetition_penalty != 1.0
        or config.presence_penalty != 0.0
        or config.frequency_penalty != 0.0
    )


def _seen(out: list[torch.Tensor], T: int, mask: torch.Tensor | None) -> dict[str, Any]:
    """The tokens so far (prompt, then generated), as the penalties take them."""
    return {"input_ids": torch.cat(out, dim=1), "prompt_length": T, "attention_mask": mask}


def _beam_search(
    model: DecoderLM,
    ids: torch.Tensor,
    max_new_tokens: int,
    num_beams: int,
    length_penalty: float,
    early_stopping: bool | str,
    eos_token_id: int | Iterable[int] | None,
    pad_token_id: int | None,
    attention_mask: torch.Tensor | None,
    config: SamplingConfig,
    do_sample: bool,
    cache: object,
    seed: object,
    streamer: object,
) -> torch.Tensor:
    """``generate(num_beams > 1)``: :func:`llmref.inference.beam_search`, refusing the
    options it does not take (never ignoring them silently)."""
    unused = {
        "do_sample=True": do_sample,
        "a cache": cache is not None,
        "a seed": seed is not None,
        "a streamer": streamer is not None,
        "sampling rules or penalties": config != SamplingConfig(),
    }
    given = [name for name, on in unused.items() if on]
    if given:
        raise ValueError(
            f"num_beams={num_beams} runs beam search, which takes no {', '.join(given)}; "
            "use num_beams=1 for those"
        )
    if max_new_tokens == 0:
        return ids
    out = beam_search(
        model,
        ids,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        attention_mask=attention_mask,
    )
    assert isinstance(out, torch.Tensor)
    return out


def _check_prompt_mask(attention_mask: Any, ids: torch.Tensor) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    check_tensor("attention_mask", attention_mask, ndim=2)
    if attention_mask.shape != ids.shape:
        raise ValueError(
            f"attention_mask must have the shape of input_ids {tuple(ids.shape)} (same batch "
            f"and length), got {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.to(torch.bool)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every row of attention_mask needs at least one real token (a 1)")
    if bool((mask[:, :-1] & ~mask[:, 1:]).any()):
        raise ValueError(
            "attention_mask must be left-padded (zeros before ones in each row): generation "
            "appends to the end of each row"
        )
    return mask
