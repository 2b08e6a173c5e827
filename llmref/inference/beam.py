"""Beam search with transformers' semantics (candidates, length penalty, early stopping)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .._checks import check_int, check_tensor, check_token_set, compute_dtype
from ._args import check_real
from .protocol import LanguageModel, check_language_model

__all__ = ["beam_search"]

NEG_INF = -math.inf


def _check_prompt(
    input_ids: object, attention_mask: object, vocab: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    ids = check_tensor("input_ids", input_ids, ndim=2)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be an integer tensor, got {ids.dtype}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must hold at least one prompt token, got {tuple(ids.shape)}")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(
            f"input_ids must be in [0, vocab_size={vocab}), got values in "
            f"[{int(ids.min())}, {int(ids.max())}]"
        )
    if attention_mask is None:
        return ids.long(), None
    mask = check_tensor("attention_mask", attention_mask, ndim=2)
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(
            f"attention_mask must have the shape of input_ids {tuple(ids.shape)}, got "
            f"{tuple(mask.shape)}"
        )
    mask = mask != 0
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every row of attention_mask needs at least one real token (a 1)")
    if bool((mask[:, :-1] & ~mask[:, 1:]).any()):
        raise ValueError("attention_mask must be left-padded (zeros before ones in each row)")
    return ids.long(), mask


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, j], ...]`` for ``x`` of shape ``(B, N, ...)`` and ``index`` ``(B, M)``."""
    shaped = index.reshape(*index.shape, *([1] * (x.ndim - 2))).expand(*index.shape, *x.shape[2:])
    return x.gather(1, shaped)


