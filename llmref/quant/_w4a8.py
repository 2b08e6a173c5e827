"""Build, load and call the W4A8 AVX512-VNNI kernel in ``w4a8.c``.

The C source ships with the package and is compiled on first use with the
system's C compiler (``$CC``, else ``gcc``) into a cache folder of the user's
(``$LLMREF_KERNEL_CACHE``, else ``~/.cache/llmref/kernels``), keyed by a hash
of the source, then loaded with :mod:`ctypes`. It links ``libgomp.so.1``, which
resolves to the copy PyTorch has already loaded, so the kernel's threads are
PyTorch's. Without a compiler or without AVX512-VNNI the kernel is simply not
available (:func:`unavailable_reason` says why) and kernel selection skips it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("w4a8.c")
RUN = 128  # inputs per packed run: two nibble planes of 64 (see w4a8.c)


def fits(in_features: int, group_size: int) -> bool:
    """Whether the kernel takes this shape: groups of 32, 64 or a multiple of 128, and
    ``in_features`` a multiple of 64 and of the group size."""
    g = group_size
    return (
        g > 0 and (g in (32, 64) or g % RUN == 0) and in_features % 64 == 0 and in_features % g == 0
    )


_reason: list[str] = []


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None when it cannot be built or this CPU lacks VNNI."""
    try:
        lib = ctypes.CDLL(str(_build()))
    except (OSError, RuntimeError) as err:
        _reason.append(str(err))
        return None
    if not lib.llmref_w4a8_supported():
        _reason.append("this CPU lacks AVX-512 (F, BW, VL) with VNNI")
        return None
    lib.llmref_w4a8_linear.restype = ctypes.c_int
    lib.llmref_w4a8_linear.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 5 + [ctypes.c_int]
    return lib


def unavailable_reason() -> str | None:
    """Why :func:`library` is None (no compiler, failed build, no VNNI), else None."""
    return None if library() is not None else (_reason[-1] if _reason else "unknown")


def _cache_dir() -> Path:
    """``$LLMREF_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/llmref/kernels`` (``~/.cache``):
    a folder of this user's, so no one else can plant the library it loads."""
    env = os.environ.get("LLMREF_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmref" / "kernels"


def _build() -> Path:
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    cache = _cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        cache = Path(tempfile.mkdtemp(prefix="llmref-kernels-"))  # private, this process only
    target = cache / f"w4a8-{digest}.so"
    if target.exists() and target.stat().st_uid == os.getuid():
        return target
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        raise RuntimeError("no C compiler found (set CC or install gcc)")
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    cmd = [cc, "-O3", "-fopenmp", "-shared", "-fPIC", "-o", tmp, str(SOURCE)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"building {SOURCE.name} failed: {done.stderr.strip()[-500:]}")
    os.replace(tmp, target)  # atomic: concurrent builders all end with a whole file
    return target


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Unsigned 4-bit codes ``(N, K)`` (``K % 64 == 0``) into the kernel's ``(N, K / 2)`` bytes:
    runs of 128 inputs as two planes of 64, a last run of 64 as two planes of 32."""
    N, K = codes.shape
    c = codes.to(torch.uint8)
    full = K // RUN * RUN
    runs = c[:, :full].reshape(N, full // RUN, 2, RUN // 2)
    body = (runs[:, :, 0] | (runs[:, :, 1] << 4)).reshape(N, full // 2)
    if full == K:
        return body.contiguous()
    tail = c[:, full:].reshape(N, 2, 32)
    return torch.cat([body, tail[:, 0] | (tail[:, 1] << 4)], dim=1).contiguous()


def linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group: int,
    per_token: bool,
) -> torch.Tensor:
    """``y = x_q W^T`` for float32 ``x (M, K)``, with ``W = (codes - zero) * scale`` per group.

    ``scale`` is float32 and ``zero`` int32, both ``(N, K / group)`` and contiguous.
    ``x`` is quantized to int8 with one scale per row (``per_token``) or per group.
    """
    lib = library()
    if lib is None:
        raise RuntimeError(f"the W4A8 kernel is unavailable: {unavailable_reason()}")
    x = x.contiguous()
    M, K = x.shape
    N = packed.shape[0]
    y = torch.empty(M, N, dtype=torch.float32)
    status = lib.llmref_w4a8_linear(
        x.data_ptr(),
        packed.data_ptr(),
        scale.data_ptr(),
        zero.data_ptr(),
        y.data_ptr(),
        M,
        N,
        K,
        group,
        K if per_token else group,
        torch.get_num_threads(),
    )
    if status:
        raise RuntimeError(f"llmref_w4a8_linear failed with status {status}")
    return y
