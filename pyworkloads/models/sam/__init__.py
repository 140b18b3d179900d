"""Segment Anything (SAM).  Open ``model.py`` first: the architecture drawn with its dimension
glossary, the Config and presets, the weight layout, and how the three components chain.  Each
component has its own file, as in Meta's ``segment_anything``:

    image_encoder.py    ViT with windowed attention and decomposed relative positions, neck
    prompt_encoder.py   random-Fourier positions; point, box and mask prompts
    mask_decoder.py     two-way transformer, upscaling, hypernetwork MLPs, IoU head

Around them: ``preprocess.py`` (image to pixels, prompt coordinates, masks back to the image),
``predictor.py`` (:class:`SamPredictor`), ``automatic.py`` (:func:`generate_masks` and
:class:`SamAutomaticMaskGenerator`: masks for everything from a grid of point prompts),
``hf.py`` (config.json, :func:`from_pretrained`), ``api.py`` (:class:`Sam`, input checks,
:func:`from_preset`), ``cli.py`` (command-line hooks).

The package exports the functions by the names of their files: ``sam.image_encoder``,
``sam.prompt_encoder``, ``sam.mask_decoder`` and ``sam.preprocess`` are the functions; import
from ``pyworkloads.models.sam.image_encoder`` etc. to reach the modules.
"""
from __future__ import annotations

from .api import Sam, SamOutput, check_prompts, from_preset, init_weights
from .automatic import SamAutomaticMaskGenerator, coco_rle, generate_masks
from .cli import add_run_arguments, demo, run_cli
from .hf import from_pretrained
from .image_encoder import decomposed_rel_pos, get_rel_pos, window_partition, window_unpartition
from .mask_decoder import mask_decoder
from .model import (
    BLOCK_DOWNSAMPLE_RATE,
    GAUSSIAN,
    GAUSSIAN_ALIAS,
    PRESETS,
    Config,
    MaskDecoderConfig,
    PromptEncoderConfig,
    VisionConfig,
    count_params,
    decode_prompts,
    forward,
    image_encoder,
    weight_shapes,
)
from .predictor import SamPredictor
from .preprocess import (
    IMAGE_MEAN,
    IMAGE_STD,
    postprocess_masks,
    preprocess,
    resized_shape,
    transform_coords,
)
from .prompt_encoder import PAD_LABEL, fourier_encode, image_positional_embeddings, prompt_encoder

__all__ = [
    "VisionConfig", "PromptEncoderConfig", "MaskDecoderConfig", "Config", "PRESETS",
    "count_params", "weight_shapes", "init_weights", "from_pretrained", "from_preset", "Sam",
    "SamOutput", "SamPredictor", "SamAutomaticMaskGenerator", "generate_masks", "coco_rle",
    "get_rel_pos", "preprocess", "transform_coords",
    "postprocess_masks", "demo", "add_run_arguments", "run_cli", "IMAGE_MEAN", "IMAGE_STD",
    # the forward functions and their pieces
    "forward", "decode_prompts", "image_encoder", "prompt_encoder", "mask_decoder",
    "image_positional_embeddings", "window_partition", "window_unpartition",
    "decomposed_rel_pos", "fourier_encode",
    # the weight layout's names and the prompt conventions
    "GAUSSIAN", "GAUSSIAN_ALIAS", "BLOCK_DOWNSAMPLE_RATE", "PAD_LABEL", "resized_shape",
    "check_prompts",
]
