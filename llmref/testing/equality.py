r"""llmref's one equality policy: how a computed result is compared with its reference.

Every comparison of numbers in llmref's tests, contract suites and benchmark
checks goes through this module, so the rule is stated once:

1. **Bit-for-bit** (:func:`assert_identical`) only between *identical
   operation sequences*: the same ops on the same shapes and dtypes in the same
   order (a packed format against its reference decoder, a cache read back).
   Two different op orders agree only to rounding, and which rounding depends
   on the CPU's BLAS path (AVX2, AVX-512, AMX).
2. **A derived bound** (:func:`assert_within`) for float32/float64 results
   against the float64 reference: ``|actual - reference| <= c * eps(dtype) *
   scale``, where ``scale`` is the magnitude of what was summed, not of the
   result (:func:`matmul_scale` for a product, :func:`attention_scale` for
   attention: scores of hundreds of nats make the softmax's own rounding
   hundreds of eps even when the output is of order one).
3. **FlashAttention's rule** (:func:`assert_low_precision`) for
   bfloat16/float16 results: ``max|out - ref64| <= k * max|ref_lp - ref64| +
   floor``, with ``ref_lp`` the naive reference computed in the low dtype.
4. **Token sequences** are equal only in float64, or up to the first step
   whose top-2 logit margin is within the tolerance (:func:`decisive_steps`).
5. **Quality orderings** (:func:`assert_lower`) hold with a margin that is at
   most half the smallest margin measured over seeds, ISAs and thread counts.

The constants below are the only tolerance constants in the test suite.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "BOUND_FACTOR",
    "GRADIENT_FACTOR",
    "LOW_PRECISION",
    "LOW_PRECISION_FLOOR_ULPS",
    "OUTPUT_FACTOR",
    "assert_identical",
    "assert_low_precision",
    "assert_lower",
    "assert_within",
    "attention_scale",
    "decisive_steps",
    "eps",
    "forward_scale",
    "matmul_scale",
]

BOUND_FACTOR = 16.0
"""Default ``c`` of :func:`assert_within`: roundings allowed per unit of summed magnitude.

