# %% [markdown]
# # Explaining a two-stream VQA model
#
# The bundled `shapes_vqa` model is an LXMERT (text stream + image-region stream, joined by
# co-attention) trained on synthetic scenes: 2–4 coloured shapes on a 4×4 grid, questions such as
# "what color is the square?". Because the scenes are synthetic, we know which regions hold the
# answer — so we can check an explanation, not just look at it.
#
# With a model hub, the same code runs on the real thing:
# `LxmertForQuestionAnswering.from_pretrained("unc-nlp/lxmert-vqa-uncased")` with Faster R-CNN
# region features; the layer graph is the same `"lxmert"` preset.
#
# Run as a script (`python tutorials/01_explain_a_vqa_model.py`) or open it as a notebook
# (jupytext "percent" format).

# %%
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from captum.attr import visualization as viz  # noqa: E402

from captum_hetattn import (  # noqa: E402
    Contrast,
    GenericAttentionExplainability,
    HeterogenousAttentionAttribution,
    PatchGrid,
)
from captum_hetattn.visualization import grid_heatmap  # noqa: E402
from captum_hetattn.zoo import load  # noqa: E402

vqa = load("shapes_vqa")
examples = vqa.make_examples(4, seed=7)
for example in examples:
    print(example.description)

# %% [markdown]
# ## One call explains both modalities
#
# `HeterogenousAttentionAttribution` records every attention map and its gradient in one
# forward + backward, rolls relevance out through self-attention and propagates it through the
# co-attention layers with the text and image sources kept apart. The readout is the `[CLS]`
# row, so a single call gives relevance for the question tokens *and* for the regions.

# %%
explainer = HeterogenousAttentionAttribution(
    vqa.forward_func, model=vqa.model, graph=vqa.graph, input_mappings=vqa.input_mappings
)
batch = vqa.collate(examples)
explanation = explainer.explain(
    batch.inputs, target=batch.targets, additional_forward_args=batch.additional_forward_args
)
for i, example in enumerate(examples):
    text = explanation.relevance["text"][i]
    words = example.tokens["text"]
    top_word = max(range(1, len(words)), key=lambda j: float(text[j]))
    top_cell = int(explanation.relevance["image"][i].argmax())
    print(f"{example.description:45s} top word: {words[top_word]:8s} "
          f"top region: {example.tokens['image'][top_cell]}")

# %% [markdown]
# ## Captum-shaped output, Captum's pictures
#
# `attribute` returns tensors shaped like the inputs (token ids, region features, boxes), so
# everything in `captum.attr.visualization` and `captum.metrics` takes them as they are. For the
# picture we lay the 16 region scores over the 4×4 grid of the rendered image.

# %%
grid = PatchGrid("image", prefix_tokens=0, grid=(4, 4), interpolation="nearest")
figure, axes = plt.subplots(1, len(examples), figsize=(3 * len(examples), 3))
for axis, example, regions in zip(axes, examples, explanation.relevance["image"], strict=True):
    heat = grid_heatmap(regions, example.image.shape[:2], grid)
    viz.visualize_image_attr(
        heat, example.image / 255.0, method="blended_heat_map", sign="positive",
        plt_fig_axis=(figure, axis), use_pyplot=False, title=example.description,
    )
figure.savefig("vqa_explanations.png", dpi=80)

# %% [markdown]
# ## Logical inspection: why this answer and not that one?
#
# With the `full` gradient correction the sign survives: `Contrast(a, b)` explains
# `logit_a − logit_b`, positive relevance is evidence for `a`, negative for `b`.

# %%
first = vqa.collate(examples[:1])
answer = int(vqa.predict(first)[0])
runner_up = int(vqa.forward_func(*first.inputs, *first.additional_forward_args)[0]
                .topk(2).indices[1])
_, regions, _ = explainer.attribute(
    first.inputs, objective=Contrast(answer, runner_up), correction="full",
    additional_forward_args=first.additional_forward_args,
)
print("signed region relevance (for answer vs runner-up):", regions[0, :, 0])

# %% [markdown]
# ## How does it compare with GAE?
#
# The paper's claim: with `pos` correction, GAE without its normalisation and with its cross
# rule replaced by `R[q,k] += Ā·R[k,k]` *is* this method. Both are Captum attributions on the
# same engine, so checking it is one comparison.

# %%
gae_variant = GenericAttentionExplainability(
    vqa.forward_func, model=vqa.model, graph=vqa.graph, input_mappings=vqa.input_mappings,
    normalize=False, cross_term="direct",
).explain(batch.inputs, target=batch.targets,
          additional_forward_args=batch.additional_forward_args)
print("max |difference| on the image stream:",
      float((gae_variant.relevance["image"] - explanation.relevance["image"]).abs().max()))
assert torch.allclose(gae_variant.relevance["image"], explanation.relevance["image"], atol=1e-6)
