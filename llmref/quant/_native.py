"""Build, load and select llmref's C kernels (one machinery for every ``*.c`` in ``llmref/quant``).

A C source ships with the package and is compiled on first use with the system's
C compiler (``$CC``, else ``gcc``) into a cache folder of the user's
(``$LLMREF_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/llmref/kernels``, else
``~/.cache/llmref/kernels``, mode 0700), one shared library per source and
instruction-set path, named ``<name>-<hash>.so`` where the hash covers the source,
the compiler and the flags. It is loaded with :mod:`ctypes` and links
``libgomp.so.1``, which resolves to the copy PyTorch has already loaded, so the
kernels' threads are PyTorch's.

**Concurrent first use.** Builders take an exclusive lock on ``<name>-<hash>.lock``
(``fcntl.flock``; where that does not exist, a process builds on its own) and write
to a temporary file renamed into place (:func:`os.replace`, atomic), so processes
and threads building at the same time all load a whole library, built once.

**Instruction sets.** :func:`cpu_isa` is the best path this CPU runs: ``"avx512"``
(AVX-512 F, BW, VL, DQ with FMA and F16C), ``"avx2"`` (AVX2, FMA, F16C) or
``"none"``. The environment variable ``LLMREF_CPU_ISA=avx512|avx2|none`` lowers it
(tests and benchmarks force each path on one machine): :func:`selected_isa`. Asking
for an ISA the CPU lacks leaves the native kernels unavailable (with the reason),
never runs an instruction the CPU does not have.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from .._cpu import _cpuinfo

ISAS = ("avx512", "avx2", "none")
"""Instruction-set paths, best first (``"none"``: no native kernel, PyTorch only)."""

ISA_ENV = "LLMREF_CPU_ISA"

# What each path needs, as /proc/cpuinfo flag names, and the compiler flags that go with it.
ISA_FEATURES: dict[str, tuple[str, ...]] = {
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "f16c", "avx2"),
    "avx2": ("avx2", "fma", "f16c"),
    "none": (),
}
ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "avx512": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c", "-mavx2"),
    "avx2": ("-mavx2", "-mfma", "-mf16c"),
    "none": (),
}
BASE_FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC", "-ffp-contract=off")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (``/proc/cpuinfo``, via :mod:`llmref._cpu`).

    Where they cannot be read (not Linux), the flags of the path ATen detected, unless
    ``ATEN_CPU_CAPABILITY`` overrides that (then none: no native kernel).
    """
    flags = _cpuinfo()[1]
    if flags:
        return flags
    cap = "" if os.environ.get("ATEN_CPU_CAPABILITY") else _aten_capability()
    if cap.startswith("AVX512"):
        return frozenset(ISA_FEATURES["avx512"])
    if cap == "AVX2":
        return frozenset(ISA_FEATURES["avx2"])
    return frozenset()


def _aten_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return ""


