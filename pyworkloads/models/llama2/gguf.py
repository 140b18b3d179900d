"""LLaMA GGUF files (llama.cpp's format): the config, the weights and the tokenizer a ``.gguf``
file describes, read as llama.cpp reads them.

A GGUF file has no config.json and no tokenizer.json: its metadata holds both, under llama.cpp's
key names (``llama.embedding_length``, ``tokenizer.ggml.tokens``, ...).  Its tensors have
llama.cpp's names (``blk.3.ffn_up.weight``), which :class:`GGUFWeights` presents under the
Hugging Face names the model reads, keeping quantized matrices quantized.

One difference in the weights themselves: llama.cpp's converter permutes the rows of every q and
k projection back into Meta's original layout, where RoPE rotates the channel pairs (2i, 2i+1) of
a head; Hugging Face checkpoints pair channel i with i + Dh/2.  So a GGUF model runs with
``rope_layout="interleaved"`` on the rows as stored (transformers instead un-permutes the rows
when it loads a GGUF; the two give the same attention scores).
"""
from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ...gguf_io import GGUFCheckpoint, load_gguf
from ..common import MAX_WIDTH, describe
from .api import Llama2
from .model import Config, weight_shapes

__all__ = ["config_from_gguf", "tokenizer_from_gguf", "hf_name", "GGUFWeights", "from_gguf",
           "ROPE_SCALING_TYPES", "TOKENIZER_MODELS"]

ROPE_SCALING_TYPES = ("none", "linear")
TOKENIZER_MODELS = ("llama", "gpt2")
MAX_TOKEN_CHARS = 1024

