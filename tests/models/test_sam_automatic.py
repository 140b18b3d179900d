"""Automatic mask generation (``sam.generate_masks``, ``sam.SamAutomaticMaskGenerator``).

References: transformers' ``pipeline("mask-generation")`` (the same algorithm without crops;
its final NMS needs torchvision), its stages and helpers for the crop layers,
torchvision's NMS, pycocotools' box IoU and run-length encoding, and direct definitions
(stability score, boxes, connected regions by breadth-first search).

The model is a tiny random SAM whose weights are drawn so that masks survive the filters
(see :func:`mask_friendly_weights`), on a picture of coloured rectangles."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require_transformers

from pyworkloads import io
from pyworkloads.models import sam
from pyworkloads.models.sam import automatic as amg

CONFIG = {
    "model_type": "sam",
    "vision_config": dict(hidden_size=32, output_channels=32, num_hidden_layers=2,
                          num_attention_heads=4, image_size=64, patch_size=8, window_size=3,
                          global_attn_indexes=[1], num_pos_feats=16, mlp_dim=64),
    "prompt_encoder_config": dict(hidden_size=32, image_size=64, patch_size=8,
                                  mask_input_channels=8),
    "mask_decoder_config": dict(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                                iou_head_hidden_dim=32),
}
S = 64
# Options that keep a handful of masks out of 8 x 8 points x 3 candidates on scene(): the
# thresholds drop about half the candidates and NMS most of the rest.
OPTIONS = dict(points_per_side=8, points_per_batch=24, pred_iou_thresh=0.5,
               stability_score_thresh=0.8, box_nms_thresh=0.7)
# |predicted IoU - transformers'|: float32 forward passes that differ in the order of their sums
# (see test_sam_parity.py)
TOL = 1e-4


def mask_friendly_weights(config: sam.Config, seed: int) -> dict[str, np.ndarray]:
    """Random weights drawn like make_sam_fixture.py's random_hf_sam (N(0, 0.2), the Fourier
    matrix N(0, 16), layer norms near 1), then changed so that automatic masks are blobs that
    pass the filters:

    - both upscaling transposed convolutions use one kernel value at all 2 x 2 taps, so each
      embedding cell becomes a uniform block (random taps paint a 4 x 4 checkerboard over every
      mask, which no box NMS can tell apart);
    - the hypernetwork outputs are x40, so mask logits reach past the stability score's
      cut-offs at +-1;
    - the IoU head's output bias is +0.6, so predicted IoUs straddle the thresholds."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in sam.weight_shapes(config).items():
        x = rng.standard_normal(shape, dtype=np.float32)
        if name == sam.GAUSSIAN:
            x = 4 * x
        elif "layer_norm" in name and name.endswith("weight"):
            x = 1 + 0.1 * x
        else:
            x = 0.2 * x
        if name.startswith("mask_decoder.upscale_conv") and name.endswith("weight"):
            x = np.broadcast_to(x[..., :1, :1], shape)
        if name.startswith("mask_decoder.output_hypernetworks_mlps.") and ".proj_out." in name:
            x = 40 * x
        if name == "mask_decoder.iou_prediction_head.proj_out.bias":
            x = x + 0.6
        weights[name] = np.ascontiguousarray(x, dtype=np.float32)
    return weights


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A checkpoint folder both transformers' SamModel and sam.from_pretrained read."""
    path = tmp_path_factory.mktemp("sam-amg")
    config = sam.Config.from_hf(CONFIG)
    io.save_safetensors(path / "model.safetensors", mask_friendly_weights(config, seed=4),
                        metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config.to_hf()))
    return path


@pytest.fixture(scope="module")
def model(model_dir):
    return sam.from_pretrained(model_dir)


