"""NoPE: no position encoding, as an explicit choice."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_tensor
from ._registries import POSITION

__all__ = ["NoPE", "nope"]


@POSITION.register(
    "nope",
    paper="kazemnejad2023impact",
    reference="nope",
    kind="none",
    module="NoPE",
    traces=True,
    example=lambda: (NoPE(), (torch.randn(2, 4, 5, 8, dtype=torch.float64),), {"offset": 2}),
)
def nope(x: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """No position encoding: return the queries or keys unchanged.

    Parameters
    ----------
    x : torch.Tensor
        Queries or keys, ``(B, H, T, D)``.
    position_ids : torch.Tensor, optional
        Ignored; accepted so that NoPE can stand in for a rotary encoding.

    Returns
    -------
    torch.Tensor
        ``x`` itself.

    Raises
    ------
    TypeError
        If ``x`` is not a tensor.

    Notes
    -----
    Attention by itself is permutation-equivariant, but a *causal* mask is
    not: query :math:`i` sees exactly :math:`i + 1` keys, and a model can
    recover absolute positions from that count (for example by attending
    uniformly to a start token and reading the :math:`1/(i+1)` weight). Decoders
    trained without any encoding do learn positions this way
    {cite:p}`haviv2022transformer` and can length-generalise better than with
    explicit encodings on small tasks {cite:p}`kazemnejad2023impact`; several
    recent models interleave NoPE layers with RoPE layers (Llama 4, Cohere
    Command A, SmolLM3). An encoder (no causal mask) without positions sees a
    bag of tokens.

    References
    ----------
    :cite:t:`kazemnejad2023impact`, :cite:t:`haviv2022transformer`

    Examples
    --------
    >>> x = torch.randn(1, 2, 3, 4)
    >>> nope(x) is x
    True
    """
    check_tensor("x", x)
    return x


class NoPE(nn.Module):
    """A layer's "no position encoding" choice, interchangeable with a rotary embedding.

    Its :meth:`forward` takes the same arguments as
    :meth:`RotaryEmbedding.forward <llmref.position.RotaryEmbedding.forward>`
    and returns the input, so a model can pick per layer
    :class:`~llmref.position.RotaryEmbedding` or ``NoPE()``.

    Examples
    --------
    >>> q = torch.randn(1, 2, 3, 8)
    >>> NoPE()(q, offset=5) is q
    True
    """

    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor | None = None, *, offset: int = 0
    ) -> torch.Tensor:
        """Return ``x`` unchanged.

        Parameters
        ----------
        x : torch.Tensor
            Queries or keys.
        position_ids : torch.Tensor, optional
            Ignored.
        offset : int, default 0
            Ignored.

        Returns
        -------
        torch.Tensor
            ``x``.

        Examples
        --------
        >>> x = torch.ones(2)
        >>> NoPE()(x) is x
        True
        """
        return nope(x, position_ids)
