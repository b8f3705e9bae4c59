# %% [markdown]
# # A layer graph for your own model
#
# `captum_hetattn` needs to know, for every attention module, which *stream* its queries come
# from and which stream its keys/values come from, and how tokens move between streams without
# attention (*junctions*). For the preset families this is looked up (`graph_for(model)`); for
# anything else it is **inferred** from the data flow of one forward pass, or you **write** it.
# This tutorial does both on a plain-PyTorch image-captioning-style model (an image encoder, a
# text decoder that cross-attends to the image, a classifier on the last token), then on a
# LLaVA-style model that splices image tokens into its text.
#
# Run it as a script (`python tutorials/02_layer_graph_for_your_model.py`) or open it as a
# notebook (jupytext "percent" format).

# %%
import torch
from torch import nn

from captum_hetattn import (
    AttentionNode,
    HeterogenousAttentionAttribution,
    LayerGraph,
    PatchGrid,
    Tokens,
    infer_graph,
)

torch.manual_seed(0)


class TinyCaptioner(nn.Module):
    """Patches of a 16×16 image → encoder; 5 text tokens → decoder with cross-attention."""

    def __init__(self, dim: int = 32, vocab: int = 20, classes: int = 4) -> None:
        super().__init__()
        self.patchify = nn.Conv2d(3, dim, kernel_size=4, stride=4)  # 4×4 grid of patches
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.0, batch_first=True)
        self.image_encoder = nn.TransformerEncoder(layer, num_layers=2)
        block = nn.TransformerDecoderLayer(dim, 4, 64, dropout=0.0, batch_first=True)
        self.text_decoder = nn.TransformerDecoder(block, num_layers=2)
        self.head = nn.Linear(dim, classes)

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        patches = self.patchify(pixels).flatten(2).transpose(1, 2)
        image = self.image_encoder(torch.cat([self.cls.expand(len(pixels), -1, -1), patches], 1))
        causal = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        text = self.text_decoder(self.embed(tokens), image, tgt_mask=causal)
        return self.head(text[:, -1])


model = TinyCaptioner().eval()
pixels, tokens = torch.randn(2, 3, 16, 16), torch.randint(0, 20, (2, 5))

# %% [markdown]
# ## Infer the graph
#
# `infer_graph` records one forward, makes one node per module pattern (the layer index becomes
# `*`), works out which stream each call reads from where its query and key tokens come from in
# the autograd graph (never from token counts), and labels the types: TypeA (homogenous
# self-attention), TypeB (cross-attention), TypeC (self-attention over a stream that already
# received another source). This model is built on `nn.TransformerEncoderLayer`/`DecoderLayer`,
# which the presets also recognise.

# %%
inferred = infer_graph(model, pixels, tokens)
print(inferred.to_json(indent=1))
print([(node.module, node.type) for node in inferred.nodes])

# %% [markdown]
# ## Write it yourself
#
# The same graph by hand, with names you choose. A tuple in `steps` would be a *parallel group*
# (calls computed from the same inputs, like LXMERT's two cross directions).

# %%
graph = LayerGraph(
    streams=["image", "text"],
    steps=[
        AttentionNode("image_encoder.layers.*.self_attn", query="image"),
        AttentionNode("text_decoder.layers.*.self_attn", query="text"),
        AttentionNode("text_decoder.layers.*.multihead_attn", query="text", key="image"),
    ],
    readout_stream="text",
    readout_token="last",
)
print([node.type for node in graph.nodes])  # ['A', 'C', 'B']

# %% [markdown]
# ## Explain
#
# The input mappings say how relevance over tokens becomes relevance over inputs: the image
# stream is `[CLS]` + a 4×4 patch grid, upsampled to the 16×16 pixels; text tokens map 1:1.

# %%
explainer = HeterogenousAttentionAttribution(
    model, graph=graph, input_mappings=[PatchGrid("image", prefix_tokens=1), Tokens("text")]
)
pixel_relevance, token_relevance = explainer.attribute((pixels, tokens), target=2)
print(pixel_relevance.shape, token_relevance.shape)
explanation = explainer.explain((pixels, tokens), target=2)
print({stream: tuple(r.shape) for stream, r in explanation.relevance.items()})
# per call, in the order the model ran them, with its concrete type: the decoder's first
# self-attention runs before any cross-attention, so it is A; the second is C
print([(call.name, call.type) for call in explanation.calls])
# the readout: weights over the final tokens, read from the objective's gradient
print({stream: w[0].tolist() for stream, w in explanation.readout.items()})

# %% [markdown]
# Without `input_mappings`, each input is mapped by the stream rows its elements feed, traced
# through the model: every pixel takes the relevance of its patch token.

# %%
traced = HeterogenousAttentionAttribution(model, graph=graph)
pixel_traced, _ = traced.attribute((pixels, tokens), target=2)
print(torch.allclose(pixel_traced, PatchGrid("image", prefix_tokens=1, interpolation="nearest")
                     .to_input(explanation.relevance["image"], pixels, 0)))

# %% [markdown]
# ## A model that splices image tokens into its text
#
# Vision-language models often put projected image features at the positions of placeholder
# tokens of the language model's sequence (LLaVA, PaliGemma, Qwen2-VL, Idefics3). No attention
# connects the two, so the graph needs a **junction**: a token map from the image stream into
# the text stream. The data flow finds it by itself; `Junction(kind="splice")` writes it by
# hand.

# %%
from captum_hetattn import Junction  # noqa: E402

PLACEHOLDER = 19


class TinySplicer(nn.Module):
    """An image encoder whose 4 patch tokens replace the placeholder ids of a text encoder."""

    def __init__(self, dim: int = 32, vocab: int = 20) -> None:
        super().__init__()
        self.patchify = nn.Conv2d(3, dim, kernel_size=8, stride=8)  # 2×2 patches
        self.embed = nn.Embedding(vocab, dim)
        self.vision = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.0, batch_first=True), 2
        )
        self.projector = nn.Linear(dim, dim)
        self.language = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.0, batch_first=True), 2
        )
        self.head = nn.Linear(dim, 3)

    def forward(self, ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        image = self.vision(self.patchify(pixels).flatten(2).transpose(1, 2))
        text = self.embed(ids).masked_scatter(
            (ids == PLACEHOLDER)[..., None], self.projector(image)
        )
        return self.head(self.language(text)[:, 0])


splicer = TinySplicer().eval()
ids = torch.randint(0, 19, (2, 8))
ids[:, 2:6] = PLACEHOLDER
default = HeterogenousAttentionAttribution(splicer)  # no graph: inferred from the data flow
spliced = default.explain((ids, pixels), target=1)
print(default.graph.to_json(indent=1))  # two streams and a probed junction image -> text
print({source: r[0].tolist() for source, r in spliced.relevance.items()})

by_hand = LayerGraph(
    streams=["image", "text"],
    steps=[AttentionNode("vision.layers.*.self_attn", query="image"),
           AttentionNode("language.layers.*.self_attn", query="text")],
    junctions=[Junction("text", "image", kind="splice", params={"placeholder": PLACEHOLDER})],
)
written = HeterogenousAttentionAttribution(splicer, graph=by_hand).explain(
    (ids, pixels), target=1
)
print(torch.allclose(written.relevance["image"], spliced.relevance["image"]))
