"""``hf.explain_generation``: every generated token explained over the prompt's words, the
earlier generated tokens, the picture and the audio — causal LM (GPT-2), seq2seq (BART),
captioning (BLIP), a LLaVA VLM and Whisper, all tiny and offline (tests/gen_tiny.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from gen_tiny import WHISPER_SPECIALS, bart, blip, gpt2, llava, picture, t5, waves, whisper

from captum_hetattn import HeterogenousAttentionAttribution, generation_targets, hf
from captum_hetattn.hf import gen_call
from captum_hetattn.hf.display import SEPARATOR
from captum_hetattn.hf.generation import GeneratedRow
from captum_hetattn.hf.words import kept_positions

PROMPTS = ["the cat sat on the mat", "unhappy dog"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny models: one thread."""


@pytest.fixture(scope="module")
def causal():
    model, tokenizer = gpt2()
    return model, tokenizer, hf.explain_generation(model, tokenizer, text=PROMPTS,
                                                   max_new_tokens=4)


def _reference(model, encoded, max_new_tokens):
    """generate() run by the test itself: sequences and the raw logits of every step."""
    with torch.no_grad():
        out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                             return_dict_in_generate=True, output_logits=True)
    return out.sequences, torch.stack(list(out.logits)).float()


def _check_rows(result, sequences, logits):
    """One row per generated token, each the token generate() put there, its score the
    probability of generate()'s own logits row, which that token is the argmax of."""
    steps = logits.shape[0]
    start = sequences.shape[1] - steps
    assert len(result.rows) == sequences.shape[0] * steps
    assert torch.equal(result.inputs["sequences"], sequences)
    for row in result.rows:
        assert isinstance(row, GeneratedRow)
        b, k = row.target.example, row.target.position - start
        token = int(sequences[b, start + k])
        assert row.target.index == (start + k - 1, token)
        assert int(logits[k, b].argmax()) == token
        expected = float(logits[k, b].softmax(-1)[token])
        assert row.target.score == pytest.approx(expected, rel=1e-3, abs=1e-6)
        assert row.target.kind == "generated" and row.target.label
    return start


def _check_context(result, relevance, start):
    """Each row's earlier generated tokens: one per earlier position, with the engine's
    relevance of that position."""
    for row in result.rows:
        b, k = row.target.example, row.target.position - start
        assert len(row.generated) == k
        scores = [score for _, score in row.generated]
        torch.testing.assert_close(torch.tensor(scores, dtype=torch.float32),
                                   relevance[b, k, start:start + k].float(), atol=1e-6,
                                   rtol=1e-5)


def _check_words(result, tokenizer, ids, mask, relevance, start, positions=None):
    """Word scores sum to the engine's token relevance of the kept (not special, not
    padding) positions, per row."""
    for row in result.rows:
        b, k = row.target.example, row.target.position - start
        kept = kept_positions(tokenizer, ids[b].tolist(), mask[b].tolist(), positions)
        assert sum(score for _, score in row.words) == pytest.approx(
            float(relevance[b, k, kept].sum()), rel=1e-5, abs=1e-9)


def test_causal_lm_rows_words_and_context(causal):
    model, tokenizer, result = causal
    tokenizer.padding_side = "left"
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    tokenizer.padding_side = "right"
    sequences, logits = _reference(model, encoded, 4)
    start = _check_rows(result, sequences, logits)
    assert start == encoded["input_ids"].shape[1]
    assert all(row.target.label not in ("[PAD]", "[BOS]") for row in result.rows)
    relevance = result.explanation.relevance["text"]
    assert relevance.shape == (2, 4, sequences.shape[1])
    # the prompt's words: pieces merged, [BOS] and the left padding out
    assert [w for w, _ in result.example(0)[0].words] == PROMPTS[0].split()
    assert [w for w, _ in result.example(1)[0].words] == PROMPTS[1].split()
    grown = torch.cat([encoded["attention_mask"], torch.ones(2, 4, dtype=torch.long)], 1)
    _check_words(result, tokenizer, sequences, grown, relevance,
                 start, positions=range(start))
    padding = encoded["attention_mask"][1] == 0
    assert bool(padding.any()) and float(relevance[1][:, :start][:, padding].abs().max()) == 0
    _check_context(result, relevance, start)
    # causal: nothing after the explained row's token
    for k in range(4):
        assert float(relevance[:, k, start + k:].abs().max()) == 0


