r"""Faults and bad input outside the engine: zoo weight integrity, evaluation of degenerate
relevance, and the CLI's up-front checks."""

from __future__ import annotations

import shutil

import pytest
import torch

from captum_hetattn import zoo


def test_flipped_bytes_in_a_weight_file_are_refused(tmp_path, monkeypatch):
    for path in zoo.WEIGHTS_DIR.iterdir():
        shutil.copy(path, tmp_path / path.name)
    target = tmp_path / "shapes_vit.safetensors"
    data = bytearray(target.read_bytes())
    generator = torch.Generator().manual_seed(0)
    for position in torch.randint(1024, len(data), (1000,), generator=generator).tolist():
        data[position] ^= 0xFF
    target.write_bytes(bytes(data))
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"shapes_vit\.safetensors are corrupted.*sha256.*"
                                         r"captum_hetattn\.zoo\.train shapes_vit"):
        zoo.load("shapes_vit")


def test_a_weight_file_without_checksum_is_refused_and_saving_records_one(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)
    model = torch.nn.Linear(2, 2)
    path = zoo.save_weights(model, "tiny")
    assert (tmp_path / zoo.CHECKSUMS).read_text().split() == [zoo._sha256(path), path.name]
    assert zoo.load_weights(torch.nn.Linear(2, 2), "tiny") is not None
    (tmp_path / zoo.CHECKSUMS).write_text("")
    with pytest.raises(ValueError, match=r"tiny\.safetensors have no checksum"):
        zoo.load_weights(torch.nn.Linear(2, 2), "tiny")


def test_the_shipped_checksums_match_the_shipped_weights():
    sums = zoo._checksums(zoo.WEIGHTS_DIR)
    shipped = sorted(p.name for p in zoo.WEIGHTS_DIR.glob("*.safetensors"))
    assert sorted(sums) == shipped
    for name in shipped:
        assert zoo._sha256(zoo.WEIGHTS_DIR / name) == sums[name]


# ------------------------------------------------------------------------------ evaluation
def _vqa():
    from captum_hetattn.zoo import load

    return load("shapes_vqa")


def _constant(zoo, batch):
    return {s: torch.ones(len(batch), e.shape[1]) for s, e in batch.evidence.items()}


def test_constant_relevance_points_at_chance_not_at_the_first_token():
    from captum_hetattn.evaluation import evaluate

    result = evaluate(_vqa(), {"constant": _constant}, n=40, seed=1, perturbation=False,
                      progress=False)
    for stream, scores in result.methods[0].streams.items():
        assert scores.pointing_game == pytest.approx(scores.pointing_chance, abs=1e-6), stream


def test_pointing_game_ties_share_the_point():
    from captum_hetattn.evaluation import pointing_game

    relevance = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 2.0, 2.0, 0.0]])
    evidence = torch.tensor([[True, False, False, False], [False, True, True, False]])
    assert pointing_game(relevance, evidence).tolist() == pytest.approx([1 / 3, 1.0])


@pytest.mark.parametrize("bad", ["nan", "stream", "batch", "tokens", "nothing"])
def test_bad_method_output_is_named(bad):
    from captum_hetattn.evaluation import evaluate

    def method(zoo, batch):
        out = _constant(zoo, batch)
        if bad == "nan":
            out["image"][0, 1] = float("nan")
        elif bad == "stream":
            out["imgae"] = out.pop("image")
        elif bad == "batch":
            out["image"] = out["image"][:-1]
        elif bad == "tokens":
            out["image"] = out["image"][:, :-1]
        else:
            out = {}
        return out

    expected = {"nan": r"NaN.*'image'", "stream": r"stream 'imgae'.*\['image', 'text'\]",
                "batch": r"shape \(3, .*'image'.*expected \(4,", "tokens": r"'image'.*expected",
                "nothing": "produced no relevance"}[bad]
    with pytest.raises(ValueError, match=r"method 'broken'.*" + expected):
        evaluate(_vqa(), {"broken": method}, n=4, seed=1, perturbation=False, progress=False)


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(batch_size=0), dict(seed=-1)])
def test_runner_counts_are_checked_before_any_work(kwargs):
    from captum_hetattn.evaluation import evaluate

    calls = []
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        evaluate(_vqa(), {"m": lambda z, b: calls.append(1) or _constant(z, b)},
                 progress=False, **kwargs)
    assert not calls


# ------------------------------------------------------------------------------ CLI
@pytest.mark.parametrize("argv, message", [
    (["demo", "--n", "0"], "--n must be ≥ 1"),
    (["demo", "--show", "-1"], "--show must be ≥ 0"),
    (["evaluate", "--seed", "-1"], "--seed must be ≥ 0"),
    (["explain", "--index", "-2"], "--index must be ≥ 0"),
    (["evaluate", "--methods", "ours (pso)"], r"unknown method\(s\) \['ours \(pso\)'\]"),
    (["explain", "--method", "nope"], r"unknown method\(s\) \['nope'\]"),
])
def test_cli_rejects_bad_arguments_in_one_line_before_working(argv, message, capsys):
    from captum_hetattn.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "".join(err)
    assert __import__("re").search(message, err[-1]), err[-1]


def test_cli_refuses_to_overwrite_outputs(tmp_path, capsys):
    from captum_hetattn.cli import main

    existing = tmp_path / "result.json"
    existing.write_text("{}")
    with pytest.raises(SystemExit):
        main(["evaluate", "--json", str(existing), "--n", "4"])
    assert "exists; pass --force" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path), "--n", "4"])
    assert "is not empty; pass --force" in capsys.readouterr().err
    assert existing.read_text() == "{}"


def test_cli_says_when_there_is_no_figure(tmp_path, capsys):
    from captum_hetattn.cli import main

    code = main(["explain", "--model", "minilm", "--out", str(tmp_path / "figs")])
    err = capsys.readouterr().err
    assert code == 1 and "no figure" in err and "Traceback" not in err
