"""The machine a benchmark ran on: CPU model, the ISA features that matter, load.

The same float32 matmul can differ tenfold between CPUs, and a bfloat16 or
int8 kernel far more (native BF16, VNNI and AMX or not), and a busy machine
makes every number noisy. So every result records :func:`machine_info` —
taken when the run *starts*, with the load average at that moment — and the
summary's first lines say which machine it was (:func:`describe_machine`) and
warn when the load average exceeded the cores (:func:`load_warning`).

Only :func:`machine_info` imports torch (for its version, threads and the
instruction set its CPU kernels dispatch to).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ISA_FEATURES",
    "cpu_flags",
    "cpu_model",
    "describe_machine",
    "load_warning",
    "machine_info",
]

ISA_FEATURES: Mapping[str, tuple[str, ...]] = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "AVX512-VNNI": ("avx512_vnni", "avx512vnni"),
    "AVX-VNNI": ("avx_vnni",),
    "AVX512-BF16": ("avx512_bf16",),
    "AMX-BF16": ("amx_bf16",),
    "AMX-INT8": ("amx_int8",),
    "NEON": ("asimd", "neon"),
}
"""Feature name -> the ``/proc/cpuinfo`` flags that mean it (any of them): the ones
that decide which float32, bfloat16 and int8 kernels run fast."""

_CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(names: tuple[str, ...], text: str | None = None) -> str:
    if text is None:
        try:
            text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in names and value.strip():
            return value.strip()
    return ""


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name, or ``platform.processor()`` where ``/proc/cpuinfo`` is absent.

    Parameters
    ----------
    cpuinfo : str, optional
        Text of ``/proc/cpuinfo`` (read from the system when omitted).

    Returns
    -------
    str
        E.g. ``"AMD EPYC 9R14"``; ``"unknown CPU"`` if nothing says.

    Examples
    --------
    >>> cpu_model("processor\\t: 0\\nmodel name\\t: Example CPU 9000\\n")
    'Example CPU 9000'
    """
    found = _cpuinfo_field(("model name", "hardware", "cpu model"), cpuinfo)
    return found or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The features of :data:`ISA_FEATURES` this CPU has, in that order.

    Parameters
    ----------
    cpuinfo : str, optional
        Text of ``/proc/cpuinfo`` (read from the system when omitted).

    Returns
    -------
    list of str
        Empty where ``/proc/cpuinfo`` is absent (not Linux).

    Examples
    --------
    >>> cpu_flags("flags\\t: fpu sse2 avx2 avx512f avx512_vnni\\n")
    ['AVX2', 'AVX-512', 'AVX512-VNNI']
    """
    flags = set(_cpuinfo_field(("flags", "features"), cpuinfo).split())
    return [name for name, names in ISA_FEATURES.items() if flags.intersection(names)]


def machine_info() -> dict[str, Any]:
    """Facts about this machine and process, to store with benchmark results.

    Returns
    -------
    dict
        ``cpu`` (model name), ``isa`` (features of :data:`ISA_FEATURES`
        present), ``torch_capability`` (the instruction set torch's CPU kernels
        dispatch to, e.g. ``"AVX512"``), ``cores`` (CPUs this process may run
        on), ``logical_cpus``, ``threads`` (torch intra-op threads),
        ``torch``, ``python``, ``platform`` and ``load_average`` (1, 5 and
        15 minutes; ``None`` where the system has none).

    Examples
    --------
    >>> info = machine_info()
    >>> info["cores"] >= 1 and info["threads"] >= 1
    True
    """
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        load: list[float] | None = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    backends_cpu = getattr(torch.backends, "cpu", None)
    capability = getattr(backends_cpu, "get_cpu_capability", None)
    return {
        "cpu": cpu_model(),
        "isa": cpu_flags(),
        "torch_capability": capability() if capability is not None else "",
        "cores": cores,
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_average": load,
    }


def describe_machine(info: Mapping[str, Any]) -> str:
    """One line naming the machine of :func:`machine_info`.

    Parameters
    ----------
    info : mapping
        As returned by :func:`machine_info` (missing keys read as unknown).

    Returns
    -------
    str

    Examples
    --------
    >>> line = describe_machine({"cpu": "Example CPU", "isa": ["AVX2"], "cores": 2,
    ...                          "threads": 2, "torch": "2.13.0", "load_average": [0.5, 0.4, 0.3]})
    >>> line[:50]
    'Example CPU (AVX2; no AVX-512, AVX512-VNNI, AMX), '
    >>> line[50:]
    '2 cores, torch 2.13.0 with 2 threads, load average 0.5 at start'
    """
    isa = list(info.get("isa") or [])
    missing = [f for f in ("AVX2", "AVX-512", "AVX512-VNNI", "AMX") if f not in isa]
    if any(f.startswith("AMX") for f in isa):
        missing.remove("AMX")
    if not isa:
        features = "ISA features unknown"
    else:
        features = ", ".join(isa) + (f"; no {', '.join(missing)}" if missing else "")
    capability = info.get("torch_capability")
    if capability:
        features += f"; torch kernels: {capability}"
    load = info.get("load_average")
    parts = [
        f"{info.get('cpu') or 'unknown CPU'} ({features})",
        f"{info.get('cores', '?')} cores",
        f"torch {info.get('torch', '?')} with {info.get('threads', '?')} threads",
        f"load average {load[0]:g} at start" if load else "load average unknown",
    ]
    return ", ".join(parts)


def load_warning(info: Mapping[str, Any]) -> str | None:
    """A warning when the load average at start exceeded the cores, else ``None``.

    Parameters
    ----------
    info : mapping
        As returned by :func:`machine_info`.

    Returns
    -------
    str or None

    Examples
    --------
    >>> load_warning({"cores": 2, "load_average": [3.5, 2.0, 1.0]})[:52]
    'the load average at start (3.5) exceeded the 2 cores'
    >>> load_warning({"cores": 2, "load_average": [0.2, 0.1, 0.1]}) is None
    True
    """
    load, cores = info.get("load_average"), info.get("cores")
    if not load or not cores or load[0] <= cores:
        return None
    return (
        f"the load average at start ({load[0]:g}) exceeded the {cores} cores: other work "
        "shared the CPU, so the timings are noisy and slower than on an idle machine"
    )
