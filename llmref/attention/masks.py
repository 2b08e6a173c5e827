"""Boolean attention masks: ``True`` means the query may attend to the key.

Each mask is defined once, as a *mask_mod* — a predicate on broadcast index
tensors ``(b, h, q_idx, kv_idx)`` in the form FlexAttention expects. The dense
builders evaluate it on a grid and return a ``torch.bool`` tensor of shape
``(T, S)`` (or ``(B, 1, T, S)`` for per-sequence masks) that broadcasts against
scores of shape ``(B, H, T, S)``; :func:`as_mask_mod` hands the same predicate
to :func:`torch.nn.attention.flex_attention.create_block_mask`. Every builder is
registered in :data:`MASKS`, with its mask_mod factory as :attr:`MaskSpec.mask_mod`.

Positions are absolute: query ``i`` sits at position ``i + offset`` among the
keys, so ``offset = S - T`` describes ``T`` new queries after ``S - T`` cached keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._checks import check_int, check_tensor
from .._registry import Registry, Spec
from ..position._registries import legacy_meta

__all__ = [
    "MASKS",
    "MaskSpec",
    "as_mask_mod",
    "block_sparse_mask",
    "block_topk_layout",
    "causal_mask",
    "causal_offset",
    "dilated_mask",
    "document_mask",
    "local_window_mask",
    "prefix_lm_mask",
    "sink_mask",
    "sliding_window_mask",
]

MaskMod = Callable[[Any, Any, torch.Tensor, torch.Tensor], torch.Tensor]

#: The two ways to align a causal mask when ``T != S`` (see :func:`causal_offset`).
CAUSAL_ALIGNMENTS = ("top_left", "bottom_right")


@dataclass(frozen=True, kw_only=True)
class MaskSpec(Spec):
    """Spec of a mask builder in :data:`MASKS`: the dense builder and its ``mask_mod``.

    Parameters
    ----------
    name, paper, reference, third_party
        As in :class:`~llmref.Spec`.
    fn : callable
        The dense builder, returning a ``torch.bool`` mask (``True`` = may attend).
    mask_mod : callable
        ``mask_mod(**params)`` returns the FlexAttention predicate
        ``(b, h, q_idx, kv_idx) -> bool`` of the mask that ``fn`` builds with
        the same parameters (without the lengths).

    Raises
    ------
    TypeError
        If ``fn`` or ``mask_mod`` is not callable.

    Examples
    --------
    >>> import torch
    >>> from llmref.attention import MASKS
    >>> spec = MASKS["causal"]
    >>> i, j = torch.arange(4).view(4, 1), torch.arange(4)
    >>> torch.equal(spec.mask_mod()(0, 0, i, j), spec(4))
    True
    """

    primary: ClassVar[str | None] = "fn"

    fn: Callable[..., torch.Tensor]
    mask_mod: Callable[..., MaskMod]

    def __post_init__(self) -> None:
        super().__post_init__()
        for attr in ("fn", "mask_mod"):
            if not callable(getattr(self, attr)):
                raise TypeError(f"mask {self.name!r}: {attr} must be callable")

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.fn(*args, **kwargs)

    @property
    def meta(self) -> Mapping[str, Any]:
        """Deprecated: the fields as the old ``meta`` dict."""
        return legacy_meta(self)


MASKS = Registry("mask", MaskSpec)
"""Registry of mask builders, name -> :class:`MaskSpec`.

