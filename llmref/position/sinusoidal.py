"""Sinusoidal absolute position encoding (Vaswani et al., 2017)."""

from __future__ import annotations

import torch

from .._checks import check_int, check_positive_float
from ._registries import POSITION

__all__ = ["sinusoidal_embedding"]


@POSITION.register(
    "sinusoidal",
    paper="vaswani2017attention",
    reference="sinusoidal_embedding",
    third_party="transformers.models.distilbert.modeling_distilbert.create_sinusoidal_embeddings",
    kind="absolute",
    module=None,
)
def sinusoidal_embedding(
    T: int,
    dim: int,
    *,
    base: float = 10000.0,
    offset: int = 0,
    layout: str = "interleaved",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""The Transformer's fixed sinusoidal position encodings, to add to token embeddings.

    Parameters
    ----------
    T : int
        Number of positions.
    dim : int
        Model width (any positive int; odd widths end with a sine channel).
    base : float, default 10000.0
        Wavelength scale: channel pair ``i`` has wavelength
        ``2 pi base ** (2i / dim)``.
    offset : int, default 0
        First position (``>= 0``), e.g. the number of cached tokens.
    layout : {"interleaved", "half"}, default "interleaved"
        ``"interleaved"``: ``sin, cos, sin, cos, ...`` as in the paper (and
        XLM, DistilBERT); ``"half"``: all sines, then all cosines (tensor2tensor,
        fairseq, Marian).
    dtype : torch.dtype, default torch.float32
        Floating dtype of the result (computed in float64, rounded once).
    device : torch.device or str, optional
        Where to create it.

    Returns
    -------
    torch.Tensor
        Shape ``(T, dim)``; every entry is in ``[-1, 1]``.

    Raises
    ------
    TypeError
        If a size is not an int or ``dtype`` is not floating.
    ValueError
        If ``dim < 1``, ``T`` or ``offset`` is negative, ``base <= 0`` or
        ``layout`` is unknown.

    Notes
    -----
    .. math::

        PE_{p, 2i} = \sin\bigl(p / b^{2i/d}\bigr), \qquad
        PE_{p, 2i+1} = \cos\bigl(p / b^{2i/d}\bigr)

    {cite:p}`vaswani2017attention`. For a fixed offset :math:`k`,
    :math:`PE_{p+k}` is a rotation of :math:`PE_p` (pair by pair), so
    :math:`PE_p \cdot PE_{p+k} = \sum_i \cos(k / b^{2i/d})` depends only on
    :math:`k`, and decays (non-monotonically) with :math:`|k|`. Once added to
    the token embeddings, that clean structure is mixed with content by the
    query and key projections, which is what RoPE avoids.

    References
    ----------
    :cite:t:`vaswani2017attention`

    Examples
    --------
    >>> sinusoidal_embedding(3, 4)
    tensor([[ 0.0000,  1.0000,  0.0000,  1.0000],
            [ 0.8415,  0.5403,  0.0100,  0.9999],
            [ 0.9093, -0.4161,  0.0200,  0.9998]])
    >>> sinusoidal_embedding(2, 4, layout="half")[1]
    tensor([0.8415, 0.0100, 0.5403, 0.9999])
    """
    T = check_int("T", T, minimum=0)
    dim = check_int("dim", dim, minimum=1)
    offset = check_int("offset", offset, minimum=0)
    base = check_positive_float("base", base)
    if layout not in ("interleaved", "half"):
        raise ValueError(f"layout must be 'interleaved' or 'half', got {layout!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype}")
    positions = torch.arange(offset, offset + T, dtype=torch.float64, device=device)
    pair = torch.arange(0, dim, 2, dtype=torch.float64, device=device)  # 2i
    angles = positions[:, None] / base ** (pair / dim)
    sin, cos = angles.sin(), angles.cos()[:, : dim // 2]
    if layout == "half":
        out = torch.cat((sin, cos), dim=-1)
    else:
        out = torch.empty(T, dim, dtype=torch.float64, device=device)
        out[:, 0::2], out[:, 1::2] = sin, cos
    return out.to(dtype)
