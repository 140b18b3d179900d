"""Automatic mask generation ("segment everything"), as segment-anything's
``SamAutomaticMaskGenerator`` defines it (``automatic_mask_generator.py``, ``utils/amg.py``).

No prompt from the user: a regular grid of points is the prompt, one point per prompt.

    image [H, W, 3]
      crops: the whole image, then crop_n_layers layers of 2^i x 2^i overlapping crops
      for each crop:
        encode the crop once (SamPredictor.set_image)
        grid of n x n points (n = points_per_side / downscale^layer), in batches of
        points_per_batch prompts through the prompt encoder and mask decoder:
          3 candidate masks per point (multimask output), logits upscaled to the crop's size
          keep  predicted IoU > pred_iou_thresh
          keep  stability score >= stability_score_thresh
          binarise at 0, box around each mask, drop masks cut by the crop's inner edges
          paste into the full image (uncrop)
        box NMS among the crop's masks (box_nms_thresh, by predicted IoU)
      box NMS between crops (crop_nms_thresh, smaller crops preferred)
      optional: fill small holes, remove small islands (min_mask_region_area), NMS again
    -> one record per mask: segmentation, area, bbox, predicted_iou, point_coords,
       stability_score, crop_box

Glossary (shapes in comments use these; the rest is model.py's):
    N    candidate masks          Pb  prompts (points) in a batch
    h w  a crop's height, width   H W the image's height, width

Boxes are XYXY with inclusive right/bottom pixel indices (a one-pixel mask has the box
[x, y, x, y]), segment-anything's convention; records give them as XYWH = [x0, y0, x1 - x0,
y1 - y0].

transformers' ``pipeline("mask-generation")`` computes the same masks, boxes and scores without
crops (checked in tests/models/test_sam_automatic.py) but differs in three places: its
stability filter is ``>`` where segment-anything's is ``>=``; with crops it runs one NMS over
the masks of all crops, ranked by predicted IoU, where segment-anything runs one per crop and
then one between crops that prefers smaller crops; and it has no hole/island clean-up.
"""
from __future__ import annotations

import math
from itertools import product

import numpy as np

from ..common import check_bool, check_choice, check_int, check_number
from .api import Sam
from .predictor import SamPredictor
from .preprocess import to_rgb_array

# Sam.mask_threshold in segment-anything: a pixel is in the mask when its logit is > 0.
MASK_THRESHOLD = 0.0
# is_box_near_crop_edge's tolerance: a mask whose box comes within 20 pixels of a crop edge that
# is not an image edge was probably cut by the crop, and a larger crop sees it whole.
EDGE_TOLERANCE = 20.0
# Bound on points_per_side: its square is the number of prompts per crop, each decoded on its
# own; the default is 32, and 1024 (a million prompts) is far beyond any use.
MAX_POINTS_PER_SIDE = 1024
OUTPUT_MODES = ("binary_mask", "coco_rle")


# ---------------------------------------------------------------------------------------------
# point grids and crops
# ---------------------------------------------------------------------------------------------
def build_point_grid(n_per_side: int) -> np.ndarray:
    """n x n points evenly spaced in [0, 1]^2, each at the centre of its cell -> [n², 2] (x, y),
    x varying fastest."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)                        # [n]
    xs = np.tile(side[None, :], (n_per_side, 1))                              # [n, n]
    ys = np.tile(side[:, None], (1, n_per_side))                              # [n, n]
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)                         # [n², 2]


def build_all_layer_point_grids(n_per_side: int, n_layers: int,
                                scale_per_layer: int) -> list[np.ndarray]:
    """The grid of each crop layer: layer i has int(n_per_side / scale_per_layer^i) per side."""
    return [build_point_grid(int(n_per_side / scale_per_layer**i)) for i in range(n_layers + 1)]


def generate_crop_boxes(im_size: tuple[int, int], n_layers: int,
                        overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY, exclusive right/bottom) of every layer, and the layer of each.

    Layer 0 is the whole image; layer i >= 1 tiles it with 2^i x 2^i crops that overlap by
    overlap_ratio * short side * 2 / 2^i pixels (so deeper layers overlap less)."""
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    for i in range(1, n_layers + 1):
        n = 2 ** i                                                  # crops per side
        overlap = int(overlap_ratio * short_side * (2 / n))
        crop_w = int(math.ceil((overlap * (n - 1) + im_w) / n))
        crop_h = int(math.ceil((overlap * (n - 1) + im_h) / n))
        x0s = [int((crop_w - overlap) * k) for k in range(n)]
        y0s = [int((crop_h - overlap) * k) for k in range(n)]
        for x0, y0 in product(x0s, y0s):                            # column by column
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i)
    return boxes, layers


