"""The text-classification transformer of the project's source notes, built from llmref blocks."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int, check_tensor
from ..position import LearnedPositionEmbedding
from .blocks import TransformerBlock

__all__ = ["TextClassifier"]


class TextClassifier(nn.Module):
    """Token and learned position embeddings, transformer blocks, mean pooling, class log-probs.

    This is the ``Transformer`` of the source notes' section "Transformer 实现"
    (Peter Bloem's text-classification transformer), with llmref's modules
    inside: ``k`` is ``d_model``, ``heads`` is ``n_heads``, ``depth`` is
    ``n_layers``, ``seq_length`` is ``max_len``, ``num_tokens`` is
    ``vocab_size`` and ``num_classes`` is ``n_classes``.

    Parameters
    ----------
    vocab_size : int
        Number of token ids (``num_tokens``).
    n_classes : int
        Number of classes (``num_classes``).
    d_model : int, default 128
        Embedding width (``k``).
    n_heads : int, default 4
        Attention heads per block (``heads``).
    n_layers : int, default 2
        Number of :class:`~llmref.models.TransformerBlock` s (``depth``).
    max_len : int, default 512
        Longest input; the learned position table has this many rows (``seq_length``).
    d_ff : int, optional
        MLP width of each block; default ``4 * d_model``.
    dropout : float, default 0.0
        Dropout in the blocks (training only).
    device, dtype : optional
        Where and in which dtype to create the parameters.

    Attributes
    ----------
    token_emb : torch.nn.Embedding
    pos_emb : llmref.position.LearnedPositionEmbedding
    blocks : torch.nn.ModuleList
    to_logits : torch.nn.Linear
        ``d_model -> n_classes`` (the notes' ``toprobs``).

    Notes
    -----
    For token ids :math:`t_1 \\dots t_T`,

    .. math::

        x_i = E[t_i] + P[i], \\qquad h = \\operatorname{Blocks}(x), \\qquad
        \\log p(c \\mid t) = \\operatorname{log\\,softmax}\\Bigl(W \\tfrac{1}{T}
        \\sum_{i} h_i + b\\Bigr)_c .

    Attention alone is permutation-equivariant and the mean is
    permutation-invariant, so without :math:`P` the model would see a bag of
    tokens; the learned position embedding is what lets word order matter
    (see :doc:`/theory/models/from-attention-to-lm`). The blocks are
    post-norm, bidirectional (no causal mask), with a ReLU MLP, as in the
    notes. With ``attention_mask``, padding is neither attended to nor
    averaged.

    References
    ----------
    :cite:t:`vaswani2017attention`, :cite:t:`bloem2019transformers`

    Examples
    --------
    >>> import torch
    >>> model = TextClassifier(vocab_size=100, n_classes=3, d_model=32, n_heads=4, max_len=16)
    >>> log_probs = model(torch.randint(0, 100, (2, 10)))
    >>> log_probs.shape
    torch.Size([2, 3])
    >>> torch.allclose(log_probs.exp().sum(-1), torch.ones(2))
    True
    """

    def __init__(
        self,
        vocab_size: int,
        n_classes: int,
        *,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 2,
        max_len: int = 512,
        d_ff: int | None = None,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=1)
        self.n_classes = check_int("n_classes", n_classes, minimum=2)
        self.max_len = check_int("max_len", max_len, minimum=1)
        check_int("n_layers", n_layers, minimum=1)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.token_emb = nn.Embedding(vocab_size, d_model, **kw)
        # N(0, 1) like the token embedding, as the notes' nn.Embedding(seq_length, k) is
        self.pos_emb = LearnedPositionEmbedding(max_len, d_model, init_std=1.0).to(**kw)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, d_ff=d_ff, dropout=dropout, **kw)
            for _ in range(n_layers)
        )
        self.to_logits = nn.Linear(d_model, n_classes, **kw)

    def forward(
        self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Class log-probabilities of each sequence.

        Parameters
        ----------
        input_ids : torch.Tensor
            Integer token ids ``(B, T)`` with ``T <= max_len``.
        attention_mask : torch.Tensor, optional
            ``(B, T)``, ``1`` for tokens and ``0`` for padding; padding is
            not attended to and not included in the mean.

        Returns
        -------
        torch.Tensor
            ``(B, n_classes)`` log-probabilities (``log_softmax`` of the logits).

        Raises
        ------
        TypeError
            If ``input_ids`` is not an integer tensor.
        ValueError
            If ``T > max_len``, an id is out of range, or ``attention_mask``
            does not match ``input_ids`` or has a row without tokens.
        """
        check_tensor("input_ids", input_ids, ndim=2)
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        T = input_ids.shape[1]
        if T > self.max_len:
            raise ValueError(
                f"input_ids has T={T} tokens, more than max_len={self.max_len} (the size of the "
                "learned position table)"
            )
        if input_ids.numel() and (
            int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size
        ):
            raise ValueError(f"input_ids must be in [0, vocab_size={self.vocab_size})")
        mask = None
        if attention_mask is not None:
            check_tensor("attention_mask", attention_mask)
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                    f"got {tuple(attention_mask.shape)}"
                )
            mask = attention_mask.to(torch.bool)
            if not bool(mask.any(dim=1).all()):
                raise ValueError("every row of attention_mask needs at least one token (a 1)")
        positions = torch.arange(T, device=input_ids.device)
        x = self.token_emb(input_ids) + self.pos_emb(positions)
        key_mask = None if mask is None else mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask=key_mask)
        if mask is None:
            pooled = x.mean(dim=1)
        else:
            weights = mask.to(x.dtype).unsqueeze(-1)
            pooled = (x * weights).sum(dim=1) / weights.sum(dim=1)
        return F.log_softmax(self.to_logits(pooled), dim=-1)