A float dot product of ``n`` terms computed in any order is off by at most
``gamma_n * sum|a_i b_i|`` with ``gamma_n ~ n * eps``; blocked and pairwise
orders (every BLAS) make the error a random walk of a few ``eps`` per unit of
``sum|a_i b_i|``. 16 leaves room for a few such steps in a row (a projection,
then a softmax, then a second product) on any ISA.
"""

OUTPUT_FACTOR = 2.0
"""``k`` of :func:`assert_low_precision` for forward outputs (FlashAttention's tests use 2)."""

GRADIENT_FACTOR = 3.0
"""``k`` of :func:`assert_low_precision` for gradients (longer chains of low-precision ops)."""

LOW_PRECISION_FLOOR_ULPS = 2.0
"""The floor of :func:`assert_low_precision` in units of ``eps(dtype) * max|reference|``.

FlashAttention's tests add twice the rounding of the reference output in the
low dtype, for inputs where the naive low-precision reference happens to be
almost exact.
"""

LOW_PRECISION = (torch.bfloat16, torch.float16)
"""The dtypes compared by :func:`assert_low_precision` rather than :func:`assert_within`."""


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of a floating dtype (the gap between 1 and the next number).

    Parameters
    ----------
    dtype : torch.dtype
        A floating-point dtype.

    Returns
    -------
    float
        ``torch.finfo(dtype).eps``: 2.2e-16 for float64, 1.2e-7 for float32,
        9.8e-4 for float16, 7.8e-3 for bfloat16.

    Raises
    ------
    TypeError
        If ``dtype`` is not a floating-point dtype.

    Examples
    --------
    >>> import torch
    >>> from llmref.testing.equality import eps
    >>> eps(torch.float32) == 2.0**-23
    True
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return float(torch.finfo(dtype).eps)


def matmul_scale(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The magnitude summed by ``a @ b``: ``|a| @ |b|``, in float64.

    Parameters
    ----------
    a : torch.Tensor
        Left operand of shape ``(..., M, K)``.
    b : torch.Tensor
        Right operand of shape ``(..., K, N)``.

    Returns
    -------
    torch.Tensor
        float64 of shape ``(..., M, N)``: ``sum_k |a_mk| |b_kn|``, the
        per-element scale of the rounding error of any summation order.

    Examples
    --------
    >>> import torch
    >>> from llmref.testing.equality import matmul_scale
    >>> matmul_scale(torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0], [1.0]]))
    tensor([[5.]], dtype=torch.float64)
    """
    return a.detach().double().abs() @ b.detach().double().abs()


def attention_scale(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The magnitude behind each attention output row, for :func:`assert_within`.

    Parameters
    ----------
    q : torch.Tensor
        Queries of shape ``(B, H, T, D)``.
    k : torch.Tensor
        Keys of shape ``(B, H_kv, S, D)``, ``H % H_kv == 0``.
    v : torch.Tensor
        Values of shape ``(B, H_kv, S, D_v)``.
    scale : float, optional
        Score scale; default ``1/sqrt(D)``.
    bias : torch.Tensor, optional
        Additive float bias broadcastable to ``(B, H, T, S)``; its largest
        finite magnitude adds to every score's.

    Returns
    -------
    torch.Tensor
        float64 of shape ``(B, H, T, 1)``: ``(m_i + log S + 1) * max|v|``,
        where ``m_i = max_j scale * sum_d |q_id| |k_jd| + max|bias|`` bounds
        row ``i``'s scores.

    Notes
    -----
    A score ``s_ij`` computed in floating point is off by about ``eps * m_i``;
    the softmax turns an absolute score error ``delta`` into a relative
    probability error ``delta``, the normalising sum over ``S`` keys adds about
    ``log S`` roundings, and the weighted sum of values scales it all by
    ``max|v|``.

    Examples
    --------
    >>> import torch
    >>> from llmref.testing.equality import attention_scale
    >>> q = k = v = torch.ones(1, 1, 2, 4)
    >>> attention_scale(q, k, v).flatten()  # (0.5 * 4 + log 2 + 1) * 1
    tensor([3.6931, 3.6931], dtype=torch.float64)
    """
    groups = q.shape[1] // k.shape[1]
    kk = k.detach().repeat_interleave(groups, dim=1) if groups > 1 else k.detach()
    vv = v.detach().repeat_interleave(groups, dim=1) if groups > 1 else v.detach()
    sm = 1.0 / math.sqrt(q.shape[-1]) if scale is None else abs(scale)
    rows = matmul_scale(q, kk.transpose(-1, -2)).amax(dim=-1, keepdim=True) * sm
    if bias is not None and bias.is_floating_point():
        finite = bias.detach().double().abs().masked_fill(~torch.isfinite(bias), 0)
        rows = rows + finite.amax()
    vmax = vv.double().abs().amax(dim=(-2, -1), keepdim=True)
    return (rows + math.log(k.shape[-2]) + 1.0) * vmax


def _check_pair(actual: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    if not isinstance(actual, torch.Tensor) or not isinstance(reference, torch.Tensor):
        raise TypeError(
            f"{what}: actual and reference must be tensors, got "
            f"{type(actual).__name__} and {type(reference).__name__}"
        )
    if actual.shape != reference.shape:
        raise AssertionError(
            f"{what}: shape {tuple(actual.shape)} != reference {tuple(reference.shape)}"
        )


def _worst(err: torch.Tensor, allowed: torch.Tensor) -> str:
    ratio = err / allowed.clamp_min(torch.finfo(torch.float64).tiny)
    flat = int(ratio.flatten().argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), ratio.shape))
    return (
        f"{int((ratio > 1).sum())} of {ratio.numel()} elements exceed it; worst at {index}: "
        f"|error| {float(err.flatten()[flat]):.3g} vs allowed "
        f"{float(allowed.flatten()[flat]):.3g} ({float(ratio.flatten()[flat]):.3g}x)"
    )