# ---------------------------------------------------------------------------------------------
# tensor names
# ---------------------------------------------------------------------------------------------
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                 "output": "lm_head"}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
# blk.N.module.weight|bias, N written without leading zeros (so no two names map to one)
_LAYER_RE = re.compile(r"blk\.(0|[1-9][0-9]{0,5})\.([a-z_]+)\.(weight|bias)")


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a llama.cpp tensor name (``blk.3.attn_q.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``), or None for a name a LLaMA model lacks."""
    m = _LAYER_RE.fullmatch(gguf_name)
    if m:
        layer, module, kind = m.groups()
        return (f"model.layers.{layer}.{_LAYER_NAMES[module]}.{kind}"
                if module in _LAYER_NAMES else None)
    stem, _, kind = gguf_name.rpartition(".")
    if stem in _GLOBAL_NAMES and kind in ("weight", "bias"):
        return f"{_GLOBAL_NAMES[stem]}.{kind}"
    return None


class GGUFWeights(Mapping):
    """A :class:`~pyworkloads.gguf_io.GGUFCheckpoint` seen under Hugging Face names:
    ``weights["model.layers.0.mlp.up_proj.weight"]`` is the file's ``blk.0.ffn_up.weight``
    (float32, or a QuantizedTensor kept in blocks), with ``raw``, ``dtype_of`` and ``shape_of``
    as the checkpoint has them.  ``names``: HF name -> GGUF name."""

    def __init__(self, checkpoint: GGUFCheckpoint, names: Mapping[str, str]):
        self.checkpoint, self.names = checkpoint, dict(names)

    def _gguf(self, name):
        try:
            return self.names[name]
        except KeyError:
            raise KeyError(f"{self.checkpoint.path}: no tensor for {name!r}") from None

    def __getitem__(self, name):
        return self.checkpoint[self._gguf(name)]

    def raw(self, name):
        return self.checkpoint.raw(self._gguf(name))

    def dtype_of(self, name):
        return self.checkpoint.dtype_of(self._gguf(name))

    def shape_of(self, name):
        return self.checkpoint.shape_of(self._gguf(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name) -> bool:
        return name in self.names

    def __repr__(self):
        return f"GGUFWeights({str(self.checkpoint.path)!r}, {len(self)} tensors)"


def _weight_names(tensor_names: Iterable[str], config: Config) -> dict[str, str]:
    """HF name -> GGUF name for every tensor of the file; a tensor the model described by
    ``config`` does not have is refused (running without it would quietly compute something
    else than the file's model)."""
    expected = weight_shapes(config)
    names, unknown = {}, []
    for g in tensor_names:
        h = hf_name(g)
        if h is None or h not in expected:
            unknown.append(g)
        else:
            names[h] = g
    if "rope_freqs.weight" in unknown:
        raise ValueError("the file has rope_freqs.weight: its RoPE frequencies are rescaled "
                         "(LLaMA 3.1's 'llama3' scaling), which is not implemented")
    if unknown:
        raise ValueError(f"{len(unknown)} tensor(s) are not part of the LLaMA model the "
                         f"metadata describes, e.g. {describe(unknown[0])} (another "
                         "architecture, or a variant this module does not implement)")
    return names


# ---------------------------------------------------------------------------------------------
# the config
# ---------------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _get(md: Mapping, key: str, default=...):
    if key in md:
        return md[key]
    if default is ...:
        raise ValueError(f"GGUF metadata lacks {key} (needed to build a LLaMA model)")
    return default


def _int(md: Mapping, key: str, default=...) -> int | None:
    """An integer key.  llama.cpp also accepts a per-layer array for some sizes: one whose
    layers all agree is that number; layers of different sizes are not a LLaMA model."""
    v = _get(md, key, default)
    if isinstance(v, list) and v and all(_is_int(x) for x in v):
        if len(set(v)) != 1:
            raise ValueError(f"GGUF metadata {key} differs between layers ({describe(v)}), "
                             "which a LLaMA model does not")
        v = v[0]
    if v is not None and not _is_int(v):
        raise ValueError(f"GGUF metadata {key} must be an integer, got {describe(v)}")
    return v


def _number(md: Mapping, key: str, default=...) -> float | None:
    v = _get(md, key, default)
    if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
        raise ValueError(f"GGUF metadata {key} must be a number, got {describe(v)}")
    return v


def _rope_scaling(md: Mapping) -> dict | None:
    """``llama.rope.scaling.type`` "linear" with its ``factor`` (or the older
    ``llama.rope.scale_linear``); "none" or absent is plain RoPE.  YaRN and the others are
    refused, as :func:`.hf.config_from_hf` refuses them: plain RoPE would give wrong logits."""
    kind = _get(md, "llama.rope.scaling.type", None)
    legacy = _number(md, "llama.rope.scale_linear", None)
    if kind is None:
        kind = "linear" if legacy not in (None, 1.0) else "none"
    if not isinstance(kind, str) or kind not in ROPE_SCALING_TYPES:
        raise ValueError(f"GGUF metadata llama.rope.scaling.type is {describe(kind)}, which is "
                         f"not implemented (supported: {', '.join(ROPE_SCALING_TYPES)})")
    if kind == "none":
        return None
    factor = _number(md, "llama.rope.scaling.factor", legacy)
    if factor is None:
        raise ValueError("GGUF metadata llama.rope.scaling.type is 'linear' but "
                         "llama.rope.scaling.factor is missing")
    return {"rope_type": "linear", "factor": factor}


def _vocab_size(md: Mapping) -> int:
    v = _int(md, "llama.vocab_size", None)
    if v is not None:
        return v
    tokens = md.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list):
        raise ValueError("GGUF metadata lacks llama.vocab_size and tokenizer.ggml.tokens (one "
                         "of them gives the vocabulary size)")
    return len(tokens)


