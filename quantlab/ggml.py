"""GGUF by hand (introduced in notebooks/06_gguf): GGML block quantizers, a GGUF writer and a reader.

* The from-scratch block quantizers (Q8_0, Q4_0) are written in notebooks/06_gguf's cells and copied from there
  into :mod:`quantlab.gguf_blocks`; they give the same bytes as gguf-py's ``gguf.quants.quantize``
  (tests/test_ggml.py checks that, byte for byte).
* :func:`write_gguf` turns a Llama-architecture checkpoint folder into a GGUF file with gguf-py's
  ``GGUFWriter``, the way llama.cpp's ``convert_hf_to_gguf.py`` does for the types gguf-py can quantize.
* :func:`tensor_table` and :func:`file_bits_per_weight` show what is inside a GGUF file.
* :func:`quantize_with_llama_cpp` (K-quants such as Q4_K_M) and :func:`generate_with_llama_cpp`
  (tokens/s in real llama.cpp) need the optional ``llama-cpp-python`` package.
"""

import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from quantlab.errors import QuantlabError

# --- writing a GGUF file ---------------------------------------------------------------------------

FLOAT_TYPES = ("F32", "F16", "BF16")
BLOCK_TYPES = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")  # what gguf-py quantizes; K-quants need llama.cpp

# Hugging Face Llama parameter names -> llama.cpp's (gguf-py's TensorNameMap holds the same table).
_GGUF_NAMES = [
    (r"model\.embed_tokens\.weight", "token_embd.weight"),
    (r"model\.norm\.weight", "output_norm.weight"),
    (r"lm_head\.weight", "output.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"blk.\1.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.weight", r"blk.\1.attn_q.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.k_proj\.weight", r"blk.\1.attn_k.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.v_proj\.weight", r"blk.\1.attn_v.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", r"blk.\1.attn_output.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"blk.\1.ffn_norm.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.weight", r"blk.\1.ffn_gate.weight"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.weight", r"blk.\1.ffn_up.weight"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.weight", r"blk.\1.ffn_down.weight"),
]

# GGUF's tokenizer.ggml.pre names the pre-tokenizer regex llama.cpp applies; transformers ignores it.
# Matched on tokenizer.json's pre_tokenizer for the two byte-level BPE layouts we meet.
_BYTE_LEVEL = {"type": "ByteLevel", "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name for a Hugging Face Llama parameter (``model.layers.3.mlp.up_proj.weight`` ->
    ``blk.3.ffn_up.weight``)."""
    for pattern, replacement in _GGUF_NAMES:
        if re.fullmatch(pattern, hf_name):
            return re.sub(pattern, replacement, hf_name)
    raise QuantlabError(
        f"write_gguf knows no GGUF name for {hf_name!r}: it converts plain Llama checkpoints (no biases, "
        "no extra modules). For other architectures use llama.cpp's convert_hf_to_gguf.py."
    )


def permute_for_rope(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder q/k projection rows the way llama.cpp's converter does for Llama.

    Hugging Face rotates the first half of each head's dimensions against the second half; llama.cpp
    rotates neighbouring pairs (0,1), (2,3), ... So within each head, rows ``[a0 a1 ... b0 b1 ...]``
    become ``[a0 b0 a1 b1 ...]``. transformers' GGUF loader applies the inverse when it reads the file.
    """
    rows = weight.shape[0]
    pairs = weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
    return pairs.swapaxes(1, 2).reshape(weight.shape)


def _check_qtype(qtype: str, allowed: tuple[str, ...], what: str) -> str:
    qtype = qtype.upper()
    if qtype not in allowed:
        k_hint = " K-quants (Q4_K_M, ...) come from quantize_with_llama_cpp." if "_K" in qtype else ""
        raise QuantlabError(f"{what} must be one of {', '.join(allowed)}, not {qtype!r}.{k_hint}")
    return qtype


