"""Weight-only quantized linear layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_tensor
from .formats import quantize
from .kernels import KernelSpec, check_backend, select_kernel
from .tensor import INPUT_SCALE, QuantizedTensor

__all__ = ["QuantLinear", "float_weight"]


class QuantLinear(nn.Module):
    """A linear layer with a quantized weight (activations float unless the weight asks otherwise).

    Parameters
    ----------
    qweight : QuantizedTensor
        The quantized weight, shape ``(out_features, in_features)``.
    bias : torch.Tensor, optional
        Float bias of shape ``(out_features,)``.
    backend : str, default "auto"
        Matmul kernel (see :mod:`llmref.quant.kernels`): ``"auto"`` (exact:
        the first kernel, in the static per-ISA order
        :data:`~llmref.quant.kernels.AUTO_ORDERS`, that equals the reference
        with the activation semantics the weight declares, else the
        reference), ``"fast"`` (speed over exactness, opt-in: int8
        activations, and bfloat16 on CPUs with native bfloat16; see
        :data:`~llmref.quant.kernels.FAST_ORDERS` for its measured error),
        ``"reference"`` (dequantize, then :func:`torch.nn.functional.linear`;
        every format) or a kernel's name in
        :data:`~llmref.quant.kernels.KERNELS`.

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
        is unknown (a named kernel that does not support the weight fails at
        the first call).

    Notes
    -----
    The storage tensors of the weight are buffers named ``weight_<name>``
    (``weight_codes``, ``weight_scale`` ...) and the format metadata is the
    module's extra state, so ``state_dict``/``load_state_dict`` round-trip
    bit-exactly. A fast kernel's repacked weight is built on first use and
    not saved.

    **Input scales (AWQ, SmoothQuant).** When the weight has an
    ``input_scale`` :math:`s` (its codes store :math:`W \\operatorname{diag}(s)`),
    the layer computes :math:`\\operatorname{kernel}(x / s)` on the stored
    codes, which equals :math:`x W^\\top` up to quantization error. The
    division is *not* fused into the previous layer: it costs one
    elementwise divide of the input (``M * in_features`` operations, plus
    reading and writing ``x`` once) per call. Deployments fold :math:`1/s`
    into the preceding RMSNorm/LayerNorm weight (and bias) or the previous
    linear layer's output rows, as AWQ and SmoothQuant do, which makes it
    free; that rewrites a neighbouring layer and is left to the model-level
    code.

    **Quantized activations.** A weight whose ``options["act_quant"]`` is set
    (:func:`~llmref.quant.smoothquant`: ``"per_token_int8"``;
    :func:`~llmref.quant.llm_int8`: ``"llm_int8"``) also quantizes the
    activations: ``backend="auto"`` picks the matching integer kernel
    (``"int8_dynamic"``, ``"llm_int8"``), and the reference kernel simulates
    it in float.

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
        check_backend(backend)
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
        self._kernel_cache: tuple[Any, KernelSpec, dict[str, Any]] | None = None

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
    def kernel(self) -> KernelSpec:
        """The kernel the layer uses on the device of its buffers."""
        return self._prepared()[0]

    @property
    def input_scale(self) -> torch.Tensor | None:
        """The weight's per-input-feature scale ``s`` (the input is divided by it), or None."""
        return getattr(self, f"weight_{INPUT_SCALE}") if INPUT_SCALE in self._names else None

    def _prepared(self) -> tuple[KernelSpec, dict[str, Any]]:
        # .to()/load_state_dict reset the cache; the codes' address catches a swapped buffer
        codes = self._buffers["weight_codes"]
        key = (self.backend, None if codes is None else codes.data_ptr())
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            qw = self.qweight.without_input_scale()  # kernels see the stored codes only
            kernel = select_kernel(qw, qw.device, self.backend)
            self._kernel_cache = (key, kernel, kernel.prepare(qw))
        return self._kernel_cache[1], self._kernel_cache[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``x W^T + b`` with the quantized ``W`` (``x`` divided by ``input_scale`` first).

        Parameters
        ----------
        x : torch.Tensor
            Input of shape ``(*, in_features)``, floating point.

        Returns
        -------
        torch.Tensor
            Shape ``(*, out_features)``, dtype of ``x``.
        """
        # One condition on the hot path (this runs once per layer per token); the
        # detailed checks only when it fails.
        if not (
            isinstance(x, torch.Tensor)
            and x.is_floating_point()
            and x.ndim
            and x.shape[-1] == self.in_features
        ):
            self._reject_input(x)
        kernel, state = self._prepared()
        x2 = x if x.ndim == 2 else x.reshape(-1, self.in_features)
        s = self.input_scale
        if s is not None:  # codes store W diag(s): y = (x / s) dequant(codes)^T
            x2 = x2 / s.to(x2.dtype)
        y = kernel.run(x2, state) if x2.shape[0] else x2.new_zeros(0, self.out_features)
        if x.ndim != 2:
            y = y.reshape(*x.shape[:-1], self.out_features)
        bias = self.bias
        return y if bias is None else y + bias.to(y.dtype)

    def _reject_input(self, x: object) -> None:
        check_tensor("x", x)
        assert isinstance(x, torch.Tensor)
        if not x.is_floating_point():
            raise TypeError(f"x must be floating point, got {x.dtype}")
        raise ValueError(
            f"x must have last dimension in_features={self.in_features}, got shape {tuple(x.shape)}"
        )

    def _apply(self, fn: Any, recurse: bool = True) -> QuantLinear:
        self._kernel_cache = None  # moved or cast: repack for the new buffers
        return super()._apply(fn, recurse)

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


def float_weight(linear: nn.Module) -> torch.Tensor:
    """The float weight ``W``, ``(out_features, in_features)``, of a linear layer.

    For code that needs the matrix itself, not the layer's product: a slice of a
    fused projection's rows, or a weight absorbed into another product (MLA).
    Reading ``.weight`` instead fails on a :class:`QuantLinear`, which has none.

    Parameters
    ----------
    linear : torch.nn.Module
        A :class:`QuantLinear`, or a layer with a 2-D ``weight`` (``nn.Linear``).

    Returns
    -------
    torch.Tensor
        ``linear.weight`` itself for a float layer (no copy: gradients flow); for a
        :class:`QuantLinear`, its dequantized weight in the original dtype, with
        ``1 / input_scale`` applied (:meth:`~llmref.quant.QuantizedTensor.dequantize`):
        the ``W`` its forward multiplies by.

    Raises
    ------
    TypeError
        If ``linear`` is neither.

    Notes
    -----
    A weight that also quantizes activations (SmoothQuant, LLM.int8()) gives its
    float ``W``: a product computed from it leaves out the activations' rounding that
    the layer's own call applies.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> lin = nn.Linear(64, 8)
    >>> float_weight(lin) is lin.weight
    True
    >>> q = QuantLinear.from_linear(lin, "int8")
    >>> err = (float_weight(q) - lin.weight).abs().max() / lin.weight.abs().max()
    >>> float_weight(q).shape, bool(err <= 1 / 254)  # int8: half a step of amax / 127
    (torch.Size([8, 64]), True)
    """
    if isinstance(linear, QuantLinear):
        return linear.qweight.dequantize()
    weight = getattr(linear, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 2:
        return weight
    raise TypeError(
        "linear must be a QuantLinear or a layer with a 2-D weight (nn.Linear), got "
        f"{type(linear).__name__}"
    )
