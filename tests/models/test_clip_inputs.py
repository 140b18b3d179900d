"""CLIP's inputs and loss: preprocess() against transformers' CLIPImageProcessor (PIL backend) on a
real photograph and awkward images, tokenize() against transformers' CLIPTokenizer, and
contrastive_loss() against a PyTorch implementation of the same loss."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES, require_transformers

from pyworkloads.models import clip

TOKENIZER_DIR = FIXTURES / "clip"
# Both sides resize the same uint8 image with PIL's bicubic filter, so the pixels agree exactly;
# what is left is the float rounding of (p / 255 - mean) / std, |value| <= 2.2: a few 1e-7.  A
# resize that differed by one uint8 level would move a value by ~0.015 and fail.
PIXEL_TOL = 1e-4


def _photo_path():
    cbook = pytest.importorskip("matplotlib.cbook",
                                reason="the sample photograph ships with matplotlib")
    return cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


def _hf_processor(size=224, crop=224):
    require_transformers()
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:                   # transformers 4: the slow processor is the PIL one
        from transformers import CLIPImageProcessor as Processor
    return Processor(size={"shortest_edge": size}, crop_size={"height": crop, "width": crop})


def _hf_pixels(proc, image):
    return proc(images=image, return_tensors="np")["pixel_values"]


# ---------------------------------------------------------------------------------------------
# preprocess
# ---------------------------------------------------------------------------------------------
def test_preprocess_real_photograph_default_size():
    from PIL import Image
    path = _photo_path()
    proc = _hf_processor()
    ref = _hf_pixels(proc, Image.open(path))
    ours = clip.preprocess(path)                                  # from the file path
    assert ours.shape == (1, 3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=PIXEL_TOL)
    np.testing.assert_allclose(clip.preprocess(Image.open(path)), ref, rtol=0, atol=PIXEL_TOL)
    np.testing.assert_allclose(clip.preprocess(np.asarray(Image.open(path))), ref,
                               rtol=0, atol=PIXEL_TOL)


@pytest.mark.parametrize("size, crop", [(336, 336), (40, 32), (37, 31)])
def test_preprocess_real_photograph_other_sizes(size, crop):
    from PIL import Image
    path = _photo_path()
    ref = _hf_pixels(_hf_processor(size, crop), Image.open(path))
    np.testing.assert_allclose(clip.preprocess(path, size, crop), ref, rtol=0, atol=PIXEL_TOL)


def _crops_of_photo():
    """Non-square and small pieces of the photograph (landscape, portrait, tiny, 1-pixel-wide)."""
    from PIL import Image
    im = np.asarray(Image.open(_photo_path()).convert("RGB"))
    return {"landscape": im[100:160, 50:400], "portrait": im[:500, 200:260],
            "tiny": im[300:309, 250:262], "sliver": im[200:260, 300:301]}


@pytest.mark.parametrize("piece", ["landscape", "portrait", "tiny", "sliver"])
def test_preprocess_non_square_and_small_images(piece):
    from PIL import Image
    arr = np.ascontiguousarray(_crops_of_photo()[piece])
    proc = _hf_processor(64, 56)
    np.testing.assert_allclose(clip.preprocess(arr, 64, 56), _hf_pixels(proc, Image.fromarray(arr)),
                               rtol=0, atol=PIXEL_TOL)


def test_preprocess_grayscale_and_transparent_images():
    from PIL import Image
    rgb = np.ascontiguousarray(_crops_of_photo()["landscape"])
    proc = _hf_processor(48, 48)
    gray = Image.fromarray(rgb).convert("L")
    np.testing.assert_allclose(clip.preprocess(gray, 48), _hf_pixels(proc, gray),
                               rtol=0, atol=PIXEL_TOL)
    alpha = (np.arange(rgb.shape[1]) * 255 // rgb.shape[1]).astype(np.uint8)
    rgba = np.concatenate([rgb, np.broadcast_to(alpha, rgb.shape[:2])[..., None]], axis=-1)
    for image in (Image.fromarray(rgba, "RGBA"), rgba):   # PIL composites, arrays blend onto white
        np.testing.assert_allclose(clip.preprocess(image, 48), _hf_pixels(proc, image),
                                   rtol=0, atol=PIXEL_TOL)


def test_preprocess_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        clip.preprocess(tmp_path / "missing.jpg")
    with pytest.raises(TypeError, match="uint8"):
        clip.preprocess(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="H×W×C"):
        clip.preprocess(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(TypeError, match="file path, PIL.Image or numpy array"):
        clip.preprocess([1, 2, 3])
    with pytest.raises(ValueError, match="crop_size"):
        clip.preprocess(np.zeros((8, 8, 3), np.uint8), size=16, crop_size=20)


# ---------------------------------------------------------------------------------------------
# tokenize
# ---------------------------------------------------------------------------------------------
TEXTS = ["a photo of a cat.", "A  PHOTO\tof a Dog!", "", "grace hopper, 1906-1992",
         "naïve émigré's café", "<|endoftext|> is special", "diagram of the lecture: two encoders"]


@pytest.fixture(scope="module")
def hf_tokenizer():
    _, transformers = require_transformers()
    return transformers.CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


def test_tokenize_matches_transformers(hf_tokenizer):
    tok = clip.load_tokenizer(TOKENIZER_DIR)
    ref = hf_tokenizer(TEXTS, padding="max_length", max_length=16, truncation=True)["input_ids"]
    ours = clip.tokenize(TEXTS, tok, context_length=16, truncate=True)
    assert ours.dtype == np.int64 and ours.shape == (len(TEXTS), 16)
    np.testing.assert_array_equal(ours, np.array(ref))
    longest = hf_tokenizer(TEXTS[:2], padding="longest")["input_ids"]
    np.testing.assert_array_equal(clip.tokenize(TEXTS[:2], tok, 16, padding="longest"),
                                  np.array(longest))


def test_tokenize_truncation_and_errors():
    tok = clip.load_tokenizer(TOKENIZER_DIR)
    long = "grace hopper " * 20
    with pytest.raises(ValueError,
                       match=r"texts\[0\] is 42 tokens long.*context length 16.*truncate=True"):
        clip.tokenize([long], tok, context_length=16)
    ids = clip.tokenize([long], tok, context_length=16, truncate=True)[0]
    full = tok.backend.encode(long).ids
    assert list(ids[:15]) == full[:15] and ids[15] == tok.eos_token_id
    assert clip.tokenize("a cat", tok, 16).shape == (1, 16)             # one string is one row
    with pytest.raises(TypeError, match="texts"):
        clip.tokenize([1, 2], tok)
    with pytest.raises(ValueError, match="padding"):
        clip.tokenize("a", tok, padding="right")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        clip.load_tokenizer(FIXTURES)


def test_pad_token_from_tokenizer_config(tmp_path):
    """LAION's checkpoints pad with '!' (id 0), OpenAI's with <|endoftext|>;
    tokenizer_config.json says which."""
    import shutil
    shutil.copy(TOKENIZER_DIR / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text('{"pad_token": {"content": "!"}}')
    tok = clip.load_tokenizer(tmp_path)
    ids = clip.tokenize("a cat", tok, 8)[0]
    assert tok.pad_token_id == 0 and list(ids[-3:]) == [0, 0, 0]


# ---------------------------------------------------------------------------------------------
# contrastive loss
# ---------------------------------------------------------------------------------------------
def _torch_loss(img, txt, logit_scale):
    """The paper's pseudo-code in PyTorch (float64): normalise, scale, CE over rows and columns."""
    import torch
    import torch.nn.functional as F
    i = F.normalize(torch.from_numpy(np.asarray(img, np.float64)), dim=-1)
    t = F.normalize(torch.from_numpy(np.asarray(txt, np.float64)), dim=-1)
    logits = torch.exp(torch.tensor(float(logit_scale), dtype=torch.float64)) * i @ t.T
    labels = torch.arange(len(i))
    return float((F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2)


@pytest.mark.parametrize("n, e, logit_scale", [(1, 4, 2.6592), (5, 8, 2.6592),
                                               (16, 32, np.log(100.0)), (7, 3, 0.0), (6, 12, 20.0)])
def test_contrastive_loss_matches_pytorch(n, e, logit_scale):
    require_transformers()
    rng = np.random.default_rng(n * 31 + e)
    img = rng.standard_normal((n, e)).astype(np.float32)
    txt = rng.standard_normal((n, e)).astype(np.float32)
    ours = clip.contrastive_loss(img, txt, np.float32(logit_scale))
    ref = _torch_loss(img, txt, np.float32(logit_scale))
    # both in float64 (u = 1.1e-16) from the same float32 inputs: dozens of roundings on logits of
    # at most exp(20) ~ 5e8, a loss of the same order, move it by ~1e-14 relative; B = 1 gives 0
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-12)
    assert isinstance(ours, float)


