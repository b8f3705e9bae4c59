"""hf.explain on audio classifiers, offline: a waveform model (wav2vec 2.0) and a spectrogram
model (Whisper's encoder), built tiny from configs, with feature extractors from their classes;
two clips of different lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

from captum_hetattn import HeterogenousAttentionAttribution, hf

RATE = 16000
CLIPS = [np.random.default_rng(0).standard_normal(1600).astype(np.float32),
         np.random.default_rng(1).standard_normal(1200).astype(np.float32)]
LABELS = {0: "yes", 1: "no", 2: "silence"}


@pytest.fixture(scope="module")
def wav2vec(one_thread):
    torch.manual_seed(0)
    config = tf.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, num_labels=3, id2label=LABELS)
    extractor = tf.Wav2Vec2FeatureExtractor(sampling_rate=RATE, return_attention_mask=True)
    return tf.Wav2Vec2ForSequenceClassification(config).eval(), extractor


@pytest.fixture(scope="module")
def whisper(one_thread):
    torch.manual_seed(0)
    config = tf.WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2,
                              encoder_ffn_dim=48, num_mel_bins=16, max_source_positions=50,
                              num_labels=3, id2label=LABELS)
    extractor = tf.WhisperFeatureExtractor(feature_size=16, sampling_rate=RATE, hop_length=160,
                                           chunk_length=1, n_fft=400)
    return tf.WhisperForAudioClassification(config).eval(), extractor


def test_waveform_classifier_relevance_per_sample_of_each_clip(wav2vec):
    model, extractor = wav2vec
    result = hf.explain(model, extractor, audio=CLIPS)
    assert result.task == "audio-classification"
    encoded = extractor(CLIPS, sampling_rate=RATE, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**encoded).logits
    assert [t.index for t in result.target] == logits.argmax(-1).tolist()
    assert result.target[0].label == LABELS[result.target[0].index]
    for row, clip in zip(result.rows, CLIPS, strict=True):
        assert row.audio.shape == clip.shape  # the clip's own samples, padding cut
        assert row.audio_times[1] == pytest.approx(1 / RATE)
        assert np.abs(row.audio).max() > 0 and row.words is None and row.pixels is None
    # the engine's own attribute() on the same inputs, cut to each clip
    explainer = HeterogenousAttentionAttribution(
        lambda x, mask: model(input_values=x, attention_mask=mask).logits, model=model)
    attributed = explainer.attribute(encoded["input_values"], target=logits.argmax(-1).tolist(),
                                     additional_forward_args=(encoded["attention_mask"],))
    np.testing.assert_allclose(result.rows[1].audio, attributed[1, :1200].numpy(), rtol=1e-4,
                               atol=1e-12)
    assert "<img" in result._repr_html_()  # the strip over time


def test_spectrogram_classifier_relevance_per_frame(whisper):
    model, extractor = whisper
    result = hf.explain(model, extractor, audio=torch.from_numpy(CLIPS[0]))
    row = result.rows[0]
    assert row.audio.shape == (10,)  # 1600 samples / hop 160, out of the 100 frames read
    assert row.audio_times[-1] == pytest.approx(9 * 160 / RATE)
    assert result.inputs["input_features"].shape == (1, 16, 100)
    assert np.abs(row.audio).max() > 0


def test_audio_needs_a_clip_and_an_extractor(wav2vec):
    model, extractor = wav2vec
    with pytest.raises(ValueError, match="reads audio: give audio="):
        hf.explain(model, extractor)
    with pytest.raises(ValueError, match="pass a feature extractor"):
        hf.explain(model, audio=CLIPS[0])
    with pytest.raises(ValueError, match="1-D mono waveform"):
        hf.explain(model, extractor, audio=[np.zeros((2, 800), dtype=np.float32)])
    with pytest.raises(ValueError, match="does not read text"):
        hf.explain(model, extractor, audio=CLIPS[0], text="yes")


def test_a_patch_spectrogram_model_is_refused_by_name(one_thread):
    config = tf.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=48, frequency_stride=10, time_stride=10,
                          max_length=128, num_mel_bins=32, num_labels=3)
    model = tf.ASTForAudioClassification(config).eval()
    extractor = tf.ASTFeatureExtractor(num_mel_bins=32, max_length=128, sampling_rate=RATE)
    with pytest.raises(NotImplementedError, match="ASTFeatureExtractor gives a spectrogram"):
        hf.explain(model, extractor, audio=CLIPS[0])
