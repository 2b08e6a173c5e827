"""Fixed, offline calibration and evaluation text, and its tokenization into sequences.

The text is the Python language reference's topic help that CPython ships in
``pydoc_data.topics`` (the pages ``help("FOR")``, ``help("class")`` ...
print): English technical prose with code fragments, about 465,000
characters (Python 3.11) on every machine with Python, no download. The topics are taken in
sorted key order and dealt alternately: even positions form the calibration
text, odd positions the evaluation text, so the two are disjoint, similar in
kind and deterministic for a given Python version. (The content changes a
little between Python versions; results tables state the version that made
them.)
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["calibration_text", "evaluation_text", "text_sequences", "tokenize"]


def _topics() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return sorted(topics.items())


def _dealt(parity: int) -> str:
    return "\n\n".join(text.strip() for i, (_, text) in enumerate(_topics()) if i % 2 == parity)


def calibration_text() -> str:
    """Calibration text: the even-numbered topics of Python's reference help.

    Returns
    -------
    str
        The topics of ``pydoc_data.topics`` at even positions in sorted key
        order, each stripped, joined by blank lines: 253,421 characters,
        61,784 SmolLM2-135M tokens with Python 3.11.7.

    Raises
    ------
    ImportError
        If this Python was built without ``pydoc_data`` (unusual).

    See Also
    --------
    evaluation_text : the disjoint other half.

    Notes
    -----
    ``pydoc_data.topics`` is generated from the CPython documentation at
    release time, so the exact text (and numbers measured on it) depends on
    the Python version: record ``sys.version`` next to results.

    Examples
    --------
    >>> from llmref.quant import calibration_text, evaluation_text
    >>> cal, ev = calibration_text(), evaluation_text()
    >>> len(cal) > 200_000 and len(ev) > 200_000
    True
    >>> cal[:40] in ev
    False
    """
    return _dealt(0)


def evaluation_text() -> str:
    """Evaluation text: the odd-numbered topics of Python's reference help.

    Returns
    -------
    str
        The topics of ``pydoc_data.topics`` at odd positions in sorted key
        order, each stripped, joined by blank lines: 211,624 characters,
        51,321 SmolLM2-135M tokens with Python 3.11.7; no topic of
        :func:`calibration_text` is in it.

    Raises
    ------
    ImportError
        If this Python was built without ``pydoc_data``.

    See Also
    --------
    calibration_text : the disjoint other half.

    Examples
    --------
    >>> from llmref.quant import evaluation_text
    >>> evaluation_text()[:21]
    'Assignment statements'
    """
    return _dealt(1)


def tokenize(text: str, tokenizer: Any) -> torch.Tensor:
    """Token ids of ``text`` with a ``tokenizers.Tokenizer`` or a transformers tokenizer.

    Parameters
    ----------
    text : str
        The text.
    tokenizer : object
        A ``tokenizers.Tokenizer`` (``encode(text).ids``, e.g. from
        :func:`~llmref.models.gguf_tokenizer`) or a transformers tokenizer
        (``encode(text)`` returning a list; no special tokens added).

    Returns
    -------
    torch.Tensor
        int64 ids of shape ``(n_tokens,)``.

    Raises
    ------
    TypeError
        If ``text`` is not a str or ``tokenizer`` has no ``encode``.

    Examples
    --------
    >>> class Chars:  # any object with encode(text) -> list of ids
    ...     def encode(self, text):
    ...         return [ord(c) for c in text]
    >>> tokenize("abc", Chars())
    tensor([97, 98, 99])
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    encode = getattr(tokenizer, "encode", None)
    if encode is None:
        raise TypeError(f"tokenizer must have an encode method, got {type(tokenizer).__name__}")
    try:
        out = encode(text, add_special_tokens=False)
    except TypeError:
        out = encode(text)
    ids = getattr(out, "ids", out)
    return torch.tensor(list(ids), dtype=torch.long)


def text_sequences(
    token_ids: torch.Tensor, seq_len: int, *, n_sequences: int | None = None
) -> torch.Tensor:
    """Cut a token stream into consecutive, non-overlapping sequences of ``seq_len`` tokens.

    Parameters
    ----------
    token_ids : torch.Tensor
        1-D integer ids (e.g. ``tokenize(calibration_text(), tok)``).
    seq_len : int
        Tokens per sequence.
    n_sequences : int, optional
        Keep only the first ``n_sequences`` (default: as many as fit; the
        remainder shorter than ``seq_len`` is dropped).

    Returns
    -------
    torch.Tensor
        ``(n, seq_len)``, the calibration argument of
        :func:`~llmref.quant.quantize_model`.

    Raises
    ------
    TypeError
        If ``token_ids`` is not an integer tensor.
    ValueError
        If it is not 1-D, ``seq_len``/``n_sequences`` is not positive, or
        fewer than ``n_sequences`` (or than one) sequences fit.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import text_sequences
    >>> text_sequences(torch.arange(10), 4)
    tensor([[0, 1, 2, 3],
            [4, 5, 6, 7]])
    """
    if not isinstance(token_ids, torch.Tensor) or token_ids.is_floating_point():
        raise TypeError(f"token_ids must be an integer tensor, got {type(token_ids).__name__}")
    if token_ids.ndim != 1:
        raise ValueError(f"token_ids must be 1-D, got shape {tuple(token_ids.shape)}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
    fit = token_ids.shape[0] // seq_len
    n = fit if n_sequences is None else n_sequences
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n_sequences must be a positive int, got {n_sequences!r}")
    if n > fit:
        raise ValueError(
            f"{token_ids.shape[0]} tokens hold {fit} sequences of {seq_len}, "
            f"fewer than the {n} asked for"
        )
    return token_ids[: n * seq_len].reshape(n, seq_len)
