"""Model-level quantization: swap ``nn.Linear`` layers for :class:`~llmref.quant.QuantLinear`.

:func:`quantize_model` applies a format (round-to-nearest) or any post-training
method of :data:`~llmref.quant.METHODS` to the linear layers of a model. With
calibration data it records each layer's input activations through forward
hooks and, when the model exposes its transformer blocks, works block by
block as the GPTQ and AWQ reference implementations do.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from .formats import FORMATS
from .kernels import check_backend
from .methods import METHODS
from .methods.base import MethodSpec, even_rows
from .modules import QuantLinear
from .protocol import QuantizableWeights
from .tensor import QuantizedTensor

__all__ = ["LayerReport", "QuantConfig", "quantize_model"]

#: Default cap on the activation rows kept per layer (see :func:`quantize_model`).
DEFAULT_MAX_TOKENS = 4096


def _check_method(method: object, fmt: str, options: Mapping[str, Any]) -> MethodSpec:
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, got {type(method).__name__}")
    spec = METHODS[method]  # KeyError naming the registered methods
    if spec.applies_to != "weight":
        raise ValueError(
            f"method {method!r} quantizes {spec.applies_to!r}, not linear weights; it cannot "
            "be applied by quantize_model"
        )
    if spec.formats is not None and fmt not in spec.formats:
        raise ValueError(
            f"method {method!r} accepts formats {', '.join(map(repr, spec.formats))}, got {fmt!r}"
        )
    if spec.check_format is not None:  # the format options the method cannot honour
        spec.check_format(fmt, {k: v for k, v in options.items() if k != "group_size"})
    return spec


@dataclass(frozen=True)
class QuantConfig:
    """What :func:`~llmref.quant.quantize_model` does to each selected ``nn.Linear``.

    Parameters
    ----------
    fmt : str
        A format in :data:`llmref.quant.FORMATS`.
    options : mapping, optional
        Options of the format (``group_size``, ``symmetric`` ...), the fields
        of ``FORMATS[fmt].options``. Without ``group_size`` the format's
        default is used, by every method alike: groups of 128 for the integer
        formats below 8 bits, one scale per output channel at 8 bits.
    backend : str, default "auto"
        Kernel of the resulting :class:`~llmref.quant.QuantLinear` layers
        (``"auto"``: exact; ``"fast"``: speed over exactness).
    method : str, default "rtn"
        A weight method in :data:`llmref.quant.METHODS` (``"rtn"``, ``"gptq"``,
        ``"awq"``, ``"hqq"`` ...). It is called as
        ``method(weight, inputs, fmt=fmt, group_size=options.get("group_size",
        "default"), **method_options, **other_options)``.
    method_options : mapping, optional
        The method's own options (``damp``, ``act_order`` for GPTQ, ``alpha``
        for SmoothQuant ...): the fields of ``METHODS[method].config``.

    Raises
    ------
    KeyError
        If ``fmt`` or ``method`` is not registered.
    TypeError
        If an option is not accepted by ``fmt``, a format option by the
        method, or a method option by ``method`` (the message names it).
    ValueError
        If ``backend`` is unknown, an option's value is invalid (for the format,
        or for the method: GPTQ and AWQ refuse stochastic rounding), the method
        does not quantize weights (KV-cache methods) or does not accept ``fmt``.
        Everything is checked here, before any layer is touched.

    Examples
    --------
    >>> from llmref.quant import QuantConfig
    >>> QuantConfig("int4", {"group_size": 128})
    QuantConfig(fmt='int4', options={'group_size': 128}, backend='auto', method='rtn', \
method_options={})
    >>> QuantConfig("int4", method="rtn", method_options={"damp": 0.01})
    Traceback (most recent call last):
    ...
    TypeError: method 'rtn' does not accept option(s) 'damp'; accepted: none
    >>> QuantConfig("int4", {"rounding": "stochastic"}, method="gptq")
    Traceback (most recent call last):
    ...
    ValueError: rounding='stochastic' is not supported by gptq: GPTQ compensates the \
