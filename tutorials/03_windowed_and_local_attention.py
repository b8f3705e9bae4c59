# %% [markdown]
# # Windowed and local attention: Swin and LED
#
# Not every transformer computes one `(batch, heads, n, n)` attention map per call. Swin attends
# within shifted windows (`(batch·windows, heads, w², w²)` maps over a permuted copy of its
# tokens); Longformer/LED attend within a band around each token plus a few global tokens
# (`(batch, n, heads, 2w+1+g)` scores). `captum_hetattn` lays every such map out over the
# layer's tokens — read from the autograd graph, nothing written per family — and then
# explains the model exactly as it would a dense one. This tutorial explains a tiny Swin
# classifier and a tiny LED summariser with the default call, looks at a folded map, and shows
# what happens with a softmax that is not attention over tokens.
#
# Run it as a script (`python tutorials/03_windowed_and_local_attention.py`) or open it as a
# notebook (jupytext "percent" format). Random weights: the point is the mechanics, not the maps.

# %%
import warnings

import torch
from transformers import (
    LEDConfig,
    LEDForConditionalGeneration,
    SwinConfig,
    SwinForImageClassification,
)

from captum_hetattn import AttentionRecorder, HeterogenousAttentionAttribution
from captum_hetattn.infer import trace

torch.manual_seed(0)
torch.set_num_threads(1)

# %% [markdown]
# ## Swin: shifted windows, patch merging between stages
# 32×32 images, 4×4 patches (an 8×8 grid), windows of 2×2, two stages (the second after a 2×2
# patch merge: a 4×4 grid).

# %%
swin = SwinForImageClassification(SwinConfig(
    image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=2,
    num_labels=3)).eval()
pixels = torch.randn(2, 3, 32, 32)

explainer = HeterogenousAttentionAttribution(lambda x: swin(pixel_values=x).logits, model=swin)
explanation = explainer.explain(pixels, target=1)
for call in explanation.calls:
    print(f"{call.name:45s} {call.query:8s} type {call.type}")
print("image relevance per example:", explanation.relevance["image"].shape)  # (2, 64 patches)
heatmap = explainer.attribute(pixels, target=1)  # laid out on the pixels, like the input
print("attribution:", tuple(heatmap.shape))

# %% [markdown]
# Stage 2 is its own stream (`image_2`), fed by a junction that averages each 2×2 group of
# stage-1 tokens; relevance flows back through it to the 64 patches. What a folded map looks
# like: the recorder with `record_io=True` and `trace` give each windowed call a `TokenLayout`
# and a dense map over the layer's 64 tokens, zero between tokens of different windows.

# %%
with torch.enable_grad(), AttentionRecorder(swin, record_io=True) as recorder:
    traced = pixels.clone().requires_grad_()
    score = swin(pixel_values=traced).logits[:, 1].sum()
    trace(recorder, [traced], batch=2)
    recorder.compute_gradients(score)
shifted = recorder.records[1]  # stage 1, block 1: shifted windows
print(shifted.layout.kind, "raw maps", tuple(shifted.parts[0].shape), "->", shifted.shape)
row = shifted.attention[0, 0, 9]  # token (1, 1) of the 8×8 grid, head 0
print("keys token (1, 1) attends to:", row.nonzero().flatten().tolist())

# %% [markdown]
# ## LED: a band of 2 tokens each side, one global token
# The encoder's scores are `(batch, n, heads, 2w+1)` plus one column per global token; the
# global token's own row comes from a second softmax with its own projections. Both are placed
# entry by entry and folded into one `(batch, heads, n, n)` map per layer.

# %%
led = LEDForConditionalGeneration(LEDConfig(
    vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
    decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37, attention_window=4,
    max_encoder_position_embeddings=64, max_decoder_position_embeddings=64)).eval()
ids = torch.randint(5, 90, (1, 16))
decoder_ids = torch.randint(5, 90, (1, 3))
global_mask = torch.zeros_like(ids)
global_mask[0, 0] = 1  # the first token attends to, and is attended by, every token


def next_token(ids, decoder_ids, global_mask):
    return led(input_ids=ids, decoder_input_ids=decoder_ids,
               global_attention_mask=global_mask).logits[:, -1]


explainer = HeterogenousAttentionAttribution(next_token, model=led)
explanation = explainer.explain(ids, target=7, additional_forward_args=(decoder_ids, global_mask))
for call in explanation.calls:
    print(f"{call.name:55s} {call.query:7s} <- {call.key:7s} type {call.type}")
relevance = explanation.relevance["source"][0]
print("source-token relevance:", " ".join(f"{v:.1e}" for v in relevance.tolist()))
assert relevance.abs().sum() > 0  # every input token reached through the band and global token

# %% [markdown]
# ## Softmaxes that are not attention over tokens
# A hand-written module whose softmax runs over channel groups (DaViT's channel attention), or
# over tokens without queries (attention pooling), is left out with one warning naming it; the
# rest of the model is explained. A model with nothing left gets one error that says why.

# %%
from torch import nn  # noqa: E402


class ChannelAttention(nn.Module):
    def __init__(self, width: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.qkv = heads, nn.Linear(width, 3 * width)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 4, 1)
        attention = (q @ k.transpose(-1, -2)).softmax(dim=-1)  # (B, H, c/H, c/H): channels
        return x + (attention @ v).permute(0, 3, 1, 2).reshape(b, n, c)


class TokenAttention(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(width, 2, batch_first=True)

    def forward(self, x):
        return x + self.attention(x, x, x, need_weights=False)[0]


model = nn.Sequential(nn.Embedding(50, 16), TokenAttention(), ChannelAttention(),
                      nn.Flatten(), nn.Linear(16 * 6, 3)).eval()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = HeterogenousAttentionAttribution(model, model=model).explain(
        torch.randint(0, 50, (1, 6)), target=0)
print([call.name for call in out.calls])
print([str(w.message)[:120] for w in caught if "left out" in str(w.message)])
