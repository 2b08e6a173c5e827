"""Comparison tolerances, stated once per dtype for the whole test suite.

``TOLERANCES[dtype]`` is ``(atol, rtol)`` for comparing a result computed in
``dtype`` with the float64 reference, on inputs drawn from ``randn`` (outputs
of order 1). float32 and float64 allow accumulation over a few hundred terms;
bfloat16 (8 mantissa bits, eps 2**-8 = 3.9e-3) and float16 (11 bits, eps
2**-11 = 4.9e-4) allow a few units of the input/output rounding, since inputs
are rounded to those dtypes before the computation starts.
"""

from __future__ import annotations

import torch

TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (2e-6, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (3e-3, 3e-3),
}

LOW_PRECISION = (torch.bfloat16, torch.float16)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Assert ``actual`` equals ``expected`` within the tolerance for ``dtype``."""
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.to(torch.float64), expected.to(torch.float64), atol=atol, rtol=rtol
    )