rounding error it makes, so it rounds to nearest ('nearest_even' or 'half_away')
    """

    fmt: str
    options: Mapping[str, Any] = field(default_factory=dict)
    backend: str = "auto"
    method: str = "rtn"
    method_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.fmt, str):
            raise TypeError(f"fmt must be a str, got {type(self.fmt).__name__}")
        FORMATS[self.fmt].options.from_kwargs(self.fmt, self.options)
        check_backend(self.backend)
        _check_method(self.method, self.fmt, self.options).make_config(self.method_options)
        object.__setattr__(self, "options", dict(self.options))
        object.__setattr__(self, "method_options", dict(self.method_options))

    @property
    def needs_inputs(self) -> bool:
        """Whether the method needs calibration activations."""
        return METHODS[self.method].needs_inputs


class LayerReport(NamedTuple):
    """One layer replaced by :func:`~llmref.quant.quantize_model`.

    Parameters
    ----------
    name : str
        Qualified name of the layer in the model.
    fmt : str
        Format of its new weight.
    in_features, out_features : int
        Layer sizes.
    bytes_before, bytes_after : int
        Weight storage before (float) and after (codes + scales).
    kernel : str
        Kernel the new layer uses.
    method : str, default "rtn"
        The method in :data:`~llmref.quant.METHODS` that chose the weights
        (``"rtn"`` for an expert no calibration token reached).
    sqnr : float, default nan
        Reconstruction error: SQNR in dB of the new layer's output against the
        float layer's, on (up to ``max_tokens`` of) the calibration inputs the
        layer saw, computed with the reference kernel (so a fast kernel's
        lower-precision arithmetic is not counted); ``nan`` without
        calibration data.
    seconds : float, default 0.0
        Time spent in the method for this layer (the calibration forward
        passes are not included).

    Examples
    --------
    >>> from torch import nn
    >>> from llmref.quant import quantize_model
    >>> [r.name for r in quantize_model(nn.Sequential(nn.Linear(32, 32)), "int8")]
    ['0']
    """

    name: str
    fmt: str
    in_features: int
    out_features: int
    bytes_before: int
    bytes_after: int
    kernel: str
    method: str = "rtn"
    sqnr: float = math.nan
    seconds: float = 0.0


# -- progress ---------------------------------------------------------------------------


class _Progress:
    """A one-line progress report on stderr (no dependency): rewritten in place on a TTY."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self.done = 0
        self.start = time.perf_counter()
        self.tty = enabled and sys.stderr.isatty()

    def show(self, what: str, *, step: bool = False) -> None:
        if step:
            self.done += 1
        if not self.enabled or not (self.tty or step):
            return  # off a terminal: one line per finished layer
        elapsed = time.perf_counter() - self.start
        line = f"quantize_model [{self.done}/{self.total} layers, {elapsed:.0f} s] {what}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


# -- activation statistics ----------------------------------------------------------------


class _Collector:
    """What one layer keeps of its calibration inputs.

    A bounded, deterministic sample of input rows (evenly spaced in each batch, at
    most ``per_batch`` per batch, so at most ``max_tokens`` in all) and, for methods
    that take a precomputed Hessian, the running sum ``Σ x xᵀ`` over *every* row.
    """

    def __init__(self, per_batch: int, hessian: bool) -> None:
        self.per_batch = per_batch
        self.want_hessian = hessian
        self.rows: list[torch.Tensor] = []
        self.xtx: torch.Tensor | None = None
        self.count = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        x = args[0].detach()
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        n = x.shape[0]
        if n == 0:
            return
        if self.want_hessian:
            xtx = x.T.to(torch.float64) @ x.to(torch.float64)
            self.xtx = xtx if self.xtx is None else self.xtx + xtx
        self.count += n
        self.rows.append(even_rows(x, self.per_batch).clone())

    def inputs(self) -> torch.Tensor | None:
        return torch.cat(self.rows) if self.rows else None

    def hessian(self) -> torch.Tensor | None:
        """``2 XᵀX / N`` over all rows seen (GPTQ's normalisation), float64."""
        if self.xtx is None or self.count == 0:
            return None
        return 2.0 * self.xtx / self.count


# -- the driver ---------------------------------------------------------------------------


def _as_batches(calibration: object) -> list[Any]:
    """Calibration data as a list of model inputs (one forward pass each)."""
    if isinstance(calibration, torch.Tensor):
        if calibration.ndim == 0 or calibration.shape[0] == 0:
            raise ValueError(
                f"calibration must hold at least one sequence, got shape {tuple(calibration.shape)}"
            )
        if calibration.ndim == 1:
            calibration = calibration.unsqueeze(0)
        return list(calibration.split(8))
    if isinstance(calibration, Mapping):
        return [calibration]
    if isinstance(calibration, (str, bytes)) or not isinstance(calibration, Iterable):
        raise TypeError(
            "calibration must be a tensor of input ids or an iterable of model inputs "
            f"(batches), got {type(calibration).__name__}"
        )
    batches = list(calibration)
    if not batches:
        raise ValueError("calibration is empty: give at least one batch of inputs")
    return batches