def config_from_gguf(metadata: Mapping, tensor_names: Iterable[str] | None = None) -> Config:
    """The :class:`Config` a LLaMA GGUF file's metadata describes, as llama.cpp reads it.

    ``metadata`` is :attr:`GGUFCheckpoint.metadata` (or the checkpoint itself, which also gives
    the tensor names).  The head is tied to the embedding when the file has no ``output.weight``
    (llama.cpp writes it only when it differs); with no ``tensor_names`` it is taken as untied.
    Sizes llama.cpp requires are required here (a missing one is an error naming its key);
    ``head_count_kv`` defaults to ``head_count``, ``rope.freq_base`` to 10000, the head width
    (``attention.key_length``) to embedding_length / head_count, and ``rope.dimension_count``
    must be that width.  Mixture-of-experts files (``llama.expert_count``, Mixtral)
    and RoPE scalings other than linear are refused."""
    if isinstance(metadata, GGUFCheckpoint):
        metadata, tensor_names = metadata.metadata, list(metadata)
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a GGUF file's metadata dict, got "
                        f"{type(metadata).__name__}")
    md = metadata
    arch = _get(md, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF metadata general.architecture is {describe(arch)}; this module "
                         "implements 'llama' only")
    experts = _int(md, "llama.expert_count", 0)
    if experts:
        raise ValueError(f"GGUF metadata llama.expert_count is {experts}: a mixture-of-experts "
                         "model (Mixtral), which is not implemented")
    D = _int(md, "llama.embedding_length")
    H = _int(md, "llama.attention.head_count")
    # the head width as llama.cpp defines it: key_length, else embedding_length / head_count
    head_dim = _int(md, "llama.attention.key_length", None)
    if head_dim is None and _is_int(D) and _is_int(H) and H > 0:
        head_dim = D // H
    for key in ("llama.rope.dimension_count", "llama.attention.value_length"):
        v = _int(md, key, None)
        if v is not None and v != head_dim:
            raise ValueError(f"GGUF metadata {key} is {v} but the head width is {head_dim}: "
                             + ("partial rotary embeddings are" if "rope" in key else
                                "values of another width than the keys are")
                             + " not implemented")
    names = set(tensor_names) if tensor_names is not None else {"output.weight"}
    V = _vocab_size(md)
    special = {k: _int(md, f"tokenizer.ggml.{k}_token_id", None) for k in ("bos", "eos")}
    for k, v in special.items():
        if v is not None and _is_int(V) and not 0 <= v < V:
            raise ValueError(f"GGUF metadata tokenizer.ggml.{k}_token_id is {v}, outside the "
                             f"vocabulary of {V} tokens")
    bias = {m: any(f".{m}.bias" in n for n in names) for m in ("attn_q", "ffn_up")}
    return Config(
        hidden_size=D,
        intermediate_size=_int(md, "llama.feed_forward_length"),
        num_hidden_layers=_int(md, "llama.block_count"),
        num_attention_heads=H,
        num_key_value_heads=_int(md, "llama.attention.head_count_kv", H),
        head_dim=head_dim,
        vocab_size=V,
        max_position_embeddings=_int(md, "llama.context_length"),
        rms_norm_eps=_number(md, "llama.attention.layer_norm_rms_epsilon"),
        rope_theta=_number(md, "llama.rope.freq_base", 10000.0),
        rope_scaling=_rope_scaling(md),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=special["bos"],
        eos_token_id=special["eos"],
        attention_bias=bias["attn_q"],
        mlp_bias=bias["ffn_up"],
    )


# ---------------------------------------------------------------------------------------------
# the tokenizer
# ---------------------------------------------------------------------------------------------
# llama.cpp's token types (tokenizer.ggml.token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The byte-level vocabularies' split patterns, by tokenizer.ggml.pre (llama.cpp's names).  No
# entry / "default" / "gpt-2": GPT-2's own pattern, which ByteLevel applies by itself.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_SPLITS = {
    "default": None, "gpt-2": None,
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3",
                     "pixtral"), _LLAMA3_SPLIT),
    "tekken": _TEKKEN_SPLIT,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map: the alphabet byte-level vocabularies spell their
    tokens in (a space is "Ġ")."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}


def _str_list(md: Mapping, key: str, n: int | None = None, required: bool = True):
    v = md.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ValueError(f"GGUF metadata {key} must be a list of strings, got "
                         f"{describe(v) if key in md else 'nothing (missing)'}")
    if n is not None and len(v) != n:
        raise ValueError(f"GGUF metadata {key} has {len(v)} entries, but the vocabulary has {n}")
    return v


def _num_list(md: Mapping, key: str, n: int, ints: bool):
    v = md.get(key)
    if v is None:
        return None
    ok = _is_int if ints else (lambda x: isinstance(x, numbers.Real) and not isinstance(x, bool))
    if not isinstance(v, list) or not all(ok(x) for x in v):
        raise ValueError(f"GGUF metadata {key} must be a list of "
                         f"{'integers' if ints else 'numbers'}, got {describe(v)}")
    if len(v) != n:
        raise ValueError(f"GGUF metadata {key} has {len(v)} entries, but the vocabulary has {n}")
    return v


