"""Learned absolute position embeddings (GPT-2, BERT, OPT, ...)."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_float_dtype, check_int, check_tensor
from ._registries import POSITION
from .rope import _check_positions

__all__ = ["LearnedPositionEmbedding", "learned_position_embedding"]


@POSITION.register(
    "learned",
    paper="gehring2017convolutional",
    reference="learned_position_embedding",
    third_party="torch.nn.functional.embedding",
    kind="absolute",
    module="LearnedPositionEmbedding",
    traces=False,  # checks that every position is in the table: a host value
    example=lambda: (LearnedPositionEmbedding(16, 8).double(), (torch.arange(2, 7),), {}),
)
def learned_position_embedding(weight: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Look up learned position vectors, refusing positions the table does not have.

    Parameters
    ----------
    weight : torch.Tensor
        The table, shape ``(max_positions, dim)``.
    position_ids : torch.Tensor
        Integer positions of any shape, each in ``[0, max_positions)``.

    Returns
    -------
    torch.Tensor
        Shape ``(*position_ids.shape, dim)``, dtype of ``weight``.

    Raises
    ------
    TypeError
        If ``weight`` is not a floating tensor or ``position_ids`` not integer.
    ValueError
        If ``weight`` is not 2-D or a position is outside the table: a learned
        table has nothing to say about positions it was never trained on, and
        an index error from deep inside torch would not say so.

    Notes
    -----
    One free vector per position, added to the token embedding
    {cite:p}`gehring2017convolutional`; GPT-2 and BERT learn 512 or 1024 of them.
    It is as expressive as an absolute encoding gets and cannot extrapolate at
    all: position ``max_positions`` simply does not exist.

    References
    ----------
    :cite:t:`gehring2017convolutional`

    Examples
    --------
    >>> table = torch.arange(8.0).view(4, 2)
    >>> learned_position_embedding(table, torch.tensor([0, 3]))
    tensor([[0., 1.],
            [6., 7.]])
    """
    check_tensor("weight", weight, ndim=2)
    check_float_dtype("weight", weight)
    position_ids = _check_positions(position_ids)
    if position_ids.numel():
        low, high = int(position_ids.min()), int(position_ids.max())
        if low < 0 or high >= weight.shape[0]:
            raise ValueError(
                f"position_ids must be in [0, max_positions={weight.shape[0]}), got values in "
                f"[{low}, {high}]; a learned position table cannot extrapolate"
            )
    return weight[position_ids.to(weight.device)]


class LearnedPositionEmbedding(nn.Module):
    """A learned table of absolute position vectors.

    Parameters
    ----------
    max_positions : int
        Number of positions the table holds (the context length).
    dim : int
        Model width.
    init_std : float, default 0.02
        Standard deviation of the normal initialisation (GPT-2's).

    Attributes
    ----------
    weight : torch.nn.Parameter
        Shape ``(max_positions, dim)``.

    Examples
    --------
    >>> pos = LearnedPositionEmbedding(16, 8)
    >>> pos(torch.arange(4)).shape
    torch.Size([4, 8])
    >>> pos(T=3, offset=5).shape
    torch.Size([3, 8])
    """

    def __init__(self, max_positions: int, dim: int, *, init_std: float = 0.02) -> None:
        super().__init__()
        self.max_positions = check_int("max_positions", max_positions, minimum=1)
        self.dim = check_int("dim", dim, minimum=1)
        self.weight = nn.Parameter(torch.randn(max_positions, dim) * init_std)

    def forward(
        self, position_ids: torch.Tensor | None = None, *, T: int | None = None, offset: int = 0
    ) -> torch.Tensor:
        """Position vectors for ``position_ids``, or for ``offset .. offset + T - 1``.

        Parameters
        ----------
        position_ids : torch.Tensor, optional
            Integer positions of any shape.
        T : int, optional
            Number of consecutive positions, used when ``position_ids`` is None.
        offset : int, default 0
            First of those positions.

        Returns
        -------
        torch.Tensor
            Shape ``(*position_ids.shape, dim)`` or ``(T, dim)``.

        Raises
        ------
        ValueError
            If neither ``position_ids`` nor ``T`` is given, or a position is
            outside the table.

        Examples
        --------
        >>> LearnedPositionEmbedding(4, 2)(T=5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: position_ids must be in [0, max_positions=4), got values in [0, 4]; ...
        """
        if position_ids is None:
            if T is None:
                raise ValueError("give position_ids or T")
            T = check_int("T", T, minimum=0)
            offset = check_int("offset", offset, minimum=0)
            position_ids = torch.arange(offset, offset + T, device=self.weight.device)
        return learned_position_embedding(self.weight, position_ids)

    def extra_repr(self) -> str:
        return f"max_positions={self.max_positions}, dim={self.dim}"
