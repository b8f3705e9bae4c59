import pytest
import torch
from tiny_models import BUILDERS

from captum_hetattn import HeterogenousAttentionAttribution
from captum_hetattn.mapping import (
    AudioFrames,
    NoAttribution,
    PatchGrid,
    Tokens,
    default_mappings,
    to_heatmap,
)
from captum_hetattn.objectives import (
    Contrast,
    Ratio,
    RelativeContrast,
    resolve_objective,
    select_target,
)


def test_tokens_broadcast_over_features_and_select_a_slice_of_a_joint_stream():
    relevance = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    ids = torch.zeros(1, 3, dtype=torch.long)
    assert Tokens("joint", tokens=slice(0, 3)).to_input(relevance, ids, 0).tolist() == [
        [1.0, 2.0, 3.0]
    ]
    regions = Tokens("joint", tokens=slice(3, None)).to_input(relevance, torch.zeros(1, 2, 4), 1)
    assert regions.shape == (1, 2, 4) and regions[0, :, 0].tolist() == [4.0, 5.0]
    with pytest.raises(ValueError, match="input 0 of shape \\(1, 3\\) does not match Tokens"):
        Tokens("joint").to_input(relevance, ids, 0)


def test_patch_grid_drops_prefix_tokens_and_upsamples():
    relevance = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0]])  # [CLS] + 2×2 grid
    image = torch.zeros(1, 3, 4, 4)
    nearest = PatchGrid("image", interpolation="nearest").to_input(relevance, image, 0)
    assert nearest.shape == (1, 3, 4, 4)
    assert nearest[0, 0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    bilinear = PatchGrid("image").to_input(relevance, image, 0)
    assert bilinear[0, 1, 0, 0] == 1 and bilinear[0, 1, 3, 3] == 4
    # DETR: no prefix, a 2×3 feature grid over a wide image
    wide = PatchGrid("image", prefix_tokens=0).layout(6, 64, 96)
    assert wide == (0, 2, 3)
    assert PatchGrid("image", prefix_tokens=2).layout(18, 32, 32) == (2, 4, 4)
    with pytest.raises(ValueError, match="cannot lay 7 tokens out"):
        PatchGrid("image", prefix_tokens=0).layout(7, 32, 32)


def test_audio_frames_and_no_attribution():
    relevance = torch.tensor([[1.0, 2.0]])
    frames = AudioFrames("audio").to_input(relevance, torch.zeros(1, 3, 4), 0)
    assert frames[0, 2].tolist() == [1, 1, 2, 2]
    zeros = NoAttribution().to_input(relevance, torch.ones(1, 5, dtype=torch.long), 2)
    assert zeros.dtype == torch.float32 and (zeros == 0).all()


def test_default_mappings_and_their_errors():
    sizes = {"text": 6, "image": 17}
    mappings = default_mappings(
        (torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, 3, 16, 16)), sizes
    )
    assert mappings == (Tokens("text"), PatchGrid("image"))
    assert default_mappings((torch.zeros(2, 8, 16),), {"audio": 8, "text": 4}) == (
        AudioFrames("audio"),
    )
    with pytest.raises(ValueError, match="cannot tell which stream input 0"):
        default_mappings((torch.zeros(2, 6),), {"source": 6, "target": 6})


def test_to_heatmap_shapes():
    assert to_heatmap(torch.ones(2, 3, 5, 4)).shape == (5, 4, 1)
    assert to_heatmap(torch.ones(5, 4)).shape == (5, 4, 1)
    with pytest.raises(ValueError, match="image attribution"):
        to_heatmap(torch.ones(5))


def test_objectives_by_hand():
    output = torch.tensor([[1.0, 2.0, 4.0], [3.0, 1.0, 2.0]])
    assert select_target(output, 2).tolist() == [4.0, 2.0]
    assert select_target(output, [0, 1]).tolist() == [1.0, 1.0]
    assert select_target(output, torch.tensor([2, 0])).tolist() == [4.0, 3.0]
    assert Contrast(2, 1)(output).tolist() == [2.0, 1.0]
    assert Ratio(2, 1)(output).tolist() == [2.0, 2.0]
    assert RelativeContrast(2, 1)(output).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="target index \\(dim 1\\) 3 is out of range"):
        select_target(output, 3)
    with pytest.raises(ValueError, match="target list has 3 entries for a batch of 2"):
        select_target(output, [0, 1, 2])
    with pytest.raises(ValueError, match="target is required"):
        select_target(output, None)
    with pytest.raises(ValueError, match="either target or objective"):
        resolve_objective(1, Contrast(1, 2))


def test_whisper_audio_frames_end_to_end():
    model, inputs = BUILDERS["whisper"]()
    explainer = HeterogenousAttentionAttribution(
        lambda features, ids: model(input_features=features, decoder_input_ids=ids)
        .last_hidden_state[:, -1],
        model=model,
    )
    features, ids = inputs["input_features"], inputs["decoder_input_ids"]
    audio, text = explainer.attribute((features, ids), target=0)
    assert audio.shape == features.shape and text.shape == ids.shape
    # two frames per encoder token, constant over mel bins
    assert torch.equal(audio[:, :, 0], audio[:, :, 1]) and torch.equal(audio[:, 0], audio[:, 5])
    assert (audio != 0).any()


def test_to_tokens_inverts_to_input_for_every_mapping():
    relevance = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    image = torch.zeros(1, 3, 8, 8)
    grid = PatchGrid("image", prefix_tokens=1, interpolation="nearest")
    back = grid.to_tokens(grid.to_input(relevance, image, 0), 5)
    assert back[0].tolist() == [0.0, 48.0, 96.0, 144.0, 192.0]  # 3 channels × 16 pixels each
    tokens = Tokens("joint", tokens=slice(3, None))
    features = tokens.to_input(relevance, torch.zeros(1, 2, 4), 0)
    assert tokens.to_tokens(features, 5)[0].tolist() == [0.0, 0.0, 0.0, 12.0, 16.0]
    frames = AudioFrames("audio").to_input(relevance, torch.zeros(1, 2, 10), 0)
    assert AudioFrames("audio").to_tokens(frames, 5)[0].tolist() == [0.0, 4.0, 8.0, 12.0, 16.0]
    assert NoAttribution().to_tokens(features, 5).sum() == 0
