"""An independently written attention, and the magnitudes the attention tests compare with.

``textbook_attention`` deliberately shares no code with ``llmref.attention``: it
copies K/V heads with ``repeat_interleave`` (the Hugging Face ``repeat_kv``
formulation), builds an additive ``-inf`` bias and uses ``torch.softmax``. In
float64 it is the reference; in bfloat16/float16 it is the naive low-precision
reference ``ref_lp`` of :func:`llmref.testing.assert_low_precision`.

The rest states, for :func:`llmref.testing.assert_within`, how large the
rounding of a computation may be (``scale``, in units of eps: the magnitude of
what was summed). :func:`attention_bound` is the policy's
:func:`~llmref.testing.attention_scale` plus the sink logits. For chains of
operations (projections, norms, RoPE, attention, and their backward passes)
each ``*_err`` function maps a float64 activation ``x`` and its error scale
``e`` (0 for an exact input) to the output and its error scale: the
operation's own rounding (what it sums) plus ``|J| e``, the input's error
passed on through the absolute Jacobian. Each is linear with non-negative
coefficients in ``e`` and in the ``|W|`` of its weights, so pulling ``|dout|``
back through the chain with autograd (:func:`grad_scales`) gives the scale of
each gradient: a backward pass sums ``|J|^T |dout|``-sized terms.
"""

from __future__ import annotations

import math

import torch

from llmref.testing import (
    LOW_PRECISION,
    assert_low_precision,
    assert_within,
    attention_scale,
)