def test_contrastive_loss_huge_embeddings_and_logits():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((8, 16)).astype(np.float32)
    txt = rng.standard_normal((8, 16)).astype(np.float32)
    base = clip.contrastive_loss(img, txt, 4.0)
    # the loss only sees directions: 1e30-sized float32 embeddings (squares overflow float32)
    # give the same value, up to the float32 rounding of x·1e30 (6e-8 relative per entry)
    huge = clip.contrastive_loss(img * np.float32(1e30), txt * np.float32(1e30), 4.0)
    assert np.isfinite(huge) and huge == pytest.approx(base, rel=1e-6)
    # float64 embeddings whose squares overflow even float64 (x·1e200 rounds by 1.1e-16 relative)
    img200, txt200 = img.astype(np.float64) * 1e200, txt.astype(np.float64) * 1e200
    assert clip.contrastive_loss(img200, txt200, 4.0) == pytest.approx(base, rel=1e-12)
    # logits of ~1e30 (exp(69)): finite, and the loss grows with the temperature's inverse
    big = clip.contrastive_loss(img, txt, 69.0)
    assert np.isfinite(big) and big > base
    # matched pairs with huge logits: loss -> 0, not NaN
    assert clip.contrastive_loss(img, img, 69.0) == pytest.approx(0.0, abs=1e-12)


def test_contrastive_loss_huge_logits_match_pytorch():
    require_transformers()
    rng = np.random.default_rng(1)
    img, txt = rng.standard_normal((6, 10)), rng.standard_normal((6, 10))
    # float64 on both sides; the loss is of the order of the logits (exp(300)), so relative
    # float64 roundings (~1e-14) are what is left
    ref = _torch_loss(img, txt, 300.0)
    assert clip.contrastive_loss(img, txt, 300.0) == pytest.approx(ref, rel=1e-6)


def test_contrastive_loss_bad_inputs():
    a = np.ones((3, 4))
    with pytest.raises(ValueError, match="same shape"):
        clip.contrastive_loss(a, np.ones((2, 4)), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        clip.contrastive_loss(np.full((3, 4), np.nan), a, 1.0)
    with pytest.raises(ValueError, match="all zeros"):
        clip.contrastive_loss(np.zeros((3, 4)), a, 1.0)
    with pytest.raises(ValueError, match="logit_scale"):
        clip.contrastive_loss(a, a, 1e4)
