"""Boolean attention masks: ``True`` means the query may attend to the key.

Every builder returns a ``torch.bool`` tensor of shape ``(T, S)`` that
broadcasts against scores of shape ``(B, H, T, S)``, and is registered in
:data:`MASKS`.
"""

from __future__ import annotations

import torch

from .._checks import check_int
from .._registry import Registry

__all__ = ["MASKS", "causal_mask"]

MASKS = Registry("mask")
"""Registry of mask builders, name -> :class:`~llmref.RegistryEntry`."""


@MASKS.register("causal", paper="vaswani2017attention", third_party="torch.tril")
def causal_mask(
    T: int, S: int | None = None, *, offset: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Causal (autoregressive) mask: query ``i`` sees key ``j`` iff ``j <= i + offset``.

    Parameters
    ----------
    T : int
        Number of queries.
    S : int, optional
        Number of keys; defaults to ``T``.
    offset : int, default 0
        Position of query 0 among the keys. ``0`` aligns the first query with
        the first key (top-left), which is what
        :func:`torch.nn.functional.scaled_dot_product_attention` does with
        ``is_causal=True``. ``S - T`` aligns the last query with the last key
        (bottom-right): the right choice when the queries are the newest
        ``T`` tokens after ``S - T`` cached ones, and what FlashAttention does.
    device : torch.device or str, optional
        Device of the returned mask.

    Returns
    -------
    torch.Tensor
        Boolean tensor of shape ``(T, S)``.

    Raises
    ------
    TypeError
        If ``T``, ``S`` or ``offset`` is not an int.
    ValueError
        If ``T`` or ``S`` is negative.

    Notes
    -----
    The mask is :math:`M_{ij} = [\\, j \\le i + \\text{offset} \\,]`. With
    ``offset < 0`` the first ``-offset`` query rows are fully masked; attention
    in llmref returns zeros for such rows.

    References
    ----------
    :cite:t:`vaswani2017attention`

    Examples
    --------
    >>> causal_mask(3).int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    >>> causal_mask(2, 4, offset=2).int()  # 2 new queries after 2 cached keys
    tensor([[1, 1, 1, 0],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    T = check_int("T", T, minimum=0)
    S = T if S is None else check_int("S", S, minimum=0)
    offset = check_int("offset", offset)
    rows = torch.arange(T, device=device).unsqueeze(-1)
    cols = torch.arange(S, device=device)
    return cols <= rows + offset
