"""Config checks of the four families, before anything is built from a config: sizes within
limits a real checkpoint never reaches (named in the message), every field's type, special token
ids inside the vocabulary, settings the engine does not implement; and the weights: float dtypes
only, and random float32 weights refused before they are allocated when they cannot fit."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

import pyworkloads as pw
from pyworkloads import io
from pyworkloads.models import common
from pyworkloads.models.clip import hf as clip_hf
from pyworkloads.models.llama2 import hf as llama_hf
from pyworkloads.models.sam import hf as sam_hf
from pyworkloads.models.sam.model import GAUSSIAN, GAUSSIAN_ALIAS
from pyworkloads.models.whisper import hf as whisper_hf

PARSERS = {"llama2": llama_hf.config_from_hf, "clip": clip_hf.config_from_hf,
           "sam": sam_hf.config_from_hf, "whisper": whisper_hf.config_from_hf}
PRESETS = {"llama2": "llama2-tiny", "clip": "clip-tiny", "sam": "sam-tiny",
           "whisper": "whisper-tiny-random"}


def base(family: str) -> dict:
    return json.loads(json.dumps(getattr(pw, family).PRESETS[PRESETS[family]].to_hf()))


def mutated(family: str, path: tuple, value) -> dict:
    d = base(family)
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return d


LAYER_FIELDS = [("llama2", ("num_hidden_layers",)),
                ("clip", ("text_config", "num_hidden_layers")),
                ("clip", ("vision_config", "num_hidden_layers")),
                ("sam", ("vision_config", "num_hidden_layers")),
                ("sam", ("mask_decoder_config", "num_hidden_layers")),
                ("sam", ("mask_decoder_config", "iou_head_depth")),
                ("sam", ("mask_decoder_config", "num_multimask_outputs")),
                ("whisper", ("encoder_layers",)), ("whisper", ("decoder_layers",))]


@pytest.mark.parametrize("family, path", LAYER_FIELDS)
def test_a_trillion_layers_is_refused_at_once_naming_the_limit(family, path):
    """Before: the weight layout was built for every layer (20 s, 3 GB, then MemoryError)."""
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=rf"{path[-1]} must be an integer <= 1000 \(no real"):
        PARSERS[family](mutated(family, path, 10 ** 12))
    assert time.perf_counter() - t0 < 0.5
    PARSERS[family](mutated(family, path, common.MAX_LAYERS))      # the limit itself is allowed


@pytest.mark.parametrize("family, path", LAYER_FIELDS)
@pytest.mark.parametrize("value", [0, -1])
def test_no_layers_is_refused(family, path, value):
    with pytest.raises(ValueError, match=rf"{path[-1]} must be an integer >= [12]"):
        PARSERS[family](mutated(family, path, value))


WIDTH_FIELDS = [("llama2", ("hidden_size",)), ("llama2", ("vocab_size",)),
                ("llama2", ("num_key_value_heads",)), ("llama2", ("head_dim",)),
                ("clip", ("text_config", "intermediate_size")), ("clip", ("projection_dim",)),
                ("clip", ("vision_config", "image_size")),
                ("sam", ("vision_config", "mlp_dim")),
                ("sam", ("prompt_encoder_config", "mask_input_channels")),
                ("sam", ("mask_decoder_config", "iou_head_hidden_dim")),
                ("whisper", ("d_model",)), ("whisper", ("num_mel_bins",))]


@pytest.mark.parametrize("family, path", WIDTH_FIELDS)
def test_widths_beyond_two_to_the_twenty_are_refused(family, path):
    with pytest.raises(ValueError, match=rf"{path[-1]} must be an integer <= 1048576 \(2\^20"):
        PARSERS[family](mutated(family, path, 2 ** 21))


@pytest.mark.parametrize("family, path", [("llama2", ("max_position_embeddings",)),
                                          ("whisper", ("max_target_positions",)),
                                          ("clip", ("text_config", "max_position_embeddings"))])
def test_context_lengths_beyond_two_to_the_twenty_four_are_refused(family, path):
    with pytest.raises(ValueError, match=rf"{path[-1]} must be an integer <= 16777216 \(2\^24"):
        PARSERS[family](mutated(family, path, 10 ** 12))


INT_FIELDS = LAYER_FIELDS + WIDTH_FIELDS


@pytest.mark.parametrize("family, path", INT_FIELDS)
@pytest.mark.parametrize("value", [[64], "64", 64.0, 2.5, True, {"a": 1}, float("nan"),
                                   pytest.param(10 ** 5000, id="10^5000")])
def test_integer_fields_refuse_every_other_type_naming_the_field(family, path, value):
    """Lists and objects are not hashable, so a check that looks them up in a set would fail
    with Python's "unhashable type"; bools and floats would pass for integers."""
    with pytest.raises((ValueError, TypeError), match=path[-1]) as exc:
        PARSERS[family](mutated(family, path, value))
    assert "unhashable" not in str(exc.value) and len(str(exc.value)) < 400


