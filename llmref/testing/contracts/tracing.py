"""The one fullgraph capture behind every contract's ``traces`` check.

A spec that declares ``traces=True`` says that ``torch.compile(backend="aot_eager",
fullgraph=True)`` captures its call as one graph: :func:`capture_as_declared` runs the
call that way and returns the result for the caller to compare with eager. A spec
that declares ``traces=False`` (an exemption, listed in the docs' extension guide)
must really break the graph, so the declaration cannot go stale either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["capture_as_declared", "compiled_call"]


def compiled_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` through ``torch.compile(backend="aot_eager", fullgraph=True)``.

    ``fullgraph=True`` raises on any graph break (a host value, an unsupported call)
    instead of falling back to eager; ``aot_eager`` runs the captured ATen operations
    (decomposed) without generating code, so the result differs from eager by rounding
    at most. Dynamo's caches are reset before and after, so no earlier capture is
    reused and none is left behind.

    Parameters
    ----------
    fn : callable
        A module or function.
    *args, **kwargs
        Its inputs.

    Returns
    -------
    object
        What the compiled ``fn`` returns.

    Raises
    ------
    Exception
        Whatever dynamo raises when the capture fails (several types).

    Examples
    --------
    >>> import torch
    >>> compiled_call(torch.add, torch.ones(2), torch.ones(2))
    tensor([2., 2.])
    """
    torch._dynamo.reset()
    try:
        return torch.compile(fn, backend="aot_eager", fullgraph=True)(*args, **kwargs)
    finally:
        torch._dynamo.reset()


def capture_as_declared(
    what: str, traces: bool, fn: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any | None:
    """Run :func:`compiled_call` and hold it to the declaration ``traces``.

    Parameters
    ----------
    what : str
        The entry, for the failure message (``"alibi"``, ``"cache 'static'"``).
    traces : bool
        The declaration: True, the capture must succeed; False, it must fail.
    fn : callable
        The call to capture.
    *args, **kwargs
        Its inputs.

    Returns
    -------
    object or None
        The compiled call's result (declared True), to be compared with eager by
        the caller; ``None`` for a declared exemption whose capture failed.

    Raises
    ------
    AssertionError
        If the capture fails although ``traces`` is True (naming the error), or
        succeeds although it is False.

    Examples
    --------
    >>> import torch
    >>> capture_as_declared("add", True, torch.add, torch.ones(1), torch.ones(1))
    tensor([2.])
    >>> branch = lambda x: x if bool(x.sum() > 0) else -x  # a host value: a graph break
    >>> capture_as_declared("branch", False, branch, torch.ones(1)) is None
    True
    """
    try:
        out = compiled_call(fn, *args, **kwargs)
    except Exception as err:  # dynamo raises several types for a graph break
        if traces:
            first = (str(err).splitlines() or [""])[0][:200]
            raise AssertionError(
                f"{what}: declared traces=True, but fullgraph capture failed: "
                f"{type(err).__name__}: {first}"
            ) from None
        return None
    if not traces:
        raise AssertionError(f"{what}: declared traces=False, but fullgraph capture succeeded")
    return out