def scene(height: int = 48, width: int = 80) -> np.ndarray:
    """Four coloured rectangles on a dark background -> uint8 [height, width, 3]."""
    img = np.full((48, 80, 3), 40, np.uint8)
    img[6:20, 8:30] = [230, 40, 40]
    img[26:44, 12:26] = [40, 220, 60]
    img[10:38, 44:70] = [50, 60, 230]
    img[30:46, 60:78] = [240, 240, 60]
    rows = np.arange(height) * 48 // height
    cols = np.arange(width) * 80 // width
    return img[rows][:, cols]                                     # nearest-neighbour resize


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------
def working_torchvision():
    """torch and torchvision.ops, or skip: torchvision is the oracle for box NMS and
    transformers' mask-generation pipeline calls it."""
    torch, _ = require_transformers()
    try:
        import torchvision.ops
        torchvision.ops.nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)     # the compiled op
    except Exception as exc:                 # absent, or a build for another torch
        pytest.skip(f"needs a working torchvision (for torch {torch.__version__}): "
                    f"{type(exc).__name__}: {exc}")
    return torch, torchvision.ops


def reference_nms(boxes, scores, iou_threshold) -> list[int]:
    """Greedy NMS by its definition over pycocotools' box IoU: from the best score down, keep a
    box unless its IoU with a kept box is > iou_threshold (equal scores: earlier first)."""
    mask_utils = pytest.importorskip("pycocotools.mask", reason="needs pycocotools")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    iou = np.asarray(mask_utils.iou(xywh, xywh, [0] * len(xywh))) if len(xywh) else None
    keep = []
    for i in sorted(range(len(boxes)), key=lambda i: -scores[i]):
        if all(iou[i, k] <= iou_threshold for k in keep):
            keep.append(i)
    return keep


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected regions of the True pixels, by breadth-first search -> each region's
    (row, col) indices, regions in the order their first pixel comes in a raster scan."""
    H, W = mask.shape
    seen = np.zeros(mask.shape, bool)
    regions = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        seen[y, x] = True
        queue, region = [(y, x)], []
        while queue:
            cy, cx = queue.pop()
            region.append((cy, cx))
            for ny in range(max(cy - 1, 0), min(cy + 2, H)):
                for nx in range(max(cx - 1, 0), min(cx + 2, W)):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        regions.append(tuple(np.array(region).T))
    return regions


def reference_clean(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    """segment-anything's clean-up by its definition: fill background regions smaller than
    min_area, then drop mask regions smaller than min_area (all small: keep the largest)."""
    out = mask.copy()
    holes = [r for r in components(~out) if len(r[0]) < min_area]
    for r in holes:
        out[r] = True
    islands = components(out)
    small = [r for r in islands if len(r[0]) < min_area]
    if len(small) == len(islands) and small:
        largest = max(islands, key=lambda r: len(r[0]))      # the first of the largest
        out[:] = False
        out[largest] = True
    else:
        for r in small:
            out[r] = False
    return out, bool(holes or small)


def box_of(mask: np.ndarray) -> list[int]:
    """XYXY of a mask's pixels, right/bottom included; zeros when empty."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())] if len(xs) else [0] * 4


# ---------------------------------------------------------------------------------------------
# against transformers' mask-generation pipeline
# ---------------------------------------------------------------------------------------------
def _pipeline(model_dir):
    torch, transformers = require_transformers()
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    hf = transformers.SamModel.from_pretrained(model_dir).eval()
    proc = SamImageProcessorPil(size={"longest_edge": S}, pad_size={"height": S, "width": S})
    return torch, transformers.pipeline("mask-generation", model=hf, image_processor=proc)


