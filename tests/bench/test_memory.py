"""Tests of llmref.bench.memory: peak-memory measurement and the attention memory sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmref.attention import naive_attention, sliding_window_mask
from llmref.bench import cases, memory

MiB = 2**20
TARGET = "llmref.bench.memory:attention_call"

needs_rss = pytest.mark.skipif(
    not memory.supports_rss_reset(), reason="CPU peak memory needs Linux /proc/self/clear_refs"
)


@needs_rss
def test_rss_bytes_reads_the_process_status() -> None:
    rss, hwm = memory.rss_bytes()
    assert 0 < rss <= hwm


@needs_rss
@pytest.mark.parametrize("mib", [8, 64])
def test_measure_peak_sees_a_tensor_of_known_size(mib: int) -> None:
    peak = memory.measure_peak(lambda: torch.ones(mib * MiB // 4))
    assert mib * MiB <= peak < (mib + 4) * MiB


@needs_rss
def test_measure_peak_sees_temporaries_freed_inside_the_call() -> None:
    def fn() -> torch.Tensor:
        big = torch.ones(48 * MiB // 4)  # freed before returning
        small = big[: 4 * MiB // 4].clone()
        del big
        return small

    peak = memory.measure_peak(fn)
    assert 50 * MiB <= peak < 60 * MiB


@needs_rss
def test_warmup_calls_are_not_measured() -> None:
    kept: list[torch.Tensor] = []

    def fn() -> None:
        if not kept:  # a one-off initialisation, like compiling
            kept.append(torch.ones(64 * MiB // 4))
        torch.ones(MiB // 4)

    assert memory.measure_peak(fn, warmup=1) < 8 * MiB
    kept.clear()
    assert memory.measure_peak(fn, warmup=0) >= 64 * MiB


def test_measure_peak_bad_input() -> None:
    with pytest.raises(ValueError, match="warmup must be >= 0"):
        memory.measure_peak(lambda: None, warmup=-1)
    with pytest.raises(ValueError, match="no peak-memory statistics"):
        memory.measure_peak(lambda: None, device="meta", warmup=0)


@pytest.mark.parametrize("mask", ["causal", "sliding_window"])
def test_attention_calls_compute_the_same_attention(mask: str) -> None:
    T, window = 96, 16
    outs = {
        impl: memory.attention_call(impl, T, mask=mask, window=window, heads=2, head_dim=8)()
        for impl in ("sdpa", "naive", "chunked", "flex")
    }
    gen = torch.Generator().manual_seed(cases.SEED)
    q, k, v = (torch.randn(1, 2, T, 8, generator=gen) for _ in range(3))
    allowed = sliding_window_mask(T, window=window) if mask == "sliding_window" else None
    expected = naive_attention(q, k, v, is_causal=allowed is None, mask=allowed)
    for impl, out in outs.items():
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5, msg=impl)
    if mask == "causal":
        linear = memory.attention_call("linear", T, heads=2, head_dim=8)()
        assert linear.shape == expected.shape


def test_attention_call_bad_input() -> None:
    with pytest.raises(ValueError, match="implementation must be one of"):
        memory.attention_call("fast", 16)
    with pytest.raises(ValueError, match="mask must be"):
        memory.attention_call("sdpa", 16, mask="dilated")
    with pytest.raises(ValueError, match="no sliding-window form"):
        memory.attention_call("linear", 16, mask="sliding_window")


@needs_rss
def test_peak_memory_in_fresh_processes_orders_the_backends() -> None:
    T = 1024
    scores = 8 * T * T * 4  # one float32 (1, 8, T, T) matrix: 32 MiB
    cases = [
        {"implementation": "naive", "seq_len": T},
        {"implementation": "chunked", "seq_len": T},
        {"implementation": "linear", "seq_len": 16, "mask": "sliding_window"},  # fails
    ]
    with pytest.warns(UserWarning, match="no sliding-window form"):
        naive, chunked, failed = memory.peak_memory(TARGET, cases, isolate=False)
    assert naive is not None and chunked is not None and failed is None
    # naive holds the scores, their exponentials and the weights at once
    assert naive >= 2 * scores
    assert chunked < naive / 3
    (alone,) = memory.peak_memory(TARGET, cases[:1], isolate=True)
    assert alone is not None and abs(alone - naive) < 0.1 * naive


def test_peak_memory_bad_target() -> None:
    with pytest.raises(ValueError, match=r"package\.module:function"):
        memory.peak_memory("llmref.bench.memory.attention_call", [{}])


@needs_rss
def test_command_line_writes_json_that_loads(tmp_path: Path) -> None:
    out = tmp_path / "attention_memory.json"
    args = ["--sweep", "quick", "--implementations", "sdpa", "naive"]
    status = memory.main([*args, "--seq-lens", "64", "--shared", "--out", str(out)])
    assert status == 0
    doc = json.loads(out.read_text())
    assert doc["kind"] == "llmref-peak-memory" and doc["setup"]["heads"] == cases.HEADS
    records = memory.load_memory_json(out)
    assert [(r.group, r.implementation, r.seq_len) for r in records] == [
        ("memory-causal", "sdpa", 64),
        ("memory-causal", "naive", 64),
    ]
    assert all(r.peak_bytes is not None and r.peak_bytes > 0 for r in records)


def test_load_memory_json_rejects_other_json(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(ValueError, match="not an llmref peak-memory"):
        memory.load_memory_json(path)


def test_memory_sweeps_are_consistent() -> None:
    for name, spec in memory.MEMORY_SWEEPS.items():
        assert set(spec["implementations"]) <= set(memory.IMPLEMENTATIONS), name
        assert list(spec["seq_lens"]) == sorted(spec["seq_lens"]), name
    assert max(memory.MEMORY_SWEEPS["default"]["seq_lens"]) >= 8192
    with pytest.raises(ValueError, match="name must be one of"):
        memory.memory_sweep("huge")