def beam_search(
    model: LanguageModel,
    input_ids: torch.Tensor,
    *,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    eos_token_id: int | Iterable[int] | None = None,
    pad_token_id: int | None = None,
    num_return_sequences: int = 1,
    attention_mask: torch.Tensor | None = None,
    return_scores: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Beam search decoding, as transformers' ``generate(num_beams=..., do_sample=False)``.

    Parameters
    ----------
    model : LanguageModel
        The language model (in eval mode), e.g. a :class:`~llmref.models.DecoderLM`.
    input_ids : torch.Tensor
        Prompt ids ``(B, T)``; prompts of different lengths left-padded, with
        ``attention_mask``.
    num_beams : int
        Hypotheses kept per prompt (>= 1).
    max_new_tokens : int
        Most tokens to add (>= 1).
    length_penalty : float, default 1.0
        A finished hypothesis of :math:`n` generated tokens (its end-of-sequence
        token included) scores :math:`\\log p / n^{\\alpha}`; ``alpha > 0``
        favours longer sequences (the score is negative), ``alpha < 0``
        shorter ones, ``0`` compares plain log-probabilities.
    early_stopping : bool or "never", default False
        When a prompt is done: ``True`` as soon as ``num_beams`` hypotheses
        are finished; ``False`` when, in addition, the best running beam
        divided by the *current* length penalty cannot beat the worst finished
        one (transformers' heuristic); ``"never"`` as ``False`` but, for
        ``length_penalty > 0``, with the penalty of the longest possible
        length (the exact bound, as transformers).
    eos_token_id : int or iterable of int, optional
        Tokens that finish a hypothesis.
    pad_token_id : int, optional
        Fills finished sequences up to the output length; default the first
        ``eos_token_id``.
    num_return_sequences : int, default 1
        Best hypotheses returned per prompt, in ``[1, num_beams]``.
    attention_mask : torch.Tensor, optional
        ``(B, T)``, 0 for left padding.
    return_scores : bool, default False
        Also return each returned sequence's score.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        Ids ``(B * num_return_sequences, T + n)``, the best first for each
        prompt, where ``n`` is the longest returned continuation; with
        ``return_scores``, also their length-penalised scores
        ``(B * num_return_sequences,)``.

    Raises
    ------
    TypeError
        For arguments of the wrong type.
    ValueError
        For out-of-range values, an ``attention_mask`` that does not match or
        is not left-padded, or a vocabulary smaller than the candidates kept
        per step (``num_beams * max(2, 1 + number of eos ids)``).

    Notes
    -----
    Each step extends every running beam by every token, scores a candidate
    by its summed log-probability :math:`\\sum_t \\log p(y_t \\mid y_{<t})`,
    and keeps the best :math:`k = \\max(2, 1 + n_\\text{eos})\\, b` candidates
    (:math:`b` beams) so that :math:`b` of them are still running whatever
    ends. Among the best :math:`b` candidates, those ending in an eos token
    (or reaching ``max_new_tokens``) join the finished pool with their
    length-penalised score, and the pool keeps its best :math:`b`; the best
    :math:`b` unfinished candidates run on. This is transformers'
    (>= 4.50) vectorised beam search, step for step.

    The model is run without a cache, on every running beam's whole
    sequence at every step (:math:`O(n^2)` tokens for :math:`n` steps), using
    only its public forward: the cached version needs to reorder the caches
    between beams, which llmref's caches do not offer.

    Examples
    --------
    >>> import torch
    >>> from llmref.models import DecoderConfig, DecoderLM, generate
    >>> from llmref.inference import beam_search
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = DecoderLM(DecoderConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4,
    ...                                 d_ff=64, init_std=0.2)).eval()
    >>> prompt = torch.tensor([[1, 2, 3]])
    >>> out, scores = beam_search(model, prompt, num_beams=4, max_new_tokens=5,
    ...                           num_return_sequences=2, return_scores=True)
    >>> out.shape, bool(scores[0] >= scores[1])
    (torch.Size([2, 8]), True)
    >>> greedy = generate(model, prompt, 5)
    >>> torch.equal(beam_search(model, prompt, num_beams=1, max_new_tokens=5), greedy)
    True
    """
    V = check_language_model(model)
    ids, mask = _check_prompt(input_ids, attention_mask, V)
    K = check_int("num_beams", num_beams, minimum=1)
    new = check_int("max_new_tokens", max_new_tokens, minimum=1)
    alpha = check_real("length_penalty", length_penalty)
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    eos = check_token_set("eos_token_id", eos_token_id, V)
    R = check_int("num_return_sequences", num_return_sequences, minimum=1)
    if R > K:
        raise ValueError(f"num_return_sequences must be <= num_beams={K}, got {R}")
    pad = eos[0] if pad_token_id is None and eos else pad_token_id
    pad = 0 if pad is None else check_int("pad_token_id", pad, minimum=0)
    if not isinstance(return_scores, bool):
        raise TypeError(f"return_scores must be a bool, got {type(return_scores).__name__}")
    keep = max(2, 1 + len(eos)) * K
    if keep > V:
        raise ValueError(
            f"num_beams * max(2, 1 + number of eos ids) = {keep} candidates are kept per step, "
            f"more than vocab_size={V}; use fewer beams"
        )

    weight = next(model.parameters())
    device, dtype = weight.device, compute_dtype(weight.dtype)
    ids = ids.to(device)
    B, T = ids.shape
    total = T + new
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    top_b = torch.arange(keep, device=device) < K  # candidates that may finish this step

    run_seqs = torch.full((B, K, total), pad, dtype=torch.long, device=device)
    run_seqs[:, :, :T] = ids[:, None]
    run_scores = torch.full((B, K), NEG_INF, dtype=dtype, device=device)
    run_scores[:, 0] = 0.0  # one live beam at first, so the K beams do not repeat each other
    fin_seqs = run_seqs.clone()
    fin_scores = torch.full((B, K), NEG_INF, dtype=dtype, device=device)
    fin_done = torch.zeros(B, K, dtype=torch.bool, device=device)
    fin_len = torch.zeros(B, K, dtype=torch.long, device=device)
    improvable = torch.ones(B, dtype=torch.bool, device=device)

    for step in range(new):
        cur = T + step
        flat_mask = None
        if mask is not None:
            grown = torch.cat([mask.to(device), mask.new_ones(B, step, device=device)], dim=1)
            flat_mask = grown.repeat_interleave(K, dim=0)
        with torch.no_grad():
            logits = model(run_seqs[:, :, :cur].reshape(B * K, cur), attention_mask=flat_mask)
        log_p = torch.log_softmax(logits[:, -1].to(dtype), dim=-1).view(B, K, V)
        totals = (log_p + run_scores[..., None]).view(B, K * V)
        cand_scores, flat_index = torch.topk(totals, keep)
        cand_seqs = _take(run_seqs, flat_index // V)
        cand_seqs[:, :, cur] = flat_index % V
        ends = torch.isin(flat_index % V, eos_ids)
        if cur + 1 >= total:
            ends = torch.ones_like(ends)

        # The best K candidates that did not end run on.
        run_scores, pick = torch.topk(cand_scores.masked_fill(ends, NEG_INF), K)
        run_seqs = _take(cand_seqs, pick)

        # Among the best K candidates, those that ended join the finished pool.
        length = step + 1
        may_finish = ends & top_b & improvable[:, None]
        if early_stopping is True:
            may_finish &= ~fin_done.all(dim=1, keepdim=True)
        scores = (cand_scores / length**alpha).masked_fill(~may_finish, NEG_INF)
        pool = torch.topk(torch.cat([fin_scores, scores], dim=1), K).indices
        fin_scores = _take(torch.cat([fin_scores, scores], dim=1), pool)
        fin_seqs = _take(torch.cat([fin_seqs, cand_seqs], dim=1), pool)
        fin_done = _take(torch.cat([fin_done, may_finish], dim=1), pool)
        fin_len = _take(
            torch.cat([fin_len, torch.full_like(ends, length, dtype=torch.long)], 1), pool
        )

        # transformers' stopping heuristic: the best running beam, at the current length
        # (or, for early_stopping="never" with alpha > 0, the longest), cannot beat the worst
        # finished hypothesis once the pool is full.
        bound_len = new if early_stopping == "never" and alpha > 0 else length
        best_running = run_scores[:, 0] / bound_len**alpha
        full = fin_done.all(dim=1)
        improvable &= ~(full & (best_running <= fin_scores.min(dim=1).values))
        if not bool(improvable.any()) or bool(ends.all()):
            break
        if early_stopping is True and bool(full.all()):
            break

    out_len = T + int(fin_len[:, :R].max())
    sequences = fin_seqs[:, :R, :out_len].reshape(B * R, out_len)
    if return_scores:
        return sequences, fin_scores[:, :R].reshape(B * R)
    return sequences