def cpu_isa() -> str:
    """The best instruction-set path of :data:`ISAS` this CPU runs."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return "none"
    flags = cpu_flags()
    for isa in ISAS:
        if all(f in flags for f in ISA_FEATURES[isa]):
            return isa
    return "none"


def isa_override() -> str | None:
    """The value of ``LLMREF_CPU_ISA`` (validated), or None when unset or empty.

    Raises
    ------
    ValueError
        If it is set to something other than ``avx512``, ``avx2`` or ``none``.
    """
    value = os.environ.get(ISA_ENV, "").strip().lower()
    if not value:
        return None
    if value not in ISAS:
        known = ", ".join(map(repr, ISAS))
        raise ValueError(
            f"{ISA_ENV} must be one of {known} (or unset), got {os.environ[ISA_ENV]!r}"
        )
    return value


def selected_isa() -> str:
    """The path native kernels use: ``LLMREF_CPU_ISA`` when set, else :func:`cpu_isa`.

    An override naming an ISA the CPU lacks is returned as it is; libraries for it
    refuse to load (:meth:`NativeLibrary.__call__` returns None with the reason).
    """
    return isa_override() or cpu_isa()


def isa_supported(isa: str) -> bool:
    """Whether this CPU runs the ``isa`` path."""
    return isa == "none" or ISAS.index(cpu_isa()) <= ISAS.index(isa)


def cache_dir() -> Path:
    """``$LLMREF_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/llmref/kernels`` (``~/.cache``):
    a folder of this user's, so no one else can plant the library it loads."""
    env = os.environ.get("LLMREF_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmref" / "kernels"


def compiler() -> str | None:
    """Path of the C compiler (``$CC``, else ``gcc``), or None."""
    return shutil.which(os.environ.get("CC", "gcc"))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no flock: builders race, each renames a whole file into place
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


_BUILD_LOCK = threading.Lock()  # threads of one process: one build at a time


def build(source: Path, name: str, flags: Sequence[str] = ()) -> Path:
    """Compile ``source`` into ``<cache>/<name>-<hash>.so`` once, and return its path.

    Parameters
    ----------
    source : pathlib.Path
        The C file.
    name : str
        Prefix of the library's file name.
    flags : sequence of str
        Compiler flags after :data:`BASE_FLAGS` (the ISA's ``-m`` flags, ``-D`` ...).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    RuntimeError
        If there is no C compiler or the build fails (with the compiler's message).
    """
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC or install gcc)")
    cmd_flags = [*BASE_FLAGS, *flags]
    key = hashlib.sha256(source.read_bytes())
    key.update("\0".join([cc, *cmd_flags]).encode())
    digest = key.hexdigest()[:16]
    cache = cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        cache = Path(tempfile.mkdtemp(prefix="llmref-kernels-"))  # private, this process only
    target = cache / f"{name}-{digest}.so"

    def ready() -> bool:
        return target.exists() and target.stat().st_uid == os.getuid()

    if ready():
        return target
    with _BUILD_LOCK, _locked(cache / f"{name}-{digest}.lock"):
        if ready():  # another process built it while this one waited
            return target
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        cmd = [cc, *cmd_flags, "-o", tmp, str(source)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(f"building {source.name} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)  # atomic: a reader sees no file or a whole one
    return target


class NativeLibrary:
    """A C source built for one instruction-set path per call, loaded once per path.

    Parameters
    ----------
    source : pathlib.Path
        The C file.
    name : str
        Library name (file prefix ``<name>-<isa>``).
    isas : tuple of str
        The paths it is built for, best first (each compiled with
        ``ISA_FLAGS[isa]`` and ``-DLLMREF_ISA_<ISA>``).
    declare : callable
        ``declare(lib, isa)``: set ``restype``/``argtypes`` and return None,
        or return a string saying why the loaded library cannot be used.
    flags : tuple of str
        Extra compiler flags for every path.

    Notes
    -----
    ``lib()`` returns the library for :func:`selected_isa` (or the best of
    ``isas`` it allows), ``lib(isa)`` the one for ``isa``; either is None when
    unavailable, and :meth:`unavailable_reason` says why.
    """

    def __init__(
        self,
        source: Path,
        name: str,
        isas: tuple[str, ...],
        declare: Callable[[ctypes.CDLL, str], str | None],
        flags: tuple[str, ...] = (),
    ) -> None:
        self.source, self.name, self.isas = source, name, isas
        self.declare, self.flags = declare, flags
        self._libs: dict[str, ctypes.CDLL | None] = {}
        self._reasons: dict[str, str] = {}
        self._lock = threading.Lock()

    def isa(self) -> str | None:
        """The path :func:`selected_isa` gives this library (None: none of its paths)."""
        sel = selected_isa()
        for isa in self.isas:
            if ISAS.index(isa) >= ISAS.index(sel):
                return isa
        return None

    def __call__(self, isa: str | None = None) -> ctypes.CDLL | None:
        """The library for ``isa`` (default: :meth:`isa`), or None."""
        isa = isa or self.isa()
        if isa is None:
            self._reasons["none"] = (
                f"{ISA_ENV}={selected_isa()} excludes {self.name} (built for "
                f"{', '.join(self.isas)})"
            )
            return None
        if isa in self._libs:
            return self._libs[isa]
        with self._lock:
            if isa not in self._libs:
                self._libs[isa] = self._load(isa)
        return self._libs[isa]

    def _load(self, isa: str) -> ctypes.CDLL | None:
        if not isa_supported(isa):
            need = ", ".join(ISA_FEATURES[isa])
            self._reasons[isa] = f"this CPU lacks the {isa} path ({need})"
            return None
        flags = (*ISA_FLAGS[isa], f"-DLLMREF_ISA_{isa.upper()}", *self.flags)
        try:
            lib = ctypes.CDLL(str(build(self.source, f"{self.name}-{isa}", flags)))
        except (OSError, RuntimeError) as err:
            self._reasons[isa] = str(err)
            return None
        why = self.declare(lib, isa)
        if why is not None:
            self._reasons[isa] = why
            return None
        return lib

    def unavailable_reason(self, isa: str | None = None) -> str | None:
        """Why ``self(isa)`` is None, else None."""
        if self(isa) is not None:
            return None
        return self._reasons.get(isa or self.isa() or "none", "unknown")

    def cache_clear(self) -> None:
        """Forget loaded libraries and reasons (the next call builds or loads again)."""
        with self._lock:
            self._libs.clear()
            self._reasons.clear()
