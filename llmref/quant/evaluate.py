"""Evaluating a quantized model against its float original.

:func:`perplexity` of a causal language model on a token stream (the standard
sliding-window evaluation), :func:`embedding_cosine` of a sentence encoder's
mean-pooled embeddings, and :func:`layer_sqnr`, the output SQNR of every
linear layer. The fixed texts to evaluate on are in
:mod:`llmref.quant.calibration`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .model import _as_batches, _run

__all__ = ["embedding_cosine", "layer_sqnr", "perplexity"]


def _device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _first_output(out: Any, attr: str) -> torch.Tensor:
    """``out.<attr>`` for transformers outputs, ``out[0]`` for tuples, else ``out``."""
    if isinstance(out, torch.Tensor):
        return out
    value = getattr(out, attr, None)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model must return a tensor or an output with .{attr}, got {type(out)}")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@torch.no_grad()
def perplexity(
    model: nn.Module,
    token_ids: torch.Tensor,
    *,
    seq_len: int = 512,
    stride: int | None = None,
    batch_size: int = 1,
) -> float:
    """Perplexity of a causal language model on a token stream, by sliding windows.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ids ``(B, T)`` to next-token logits ``(B, T, V)`` (a tensor, like
        :class:`~llmref.models.DecoderLM`, or an output with ``.logits``, like
        a transformers causal LM).
    token_ids : torch.Tensor
        Integer ids of shape ``(N,)`` or ``(1, N)``, ``N >= 2``.
    seq_len : int, default 512
        Window length (at most the model's context).
    stride : int, optional
        Step between window starts, ``1 <= stride <= seq_len``; default
        ``seq_len`` (disjoint windows). With ``stride < seq_len`` every scored
        token sees at least ``seq_len - stride`` tokens of context.
    batch_size : int, default 1
        Windows per forward pass.

    Returns
    -------
    float
        ``exp(mean negative log-likelihood)`` over the scored tokens.

    Raises
    ------
    TypeError
        If ``token_ids`` is not an integer tensor or the model output has no logits.
    ValueError
        If ``token_ids`` has the wrong shape or fewer than 2 tokens, or an
        option is out of range.

    Notes
    -----
    Windows start at ``0, stride, 2·stride, ...`` and end at ``min(start +
    seq_len, N)`` (the last window reaches the end). Each token is scored
    once, in the first window that ends after it, from the logits at the
    position before it: in window ``[b, e)`` the tokens ``max(e_prev, b + 1)
    .. e - 1`` are scored, where ``e_prev`` is the previous window's end. The
    first token of the stream is never scored, and with ``stride = seq_len``
    neither is the first token of each window (it has no context there). This
    is the evaluation of transformers' perplexity guide, so numbers compare.

    .. math::

        \\mathrm{PPL} = \\exp\\Bigl(-\\frac{1}{|S|}\\sum_{t \\in S}
        \\log p(x_t \\mid x_{\\max(b_t, 0)} \\ldots x_{t-1})\\Bigr)

    Examples
    --------
    >>> import torch
    >>> from llmref.models import DecoderConfig, DecoderLM
    >>> from llmref.quant import perplexity
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = DecoderLM(DecoderConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4,
    ...                                 d_ff=64)).eval()
    >>> ids = torch.randint(0, 50, (100,))
    >>> ppl = perplexity(model, ids, seq_len=32, stride=16)
    >>> 45 < ppl < 55  # an untrained model: about the vocabulary size
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if (
        not isinstance(token_ids, torch.Tensor)
        or token_ids.is_floating_point()
        or token_ids.dtype == torch.bool
    ):
        raise TypeError(f"token_ids must be an integer tensor, got {type(token_ids).__name__}")
    if token_ids.ndim == 2 and token_ids.shape[0] == 1:
        token_ids = token_ids[0]
    if token_ids.ndim != 1:
        raise ValueError(f"token_ids must have shape (N,) or (1, N), got {tuple(token_ids.shape)}")
    n = token_ids.shape[0]
    if n < 2:
        raise ValueError(f"token_ids must hold at least 2 tokens, got {n}")
    seq_len = _positive_int("seq_len", seq_len)
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    stride = seq_len if stride is None else _positive_int("stride", stride)
    if stride > seq_len:
        raise ValueError(f"stride must be at most seq_len={seq_len}, got {stride}")
    batch_size = _positive_int("batch_size", batch_size)
    ids = token_ids.to(device=_device(model), dtype=torch.long)

    windows: list[tuple[int, int, int]] = []  # (begin, end, first scored position)
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + seq_len, n)
        first = max(prev_end, begin + 1)
        if first < end:
            windows.append((begin, end, first))
        prev_end = end
        if end == n:
            break

    nll = 0.0
    count = 0
    i = 0
    while i < len(windows):
        length = windows[i][1] - windows[i][0]
        j = i
        while j < len(windows) and j - i < batch_size and windows[j][1] - windows[j][0] == length:
            j += 1
        group = windows[i:j]
        batch = torch.stack([ids[b:e] for b, e, _ in group])
        logits = _first_output(_run(model, batch), "logits")
        if logits.ndim != 3 or logits.shape[:2] != batch.shape:
            raise ValueError(
                f"the model must return logits (B, T, V) = ({batch.shape[0]}, {length}, V), got "
                f"shape {tuple(logits.shape)}"
            )
        for row, (b, e, first) in enumerate(group):
            # at least float32 (bfloat16/float16 logits), float64 kept
            pred = logits[row, first - b - 1 : e - b - 1]
            pred = pred.to(torch.promote_types(pred.dtype, torch.float32))
            target = batch[row, first - b : e - b]
            nll += float(nn.functional.cross_entropy(pred, target, reduction="sum"))
            count += e - first
        i = j
    return math.exp(nll / count)


