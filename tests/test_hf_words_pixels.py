"""The shared pieces of captum_hetattn.hf: word pieces → words (WordPiece and byte-level BPE,
with and without the text), processed picture → the picture at its own size (resize, centre
crop, batch padding), and the result type built by hand."""

from __future__ import annotations

import hf_tiny
import numpy as np
import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.processors import TemplateProcessing

from captum_hetattn import PatchGrid
from captum_hetattn.engine.result import Explanation
from captum_hetattn.hf import (
    ExplainedTarget,
    Geometry,
    HFExplanation,
    Row,
    geometry_for,
    image_size,
    to_picture,
    tokens_to_pixels,
    word_scores,
    words_of,
)

WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "un", "##believ",
             "##able", "dog"]


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    return hf_tiny.wordpiece(tmp_path_factory.mktemp("vocab"), WORDPIECE)


@pytest.fixture(scope="module")
def byte_bpe():
    """A byte-level BPE (GPT-2 / RoBERTa style: ``Ġ`` starts a word) from a tiny vocabulary."""
    pieces = ["<pad>", "<s>", "</s>", "<unk>", "Ġ", "t", "h", "e", "c", "a", "d", "o", "g",
              "th", "the", "Ġthe", "ca", "cat", "Ġcat", "do", "dog", "Ġc", "Ġt", "Ġth"]
    merges = [("t", "h"), ("th", "e"), ("Ġ", "the"), ("c", "a"), ("ca", "t"), ("Ġ", "cat"),
              ("d", "o"), ("do", "g"), ("Ġ", "c"), ("Ġ", "t"), ("Ġt", "h")]
    backend = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=merges,
                                   unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = TemplateProcessing(single="<s> $A </s>",
                                                special_tokens=[("<s>", 1), ("</s>", 2)])
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>",
                                      eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def test_wordpiece_words_with_and_without_the_text(wordpiece):
    texts = ["The cat unbelievable", "dog zebra"]
    encoded = wordpiece(texts, padding=True, return_tensors="pt")
    with_text = words_of(wordpiece, encoded["input_ids"][0], text=texts[0],
                         mask=encoded["attention_mask"][0])
    assert [(w.text, w.tokens) for w in with_text] == [("The", (1,)), ("cat", (2,)),
                                                       ("unbelievable", (3, 4, 5))]
    without = words_of(wordpiece, encoded["input_ids"][0], mask=encoded["attention_mask"][0])
    assert [w.text for w in without] == ["the", "cat", "unbelievable"]  # as the pieces spell
    assert [w.tokens for w in without] == [w.tokens for w in with_text]
    # [UNK] stands for a word; padding and [SEP] are no word
    second = words_of(wordpiece, encoded["input_ids"][1], text=texts[1],
                      mask=encoded["attention_mask"][1])
    assert [w.text for w in second] == ["dog", "zebra"]
    assert second[1].tokens == (2,)
    scores = word_scores(with_text, torch.arange(7.0))
    assert scores == [("The", 1.0), ("cat", 2.0), ("unbelievable", 3.0 + 4.0 + 5.0)]


def test_text_that_does_not_match_the_ids_falls_back_to_the_pieces(wordpiece):
    ids = wordpiece("the cat")["input_ids"]
    words = words_of(wordpiece, ids, text="a completely different text")
    assert [w.text for w in words] == ["the", "cat"]
    truncated = wordpiece("the cat unbelievable", truncation=True, max_length=5)["input_ids"]
    words = words_of(wordpiece, truncated, text="the cat unbelievable")
    assert [(w.text, w.tokens) for w in words] == [("the", (1,)), ("cat", (2,)),
                                                   ("un", (3,))]  # a prefix of the text


def test_byte_level_bpe_words(byte_bpe):
    encoded = byte_bpe(["the catdog", "cat"], padding=True)
    assert byte_bpe.convert_ids_to_tokens(encoded["input_ids"][0])[2:4] == ["Ġcat", "dog"]
    for text in ("the catdog", None):
        words = words_of(byte_bpe, encoded["input_ids"][0], text=text,
                         mask=encoded["attention_mask"][0])
        assert [(w.text, w.tokens) for w in words] == [("the", (1,)), ("catdog", (2, 3))]
    only = words_of(byte_bpe, encoded["input_ids"][1], text="cat",
                    mask=encoded["attention_mask"][1])
    assert [(w.text, w.tokens) for w in only] == [("cat", (1,))]
    assert words_of(byte_bpe, [1, 2, 0]) == []  # specials and padding only: no word


def test_image_size_of_every_picture_type():
    from PIL import Image

    assert image_size(Image.new("RGB", (56, 40))) == (40, 56)
    assert image_size(np.zeros((40, 56, 3))) == (40, 56)
    assert image_size(torch.zeros(3, 40, 56)) == (40, 56)
    assert image_size(np.zeros((40, 56))) == (40, 56)
    with pytest.raises(TypeError, match="not a picture: str"):
        image_size("cat.png")


