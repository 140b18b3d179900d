"""CLIP: configs and parameter counts, parity with transformers' CLIPModel (live on tiny random
configs, and against the committed fixture without torch), input validation, profiling scopes,
backends and the command-line hooks."""
from __future__ import annotations

import importlib.util
import inspect
import json
import shutil

import numpy as np
import pytest
from conftest import FIXTURES, require_transformers

import pyworkloads as pw
from pyworkloads.models import clip

FIXTURE = FIXTURES / "clip"
# Against transformers, both sides in float32 with different summation orders: each output ends a
# chain of <= 3 blocks and a projection, with dot products of length <= 80 (each off by at most
# gamma(80) ~ 5e-6 of the magnitudes it sums), on outputs of size <= ~10 (logits: exp(2) * cosine).
# The fixture's differences are ~1.5e-6; 1e-4 leaves room for other BLAS builds and deeper configs.
TOL = 1e-4


def _fixture_tools():
    """tests/fixtures/make_clip_fixture.py (tiny tokenizer, randomised HF model builders)."""
    spec = importlib.util.spec_from_file_location("make_clip_fixture",
                                                  FIXTURES / "make_clip_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fixture_model():
    return clip.from_pretrained(FIXTURE)


@pytest.fixture(scope="module")
def expected():
    return pw.io.load_safetensors(FIXTURE / "expected.safetensors")


# ---------------------------------------------------------------------------------------------
# configs and parameter counts
# ---------------------------------------------------------------------------------------------
def test_vit_b_32_parameter_count():
    # the count transformers reports for openai/clip-vit-base-patch32
    assert clip.count_params(clip.PRESETS["clip-vit-b-32"]) == 151_277_313


def test_preset_names():
    assert {"clip-vit-b-32", "clip-vit-b-16", "clip-vit-l-14", "clip-vit-l-14-336", "clip-vit-h-14",
            "clip-vit-g-14"} <= set(clip.PRESETS)
    assert clip.PRESETS["clip-vit-b-32"].vision_config.hidden_act == "quick_gelu"
    assert clip.PRESETS["clip-vit-h-14"].vision_config.hidden_act == "gelu"


@pytest.mark.parametrize("name", sorted(clip.PRESETS))
def test_count_params_equals_transformers(name):
    torch, transformers = require_transformers()
    cfg = clip.PRESETS[name]
    hf = transformers.CLIPConfig(**{k: v for k, v in cfg.to_hf().items()
                                    if k not in ("model_type", "architectures")})
    with torch.device("meta"):                                  # shapes only, no memory
        model = transformers.CLIPModel(hf)
    assert clip.count_params(cfg) == sum(p.numel() for p in model.parameters())
    assert set(clip.weight_shapes(cfg)) == set(model.state_dict())


def test_config_from_hf_fixture():
    cfg = clip.Config.from_hf(json.loads((FIXTURE / "config.json").read_text()))
    assert cfg.text_config.hidden_size == 32 and cfg.vision_config.hidden_size == 48
    assert cfg.projection_dim == 24 and cfg.text_config.eos_token_id == 572
    assert clip.Config.from_hf(cfg.to_hf()) == cfg


@pytest.mark.parametrize("bad, match", [
    ({"vision_config": {}}, "text_config"),
    ({"text_config": {"hidden_size": 30, "num_attention_heads": 4}, "vision_config": {}},
     "divisible"),
    ({"text_config": {}, "vision_config": {"hidden_act": "swiglu"}}, "hidden_act"),
    ({"text_config": {}, "vision_config": {}, "projection_dim": 0}, "projection_dim"),
    ({"text_config": {}, "vision_config": {"patch_size": 300}}, "patch_size"),
])
def test_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        clip.Config.from_hf(bad)


# ---------------------------------------------------------------------------------------------
# parity with the committed transformers outputs (no torch needed)
# ---------------------------------------------------------------------------------------------
def test_fixture_parity(fixture_model, expected):
    m = fixture_model
    px, ids = expected["pixel_values"], expected["input_ids"]
    np.testing.assert_allclose(m.get_image_features(px), expected["image_features"],
                               rtol=0, atol=TOL)
    np.testing.assert_allclose(m.get_text_features(ids), expected["text_features"],
                               rtol=0, atol=TOL)
    out = m(input_ids=ids, pixel_values=px)
    np.testing.assert_allclose(out.logits_per_image, expected["logits_per_image"], rtol=0, atol=TOL)
    np.testing.assert_allclose(out.logits_per_text, expected["logits_per_image"].T,
                               rtol=0, atol=TOL)
    np.testing.assert_allclose(out.image_embeds, expected["image_embeds"], rtol=0, atol=TOL)
    np.testing.assert_allclose(out.text_embeds, expected["text_embeds"], rtol=0, atol=TOL)
    assert out.logits_per_image.dtype == np.float32
    # the fixture is not degenerate: texts and images are told apart
    assert np.ptp(expected["logits_per_image"], axis=1).min() > 0.1


def test_fixture_tokenizer_and_preprocessing(fixture_model, expected):
    texts = json.loads(expected.metadata["texts"])
    np.testing.assert_array_equal(fixture_model.tokenize(texts), expected["input_ids"])
    pytest.importorskip("matplotlib", reason="the sample photograph ships with matplotlib")
    photo, rgba = _fixture_tools().sample_images()
    np.testing.assert_allclose(fixture_model.preprocess([photo, rgba]), expected["pixel_values"],
                               rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# live parity with transformers on tiny random configs
# ---------------------------------------------------------------------------------------------
LIVE_CONFIGS = {
    "quick_gelu-32px-patch8": dict(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=12, hidden_act="quick_gelu",
                         bos_token_id=97, eos_token_id=98),
        vision_config=dict(hidden_size=40, intermediate_size=72, num_hidden_layers=2,
                           num_attention_heads=5, image_size=32, patch_size=8,
                           hidden_act="quick_gelu"),
        projection_dim=16),
    "gelu-64px-patch16": dict(
        text_config=dict(vocab_size=120, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                         num_attention_heads=3, max_position_embeddings=10, hidden_act="gelu",
                         bos_token_id=118, eos_token_id=119),
        vision_config=dict(hidden_size=36, intermediate_size=60, num_hidden_layers=2,
                           num_attention_heads=6, image_size=64, patch_size=16, hidden_act="gelu"),
        projection_dim=20),
    # OpenAI's hub configs: eos_token_id 2 -> pool at argmax(ids)
    "legacy-eos2-48px-patch12": dict(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=9, hidden_act="quick_gelu",
                         bos_token_id=62, eos_token_id=2),
        vision_config=dict(hidden_size=24, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=48, patch_size=12,
                           hidden_act="quick_gelu"),
        projection_dim=8),
}