def _hf_candidates(model_dir, img, points_per_side, points_per_batch, pred_iou_thresh,
                   stability_score_thresh, crop_n_layers=0):
    """The pipeline's stages before its NMS (preprocess: crops, point grid, embeddings;
    _forward: decode, upscale, filter by IoU and stability, boxes, crop edges, uncrop)
    -> {crop box XYXY: (masks [N, H, W] bool, scores [N], boxes [N, 4] in the image)}."""
    from PIL import Image

    torch, gen = _pipeline(model_dir)
    from transformers.models.sam.image_processing_pil_sam import _rle_to_mask

    per_crop = {}
    with torch.no_grad():
        for inputs in gen.preprocess(Image.fromarray(img), points_per_batch=points_per_batch,
                                     points_per_crop=points_per_side,
                                     crops_n_layers=crop_n_layers):
            crop = tuple(int(v) for v in inputs["input_boxes"][0])
            out = gen._forward(inputs, pred_iou_thresh=pred_iou_thresh,
                               stability_score_thresh=stability_score_thresh)
            per_crop.setdefault(crop, []).append(out)
    result = {}
    for crop, outs in per_crop.items():
        masks = [_rle_to_mask(rle) for out in outs for rle in out["masks"]]
        result[crop] = (np.array(masks, bool).reshape(-1, *img.shape[:2]),
                        torch.cat([out["iou_scores"] for out in outs]).numpy(),
                        torch.cat([out["boxes"] for out in outs]).numpy())
    return result


def assert_same_masks(records, masks, scores, boxes_xyxy):
    assert len(records) == len(masks)
    for rec, mask, score, box in zip(records, masks, scores, boxes_xyxy):
        np.testing.assert_array_equal(rec["segmentation"], mask)
        x0, y0, x1, y1 = (int(v) for v in box)
        assert rec["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert abs(rec["predicted_iou"] - float(score)) <= TOL


def test_matches_transformers_mask_generation_pipeline(model, model_dir):
    """Without crops the two agree end to end (transformers' NMS is torchvision's)."""
    from PIL import Image

    working_torchvision()
    torch, gen = _pipeline(model_dir)
    img = scene()
    want = gen(Image.fromarray(img), points_per_crop=OPTIONS["points_per_side"],
               points_per_batch=OPTIONS["points_per_batch"],
               pred_iou_thresh=OPTIONS["pred_iou_thresh"],
               stability_score_thresh=OPTIONS["stability_score_thresh"],
               crops_nms_thresh=OPTIONS["box_nms_thresh"], output_bboxes_mask=True)
    got = sam.generate_masks(model, img, **OPTIONS)
    assert 1 < len(got) < 3 * 8 * 8
    assert_same_masks(got, want["masks"], want["scores"].numpy(),
                      want["bounding_boxes"].numpy())


def test_filters_and_nms_match_transformers_stages(model, model_dir):
    """The pipeline's stages up to its NMS (no torchvision needed), then NMS by definition."""
    img = scene()
    (crop, (masks, scores, boxes)), = _hf_candidates(
        model_dir, img, OPTIONS["points_per_side"], OPTIONS["points_per_batch"],
        OPTIONS["pred_iou_thresh"], OPTIONS["stability_score_thresh"]).items()
    assert crop == (0, 0, 80, 48)
    # the filters alone (NMS at IoU 1 drops nothing): the same candidates, best first
    assert 10 < len(scores) < 3 * 8 * 8
    order = np.argsort(-scores, kind="stable")
    every = sam.generate_masks(model, img, **dict(OPTIONS, box_nms_thresh=1.0))
    assert_same_masks(every, masks[order], scores[order], boxes[order])
    # then box NMS
    keep = reference_nms(boxes, scores, OPTIONS["box_nms_thresh"])
    assert 1 < len(keep) < len(scores)
    assert_same_masks(sam.generate_masks(model, img, **OPTIONS), masks[keep], scores[keep],
                      boxes[keep])


def test_crop_layers_follow_segment_anything(model, model_dir):
    """crop_n_layers=1: per crop, transformers' stages give the filtered, uncropped candidates;
    segment-anything then runs NMS within each crop (by predicted IoU) and between crops
    (by 1 / crop area, smaller crops first) - here by definition."""
    img = scene(96, 160)
    opts = dict(OPTIONS, pred_iou_thresh=0.4, stability_score_thresh=0.7, points_per_batch=64)
    per_crop = _hf_candidates(model_dir, img, opts["points_per_side"], opts["points_per_batch"],
                              opts["pred_iou_thresh"], opts["stability_score_thresh"],
                              crop_n_layers=1)
    crop_boxes, _ = amg.generate_crop_boxes((96, 160), 1, 512 / 1500)
    assert list(per_crop) == [tuple(b) for b in crop_boxes]
    masks, scores, boxes, crops = [], [], [], []
    for crop, (m, s, b) in per_crop.items():
        keep = reference_nms(b, s, opts["box_nms_thresh"])
        masks += list(m[keep])
        scores += list(s[keep])
        boxes += list(b[keep])
        crops += [crop] * len(keep)
    crops = np.array(crops, np.float64)
    area = (crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1])
    keep = reference_nms(boxes, 1 / area, 0.5)
    assert 1 < len(keep) < len(boxes)
    got = sam.generate_masks(model, img, crop_n_layers=1, crop_nms_thresh=0.5, **opts)
    assert_same_masks(got, [masks[i] for i in keep], [scores[i] for i in keep],
                      [boxes[i] for i in keep])
    assert [r["crop_box"] for r in got] == [
        [int(c[0]), int(c[1]), int(c[2] - c[0]), int(c[3] - c[1])] for c in crops[keep]]
    assert any(r["crop_box"] != [0, 0, 160, 96] for r in got)     # masks that only crops found