def assert_within(
    actual: torch.Tensor,
    reference: torch.Tensor,
    *,
    scale: float | torch.Tensor,
    dtype: torch.dtype | None = None,
    c: float = BOUND_FACTOR,
    what: str = "result",
) -> None:
    """Assert ``|actual - reference| <= c * eps(dtype) * scale`` element by element.

    Parameters
    ----------
    actual : torch.Tensor
        The result under test.
    reference : torch.Tensor
        The reference of the same shape, normally computed in float64.
    scale : float or torch.Tensor
        The magnitude of what was summed to make each element, broadcastable
        to ``actual`` (:func:`matmul_scale`, :func:`attention_scale`, or a
        stated magnitude such as ``max|x|`` for an elementwise op).
    dtype : torch.dtype, optional
        The dtype the computation ran in; default ``actual.dtype``.
    c : float, optional
        Roundings allowed per unit of ``scale``; default :data:`BOUND_FACTOR`.
    what : str, optional
        What is compared, for the failure message.

    Returns
    -------
    None
        Returns only when the check holds.

    Raises
    ------
    AssertionError
        If an element is outside the bound, or the shapes differ, or one side
        is non-finite where the other is not (equal infinities pass).
    TypeError
        If ``actual`` or ``reference`` is not a tensor.

    Examples
    --------
    >>> import torch
    >>> from llmref.testing.equality import assert_within, matmul_scale
    >>> a, b = torch.randn(8, 64), torch.randn(64, 8)
    >>> assert_within(a @ b, a.double() @ b.double(), scale=matmul_scale(a, b))
    """
    _check_pair(actual, reference, what)
    dtype = actual.dtype if dtype is None else dtype
    a, r = actual.detach().double(), reference.detach().double()
    same = (a == r) | (torch.isnan(a) & torch.isnan(r))
    finite = torch.isfinite(a) & torch.isfinite(r)
    if not bool((same | finite).all()):
        bad = int((~(same | finite)).sum())
        raise AssertionError(f"{what}: {bad} elements are non-finite on one side only")
    allowed = c * eps(dtype) * torch.as_tensor(scale, dtype=torch.float64).expand_as(a)
    err = torch.where(same, torch.zeros_like(a), (a - r).abs())
    if not bool((err <= allowed).all()):
        raise AssertionError(
            f"{what}: outside c*eps({dtype})*scale with c={c}: " + _worst(err, allowed)
        )


def assert_low_precision(
    actual: torch.Tensor,
    reference: torch.Tensor,
    reference_lp: torch.Tensor,
    *,
    k: float = OUTPUT_FACTOR,
    floor: float | None = None,
    what: str = "result",
) -> None:
    """FlashAttention's rule for 16-bit results: at most ``k`` times the naive low-precision error.

    Parameters
    ----------
    actual : torch.Tensor
        The bfloat16/float16 result under test.
    reference : torch.Tensor
        The float64 reference on the same (already rounded) inputs.
    reference_lp : torch.Tensor
        The naive reference computed in ``actual``'s dtype.
    k : float, optional
        Allowed factor: :data:`OUTPUT_FACTOR` (2) for outputs,
        :data:`GRADIENT_FACTOR` (3) for gradients.
    floor : float, optional
        Absolute slack; default :data:`LOW_PRECISION_FLOOR_ULPS` times
        ``eps(reference_lp.dtype) * max|reference|``.
    what : str, optional
        What is compared, for the failure message.

    Returns
    -------
    None
        Returns only when the check holds.

    Raises
    ------
    AssertionError
        If ``max|actual - reference| > k * max|reference_lp - reference| + floor``.
    TypeError
        If an argument is not a tensor.

    Examples
    --------
    >>> import torch
    >>> from llmref.testing.equality import assert_low_precision
    >>> x = torch.randn(16, 16)
    >>> ref = x.double().softmax(-1)
    >>> lp = x.bfloat16().softmax(-1)
    >>> assert_low_precision(lp, ref, lp)
    """
    _check_pair(actual, reference, what)
    _check_pair(reference_lp, reference, what)
    ref = reference.detach().double()
    err = float((actual.detach().double() - ref).abs().max()) if ref.numel() else 0.0
    base = float((reference_lp.detach().double() - ref).abs().max()) if ref.numel() else 0.0
    if floor is None:
        magnitude = float(ref.abs().max()) if ref.numel() else 0.0
        floor = LOW_PRECISION_FLOOR_ULPS * eps(reference_lp.dtype) * magnitude
    if not math.isfinite(err) or err > k * base + floor:
        raise AssertionError(
            f"{what}: max|error| {err:.3g} > {k} x naive {reference_lp.dtype} error {base:.3g} "
            f"+ floor {floor:.3g}"
        )


