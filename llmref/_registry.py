"""The one registry type: every variant registers itself by name.

Tests, benchmarks, docs and the gallery iterate registries, so registering a
variant is what makes it tested, benchmarked and documented.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Registry", "RegistryEntry"]


@dataclass(frozen=True)
class RegistryEntry:
    """A registered variant: the callable plus what is known about it.

    Calling the entry calls the function it wraps.

    Parameters
    ----------
    name : str
        The name the variant is registered under.
    fn : callable
        The implementation.
    paper : str or None
        Bib key (in ``docs/references.bib``) of the paper that defines it.
    reference : str or None
        Name of the llmref function it is tested against (its naive reference).
    third_party : str or None
        Dotted name of the third-party implementation it is compared with.
    meta : dict
        Any further facts (for example, which options the variant supports).

    Examples
    --------
    >>> from llmref.attention import ATTENTION
    >>> entry = ATTENTION["naive"]
    >>> entry.name, entry.paper
    ('naive', 'vaswani2017attention')
    """

    name: str
    fn: Callable[..., Any]
    paper: str | None = None
    reference: str | None = None
    third_party: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


class Registry(Mapping[str, RegistryEntry]):
    """A read-only mapping from a variant's name to its :class:`RegistryEntry`.

    Variants add themselves with the :meth:`register` decorator; nothing else
    mutates a registry.

    Parameters
    ----------
    kind : str
        What the registry holds (used in error messages), e.g. ``"attention"``.

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

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, RegistryEntry] = {}

    def register(
        self,
        name: str,
        *,
        paper: str | None = None,
        reference: str | None = None,
        third_party: str | None = None,
        **meta: Any,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Return a decorator that registers a function under ``name``.

        The decorated function is returned unchanged.

        Raises
        ------
        ValueError
            If ``name`` is empty or already registered.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} registry: name must be a non-empty str, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} registry: {name!r} is already registered")

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._entries[name] = RegistryEntry(name, fn, paper, reference, third_party, meta)
            return fn

        return decorator

    def __getitem__(self, name: str) -> RegistryEntry:
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