def _merges_from_scores(tokens: list[str], scores: list[float], vocab: dict[str, int]):
    """A SentencePiece vocabulary's BPE merges: every split of a token into two tokens of the
    vocabulary, the merge of highest resulting score first (ties: shorter left piece, then
    vocabulary order).  BPE with these merges picks what llama.cpp's SPM tokenizer picks -- it
    merges the adjacent pair whose union scores highest -- and transformers derives the same
    list for GGUF files, in the same order."""
    longest = max(tokens, key=len)
    if len(longest) > MAX_TOKEN_CHARS:                  # each split slices it: quadratic work
        raise ValueError(f"GGUF metadata tokenizer.ggml.tokens holds a token of {len(longest)} "
                         f"characters (more than {MAX_TOKEN_CHARS}; real vocabularies' longest "
                         "have a few dozen)")
    merges = []
    for token, score in dict(zip(tokens, scores)).items():
        local = [(token[:i], token[i:], score) for i in range(1, len(token))
                 if token[:i] in vocab and token[i:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _file_merges(merges: list[str]):
    out = []
    for i, m in enumerate(merges):
        pair = m.split(" ")
        if len(pair) != 2 or not all(pair):
            raise ValueError(f"GGUF metadata tokenizer.ggml.merges[{i}] is {describe(m)}; a merge "
                             "is two tokens separated by one space")
        out.append(tuple(pair))
    return out


def _special_id(md: Mapping, key: str, n: int) -> int | None:
    v = _int(md, key, None)
    if v is not None and not 0 <= v < n:
        raise ValueError(f"GGUF metadata {key} is {v}, outside the vocabulary of {n} tokens")
    return v


def _flag(md: Mapping, key: str, default: bool) -> bool:
    v = md.get(key, default)
    if not isinstance(v, bool):
        raise ValueError(f"GGUF metadata {key} must be true or false, got {describe(v)}")
    return v


def tokenizer_from_gguf(metadata: Mapping):
    """The ``tokenizers.Tokenizer`` a GGUF file's metadata describes, or None when it has none.

    ``tokenizer.ggml.model`` "llama" is SentencePiece's BPE: the tokens with their scores (the
    merges follow from them, see :func:`_merges_from_scores`), "▁" for a space and one prepended
    to the text unless ``add_space_prefix`` is false, and ``<0xNN>`` byte tokens for characters
    the vocabulary lacks.  "gpt2" is byte-level BPE: tokens spelled in GPT-2's byte alphabet,
    ``tokenizer.ggml.merges``, and the split pattern ``tokenizer.ggml.pre`` names.  Control
    tokens (and the bos/eos/unk/padding tokens) are special: matched whole, skipped by
    ``decode(..., skip_special_tokens=True)``; user-defined ones are matched whole.  BOS is
    prepended when ``add_bos_token`` is true (its default: true for "llama", false for "gpt2",
    as transformers reads these files), EOS appended when ``add_eos_token`` is."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    kind = metadata.get("tokenizer.ggml.model")
    if kind is None or kind in ("none", "no_vocab"):
        return None
    if kind not in TOKENIZER_MODELS:
        raise ValueError(f"GGUF metadata tokenizer.ggml.model is {describe(kind)}, which is not "
                         f"supported (supported: {', '.join(TOKENIZER_MODELS)})")
    tokens = _str_list(metadata, "tokenizer.ggml.tokens")
    n = len(tokens)
    if not 0 < n <= MAX_WIDTH:
        raise ValueError(f"GGUF metadata tokenizer.ggml.tokens has {n} tokens (expected 1 to "
                         f"{MAX_WIDTH})")
    types = _num_list(metadata, "tokenizer.ggml.token_type", n, ints=True) or [NORMAL] * n
    merges = _str_list(metadata, "tokenizer.ggml.merges", required=False)
    special_ids = {name: _special_id(metadata, f"tokenizer.ggml.{name}_token_id", n)
                   for name in ("bos", "eos", "unknown", "padding")}
    add_bos = _flag(metadata, "tokenizer.ggml.add_bos_token", kind == "llama")
    add_eos = _flag(metadata, "tokenizer.ggml.add_eos_token", False)

    if kind == "llama":
        vocab = {t: i for i, t in enumerate(tokens)}
        if merges is None:
            scores = _num_list(metadata, "tokenizer.ggml.scores", n, ints=False)
            if scores is None:
                raise ValueError("GGUF metadata lacks tokenizer.ggml.scores (a 'llama' "
                                 "vocabulary's merges follow from its scores)")
            pairs = _merges_from_scores(tokens, scores, vocab)
        else:
            pairs = _file_merges(merges)
        prefix = _flag(metadata, "tokenizer.ggml.add_space_prefix", True)
        model = BPE(vocab=vocab, merges=pairs, fuse_unk=True, byte_fallback=True, dropout=None)
        pre = pre_tokenizers.Metaspace(replacement="▁", split=False,
                                       prepend_scheme="first" if prefix else "never")
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
        spelled = None
    else:
        # tokens outside the byte alphabet (a stray real space, say) are respelled in it
        alphabet = _bytes_to_unicode()
        spelled = set(alphabet.values())
        vocab = {t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8")): i
                 for i, t in enumerate(tokens)}
        if merges is None:
            raise ValueError("GGUF metadata lacks tokenizer.ggml.merges (a 'gpt2' vocabulary "
                             "needs its merges)")
        pre_name = metadata.get("tokenizer.ggml.pre", "default")
        if not isinstance(pre_name, str) or pre_name not in PRE_TOKENIZER_SPLITS:
            raise ValueError(f"GGUF metadata tokenizer.ggml.pre is {describe(pre_name)}, a split "
                             "pattern this module does not know (known: "
                             f"{', '.join(PRE_TOKENIZER_SPLITS)})")
        split = PRE_TOKENIZER_SPLITS[pre_name]
        model = BPE(vocab=vocab, merges=_file_merges(merges), dropout=None, fuse_unk=False,
                    continuing_subword_prefix="", end_of_word_suffix="")
        pre = (pre_tokenizers.ByteLevel(add_prefix_space=False) if split is None else
               pre_tokenizers.Sequence([
                   pre_tokenizers.Split(Regex(split), behavior="isolated"),
                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
        decoder = decoders.ByteLevel()
    try:
        tok = Tokenizer(model)
    except Exception as exc:                    # the Rust library's errors are bare Exceptions
        raise ValueError(f"GGUF tokenizer metadata does not make a valid {kind} tokenizer "
                         f"({str(exc)[:200]})") from None
    tok.normalizer = None
    tok.pre_tokenizer = pre
    tok.decoder = decoder
    # control tokens (a byte-level one outside the alphabet is a mislabel llama.cpp's converter
    # makes; it stays a plain token) and the named special tokens are matched whole, first
    control = [t for t, ty in zip(tokens, types)
               if ty == CONTROL and (spelled is None or set(t) <= spelled)]
    named = [tokens[i] for i in special_ids.values() if i is not None and tokens[i] in vocab]
    specials = list(dict.fromkeys(control + named))
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    user = [t for t, ty in zip(tokens, types) if ty == USER_DEFINED and t in vocab]
    if user:
        tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])
    # the template as a list of pieces: a token's text may hold spaces
    bos = special_ids["bos"] if add_bos else None
    eos = special_ids["eos"] if add_eos else None
    ends = [(tokens[i], i) for i in (bos, eos) if i is not None]

    def template(seq: str, type_id: int) -> list[str]:
        return ([f"{tokens[bos]}:{type_id}"] if bos is not None else []) + [f"${seq}:{type_id}"] \
            + ([f"{tokens[eos]}:{type_id}"] if eos is not None else [])
    tok.post_processor = processors.TemplateProcessing(
        single=template("A", 0), pair=template("A", 0) + template("B", 1),
        special_tokens=list(dict.fromkeys(ends)))
    return tok


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
def from_gguf(path, rope_layout: str = "interleaved", in_memory: bool | None = None) -> Llama2:
    """A LLaMA model from one ``.gguf`` file: the config and tokenizer from its metadata, the
    weights read into huge-page memory or memory-mapped (``in_memory``, see
    :class:`~pyworkloads.gguf_io.GGUFCheckpoint`; F32 as views, F16/BF16 converted per use,
    quantized matrices kept in their blocks).  ``rope_layout`` is "interleaved", the layout
    llama.cpp's converter writes q and k in (see the module docstring)."""
    path = Path(path)
    ckpt = load_gguf(path, in_memory)
    try:
        config = config_from_gguf(ckpt)
        weights = GGUFWeights(ckpt, _weight_names(ckpt, config))
        tokenizer = tokenizer_from_gguf(ckpt.metadata)
        return Llama2(config, weights, tokenizer, rope_layout)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{path}: {exc}") from exc

