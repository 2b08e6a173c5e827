"""How a module declares which of its weights :func:`~llmref.quant.quantize_model` may quantize.

``llmref.quant`` knows ``nn.Linear`` layers only. A module whose weights live in
another form (a mixture of experts stores every expert's matrices stacked in 3-D
parameters) or that holds linear layers that must stay float (a router: its
discrete top-k choice is sensitive to small logit changes, so AutoAWQ, AutoGPTQ and
vLLM keep it unquantized) implements :class:`QuantizableWeights`. The protocol lives
here so that ``llmref.quant`` never imports the models that implement it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from torch import nn

__all__ = ["QuantizableWeights"]


@runtime_checkable
class QuantizableWeights(Protocol):
    """A module that declares the linear layers inside it that may be quantized.

    :func:`~llmref.quant.quantize_model` calls :meth:`quantizable_linears` on
    every module that has it, before choosing layers: the ``nn.Linear`` layers
    returned are candidates (``filter_fn`` still applies), every other
    ``nn.Linear`` inside the module stays float.

    Examples
    --------
    >>> from torch import nn
    >>> from llmref.quant import QuantizableWeights, quantize_model
    >>> class Gated(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.gate, self.proj = nn.Linear(8, 1), nn.Linear(8, 8)
    ...     def quantizable_linears(self):
    ...         return {"proj": self.proj}  # the gate stays float
    ...     def forward(self, x):
    ...         return self.proj(x) * self.gate(x).sigmoid()
    >>> isinstance(Gated(), QuantizableWeights)
    True
    >>> model = nn.Sequential(Gated())
    >>> [r.name for r in quantize_model(model, "int8")]
    ['0.proj']
    """

    def quantizable_linears(self) -> Mapping[str, nn.Linear]:
        """The ``nn.Linear`` layers that may be quantized, by name relative to this module.

        A module that stores weights in another form exposes them here as
        ``nn.Linear`` layers, restructuring itself so that its forward uses them
        (with the same result); calling it again returns the same layers.

        Returns
        -------
        mapping of str to torch.nn.Linear
        """
        ...
