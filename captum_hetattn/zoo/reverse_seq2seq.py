r"""``reverse_seq2seq``: a tiny BART that writes its input sequence backwards.

Task. The source is ``<s> x_0 … x_{n-1} </s>`` with ``n = 8`` distinct content tokens (drawn
without replacement, so every output token has exactly one source position that holds it); the
output is ``y_0 … y_{n-1} </s>`` with ``y_j = x_{n-1-j}``. Training uses teacher forcing: the
decoder reads ``[</s>] y_0 … y_{n-1}`` (BART's ``shift_tokens_right`` with
``decoder_start_token_id = </s>``) and row ``j`` of the logits predicts ``y_j``.

Examples. Each :class:`~captum_hetattn.zoo.Example` explains one output position ``j``:
``inputs = (input_ids, decoder_input_ids)``, ``additional_forward_args = (attention_mask,)``,
``target = (j, y_j)`` (the decoder row ``j`` and the gold token), ``label = y_j``. Evidence: the
``source`` token ``1 + (n-1-j)`` (``+1`` for ``<s>``) — the one position that holds ``y_j``;
nothing on the ``target`` side.

``accuracy`` is exact match of the whole output (all ``n`` tokens and ``</s>``, greedy argmax at
every position under teacher forcing). ``remove(batch, "source", keep)`` zeroes the source
attention mask at the removed tokens (encoder self-attention and decoder cross-attention then
ignore them); ``<s>`` and ``</s>`` are always kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor
from transformers import BartConfig, BartForConditionalGeneration

from captum_hetattn.graph.presets import preset
from captum_hetattn.mapping import Tokens
from captum_hetattn.zoo import (
    Batch,
    Example,
    ZooModel,
    fit,
    load_weights,
    single_thread,
)

NAME = "reverse_seq2seq"
BOS, PAD, EOS = 0, 1, 2
FIRST_CONTENT = 3
N_CONTENT = 21  # content token ids 3 … 23
VOCAB_SIZE = FIRST_CONTENT + N_CONTENT
LENGTH = 8  # content tokens per sequence
SOURCE_TOKENS = LENGTH + 2  # <s> … </s>
TARGET_TOKENS = LENGTH + 1  # decoder start, y_0 … y_{n-1}

# training recipe (fixed: `train(seed)` is deterministic given the seed)
STEPS = 300
BATCH_SIZE = 128
LEARNING_RATE = 3e-3
WARMUP = 100


def config() -> BartConfig:
    """The model's configuration: d_model 64, 2 + 2 layers, 4 heads, vocabulary 24."""
    return BartConfig(
        vocab_size=VOCAB_SIZE,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=16,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=EOS,
        # untied: safetensors refuses tensors that share memory
        tie_word_embeddings=False,
    )


def token_name(token: int) -> str:
    return {BOS: "<s>", PAD: "<pad>", EOS: "</s>"}.get(token, f"t{token - FIRST_CONTENT}")