def _save_pretrained(model, path):
    params = inspect.signature(model.save_pretrained).parameters
    kw = {"safe_serialization": True} if "safe_serialization" in params else {}
    model.save_pretrained(path, **kw)
    assert list(path.glob("*.safetensors")) and not list(path.glob("*.bin"))


def _random_ids(rng, n, T, bos, eot, lengths):
    """Rows <bos> w... <eot> padded with <eot> (CLIP's tokenizer output); words avoid bos/eot."""
    ids = np.full((n, T), eot, dtype=np.int64)
    for i, L in enumerate(lengths):
        ids[i, 0] = bos
        ids[i, 1:L - 1] = rng.integers(3, min(bos, eot if eot > 2 else bos), size=L - 2)
        ids[i, L - 1] = eot
    return ids


@pytest.fixture(scope="module", params=sorted(LIVE_CONFIGS))
def live(request, tmp_path_factory):
    torch, transformers = require_transformers()
    cfg = LIVE_CONFIGS[request.param]
    hf = _fixture_tools().build_hf_clip(cfg, seed=1)
    path = tmp_path_factory.mktemp(request.param)
    _save_pretrained(hf, path)
    return hf, clip.from_pretrained(path), cfg


def test_live_parity(live):
    import torch
    hf, m, cfg = live
    t, v = cfg["text_config"], cfg["vision_config"]
    rng = np.random.default_rng(3)
    px = rng.standard_normal((3, 3, v["image_size"], v["image_size"]), dtype=np.float32)
    # legacy eos_token_id 2: the end-of-text token is the largest id
    eot = t["vocab_size"] - 1 if t["eos_token_id"] == 2 else t["eos_token_id"]
    ids = _random_ids(rng, 4, t["max_position_embeddings"], t["bos_token_id"], eot,
                      [t["max_position_embeddings"], 3, 5, t["max_position_embeddings"] - 1])
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(px))
        ref_img = hf.get_image_features(pixel_values=torch.from_numpy(px))
        ref_txt = hf.get_text_features(input_ids=torch.from_numpy(ids))
    # transformers 5 returns an output object
    ref_img = getattr(ref_img, "pooler_output", ref_img).numpy()
    ref_txt = getattr(ref_txt, "pooler_output", ref_txt).numpy()
    np.testing.assert_allclose(m.get_image_features(px), ref_img, rtol=0, atol=TOL)
    np.testing.assert_allclose(m.get_text_features(ids), ref_txt, rtol=0, atol=TOL)
    out = m(input_ids=ids, pixel_values=px)
    np.testing.assert_allclose(out.logits_per_image, ref.logits_per_image.numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(out.logits_per_text, ref.logits_per_text.numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(np.linalg.norm(out.text_embeds, axis=1), 1, atol=1e-6)
    assert np.ptp(ref.logits_per_image.numpy()) > 0.1                # a test that can fail


def test_live_parity_with_attention_mask(live):
    """Padding with a non-end token under attention_mask=0: the padded keys are hidden (also for the
    padding queries themselves, whose outputs are never pooled)."""
    import torch
    hf, m, cfg = live
    t = cfg["text_config"]
    T = t["max_position_embeddings"]
    eot = t["vocab_size"] - 1 if t["eos_token_id"] == 2 else t["eos_token_id"]
    ids = _random_ids(np.random.default_rng(5), 3, T, t["bos_token_id"], eot, [T, 4, 6])
    mask = (np.arange(T)[None] < np.array([T, 4, 6])[:, None]).astype(np.int64)
    ids[mask == 0] = 1                                               # pad with an ordinary token
    with torch.no_grad():
        ref = hf.get_text_features(input_ids=torch.from_numpy(ids),
                                   attention_mask=torch.from_numpy(mask))
    ref = getattr(ref, "pooler_output", ref).numpy()
    np.testing.assert_allclose(m.get_text_features(ids, attention_mask=mask), ref, rtol=0, atol=TOL)


def test_legacy_and_modern_pooling_rules():
    ids = np.array([[5, 7, 9, 2, 9, 9], [5, 9, 1, 2, 9, 2]])
    np.testing.assert_array_equal(clip.pool_positions(ids, 9), [2, 1])   # first eos
    np.testing.assert_array_equal(clip.pool_positions(ids, 2), [2, 1])   # legacy: first argmax
    with pytest.raises(ValueError, match="no end-of-text token"):
        clip.pool_positions(ids, 7)


def test_forward_functions_are_what_the_model_runs(fixture_model, expected):
    """The pure functions of model.py, called with the tower configs, give the CLIP class's
    outputs bit for bit (they are what it runs after checking the inputs)."""
    m, cfg = fixture_model, fixture_model.config
    px, ids = expected["pixel_values"], expected["input_ids"]
    img = clip.image_features(px, m.weights, cfg.vision_config)                 # [2, 24]
    txt = clip.text_features(ids, m.weights, cfg.text_config)                   # [4, 24]
    np.testing.assert_array_equal(img, m.get_image_features(px))
    np.testing.assert_array_equal(txt, m.get_text_features(ids))
    per_image, per_text = clip.similarity(img, txt, m.weights["logit_scale"])
    out = m(input_ids=ids, pixel_values=px)
    assert per_image.shape == (2, 4) and per_text.shape == (4, 2)
    np.testing.assert_array_equal(per_image, out.logits_per_image)
    np.testing.assert_array_equal(per_text, per_image.T)
    np.testing.assert_array_equal(clip.l2_normalize(img), out.image_embeds)
    pooled = clip.vision_model(px, m.weights, cfg.vision_config)                # [2, 48]
    assert pooled.shape == (2, 48)
    np.testing.assert_array_equal(clip.vision_forward(px, m.weights, cfg.vision_config), pooled)
    np.testing.assert_array_equal(clip.text_forward(ids, m.weights, cfg.text_config),
                                  clip.text_model(ids, m.weights, cfg.text_config))


def test_tower_configs_check_their_fields():
    assert clip.TextConfig().hidden_act == clip.VisionConfig().hidden_act == clip.QUICK_GELU
    with pytest.raises(ValueError, match="text_config.num_hidden_layers must be an integer >= 1"):
        clip.TextConfig(num_hidden_layers=0)
    with pytest.raises(ValueError, match="vision_config.image_size must be an integer"):
        clip.VisionConfig(image_size=224.0)
    with pytest.raises(ValueError, match="projection_dim"):
        clip.Config(projection_dim=True)
    with pytest.raises(TypeError, match="config must be a dict"):
        clip.Config.from_hf([("text_config", {})])


def test_random_weights_layer_norms_start_at_identity():
    w = clip.random_weights(clip.PRESETS["clip-tiny"], seed=0)
    for name in ("vision_model.pre_layrnorm", "vision_model.post_layernorm",
                 "vision_model.encoder.layers.1.layer_norm2", "text_model.final_layer_norm"):
        np.testing.assert_array_equal(w[f"{name}.weight"], 1)
        np.testing.assert_array_equal(w[f"{name}.bias"], 0)
    assert w["logit_scale"] == np.float32(clip.PRESETS["clip-tiny"].logit_scale_init_value)


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------
def test_wrong_image_size(fixture_model):
    with pytest.raises(ValueError, match=r"pixel_values must be \[B, 3, 32, 32\].*image_size=32"):
        fixture_model.get_image_features(np.zeros((1, 3, 40, 40), np.float32))
    with pytest.raises(ValueError, match="pixel_values"):
        fixture_model.get_image_features(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(TypeError, match="float"):
        fixture_model.get_image_features(np.zeros((1, 3, 32, 32), np.uint8))


def test_ids_beyond_vocabulary(fixture_model):
    with pytest.raises(ValueError,
                       match=r"input_ids contains id 573, outside the vocabulary \[0, 573\)"):
        fixture_model.get_text_features(np.array([[571, 573, 572]]))
    with pytest.raises(ValueError, match="input_ids contains id -1, outside the vocabulary"):
        fixture_model.get_text_features(np.array([[571, -1, 572]]))
    with pytest.raises(TypeError, match="input_ids must have an integer dtype"):
        fixture_model.get_text_features(np.array([[571.0, 572.0]]))


def test_texts_over_context(fixture_model):
    long_text = "a photo of a cat " * 10
    with pytest.raises(ValueError,
                       match=r"texts\[1\] is \d+ tokens long.*context length 16.*truncate=True"):
        fixture_model.tokenize(["a cat", long_text])
    ids = fixture_model.tokenize(["a cat", long_text], truncate=True)
    assert ids.shape == (2, 16) and ids[1, -1] == 572
    with pytest.raises(ValueError, match="more than the context length 16"):
        fixture_model.get_text_features(np.full((1, 17), 572))


def test_bad_call_arguments(fixture_model):
    with pytest.raises(ValueError, match="both input_ids and pixel_values"):
        fixture_model(input_ids=np.array([[571, 572]]))
    with pytest.raises(ValueError, match="attention_mask"):
        fixture_model.get_text_features(np.array([[571, 572]]),
                                        attention_mask=np.array([[1, 1, 1]]))


def test_checkpoint_validation(tmp_path):
    for f in FIXTURE.iterdir():
        shutil.copy(f, tmp_path / f.name)
    w = dict(pw.io.load_safetensors(FIXTURE / "model.safetensors"))
    w.pop("text_projection.weight")
    pw.io.save_safetensors(tmp_path / "model.safetensors", w)
    with pytest.raises(ValueError, match=r"lack 1 tensor\(s\) .*'text_projection.weight'"):
        clip.from_pretrained(tmp_path)
    w["text_projection.weight"] = np.zeros((24, 33), np.float32)
    pw.io.save_safetensors(tmp_path / "model.safetensors", w)
    with pytest.raises(ValueError,
                       match=r"'text_projection.weight' has shape \(24, 33\).*\(24, 32\)"):
        clip.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------
# zero-shot, profiling, backends, command line
# ---------------------------------------------------------------------------------------------
def test_zero_shot(fixture_model, expected):
    m = fixture_model
    labels = ["cat", "dog", "grace hopper"]
    probs = m.zero_shot(expected["pixel_values"], labels)
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)
    logits = m(input_ids=m.tokenize([f"a photo of a {lb}." for lb in labels]),
               pixel_values=expected["pixel_values"]).logits_per_image
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(TypeError, match="labels"):
        m.zero_shot(expected["pixel_values"], "cat")
    with pytest.raises(ValueError, match="template"):
        m.zero_shot(expected["pixel_values"], labels, template="a photo")


def test_profile_scopes_follow_hf_names(fixture_model, expected):
    with pw.profile() as prof:
        fixture_model(input_ids=expected["input_ids"], pixel_values=expected["pixel_values"])
    names = {r.name for r in prof.records}
    for name in ("vision_model.embeddings", "vision_model.pre_layrnorm",
                 "vision_model.encoder.layers.1.self_attn", "vision_model.encoder.layers.0.mlp",
                 "vision_model.encoder.layers.0.layer_norm1", "vision_model.post_layernorm",
                 "visual_projection", "text_model.encoder.layers.1.self_attn",
                 "text_model.encoder.layers.1.mlp", "text_model.final_layer_norm",
                 "text_projection", "logit_scale"):
        assert name in names, name
    weights = set(clip.weight_shapes(fixture_model.config))
    for n in names:                           # every scope names a module or tensor it uses
        assert any(w == n or w.startswith(n + ".") for w in weights), n
    att = [r for r in prof.records if r.op == "attention" and r.name.startswith("text_model")]
    assert len(att) == 2 and att[0].shapes[0] == (4, 4, 16, 8)


@pytest.mark.skipif("cpp" not in pw.kernels.available(),
                    reason=f"cpp backend not available: {pw.kernels.unavailable_reason('cpp')}")
def test_cpp_backend_matches_numpy(fixture_model, expected):
    px, ids = expected["pixel_values"], expected["input_ids"]
    ref = fixture_model(input_ids=ids, pixel_values=px)
    with pw.use_backend("cpp"):
        out = fixture_model(input_ids=ids, pixel_values=px)
    np.testing.assert_allclose(out.logits_per_image, ref.logits_per_image, rtol=0, atol=1e-4)
    np.testing.assert_allclose(out.image_embeds, ref.image_embeds, rtol=0, atol=1e-4)
    np.testing.assert_allclose(out.text_embeds, ref.text_embeds, rtol=0, atol=1e-4)


def test_from_preset_and_demo():
    m = clip.from_preset("clip-tiny", seed=0)
    assert m.tokenizer is None
    with pytest.raises(ValueError, match="no tokenizer"):
        m.tokenize("a cat")
    with pytest.raises(ValueError, match="unknown CLIP preset"):
        clip.from_preset("clip-vit-b-33")
    line = clip.demo()
    assert "clip-tiny" in line and "(2, 3)" in line


def test_cli_run_prints_ranked_probabilities(tmp_path, capsys):
    from PIL import Image

    from pyworkloads import cli
    img = tmp_path / "x.png"
    pixels = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(img)
    rc = cli.main(["run", "clip", "--model", str(FIXTURE), "--image", str(img),
                   "--labels", "a cat, a dog,grace hopper"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and out[0] == str(img) and len(out) == 4
    pct = [float(line.split("%")[0]) for line in out[1:]]
    assert pct == sorted(pct, reverse=True) and abs(sum(pct) - 100) < 0.1
    labels = {line.split("%", 1)[1].strip() for line in out[1:]}
    assert labels == {"a cat", "a dog", "grace hopper"}
    probs = clip.from_pretrained(FIXTURE).zero_shot(str(img), ["a cat", "a dog", "grace hopper"],
                                                    template="{}")
    assert abs(pct[0] - 100 * probs.max()) < 0.01
