"""Linear attention (Katharopoulos et al., 2020): a feature-map kernel instead of softmax.

Replacing ``exp(q . k)`` by ``phi(q) . phi(k)`` for a positive feature map
``phi`` lets the product be re-associated: ``(phi(Q) phi(K)^T) V`` equals
``phi(Q) (phi(K)^T V)``, which costs ``O(T F Dv)`` instead of ``O(T S)``. Three
forms of the same function live here and agree to rounding:

* :func:`linear_attention` -- the efficient form (associativity; chunked prefix
  sums when causal);
* :func:`linear_attention_quadratic` -- the explicit ``T x S`` weight matrix, the
  reference the other two are tested against;
* :func:`linear_attention_step` -- the recurrent form, one token at a time with a
  constant-size state: causal linear attention is an RNN.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import (
    AttentionShapes,
    check_heads,
    check_int,
    check_model_input,
    check_qkv,
    check_tensor,
    compute_dtype,
)
from .masks import causal_mask
from .variants import VARIANTS

__all__ = [
    "LinearAttention",
    "LinearAttentionState",
    "linear_attention",
    "linear_attention_quadratic",
    "linear_attention_step",
]

FeatureMap = Callable[[torch.Tensor], torch.Tensor]


def _elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


def _relu(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x)


_FEATURE_MAPS: dict[str, FeatureMap] = {"elu_plus_one": _elu_plus_one, "relu": _relu}


class LinearAttentionState(NamedTuple):
    """The recurrent state of causal linear attention after some tokens.

    Kept in float32 for 16-bit inputs (else in the input dtype), since it is a
    running sum over the whole sequence.

    Parameters
    ----------
    S : torch.Tensor
        ``sum_j phi(k_j) v_j^T`` of shape ``(B, H_kv, F, Dv)``.
    z : torch.Tensor
        ``sum_j phi(k_j)`` of shape ``(B, H_kv, F)``: the normaliser.

    Examples
    --------
    >>> import torch
    >>> state = LinearAttentionState(torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 8))
    >>> state.S.shape, state.z.shape
    (torch.Size([1, 2, 8, 4]), torch.Size([1, 2, 8]))
    """

    S: torch.Tensor
    z: torch.Tensor


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    value = float(eps)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {value}")
    return value


def _resolve_feature_map(feature_map: object) -> FeatureMap:
    if isinstance(feature_map, str):
        if feature_map not in _FEATURE_MAPS:
            known = ", ".join(repr(n) for n in _FEATURE_MAPS)
            raise ValueError(
                f"feature_map must be one of {known} or a callable, got {feature_map!r}"
            )
        return _FEATURE_MAPS[feature_map]
    if not callable(feature_map):
        raise TypeError(
            f"feature_map must be a str or a callable, got {type(feature_map).__name__}"
        )
    return feature_map


def _features(fn: FeatureMap, x: torch.Tensor, name: str) -> torch.Tensor:
    """Apply the feature map to ``x`` (already in the compute dtype) and check the result."""
    y = fn(x)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"feature_map must return a torch.Tensor, got {type(y).__name__}")
    if y.ndim != x.ndim or y.shape[:-1] != x.shape[:-1] or y.shape[-1] == 0:
        raise ValueError(
            f"feature_map must map {name} of shape {tuple(x.shape)} to (..., F) with the same "
            f"leading dims and F >= 1, got {tuple(y.shape)}"
        )
    if not y.is_floating_point():
        raise TypeError(f"feature_map must return a floating tensor, got {y.dtype}")
    return y.to(x.dtype)


def _qk_features(
    q: torch.Tensor, k: torch.Tensor, feature_map: object
) -> tuple[torch.Tensor, torch.Tensor]:
    fn = _resolve_feature_map(feature_map)
    compute = compute_dtype(q.dtype)
    phi_q = _features(fn, q.to(compute), "q")
    phi_k = _features(fn, k.to(compute), "k")
    if phi_q.shape[-1] != phi_k.shape[-1]:
        raise ValueError(
            "feature_map must give queries and keys the same feature size, got "
            f"{phi_q.shape[-1]} for q and {phi_k.shape[-1]} for k"
        )
    return phi_q, phi_k


def _normalise(num_den: torch.Tensor, eps: float) -> torch.Tensor:
    """Split ``[numerator | denominator]`` and divide; a zero denominator gives zeros."""
    num, den = num_den[..., :-1], num_den[..., -1:] + eps
    return num / torch.where(den != 0, den, torch.ones_like(den))


def _with_ones(v: torch.Tensor) -> torch.Tensor:
    """``[v | 1]``: the normaliser ``z`` is the state of a value that is always 1."""
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)


def _noncausal(phi_q5: torch.Tensor, phi_k: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """``phi(Q) (phi(K)^T [V | 1])`` with grouped queries ``(B, H_kv, G, T, F)``."""
    kv = torch.matmul(phi_k.transpose(-1, -2), v1)  # (B, H_kv, F, Dv + 1), computed once
    return torch.matmul(phi_q5, kv.unsqueeze(2))


def _causal_chunked(
    phi_q5: torch.Tensor, phi_k: torch.Tensor, v1: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """Causal ``phi(Q) (phi(K)^T [V | 1])`` by chunks: prefix states between, quadratic within."""
    T, S = phi_q5.shape[-2], phi_k.shape[-2]
    # Top-left alignment: query i sees keys 0..i. Keys past T are never seen; missing keys
    # (S < T) are padded with zero features, which contribute nothing.
    if S >= T:
        phi_k, v1 = phi_k[..., :T, :], v1[..., :T, :]
    else:
        phi_k = F.pad(phi_k, (0, 0, 0, T - S))
        v1 = F.pad(v1, (0, 0, 0, T - S))
    C = min(chunk_size, T)
    n = -(-T // C)
    pad = n * C - T
    if pad:
        phi_q5 = F.pad(phi_q5, (0, 0, 0, pad))
        phi_k = F.pad(phi_k, (0, 0, 0, pad))
        v1 = F.pad(v1, (0, 0, 0, pad))
    qc = phi_q5.unflatten(-2, (n, C))  # (B, H_kv, G, n, C, F)
    kc = phi_k.unflatten(-2, (n, C)).unsqueeze(2)  # (B, H_kv, 1, n, C, F)
    vc = v1.unflatten(-2, (n, C)).unsqueeze(2)  # (B, H_kv, 1, n, C, Dv + 1)
    chunk_states = torch.matmul(kc.transpose(-1, -2), vc)  # (B, H_kv, 1, n, F, Dv + 1)
    # State before chunk c: the sum of the states of chunks 0..c-1 (an exclusive prefix sum).
    before = torch.cat(
        [torch.zeros_like(chunk_states[:, :, :, :1]), chunk_states[:, :, :, :-1]], dim=3
    ).cumsum(dim=3)
    within = torch.matmul(qc, kc.transpose(-1, -2))  # (B, H_kv, G, n, C, C)
    within = within.masked_fill(~causal_mask(C, device=within.device), 0.0)
    out = torch.matmul(qc, before) + torch.matmul(within, vc)
    return out.flatten(3, 4)[..., :T, :]


@VARIANTS.register(
    "linear",
    paper="katharopoulos2020transformers",
    reference="linear_attention_quadratic",
    third_party=None,
    features=frozenset({"is_causal"}),
    required=(),
    exact=True,
)
def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    is_causal: bool = False,
    feature_map: str | FeatureMap = "elu_plus_one",
    eps: float = 1e-6,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Linear attention in its efficient form: ``phi(Q) (phi(K)^T V)``, normalised.

    The key/value summary ``phi(K)^T V`` is computed once (non-causal) or as a
    prefix sum (causal), so time is ``O(T F Dv)`` and memory does not grow with
    ``T x S``. Equal to :func:`linear_attention_quadratic` and to running
    :func:`linear_attention_step` over the sequence.

    Parameters
    ----------
    q : torch.Tensor
        Queries of shape ``(B, H, T, D)``.
    k : torch.Tensor
        Keys of shape ``(B, H_kv, S, D)``; ``H % H_kv == 0`` (GQA/MQA: each
        key/value head serves ``H // H_kv`` consecutive query heads).
    v : torch.Tensor
        Values of shape ``(B, H_kv, S, Dv)``.
    is_causal : bool, default False
        Query ``i`` sees keys ``0..i`` (top-left aligned, as
        :func:`~llmref.attention.causal_mask` and SDPA).
    feature_map : str or callable, default "elu_plus_one"
        ``"elu_plus_one"`` (``elu(x) + 1``, the paper's choice), ``"relu"``, or a
        callable mapping ``(..., D)`` to non-negative ``(..., F)`` features,
        applied to ``q`` and ``k`` in the compute dtype.
    eps : float, default 1e-6
        Added to every denominator, as in the authors' ``fast-transformers``.
        Must be >= 0; with 0, a row whose weights are all zero (possible with
        ``"relu"``) gives zeros.
    chunk_size : int, default 64
        Causal form only: positions per chunk. Within a chunk the ``C x C``
        weights are explicit; between chunks a prefix sum of ``(F, Dv)`` states
        carries the past. Any value >= 1 gives the same result.

    Returns
    -------
    torch.Tensor
        Shape ``(B, H, T, Dv)``, dtype of ``q``.

    Raises
    ------
    TypeError
        If an input is not a tensor or has a non-floating or mismatched dtype,
        ``feature_map`` is neither a known name nor callable, or ``eps`` or
        ``chunk_size`` has the wrong type.
    ValueError
        If shapes disagree (see :func:`~llmref.attention.naive_attention`),
        ``feature_map`` is an unknown name or returns a bad shape, ``eps < 0``
        or ``chunk_size < 1``.

    Notes
    -----
    With a feature map :math:`\\phi`, output row :math:`i` is

    .. math::

        o_i = \\frac{\\sum_{j \\in A(i)} \\phi(q_i)^\\top \\phi(k_j)\\, v_j}
                    {\\sum_{j \\in A(i)} \\phi(q_i)^\\top \\phi(k_j) + \\epsilon}
            = \\frac{\\phi(q_i)^\\top S_i}{\\phi(q_i)^\\top z_i + \\epsilon},
        \\quad S_i = \\sum_{j \\in A(i)} \\phi(k_j) v_j^\\top,\\;
        z_i = \\sum_{j \\in A(i)} \\phi(k_j),

    with :math:`A(i)` all keys, or :math:`j \\le i` when causal. The causal
    form splits positions into chunks of :math:`C`: the state before a chunk is
    an exclusive prefix sum of per-chunk states :math:`\\phi(K_c)^\\top V_c`, and
    inside a chunk the masked :math:`C \\times C` weights are used directly --
    ``O(T C F + T F Dv)`` time, ``O(T C + (T / C) F Dv)`` memory per head,
    instead of the ``O(T F Dv)`` memory of a per-position cumulative sum.
    Inputs in float16 or bfloat16 are computed in float32 and cast back.

    References
    ----------
    :cite:t:`katharopoulos2020transformers`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention.linear import linear_attention, linear_attention_quadratic
    >>> q = torch.randn(2, 8, 100, 16, dtype=torch.float64)
    >>> k = torch.randn(2, 2, 100, 16, dtype=torch.float64)  # GQA: 8 query heads, 2 kv heads
    >>> v = torch.randn(2, 2, 100, 32, dtype=torch.float64)
    >>> out = linear_attention(q, k, v, is_causal=True, chunk_size=16)
    >>> out.shape
    torch.Size([2, 8, 100, 32])
    >>> torch.allclose(out, linear_attention_quadratic(q, k, v, is_causal=True))
    True
    """
    shapes = check_qkv(q, k, v)
    eps = _check_eps(eps)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    phi_q, phi_k = _qk_features(q, k, feature_map)
    B, H, H_kv, T, _, _, Dv = shapes
    if T == 0:
        return q.new_zeros(B, H, 0, Dv)
    phi_q5 = phi_q.unflatten(1, (H_kv, H // H_kv))
    v1 = _with_ones(v.to(phi_q.dtype))
    if is_causal:
        num_den = _causal_chunked(phi_q5, phi_k, v1, chunk_size)
    else:
        num_den = _noncausal(phi_q5, phi_k, v1)
    return _normalise(num_den, eps).flatten(1, 2).to(q.dtype)


def linear_attention_quadratic(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    is_causal: bool = False,
    feature_map: str | FeatureMap = "elu_plus_one",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Linear attention computed the slow way, with the explicit ``T x S`` weights.

    The reference for :func:`linear_attention` and :func:`linear_attention_step`:
    it builds ``W = phi(Q) phi(K)^T``, zeroes future entries when causal, and
    divides ``W V`` by the row sums of ``W``. Memory is ``O(T S)``.

    Parameters
    ----------
    q : torch.Tensor
        Queries of shape ``(B, H, T, D)``.
    k : torch.Tensor
        Keys of shape ``(B, H_kv, S, D)``; ``H % H_kv == 0``.
    v : torch.Tensor
        Values of shape ``(B, H_kv, S, Dv)``.
    is_causal : bool, default False
        Query ``i`` sees keys ``0..i`` (top-left aligned).
    feature_map : str or callable, default "elu_plus_one"
        As in :func:`linear_attention`.
    eps : float, default 1e-6
        Added to every row sum before dividing; >= 0.

    Returns
    -------
    torch.Tensor
        Shape ``(B, H, T, Dv)``, dtype of ``q``.

    Raises
    ------
    TypeError, ValueError
        As :func:`linear_attention`.

    Notes
    -----
    .. math::

        W = \\phi(Q)\\,\\phi(K)^\\top \\circ M, \\qquad
        O = \\operatorname{diag}\\!\\left(W \\mathbf{1} + \\epsilon\\right)^{-1} W V,

    with :math:`M` all ones, or lower-triangular when causal. Compared with
    softmax attention, :math:`\\exp(q^\\top k)` is replaced by the kernel
    :math:`\\phi(q)^\\top \\phi(k)`.

    References
    ----------
    :cite:t:`katharopoulos2020transformers`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention.linear import linear_attention_quadratic
    >>> q = k = torch.zeros(1, 1, 3, 4)
    >>> v = torch.tensor([[[[1.0], [2.0], [6.0]]]])
    >>> # elu(0) + 1 = 1: every weight is 1 . 1 = 4, so each row averages the visible values
    >>> linear_attention_quadratic(q, k, v, is_causal=True, eps=0).flatten().tolist()
    [1.0, 1.5, 3.0]
    """
    shapes = check_qkv(q, k, v)
    eps = _check_eps(eps)
    phi_q, phi_k = _qk_features(q, k, feature_map)
    B, H, H_kv, T, S, _, Dv = shapes
    phi_q5 = phi_q.unflatten(1, (H_kv, H // H_kv))
    weights = torch.matmul(phi_q5, phi_k.unsqueeze(2).transpose(-1, -2))  # (B, H_kv, G, T, S)
    if is_causal:
        weights = weights.masked_fill(~causal_mask(T, S, device=q.device), 0.0)
    num = torch.matmul(weights, v.to(phi_q.dtype).unsqueeze(2))
    den = weights.sum(dim=-1, keepdim=True) + eps
    out = num / torch.where(den != 0, den, torch.ones_like(den))
    return out.reshape(B, H, T, Dv).to(q.dtype)


def _check_state(
    state: object, shapes: AttentionShapes, features: int, dtype: torch.dtype, device: torch.device
) -> LinearAttentionState:
    if not isinstance(state, tuple) or len(state) != 2:
        raise TypeError(
            f"state must be a LinearAttentionState (S, z) or None, got {type(state).__name__}"
        )
    S, z = state
    B, H_kv, Dv = shapes.batch, shapes.kv_heads, shapes.value_dim
    for name, x, expected, dims in (
        ("state.S", S, (B, H_kv, features, Dv), "(B, H_kv, F, Dv)"),
        ("state.z", z, (B, H_kv, features), "(B, H_kv, F)"),
    ):
        check_tensor(name, x)
        assert isinstance(x, torch.Tensor)
        if tuple(x.shape) != expected:
            raise ValueError(f"{name} must have shape {dims} = {expected}, got {tuple(x.shape)}")
        if x.dtype != dtype:
            raise TypeError(f"{name} must have dtype {dtype} (the compute dtype), got {x.dtype}")
        if x.device != device:
            raise ValueError(f"{name} must be on the same device as q_t ({device}), got {x.device}")
    return LinearAttentionState(S, z)


def linear_attention_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    state: LinearAttentionState | None = None,
    *,
    feature_map: str | FeatureMap = "elu_plus_one",
    eps: float = 1e-6,
) -> tuple[torch.Tensor, LinearAttentionState]:
    """One step of causal linear attention as an RNN: add a token to the state, read it out.

    Running this over positions ``0..T-1`` gives the same output as
    ``linear_attention(q, k, v, is_causal=True)``, with a state whose size does
    not depend on how many tokens came before.

    Parameters
    ----------
    q_t : torch.Tensor
        The new query, shape ``(B, H, 1, D)``.
    k_t : torch.Tensor
        The new key, shape ``(B, H_kv, 1, D)``; ``H % H_kv == 0``.
    v_t : torch.Tensor
        The new value, shape ``(B, H_kv, 1, Dv)``.
    state : LinearAttentionState, optional
        The state after the previous tokens; None starts from zeros (no past).
    feature_map : str or callable, default "elu_plus_one"
        As in :func:`linear_attention`; use the same map at every step.
    eps : float, default 1e-6
        Added to the denominator; >= 0.

    Returns
    -------
    out : torch.Tensor
        Shape ``(B, H, 1, Dv)``, dtype of ``q_t``.
    state : LinearAttentionState
        The state including this token: ``S`` of shape ``(B, H_kv, F, Dv)``
        and ``z`` of shape ``(B, H_kv, F)``, in float32 for 16-bit inputs.

    Raises
    ------
    TypeError
        As :func:`linear_attention`; also if ``state`` is not a pair of
        tensors in the compute dtype.
    ValueError
        As :func:`linear_attention`; also if the inputs hold more than one
        position, or ``state`` has the wrong shape or device.

    Notes
    -----
    The recurrence of :cite:t:`katharopoulos2020transformers`, Section 3.4:

    .. math::

        S_t = S_{t-1} + \\phi(k_t)\\, v_t^\\top, \\quad
        z_t = z_{t-1} + \\phi(k_t), \\quad
        o_t = \\frac{\\phi(q_t)^\\top S_t}{\\phi(q_t)^\\top z_t + \\epsilon}.

    The state is kept in float32 for 16-bit inputs: it is a sum over the
    whole history, and rounding it to 16 bits at every step would let errors
    accumulate.

    References
    ----------
    :cite:t:`katharopoulos2020transformers`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention.linear import linear_attention, linear_attention_step
    >>> q, k, v = (torch.randn(1, 4, 6, 8, dtype=torch.float64) for _ in range(3))
    >>> state, outs = None, []
    >>> for t in range(6):
    ...     o, state = linear_attention_step(q[:, :, t:t+1], k[:, :, t:t+1], v[:, :, t:t+1], state)
    ...     outs.append(o)
    >>> torch.allclose(torch.cat(outs, dim=2), linear_attention(q, k, v, is_causal=True))
    True
    >>> state.S.shape, state.z.shape
    (torch.Size([1, 4, 8, 8]), torch.Size([1, 4, 8]))
    """
    shapes = check_qkv(q_t, k_t, v_t)
    if shapes.query_len != 1 or shapes.key_len != 1:
        raise ValueError(
            "q_t, k_t and v_t must hold one position (dim 2 of size 1), got q_t "
            f"{tuple(q_t.shape)} and k_t {tuple(k_t.shape)}"
        )
    eps = _check_eps(eps)
    phi_q, phi_k = _qk_features(q_t, k_t, feature_map)
    B, H, H_kv, _, _, _, Dv = shapes
    n_features = phi_k.shape[-1]
    v = v_t.to(phi_k.dtype)
    if state is None:
        S = torch.zeros(B, H_kv, n_features, Dv, dtype=phi_k.dtype, device=q_t.device)
        z = torch.zeros(B, H_kv, n_features, dtype=phi_k.dtype, device=q_t.device)
    else:
        S, z = _check_state(state, shapes, n_features, phi_k.dtype, q_t.device)
    S = S + torch.matmul(phi_k.transpose(-1, -2), v)  # outer product phi(k_t) v_t^T
    z = z + phi_k.squeeze(-2)
    phi_q5 = phi_q.unflatten(1, (H_kv, H // H_kv))  # (B, H_kv, G, 1, F)
    num = torch.matmul(phi_q5, S.unsqueeze(2))
    den = torch.matmul(phi_q5, z[:, :, None, :, None]) + eps
    out = num / torch.where(den != 0, den, torch.ones_like(den))
    return out.flatten(1, 2).to(q_t.dtype), LinearAttentionState(S, z)


class LinearAttention(nn.Module):
    """Linear-attention layer: projections around :func:`linear_attention`, and an RNN step.

    The same weights run in two ways that give the same outputs: :meth:`forward`
    processes a whole sequence in the parallel (chunked prefix-sum) form, and
    :meth:`step` consumes one token at a time, carrying a
    :class:`LinearAttentionState` whose size does not grow with the sequence
    -- the "transformers are RNNs" view of :cite:t:`katharopoulos2020transformers`.

    Parameters
    ----------
    d_model : int
        Model width.
    n_heads : int
        Number of query heads ``H``.
    n_kv_heads : int, optional
        Key/value heads ``H_kv`` (GQA/MQA); default ``n_heads``.
    head_dim : int, optional
        Channels per head; default ``d_model // n_heads``.
    bias : bool, default False
        Whether the projections have biases.
    feature_map : str or callable, default "elu_plus_one"
        The positive feature map ``phi`` (see :func:`linear_attention`).
    eps : float, default 1e-6
        Added to every denominator; >= 0.
    chunk_size : int, default 64
        Chunk length of the causal parallel form (any value gives the same
        result).
    device, dtype : optional
        Where and in which dtype to create the parameters.

    Attributes
    ----------
    q_proj, k_proj, v_proj, out_proj : torch.nn.Linear
        Projections: ``H`` query heads, ``H_kv`` key and value heads of
        ``head_dim`` channels.

    Raises
    ------
    TypeError
        If a size is not an int, ``feature_map`` is neither a known name nor
        callable, or ``eps`` is not a number.
    ValueError
        If a size is < 1, ``n_heads % n_kv_heads != 0``, ``d_model`` is not
        divisible by ``n_heads`` when ``head_dim`` is not given,
        ``feature_map`` is an unknown name, or ``eps < 0``.

    Notes
    -----
    Self-attention with :math:`Q = x W_Q`, :math:`K = x W_K`, :math:`V = x W_V`
    and, per head, :math:`o_t = \\phi(q_t)^\\top S_t / (\\phi(q_t)^\\top z_t + \\epsilon)`
    with :math:`S_t = \\sum_{j \\le t} \\phi(k_j) v_j^\\top` and
    :math:`z_t = \\sum_{j \\le t} \\phi(k_j)` when causal (all :math:`j`
    otherwise), followed by ``out_proj``. Decoding a token costs
    :math:`O(F D_v)` per head whatever the context length, where softmax
    attention costs :math:`O(S D)` and a KV cache growing with :math:`S`.

    References
    ----------
    :cite:t:`katharopoulos2020transformers`

    Examples
    --------
    >>> import torch
    >>> from llmref.attention import LinearAttention
    >>> layer = LinearAttention(32, 4).double()
    >>> x = torch.randn(2, 7, 32, dtype=torch.float64)
    >>> full = layer(x, is_causal=True)
    >>> state, steps = None, []
    >>> for t in range(7):  # the same layer as an RNN
    ...     y, state = layer.step(x[:, t : t + 1], state)
    ...     steps.append(y)
    >>> torch.allclose(torch.cat(steps, dim=1), full)
    True
    >>> state.S.shape  # (B, H_kv, F, Dv): constant size, whatever the length
    torch.Size([2, 4, 8, 8])
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = False,
        feature_map: str | FeatureMap = "elu_plus_one",
        eps: float = 1e-6,
        chunk_size: int = 64,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        d_model, n_heads, n_kv_heads, head_dim = check_heads(d_model, n_heads, n_kv_heads, head_dim)
        _resolve_feature_map(feature_map)  # fail early on a bad name
        self.feature_map = feature_map
        self.eps = _check_eps(eps)
        self.chunk_size = check_int("chunk_size", chunk_size, minimum=1)
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = head_dim
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias, **kw)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias, **kw)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias, **kw)
        self.out_proj = nn.Linear(n_heads * head_dim, d_model, bias, **kw)

    def _qkv(self, x: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = check_model_input("x", x, self.d_model)
        B, T, _ = x.shape
        H, H_kv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)
        k = self.k_proj(x).view(B, T, H_kv, D).transpose(1, 2)
        v = self.v_proj(x).view(B, T, H_kv, D).transpose(1, 2)
        return q, k, v

    def _project_out(self, heads: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = heads.shape
        return self.out_proj(heads.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def forward(
        self, x: torch.Tensor, *, is_causal: bool = False, return_state: bool = False
    ) -> Any:
        """Linear self-attention over a whole sequence (parallel form).

        Parameters
        ----------
        x : torch.Tensor
            Input of shape ``(B, T, d_model)``.
        is_causal : bool, default False
            Token ``t`` sees tokens ``0..t`` only.
        return_state : bool, default False
            Also return the state after the last token, to continue with
            :meth:`step` (a prefill); requires ``is_causal=True``.

        Returns
        -------
        out : torch.Tensor
            Shape ``(B, T, d_model)``.
        state : LinearAttentionState
            Only if ``return_state``: ``S`` of shape ``(B, H_kv, F, head_dim)``
            and ``z`` of shape ``(B, H_kv, F)``, in float32 for 16-bit inputs.

        Raises
        ------
        TypeError, ValueError
            If ``x`` is not a 3-D tensor with last dim ``d_model``, or
            ``return_state`` is asked without ``is_causal``.
        """
        if return_state and not is_causal:
            raise ValueError("return_state=True continues a causal sequence; pass is_causal=True")
        q, k, v = self._qkv(x)
        heads = linear_attention(
            q,
            k,
            v,
            is_causal=is_causal,
            feature_map=self.feature_map,
            eps=self.eps,
            chunk_size=self.chunk_size,
        )
        out = self._project_out(heads)
        if not return_state:
            return out
        _, phi_k = _qk_features(q, k, self.feature_map)
        vc = v.to(phi_k.dtype)
        state = LinearAttentionState(torch.matmul(phi_k.transpose(-1, -2), vc), phi_k.sum(-2))
        return out, state

    def step(
        self, x_t: torch.Tensor, state: LinearAttentionState | None = None
    ) -> tuple[torch.Tensor, LinearAttentionState]:
        """Process one token as an RNN: update the state with it and read the output out.

        Parameters
        ----------
        x_t : torch.Tensor
            The new token, shape ``(B, 1, d_model)``.
        state : LinearAttentionState, optional
            The state after the previous tokens (from :meth:`step` or
            ``forward(..., is_causal=True, return_state=True)``); None starts
            an empty sequence.

        Returns
        -------
        out : torch.Tensor
            Shape ``(B, 1, d_model)``; equal to the last row of
            ``forward(x, is_causal=True)`` over the whole sequence so far.
        state : LinearAttentionState
            The state including this token.

        Raises
        ------
        TypeError, ValueError
            If ``x_t`` is not ``(B, 1, d_model)``, or ``state`` does not fit
            (see :func:`linear_attention_step`).

        Examples
        --------
        >>> import torch
        >>> from llmref.attention import LinearAttention
        >>> layer = LinearAttention(16, 2)
        >>> prompt = torch.randn(1, 5, 16)
        >>> _, state = layer(prompt, is_causal=True, return_state=True)  # prefill
        >>> y, state = layer.step(torch.randn(1, 1, 16), state)  # then decode
        >>> y.shape
        torch.Size([1, 1, 16])
        """
        check_tensor("x_t", x_t, ndim=3)
        if x_t.shape[1] != 1:
            raise ValueError(
                f"x_t must hold one token, shape (B, 1, d_model), got {tuple(x_t.shape)}"
            )
        q, k, v = self._qkv(x_t)
        heads, state = linear_attention_step(
            q, k, v, state, feature_map=self.feature_map, eps=self.eps
        )
        return self._project_out(heads), state

    def extra_repr(self) -> str:
        fm = self.feature_map if isinstance(self.feature_map, str) else "<callable>"
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, feature_map={fm!r}, eps={self.eps}"
        )
