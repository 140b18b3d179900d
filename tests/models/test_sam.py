"""SAM without torch: parity against the committed transformers fixture, configs and parameter
counts, input validation, pre/post-processing, predictor, profiling scopes, CLI hooks, backends."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from tolerances import gamma

import pyworkloads as pw
from pyworkloads import io
from pyworkloads.kernels.reference import rel_pos_bias
from pyworkloads.models import sam
from pyworkloads.models.sam.image_encoder import vision_layer

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "sam"
CASES = ("point", "multi_point", "box", "point_box")
PROMPT_KEYS = ("input_points", "input_labels", "input_boxes")
# Bound on |ours - transformers| (and cpp - numpy): both run float32 and differ only in the order
# of their sums.  The longest sum in the fixture model has 192 terms (the 3x8x8 patch conv),
# whose float32 error is at most γ_192 ≈ 1.2e-5 times the sum of |terms|, on embeddings of
# magnitude <= 4 (mask logits <= 0.4, IoU scores <= 0.6); 1e-4 covers that with room for the
# few layers it passes through (observed: <= 1.6e-6).
TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return sam.from_pretrained(FIX)


@pytest.fixture(scope="module")
def expected():
    return io.load_safetensors(FIX / "expected.safetensors")


def _prompts(expected, case):
    return {k: expected[f"{case}.{k}"] for k in PROMPT_KEYS if f"{case}.{k}" in expected}


# ---------------------------------------------------------------------------------------------
# parity with the stored transformers outputs
# ---------------------------------------------------------------------------------------------
def test_fixture_image_embeddings(model, expected):
    emb = model.get_image_embeddings(expected["pixel_values"])
    assert emb.shape == expected["image_embeddings"].shape == (1, 16, 8, 8)
    assert np.abs(emb - expected["image_embeddings"]).max() <= TOL


@pytest.mark.parametrize("multimask", [True, False], ids=["multi", "single"])
@pytest.mark.parametrize("case", CASES)
def test_fixture_masks_and_scores(model, expected, case, multimask):
    tag = f"{case}.{'multi' if multimask else 'single'}"
    out = model(pixel_values=expected["pixel_values"], multimask_output=multimask,
                **_prompts(expected, case))
    want_masks, want_iou = expected[f"{tag}.pred_masks"], expected[f"{tag}.iou_scores"]
    assert out.pred_masks.shape == want_masks.shape == (1, 2, 3 if multimask else 1, 32, 32)
    assert out.iou_scores.shape == want_iou.shape
    assert np.abs(out.pred_masks - want_masks).max() <= TOL
    assert np.abs(out.iou_scores - want_iou).max() <= TOL
    # full resolution, thresholded: identical to transformers' post-processing
    original = tuple(expected["original_size"].tolist())
    reshaped = tuple(expected["reshaped_size"].tolist())
    masks = sam.postprocess_masks(out.pred_masks[0], original, reshaped, image_size=64)
    assert masks.shape == (2, want_masks.shape[2], *original)
    np.testing.assert_array_equal(masks, expected[f"{tag}.masks"].astype(bool))


def test_forward_functions_chain_like_the_model(model, expected):
    """The pure forward functions of model.py give what Sam.__call__ gives, to the bit."""
    cfg, w = model.config, model.weights
    prompts = _prompts(expected, "point_box")
    points, labels, boxes, masks = sam.check_prompts(
        prompts["input_points"], prompts["input_labels"], prompts["input_boxes"],
        np.zeros((1, 1, 32, 32), np.float32), cfg)
    out = model(pixel_values=expected["pixel_values"], input_masks=masks, **prompts)
    pred, iou, emb = sam.forward(expected["pixel_values"], points, labels, boxes, masks, w, cfg)
    np.testing.assert_array_equal(emb, out.image_embeddings)
    np.testing.assert_array_equal(pred, out.pred_masks)
    np.testing.assert_array_equal(iou, out.iou_scores)
    single = model(image_embeddings=emb, input_masks=masks, multimask_output=False, **prompts)
    pred1, iou1 = sam.decode_prompts(emb, points, labels, boxes, masks, w, cfg, False)
    np.testing.assert_array_equal(pred1, single.pred_masks)
    np.testing.assert_array_equal(iou1, single.iou_scores)


def test_precomputed_embeddings_serve_many_prompts(model, expected):
    emb = model.get_image_embeddings(expected["pixel_values"])
    for case in CASES:
        a = model(image_embeddings=emb, **_prompts(expected, case))
        b = model(pixel_values=expected["pixel_values"], **_prompts(expected, case))
        np.testing.assert_array_equal(a.pred_masks, b.pred_masks)


def test_fixture_is_a_real_test(model, expected):
    """A wrong convention (no 0.5 pixel-centre shift) must break parity, so the tolerance
    bites."""
    prompts = _prompts(expected, "point")
    shifted = dict(prompts, input_points=prompts["input_points"] - 0.5)
    out = model(pixel_values=expected["pixel_values"], **shifted)
    assert np.abs(out.pred_masks - expected["point.multi.pred_masks"]).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# configs and parameter counts
# ---------------------------------------------------------------------------------------------
# Official counts (Meta's convention: the 2 x 128 Fourier matrix is a buffer).  Each equals
# transformers' SamModel parameter count for the preset config minus 256; test_sam_parity.py
# re-derives that from transformers itself.
OFFICIAL = {"sam-vit-b": 93_735_472, "sam-vit-l": 312_342_832, "sam-vit-h": 641_090_608}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_preset_parameter_counts(name):
    cfg = sam.PRESETS[name]
    assert sam.count_params(cfg) == OFFICIAL[name]
    assert sam.count_params(cfg, include_positional_gaussian=True) == OFFICIAL[name] + 2 * 128


def test_count_matches_fixture_checkpoint():
    """count_params(include_positional_gaussian=True) is the number of stored values."""
    ckpt = io.load_checkpoint(FIX)
    stored = sum(int(np.prod(ckpt.shape_of(k))) for k in ckpt)
    cfg = sam.Config.from_hf(io.load_config(FIX))
    assert sam.count_params(cfg, include_positional_gaussian=True) == stored
    assert set(sam.weight_shapes(cfg)) == set(ckpt)


def test_config_roundtrip_and_validation():
    cfg = sam.Config.from_hf(io.load_config(FIX))
    assert cfg.vision_config.global_attn_indexes == (1,) and cfg.vision_config.window_size == 3
    assert sam.Config.from_hf(cfg.to_hf()) == cfg
    assert sam.PRESETS["sam-vit-h"].vision_config.mlp_dim == 5120
    with pytest.raises(ValueError, match="model_type"):
        sam.Config.from_hf({"model_type": "clip"})
    with pytest.raises(ValueError, match="num_pos_feats"):
        sam.Config.from_hf({"vision_config": {"num_pos_feats": 64}})
    with pytest.raises(ValueError, match="num_attention_heads"):
        sam.Config.from_hf({"vision_config": {"hidden_size": 100, "num_attention_heads": 12}})


@pytest.mark.parametrize("section, values, message", [
    ("vision_config", {"qkv_bias": "false"}, "qkv_bias must be true or false"),
    ("vision_config", {"window_size": -1}, "window_size must be an integer >= 0"),
    ("vision_config", {"hidden_act": "tanh"}, "hidden_act must be one of"),
    ("vision_config", {"image_size": [64, 32]}, "square pair"),
    ("vision_config", {"layer_norm_eps": 0.0}, "layer_norm_eps must be > 0"),
    ("prompt_encoder_config", {"mask_input_channels": 6}, "multiple of 4"),
    ("mask_decoder_config", {"iou_head_depth": 1}, "iou_head_depth must be an integer >= 2"),
    ("mask_decoder_config", {"num_attention_heads": 3}, "must divide the attention widths"),
])
def test_config_fields_are_checked(section, values, message):
    with pytest.raises(ValueError, match=message):
        sam.Config.from_hf({section: values})
    with pytest.raises(TypeError, match="config must be a dict"):
        sam.Config.from_hf([("model_type", "sam")])


def test_block_cross_attentions_keep_rate_2():
    """The two-way blocks' cross-attentions are C/2 wide whatever attention_downsample_rate says;
    only the final attention follows it."""
    cfg = sam.Config.from_hf(dict(io.load_config(FIX), mask_decoder_config=dict(
        hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16,
        attention_downsample_rate=1)))
    shapes = sam.weight_shapes(cfg)
    tr = "mask_decoder.transformer"
    assert sam.BLOCK_DOWNSAMPLE_RATE == 2
    assert shapes[f"{tr}.layers.0.cross_attn_token_to_image.q_proj.weight"] == (8, 16)
    assert shapes[f"{tr}.layers.1.cross_attn_image_to_token.out_proj.weight"] == (16, 8)
    assert shapes[f"{tr}.layers.0.self_attn.q_proj.weight"] == (16, 16)
    assert shapes[f"{tr}.final_attn_token_to_image.q_proj.weight"] == (16, 16)


def test_from_preset_tiny_and_too_big(monkeypatch):
    m = sam.from_preset("sam-tiny", seed=1)
    assert m.config == sam.PRESETS["sam-tiny"]
    with pytest.raises(ValueError, match="unknown SAM preset"):
        sam.from_preset("sam-vit-x")
    monkeypatch.setattr("pyworkloads.models.available_memory", lambda: 1 << 20)   # 1 MiB free
    with pytest.raises(MemoryError, match="sam-vit-h"):
        sam.from_preset("sam-vit-h")


def test_missing_or_misshapen_weights(expected):
    cfg = sam.Config.from_hf(io.load_config(FIX))
    w = dict(io.load_checkpoint(FIX))
    del w["mask_decoder.iou_token.weight"]
    with pytest.raises(ValueError, match="iou_token"):
        sam.Sam(cfg, w)
    w = dict(io.load_checkpoint(FIX))
    w["vision_encoder.layers.0.attn.rel_pos_h"] = np.zeros((7, 8), np.float32)
    with pytest.raises(ValueError, match="rel_pos_h"):
        sam.Sam(cfg, w)
    # the tied Fourier matrix may be stored under the prompt encoder's name instead
    w = dict(io.load_checkpoint(FIX))
    w[sam.GAUSSIAN_ALIAS] = w.pop(sam.GAUSSIAN)
    out = sam.Sam(cfg, w)(pixel_values=expected["pixel_values"], **_prompts(expected, "point"))
    assert np.abs(out.pred_masks - expected["point.multi.pred_masks"]).max() <= TOL


def test_gaussian_alias_in_a_checkpoint_on_disk(tmp_path, expected):
    """A safetensors file holding the Fourier matrix under the prompt encoder's name only loads
    through from_pretrained (the view also answers shape_of / dtype_of by the model's names)."""
    w = dict(io.load_checkpoint(FIX))
    w[sam.GAUSSIAN_ALIAS] = w.pop(sam.GAUSSIAN)
    io.save_safetensors(tmp_path / "model.safetensors", w)
    (tmp_path / "config.json").write_text((FIX / "config.json").read_text())
    m = sam.from_pretrained(tmp_path)
    assert sam.GAUSSIAN in m.weights and m.weights.dtype_of(sam.GAUSSIAN) == "F32"
    assert tuple(m.weights.shape_of(sam.GAUSSIAN)) == (2, 8)
    assert sam.GAUSSIAN in set(m.weights) and sam.GAUSSIAN_ALIAS not in set(m.weights)
    out = m(pixel_values=expected["pixel_values"], **_prompts(expected, "point"))
    assert np.abs(out.pred_masks - expected["point.multi.pred_masks"]).max() <= TOL


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
def test_window_partition_pads_with_zeros_and_inverts(rng):
    x = rng.standard_normal((2, 8, 8, 5)).astype(np.float32)
    windows, padded = sam.window_partition(x, 3)
    assert padded == (9, 9) and windows.shape == (2 * 9, 3, 3, 5)
    # the last window of each image holds the corner x[6:8, 6:8] plus zero padding
    last = windows[8]
    np.testing.assert_array_equal(last[:2, :2], x[0, 6:8, 6:8])
    assert not last[2].any() and not last[:, 2].any()
    np.testing.assert_array_equal(sam.window_unpartition(windows, 3, padded, (8, 8)), x)


def test_get_rel_pos_closed_form(rng):
    """Same sizes: rows are picked by offset q - k + (k - 1).  Different sizes: the table is
    linearly resized and coordinates of the short side stretched (checked in float64 by hand)."""
    table = rng.standard_normal((2 * 5 - 1, 3))
    got = sam.get_rel_pos(5, 5, table)
    for i in range(5):
        for j in range(5):
            np.testing.assert_array_equal(got[i, j], table[i - j + 4])
    # q=2, k=4: table of 7 rows resized to 7 (unchanged); q coords stretched by 2
    small = rng.standard_normal((7, 3))
    got = sam.get_rel_pos(2, 4, small)
    for i in range(2):
        for j in range(4):
            np.testing.assert_array_equal(got[i, j], small[int(2 * i - j + 3)])
    # a 5-row table used for a 4-wide window (needs 7 rows): align_corners=False linear resize
    got = sam.get_rel_pos(4, 4, small[:5])
    src = np.maximum((np.arange(7) + 0.5) * 5 / 7 - 0.5, 0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, 4)
    resized = small[:5][i0] * (1 - (src - i0))[:, None] + small[:5][i1] * (src - i0)[:, None]
    # float64 on both sides: the bound only absorbs the two-tap sum taken in another order
    np.testing.assert_allclose(got[1, 0], resized[1 - 0 + 3], rtol=1e-6)


def test_fourier_encoding_closed_form(rng):
    g = rng.standard_normal((2, 4)).astype(np.float32)
    c = rng.uniform(0, 1, (3, 2)).astype(np.float32)
    arg = 2 * np.pi * ((2 * c.astype(np.float64) - 1) @ g.astype(np.float64))
    # |arg| <= 2π·max_j(|g0j| + |g1j|) ≈ 12 here; float32 computes it with ~5 roundings
    # (2c - 1, two products and their sum, the 2π factor): <= 5·6e-8·12 ≈ 4e-6, and sin / cos
    # are 1-Lipschitz and add an ulp
    want = np.concatenate([np.sin(arg), np.cos(arg)], -1)
    np.testing.assert_allclose(sam.fourier_encode(c, g), want, atol=1e-5)


def test_decomposed_rel_pos_is_its_einsum_definition(rng):
    """decomposed_rel_pos computes, with dispatched matmuls, segment-anything's
    rel_h = einsum("bhwc,hkc->bhwk", r_q, Rh), rel_w = einsum("bhwc,wkc->bhwk", r_q, Rw), and
    the bias they stand for, rel_h[..., :, None] + rel_w[..., None, :], is rel_pos_bias's."""
    N, H, h, w, Dh = 2, 3, 4, 5, 6
    q = rng.standard_normal((N, H, h * w, Dh)).astype(np.float32)
    tab_h = rng.standard_normal((2 * h - 1, Dh)).astype(np.float32)
    tab_w = rng.standard_normal((2 * w - 1, Dh)).astype(np.float32)
    got_h, got_w = sam.decomposed_rel_pos(q, tab_h, tab_w, (h, w))
    assert got_h.shape == (N, H, h * w, h) and got_w.shape == (N, H, h * w, w)
    got = rel_pos_bias(got_h, got_w)
    Rh, Rw = sam.get_rel_pos(h, h, tab_h), sam.get_rel_pos(w, w, tab_w)
    r_q = q.astype(np.float64).reshape(N * H, h, w, Dh)
    rel_h = np.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = np.einsum("bhwc,wkc->bhwk", r_q, Rw)
    want = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(N, H, h * w, h * w)
    # each entry is two float32 dot products of length Dh and their sum: at most γ_{Dh+1}
    # times the sum of |terms|
    scale = (np.einsum("bhwc,hkc->bhwk", np.abs(r_q), np.abs(Rh))[:, :, :, :, None]
             + np.einsum("bhwc,wkc->bhwk", np.abs(r_q), np.abs(Rw))[:, :, :, None, :])
    assert got.shape == (N, H, h * w, h * w)
    assert np.all(np.abs(got - want) <= gamma(Dh + 1) * scale.reshape(want.shape))


def test_a_window_the_size_of_the_grid_is_global_attention(model, expected, rng):
    """Block 1 of the fixture attends globally over the 8x8 grid; run as one 8x8 window (no
    padding) it gives the same result: partition and unpartition only move tokens."""
    x = rng.standard_normal((2, 8, 8, 16)).astype(np.float32)
    v = model.config.vision_config
    name = "vision_encoder.layers.1"
    glob = vision_layer(x, model.weights, name, v, 0)
    windowed = vision_layer(x, model.weights, name, v, 8)
    np.testing.assert_array_equal(windowed, glob)


# ---------------------------------------------------------------------------------------------
# bad prompts and images: ValueError naming the problem
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(input_points=np.zeros((1, 2, 3, 2)), input_labels=np.ones((1, 2, 2), int)),
     "one label per point"),
    (dict(input_points=np.zeros((1, 1, 2, 2)), input_labels=np.array([[[1, 2]]])),
     "input_labels values"),
    (dict(input_points=np.zeros((1, 1, 1, 2)), input_labels=np.array([[[-2]]])),
     "input_labels values"),
    (dict(input_points=np.zeros((1, 1, 1, 2)), input_labels=np.array([[[0.5]]])), "integers"),
    (dict(input_boxes=np.zeros((1, 1, 3))), "4 coordinates"),
    (dict(input_boxes=np.zeros((1, 4))), "4 coordinates"),
    (dict(input_points=np.zeros((1, 1, 3))),
     r"input_points must have shape \[batch, prompts, points, 2\]"),
    (dict(input_points=np.zeros((1, 2, 1, 2)), input_boxes=np.zeros((1, 3, 4))), "pair one box"),
    (dict(input_points=np.full((1, 1, 1, 2), np.nan)), "NaN"),
    (dict(input_labels=np.ones((1, 1, 1), int)), "without input_points"),
    (dict(input_points=np.zeros((2, 1, 1, 2))), "batch size 2 but there are 1 images"),
    (dict(input_masks=np.zeros((1, 1, 16, 16))),
     r"input_masks must have shape \[batch, 1, 32, 32\]"),
])
def test_bad_prompts_raise_value_error(model, expected, kwargs, message):
    emb = expected["image_embeddings"]
    with pytest.raises(ValueError, match=message):
        model(image_embeddings=emb, **kwargs)