# ---------------------------------------------------------------------------------------------
# scoring, boxes and non-maximum suppression
# ---------------------------------------------------------------------------------------------
def calculate_stability_score(masks: np.ndarray, mask_threshold: float,
                              threshold_offset: float) -> np.ndarray:
    """How little a mask changes when the cut-off on its logits moves: the IoU of the mask
    thresholded at ``mask_threshold + offset`` and at ``mask_threshold - offset``.  The first
    lies inside the second, so IoU = |high| / |low|.

    masks [N, h, w] logits -> [N] float32 (NaN for a mask with no pixel above the low cut)."""
    high = (masks > mask_threshold + threshold_offset).sum(axis=(-2, -1))      # [N]
    low = (masks > mask_threshold - threshold_offset).sum(axis=(-2, -1))       # [N]
    with np.errstate(invalid="ignore", divide="ignore"):
        return high.astype(np.float32) / low.astype(np.float32)               # [N]


def batched_mask_to_box(masks: np.ndarray) -> np.ndarray:
    """masks [N, h, w] bool -> boxes [N, 4] int64 XYXY around each mask, the last row and column
    included; [0, 0, 0, 0] for an empty mask."""
    h, w = masks.shape[1:]
    rows = masks.any(axis=2)                                                  # [N, h]
    cols = masks.any(axis=1)                                                  # [N, w]
    boxes = np.stack([cols.argmax(1), rows.argmax(1),                         # first x, first y
                      w - 1 - cols[:, ::-1].argmax(1), h - 1 - rows[:, ::-1].argmax(1)], axis=1)
    boxes[~rows.any(axis=1)] = 0                                              # [N, 4]
    return boxes.astype(np.int64)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """boxes [N, 4] XYXY -> [N] (x1 - x0) * (y1 - y0), torchvision's convention."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression, as ``torchvision.ops.nms`` defines it: visit the boxes
    from the highest score down and keep each one that no kept box overlaps with
    IoU > iou_threshold.

    boxes [N, 4] XYXY, scores [N] -> indices of the kept boxes, highest score first (equal
    scores: the earlier box first).  Computed in float64, where torchvision uses float32: on
    the integer boxes of masks both get the areas exactly."""
    boxes = np.asarray(boxes, dtype=np.float64)
    x0, y0, x1, y1 = boxes.T                                                  # [N] each
    areas = box_area(boxes)                                                   # [N]
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if suppressed[i]:
            continue
        keep.append(i)
        inter_w = np.clip(np.minimum(x1[i], x1) - np.maximum(x0[i], x0), 0, None)    # [N]
        inter_h = np.clip(np.minimum(y1[i], y1) - np.maximum(y0[i], y0), 0, None)    # [N]
        inter = inter_w * inter_h                                                    # [N]
        with np.errstate(invalid="ignore", divide="ignore"):     # 0 / 0 between empty boxes
            iou = inter / (areas[i] + areas - inter)                                 # [N]
        suppressed |= iou > iou_threshold
    return np.array(keep, dtype=np.int64)


def is_box_near_crop_edge(boxes: np.ndarray, crop_box, orig_box,
                          atol: float = EDGE_TOLERANCE) -> np.ndarray:
    """boxes [N, 4] in crop coordinates -> [N] bool: some side lies within ``atol`` pixels of a
    crop edge that is not also an image edge (the mask was probably cut by the crop)."""
    crop_box = np.asarray(crop_box, dtype=np.float64)
    orig_box = np.asarray(orig_box, dtype=np.float64)
    boxes = boxes + crop_box[[0, 1, 0, 1]]                                    # [N, 4] in image
    near_crop_edge = np.abs(boxes - crop_box) <= atol                         # [N, 4]
    near_image_edge = np.abs(boxes - orig_box) <= atol                        # [N, 4]
    return np.any(near_crop_edge & ~near_image_edge, axis=1)


def uncrop_masks(masks: np.ndarray, crop_box, orig_h: int, orig_w: int) -> np.ndarray:
    """masks [N, h, w] of a crop -> [N, H, W]: zero-padded back into the whole image."""
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    return np.pad(masks, ((0, 0), (y0, orig_h - y1), (x0, orig_w - x1)))