@pytest.mark.parametrize("family", ["llama2", "whisper"])
@pytest.mark.parametrize("value", ["x", "false", 0, 1, [True], {}])
def test_tie_word_embeddings_must_be_a_bool(family, value):
    """Before, a truthy string dropped the untied head silently."""
    with pytest.raises(ValueError, match="tie_word_embeddings must be true or false"):
        PARSERS[family](mutated(family, ("tie_word_embeddings",), value))


@pytest.mark.parametrize("family, path", [
    ("llama2", ("bos_token_id",)), ("llama2", ("eos_token_id",)),
    ("clip", ("text_config", "eos_token_id")), ("clip", ("text_config", "pad_token_id")),
    ("whisper", ("decoder_start_token_id",)), ("whisper", ("pad_token_id",))])
@pytest.mark.parametrize("value", ["x", 1.5, -1, 10 ** 12, [[1]], {}])
def test_special_token_ids_are_ids_inside_the_vocabulary(family, path, value):
    with pytest.raises(ValueError, match=path[-1]):
        PARSERS[family](mutated(family, path, value))


def test_llama_eos_lists_and_nulls():
    assert PARSERS["llama2"](mutated("llama2", ("eos_token_id",), [2, 5])).eos_ids == (2, 5)
    assert PARSERS["llama2"](mutated("llama2", ("eos_token_id",), None)).eos_ids == ()
    with pytest.raises(ValueError, match="non-empty list"):
        PARSERS["llama2"](mutated("llama2", ("eos_token_id",), []))


@pytest.mark.parametrize("path, value, message", [
    (("rope_parameters", "rope_theta"), "", "rope_theta must be a finite number"),
    (("rope_parameters", "rope_theta"), True, "rope_theta must be a finite number"),
    (("rope_parameters", "rope_theta"), [1e4], "rope_theta must be a finite number"),
    (("rope_parameters", "rope_theta"), 0, "rope_theta must be > 0"),
    (("rope_parameters", "rope_type"), True, "rope_type True, which is not implemented"),
    (("rope_parameters", "rope_type"), "", "rope_type '', which is not implemented"),
    (("rope_parameters", "rope_type"), "yarn", "rope_type 'yarn', which is not implemented"),
    (("rope_parameters",), [], "rope_parameters must be an object or null"),
    (("rope_parameters",), "x", "rope_parameters must be an object or null"),
])
def test_llama_rope_settings(path, value, message):
    """Before, '' or True were converted by float() (ValueError from Python, or 1.0) and an
    empty list or string meant "no scaling"."""
    with pytest.raises(ValueError, match=message):
        PARSERS["llama2"](mutated("llama2", path, value))


@pytest.mark.parametrize("factor", [True, float("inf"), 0, "2", None])
def test_llama_linear_rope_factor(factor):
    d = mutated("llama2", ("rope_parameters",), {"rope_type": "linear", "factor": factor,
                                                  "rope_theta": 1e4})
    with pytest.raises(ValueError, match="factor"):
        PARSERS["llama2"](d)
    d["rope_parameters"]["factor"] = 4
    assert PARSERS["llama2"](d).rope_scaling == {"rope_type": "linear", "factor": 4.0}


