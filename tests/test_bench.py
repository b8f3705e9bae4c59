"""The benchmark harness runs end to end in quick mode and writes every section (numbers are not
checked: they are measurements, not test results)."""

import json

import pytest
import torch

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
    # every section has its table (many targets: measured, or marked not available), and the
    # headline its own
    separators = [line for line in text.splitlines() if line.startswith("| --- |")]
    assert len(separators) == len(bench.SECTIONS) + 1
    assert "ViT (tiny)" in text and "BERT-base (tiny)" in text and "BART (tiny)" in text
    assert "worker processes" in text  # the 2-process evaluation ran
    assert "## Headline" in text and "IntegratedGradients(50) / ours" in text
    saved = json.loads(out.with_suffix(".json").read_text())
    assert list(saved["sections"]) == list(bench.SECTIONS) == list(data["sections"])
    # the batch section measures the floor (forward + gradients to the attention calls) beside
    # plain and ours, for every model and batch
    batch = saved["sections"]["batch"]
    assert "floor (s)" in batch["header"] and "ours / floor" in batch["header"]
    assert "| floor (s) | ours (s) | ours / plain | ours / floor |" in text
    assert len(batch["data"]) == 6
    for item in batch["data"]:
        assert item["floor"] > 0 and item["ratio_floor"] == item["ours"] / item["floor"], item
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


def _fake_run():
    """A run's saved data, by hand: ratios that meet their goals and ratios that do not."""
    return {
        "machine": {"date": "2026-12-06 12:00", "cpu": "a CPU", "cores": 2, "torch": "2",
                    "transformers": "5", "commit": "abc1234"},
        "options": {"threads": 2, "device": "cpu", "repeats": 5},
        "load_average": [0.1, 0.3],
        "sections": {
            "batch": {"data": [{"model": "ViT-base", "batch": 1, "ratio": 0.65},
                               {"model": "LXMERT-base", "batch": 1, "ratio": 1.1},
                               {"model": "LXMERT-base", "batch": 8, "ratio": 0.9}]},
            "long_context": {"data": [
                {"model": "BERT-base", "tokens": 2048,
                 "plain": {"seconds": 10.0, "peak_mib": 2000.0},
                 "ours": {"seconds": 12.0, "peak_mib": 2200.0}},
                {"model": "BERT-mini", "tokens": 8192, "plain": {"error": "skipped: budget"},
                 "ours": {"error": "not run"}},
            ]},
            "integrated_gradients": {"data": [{"model": "ViT-base", "ratio": 41.0}]},
        },
    }


def test_headline_reads_each_ratio_against_its_goal():
    rows = {row[0]: row[1:] for row in bench.headline_rows(_fake_run()["sections"])}
    assert rows["ViT-base, batch 1: `attribute` / plain forward+backward"] == [
        "0.65×", "≤ 0.7×", "yes"]
    # LXMERT's goal is its own (hand-written attention): 1.0
    assert rows["LXMERT-base, batch 1: `attribute` / plain forward+backward"] == [
        "1.10×", "≤ 1.0×", "**no**"]
    assert rows["LXMERT-base, batch 8: `attribute` / plain forward+backward"] == [
        "0.90×", "≤ 1.0×", "yes"]
    assert rows["BERT-base, 2048 tokens: time / plain"] == ["1.20×", "≤ 1.0×", "**no**"]
    assert rows["BERT-base, 2048 tokens: peak memory / plain"] == ["1.10×", "≤ 1.3×", "yes"]
    assert rows["ViT-base: IntegratedGradients(50) / ours"] == ["41.0×", "≥ 40×", "yes"]
    assert not any(case.startswith("BERT-mini") for case in rows)  # skipped: no row
    assert len(rows) == 6


def test_headline_goes_between_the_readme_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{bench.report.HEADLINE_START}\nold table\n"
                      f"{bench.report.HEADLINE_END}\nafter\n")
    text = bench.headline_markdown(_fake_run())
    assert "2026-12-06 12:00" in text and "a CPU" in text and "abc1234" in text
    bench.write_headline(readme, text)
    written = readme.read_text()
    assert "old table" not in written and text in written
    assert written.startswith("# x\n\nbefore\n") and written.endswith(
        f"{bench.report.HEADLINE_END}\nafter\n")
    bench.write_headline(readme, text)  # again: the same README (idempotent)
    assert readme.read_text() == written
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    with pytest.raises(ValueError, match="bench-headline"):
        bench.write_headline(plain, text)


def test_headline_reads_the_windowed_models_first_call_and_warm():
    sections = {"windowed": {"data": [
        {"model": "Swin-T 224 px", "ratio_first": 3.2, "ratio_warm": 1.4},
        {"model": "LED-base sizes, 1024 tokens", "ratio_first": 9.0, "ratio_warm": 1.6},
    ]}}
    rows = {row[0]: row[1:] for row in bench.headline_rows(sections)}
    assert rows["Swin-T 224 px: `explain` warm / plain"] == ["1.40×", "≤ 1.5×", "yes"]
    assert rows["Swin-T 224 px: `explain` first call / plain"] == ["3.20×", "≤ 3×", "**no**"]
    assert rows["LED-base sizes, 1024 tokens: `explain` warm / plain"][2] == "**no**"
    assert len(rows) == 3  # no first-call goal for the long windowed models


def test_floor_reaches_every_attention_call_and_no_parameter():
    from captum_hetattn.bench import cases

    originals = torch.nn.functional.softmax, torch.nn.functional.scaled_dot_product_attention
    for build, calls in ((cases.build_vit, 2), (cases.build_bert, 2), (cases.build_lxmert, 11)):
        case = build(2, True)
        with cases.attention_outputs() as outputs:
            case.forward(*case.inputs, *(case.extra or ()))
        assert len(outputs) == calls, case.name  # every layer's attention, nothing else
        case.floor()
        assert all(p.grad is None for p in case.model.parameters()), case.name
    # the functions are restored after the block
    assert (torch.nn.functional.softmax,
            torch.nn.functional.scaled_dot_product_attention) == originals