def box_xyxy_to_xywh(box: list) -> list:
    """[x0, y0, x1, y1] -> [x0, y0, x1 - x0, y1 - y0]."""
    x0, y0, x1, y1 = box
    return [x0, y0, x1 - x0, y1 - y0]


# ---------------------------------------------------------------------------------------------
# clean-up and encoding
# ---------------------------------------------------------------------------------------------
def remove_small_regions(mask: np.ndarray, area_thresh: float,
                         mode: str) -> tuple[np.ndarray, bool]:
    """Fill the holes (``mode="holes"``) or remove the islands (``"islands"``) of a mask [H, W]
    that have fewer than ``area_thresh`` pixels -> (mask, whether it changed).

    Regions are 8-connected (segment-anything uses OpenCV's connectedComponentsWithStats with
    connectivity 8; here scipy.ndimage.label with a 3 x 3 structure).  A hole is any connected
    piece of the background, the ones at the image border included.  If every island is small,
    the largest is kept."""
    from scipy import ndimage

    check_choice(mode, "mode", ("holes", "islands"))
    holes = mode == "holes"
    working = mask ^ holes                      # the background for holes, else the mask
    regions, n = ndimage.label(working, structure=np.ones((3, 3), bool))      # [H, W], 0 = not
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]                 # [n] pixels
    small = np.flatnonzero(sizes < area_thresh) + 1                           # their labels
    if len(small) == 0:
        return mask, False
    if holes:                                   # the mask's own pixels (0) and the small holes
        fill = np.concatenate([[0], small])
    else:                                       # every island that is not small
        fill = np.setdiff1d(np.arange(1, n + 1), small)
        if len(fill) == 0:
            fill = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


