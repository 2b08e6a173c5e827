"""Model-level quantization: swap ``nn.Linear`` layers for :class:`~llmref.quant.QuantLinear`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import nn

from .formats import FORMATS
from .kernels import KERNELS
from .modules import QuantLinear

__all__ = ["LayerReport", "QuantConfig", "quantize_model"]


def _check_options(fmt: str, options: Mapping[str, Any]) -> None:
    entry = FORMATS[fmt]
    accepted = {
        p.name
        for p in inspect.signature(entry.fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(
            f"format {fmt!r} does not accept option(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(sorted(accepted)) or 'none'}"
        )


@dataclass(frozen=True)
class QuantConfig:
    """What :func:`~llmref.quant.quantize_model` does to each selected ``nn.Linear``.

    Parameters
    ----------
    fmt : str
        A format in :data:`llmref.quant.FORMATS`.
    options : mapping, optional
        Options of the format (``group_size``, ``symmetric`` ...).
    backend : str, default "auto"
        Kernel of the resulting :class:`~llmref.quant.QuantLinear` layers.

    Raises
    ------
    KeyError
        If ``fmt`` is not registered.
    TypeError
        If an option is not accepted by ``fmt``.
    ValueError
        If ``backend`` is unknown.

    Examples
    --------
    >>> from llmref.quant import QuantConfig
    >>> QuantConfig("int4", {"group_size": 128})
    QuantConfig(fmt='int4', options={'group_size': 128}, backend='auto')
    """

    fmt: str
    options: Mapping[str, Any] = field(default_factory=dict)
    backend: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.fmt, str):
            raise TypeError(f"fmt must be a str, got {type(self.fmt).__name__}")
        _check_options(self.fmt, self.options)
        if self.backend != "auto" and self.backend not in KERNELS:
            known = ", ".join(repr(k) for k in ("auto", *KERNELS))
            raise ValueError(f"backend must be one of {known}, got {self.backend!r}")
        object.__setattr__(self, "options", dict(self.options))


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


def quantize_model(
    model: nn.Module,
    config: str | QuantConfig,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
) -> list[LayerReport]:
    """Replace ``nn.Linear`` layers by :class:`~llmref.quant.QuantLinear`, in place.

    Parameters
    ----------
    model : torch.nn.Module
        The model to modify.
    config : str or QuantConfig
        A format name (default options) or a :class:`~llmref.quant.QuantConfig`.
    filter_fn : callable, optional
        ``filter_fn(qualified_name, linear) -> bool``; only layers for which it
        returns True are quantized. Default: every ``nn.Linear``.

    Returns
    -------
    list of LayerReport
        One record per replaced layer, in module order. Layers whose shape
        the format cannot take (e.g. a ``group_size`` that does not divide
        ``in_features``) raise instead of being skipped silently.

    Raises
    ------
    TypeError
        If ``model`` is not a module or ``config`` is neither a str nor a
        QuantConfig.
    ValueError
        If a selected layer cannot be quantized with ``config``.

    Examples
    --------
    >>> from torch import nn
    >>> from llmref.quant import QuantConfig, quantize_model
    >>> model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))
    >>> report = quantize_model(model, QuantConfig("int4", {"group_size": 64}),
    ...                         filter_fn=lambda name, m: m.out_features > 10)
    >>> [(r.name, r.bytes_before, r.bytes_after) for r in report]
    [('0', 131072, 18432)]
    >>> type(model[0]).__name__, type(model[2]).__name__
    ('QuantLinear', 'Linear')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(config, str):
        config = QuantConfig(config)
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a format name or a QuantConfig, got {type(config)}")
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and (filter_fn is None or filter_fn(name, mod))
    ]
    report: list[LayerReport] = []
    for name, lin in targets:
        try:
            qlin = QuantLinear.from_linear(
                lin, config.fmt, backend=config.backend, **config.options
            )
        except ValueError as exc:
            raise ValueError(f"cannot quantize layer {name!r} with {config}: {exc}") from exc
        if not name:
            raise ValueError(
                "model is itself an nn.Linear and cannot be replaced in place; "
                "use QuantLinear.from_linear"
            )
        parent = model
        *path, leaf = name.split(".")
        for part in path:
            parent = getattr(parent, part)
        setattr(parent, leaf, qlin)
        before = lin.weight.numel() * lin.weight.element_size()
        report.append(
            LayerReport(
                name,
                config.fmt,
                lin.in_features,
                lin.out_features,
                before,
                qlin.qweight.nbytes,
                qlin.kernel.name,
            )
        )
    return report
