"""RoPE frequencies and their context-extension rules, one function per ``rope_type``.

Rotary position embedding (RoPE) rotates channel pair ``i`` of a query or key at
position ``m`` by the angle ``m * inv_freq[i]``. Everything that "scales" RoPE
to longer contexts is a rule that changes ``inv_freq`` (and sometimes multiplies
cos and sin by an ``attention_factor``). Each rule here is registered in
:data:`~llmref.position.ROPE_SCALING` under transformers' ``rope_type`` name and
takes transformers' ``rope_parameters`` keys, with the same meanings;
:func:`rope_frequencies` dispatches by name.

Every function returns ``(inv_freq, attention_factor)``: ``inv_freq`` of shape
``(rotary_dim // 2,)`` in ``dtype`` (float32 by default, where the result equals
transformers' bit for bit; float64 for tests and analysis) and a Python float.
``rotary_dim = int(head_dim * partial_rotary_factor)``: with a partial rotary
factor only the first ``rotary_dim`` channels of each head are rotated.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._checks import check_int, check_positive_float, check_tensor
from ._registries import ROPE_SCALING

__all__ = [
    "ROPE_SCALING",
    "default_frequencies",
    "dynamic_frequencies",
    "linear_frequencies",
    "llama3_frequencies",
    "longrope_frequencies",
    "ntk_alpha_frequencies",
    "proportional_frequencies",
    "rope_frequencies",
    "rotary_dim",
    "yarn_frequencies",
]

Device = torch.device | str | None

_HF = "transformers.modeling_rope_utils."


# -- validation --------------------------------------------------------------------------


def rotary_dim(head_dim: int, partial_rotary_factor: float = 1.0) -> int:
    """Number of rotated channels per head: ``int(head_dim * partial_rotary_factor)``.

    Parameters
    ----------
    head_dim : int
        Channels per attention head.
    partial_rotary_factor : float, default 1.0
        Fraction of the head that is rotated, in ``(0, 1]`` (GPT-NeoX's
        ``rotary_pct``, Phi-2's 0.4, ...). The other channels carry no
        position information.

    Returns
    -------
    int
        The rotary dimension; even and at least 2.

    Raises
    ------
    TypeError
        If ``head_dim`` is not an int or ``partial_rotary_factor`` not a number.
    ValueError
        If ``partial_rotary_factor`` is outside ``(0, 1]`` or the rotary
        dimension is odd or smaller than 2 (RoPE rotates channel *pairs*).

    Notes
    -----
    transformers truncates with ``int()`` the same way. It accepts an odd
    rotary dimension (and then rotates one channel more than it says);
    llmref refuses it.

    Examples
    --------
    >>> rotary_dim(128), rotary_dim(80, 0.4), rotary_dim(64, 0.25)
    (128, 32, 16)
    """
    head_dim = check_int("head_dim", head_dim, minimum=1)
    factor = _check_partial_rotary_factor(partial_rotary_factor)
    dim = int(head_dim * factor)
    if dim < 2 or dim % 2:
        if factor == 1.0:
            raise ValueError(
                f"head_dim must be even for RoPE (it rotates channel pairs), got {head_dim}"
            )
        raise ValueError(
            "int(head_dim * partial_rotary_factor) must be even and >= 2 for RoPE (it rotates "
            f"channel pairs), got int({head_dim} * {factor}) = {dim}"
        )
    return dim


def _check_partial_rotary_factor(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"partial_rotary_factor must be a float, got {type(value).__name__}")
    value = float(value)
    if not (0.0 < value <= 1.0):
        raise ValueError(f"partial_rotary_factor must be in (0, 1], got {value}")
    return value


def _check_base(base: object) -> float:
    value = check_positive_float("base", base)
    if value <= 1.0:
        raise ValueError(
            f"base (rope_theta) must be > 1 so that wavelengths grow with the channel index, "
            f"got {value}"
        )
    return value


def _check_factor(name: str, value: object, rope_type: str) -> float:
    if value is None:
        raise ValueError(f"rope_type={rope_type!r} needs {name!r} in rope_parameters")
    value = check_positive_float(name, value)
    if value < 1.0:
        raise ValueError(
            f"{name} must be >= 1 for rope_type={rope_type!r} (it is the context extension "
            f"ratio; a value below 1 would shrink the context), got {value}"
        )
    return value


def _check_dtype(dtype: object) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    assert isinstance(dtype, torch.dtype)
    return dtype


def _check_length(name: str, value: object) -> int:
    if value is None:
        raise ValueError(f"{name} is required")
    return check_int(name, value, minimum=1)


def _exponents(dim: int, device: Device, dtype: torch.dtype) -> torch.Tensor:
    """``2i / dim`` for ``i = 0 .. dim/2 - 1``."""
    return torch.arange(0, dim, 2, dtype=torch.int64, device=device).to(dtype) / dim


def _base_inv_freq(dim: int, base: float, device: Device, dtype: torch.dtype) -> torch.Tensor:
    return 1.0 / (base ** _exponents(dim, device, dtype))


def _register(
    name: str,
    *,
    paper: str,
    third_party: str,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    **fields: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a rule; every rule also takes ``partial_rotary_factor``."""
    return ROPE_SCALING.register(
        name,
        paper=paper,
        reference="default_frequencies",
        third_party=third_party,
        required=required,
        optional=(*optional, "partial_rotary_factor"),
        **fields,
    )


# -- the rules ---------------------------------------------------------------------------


@_register(
    "default",
    paper="su2024roformer",
    third_party="transformers.models.llama.modeling_llama."
    "LlamaRotaryEmbedding.compute_default_rope_parameters",
)
def default_frequencies(
    head_dim: int,
    *,
    base: float = 10000.0,
    partial_rotary_factor: float = 1.0,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, float]:
    r"""RoPE's own frequencies: ``inv_freq[i] = base ** (-2i / d)``.

    Parameters
    ----------
    head_dim : int
        Channels per attention head.
    base : float, default 10000.0
        transformers' ``rope_theta``: the wavelength scale (> 1).
    partial_rotary_factor : float, default 1.0
        Fraction of ``head_dim`` that is rotated, in ``(0, 1]``.
    device : torch.device or str, optional
        Where to create ``inv_freq``.
    dtype : torch.dtype, default torch.float32
        ``torch.float32`` (equal to transformers bit for bit) or ``torch.float64``.

    Returns
    -------
    inv_freq : torch.Tensor
        Shape ``(d // 2,)`` with ``d = int(head_dim * partial_rotary_factor)``;
        decreasing from 1.
    attention_factor : float
        Always 1.0.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If ``base <= 1``, ``partial_rotary_factor`` is outside ``(0, 1]`` or the
        rotary dimension is odd.

    Notes
    -----
    With rotary dimension :math:`d`, pair :math:`i` turns by
    :math:`\theta_i = b^{-2i/d}` per position, so its wavelength is
    :math:`2\pi b^{2i/d}`: from :math:`2\pi` tokens for :math:`i = 0` to almost
    :math:`2\pi b` for the last pair {cite:p}`su2024roformer`.

    References
    ----------
    :cite:t:`su2024roformer`

    Examples
    --------
    >>> inv_freq, attention_factor = default_frequencies(8)
    >>> inv_freq
    tensor([1.0000, 0.1000, 0.0100, 0.0010])
    >>> attention_factor
    1.0
    """
    dim = rotary_dim(head_dim, partial_rotary_factor)
    return _base_inv_freq(dim, _check_base(base), device, _check_dtype(dtype)), 1.0


@_register(
    "linear",
    paper="chen2023extending",
    third_party=_HF + "_compute_linear_scaling_rope_parameters",
    required=("factor",),
    example={"factor": 4.0},
)
def linear_frequencies(
    head_dim: int,
    *,
    factor: float | None = None,
    base: float = 10000.0,
    partial_rotary_factor: float = 1.0,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, float]:
    r"""Position interpolation: every frequency divided by ``factor``.

    Parameters
    ----------
    head_dim : int
        Channels per attention head.
    factor : float
        Context extension ratio ``s >= 1`` (required).
    base : float, default 10000.0
        ``rope_theta``.
    partial_rotary_factor : float, default 1.0
        Fraction of ``head_dim`` that is rotated, in ``(0, 1]``.
    device : torch.device or str, optional
        Where to create ``inv_freq``.
    dtype : torch.dtype, default torch.float32
        ``torch.float32`` or ``torch.float64``.

    Returns
    -------
    inv_freq : torch.Tensor
        Shape ``(d // 2,)``: the default frequencies divided by ``factor``.
    attention_factor : float
        Always 1.0.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If ``factor`` is missing or < 1, or as :func:`default_frequencies`.

    Notes
    -----
    Rotating position :math:`m` by :math:`\theta_i / s` is rotating position
    :math:`m / s` by :math:`\theta_i`: positions up to :math:`sL` are squeezed
    into the trained range :math:`[0, L)` {cite:p}`chen2023extending`. Nothing is
    extrapolated, but neighbouring tokens become :math:`s` times harder to tell
    apart, so the model needs some fine-tuning.

    References
    ----------
    :cite:t:`chen2023extending`

    Examples
    --------
    >>> inv_freq, _ = linear_frequencies(8, factor=4.0)
    >>> torch.equal(inv_freq * 4, default_frequencies(8)[0])
    True
    """
    factor = _check_factor("factor", factor, "linear")
    inv_freq, _ = default_frequencies(
        head_dim, base=base, partial_rotary_factor=partial_rotary_factor, device=device, dtype=dtype
    )
    return inv_freq / factor, 1.0


@_register(
    "ntk_alpha",
    paper="bloc972023ntk",
    third_party="transformers.models.hunyuan_v1_dense.modeling_hunyuan_v1_dense."
    "HunYuanDenseV1RotaryEmbedding.compute_ntk_alpha_rope_parameters",
    required=("alpha",),
    example={"alpha": 4.0},
)
def ntk_alpha_frequencies(
    head_dim: int,
    *,
    alpha: float | None = None,
    base: float = 10000.0,
    partial_rotary_factor: float = 1.0,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, float]:
    r"""Static NTK-aware scaling: a larger base, ``base * alpha ** (d / (d - 2))``.

    Parameters
    ----------
    head_dim : int
        Channels per attention head.
    alpha : float
        NTK scale ``alpha >= 1`` (required); roughly the context extension ratio.
    base : float, default 10000.0
        ``rope_theta``.
    partial_rotary_factor : float, default 1.0
        Fraction of ``head_dim`` that is rotated, in ``(0, 1]``.
    device : torch.device or str, optional
        Where to create ``inv_freq``.
    dtype : torch.dtype, default torch.float32
        ``torch.float32`` or ``torch.float64``.

    Returns
    -------
    inv_freq : torch.Tensor
        Shape ``(d // 2,)``.
    attention_factor : float
        Always 1.0.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If ``alpha`` is missing or < 1, the rotary dimension is 2 (the exponent
        ``d / (d - 2)`` is undefined), or as :func:`default_frequencies`.

    Notes
    -----
    Raising the base to :math:`b' = b\,\alpha^{d/(d-2)}` leaves the fastest pair
    (:math:`i = 0`, wavelength :math:`2\pi`) unchanged and divides the slowest
    pair's frequency by exactly :math:`\alpha`: high frequencies are
    extrapolated, low ones interpolated, smoothly in between
    {cite:p}`bloc972023ntk`. transformers has no generic ``rope_type`` for it.
    HunYuan's checkpoints spell it ``rope_type: "dynamic"`` with an ``alpha``
    key although nothing depends on the sequence length (the rule is static);
    transformers' HunYuan rotary embedding relabels that ``ntk_alpha``
    internally, llmref names the rule ``ntk_alpha``, and
    :func:`~llmref.models.config_from_transformers` maps HunYuan's spelling to it.

    References
    ----------
    :cite:t:`bloc972023ntk`

    Examples
    --------
    >>> inv_freq, _ = ntk_alpha_frequencies(8, alpha=4.0)
    >>> inv_freq[0].item(), round(inv_freq[-1].item() * 4, 6)
    (1.0, 0.001)
    """
    alpha = _check_factor("alpha", alpha, "ntk_alpha")
    dim = rotary_dim(head_dim, partial_rotary_factor)
    if dim == 2:
        raise ValueError("rope_type='ntk_alpha' needs a rotary dimension > 2, got 2")
    base = _check_base(base) * alpha ** (dim / (dim - 2))
    return _base_inv_freq(dim, base, device, _check_dtype(dtype)), 1.0


@_register(
    "dynamic",
    paper="emozilla2023dynamic",
    third_party=_HF + "_compute_dynamic_ntk_parameters",
    required=("factor", "max_position_embeddings"),
    optional=("seq_len",),
    example={"factor": 2.0, "max_position_embeddings": 4096, "seq_len": 10000},
)
def dynamic_frequencies(
    head_dim: int,
    *,
    factor: float | None = None,
    max_position_embeddings: int | None = None,
    seq_len: int | None = None,
    base: float = 10000.0,
    partial_rotary_factor: float = 1.0,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, float]:
    r"""Dynamic NTK scaling: NTK-aware base scaling sized to the current length.

    Parameters
    ----------
    head_dim : int
        Channels per attention head.
    factor : float
        Scaling factor ``s >= 1`` (required).
    max_position_embeddings : int
        The trained context length ``L`` (transformers reads the model config's
        ``max_position_embeddings``; required).
    seq_len : int, optional
        Current sequence length ``T``; values below ``L`` (and ``None``) mean
        ``L``, where the result is the default frequencies.
    base : float, default 10000.0
        ``rope_theta``.
    partial_rotary_factor : float, default 1.0
        Fraction of ``head_dim`` that is rotated, in ``(0, 1]``.
    device : torch.device or str, optional
        Where to create ``inv_freq``.
    dtype : torch.dtype, default torch.float32
        ``torch.float32`` or ``torch.float64``.

    Returns
    -------
    inv_freq : torch.Tensor
        Shape ``(d // 2,)``.
    attention_factor : float
        Always 1.0.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If ``factor`` is missing or < 1, ``max_position_embeddings`` is missing,
        the rotary dimension is 2, or as :func:`default_frequencies`.

    Notes
    -----
    The base becomes :math:`b' = b\,(sT/L - (s - 1))^{d/(d-2)}` with
    :math:`T = \max(\mathrm{seq\_len}, L)` {cite:p}`emozilla2023dynamic`: no
    change up to the trained length, then NTK-aware scaling with
    :math:`\alpha = sT/L - s + 1`, which grows with the sequence. The frequencies
    therefore depend on the length of the text being processed, which is why
    :class:`~llmref.position.RotaryEmbedding` recomputes them when a longer
    sequence arrives and goes back to the default ones when a sequence fits in
    ``L`` again. transformers' own module did not reset for a while
    (huggingface/transformers#46624): the recorded cached length was written to
    the wrong attribute, so after one long input every later short input kept
    the stretched frequencies.

    References
    ----------
    :cite:t:`emozilla2023dynamic`

    Examples
    --------
    >>> short, _ = dynamic_frequencies(8, factor=2.0, max_position_embeddings=16, seq_len=10)
    >>> torch.equal(short, default_frequencies(8)[0])
    True
    >>> long, _ = dynamic_frequencies(8, factor=2.0, max_position_embeddings=16, seq_len=64)
    >>> bool((long[1:] < short[1:]).all())
    True
    """
    factor = _check_factor("factor", factor, "dynamic")
    original = _check_length("max_position_embeddings", max_position_embeddings)
    length = (
        original if seq_len is None else max(check_int("seq_len", seq_len, minimum=1), original)
    )
    dim = rotary_dim(head_dim, partial_rotary_factor)
    if dim == 2:
        raise ValueError("rope_type='dynamic' needs a rotary dimension > 2, got 2")
    base = _check_base(base) * ((factor * length / original) - (factor - 1)) ** (dim / (dim - 2))
    return _base_inv_freq(dim, base, device, _check_dtype(dtype)), 1.0


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1.0 else 0.1 * mscale * math.log(scale) + 1.0


def _optional_coefficient(name: str, value: object) -> float | None:
    """``None``, 0 (DeepSeek's default for ``mscale_all_dim``) or a finite number > 0."""
    if value is None or (isinstance(value, numbers.Real) and value == 0):
        return None if value is None else 0.0
    return check_positive_float(name, value)


def _original_length(
    original: int | None, max_position_embeddings: int | None, rope_type: str
) -> int:
    if original is not None:
        return check_int("original_max_position_embeddings", original, minimum=1)
    if max_position_embeddings is not None:
        # transformers' config standardisation fills it in from max_position_embeddings.
        return check_int("max_position_embeddings", max_position_embeddings, minimum=1)
    raise ValueError(f"rope_type={rope_type!r} needs 'original_max_position_embeddings'")


def _factor_or_ratio(
    factor: float | None, max_position_embeddings: int | None, original: int, rope_type: str
) -> float:
    if factor is None and max_position_embeddings is not None:
        factor = check_int("max_position_embeddings", max_position_embeddings, minimum=1) / original
    return _check_factor("factor", factor, rope_type)


@_register(
    "yarn",
    paper="peng2024yarn",
    third_party=_HF + "_compute_yarn_parameters",
    required=("factor", "original_max_position_embeddings"),
    optional=(
        "attention_factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "truncate",
        "max_position_embeddings",
    ),
    scales_attention=True,
    example={"factor": 4.0, "original_max_position_embeddings": 4096},
)
def yarn_frequencies(
    head_dim: int,
    *,
    factor: float | None = None,
    original_max_position_embeddings: int | None = None,
    attention_factor: float | None = None,
    beta_fast: float | None = 32.0,
    beta_slow: float | None = 1.0,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
    truncate: bool = True,
    max_position_embeddings: int | None = None,
    base: float = 10000.0,
    partial_rotary_factor: float = 1.0,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, float]:
    r"""YaRN: interpolate low frequencies, keep high ones, ramp in between; scale attention.

    Parameters
    ----------
    head_dim : int
        Channels per attention head.
    factor : float
        Context extension ratio ``s >= 1``. If omitted it is
        ``max_position_embeddings / original_max_position_embeddings`` (what
        transformers does for DeepSeek-style configs); if both are missing it
        is an error.
    original_max_position_embeddings : int
        Trained context length ``L``; defaults to ``max_position_embeddings``
        as in transformers' config standardisation.
    attention_factor : float, optional
        Multiplier of cos and sin. When given it is used as is (also when it is
        1.0); otherwise it is computed from ``factor`` (and ``mscale``).
    beta_fast, beta_slow : float, default 32 and 1
        Rotation counts over ``L`` that delimit the ramp: pairs turning more
        than ``beta_fast`` times are kept, fewer than ``beta_slow`` times are
        interpolated. ``None`` means the default. ``beta_fast > beta_slow > 0``.
    mscale, mscale_all_dim : float, optional
        DeepSeek's attention-factor coefficients. When both are given (and
        non-zero) ``attention_factor = m(s, mscale) / m(s, mscale_all_dim)``
        with ``m(s, c) = 0.1 c ln s + 1``; otherwise ``m(s, 1)``, as in
        transformers. (DeepSeek's own code treats a missing ``mscale_all_dim``
        as 0, which differs when only ``mscale`` is set, to a value other than 1;
        no released config does that.)
    truncate : bool, default True
        Round the ramp's ends outward to whole pair indices (the paper's code);
        ``False`` keeps them fractional (gpt-oss).
    max_position_embeddings : int, optional
        The model's extended context length; only used to fill in a missing
        ``factor`` or ``original_max_position_embeddings``.
    base : float, default 10000.0
        ``rope_theta``.
    partial_rotary_factor : float, default 1.0
        Fraction of ``head_dim`` that is rotated, in ``(0, 1]``.
    device : torch.device or str, optional
        Where to create ``inv_freq``.
    dtype : torch.dtype, default torch.float32
        ``torch.float32`` or ``torch.float64``.

    Returns
    -------
    inv_freq : torch.Tensor
        Shape ``(d // 2,)``.
    attention_factor : float
        The cos/sin multiplier.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If ``factor`` is missing or < 1, no original length is known,
        ``beta_fast <= beta_slow``, a coefficient is not a finite number > 0,
        or as :func:`default_frequencies`.

    Notes
    -----
    Pair :math:`i` completes :math:`r_i = L\theta_i / 2\pi` turns over the trained
    context. Inverting, the pair index that turns :math:`r` times is
    :math:`i(r) = d \ln(L / 2\pi r) / (2 \ln b)`. With
    :math:`l = \lfloor i(\beta_\text{fast}) \rfloor` and
    :math:`h = \lceil i(\beta_\text{slow}) \rceil` (clipped to :math:`[0, d-1]`),
    the ramp is :math:`\gamma_i = \operatorname{clip}((i - l)/(h - l), 0, 1)` and

    .. math::

        \theta'_i = (1 - \gamma_i)\,\theta_i + \gamma_i\,\theta_i / s ,

    so pairs that turn many times over :math:`L` (local, high frequency) are
    left alone and pairs that turn less than once are interpolated like
    :func:`linear_frequencies`. Since interpolation flattens the softmax, YaRN
    multiplies cos and sin by :math:`\sqrt{1/t} = 0.1 \ln s + 1`, which scales
    every score by its square {cite:p}`peng2024yarn`.

    Two faults of other implementations are avoided here. transformers once
    replaced ``factor`` by ``max_position_embeddings /
    original_max_position_embeddings`` whenever the original length was set,
    ignoring the configured factor (huggingface/transformers#38224, fixed in
    #40320); here an explicit ``factor`` always wins. Several inference engines
    dropped an explicit ``attention_factor`` and recomputed it (vLLM #46280,
    mlx-lm #1507); here it is always honoured.

    References
    ----------
    :cite:t:`peng2024yarn`

    Examples
    --------
    >>> inv_freq, attention_factor = yarn_frequencies(
    ...     64, factor=4.0, original_max_position_embeddings=4096
    ... )
    >>> round(attention_factor, 4)
    1.1386
    >>> default = default_frequencies(64)[0]
    >>> bool(inv_freq[0] == default[0]), bool(torch.isclose(inv_freq[-1], default[-1] / 4))
    (True, True)
    """
    dim = rotary_dim(head_dim, partial_rotary_factor)
    base = _check_base(base)
    dtype = _check_dtype(dtype)
    original = _original_length(original_max_position_embeddings, max_position_embeddings, "yarn")
    factor = _factor_or_ratio(factor, max_position_embeddings, original, "yarn")
    beta_fast = 32.0 if beta_fast is None else check_positive_float("beta_fast", beta_fast)
    beta_slow = 1.0 if beta_slow is None else check_positive_float("beta_slow", beta_slow)
    if beta_fast <= beta_slow:
        raise ValueError(
            f"beta_fast must be greater than beta_slow, got beta_fast={beta_fast} and "
            f"beta_slow={beta_slow}"
        )
    if not isinstance(truncate, bool):
        raise TypeError(f"truncate must be a bool, got {type(truncate).__name__}")
    mscale = _optional_coefficient("mscale", mscale)
    mscale_all_dim = _optional_coefficient("mscale_all_dim", mscale_all_dim)
    if attention_factor is not None:
        attention_factor = check_positive_float("attention_factor", attention_factor)
    elif mscale and mscale_all_dim:
        attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
    else:
        attention_factor = _yarn_mscale(factor)

    def pair_index(turns: float) -> float:
        return (dim * math.log(original / (turns * 2 * math.pi))) / (2 * math.log(base))

    low, high = pair_index(beta_fast), pair_index(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a step instead of a ramp; avoids 0 / 0

    pos_freqs = base ** _exponents(dim, device, dtype)
    extrapolated = 1.0 / pos_freqs
    interpolated = 1.0 / (factor * pos_freqs)
    ramp = ((torch.arange(dim // 2, dtype=dtype, device=device) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # weight of the unscaled frequency
    inv_freq = interpolated * (1 - keep) + extrapolated * keep
    return inv_freq, float(attention_factor)


def _factor_list(name: str, value: object, length: int, dtype: torch.dtype, device: Device) -> Any:
    if value is None:
        raise ValueError(f"rope_type='longrope' needs {name!r} (a list of {length} numbers)")
    # Values are checked where they are given (a list: in float64 on the CPU), so the
    # result can be created on any device, "meta" included.
    if isinstance(value, torch.Tensor):
        given = value.detach()
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{name} must be a list of numbers, got {value!r}")
        given = torch.tensor([float(v) for v in value], dtype=torch.float64)
    else:
        raise TypeError(f"{name} must be a list of numbers, got {type(value).__name__}")
    if given.ndim != 1 or given.numel() != length:
        raise ValueError(
            f"{name} must have rotary_dim // 2 = {length} entries (one per rotated pair), "
            f"got shape {tuple(given.shape)}"
        )
    if not bool(torch.isfinite(given).all() and (given > 0).all()):
        raise ValueError(f"{name} must hold finite numbers > 0")
    return given.to(device=device, dtype=dtype)


@_register(
    "longrope",
    paper="ding2024longrope",
    third_party=_HF + "_compute_longrope_parameters",
    required=("short_factor", "long_factor", "original_max_position_embeddings"),
    optional=("factor", "attention_factor", "max_position_embeddings", "seq_len"),
    scales_attention=True,
    example={
        "short_factor": [1.0 + 0.01 * i for i in range(32)],
        "long_factor": [1.0 + 0.5 * i for i in range(32)],
        "original_max_position_embeddings": 4096,
        "factor": 4.0,
        "seq_len": 8192,
    },
)
def longrope_frequencies(
    head_dim: int,
    *,
    short_factor: Sequence[float] | torch.Tensor | None = None,
    long_factor: Sequence[float] | torch.Tensor | None = None,
    original_max_position_embeddings: int | None = None,
    factor: float | None = None,
    attention_factor: float | None = None,
    max_position_embeddings: int | None = None,
    seq_len: int | None = None,
    base: float = 10000.0,
    partial_rotary_factor: float = 1.0,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, float]:
    r"""LongRoPE: searched per-frequency rescale factors, one set for short and one for long inputs.

    Parameters
    ----------
    head_dim : int
        Channels per attention head.
    short_factor, long_factor : sequence of float or torch.Tensor
        Per-pair divisors of the default frequencies, ``d // 2`` each
        (required). ``long_factor`` is used when ``seq_len`` exceeds the
        original length.
    original_max_position_embeddings : int
        Trained context length ``L`` (defaults to ``max_position_embeddings``).
    factor : float, optional
        Context extension ratio ``s``, only used for the default
        ``attention_factor``; defaults to ``max_position_embeddings / L``
        (Phi-3's convention). If neither is known it is an error.
    attention_factor : float, optional
        Multiplier of cos and sin; default ``sqrt(1 + ln s / ln L)`` (1 if
        ``s <= 1``).
    max_position_embeddings : int, optional
        The model's extended context length.
    seq_len : int, optional
        Current sequence length; ``None`` or ``<= L`` selects ``short_factor``.
    base : float, default 10000.0
        ``rope_theta``.
    partial_rotary_factor : float, default 1.0
        Fraction of ``head_dim`` that is rotated, in ``(0, 1]``.
    device : torch.device or str, optional
        Where to create ``inv_freq``.
    dtype : torch.dtype, default torch.float32
        ``torch.float32`` or ``torch.float64``.

    Returns
    -------
    inv_freq : torch.Tensor
        Shape ``(d // 2,)``: ``1 / (ext * base ** (2i / d))``.
    attention_factor : float
        The cos/sin multiplier (the same for short and long inputs).

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If a factor list is missing, has the wrong length or a non-positive
        entry, neither ``factor`` nor ``max_position_embeddings`` is given, or
        as :func:`default_frequencies`.

    Notes
    -----
    LongRoPE {cite:p}`ding2024longrope` searches one rescale factor
    :math:`\lambda_i` per pair (evolutionary search on perplexity), giving
    :math:`\theta'_i = \theta_i / \lambda_i`; Phi-3 and Phi-4 ship two sets.
    Switching sets changes every position's rotation, so a KV cache built with
    one set is stale for the other: transformers (and
    :class:`~llmref.position.RotaryEmbedding`) switch by the current sequence
    length.

    References
    ----------
    :cite:t:`ding2024longrope`

    Examples
    --------
    >>> kw = dict(short_factor=[1.0, 1.0], long_factor=[1.0, 4.0],
    ...           original_max_position_embeddings=16, factor=4.0)
    >>> longrope_frequencies(4, **kw)[0]
    tensor([1.0000, 0.0100])
    >>> inv_freq, attention_factor = longrope_frequencies(4, seq_len=32, **kw)
    >>> inv_freq, round(attention_factor, 4)
    (tensor([1.0000, 0.0025]), 1.2247)
    """
    dim = rotary_dim(head_dim, partial_rotary_factor)
    base = _check_base(base)
    dtype = _check_dtype(dtype)
    original = _original_length(
        original_max_position_embeddings, max_position_embeddings, "longrope"
    )
    if factor is None and max_position_embeddings is None:
        raise ValueError(
            "rope_type='longrope' needs 'factor' (or max_position_embeddings, to use "
            "max_position_embeddings / original_max_position_embeddings)"
        )
    if factor is None:
        factor = check_int("max_position_embeddings", max_position_embeddings, minimum=1) / original
    else:
        factor = check_positive_float("factor", factor)
    if attention_factor is not None:
        attention_factor = check_positive_float("attention_factor", attention_factor)
    elif factor <= 1.0:
        attention_factor = 1.0
    else:
        attention_factor = math.sqrt(1 + math.log(factor) / math.log(original))
    short = _factor_list("short_factor", short_factor, dim // 2, dtype, device)
    long = _factor_list("long_factor", long_factor, dim // 2, dtype, device)
    long_input = seq_len is not None and check_int("seq_len", seq_len, minimum=1) > original
    ext = long if long_input else short
    return 1.0 / (ext * base ** _exponents(dim, device, dtype)), float(attention_factor)


@_register(
    "llama3",
    paper="grattafiori2024llama3",
    third_party=_HF + "_compute_llama3_parameters",
    required=("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    optional=("max_position_embeddings",),
    example={
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
)
def llama3_frequencies(
    head_dim: int,
    *,
    factor: float | None = None,
    low_freq_factor: float | None = None,
    high_freq_factor: float | None = None,
    original_max_position_embeddings: int | None = None,
    max_position_embeddings: int | None = None,
    base: float = 10000.0,
    partial_rotary_factor: float = 1.0,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, float]:
    r"""Llama 3.1's scaling: interpolate long wavelengths, keep short ones, blend in between.

    Parameters
    ----------
    head_dim : int
        Channels per attention head.
    factor : float
        Interpolation factor ``s`` for the long wavelengths (8 in Llama 3.1).
    low_freq_factor : float
        Wavelengths longer than ``L / low_freq_factor`` are divided by
        ``factor`` (1 in Llama 3.1).
    high_freq_factor : float
        Wavelengths shorter than ``L / high_freq_factor`` are kept (4 in
        Llama 3.1); must exceed ``low_freq_factor``.
    original_max_position_embeddings : int
        Trained context length ``L`` (8192 in Llama 3.1); defaults to
        ``max_position_embeddings`` as in transformers.
    max_position_embeddings : int, optional
        Only used as that default.
    base : float, default 10000.0
        ``rope_theta`` (500000 in Llama 3).
    partial_rotary_factor : float, default 1.0
        Fraction of ``head_dim`` that is rotated, in ``(0, 1]``.
    device : torch.device or str, optional
        Where to create ``inv_freq``.
    dtype : torch.dtype, default torch.float32
        ``torch.float32`` or ``torch.float64``.

    Returns
    -------
    inv_freq : torch.Tensor
        Shape ``(d // 2,)``.
    attention_factor : float
        Always 1.0.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If a parameter is missing, ``factor < 1``,
        ``high_freq_factor <= low_freq_factor``, or as :func:`default_frequencies`.

    Notes
    -----
    With wavelength :math:`\lambda_i = 2\pi/\theta_i` and
    :math:`\rho_i = L/\lambda_i` (turns over the trained context),

    .. math::

        \theta'_i = \begin{cases}
            \theta_i & \rho_i > \beta \\
            \theta_i / s & \rho_i < \alpha \\
            (1 - \gamma_i)\,\theta_i / s + \gamma_i\,\theta_i,\quad
            \gamma_i = \frac{\rho_i - \alpha}{\beta - \alpha} & \text{otherwise}
        \end{cases}

    with :math:`\alpha` = ``low_freq_factor`` and :math:`\beta` =
    ``high_freq_factor`` {cite:p}`grattafiori2024llama3`: YaRN's ramp without its
    attention factor, delimited by wavelengths rather than pair indices.

    References
    ----------
    :cite:t:`grattafiori2024llama3`

    Examples
    --------
    >>> inv_freq, _ = llama3_frequencies(
    ...     128, base=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
    ...     original_max_position_embeddings=8192,
    ... )
    >>> default = default_frequencies(128, base=500000.0)[0]
    >>> (inv_freq == default).sum().item(), (inv_freq == default / 8).sum().item()
    (29, 29)

    29 pairs are kept, 29 interpolated and the 6 in between are blended.
    """
    factor = _check_factor("factor", factor, "llama3")
    if low_freq_factor is None or high_freq_factor is None:
        raise ValueError(
            "rope_type='llama3' needs 'low_freq_factor' and 'high_freq_factor' in rope_parameters"
        )
    low_freq_factor = check_positive_float("low_freq_factor", low_freq_factor)
    high_freq_factor = check_positive_float("high_freq_factor", high_freq_factor)
    if high_freq_factor <= low_freq_factor:
        raise ValueError(
            "high_freq_factor must be greater than low_freq_factor, got "
            f"high_freq_factor={high_freq_factor} and low_freq_factor={low_freq_factor}"
        )
    original = _original_length(original_max_position_embeddings, max_position_embeddings, "llama3")
    inv_freq, _ = default_frequencies(
        head_dim, base=base, partial_rotary_factor=partial_rotary_factor, device=device, dtype=dtype
    )
    long_wavelength = original / low_freq_factor
    short_wavelength = original / high_freq_factor
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > long_wavelength, inv_freq / factor, inv_freq)
    smooth = (original / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    between = (wavelength >= short_wavelength) & (wavelength <= long_wavelength)
    return torch.where(between, blended, scaled), 1.0


@_register(
    "proportional",
    paper="su2024roformer",
    third_party=_HF + "_compute_proportional_rope_parameters",
    optional=("factor",),
    example={"factor": 2.0},
)
def proportional_frequencies(
    head_dim: int,
    *,
    factor: float = 1.0,
    base: float = 10000.0,
    partial_rotary_factor: float = 1.0,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, float]:
    r"""Partial RoPE that keeps the full head's frequency spacing (Gemma 4's "proportional").

    Parameters
    ----------
    head_dim : int
        Channels per attention head (even).
    factor : float, default 1.0
        Linear interpolation factor ``>= 1`` applied to every frequency.
    base : float, default 10000.0
        ``rope_theta``.
    partial_rotary_factor : float, default 1.0
        Fraction of the ``head_dim // 2`` pairs that rotate, in ``(0, 1]``.
    device : torch.device or str, optional
        Where to create ``inv_freq``.
    dtype : torch.dtype, default torch.float32
        ``torch.float32`` or ``torch.float64``.

    Returns
    -------
    inv_freq : torch.Tensor
        Shape ``(head_dim // 2,)``: the first ``int(partial_rotary_factor *
        head_dim // 2)`` entries are ``base ** (-2i / head_dim) / factor``, the
        rest are 0 (those pairs do not rotate).
    attention_factor : float
        Always 1.0.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If ``head_dim`` is odd, ``factor < 1`` or as :func:`default_frequencies`.

    Notes
    -----
    Ordinary partial rotary (``partial_rotary_factor`` with the other rules)
    spreads the frequencies over the rotated channels only,
    :math:`\theta_i = b^{-2i/d_\text{rot}}`. Here the exponent stays
    :math:`2i/d_\text{head}`, so the rotated pairs are the fastest pairs of a
    full RoPE and the remaining pairs get frequency 0: cos 1, sin 0, no
    rotation. The cos/sin tables then span the whole head.

    References
    ----------
    :cite:t:`su2024roformer`

    Examples
    --------
    >>> proportional_frequencies(8, partial_rotary_factor=0.5)[0]
    tensor([1.0000, 0.1000, 0.0000, 0.0000])
    """
    rotary_dim(head_dim)  # checks head_dim is even
    fraction = _check_partial_rotary_factor(partial_rotary_factor)
    factor = _check_factor("factor", factor, "proportional")
    base = _check_base(base)
    dtype = _check_dtype(dtype)
    rotated = int(fraction * head_dim // 2)
    exponents = torch.arange(0, 2 * rotated, 2, dtype=torch.int64, device=device).to(dtype)
    inv_freq = 1.0 / (base ** (exponents / head_dim))
    still = head_dim // 2 - rotated
    if still:
        inv_freq = torch.cat([inv_freq, torch.zeros(still, dtype=dtype, device=device)])
    return inv_freq / factor, 1.0


# -- dispatcher --------------------------------------------------------------------------


def rope_frequencies(
    head_dim: int,
    *,
    base: float = 10000.0,
    rope_type: str = "default",
    **rope_parameters: Any,
) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies and attention factor for any registered ``rope_type``.

    Parameters
    ----------
    head_dim : int
        Channels per attention head.
    base : float, default 10000.0
        transformers' ``rope_theta``; ``rope_theta=`` is accepted too, so
        ``rope_frequencies(head_dim, **config.rope_parameters)`` works.
    rope_type : str, default "default"
        A name in :data:`~llmref.position.ROPE_SCALING`: ``"default"``,
        ``"linear"``, ``"dynamic"``, ``"ntk_alpha"``, ``"yarn"``,
        ``"longrope"``, ``"llama3"``, ``"proportional"``.
    rope_parameters : float, int, bool or list of float
        The rule's parameters, named as in transformers' ``rope_parameters``
        (``factor``, ``original_max_position_embeddings``,
        ``partial_rotary_factor``, ``attention_factor``, ``beta_fast``, ...),
        plus ``max_position_embeddings`` and ``seq_len`` where the rule uses
        them, and ``device`` and ``dtype``. See each rule's function.

    Returns
    -------
    inv_freq : torch.Tensor
        Shape ``(rotary_dim // 2,)``, float32 unless ``dtype`` says otherwise.
    attention_factor : float
        Multiplier of cos and sin (1.0 except for ``yarn`` and ``longrope``).

    Raises
    ------
    KeyError
        If ``rope_type`` is not registered.
    TypeError
        If a parameter is not one the rule takes, or has the wrong type.
    ValueError
        If a required parameter is missing or a value is out of range.

    Notes
    -----
    In float32 the result equals transformers' ``ROPE_INIT_FUNCTIONS`` (and
    Llama's default rule) bit for bit for every valid configuration, and the
    attention factor is the same Python float; ``tests/position`` checks this
    over a grid of parameters.

    Examples
    --------
    >>> inv_freq, attention_factor = rope_frequencies(
    ...     128, rope_type="yarn", rope_theta=1e6, factor=4.0,
    ...     original_max_position_embeddings=32768,
    ... )
    >>> inv_freq.shape, round(attention_factor, 4)
    (torch.Size([64]), 1.1386)
    >>> rope_frequencies(64, rope_type="linear")
    Traceback (most recent call last):
    ...
    ValueError: rope_type='linear' needs 'factor' in rope_parameters
    """
    if not isinstance(rope_type, str):
        raise TypeError(f"rope_type must be a str, got {type(rope_type).__name__}")
    entry = ROPE_SCALING[rope_type]
    if "rope_theta" in rope_parameters:
        theta = rope_parameters.pop("rope_theta")
        if base != 10000.0 and theta != base:
            raise ValueError(f"give base or rope_theta, not both (got {base} and {theta})")
        base = theta
    accepted = entry.accepts | {"device", "dtype"}
    unknown = sorted(set(rope_parameters) - accepted)
    if unknown:
        raise TypeError(
            f"rope_type={rope_type!r} does not take {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(sorted(accepted))}"
        )
    return entry.fn(head_dim, base=base, **rope_parameters)


def _check_inv_freq(inv_freq: object) -> torch.Tensor:
    check_tensor("inv_freq", inv_freq, ndim=1)
    assert isinstance(inv_freq, torch.Tensor)
    if not inv_freq.dtype.is_floating_point:
        raise TypeError(f"inv_freq must be a floating tensor, got {inv_freq.dtype}")
    return inv_freq
