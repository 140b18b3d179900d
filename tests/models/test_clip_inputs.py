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


def _same_as_8bit(image, rgb8, **kw):
    """preprocess(image) equals preprocess of the uint8 RGB pixels it should become: the resize
    and normalisation then see identical uint8 input, so the outputs are bit-identical."""
    np.testing.assert_array_equal(clip.preprocess(image, **kw), clip.preprocess(rgb8, **kw))


def _gradient16(h=12, w=20):
    """uint16 [h, w] covering 0 .. 65535, and its 8-bit rounding round(v / 257) as uint8 RGB."""
    v = np.linspace(0, 65535, h * w).round().astype(np.uint16).reshape(h, w)
    rgb8 = np.repeat(np.round(v / 257.0).astype(np.uint8)[..., None], 3, axis=2)
    return v, rgb8


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    """PIL reads a 16-bit greyscale PNG as mode I;16 and its convert("RGB") clips at 255 (a
    mid-grey 16-bit image comes out white): the levels are scaled by 1/257 instead."""
    from PIL import Image
    v, rgb8 = _gradient16()
    f = tmp_path / "g16.png"
    Image.fromarray(v).save(f)
    assert Image.open(f).mode == "I;16"
    _same_as_8bit(f, rgb8, size=16)
    mid = np.full((8, 8), 0x8080, np.uint16)                   # 32896 / 257 = 128 exactly
    Image.fromarray(mid).save(f)
    got = clip.preprocess(f, size=8)[0, 0, 0, 0]
    # (128/255 - mean) / std in float32, against the same in float64: a few roundings of |x| < 2
    assert abs(got - (128 / 255 - clip.CLIP_MEAN[0]) / clip.CLIP_STD[0]) < 1e-6


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N", "I"])
def test_16_bit_pil_modes_and_uint16_arrays(mode):
    from PIL import Image
    v, rgb8 = _gradient16()
    if mode == "I":
        im = Image.fromarray(v.astype(np.int32))
    else:                           # PIL's convert between 16-bit modes clips at 255: frombytes
        order = {"I;16B": ">u2", "I;16L": "<u2"}.get(mode, "=u2")
        im = Image.frombytes(mode, (v.shape[1], v.shape[0]), v.astype(order).tobytes())
    assert im.mode == mode
    np.testing.assert_array_equal(np.asarray(im).astype(np.uint16), v)   # the mode holds v
    _same_as_8bit(im, rgb8, size=16)
    _same_as_8bit(v, rgb8, size=16)                                      # uint16 array
    _same_as_8bit(np.repeat(v[..., None], 3, axis=2), rgb8, size=16)


def test_other_pil_modes():
    """Transparency (LA, premultiplied La, PA, RGBa, a transparent palette entry) composites onto
    white; mode I outside 16 bits and float images are refused; the rest convert as PIL does."""
    from PIL import Image
    white = np.full((6, 10, 3), 255, np.uint8)
    grey = np.full((6, 10, 3), 64, np.uint8)
    _same_as_8bit(Image.new("LA", (10, 6), (64, 0)), white, size=8)
    _same_as_8bit(Image.new("LA", (10, 6), (64, 255)), grey, size=8)
    _same_as_8bit(Image.new("La", (10, 6), (64, 255)), grey, size=8)
    _same_as_8bit(Image.new("RGBa", (10, 6), (64, 64, 64, 255)), grey, size=8)
    _same_as_8bit(Image.new("PA", (10, 6), (3, 0)), white, size=8)
    pal = Image.new("P", (10, 6), 3)
    pal.info["transparency"] = 3
    _same_as_8bit(pal, white, size=8)
    for mode, px in [("1", 1), ("L", 64), ("P", 64), ("CMYK", (0, 0, 0, 191)),
                     ("YCbCr", (64, 128, 128)), ("LAB", (50, 128, 128)), ("HSV", (0, 0, 64)),
                     ("RGBX", (64, 64, 64, 0))]:
        im = Image.new(mode, (10, 6), px)
        _same_as_8bit(im, np.asarray(im.convert("RGB")), size=8)
    with pytest.raises(ValueError, match=r"mode I with pixels in 0 \.\. 70000"):
        clip.preprocess(Image.fromarray(np.array([[0, 70000]], np.int32)))
    with pytest.raises(TypeError, match="mode F"):
        clip.preprocess(Image.new("F", (10, 6), 0.5))


def test_extreme_aspect_ratio_is_refused_before_resizing(tmp_path):
    """A 1 x 100000 PNG (a few hundred bytes) resized so its shorter side is 224 would be
    224 x 22 400 000 pixels (15 GB): refused, naming the resized size and the limit; a strip a
    hundred times longer than wide still works."""
    from PIL import Image
    f = tmp_path / "thin.png"
    Image.fromarray(np.zeros((1, 100000), np.uint8)).save(f)
    assert f.stat().st_size < 1000
    for image in (f, np.zeros((1, 100000, 3), np.uint8), np.zeros((100000, 1), np.uint8)):
        with pytest.raises(ValueError, match=r"22400000.*limit of 67,108,864"):
            clip.preprocess(image)
    assert clip.preprocess(np.zeros((30, 3000, 3), np.uint8)).shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match="limit"):
        clip.preprocess(np.zeros((8, 8, 3), np.uint8), size=10**6)