def assert_identical(actual: torch.Tensor, expected: torch.Tensor, *, what: str = "result") -> None:
    """Assert bit-for-bit equality (same dtype, shape and bits; NaNs equal).

    Only for two *identical operation sequences*; anything else is compared
    with :func:`assert_within` or :func:`assert_low_precision`.

    Parameters
    ----------
    actual : torch.Tensor
        The result under test.
    expected : torch.Tensor
        The result of the same operations.
    what : str, optional
        What is compared, for the failure message.

    Returns
    -------
    None
        Returns only when the check holds.

    Raises
    ------
    AssertionError
        If dtype, shape or any element differs.
    TypeError
        If an argument is not a tensor.

    Examples
    --------
    >>> import torch
    >>> from llmref.testing.equality import assert_identical
    >>> x = torch.randn(4)
    >>> assert_identical(x * 2, x + x)
    """
    _check_pair(actual, expected, what)
    if actual.dtype != expected.dtype:
        raise AssertionError(f"{what}: dtype {actual.dtype} != {expected.dtype}")
    if not torch.equal(actual, expected):
        if not (actual.is_floating_point() or actual.is_complex()):
            diff = int((actual != expected).sum())
            raise AssertionError(f"{what}: {diff} of {actual.numel()} elements differ")
        same = (actual == expected) | (torch.isnan(actual) & torch.isnan(expected))
        if not bool(same.all()):
            worst = float((actual.double() - expected.double()).abs().nan_to_num(math.inf).max())
            raise AssertionError(
                f"{what}: {int((~same).sum())} of {actual.numel()} elements differ "
                f"(max |difference| {worst:.3g}); bit equality holds only between "
                "identical operation sequences"
            )


def decisive_steps(logits: torch.Tensor, *, tolerance: float) -> int:
    """How many leading decoding steps have a top-2 logit margin above ``tolerance``.

    Greedy tokens from two implementations can only be required to agree on
    these steps: past the first near-tie, a rounding difference may pick the
    other token and the sequences legitimately diverge.

    Parameters
    ----------
    logits : torch.Tensor
        Reference per-step logits of shape ``(steps, V)`` (one sequence),
        ``V >= 2``.
    tolerance : float
        The largest logit difference the two implementations may show.

    Returns
    -------
    int
        The number of steps from the start whose margin exceeds ``tolerance``.

    Raises
    ------
    ValueError
        If ``logits`` is not 2-D with at least two columns, or ``tolerance < 0``.

    Examples
    --------
    >>> import torch
    >>> from llmref.testing.equality import decisive_steps
    >>> decisive_steps(torch.tensor([[3.0, 1.0], [1.0, 1.0], [0.0, 5.0]]), tolerance=0.1)
    1
    """
    if logits.dim() != 2 or logits.shape[-1] < 2:
        raise ValueError(
            f"logits must have shape (steps, V) with V >= 2, got {tuple(logits.shape)}"
        )
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    top2 = logits.detach().double().topk(2, dim=-1).values
    margin = top2[:, 0] - top2[:, 1]
    close = (margin <= tolerance).nonzero()
    return int(close[0, 0]) if close.numel() else logits.shape[0]


