"""SAM parity with transformers' SamModel / SamProcessor on tiny random configs (needs torch).

Both configs include windowed blocks and global blocks; config "pad" has an 8x8 grid cut into
3x3 windows (padded to 9x9), config "pad5" a 12x12 grid in 5x5 windows (padded to 15x15), two
images and no qkv bias."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import require_transformers

from pyworkloads.models import sam

HERE = Path(__file__).resolve().parent
# Bound on |ours - transformers|: both run float32 and differ only in the order of their sums.
# The longest sums here have 288 terms (the neck's 3x3 conv over 32 channels; the patch conv
# has 192), whose float32 error is at most γ_288 ≈ 1.7e-5 times the sum of |terms|, on
# embeddings of magnitude <= ~4 and mask logits and IoU scores below 1; 1e-4 covers that with
# room for the few layers it passes through.
TOL = 1e-4


def _fixture_module():
    spec = importlib.util.spec_from_file_location(
        "make_sam_fixture", HERE.parent / "fixtures" / "make_sam_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CONFIGS = {
    "pad": dict(
        vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=3,
                           num_attention_heads=4, image_size=64, patch_size=8, window_size=3,
                           global_attn_indexes=[1], num_pos_feats=16, mlp_dim=64),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=8,
                                   mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                                 iou_head_hidden_dim=32)),
    "pad5": dict(
        vision_config=dict(hidden_size=24, output_channels=16, num_hidden_layers=4,
                           num_attention_heads=3, image_size=96, patch_size=8, window_size=5,
                           global_attn_indexes=[0, 3], num_pos_feats=8, mlp_ratio=2.0,
                           qkv_bias=False),
        prompt_encoder_config=dict(hidden_size=16, image_size=96, patch_size=8,
                                   mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_attention_heads=4,
                                 attention_downsample_rate=1, iou_head_hidden_dim=24,
                                 iou_head_depth=4)),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    """(transformers model, our model loaded through from_pretrained, image size, images)."""
    torch, _ = require_transformers()
    hf = _fixture_module().random_hf_sam(dict(model_type="sam", **CONFIGS[request.param]), seed=1)
    path = tmp_path_factory.mktemp(f"sam-{request.param}")
    hf.save_pretrained(path)
    ours = sam.from_pretrained(path)
    S = ours.config.vision_config.image_size
    pixel_values = np.random.default_rng(2).standard_normal((2, 3, S, S)).astype(np.float32)
    return torch, hf, ours, S, pixel_values


def _prompt_cases(S, mask_side):
    rng = np.random.default_rng(3)
    pts = rng.uniform(0, S, (2, 2, 1, 2)).astype(np.float32)
    multi = rng.uniform(0, S, (2, 2, 3, 2)).astype(np.float32)
    multi_labels = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [1, 0, -1]]])
    boxes = np.sort(rng.uniform(0, S, (2, 2, 2, 2)), axis=2).reshape(2, 2, 4).astype(np.float32)
    masks = rng.standard_normal((2, 1, mask_side, mask_side)).astype(np.float32)
    return {
        "point": dict(input_points=pts, input_labels=np.ones((2, 2, 1), np.int64)),
        "multi_point": dict(input_points=multi, input_labels=multi_labels),
        "box": dict(input_boxes=boxes),
        "point_box": dict(input_points=pts, input_labels=np.ones((2, 2, 1), np.int64),
                          input_boxes=boxes),
        "point_mask": dict(input_points=multi, input_labels=multi_labels, input_masks=masks),
        "mask_only": dict(input_masks=masks),
    }


def test_image_embeddings(pair):
    torch, hf, ours, S, pixel_values = pair
    with torch.no_grad():
        want = hf.get_image_embeddings(torch.from_numpy(pixel_values)).numpy()
    got = ours.get_image_embeddings(pixel_values)
    E = S // ours.config.vision_config.patch_size
    assert got.shape == want.shape == (2, ours.config.vision_config.output_channels, E, E)
    assert np.abs(got - want).max() <= TOL


@pytest.mark.parametrize("multimask", [True, False], ids=["multi", "single"])
@pytest.mark.parametrize("case", ["point", "multi_point", "box", "point_box", "point_mask",
                                  "mask_only"])
def test_masks_and_iou_scores(pair, case, multimask):
    torch, hf, ours, S, pixel_values = pair
    E = ours.config.prompt_encoder_config.image_embedding_size
    prompts = _prompt_cases(S, 4 * E)[case]
    with torch.no_grad():
        want = hf(pixel_values=torch.from_numpy(pixel_values), multimask_output=multimask,
                  **{k: torch.from_numpy(np.asarray(v)) for k, v in prompts.items()})
    got = ours(pixel_values=pixel_values, multimask_output=multimask, **prompts)
    assert got.pred_masks.shape == tuple(want.pred_masks.shape)
    assert got.iou_scores.shape == tuple(want.iou_scores.shape)
    assert np.abs(got.pred_masks - want.pred_masks.numpy()).max() <= TOL
    assert np.abs(got.iou_scores - want.iou_scores.numpy()).max() <= TOL

    # thresholded full-resolution masks: identical to SamProcessor.post_process_masks, both from
    # transformers' logits (the post-processing alone) and from ours (end to end)
    fixture = _fixture_module()
    original, = [(S * 3 // 4 - 1, S - 5)]
    reshaped = sam.resized_shape(original, S)
    for b in range(2):
        hf_masks = fixture.hf_post_process(want.pred_masks[b].numpy(), original, reshaped, S)
        theirs = sam.postprocess_masks(want.pred_masks[b].numpy(), original, reshaped, S)
        np.testing.assert_array_equal(theirs, hf_masks)
        ours = sam.postprocess_masks(got.pred_masks[b], original, reshaped, S)
        np.testing.assert_array_equal(ours, hf_masks)


def test_image_positional_embeddings(pair):
    torch, hf, ours, S, _ = pair
    with torch.no_grad():
        want = hf.get_image_wide_positional_embeddings()[0].numpy()
    assert np.abs(ours.get_image_wide_positional_embeddings() - want).max() <= TOL


def test_weight_names_and_counts_match_transformers(pair):
    torch, hf, ours, _, _ = pair
    state = {k: tuple(v.shape) for k, v in hf.state_dict().items() if k != sam.GAUSSIAN_ALIAS}
    assert sam.weight_shapes(ours.config) == state
    n_hf = sum(p.numel() for p in hf.parameters())              # tied Fourier matrix counted once
    assert sam.count_params(ours.config, include_positional_gaussian=True) == n_hf
    gaussian = hf.shared_image_embedding.positional_embedding.numel()
    assert sam.count_params(ours.config) == n_hf - gaussian


@pytest.mark.parametrize("name", ["sam-vit-b", "sam-vit-l", "sam-vit-h"])
def test_preset_counts_against_transformers(name):
    """Build the preset's transformers model on the meta device (no memory) and count."""
    torch, transformers = require_transformers()
    cfg = sam.PRESETS[name]
    with torch.device("meta"):
        hf = transformers.SamModel(transformers.SamConfig(**cfg.to_hf()))
    n_hf = sum(p.numel() for p in hf.parameters())
    gaussian = hf.shared_image_embedding.positional_embedding.numel()
    assert sam.count_params(cfg, include_positional_gaussian=True) == n_hf
    assert sam.count_params(cfg) == n_hf - gaussian             # Meta's convention: a buffer
    state = {k: tuple(v.shape) for k, v in hf.state_dict().items() if k != sam.GAUSSIAN_ALIAS}
    assert sam.weight_shapes(cfg) == state