def textbook_attention(
    q,
    k,
    v,
    mask=None,
    is_causal=False,
    scale=None,
    *,
    bias=None,
    softcap=None,
    sinks=None,
    dtype=torch.float64,
    return_weights=False,
):
    """softmax(cap(q k^T scale) + bias + mask, sinks) v, every step in ``dtype``.

    With ``return_weights`` also the weights, with one more column (the sink's) when
    ``sinks`` is given.
    """
    q, k, v = (t.to(dtype) for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if bias is not None:
        scores = scores + bias.to(dtype)
    T, S = scores.shape[-2:]
    allowed = torch.ones(T, S, dtype=torch.bool)
    if is_causal:
        allowed = torch.tril(allowed)
    if mask is not None:
        allowed = allowed & mask
    allowed = allowed.expand_as(scores)
    scores = scores.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        sink = sinks.to(dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        scores = torch.cat([scores, sink], dim=-1)
    weights = torch.softmax(scores, dim=-1)
    weights = torch.nan_to_num(weights, nan=0.0)  # fully masked rows -> 0 by convention
    out = weights[..., :S] @ v
    return (out, weights) if return_weights else out


# -- magnitudes ---------------------------------------------------------------------------


def mag(t, *, grad=False):
    """``|t|`` in float64 (non-finite entries, e.g. a ``-inf`` bias, count as 0), a leaf
    that records gradients if ``grad``."""
    m = t.detach().to(torch.float64).abs()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return m.requires_grad_(grad)


def exact(t):
    """The error scale of an exact input: float64 zeros that record gradients (a leaf of
    :func:`grad_scales`)."""
    return torch.zeros(t.shape, dtype=torch.float64, requires_grad=True)


def attention_bound(q, k, v, *, scale=None, bias=None, sinks=None):
    """:func:`~llmref.testing.attention_scale`, with the sink logits counted among every
    row's scores (a sink is one more score of magnitude ``|sink|`` and value 0)."""
    out = attention_scale(q, k, v, scale=scale, bias=bias)
    if sinks is not None:
        G = q.shape[1] // k.shape[1]
        vmax = mag(v).repeat_interleave(G, dim=1).amax(dim=(-2, -1), keepdim=True)
        out = out + mag(sinks).amax() * vmax
    return out


def linear_err(x, e, weight, bias=None, *, wm=None, bm=None, own=True):
    """F.linear: ``(y, e_y)`` with ``e_y = (|x| + e) |W|^T + |b|`` (its own rounding, what
    it sums, plus the input's error ``e`` passed on; ``own=False`` leaves out the former,
    for a step that runs in a finer dtype than the one compared). ``wm``, ``bm``: leaves
    for ``|W|``, ``|b|`` whose gradients are the weight gradients' scales."""
    x = x.detach().to(torch.float64)
    w = weight.detach().to(torch.float64)
    b = None if bias is None else bias.detach().to(torch.float64)
    wm = mag(w) if wm is None else wm
    err = (x.abs() * own + e) @ wm.transpose(-1, -2)
    if b is not None and own:
        err = err + (mag(b) if bm is None else bm)
    return torch.nn.functional.linear(x, w, b), err


def rms_norm_err(x, e, weight=None, *, eps, wm=None, own=True):
    """RMSNorm over the last dim, ``y = w x / r``, ``r = sqrt(mean x^2 + eps)``.

    ``dy_d/dx_e = w_d (delta_de / r - x_d x_e / (n r^3))``: the input error passes on
    through the absolute value of each term, and the norm adds one unit of ``|y|``.
    """
    x = x.detach().to(torch.float64)
    n = x.shape[-1]
    r = (x.square().mean(-1, keepdim=True) + eps).sqrt()
    ax = x.abs()
    err = (e + ax * own) / r + ax * (ax * e).sum(-1, keepdim=True) / (n * r**3)
    y = x / r
    if weight is not None:
        err = err * (mag(weight) if wm is None else wm)
        y = y * weight.detach().to(torch.float64)
    return y, err


def group_norm_err(x, e, weight, bias, *, eps, wm=None, bm=None):
    """One GroupNorm group over the last dim, ``y = w (x - mu) / sigma + b``:
    ``dy_d/dx_e = w_d ((delta_de - 1/n) / sigma - c_d c_e / (n sigma^3))``, ``c = x - mu``,
    plus one unit of ``|y|`` for its own rounding."""
    x = x.detach().to(torch.float64)
    n = x.shape[-1]
    c = x - x.mean(-1, keepdim=True)
    sigma = (c.square().mean(-1, keepdim=True) + eps).sqrt()
    ac = c.abs()
    err = (e + e.mean(-1, keepdim=True) + ac) / sigma
    err = err + ac * (ac * e).sum(-1, keepdim=True) / (n * sigma**3)
    wm = mag(weight) if wm is None else wm
    bm = mag(bias) if bm is None else bm
    w, b = weight.detach().to(torch.float64), bias.detach().to(torch.float64)
    return c / sigma * w + b, err * wm + bm


def _partner(t, layout):
    if layout == "half":
        return t.roll(t.shape[-1] // 2, dims=-1)
    return t.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # interleaved pairs (0, 1), ...


def rope_err(x, e, rope, *, own=True, **kwargs):
    """RoPE (``rope(x, **kwargs)``): each channel is ``x_d cos + x_partner (+-sin)``, so the
    error is ``e_d + e_partner`` passed on plus ``|x_d| + |x_partner|`` of its own."""
    x = x.detach().to(torch.float64)
    ax = x.abs() * own
    err = e + _partner(e, rope.layout) + ax + _partner(ax, rope.layout)
    return rope(x, **kwargs).to(torch.float64), err


def attention_err(q, k, v, eq=None, ek=None, ev=None, *, mask=None, is_causal=False, **options):
    """Softmax attention: ``(out, e_out)`` from inputs with errors ``eq``, ``ek``, ``ev``
    (default 0), evaluated at the float64 weights ``P`` of the inputs.

    A score's error is ``ds = scale (eq |k| + |q| ek + |q| |k|)`` plus ``|bias|`` and its
    error ``eb`` (and ``softcap``, for the cap's own rounding; its slope is at most 1). A
    score error ``ds_ij`` moves ``o_i`` by ``P_ij (v_j - o_i) ds_ij``; the normalisation
    and the product with V add a few roundings of ``P |v|``:
    ``e_out = (log n + 2) P |v| + P ev + sum_j P_ij ds_ij (|v_j| + |o_i|)``.
    A backward pass reuses (or recomputes) ``P``, which carries a relative error of
    ``R_i = 2 max_j ds_ij + log n + 2`` roundings: gradients through ``e_out`` come out
    ``1 + R_i`` times larger (its value is unchanged). Options: ``scale``, ``bias``,
    ``eb``, ``softcap``, ``sinks`` and their error ``es``.
    """
    bias, sinks, softcap = options.get("bias"), options.get("sinks"), options.get("softcap")
    scale = options.get("scale")
    out, P = textbook_attention(
        q,
        k,
        v,
        mask,
        is_causal,
        scale,
        bias=bias,
        softcap=softcap,
        sinks=sinks,
        return_weights=True,
    )
    out, P = out.detach(), P.detach()
    q, k, v = (t.detach().to(torch.float64) for t in (q, k, v))
    eq = torch.zeros_like(q) if eq is None else eq
    ek = torch.zeros_like(k) if ek is None else ek
    ev = torch.zeros_like(v) if ev is None else ev
    G = q.shape[1] // k.shape[1]
    k, v, ek, ev = (t.repeat_interleave(G, dim=1) for t in (k, v, ek, ev))
    sc = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    aq, akt, av = q.abs(), k.abs().transpose(-1, -2), v.abs()
    ds = sc * (eq @ akt + aq @ ek.transpose(-1, -2) + aq @ akt)
    if bias is not None:
        ds = ds + mag(bias) + options.get("eb", 0.0)
    if softcap is not None:
        ds = ds + softcap
    if sinks is not None:
        col = mag(sinks) + options.get("es", 0.0)
        ds = torch.cat([ds, col.view(1, -1, 1, 1).expand(*ds.shape[:-1], 1)], dim=-1)
        av, ev = (torch.cat([t, t.new_zeros(*t.shape[:-2], 1, t.shape[-1])], -2) for t in (av, ev))
    n = ds.shape[-1]
    Pds = P * ds
    err = (math.log(n) + 2) * (P @ av) + P @ ev + Pds @ av + Pds.sum(-1, keepdim=True) * out.abs()
    amplify = 2 * ds.detach().masked_fill(P == 0, 0.0).amax(-1, keepdim=True) + math.log(n) + 2
    return out, err + (err * amplify - (err * amplify).detach())


def assert_attention(
    out, expected, q, k, v, mask=None, is_causal=False, scale=None, *, what="attention", **options
):
    """``out`` against the float64 ``expected`` computed from the same (rounded) inputs:
    within :func:`attention_bound` in float32/float64, by FlashAttention's rule (against
    :func:`textbook_attention` run in the low dtype) in bfloat16/float16. ``options``:
    ``bias``, ``softcap``, ``sinks``, as the attention call had them."""
    if out.dtype in LOW_PRECISION:
        ref_lp = textbook_attention(q, k, v, mask, is_causal, scale, dtype=out.dtype, **options)
        assert_low_precision(out, expected, ref_lp, what=what)
    else:
        bound = attention_bound(
            q, k, v, scale=scale, bias=options.get("bias"), sinks=options.get("sinks")
        )
        assert_within(out, expected, scale=bound, what=what)


def assert_beyond_rounding(actual, reference, *, scale, dtype=None):
    """The converse of :func:`~llmref.testing.assert_within`: some element differs by
    more than the rounding bound (a change that must show, not a rounding difference)."""
    try:
        assert_within(actual, reference, scale=scale, dtype=dtype, what="(must differ)")
    except AssertionError:
        return
    raise AssertionError("expected a difference beyond rounding, got none")


def feature_attention_err(fq, fk, fmq, fmk, v, vm, *, is_causal=False, eps=0.0):
    """Linear attention ``o_i = sum_j (f_i . g_j) v_j / (sum_j f_i . g_j + eps)`` with
    non-negative features: ``(o, e_o)``, evaluated at the float64 features ``fq``, ``fk``.

    ``fmq``, ``fmk`` (``>= fq, fk``) bound the features and their errors (their own
    computation's rounding and their inputs' errors passed on), ``vm`` likewise ``v``.
    The denominator sums positive terms (no cancellation), so the numerator's and the
    denominator's errors give ``e_o = sum_j (fm_i . gm_j) (vm_j + |o_i|) / den_i``.
    """
    G = fq.shape[1] // fk.shape[1]
    fk, fmk, v, vm = (t.repeat_interleave(G, dim=1) for t in (fk, fmk, v, vm))
    fq, fk, v = (t.detach().to(torch.float64) for t in (fq, fk, v))
    a, am = fq @ fk.transpose(-1, -2), fmq @ fmk.transpose(-1, -2)
    if is_causal:
        keep = torch.ones(a.shape[-2:], dtype=torch.float64).tril()
        a, am = a * keep, am * keep
    den = a.sum(-1, keepdim=True) + eps
    den = torch.where(den > 0, den, torch.ones_like(den))
    o = (a @ v) / den
    return o, (am @ vm + am.sum(-1, keepdim=True) * o.abs()) / den


def grad_scales(err, dout, leaves):
    """The gradient scale of every leaf (an input's error, a ``|W|``): ``|dout|`` pulled
    back through the chain of surrogates that made ``err``."""
    return torch.autograd.grad((err * mag(dout)).sum(), leaves)


__all__ = [
    "assert_attention",
    "assert_beyond_rounding",
    "attention_bound",
    "attention_err",
    "exact",
    "feature_attention_err",
    "grad_scales",
    "group_norm_err",
    "linear_err",
    "mag",
    "rms_norm_err",
    "rope_err",
    "textbook_attention",
]
