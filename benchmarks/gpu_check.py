"""GPU check: attributions on CUDA equal the CPU ones; ViT-base timing; fp16 on the GPU.

Run on a machine with a GPU: ``python benchmarks/gpu_check.py`` (needs captum and this package).
Measured on one H100 (torch 2.11, transformers 5.17): CPU and GPU relevance agree to 3e-8 for
all four classes on a padded two-stream LXMERT batch; ViT-base, batch 8, median of 10, two runs:
plain forward+backward 31.1 / 30.7 ms, ours 33.8 / 26.2 ms (1.09× / 0.85×); a float16 ViT gives
float32, finite relevance.
"""

from __future__ import annotations

import torch
import transformers as tf
from timing import median_time  # benchmarks/timing.py (scripts run from this folder)

from captum_hetattn import (
    AttentionRollout,
    GenericAttentionExplainability,
    HeterogenousAttentionAttribution,
    RawAttention,
)

METHODS = (
    HeterogenousAttentionAttribution,
    GenericAttentionExplainability,
    AttentionRollout,
    RawAttention,
)


def lxmert_relevance(model: torch.nn.Module, inputs: tuple, mask: torch.Tensor, device: str):
    model = model.to(device)

    def scores(ids, feats, boxes, attention_mask):
        return model(
            input_ids=ids, visual_feats=feats, visual_pos=boxes, attention_mask=attention_mask
        ).question_answering_score

    moved = tuple(t.to(device) for t in inputs)
    relevance = {}
    for method in METHODS:
        explainer = method(scores, model=model)
        explanation = explainer.explain(moved, target=2, additional_forward_args=(mask.to(device),))
        relevance[method.__name__] = {s: r.cpu() for s, r in explanation.relevance.items()}
        outputs = explainer.attribute(moved, target=2, additional_forward_args=(mask.to(device),))
        assert all(o.device.type == device for o in outputs), method.__name__
    return relevance


def synchronized(fn):
    def run() -> None:
        fn()
        torch.cuda.synchronize()

    return run


def main() -> None:
    print(torch.__version__, tf.__version__, torch.cuda.get_device_name(0))
    torch.manual_seed(0)
    config = tf.LxmertConfig(
        hidden_size=32, num_attention_heads=2, intermediate_size=37, l_layers=2, x_layers=2,
        r_layers=1, visual_feat_dim=8, visual_pos_dim=4, num_qa_labels=4, vocab_size=50,
    )
    model = tf.LxmertForQuestionAnswering(config).eval()
    inputs = (torch.randint(5, 50, (3, 6)), torch.randn(3, 5, 8), torch.rand(3, 5, 4))
    mask = torch.ones_like(inputs[0])
    mask[1, 4:] = 0
    cpu = lxmert_relevance(model, inputs, mask, "cpu")
    gpu = lxmert_relevance(model, inputs, mask, "cuda")
    for name, streams in cpu.items():
        for stream, values in streams.items():
            difference = (values - gpu[name][stream]).abs().max().item()
            print(f"{name:34s} {stream:6s} max |cpu - gpu| = {difference:.2e}")
            assert difference < 1e-4

    vit = tf.ViTForImageClassification(tf.ViTConfig(num_labels=10)).eval().cuda()
    pixels = torch.randn(8, 3, 224, 224, device="cuda")

    def logits(x):
        return vit(pixel_values=x).logits

    def plain() -> None:
        vit.zero_grad(set_to_none=True)
        logits(pixels)[:, 3].sum().backward()

    ours = HeterogenousAttentionAttribution(logits, model=vit)
    plain_s = median_time(synchronized(plain), 10)
    ours_s = median_time(synchronized(lambda: ours.attribute(pixels, target=3)), 10)
    print(f"ViT-base batch 8: plain forward+backward {plain_s * 1e3:.1f} ms, "
          f"ours {ours_s * 1e3:.1f} ms ({ours_s / plain_s:.2f}x)")

    half = tf.ViTForImageClassification(tf.ViTConfig(num_labels=10)).eval().cuda().half()
    explanation = HeterogenousAttentionAttribution(
        lambda x: half(pixel_values=x).logits, model=half
    ).explain(pixels.half(), target=3)
    relevance = explanation.relevance["image"]
    print(f"float16 ViT: relevance {relevance.dtype}, finite {bool(relevance.isfinite().all())}")


if __name__ == "__main__":
    main()