def assert_lower(
    lower: float, higher: float, *, margin: float, what: str = "quality ordering"
) -> None:
    """Assert ``higher - lower >= margin`` (e.g. GPTQ's error below RTN's by a measured margin).

    Parameters
    ----------
    lower : float
        The value that must be smaller (the better method's error).
    higher : float
        The value that must be larger.
    margin : float
        At most half the smallest gap measured over >= 3 seeds, both ISAs
        (``ATEN_CPU_CAPABILITY`` native and avx2) and 1 and 2 threads; the
        test states those measurements in a comment.
    what : str, optional
        What is compared, for the failure message.

    Returns
    -------
    None
        Returns only when the check holds.

    Raises
    ------
    AssertionError
        If the gap is smaller than ``margin``, or either value is not finite.
    ValueError
        If ``margin`` is negative.

    Examples
    --------
    >>> from llmref.testing.equality import assert_lower
    >>> assert_lower(0.8, 1.0, margin=0.1)
    """
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if not (math.isfinite(lower) and math.isfinite(higher)) or higher - lower < margin:
        raise AssertionError(
            f"{what}: expected {lower:.6g} below {higher:.6g} by at least {margin:.3g}, "
            f"gap {higher - lower:.3g}"
        )


class _SummedMagnitude(TorchDispatchMode):
    """Adds up, over every product a computation runs, the largest magnitude it summed."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0.0
        self._probabilities: dict[int, float] = {}  # softmax output storage -> score bound

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in ("mm", "bmm"):
            a, b = args[0], args[1]
            # probabilities times values: the softmax's score rounding times the values
            factor = self._probabilities.get(a.untyped_storage().data_ptr(), 1.0)
            self.total += float(matmul_scale(a, b).max()) * factor
        elif name in ("addmm", "baddbmm"):
            bias = args[0].detach().to(torch.float64).abs()
            self.total += float((matmul_scale(args[1], args[2]) + bias).max())
        elif name in ("_softmax", "_safe_softmax"):
            x = args[0].detach().to(torch.float64).abs()
            finite = x.masked_fill(~torch.isfinite(x), 0.0)
            bound = float(finite.max()) + math.log(max(x.shape[args[1]], 1)) + 1.0
            self._probabilities[out.untyped_storage().data_ptr()] = bound
        elif name.startswith("_scaled_dot_product"):
            q, k, v = args[:3]
            mask = kwargs.get("attn_mask")
            bias = mask if mask is not None and mask.is_floating_point() else None
            scale = attention_scale(q, k, v, scale=kwargs.get("scale"), bias=bias)
            self.total += float(scale.max())
        return out


def forward_scale(fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    """The magnitude a deep computation sums, as ``scale`` for :func:`assert_within`.

    Runs ``fn(*args, **kwargs)`` (without gradients) and adds up, over every matrix
    product in it, the largest ``|a| @ |b|`` (plus ``|bias|``), and over every attention
    its :func:`~llmref.testing.attention_scale` (an explicit softmax counts its scores'
    magnitude ``max|s| + log S + 1`` times the values' product). Each product rounds
    within a few eps of its own magnitude and passes what it received on to the next
    through normalised layers, so the logits of a whole forward are within
    ``c * eps * forward_scale`` of the exact ones: the per-layer sum of ``|x| |W|`` products.

    Parameters
    ----------
    fn : callable
        The computation (a model, a layer, a function of tensors).
    *args, **kwargs
        Its inputs.

    Returns
    -------
    float
        The summed magnitude.

    Examples
    --------
    >>> import torch
    >>> from llmref.testing import forward_scale
    >>> a, b = torch.ones(2, 3), torch.full((3, 4), 2.0)
    >>> forward_scale(torch.mm, a, b)  # one product: sum_k |a||b| = 3 * 2
    6.0
    """
    mode = _SummedMagnitude()
    with torch.no_grad(), mode:
        fn(*args, **kwargs)
    return mode.total
