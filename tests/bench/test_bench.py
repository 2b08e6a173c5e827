"""Tests of llmref.bench: the cases, the timer, results parsing, plots and the report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from llmref.bench import cases, measure, paths, report, results
from llmref.bench.results import Record

TINY = (8, 16)


def test_import_llmref_bench_does_not_import_matplotlib() -> None:
    code = (
        "import sys, llmref, llmref.bench, llmref.bench.plot; sys.exit('matplotlib' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", sorted(cases.SWEEPS))
def test_sweeps_cover_every_implementation_and_respect_caps(name: str) -> None:
    spec = cases.SWEEPS[name]
    found = cases.sweep(name)
    impls = {c.implementation for c in found}
    assert {"sdpa", "llmref-auto", "naive", "torch-mha", "llmref-mha"} <= impls
    for case in found:
        assert case.seq_len in spec.seq_lens
        assert case.seq_len <= spec.max_seq_len.get(case.implementation, case.seq_len)
        assert case.baseline == cases.BASELINES[case.group]
    ids = [(c.group, c.id) for c in found]
    assert len(ids) == len(set(ids))
    # every non-baseline case has a baseline measurement at the same T
    base = {(c.group, c.seq_len) for c in found if c.is_baseline}
    assert all((c.group, c.seq_len) in base for c in found)


def test_default_sweep_states_the_documented_setup() -> None:
    found = cases.sweep("default")
    assert sorted({c.seq_len for c in found}) == [128, 256, 512, 1024, 2048, 4096]
    assert max(c.seq_len for c in found if c.implementation == "naive") == 2048
    assert (cases.BATCH, cases.HEADS, cases.HEAD_DIM, cases.D_MODEL) == (1, 8, 64, 512)
    assert all(c.dtype == "float32" for c in found)


def test_sweep_name_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cases.SWEEP_ENV, "quick")
    assert cases.sweep_name() == "quick"
    assert cases.sweep_name("full") == "full"
    monkeypatch.setenv(cases.SWEEP_ENV, "bogus")
    with pytest.raises(ValueError, match=cases.SWEEP_ENV):
        cases.sweep()
    with pytest.raises(ValueError, match="sweep must be one of"):
        cases.sweep("bogus")


def test_attention_cases_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="groups"):
        cases.attention_cases(groups=["nope"])
    with pytest.raises(ValueError, match="implementations"):
        cases.attention_cases(implementations=["nope"])
    with pytest.raises(ValueError, match="seq_lens"):
        cases.attention_cases(seq_lens=[0])


def test_case_ids_sort_by_sequence_length() -> None:
    found = cases.attention_cases(seq_lens=(128, 1024, 256), implementations=["sdpa"])
    ids = [c.id for c in found]
    assert ids == ["sdpa-T0128", "sdpa-T1024", "sdpa-T0256"]
    assert sorted(ids) == ["sdpa-T0128", "sdpa-T0256", "sdpa-T1024"]


@pytest.mark.parametrize("case", cases.attention_cases(seq_lens=TINY), ids=lambda c: c.id)
def test_case_callables_run_with_the_right_shapes(case: cases.Case) -> None:
    out = case.make("cpu")()
    if case.group == "attention-functional":
        assert out.shape == (cases.BATCH, cases.HEADS, case.seq_len, cases.HEAD_DIM)
    else:
        assert out.shape == (cases.BATCH, case.seq_len, cases.D_MODEL)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    info = case.extra_info("cpu")
    assert info["implementation"] == case.implementation
    assert info["seq_len"] == case.seq_len
    assert (info["dtype"], info["device"], info["baseline"]) == ("float32", "cpu", case.baseline)
    assert info["threads"] == torch.get_num_threads()


@pytest.mark.parametrize("group", sorted(cases.BASELINES))
def test_cases_of_a_group_compute_the_same_result(group: str) -> None:
    # Same inputs, same weights: every implementation must agree with the baseline.
    found = [c for c in cases.attention_cases(seq_lens=(16,), groups=[group])]
    outs = {c.implementation: c.make("cpu")() for c in found}
    ref = outs[cases.BASELINES[group]]
    for name, out in outs.items():
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, msg=name)


def test_make_is_deterministic() -> None:
    case = cases.attention_cases(seq_lens=(8,), implementations=["llmref-mha"])[0]
    torch.testing.assert_close(case.make()(), case.make()(), atol=0, rtol=0)
    state = torch.random.get_rng_state()
    case.make()
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_resolve_device_and_synchronizer() -> None:
    assert cases.resolve_device(None) == torch.device("cpu")
    assert cases.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        cases.resolve_device("not-a-device")
    assert cases.synchronizer("cpu")() is None


def test_measure_counts_rounds_and_warmup() -> None:
    calls: list[int] = []
    timing = measure.time_callable(lambda: calls.append(1), rounds=4, warmup=2)
    assert len(calls) == 6
    assert timing.rounds == 4
    assert timing.min <= timing.median <= max(timing.times)
    assert timing.iqr >= 0
    with pytest.raises(ValueError, match="rounds"):
        measure.time_callable(lambda: None, rounds=0)
    with pytest.raises(ValueError, match="warmup"):
        measure.time_callable(lambda: None, warmup=-1)


def test_measure_stops_at_max_time() -> None:
    timing = measure.time_callable(lambda: sum(range(100)), rounds=10**6, warmup=0, max_time=0.01)
    assert 1 <= timing.rounds < 10**6


def test_timing_statistics() -> None:
    t = measure.Timing((4.0, 1.0, 3.0, 2.0, 5.0))
    assert t.median == 3.0
    assert t.mean == 3.0
    assert t.min == 1.0
    assert t.iqr == pytest.approx(2.0)  # q1 = 2, q3 = 4
    assert measure.Timing((1.0,)).iqr == 0.0


def test_plan_rounds_scales_with_call_time() -> None:
    assert measure.plan_rounds(lambda: None, max_time=1.0, min_rounds=5, max_rounds=50) == 50
    slow = measure.plan_rounds(lambda: sum(range(200_000)), max_time=1e-6, min_rounds=7)
    assert slow == 7


def test_run_cases_returns_records() -> None:
    found = cases.attention_cases(seq_lens=(8,), groups=["attention-functional"])
    lines: list[str] = []
    recs = measure.run_cases(found, rounds=2, progress=lines.append)
    assert [(r.implementation, r.seq_len) for r in recs] == [
        (c.implementation, c.seq_len) for c in found
    ]
    assert all(r.rounds == 2 and r.median > 0 and r.source == "measure" for r in recs)
    assert all(r.baseline == "sdpa" and r.device == "cpu" for r in recs)
    assert all(r.threads == torch.get_num_threads() for r in recs)
    assert len(lines) == len(found)


def _bench(group: str, impl: str, seq_len: int, median: float, **extra: Any) -> dict[str, Any]:
    """One benchmark entry shaped like pytest-benchmark's JSON output."""
    info = {
        "implementation": impl,
        "seq_len": seq_len,
        "dtype": "float32",
        "device": "cpu",
        "threads": 2,
    }
    info.update(extra)
    return {
        "group": group,
        "name": f"test_attention[{impl}-T{seq_len:04d}]",
        "fullname": f"benchmarks/bench_attention.py::test_attention[{impl}-T{seq_len:04d}]",
        "params": {"case": "?"},
        "param": f"{impl}-T{seq_len:04d}",
        "extra_info": info,
        "options": {"disable_gc": False, "timer": "perf_counter"},
        "stats": {
            "min": median * 0.9,
            "max": median * 1.5,
            "mean": median * 1.05,
            "stddev": median * 0.1,
            "rounds": 11,
            "median": median,
            "iqr": median * 0.05,
            "q1": median * 0.97,
            "q3": median * 1.02,
            "iqr_outliers": 0,
            "stddev_outliers": 1,
            "outliers": "1;0",
            "ld15iqr": median * 0.9,
            "hd15iqr": median * 1.2,
            "ops": 1 / (median * 1.05),
            "total": median * 11,
            "iterations": 1,
        },
    }


