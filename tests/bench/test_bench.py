"""Tests of llmref.bench: the cases, the timer, results parsing, plots and the report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmref.bench import cases, measure, paths, report, results
from llmref.bench.layout import LAYOUT_KEY, STOP_KEY, TIME_PER_CALL, Axis, Extra, Layout, Metric
from llmref.bench.results import Record
from tests.bench.synthetic import FUNC, MOD, attention_document, document, entry

TINY = (8, 16)


def test_import_llmref_bench_does_not_import_matplotlib() -> None:
    code = (
        "import sys, llmref, llmref.bench, llmref.bench.plot, llmref.bench.report; "
        "sys.exit('matplotlib' in sys.modules)"
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
    assert [(r.series, r.x) for r in recs] == [(c.implementation, c.seq_len) for c in found]
    assert all(r.rounds == 2 and r.value > 0 and r.source == "measure" for r in recs)
    assert all(r.low <= r.value <= r.high for r in recs)
    assert all(r.baseline == "sdpa" and r.device == "cpu" for r in recs)
    assert all(r.threads == torch.get_num_threads() for r in recs)
    assert all(r.layout == cases.ATTENTION_LAYOUT for r in recs)
    assert len(lines) == len(found)


def test_capped_cases_say_why_they_stop() -> None:
    found = cases.attention_cases(seq_lens=(128, 4096), max_seq_len={"naive": 128})
    naive = [c for c in found if c.implementation == "naive"]
    assert [c.seq_len for c in naive] == [128]
    assert "T = 128" in naive[0].extra_info()[STOP_KEY]
    assert all(STOP_KEY not in c.extra_info() for c in found if c.implementation == "sdpa")


def test_results_place_records_by_their_layout(tmp_path: Path) -> None:
    doc = attention_document()
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc))
    loaded = results.load_json(path)
    assert loaded.skipped == []
    assert len(loaded.records) == len(doc["benchmarks"])
    by_key = {
        (b["group"], b["extra_info"]["implementation"], b["extra_info"]["seq_len"]): b
        for b in doc["benchmarks"]
    }
    for rec in loaded.records:
        bench = by_key[(rec.group, rec.series, rec.x)]
        assert rec.value == pytest.approx(bench["stats"]["median"] * 1e3)  # declared unit: ms
        assert rec.low == pytest.approx(bench["stats"]["q1"] * 1e3)
        assert rec.high == pytest.approx(bench["stats"]["q3"] * 1e3)
        assert rec.rounds == 11 and rec.threads == 2 and rec.source == str(path)
        assert rec.datetime == doc["datetime"] and rec.layout == cases.ATTENTION_LAYOUT
    assert results.groups(loaded.records) == [FUNC, MOD]
    assert results.series_of(loaded.records, FUNC) == ["sdpa", "llmref-auto", "naive"]
    assert results.x_values(loaded.records, MOD) == [128, 1024]
    (source,) = loaded.sources
    assert source.machine["cpu"] == "Test CPU" and source.run["sweep"] == "quick"


def test_results_read_other_axes_and_metrics() -> None:
    throughput = Layout(
        Axis("rows", "rows"),
        Metric("throughput", "Mweights/s", per="elements", scale=1e-6, higher_is_better=True),
        series="format",
    )
    stored = Layout(
        Axis("batch", "batch size", "sequences"),
        Metric("decode", "tokens/s", key="rate", higher_is_better=True),
    )
    benches = [
        entry("q", "int8", 256, 1e-3, layout=throughput, elements=2_000_000),
        entry("g", "hf", 8, 1.0, layout=stored, rate=50.0, rate_q1=40.0, rate_q3=60.0),
    ]
    recs, skipped, _ = results.read_document(document(benches), "x.json")
    assert skipped == []
    quant, gen = sorted(recs, key=lambda r: r.group, reverse=True)
    assert (quant.series, quant.x) == ("int8", 256)
    assert quant.value == pytest.approx(2000.0)  # 2e6 weights / 1 ms, in millions per second
    assert quant.low < quant.value < quant.high
    assert (gen.x, gen.value, gen.low, gen.high) == (8, 50.0, 40.0, 60.0)


def test_unplaceable_records_are_listed_and_the_rest_reported(tmp_path: Path) -> None:
    doc = attention_document()
    broken = entry(FUNC, "naive", 256, 1e-3, name="test_attention[broken]")
    del broken["extra_info"]["seq_len"]
    undeclared = entry(FUNC, "naive", 512, 1e-3, name="test_attention[undeclared]")
    del undeclared["extra_info"][LAYOUT_KEY]
    doc["benchmarks"] += [broken, undeclared]
    (tmp_path / "bench.json").write_text(json.dumps(doc))
    loaded = results.load_dir(tmp_path)
    assert len(loaded.records) == len(doc["benchmarks"]) - 2
    reasons = {s.what.split("::", 1)[1]: s.reason for s in loaded.skipped_records}
    assert set(reasons) == {
        "benchmarks/bench_attention.py::test_attention[broken]",
        "benchmarks/bench_attention.py::test_attention[undeclared]",
    }
    assert "'seq_len'" in reasons["benchmarks/bench_attention.py::test_attention[broken]"]
    assert "layout" in reasons["benchmarks/bench_attention.py::test_attention[undeclared]"]
    assert loaded.skipped_files == []


def test_load_dir_names_foreign_and_old_files_and_keeps_the_newest(tmp_path: Path) -> None:
    old = document([entry(FUNC, "sdpa", 128, 1.0)], when="2024-01-01T00:00:00")
    new = document([entry(FUNC, "sdpa", 128, 2.0)], when="2025-06-01T00:00:00")
    (tmp_path / "b_old.json").write_text(json.dumps(old))
    (tmp_path / "a_new.json").write_text(json.dumps(new))
    (tmp_path / "other.json").write_text(json.dumps({"not": "benchmarks"}))
    (tmp_path / "broken.json").write_text("{")
    before_layouts = document([entry(FUNC, "sdpa", 128, 3.0)])
    del before_layouts["llmref"]
    del before_layouts["benchmarks"][0]["extra_info"][LAYOUT_KEY]
    (tmp_path / "older_llmref.json").write_text(json.dumps(before_layouts))
    loaded = results.load_dir(tmp_path)
    (rec,) = loaded.records
    assert rec.value == pytest.approx(2000.0)
    skipped = {Path(s.what).name: s.reason for s in loaded.skipped_files}
    assert set(skipped) == {"other.json", "broken.json", "older_llmref.json"}
    assert "not pytest-benchmark" in skipped["other.json"]
    assert "older llmref" in skipped["older_llmref.json"]
    with pytest.raises(FileNotFoundError):
        results.load_dir(tmp_path / "missing")


def test_ratios_divide_by_the_baseline_at_the_same_x() -> None:
    recs, _, _ = results.read_document(attention_document())
    func = results.ratios(recs, FUNC)
    assert func[("sdpa", 128)] == 1.0
    assert func[("llmref-auto", 128)] == pytest.approx(1.02)
    assert func[("naive", 1024)] == pytest.approx(10.0)
    mod = results.ratios(recs, MOD)
    assert mod[("llmref-mha", 1024)] == pytest.approx(0.8)
    lay = cases.ATTENTION_LAYOUT
    extra = Record(FUNC, "naive", 4096, 1.0, lay, baseline="sdpa")
    assert ("naive", 4096) not in results.ratios([*recs, extra], FUNC)
    assert results.ratios(recs, FUNC, "naive")[("sdpa", 128)] == pytest.approx(0.1)
    assert results.stopped_series([*recs, extra], FUNC)["sdpa"][0] == 1024


def test_group_table_uses_the_declared_axis_and_unit() -> None:
    recs, _, _ = results.read_document(attention_document())
    lines = report.group_table(recs, FUNC).splitlines()
    assert lines[0] == (
        "| T | sdpa [ms] | llmref-auto [ms] | naive [ms] | llmref-auto / sdpa | naive / sdpa |"
    )
    assert lines[2] == "| 128 | 0.200 | 0.204 | 2.00 | 1.02 | 10.00 |"
    assert lines[3] == "| 1024 | 8.00 | 8.16 | 80.0 | 1.02 | 10.00 |"
    tokens = Layout(Axis("tokens", "tokens M", "tokens", symbol="M"), TIME_PER_CALL)
    recs = [Record("q", "fp32", m, 1.0, tokens, baseline="fp32") for m in (1, 16)]
    assert report.group_table(recs, "q").splitlines()[0] == "| M | fp32 [ms] |"


def test_group_table_of_a_single_x_lists_series_and_extras() -> None:
    lay = Layout(
        Axis("size", "layer size N", symbol="N"),
        Metric("time to quantize", "s"),
        series="method",
        extras=(Extra("peak_bytes", "peak memory", "MiB", 2**-20),),
    )
    recs = [
        Record("m", "rtn", 1024, 2.0, lay, baseline="rtn", info={"peak_bytes": 2**21}),
        Record("m", "gptq", 1024, 5.0, lay, baseline="rtn"),
    ]
    assert report.group_table(recs, "m").splitlines() == [
        "| series | time to quantize [s] | / rtn | peak memory [MiB] |",
        "|---|---:|---:|---:|",
        "| rtn | 2.00 | 1.00 | 2.00 |",
        "| gptq | 5.00 | 2.50 | — |",
    ]


def test_group_table_transposes_wide_groups_and_marks_noisy_values() -> None:
    lay = cases.ATTENTION_LAYOUT
    recs = [Record("g", "base", 16, 1.0, lay, low=0.5, high=1.5, baseline="base")]
    recs += [
        Record("g", f"impl{i}", t, 2.0, lay, baseline="base") for i in range(7) for t in (16, 32)
    ]
    lines = report.group_table(recs, "g").splitlines()
    assert lines[0].startswith("| series | T=16 [ms] | T=32 [ms] | T=16: / base |")
    assert lines[2] == "| base | 1.00 ±50% | — | 1.00 | — |"
    assert len(lines) == 2 + 8
    assert report.group_table(recs, "g", transpose=False).splitlines()[0].startswith("| T |")


def test_format_number() -> None:
    assert report.format_number(math.nan) == "—"
    assert report.format_number(1500.0) == "1500"
    assert report.format_number(2.5) == "2.50"
    assert report.format_number(0.0123) == "0.0123"


def test_series_styles_are_distinct_beyond_ten_series() -> None:
    from llmref.bench import plot

    styles = plot.series_styles([f"s{i}" for i in range(25)])
    combos = {(s["color"], s["marker"], s["linestyle"]) for s in styles.values()}
    assert len(combos) == 25
    assert styles["s0"]["color"] == styles["s10"]["color"]
    assert styles["s0"]["linestyle"] != styles["s10"]["linestyle"]


def test_plots_follow_the_layout() -> None:
    from matplotlib.figure import Figure

    from llmref.bench import plot

    recs, _, _ = results.read_document(attention_document())
    fig = plot.plot_group(recs, FUNC, fig=Figure())
    values_ax, ratio_ax = fig.axes
    labels = [line.get_label() for line in values_ax.get_lines()]
    assert labels == ["sdpa (baseline)", "llmref-auto", "naive", r"$\propto T^2$"]
    assert values_ax.get_xlabel() == "sequence length T [tokens]"
    assert values_ax.get_ylabel() == "median time per call [ms]"
    assert values_ax.get_xscale() == "log" and values_ax.get_yscale() == "log"
    assert values_ax.get_legend() is None and len(fig.legends) == 1  # legend outside the data
    assert [line.get_label() for line in ratio_ax.get_lines()][1:] == ["llmref-auto", "naive"]
    # no T**2 guide where none is declared; a series that stops early says so
    tokens = Layout(Axis("tokens", "tokens M", "tokens", symbol="M"), TIME_PER_CALL)
    recs = [Record("q", "fp32", m, 1.0 * m, tokens, baseline="fp32") for m in (1, 16, 256)]
    recs += [Record("q", "slow", m, 3.0 * m, tokens, baseline="fp32") for m in (1, 16)]
    ax = plot.plot_values(recs, "q", ax=Figure().subplots())
    assert [line.get_label() for line in ax.get_lines()] == [
        "fp32 (baseline)",
        "slow — stops at M = 16",
    ]
    with pytest.raises(ValueError, match="no records"):
        plot.plot_values(recs, "nope", ax=Figure().subplots())
    with pytest.raises(ValueError, match="baseline"):
        plot.plot_ratios(recs, "q", baseline="missing", ax=Figure().subplots())


def test_single_x_groups_are_drawn_as_bars() -> None:
    from matplotlib.figure import Figure

    from llmref.bench import plot

    lay = Layout(Axis("size", "N"), Metric("time", "s"), series="method")
    recs = [Record("m", n, 1024, v, lay, baseline="rtn") for n, v in (("rtn", 1.0), ("gptq", 3.0))]
    fig = plot.plot_group(recs, "m", fig=Figure())
    values_ax, ratio_ax = fig.axes
    assert len(values_ax.patches) == 2 and len(ratio_ax.patches) == 2
    labels = [t.get_text() for t in values_ax.get_yticklabels()]
    ticks = dict(zip(labels, values_ax.get_yticks(), strict=True))
    assert ticks["rtn"] > ticks["gptq"]  # the baseline on top


def test_report_writes_pngs_and_a_summary_naming_the_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "results"
    src.mkdir()
    (src / "bench_attention.json").write_text(json.dumps(attention_document()))
    out = tmp_path / "out"
    assert report.main([str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = [out / f"{FUNC}.png", out / f"{MOD}.png", out / "summary.md"]
    assert printed[0] == (
        f"llmref.bench.report: 10 records in 2 groups from {src / 'bench_attention.json'}"
    )
    assert printed[1:] == [str(p) for p in expected]
    for png in expected[:2]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = expected[2].read_text()
    lines = summary.splitlines()
    assert lines[0] == "# Benchmark summary"
    assert lines[2].startswith("Machine: Test CPU (AVX2; no AVX-512")
    assert "2 cores" in lines[2] and "load average 0.5 at start" in lines[2]
    assert "Warning" not in summary and "Skipped" not in summary
    assert f"## {FUNC}" in summary and f"## {MOD}" in summary
    assert "| 1024 | 24.0 | 19.2 | 0.80 |" in summary
    assert "sweep `quick`, wall time 1.5 min" in summary


def test_report_warns_on_a_busy_machine_and_lists_what_it_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = attention_document()
    doc["llmref"]["machine"] = {**doc["llmref"]["machine"], "load_average": [5.0, 4.0, 3.0]}
    bad = entry(FUNC, "naive", 256, 1e-3, name="test_attention[bad]")
    del bad["extra_info"]["implementation"]
    doc["benchmarks"].append(bad)
    (tmp_path / "bench.json").write_text(json.dumps(doc))
    (tmp_path / "foreign.json").write_text(json.dumps([1, 2]))
    assert report.main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "foreign.json" in err and "test_attention[bad]" in err
    summary = (tmp_path / "summary.md").read_text().splitlines()
    assert summary[3].startswith("**Warning:** the load average at start (5) exceeded the 2 cores")
    text = "\n".join(summary)
    assert "## Skipped (2)" in text and "foreign.json" in text and "test_attention[bad]" in text
    assert f"## {FUNC}" in text  # the rest is still reported


def test_report_fails_cleanly_without_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report.main([str(tmp_path)]) == 1
    assert "no reportable benchmark results" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing")]) == 1


def test_report_runs_as_a_module(tmp_path: Path) -> None:
    (tmp_path / "bench.json").write_text(json.dumps(attention_document()))
    proc = subprocess.run(
        [sys.executable, "-m", "llmref.bench.report", str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert proc.stdout.split()[-1] == str(tmp_path / "summary.md")
    assert "Warning" not in proc.stderr


def test_check_passes_a_complete_report_and_names_what_is_missing(tmp_path: Path) -> None:
    from llmref.bench import check

    doc = attention_document()
    doc["llmref"]["suites"]["bench_other.py"] = {"collected": 3, "opt_in": ""}
    doc["llmref"]["suites"]["bench_extra.py"] = {"collected": 2, "opt_in": "a compiler"}
    (tmp_path / "bench.json").write_text(json.dumps(doc))
    assert check.check_results(tmp_path) == [
        "summary.md was not written",
        f"group {FUNC}: no PNG plot {FUNC}.png",
        f"group {MOD}: no PNG plot {MOD}.png",
        "suite bench_other.py produced no result",
    ]
    report.write_report(tmp_path)
    assert check.check_results(tmp_path) == ["suite bench_other.py produced no result"]
    del doc["llmref"]["suites"]["bench_other.py"]
    (tmp_path / "bench.json").write_text(json.dumps(doc))
    assert check.check_results(tmp_path) == []
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "bench_new.py").write_text("")
    assert check.check_results(tmp_path, suites=suites) == [
        "suite bench_new.py was not collected in the run"
    ]
    bad = entry(FUNC, "naive", 256, 1e-3, name="test_attention[bad]")
    del bad["extra_info"]["seq_len"]
    doc["benchmarks"].append(bad)
    (tmp_path / "bench.json").write_text(json.dumps(doc))
    report.write_report(tmp_path)
    (problem,) = check.check_results(tmp_path)
    assert problem.startswith("skipped ") and "test_attention[bad]" in problem
    (tmp_path / "summary.md").write_text("# Benchmark summary\n")
    assert check.main([str(tmp_path)]) == 1


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


def test_explicit_results_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.BENCH_JSON_ENV, raising=False)
    assert paths.explicit_results_file(paths.BENCH_JSON_ENV) is None
    target = tmp_path / "bench.json"
    monkeypatch.setenv(paths.BENCH_JSON_ENV, str(target))
    with pytest.raises(FileNotFoundError, match=paths.BENCH_JSON_ENV):
        paths.explicit_results_file(paths.BENCH_JSON_ENV)
    target.write_text("{}")
    assert paths.explicit_results_file(paths.BENCH_JSON_ENV) == target


def test_gallery_reads_no_results_folder_implicitly() -> None:
    gallery = Path(__file__).resolve().parents[2] / "gallery" / "benchmarks"
    for script in gallery.glob("plot_*.py"):
        text = script.read_text()
        assert "find_project_root" not in text and "results_dir" not in text, script.name
        assert "explicit_results_file" in text, script.name
