"""Worked example: a new quantized-linear kernel, ``toy_int8_rows`` (docs/extending/quant.md).

For symmetric int8 weights with one scale per output row it multiplies ``x`` by the
int8 codes converted to float32 and scales the result per row afterwards:
``y = (x C^T) diag(s)``. Float activations, so it is exact for weight-only weights
(only the rounding order differs from the reference). ``backend="auto"`` keeps its
static order (:data:`~llmref.quant.kernels.AUTO_ORDERS`), so the kernel runs when
named; registering it (one line in ``tests/conftest.py``) is what makes the kernel
contract suite check it against the reference and check it refuses other weights.
"""

from __future__ import annotations

import torch

from llmref.quant import QuantizedTensor
from llmref.quant.kernels import KERNELS, KernelSpec, activation_semantics


def _supports(qt: QuantizedTensor, device: torch.device) -> bool:
    o = qt.options
    return (
        activation_semantics(qt) == "float"
        and len(qt.shape) == 2
        and qt.fmt in ("int8", "int")
        and o.get("bits") == 8
        and o.get("symmetric") is True
        and int(o.get("group_size", 0)) == qt.shape[1]
    )


def _prepare(qt: QuantizedTensor) -> dict[str, torch.Tensor]:
    return {"codes_t": qt["codes"].reshape(qt.shape).to(torch.float32).t(), "scale": qt["scale"]}


def _run(x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
    y = x.to(torch.float32) @ state["codes_t"]  # integers times x: exact products
    return (y * state["scale"]).to(x.dtype)


KERNELS.add(
    KernelSpec(
        name="toy_int8_rows",
        supports=_supports,
        prepare=_prepare,
        run=_run,
        exact=True,
        activations="float",
        reference="llmref.quant.dequantize",
    )
)