def _document(benches: list[dict[str, Any]], when: str = "2025-01-01T00:00:00") -> dict[str, Any]:
    return {
        "machine_info": {"cpu": {"brand_raw": "Test CPU"}, "python_version": "3.11.7"},
        "commit_info": {},
        "benchmarks": benches,
        "datetime": when,
        "version": "5.3.1",
    }


FUNC = "attention-functional"
MOD = "attention-module"


def _synthetic() -> dict[str, Any]:
    benches = []
    for t, base in ((128, 2e-4), (1024, 8e-3)):
        benches.append(_bench(FUNC, "sdpa", t, base, baseline="sdpa"))
        benches.append(_bench(FUNC, "llmref-auto", t, base * 1.02, baseline="sdpa"))
        benches.append(_bench(FUNC, "naive", t, base * 10, baseline="sdpa"))
        benches.append(_bench(MOD, "torch-mha", t, base * 3, baseline="torch-mha"))
        benches.append(_bench(MOD, "llmref-mha", t, base * 2.4, baseline="torch-mha"))
    return _document(benches)


def test_results_round_trip_pytest_benchmark_json(tmp_path: Path) -> None:
    doc = _synthetic()
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc))
    recs = results.load_json(path)
    assert len(recs) == len(doc["benchmarks"])
    for rec, bench in zip(recs, doc["benchmarks"], strict=True):
        assert rec.group == bench["group"]
        assert rec.implementation == bench["extra_info"]["implementation"]
        assert rec.seq_len == bench["extra_info"]["seq_len"]
        assert rec.median == bench["stats"]["median"]
        assert rec.iqr == bench["stats"]["iqr"]
        assert rec.rounds == 11
        assert rec.mean == bench["stats"]["mean"]
        assert rec.min == bench["stats"]["min"]
        assert rec.name == bench["name"]
        assert rec.threads == 2
        assert rec.source == str(path)
        assert rec.datetime == doc["datetime"]
        assert rec.as_dict()["median"] == rec.median
    assert results.groups(recs) == [FUNC, MOD]
    assert results.implementations(recs, FUNC) == ["sdpa", "llmref-auto", "naive"]
    extra = [
        *recs,
        Record(FUNC, "chunked", 128, 1.0, 0.0, 5),
        Record(FUNC, "llmref-x", 8, 1.0, 0.0, 5),
    ]
    assert results.implementations(extra, FUNC) == [
        "sdpa",
        "llmref-auto",
        "llmref-x",
        "chunked",
        "naive",
    ]
    assert results.seq_lens(recs, MOD) == [128, 1024]


