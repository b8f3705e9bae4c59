"""The evaluation runner over two gloo processes: the one-process table, resumable, refusing to mix.

Two launches of two fresh worker processes (each imports torch and transformers): ~20-30 s on
two quiet cores.
"""

import json
import math

import pytest

from captum_hetattn.evaluation import evaluate, standard_methods
from captum_hetattn.evaluation.distributed import (
    evaluate_distributed,
    make_settings,
    read_log,
    run_rank,
    shard_path,
)
from captum_hetattn.evaluation.runner import EvaluationResult
from captum_hetattn.zoo import load

METHODS = ["ours (pos)", "rollout", "Saliency"]
N, SEED, SHARD = 16, 4321, 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def single() -> EvaluationResult:
    every = standard_methods(include_integrated_gradients=False)
    return evaluate(load("shapes_vqa"), {m: every[m] for m in METHODS}, n=N, seed=SEED,
                    progress=False)


def _numbers(result: EvaluationResult) -> dict[str, float]:
    """Every number of the table by its path, timings left out."""
    flat: dict[str, float] = {}

    def walk(value, path):
        if isinstance(value, dict):
            for key, item in value.items():
                if key != "seconds_per_example":
                    walk(item, f"{path}/{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}/{index}")
        elif isinstance(value, int | float):
            flat[path] = float(value)

    walk(result.to_dict(), "")
    return flat


def _assert_same_table(got: EvaluationResult, expected: EvaluationResult) -> None:
    a, b = _numbers(got), _numbers(expected)
    assert a.keys() == b.keys()
    assert [m.method for m in got.methods] == [m.method for m in expected.methods]
    measured = 0
    for key, value in b.items():
        if math.isnan(value):
            assert math.isnan(a[key]), key
        else:
            assert a[key] == pytest.approx(value, abs=1e-6), key
            measured += 1
    assert measured > 50  # the table is not empty: curves, AUCs, pointing game per stream


def test_two_processes_give_the_one_process_table_and_resume(tmp_path, single):
    out = tmp_path / "run"
    result = evaluate_distributed("shapes_vqa", METHODS, n=N, seed=SEED, out_dir=out,
                                  nproc=2, shard_size=SHARD)
    _assert_same_table(result, single)
    assert result.n_examples == N and result.seed == SEED
    shards = [shard_path(out, i) for i in range(N // SHARD)]
    assert all(p.exists() for p in shards)
    ranks = {json.loads(p.read_text())["rank"] for p in shards}
    assert ranks == {0, 1}  # the work was shared
    (first,) = read_log(out)
    assert first["world"] == 2 and first["computed"] == [0, 1, 2, 3] and first["reused"] == []
    # the table rank 0 wrote is the one returned
    saved = EvaluationResult.from_dict(json.loads((out / "result.json").read_text()))
    _assert_same_table(saved, result)

    # resume: two shards lost (one for each rank); only they are computed again
    stamps = {p.name: json.loads(p.read_text())["computed_at"] for p in shards}
    shards[1].unlink()
    shards[2].unlink()
    again = evaluate_distributed("shapes_vqa", METHODS, n=N, seed=SEED, out_dir=out,
                                 nproc=2, shard_size=SHARD)
    last = read_log(out)[-1]
    assert last["computed"] == [1, 2] and last["reused"] == [0, 3]
    for index in (0, 3):
        assert json.loads(shards[index].read_text())["computed_at"] == stamps[shards[index].name]
    for index in (1, 2):
        assert json.loads(shards[index].read_text())["computed_at"] != stamps[shards[index].name]
    _assert_same_table(again, single)


def test_other_settings_are_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    settings = make_settings("shapes_vqa", ["rollout"], n=8, seed=1, shard_size=4,
                             perturbation=False)
    first = run_rank(settings, out, rank=0, world=1)  # in this process, no process group
    assert first is not None and read_log(out)[-1]["computed"] == [0, 1]
    with pytest.raises(ValueError, match=r"another evaluation \(n=8 there, 12 here"):
        evaluate_distributed("shapes_vqa", ["rollout"], n=12, seed=1, out_dir=out, nproc=2,
                             shard_size=4, perturbation=False)
    with pytest.raises(ValueError, match=r"methods=\['rollout'\] there, \['GAE'\] here"):
        run_rank(make_settings("shapes_vqa", ["GAE"], n=8, seed=1, shard_size=4,
                               perturbation=False), out, rank=0, world=1)
    with pytest.raises(ValueError, match="shard_size=4 there, 2 here"):
        evaluate_distributed("shapes_vqa", ["rollout"], n=8, seed=1, out_dir=out, nproc=2,
                             shard_size=2, perturbation=False)
    # the same settings resume from it: nothing left to compute
    again = run_rank(settings, out, rank=0, world=1)
    assert read_log(out)[-1]["computed"] == [] and read_log(out)[-1]["reused"] == [0, 1]
    assert again is not None and _numbers(again) == _numbers(first)
    # a damaged shard is reported and computed again
    shard_path(out, 1).write_text("{not json")
    with pytest.warns(UserWarning, match="not a usable shard"):
        run_rank(settings, out, rank=0, world=1)
    assert read_log(out)[-1]["computed"] == [1]
    with pytest.raises(ValueError, match="unknown method"):
        make_settings("shapes_vqa", ["LIME"], n=8, seed=1)


def test_command_lines(tmp_path, capsys):
    from captum_hetattn.evaluation.distributed import main

    table = tmp_path / "table.json"
    assert main(["--model", "shapes_vqa", "--methods", "rollout", "--num-examples", "8",
                 "--shard-size", "4", "--nproc", "1", "--no-perturbation",
                 "--out", str(tmp_path / "run"), "--json", str(table)]) == 0
    assert "rollout" in capsys.readouterr().out
    assert json.loads(table.read_text())["n_examples"] == 8
    assert main(["--model", "shapes_vqa", "--methods", "GAE", "--num-examples", "8",
                 "--nproc", "1", "--out", str(tmp_path / "run")]) == 1
    assert "another evaluation" in capsys.readouterr().err
    # `captum-hetattn evaluate --out-dir` (the command line users have) runs the same runner
    from captum_hetattn.cli import main as cli

    assert cli(["evaluate", "--methods", "rollout", "--n", "8", "--shard-size", "4",
                "--no-perturbation", "--out-dir", str(tmp_path / "cli")]) == 0
    assert "rollout" in capsys.readouterr().out
    assert read_log(tmp_path / "cli")[-1]["computed"] == [0, 1]
    with pytest.raises(SystemExit):
        cli(["evaluate", "--task", "logical", "--nproc", "2"])
    assert "--task methods" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["evaluate", "--nproc", "0"])
