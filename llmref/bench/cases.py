"""The benchmark sweeps: one list of cases shared by ``benchmarks/`` and the gallery.

A :class:`Case` names what is measured (its group, implementation and sequence
length) and knows how to build it: :meth:`Case.make` creates the inputs with a
fixed seed on the requested device and returns a zero-argument callable that
runs the implementation once. The pytest-benchmark suite
(``benchmarks/bench_attention.py``) and the gallery's reduced sweep both take
their cases from here, so they run the same code on the same inputs.

Attention setup (all groups): float32, batch ``B = 1``, ``H = 8`` heads of
``D = 64`` (model width 512), causal self-attention, inputs drawn from a
standard normal with seed :data:`SEED`.

* Group ``"attention-functional"`` times the attention functions on
  ``q, k, v`` of shape ``(1, 8, T, 64)``: ``"sdpa"`` is
  :func:`torch.nn.functional.scaled_dot_product_attention` called directly
  (the baseline), ``"llmref-auto"`` is :func:`llmref.attention.attention` with
  ``backend="auto"``, and every other backend registered in
  :data:`llmref.attention.ATTENTION` (``"naive"``, ...) runs under its own name.
  llmref's ``"sdpa"`` backend is what ``"auto"`` resolves to, so it is not
  timed twice.
* Group ``"attention-module"`` times a full attention layer on ``x`` of shape
  ``(1, T, 512)`` under :func:`torch.no_grad` in eval mode: ``"torch-mha"`` is
  :class:`torch.nn.MultiheadAttention` ``(512, 8, batch_first=True)`` (the
  baseline) called with ``is_causal=True``, the matching boolean
  ``attn_mask`` and ``need_weights=False``; ``"llmref-mha"`` is
  :class:`llmref.attention.MultiHeadAttention` built from it with
  :meth:`~llmref.attention.MultiHeadAttention.from_torch` (same weights).

Slow implementations are capped (:data:`MAX_SEQ_LEN`): ``"naive"``, which
materialises the ``(B, H, T, T)`` score matrix, runs up to ``T = 2048`` in the
default sweep (its float32 scores take 128 MiB there, 512 MiB at ``T = 4096``,
and the softmax holds several such buffers) and up to 4096 in the ``"full"``
sweep; eager ``"flex"`` is capped likewise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .layout import STOP_KEY, TIME_PER_CALL, Axis, Layout

if TYPE_CHECKING:
    import torch

__all__ = [
    "ATTENTION_LAYOUT",
    "BASELINES",
    "BATCH",
    "DTYPE",
    "D_MODEL",
    "HEADS",
    "HEAD_DIM",
    "MAX_SEQ_LEN",
    "SEED",
    "SEQ_LEN",
    "STOP_REASONS",
    "SWEEPS",
    "SWEEP_ENV",
    "Case",
    "Sweep",
    "attention_cases",
    "functional_implementations",
    "module_implementations",
    "resolve_device",
    "sweep",
    "sweep_name",
    "synchronizer",
]

BATCH = 1
"""Batch size of every attention case."""
HEADS = 8
"""Number of query (and key/value) heads."""
HEAD_DIM = 64
"""Width of one head."""
D_MODEL = HEADS * HEAD_DIM
"""Model width of the module cases (512)."""
DTYPE = "float32"
"""Name of the dtype every case computes in (this CPU has no fast bfloat16)."""
SEED = 0
"""Seed of the generator that draws inputs and weights."""

FUNCTIONAL = "attention-functional"
MODULE = "attention-module"

BASELINES: Mapping[str, str] = {FUNCTIONAL: "sdpa", MODULE: "torch-mha"}
"""Implementation each group is compared with (ratios are ``time / baseline``)."""

MAX_SEQ_LEN: Mapping[str, Mapping[str, int]] = {
    "quick": {"naive": 1024, "flex": 512},
    "default": {"naive": 2048, "flex": 2048},
    "full": {"naive": 4096, "flex": 4096},
}
"""Per sweep, the longest sequence an implementation runs at (absent = no cap).

