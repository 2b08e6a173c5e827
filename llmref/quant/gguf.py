"""The GGUF container (llama.cpp's file format): header, typed metadata, tensor table, data.

:func:`read_gguf` parses a file and maps its data; :class:`GGUFFile` hands out
each tensor as stored (:meth:`GGUFFile.blocks`: ggml blocks as a
:class:`~llmref.quant.QuantizedTensor`) or decoded (:meth:`GGUFFile.tensor`),
decoding with ``llmref.quant.formats.ggml``. Building a model from a file is
:func:`llmref.models.from_gguf`'s job; converting a QuantizedTensor to ggml
bytes is :func:`~llmref.quant.to_ggml_blocks`'s.

Every malformed file is a ``ValueError`` naming it: nothing is allocated for
a count or length before its bytes are found in the file.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .formats import GGUF_BLOCKS, dequantize, from_ggml_blocks
from .tensor import QuantizedTensor

__all__ = ["GGML_TYPES", "GGUFFile", "TensorInfo", "read_gguf"]

GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("f32", 1, 4),
    1: ("f16", 1, 2),
    2: ("q4_0", 32, 18),
    3: ("q4_1", 32, 20),
    8: ("q8_0", 32, 34),
    12: ("q4_k", 256, 144),
    14: ("q6_k", 256, 210),
    30: ("bf16", 1, 2),
}
"""ggml tensor type id -> (name, elements per block, bytes per block) of the types read here.

