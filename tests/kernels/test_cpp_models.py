"""Every model runs end to end on the compiled backends and matches the numpy backend (max abs
error <= 1e-4, relative to the output's scale when it is larger than 1), on the tiny presets."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from _kernel_testing import backends, on_backend


def model(name):
    try:
        return importlib.import_module(f"pyworkloads.models.{name}")
    except ImportError as exc:
        pytest.skip(f"pyworkloads.models.{name} is not importable yet ({exc})")


def same_on(backend, f):
    want = f()
    with on_backend(backend):
        got = f()
    for w, g in zip(
        want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)
    ):
        w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
        assert g.shape == w.shape
        assert np.abs(g - w).max() <= 1e-4 * max(1.0, np.abs(w).max())
    return want, got


@backends
def test_llama2_logits_and_greedy_decode(backend, rng):
    m = model("llama2").from_preset("llama2-tiny")
    ids = rng.integers(0, m.config.vocab_size, (2, 11))
    same_on(backend, lambda: m(ids))
    # prefill + single-query decode steps against the KV cache: the same greedy tokens
    want, got = same_on(backend, lambda: m.generate(ids, max_new_tokens=6).astype(np.float64))
    np.testing.assert_array_equal(want, got)


@backends
def test_clip_embeddings_and_logits(backend, rng):
    c = model("clip").from_preset("clip-tiny")
    t, v = c.config.text_config, c.config.vision_config
    ids = np.zeros((2, t.max_position_embeddings), np.int64)
    ids[:, 0], ids[0, 1:4], ids[0, 4], ids[1, 1:3], ids[1, 3] = (
        t.bos_token_id,
        [5, 6, 7],
        t.eos_token_id,
        [8, 9],
        t.eos_token_id,
    )
    px = rng.standard_normal((2, 3, v.image_size, v.image_size)).astype(np.float32)
    same_on(
        backend,
        lambda: (
            c.get_image_features(px),
            c.get_text_features(ids),
            c(input_ids=ids, pixel_values=px).logits_per_image,
        ),
    )


@backends
def test_sam_embeddings_and_masks(backend, rng):
    s = model("sam").from_preset("sam-tiny")
    size = s.config.vision_config.image_size
    px = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    points = np.array([[[[30.0, 40.0], [90.0, 70.0]]]], np.float32)  # [B, P, N, 2]
    same_on(backend, lambda: s.get_image_embeddings(px))
    same_on(
        backend,
        lambda: (lambda o: (o.pred_masks, o.iou_scores))(s(pixel_values=px, input_points=points)),
    )


@backends
def test_whisper_logits(backend, rng):
    wm = model("whisper")
    w = wm.from_preset("whisper-tiny-random")
    feats = rng.standard_normal((1, w.config.num_mel_bins, 3000)).astype(np.float32)
    start = w.config.decoder_start_token_id
    same_on(backend, lambda: w(feats, np.array([[start, 40, 41, 42]])))