# ------------------------------------------------------------------ the synthetic task
def draw(rng: np.random.Generator, n: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""``n`` sequences: ``input_ids``, ``decoder_input_ids`` and ``labels``."""
    content = np.argsort(rng.random((n, N_CONTENT)), axis=1)[:, :LENGTH] + FIRST_CONTENT
    content = torch.from_numpy(content).long()
    column = torch.full((n, 1), 0, dtype=torch.long)
    source = torch.cat([column + BOS, content, column + EOS], dim=1)
    labels = torch.cat([content.flip(1), column + EOS], dim=1)
    decoder = torch.cat([column + EOS, labels[:, :-1]], dim=1)  # shift right, start = </s>
    return source, decoder, labels


def gold_outputs(decoder_input_ids: Tensor) -> Tensor:
    """Gold output of every decoder row: the teacher-forced input shifted left, ``</s>``."""
    return torch.cat([decoder_input_ids[:, 1:], torch.full_like(decoder_input_ids[:, :1], EOS)], 1)


# ------------------------------------------------------------------ the zoo model
class ReverseSeq2Seq(ZooModel):
    r"""The trained BART and its reversal task (see the module docstring)."""

    name = NAME
    removable_streams = ("source",)
    protected_tokens = {"source": (0, SOURCE_TOKENS - 1)}

    def __init__(self, model: BartForConditionalGeneration) -> None:
        self.model = model
        self.graph = preset("bart")
        self.input_mappings = (Tokens("source"), Tokens("target"))

    def forward_func(
        self, input_ids: Tensor, decoder_input_ids: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Source and teacher-forced decoder ids → logits ``(B, n+1, vocab)``."""
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
        ).logits

    def make_examples(self, n: int, seed: int) -> list[Example]:
        rng = np.random.default_rng(seed)
        source, decoder, labels = draw(rng, n)
        positions = rng.integers(0, LENGTH, size=n)
        mask = torch.ones_like(source)
        examples = []
        for i, j in enumerate(positions.tolist()):
            gold = int(labels[i, j])
            source_evidence = torch.zeros(SOURCE_TOKENS, dtype=torch.bool)
            source_evidence[1 + (LENGTH - 1 - j)] = True  # +1: <s> comes first
            words = [token_name(t) for t in source[i].tolist()]
            examples.append(Example(
                inputs=(source[i : i + 1], decoder[i : i + 1]),
                additional_forward_args=(mask[i : i + 1],),
                label=gold,
                target=(j, gold),
                evidence={
                    "source": source_evidence,
                    "target": torch.zeros(TARGET_TOKENS, dtype=torch.bool),
                },
                tokens={"source": words, "target": [token_name(t) for t in decoder[i].tolist()]},
                description=f"reverse {' '.join(words[1:-1])}: output {j} → {token_name(gold)}",
            ))
        return examples

    @torch.no_grad()
    def predict(self, batch: Batch) -> Tensor:
        """Argmax of each example's explained decoder row (its target position)."""
        logits = self.forward_func(*batch.inputs, *(batch.additional_forward_args or ()))
        rows = torch.tensor([int(target[0]) for target in batch.targets])
        return logits[torch.arange(len(rows)), rows].argmax(dim=-1)

    @torch.no_grad()
    def accuracy(self, n: int = 500, seed: int = 12345) -> float:
        """Exact match of the whole reversed output (greedy argmax, teacher forcing)."""
        batch = self.collate(self.make_examples(n, seed))
        source, decoder = batch.inputs
        logits = self.forward_func(source, decoder, *(batch.additional_forward_args or ()))
        exact = (logits.argmax(dim=-1) == gold_outputs(decoder)).all(dim=1)
        return float(exact.float().mean())

    def remove(self, batch: Batch, stream: str, keep: Tensor) -> Batch:
        r"""Zero the source attention mask where ``keep`` is False (``<s>``/``</s>`` stay).

        Args:
            keep: ``(B, n+2)`` booleans over the source tokens.
        """
        if stream != "source":
            return super().remove(batch, stream, keep)
        (mask,) = batch.additional_forward_args or (None,)
        if keep.shape != mask.shape:
            raise ValueError(
                f"{NAME}: keep must be (batch, {SOURCE_TOKENS}) over the source tokens, "
                f"got {tuple(keep.shape)}"
            )
        keep = keep.clone()
        keep[:, list(self.protected_tokens["source"])] = True
        return replace(batch, additional_forward_args=(mask * keep.to(mask),))


def build(trained: bool = True) -> ReverseSeq2Seq:
    r"""The zoo model: shipped weights if ``trained``, else a random initialisation."""
    model = BartForConditionalGeneration(config())
    if trained:
        load_weights(model, NAME)
    return ReverseSeq2Seq(model.eval())


def train(seed: int = 0, log: Callable[[str], None] = print) -> ReverseSeq2Seq:
    r"""Train from scratch with teacher forcing on fresh sequences (CPU, one thread, ~30 s).

    The data stream is seeded with ``(seed, 1)`` and the progress check with ``(seed, 2)``, so
    training never sees the held-out seed ``12345`` of :meth:`accuracy`.
    """
    with single_thread():
        return _fit(seed, log)


def _fit(seed: int, log: Callable[[str], None]) -> ReverseSeq2Seq:
    torch.manual_seed(seed)
    model = BartForConditionalGeneration(config())
    rng = np.random.default_rng([seed, 1])
    check = draw(np.random.default_rng([seed, 2]), 500)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)

    def batch_loss() -> Tensor:
        source, decoder, labels = draw(rng, BATCH_SIZE)
        logits = model(input_ids=source, decoder_input_ids=decoder).logits
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, VOCAB_SIZE), labels.reshape(-1)
        )

    fit(model, optimizer, batch_loss, lambda: _exact_match(model, check),
        steps=STEPS, warmup=WARMUP, check_every=100, log=log)
    return ReverseSeq2Seq(model.eval())


@torch.no_grad()
def _exact_match(model: BartForConditionalGeneration, data: Sequence[Tensor]) -> float:
    source, decoder, labels = data
    logits = model(input_ids=source, decoder_input_ids=decoder).logits
    return float((logits.argmax(-1) == labels).all(dim=1).float().mean())
