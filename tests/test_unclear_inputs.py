"""Mistakes that used to end in an unclear error (issue 19): each is now a clear error naming the
argument, model or module at fault, raised before the work where it can be."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from captum_hetattn import HeterogenousAttentionAttribution
from captum_hetattn.cli import main
from captum_hetattn.evaluation import evaluate


def _bert(config=None):
    torch.manual_seed(0)
    config = config or BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32, num_labels=3)
    return BertForSequenceClassification(config).eval(), config


IDS = torch.randint(3, 50, (2, 5), generator=torch.Generator().manual_seed(0))


def test_inference_mode_is_refused_with_the_way_out():
    model, _ = _bert()
    explainer = HeterogenousAttentionAttribution(lambda i: model(input_ids=i).logits,
                                                 model=model)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="need autograd.*outside "
                                               r"torch.inference_mode\(\)"):
        explainer.attribute(IDS, target=0)
    with torch.inference_mode():
        made = IDS.clone()
    with pytest.raises(RuntimeError, match=r"input\(s\) \[0\] were made under"):
        explainer.attribute(made, target=0)
    with torch.no_grad():  # no_grad stays fine
        assert explainer.attribute(IDS, target=0).shape == IDS.shape


def test_a_scalar_score_is_refused_naming_the_shape():
    model, _ = _bert()
    explainer = HeterogenousAttentionAttribution(
        lambda i: model(input_ids=i).logits[:, 0].sum(), model=model)
    with pytest.raises(ValueError, match="returned a 0-d tensor.*one score.*per example"):
        explainer.attribute(IDS)


def test_forward_func_running_another_model_is_named():
    model, config = _bert()
    other, _ = _bert(BertConfig(**config.to_dict()))  # a model of its own config
    explainer = HeterogenousAttentionAttribution(lambda i: other(input_ids=i).logits,
                                                 model=model)
    with pytest.raises(ValueError, match=r"no attention call of BertForSequenceClassification "
                                         r"\(model=\).*none of its 2 attention modules ran.*"
                                         r"another model.*'bert.encoder.layer.0.attention.self'"
                                         ": it did not run"):
        explainer.attribute(IDS, target=0)
    shared = BertForSequenceClassification(config).eval()  # sharing the config object
    explainer = HeterogenousAttentionAttribution(lambda i: shared(input_ids=i).logits,
                                                 model=model)
    with pytest.raises(ValueError, match=r"belong to another model \(BertSelfAttention, not "
                                         r"modules of BertForSequenceClassification\): pass the "
                                         "model forward_func runs as model="):
        explainer.attribute(IDS, target=0)


def test_no_attention_names_each_module_and_why():
    """A model whose attention runs a fused kernel by hand: the module is named, with why."""

    class Fused(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(8, 24)

        def forward(self, x):
            q, k, v = self.qkv(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
            # heads folded into the batch: a 4-D call is captured (tests/test_layouts.py)
            out = torch.nn.functional.scaled_dot_product_attention(*(t.flatten(0, 1) for t in
                                                                     (q, k, v)))
            return out.unflatten(0, (x.shape[0], 2)).transpose(1, 2).flatten(2)

    class FusedAttention(Fused):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), FusedAttention()).eval()
    explainer = HeterogenousAttentionAttribution(lambda x: model(x).mean(1), model=model)
    with pytest.raises(ValueError, match=r"no attention call of Sequential.*'1': .*it calls "
                                         r"F.scaled_dot_product_attention on inputs that are "
                                         r"not \(batch, heads, tokens, dim\)"):
        explainer.attribute(torch.randn(2, 3, 4), target=0)


class _NoExamples:
    name = "stub"

    def make_examples(self, n, seed):
        raise AssertionError("examples made before the methods were checked")


def test_evaluate_checks_method_values_before_the_examples():
    with pytest.raises(TypeError, match=r"methods\['ours'\] is a str 'ours \(pos\)'.*"
                                        r"standard_methods\(\)\['ours \(pos\)'\]"):
        evaluate(_NoExamples(), {"ours": "ours (pos)"})


@pytest.mark.parametrize("arguments, message", [
    (["--index", "1000000000"], "--index must be < 10000"),
    (["--out", "{file}/figs"], "cannot be made: .* is a file, not a folder"),
])
def test_cli_explain_refuses_bad_arguments_before_the_work(arguments, message, tmp_path,
                                                           capsys, monkeypatch):
    import captum_hetattn.cli as cli

    monkeypatch.setattr(cli, "load", lambda *a: pytest.fail("the work started"))
    file = tmp_path / "FILE"
    file.write_text("")
    arguments = [a.format(file=file) for a in arguments]
    with pytest.raises(SystemExit) as exit_:
        main(["explain", "--model", "minilm", *arguments])
    assert exit_.value.code == 2
    import re

    assert re.search(message, capsys.readouterr().err)


def test_ids_without_tokens_are_refused_before_the_forward():
    model, _ = _bert()
    explainer = HeterogenousAttentionAttribution(lambda i: model(input_ids=i).logits,
                                                 model=model)
    with pytest.raises(ValueError, match=r"input 0 of shape \(1, 0\) is empty along dimension 1"):
        explainer.attribute(torch.zeros(1, 0, dtype=torch.long), target=0)