def _run(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, tuple):
        return model(*batch)
    return model(batch)


_BLOCK_PATHS = ("layers", "model.layers", "encoder.layer", "transformer.h", "model.decoder.layers")


def _find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The model's stack of blocks, if it exposes one (llmref, transformers, BERT)."""
    for path in _BLOCK_PATHS:
        mod: Any = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            return path, mod
    return None


class _Stop(Exception):
    pass


def _declared_linears(model: nn.Module) -> tuple[set[int], set[int]]:
    """Ids of the linear layers modules declare quantizable, and of those they keep float.

    Every module implementing :class:`~llmref.quant.QuantizableWeights` is asked
    first (it may restructure itself, e.g. unstack its experts into linear layers).
    """
    declared: set[int] = set()
    keep_float: set[int] = set()
    for owner in list(model.modules()):
        if not isinstance(owner, QuantizableWeights):
            continue
        chosen = {id(lin) for lin in owner.quantizable_linears().values()}
        declared |= chosen
        for sub in owner.modules():
            if isinstance(sub, nn.Linear) and id(sub) not in chosen:
                keep_float.add(id(sub))
    return declared, keep_float - declared


def _no_rows(collector: _Collector | None) -> bool:
    return collector is not None and collector.count == 0


def _call_method(
    config: QuantConfig,
    lin: nn.Linear,
    collector: _Collector | None,
    name: str,
    method: str | None = None,
) -> QuantizedTensor:
    method = method or config.method
    entry = METHODS[method]
    options = dict(config.options)
    group_size = options.pop("group_size", "default")
    kwargs: dict[str, Any] = {"fmt": config.fmt, "group_size": group_size}
    if method == config.method:
        kwargs.update(config.method_options)
    kwargs.update(options)
    inputs = None
    if collector is not None and entry.needs_inputs:
        hessian = collector.hessian() if collector.want_hessian else None
        if hessian is not None:
            kwargs["hessian"] = hessian
        else:
            inputs = collector.inputs()
    if entry.needs_inputs and inputs is None and "hessian" not in kwargs:
        raise ValueError(f"layer {name!r} received no calibration inputs")
    weight = lin.weight.detach()
    qt = entry(weight, inputs, **kwargs)
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(
            f"method {method!r} returned {type(qt).__name__}, expected a QuantizedTensor"
        )
    return qt


@torch.no_grad()
def _layer_sqnr(lin: nn.Linear, qlin: nn.Module, x: torch.Tensor | None) -> float:
    from .metrics import sqnr

    if x is None or x.shape[0] == 0:
        return math.nan
    x = x.to(lin.weight.dtype)
    return sqnr(lin(x), qlin(x))


