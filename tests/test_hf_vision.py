"""hf.explain on models that read pictures, offline: image classification (ViT), VQA (ViLT),
image–text matching (CLIP, SigLIP), object detection (DETR).

Models are built tiny from configs, image processors from their classes, the tokenizer from a
vocabulary written here; pictures of two sizes that differ from the processed size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf
from hf_tiny import image_processor, wordpiece

from captum_hetattn import HeterogenousAttentionAttribution, hf
from captum_hetattn.hf.pixels import geometry_for, to_picture

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "dog", "a", "red", "blue",
         "what", "color", "is", "?", "photo", "of", "square", "##s"]
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
RNG = np.random.default_rng(0)
PICTURES = [(RNG.random((40, 56, 3)) * 255).astype(np.uint8),
            (RNG.random((30, 30, 3)) * 255).astype(np.uint8)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return wordpiece(tmp_path_factory.mktemp("vocab"), VOCAB)


def _sizes(result) -> list[tuple[int, int]]:
    return [tuple(p.shape) for p in result.pixels]


# ------------------------------------------------------------------ image classification

@pytest.fixture(scope="module")
def vit(one_thread):
    torch.manual_seed(0)
    labels = {0: "circle", 1: "square", 2: "cross"}
    model = tf.ViTForImageClassification(tf.ViTConfig(image_size=32, patch_size=8, num_labels=3,
                                                      id2label=labels, **SMALL)).eval()
    return model, image_processor("ViTImageProcessor", size={"height": 32, "width": 32})


def test_image_classification_pixels_at_the_pictures_own_size(vit):
    model, processor = vit
    result = hf.explain(model, processor, images=PICTURES)
    assert _sizes(result) == [(40, 56), (30, 30)]
    assert result.words == [None, None]
    pixel_values = processor(images=PICTURES, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    assert [t.index for t in result.target] == logits.argmax(-1).tolist()
    assert result.target[0].label == model.config.id2label[result.target[0].index]
    # the same as the engine's own attribute() laid back over each picture
    explainer = HeterogenousAttentionAttribution(model)
    attributed = explainer.attribute(pixel_values, target=logits.argmax(-1).tolist())
    for example, picture in enumerate(PICTURES):
        geometry = geometry_for(processor, picture.shape[:2], pixel_values.shape[-2:])
        expected = to_picture(attributed[example].mean(0), geometry)
        np.testing.assert_allclose(result.pixels[example], expected, rtol=1e-4, atol=1e-9)
        assert np.abs(result.pixels[example]).max() > 0


def test_image_classification_pipeline(vit):
    model, processor = vit
    pipe = tf.pipeline("image-classification", model=model, image_processor=processor)
    from_pipe = hf.explain(pipe, images=PICTURES[0])
    direct = hf.explain(model, processor, images=PICTURES[0])
    assert from_pipe.target == direct.target and from_pipe.task == "image-classification"
    np.testing.assert_array_equal(from_pipe.pixels[0], direct.pixels[0])


def test_image_classification_batch_equals_singles_and_overlay(vit):
    model, processor = vit
    both = hf.explain(model, processor, images=PICTURES)
    stacked = hf.explain(model, processor, images=np.stack([PICTURES[1], PICTURES[1]]))
    assert _sizes(stacked) == [(30, 30), (30, 30)]  # a (B, H, W, C) batch is B pictures
    np.testing.assert_allclose(stacked.pixels[0], both.pixels[1], rtol=1e-4, atol=1e-9)
    for example, picture in enumerate(PICTURES):
        single = hf.explain(model, processor, images=picture)
        assert single.target[0].index == both.target[example].index
        np.testing.assert_allclose(single.pixels[0], both.pixels[example], rtol=1e-4,
                                   atol=1e-9)
    views = both.to_captum()
    assert [h.shape for h in views.heatmaps] == [(40, 56, 1), (30, 30, 1)]
    assert views.images[0].shape == (40, 56, 3) and views.images[0].max() <= 1.0
    assert "<img" in both._repr_html_()


# ------------------------------------------------------------------ VQA (ViLT)

@pytest.fixture(scope="module")
def vilt(one_thread, tokenizer):
    torch.manual_seed(0)
    answers = {0: "red", 1: "blue", 2: "yes", 3: "no"}
    config = tf.ViltConfig(vocab_size=len(VOCAB), image_size=32, patch_size=8,
                           max_image_length=-1, num_labels=4, id2label=answers, **SMALL)
    model = tf.ViltForQuestionAnswering(config).eval()
    processor = tf.ViltProcessor(image_processor("ViltImageProcessor",
                                                  size={"shortest_edge": 32}, size_divisor=8),
                                 tokenizer)
    return model, processor


def test_vqa_answer_is_the_argmax_label_over_words_and_pixels(vilt):
    model, processor = vilt
    question = "what color is the squares ?"
    pictures = [PICTURES[0], PICTURES[0][::-1].copy()]  # one size: ViLT reads every patch
    result = hf.explain(model, processor, text=question, images=pictures)
    assert result.task == "visual-question-answering"
    assert [w for w, _ in result.words[0]] == ["what", "color", "is", "the", "squares", "?"]
    assert _sizes(result) == [(40, 56), (40, 56)]
    encoded = processor(images=pictures, text=[question] * 2, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits
    for example, target in enumerate(result.target):
        assert target.index == int(logits[example].argmax())
        assert target.label == model.config.id2label[target.index]
        assert target.kind == "answer"
    text = result.explanation.relevance["text"]
    assert sum(s for _, s in result.words[0]) == pytest.approx(
        float(text[0, 1:8].sum()), rel=1e-5)  # the question's 7 pieces, specials out
    assert np.abs(result.pixels[0]).max() > 0
    # one question for two pictures = each picture asked alone
    for example, picture in enumerate(pictures):
        alone = hf.explain(model, processor, text=question, images=picture)
        assert alone.target[0].index == result.target[example].index
        assert [s for _, s in alone.words[0]] == pytest.approx(
            [s for _, s in result.words[example]], rel=1e-3, abs=1e-12)
        np.testing.assert_allclose(alone.pixels[0], result.pixels[example], rtol=1e-3,
                                   atol=1e-9)
    with pytest.raises(ValueError, match=r"examples \[1\] get random repeats of their padding"):
        hf.explain(model, processor, text=question, images=PICTURES)  # two sizes
    with pytest.raises(ValueError, match="2 questions for 3 pictures"):
        hf.explain(model, processor, text=[question] * 2, images=pictures + pictures[:1])
    with pytest.raises(ValueError, match="reads images: give images="):
        hf.explain(model, processor, text=question)


# ------------------------------------------------------------------ matching (CLIP, SigLIP)

@pytest.fixture(scope="module")
def clip(one_thread, tokenizer):
    torch.manual_seed(0)
    text = dict(vocab_size=len(VOCAB), max_position_embeddings=16, bos_token_id=2,
                eos_token_id=3, pad_token_id=0, **SMALL)
    config = tf.CLIPConfig(text_config=text, vision_config=dict(image_size=16, patch_size=8,
                                                                **SMALL))
    pictures = image_processor("CLIPImageProcessor", size={"shortest_edge": 16},
                               crop_size={"height": 16, "width": 16})
    return tf.CLIPModel(config).eval(), tf.CLIPProcessor(pictures, tokenizer)


def test_clip_explains_each_pictures_best_text(clip):
    model, processor = clip
    texts = ["a photo of a cat", "a red square"]
    result = hf.explain(model, processor, text=texts, images=PICTURES)
    encoded = processor(text=texts, images=PICTURES, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits_per_image  # (pictures, texts)
    assert result.task == "image-text-matching"
    for picture, target in enumerate(result.target):
        best = int(logits[picture].argmax())
        assert target.index == (best, picture) and target.label == texts[best]
        assert target.example == picture
        assert target.score == pytest.approx(float(logits[picture, best]), rel=1e-5)
        assert [w for w, _ in result.words[picture]] == texts[best].split()
    assert _sizes(result) == [(40, 56), (30, 30)]
    # a chosen pair: text 1 against picture 0, as its own call on that pair alone
    pair = hf.explain(model, processor, text=texts, images=PICTURES, target=[(1, 0)])
    alone = hf.explain(model, processor, text=texts[1], images=PICTURES[0])
    assert pair.target[0].index == (1, 0) and alone.target[0].index == (0, 0)
    np.testing.assert_allclose(pair.pixels[0], alone.pixels[0], rtol=1e-4, atol=1e-9)
    assert [s for _, s in pair.words[0]] == pytest.approx([s for _, s in alone.words[0]],
                                                          rel=1e-4)
    assert hf.explain(model, processor, text=texts, images=PICTURES,
                      target=(1, 0)).target == pair.target  # one pair, as a tuple
    every = hf.explain(model, processor, text=texts, images=PICTURES, target=np.int64(1))
    assert [t.index for t in every.target] == [(1, 0), (1, 1)]  # text 1 against each picture
    with pytest.raises(ValueError, match="out of range"):
        hf.explain(model, processor, text=texts, images=PICTURES, target=[(2, 0)])


def test_clip_center_crop_is_undone(clip):
    model, processor = clip
    result = hf.explain(model, processor, text="a cat", images=PICTURES[0])
    # the 40×56 picture is resized to 16×22 and its middle 16×16 kept: the cut-off sides
    # were never seen, so they get nothing
    pixels = result.pixels[0]
    assert pixels.shape == (40, 56)
    assert np.abs(pixels[:, :3]).max() == 0 and np.abs(pixels[:, -3:]).max() == 0
    assert np.abs(pixels[:, 10:46]).max() > 0


def test_siglip_matching(one_thread, tokenizer):
    torch.manual_seed(0)
    config = tf.SiglipConfig(
        text_config=dict(vocab_size=len(VOCAB), max_position_embeddings=16, **SMALL),
        vision_config=dict(image_size=16, patch_size=8, **SMALL))
    model = tf.SiglipModel(config).eval()
    pictures = image_processor("SiglipImageProcessor", size={"height": 16, "width": 16})
    result = hf.explain(model, (tokenizer, pictures), text=["a cat", "a dog"],
                        images=PICTURES)
    # SigLIP pools the last position: texts are padded to the text model's 16 positions and
    # read without a mask, as SigLIP was trained
    encoded = tokenizer(["a cat", "a dog"], padding="max_length", max_length=16,
                        return_tensors="pt")
    assert result.inputs["input_ids"].shape == (2, 16) and "attention_mask" not in result.inputs
    pixel_values = pictures(images=PICTURES, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(input_ids=encoded["input_ids"], pixel_values=pixel_values).logits_per_image
    assert [t.index[0] for t in result.target] == logits.argmax(-1).tolist()
    assert _sizes(result) == [(40, 56), (30, 30)]
    assert [[w for w, _ in words] for words in result.words] == [
        ["a", "cat"] if t.index[0] == 0 else ["a", "dog"] for t in result.target]  # no [PAD]


# ------------------------------------------------------------------ detection (DETR)

@pytest.fixture(scope="module")
def detr(one_thread):
    torch.manual_seed(0)
    backbone = tf.ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32],
                               depths=[1, 1], layer_type="basic", out_features=["stage2"])
    config = tf.DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48, num_queries=6,
        num_labels=3, id2label={0: "circle", 1: "square", 2: "cross"})
    model = tf.DetrForObjectDetection(config).eval()
    processor = image_processor("DetrImageProcessor",
                                 size={"shortest_edge": 32, "longest_edge": 64})
    return model, processor


# DETR's first decoder layer attends over all-zero object queries (zero values): no gradient
@pytest.mark.filterwarnings("ignore:attention module 'model.decoder.layers.0.self_attn'")
def test_detr_one_row_per_box_above_the_threshold(detr):
    model, processor = detr
    processed = processor(images=PICTURES, return_tensors="pt")
    with torch.no_grad():
        output = model(pixel_values=processed["pixel_values"],
                       pixel_mask=processed["pixel_mask"])
    probs = output.logits.softmax(-1)[..., :-1]
    threshold = float(probs.max(-1).values.median())  # about half the queries pass
    result = hf.explain(model, processor, images=PICTURES, threshold=threshold)
    kept = probs.max(-1).values > threshold
    assert len(result.rows) == int(kept.sum()) > 0
    for target, pixels in zip(result.target, result.pixels, strict=True):
        query, label = target.index
        assert kept[target.example, query]
        assert label == int(probs[target.example, query].argmax())
        assert target.label == model.config.id2label[label] and target.kind == "box"
        height, width = PICTURES[target.example].shape[:2]
        assert pixels.shape == (height, width)
        cx, cy, w, h = output.pred_boxes[target.example, query].tolist()
        assert target.box == pytest.approx(((cx - w / 2) * width, (cy - h / 2) * height,
                                            (cx + w / 2) * width, (cy + h / 2) * height),
                                           rel=1e-4)
    scores = [row.target.score for row in result.example(0)]
    assert scores == sorted(scores, reverse=True)  # best box first
    # one chosen (query, class), explained alone, equals its row
    first = result.target[0]
    alone = hf.explain(model, processor, images=PICTURES, target=[first.index])
    np.testing.assert_allclose(alone.pixels[0], result.pixels[0], rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match="no box has a class probability above"):
        hf.explain(model, processor, images=PICTURES, threshold=0.999)


def test_a_bfloat16_model_reads_pixels_in_its_dtype(vit):
    model, processor = vit
    half = tf.ViTForImageClassification(model.config).eval()
    half.load_state_dict(model.state_dict())
    half.to(torch.bfloat16)
    result = hf.explain(half, processor, images=PICTURES)
    assert result.inputs["pixel_values"].dtype == torch.bfloat16
    assert half.dtype == torch.bfloat16  # as it was
    assert _sizes(result) == [(40, 56), (30, 30)]
    assert all(p.dtype == np.float32 and np.isfinite(p).all() and np.abs(p).max() > 0
               for p in result.pixels)
    # the same maps as the float32 model's, up to bfloat16 rounding
    full = hf.explain(model, processor, images=PICTURES, target=[t.index for t in result.target])
    for low, high in zip(result.pixels, full.pixels, strict=True):
        assert np.corrcoef(low.ravel(), high.ravel())[0, 1] > 0.9


@pytest.mark.filterwarnings("ignore:attention module 'model.decoder.layers.0.self_attn'")
def test_object_detection_pipeline(detr):
    model, processor = detr
    pipe = tf.pipeline("object-detection", model=model, image_processor=processor)
    from_pipe = hf.explain(pipe, images=PICTURES[1], threshold=0.0)
    direct = hf.explain(model, processor, images=PICTURES[1], threshold=0.0)
    assert from_pipe.target == direct.target and len(from_pipe.rows) == 6  # every query
    np.testing.assert_array_equal(from_pipe.pixels[0], direct.pixels[0])


@pytest.mark.parametrize("method", ["gae", "rollout", "raw", "AttentionRollout"])
def test_every_method_by_name(vit, method):
    model, processor = vit
    result = hf.explain(model, processor, images=PICTURES, method=method)
    assert _sizes(result) == [(40, 56), (30, 30)]
    assert all(np.abs(p).max() > 0 for p in result.pixels)
    ours = hf.explain(model, processor, images=PICTURES)
    assert [t.index for t in result.target] == [t.index for t in ours.target]
