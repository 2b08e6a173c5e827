"""The machine a benchmark ran on: CPU model, the ISA features that matter, load.

The same float32 matmul can differ tenfold between CPUs, and a bfloat16 or
int8 kernel far more (native BF16, VNNI and AMX or not), and a busy machine
makes every number noisy. So every result records :func:`machine_info` —
taken when the run *starts*, with the load average at that moment — and the
summary's first lines say which machine it was (:func:`describe_machine`) and
warn when the load average exceeded the cores (:func:`load_warning`).

The CPU model and ISA features come from ``llmref._cpu``, which also names
the machine in the test header, so both say the same.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from typing import Any

from .._cpu import ISA_FEATURES, cpu_model, isa_features
from .._cpu import machine_info as _machine_info

__all__ = [
    "ISA_FEATURES",
    "cpu_flags",
    "cpu_model",
    "describe_machine",
    "load_warning",
    "machine_info",
]


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
    ['AVX2', 'AVX-512F', 'AVX512-VNNI']
    """
    return list(isa_features(cpuinfo))


def machine_info() -> dict[str, Any]:
    """Facts about this machine and process, to store with benchmark results.

    The same facts as ``llmref._cpu.machine_info()`` (which the test header
    prints), as a JSON-ready dict with the Python version and platform added.

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
    info = _machine_info()
    load = info.load_average
    return {
        "cpu": info.cpu_model,
        "isa": list(info.isa),
        "torch_capability": info.torch_capability,
        "cores": info.cores,
        "logical_cpus": os.cpu_count(),
        "threads": info.threads,
        "torch": info.torch_version,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_average": [round(v, 2) for v in load] if load is not None else None,
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
    >>> line[:51]
    'Example CPU (AVX2; no AVX-512F, AVX512-VNNI, AMX), '
    >>> line[51:]
    '2 cores, torch 2.13.0 with 2 threads, load average 0.5 at start'
    """
    isa = list(info.get("isa") or [])
    missing = [f for f in ("AVX2", "AVX-512F", "AVX512-VNNI", "AMX") if f not in isa]
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
