"""Suite-wide pytest configuration: the header names the machine the numbers came from.

Results under the equality policy (:mod:`llmref.testing.equality`) must hold on
any x86-64 CPU, but a failure is only reproducible with the same kernels: the
header prints the ATen CPU capability actually in effect (``ATEN_CPU_CAPABILITY``
can lower it), torch's thread count and the CPU's ISA features.
"""

from __future__ import annotations

import os

from llmref._cpu import machine_info
from tests.extending import (
    toy_attention_kind,  # noqa: F401  (worked example: registers "toy_single_kv")
    toy_backend,  # noqa: F401  (worked example: registers "toy_two_pass")
    toy_cache,  # noqa: F401  (worked example: registers "toy_recent")
    toy_format,  # noqa: F401  (worked example: registers "toy_ternary")
    toy_kernel,  # noqa: F401  (worked example: registers "toy_int8_rows")
    toy_method,  # noqa: F401  (worked example: registers "toy_clip")
    toy_rope_rule,  # noqa: F401  (worked example: registers "toy_truncated")
)


def pytest_report_header() -> list[str]:
    info = machine_info()
    forced = {
        name: os.environ[name]
        for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "LLMREF_CPU_ISA")
        if name in os.environ
    }
    env = ", ".join(f"{k}={v}" for k, v in forced.items()) or "none"
    return [
        f"llmref: capability {info.torch_capability}, {info.threads} threads "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); forced: {env}",
        f"llmref: {info.line()}",
    ]