def test_whisper_config_edges():
    parse = PARSERS["whisper"]
    with pytest.raises(ValueError, match=r"eos_token_id must be an id or a non-empty list"):
        parse(mutated("whisper", ("eos_token_id",), []))                  # was IndexError
    with pytest.raises(ValueError, match="scale_embedding true .* is not implemented"):
        parse(mutated("whisper", ("scale_embedding",), True))
    with pytest.raises(ValueError, match="scale_embedding must be true or false"):
        parse(mutated("whisper", ("scale_embedding",), "no"))
    small = {**base("whisper"), "d_model": 2, "encoder_attention_heads": 1,
             "decoder_attention_heads": 1}
    with pytest.raises(ValueError, match="d_model must be even and >= 4"):  # was ZeroDivision
        parse(small)


@pytest.mark.parametrize("path, value, message", [
    (("mask_decoder_config", "attention_downsample_rate"), 64, "attention widths \\(32, 0, 16\\)"),
    (("vision_config", "global_attn_indexes"), 3, "global_attn_indexes must be a list"),
    (("vision_config", "global_attn_indexes"), [3], "global_attn_indexes must be an integer <= 2"),
    (("vision_config", "global_attn_indexes"), [-1], "global_attn_indexes must be an integer >= 0"),
    (("prompt_encoder_config", "num_point_embeddings"), 5, "num_point_embeddings must be 4"),
    (("vision_config", "window_size"), -1, "window_size must be an integer >= 0"),
])
def test_sam_config_edges(path, value, message):
    with pytest.raises(ValueError, match=message):
        PARSERS["sam"](mutated("sam", path, value))


def test_sam_mlp_dim_derived_from_a_huge_ratio_is_refused():
    d = mutated("sam", ("vision_config", "mlp_dim"), None)
    d["vision_config"]["mlp_ratio"] = 1e300
    with pytest.raises(ValueError, match=r"mlp_dim \(hidden_size \* mlp_ratio\) must .* \(2\^20"):
        PARSERS["sam"](d)


@pytest.mark.parametrize("value", ["bert", "", 1, ["clip"]])
def test_clip_refuses_another_model_type(value):
    with pytest.raises(ValueError, match="model_type .* expected 'clip'"):
        PARSERS["clip"](mutated("clip", ("model_type",), value))


@pytest.mark.parametrize("family", list(PARSERS))
def test_from_pretrained_checks_the_config_before_reading_weights(tmp_path, family):
    """A directory with a config of a trillion layers and no weights at all: the config is
    refused (in milliseconds) before the checkpoint is even looked for."""
    path = dict(LAYER_FIELDS)[family]
    (tmp_path / "config.json").write_text(json.dumps(mutated(family, path, 10 ** 12)))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=f"{path[-1]} must be an integer <= 1000"):
        getattr(pw, family).from_pretrained(tmp_path)
    assert time.perf_counter() - t0 < 0.5


def test_messages_stay_short_for_enormous_values():
    assert common.describe(10 ** 5000) == "an integer of 16610 bits"
    nested: list = []
    for _ in range(5000):
        nested = [nested]
    assert len(common.describe(nested)) < 40
    with pytest.raises(ValueError, match="an integer of 16610 bits"):
        common.check_int(10 ** 5000, "n", maximum=4)
    with pytest.raises(ValueError, match="eps must be a finite number"):
        common.check_number(10 ** 400, "eps")                 # beyond float: not OverflowError


# ---------------------------------------------------------------------------------------------
# weights: float dtypes only, on every path
# ---------------------------------------------------------------------------------------------
def _tiny(family):
    return getattr(pw, family).from_preset(PRESETS[family])