def test_crop_boxes_and_point_grids_match_transformers():
    pytest.importorskip("transformers", reason="transformers' SAM helpers are the reference")
    from transformers.models.sam import image_processing_pil_sam as hf

    for size in [(48, 80), (96, 160), (1500, 2250), (7, 300), (2, 2)]:
        for layers in range(4):
            for ratio in (512 / 1500, 0.0, 0.5):
                assert amg.generate_crop_boxes(size, layers, ratio) == \
                    hf._generate_per_layer_crops(layers, ratio, size)
    for n in (1, 3, 8, 32):
        np.testing.assert_array_equal(amg.build_point_grid(n), hf._build_point_grid(n))
    # the points each crop prompts with, in model-input pixels
    img = scene(96, 160).transpose(2, 0, 1)                                  # [3, H, W]
    boxes, grids, _, _ = hf._generate_crop_boxes(img, S, 1, 512 / 1500, 8, 1)
    grid = amg.build_all_layer_point_grids(8, 1, 1)
    for (x0, y0, x1, y1), layer, want in zip(boxes.astype(int), [0, 1, 1, 1, 1],
                                             grids[0].transpose(1, 0, 2)):  # [crops, n², 2]
        got = sam.transform_coords(grid[layer] * [x1 - x0, y1 - y0], (y1 - y0, x1 - x0), S)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # transformers cannot stack grids of different sizes: layer i has int(8 / 2^i) per side
    layers = amg.build_all_layer_point_grids(8, 3, 2)
    for i, want in enumerate([8, 4, 2, 1]):
        np.testing.assert_array_equal(layers[i], amg.build_point_grid(want))


# ---------------------------------------------------------------------------------------------
# the pieces, by definition
# ---------------------------------------------------------------------------------------------
def test_nms_matches_torchvision(rng):
    torch, ops = working_torchvision()
    corners = rng.integers(0, 60, (200, 2))
    boxes = np.concatenate([corners, corners + rng.integers(1, 30, (200, 2))], 1)   # XYXY
    scores = rng.random(200).astype(np.float32)
    for thresh in (0.0, 0.3, 0.7, 1.0):
        want = ops.batched_nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores),
                               torch.zeros(200), thresh).numpy()
        np.testing.assert_array_equal(amg.nms(boxes, scores, thresh), want)


def test_nms_by_definition(rng):
    corners = rng.integers(0, 60, (300, 2))
    boxes = np.concatenate([corners, corners + rng.integers(1, 30, (300, 2))], 1)
    scores = rng.random(300)
    for thresh in (0.0, 0.3, 0.7, 1.0):
        keep = amg.nms(boxes, scores, thresh)
        assert keep.tolist() == reference_nms(boxes, scores, thresh)
    assert 1 < len(amg.nms(boxes, scores, 0.3)) < 300
    assert amg.nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    # equal scores: the earlier box wins
    assert amg.nms([[0, 0, 10, 10], [0, 0, 10, 10]], [1.0, 1.0], 0.5).tolist() == [0]


