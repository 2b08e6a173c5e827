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

from .._registry import Registry

__all__ = ["VARIANTS"]

VARIANTS = Registry("attention variant")
"""Registry of attention variants, name -> :class:`~llmref.RegistryEntry`.

Every entry takes ``(q, k, v, *, ...)`` in the ``(B, H, T, D)`` layout and
returns ``(B, H, T, Dv)``. ``reference`` names the llmref function the variant
is tested against. ``meta`` holds:

``features``
    frozenset of the optional keywords the variant accepts (``"mask"``,
    ``"is_causal"``, ``"scale"``, ``"bias"``).
``required``
    tuple of keyword arguments without a default (``"projection"`` for
    Performer, ``"lam"`` for differential attention).
``exact``
    True if the variant computes its own definition exactly; False if it is a
    randomised approximation of another attention (Performer approximates
    softmax attention).
"""
