"""LLaMA from GGUF files: the config and tensor names read from the metadata, the tokenizer
against transformers' own GGUF conversion for both vocabulary styles, and logits and greedy
tokens against transformers loading the same file (``gguf_file=``), float32 and quantized.

Every file is written here with gguf.GGUFWriter: tiny LLaMA configs, random weights, quantized
tensors from gguf.quants.quantize (Q8_0, Q4_0, Q4_1) or random valid blocks (Q4_K, Q6_K)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_transformers  # tests/ is on sys.path (rootdir conftest)

from pyworkloads import gguf_io, kernels, quant
from pyworkloads.models import llama2
from pyworkloads.models.llama2 import gguf as lg

gguf = pytest.importorskip("gguf", reason="GGUF files are written with the gguf package")
T = gguf.GGMLQuantizationType
ROOT = Path(__file__).resolve().parents[2]
# both sides compute in float32 from the same stored (or decoded) values: see
# test_llama2_parity.PARITY
PARITY = 1e-4

# ---------------------------------------------------------------------------------------------
# vocabularies, trained on the spot by the tokenizers library
# ---------------------------------------------------------------------------------------------
CORPUS = [
    "the quick brown fox jumps over the lazy dog", "The theory of the thing is that they think",
    "numbers 12 123 2024 3.14159 and 1,000,000", "héllo wörld, naïve café, déjà vu",
    "tabs\tand\nnew lines\n\n and   runs   of spaces", "hello hello hello world world",
    "another another another sentence about the weather and the sea",
]
TEST_STRINGS = [
    "Hello world", "the theory of everything", "  two leading spaces", "trailing  ",
    "tabs\tand\nnewlines\n\n", "digits 1234567 and 3.14", "héllo wörld — naïve café",
    "emoji 🤖 and 日本語 need byte fallback", "control \x00\x07 bytes", "",
    " ", "multiple   spaces   here", "<s>inline special</s>", "a <tool> token",
]
SPM_SPECIALS = ["<unk>", "<s>", "</s>"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]


def spm_vocab():
    """SentencePiece style: <unk> <s> </s>, the 256 byte tokens, then pieces with "▁" for a space,
    scored by rank (a BPE trained with a Metaspace pre-tokenizer gives the pieces); one
    user-defined token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=220, show_progress=False))
    pieces = [p for p, _ in sorted(t.get_vocab().items(), key=lambda kv: kv[1])]
    tokens = SPM_SPECIALS + BYTES + pieces + ["<tool>"]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces) + [4]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))] + [0.0]
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0}