def test_stability_score_is_iou_of_two_cutoffs(rng):
    logits = (4 * rng.standard_normal((6, 20, 30))).astype(np.float32)
    for offset in (0.0, 1.0, 2.5):
        high, low = logits > offset, logits > -offset
        want = (high & low).sum((1, 2)) / (high | low).sum((1, 2))
        got = amg.calculate_stability_score(logits, 0.0, offset)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-7)
    one = np.array([[[2.0, 0.5], [-0.5, -2.0]]], np.float32)
    assert amg.calculate_stability_score(one, 0.0, 1.0)[0] == np.float32(1 / 3)
    assert np.isnan(amg.calculate_stability_score(-one - 5, 0.0, 1.0)[0])   # nothing above


def test_mask_boxes_and_edges(rng):
    masks = rng.random((5, 12, 17)) > 0.97
    masks[3] = False
    masks[4] = False
    masks[4, 7, 2] = True
    got = amg.batched_mask_to_box(masks)
    assert got.tolist() == [box_of(m) for m in masks]
    assert got[3].tolist() == [0, 0, 0, 0] and got[4].tolist() == [2, 7, 2, 7]
    # a crop [40, 0, 100, 50] of a 100 x 80 image: its left edge (x = 40) and bottom (y = 50)
    # lie inside the image, its top and right edges are the image's; boxes in crop pixels
    crop, image = [40, 0, 100, 50], [0, 0, 100, 80]
    boxes = np.array([[0, 0, 59, 10],      # on the crop's left edge
                      [25, 5, 59, 20],     # near the top and right: image edges
                      [25, 20, 40, 31],    # bottom 19 px from the crop's bottom edge
                      [25, 10, 40, 29]])   # 21 px from it
    assert amg.is_box_near_crop_edge(boxes, crop, image).tolist() == [True, False, True, False]


def test_remove_small_regions_by_hand():
    mask = np.zeros((8, 8), bool)
    mask[1:7, 1:6] = True              # a 6 x 5 block ...
    mask[3, 3] = False                 # ... with a one-pixel hole
    mask[7, 6] = True                  # touches the block's corner (6, 5) diagonally
    mask[0, 7] = True                  # a one-pixel island
    filled = mask.copy()
    filled[3, 3] = True
    out, changed = amg.remove_small_regions(mask, 3, "holes")
    assert changed
    np.testing.assert_array_equal(out, filled)
    out, changed = amg.remove_small_regions(filled, 3, "islands")
    want = filled.copy()
    want[0, 7] = False                 # the island goes; the diagonal pixel stays (8-connected)
    assert changed
    np.testing.assert_array_equal(out, want)
    out, changed = amg.remove_small_regions(want, 3, "islands")
    assert not changed and out is want
    # every island small: the largest stays
    dots = np.zeros((5, 5), bool)
    dots[0, 0] = dots[4, 3] = dots[4, 4] = True
    out, _ = amg.remove_small_regions(dots, 10, "islands")
    assert np.argwhere(out).tolist() == [[4, 3], [4, 4]]
    with pytest.raises(ValueError, match="mode must be one of"):
        amg.remove_small_regions(dots, 10, "both")


def test_remove_small_regions_by_search(rng):
    for _ in range(6):
        mask = rng.random((24, 31)) > 0.55
        for area in (2, 5, 12):
            want, changed = reference_clean(mask, area)
            out, a = amg.remove_small_regions(mask, area, "holes")
            out, b = amg.remove_small_regions(out, area, "islands")
            np.testing.assert_array_equal(out, want)
            assert (a or b) == changed


