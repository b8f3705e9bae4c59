"""The benchmark harness runs end to end in quick mode and writes every section (numbers are not
checked: they are measurements, not test results)."""

import json

import pytest

from captum_hetattn import bench


def test_quick_run_writes_every_section(tmp_path):
    out = tmp_path / "bench" / "results.md"
    data = bench.run_benchmarks(out=out, quick=True, log=lambda _: None)
    text = out.read_text()
    assert text.startswith("# Benchmarks")
    for word in ("Machine:", "cores", "torch ", "transformers ", "captum ", "Date:",
                 "Load average"):
        assert word in text, word
    for key in bench.SECTIONS:
        assert f"## {bench.TITLES[key]}" in text, key
        assert f"Target: {bench.TARGETS[key]}" in text, key
    # every section has its table (many targets: measured, or marked not available)
    separators = [line for line in text.splitlines() if line.startswith("| --- |")]
    assert len(separators) == len(bench.SECTIONS)
    assert "ViT (tiny)" in text and "BERT-base (tiny)" in text and "BART (tiny)" in text
    assert "worker processes" in text  # the 2-process evaluation ran
    saved = json.loads(out.with_suffix(".json").read_text())
    assert list(saved["sections"]) == list(bench.SECTIONS) == list(data["sections"])
    long = saved["sections"]["long_context"]["data"][0]
    assert "error" not in long["plain"] and "error" not in long["ours"], long
    assert long["plain"]["peak_mib"] > 0
    # a run of one section keeps the others' figures from the earlier run (a run in parts)
    bench.run_benchmarks(out=out, quick=True, only=["integrated_gradients"], log=lambda _: None)
    again = out.read_text()
    assert again.count("Carried over from an earlier run") == len(bench.SECTIONS) - 1
    for key in bench.SECTIONS:
        assert f"## {bench.TITLES[key]}" in again, key
    resaved = json.loads(out.with_suffix(".json").read_text())["sections"]
    assert resaved["batch"]["rows"] == saved["sections"]["batch"]["rows"]


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark"):
        bench.run_benchmarks(out=tmp_path / "r.md", quick=True, only=["speed"])


def test_cli_bench_command(tmp_path, capsys):
    from captum_hetattn.cli import main

    out = tmp_path / "r.md"
    assert main(["bench", "--quick", "--only", "integrated_gradients", "--out", str(out)]) == 0
    assert "Integrated" in out.read_text() and str(out) in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "--only", "speed"])
