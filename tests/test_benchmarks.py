"""The benchmark pipeline in --quick mode writes the report and its figures (correctness, not timing)."""

from __future__ import annotations

import json


def test_quick_benchmark_writes_report_and_figures(tmp_path, monkeypatch):
    from benchmarks import run

    monkeypatch.setenv("FLEXNAS_CACHE", str(tmp_path / "cache"))
    report, results = tmp_path / "REPORT.md", tmp_path / "results"
    assert run.main(["--quick", "--report", str(report), "--results", str(results), "--threads", "1"]) == 0
    text = report.read_text()
    for heading in ("Teacher quality", "### Targets", "### Hypervolume", "### rFID validity", "### Search cost"):
        assert heading in text
    figures = tmp_path / "figures"
    assert (figures / "pareto_all.png").is_file() and list(figures.glob("pareto_nsga2_seed*.png"))
    assert list(figures.glob("grid_*.png"))
    data = json.loads((results / "compare.json").read_text())
    names = {c["kind"] for c in data["compared"]}
    assert {"teacher", "deepcache", "steps", "nsga2 s0"} <= names
    teacher = next(c for c in data["compared"] if c["kind"] == "teacher")
    assert teacher["rfid"] <= 1e-6 and teacher["macs_ratio"] == 1.0
    assert -1.0 <= data["kendall_tau"] <= 1.0
    # the report links figures that exist
    for line in text.splitlines():
        if line.startswith("![") and "figures/" in line:
            assert (tmp_path / line.split("(")[1].rstrip(")")).is_file()
    tq = json.loads((results / "teacher_quality.json").read_text())
    assert tq["samples"] == 100 and len(tq["class_histogram"]) == 10
