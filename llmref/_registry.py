"""The one registry type: every variant registers itself by name, as a typed spec.

A registry maps a name to a frozen dataclass *spec* that declares what consumers
need (the callable, its config class, capabilities such as ``exact``). Each
registry fixes its spec class; consumers read the declared fields and never probe
signatures or compare functions. Tests, benchmarks, docs and the gallery iterate
registries, so registering a variant is what makes it tested, benchmarked and
documented.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Generic, TypeVar

__all__ = ["Registry", "RegistryEntry", "Spec"]


@dataclass(frozen=True, kw_only=True)
class Spec:
    """Base class of every registry spec: what is known about any variant.

    Subclasses add the fields their consumers read (frozen dataclasses too).

    Parameters
    ----------
    name : str
        The name the variant is registered under.
    paper : str or None
        Bib key (in ``docs/references.bib``) of the paper that defines it.
    reference : str or None
        Name of the llmref function it is tested against (its naive reference).
    third_party : str or None
        Dotted name of the third-party implementation it is compared with.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True, kw_only=True)
    ... class ColourSpec(Spec):
    ...     rgb: tuple[int, int, int]
    >>> ColourSpec(name="red", rgb=(255, 0, 0)).rgb
    (255, 0, 0)
    """

    #: Name of the field holding the function that implements the variant (the
    #: docs' registry tables link to it); ``None`` when there is no one function.
    primary: ClassVar[str | None] = None

    name: str
    paper: str | None = None
    reference: str | None = None
    third_party: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(
                f"{type(self).__name__}: name must be a non-empty str, got {self.name!r}"
            )


@dataclass(frozen=True, kw_only=True)
class RegistryEntry(Spec):
    """The spec of a registry of plain functions: the callable plus what is known about it.

    Calling the entry calls the function it wraps.

    Parameters
    ----------
    name, paper, reference, third_party
        As in :class:`Spec`.
    fn : callable
        The implementation.
    meta : dict
        Further facts not yet declared as typed fields (kept for registries that
        have not moved to their own spec class).

    Examples
    --------
    >>> from llmref.attention import ATTENTION
    >>> entry = ATTENTION["naive"]
    >>> entry.name, entry.paper
    ('naive', 'vaswani2017attention')
    """

    primary: ClassVar[str | None] = "fn"

    fn: Callable[..., Any]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


S = TypeVar("S", bound=Spec)


class Registry(Mapping[str, S], Generic[S]):
    """A read-only mapping from a variant's name to its spec.

    Variants add themselves with :meth:`add` (a spec instance) or the
    :meth:`register` decorator (a function, for spec classes with an ``fn``
    field); nothing else mutates a registry.

    Parameters
    ----------
    kind : str
        What the registry holds (used in error messages), e.g. ``"attention"``.
    spec : type
        The :class:`Spec` subclass every entry must be an instance of
        (default :class:`RegistryEntry`).

    Examples
    --------
    >>> reg = Registry("demo")
    >>> @reg.register("double", paper=None)
    ... def double(x):
    ...     return 2 * x
    >>> reg["double"](21)
    42
    >>> list(reg)
    ['double']
    """

    def __init__(self, kind: str, spec: type[S] = RegistryEntry) -> None:  # type: ignore[assignment]
        if not (isinstance(spec, type) and issubclass(spec, Spec)):
            raise TypeError(f"{kind} registry: spec must be a Spec subclass, got {spec!r}")
        self.kind = kind
        self.spec = spec
        self._entries: dict[str, S] = {}

    def add(self, spec: S) -> S:
        """Register ``spec`` under ``spec.name`` and return it.

        Raises
        ------
        TypeError
            If ``spec`` is not an instance of the registry's spec class.
        ValueError
            If the name is already registered.
        """
        if not isinstance(spec, self.spec):
            raise TypeError(
                f"{self.kind} registry: entries must be {self.spec.__name__} instances, "
                f"got {type(spec).__name__}"
            )
        if spec.name in self._entries:
            raise ValueError(f"{self.kind} registry: {spec.name!r} is already registered")
        self._entries[spec.name] = spec
        return spec

    def register(
        self, name: str, **fields_: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Return a decorator that registers a function as ``spec(name=name, fn=fn, **fields_)``.

        The decorated function is returned unchanged. For :class:`RegistryEntry`
        registries, keywords that are not fields go into ``meta``.

        Raises
        ------
        ValueError
            If ``name`` is empty or already registered.
        TypeError
            If the registry's spec class has no ``fn`` field.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} registry: name must be a non-empty str, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} registry: {name!r} is already registered")
        known = {f.name for f in fields(self.spec)}
        if "fn" not in known:
            raise TypeError(
                f"{self.kind} registry: {self.spec.__name__} has no 'fn' field; "
                "register a spec instance with add()"
            )
        if self.spec is RegistryEntry:
            meta = {k: v for k, v in fields_.items() if k not in known}
            fields_ = {k: v for k, v in fields_.items() if k in known}
            if meta:
                fields_["meta"] = {**fields_.get("meta", {}), **meta}

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(self.spec(name=name, fn=fn, **fields_))  # type: ignore[call-arg]
            return fn

        return decorator

    def __getitem__(self, name: str) -> S:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(repr(n) for n in self._entries)
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
