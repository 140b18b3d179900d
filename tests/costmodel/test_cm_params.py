"""Parameter counts: the published figure == the model module's count_params (the sum of its
weight layout) == what the cost model reports == transformers' model built on the meta device."""
from __future__ import annotations

import importlib
import json

import pytest
from conftest import require_transformers

import costmodel as cm

# Published totals: the exact parameter counts of the hub checkpoints (meta-llama/Llama-2-*-hf,
# openai/clip-vit-*, laion/CLIP-ViT-{H,g}-14-laion2B, facebook/sam-vit-* in Meta's convention where
# the Fourier matrix is a buffer, openai/whisper-*), whose model cards print them rounded
# (6.74B / 13B / 70B, 151M / 150M / 428M, 94M / 312M / 641M,
# 39M / 74M / 244M / 769M / 1550M / 809M).
# test_transformers_meta_model_count re-derives every preset independently.
PUBLISHED = {
    "llama2-7b": 6_738_415_616, "llama2-13b": 13_015_864_320, "llama2-70b": 68_976_648_192,
    "clip-vit-b-32": 151_277_313, "clip-vit-b-16": 149_620_737, "clip-vit-l-14": 427_616_513,
    "clip-vit-l-14-336": 427_944_193, "clip-vit-h-14": 986_109_441, "clip-vit-g-14": 1_366_678_273,
    "sam-vit-b": 93_735_472, "sam-vit-l": 312_342_832, "sam-vit-h": 641_090_608,
    "whisper-tiny": 37_760_640, "whisper-base": 72_593_920, "whisper-small": 241_734_912,
    "whisper-medium": 763_857_920, "whisper-large-v2": 1_543_304_960,
    "whisper-large-v3": 1_543_490_560,
    "whisper-large-v3-turbo": 808_878_080,
}

ALL = sorted(cm.presets().items())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_module_count_equals_the_published_count(name):
    family = cm.presets()[name]
    mod = importlib.import_module(f"pyworkloads.models.{family}")
    assert mod.count_params(mod.PRESETS[name]) == PUBLISHED[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_report_carries_the_exact_count(name):
    rep = cm.analyze(name, "h100-sxm", batch=1,
                     **({"seq_len": 16, "phase": "decode"} if "llama" in name else {}))
    assert rep.params == PUBLISHED[name]
    assert json.loads(rep.to_json())["params"] == PUBLISHED[name]


def test_every_published_preset_exists():
    assert set(PUBLISHED) <= {n for n, _ in ALL}


@pytest.mark.slow
@pytest.mark.parametrize("name,family", ALL)
def test_transformers_meta_model_count(name, family):
    torch, tf = require_transformers()
    cfg = importlib.import_module(f"pyworkloads.models.{family}").PRESETS[name]
    cls = {"llama2": ("LlamaForCausalLM", "LlamaConfig"), "clip": ("CLIPModel", "CLIPConfig"),
           "sam": ("SamModel", "SamConfig"),
           "whisper": ("WhisperForConditionalGeneration", "WhisperConfig")}[family]
    with torch.device("meta"):
        model = getattr(tf, cls[0])(getattr(tf, cls[1])(**cfg.to_hf()))
    n = sum(p.numel() for p in model.parameters())
    # transformers registers SAM's 2 x num_pos_feats Fourier matrix as a parameter; Meta keeps it
    # a buffer
    extra = 2 * cfg.vision_config.num_pos_feats if family == "sam" else 0
    assert n == importlib.import_module(f"pyworkloads.models.{family}").count_params(cfg) + extra
