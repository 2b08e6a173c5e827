"""The two registries of :mod:`llmref.position` (defined apart to avoid import cycles)."""

from __future__ import annotations

from .._registry import Registry

__all__ = ["POSITION", "ROPE_SCALING"]

POSITION = Registry("position encoding")
"""Registry of position encodings, name -> :class:`~llmref.RegistryEntry`.

Each entry wraps the encoding's functional core. ``meta["kind"]`` says how the
encoding enters the model: ``"absolute"`` (added to the token embeddings),
``"rotary"`` (rotates queries and keys), ``"bias"`` (added to the attention
scores) or ``"none"``; ``meta["module"]`` names the :class:`torch.nn.Module`
that owns its parameters or cached tables.
"""

ROPE_SCALING = Registry("rope_type")
"""Registry of RoPE frequency rules, ``rope_type`` -> :class:`~llmref.RegistryEntry`.

Names and parameter names are those of transformers' ``rope_parameters``.
Every entry is called as ``fn(head_dim, *, base=..., **rope_parameters)`` and
returns ``(inv_freq, attention_factor)``; :func:`~llmref.position.rope_frequencies`
dispatches to them by name. ``meta["parameters"]`` lists the keys the rule
takes and ``meta["required"]`` those it cannot do without.
"""