def _mean_pooled(model: nn.Module, batch: Any) -> torch.Tensor:
    out = _first_output(_run(model, batch), "last_hidden_state")
    if out.ndim != 3:
        raise ValueError(f"the model must return hidden states (B, T, D), got {tuple(out.shape)}")
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if mask is None:
        return out.float().mean(1)
    m = mask.to(out.device, torch.float32).unsqueeze(-1)
    return (out.float() * m).sum(1) / m.sum(1).clamp(min=1e-9)


@torch.no_grad()
def embedding_cosine(reference_model: nn.Module, model: nn.Module, inputs: Any) -> float:
    """Mean cosine similarity of two encoders' mean-pooled sentence embeddings.

    Parameters
    ----------
    reference_model : torch.nn.Module
        The float encoder. Returns hidden states ``(B, T, D)`` (a tensor, a
        tuple whose first item is, or an output with ``.last_hidden_state``,
        like transformers' ``BertModel``).
    model : torch.nn.Module
        The quantized encoder, same interface.
    inputs : tensor, mapping or iterable
        One batch (ids ``(B, T)``, or a tokenizer's output mapping with
        ``input_ids`` and ``attention_mask``, passed as ``model(**inputs)``) or
        an iterable of batches.

    Returns
    -------
    float
        Mean over sentences of ``cos(e_ref, e)``, where each embedding is the
        average of the token states over the attention mask (the pooling of
        sentence-transformers' all-MiniLM-L6-v2). 1.0 for identical models.

    Raises
    ------
    TypeError
        If a model returns no hidden states, or ``inputs`` is of the wrong type.
    ValueError
        If a model's output is not ``(B, T, D)``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from llmref.quant import embedding_cosine
    >>> enc = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 8))
    >>> ids = torch.randint(0, 20, (3, 5))
    >>> round(embedding_cosine(enc, enc, ids), 12)
    1.0
    """
    total, count = 0.0, 0
    for batch in _as_batches(inputs):
        a = _mean_pooled(reference_model, batch)
        b = _mean_pooled(model, batch)
        cos = nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
        total += float(cos.clamp(-1.0, 1.0).sum())
        count += cos.numel()
    return min(total / count, 1.0)