def quantize_model(
    model: nn.Module,
    config: str | QuantConfig,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
    *,
    calibration: Any = None,
    progress: bool = False,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    sequential: bool | None = None,
) -> list[LayerReport]:
    """Replace ``nn.Linear`` layers by :class:`~llmref.quant.QuantLinear`, in place.

    Parameters
    ----------
    model : torch.nn.Module
        The model to modify.
    config : str or QuantConfig
        A format name (round-to-nearest with default options) or a
        :class:`~llmref.quant.QuantConfig` (format, method and their options).
    filter_fn : callable, optional
        ``filter_fn(qualified_name, linear) -> bool``; only layers for which it
        returns True are quantized. Default: every ``nn.Linear``, except those a
        module implementing :class:`~llmref.quant.QuantizableWeights` keeps
        float (a mixture of experts' router).
    calibration : tensor or iterable, optional
        Calibration data: a tensor of input ids ``(N, T)`` (split into batches
        of 8 sequences) or an iterable of batches, each passed to the model as
        ``model(batch)`` (a mapping as ``model(**batch)``, a tuple as
        ``model(*batch)``). Required by methods with ``needs_inputs``; with
        any method it also yields each layer's reconstruction SQNR.
    progress : bool, default False
        Print a progress line (layers done, elapsed time, current layer and
        calibration batch) on stderr.
    max_tokens : int or None, default 4096
        Most activation rows (tokens) kept per layer, sampled evenly from every
        calibration batch; they are the ``inputs`` given to methods that take
        activations (AWQ, SmoothQuant, LLM.int8()) and the rows the SQNR is
        measured on. ``None`` keeps all. Methods that take a precomputed
        ``hessian`` (GPTQ) get it accumulated over *all* rows regardless.
    sequential : bool, optional
        Process the model block by block (default: whenever the model exposes
        its blocks as an ``nn.ModuleList`` at ``layers``, ``model.layers``,
        ``encoder.layer`` or ``transformer.h`` and calibration is given).

    Returns
    -------
    list of LayerReport
        One record per replaced layer, in the order processed (module order).
        Layers whose shape the format cannot take (e.g. a ``group_size`` that
        does not divide ``in_features``) raise instead of being skipped
        silently.

    Raises
    ------
    TypeError
        If ``model`` is not a module, ``config`` is neither a str nor a
        QuantConfig, or ``calibration`` is not a tensor or iterable.
    ValueError
        If a selected layer cannot be quantized with ``config`` (the message
        names the layer), or the method needs calibration inputs and none are
        given.

    Notes
    -----
    **Block by block** (GPTQ's and AWQ's order): the inputs of the first block
    are captured once; then for each block ``i`` its float layers see the
    calibration inputs (hooks record them), its selected layers are quantized,
    and the block's outputs *with its quantized layers* become the inputs of
    block ``i + 1``. So each layer is calibrated on activations that already
    carry the error of the layers before it. Layers outside the blocks (if
    selected) are done last, in one pass over the whole model.

    **Modules that own their weights.** Before choosing layers, every module
    implementing :class:`~llmref.quant.QuantizableWeights` is asked for its
    quantizable linear layers: a mixture of experts
    (:class:`~llmref.models.MoE`) turns its stacked expert weights into one
    ``nn.Linear`` per expert matrix (same result) and keeps its router float, so
    each expert is quantized as a layer of its own, calibrated on the tokens
    routed to it. An expert that no calibration token reaches gets
    round-to-nearest instead of a method that needs inputs, with a
    ``RuntimeWarning`` (its report says ``method="rtn"``).

    **One pass** (models without visible blocks): hooks on every selected layer
    record the float model's activations over all batches, then every layer is
    quantized.

    **Memory bound.** Besides the model: block by block, the residual stream
    of all calibration tokens (``N·T·d_model`` floats, kept once and replaced
    block after block) plus, per selected layer of the current block, at most
    ``max_tokens × in_features`` float32 rows and, for methods taking a
    Hessian, one ``in_features²`` float64 matrix. One pass holds the rows and
    Hessians of every selected layer at once: ``max_tokens`` bounds them.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from llmref.quant import QuantConfig, quantize_model
    >>> model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))
    >>> report = quantize_model(model, QuantConfig("int4", {"group_size": 64}),
    ...                         filter_fn=lambda name, m: m.out_features > 10)
    >>> [(r.name, r.bytes_before, r.bytes_after) for r in report]
    [('0', 131072, 18432)]
    >>> type(model[0]).__name__, type(model[2]).__name__
    ('QuantLinear', 'Linear')

    With calibration data every layer's output error is recorded:

    >>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    >>> x = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    >>> report = quantize_model(model, "int8", calibration=[x])
    >>> [r.name for r in report], all(r.sqnr > 40 for r in report)  # dB, int8 per row
    (['0', '2'], True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(config, str):
        config = QuantConfig(config)
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a format name or a QuantConfig, got {type(config)}")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
    declared, keep_float = _declared_linears(model)
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear)
        and id(mod) not in keep_float
        and (filter_fn is None or filter_fn(name, mod))
    ]
    if any(not name for name, _ in targets):
        raise ValueError(
            "model is itself an nn.Linear and cannot be replaced in place; "
            "use QuantLinear.from_linear or a method of llmref.quant.METHODS"
        )
    if calibration is None:
        if config.needs_inputs:
            raise ValueError(
                f"method {config.method!r} needs calibration activations: pass "
                "calibration=<input ids or batches> to quantize_model"
            )
        batches: list[Any] = []
    else:
        batches = _as_batches(calibration)
    use_hessian = bool(batches) and METHODS[config.method].takes_hessian
    per_batch = (
        sys.maxsize if max_tokens is None else max(1, math.ceil(max_tokens / max(len(batches), 1)))
    )
    bar = _Progress(progress, len(targets))
    report: list[LayerReport] = []

    def quantize_group(group: list[tuple[str, nn.Linear]], stats: dict[str, _Collector]) -> None:
        for name, lin in group:
            bar.show(f"{config.method} {name}")
            collector = stats.get(name)
            start = time.perf_counter()
            method = config.method
            if id(lin) in declared and config.needs_inputs and _no_rows(collector):
                # an expert no calibration token was routed to: nothing to calibrate on
                warnings.warn(
                    f"layer {name!r} received no calibration inputs (an expert no calibration "
                    f"token was routed to); it is quantized by round-to-nearest instead of "
                    f"{config.method!r}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                method = "rtn"
            try:
                qt = _call_method(config, lin, collector, name, method)
                qlin = QuantLinear(
                    qt,
                    None if lin.bias is None else lin.bias.detach(),
                    backend=config.backend,
                )
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"cannot quantize layer {name!r} with {config}: {exc}") from exc
            seconds = time.perf_counter() - start
            error = _layer_sqnr(
                lin,
                QuantLinear(qt, qlin.bias, backend="reference"),  # the quantization's error only
                None if collector is None else collector.inputs(),
            )
            if collector is not None:
                stats.pop(name)  # free its rows and Hessian
            model.set_submodule(name, qlin)
            report.append(
                LayerReport(
                    name,
                    config.fmt,
                    lin.in_features,
                    lin.out_features,
                    lin.weight.numel() * lin.weight.element_size(),
                    qlin.qweight.nbytes,
                    qlin.kernel.name,
                    method,
                    error,
                    seconds,
                )
            )
            bar.show(f"{config.method} {name}", step=True)

    def collect(
        group: list[tuple[str, nn.Linear]], run_batch: Callable[[int], None], where: str
    ) -> dict[str, _Collector]:
        stats = {name: _Collector(per_batch, use_hessian) for name, _ in group}
        handles = [lin.register_forward_hook(stats[name]) for name, lin in group]
        try:
            for b in range(len(batches)):
                bar.show(f"calibrating {where}: batch {b + 1}/{len(batches)}")
                run_batch(b)
        finally:
            for h in handles:
                h.remove()
        return stats

    def whole_model(b: int) -> None:
        _run(model, batches[b])

    with torch.no_grad():
        if not batches:
            quantize_group(targets, {})
            bar.close()
            return report
        found = _find_blocks(model)
        if sequential is None:
            sequential = found is not None
        if sequential and found is None:
            raise ValueError(
                "sequential=True needs a model that exposes its blocks as an nn.ModuleList "
                "(layers, model.layers, encoder.layer or transformer.h)"
            )
        rest = targets
        if sequential and found is not None:
            path, blocks = found
            rest = _quantize_blocks(model, path, blocks, targets, batches, collect, quantize_group)
        if rest:
            quantize_group(rest, collect(rest, whole_model, "model"))
    bar.close()
    return report


def _quantize_blocks(
    model: nn.Module,
    path: str,
    blocks: nn.ModuleList,
    targets: Sequence[tuple[str, nn.Linear]],
    batches: list[Any],
    collect: Callable[..., dict[str, _Collector]],
    quantize_group: Callable[..., None],
) -> list[tuple[str, nn.Linear]]:
    """Block-by-block calibration; returns the selected layers outside the blocks."""
    prefixes = [f"{path}.{i}." for i in range(len(blocks))]
    per_block: list[list[tuple[str, nn.Linear]]] = [[] for _ in blocks]
    rest = []
    for name, lin in targets:
        for i, p in enumerate(prefixes):
            if name.startswith(p):
                per_block[i].append((name, lin))
                break
        else:
            rest.append((name, lin))
    if not any(per_block):
        return rest
    # Inputs of the first block, with the other arguments the model passes to it.
    captured: list[tuple[list[Any], dict[str, Any]]] = []

    def grab(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append((list(args), dict(kwargs)))
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for batch in batches:
            try:
                _run(model, batch)
            except _Stop:
                pass
    finally:
        handle.remove()
    if len(captured) != len(batches):
        raise RuntimeError(f"the model did not call {path}.0 once per calibration batch")

    def block_output(i: int, b: int) -> torch.Tensor:
        args, kwargs = captured[b]
        out = blocks[i](*args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    last = max(i for i, group in enumerate(per_block) if group)
    for i, group in enumerate(per_block):
        if group:
            stats = collect(group, lambda b, i=i: block_output(i, b), f"{path}.{i}")
            quantize_group(group, stats)
        if i == last:
            break
        for b in range(len(batches)):  # inputs of the next block, through the quantized one
            captured[b][0][0] = block_output(i, b)
    return rest