def test_results_fall_back_to_the_test_id() -> None:
    bench = _bench(FUNC, "naive", 256, 1e-3)
    bench["extra_info"] = {}
    (rec,) = results.records_from_json(_document([bench]))
    assert (rec.implementation, rec.seq_len) == ("naive", 256)
    assert results.baseline_of([rec], FUNC) == "sdpa"  # from cases.BASELINES
    bench["name"] = "test_something_else"
    with pytest.raises(ValueError, match="extra_info"):
        results.records_from_json(_document([bench]))
    with pytest.raises(ValueError, match="benchmarks"):
        results.records_from_json({"machine_info": {}})


def test_load_dir_keeps_the_newest_and_skips_other_json(tmp_path: Path) -> None:
    old = _document([_bench(FUNC, "sdpa", 128, 1.0)], when="2024-01-01T00:00:00")
    new = _document([_bench(FUNC, "sdpa", 128, 2.0)], when="2025-06-01T00:00:00")
    (tmp_path / "b_old.json").write_text(json.dumps(old))
    (tmp_path / "a_new.json").write_text(json.dumps(new))
    (tmp_path / "other.json").write_text(json.dumps({"not": "benchmarks"}))
    (tmp_path / "broken.json").write_text("{")
    (rec,) = results.load_dir(tmp_path)
    assert rec.median == 2.0
    with pytest.raises(FileNotFoundError):
        results.load_dir(tmp_path / "missing")


def test_ratios_are_median_over_baseline_median() -> None:
    recs = results.records_from_json(_synthetic())
    func = results.ratios(recs, FUNC)
    assert func[("sdpa", 128)] == 1.0
    assert func[("llmref-auto", 128)] == pytest.approx(1.02)
    assert func[("naive", 1024)] == pytest.approx(10.0)
    mod = results.ratios(recs, MOD)
    assert mod[("llmref-mha", 1024)] == pytest.approx(0.8)
    assert set(mod) == {(i, t) for i in ("torch-mha", "llmref-mha") for t in (128, 1024)}
    # a case without a baseline measurement at its T gets no ratio
    extra = Record(FUNC, "naive", 4096, 1.0, 0.0, 5, baseline="sdpa")
    assert ("naive", 4096) not in results.ratios([*recs, extra], FUNC)
    # explicit baseline
    assert results.ratios(recs, FUNC, "naive")[("sdpa", 128)] == pytest.approx(0.1)


