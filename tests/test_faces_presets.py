r"""A preset found by ``config.model_type`` alone is taken only where each of its nodes matches a
module of the model: Whisper's encoder-only classifier gets an inferred graph, silently, not the
``whisper`` preset and a warning about the decoder it lacks."""

import warnings

import pytest
import torch

from captum_hetattn import HeterogenousAttentionAttribution, LayerGraph
from captum_hetattn.graph.presets import PRESETS, Preset, find_preset, graph_for

pytestmark = pytest.mark.usefixtures("one_thread")


def _whisper_config(**extra):
    import transformers as tf

    return tf.WhisperConfig(vocab_size=40, num_mel_bins=8, max_source_positions=8,
                            max_target_positions=16, d_model=32, encoder_layers=2,
                            decoder_layers=2, encoder_attention_heads=2,
                            decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2,
                            decoder_start_token_id=1, **extra)


def test_encoder_only_whisper_is_inferred_without_a_warning():
    import transformers as tf

    torch.manual_seed(0)
    model = tf.WhisperForAudioClassification(_whisper_config(num_labels=3)).eval()
    assert find_preset(model) is None
    with pytest.raises(ValueError, match="No preset layer graph for WhisperForAudioClassification"):
        graph_for(model)
    explainer = HeterogenousAttentionAttribution(
        lambda x: model(input_features=x).logits, model=model)
    assert explainer.graph is None  # inferred on the first call
    features = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "preset does not fit", nor any other warning
        attribution = explainer.attribute(features, target=1)
    assert attribution.shape == features.shape and attribution.abs().sum() > 0
    assert explainer.graph is not None and explainer.graph.name == "inferred"
    assert {n.module.split(".")[-1] for n in explainer.graph.nodes} == {"self_attn"}


def test_whisper_with_its_decoder_keeps_the_preset():
    import transformers as tf

    torch.manual_seed(0)
    for model in (tf.WhisperModel(_whisper_config()),
                  tf.WhisperForConditionalGeneration(_whisper_config())):
        assert find_preset(model) is PRESETS["whisper"].graph


def _graph(name, module):
    return LayerGraph.from_dict({"name": name, "streams": ["text"],
                                 "steps": [{"module": module, "query": "text", "key": "text"}],
                                 "readout": {"stream": "text", "token": 0}})


def test_a_model_type_preset_that_names_missing_modules_is_passed_over(monkeypatch):
    import transformers as tf

    model = tf.BertModel(tf.BertConfig(hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=37))
    monkeypatch.delitem(PRESETS, "bert")
    misfit = _graph("faces_misfit", "encoder.layer.*.cross_attention")
    monkeypatch.setitem(PRESETS, "faces_misfit", Preset("faces_misfit", misfit,
                                                        model_types=("bert",)))
    assert find_preset(model) is None  # the only candidate names a module BERT lacks
    fitting = _graph("faces_fitting", "encoder.layer.*.attention.self")
    monkeypatch.setitem(PRESETS, "faces_fitting", Preset("faces_fitting", fitting,
                                                         model_types=("bert",)))
    assert find_preset(model) is fitting  # the next candidate of the type, which fits
    # a preset that names the class is the user's word: taken as it is
    monkeypatch.setitem(PRESETS, "faces_named", Preset("faces_named", misfit,
                                                       architectures=("BertModel",)))
    assert find_preset(model) is misfit
