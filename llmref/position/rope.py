"""Rotary position embedding: cos/sin tables, the rotation, layouts and a caching module.

Two channel layouts exist for the same rotation, and checkpoints use both:

* ``"half"`` (rotate-half; GPT-NeoX, Hugging Face transformers' Llama, Qwen,
  Mistral, ...): channel ``i`` pairs with channel ``i + d/2``, and the cos/sin
  tables repeat the ``d/2`` frequencies twice, ``[f0 .. f(d/2-1), f0 .. f(d/2-1)]``.
* ``"interleaved"`` (the RoFormer paper, Meta's original Llama code, GPT-J,
  GLM): channels ``2i`` and ``2i + 1`` form a pair, and each frequency appears
  twice in a row, ``[f0, f0, f1, f1, ...]``.

They compute the same thing up to a fixed permutation of each head's channels;
:func:`convert_rope_weight` moves q/k projection weights from one to the other
(it is the permutation Hugging Face's Llama conversion script applies to Meta's
checkpoints).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_float_dtype, check_int, check_tensor
from ._registries import POSITION
from .rope_scaling import _check_inv_freq, rope_frequencies, rotary_dim

__all__ = [
    "LAYOUTS",
    "RotaryEmbedding",
    "apply_rope",
    "convert_rope_weight",
    "rope_cos_sin",
    "rope_layout_permutation",
]

LAYOUTS = ("half", "interleaved")
"""The two RoPE channel layouts: ``"half"`` (rotate-half) and ``"interleaved"``."""


def _check_layout(layout: object) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'half' or 'interleaved', got {layout!r}")
    assert isinstance(layout, str)
    return layout


def _check_positions(position_ids: object) -> torch.Tensor:
    check_tensor("position_ids", position_ids)
    assert isinstance(position_ids, torch.Tensor)
    if position_ids.dtype.is_floating_point or position_ids.dtype.is_complex:
        raise TypeError(f"position_ids must be an integer tensor, got {position_ids.dtype}")
    if position_ids.dtype == torch.bool:
        raise TypeError("position_ids must be an integer tensor, got torch.bool")
    return position_ids


def _expand_pairs(freqs: torch.Tensor, layout: str) -> torch.Tensor:
    """Per-pair values ``(..., d/2)`` -> per-channel values ``(..., d)`` in ``layout``."""
    if layout == "half":
        return torch.cat((freqs, freqs), dim=-1)
    return torch.repeat_interleave(freqs, 2, dim=-1)


def rope_cos_sin(
    inv_freq: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    attention_factor: float = 1.0,
    layout: str = "half",
    dtype: torch.dtype | None = None,
    trig_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos and sin tables RoPE rotates with, at the given positions.

    Parameters
    ----------
    inv_freq : torch.Tensor
        Per-pair angular frequencies, shape ``(d/2,)`` (from
        :func:`~llmref.position.rope_frequencies`). The angles are computed in
        its dtype (float32 as in transformers, or float64).
    position_ids : torch.Tensor
        Integer positions of any shape, e.g. ``(T,)`` or ``(B, T)``; any values,
        not necessarily ``0 .. T-1`` (padding offsets, packed sequences, ...).
    attention_factor : float, default 1.0
        Multiplies cos and sin (YaRN / LongRoPE), which scales every q·k score
        by its square.
    layout : {"half", "interleaved"}, default "half"
        Channel order of the tables (see the module docstring).
    dtype : torch.dtype, optional
        dtype of the returned tables; default that of ``inv_freq``.
    trig_dtype : torch.dtype, optional
        dtype in which cos and sin of the angles are evaluated, then rounded back
        to the angles' dtype; default the angles' own. ``torch.float64`` makes
        float32 tables correctly rounded, so each position's value no longer
        depends on where it sits in the tensor (vectorised and scalar float32
        ``cos`` may differ by an ulp), at the price of possibly differing by an
        ulp from transformers' float32 tables.

    Returns
    -------
    cos, sin : torch.Tensor
        Shape ``(*position_ids.shape, d)``.

    Raises
    ------
    TypeError
        If ``inv_freq`` is not a 1-D floating tensor or ``position_ids`` is not
        an integer tensor.
    ValueError
        If ``layout`` is unknown.

    Notes
    -----
    ``angle[..., i] = position * inv_freq[i]``, computed as transformers'
    rotary modules do (positions cast to the frequencies' dtype, one
    multiplication), so float32 tables equal theirs bit for bit.

    Examples
    --------
    >>> from llmref.position import rope_frequencies
    >>> inv_freq, _ = rope_frequencies(4)
    >>> cos, sin = rope_cos_sin(inv_freq, torch.arange(3))
    >>> cos.shape
    torch.Size([3, 4])
    >>> sin[1]
    tensor([0.8415, 0.0100, 0.8415, 0.0100])
    >>> rope_cos_sin(inv_freq, torch.arange(3), layout="interleaved")[1][1]
    tensor([0.8415, 0.8415, 0.0100, 0.0100])
    """
    inv_freq = _check_inv_freq(inv_freq)
    position_ids = _check_positions(position_ids)
    layout = _check_layout(layout)
    angles = position_ids.to(device=inv_freq.device)[..., None].to(inv_freq.dtype) * inv_freq
    angles = _expand_pairs(angles, layout)
    if trig_dtype is None or trig_dtype == angles.dtype:
        cos, sin = angles.cos(), angles.sin()
    else:
        wide = angles.to(trig_dtype)
        cos, sin = wide.cos().to(angles.dtype), wide.sin().to(angles.dtype)
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    if dtype is not None:
        cos, sin = cos.to(dtype), sin.to(dtype)
    return cos, sin