def bpe_vocab(pre="llama-bpe"):
    """Byte-level BPE (LLaMA 3 style): tokens in GPT-2's byte alphabet, merges, control tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=420, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    import json
    model = json.loads(t.to_str())["model"]
    tokens = [p for p, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.token_type": [3 if p in specials else 1 for p in tokens],
            "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1,
            "tokenizer.ggml.add_bos_token": True}


# ---------------------------------------------------------------------------------------------
# tiny LLaMA GGUF files
# ---------------------------------------------------------------------------------------------
# fp16 scale ranges of the random K-quant blocks, for weights of ~0.03 (Q4_K: (d·sc)·q - dmin·mn
# with sc, mn, q up to 63, 63, 15; Q6_K: (d·sc)·(q - 32) with |sc| up to 128)
K_SCALES = {"Q4_K": ((0, 2), 2e-5, 1e-4), "Q6_K": ((208,), 5e-6, 2e-5)}


def encode(rng, qtype: str, w: np.ndarray):
    """(what GGUFWriter is given, the float32 values the file then holds) for weights w."""
    if qtype == "F32":
        return w, w
    if qtype == "F16":
        return w.astype(np.float16), w.astype(np.float16).astype(np.float32)
    if qtype in K_SCALES:
        block, size = quant.BLOCKS[qtype]
        fields, lo, hi = K_SCALES[qtype]
        b = rng.integers(0, 256, (w.size // block, size), dtype=np.uint8)
        for at in fields:
            b[:, at:at + 2] = rng.uniform(lo, hi, len(b)).astype(np.float16).view(
                np.uint8).reshape(-1, 2)
        data = b.reshape(*w.shape[:-1], -1)
    else:
        data = gguf.quants.quantize(w, T[qtype])             # Q8_0, Q4_0, Q4_1, BF16
    return data, gguf.quants.dequantize(data, T[qtype])


def write_llama(path, *, D=32, F=48, L=2, H=4, KVH=2, vocab=None, types=None, tied=False,
                seed=0, std=0.15, drop=(), extra_kv=None, extra_tensors=()):
    """A LLaMA GGUF as llama.cpp's converter lays it out -> {gguf name: float32 values held}.

    ``types``: GGUF name (or layer-free suffix like "attn_q") -> ggml type; F32 otherwise.
    ``drop``: metadata keys to leave out; ``extra_kv``: keys to add or override."""
    vocab = spm_vocab() if vocab is None else vocab
    V = len(vocab["tokenizer.ggml.tokens"])
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    kv = {"llama.context_length": 128, "llama.embedding_length": D, "llama.block_count": L,
          "llama.feed_forward_length": F, "llama.attention.head_count": H,
          "llama.attention.head_count_kv": KVH, "llama.rope.freq_base": 10000.0,
          "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.dimension_count": D // H,
          **vocab, **(extra_kv or {})}
    for key, value in kv.items():
        if key in drop:
            continue
        if isinstance(value, list):
            w.add_array(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_string(key, value)
    Dh = D // H
    shapes = {"token_embd.weight": (V, D)}
    for i in range(L):
        shapes.update({f"blk.{i}.attn_norm.weight": (D,), f"blk.{i}.attn_q.weight": (H * Dh, D),
                       f"blk.{i}.attn_k.weight": (KVH * Dh, D),
                       f"blk.{i}.attn_v.weight": (KVH * Dh, D),
                       f"blk.{i}.attn_output.weight": (D, H * Dh),
                       f"blk.{i}.ffn_norm.weight": (D,), f"blk.{i}.ffn_gate.weight": (F, D),
                       f"blk.{i}.ffn_up.weight": (F, D), f"blk.{i}.ffn_down.weight": (D, F)})
    shapes["output_norm.weight"] = (D,)
    if not tied:
        shapes["output.weight"] = (V, D)
    shapes.update(dict(extra_tensors))
    held = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            x = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)       # norms near 1
        else:
            x = (std * rng.standard_normal(shape)).astype(np.float32)
        kind = (types or {}).get(name, (types or {}).get(name.split(".")[-2], "F32"))
        data, held[name] = encode(rng, kind, x)
        w.add_tensor(name, data, raw_dtype=None if kind in ("F32", "F16") else T[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def hf_weights(held: dict) -> dict:
    """The float32 weights under Hugging Face names (rows as stored: interleaved q/k)."""
    return {lg.hf_name(k): v for k, v in held.items()}


def _reference(path):
    """transformers loading the same file: it dequantizes to float32 and un-permutes q/k."""
    torch, transformers = require_transformers()
    pytest.importorskip("accelerate", reason="transformers loads GGUF files only with accelerate "
                        "installed (pip install accelerate)", exc_type=ImportError)
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def _logits(ref, ids):
    import torch
    with torch.no_grad():
        return ref(torch.from_numpy(ids)).logits.numpy()


def _greedy(ref, ids, n):
    import torch
    t = torch.from_numpy(ids)
    with torch.no_grad():
        return ref.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=n,
                            do_sample=False, eos_token_id=None, pad_token_id=0).numpy()


# ---------------------------------------------------------------------------------------------
# config and names
# ---------------------------------------------------------------------------------------------
def test_config_from_metadata(tmp_path):
    write_llama(tmp_path / "m.gguf", D=48, F=80, L=3, H=6, KVH=2,
                extra_kv={"llama.rope.freq_base": 500000.0, "llama.context_length": 96})
    ckpt = gguf_io.load_gguf(tmp_path / "m.gguf")
    c = lg.config_from_gguf(ckpt)
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (48, 80, 3)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (6, 2, 8)
    assert c.vocab_size == len(ckpt.metadata["tokenizer.ggml.tokens"])
    assert c.max_position_embeddings == 96 and c.rope_theta == 500000.0
    assert c.rms_norm_eps == float(np.float32(1e-5))          # the stored float32, exactly
    assert (c.bos_token_id, c.eos_token_id) == (1, 2)
    assert c.rope_scaling is None and not c.tie_word_embeddings
    # the metadata alone: no tensor names, so the head is taken as untied
    assert lg.config_from_gguf(ckpt.metadata) == c


def test_tied_head_and_vocab_size_key(tmp_path):
    path = tmp_path / "t.gguf"
    write_llama(path, tied=True)
    m = llama2.from_pretrained(path)
    assert m.config.tie_word_embeddings and "lm_head.weight" not in m.weights
    md = dict(m.weights.checkpoint.metadata)
    md["llama.vocab_size"] = 1000
    assert lg.config_from_gguf(md).vocab_size == 1000
    del md["tokenizer.ggml.tokens"], md["llama.vocab_size"]
    with pytest.raises(ValueError, match="lacks llama.vocab_size and tokenizer.ggml.tokens"):
        lg.config_from_gguf(md)


def test_rope_scaling(tmp_path):
    base = {"general.architecture": "llama", "llama.context_length": 64,
            "llama.embedding_length": 32, "llama.block_count": 1,
            "llama.feed_forward_length": 64, "llama.attention.head_count": 4,
            "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": 10}
    c = lg.config_from_gguf({**base, "llama.rope.scaling.type": "linear",
                             "llama.rope.scaling.factor": 4.0})
    assert c.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    assert lg.config_from_gguf({**base, "llama.rope.scale_linear": 2.0}).rope_scaling == {
        "rope_type": "linear", "factor": 2.0}
    assert lg.config_from_gguf({**base, "llama.rope.scaling.type": "none"}).rope_scaling is None
    with pytest.raises(ValueError, match="rope.scaling.type is 'yarn', which is not implemented"):
        lg.config_from_gguf({**base, "llama.rope.scaling.type": "yarn"})
    with pytest.raises(ValueError, match="llama.rope.scaling.factor is missing"):
        lg.config_from_gguf({**base, "llama.rope.scaling.type": "linear"})
    c = lg.config_from_gguf({**base, "llama.attention.head_count_kv": 2})
    assert c.num_key_value_heads == 2 and c.head_dim == 8 and c.bos_token_id is None


@pytest.mark.parametrize("key", ["llama.context_length", "llama.embedding_length",
                                 "llama.block_count", "llama.feed_forward_length",
                                 "llama.attention.head_count",
                                 "llama.attention.layer_norm_rms_epsilon"])
def test_missing_metadata_is_named(tmp_path, key):
    path = tmp_path / "m.gguf"
    write_llama(path, drop=(key,))
    with pytest.raises(ValueError, match=rf"{path}: GGUF metadata lacks {key}"):
        llama2.from_pretrained(path)


@pytest.mark.parametrize("extra, match", [
    ({"llama.expert_count": 8}, "mixture-of-experts"),
    ({"llama.block_count": "two"}, "llama.block_count must be an integer"),
    ({"llama.rope.dimension_count": 4}, "partial rotary"),
    ({"tokenizer.ggml.model": "t5"}, "tokenizer.ggml.model is 't5'"),
    ({"tokenizer.ggml.bos_token_id": 100000}, "bos_token_id is 100000, outside"),
])
def test_unsupported_metadata_is_refused(tmp_path, extra, match):
    path = tmp_path / "m.gguf"
    write_llama(path, extra_kv=extra)
    with pytest.raises(ValueError, match=match):
        llama2.from_pretrained(path)


def test_other_architectures_and_tensors_are_refused(tmp_path):
    path = tmp_path / "m.gguf"
    write_llama(path, extra_tensors={"rope_freqs.weight": (4,)})
    with pytest.raises(ValueError, match="rope_freqs.weight.*'llama3' scaling"):
        llama2.from_pretrained(path)
    write_llama(path, extra_tensors={"blk.0.attn_qkv.weight": (96, 32)})
    with pytest.raises(ValueError, match="not part of the LLaMA model.*'blk.0.attn_qkv.weight'"):
        llama2.from_pretrained(path)
    with pytest.raises(ValueError, match="general.architecture is 'gpt2'"):
        lg.config_from_gguf({"general.architecture": "gpt2"})


def test_tensor_names():
    assert lg.hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert lg.hf_name("output.weight") == "lm_head.weight"
    assert lg.hf_name("output_norm.weight") == "model.norm.weight"
    for g, h in (("attn_norm", "input_layernorm"), ("attn_q", "self_attn.q_proj"),
                 ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
                 ("attn_output", "self_attn.o_proj"), ("ffn_norm", "post_attention_layernorm"),
                 ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
                 ("ffn_down", "mlp.down_proj")):
        assert lg.hf_name(f"blk.12.{g}.weight") == f"model.layers.12.{h}.weight"
    assert lg.hf_name("blk.0.attn_q.bias") == "model.layers.0.self_attn.q_proj.bias"
    for bad in ("blk.01.attn_q.weight", "blk.0.attn_qkv.weight", "rope_freqs.weight", "x"):
        assert lg.hf_name(bad) is None


# ---------------------------------------------------------------------------------------------
# the tokenizer: transformers' GGUF conversion is the oracle
# ---------------------------------------------------------------------------------------------
def _hf_tokenizer(path):
    require_transformers()
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.parametrize("style", ["spm", "bpe-llama3", "bpe-default"])
def test_tokenizer_matches_transformers(tmp_path, style):
    vocab = {"spm": spm_vocab, "bpe-llama3": bpe_vocab,
             "bpe-default": lambda: bpe_vocab("default")}[style]()
    path = tmp_path / "tok.gguf"
    write_llama(path, vocab=vocab, D=8, F=8, L=1, H=2, KVH=2)
    ours = llama2.from_pretrained(path).tokenizer
    theirs = _hf_tokenizer(path)
    for s in TEST_STRINGS:
        got, want = ours.encode(s).ids, theirs.encode(s)
        assert got == want, (s, got, want)
        assert ours.decode(got, skip_special_tokens=True) == theirs.decode(
            want, skip_special_tokens=True), s
    ids = ours.encode("emoji 🤖 héllo").ids
    assert ids[0] == vocab["tokenizer.ggml.bos_token_id"]                  # add_bos_token
    if style == "spm":                                                   # byte fallback used
        assert any(vocab["tokenizer.ggml.tokens"][i] in BYTES for i in ids)
        assert ours.encode("a <tool> token").ids.count(len(vocab["tokenizer.ggml.tokens"]) - 1)


def test_tokenizer_flags(tmp_path):
    """add_bos_token false, add_eos_token true, add_space_prefix false (llama.cpp's meaning: no
    "▁" before the text)."""
    v = spm_vocab()
    md = {**v, "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": True}
    tok = lg.tokenizer_from_gguf(md)
    ids = tok.encode("the").ids
    assert ids[0] != 1 and ids[-1] == 2
    plain = lg.tokenizer_from_gguf({**v, "tokenizer.ggml.add_space_prefix": False})
    with_prefix = lg.tokenizer_from_gguf(v)
    assert plain.encode("the").tokens[1:] != with_prefix.encode("the").tokens[1:]
    assert not plain.encode("the").tokens[1].startswith("▁")
    assert lg.tokenizer_from_gguf({"general.architecture": "llama"}) is None
    with pytest.raises(ValueError, match="tokenizer.ggml.scores has 3 entries"):
        lg.tokenizer_from_gguf({**v, "tokenizer.ggml.scores": [0.0, 1.0, 2.0]})
    with pytest.raises(ValueError, match=r"merges\[0\] is 'abc'"):
        lg.tokenizer_from_gguf({**bpe_vocab(), "tokenizer.ggml.merges": ["abc"]})
    with pytest.raises(ValueError, match="tokenizer.ggml.pre is 'qwen9'"):
        lg.tokenizer_from_gguf({**bpe_vocab(), "tokenizer.ggml.pre": "qwen9"})


# ---------------------------------------------------------------------------------------------
# logits and generation against transformers loading the same file
# ---------------------------------------------------------------------------------------------
def test_float32_file_matches_transformers(tmp_path):
    path = tmp_path / "f32.gguf"
    write_llama(path, D=64, F=96, L=2, H=8, KVH=2)
    ours, ref = llama2.from_pretrained(path), _reference(path)
    assert ours.rope_layout == "interleaved"
    ids = np.random.default_rng(0).integers(0, ours.config.vocab_size, (2, 11))
    want = _logits(ref, ids)
    assert np.abs(want).max() > 0.5
    np.testing.assert_allclose(ours(ids), want, atol=PARITY, rtol=0)
    prompt = ids[:1, :5]
    np.testing.assert_array_equal(ours.generate(prompt, max_new_tokens=12, eos_token_id=None),
                                  _greedy(ref, prompt, 12))


QUANT_TYPES = {"token_embd.weight": "Q8_0", "attn_q": "Q4_K", "attn_k": "Q6_K",
               "attn_v": "Q4_0", "attn_output": "Q4_1", "ffn_gate": "Q4_K", "ffn_up": "Q8_0",
               "ffn_down": "Q6_K", "output.weight": "Q6_K",
               "blk.1.attn_q.weight": "BF16", "blk.1.attn_v.weight": "F16"}


def test_quantized_file_matches_transformers(tmp_path):
    """Q8_0/Q4_0/Q4_1/Q4_K/Q6_K matrices (and BF16/F16 ones) stay quantized in our weights;
    transformers dequantizes them to float32.  Both compute in float32 from the same decoded
    values (the numpy backend's qmatmul decodes, then multiplies)."""
    path = tmp_path / "q.gguf"
    held = write_llama(path, D=256, F=512, L=2, H=4, KVH=2, types=QUANT_TYPES)
    ours, ref = llama2.from_pretrained(path), _reference(path)
    w = ours.weights
    assert isinstance(w["model.layers.0.self_attn.q_proj.weight"], quant.QuantizedTensor)
    assert w.dtype_of("model.layers.0.self_attn.k_proj.weight") == "Q6_K"
    assert w.dtype_of("model.layers.1.self_attn.q_proj.weight") == "BF16"
    assert w.dtype_of("model.embed_tokens.weight") == "Q8_0"
    ids = np.random.default_rng(1).integers(0, ours.config.vocab_size, (2, 9))
    want = _logits(ref, ids)
    assert np.abs(want).max() > 0.5
    with kernels.use_backend("numpy"):
        got = ours(ids)
        plain = llama2.Llama2(ours.config, hf_weights(held), rope_layout="interleaved")(ids)
        np.testing.assert_allclose(got, want, atol=PARITY, rtol=0)
        np.testing.assert_allclose(plain, want, atol=PARITY, rtol=0)
        prompt = ids[:1, :4]
        np.testing.assert_array_equal(ours.generate(prompt, max_new_tokens=8, eos_token_id=None),
                                      _greedy(ref, prompt, 8))


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
def _cli(*argv):
    env = {k: v for k, v in os.environ.items() if k != "PYWORKLOADS_DEBUG"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "pyworkloads.cli", *map(str, argv)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_cli_runs_a_gguf_file(tmp_path):
    path = tmp_path / "cli.gguf"
    write_llama(path, types={"attn_q": "Q8_0", "ffn_up": "Q4_0"})
    r = _cli("run", "llama2", "--model", path, "--prompt", "the theory", "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    assert "prompt tokens" in r.stdout and "generated" in r.stdout
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(path.read_bytes()[:200])
    r = _cli("run", "llama2", "--model", bad, "--prompt", "x")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("pyworkloads: error: ") and str(bad) in r.stderr
