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

__all__ = ["ISA_FEATURES", "MachineInfo", "machine_info"]

# /proc/cpuinfo flag -> the name reports use. Ordered as printed.
ISA_FEATURES: dict[str, str] = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512F",
    "avx512bw": "AVX-512BW",
    "avx512vl": "AVX-512VL",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "amx_tile": "AMX",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
}


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


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset[str]()
    path = Path("/proc/cpuinfo")
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
            if model and flags:
                break
    return model or platform.processor() or "unknown", flags


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

    model, flags = _cpuinfo()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return MachineInfo(
        cpu_model=model,
        isa=tuple(name for flag, name in ISA_FEATURES.items() if flag in flags),
        cores=cores or 1,
        threads=torch.get_num_threads(),
        torch_capability=torch.backends.cpu.get_cpu_capability(),
        torch_version=torch.__version__,
        load_average=load,
    )