def _rotate(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The partner of each channel, with the sign of ``sin``: the rotation by 90°."""
    if layout == "half":
        first, second = x.chunk(2, dim=-1)
        return torch.cat((-second, first), dim=-1)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((-odd, even), dim=-1).flatten(-2)


@POSITION.register(
    "rope",
    paper="su2024roformer",
    reference="apply_rope",
    third_party="transformers.models.llama.modeling_llama.apply_rotary_pos_emb",
    kind="rotary",
    module="RotaryEmbedding",
    # forward grows the cos/sin table to the largest position, a host value; models
    # call position_embeddings instead, which traces (the decoder contract checks it)
    traces=False,
    example=lambda: (
        RotaryEmbedding(8, dtype=torch.float64),
        (torch.randn(2, 4, 5, 8, dtype=torch.float64),),
        {"offset": 2},
    ),
)
def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, layout: str = "half"
) -> torch.Tensor:
    r"""Rotate queries or keys by their positions' angles (rotary position embedding).

    Parameters
    ----------
    x : torch.Tensor
        Queries or keys, shape ``(B, H, T, D)`` (any ``(..., T, D)`` works).
    cos, sin : torch.Tensor
        Tables from :func:`rope_cos_sin` (or transformers' rotary modules) in the
        same ``layout``, last dimension ``d`` (even, ``<= D``). Shapes
        ``(T, d)``, ``(B, T, d)`` (one row of positions per sequence; a head axis
        is inserted, like transformers' ``unsqueeze_dim=1``) or anything that
        broadcasts to ``(B, H, T, d)``.
    layout : {"half", "interleaved"}, default "half"
        Channel layout of ``x`` and of the tables.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``. If ``d < D`` (partial rotary), only the
        first ``d`` channels are rotated and the rest are passed through.

    Raises
    ------
    TypeError
        If an input is not a floating tensor.
    ValueError
        If ``layout`` is unknown, ``cos`` and ``sin`` differ in shape, ``d`` is
        odd or larger than ``D``, or the tables do not broadcast to ``x``.

    Notes
    -----
    Each channel pair :math:`(x_a, x_b)` at position :math:`m` is rotated by
    :math:`m\theta_i`:

    .. math::

        \begin{pmatrix} x'_a \\ x'_b \end{pmatrix} =
        \begin{pmatrix} \cos m\theta_i & -\sin m\theta_i \\
                        \sin m\theta_i & \cos m\theta_i \end{pmatrix}
        \begin{pmatrix} x_a \\ x_b \end{pmatrix},

    written as ``x * cos + rotate(x) * sin``. Because rotations compose,
    :math:`(R_m q)^\top (R_n k) = q^\top R_{n-m} k`: the score depends on the
    positions only through :math:`n - m` {cite:p}`su2024roformer`. The
    arithmetic is transformers' ``apply_rotary_pos_emb`` (for ``"half"``), so
    equal inputs give equal outputs bit for bit. Tables of another dtype are
    used as given and the result is cast back to ``x.dtype``.

    References
    ----------
    :cite:t:`su2024roformer`

    Examples
    --------
    >>> from llmref.position import rope_frequencies
    >>> inv_freq, _ = rope_frequencies(8)
    >>> cos, sin = rope_cos_sin(inv_freq, torch.arange(5))
    >>> q = torch.randn(1, 2, 5, 8)
    >>> q_rot = apply_rope(q, cos, sin)
    >>> q_rot.shape
    torch.Size([1, 2, 5, 8])
    >>> torch.allclose(q_rot.norm(dim=-1), q.norm(dim=-1))
    True
    >>> torch.equal(q_rot[:, :, 0], q[:, :, 0])  # position 0: no rotation
    True
    """
    check_tensor("x", x)
    check_tensor("cos", cos)
    check_tensor("sin", sin)
    for name, t in (("x", x), ("cos", cos), ("sin", sin)):
        check_float_dtype(name, t)
    layout = _check_layout(layout)
    if cos.shape != sin.shape:
        raise ValueError(
            f"cos and sin must have one shape, got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    if x.ndim < 1 or cos.ndim < 1:
        raise ValueError("x and cos/sin need a channel dimension (the last one)")
    D, d = x.shape[-1], cos.shape[-1]
    if d % 2 or d == 0 or d > D:
        raise ValueError(
            f"the rotary dimension (last dim of cos/sin) must be even and in [2, D={D}], got {d}"
        )
    if x.ndim == 4 and cos.ndim == 3:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, T, d) -> (B, 1, T, d)
    try:
        batch = torch.broadcast_shapes(x.shape[:-1], cos.shape[:-1])
    except RuntimeError:
        batch = None
    if batch != x.shape[:-1]:
        raise ValueError(
            f"cos/sin of shape {tuple(cos.shape)} do not broadcast to x of shape "
            f"{tuple(x.shape)} (expected (T, d), (B, T, d) or a shape broadcasting to "
            "(B, H, T, d))"
        )
    rot, rest = (x, None) if d == D else (x[..., :d], x[..., d:])
    out = (rot * cos) + (_rotate(rot, layout) * sin)
    if rest is not None:
        out = torch.cat((out, rest.to(out.dtype)), dim=-1)
    return out.to(x.dtype)


def rope_layout_permutation(
    head_dim: int,
    *,
    source: str = "interleaved",
    target: str = "half",
    rotary_dim: int | None = None,
) -> torch.Tensor:
    """Channel permutation taking one head from one RoPE layout to the other.

    Parameters
    ----------
    head_dim : int
        Channels per head (``D``).
    source, target : {"interleaved", "half"}
        Layouts to convert from and to (equal layouts give the identity).
    rotary_dim : int, optional
        Rotated channels (partial rotary); default ``head_dim``. Channels past
        it are not permuted.

    Returns
    -------
    torch.Tensor
        Integer tensor ``perm`` of shape ``(head_dim,)`` with
        ``x_target = x_source[..., perm]``.

    Raises
    ------
    ValueError
        If a layout is unknown or ``rotary_dim`` is odd or larger than
        ``head_dim``.

    Notes
    -----
    Interleaved channel :math:`2i` holds the first component of pair :math:`i`
    and :math:`2i+1` the second; rotate-half keeps them at :math:`i` and
    :math:`i + d/2`. So ``perm = [0, 2, 4, ..., 1, 3, 5, ...]`` takes
    interleaved to half, and its inverse takes half to interleaved.

    Examples
    --------
    >>> rope_layout_permutation(8)
    tensor([0, 2, 4, 6, 1, 3, 5, 7])
    >>> rope_layout_permutation(8, source="half", target="interleaved")
    tensor([0, 4, 1, 5, 2, 6, 3, 7])
    >>> rope_layout_permutation(8, rotary_dim=4)
    tensor([0, 2, 1, 3, 4, 5, 6, 7])
    """
    head_dim = check_int("head_dim", head_dim, minimum=1)
    source, target = _check_layout(source), _check_layout(target)
    d = head_dim if rotary_dim is None else check_int("rotary_dim", rotary_dim, minimum=2)
    if d % 2 or d > head_dim:
        raise ValueError(f"rotary_dim must be even and <= head_dim={head_dim}, got {d}")
    perm = torch.arange(head_dim)
    if source == target:
        return perm
    to_half = torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))
    perm[:d] = to_half if target == "half" else torch.argsort(to_half)
    return perm


def convert_rope_weight(
    weight: torch.Tensor,
    n_heads: int,
    *,
    source: str = "interleaved",
    target: str = "half",
    rotary_dim: int | None = None,
) -> torch.Tensor:
    """Permute a q or k projection's output rows from one RoPE layout to the other.

    Parameters
    ----------
    weight : torch.Tensor
        Projection weight of shape ``(n_heads * head_dim, in_features)`` (as in
        :class:`torch.nn.Linear`) or its bias, ``(n_heads * head_dim,)``.
    n_heads : int
        Heads in this projection (the key/value heads for ``k_proj`` under GQA).
    source, target : {"interleaved", "half"}
        Layouts. The default converts a Meta-format Llama checkpoint (interleaved)
        to Hugging Face's format (half); swap them to go back.
    rotary_dim : int, optional
        Rotated channels per head (partial rotary); default ``head_dim``.

    Returns
    -------
    torch.Tensor
        A new tensor of the same shape: rows permuted within each head.

    Raises
    ------
    TypeError
        If ``weight`` is not a tensor or ``n_heads`` not an int.
    ValueError
        If ``weight.shape[0]`` is not a multiple of ``n_heads`` or as
        :func:`rope_layout_permutation`.

    Notes
    -----
    If ``P`` permutes every head's channels the same way, then for queries and
    keys made with the permuted weights, ``q' = P q`` and ``k' = P k``, so
    ``q'·k' = q·k`` and rotating in the target layout equals rotating in the
    source layout and permuting. This is the ``permute`` of Hugging Face's
    ``convert_llama_weights_to_hf.py``; the values projection needs no change.

    Examples
    --------
    >>> w = torch.arange(8.0)[:, None]  # 2 heads of 4 channels, 1 input
    >>> convert_rope_weight(w, 2).flatten()
    tensor([0., 2., 1., 3., 4., 6., 5., 7.])
    >>> half = convert_rope_weight(w, 2)
    >>> torch.equal(convert_rope_weight(half, 2, source="half", target="interleaved"), w)
    True
    """
    check_tensor("weight", weight)
    n_heads = check_int("n_heads", n_heads, minimum=1)
    if weight.ndim not in (1, 2) or weight.shape[0] % n_heads:
        raise ValueError(
            f"weight must be (n_heads * head_dim, in_features) or (n_heads * head_dim,) with "
            f"n_heads={n_heads}, got shape {tuple(weight.shape)}"
        )
    head_dim = weight.shape[0] // n_heads
    perm = rope_layout_permutation(head_dim, source=source, target=target, rotary_dim=rotary_dim)
    heads = weight.reshape(n_heads, head_dim, *weight.shape[1:])
    return heads[:, perm.to(weight.device)].reshape(weight.shape).clone()


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with a cos/sin cache that grows as needed.

    Owns the frequencies of one ``rope_type`` and a table of cos and sin for
    positions ``0 .. cached_len - 1``; :meth:`forward` rotates queries or keys
    at any positions, extending the table when a position is beyond it. For
    ``rope_type="dynamic"`` the frequencies are recomputed when a sequence is
    longer than any seen so far beyond ``max_position_embeddings``, and reset
    to the default ones when a sequence fits in ``max_position_embeddings``
    again; for ``"longrope"`` the short or long factors are chosen by the
    sequence length, as in transformers. (transformers recomputes the dynamic
    base in float32 at run time, because the length is a tensor there; llmref
    computes it in float64, so the two can differ by a few float32 ulps.)

    Parameters
    ----------
    head_dim : int
        Channels per attention head.
    base : float, default 10000.0
        ``rope_theta``.
    rope_type : str, default "default"
        A name in :data:`~llmref.position.ROPE_SCALING`.
    max_position_embeddings : int, optional
        The model's context length. ``"dynamic"`` needs it (the trained
        length); ``"longrope"`` and ``"yarn"`` may use it to fill in ``factor``,
        and those two and ``"llama3"`` to fill in a missing
        ``original_max_position_embeddings``, as transformers does.
    layout : {"half", "interleaved"}, default "half"
        Channel layout of the queries and keys.
    dtype : torch.dtype, default torch.float32
        dtype in which frequencies and tables are computed: float32 equals
        transformers bit for bit, float64 is exact to ~1e-16.
    device : torch.device or str, optional
        Where the buffers live (they follow ``.to()`` afterwards).
    rope_parameters : float, int, bool or list of float
        The rule's parameters as in :func:`~llmref.position.rope_frequencies`
        (``factor``, ``partial_rotary_factor``, ``original_max_position_embeddings``, ...).

    Attributes
    ----------
    inv_freq : torch.Tensor
        Current frequencies, shape ``(rotary_dim // 2,)`` (a buffer).
    attention_factor : float
        Multiplier of cos and sin.
    rotary_dim : int
        Rotated channels per head.
    cached_len : int
        Positions ``0 .. cached_len - 1`` are in the cos/sin table.

    Raises
    ------
    KeyError
        If ``rope_type`` is not registered.
    TypeError, ValueError
        For bad parameters, as :func:`~llmref.position.rope_frequencies`.

    Examples
    --------
    >>> rope = RotaryEmbedding(64, rope_type="linear", factor=2.0)
    >>> q = torch.randn(1, 4, 10, 64)
    >>> rope(q).shape
    torch.Size([1, 4, 10, 64])
    >>> rope.cached_len >= 10
    True
    >>> step = rope(torch.randn(1, 4, 1, 64), offset=10)  # the 11th token while decoding
    >>> rope(q, position_ids=torch.arange(100, 110)).shape  # the table grows
    torch.Size([1, 4, 10, 64])
    >>> rope.cached_len >= 110
    True
    """

    inv_freq: torch.Tensor
    original_inv_freq: torch.Tensor
    cos_cached: torch.Tensor
    sin_cached: torch.Tensor

    def __init__(
        self,
        head_dim: int,
        *,
        base: float = 10000.0,
        rope_type: str = "default",
        max_position_embeddings: int | None = None,
        layout: str = "half",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        **rope_parameters: Any,
    ) -> None:
        super().__init__()
        self.head_dim = check_int("head_dim", head_dim, minimum=2)
        self.layout = _check_layout(layout)
        self.rope_type = rope_type
        self.base = base
        self.max_position_embeddings = (
            None
            if max_position_embeddings is None
            else check_int("max_position_embeddings", max_position_embeddings, minimum=1)
        )
        self.rope_parameters = dict(rope_parameters)
        self._dtype = dtype
        if max_position_embeddings is not None and rope_type in (
            "dynamic",
            "yarn",
            "longrope",
            "llama3",
        ):
            self.rope_parameters.setdefault("max_position_embeddings", max_position_embeddings)
        inv_freq, self.attention_factor = self._frequencies(device=device)
        if rope_type == "proportional":
            self.rotary_dim = 2 * inv_freq.numel()
        else:
            self.rotary_dim = rotary_dim(
                self.head_dim, self.rope_parameters.get("partial_rotary_factor", 1.0)
            )
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)
        empty = torch.empty(0, self.rotary_dim, dtype=inv_freq.dtype, device=inv_freq.device)
        self.register_buffer("cos_cached", empty, persistent=False)
        self.register_buffer("sin_cached", empty.clone(), persistent=False)
        # dynamic: the length the current frequencies were computed for
        self._scaled_len = self.max_position_embeddings or 0
        # longrope: whether the long factors are in use
        self._long = False
        if rope_type == "longrope":
            self.original_max_position_embeddings = self.rope_parameters.get(
                "original_max_position_embeddings", self.max_position_embeddings
            )

    def _frequencies(
        self, *, seq_len: int | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, float]:
        params = dict(self.rope_parameters)
        if seq_len is not None:
            params["seq_len"] = seq_len
        if device is None and hasattr(self, "inv_freq"):
            device = self.inv_freq.device
        return rope_frequencies(
            self.head_dim,
            base=self.base,
            rope_type=self.rope_type,
            device=device,
            dtype=self._dtype,
            **params,
        )

    @property
    def cached_len(self) -> int:
        """Number of positions in the cos/sin table."""
        return int(self.cos_cached.shape[0])

    def _set_frequencies(self, inv_freq: torch.Tensor) -> None:
        self.inv_freq = inv_freq.to(device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        empty = self.cos_cached[:0]
        self.cos_cached, self.sin_cached = empty, empty.clone()

    def _update_frequencies(self, seq_len: int) -> None:
        if self.rope_type == "dynamic":
            original = self.max_position_embeddings
            assert original is not None  # rope_frequencies has checked it
            if seq_len > max(self._scaled_len, original):
                self._set_frequencies(self._frequencies(seq_len=seq_len)[0])
                self._scaled_len = seq_len
            elif seq_len <= original < self._scaled_len:
                self.reset()
        elif self.rope_type == "longrope":
            original = self.original_max_position_embeddings
            long = original is not None and seq_len > original
            if long != self._long:
                self._long = long
                if long:
                    self._set_frequencies(self._frequencies(seq_len=seq_len)[0])
                else:
                    self._set_frequencies(self.original_inv_freq)

    def reset(self) -> None:
        """Go back to the initial frequencies (and drop the table).

        For ``"dynamic"`` this undoes the recomputation for long sequences;
        :meth:`forward` calls it by itself when a sequence fits in
        ``max_position_embeddings`` again.

        Returns
        -------
        None

        Examples
        --------
        >>> rope = RotaryEmbedding(8, rope_type="dynamic", factor=2.0, max_position_embeddings=16)
        >>> _ = rope(torch.randn(1, 1, 40, 8))
        >>> bool(torch.equal(rope.inv_freq, rope.original_inv_freq))
        False
        >>> rope.reset()
        >>> bool(torch.equal(rope.inv_freq, rope.original_inv_freq))
        True
        """
        self._set_frequencies(self.original_inv_freq)
        self._scaled_len = self.max_position_embeddings or 0
        self._long = False

    @torch.no_grad()
    def _grow(self, length: int) -> None:
        if length <= self.cached_len:
            return
        new_len = max(length, 2 * self.cached_len, 16)
        positions = torch.arange(new_len, device=self.inv_freq.device)
        self.cos_cached, self.sin_cached = rope_cos_sin(
            self.inv_freq, positions, attention_factor=self.attention_factor, layout=self.layout
        )

    def cos_sin(
        self, position_ids: torch.Tensor, *, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables at the given positions, from the cache.

        Parameters
        ----------
        position_ids : torch.Tensor
            Non-negative integer positions of any shape, e.g. ``(T,)`` or ``(B, T)``.
            Their maximum + 1 is the sequence length that ``"dynamic"`` and
            ``"longrope"`` adapt to.
        dtype : torch.dtype, optional
            dtype of the result; default the computation dtype.

        Returns
        -------
        cos, sin : torch.Tensor
            Shape ``(*position_ids.shape, rotary_dim)``, on the buffers' device.

        Raises
        ------
        TypeError
            If ``position_ids`` is not an integer tensor.
        ValueError
            If a position is negative.

        Examples
        --------
        >>> rope = RotaryEmbedding(8)
        >>> cos, sin = rope.cos_sin(torch.tensor([[0, 1, 2], [5, 6, 7]]))
        >>> cos.shape
        torch.Size([2, 3, 8])
        """
        position_ids = _check_positions(position_ids)
        if position_ids.numel() == 0:
            empty = self.cos_cached.new_empty((*position_ids.shape, self.rotary_dim), dtype=dtype)
            return empty, empty.clone()
        low, high = int(position_ids.min()), int(position_ids.max())
        if low < 0:
            raise ValueError(f"position_ids must be >= 0, got a minimum of {low}")
        self._update_frequencies(high + 1)
        self._grow(high + 1)
        index = position_ids.to(self.cos_cached.device)
        cos, sin = self.cos_cached[index], self.sin_cached[index]
        if dtype is not None:
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos, sin

    @property
    def needs_seq_len(self) -> bool:
        """Whether the frequencies depend on the sequence length (``"dynamic"``, ``"longrope"``):
        :meth:`position_embeddings` then needs ``seq_len``, a host value."""
        return self.rope_type in ("dynamic", "longrope")

    def position_embeddings(
        self, position_ids: torch.Tensor, *, seq_len: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at ``position_ids``, computed directly (no table, no host values).

        What a model computes once per forward and hands to every layer (as
        transformers' rotary modules do): ``position_ids * inv_freq`` in the
        computation dtype (the angles of transformers and of :meth:`cos_sin`, bit
        for bit), then cos and sin evaluated in float64 and rounded back
        (:func:`rope_cos_sin`'s ``trig_dtype``), so each position's value is a
        function of the position alone — a left-padded row gets the tables it
        gets alone — and the call traces as one graph.

        Parameters
        ----------
        position_ids : torch.Tensor
            Integer positions ``(T,)`` or ``(B, T)``, on any device.
        seq_len : int, optional
            Sequence length the ``"dynamic"`` and ``"longrope"`` frequencies adapt
            to (see :attr:`needs_seq_len`); default ``max(position_ids) + 1``
            (a host value).

        Returns
        -------
        cos, sin : torch.Tensor
            Shape ``(*position_ids.shape, rotary_dim)``, on the buffers' device;
            ``(B, T, d)`` tables broadcast over heads in
            :func:`~llmref.position.apply_rope`.

        Raises
        ------
        TypeError
            If ``position_ids`` is not an integer tensor.

        Examples
        --------
        >>> rope = RotaryEmbedding(8)
        >>> cos, sin = rope.position_embeddings(torch.tensor([[0, 1, 2], [5, 6, 7]]))
        >>> cos.shape
        torch.Size([2, 3, 8])
        >>> float((cos - rope.cos_sin(torch.tensor([[0, 1, 2], [5, 6, 7]]))[0]).abs().max()) < 1e-7
        True
        """
        position_ids = _check_positions(position_ids)
        if self.needs_seq_len:
            if seq_len is None:
                seq_len = int(position_ids.max()) + 1 if position_ids.numel() else 0
            self._update_frequencies(check_int("seq_len", seq_len, minimum=0))
        return rope_cos_sin(
            self.inv_freq,
            position_ids.to(self.inv_freq.device),
            attention_factor=self.attention_factor,
            layout=self.layout,
            trig_dtype=torch.float64,
        )

    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor | None = None, *, offset: int = 0
    ) -> torch.Tensor:
        """Rotate ``x`` by its positions.

        Parameters
        ----------
        x : torch.Tensor
            Queries or keys, ``(B, H, T, D)`` with ``D == head_dim``.
        position_ids : torch.Tensor, optional
            Positions ``(T,)`` or ``(B, T)``; default ``offset + arange(T)``.
        offset : int, default 0
            Position of the first token when ``position_ids`` is not given (the
            number of tokens already in the KV cache).

        Returns
        -------
        torch.Tensor
            Same shape and dtype as ``x``.

        Raises
        ------
        TypeError
            If ``x`` is not a floating tensor or ``position_ids`` not integer.
        ValueError
            If ``x``'s last dimension is not ``head_dim``, the positions do not
            match ``x``'s length, or a position is negative.

        Examples
        --------
        >>> rope = RotaryEmbedding(8)
        >>> rope(torch.ones(1, 1, 3, 8))[0, 0, :, 0]
        tensor([ 1.0000, -0.3012, -1.3254])
        """
        check_tensor("x", x)
        check_float_dtype("x", x)
        if x.ndim < 2 or x.shape[-1] != self.head_dim:
            raise ValueError(
                f"x must be (..., T, head_dim={self.head_dim}), got shape {tuple(x.shape)}"
            )
        T = x.shape[-2]
        if position_ids is None:
            offset = check_int("offset", offset, minimum=0)
            position_ids = torch.arange(offset, offset + T, device=self.inv_freq.device)
        elif position_ids.shape[-1] != T:
            raise ValueError(
                f"position_ids must have x's length T={T} in its last dim, got shape "
                f"{tuple(position_ids.shape)}"
            )
        cos, sin = self.cos_sin(position_ids)
        return apply_rope(x, cos.to(x.device), sin.to(x.device), layout=self.layout)

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base}, "
            f"rope_type={self.rope_type!r}, layout={self.layout!r}, "
            f"attention_factor={self.attention_factor:.6g}"
        )