``naive`` materialises the ``(B, H, T, T)`` scores; ``flex``
(:func:`torch.nn.attention.flex_attention.flex_attention` run eagerly, without
``torch.compile``) is slow on the CPU. A backend registered later runs at every
``T`` until it is given a cap here."""

STOP_REASONS: Mapping[str, str] = {
    "naive": "it materialises the (B, H, T, T) float32 scores (512 MiB at T = 4096, "
    "and the softmax holds several such buffers)",
    "flex": "FlexAttention run eagerly, without torch.compile, is slow on the CPU",
}
"""Why a capped implementation stops where :data:`MAX_SEQ_LEN` stops it (stored with
its longest case, and printed by the summary)."""

SEQ_LEN = Axis("seq_len", "sequence length T", "tokens", symbol="T")
"""The x axis of the attention groups: the sequence length ``T``."""

ATTENTION_LAYOUT = Layout(
    SEQ_LEN,
    TIME_PER_CALL,
    guide="quadratic",
    description="Causal self-attention, float32; the dashed guide grows like T².",
)
"""What the attention groups declare: time per call against ``T``, one series per
implementation, with a ``T**2`` guide (exact attention's cost)."""

SWEEP_ENV = "LLMREF_BENCH_SWEEP"
"""Environment variable that selects a sweep when none is passed explicitly."""

Builder = Callable[[int, "torch.device"], Callable[[], Any]]
"""``build(seq_len, device)`` -> zero-argument callable that runs one case."""


@dataclass(frozen=True)
class Sweep:
    """A named set of sequence lengths.

    Parameters
    ----------
    name : str
        Name of the sweep (``"quick"``, ``"default"``, ``"full"``).
    seq_lens : tuple of int
        Sequence lengths ``T`` to measure, ascending.
    max_seq_len : mapping of str to int
        Cap on ``T`` per implementation name; implementations not listed run
        at every ``T``.
    expected : str, default ""
        How long the whole sweep (every suite) takes, for the run's header.
    max_time : float, default 1.0
        Seconds of timed calls per case (``--benchmark-max-time`` overrides it).
    min_rounds : int, default 5
        Fewest timed calls per case (``--benchmark-min-rounds`` overrides it).

    Examples
    --------
    >>> from llmref.bench import SWEEPS
    >>> SWEEPS["quick"].seq_lens
    (128, 256, 512, 1024)
    """

    name: str
    seq_lens: tuple[int, ...]
    max_seq_len: Mapping[str, int] = field(default_factory=dict)
    expected: str = ""
    max_time: float = 1.0
    min_rounds: int = 5


SWEEPS: Mapping[str, Sweep] = {
    "quick": Sweep(
        "quick",
        (128, 256, 512, 1024),
        MAX_SEQ_LEN["quick"],
        "about 2 minutes on 2 idle CPU cores",
        max_time=0.05,
        min_rounds=3,
    ),
    "default": Sweep(
        "default",
        (128, 256, 512, 1024, 2048, 4096),
        MAX_SEQ_LEN["default"],
        "about 7 minutes on 2 idle CPU cores",
        max_time=0.5,
    ),
    "full": Sweep(
        "full",
        (128, 256, 512, 1024, 2048, 4096, 8192),
        MAX_SEQ_LEN["full"],
        "an hour or more on 2 CPU cores",
    ),
}
"""The sweeps of every suite in ``benchmarks/`` (each suite maps the name to its own
sizes): ``"quick"`` (the CI smoke run — at least one case of every suite — and the
gallery's reduced attention sweep), ``"default"`` (``tox -e bench``) and ``"full"``
(the long sizes: ``T = 8192``, ``"naive"`` at 4096, SmolLM2 at batch 8, ...). The
attention suite's sequence lengths and caps are given here; ``expected`` is the wall
time of the whole sweep over all suites."""


@dataclass(frozen=True)
class Case:
    """One benchmark case: an implementation at one sequence length.

    Parameters
    ----------
    group : str
        Benchmark group, e.g. ``"attention-functional"``; cases in one group
        are compared with each other.
    implementation : str
        Name of the implementation, e.g. ``"naive"`` or ``"torch-mha"``.
    seq_len : int
        Sequence length ``T``.
    baseline : str
        Implementation of the same group that ratios are taken against.
    builder : callable
        ``builder(seq_len, device)`` creates the inputs and returns a
        zero-argument callable that runs the case once (and waits for the
        device to finish).
    dtype : str, default "float32"
        Name of the compute dtype.
    stop_reason : str, default ""
        Set on the longest case of an implementation that a cap stops before
        the sweep's end: why it goes no further.

    Examples
    --------
    >>> from llmref.bench.cases import attention_cases
    >>> case = next(c for c in attention_cases(seq_lens=(16,)) if c.implementation == "naive")
    >>> case.id
    'naive-T0016'
    >>> run = case.make("cpu")
    >>> tuple(run().shape)
    (1, 8, 16, 64)
    """

    group: str
    implementation: str
    seq_len: int
    baseline: str
    builder: Builder = field(repr=False, compare=False)
    dtype: str = DTYPE
    stop_reason: str = ""

    @property
    def id(self) -> str:
        """Test id, ``"<implementation>-T<seq_len>"`` with ``T`` zero-padded to
        four digits so that sorting by name sorts by length."""
        return f"{self.implementation}-T{self.seq_len:04d}"

    @property
    def is_baseline(self) -> bool:
        """Whether this case is its group's baseline."""
        return self.implementation == self.baseline

    def make(self, device: str | torch.device = "cpu") -> Callable[[], Any]:
        """Build the inputs on ``device`` and return the callable to time.

        Parameters
        ----------
        device : str or torch.device, default "cpu"
            Device to run on. Inputs are drawn on the CPU with a fixed seed
            and moved there, so every device sees the same numbers.

        Returns
        -------
        callable
            Runs the case once and returns its output tensor; on an
            accelerator it synchronizes before returning, so wall-clock
            timing of the call is meaningful.
        """
        return self.builder(self.seq_len, resolve_device(device))

    def extra_info(self, device: str | torch.device = "cpu") -> dict[str, Any]:
        """Facts to store with a measurement (pytest-benchmark ``extra_info``).

        Parameters
        ----------
        device : str or torch.device, default "cpu"
            Device the case runs on.

        Returns
        -------
        dict
            ``implementation``, ``seq_len``, ``dtype``, ``device``,
            ``baseline``, ``batch``, ``heads``, ``head_dim``, the torch
            version and its number of intra-op threads, and
            ``stop_reason`` if the case has one.
        """
        import torch

        stop = {STOP_KEY: self.stop_reason} if self.stop_reason else {}
        return {
            "implementation": self.implementation,
            "seq_len": self.seq_len,
            "dtype": self.dtype,
            "device": str(resolve_device(device)),
            "baseline": self.baseline,
            "batch": BATCH,
            "heads": HEADS,
            "head_dim": HEAD_DIM,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            **stop,
        }


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn a device spec into a :class:`torch.device` (``None`` means CPU).

    Parameters
    ----------
    device : str or torch.device, optional
        E.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        If ``device`` is not a valid device string.
    """
    import torch

    if device is None:
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must name a torch device, got {device!r}") from exc


def synchronizer(device: str | torch.device) -> Callable[[], None]:
    """Return a function that waits until ``device`` has finished its queued work.

    CPU work is synchronous, so on the CPU this is a no-op; on an accelerator
    (CUDA, XPU, MPS, ...) it calls the backend's ``synchronize``.

    Parameters
    ----------
    device : str or torch.device
        The device the timed work runs on.

    Returns
    -------
    callable
        Zero-argument function.
    """
    import torch

    dev = resolve_device(device)
    if dev.type == "cpu":
        return lambda: None
    backend = getattr(torch, dev.type, None)
    sync = getattr(backend, "synchronize", None)
    if sync is None:
        accelerator = getattr(torch, "accelerator", None)
        sync = getattr(accelerator, "synchronize", None)
    if sync is None:
        raise ValueError(f"don't know how to synchronize device {dev}")
    return lambda: sync()


def _qkv(seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded ``(B, H, T, D)`` queries, keys and values on ``device``."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    shape = (BATCH, HEADS, seq_len, HEAD_DIM)
    q, k, v = (torch.randn(shape, generator=gen, dtype=torch.float32) for _ in range(3))
    return q.to(device), k.to(device), v.to(device)


def _build_sdpa(seq_len: int, device: torch.device) -> Callable[[], Any]:
    import torch.nn.functional as F

    q, k, v = _qkv(seq_len, device)
    sync = synchronizer(device)

    def run() -> Any:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        sync()
        return out

    return run


def _build_llmref_auto(seq_len: int, device: torch.device) -> Callable[[], Any]:
    from llmref.attention import attention

    q, k, v = _qkv(seq_len, device)
    sync = synchronizer(device)

    def run() -> Any:
        out = attention(q, k, v, is_causal=True, backend="auto")
        sync()
        return out

    return run


def _registered_backend(name: str) -> Builder:
    """Builder for a backend registered in :data:`llmref.attention.ATTENTION`."""

    def build(seq_len: int, device: torch.device) -> Callable[[], Any]:
        from llmref.attention import ATTENTION

        fn = ATTENTION[name].fn
        q, k, v = _qkv(seq_len, device)
        sync = synchronizer(device)

        def run() -> Any:
            out = fn(q, k, v, is_causal=True)
            sync()
            return out

        return run

    return build


def _torch_mha(device: torch.device) -> torch.nn.MultiheadAttention:
    """A seeded ``torch.nn.MultiheadAttention(512, 8, batch_first=True)`` in eval mode."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        module = torch.nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True)
    return module.to(device).eval()


def _tokens(seq_len: int, device: torch.device) -> torch.Tensor:
    """Seeded ``(B, T, d_model)`` input of the module cases."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn((BATCH, seq_len, D_MODEL), generator=gen, dtype=torch.float32)
    return x.to(device)


def _build_torch_mha(seq_len: int, device: torch.device) -> Callable[[], Any]:
    import torch

    module = _torch_mha(device)
    x = _tokens(seq_len, device)
    # torch's boolean attn_mask means True = *not* allowed (the opposite of llmref's).
    # is_causal=True is only a hint to torch and must come with the mask itself.
    blocked = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).triu(1)
    sync = synchronizer(device)

    def run() -> Any:
        with torch.no_grad():
            out, _ = module(x, x, x, attn_mask=blocked, is_causal=True, need_weights=False)
        sync()
        return out

    return run


def _build_llmref_mha(seq_len: int, device: torch.device) -> Callable[[], Any]:
    import torch

    from llmref.attention import MultiHeadAttention

    with torch.random.fork_rng(devices=[]):  # from_torch's fresh init draws from the RNG
        module = MultiHeadAttention.from_torch(_torch_mha(device)).eval()
    x = _tokens(seq_len, device)
    sync = synchronizer(device)

    def run() -> Any:
        with torch.no_grad():
            out = module(x, is_causal=True)
        sync()
        return out

    return run


def functional_implementations() -> dict[str, Builder]:
    """Builders of the ``"attention-functional"`` group, baseline first.

    Returns
    -------
    dict of str to callable
        ``"sdpa"``, ``"llmref-auto"``, then one entry per backend registered
        in :data:`llmref.attention.ATTENTION` except ``"sdpa"`` (which is what
        ``"auto"`` dispatches to).
    """
    from llmref.attention import ATTENTION

    impls: dict[str, Builder] = {"sdpa": _build_sdpa, "llmref-auto": _build_llmref_auto}
    for name in ATTENTION:
        if name != "sdpa":
            impls[name] = _registered_backend(name)
    return impls


def module_implementations() -> dict[str, Builder]:
    """Builders of the ``"attention-module"`` group, baseline first.

    Returns
    -------
    dict of str to callable
        ``"torch-mha"`` and ``"llmref-mha"``.
    """
    return {"torch-mha": _build_torch_mha, "llmref-mha": _build_llmref_mha}


def attention_cases(
    *,
    seq_lens: Iterable[int] = SWEEPS["default"].seq_lens,
    max_seq_len: Mapping[str, int] | None = None,
    groups: Sequence[str] | None = None,
    implementations: Sequence[str] | None = None,
) -> list[Case]:
    """All attention cases for the given sequence lengths.

    Parameters
    ----------
    seq_lens : iterable of int
        Sequence lengths ``T``; default: those of the ``"default"`` sweep.
    max_seq_len : mapping of str to int, optional
        Cap on ``T`` per implementation (default: the ``"default"`` sweep's).
    groups : sequence of str, optional
        Only these groups (``"attention-functional"``, ``"attention-module"``).
    implementations : sequence of str, optional
        Only these implementations.

    Returns
    -------
    list of Case
        Ordered by group, then implementation (baseline first), then ``T``.

    Raises
    ------
    ValueError
        If a sequence length is not a positive int, or a group or
        implementation name is unknown.

    Examples
    --------
    >>> from llmref.bench import attention_cases
    >>> cases = attention_cases(seq_lens=(128,), groups=["attention-functional"])
    >>> {"naive", "sdpa", "llmref-auto"} <= {c.implementation for c in cases}
    True
    >>> {c.seq_len for c in cases}
    {128}
    """
    lens = [int(t) for t in seq_lens]
    if any(t < 1 for t in lens):
        raise ValueError(f"seq_lens must be positive, got {lens}")
    caps = SWEEPS["default"].max_seq_len if max_seq_len is None else max_seq_len
    table = {FUNCTIONAL: functional_implementations(), MODULE: module_implementations()}
    if groups is not None:
        unknown = [g for g in groups if g not in table]
        if unknown:
            raise ValueError(f"groups must be among {sorted(table)}, got unknown {unknown}")
        table = {g: table[g] for g in table if g in groups}
    if implementations is not None:
        known = {name for impls in table.values() for name in impls}
        unknown = [i for i in implementations if i not in known]
        if unknown:
            raise ValueError(
                f"implementations must be among {sorted(known)}, got unknown {unknown}"
            )
    cases = []
    for group, impls in table.items():
        for name, builder in impls.items():
            if implementations is not None and name not in implementations:
                continue
            cap = caps.get(name)
            kept = [t for t in lens if cap is None or t <= cap]
            for t in kept:
                stop = ""
                if t == max(kept) and t < max(lens):
                    why = STOP_REASONS.get(name, "a cap in llmref.bench.cases.MAX_SEQ_LEN")
                    stop = f"capped at T = {cap} in this sweep: {why}"
                cases.append(Case(group, name, t, BASELINES[group], builder, stop_reason=stop))
    return cases


def sweep_name(name: str | None = None) -> str:
    """Resolve a sweep name: ``name``, else ``$LLMREF_BENCH_SWEEP``, else ``"default"``.

    Parameters
    ----------
    name : str, optional
        An explicit choice.

    Returns
    -------
    str
        A key of :data:`SWEEPS`.

    Raises
    ------
    ValueError
        If the chosen name is not a known sweep.
    """
    chosen = name if name is not None else os.environ.get(SWEEP_ENV) or "default"
    if chosen not in SWEEPS:
        source = "sweep" if name is not None else SWEEP_ENV
        raise ValueError(f"{source} must be one of {sorted(SWEEPS)}, got {chosen!r}")
    return chosen


def sweep(name: str | None = None) -> list[Case]:
    """The cases of a named sweep.

    Parameters
    ----------
    name : str, optional
        ``"quick"``, ``"default"`` or ``"full"``; when omitted, the value of
        the environment variable ``LLMREF_BENCH_SWEEP``, else ``"default"``.

    Returns
    -------
    list of Case

    Raises
    ------
    ValueError
        If the name is not a known sweep.

    Examples
    --------
    >>> from llmref.bench.cases import sweep
    >>> sorted({c.seq_len for c in sweep("quick")})
    [128, 256, 512, 1024]
    """
    spec = SWEEPS[sweep_name(name)]
    return attention_cases(seq_lens=spec.seq_lens, max_seq_len=spec.max_seq_len)