def test_causal_lm_equals_the_engine_called_by_hand(causal):
    """One call equals what a user would write: the explainer on the generated sequence
    (mask grown, generate()'s position ids) with generation_targets."""
    model, tokenizer, result = causal
    sequences = result.inputs["sequences"]
    start = sequences.shape[1] - 4
    mask = torch.cat([result.inputs["attention_mask"], torch.ones(2, 4, dtype=torch.long)], 1)
    positions = (mask.cumsum(1) - 1).masked_fill(mask == 0, 1)
    explainer = HeterogenousAttentionAttribution(
        lambda ids, m, p: model(input_ids=ids, attention_mask=m, position_ids=p).logits,
        model=model)
    by_hand = explainer.explain(sequences, targets=generation_targets(sequences, start),
                                additional_forward_args=(mask, positions))
    torch.testing.assert_close(result.explanation.relevance["text"],
                               by_hand.relevance["text"], atol=1e-7, rtol=1e-5)


def test_bfloat16_model_is_explained_in_float32():
    model, processor = blip()
    model = model.to(torch.bfloat16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = hf.explain_generation(model, processor, images=picture(0), text="a picture of",
                                       max_new_tokens=2)
    assert not [w for w in caught if "does not reproduce" in str(w.message)]
    assert len(result.rows) == 2 and result.pixels[0].dtype == np.float32
    assert np.isfinite(result.pixels[0]).all() and float(np.abs(result.pixels[0]).max()) > 0
    assert next(model.parameters()).dtype == torch.bfloat16


def test_causal_lm_batch_equals_each_alone(causal):
    model, tokenizer, batched = causal
    for b, prompt in enumerate(PROMPTS):
        alone = hf.explain_generation(model, tokenizer, text=prompt, max_new_tokens=4)
        rows = batched.example(b)
        assert [r.target.index[1] for r in alone.rows] == [r.target.index[1] for r in rows]
        for one, many in zip(alone.rows, rows, strict=True):
            assert [w for w, _ in one.words] == [w for w, _ in many.words]
            np.testing.assert_allclose([s for _, s in one.words], [s for _, s in many.words],
                                       rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose([s for _, s in one.generated],
                                       [s for _, s in many.generated], rtol=1e-4, atol=1e-7)


def test_a_tokenizer_without_pad_token_pads_with_its_end_token(causal):
    """GPT-2's and Llama's tokenizers have no pad token: the end token pads the batch
    (masked, so nothing changes) and the tokenizer comes back as it was."""
    model, _, result = causal
    _, tokenizer = gpt2()
    tokenizer.pad_token = None
    padded = hf.explain_generation(model, tokenizer, text=PROMPTS, max_new_tokens=4)
    assert tokenizer.pad_token is None and tokenizer.padding_side == "right"
    assert int(padded.inputs["input_ids"][1, 0]) == tokenizer.eos_token_id
    assert [r.target.index for r in padded.rows] == [r.target.index for r in result.rows]
    for one, other in zip(padded.rows, result.rows, strict=True):
        assert [w for w, _ in one.words] == [w for w, _ in other.words]
        np.testing.assert_allclose([s for _, s in one.words], [s for _, s in other.words],
                                   rtol=1e-5, atol=1e-9)


def test_an_example_that_ends_early_has_fewer_rows(causal):
    """Rows stop at an example's end token (kept: it was generated); the padding generate()
    adds while the rest of the batch goes on is no row."""
    model, tokenizer, result = causal
    dog = tokenizer.convert_tokens_to_ids("dog")
    assert result.example(1)[0].target.index[1] == dog  # "unhappy dog" → "dog" first
    assert all(row.target.index[1] != dog for row in result.example(0))
    ended = hf.explain_generation(model, tokenizer, text=PROMPTS, max_new_tokens=4,
                                  eos_token_id=dog)
    assert [len(ended.example(b)) for b in range(2)] == [4, 1]
    assert ended.example(1)[0].target.label == "dog"
    assert int(ended.inputs["sequences"][1, -1]) == tokenizer.pad_token_id
    for one, other in zip(ended.example(0), result.example(0), strict=True):
        assert one.target.index == other.target.index
        np.testing.assert_allclose([s for _, s in one.words], [s for _, s in other.words],
                                   rtol=1e-5, atol=1e-8)


def test_position_ids_matter_and_a_wrong_feed_is_a_warning(causal, monkeypatch):
    """The left-padded prompt is explained at the positions generate() used; feeding it
    otherwise changes the logits, which is a warning naming the model, not silence."""
    model, tokenizer, _ = causal
    monkeypatch.setattr(gen_call, "generation_position_ids",
                        lambda mask: torch.arange(mask.shape[1]).expand(mask.shape))
    with pytest.warns(UserWarning, match="GPT2LMHeadModel.*does not reproduce"):
        hf.explain_generation(model, tokenizer, text=PROMPTS, max_new_tokens=3)


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def test_the_reproduction_check_reads_the_logits_spread():
    """Masked -inf logits stay out of the scale but must stay masked; float rounding passes,
    a shift of 0.1 standard deviations does not."""
    from captum_hetattn.hf.generation import _differs

    theirs = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    theirs[:, :4] = float("-inf")
    assert not _differs(theirs.clone(), theirs, 1e-3)
    assert not _differs(theirs + 1e-6, theirs, 1e-3)
    moved = theirs.clone()
    moved[1, 10] += 0.1
    assert _differs(moved, theirs, 1e-3)
    unmasked = theirs.clone()
    unmasked[0, 0] = 0.0
    assert _differs(unmasked, theirs, 1e-3)


def test_other_methods_and_captum_views(causal):
    model, tokenizer, result = causal
    before = _hooks(model)
    for method in ("gae", "rollout", "raw"):
        other = hf.explain_generation(model, tokenizer, text=PROMPTS[0], max_new_tokens=2,
                                      method=method)
        assert len(other.rows) == 2 and len(other.rows[0].words) == 6
    assert _hooks(model) == before and not model.training  # the model comes back as it was
    views = result.to_captum()
    assert len(views.records) == len(result.rows)
    # Captum's records read the prompt's words, then the tokens generated before the row's
    row = result.rows[2]
    assert views.records[2].raw_input_ids == [
        *(w for w, _ in row.words), SEPARATOR, *(t for t, _ in row.generated)]
    html = result._repr_html_()
    assert result.rows[0].target.label in html


@pytest.mark.parametrize("build", [bart, t5])
def test_seq2seq(build):
    model, tokenizer = build()
    result = hf.explain_generation(model, tokenizer, text=PROMPTS, max_new_tokens=4)
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**encoded, max_new_tokens=4, do_sample=False,
                             return_dict_in_generate=True, output_logits=True)
    sequences, logits = out.sequences, torch.stack(list(out.logits)).float()
    start = _check_rows(result, sequences, logits)
    assert start == 1  # after the decoder start token
    source = result.explanation.relevance["source"]
    target = result.explanation.relevance["target"]
    assert source.shape == (2, 4, encoded["input_ids"].shape[1])
    assert [w for w, _ in result.example(1)[0].words] == PROMPTS[1].split()
    _check_words(result, tokenizer, encoded["input_ids"], encoded["attention_mask"], source,
                 start)
    padding = encoded["attention_mask"][1] == 0
    assert float(source[1][:, padding].abs().max()) == 0
    _check_context(result, target, start)
    alone = hf.explain_generation(model, tokenizer, text=PROMPTS[1], max_new_tokens=4)
    for one, many in zip(alone.rows, result.example(1), strict=True):
        assert one.target.index == many.target.index
        np.testing.assert_allclose([s for _, s in one.words], [s for _, s in many.words],
                                   rtol=1e-4, atol=1e-7)


def test_a_trained_reverser_points_at_the_word_it_copies():
    """The zoo's trained ``reverse_seq2seq`` BART writes its input backwards: every generated
    word's most relevant prompt word is the word it copies (a WordLevel tokenizer over the
    zoo's token names, built here)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from captum_hetattn.zoo import load

    zoo = load("reverse_seq2seq")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, **{f"t{i}": 3 + i for i in range(21)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>")
    texts = ["t3 t7 t1 t0 t12 t5 t9 t15", "t20 t2 t4 t6 t8 t10 t11 t13"]
    hits = {}
    for correction in ("abs", "pos"):
        result = hf.explain_generation(zoo.model, tokenizer, text=texts, max_new_tokens=9,
                                       correction=correction)
        copied = [row for row in result.rows if row.target.label != "</s>"]
        assert [row.target.label for row in copied] == [*texts[0].split()[::-1],
                                                         *texts[1].split()[::-1]]
        hits[correction] = sum(max(row.words, key=lambda pair: pair[1])[0] == row.target.label
                               for row in copied) / len(copied)
    # README: reverse_seq2seq points 1.000 under abs, 0.890 under pos
    assert hits["abs"] == 1.0 and hits["pos"] >= 0.85


def _patch_mean_close(row, image_relevance, cells):
    """The picture map's mean is the mean relevance of the patches the picture covers."""
    assert float(np.abs(row.pixels).max()) > 0
    expected = float(image_relevance[-cells:].mean())
    assert float(row.pixels.mean()) == pytest.approx(expected, rel=0.05)


def _with_pictures(model, processor, prompts, left_pad):
    """Two pictures of different sizes and shapes, explained with ``prompts``; the test's
    own encoding and generate() run; the rows checked."""
    pictures = [picture(0, 20, 30), picture(1, 25, 17)]
    result = hf.explain_generation(model, processor, text=prompts, images=pictures,
                                   max_new_tokens=3)
    processor.tokenizer.padding_side = "left" if left_pad else "right"
    encoded = processor(images=pictures, text=prompts, return_tensors="pt", padding=True)
    processor.tokenizer.padding_side = "right"
    sequences, logits = _reference(model, dict(encoded), 3)
    return result, pictures, encoded, sequences, _check_rows(result, sequences, logits)


def test_captioning_blip_pixels_at_the_pictures_size():
    model, processor = blip()
    result, pictures, encoded, sequences, start = _with_pictures(
        model, processor, ["a picture of", "a picture of"], left_pad=False)
    assert start == encoded["input_ids"].shape[1] - 1  # BLIP drops the prompt's [EOS]
    for row in result.rows:
        b, k = row.target.example, row.target.position - start
        assert row.pixels.shape == (pictures[b].height, pictures[b].width)
        assert row.image.shape == (pictures[b].height, pictures[b].width, 3)
        assert [w for w, _ in row.words] == ["a", "picture", "of"]
        # no crop: the whole picture was seen
        _patch_mean_close(row, result.explanation.relevance["image"][b, k], 4)
    text = result.explanation.relevance["text"]
    _check_words(result, processor.tokenizer, sequences, torch.ones_like(sequences), text,
                 start, positions=range(start))
    _check_context(result, text, start)


def test_llava_pixels_words_and_batch():
    model, processor = llava()
    prompts = ["<image> describe the picture", "<image> what color"]
    result, pictures, encoded, sequences, start = _with_pictures(model, processor, prompts,
                                                                 left_pad=True)
    text = result.explanation.relevance["text"]
    assert [w for w, _ in result.example(0)[0].words] == ["describe", "the", "picture"]
    assert [w for w, _ in result.example(1)[0].words] == ["what", "color"]
    grown = torch.cat([encoded["attention_mask"], torch.ones(2, 3, dtype=torch.long)], 1)
    _check_words(result, processor.tokenizer, sequences, grown, text,
                 start, positions=range(start))
    _check_context(result, text, start)
    for row in result.rows:
        b = row.target.example
        assert row.pixels.shape == (pictures[b].height, pictures[b].width)
    # CLIP's processor resizes the short side to 16 and centre-crops 16×16: what the crop cut
    # off (a band of the long side) was never seen and gets nothing
    wide = result.example(0)[0].pixels  # 20×30 → 16×24, crop columns 4..19
    assert float(np.abs(wide[:, :3]).max()) == 0 and float(np.abs(wide[:, -3:]).max()) == 0
    assert float(np.abs(wide[:, 8:22]).min()) > 0
    tall = result.example(1)[0].pixels  # 25×17 → 23×16, crop rows 3..18
    assert float(np.abs(tall[:2]).max()) == 0 and float(np.abs(tall[-2:]).max()) == 0
    alone = hf.explain_generation(model, processor, text=prompts[1], images=pictures[1],
                                  max_new_tokens=3)
    for one, many in zip(alone.rows, result.example(1), strict=True):
        assert one.target.index[1] == many.target.index[1]
        np.testing.assert_allclose([s for _, s in one.words], [s for _, s in many.words],
                                   rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(one.pixels, many.pixels, rtol=1e-3, atol=1e-7)


def test_whisper_relevance_over_audio_frames():
    model, processor = whisper()
    audio = waves(8000, 12000)
    result = hf.explain_generation(model, processor, audio=audio, max_new_tokens=3)
    encoded = processor(audio=audio, sampling_rate=16000, return_tensors="pt")
    sequences, logits = _reference(model, dict(encoded), 3)
    start = _check_rows(result, sequences, logits)
    frames = result.explanation.relevance["audio"]  # 50 encoder positions, 2 frames each
    assert frames.shape == (2, 3, 50)
    _check_context(result, result.explanation.relevance["text"], start)
    for row in result.rows:
        b, k = row.target.example, row.target.position - start
        real = len(audio[b]) // 160
        assert row.words is None and row.pixels is None
        assert row.audio.shape == (min(real, 100),)
        np.testing.assert_allclose(row.audio_times[:3], [0.0, 0.01, 0.02])
        per_frame = frames[b, k].repeat_interleave(2)[: row.audio.shape[0]]
        np.testing.assert_allclose(row.audio, per_frame.numpy(), rtol=1e-5, atol=1e-9)
        assert float(np.abs(row.audio).max()) > 0
    assert "audio relevance of" in result._repr_html_()


def test_whisper_forced_language_and_task_are_not_rows():
    """With language and task, generate() starts the decoder with <|startoftranscript|> <|en|>
    <|transcribe|> <|notimestamps|>: those are the prompt, not generated tokens."""
    model, processor = whisper()
    specials = processor.tokenizer.convert_tokens_to_ids(list(WHISPER_SPECIALS))
    ids = dict(zip(WHISPER_SPECIALS, specials, strict=True))
    config = model.generation_config
    config.is_multilingual = True
    config.lang_to_id = {"<|en|>": ids["<|en|>"]}
    config.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    config.no_timestamps_token_id = ids["<|notimestamps|>"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = hf.explain_generation(model, processor, audio=waves(8000, 12000),
                                       max_new_tokens=3, language="en", task="transcribe")
    assert not [w for w in caught if "does not reproduce" in str(w.message)]
    sequences = result.inputs["sequences"]
    forced = [ids[name] for name in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                                     "<|notimestamps|>")]
    assert sequences[:, :4].tolist() == [forced, forced]
    assert len(result.rows) == 6 and {row.target.position for row in result.rows} == {4, 5, 6}
    assert [len(row.generated) for row in result.example(0)] == [0, 1, 2]
    assert all(row.target.label not in WHISPER_SPECIALS for row in result.rows)
    with pytest.raises(ValueError, match="WhisperProcessor reads text= as the expected output"):
        hf.explain_generation(model, processor, audio=waves(8000), text="hello")


def test_pipelines_hold_model_and_processor():
    from transformers import pipeline

    model, tokenizer = gpt2()
    direct = hf.explain_generation(model, tokenizer, text=PROMPTS[0], max_new_tokens=2)
    piped = hf.explain_generation(pipeline("text-generation", model=model, tokenizer=tokenizer),
                                  text=PROMPTS[0], max_new_tokens=2)
    assert [r.target.index for r in piped.rows] == [r.target.index for r in direct.rows]
    np.testing.assert_allclose([s for _, s in piped.rows[1].words],
                               [s for _, s in direct.rows[1].words], rtol=1e-5, atol=1e-9)
    model, processor = blip()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers renames the image-to-text task
        pipe = pipeline("image-text-to-text", model=model, processor=processor)
    result = hf.explain_generation(pipe, text="a picture of", images=picture(2, 12, 40),
                                   max_new_tokens=2)
    assert len(result.rows) == 2 and result.pixels[0].shape == (12, 40)
    with pytest.raises(TypeError, match="with generate"):
        hf.explain_generation(object(), tokenizer, text="the cat")


def test_bad_input_is_named(causal):
    model, tokenizer, _ = causal
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        hf.explain_generation(model, tokenizer, text="the cat", max_new_tokens=0)
    with pytest.raises(TypeError, match="max_new_tokens must be an int"):
        hf.explain_generation(model, tokenizer, text="the cat", max_new_tokens=2.0)
    with pytest.raises(ValueError, match="needs a prompt"):
        hf.explain_generation(model, tokenizer, max_new_tokens=2)
    with pytest.raises(ValueError, match="unknown method"):
        hf.explain_generation(model, tokenizer, text="the cat", method="lime")
    with pytest.raises(ValueError, match="num_beams=2"):
        hf.explain_generation(model, tokenizer, text="the cat", num_beams=2)
    with pytest.raises(TypeError, match="text= must be a string"):
        hf.explain_generation(model, tokenizer, text=[3, 4])
    with pytest.raises(ValueError, match="batch size"):
        hf.explain_generation(model, tokenizer, text=["a", "b"], images=[picture(0)])
    with pytest.raises(ValueError, match="processor or tokenizer"):
        hf.explain_generation(model, None, text="the cat")
    for option in ("target", "return_maps"):
        with pytest.raises(TypeError, match=f"every generated token.*{option}"):
            hf.explain_generation(model, tokenizer, text="the cat", **{option: 3})
    with pytest.raises(TypeError, match="with generate"):
        hf.explain_generation(model.transformer, tokenizer, text="the cat")


def test_a_generate_that_drops_the_prompt_is_refused(monkeypatch):
    """Without the prompt (or decoder start) the logits row of the first new token cannot be
    placed: an error, not a shifted explanation."""
    model, tokenizer = gpt2()
    original = model.generate

    def new_tokens_only(*args, **kwargs):
        out = original(*args, **kwargs)
        out.sequences = out.sequences[:, -len(out.scores):]
        return out

    monkeypatch.setattr(model, "generate", new_tokens_only)
    with pytest.raises(ValueError, match="without the prompt or decoder start"):
        hf.explain_generation(model, tokenizer, text="the cat", max_new_tokens=2)