``f32``/``f16``/``bf16`` are plain values; ``q4_0``, ``q4_1``, ``q8_0`` and ``q4_k``
are decoded by ``llmref.quant.formats.ggml`` (the one ggml decoder), ``q6_k`` by
the ``gguf`` package when it is installed."""

_SCALARS = {  # GGUF metadata value type -> struct format
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # GGML_MAX_DIMS


class TensorInfo(NamedTuple):
    """One entry of a GGUF tensor table (see :func:`read_gguf`)."""

    name: str
    """Tensor name, e.g. ``"blk.0.attn_q.weight"``."""
    shape: tuple[int, ...]
    """In torch order (GGUF lists the fastest-moving dimension first)."""
    ggml_type: int
    """ggml type id (a key of :data:`GGML_TYPES` when llmref can read it)."""
    offset: int
    """Byte offset from the start of the data section."""
    nbytes: int
    """Bytes the tensor occupies."""


@dataclass
class GGUFFile:
    """A parsed GGUF file: metadata, tensor table, and the memory-mapped data.

    Made by :func:`read_gguf`, not by hand.

    Parameters
    ----------
    path : pathlib.Path
        The file.
    version : int
        GGUF format version (2 or 3).
    metadata : dict
        Key -> value (ints, floats, bools, strings, lists).
    tensors : dict
        Name -> ``TensorInfo``, in file order.
    data_start : int
        Byte offset of the tensor data.
    _buffer : mmap.mmap or bytes
        The mapped file (private).

    Examples
    --------
    >>> from llmref.quant import GGUFFile, read_gguf
    >>> [name for name in ("raw", "blocks", "tensor") if callable(getattr(GGUFFile, name))]
    ['raw', 'blocks', 'tensor']
    """

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    data_start: int
    _buffer: Any = field(default=None, repr=False)

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of tensor ``name``: a ``uint8`` NumPy view of the mapped file.

        Parameters
        ----------
        name : str
            Name in the tensor table.

        Returns
        -------
        numpy.ndarray
            ``nbytes`` bytes, read-only.
        """
        info = self._info(name)
        start = self.data_start + info.offset
        return np.frombuffer(self._buffer, dtype=np.uint8, count=info.nbytes, offset=start)

    def tensor(self, name: str, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Tensor ``name``, dequantized to ``dtype``, in torch's dimension order.

        Parameters
        ----------
        name : str
            Name in the tensor table (e.g. ``"blk.0.attn_q.weight"``).
        dtype : torch.dtype, default torch.float32
            dtype of the result (dequantization itself runs in float32).

        Returns
        -------
        torch.Tensor

        Raises
        ------
        KeyError
            If there is no such tensor.
        ValueError
            If its ggml type cannot be read.
        """
        info = self._info(name)
        if math.prod(info.shape) == 0:
            return torch.empty(info.shape, dtype=dtype)
        raw = self.raw(name)
        kind, block, size = GGML_TYPES[info.ggml_type]
        if kind in ("f32", "f16", "bf16"):
            np_dtype = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[kind]
            values = torch.from_numpy(raw.view(np_dtype).copy())
            if kind == "bf16":
                values = values.view(torch.bfloat16)
            return values.reshape(info.shape).to(dtype)
        rows = raw.reshape(*info.shape[:-1], info.shape[-1] // block * size)
        if kind in GGUF_BLOCKS:
            return dequantize(from_ggml_blocks(rows.copy(), kind)).to(dtype)
        try:
            import gguf
        except ImportError:  # pragma: no cover - depends on the environment
            raise ValueError(
                f"{self.path.name}: tensor {name!r} is stored as {kind}, which llmref reads "
                "through the 'gguf' package: pip install gguf"
            ) from None
        array = gguf.quants.dequantize(rows, gguf.GGMLQuantizationType(info.ggml_type))
        return torch.from_numpy(np.ascontiguousarray(array)).reshape(info.shape).to(dtype)

    def blocks(self, name: str) -> QuantizedTensor:
        """Tensor ``name`` as stored: its ggml blocks as a :class:`~llmref.quant.QuantizedTensor`.

        Parameters
        ----------
        name : str
            Name of a tensor stored in one of the formats of
            :data:`~llmref.quant.GGUF_BLOCKS` (``q8_0``, ``q4_0``, ``q4_1``, ``q4_k``).

        Returns
        -------
        QuantizedTensor
            In the block format, shape in torch order; nothing is decoded.

        Raises
        ------
        KeyError
            If there is no such tensor.
        ValueError
            If it is stored in another type.
        """
        info = self._info(name)
        kind, block, size = GGML_TYPES[info.ggml_type]
        if kind not in GGUF_BLOCKS:
            raise ValueError(
                f"{self.path.name}: tensor {name!r} is stored as {kind}, not as ggml blocks "
                f"{sorted(GGUF_BLOCKS)}"
            )
        rows = self.raw(name).reshape(*info.shape[:-1], info.shape[-1] // block * size)
        return from_ggml_blocks(rows.copy(), kind)

    def _info(self, name: str) -> TensorInfo:
        try:
            info = self.tensors[name]
        except KeyError:
            raise KeyError(f"no tensor {name!r} in {self.path.name}") from None
        if info.ggml_type not in GGML_TYPES:
            raise ValueError(
                f"{self.path.name}: tensor {name!r} has ggml type {info.ggml_type}, which "
                f"llmref cannot read; readable: {sorted(v[0] for v in GGML_TYPES.values())}"
            )
        return info


class _Reader:
    """Sequential little-endian reads from a buffer; every failure is a ValueError naming the file.

    Nothing is allocated before the bytes it describes have been found in the
    file, so a corrupted count or length (2**60, say) fails at once instead of
    allocating or looping.
    """

    max_depth = 8  # arrays of arrays: ggml writes depth 1; recursion stays bounded

    def __init__(self, buffer: Any, path: Path) -> None:
        self.buf, self.pos, self.path = buffer, 0, path

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.path.name}: {what} (at byte {self.pos} of {len(self.buf)})")

    def scalar(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        except struct.error:
            raise self.fail("file ends inside the GGUF header") from None
        self.pos += struct.calcsize(fmt)
        return value

    def take(self, nbytes: int, what: str) -> int:
        """Advance past ``nbytes`` bytes that must be in the file; return where they start."""
        if nbytes > len(self.buf) - self.pos:
            raise self.fail(f"{what} of {nbytes} bytes runs past the end of the file")
        start, self.pos = self.pos, self.pos + nbytes
        return start

    def string(self) -> str:
        n = self.scalar("<Q")
        start = self.take(n, "a GGUF string")
        return bytes(self.buf[start : self.pos]).decode("utf-8", errors="replace")

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            if depth >= self.max_depth:
                raise self.fail(f"metadata arrays nested deeper than {self.max_depth}")
            item, count = self.scalar("<I"), self.scalar("<Q")
            if item in _SCALARS and item != 7:  # numeric arrays in one go
                dtype = np.dtype(_SCALARS[item])
                start = self.take(dtype.itemsize * count, f"an array of {count} {dtype}")
                return np.frombuffer(self.buf, dtype=dtype, count=count, offset=start).tolist()
            # Every other item takes at least one byte, so the loop ends within the file.
            return [self.value(item, depth + 1) for _ in range(count)]
        raise self.fail(f"unknown GGUF metadata value type {kind}")


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse a GGUF file's header, metadata and tensor table; map its data.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.gguf`` file.

    Returns
    -------
    GGUFFile
        Tensors are read (and dequantized) on demand with :meth:`GGUFFile.tensor`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not GGUF version 2 or 3, or is malformed: truncated, a
        count, length, rank, type code or alignment that the file cannot hold.
        The message names the file; nothing is allocated for a count or length
        before its bytes are found in the file.

    Notes
    -----
    Layout: ``b"GGUF"``, ``uint32`` version, ``uint64`` tensor count,
    ``uint64`` metadata count; then each metadata key (a ``uint64``-length
    string), its ``uint32`` type and value (strings and arrays
    length-prefixed); then per tensor its name, ``uint32`` rank, ``uint64``
    dimensions (fastest first), ``uint32`` ggml type and ``uint64`` offset;
    then the data, aligned to ``general.alignment`` (default 32) bytes
    {cite:p}`gerganov2023ggml`.

    References
    ----------
    :cite:t:`gerganov2023ggml`

    Examples
    --------
    >>> import tempfile, os
    >>> import numpy as np
    >>> gguf = __import__("pytest").importorskip("gguf")
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.gguf")
    >>> w = gguf.GGUFWriter(path, "llama")
    >>> w.add_block_count(1)
    >>> w.add_tensor("token_embd.weight", np.arange(6, dtype=np.float32).reshape(3, 2))
    >>> w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    >>> f = read_gguf(path)
    >>> f.metadata["general.architecture"], f.metadata["llama.block_count"]
    ('llama', 1)
    >>> f.tensor("token_embd.weight")
    tensor([[0., 1.],
            [2., 3.],
            [4., 5.]])
    """
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            buffer: Any = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            buffer = b""
    r = _Reader(buffer, path)
    if bytes(buffer[:4]) != b"GGUF":
        raise ValueError(f"{path.name} is not a GGUF file (no 'GGUF' magic)")
    r.pos = 4
    version = r.scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"{path.name}: GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):  # each entry takes >= 13 bytes: a bad count ends at the file's end
        key = r.string()
        metadata[key] = r.value(r.scalar("<I"))
    tensors: dict[str, TensorInfo] = {}
    for _ in range(n_tensors):
        name = r.string()
        rank = r.scalar("<I")
        if rank > _MAX_DIMS:
            raise r.fail(f"tensor {name!r} has {rank} dimensions; ggml allows at most {_MAX_DIMS}")
        dims = [r.scalar("<Q") for _ in range(rank)]
        ggml_type, offset = r.scalar("<I"), r.scalar("<Q")
        if name in tensors:
            raise r.fail(f"tensor {name!r} appears twice in the tensor table")
        shape = tuple(reversed(dims))
        n = math.prod(shape)  # Python ints: no overflow, however large the dimensions
        if max(shape, default=0) >= 2**63 or n >= 2**63:
            raise r.fail(f"tensor {name!r} has shape {shape}, beyond int64 element counts")
        _, block, size = GGML_TYPES.get(ggml_type, ("?", 1, 0))
        if shape and shape[-1] % block:
            raise r.fail(
                f"tensor {name!r} has {shape[-1]} elements per row, not a multiple of its "
                f"ggml type's block of {block}"
            )
        tensors[name] = TensorInfo(name, shape, ggml_type, offset, n // block * size)
    alignment = metadata.get("general.alignment", 32)
    if type(alignment) is not int or alignment < 1:
        raise r.fail(f"general.alignment must be a positive integer, got {alignment!r}")
    data_start = -(-r.pos // alignment) * alignment
    for info in tensors.values():
        if data_start + info.offset + info.nbytes > len(buffer):
            raise ValueError(f"{path.name} is truncated: tensor {info.name!r} ends past the file")
    return GGUFFile(path, version, metadata, tensors, data_start, buffer)
