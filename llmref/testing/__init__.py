"""Test support shared by llmref's own tests and by users testing their own code.

:mod:`llmref.testing.equality` states llmref's one equality policy: bit-for-bit
only between identical operation sequences, otherwise a bound derived from the
computation (float32/float64) or FlashAttention's relative rule (bfloat16,
float16). The contract suites that run over every registered variant will live
here too.
"""

from .equality import (
    BOUND_FACTOR,
    GRADIENT_FACTOR,
    LOW_PRECISION,
    LOW_PRECISION_FLOOR_ULPS,
    OUTPUT_FACTOR,
    assert_identical,
    assert_low_precision,
    assert_lower,
    assert_within,
    attention_scale,
    decisive_steps,
    eps,
    forward_scale,
    matmul_scale,
)

__all__ = [
    "BOUND_FACTOR",
    "GRADIENT_FACTOR",
    "LOW_PRECISION",
    "LOW_PRECISION_FLOOR_ULPS",
    "OUTPUT_FACTOR",
    "assert_identical",
    "assert_low_precision",
    "assert_lower",
    "assert_within",
    "attention_scale",
    "decisive_steps",
    "eps",
    "forward_scale",
    "matmul_scale",
]