def test_group_table_lists_medians_and_ratios() -> None:
    recs = results.records_from_json(_synthetic())
    table = report.group_table(recs, FUNC)
    lines = table.splitlines()
    assert lines[0] == (
        "| T | sdpa [ms] | llmref-auto [ms] | naive [ms] | llmref-auto / sdpa | naive / sdpa |"
    )
    assert lines[2] == "| 128 | 0.200 | 0.204 | 2.00 | 1.02 | 10.00 |"
    assert lines[3] == "| 1024 | 8.00 | 8.16 | 80.0 | 1.02 | 10.00 |"
    missing = [*recs, Record(FUNC, "naive", 4096, 1.0, 0.0, 5, baseline="sdpa")]
    assert report.group_table(missing, FUNC).splitlines()[-1] == "| 4096 | — | — | 1000 | — | — |"


def test_group_table_transposes_wide_groups() -> None:
    recs = [Record("g", "base", 16, 1e-3, 0.0, 5, baseline="base")]
    recs += [Record("g", f"impl{i}", 16, 2e-3, 0.0, 5, baseline="base") for i in range(7)]
    lines = report.group_table(recs, "g").splitlines()
    assert lines[0] == "| implementation | T=16 [ms] | T=16: / base |"
    assert lines[2] == "| base | 1.00 | 1.00 |"
    assert lines[3] == "| impl0 | 2.00 | 2.00 |"
    assert len(lines) == 2 + 8
    assert report.group_table(recs, "g", transpose=False).splitlines()[0].startswith("| T |")


def test_format_ms() -> None:
    assert report.format_ms(math.nan) == "—"
    assert report.format_ms(1.5) == "1500"
    assert report.format_ms(2.5e-3) == "2.50"


def test_plots_draw_every_implementation() -> None:
    from matplotlib.figure import Figure

    from llmref.bench import plot

    recs = results.records_from_json(_synthetic())
    fig = plot.plot_group(recs, FUNC, fig=Figure())
    times_ax, ratio_ax = fig.axes
    labels = [line.get_label() for line in times_ax.get_lines()]
    assert labels[:3] == ["sdpa (baseline)", "llmref-auto", "naive"]
    assert times_ax.get_xscale() == "log" and times_ax.get_yscale() == "log"
    assert [line.get_label() for line in ratio_ax.get_lines()][1:] == ["llmref-auto", "naive"]
    with pytest.raises(ValueError, match="no records"):
        plot.plot_times(recs, "nope", ax=Figure().subplots())
    with pytest.raises(ValueError, match="baseline"):
        plot.plot_ratios(recs, FUNC, baseline="missing", ax=Figure().subplots())


def test_report_writes_pngs_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "results"
    src.mkdir()
    (src / "bench_attention.json").write_text(json.dumps(_synthetic()))
    out = tmp_path / "out"
    assert report.main([str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    expected = [out / f"{FUNC}.png", out / f"{MOD}.png", out / "summary.md"]
    assert printed == [str(p) for p in expected]
    for png in expected[:2]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = expected[2].read_text()
    assert f"## {FUNC}" in summary and f"## {MOD}" in summary
    assert "| 1024 | 24.0 | 19.2 | 0.80 |" in summary
    assert "Test CPU" in summary and "bench_attention.json" in summary
    assert "torch threads 2." in summary


def test_report_defaults_to_the_results_dir_and_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bench.json").write_text(json.dumps(_synthetic()))
    written = report.write_report(tmp_path)
    assert {p.parent for p in written} == {tmp_path}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main([str(empty)]) == 1
    assert "no pytest-benchmark results" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing")]) == 1


def test_report_runs_as_a_module(tmp_path: Path) -> None:
    (tmp_path / "bench.json").write_text(json.dumps(_synthetic()))
    proc = subprocess.run(
        [sys.executable, "-m", "llmref.bench.report", str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert proc.stdout.split()[-1] == str(tmp_path / "summary.md")
    assert "Warning" not in proc.stderr


def test_find_project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.ROOT_ENV, raising=False)
    root = tmp_path / "repo"
    (root / "llmref").mkdir(parents=True)
    (root / "llmref" / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text("")
    deep = root / "gallery" / "benchmarks"
    deep.mkdir(parents=True)
    assert paths.find_project_root([deep]) == root.resolve()
    assert paths.find_project_root([tmp_path]) is None
    monkeypatch.setenv(paths.ROOT_ENV, str(root))
    assert paths.find_project_root([tmp_path]) == root.resolve()
    monkeypatch.setenv(paths.ROOT_ENV, str(tmp_path))
    with pytest.raises(ValueError, match=paths.ROOT_ENV):
        paths.find_project_root()


def test_results_dir_is_under_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.ROOT_ENV, raising=False)
    found = paths.results_dir()
    assert found is not None and found.name == "results"
    assert (found.parent / "llmref" / "bench" / "paths.py").is_file()