def test_pixel_limit_is_pils_and_checked_from_the_header(tmp_path, monkeypatch):
    """The limit is PIL.Image.MAX_IMAGE_PIXELS, read when called (lowered here so that a small
    file shows it); a file's size comes from its header, so the check precedes decoding."""
    from PIL import Image
    f = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(f)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.warns(Image.DecompressionBombWarning):       # PIL's own warning still fires
        opened = Image.open(f)
    for image in (f, opened, np.zeros((40, 50), np.uint8)):
        with pytest.raises(ValueError, match=r"50x40 = 2,000 pixels.*limit of 1,000"):
            clip.preprocess(image)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 999)       # PIL's own error: 2 x the limit
    with pytest.raises(ValueError, match="decompression bomb"):
        clip.preprocess(f)


@pytest.mark.parametrize("data, message", [
    (b"", "cannot read it as an image"), (b"not an image at all\n" * 5, "cannot read it"),
    ("truncated", "truncated or corrupt"), ("bad crc", "cannot read it as an image"),
])
def test_unreadable_files_name_the_file(tmp_path, data, message):
    from PIL import Image
    f = tmp_path / "x.png"
    Image.fromarray(np.arange(64 * 48 * 3, dtype=np.uint8).reshape(48, 64, 3)).save(f)
    raw = f.read_bytes()
    if data == "truncated":
        data = raw[:len(raw) // 2]
    elif data == "bad crc":
        data = raw[:29] + bytes([raw[29] ^ 0xFF]) + raw[30:]
    f.write_bytes(data)
    with pytest.raises(ValueError, match=message) as e:
        clip.preprocess(f)
    assert "x.png" in str(e.value)
    if data == raw[:len(raw) // 2]:                 # opened by the caller, decoded here
        with pytest.raises(ValueError, match="truncated or corrupt"):
            clip.preprocess(Image.open(f))


def test_directories_and_mean_std_are_checked(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        clip.preprocess(tmp_path)
    img = np.zeros((8, 8, 3), np.uint8)
    for kw in (dict(mean=(0.5,)), dict(std=(0.2, 0.0, 0.2)), dict(std=(float("nan"),) * 3),
               dict(mean="abc"), dict(std=(1, 1, float("inf")))):
        with pytest.raises(ValueError, match="mean|std"):
            clip.preprocess(img, **kw)


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


_REAL_TOKENIZER = (TOKENIZER_DIR / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("data", [
    b"", b"{", b"[]", b"{}", b"null", b'{"model": 1}', b'{"model": {"type": "BPE"}}',
    b'{"model": "\xff\xfe"}', b"[" * 100000 + b"]" * 100000, _REAL_TOKENIZER[:5000],
    _REAL_TOKENIZER[:-1], _REAL_TOKENIZER.decode().encode("utf-16"),
    b'{"version": "1.0", "model": {"type": "BPE", "vocab": {"<|endoftext|>": -1}, '
    b'"merges": []}}',
], ids=lambda d: repr(d[:12]))
def test_corrupt_tokenizer_json_names_the_file(tmp_path, data):
    """The tokenizers library raises a bare Exception (from Rust) on a bad file: it becomes a
    ValueError naming the file."""
    (tmp_path / "tokenizer.json").write_bytes(data)
    with pytest.raises(ValueError, match=r"tokenizer\.json: not a valid tokenizer file") as e:
        clip.load_tokenizer(tmp_path)
    assert str(tmp_path) in str(e.value)


@pytest.mark.parametrize("cfg, error, message", [
    (b"{", ValueError, "not valid JSON"), (b"[1, 2", ValueError, "not valid JSON"),
    (b"[]", ValueError, "a JSON object"), (b'{"pad_token": "\xff"}', ValueError, "UTF-8"),
])
def test_corrupt_tokenizer_config_names_the_file(tmp_path, cfg, error, message):
    (tmp_path / "tokenizer.json").write_bytes(_REAL_TOKENIZER)
    (tmp_path / "tokenizer_config.json").write_bytes(cfg)
    with pytest.raises(error, match=f"tokenizer_config.json: .*{message}"):
        clip.load_tokenizer(tmp_path)


def test_tokenizer_paths_and_context_length_are_checked(tmp_path):
    (tmp_path / "tokenizer.json").mkdir()
    with pytest.raises(IsADirectoryError, match="tokenizer.json"):
        clip.load_tokenizer(tmp_path)
    with pytest.raises(TypeError, match="path"):
        clip.load_tokenizer(None)
    tok = clip.load_tokenizer(TOKENIZER_DIR)
    # padding to 10^9 positions would allocate 8 GB per text
    with pytest.raises(ValueError, match="context_length.*65536"):
        clip.tokenize("a", tok, context_length=10**9)
    assert clip.tokenize("a", tok, context_length=65536).shape == (1, 65536)
    for texts in (b"a cat", None, 5):
        with pytest.raises(TypeError, match="texts must be a string"):
            clip.tokenize(texts, tok)

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
