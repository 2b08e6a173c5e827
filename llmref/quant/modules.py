"""Weight-only quantized linear layers and in-place model quantization."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from .._checks import check_tensor
from .formats import FORMATS, quantize
from .kernels import KERNELS, Kernel, select_kernel
from .tensor import QuantizedTensor

__all__ = ["LayerReport", "QuantConfig", "QuantLinear", "quantize_model"]


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


class QuantLinear(nn.Module):
    """A linear layer with a quantized weight; activations stay floating point.

    Parameters
    ----------
    qweight : QuantizedTensor
        The quantized weight, shape ``(out_features, in_features)``.
    bias : torch.Tensor, optional
        Float bias of shape ``(out_features,)``.
    backend : str, default "auto"
        Matmul kernel (see :mod:`llmref.quant.kernels`): ``"reference"``
        (dequantize, then :func:`torch.nn.functional.linear`; every format),
        a fast kernel's name, or ``"auto"`` (the fastest kernel that supports
        the weight's format and options on the current device, else the
        reference).

    Attributes
    ----------
    in_features, out_features : int
        Sizes of the layer.
    fmt : str
        The weight's format.

    Raises
    ------
    TypeError
        If ``qweight`` is not a QuantizedTensor or ``bias`` not a tensor.
    ValueError
        If the weight is not 2-D, the bias has the wrong shape or ``backend``
        is unknown.

    Notes
    -----
    The storage tensors of the weight are buffers named ``weight_<name>``
    (``weight_codes``, ``weight_scale`` ...) and the format metadata is the
    module's extra state, so ``state_dict``/``load_state_dict`` round-trip
    bit-exactly. A fast kernel's repacked weight is built on first use and
    not saved.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from llmref.quant import QuantLinear
    >>> lin = nn.Linear(256, 64)
    >>> qlin = QuantLinear.from_linear(lin, "int4", group_size=64)
    >>> x = torch.randn(3, 256)
    >>> qlin(x).shape
    torch.Size([3, 64])
    >>> ref = QuantLinear.from_linear(lin, "int4", group_size=64, backend="reference")
    >>> bool(torch.allclose(qlin(x), ref(x), atol=0.05))
    True
    """

    def __init__(
        self,
        qweight: QuantizedTensor,
        bias: torch.Tensor | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(qweight, QuantizedTensor):
            raise TypeError(f"qweight must be a QuantizedTensor, got {type(qweight).__name__}")
        if len(qweight.shape) != 2:
            raise ValueError(f"qweight must be 2-D (out, in), got shape {qweight.shape}")
        if backend != "auto" and backend not in KERNELS:
            known = ", ".join(repr(k) for k in ("auto", *KERNELS))
            raise ValueError(f"backend must be one of {known}, got {backend!r}")
        self.out_features, self.in_features = qweight.shape
        self.backend = backend
        self._meta = qweight.metadata()
        self._names = list(qweight.tensors)
        for name, t in qweight.tensors.items():
            self.register_buffer(f"weight_{name}", t)
        if bias is not None:
            check_tensor("bias", bias, ndim=1)
            if bias.shape[0] != self.out_features:
                raise ValueError(
                    f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}"
                )
            self.bias: nn.Parameter | None = nn.Parameter(bias.detach().clone())
        else:
            self.register_parameter("bias", None)
        self._kernel_cache: tuple[Any, Kernel, dict[str, Any]] | None = None

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, fmt: str, *, backend: str = "auto", **options: Any
    ) -> QuantLinear:
        """Quantize an ``nn.Linear``'s weight into a new QuantLinear.

        Parameters
        ----------
        linear : torch.nn.Linear
            Source layer (unchanged).
        fmt : str
            Format name in :data:`llmref.quant.FORMATS`.
        backend : str, default "auto"
            See :class:`~llmref.quant.QuantLinear`.
        **options
            Format options (``group_size`` ...).

        Returns
        -------
        QuantLinear
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        qweight = quantize(linear.weight.detach(), fmt, **options)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(qweight, bias, backend=backend)

    @property
    def fmt(self) -> str:
        """Format of the weight."""
        return str(self._meta["fmt"])

    @property
    def qweight(self) -> QuantizedTensor:
        """The weight as a :class:`~llmref.quant.QuantizedTensor` (views of the buffers)."""
        tensors = {n: getattr(self, f"weight_{n}") for n in self._names}
        m = self._meta
        dtype = getattr(torch, m["dtype"])
        return QuantizedTensor(m["fmt"], tuple(m["shape"]), dtype, tensors, m["options"])

    @property
    def kernel(self) -> Kernel:
        """The kernel the layer uses on the device of its buffers."""
        return self._prepared()[0]

    def _prepared(self) -> tuple[Kernel, dict[str, Any]]:
        buffers = [getattr(self, f"weight_{n}") for n in self._names]
        key = (self.backend, *((t.device, t.data_ptr()) for t in buffers))
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            qw = self.qweight
            kernel = select_kernel(qw, qw.device, self.backend)
            self._kernel_cache = (key, kernel, kernel.prepare(qw))
        return self._kernel_cache[1], self._kernel_cache[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``x W^T + b`` with the quantized ``W``.

        Parameters
        ----------
        x : torch.Tensor
            Input of shape ``(*, in_features)``, floating point.

        Returns
        -------
        torch.Tensor
            Shape ``(*, out_features)``, dtype of ``x``.
        """
        check_tensor("x", x)
        if not x.is_floating_point():
            raise TypeError(f"x must be floating point, got {x.dtype}")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have last dimension in_features={self.in_features}, got shape "
                f"{tuple(x.shape)}"
            )
        kernel, state = self._prepared()
        x2 = x.reshape(-1, self.in_features)
        y = kernel.run(x2, state) if x2.shape[0] else x2.new_zeros(0, self.out_features)
        y = y.reshape(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def dequantized_linear(self) -> nn.Linear:
        """A float ``nn.Linear`` with the dequantized weight (for comparisons).

        Returns
        -------
        torch.nn.Linear
        """
        w = self.qweight.dequantize()
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        lin = lin.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def get_extra_state(self) -> dict[str, Any]:
        """Format metadata saved in the state dict."""
        return {"meta": self._meta, "names": list(self._names)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the metadata saved by :meth:`~llmref.quant.QuantLinear.get_extra_state`."""
        self._meta = dict(state["meta"])
        self._names = list(state["names"])
        self._kernel_cache = None

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kw: Any) -> None:
        # The storage tensors depend on the format: adopt the names and sizes being loaded.
        extra = state_dict.get(f"{prefix}_extra_state")
        if extra is not None:
            for n in self._names:
                delattr(self, f"weight_{n}")
            self.set_extra_state(extra)
        for n in self._names:
            key = f"{prefix}weight_{n}"
            if key in state_dict:
                self.register_buffer(f"weight_{n}", torch.empty_like(state_dict[key]))
        self._kernel_cache = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kw)

    def extra_repr(self) -> str:
        qw = self.qweight
        opts = ", ".join(f"{k}={v}" for k, v in qw.options.items())
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"fmt={self.fmt!r}, {opts}, bias={self.bias is not None}, backend={self.backend!r}"
        )


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
