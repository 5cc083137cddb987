"""Models at the shapes of real ones, without the hub (notebooks/11_when_quantization_pays).

Decode speed and memory depend on a model's shape (widths, layers, heads, vocabulary) and on the format of its
weights, not on what the weights say. So besides the default model (SmolLM2-135M, real weights from
:mod:`quantlab.models`) the speed sweep builds models with *random* weights from the configs of real models,
written below as literals. **Speed and memory only: random weights have no quality** (their text is noise, their
perplexity meaningless); every table and plot that shows them says so.

* :func:`config` - the transformers config of a shape; :func:`empty_model` builds it on the meta device and
  :func:`parameter_count` counts it there;
* :func:`build_random` - the model on a device, seeded, every weight drawn once from N(0, 0.02) in the target
  dtype on that device (what the models' own init does, without building in float32 first);
* :func:`checkpoint` - a shape saved once as a 16-bit safetensors folder in the cache (for loaders that read files:
  bitsandbytes' quantize-on-load, :func:`gguf_file`);
* :func:`gguf_file` - a shape's GGUF (F16 by :func:`quantlab.ggml.write_gguf`, Q8_0 and K-quants by llama.cpp's
  own quantizer), written once into the cache.
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from quantlab import ggml, models
from quantlab.errors import QuantlabError

RANDOM_LABEL = "speed and memory only: random weights have no quality"


@dataclass(frozen=True)
class Shape:
    name: str
    model: str  # the real model whose shape this is
    architecture: str  # "llama" or "qwen2": which transformers config class
    values: dict = field(default_factory=dict)  # the config's values; empty for the default model (real weights)

    @property
    def random(self) -> bool:
        return bool(self.values)

    @property
    def label(self) -> str:
        return f"{self.model} shape, random weights" if self.random else f"{self.model} (real weights)"


SHAPES = {shape.name: shape for shape in [
    Shape("smollm2-135m", models.DEFAULT_MODEL, "llama"),  # the default model itself (quantlab.models)
    # Qwen/Qwen2.5-0.5B, config.json on the hub
    Shape("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", "qwen2", dict(
        hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        bos_token_id=151643, eos_token_id=151643)),
    # meta-llama/Llama-3.2-1B, config.json on the hub
    Shape("llama-3.2-1b", "meta-llama/Llama-3.2-1B", "llama", dict(
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=128001)),
    # meta-llama/Llama-3.1-8B, config.json on the hub
    Shape("llama-3.1-8b", "meta-llama/Llama-3.1-8B", "llama", dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=128001)),
]}


def get(name: str) -> Shape:
    if name not in SHAPES:
        raise QuantlabError(f"Unknown model shape {name!r}. Known: {', '.join(SHAPES)}")
    return SHAPES[name]


def config(name: str):
    """The transformers config of a shape (for the default model: its checkpoint's config)."""
    from transformers import AutoConfig, LlamaConfig, Qwen2Config

    shape = get(name)
    if not shape.random:
        return AutoConfig.from_pretrained(models.resolve().path)
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[shape.architecture]
    return config_class(**shape.values)


def empty_model(name: str):
    """The model of a shape on the meta device: every tensor's shape and dtype, no memory, no init (the head tied
    to the embedding where the config says so). For counting and size estimates (:mod:`quantlab.memory`)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config(name), dtype=torch.float16)
    empty.tie_weights()  # on the meta device from_config leaves the head untied
    return empty


def parameter_count(name: str) -> int:
    """Parameters of a shape, counted on the meta device (nothing allocated), a tied embedding and head once."""
    return sum(p.numel() for p in empty_model(name).parameters())


@torch.no_grad()
def build_random(name: str, device: str = "cpu", dtype: torch.dtype = torch.float16, seed: int = 0):
    """A random-weight model of shape ``name`` on ``device`` in ``dtype``, in eval mode (see the module docstring).

    The model is made directly on ``device`` in ``dtype`` with transformers' own init switched off
    (``no_init_weights``: it would take 90 s for the 1B shape on a 2-core CPU), then every weight matrix is drawn
    from N(0, 0.02), the models' ``initializer_range``, and every norm set to 1, in place.
    """
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    if not get(name).random:
        raise QuantlabError(f"{name} is the default model with real weights: load it with quantlab.models.load().")
    with torch.device(device), no_init_weights():
        model = AutoModelForCausalLM.from_config(config(name), dtype=dtype)
    model.tie_weights()
    generator = torch.Generator(device=device).manual_seed(seed)
    for param_name, param in model.named_parameters():  # each tied matrix once
        if param_name.endswith("norm.weight"):
            param.fill_(1.0)
        elif param_name.endswith(".bias"):
            param.zero_()
        else:
            param.normal_(0.0, 0.02, generator=generator)
    return model.eval()


def checkpoint(name: str) -> Path:
    """A folder ``from_pretrained`` and :func:`quantlab.ggml.write_gguf` read: the default model's own checkpoint,
    or a random shape saved once in float16 with the default model's tokenizer (its 49,152 tokens; the ids above
    them are unused, which changes nothing in speed), under ``<cache>/shapes/<name>/``."""
    shape = get(name)
    if not shape.random:
        return Path(models.resolve().path)
    target = models.cache_dir() / "shapes" / name
    if (target / "config.json").is_file():
        return target

    def save(folder: Path) -> None:
        model = build_random(name, models.default_device(), torch.float16)  # seconds on a GPU
        model.save_pretrained(folder)
        save_beside(model, folder, name)

    write_once(target, save)
    return target


def save_beside(model, folder: Path, name: str) -> None:
    """What a checkpoint of shape ``name`` holds besides its weights: the config (with the default model's
    tokenizer's special tokens), the tokenizer, which servers such as vLLM load from the folder, and for a
    random shape ``quantlab_shape.json`` with :data:`RANDOM_LABEL`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models.resolve().path)
    if get(name).random:
        model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        (folder / "quantlab_shape.json").write_text(json.dumps({"shape": name, "note": RANDOM_LABEL}))
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_once(target: Path, write) -> None:
    """``write(tmp_folder)``, then rename it to ``target``: an interrupted write leaves nothing half-done."""
    target.parent.mkdir(parents=True, exist_ok=True)
    models.remove_abandoned_temp_dirs(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=target.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)  # mkdtemp's 0o700 otherwise
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


