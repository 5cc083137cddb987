"""One registry of quantization methods, each loaded with the real library calls (notebooks/09).

Every entry takes the baseline checkpoint folder and returns a loaded model. The quantization calls
are the same ones the method's own notebook teaches (``BitsAndBytesConfig``, ``GPTQConfig``,
gptqmodel's ``AWQConfig``/``RTNConfig``, gguf-py, llama.cpp's quantizer); this module only adds caching and
timing around them, so ``quantlab compare`` measures exactly what a reader would run.

Quantized checkpoints are cached under ``<cache>/quantized/<model>/<method>-<settings hash>/``,
written to a temporary folder and renamed into place.
"""

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from quantlab import data, ggml, memory
from quantlab.errors import QuantlabError
from quantlab.models import ModelSource, cache_dir, remove_abandoned_temp_dirs


@dataclass(frozen=True)
class Settings:
    """What a quantized checkpoint depends on besides the model and the method."""

    device: str = "cpu"
    dtype: str = "float32"  # the baseline's dtype; also the dtype of what stays unquantized
    calib_source: str = data.CALIBRATION_SOURCE
    calib_samples: int = 128
    calib_seq_len: int = 512
    seed: int = 0
    group_size: int = 128  # int4 methods; see group_size_for()

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def cache_key(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if k != "device"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Built:
    """A loaded model plus what it took to make it."""

    model: torch.nn.Module
    quantize_seconds: float | None  # None for the baseline
    checkpoint: Path | None  # what is on disk (folder or .gguf file), for its size
    note: str = ""
    disk_bytes: int | None = None  # the size on disk where no checkpoint is kept (bitsandbytes quantizes on load)
    # The weights' bytes as stored, where the loaded model holds them in another form (transformers
    # dequantizes GGUF on load): the file's tensor data, for the bits-per-weight of the Pareto plot.
    stored_bytes: int | None = None

    def disk_size(self) -> int | None:
        """Bytes on disk: the kept checkpoint's, or those measured before it was deleted; None for neither."""
        if self.disk_bytes is not None:
            return self.disk_bytes
        return memory.disk_bytes(self.checkpoint) if self.checkpoint else None


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    hardware: str
    weight_format: Callable[[Settings], memory.WeightFormat]  # the storage format, for the size estimate
    build: Callable[[ModelSource, Settings], Built]
    requires: tuple[str, ...] = ()  # importable module names
    install_hint: str = ""
    cuda_only: bool = False
    extra: dict = field(default_factory=dict)
    # (major, minor) CUDA compute capability the kernels need, e.g. (8, 9) for FP8 tensor cores; implies CUDA
    min_capability: tuple[int, int] | None = None

    def unavailable_reason(self, device: str | None = None) -> str | None:
        """None when the method can run here, else why not and what to do."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return f"needs {', '.join(missing)}: {self.install_hint or 'pip install -r requirements.txt'}"
        on_cuda = torch.cuda.is_available() and (device or "cuda").startswith("cuda")
        if self.min_capability:
            return capability_reason(self.min_capability, device if on_cuda else None)
        if self.cuda_only and not on_cuda:
            return "needs an NVIDIA GPU (CUDA)"
        return None


def group_size_for(config) -> int:
    """128, the usual int4 group, unless the model's widths are not multiples of it.

    gptqmodel's fast int4 kernels (TorchAten on CPU, Marlin on GPU) need whole groups: SmolLM2-135M's hidden
    size 576 is 4.5 groups of 128, so it gets groups of 64 (its slower pure-torch kernel would accept 128).
    """
    widths = (config.hidden_size, config.intermediate_size)
    return next(g for g in (128, 64, 32, 16) if all(w % g == 0 for w in widths))


# --- caching -----------------------------------------------------------------------------------------


def quantized_dir(src: ModelSource, method: str, settings: Settings) -> Path:
    slug = src.model_id.replace("/", "--")
    return cache_dir() / "quantized" / slug / f"{method}-{settings.cache_key()}"


def is_cached(src: ModelSource, method: str, settings: Settings) -> bool:
    """Whether ``method`` has a finished quantized checkpoint for ``settings`` in the cache (any group size)."""
    folder = quantized_dir(src, method, settings)
    return any((d / "quantlab.json").is_file() for d in folder.parent.glob(f"{method}*-{settings.cache_key()}"))


def cached_or_quantize(target: Path, quantize: Callable[[Path], None]) -> float:
    """Run ``quantize(tmp_folder)`` unless ``target`` exists; return the quantization seconds
    (measured now, or read back from the cache's ``quantlab.json``).

    What the libraries print or log meanwhile goes to ``quantize.log`` in the checkpoint folder (see
    :func:`output_to`); if ``quantize`` fails, the log is kept beside the target and its path added to the error.
    """
    meta = target / "quantlab.json"
    if meta.is_file():
        return _cached_seconds(meta)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temp_dirs(target.parent)  # left by a quantization that was killed
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=target.parent))
    try:
        start = time.perf_counter()
        with output_to(tmp / QUANTIZE_LOG):
            quantize(tmp)
        seconds = time.perf_counter() - start
        (tmp / "quantlab.json").write_text(json.dumps({"quantize_seconds": seconds}))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    except BaseException as err:
        if (tmp / QUANTIZE_LOG).is_file():
            failed_log = (tmp / QUANTIZE_LOG).replace(target.with_name(f"{target.name}-failed.log"))
            err.add_note(f"what the libraries printed while quantizing: {failed_log}")
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"quantized in {seconds:.0f} s; what the libraries printed: {target / QUANTIZE_LOG}")
    return seconds


QUANTIZE_LOG = "quantize.log"


def _cached_seconds(meta: Path) -> float:
    """The quantization time that a finished checkpoint's ``quantlab.json`` recorded."""
    try:
        return float(json.loads(meta.read_text())["quantize_seconds"])
    except (ValueError, KeyError, TypeError) as err:  # cut off, or not what cached_or_quantize writes
        raise QuantlabError(f"{meta} is damaged ({type(err).__name__}: {err}). To fix it, "
                            f"{rebuild_hint(meta.parent)}") from err


@contextlib.contextmanager
def output_to(path: Path):
    """Send what Python code prints, warns or logs to stdout/stderr into the file ``path`` instead.

    Quantizing the default model, gptqmodel prints a table per layer and optimum logs two lines per layer:
    thousands of lines that bury a notebook's output, and, in a cell that nbval runs, overflow Jupyter's message
    buffers so that the end of the cell is lost ("Timeout of 5 seconds exceeded waiting for output"). Progress
    bars drawn as notebook widgets still show. Logging handlers made meanwhile (a library imported for the first
    time) write to the screen again afterwards.
    """
    stdout, stderr = sys.stdout, sys.stderr
    screens = {id(s) for s in (stdout, stderr, sys.__stdout__, sys.__stderr__)}
    restore = {h: h.stream for h in _stream_handlers() if id(h.stream) in screens}
    # two line-buffered appenders to one file, to tell afterwards which one a new handler took
    with (open(path, "a", buffering=1) as out, open(path, "a", buffering=1) as err,
          contextlib.redirect_stdout(out), contextlib.redirect_stderr(err)):
        for handler in restore:
            handler.setStream(err)
        try:
            yield
        finally:
            restore |= {h: stdout if h.stream is out else stderr for h in _stream_handlers() if h.stream in (out, err)}
            for handler, stream in restore.items():
                if getattr(vars(handler).get("flush"), "__self__", None) in (out, err):
                    del handler.flush  # transformers binds its handler's flush to the stderr of its first import
                handler.setStream(stream)


@contextlib.contextmanager
def logger_level(name: str, level: int):
    """Set one logger's level for the duration, then restore it."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


@contextlib.contextmanager
def dropped_messages(name: str, text: str):
    """Drop the records of one logger that contain ``text`` for the duration; everything else it logs still shows."""
    logger = logging.getLogger(name)

    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    # "stream" of an instance: logging.lastResort's stream is a read-only property, always the current sys.stderr
    return [h for lg in loggers for h in lg.handlers if isinstance(h, logging.StreamHandler) and "stream" in vars(h)]


def _load_checkpoint(path: Path, settings: Settings, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, device_map=settings.device, **kwargs).eval()


def rebuild_hint(target: Path) -> str:
    """What to do about a cached checkpoint that does not load: delete it, and the next run quantizes again."""
    return f"delete it and run again, which makes it anew: rm -r {shlex.quote(str(target))}"


def _load_cached(target: Path, settings: Settings, **kwargs):
    """A cached quantized checkpoint folder, loaded; one with a file missing or cut short (a ``quantlab.json`` but
    no ``config.json``, truncated safetensors) is named in a QuantlabError with the command that removes it."""
    from safetensors import SafetensorError

    missing = [name for name in ("config.json", "*.safetensors") if not any(target.glob(name))]
    if missing:
        raise QuantlabError(f"The cached checkpoint {target} is incomplete: it has no {' and no '.join(missing)}. "
                            f"To fix it, {rebuild_hint(target)}")
    try:
        return _load_checkpoint(target, settings, **kwargs)
    except (OSError, SafetensorError) as err:  # a file cut short: transformers' "not a valid JSON file", safetensors'
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no message'}"
        raise QuantlabError(f"The cached checkpoint {target} does not load ({reason}): it is incomplete or damaged. "
                            f"To fix it, {rebuild_hint(target)}") from err


def _calibration_texts(src: ModelSource, settings: Settings) -> list[str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src.path)
    return data.calibration_texts(tokenizer, settings.calib_samples, settings.calib_seq_len, settings.seed,
                                  source=settings.calib_source)


@contextlib.contextmanager
def gptqmodel_environment():
    """The two gptqmodel settings a small CPU machine needs, for the duration of a build, then restored.

    gptqmodel 7.6 reads them from the environment when it first builds its worker pool and packs a layer:
    ``GPTQMODEL_CPU_WORKERS`` (its default, (cores + 1) // 2, is smaller than the 2 workers its model loader asks
    for on a 2-core machine: "Virtual pool 'model_loader:cpu' requests 2 workers but parent 'cpu' only has 1") and
    ``GPTQMODEL_DISABLE_PACK_EXT`` (Python packing instead of a C++ extension that takes a minute to compile).
    Values the reader has set win. Notebooks 03-05 set the same two in their setup cells, in plain sight.
    """
    wanted = {"GPTQMODEL_CPU_WORKERS": str(max(2, os.cpu_count() or 2)), "GPTQMODEL_DISABLE_PACK_EXT": "1"}
    added = [name for name in wanted if name not in os.environ]
    os.environ.update({name: wanted[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


# --- builders: one per method family ------------------------------------------------------------------


def build_baseline(src: ModelSource, s: Settings) -> Built:
    load = _load_cached if src.origin == "bundled GGUF" else _load_checkpoint  # converted once into the cache
    model = load(Path(src.path), s, dtype=s.torch_dtype)
    return Built(model, None, Path(src.path) if Path(src.path).is_dir() else None)


def _on_load_builder(make_config: Callable[[Settings], object],
                     prepare: Callable = lambda model: model) -> Callable[[ModelSource, Settings], Built]:
    """bitsandbytes and torchao quantize while loading; the load is timed as the quantization. ``prepare`` gets the
    loaded model before anything runs it."""

    def build(src: ModelSource, s: Settings) -> Built:
        start = time.perf_counter()
        # on AVX512-BF16 CPUs bitsandbytes warns at import that the `kernels` package cannot fetch it a hub kernel
        with logger_level("bitsandbytes.backends.cpu.ops", logging.ERROR):
            model = _load_checkpoint(Path(src.path), s, dtype=s.torch_dtype, quantization_config=make_config(s))
            model = prepare(model)
        seconds = time.perf_counter() - start
        with tempfile.TemporaryDirectory(prefix="quantlab-onload-") as saved:  # saved only to measure its size
            model.save_pretrained(saved)
            size = memory.disk_bytes(saved)
        return Built(model, seconds, None, "quantized on load; checkpoint saved to measure its size, then deleted",
                     disk_bytes=size)

    return build


def bnb_int8_config(s: Settings):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def _float32_cpu_path(model):
    """bitsandbytes' 4-bit layers on their float32 path, where a CPU has AVX512-BF16 (notebooks/08_bnb_nf4_qlora:
    there bitsandbytes repacks the weights at the first forward pass, which changes the outputs and breaks saving
    and training), so that every CPU measures the same model as every other and as notebook 08."""
    from quantlab.bnb_cpu import keep_float32_cpu_path

    return keep_float32_cpu_path(model)


def bnb_4bit_config(quant_type: str, double_quant: bool):
    def make(s: Settings):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                  bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=s.torch_dtype)

    return make


# Linears of a Llama-style block that read the same input, in the order GPTQ calibrates them (notebooks/03).
LLAMA_BLOCK_GROUPS = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                      ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
LLAMA_STYLE = ("llama", "mistral", "qwen2", "qwen3", "smollm3")


def gptq_block_groups(model_type: str) -> list[list[str]] | None:
    """``modules_in_block_to_quantize`` for GPTQConfig: q/k/v and gate/up share their input, so their Hessians
    are the same whichever is quantized first, and one calibration pass serves each group: 4 passes per block
    instead of 7, the same result (notebooks/03 explains). None (optimum's one-Linear-at-a-time default) for
    architectures with other names."""
    return LLAMA_BLOCK_GROUPS if model_type in LLAMA_STYLE else None


def int4_dtype(device: str) -> torch.dtype:
    """What GPTQ quantizes in, and what an AWQ checkpoint's unquantized parts load in (gptqmodel saves bfloat16,
    which transformers would otherwise keep): float32 on a CPU, whose 16-bit matmuls are far slower; float16 on a
    GPU, which the int4 kernels compute in (notebooks/03_gptq, 05_awq)."""
    return torch.float32 if device == "cpu" else torch.float16


@gptqmodel_environment()
def gptq_checkpoint(src: ModelSource, s: Settings) -> tuple[Path, float]:
    """transformers' GPTQConfig (optimum + gptqmodel underneath), calibrated on offline text: the cached
    checkpoint folder (made now unless cached) and its quantization seconds. The same calls as notebooks/03
    (symmetric grid, groups of ``s.group_size``), so a checkpoint made there for the same settings is reused here."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPTQConfig

    def quantize(out: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(src.path)
        groups = gptq_block_groups(AutoConfig.from_pretrained(src.path).model_type)
        config = GPTQConfig(bits=4, group_size=s.group_size, dataset=_calibration_texts(src, s), tokenizer=tokenizer,
                            sym=True, modules_in_block_to_quantize=groups)
        model = AutoModelForCausalLM.from_pretrained(src.path, quantization_config=config,
                                                     dtype=int4_dtype(s.device), device_map=s.device)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    target = int4_dir(src, "gptq-int4", s)
    return target, cached_or_quantize(target, quantize)


def int4_dir(src: ModelSource, method: str, s: Settings) -> Path:
    """Where :func:`gptq_checkpoint` ("gptq-int4") and :func:`awq_checkpoint` ("awq-int4") cache theirs."""
    return quantized_dir(src, f"{method}-g{s.group_size}", s)


def loaded(make_checkpoint: Callable[[ModelSource, Settings], tuple[Path, float]]):
    """A method's builder from its checkpoint maker: the cached checkpoint, loaded."""

    def build(src: ModelSource, s: Settings) -> Built:
        target, seconds = make_checkpoint(src, s)
        return Built(_load_cached(target, s), seconds, target)

    return build


build_gptq = loaded(gptq_checkpoint)


@gptqmodel_environment()
def build_rtn(src: ModelSource, s: Settings) -> Built:
    """gptqmodel's RTNConfig: load, quantize (no calibration), save; transformers loads the result."""

    def quantize(out: Path) -> None:
        from gptqmodel import BACKEND, GPTQModel

        dtype = "auto" if s.device == "cpu" else int4_dtype(s.device)  # on a GPU GPTQ's float16: the same kernel
        model = GPTQModel.load(src.path, rtn_config(s), device=s.device, dtype=dtype)
        model.quantize(None, backend=BACKEND.AUTO)
        model.save(str(out))

    target = quantized_dir(src, f"rtn-int4-g{s.group_size}-gptq_v2", s)  # earlier versions wrote "gptq"
    seconds = cached_or_quantize(target, quantize)
    return Built(_load_cached(target, s), seconds, target)


def awq_config(s: Settings):
    """AWQ's own format: int4 with a zero point per group (autoawq's ``zero_point=True``, what AWQ checkpoints on
    the hub use). gptqmodel's ``AWQConfig`` defaults to ``sym=True``, which costs the default model far more
    perplexity than AWQ's scaling saves (notebooks/05). ``offload_to_disk=False`` as in :func:`rtn_config`."""
    from gptqmodel import AWQConfig

    return AWQConfig(bits=4, group_size=s.group_size, sym=False, offload_to_disk=False)


def awq_calibration(src: ModelSource, s: Settings) -> list[dict]:
    """gptqmodel's AWQ calibration rows: token ids, every row exactly ``s.calib_seq_len`` long.

    gptqmodel 7.6 stacks the activations it records into one tensor per layer; when the rows differ in length it
    cannot, and silently keeps only the last row (the shortest: it sorts by length) for its scale and clipping
    searches. Text windows re-tokenize to a token more or less here and there (``data.calibration_texts``), so
    texts could calibrate the whole model on a single window (notebooks/05).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src.path)
    ids = data.calibration_token_ids(tokenizer, s.calib_samples, s.calib_seq_len, s.seed, source=s.calib_source)
    return [{"input_ids": row.tolist(), "attention_mask": [1] * len(row)} for row in ids]


def awq_kernel(device: str) -> str:
    """The AWQ kernel for ``device``, by the name that gptqmodel's ``BACKEND`` and transformers' ``AwqBackend`` share
    (notebooks/05):

    - ``"torch_awq"`` on a CPU, to quantize: the default GEMM kernel raises "AWQ: CUDA is not available";
    - ``"gemm_triton"`` on a GPU older than compute capability 8.0 (Colab's T4 is 7.5): gptqmodel 7.6 picks its CUDA
      GEMM there too, whose extension also instantiates a bfloat16 kernel that nvcc refuses below 8.0 ("BFloat16
      AWQ GEMM requires CUDA_ARCH >= 800."), so it never builds; its Triton GEMM (float16) does;
    - ``"auto"`` elsewhere: gptqmodel's own choice.
    """
    if not device.startswith("cuda"):
        return "torch_awq"
    return "gemm_triton" if torch.cuda.get_device_capability(torch.device(device)) < (8, 0) else "auto"


def awq_load_config(device: str):
    """What loading an AWQ checkpoint with transformers needs besides its own config.json: on a GPU older than 8.0
    the kernel of :func:`awq_kernel` (only loading attributes are taken from it); None elsewhere."""
    from transformers import AwqConfig

    kernel = awq_kernel(device)
    return AwqConfig(backend=kernel) if kernel == "gemm_triton" else None


@gptqmodel_environment()
def awq_checkpoint(src: ModelSource, s: Settings) -> tuple[Path, float]:
    """gptqmodel's AWQConfig: load, quantize on equal-length calibration rows, save; the cached checkpoint folder
    (made now unless cached) and its quantization seconds. The same calls as notebooks/05, so a checkpoint made
    there for the same settings is reused here."""

    def quantize(out: Path) -> None:
        from gptqmodel import GPTQModel

        kernel = awq_kernel(s.device)
        dtype = {"dtype": torch.float16} if kernel == "gemm_triton" else {}  # the only dtype of that kernel
        model = GPTQModel.load(src.path, awq_config(s), device=s.device, **dtype)
        model.quantize(awq_calibration(src, s), backend=kernel)
        model.save(str(out))

    target = int4_dir(src, "awq-int4", s)
    return target, cached_or_quantize(target, quantize)


def build_awq(src: ModelSource, s: Settings) -> Built:
    """The cached AWQ checkpoint (:func:`awq_checkpoint`), loaded with the kernel of :func:`awq_kernel`."""
    target, seconds = awq_checkpoint(src, s)
    config = awq_load_config(s.device)
    model = _load_cached(target, s, dtype=int4_dtype(s.device), **({"quantization_config": config} if config else {}))
    return Built(model, seconds, target)


def rtn_config(s: Settings):
    """RTN int4 on GPTQ's grid, stored like ``build_gptq``'s checkpoints, so that both load with the same kernel.

    Two departures from gptqmodel 7.6's defaults, both for torch 2.11 (Colab's, the GPU runner's) and Hopper GPUs:
    - ``pack_impl="original"``: its default block packer fails under torch 2.11 with "Inference tensors do not
      track version counter" (RTN computes its weights in inference mode); the original packer writes
      byte-identical checkpoints (checked on torch 2.13).
    - ``format="gptq_v2"``, what optimum writes for GPTQ: for the older "gptq" format gptqmodel prefers its
      Machete kernel on a Hopper GPU, which then refuses SmolLM2's 192-wide k/v projections at load time; in
      "gptq_v2" it takes Marlin, as for GPTQ. The two formats give identical logits (checked on a CPU).
    - ``offload_to_disk=False``: its default offloads finished layers to a ``gptqmodel_*`` temporary folder that
      lives as long as the config, so it outlived `quantlab compare`'s run (tests/test_compare.py).
    """
    from gptqmodel import RTNConfig

    return RTNConfig(bits=4, group_size=s.group_size, pack_impl="original", format="gptq_v2", offload_to_disk=False)


GGUF_NOTE = "transformers dequantizes GGUF on load: memory is float, the file is the quantized size"


def _cached_gguf_rows(target: Path) -> list[ggml.TensorRow]:
    """The tensors of a cached ``model.gguf``; a damaged file is named with the command that removes its folder."""
    return ggml.tensor_table(target / "model.gguf", fix=rebuild_hint(target))


def _load_gguf(target: Path, s: Settings, seconds: float, note: str = GGUF_NOTE) -> Built:
    stored = sum(row.n_bytes for row in _cached_gguf_rows(target))  # read first: it checks the file is whole
    model = _load_checkpoint(target, s, gguf_file="model.gguf", dtype=s.torch_dtype)
    return Built(model, seconds, target / "model.gguf", note, stored_bytes=stored)


def is_k_quant(qtype: str) -> bool:
    """Q4_K_M, Q6_K, ...: 256-weight super-blocks, which only llama.cpp's quantizer writes (notebooks/06_gguf)."""
    return "_K" in qtype.upper()


def gguf_file(src: ModelSource, s: Settings, qtype: str) -> tuple[Path, float]:
    """The cached ``model.gguf`` of ``qtype`` and the seconds it took to write (notebooks/06_gguf writes the same
    files). Q8_0, Q4_0, ...: gguf-py's blocks (:func:`quantlab.ggml.write_gguf`); a K-quant such as Q4_K_M: an F16
    file from it, quantized by llama.cpp's own quantizer (through llama-cpp-python), the F16 file then deleted."""

    def write(out: Path) -> None:
        if not is_k_quant(qtype):
            ggml.write_gguf(src.path, out / "model.gguf", qtype)
            return
        f16 = ggml.write_gguf(src.path, out / "model-F16.gguf", "F16")
        ggml.quantize_with_llama_cpp(f16, out / "model.gguf", qtype)
        f16.unlink()

    target = quantized_dir(src, f"gguf-{qtype.lower()}", s)
    seconds = cached_or_quantize(target, write)
    return target / "model.gguf", seconds


def _gguf_builder(qtype: str):
    """The cached GGUF of ``qtype`` (:func:`gguf_file`), loaded back through transformers; a K-quant's note names
    the tensor types it mixes."""

    def build(src: ModelSource, s: Settings) -> Built:
        path, seconds = gguf_file(src, s, qtype)
        if not is_k_quant(qtype):
            return _load_gguf(path.parent, s, seconds)
        types = sorted({row.type_name for row in _cached_gguf_rows(path.parent)})
        note = (f"{GGUF_NOTE}; {qtype} mixes tensor types ({', '.join(types)}: rows that are not a multiple of "
                f"256 fall back to 32-weight types), so the file differs from the {qtype.split('_')[0]} estimate")
        return _load_gguf(path.parent, s, seconds, note)

    return build


GPTQMODEL_HINT = "pip install optimum==2.3.0 gptqmodel==7.6.0 (see notebooks/01_setup)"
BNB_HINT = "pip install bitsandbytes==0.50.2"
LLAMA_CPP_HINT = ggml.INSTALL_LLAMA_CPP

def _fixed(fmt: memory.WeightFormat) -> Callable[[Settings], memory.WeightFormat]:
    return lambda s: fmt


def _gguf_format(type_name: str) -> Callable[[Settings], memory.WeightFormat]:
    """Read from gguf-py when asked, not at import: the registry (and `quantlab env`) must work without gguf."""
    return lambda s: memory.gguf_format(type_name)


def _int4(s: Settings) -> memory.WeightFormat:
    return memory.int_format(4, s.group_size)


METHODS = [
    Method("baseline", "the unquantized model: fp32 on CPU, bf16/fp16 on GPU", "CPU or GPU",
           lambda s: memory.FLOAT_FORMATS["bf16" if s.dtype == "bfloat16" else s.dtype.replace("float", "fp")],
           build_baseline),
    Method("bnb-int8", "bitsandbytes LLM.int8(): int8 weights, outlier features in 16 bit", "CPU or GPU",
           _fixed(memory.LLM_INT8), _on_load_builder(bnb_int8_config), ("bitsandbytes",), BNB_HINT),
    Method("bnb-nf4", "bitsandbytes NF4 with double quantization (the QLoRA config)", "CPU or GPU",
           _fixed(memory.NF4_DOUBLE_QUANT), _on_load_builder(bnb_4bit_config("nf4", True), _float32_cpu_path),
           ("bitsandbytes",), BNB_HINT),
    Method("bnb-fp4", "bitsandbytes FP4, no double quantization", "CPU or GPU",
           _fixed(memory.NF4), _on_load_builder(bnb_4bit_config("fp4", False), _float32_cpu_path), ("bitsandbytes",),
           BNB_HINT),
    Method("rtn-int4", "round to nearest, int4 on GPTQ's grid (gptqmodel RTNConfig): the control", "CPU or GPU",
           _int4, build_rtn, ("gptqmodel",), GPTQMODEL_HINT),
    Method("gptq-int4", "GPTQ int4 via transformers GPTQConfig (optimum + gptqmodel)", "CPU or GPU",
           _int4, build_gptq, ("gptqmodel", "optimum"), GPTQMODEL_HINT),
    Method("awq-int4", "AWQ int4 via gptqmodel AWQConfig (autoawq is deprecated)", "CPU or GPU",
           _int4, build_awq, ("gptqmodel",), GPTQMODEL_HINT),
    Method("gguf-q8_0", "GGUF Q8_0 written with gguf-py, loaded by transformers", "CPU or GPU",
           _gguf_format("Q8_0"), _gguf_builder("Q8_0"), ("gguf",), "pip install gguf==0.19.0"),
    Method("gguf-q4_0", "GGUF Q4_0 written with gguf-py, loaded by transformers", "CPU or GPU",
           _gguf_format("Q4_0"), _gguf_builder("Q4_0"), ("gguf",), "pip install gguf==0.19.0"),
    Method("gguf-q4_k_m", "GGUF Q4_K_M (K-quant) made by llama.cpp's quantizer, loaded by transformers", "CPU or GPU",
           _gguf_format("Q4_K"), _gguf_builder("Q4_K_M"), ("gguf", "llama_cpp"),
           "pip install gguf==0.19.0 and " + LLAMA_CPP_HINT),
]
# --- FP8 (torchao), HQQ and the quantized KV cache (notebooks/13_fp8_hqq_kv_cache) -------------------

FP8_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (8.9), Hopper (9.0), Blackwell


def capability_reason(needed: tuple[int, int], device: str | None) -> str | None:
    """Why a method that needs CUDA compute capability ``needed`` cannot run on ``device`` (None: no GPU), or None."""
    wanted = f"an NVIDIA GPU of compute capability {needed[0]}.{needed[1]} or higher (FP8: Ada, Hopper, Blackwell)"
    if device is None:
        return f"needs {wanted}; this machine runs on the CPU"
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if (major, minor) < needed:
        return f"needs {wanted}; {torch.cuda.get_device_name(torch.device(device))} has {major}.{minor}"
    return None


def fp8_weight_only_config(s: Settings):
    """torchao's FP8 weights (E4M3, one scale per row), matmul in the activations' dtype."""
    from torchao.quantization import Float8WeightOnlyConfig
    from transformers import TorchAoConfig

    return TorchAoConfig(Float8WeightOnlyConfig())


def fp8_w8a8_config(s: Settings):
    """torchao's FP8 weights and activations, both scaled per row; the matmul on FP8 tensor cores."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow
    from transformers import TorchAoConfig

    return TorchAoConfig(Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))


def build_hqq(src: ModelSource, s: Settings) -> Built:
    """HQQ 4-bit with the hqq library's own model API, on the loaded baseline; timed as the quantization.

    transformers 5.17's ``HqqConfig`` cannot quantize on load: ``from_pretrained`` raises "QuantizationMethod.HQQ
    is not available yet and will be supported soon" (its quantizer has no ``get_quantize_ops``), so the
    settings are HqqConfig's (``BaseQuantizeConfig``, groups along the input, ``axis=1``) applied by hqq itself.
    """
    from hqq.core.quantize import BaseQuantizeConfig
    from hqq.models.hf.base import AutoHQQHFModel

    model = build_baseline(src, s).model
    log = hqq_log(src, s)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    start = time.perf_counter()
    with output_to(log):
        AutoHQQHFModel.quantize_model(model, quant_config=BaseQuantizeConfig(nbits=4, group_size=s.group_size, axis=1),
                                      compute_dtype=s.torch_dtype, device=s.device)
    return Built(model, time.perf_counter() - start, None,
                 "quantized after loading with hqq's AutoHQQHFModel (transformers 5.17's HqqConfig cannot quantize "
                 "on load); not saved, so no disk size")


def hqq_log(src: ModelSource, s: Settings) -> Path:
    """Where :func:`build_hqq` writes what hqq prints while quantizing (nothing is saved besides it), rewritten each
    time, beside the checkpoints of the same settings."""
    return quantized_dir(src, f"hqq-int4-g{s.group_size}", s).with_suffix(".log")


def _hqq_int4(s: Settings) -> memory.WeightFormat:
    """HQQ keeps scale and zero point per group unpacked, in the model's dtype (float32 on a CPU)."""
    meta_bits = 8 * s.torch_dtype.itemsize
    return memory.WeightFormat(f"HQQ int4 g{s.group_size}", 4, s.group_size, scale_bits=meta_bits, zero_bits=meta_bits)


def _baseline_format(s: Settings) -> memory.WeightFormat:
    return get("baseline").weight_format(s)


def _fp8(s: Settings) -> memory.WeightFormat:
    return memory.WeightFormat("FP8 E4M3 per row", 8, None, scale_bits=32)


def _kv_cache_builder(bits: int) -> Callable[[ModelSource, Settings], Built]:
    """The baseline's weights read through a quantized KV cache (quantlab.kvcache.CachedScoring)."""

    def build(src: ModelSource, s: Settings) -> Built:
        from quantlab import kvcache

        base = build_baseline(src, s)
        note = (f"weights unquantized; KV cache {bits}-bit ({kvcache.BACKEND} backend, groups of "
                f"{kvcache.GROUP_SIZE}); perplexity, KL and prefill read the text through the cache "
                f"{KV_CHUNK} tokens at a time")
        return Built(kvcache.CachedScoring(base.model, bits, KV_CHUNK), None, base.checkpoint, note)

    return build


KV_CHUNK = 64  # tokens per step when the harness reads text through a KV cache
HQQ_HINT = "DISABLE_CUDA=1 pip install hqq==0.2.8.post1 (see notebooks/13_fp8_hqq_kv_cache)"
FP8_HINT = "pip install torchao==0.18.0"
NEW_METHODS = [
    Method("hqq-int4", "HQQ int4 (hqq library, HqqConfig's settings): calibration-free", "CPU or GPU",
           _hqq_int4, build_hqq, ("hqq",), HQQ_HINT),
    Method("fp8-wo", "FP8 E4M3 weights, per-row scales (torchao Float8WeightOnlyConfig)", "GPU, CC >= 8.9",
           _fp8, _on_load_builder(fp8_weight_only_config), ("torchao",), FP8_HINT, min_capability=FP8_CAPABILITY),
    Method("fp8-w8a8", "FP8 weights and dynamic FP8 activations, rowwise (torchao)", "GPU, CC >= 8.9",
           _fp8, _on_load_builder(fp8_w8a8_config), ("torchao",), FP8_HINT, min_capability=FP8_CAPABILITY),
    Method("kv-int8", "baseline weights, 8-bit quantized KV cache (transformers QuantizedCache, HQQ)", "CPU or GPU",
           _baseline_format, _kv_cache_builder(8), ("hqq",), HQQ_HINT),
    Method("kv-int4", "baseline weights, 4-bit quantized KV cache (transformers QuantizedCache, HQQ)", "CPU or GPU",
           _baseline_format, _kv_cache_builder(4), ("hqq",), HQQ_HINT),
]
METHODS += NEW_METHODS
REGISTRY = {m.name: m for m in METHODS}


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise QuantlabError(f"Unknown method {name!r}. Known: {', '.join(REGISTRY)}")
    return REGISTRY[name]
