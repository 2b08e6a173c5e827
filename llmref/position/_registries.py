"""The two registries of :mod:`llmref.position` and their typed specs (apart, to avoid cycles)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar

from .._registry import Registry, Spec

__all__ = ["POSITION", "ROPE_SCALING", "PositionSpec", "RopeRuleSpec", "legacy_meta"]

#: How a position encoding enters the model (:attr:`PositionSpec.kind`).
POSITION_KINDS = ("absolute", "rotary", "bias", "none")


def legacy_meta(spec: Spec, replaces: Mapping[str, str] | None = None) -> Mapping[str, Any]:
    """The untyped ``meta`` dict of the registries' first version, rebuilt from typed fields.

    Reading ``entry.meta`` keeps working but warns: the keys are now fields of the
    spec (``replaces`` maps old keys whose field was renamed to the new name).
    """
    renamed = dict(replaces or {})
    own = {f.name for f in fields(spec)} - {f.name for f in fields(Spec)} - {"fn"}
    values = {name: getattr(spec, name) for name in own}
    values.update({old: getattr(spec, new) for old, new in renamed.items()})
    warnings.warn(
        f"{type(spec).__name__}.meta is deprecated; read the typed fields instead "
        f"({', '.join(f'spec.{renamed.get(k, k)}' for k in sorted(values))})",
        DeprecationWarning,
        stacklevel=3,
    )
    return MappingProxyType(values)


def _check_names(owner: str, what: str, names: object) -> tuple[str, ...]:
    if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"{owner}: {what} must be a tuple of non-empty str, got {names!r}")
    return names


@dataclass(frozen=True, kw_only=True)
class PositionSpec(Spec):
    """Spec of a position encoding in :data:`POSITION`.

    Parameters
    ----------
    name, paper, reference, third_party
        As in :class:`~llmref.Spec`.
    fn : callable
        The encoding's functional core.
    kind : {"absolute", "rotary", "bias", "none"}
        How the encoding enters the model: added to the token embeddings,
        rotating queries and keys, added to the attention scores, or not at all.
    module : str or None
        Name, in :mod:`llmref.position`, of the :class:`torch.nn.Module` that owns
        the encoding's parameters or cached tables (``None``: no module).
    forms : tuple of str
        Named forms of the encoding selected by an argument of ``fn`` (KERPLE's
        ``"log"`` and ``"power"`` kernels); empty when there is one form.
    traces : bool or None
        Whether a call of the ``module`` is captured as one graph by
        ``torch.compile(fullgraph=True)``; required (a bool) when there is a
        module, ``None`` when there is none. The contract suite
        (``llmref.testing.contracts.position``) checks it either way: a declared
        exemption must really break the graph.
    example : callable or None
        ``example() -> (module, args, kwargs)``: a small instance of ``module``
        and the arguments of one call, what the contract suite compiles (called
        under a fixed seed, so it may draw random inputs and weights). Required
        when there is a module, ``None`` when there is none.

    Raises
    ------
    ValueError
        If ``kind`` is not one of the four kinds, or ``traces`` or ``example`` is
        given without a ``module``.
    TypeError
        If ``fn`` is not callable, ``module`` not a str, ``forms`` not a tuple of
        str, or, with a ``module``, ``traces`` not a bool or ``example`` not callable.

    Examples
    --------
    >>> from llmref.position import POSITION
    >>> POSITION["alibi"].kind, POSITION["alibi"].module, POSITION["alibi"].traces
    ('bias', 'AlibiBias', True)
    >>> module, args, kwargs = POSITION["alibi"].example()
    >>> module(*args, **kwargs).shape
    torch.Size([4, 5, 7])
    """

    primary: ClassVar[str | None] = "fn"

    fn: Callable[..., Any]
    kind: str
    module: str | None = None
    forms: tuple[str, ...] = ()
    traces: bool | None = None
    example: Callable[[], tuple[Any, tuple[Any, ...], dict[str, Any]]] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"position encoding {self.name!r}"
        if not callable(self.fn):
            raise TypeError(f"{where}: fn must be callable, got {type(self.fn).__name__}")
        if self.kind not in POSITION_KINDS:
            raise ValueError(f"{where}: kind must be one of {POSITION_KINDS}, got {self.kind!r}")
        if self.module is not None and not isinstance(self.module, str):
            raise TypeError(f"{where}: module must be a str or None, got {self.module!r}")
        _check_names(where, "forms", self.forms)
        if self.module is None:
            given = [n for n in ("traces", "example") if getattr(self, n) is not None]
            if given:
                raise ValueError(
                    f"{where}: {' and '.join(given)} describe the module; module is None"
                )
            return
        if not isinstance(self.traces, bool):
            raise TypeError(
                f"{where}: traces must be a bool (whether {self.module} is captured as one "
                f"graph by torch.compile(fullgraph=True)), got {self.traces!r}"
            )
        if not callable(self.example):
            raise TypeError(
                f"{where}: example must be a callable returning ({self.module} instance, "
                f"args, kwargs), got {self.example!r}"
            )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def meta(self) -> Mapping[str, Any]:
        """Deprecated: the fields as the old ``meta`` dict (``variants`` is now :attr:`forms`)."""
        return legacy_meta(self, {"variants": "forms"})


@dataclass(frozen=True, kw_only=True)
class RopeRuleSpec(Spec):
    """Spec of a RoPE frequency rule in :data:`ROPE_SCALING`, keyed by transformers' ``rope_type``.

    Parameters
    ----------
    name, paper, reference, third_party
        As in :class:`~llmref.Spec`.
    fn : callable
        ``fn(head_dim, *, base, **rope_parameters, device=None, dtype=torch.float32)``
        returning ``(inv_freq, attention_factor)``.
    required : tuple of str
        The ``rope_parameters`` keys the rule cannot do without; missing, ``fn``
        raises a ``ValueError`` naming the key.
    optional : tuple of str
        The other keys it takes (``partial_rotary_factor`` and, where the rule
        reads them, ``max_position_embeddings`` and ``seq_len``). ``base``
        (``rope_theta``), ``device`` and ``dtype`` are taken by every rule and
        are not listed.
    scales_attention : bool, default False
        Whether the rule may return an ``attention_factor`` other than 1 (YaRN,
        LongRoPE); rules that do not must return exactly 1.0.
    example : dict
        ``rope_parameters`` for a valid call at ``head_dim=64`` (the contract
        suite's head dimension): the required keys at least. The suite calls the
        rule with it and, where transformers' ``ROPE_INIT_FUNCTIONS`` has this
        ``rope_type``, checks the two agree bit for bit. Not shown in tables.

    Raises
    ------
    TypeError
        If ``fn`` is not callable, or ``required``/``optional`` are not tuples of str.
    ValueError
        If a key is both required and optional, is one every rule takes, or the
        example lacks a required key or names a key the rule does not take.

    Examples
    --------
    >>> from llmref.position import ROPE_SCALING
    >>> spec = ROPE_SCALING["linear"]
    >>> spec.required, spec.optional
    (('factor',), ('partial_rotary_factor',))
    >>> sorted(spec.accepts)  # a frozenset: its printed order follows the hash seed
    ['factor', 'partial_rotary_factor']
    """

    primary: ClassVar[str | None] = "fn"
    #: Keyword arguments every rule takes, besides its declared ``rope_parameters``.
    COMMON: ClassVar[tuple[str, ...]] = ("base", "device", "dtype")
    #: The head dimension :attr:`example` is written for.
    EXAMPLE_HEAD_DIM: ClassVar[int] = 64

    fn: Callable[..., Any]
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    scales_attention: bool = False
    example: Mapping[str, Any] = field(default_factory=dict, metadata={"table": False})

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"rope_type {self.name!r}"
        if not callable(self.fn):
            raise TypeError(f"{where}: fn must be callable, got {type(self.fn).__name__}")
        required = _check_names(where, "required", self.required)
        optional = _check_names(where, "optional", self.optional)
        both = sorted(set(required) & set(optional))
        if both:
            raise ValueError(f"{where}: {both} declared both required and optional")
        common = sorted(set(required + optional) & set(self.COMMON))
        if common:
            raise ValueError(f"{where}: {common} are taken by every rule; do not declare them")
        if not isinstance(self.scales_attention, bool):
            raise TypeError(f"{where}: scales_attention must be a bool")
        missing = sorted(set(required) - set(self.example))
        unknown = sorted(set(self.example) - self.accepts)
        if missing or unknown:
            raise ValueError(
                f"{where}: example must give every required key and only keys the rule "
                f"takes; missing {missing}, unknown {unknown}"
            )
        object.__setattr__(self, "example", MappingProxyType(dict(self.example)))

    @property
    def accepts(self) -> frozenset[str]:
        """Every ``rope_parameters`` key the rule takes: ``required`` and ``optional``."""
        return frozenset(self.required + self.optional)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def meta(self) -> Mapping[str, Any]:
        """Deprecated: the old ``meta`` dict (``parameters`` is ``("base", *accepts)``)."""
        old = dict(legacy_meta(self))
        old["parameters"] = ("base", *self.required, *self.optional)
        return MappingProxyType(old)


POSITION = Registry("position encoding", PositionSpec)
"""Registry of position encodings, name -> :class:`PositionSpec`.

Each entry wraps the encoding's functional core and declares its ``kind`` (how
it enters the model: ``"absolute"``, ``"rotary"``, ``"bias"`` or ``"none"``)
and the ``module`` that owns its parameters or cached tables.
"""

ROPE_SCALING = Registry("rope_type", RopeRuleSpec)
"""Registry of RoPE frequency rules, ``rope_type`` -> :class:`RopeRuleSpec`.

Names and parameter names are those of transformers' ``rope_parameters``.
Every entry is called as ``fn(head_dim, *, base=..., **rope_parameters)`` and
returns ``(inv_freq, attention_factor)``; :func:`~llmref.position.rope_frequencies`
dispatches to them by name and accepts the keys each spec declares
(``required`` and ``optional``).
"""
