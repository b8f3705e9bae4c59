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