def test_bad_images_raise_value_error(model, expected):
    with pytest.raises(ValueError, match="wrong image size"):
        model.get_image_embeddings(np.zeros((1, 3, 32, 64), np.float32))
    with pytest.raises(ValueError, match="wrong image size"):
        model(pixel_values=np.zeros((1, 3, 1024, 1024), np.float32),
              input_points=np.zeros((1, 1, 1, 2)))
    with pytest.raises(ValueError, match="pixel_values must be 4-D"):
        model.get_image_embeddings(np.zeros((3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="exactly one of pixel_values and image_embeddings"):
        model(input_points=np.zeros((1, 1, 1, 2)))
    with pytest.raises(ValueError, match="image_embeddings must be"):
        model(image_embeddings=np.zeros((1, 16, 4, 4), np.float32),
              input_points=np.zeros((1, 1, 1, 2)))


def test_padding_label_embeds_to_nothing(model, expected):
    """transformers' processor pads ragged point lists with label -10; such a point is ignored
    by the prompt tokens (its token is zero), unlike a -1 "not a point"."""
    cfg = model.config
    pts = np.array([[[[10.0, 20.0], [5.0, 5.0]]]], np.float32)
    sparse, _ = sam.prompt_encoder(pts, np.array([[[1, -10]]]), None, None, model.weights, cfg)
    assert sparse.shape == (1, 1, 3, 16)
    assert not sparse[0, 0, 1].any()
    not_a_point = np.asarray(model.weights["prompt_encoder.not_a_point_embed.weight"])[0]
    np.testing.assert_array_equal(sparse[0, 0, 2], not_a_point)


# ---------------------------------------------------------------------------------------------
# pre/post-processing and the predictor
# ---------------------------------------------------------------------------------------------
def test_preprocess_shapes_and_padding(rng):
    img = rng.integers(0, 256, (30, 48, 3), dtype=np.uint8)
    pv, original, reshaped = sam.preprocess(img, image_size=64)
    assert pv.shape == (1, 3, 64, 64) and pv.dtype == np.float32
    assert original == (30, 48) and reshaped == (40, 64)
    assert not pv[0, :, 40:, :].any()
    lo, hi = (0 - sam.IMAGE_MEAN) / sam.IMAGE_STD, (1 - sam.IMAGE_MEAN) / sam.IMAGE_STD
    # (x/255 - mean) / std in float32: three roundings on values of magnitude <= 2.7, < 5e-7
    assert np.all(pv[0, :, :40].min(axis=(1, 2)) >= lo - 1e-6)
    assert np.all(pv[0, :, :40].max(axis=(1, 2)) <= hi + 1e-6)
    with pytest.raises(ValueError, match="image must be"):
        sam.preprocess(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        sam.preprocess(np.zeros((4, 4, 3), np.float32))


def test_transform_coords():
    pts = sam.transform_coords([[48, 30], [0, 0]], (30, 48), 64)
    np.testing.assert_allclose(pts, [[64, 40], [0, 0]])
    box = sam.transform_coords([12, 3, 24, 15], (30, 48), 64)
    np.testing.assert_allclose(box, [16, 4, 32, 20])
    with pytest.raises(ValueError, match="end in 2"):
        sam.transform_coords([1, 2, 3], (30, 48), 64)


def test_thin_images_resize_to_at_least_one_pixel(model, rng):
    """A 1 x 3000 image: the shorter side scaled to 1024/3000 of a pixel rounds to 0 in
    SamImageProcessor's arithmetic (and PIL's resize then fails); it is kept at 1 pixel, and the
    prompt coordinates and the masks follow the same sizes."""
    img = rng.integers(0, 256, (1, 3000, 3), dtype=np.uint8)
    assert sam.resized_shape((1, 3000), 64) == (1, 64)
    assert sam.resized_shape((3000, 1), 64) == (64, 1)
    pv, original, reshaped = sam.preprocess(img, image_size=64)
    assert original == (1, 3000) and reshaped == (1, 64) and not pv[0, :, 1:].any()
    # x scales by 64/3000, y by 1/1 (the resized height over the original one)
    np.testing.assert_allclose(sam.transform_coords([[3000, 1]], (1, 3000), 64), [[64, 1]])
    pred = sam.SamPredictor(model)
    pred.set_image(img)
    masks, scores, low_res = pred.predict(points=[[1500, 0]])
    assert masks.shape == (3, 1, 3000) and np.all(np.isfinite(scores))


def _gradient16(h=12, w=20):
    v = np.linspace(0, 65535, h * w).round().astype(np.uint16).reshape(h, w)
    return v, np.repeat(np.round(v / 257.0).astype(np.uint8)[..., None], 3, axis=2)


def test_images_convert_like_clip(tmp_path):
    """SAM reads images with the same loader as CLIP: 16-bit pixels scaled by 1/257 (PIL's
    convert clips them at 255), transparency composited onto white (transformers'
    convert_to_rgb, which SamImageProcessor applies), uint16 arrays accepted."""
    from PIL import Image
    v, rgb8 = _gradient16()
    ref = sam.preprocess(rgb8, image_size=32)[0]
    f = tmp_path / "g16.png"
    Image.fromarray(v).save(f)
    for image in (f, Image.fromarray(v), v, np.dstack([v] * 3)):
        np.testing.assert_array_equal(sam.preprocess(image, image_size=32)[0], ref)
    white = sam.preprocess(np.full((12, 20, 3), 255, np.uint8), image_size=32)[0]
    clear = np.zeros((12, 20, 4), np.uint8)                      # black, fully transparent
    for image in (clear, Image.fromarray(clear, "RGBA"), Image.new("LA", (20, 12), (0, 0))):
        np.testing.assert_array_equal(sam.preprocess(image, image_size=32)[0], white)
    with pytest.raises(TypeError, match="mode F"):
        sam.preprocess(Image.new("F", (20, 12)))


def test_image_files_and_sizes_are_checked(tmp_path, monkeypatch):
    from PIL import Image
    f = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(f)
    for size in (0, -1, 2.5, 10**6):
        with pytest.raises(ValueError, match="image_size"):
            sam.preprocess(f, image_size=size)
    for kw in (dict(mean=(0.5,)), dict(std=(0.2, 0.0, 0.2)), dict(std=(float("nan"),) * 3)):
        with pytest.raises(ValueError, match="mean|std"):
            sam.preprocess(f, **kw)
    f.write_bytes(f.read_bytes()[:60])
    with pytest.raises(ValueError, match="x.png.*truncated or corrupt"):
        sam.preprocess(f)
    with pytest.raises(IsADirectoryError):
        sam.preprocess(tmp_path)
    with pytest.raises(FileNotFoundError):
        sam.preprocess(tmp_path / "missing.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"50x40 = 2,000 pixels.*limit of 1,000"):
        sam.preprocess(np.zeros((40, 50, 3), np.uint8))


def test_postprocess_masks_in_row_blocks_equals_one_pass(rng, monkeypatch):
    """Full-size masks are upscaled a block of rows at a time (a large image's masks would
    otherwise need several float32 copies at once); the result is the same arithmetic, so it is
    bit-identical to one interpolation of the whole."""
    import importlib

    from pyworkloads import ops
    # the module (sam.preprocess is the function of the same name)
    pre = importlib.import_module("pyworkloads.models.sam.preprocess")
    low = rng.standard_normal((3, 16, 16)).astype(np.float32)
    ref = ops.interpolate_bilinear(low, (64, 64))[..., :40, :64]
    ref = ops.interpolate_bilinear(np.ascontiguousarray(ref), (75, 120))
    monkeypatch.setattr(pre, "BLOCK_ELEMENTS", 1000)           # ~3 rows per block
    got = sam.postprocess_masks(low, (75, 120), (40, 64), 64, threshold=None)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(sam.postprocess_masks(low, (75, 120), (40, 64), 64), ref > 0)


def test_predictor_bounds_the_number_of_points(model):
    pred = sam.SamPredictor(model)
    pred.set_image(np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(ValueError, match="at most 1024 points"):
        pred.predict(points=np.zeros((1025, 2)))
    assert pred.predict(points=np.zeros((1024, 2)))[0].shape == (3, 20, 30)

def test_predictor_matches_model_call(model, rng):
    img = rng.integers(0, 256, (30, 48, 3), dtype=np.uint8)
    pred = sam.SamPredictor(model)
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict(points=[[1, 1]])
    pred.set_image(img)
    masks, scores, low = pred.predict(points=[[24, 15], [5, 5]], labels=[1, 0],
                                      box=[10, 5, 40, 25])
    assert masks.shape == (3, 30, 48) and masks.dtype == bool
    assert scores.shape == (3,) and low.shape == (3, 32, 32)
    pv, original, reshaped = sam.preprocess(img, 64)
    out = model(pixel_values=pv,
                input_points=sam.transform_coords([[[[24, 15], [5, 5]]]], original, 64),
                input_labels=np.array([[[1, 0]]]),
                input_boxes=sam.transform_coords([[[10, 5, 40, 25]]], original, 64))
    # the same float32 operations in the same order: equal to the bit
    np.testing.assert_array_equal(low, out.pred_masks[0, 0])
    np.testing.assert_array_equal(scores, out.iou_scores[0, 0])
    np.testing.assert_array_equal(
        masks, sam.postprocess_masks(out.pred_masks[0, 0], original, reshaped, 64))
    one, s1, _ = pred.predict(box=[10, 5, 40, 25], multimask_output=False)
    assert one.shape == (1, 30, 48) and s1.shape == (1,)
    logits, _, _ = pred.predict(points=[[24, 15]], return_logits=True)
    assert logits.dtype == np.float32
    with pytest.raises(ValueError, match="one label per point"):
        pred.predict(points=[[1, 2], [3, 4]], labels=[1])
    with pytest.raises(ValueError, match="4 coordinates"):
        pred.predict(box=[1, 2, 3])
    with pytest.raises(ValueError, match="input_labels values"):
        pred.predict(points=[[1, 2]], labels=[3])
    with pytest.raises(ValueError, match="at least one prompt"):
        pred.predict()


def test_predictor_takes_segment_anything_names(model, rng):
    """point_coords / point_labels (segment-anything's names), points / labels as aliases."""
    img = rng.integers(0, 256, (30, 48, 3), dtype=np.uint8)
    pred = sam.SamPredictor(model)
    pred.set_image(img)
    pts, labels, box = [[24, 15], [5, 5]], [1, 0], [10, 5, 40, 25]
    new = pred.predict(point_coords=pts, point_labels=labels, box=box, return_logits=True)
    old = pred.predict(points=pts, labels=labels, box=box, return_logits=True)
    positional = pred.predict(pts, labels, box, None, True, True)
    for a, b, c in zip(new, old, positional):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    other = pred.predict(point_coords=[[40, 3]], box=box, return_logits=True)
    assert np.abs(other[0] - new[0]).max() > 0          # the points are used
    with pytest.raises(ValueError, match="give point_coords or its older name points"):
        pred.predict(point_coords=pts, points=pts)
    with pytest.raises(ValueError, match="give point_labels or its older name labels"):
        pred.predict(point_coords=pts, point_labels=labels, labels=labels)
    with pytest.raises(ValueError, match="point_labels were given without point_coords"):
        pred.predict(box=box, labels=labels)
    with pytest.raises(TypeError, match="unexpected keyword"):
        pred.predict(point_coord=pts)


def test_predictor_predict_batch_is_one_prompt_per_row(model, rng):
    img = rng.integers(0, 256, (30, 48, 3), dtype=np.uint8)
    pred = sam.SamPredictor(model)
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict_batch([[[1, 1]]])
    pred.set_image(img)
    pts = np.array([[[24, 15], [5, 5]], [[40, 20], [3, 28]], [[1, 1], [47, 29]]], np.float64)
    labels = np.array([[1, 0], [1, 1], [0, 1]])
    masks, scores, low = pred.predict_batch(pts, labels)
    assert masks.shape == (3, 3, 30, 48) and masks.dtype == bool
    assert scores.shape == (3, 3) and low.shape == (3, 3, 32, 32)
    for i in range(3):
        m, s, lo = pred.predict(point_coords=pts[i], point_labels=labels[i])
        # the same prompt in a batch of 3: matrix products over another batch size may sum in
        # another order (float32 roundings of values below ~10)
        np.testing.assert_allclose(lo, low[i], atol=1e-5)
        np.testing.assert_allclose(s, scores[i], atol=1e-5)
        assert (m != masks[i]).mean() < 1e-3
    logits, _, _ = pred.predict_batch(pts[:, :1], return_logits=True)
    assert logits.dtype == np.float32 and logits.shape == (3, 3, 30, 48)
    with pytest.raises(ValueError, match=r"point_coords must be \[prompts, points, 2\]"):
        pred.predict_batch(pts[0])
    with pytest.raises(ValueError, match="one label per point"):
        pred.predict_batch(pts, labels[:, :1])
    with pytest.raises(ValueError, match=r"for one prompt"):
        pred.predict(point_coords=pts)


# ---------------------------------------------------------------------------------------------
# profiling scopes, backends, CLI
# ---------------------------------------------------------------------------------------------
def test_profile_scopes_use_hf_module_paths(model, expected):
    with pw.profile() as prof:
        model(pixel_values=expected["pixel_values"], **_prompts(expected, "point_box"))
        model(image_embeddings=expected["image_embeddings"],
              input_masks=np.zeros((1, 1, 32, 32), np.float32))
    names = {r.name for r in prof.records}
    assert "" not in names, "every kernel call runs inside a module scope"
    for want in ("vision_encoder.patch_embed", "vision_encoder.layers.0.attn",
                 "vision_encoder.layers.1.attn", "vision_encoder.layers.2.mlp",
                 "vision_encoder.layers.0.layer_norm1", "vision_encoder.layers.0.layer_norm2",
                 "vision_encoder.neck", "vision_encoder.neck.layer_norm1",
                 "vision_encoder.neck.layer_norm2", "prompt_encoder",
                 "mask_decoder.transformer.layers.0.self_attn",
                 "mask_decoder.transformer.layers.0.cross_attn_token_to_image",
                 "mask_decoder.transformer.layers.0.mlp",
                 "mask_decoder.transformer.layers.1.cross_attn_image_to_token",
                 "mask_decoder.transformer.layers.1.layer_norm4",
                 "mask_decoder.transformer.final_attn_token_to_image",
                 "mask_decoder.transformer.layer_norm_final_attn", "mask_decoder.upscale_conv1",
                 "mask_decoder.upscale_layer_norm", "mask_decoder.upscale_conv2",
                 "mask_decoder.activation", "shared_image_embedding",
                 "mask_decoder.output_hypernetworks_mlps.3", "mask_decoder.iou_prediction_head",
                 "prompt_encoder.mask_embed", "prompt_encoder.mask_embed.layer_norm1",
                 "mask_decoder"):
        assert want in names, want
    # no module outside the model's own paths, and no path given twice ("a.b.a.b")
    roots = ("vision_encoder", "shared_image_embedding", "prompt_encoder", "mask_decoder")
    assert all(n.split(".")[0] in roots for n in names), sorted(names)
    assert not any(".vision_encoder" in n or ".mask_decoder" in n for n in names), sorted(names)
    attn = [r for r in prof.records
            if r.op == "attention" and r.name == "vision_encoder.layers.0.attn"]
    # windowed block: 3x3 windows of a grid padded 8 -> 9, i.e. 9 windows of 9 tokens each
    assert attn and attn[0].shapes[0] == (9, 2, 9, 8)
    glob = [r for r in prof.records
            if r.op == "attention" and r.name == "vision_encoder.layers.1.attn"]
    assert glob[0].shapes[0] == (1, 2, 64, 8)


@pytest.mark.skipif("cpp" not in pw.kernels.available(),
                    reason="the cpp backend is not built here: "
                    + str(pw.kernels.unavailable_reason("cpp")))
def test_cpp_backend_matches_numpy(model, expected):
    ref = model(pixel_values=expected["pixel_values"], **_prompts(expected, "point_box"))
    with pw.use_backend("cpp"):
        got = model(pixel_values=expected["pixel_values"], **_prompts(expected, "point_box"))
    assert np.abs(got.image_embeddings - ref.image_embeddings).max() <= TOL
    assert np.abs(got.pred_masks - ref.pred_masks).max() <= TOL
    assert np.abs(got.iou_scores - ref.iou_scores).max() <= TOL


def test_demo_runs():
    line = sam.demo()
    assert "sam-tiny" in line and "masks" in line


def test_run_cli_writes_overlay(tmp_path, rng, capsys):
    from PIL import Image

    img = rng.integers(0, 256, (30, 48, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    parser = argparse.ArgumentParser()
    sam.add_run_arguments(parser)
    out = tmp_path / "mask.png"
    args = parser.parse_args(["--model", str(FIX), "--image", str(tmp_path / "x.png"),
                              "--point", "24,15", "--box", "10,5,40,25", "--out", str(out)])
    assert sam.run_cli(args) == 0
    assert "best #" in capsys.readouterr().out
    overlay = np.asarray(Image.open(out))
    assert overlay.shape == img.shape
    # pixels outside the best mask keep their colour, pixels inside are blended with blue
    pred = sam.SamPredictor(sam.from_pretrained(FIX))
    pred.set_image(img)
    masks, scores, _ = pred.predict(points=[[24, 15]], box=[10, 5, 40, 25])
    best = masks[int(np.argmax(scores))]
    np.testing.assert_array_equal(overlay[~best], img[~best])
    if best.any():
        assert np.any(overlay[best] != img[best])
    bad = parser.parse_args(["--model", str(FIX), "--image", str(tmp_path / "x.png"),
                             "--point", "24"])
    with pytest.raises(ValueError, match="--point must be 2"):
        sam.run_cli(bad)


def test_pyworkloads_command_runs_sam(tmp_path, rng, capsys):
    """`pyworkloads run sam ...` and `pyworkloads demo --models sam` through the real entry
    point."""
    from PIL import Image

    from pyworkloads import cli

    Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(tmp_path / "x.jpg")
    out = tmp_path / "m.png"
    image = ["--image", str(tmp_path / "x.jpg")]
    argv = ["run", "sam", "--preset", "sam-tiny", *image, "--point", "5,6", "--point", "20,10",
            "--label", "1", "--label", "0", "--single-mask", "--out", str(out)]
    assert cli.main(argv) == 0
    assert "1 mask(s)" in capsys.readouterr().out and Image.open(out).size == (28, 20)
    assert cli.main(["run", "sam", "--preset", "sam-tiny", *image, "--out", str(out)]) == 2
    assert "at least one --point" in capsys.readouterr().err
    assert cli.main(["demo", "--models", "sam", "--backends", "numpy"]) == 0
    assert "sam-tiny" in capsys.readouterr().out


def test_config_dataclasses_are_plain():
    """Config fields keep HF's names (the cost model reads them)."""
    names = {f.name for f in dataclasses.fields(sam.VisionConfig)}
    assert {"hidden_size", "num_hidden_layers", "window_size", "global_attn_indexes",
            "mlp_dim"} <= names


def test_channel_layer_norm(rng):
    """SAM's channels-first LayerNorm (neck, mask embedding, upscaling) against float64."""
    from pyworkloads.models.sam.image_encoder import channel_layer_norm
    x = rng.standard_normal((2, 6, 3, 4)).astype(np.float32)
    w, b = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    xd = x.astype(np.float64)
    mu, var = xd.mean(1, keepdims=True), xd.var(1, keepdims=True)
    ref = (xd - mu) / np.sqrt(var + 1e-6) * w[:, None, None] + b[:, None, None]
    # LayerNorm over C = 6 values ~1: the mean is off by <= γ_6·max|x| ≈ 1e-6, divided by
    # σ >= 0.4 and times |w| <= 2: <= 5e-6, plus ≈ 10u·|ref| ≈ 2e-6 (|ref| <= 3.4) from the
    # variance, the sqrt and the affine terms
    got = channel_layer_norm(x, {"n.weight": w, "n.bias": b}, "n", 1e-6)
    np.testing.assert_allclose(got, ref, atol=1e-5)
