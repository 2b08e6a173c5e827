"""What machine this is: CPU model, the ISA features that change numerics or speed.

Shared by the test header, the benchmark summaries and the native kernels'
status, so every report names the machine the same way. Reading
``/proc/cpuinfo`` is Linux-only; elsewhere the model is ``platform.processor()``
and the flag set is empty (the reports then say "unknown").
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ISA_FEATURES", "MachineInfo", "cpu_model", "isa_features", "machine_info"]

ISA_FEATURES: dict[str, tuple[str, ...]] = {
    "AVX2": ("avx2",),
    "FMA": ("fma",),
    "AVX-512F": ("avx512f",),
    "AVX-512BW": ("avx512bw",),
    "AVX-512VL": ("avx512vl",),
    "AVX512-VNNI": ("avx512_vnni", "avx512vnni"),
    "AVX-VNNI": ("avx_vnni",),
    "AVX512-BF16": ("avx512_bf16",),
    "AMX": ("amx_tile",),
    "AMX-BF16": ("amx_bf16",),
    "AMX-INT8": ("amx_int8",),
    "NEON": ("asimd", "neon"),
}
"""Feature name (as reports print it, in this order) -> the ``/proc/cpuinfo`` flags
that mean it (any of them): the features that decide which float32, bfloat16 and
int8 kernels run, and how fast."""


@dataclass(frozen=True)
class MachineInfo:
    """The facts about a machine that every test header and benchmark summary prints.

    Parameters
    ----------
    cpu_model : str
        The CPU's model name (``"unknown"`` if it cannot be read).
    isa : tuple of str
        The ISA features of :data:`ISA_FEATURES` this CPU has, in that order.
    cores : int
        Logical CPUs available to this process.
    threads : int
        torch's intra-op thread count.
    torch_capability : str
        ``torch.backends.cpu.get_cpu_capability()``: the kernel set ATen
        dispatches to (``ATEN_CPU_CAPABILITY`` can lower it).
    torch_version : str
        ``torch.__version__``.
    load_average : tuple of float or None
        The 1-, 5- and 15-minute load averages when read, if the OS has them.

    Examples
    --------
    >>> from llmref._cpu import machine_info
    >>> info = machine_info()
    >>> info.cores >= 1 and info.threads >= 1
    True
    """

    cpu_model: str
    isa: tuple[str, ...]
    cores: int
    threads: int
    torch_capability: str
    torch_version: str
    load_average: tuple[float, float, float] | None

    def line(self) -> str:
        """One line naming the machine, e.g. for a pytest header or a summary.

        Returns
        -------
        str
            ``"<model>; ISA ...; N cores, M threads; ATen capability ...; torch ..."``.

        Examples
        --------
        >>> from llmref._cpu import machine_info
        >>> "ATen capability" in machine_info().line()
        True
        """
        isa = " ".join(self.isa) if self.isa else "unknown"
        return (
            f"{self.cpu_model}; ISA {isa}; {self.cores} cores, {self.threads} threads; "
            f"ATen capability {self.torch_capability}; torch {self.torch_version}"
        )

    def overloaded(self) -> bool:
        """Whether the 1-minute load average exceeded the number of cores.

        Returns
        -------
        bool
            False when the load average is unknown.

        Examples
        --------
        >>> from llmref._cpu import MachineInfo
        >>> MachineInfo("x", (), 2, 2, "AVX2", "2.13.0", (3.5, 1.0, 0.5)).overloaded()
        True
        """
        return self.load_average is not None and self.load_average[0] > self.cores


def _parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor listed in ``/proc/cpuinfo`` text."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    model, flags = _parse_cpuinfo(text)
    return model or platform.processor() or platform.machine() or "unknown", flags


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name.

    Parameters
    ----------
    cpuinfo : str, optional
        Text of ``/proc/cpuinfo`` to read it from (this machine's when omitted;
        where that file is absent, ``platform.processor()``).

    Returns
    -------
    str
        E.g. ``"AMD EPYC 9R14"``; ``"unknown"`` if nothing says.

    Examples
    --------
    >>> cpu_model("processor\\t: 0\\nmodel name\\t: Example CPU 9000\\n")
    'Example CPU 9000'
    """
    if cpuinfo is None:
        return _cpuinfo()[0]
    return _parse_cpuinfo(cpuinfo)[0] or "unknown"


def isa_features(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The features of :data:`ISA_FEATURES` the CPU has, in that order.

    Parameters
    ----------
    cpuinfo : str, optional
        Text of ``/proc/cpuinfo`` to read them from (this machine's when omitted).

    Returns
    -------
    tuple of str
        Empty where the flags are unknown (no ``/proc/cpuinfo``: not Linux).

    Examples
    --------
    >>> isa_features("flags\\t: fpu sse2 avx2 fma avx512f avx512_vnni\\n")
    ('AVX2', 'FMA', 'AVX-512F', 'AVX512-VNNI')
    """
    flags = _cpuinfo()[1] if cpuinfo is None else _parse_cpuinfo(cpuinfo)[1]
    return tuple(name for name, names in ISA_FEATURES.items() if flags.intersection(names))


def machine_info() -> MachineInfo:
    """Read the machine's CPU model, ISA features, cores, threads and load now.

    Returns
    -------
    MachineInfo
        The CPU model and flags are read once per process; threads, the
        ATen capability and the load average are read on every call.

    Examples
    --------
    >>> from llmref._cpu import machine_info
    >>> isinstance(machine_info().cpu_model, str)
    True
    """
    import torch

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return MachineInfo(
        cpu_model=cpu_model(),
        isa=isa_features(),
        cores=cores or 1,
        threads=torch.get_num_threads(),
        torch_capability=torch.backends.cpu.get_cpu_capability(),
        torch_version=torch.__version__,
        load_average=load,
    )