def test_config_from_transformers_dict():
    _, transformers = require_transformers()
    d = transformers.SamConfig(vision_config=dict(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
        global_attn_indexes=[7, 15, 23, 31])).to_dict()
    assert sam.Config.from_hf(d) == sam.PRESETS["sam-vit-h"]


def test_get_rel_pos_matches_transformers():
    """Including the paths the SAM checkpoints never take: table resizing and q_size != k_size."""
    torch, transformers = require_transformers()
    from transformers.models.sam.modeling_sam import SamVisionAttention

    attn = SamVisionAttention(
        transformers.SamVisionConfig(hidden_size=8, num_attention_heads=2, window_size=3), 3)
    rng = np.random.default_rng(0)
    for q, k, rows in [(3, 3, 5), (3, 3, 9), (2, 5, 9), (6, 3, 7), (4, 4, 5)]:
        table = rng.standard_normal((rows, 4)).astype(np.float32)
        want = attn.get_rel_pos(q, k, torch.from_numpy(table)).numpy()
        # rows picked, or two-tap linear interpolation of N(0, 1) rows (|x| < 5): a few float32
        # roundings of values below 5, < 1e-6
        np.testing.assert_allclose(sam.get_rel_pos(q, k, table), want, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# pre-processing and the predictor against SamProcessor
# ---------------------------------------------------------------------------------------------
def _processor(S):
    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    return SamProcessor(SamImageProcessorPil(size={"longest_edge": S},
                                             pad_size={"height": S, "width": S}))


@pytest.mark.parametrize("shape", [(30, 48), (64, 40), (17, 17), (100, 37)])
def test_preprocess_and_coords_match_processor(shape):
    require_transformers()
    S = 64
    img = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    pts = [[[shape[1] - 1, 0], [shape[1] / 3, shape[0] / 2]]]
    box = [[1, 2, shape[1] - 3, shape[0] - 1]]
    enc = _processor(S)(images=img, input_points=[pts], input_labels=[[[1, 0]]],
                        input_boxes=[box], return_tensors="np")
    pv, original, reshaped = sam.preprocess(img, S)
    assert original == tuple(enc["original_sizes"][0])
    assert reshaped == tuple(enc["reshaped_input_sizes"][0])
    # the same uint8 resize, then (x/255 - mean) / std on values below 2.7 with the operations
    # in another order or precision: a few float32 ulps of 2.7 (2.4e-7 each)
    assert np.abs(pv - enc["pixel_values"]).max() <= 1e-5
    # coordinates times a scale: one float32 rounding each side (6e-8 relative)
    np.testing.assert_allclose(sam.transform_coords(np.array(pts), original, S),
                               enc["input_points"][0], rtol=1e-6)
    np.testing.assert_allclose(sam.transform_coords(np.array(box), original, S),
                               enc["input_boxes"][0], rtol=1e-6)


def test_predictor_end_to_end_matches_transformers(pair):
    """set_image + predict == SamProcessor -> SamModel -> post_process_masks, on the original
    image."""
    torch, hf, ours, S, _ = pair
    img = np.random.default_rng(5).integers(0, 256, (S // 2 + 3, S + 7, 3), dtype=np.uint8)
    points, labels, box = [[10.0, 12.0], [30.0, 5.0]], [1, 0], [4.0, 3.0, 50.0, 30.0]
    proc = _processor(S)
    enc = proc(images=img, input_points=[[points]], input_labels=[[labels]], input_boxes=[[box]],
               return_tensors="pt")
    with torch.no_grad():
        out = hf(pixel_values=enc["pixel_values"], input_points=enc["input_points"],
                 input_labels=enc["input_labels"], input_boxes=enc["input_boxes"])
    want = proc.post_process_masks(out.pred_masks, enc["original_sizes"],
                                   enc["reshaped_input_sizes"],
                                   pad_size={"height": S, "width": S})[0][0].numpy()
    pred = sam.SamPredictor(ours)
    pred.set_image(img)
    masks, scores, low = pred.predict(points=points, labels=labels, box=box)
    assert np.abs(scores - out.iou_scores[0, 0].numpy()).max() <= TOL
    assert np.abs(low - out.pred_masks[0, 0].numpy()).max() <= TOL
    np.testing.assert_array_equal(masks, want)