def _encode(array: np.ndarray, qtype: str) -> tuple[np.ndarray, str]:
    """``array`` in ``qtype`` (bytes for block types), or in F16 where its rows do not split into
    whole blocks, as llama.cpp's converter falls back. Returns the data and the type it got."""
    import gguf

    gtype = gguf.GGMLQuantizationType[qtype]
    block_weights = gguf.GGML_QUANT_SIZES[gtype][0]
    if qtype in BLOCK_TYPES and array.shape[-1] % block_weights:
        qtype, gtype = "F16", gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(array, gtype), qtype


def _tensor_type(hf_name: str, array: np.ndarray, qtype: str, embedding_qtype: str) -> str:
    """1-D tensors (the RMSNorm weights) stay F32, as in every llama.cpp file; matrices get ``qtype``,
    except the token embedding (and separate output head), which get ``embedding_qtype``."""
    if array.ndim == 1:
        return "F32"
    if hf_name in ("model.embed_tokens.weight", "lm_head.weight"):
        return embedding_qtype
    return qtype


def _read_checkpoint(checkpoint_dir: Path):
    """Yield (name, float32 numpy array) for every tensor in the folder's safetensors files."""
    from safetensors import safe_open

    files = sorted(checkpoint_dir.glob("*.safetensors"))
    if not files:
        raise QuantlabError(
            f"No *.safetensors file in {checkpoint_dir}. Pass a checkpoint folder such as "
            "quantlab.models.resolve().path, or save one with model.save_pretrained(folder)."
        )
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                yield name, f.get_tensor(name).float().numpy()


def _llama_config(checkpoint_dir: Path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint_dir)
    if config.model_type != "llama":
        raise QuantlabError(
            f"write_gguf converts Llama-architecture checkpoints (SmolLM2, TinyLlama, Llama 2/3), and "
            f"{checkpoint_dir} holds a {config.model_type!r} model. Use llama.cpp's convert_hf_to_gguf.py."
        )
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": config.rope_theta}
    if rope.get("rope_type", "default") != "default":
        raise QuantlabError(
            f"write_gguf writes plain RoPE only; this model uses {rope['rope_type']!r} RoPE scaling. "
            "Use llama.cpp's convert_hf_to_gguf.py, which knows the scaling keys."
        )
    return config, rope["rope_theta"]


def _add_hyperparameters(writer, config, rope_theta: float) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _pre_tokenizer_name(pre_tokenizer: dict | None) -> str:
    """llama.cpp's name for a byte-level BPE pre-tokenizer: "gpt-2", or "smollm" when digits are split
    one by one first (llama.cpp groups SmolLM with StarCoder there)."""

    def matches(step: dict, pattern: dict) -> bool:
        return all(step.get(k) == v for k, v in pattern.items())

    steps = (pre_tokenizer or {}).get("pretokenizers", [pre_tokenizer or {}])
    if len(steps) == 1 and matches(steps[0], _BYTE_LEVEL):
        return "gpt-2"
    if len(steps) == 2 and matches(steps[0], _DIGITS) and matches(steps[1], _BYTE_LEVEL):
        return "smollm"
    raise QuantlabError(
        f"write_gguf does not know llama.cpp's name for the pre-tokenizer {json.dumps(pre_tokenizer)}. "
        "Pass tokenizer_pre= (a name from llama.cpp's convert_hf_to_gguf.py, e.g. 'llama-bpe')."
    )


def _special_id(config, key: str, tokenizer_config: dict, vocab: dict) -> int | None:
    """A special token id: the model config's (what generation uses), else the tokenizer's."""
    value = getattr(config, key, None)
    if isinstance(value, list):
        value = value[0]
    if value is None:
        token = tokenizer_config.get(key.removesuffix("_id"))
        value = vocab.get(token["content"] if isinstance(token, dict) else token)
    return value


