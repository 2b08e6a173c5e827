"""QuantizedTensor: packed codes, scales and the metadata to decode them."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .registry import FORMATS

__all__ = ["QuantizedTensor"]

_META_KEY = "__meta__"
INPUT_SCALE = "input_scale"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype name {name!r} in quantized state")
    return dtype


class QuantizedTensor:
    """A quantized tensor: named storage tensors plus format and options.

    Built by :func:`llmref.quant.quantize`; :meth:`~llmref.quant.QuantizedTensor.dequantize` (or
    :func:`llmref.quant.dequantize`) reconstructs the values.

    Parameters
    ----------
    fmt : str
        Name of the format in :data:`llmref.quant.FORMATS`.
    shape : tuple of int
        Shape of the original tensor.
    dtype : torch.dtype
        dtype of the original tensor (what
        :meth:`~llmref.quant.QuantizedTensor.dequantize` returns).
    tensors : mapping of str to torch.Tensor
        The storage: packed ``codes`` and the format's scales (``scale``,
        ``absmax``, ``zero_point``, ``d`` ...). Every byte counts in
        :attr:`~llmref.quant.QuantizedTensor.nbytes`. An optional
        ``input_scale`` (float32, ``(shape[-1],)``, positive) marks a weight
        whose codes store :math:`W \\operatorname{diag}(s)` (AWQ,
        SmoothQuant): see :attr:`~llmref.quant.QuantizedTensor.input_scale`.
    options : mapping of str to object
        JSON-serialisable options the tensors were made with
        (``group_size``, ``bits`` ...).

    Attributes
    ----------
    fmt, shape, dtype, tensors, options
        As passed.

    Raises
    ------
    ValueError
        If ``fmt`` is empty, a tensor is named ``"__meta__"`` or
        ``input_scale`` is not a positive, finite floating tensor of shape
        ``(shape[-1],)``.
    TypeError
        If ``dtype`` is not a torch.dtype or a storage value is not a tensor.

    Notes
    -----
    :meth:`~llmref.quant.QuantizedTensor.state_dict` returns only tensors (the
    metadata is JSON stored in a uint8 tensor under ``"__meta__"``, like
    bitsandbytes' packed quant state),
    so it can be saved with :func:`torch.save` or ``safetensors`` and restored
    bit-exactly with :meth:`~llmref.quant.QuantizedTensor.from_state_dict`.

    Examples
    --------
    >>> import torch
    >>> from llmref.quant import quantize
    >>> qt = quantize(torch.randn(8, 64), "nf4", group_size=64)
    >>> qt
    QuantizedTensor('nf4', shape=(8, 64), dtype=torch.float32, codes=uint8[256], absmax=float32[8])
    >>> qt.nbytes, qt.bits_per_weight
    (288, 4.5)
    >>> qt2 = QuantizedTensor.from_state_dict(qt.state_dict())
    >>> bool(torch.equal(qt2.dequantize(), qt.dequantize()))
    True
    """

    def __init__(
        self,
        fmt: str,
        shape: tuple[int, ...] | torch.Size,
        dtype: torch.dtype,
        tensors: Mapping[str, torch.Tensor],
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(fmt, str) or not fmt:
            raise ValueError(f"fmt must be a non-empty str, got {fmt!r}")
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"tensors[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
            if name == _META_KEY:
                raise ValueError(f"{_META_KEY!r} is reserved")
        shape = tuple(int(s) for s in shape)
        s_in = tensors.get(INPUT_SCALE)
        if s_in is not None:
            n = shape[-1] if shape else 0
            if not s_in.is_floating_point() or tuple(s_in.shape) != (n,):
                raise ValueError(
                    f"tensors[{INPUT_SCALE!r}] must be a floating tensor of shape ({n},) "
                    f"(one scale per input feature), got {s_in.dtype} {tuple(s_in.shape)}"
                )
            if not bool(torch.all(torch.isfinite(s_in) & (s_in > 0))):
                raise ValueError(f"tensors[{INPUT_SCALE!r}] must be finite and positive")
        self.fmt = fmt
        self.shape = shape
        self.dtype = dtype
        self.tensors: dict[str, torch.Tensor] = dict(tensors)
        self.options: dict[str, Any] = dict(options or {})

    # ------------------------------------------------------------------ sizes
    @property
    def numel(self) -> int:
        """Number of elements of the original tensor."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of storage: codes plus every scale, zero point and offset."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def bits_per_weight(self) -> float:
        """Storage bits per element, ``8 * nbytes / numel`` (scales included)."""
        return 8 * self.nbytes / self.numel

    @property
    def device(self) -> torch.device:
        """Device of the storage tensors."""
        return next(iter(self.tensors.values())).device

    @property
    def input_scale(self) -> torch.Tensor | None:
        """Per-input-feature scales ``s`` folded into the codes, or None.

        When present (AWQ, SmoothQuant) the codes store :math:`W
        \\operatorname{diag}(s)` and the weight the tensor stands for is
        :math:`\\operatorname{dequant}(\\text{codes}) \\operatorname{diag}(1/s)`,
        which is what :meth:`~llmref.quant.QuantizedTensor.dequantize` returns;
        :class:`~llmref.quant.QuantLinear` instead divides its input by ``s``
        and multiplies by the stored codes, :math:`(x/s) \\,
        \\operatorname{dequant}(\\text{codes})^\\top`.
        """
        return self.tensors.get(INPUT_SCALE)

    def without_input_scale(self) -> QuantizedTensor:
        """The stored codes alone: a view of this tensor without ``input_scale``.

        Returns
        -------
        QuantizedTensor
            Sharing the storage tensors; its
            :meth:`~llmref.quant.QuantizedTensor.dequantize` gives
            :math:`W \\operatorname{diag}(s)` (itself when there is no
            ``input_scale``).
        """
        if INPUT_SCALE not in self.tensors:
            return self
        tensors = {k: v for k, v in self.tensors.items() if k != INPUT_SCALE}
        return QuantizedTensor(self.fmt, self.shape, self.dtype, tensors, self.options)

    def with_input_scale(self, input_scale: torch.Tensor) -> QuantizedTensor:
        """A copy whose codes are declared to store :math:`W \\operatorname{diag}(s)`.

        Parameters
        ----------
        input_scale : torch.Tensor
            ``s``, positive and finite, shape ``(shape[-1],)``; stored as
            float32 under ``"input_scale"``.

        Returns
        -------
        QuantizedTensor
            Sharing the other storage tensors.

        Raises
        ------
        ValueError
            If ``input_scale`` has the wrong shape or a non-positive value.
        """
        tensors = {**self.tensors, INPUT_SCALE: input_scale.detach().to(torch.float32)}
        return QuantizedTensor(self.fmt, self.shape, self.dtype, tensors, self.options)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    # ---------------------------------------------------------------- actions
    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Reconstruct the tensor.

        Parameters
        ----------
        dtype : torch.dtype, optional
            Output dtype; defaults to the original ``dtype``.

        Returns
        -------
        torch.Tensor
            Of shape ``shape``: the effective weight, with ``1 / input_scale``
            applied when the tensor has one.
        """
        out = FORMATS[self.fmt].dequantize(self).reshape(self.shape)
        s = self.input_scale
        if s is not None:  # codes store W diag(s): the weight is dequant(codes) diag(1/s)
            out = out.to(torch.float32) / s.to(device=out.device, dtype=torch.float32)
        return out.to(dtype or self.dtype)

    def to(self, device: torch.device | str) -> QuantizedTensor:
        """A copy with the storage moved to ``device``.

        Parameters
        ----------
        device : torch.device or str
            Target device.

        Returns
        -------
        QuantizedTensor
        """
        moved = {k: v.to(device) for k, v in self.tensors.items()}
        return QuantizedTensor(self.fmt, self.shape, self.dtype, moved, self.options)

    def equal(self, other: object) -> bool:
        """Bit-exact equality of format, metadata and every storage tensor.

        Parameters
        ----------
        other : object
            Another QuantizedTensor.

        Returns
        -------
        bool
        """
        if not isinstance(other, QuantizedTensor):
            return False
        same_meta = (self.fmt, self.shape, self.dtype, self.options) == (
            other.fmt,
            other.shape,
            other.dtype,
            other.options,
        )
        if not same_meta or self.tensors.keys() != other.tensors.keys():
            return False
        for k, a in self.tensors.items():
            b = other.tensors[k]
            if a.dtype != b.dtype or a.shape != b.shape:
                return False
            if not torch.equal(a.view(torch.uint8), b.view(torch.uint8)):
                return False
        return True

    # ------------------------------------------------------------ persistence
    def metadata(self) -> dict[str, Any]:
        """The JSON-serialisable description stored next to the tensors.

        Returns
        -------
        dict
            ``fmt``, ``shape``, ``dtype`` and ``options``.
        """
        return {
            "fmt": self.fmt,
            "shape": list(self.shape),
            "dtype": _dtype_name(self.dtype),
            "options": self.options,
        }

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """All storage tensors plus the metadata as a uint8 JSON tensor.

        Parameters
        ----------
        prefix : str, default ""
            Prepended to every key.

        Returns
        -------
        dict of str to torch.Tensor
            Contiguous tensors, safe for ``safetensors.torch.save_file``.
        """
        meta = json.dumps(self.metadata(), sort_keys=True).encode()
        out = {prefix + k: v.contiguous() for k, v in self.tensors.items()}
        out[prefix + _META_KEY] = torch.tensor(list(meta), dtype=torch.uint8)
        return out

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, torch.Tensor], prefix: str = ""
    ) -> QuantizedTensor:
        """Rebuild a QuantizedTensor from :meth:`~llmref.quant.QuantizedTensor.state_dict`'s output.

        Parameters
        ----------
        state_dict : mapping of str to torch.Tensor
            As returned by :meth:`~llmref.quant.QuantizedTensor.state_dict`
            (possibly with other keys).
        prefix : str, default ""
            The prefix used when saving.

        Returns
        -------
        QuantizedTensor

        Raises
        ------
        KeyError
            If the metadata tensor is missing.
        """
        key = prefix + _META_KEY
        if key not in state_dict:
            raise KeyError(f"no {key!r} entry: not a QuantizedTensor state dict")
        meta = json.loads(bytes(state_dict[key].to(torch.uint8).tolist()).decode())
        tensors = {
            k[len(prefix) :]: v
            for k, v in state_dict.items()
            if k.startswith(prefix) and k != key and "." not in k[len(prefix) :]
        }
        return cls(
            meta["fmt"],
            tuple(meta["shape"]),
            _dtype_from_name(meta["dtype"]),
            tensors,
            meta["options"],
        )

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{k}={_dtype_name(v.dtype)}[{'x'.join(map(str, v.shape))}]"
            for k, v in self.tensors.items()
        )
        return f"QuantizedTensor({self.fmt!r}, shape={self.shape}, dtype={self.dtype}, {parts})"