def test_min_mask_region_area(model):
    """Clean-up after the masks are found: every mask cleaned (by search), boxes recomputed,
    NMS at max(box_nms_thresh, crop_nms_thresh) with untouched masks ranked first."""
    img = scene()
    opts = dict(OPTIONS, pred_iou_thresh=0.4, stability_score_thresh=0.7, box_nms_thresh=0.9)
    raw = sam.generate_masks(model, img, **opts)
    cleaned = [reference_clean(r["segmentation"], 100) for r in raw]
    assert 0 < sum(changed for _, changed in cleaned) < len(raw)
    keep = reference_nms([box_of(m) for m, _ in cleaned],
                         [float(not changed) for _, changed in cleaned], 0.9)
    got = sam.generate_masks(model, img, min_mask_region_area=100, **opts)
    assert len(got) == len(keep) < len(raw)
    for rec, i in zip(got, keep):
        np.testing.assert_array_equal(rec["segmentation"], cleaned[i][0])
        x0, y0, x1, y1 = box_of(cleaned[i][0])
        assert rec["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert rec["area"] == int(cleaned[i][0].sum())
        assert rec["predicted_iou"] == raw[i]["predicted_iou"]


def test_coco_rle_is_pycocotools_encoding(rng):
    mask_utils = pytest.importorskip("pycocotools.mask", reason="COCO RLE needs pycocotools")
    for shape in [(1, 1), (5, 7), (48, 80)]:
        for density in (0.0, 0.3, 1.0):
            mask = rng.random(shape) < density
            rle = sam.coco_rle(mask)
            want = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert rle == {"size": list(shape), "counts": want["counts"].decode()}
            back = dict(rle, counts=rle["counts"].encode())
            np.testing.assert_array_equal(mask_utils.decode(back), mask)
            assert mask_utils.area(back) == mask.sum()
            json.dumps(rle)
    with pytest.raises(ValueError, match="2-D array of 0/1"):
        sam.coco_rle(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="2-D array of 0/1"):
        sam.coco_rle(np.full((2, 2), 0.5))


# ---------------------------------------------------------------------------------------------
# the generator: records, batching, progress, errors
# ---------------------------------------------------------------------------------------------
def test_records_follow_segment_anything(model):
    img = scene()
    records = sam.generate_masks(model, img, **OPTIONS)
    grid = amg.build_point_grid(8) * [80, 48]
    assert len(records) > 1
    for rec in records:
        assert set(rec) == {"segmentation", "area", "bbox", "predicted_iou", "point_coords",
                            "stability_score", "crop_box"}
        mask = rec["segmentation"]
        assert mask.dtype == bool and mask.shape == (48, 80)
        assert rec["area"] == int(mask.sum()) and isinstance(rec["area"], int)
        x0, y0, x1, y1 = box_of(mask)
        assert rec["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert all(isinstance(v, int) for v in rec["bbox"] + rec["crop_box"])
        assert rec["crop_box"] == [0, 0, 80, 48]
        assert rec["predicted_iou"] > OPTIONS["pred_iou_thresh"]
        assert rec["stability_score"] >= OPTIONS["stability_score_thresh"]
        assert np.any(np.all(grid == rec["point_coords"][0], axis=1))     # a grid point
        # the record is the predictor's answer to its point
    pred = sam.SamPredictor(model)
    pred.set_image(img)
    rec = records[0]
    masks, scores, _ = pred.predict(point_coords=rec["point_coords"])
    j = int(np.argmin(np.abs(scores - rec["predicted_iou"])))
    np.testing.assert_array_equal(masks[j], rec["segmentation"])
    scores = [r["predicted_iou"] for r in records]
    assert scores == sorted(scores, reverse=True)
    # the class, and COCO RLE output
    gen = sam.SamAutomaticMaskGenerator(model, output_mode="coco_rle", **OPTIONS)
    coded = gen.generate(img)
    mask_utils = pytest.importorskip("pycocotools.mask", reason="COCO RLE needs pycocotools")
    for rec, want in zip(coded, records, strict=True):
        rle = dict(rec["segmentation"], counts=rec["segmentation"]["counts"].encode())
        np.testing.assert_array_equal(mask_utils.decode(rle), want["segmentation"])
        assert {k: v for k, v in rec.items() if k != "segmentation"} == \
            {k: v for k, v in want.items() if k != "segmentation"}


def test_image_encoded_once_and_batches_do_not_matter(model, monkeypatch):
    img = scene()
    calls = []
    encode = model.get_image_embeddings
    monkeypatch.setattr(model, "get_image_embeddings",
                        lambda pv: calls.append(pv.shape) or encode(pv))
    one = sam.generate_masks(model, img, **dict(OPTIONS, points_per_batch=64))
    many = sam.generate_masks(model, img, **dict(OPTIONS, points_per_batch=5))   # 13 batches
    assert len(calls) == 2
    assert len(one) == len(many) > 1
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        # products over another batch size may sum in another order: float32 roundings
        assert abs(a["predicted_iou"] - b["predicted_iou"]) <= 1e-5
        assert {k: v for k, v in a.items() if k not in ("segmentation", "predicted_iou")} == \
            {k: v for k, v in b.items() if k not in ("segmentation", "predicted_iou")}
    calls.clear()
    sam.generate_masks(model, scene(96, 160), crop_n_layers=1, **OPTIONS)
    assert len(calls) == 5                       # the image and its 2 x 2 crops, once each


def test_progress_bar_counts_point_batches(model, capsys):
    sam.generate_masks(model, scene(), progress=True, **dict(OPTIONS, points_per_batch=16))
    err = capsys.readouterr().err
    assert "SAM masks" in err and "4/4" in err
    sam.generate_masks(model, scene(), **OPTIONS)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("kwargs, message", [
    (dict(points_per_side=0), "points_per_side must be an integer >= 1"),
    (dict(points_per_side=-3), "points_per_side must be an integer >= 1"),
    (dict(points_per_side=2.5), "points_per_side must be an integer"),
    (dict(points_per_side=True), "points_per_side must be an integer"),
    (dict(points_per_side=5000), "points_per_side must be an integer <= 1024"),
    (dict(points_per_batch=0), "points_per_batch must be an integer >= 1"),
    (dict(pred_iou_thresh=float("nan")), "pred_iou_thresh must be a finite number"),
    (dict(pred_iou_thresh=1.5), "pred_iou_thresh must be <= 1"),
    (dict(stability_score_thresh=-0.1), "stability_score_thresh must be >= 0"),
    (dict(stability_score_thresh=float("inf")), "stability_score_thresh must be a finite"),
    (dict(stability_score_offset=-1.0), "stability_score_offset must be >= 0"),
    (dict(box_nms_thresh=2.0), "box_nms_thresh must be <= 1"),
    (dict(crop_nms_thresh=float("nan")), "crop_nms_thresh must be a finite number"),
    (dict(crop_overlap_ratio=1.5), "crop_overlap_ratio must be <= 1"),
    (dict(crop_n_layers=-1), "crop_n_layers must be an integer >= 0"),
    (dict(crop_n_points_downscale_factor=0), "crop_n_points_downscale_factor must be an"),
    (dict(points_per_side=4, crop_n_layers=3, crop_n_points_downscale_factor=2),
     "crop layer 3 would have no points"),
    (dict(min_mask_region_area=-1), "min_mask_region_area must be an integer >= 0"),
    (dict(min_mask_region_area=2.5), "min_mask_region_area must be an integer"),
    (dict(progress="yes"), "progress must be true or false"),
])
def test_bad_options_raise(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sam.generate_masks(model, scene(), **kwargs)


def test_bad_model_image_and_mode_raise(model):
    with pytest.raises(TypeError, match="model must be a pyworkloads SAM model"):
        sam.generate_masks("sam.safetensors", scene())
    with pytest.raises(ValueError, match="output_mode must be one of"):
        sam.SamAutomaticMaskGenerator(model, output_mode="uncompressed_rle")
    with pytest.raises(ValueError, match="image is empty: 0x0"):
        sam.generate_masks(model, np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ValueError, match="H×W or H×W×C array"):
        sam.generate_masks(model, np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="H×W or H×W×C array"):
        sam.generate_masks(model, np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        sam.generate_masks(model, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(TypeError, match="generate_masks.. takes 2 positional"):
        sam.generate_masks(model, scene(), 8)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def test_cli_everything_writes_overlay_and_coco_json(model, model_dir, tmp_path, capsys):
    from PIL import Image

    from pyworkloads import cli

    mask_utils = pytest.importorskip("pycocotools.mask", reason="--json needs pycocotools")
    img = scene()
    Image.fromarray(img).save(tmp_path / "scene.png")
    out, js = tmp_path / "overlay.png", tmp_path / "masks.json"
    argv = ["run", "sam", "--model", str(model_dir), "--everything",
            "--image", str(tmp_path / "scene.png"), "--out", str(out), "--json", str(js),
            "--points-per-side", "8", "--points-per-batch", "16", "--pred-iou-thresh", "0.5",
            "--stability-score-thresh", "0.8", "--box-nms-thresh", "0.7"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    want = sam.generate_masks(model, img, **dict(OPTIONS, points_per_batch=16))
    assert f"{len(want)} mask(s)" in captured.out
    assert "SAM masks" in captured.err and "4/4" in captured.err      # the progress bar
    records = json.loads(js.read_text())
    assert len(records) == len(want) > 1
    for rec, w in zip(records, want):
        rle = dict(rec["segmentation"], counts=rec["segmentation"]["counts"].encode())
        np.testing.assert_array_equal(mask_utils.decode(rle), w["segmentation"])
        assert {k: v for k, v in rec.items() if k != "segmentation"} == \
            {k: v for k, v in w.items() if k != "segmentation"}
    overlay = np.asarray(Image.open(out))
    assert overlay.shape == img.shape
    covered = np.any([w["segmentation"] for w in want], axis=0)
    np.testing.assert_array_equal(overlay[~covered], img[~covered])
    assert np.all(np.any(overlay[covered] != img[covered], axis=-1))
    # every mask in its own colour
    assert len(set(sam.cli.mask_colours(len(want)))) == len(want)
    assert len(np.unique(overlay[covered], axis=0)) >= len(want)


def test_cli_everything_argument_errors(model_dir, tmp_path, capsys):
    from PIL import Image

    from pyworkloads import cli

    Image.fromarray(scene()).save(tmp_path / "scene.png")
    base = ["run", "sam", "--model", str(model_dir), "--image", str(tmp_path / "scene.png"),
            "--out", str(tmp_path / "o.png")]
    for extra, message in [
            (["--everything", "--point", "5,5"], "it takes no --point"),
            (["--point", "5,5", "--json", str(tmp_path / "m.json")], "--json only apply with"),
            (["--point", "5,5", "--points-per-side", "4"], "--points-per-side only apply"),
            (["--everything", "--points-per-side", "0"], "points_per_side must be an integer"),
            (["--everything", "--pred-iou-thresh", "nan"], "pred_iou_thresh must be a finite"),
            (["--everything", "--json", str(tmp_path)], "is a directory")]:
        assert cli.main(base + extra) == 2
        assert message in capsys.readouterr().err


def test_stability_threshold_is_inclusive(model):
    """segment-anything keeps stability == threshold (transformers' pipeline drops it)."""
    img = scene()
    records = sam.generate_masks(model, img, **OPTIONS)
    edge = min(r["stability_score"] for r in records)
    again = sam.generate_masks(model, img, **dict(OPTIONS, stability_score_thresh=edge))
    assert edge in [r["stability_score"] for r in again]
    above = np.nextafter(np.float32(edge), np.float32(1))
    higher = sam.generate_masks(model, img, **dict(OPTIONS, stability_score_thresh=float(above)))
    assert edge not in [r["stability_score"] for r in higher]
