"""GGUF reading under corruption: every malformed file is a ValueError naming the file.

The seed file is written here byte by byte (metadata of every value kind, float and
ggml block tensors); hypothesis then truncates it, overwrites its counts, lengths,
type codes, dimensions and offsets, and flips bytes. Whatever it makes, reading the
file and every tensor in it either works or raises ``ValueError`` with the file's
name, within the per-example deadline. A subprocess repeats the worst cases (counts
and lengths of 2**60) under an address-space limit, so no read allocates for what a
corrupted field claims.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmref.quant import read_gguf

FUZZ = settings(
    max_examples=150,
    derandomize=True,
    deadline=2000,  # ms per example; a read takes well under 50 ms
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class _Writer:
    """A minimal GGUF v3 writer that records where each header field lives."""

    def __init__(self) -> None:
        self.buf = bytearray(b"GGUF")
        self.fields: list[tuple[int, str]] = []  # (offset, struct format) of every number

    def num(self, fmt: str, value: int | float | bool) -> None:
        self.fields.append((len(self.buf), fmt))
        self.buf += struct.pack(fmt, value)

    def string(self, text: str) -> None:
        data = text.encode()
        self.num("<Q", len(data))
        self.buf += data

    def value(self, kind: int, value: object) -> None:
        self.num("<I", kind)
        if kind == 8:
            self.string(str(value))
        elif kind == 9:
            item, items = value  # type: ignore[misc]
            self.num("<I", item)
            self.num("<Q", len(items))
            for v in items:
                if item == 8:
                    self.string(v)
                else:
                    self.num({5: "<i", 6: "<f"}[item], v)
        else:
            self.num({4: "<I", 6: "<f", 7: "<?"}[kind], value)  # type: ignore[arg-type]


def _seed_file() -> tuple[bytes, list[tuple[int, str]]]:
    rng = np.random.default_rng(0)
    tensors = {  # name -> (ggml type, shape in torch order, bytes)
        "token_embd.weight": (0, (3, 2), rng.standard_normal(6).astype(np.float32).tobytes()),
        "output_norm.weight": (1, (2, 32), rng.standard_normal(64).astype(np.float16).tobytes()),
        "blk.0.q8.weight": (8, (1, 32), bytes(rng.integers(0, 255, 34, dtype=np.uint8))),
        "blk.0.q4.weight": (2, (2, 32), bytes(rng.integers(0, 255, 36, dtype=np.uint8))),
        "blk.0.q41.weight": (3, (1, 32), bytes(rng.integers(0, 255, 20, dtype=np.uint8))),
    }
    metadata = [
        ("general.architecture", 8, "llama"),
        ("general.alignment", 4, 32),
        ("llama.block_count", 4, 1),
        ("llama.rope.freq_base", 6, 10000.0),
        ("tokenizer.ggml.token_type", 9, (5, [1, 2, 3])),
        ("tokenizer.ggml.tokens", 9, (8, ["a", "bc", "d"])),
        ("tokenizer.ggml.add_bos_token", 7, True),
    ]
    w = _Writer()
    w.num("<I", 3)
    w.num("<Q", len(tensors))
    w.num("<Q", len(metadata))
    for key, kind, value in metadata:
        w.string(key)
        w.value(kind, value)
    offset = 0
    for name, (kind, shape, data) in tensors.items():
        w.string(name)
        w.num("<I", len(shape))
        for d in reversed(shape):
            w.num("<Q", d)
        w.num("<I", kind)
        w.num("<Q", offset)
        offset += -(-len(data) // 32) * 32
    w.buf += bytes(-len(w.buf) % 32)
    for _, _, data in tensors.values():
        w.buf += bytes(-len(w.buf) % 32) + data  # the last tensor ends the file
    return bytes(w.buf), w.fields


SEED, FIELDS = _seed_file()
SPECIAL = (2**60, 2**63 - 1, 2**64 - 1, 2**32 - 1, 2**31, 1 << 40, 0, 1, 5, 33)


def _read_everything(path: Path) -> None:
    """Read the file and every tensor; only ValueError naming the file may escape."""
    try:
        f = read_gguf(path)
        for name in f.tensors:
            f.tensor(name)
    except ValueError as err:
        assert path.name in str(err), f"ValueError does not name the file: {err}"


@pytest.fixture
def fuzz_path(tmp_path: Path) -> Path:
    return tmp_path / "fuzzed-model.gguf"


def test_the_seed_file_reads():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.gguf"
        path.write_bytes(SEED)
        f = read_gguf(path)
        assert f.metadata["tokenizer.ggml.tokens"] == ["a", "bc", "d"]
        assert f.metadata["tokenizer.ggml.token_type"] == [1, 2, 3]
        assert f.tensor("token_embd.weight").shape == (3, 2)
        assert f.tensor("blk.0.q4.weight").shape == (2, 32)


@FUZZ
@given(cut=st.integers(0, len(SEED) - 1))
def test_every_truncation_is_a_value_error_naming_the_file(fuzz_path, cut):
    fuzz_path.write_bytes(SEED[:cut])
    with pytest.raises(ValueError, match=fuzz_path.name):
        f = read_gguf(fuzz_path)
        for name in f.tensors:
            f.tensor(name)


def _with_field(field: tuple[int, str], value: int) -> bytes:
    offset, fmt = field
    data = bytearray(SEED)
    size = struct.calcsize(fmt)
    data[offset : offset + size] = (value % 256**size).to_bytes(size, "little")
    return bytes(data)


def test_every_field_set_to_every_extreme_value(tmp_path):
    """Deterministic sweep: each count, length, type code, dimension and offset of the
    seed set to 0, 1, small odd values, 2**31, 2**32 - 1, 2**40, 2**60, 2**63 - 1, 2**64 - 1."""
    path = tmp_path / "extreme.gguf"
    for field in FIELDS:
        for value in SPECIAL:
            path.write_bytes(_with_field(field, value))
            _read_everything(path)


@FUZZ
@given(field=st.sampled_from(FIELDS), value=st.integers(0, 2**64 - 1))
def test_corrupted_counts_lengths_types_and_offsets(fuzz_path, field, value):
    fuzz_path.write_bytes(_with_field(field, value))
    _read_everything(fuzz_path)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), max_size=8))
def test_random_byte_corruption(fuzz_path, flips):
    data = bytearray(SEED)
    for at, byte in flips:
        data[at] = byte
    fuzz_path.write_bytes(bytes(data))
    _read_everything(fuzz_path)


def test_huge_counts_allocate_nothing_under_a_memory_limit(tmp_path):
    """Counts and lengths of 2**60 in every field, read with 64 MiB of address space to spare."""
    paths = []
    for i, (offset, fmt) in enumerate(FIELDS):
        if fmt != "<Q":
            continue
        data = bytearray(SEED)
        data[offset : offset + 8] = (2**60).to_bytes(8, "little")
        path = tmp_path / f"huge-{i}.gguf"
        path.write_bytes(bytes(data))
        paths.append(str(path))
    script = textwrap.dedent(
        """
        import resource, sys
        from llmref.quant import read_gguf
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize"))
        limit = vm * 1024 + (64 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        for path in sys.argv[1:]:
            try:
                f = read_gguf(path)
                for name in f.tensors:
                    f.tensor(name)
            except ValueError:
                pass
        print("ok", len(sys.argv) - 1)
        """
    )
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux's /proc to size the address-space limit")
    done = subprocess.run(
        [sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ok", str(len(paths))]