CLASSES = {"llama2": lambda c, w: pw.llama2.Llama2(c, w), "clip": lambda c, w: pw.clip.CLIP(c, w),
           "sam": lambda c, w: pw.sam.Sam(c, w), "whisper": lambda c, w: pw.whisper.Whisper(c, w)}


@pytest.mark.parametrize("family", list(PARSERS))
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_])
def test_integer_and_bool_weights_are_refused_in_memory(family, dtype):
    m = _tiny(family)
    name = sorted(m.weights)[0]
    weights = {**m.weights, name: np.zeros(m.weights[name].shape, dtype)}
    with pytest.raises(TypeError, match=f"{name}' is stored as"):
        CLASSES[family](m.config, weights)


@pytest.mark.parametrize("family", list(PARSERS))
@pytest.mark.parametrize("dtype", [np.int32, np.bool_])
def test_integer_and_bool_weights_are_refused_from_a_checkpoint(tmp_path, family, dtype):
    m = _tiny(family)
    name = sorted(m.weights)[-1]
    weights = {**m.weights, name: np.zeros(m.weights[name].shape, dtype)}
    io.save_safetensors(tmp_path / "model.safetensors", weights)
    (tmp_path / "config.json").write_text(json.dumps(m.config.to_hf()))
    code = {np.int32: "I32", np.bool_: "BOOL"}[dtype]
    with pytest.raises(TypeError, match=f"{name}' is stored as {code}"):
        getattr(pw, family).from_pretrained(tmp_path)


def test_sam_gaussian_stored_under_its_alias_is_dtype_checked(tmp_path):
    m = _tiny("sam")
    weights = dict(m.weights)
    weights[GAUSSIAN_ALIAS] = weights.pop(GAUSSIAN).astype(np.int64)
    io.save_safetensors(tmp_path / "model.safetensors", weights)
    (tmp_path / "config.json").write_text(json.dumps(m.config.to_hf()))
    with pytest.raises(TypeError, match=f"{GAUSSIAN}' is stored as I64"):
        pw.sam.from_pretrained(tmp_path)
    with pytest.raises(TypeError, match=f"{GAUSSIAN}' is stored as int64"):
        pw.sam.Sam(m.config, weights)
    weights[GAUSSIAN_ALIAS] = weights[GAUSSIAN_ALIAS].astype(np.float32)   # the alias works
    assert pw.sam.Sam(m.config, weights).weights[GAUSSIAN].dtype == np.float32


# ---------------------------------------------------------------------------------------------
# random weights: refused before they are allocated when they cannot fit
# ---------------------------------------------------------------------------------------------
RANDOM = {"llama2": pw.llama2.api.random_weights, "clip": pw.clip.api.random_weights,
          "sam": pw.sam.api.init_weights, "whisper": pw.whisper.api.random_weights}


@pytest.mark.parametrize("family", list(PARSERS))
def test_random_weights_check_memory_before_allocating(monkeypatch, family):
    """Not only from_preset: every function that makes random weights asks check_fits first."""
    monkeypatch.setattr("pyworkloads.models.available_memory", lambda: 1 << 16)    # 64 KiB
    config = getattr(pw, family).PRESETS[PRESETS[family]]
    with pytest.raises(MemoryError, match="random float32 weights need"):
        RANDOM[family](config)
    with pytest.raises(MemoryError, match=PRESETS[family]):
        getattr(pw, family).from_preset(PRESETS[family])


def test_llama_from_preset_with_a_config_at_the_limits_is_refused_by_memory_not_built():
    """The largest config the checks allow (1000 layers of width 2^20) is counted, not built:
    check_fits refuses it in well under a second."""
    c = pw.llama2.Config(hidden_size=2 ** 20, intermediate_size=2 ** 20, num_hidden_layers=1000,
                         num_attention_heads=2 ** 10, vocab_size=2 ** 20)
    t0 = time.perf_counter()
    with pytest.raises(MemoryError, match="random float32 weights need"):
        pw.llama2.from_preset(c)
    assert time.perf_counter() - t0 < 1.0