def _db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


@torch.no_grad()
def layer_sqnr(
    reference_model: nn.Module, model: nn.Module, inputs: Any, *, propagate: bool = False
) -> dict[str, float]:
    """Output SQNR (dB) of every linear layer of a quantized model against the float one.

    Parameters
    ----------
    reference_model : torch.nn.Module
        The float model; each of its ``nn.Linear`` layers is compared with the
        module of the same qualified name in ``model`` (a
        :class:`~llmref.quant.QuantLinear` or still a float layer).
    model : torch.nn.Module
        The quantized copy (e.g. ``copy.deepcopy(reference)`` then
        :func:`~llmref.quant.quantize_model`).
    inputs : tensor, mapping or iterable
        One batch of model inputs or an iterable of batches (as the
        ``calibration`` argument of :func:`~llmref.quant.quantize_model`).
    propagate : bool, default False
        False: each layer of ``model`` gets the *reference* model's input to
        that layer, so the number is the layer's own error. True: both models
        run on their own, so the error accumulated by earlier layers counts too.

    Returns
    -------
    dict of str to float
        Layer name -> ``10 log10(Σ y² / Σ (y - ŷ)²)`` over all batches, in
        module order (``inf`` where the outputs are identical).

    Raises
    ------
    TypeError
        If a model is not an ``nn.Module`` or ``inputs`` is of the wrong type.

    Examples
    --------
    >>> import copy, torch
    >>> from torch import nn
    >>> from llmref.quant import layer_sqnr, quantize_model
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> ref = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    >>> q8, q4 = copy.deepcopy(ref), copy.deepcopy(ref)
    >>> _ = quantize_model(q8, "int8"), quantize_model(q4, "int4")
    >>> x = torch.randn(16, 64)
    >>> s8, s4 = layer_sqnr(ref, q8, x), layer_sqnr(ref, q4, x)
    >>> list(s8), all(s8[k] > s4[k] + 15 for k in s8)
    (['0', '2'], True)
    """
    for label, m in (("reference_model", reference_model), ("model", model)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{label} must be an nn.Module, got {type(m).__name__}")
    others = dict(model.named_modules())
    pairs = [
        (name, lin, others[name])
        for name, lin in reference_model.named_modules()
        if isinstance(lin, nn.Linear) and name in others
    ]
    sums = {name: [0.0, 0.0] for name, _, _ in pairs}

    def accumulate(name: str, y: torch.Tensor, y_hat: torch.Tensor) -> None:
        y, y_hat = y.detach().double(), y_hat.detach().double()
        sums[name][0] += float((y**2).sum())
        sums[name][1] += float(((y - y_hat) ** 2).sum())

    outputs: dict[str, torch.Tensor] = {}  # propagate: this batch's outputs of ``model``
    for batch in _as_batches(inputs):
        handles = []
        if propagate:
            outputs.clear()
            for name, _, other in pairs:
                handles.append(
                    other.register_forward_hook(
                        lambda mod, args, out, name=name: outputs.__setitem__(name, out)
                    )
                )
            try:
                _run(model, batch)
            finally:
                for h in handles:
                    h.remove()
            handles = [
                lin.register_forward_hook(
                    lambda mod, args, out, name=name: accumulate(name, out, outputs[name])
                )
                for name, lin, _ in pairs
            ]
        else:
            handles = [
                lin.register_forward_hook(
                    lambda mod, args, out, name=name, other=other: accumulate(
                        name, out, out if other is mod else other(args[0])
                    )
                )
                for name, lin, other in pairs
            ]
        try:
            _run(reference_model, batch)
        finally:
            for h in handles:
                h.remove()
    return {name: _db(s, e) for name, (s, e) in sums.items()}