GGUF_TYPES = ("F16", "Q8_0", "Q4_K_M")


def gguf_checkpoint(name: str) -> Path:
    """What :func:`quantlab.ggml.write_gguf` converts: the Llama-architecture checkpoint of a shape.

    write_gguf converts Llama checkpoints with plain RoPE. Qwen2.5-0.5B's shape is written as a Llama model with
    its widths, layers, heads and vocabulary, without Qwen2's q/k/v biases (0.006 % of its weights), and Llama 3's
    RoPE scaling is left out (it changes the rotation frequencies, not the bytes or the work per token).
    """
    shape = get(name)
    plain = shape.architecture == "llama" and shape.values.get("rope_parameters", {}).get("rope_type") != "llama3"
    if not shape.random or plain:
        return checkpoint(name)
    target = models.cache_dir() / "shapes" / f"{name}-llama-plain-rope"
    if (target / "config.json").is_file():
        return target
    source = checkpoint(name)

    def convert(folder: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import save_file
        from transformers import LlamaConfig

        values = {**shape.values, "rope_parameters": {"rope_type": "default",
                                                      "rope_theta": shape.values["rope_parameters"]["rope_theta"]}}
        saved = json.loads((source / "config.json").read_text())
        values.update(bos_token_id=saved["bos_token_id"], eos_token_id=saved["eos_token_id"], dtype="float16")
        LlamaConfig(**values).save_pretrained(folder)
        with safe_open(source / "model.safetensors", framework="pt") as f:
            save_file({n: f.get_tensor(n) for n in f.keys() if not n.endswith(".bias")},  # noqa: SIM118
                      folder / "model.safetensors", metadata={"format": "pt"})
        for file in source.iterdir():
            if file.suffix != ".safetensors" and file.name != "config.json":
                shutil.copy(file, folder / file.name)

    write_once(target, convert)
    return target


def gguf_file(name: str, ftype: str) -> Path:
    """The GGUF of shape ``name`` in ``ftype`` (F16, Q8_0 or Q4_K_M), written once under ``<cache>/shapes/gguf/``:
    F16 by :func:`quantlab.ggml.write_gguf`, the others from it by llama.cpp's quantizer (notebooks/06)."""
    ftype = ftype.upper()
    if ftype not in GGUF_TYPES:
        raise QuantlabError(f"GGUF type {ftype!r} is not one the sweep makes; pick one of {', '.join(GGUF_TYPES)}.")
    folder = models.cache_dir() / "shapes" / "gguf"
    path = folder / f"{name}-{ftype}.gguf"
    if path.is_file():
        return path
    f16 = folder / f"{name}-F16.gguf"
    if not f16.is_file():
        ggml.write_gguf(gguf_checkpoint(name), f16, "F16")
    if ftype != "F16":
        ggml.quantize_with_llama_cpp(f16, path, ftype)
    return path