def _add_tokenizer(writer, checkpoint_dir: Path, config, tokenizer_pre: str | None) -> None:
    """Vocabulary, merges, special ids and chat template of a byte-level BPE ``tokenizer.json``."""
    import gguf

    path = checkpoint_dir / "tokenizer.json"
    if not path.is_file():
        raise QuantlabError(f"No tokenizer.json in {checkpoint_dir}; add it: tokenizer.save_pretrained().")
    tok = json.loads(path.read_text())
    model = tok["model"]
    if model["type"] != "BPE":
        raise QuantlabError(f"write_gguf writes byte-level BPE tokenizers (GPT-2 style), not {model['type']}")
    # ids the tokenizer never produces (vocabularies padded to a round size) are named as llama.cpp does
    tokens = [f"[PAD{i}]" for i in range(config.vocab_size)]
    types = [gguf.TokenType.UNUSED] * config.vocab_size
    vocab = dict(model["vocab"])
    for token, index in vocab.items():
        tokens[index], types[index] = token, gguf.TokenType.NORMAL
    for added in tok.get("added_tokens", []):  # special ones (<|im_end|>) are CONTROL tokens to llama.cpp
        tokens[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
        vocab[added["content"]] = added["id"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]

    config_path = checkpoint_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    template_path = checkpoint_dir / "chat_template.jinja"
    template = template_path.read_text() if template_path.is_file() else tokenizer_config.get("chat_template")
    post = tok.get("post_processor") or {}
    adds_bos = any("SpecialToken" in step for step in post.get("single", []))

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer_pre or _pre_tokenizer_name(tok.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, add in [("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("pad_token_id", writer.add_pad_token_id)]:
        token_id = _special_id(config, key, tokenizer_config, vocab)
        if token_id is not None:
            add(token_id)
    if model.get("unk_token") in vocab:
        writer.add_unk_token_id(vocab[model["unk_token"]])
    writer.add_add_bos_token(adds_bos)
    writer.add_add_space_prefix(False)  # byte-level BPE marks spaces itself; transformers reads this key
    if template:
        writer.add_chat_template(template)


def write_gguf(checkpoint_dir: str | os.PathLike, out_path: str | os.PathLike, qtype: str = "Q8_0", *,
               embedding_qtype: str | None = None, tokenizer_pre: str | None = None) -> Path:
    """Convert a Llama-architecture checkpoint folder (safetensors + tokenizer.json) to a GGUF file.

    ``qtype`` is the type of the 2-D weight matrices: F32, F16, BF16, or a block type gguf-py can
    quantize (Q8_0, Q5_1, Q5_0, Q4_1, Q4_0). Norm weights stay F32. A matrix whose rows do not split
    into whole blocks falls back to F16, as in llama.cpp's converter.

    The token embedding is also the output head when embeddings are tied (SmolLM2). It gets
    ``embedding_qtype``, which defaults to ``qtype`` for float files and to Q8_0 for block types:
    llama.cpp's ``llama-quantize`` keeps the output matrix at 6+ bits too (Q6_K, or Q8_0 where the
    rows are not a multiple of 256, as in the Q4_1 file bundled with SmolLM2).

    ``tokenizer_pre`` overrides the pre-tokenizer name that llama.cpp uses to split text before BPE
    (read from tokenizer.json by default). The file is written to a temporary name and renamed.
    """
    import gguf

    checkpoint_dir, out_path = Path(checkpoint_dir), Path(out_path)
    qtype = _check_qtype(qtype, FLOAT_TYPES + BLOCK_TYPES, "qtype")
    default_embedding = qtype if qtype in FLOAT_TYPES else "Q8_0"
    embedding_qtype = _check_qtype(embedding_qtype or default_embedding, FLOAT_TYPES + BLOCK_TYPES,
                                   "embedding_qtype")
    config, rope_theta = _llama_config(checkpoint_dir)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    try:
        writer.add_name(checkpoint_dir.name)
        writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{qtype}" if qtype != "F32" else "ALL_F32"])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hyperparameters(writer, config, rope_theta)
        _add_tokenizer(writer, checkpoint_dir, config, tokenizer_pre)
        fallbacks = []
        for hf_name, array in _read_checkpoint(checkpoint_dir):
            if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # the same matrix as the embedding; llama.cpp reuses token_embd
            if hf_name.endswith("q_proj.weight"):
                array = permute_for_rope(array, config.num_attention_heads)
            elif hf_name.endswith("k_proj.weight"):
                array = permute_for_rope(array, config.num_key_value_heads)
            wanted = _tensor_type(hf_name, array, qtype, embedding_qtype)
            data, got = _encode(array, wanted)
            if got != wanted:
                fallbacks.append(hf_name)
            writer.add_tensor(gguf_name(hf_name), data, raw_dtype=gguf.GGMLQuantizationType[got])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    if fallbacks:
        print(f"quantlab: {len(fallbacks)} matrices have rows that are not whole blocks and were kept in F16")
    return out_path


# --- reading one -----------------------------------------------------------------------------------


class TensorRow(NamedTuple):
    """One tensor of a GGUF file. ``shape`` is in PyTorch order (rows, columns); GGUF stores it reversed."""

    name: str
    type_name: str
    shape: tuple[int, ...]
    n_weights: int
    n_bytes: int
    bits_per_weight: float


REWRITE_GGUF = ("delete it and run again what wrote it (write_gguf, quantize_with_llama_cpp, or `quantlab compare`, "
                "which rebuilds its cached files), or download it again")


def open_gguf(gguf_path: str | os.PathLike, fix: str = REWRITE_GGUF):
    """gguf-py's ``GGUFReader`` of a file, or a QuantlabError that names the file, its damage and ``fix``.

    gguf-py reads a cut-off file as far as it goes and then fails deep inside numpy ("cannot reshape array of size
    66896 into shape (192,612)"), naming neither the file nor the damage. Every GGUF quantlab reads goes through here.
    """
    import gguf

    path = Path(gguf_path)
    if not path.is_file():
        raise QuantlabError(f"No GGUF file at {path}; write one with quantlab.ggml.write_gguf().")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError) as err:  # what gguf-py's reader raises on a cut or foreign file
        raise QuantlabError(f"{path} is not a readable GGUF file: {_damage(path)} (gguf-py: {err}). "
                            f"To fix it, {fix}.") from err


def _damage(path: Path) -> str:
    """What is wrong with a GGUF file that gguf-py cannot read: cut short (by how much), or not GGUF at all."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            return f"it does not start with the GGUF magic bytes (it is {size:,} bytes long)"
    expected = _expected_size(path)
    if expected is None:
        return f"it is cut off or damaged inside its header, before the tensor data ({size:,} bytes long)"
    if expected > size:
        return f"it is truncated: {size:,} bytes long, but its header says the tensor data ends at byte {expected:,}"
    return f"its tensor data is damaged ({size:,} bytes long, as its header says)"


def _expected_size(path: Path) -> int | None:
    """Where the tensor data of a GGUF file ends according to its header, or None when the header itself is cut.

    Reads the header with gguf-py and stops before the tensor data, which is where a cut-off file fails.
    """
    import gguf

    class HeaderReader(gguf.GGUFReader):
        def _build_tensors(self, start_offs, fields):  # the tensor infos: name, n_dims, dims, type, offset
            self.tensors, self.end = [], start_offs
            for field in fields:
                dims, raw_type, offset = field.parts[3], field.parts[4][0], field.parts[5][0]
                block, type_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(raw_type))]
                self.end = max(self.end, start_offs + int(offset) + int(np.prod(dims)) * type_bytes // block)

    try:
        return HeaderReader(path).end
    except (ValueError, IndexError, KeyError):
        return None


def tensor_table(gguf_path: str | os.PathLike, fix: str = REWRITE_GGUF) -> list[TensorRow]:
    """Every tensor in a GGUF file with its type, shape and storage cost, in file order (``fix``: see open_gguf)."""
    rows = []
    for t in open_gguf(gguf_path, fix).tensors:
        n_weights, n_bytes = int(t.n_elements), int(t.n_bytes)
        shape = tuple(int(n) for n in reversed(t.shape))
        rows.append(TensorRow(t.name, t.tensor_type.name, shape, n_weights, n_bytes, 8 * n_bytes / n_weights))
    return rows


def file_bits_per_weight(gguf_path: str | os.PathLike) -> float:
    """Average bits per weight over all tensor data (metadata such as the vocabulary not counted)."""
    rows = tensor_table(gguf_path)
    return 8 * sum(r.n_bytes for r in rows) / sum(r.n_weights for r in rows)


# --- llama.cpp itself, through llama-cpp-python -----------------------------------------------------

# Compiles llama.cpp (no prebuilt Linux wheel on PyPI): 900 CPU-seconds, so about 8 minutes on 2 idle
# cores, once; pip then reuses the wheel from its cache (15 s). GGML_NATIVE=OFF makes a portable build
# (AVX2, no -march=native); LLAVA_BUILD=OFF skips the multimodal library the notebooks do not use.
LLAMA_CPP_VERSION = "0.3.36"
INSTALL_LLAMA_CPP = (
    f'CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" pip install llama-cpp-python=={LLAMA_CPP_VERSION}'
)


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise QuantlabError(
            f"This step runs llama.cpp itself, through the llama-cpp-python package, which is not installed. "
            f"Run: {INSTALL_LLAMA_CPP}   (it compiles llama.cpp: about 8 minutes on 2 idle CPU cores the "
            "first time, seconds after that)."
        ) from None
    return llama_cpp


@contextmanager
def _llama_cpp_log(llama_cpp, verbose: bool):
    """Show llama.cpp's log (``verbose``) or keep it from the screen, and restore the log settings afterwards.

    llama.cpp (and its ggml library) logs through one callback, ``llama_log_set``. llama-cpp-python's callback
    prints to ``sys.stderr`` what its ``llama-cpp-python`` logger's level lets through, but its table of llama.cpp's
    levels is out of date (llama.cpp's WARN counts as logging's ERROR), so with its ``verbose=False`` every warning
    still shows: notebook 06's conversion cell printed 361 "falling back" lines. Hiding therefore installs a callback
    of our own, which keeps the messages in the list this yields (for an error message) instead of printing them.
    """
    import ctypes
    import logging

    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    previous, user_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(user_data))
    messages: list[str] = []

    @llama_cpp.llama_log_callback
    def keep(_level: int, text: bytes, _user_data) -> None:
        messages.append(text.decode(errors="replace"))

    if verbose:
        logger.setLevel(logging.DEBUG)
    else:
        llama_cpp.llama_log_set(keep, None)
    try:
        yield messages
    finally:
        llama_cpp.llama_log_set(previous, user_data)
        logger.setLevel(level)


def _failure_lines(messages: list[str]) -> str:
    """llama.cpp's own words for a failure: its log lines that say "fail" or "error", joined."""
    text = "".join(messages)
    lines = [line.strip() for line in text.splitlines() if "fail" in line.lower() or "error" in line.lower()]
    return "; ".join(lines) or "no reason logged"


def quantize_with_llama_cpp(src: str | os.PathLike, dst: str | os.PathLike, ftype: str = "Q4_K_M", *,
                            n_threads: int | None = None, verbose: bool = False) -> Path:
    """Quantize a GGUF file (best an F16 or F32 one from :func:`write_gguf`) with llama.cpp's own
    quantizer, the code behind its ``llama-quantize`` tool: K-quants such as Q4_K_M, Q5_K_M, Q6_K.

    A K-quant file mixes types: Q4_K_M keeps some matrices (attn_v, ffn_down) at 6 bits. K-quant
    blocks hold 256 weights, so rows of another length (576 in SmolLM2) fall back to a 32-weight type
    (Q4_K -> Q5_0, Q6_K -> Q8_0); :func:`tensor_table` of the result shows what each tensor got.
    ``verbose=True`` shows llama.cpp's per-tensor log; without it nothing is printed (see :func:`_llama_cpp_log`).
    """
    import ctypes

    llama_cpp = _llama_cpp()
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise QuantlabError(f"No GGUF file at {src}; write one with quantlab.ggml.write_gguf(..., 'F16').")
    prefix = "LLAMA_FTYPE_MOSTLY_"
    code = getattr(llama_cpp, prefix + ftype.upper(), None)
    if code is None:
        known = sorted(n.removeprefix(prefix) for n in dir(llama_cpp) if n.startswith(prefix))
        raise QuantlabError(f"llama.cpp has no file type {ftype!r}; pick one of {', '.join(known)}.")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = code
    params.nthread = n_threads or 0  # 0: every core
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with _llama_cpp_log(llama_cpp, verbose) as log:
            status = llama_cpp.llama_model_quantize(bytes(src), bytes(tmp), ctypes.byref(params))
        if status != 0:
            open_gguf(src)  # a damaged file says so
            raise QuantlabError(
                f"llama.cpp could not quantize {src} to {ftype} ({_failure_lines(log)}). Start from an F16 or F32 "
                "file: write_gguf(checkpoint, path, 'F16')."
            )
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


@dataclass(frozen=True)
class LlamaCppRun:
    """What :func:`generate_with_llama_cpp` measured."""

    text: str
    n_prompt_tokens: int
    n_new_tokens: int
    prompt_seconds: float  # reading the prompt and producing the first new token
    tokens_per_second: float  # generation speed after the first new token


def generate_with_llama_cpp(gguf_path: str | os.PathLike, prompt: str, max_new_tokens: int = 64, *,
                            n_threads: int | None = None, n_ctx: int = 2048) -> LlamaCppRun:
    """Greedy generation in llama.cpp on the CPU, timed token by token.

    ``prompt`` may contain special tokens (``tokenizer.apply_chat_template(..., tokenize=False)``).
    ``n_threads`` (for the prompt and for each new token) defaults to half the logical CPUs, as in
    llama-cpp-python: one per physical core where cores are hyperthreaded. More threads than free cores
    is much slower, not a little: on a busy 2-core machine, 2 threads made 3-10x fewer tokens/s than 1.
    """
    llama_cpp = _llama_cpp()
    path = Path(gguf_path)
    if not path.is_file():
        raise QuantlabError(f"No GGUF file at {path}; write one with quantlab.ggml.write_gguf().")
    threads = n_threads or max(1, (os.cpu_count() or 1) // 2)
    with _llama_cpp_log(llama_cpp, verbose=False):
        return _generate(llama_cpp, path, prompt, max_new_tokens, threads, n_ctx)


def _generate(llama_cpp, path: Path, prompt: str, max_new_tokens: int, threads: int, n_ctx: int) -> LlamaCppRun:
    try:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                              verbose=False, seed=0)
    except ValueError:  # llama-cpp-python's "Failed to load model from file"
        open_gguf(path)  # a damaged file says so
        raise
    try:
        prompt_ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        new_ids, times = [], []
        start = time.perf_counter()
        for token in llm.generate(prompt_ids, temp=0.0):
            if token == llm.token_eos() or len(new_ids) == max_new_tokens:
                break
            new_ids.append(token)
            times.append(time.perf_counter())
        text = llm.detokenize(new_ids).decode(errors="replace")
    finally:
        llm.close()
    first = times[0] if times else time.perf_counter()
    speed = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return LlamaCppRun(text, len(prompt_ids), len(new_ids), first - start, speed)