``MASKS[name].mask_mod(**params)`` returns the FlexAttention ``mask_mod`` of the
mask that ``MASKS[name](T, S, **params)`` builds densely.
"""


def _lengths(T: object, S: object) -> tuple[int, int]:
    T = check_int("T", T, minimum=0)
    return T, (T if S is None else check_int("S", S, minimum=0))


def _dense(mask_mod: MaskMod, T: int, S: int, device: torch.device | str | None) -> torch.Tensor:
    q_idx = torch.arange(T, device=device).unsqueeze(-1)
    kv_idx = torch.arange(S, device=device)
    return mask_mod(0, 0, q_idx, kv_idx).expand(T, S)


def causal_offset(causal_alignment: str, T: int, S: int) -> int:
    """The ``offset`` of :func:`causal_mask` that a causal alignment stands for.

    Parameters
    ----------
    causal_alignment : {"top_left", "bottom_right"}
        ``"top_left"``: query 0 sits at key 0 (SDPA's ``is_causal=True``;
        PyTorch's ``torch.nn.attention.bias.CausalVariant.UPPER_LEFT``).
        ``"bottom_right"``: the last query sits at the last key, as the
        ``T`` newest tokens after ``S - T`` cached ones (FlashAttention >= 2.1;
        ``CausalVariant.LOWER_RIGHT``, ``causal_lower_right``).
    T, S : int
        Numbers of queries and keys.

    Returns
    -------
    int
        ``0`` for top-left, ``S - T`` for bottom-right.

    Raises
    ------
    ValueError
        If ``causal_alignment`` is neither name.

    Examples
    --------
    >>> causal_offset("top_left", 2, 5), causal_offset("bottom_right", 2, 5)
    (0, 3)
    """
    if causal_alignment not in CAUSAL_ALIGNMENTS:
        raise ValueError(
            f"causal_alignment must be one of {CAUSAL_ALIGNMENTS}, got {causal_alignment!r}"
        )
    return 0 if causal_alignment == "top_left" else S - T


# -- mask_mod factories: the single definition of each mask -----------------------------


def _causal_mod(offset: int = 0) -> MaskMod:
    offset = check_int("offset", offset)

    def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return kv_idx <= q_idx + offset

    return mask_mod


def _sliding_window_mod(window: int, offset: int = 0) -> MaskMod:
    window = check_int("window", window, minimum=1)
    offset = check_int("offset", offset)

    def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        distance = q_idx + offset - kv_idx
        return (distance >= 0) & (distance < window)

    return mask_mod


def _window_side(name: str, value: object) -> int | None:
    """One side of a FlashAttention ``window_size``: ``-1`` (unbounded) becomes None."""
    side = check_int(name, value, minimum=-1)
    return None if side == -1 else side


def _local_window_mod(window_size: tuple[int, int], offset: int = 0) -> MaskMod:
    if not isinstance(window_size, tuple | list) or len(window_size) != 2:
        raise ValueError(f"window_size must be a pair (left, right), got {window_size!r}")
    left = _window_side("window_size[0]", window_size[0])
    right = _window_side("window_size[1]", window_size[1])
    offset = check_int("offset", offset)

    def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        distance = q_idx + offset - kv_idx  # > 0: the key is in the query's past
        allowed = torch.ones_like(distance, dtype=torch.bool)
        if left is not None:
            allowed = allowed & (distance <= left)
        if right is not None:
            allowed = allowed & (distance >= -right)
        return allowed

    return mask_mod


def _dilated_mod(window: int, dilation: int, offset: int = 0) -> MaskMod:
    window = check_int("window", window, minimum=1)
    dilation = check_int("dilation", dilation, minimum=1)
    offset = check_int("offset", offset)

    def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        distance = q_idx + offset - kv_idx
        return (distance >= 0) & (distance < window * dilation) & (distance % dilation == 0)

    return mask_mod


def _prefix_lm_mod(prefix_len: int, offset: int = 0) -> MaskMod:
    prefix_len = check_int("prefix_len", prefix_len, minimum=0)
    offset = check_int("offset", offset)

    def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return (kv_idx < prefix_len) | (kv_idx <= q_idx + offset)

    return mask_mod


def _sink_mod(n_sink: int, window: int, offset: int = 0) -> MaskMod:
    n_sink = check_int("n_sink", n_sink, minimum=0)
    window = check_int("window", window, minimum=1)
    offset = check_int("offset", offset)

    def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        distance = q_idx + offset - kv_idx
        return (distance >= 0) & ((distance < window) | (kv_idx < n_sink))

    return mask_mod


def _document_mod(
    document_ids: torch.Tensor, kv_document_ids: torch.Tensor | None = None, causal: bool = False
) -> MaskMod:
    q_docs = _check_document_ids("document_ids", document_ids)
    kv_docs = (
        q_docs
        if kv_document_ids is None
        else _check_document_ids("kv_document_ids", kv_document_ids)
    )
    if kv_docs.ndim != q_docs.ndim or (q_docs.ndim == 2 and kv_docs.shape[0] != q_docs.shape[0]):
        raise ValueError(
            "document_ids and kv_document_ids must both be (T,)/(S,) or both (B, T)/(B, S) "
            f"with one B, got {tuple(q_docs.shape)} and {tuple(kv_docs.shape)}"
        )
    if kv_document_ids is None:
        kv_docs = q_docs
    batched = q_docs.ndim == 2
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    # With queries and keys of different lengths the queries are the last T keys.
    offset = kv_docs.shape[-1] - q_docs.shape[-1]

    def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        if batched:
            same = q_docs[b, q_idx] == kv_docs[b, kv_idx]
        else:
            same = q_docs[q_idx] == kv_docs[kv_idx]
        return same & (kv_idx <= q_idx + offset) if causal else same

    return mask_mod


def _check_document_ids(name: str, ids: object) -> torch.Tensor:
    check_tensor(name, ids)
    assert isinstance(ids, torch.Tensor)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer document ids, got {ids.dtype}")
    if ids.ndim not in (1, 2):
        raise ValueError(f"{name} must be (T,) or (B, T), got shape {tuple(ids.shape)}")
    return ids


def _block_sparse_mod(layout: torch.Tensor, block_size: int) -> MaskMod:
    check_tensor("layout", layout)
    if layout.dtype != torch.bool:
        raise TypeError(f"layout must be a torch.bool tensor, got {layout.dtype}")
    if layout.ndim not in (2, 4):
        raise ValueError(
            "layout must be (T_blocks, S_blocks) or (B, H, T_blocks, S_blocks), "
            f"got shape {tuple(layout.shape)}"
        )
    block_size = check_int("block_size", block_size, minimum=1)

    def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        if layout.ndim == 2:
            return layout[q_idx // block_size, kv_idx // block_size]
        return layout[b, h, q_idx // block_size, kv_idx // block_size]

    return mask_mod


# -- dense builders (public) -------------------------------------------------------------


@MASKS.register(
    "causal", paper="vaswani2017attention", third_party="torch.tril", mask_mod=_causal_mod
)
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
    T, S = _lengths(T, S)
    return _dense(_causal_mod(offset), T, S, device)


@MASKS.register(
    "sliding_window",
    paper="beltagy2020longformer",
    mask_mod=_sliding_window_mod,
    third_party="transformers.masking_utils.sliding_window_overlay",
)
def sliding_window_mask(
    T: int,
    S: int | None = None,
    *,
    window: int,
    offset: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Causal sliding-window mask: each query sees the ``window`` most recent keys, itself included.

    Parameters
    ----------
    T : int
        Number of queries.
    S : int, optional
        Number of keys; defaults to ``T``.
    window : int
        Number of keys a query sees, counting its own position (>= 1).
        ``window=1`` is attention to itself only; ``window >= S`` is causal.
    offset : int, default 0
        Position of query 0 among the keys (see :func:`causal_mask`).
    device : torch.device or str, optional
        Device of the returned mask.

    Returns
    -------
    torch.Tensor
        Boolean tensor of shape ``(T, S)``.

    Raises
    ------
    TypeError
        If a size is not an int.
    ValueError
        If ``window < 1`` or a length is negative.

    Notes
    -----
    :math:`M_{ij} = [\\, 0 \\le (i + \\text{offset}) - j < w \\,]`. Libraries
    state the width differently; with llmref's ``window = w``:

    - Hugging Face transformers' ``sliding_window = w`` (``kv_idx > q_idx - w``,
      Mistral, Gemma 2/3, Qwen2);
    - FlashAttention's ``window_size = (w - 1, 0)``: ``left`` counts the keys
      *before* the query, so it is one less;
    - attention-gym / FlexAttention examples' ``q_idx - kv_idx <= SLIDING_WINDOW``
      is ``w = SLIDING_WINDOW + 1``.

    References
    ----------
    :cite:t:`beltagy2020longformer`, :cite:t:`jiang2023mistral`

    Examples
    --------
    >>> sliding_window_mask(5, window=3).int()
    tensor([[1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 1, 1]], dtype=torch.int32)
    """
    T, S = _lengths(T, S)
    return _dense(_sliding_window_mod(window, offset), T, S, device)


@MASKS.register(
    "local_window",
    paper="beltagy2020longformer",
    mask_mod=_local_window_mod,
    third_party="flash_attn.flash_attn_func(window_size=...)",
)
def local_window_mask(
    T: int,
    S: int | None = None,
    *,
    window_size: tuple[int, int],
    offset: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Two-sided local window: query ``i`` sees the keys from ``left`` before to ``right`` after it.

    FlashAttention's ``window_size=(left, right)`` as a mask; ``-1`` leaves a
    side unbounded.

    Parameters
    ----------
    T : int
        Number of queries.
    S : int, optional
        Number of keys; defaults to ``T``.
    window_size : tuple of int
        ``(left, right)``: how many keys before and after the query's own
        position it sees (each >= 0, or -1 for no limit on that side).
        ``(-1, -1)`` allows everything; ``(left, 0)`` is causal.
    offset : int, default 0
        Position of query 0 among the keys (see :func:`causal_mask`).
        FlashAttention aligns its window bottom-right, like its causal mask
        (its ``causal=True`` is ``window_size=(-1, 0)``): its
        ``window_size=(l, r)`` is ``local_window_mask(T, S, window_size=(l, r),
        offset=S - T)``.
    device : torch.device or str, optional
        Device of the returned mask.

    Returns
    -------
    torch.Tensor
        Boolean tensor of shape ``(T, S)``.

    Raises
    ------
    TypeError
        If a size is not an int.
    ValueError
        If ``window_size`` is not a pair, a side is below -1, or a length is
        negative.

    Notes
    -----
    With :math:`p_i = i + \\text{offset}`,
    :math:`M_{ij} = [\\, p_i - \\text{left} \\le j \\le p_i + \\text{right} \\,]`,
    a bound dropped where its side is -1. FlashAttention's kernels read a
    side of -1 (or one >= S) as S, which is the same. ``window_size=(w - 1, 0)``
    is :func:`sliding_window_mask` with ``window=w``. Rows whose window holds
    no key (possible when ``T > S`` or with a negative offset) are fully
    masked; attention in llmref returns zeros for them.

    References
    ----------
    :cite:t:`beltagy2020longformer`, :cite:t:`dao2024flashattention2`

    Examples
    --------
    >>> local_window_mask(4, 6, window_size=(1, 1), offset=2).int()
    tensor([[0, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 1, 1, 1],
            [0, 0, 0, 0, 1, 1]], dtype=torch.int32)
    """
    T, S = _lengths(T, S)
    return _dense(_local_window_mod(window_size, offset), T, S, device)


@MASKS.register("dilated", paper="ding2023longnet", mask_mod=_dilated_mod)
def dilated_mask(
    T: int,
    S: int | None = None,
    *,
    window: int,
    dilation: int,
    offset: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Causal dilated sliding window: ``window`` keys spaced ``dilation`` apart, itself included.

    Parameters
    ----------
    T : int
        Number of queries.
    S : int, optional
        Number of keys; defaults to ``T``.
    window : int
        Number of keys each query sees (>= 1).
    dilation : int
        Spacing between them (>= 1); ``dilation=1`` is :func:`sliding_window_mask`.
    offset : int, default 0
        Position of query 0 among the keys (see :func:`causal_mask`).
    device : torch.device or str, optional
        Device of the returned mask.

    Returns
    -------
    torch.Tensor
        Boolean tensor of shape ``(T, S)``.

    Raises
    ------
    TypeError
        If a size is not an int.
    ValueError
        If ``window`` or ``dilation`` is < 1 or a length is negative.

    Notes
    -----
    With :math:`d = i + \\text{offset} - j`, :math:`M_{ij} = [\\, 0 \\le d < w r,\\;
    d \\equiv 0 \\pmod r \\,]` for window :math:`w` and dilation :math:`r`: the
    receptive field grows to :math:`w r` at the cost of :math:`w` keys per query.

    References
    ----------
    :cite:t:`ding2023longnet`

    Examples
    --------
    >>> dilated_mask(6, window=2, dilation=2).int()
    tensor([[1, 0, 0, 0, 0, 0],
            [0, 1, 0, 0, 0, 0],
            [1, 0, 1, 0, 0, 0],
            [0, 1, 0, 1, 0, 0],
            [0, 0, 1, 0, 1, 0],
            [0, 0, 0, 1, 0, 1]], dtype=torch.int32)
    """
    T, S = _lengths(T, S)
    return _dense(_dilated_mod(window, dilation, offset), T, S, device)


@MASKS.register("prefix_lm", paper="raffel2020t5", mask_mod=_prefix_lm_mod)
def prefix_lm_mask(
    T: int,
    S: int | None = None,
    *,
    prefix_len: int,
    offset: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Prefix-LM mask: the first ``prefix_len`` keys are visible to every query, the rest causally.

    Parameters
    ----------
    T : int
        Number of queries.
    S : int, optional
        Number of keys; defaults to ``T``.
    prefix_len : int
        Length of the bidirectional prefix (>= 0); ``0`` is :func:`causal_mask`.
    offset : int, default 0
        Position of query 0 among the keys (see :func:`causal_mask`).
    device : torch.device or str, optional
        Device of the returned mask.

    Returns
    -------
    torch.Tensor
        Boolean tensor of shape ``(T, S)``.

    Raises
    ------
    TypeError
        If a size is not an int.
    ValueError
        If ``prefix_len`` or a length is negative.

    Notes
    -----
    :math:`M_{ij} = [\\, j < p \\;\\lor\\; j \\le i + \\text{offset} \\,]`: the prefix
    (an instruction, an image's tokens) is encoded bidirectionally and the
    continuation is generated autoregressively, as in T5's prefix-LM objective.

    References
    ----------
    :cite:t:`raffel2020t5`

    Examples
    --------
    >>> prefix_lm_mask(4, prefix_len=2).int()
    tensor([[1, 1, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 0],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    T, S = _lengths(T, S)
    return _dense(_prefix_lm_mod(prefix_len, offset), T, S, device)


@MASKS.register("sink", paper="xiao2024streamingllm", mask_mod=_sink_mod)
def sink_mask(
    T: int,
    S: int | None = None,
    *,
    n_sink: int,
    window: int,
    offset: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """StreamingLLM mask: the first ``n_sink`` keys plus a causal window of recent keys.

    Parameters
    ----------
    T : int
        Number of queries.
    S : int, optional
        Number of keys; defaults to ``T``.
    n_sink : int
        Number of initial "attention sink" keys every query keeps (>= 0).
    window : int
        Recent keys each query sees, itself included, as in
        :func:`sliding_window_mask` (>= 1).
    offset : int, default 0
        Position of query 0 among the keys (see :func:`causal_mask`).
    device : torch.device or str, optional
        Device of the returned mask.

    Returns
    -------
    torch.Tensor
        Boolean tensor of shape ``(T, S)``.

    Raises
    ------
    TypeError
        If a size is not an int.
    ValueError
        If ``n_sink < 0``, ``window < 1`` or a length is negative.

    Notes
    -----
    :math:`M_{ij} = [\\, j \\le i + \\text{offset} \\,] \\wedge [\\, j < n_\\text{sink}
    \\lor i + \\text{offset} - j < w \\,]`. Keeping the first tokens lets softmax
    keep dumping probability mass where the model learnt to, which is what keeps
    a windowed model stable far beyond its window.

    References
    ----------
    :cite:t:`xiao2024streamingllm`

    Examples
    --------
    >>> sink_mask(6, n_sink=1, window=2).int()
    tensor([[1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 0, 1, 1, 0, 0],
            [1, 0, 0, 1, 1, 0],
            [1, 0, 0, 0, 1, 1]], dtype=torch.int32)
    """
    T, S = _lengths(T, S)
    return _dense(_sink_mod(n_sink, window, offset), T, S, device)


@MASKS.register("document", paper="dao2024flashattention2", mask_mod=_document_mod)
def document_mask(
    document_ids: torch.Tensor,
    kv_document_ids: torch.Tensor | None = None,
    *,
    causal: bool = False,
) -> torch.Tensor:
    """Packed-sequence mask: a token attends only to tokens of its own document.

    Parameters
    ----------
    document_ids : torch.Tensor
        Integer document id of every query token, shape ``(T,)`` or ``(B, T)``.
    kv_document_ids : torch.Tensor, optional
        Document ids of the keys, ``(S,)`` or ``(B, S)``; defaults to
        ``document_ids`` (self-attention). When ``S > T`` the queries are taken
        to be the last ``T`` keys (for ``causal``).
    causal : bool, default False
        Also apply the (bottom-right aligned) causal mask.

    Returns
    -------
    torch.Tensor
        Boolean tensor of shape ``(T, S)``, or ``(B, 1, T, S)`` for batched ids
        (so that it broadcasts over heads).

    Raises
    ------
    TypeError
        If the ids are not integer tensors or ``causal`` is not a bool.
    ValueError
        If the ids are not 1-D or 2-D, or queries and keys disagree on ``B``.

    Notes
    -----
    :math:`M_{ij} = [\\, \\mathrm{doc}_i = \\mathrm{doc}_j \\,]`, the block-diagonal
    mask that lets several sequences share one row of a batch without seeing
    each other (sequence packing).

    References
    ----------
    :cite:t:`dao2024flashattention2`

    Examples
    --------
    >>> ids = torch.tensor([0, 0, 1, 1, 1])
    >>> document_mask(ids, causal=True).int()
    tensor([[1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 1, 1, 1]], dtype=torch.int32)
    """
    mask_mod = _document_mod(document_ids, kv_document_ids, causal)
    q_ids = document_ids
    kv_ids = document_ids if kv_document_ids is None else kv_document_ids
    T, S = q_ids.shape[-1], kv_ids.shape[-1]
    if q_ids.ndim == 1:
        return _dense(mask_mod, T, S, q_ids.device)
    b = torch.arange(q_ids.shape[0], device=q_ids.device).view(-1, 1, 1, 1)
    q_idx = torch.arange(T, device=q_ids.device).view(1, 1, T, 1)
    kv_idx = torch.arange(S, device=q_ids.device).view(1, 1, 1, S)
    return mask_mod(b, 0, q_idx, kv_idx)


@MASKS.register("block_sparse", paper="child2019sparse", mask_mod=_block_sparse_mod)
def block_sparse_mask(
    layout: torch.Tensor, *, block_size: int, T: int | None = None, S: int | None = None
) -> torch.Tensor:
    """Expand a block layout into a token mask: block ``(I, J)`` on lets queries of I see keys of J.

    Parameters
    ----------
    layout : torch.Tensor
        Boolean block layout, ``(T_blocks, S_blocks)`` or per head
        ``(B, H, T_blocks, S_blocks)`` (for example from :func:`block_topk_layout`).
    block_size : int
        Tokens per block along both axes (>= 1).
    T, S : int, optional
        Number of queries and keys; default to the layout size times
        ``block_size``. A last, partial block is allowed (``T`` need not be a
        multiple of ``block_size``) but ``T`` must fit in the layout.

    Returns
    -------
    torch.Tensor
        Boolean tensor of shape ``(T, S)``, or ``(B, H, T, S)``.

    Raises
    ------
    TypeError
        If ``layout`` is not boolean or a size is not an int.
    ValueError
        If ``layout`` is not 2-D or 4-D, ``block_size < 1``, or ``T``/``S`` need
        more blocks than the layout has.

    Notes
    -----
    :math:`M_{ij} = L_{\\lfloor i / b \\rfloor, \\lfloor j / b \\rfloor}`. Kernels
    skip the blocks that are off, so the cost is proportional to the number of
    blocks that are on.

    References
    ----------
    :cite:t:`child2019sparse`

    Examples
    --------
    >>> layout = torch.tensor([[True, False], [True, True]])
    >>> block_sparse_mask(layout, block_size=2, T=3).int()
    tensor([[1, 1, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    mask_mod = _block_sparse_mod(layout, block_size)
    n_tb, n_sb = layout.shape[-2:]
    T = n_tb * block_size if T is None else check_int("T", T, minimum=0)
    S = n_sb * block_size if S is None else check_int("S", S, minimum=0)
    for name, length, blocks in (("T", T, n_tb), ("S", S, n_sb)):
        if length > blocks * block_size:
            raise ValueError(
                f"{name}={length} needs {-(-length // block_size)} blocks of {block_size}, "
                f"but layout has {blocks}"
            )
    if layout.ndim == 2:
        return _dense(mask_mod, T, S, layout.device)
    B, H = layout.shape[:2]
    dev = layout.device
    return mask_mod(
        torch.arange(B, device=dev).view(B, 1, 1, 1),
        torch.arange(H, device=dev).view(1, H, 1, 1),
        torch.arange(T, device=dev).view(1, 1, T, 1),
        torch.arange(S, device=dev).view(1, 1, 1, S),
    )


def block_topk_layout(
    q: torch.Tensor, k: torch.Tensor, *, block_size: int, topk: int, causal: bool = False
) -> torch.Tensor:
    """Choose, for each query block, the ``topk`` key blocks with the highest pooled score.

    Queries and keys are mean-pooled over each block and scored with a dot
    product; each query block keeps its ``topk`` best key blocks (and, when
    ``causal``, always its own diagonal block and never a future one). This is
    the block-selection step of dynamic sparse attention (MoBA, NSA's
    selection branch).

    Parameters
    ----------
    q : torch.Tensor
        Queries of shape ``(B, H, T, D)``.
    k : torch.Tensor
        Keys of shape ``(B, H_kv, S, D)`` with ``H % H_kv == 0``.
    block_size : int
        Tokens per block (>= 1); a last partial block is pooled over what it has.
    topk : int
        Key blocks kept per query block (>= 1; capped at the number of blocks).
    causal : bool, default False
        Only consider key blocks at or before the query block (top-left aligned)
        and always keep the diagonal block.

    Returns
    -------
    torch.Tensor
        Boolean layout of shape ``(B, H, T_blocks, S_blocks)`` for
        :func:`block_sparse_mask`.

    Raises
    ------
    TypeError, ValueError
        On bad ``q``/``k`` (see :func:`~llmref.attention.naive_attention`) or sizes.

    Examples
    --------
    >>> q, k = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4)
    >>> layout = block_topk_layout(q, k, block_size=2, topk=2, causal=True)
    >>> layout.shape, layout.sum(-1).tolist()[0][0]
    (torch.Size([1, 2, 4, 4]), [1, 2, 2, 2])
    """
    from .._checks import check_qkv

    shapes = check_qkv(q, k, k)
    block_size = check_int("block_size", block_size, minimum=1)
    topk = check_int("topk", topk, minimum=1)
    B, H, H_kv, T, S = shapes[:5]
    n_tb, n_sb = -(-T // block_size), -(-S // block_size)

    def pool(x: torch.Tensor, n_blocks: int) -> torch.Tensor:
        length = x.shape[2]
        padded = torch.nn.functional.pad(x, (0, 0, 0, n_blocks * block_size - length))
        sums = padded.unflatten(2, (n_blocks, block_size)).sum(3)
        starts = torch.arange(n_blocks, device=x.device) * block_size
        counts = (length - starts).clamp(max=block_size).to(x.dtype)
        return sums / counts.unsqueeze(-1)

    q_pool = pool(q, n_tb)
    k_pool = pool(k, n_sb).repeat_interleave(H // H_kv, dim=1)
    scores = q_pool @ k_pool.transpose(-1, -2)
    if causal:
        allowed = _dense(_causal_mod(0), n_tb, n_sb, q.device)
        diagonal = _dense(_sliding_window_mod(1), n_tb, n_sb, q.device)
        scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(diagonal, float("inf"))
    top = scores.topk(min(topk, n_sb), dim=-1).indices
    layout = torch.zeros(B, H, n_tb, n_sb, dtype=torch.bool, device=q.device)
    layout.scatter_(-1, top, True)
    if causal:
        layout &= allowed
    return layout


def as_mask_mod(name: str, **params: Any) -> MaskMod:
    """Return the FlexAttention ``mask_mod`` of a registered mask.

    Parameters
    ----------
    name : str
        A name registered in :data:`MASKS` (``"causal"``, ``"sliding_window"``, ...).
    **params
        The mask's keyword parameters, as for its dense builder, without the
        lengths ``T`` and ``S`` (FlexAttention supplies the indices).

    Returns
    -------
    callable
        ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor`` for
        :func:`torch.nn.attention.flex_attention.create_block_mask`.

    Raises
    ------
    ValueError
        If ``name`` is not registered; the mask's own errors for bad parameters.

    Examples
    --------
    >>> mod = as_mask_mod("sliding_window", window=3)
    >>> i, j = torch.arange(5).view(5, 1), torch.arange(5)
    >>> torch.equal(mod(0, 0, i, j), sliding_window_mask(5, window=3))
    True
    """
    if name not in MASKS:
        raise ValueError(f"name must be one of {', '.join(map(repr, MASKS))}, got {name!r}")
    return MASKS[name].mask_mod(**params)