def coco_rle(mask: np.ndarray) -> dict:
    """A binary mask [H, W] -> COCO's compressed run-length encoding ``{"size": [H, W],
    "counts": str}``, exactly as ``pycocotools.mask.encode`` writes it (column-major runs),
    with counts as text so the record can go into JSON.  Decode with
    ``pycocotools.mask.decode``."""
    mask_utils = pycocotools_mask()
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype.kind not in "biu" or not np.isin(mask, (0, 1)).all():
        raise ValueError(f"coco_rle: mask must be a 2-D array of 0/1 or bool, got shape "
                         f"{mask.shape} and dtype {mask.dtype}")
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def pycocotools_mask():
    """``pycocotools.mask``, or ImportError saying how to install it (an optional dependency)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise ImportError("COCO run-length encoding needs pycocotools "
                          "(pip install pycocotools)") from None
    return mask_utils


# ---------------------------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------------------------
class SamAutomaticMaskGenerator:
    """Masks for everything in an image from a grid of point prompts, segment-anything's
    ``SamAutomaticMaskGenerator`` with its options, defaults (tuned for ViT-H) and records.

    points_per_side: grid points per side of layer 0 (points_per_side² prompts).
    points_per_batch: prompts decoded at once (memory: points_per_batch x 3 float32 logit
        maps of the crop's size).
    pred_iou_thresh: keep masks whose predicted IoU is > this (0 keeps all).
    stability_score_thresh, stability_score_offset: keep masks whose stability score
        (:func:`calculate_stability_score` at logit cut-offs 0 ± offset) is >= this.
    box_nms_thresh: box IoU above which NMS drops the lower-scoring mask of a crop.
    crop_n_layers: run again on 2^i x 2^i crops for i = 1 .. crop_n_layers.
    crop_nms_thresh: box IoU for the NMS between crops (masks of smaller crops preferred).
    crop_overlap_ratio: crops of layer 1 overlap by this fraction of the short side.
    crop_n_points_downscale_factor: layer i has points_per_side / factor^i points per side.
    min_mask_region_area: fill holes and remove islands smaller than this many pixels.
    output_mode: ``"binary_mask"`` (bool [H, W]) or ``"coco_rle"`` (:func:`coco_rle`).
    progress: show a tqdm bar over the point batches.

    segment-anything's ``point_grids`` (explicit grids) and ``"uncompressed_rle"`` output are
    not offered."""

    def __init__(self, model: Sam, *, points_per_side: int = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7,
                 crop_n_layers: int = 0, crop_nms_thresh: float = 0.7,
                 crop_overlap_ratio: float = 512 / 1500, crop_n_points_downscale_factor: int = 1,
                 min_mask_region_area: int = 0, output_mode: str = "binary_mask",
                 progress: bool = False):
        if not isinstance(model, Sam):
            raise TypeError(f"model must be a pyworkloads SAM model (sam.from_pretrained or "
                            f"sam.from_preset), got {type(model).__name__}")
        self.predictor = SamPredictor(model)
        self.points_per_side = check_int(points_per_side, "points_per_side", 1,
                                         MAX_POINTS_PER_SIDE)
        self.points_per_batch = check_int(points_per_batch, "points_per_batch", 1)
        unit = dict(minimum=0.0, maximum=1.0)
        self.pred_iou_thresh = check_number(pred_iou_thresh, "pred_iou_thresh", **unit)
        self.stability_score_thresh = check_number(stability_score_thresh,
                                                   "stability_score_thresh", **unit)
        self.stability_score_offset = check_number(stability_score_offset,
                                                   "stability_score_offset", 0.0)
        self.box_nms_thresh = check_number(box_nms_thresh, "box_nms_thresh", **unit)
        self.crop_nms_thresh = check_number(crop_nms_thresh, "crop_nms_thresh", **unit)
        self.crop_overlap_ratio = check_number(crop_overlap_ratio, "crop_overlap_ratio", **unit)
        self.crop_n_layers = check_int(crop_n_layers, "crop_n_layers", 0)
        self.crop_n_points_downscale_factor = check_int(
            crop_n_points_downscale_factor, "crop_n_points_downscale_factor", 1)
        deepest = self.points_per_side // self.crop_n_points_downscale_factor**self.crop_n_layers
        if deepest < 1:
            raise ValueError(f"crop layer {self.crop_n_layers} would have no points: "
                             f"points_per_side {self.points_per_side} / "
                             f"crop_n_points_downscale_factor {crop_n_points_downscale_factor}"
                             f"^{self.crop_n_layers} < 1; use fewer crop_n_layers")
        self.min_mask_region_area = check_int(min_mask_region_area, "min_mask_region_area", 0)
        self.output_mode = check_choice(output_mode, "output_mode", OUTPUT_MODES)
        if output_mode == "coco_rle":
            pycocotools_mask()                  # missing: say so now, not after the work
        self.progress = check_bool(progress, "progress")
        self.point_grids = build_all_layer_point_grids(
            self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor)

    def generate(self, image) -> list[dict]:
        """image: a path, PIL image or uint8 array [H, W] / [H, W, C] -> one record per mask,
        best first: ``segmentation`` (bool [H, W], or a COCO RLE dict), ``area`` (pixels),
        ``bbox`` ([x, y, w, h]), ``predicted_iou``, ``stability_score``, ``point_coords``
        ([[x, y]], the prompt, in image pixels), ``crop_box`` ([x, y, w, h])."""
        rgb = to_rgb_array(image)                                             # [H, W, 3]
        data = self._generate_masks(rgb)
        if self.min_mask_region_area > 0:
            data = self._remove_small_regions(
                data, max(self.box_nms_thresh, self.crop_nms_thresh))
        records = []
        for i, mask in enumerate(data["masks"]):
            records.append({
                "segmentation": coco_rle(mask) if self.output_mode == "coco_rle" else mask,
                "area": int(mask.sum()),
                "bbox": box_xyxy_to_xywh(data["boxes"][i].tolist()),
                "predicted_iou": float(data["iou_preds"][i]),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": float(data["stability_score"][i]),
                "crop_box": box_xyxy_to_xywh(data["crop_boxes"][i].tolist()),
            })
        return records

    def _generate_masks(self, rgb: np.ndarray) -> dict:
        """Every crop's masks, then the NMS between crops -> the fields of :func:`_empty`."""
        H, W = rgb.shape[:2]
        crop_boxes, layers = generate_crop_boxes((H, W), self.crop_n_layers,
                                                 self.crop_overlap_ratio)
        # a crop with no pixel (only on images of a pixel or two per side) has nothing to find
        crops = [(box, layer) for box, layer in zip(crop_boxes, layers)
                 if box[2] > box[0] and box[3] > box[1]]
        n_batches = sum(-(-len(self.point_grids[layer]) // self.points_per_batch)
                        for _, layer in crops)
        with _progress(n_batches, self.progress) as bar:
            data = _concat([self._process_crop(rgb, box, layer, bar) for box, layer in crops])
        if len(crops) > 1:                      # duplicates between crops: smaller crops win
            keep = nms(data["boxes"], 1 / box_area(data["crop_boxes"]), self.crop_nms_thresh)
            data = _take(data, keep)
        return data

    def _process_crop(self, rgb: np.ndarray, crop_box: list[int], layer: int, bar) -> dict:
        """Encode the crop once, decode its grid in batches, NMS within the crop."""
        x0, y0, x1, y1 = crop_box
        self.predictor.set_image(rgb[y0:y1, x0:x1])
        points = self.point_grids[layer] * np.array([x1 - x0, y1 - y0])       # [n², 2] in crop
        batches = []
        for start in range(0, len(points), self.points_per_batch):
            batches.append(self._process_batch(points[start:start + self.points_per_batch],
                                               crop_box, rgb.shape[:2]))
            bar.update(1)
        data = _concat(batches)
        data = _take(data, nms(data["boxes"], data["iou_preds"], self.box_nms_thresh))
        offset = np.array([x0, y0])
        data["boxes"] = data["boxes"] + np.tile(offset, 2)                    # [N, 4] in image
        data["points"] = data["points"] + offset                              # [N, 2] in image
        data["crop_boxes"] = np.tile(np.array(crop_box, np.int64), (len(data["boxes"]), 1))
        return data

    def _process_batch(self, points: np.ndarray, crop_box: list[int],
                       orig_size: tuple[int, int]) -> dict:
        """points [Pb, 2] in crop pixels -> the masks that pass the filters, pasted into the
        whole image (boxes and points stay in crop coordinates until the crop's NMS)."""
        H, W = orig_size
        logits, iou, _ = self.predictor.predict_batch(points[:, None, :], multimask_output=True,
                                                      return_logits=True)  # [Pb, Mo, h, w]
        Mo = logits.shape[1]
        data = {"masks": logits.reshape(-1, *logits.shape[2:]),               # [N, h, w], Pb·Mo
                "iou_preds": iou.reshape(-1),                                 # [N]
                "points": np.repeat(points, Mo, axis=0)}                      # [N, 2]
        if self.pred_iou_thresh > 0.0:
            data = _take(data, data["iou_preds"] > self.pred_iou_thresh)
        data["stability_score"] = calculate_stability_score(
            data["masks"], MASK_THRESHOLD, self.stability_score_offset)      # [N]
        if self.stability_score_thresh > 0.0:
            data = _take(data, data["stability_score"] >= self.stability_score_thresh)
        data["masks"] = data["masks"] > MASK_THRESHOLD                        # [N, h, w] bool
        data["boxes"] = batched_mask_to_box(data["masks"])                    # [N, 4]
        data = _take(data, ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, W, H]))
        data["masks"] = uncrop_masks(data["masks"], crop_box, H, W)           # [N, H, W]
        return data

    def _remove_small_regions(self, data: dict, nms_thresh: float) -> dict:
        """Fill small holes and remove small islands of every mask, then NMS again with the
        untouched masks ranked first (score 1) and the changed ones after (score 0)."""
        cleaned, unchanged = [], []
        for mask in data["masks"]:
            mask, filled = remove_small_regions(mask, self.min_mask_region_area, "holes")
            mask, removed = remove_small_regions(mask, self.min_mask_region_area, "islands")
            cleaned.append(mask)
            unchanged.append(not (filled or removed))
        if not cleaned:
            return data
        data = dict(data, masks=np.stack(cleaned))                            # [N, H, W]
        data["boxes"] = batched_mask_to_box(data["masks"])                    # [N, 4]
        return _take(data, nms(data["boxes"], np.array(unchanged, np.float32), nms_thresh))


def generate_masks(model: Sam, image, *, points_per_side: int = 32, points_per_batch: int = 64,
                   pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                   stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7,
                   crop_n_layers: int = 0, crop_nms_thresh: float = 0.7,
                   crop_overlap_ratio: float = 512 / 1500,
                   crop_n_points_downscale_factor: int = 1, min_mask_region_area: int = 0,
                   progress: bool = False) -> list[dict]:
    """Masks for everything in ``image``: ``SamAutomaticMaskGenerator(model, **options)
    .generate(image)`` (see there for the options and the records), binary masks."""
    return SamAutomaticMaskGenerator(
        model, points_per_side=points_per_side, points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
        stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
        crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
        crop_overlap_ratio=crop_overlap_ratio,
        crop_n_points_downscale_factor=crop_n_points_downscale_factor,
        min_mask_region_area=min_mask_region_area, progress=progress).generate(image)


def _take(data: dict, index) -> dict:
    """Every field of ``data`` at ``index`` (a bool mask or indices over the masks)."""
    return {k: v[index] for k, v in data.items()}


def _concat(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        pass


def _progress(total: int, show: bool):
    """A tqdm bar over ``total`` point batches, or a stand-in that shows nothing."""
    if not show:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, unit="batch", desc="SAM masks")
