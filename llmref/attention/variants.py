"""Registry of attention variants: functions that change what attention computes.

The entries of :data:`~llmref.attention.ATTENTION` are interchangeable backends
of one softmax attention and give the same result. The variants here do not:
linear attention and Performer replace the softmax kernel, sigmoid attention
drops the normalisation, differential attention subtracts two softmax maps. So
they live in a registry of their own and :func:`~llmref.attention.attention`
cannot dispatch to them.

Each variant registers itself (with the :meth:`~llmref.Registry.register`
decorator) in the module that defines it, as the backends do in
:data:`~llmref.attention.ATTENTION`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .._registry import Registry, Spec
from ..position._registries import legacy_meta

__all__ = ["VARIANTS", "AttentionVariantSpec"]

#: The optional keywords a variant may accept.
VARIANT_FEATURES = frozenset({"mask", "is_causal", "scale", "bias"})


@dataclass(frozen=True, kw_only=True)
class AttentionVariantSpec(Spec):
    """Spec of an attention variant in :data:`VARIANTS`.

    Parameters
    ----------
    name, paper, reference, third_party
        As in :class:`~llmref.Spec`; ``reference`` names the llmref function
        the variant is tested against.
    fn : callable
        ``fn(q, k, v, *, ...)`` in the ``(B, H, T, D)`` layout, returning
        ``(B, H, T, Dv)``.
    features : frozenset of str
        The optional keywords ``fn`` accepts, among ``"mask"``, ``"is_causal"``,
        ``"scale"`` and ``"bias"``.
    required : tuple of str
        Keyword arguments without a default (``"projection"`` for Performer,
        ``"lam"`` for differential attention).
    exact : bool
        True if the variant computes its own definition exactly; False if it is
        a randomised approximation of another attention (Performer approximates
        softmax attention).

    Raises
    ------
    TypeError
        If ``fn`` is not callable, ``required`` is not a tuple of str or
        ``exact`` not a bool.
    ValueError
        If ``features`` names an unknown keyword.

    Examples
    --------
    >>> from llmref.attention import VARIANTS
    >>> spec = VARIANTS["performer"]
    >>> spec.exact, spec.required
    (False, ('projection',))
    """

    primary: ClassVar[str | None] = "fn"

    fn: Callable[..., Any]
    features: frozenset[str] = frozenset()
    required: tuple[str, ...] = ()
    exact: bool

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"attention variant {self.name!r}"
        if not callable(self.fn):
            raise TypeError(f"{where}: fn must be callable, got {type(self.fn).__name__}")
        if not isinstance(self.features, frozenset) or not self.features <= VARIANT_FEATURES:
            raise ValueError(
                f"{where}: features must be a frozenset of {sorted(VARIANT_FEATURES)}, "
                f"got {self.features!r}"
            )
        if not isinstance(self.required, tuple) or not all(
            isinstance(n, str) for n in self.required
        ):
            raise TypeError(f"{where}: required must be a tuple of str, got {self.required!r}")
        if not isinstance(self.exact, bool):
            raise TypeError(f"{where}: exact must be a bool, got {self.exact!r}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def meta(self) -> Mapping[str, Any]:
        """Deprecated: the fields as the old ``meta`` dict."""
        return legacy_meta(self)


VARIANTS = Registry("attention variant", AttentionVariantSpec)
"""Registry of attention variants, name -> :class:`AttentionVariantSpec`.

Every entry takes ``(q, k, v, *, ...)`` in the ``(B, H, T, D)`` layout and
returns ``(B, H, T, Dv)``; its spec declares the keywords it accepts
(``features``), those it needs (``required``) and whether it is ``exact``.
"""