def test_resize_only_maps_the_whole_processed_picture():
    processor = tf.ViTImageProcessor(size={"height": 32, "width": 32})
    geometry = geometry_for(processor, (40, 56), (32, 32))
    assert geometry == Geometry(original=(40, 56), resized=(32, 32), crop=(0, 0),
                                valid=(32, 32))
    heat = torch.zeros(32, 32)
    heat[:16, :16] = 1.0  # the top-left quarter of the processed picture
    picture = to_picture(heat, geometry)
    assert picture.shape == (40, 56)
    assert picture[:18, :26].min() > 0.99 and picture[22:, 30:].max() < 1e-6
    # one hot patch of a 4×4 ViT grid (after [CLS]) lands in the same corner
    relevance = torch.zeros(17)
    relevance[1] = 1.0
    corner = tokens_to_pixels(relevance, geometry, PatchGrid("image", prefix_tokens=1,
                                                             interpolation="nearest"))
    assert corner.shape == (40, 56) and corner[:8, :12].min() > 0.99 and corner[20:].max() == 0


def test_centre_crop_and_padding_are_undone():
    processor = tf.CLIPImageProcessor(size={"shortest_edge": 16},
                                      crop_size={"height": 16, "width": 16})
    geometry = geometry_for(processor, (40, 56), (16, 16))
    assert geometry.resized == (16, 22) and geometry.crop == (0, 3)
    picture = to_picture(torch.ones(16, 16), geometry)
    assert picture.shape == (40, 56)
    assert picture[:, :6].max() < 0.5 and picture[:, 12:44].min() > 0.99  # sides were cut
    # batch padding: only the pixel mask's real part is the picture
    mask = torch.zeros(32, 48, dtype=torch.long)
    mask[:32, :32] = 1
    padded = geometry_for(None, (30, 30), (32, 48), mask)
    assert padded.valid == (32, 32)
    heat = torch.zeros(32, 48)
    heat[:, 32:] = 5.0  # relevance on padding is dropped
    heat[:, :32] = 1.0
    np.testing.assert_allclose(to_picture(heat, padded), np.ones((30, 30)), atol=1e-6)


def test_result_built_by_hand_holds_rows_per_target():
    explanation = Explanation(relevance={"text": torch.zeros(1, 3)}, readout_stream="text",
                              readout_token=torch.zeros(1, dtype=torch.long), graph=None,
                              sizes={"text": 3})
    picture = np.zeros((6, 8, 3), dtype=np.uint8)
    rows = [Row(ExplainedTarget(0, (4, 17), "cat", "generated", 0.9, position=4),
                words=[("a", 0.1), ("photo", 0.4)], pixels=np.ones((6, 8)), image=picture),
            Row(ExplainedTarget(0, (5, 18), "sat", "generated", 0.8, position=5),
                words=[("a", 0.3), ("photo", -0.2)], pixels=np.ones((6, 8)), image=picture)]
    result = HFExplanation(rows, explanation, "generation")
    assert [t.label for t in result.target] == ["cat", "sat"] and len(result) == 2
    assert result.words[1] == [("a", 0.3), ("photo", -0.2)]
    assert len(result.example(0)) == 2 and result.example(1) == []
    views = result.to_captum()
    assert len(views.records) == 2 and views.heatmaps[0].shape == (6, 8, 1)
    assert views.records[1].word_attributions.tolist() == pytest.approx([1.0, -2 / 3])
    assert "sat" in result._repr_html_() and "photo" in result._repr_html_()


def test_rows_with_generated_tokens_and_audio_are_drawn():
    """explain_generation's rows carry the tokens generated before the explained one and the
    relevance over audio frames: both are drawn and handed to Captum."""
    from dataclasses import dataclass

    @dataclass
    class GeneratedRow(Row):
        generated: list | None = None
        audio: np.ndarray | None = None
        audio_times: np.ndarray | None = None

    explanation = Explanation(relevance={"text": torch.zeros(1, 3)}, readout_stream="text",
                              readout_token=torch.zeros(1, dtype=torch.long), graph=None,
                              sizes={"text": 3})
    row = GeneratedRow(ExplainedTarget(0, (6, 9), "mat", "generated", 0.7, position=6),
                       words=[("the", 0.2), ("cat", 0.4)], generated=[("sat", 0.8)],
                       audio=np.array([0.0, 0.5, 1.0]), audio_times=np.array([0.0, 0.02, 0.04]))
    result = HFExplanation([row], explanation, "generation")
    page = result._repr_html_()
    assert page.index("cat") < page.index("‖") < page.index("sat")
    assert page.count("<img") == 1  # the audio strip
    record = result.to_captum().records[0]
    assert record.raw_input_ids == ["the", "cat", "‖", "sat"]
    assert record.word_attributions.tolist() == pytest.approx([0.25, 0.5, 0.0, 1.0])
