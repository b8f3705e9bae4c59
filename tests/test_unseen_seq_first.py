r"""Sequence-first hidden states ``(n, B, C)`` (XLNet) when the token count equals the batch:
``capture/introspect.py: token_dim`` tells the layouts apart by sizes only, so at ``n == B`` it
reads them batch-first. The default readout then takes example ``i``'s weights from token ``i``
of every example: XLNet's last-token summary is refused for example 0 with a wrong reason ("its
score does not depend on the model's attention"), a mean summary gets transposed weights silently
(found by ``tests/model_types/variants.py``: ``xlnet@tokens2``). Open: a layout probe is needed
where the sizes cannot tell (see fuzz.report.md)."""

from __future__ import annotations

import pytest
import torch

from captum_hetattn import HeterogenousAttentionAttribution


def _xlnet(summary: str) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    config = transformers.XLNetConfig(vocab_size=99, d_model=32, n_layer=2, n_head=2,
                                      d_inner=64, summary_type=summary, num_labels=3)
    return transformers.XLNetForSequenceClassification(config).eval()


@pytest.mark.xfail(strict=True, reason="sequence-first layout at n == B is read batch-first")
@pytest.mark.parametrize("summary", ["last", "mean"])
def test_sequence_first_with_as_many_tokens_as_examples(summary: str) -> None:
    model = _xlnet(summary)
    explainer = HeterogenousAttentionAttribution(lambda ids: model(input_ids=ids).logits,
                                                 model=model)
    ids = torch.randint(5, 90, (2, 2), generator=torch.Generator().manual_seed(1))
    (batch,) = explainer.explain(ids, target=1).relevance.values()
    for index in range(2):
        (alone,) = explainer.explain(ids[index:index + 1], target=1).relevance.values()
        torch.testing.assert_close(batch[index:index + 1], alone, rtol=1e-5, atol=1e-9)


def test_sequence_first_with_more_tokens_than_examples_is_exact() -> None:
    model = _xlnet("last")
    explainer = HeterogenousAttentionAttribution(lambda ids: model(input_ids=ids).logits,
                                                 model=model)
    ids = torch.randint(5, 90, (2, 3), generator=torch.Generator().manual_seed(1))
    (batch,) = explainer.explain(ids, target=1).relevance.values()
    for index in range(2):
        (alone,) = explainer.explain(ids[index:index + 1], target=1).relevance.values()
        torch.testing.assert_close(batch[index:index + 1], alone, rtol=1e-5, atol=1e-9)
