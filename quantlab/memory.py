"""Count memory the same way everywhere (introduced in notebooks/02_why_quantize, used by every notebook).

Four different numbers get called "model size"; quantlab keeps them apart:

* :func:`weight_bytes` - bytes of parameters and buffers in memory, with quantized layers counted at
  their real packed size (bitsandbytes keeps its scales outside the parameters, so they are added);
* :func:`disk_bytes` - size of a saved checkpoint;
* :func:`measure_peak` - peak accelerator memory and process RSS while a block of code runs;
* :func:`estimate_model_bytes` - what a weight format *should* take, from bits per weight.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

MB = 1e6


def _extra_quant_tensors(param: torch.Tensor) -> Iterator[torch.Tensor]:
    """Tensors that bitsandbytes keeps beside a quantized parameter (its scales and code book)."""
    scb = getattr(param, "SCB", None)  # LLM.int8: one fp32 absmax per output row
    if isinstance(scb, torch.Tensor):
        yield scb
    state = getattr(param, "quant_state", None)  # 4-bit: absmax per block, maybe double-quantized
    while state is not None:
        for name in ("absmax", "code", "offset"):
            tensor = getattr(state, name, None)
            if isinstance(tensor, torch.Tensor):
                yield tensor
        state = getattr(state, "state2", None)


def _module_state_tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    """Tensors that quantized layers keep outside their parameters: bitsandbytes' Linear8bitLt moves SCB from its
    weight into ``module.state`` on its first forward; hqq's HQQLinear keeps scale and zero point in ``module.meta``
    (notebooks/13)."""
    for module in model.modules():
        scb = getattr(getattr(module, "state", None), "SCB", None)
        if isinstance(scb, torch.Tensor):
            yield scb
        meta = getattr(module, "meta", None)
        if isinstance(meta, dict):
            yield from (meta[k] for k in ("scale", "zero") if isinstance(meta.get(k), torch.Tensor))


def _stored_tensors(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """The plain tensors that hold ``tensor``'s data: itself, or for a tensor subclass such as torchao's
    Float8Tensor (notebooks/13) its inner tensors (``qdata`` and ``scale``), which is what occupies memory."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if not is_traceable_wrapper_subclass(tensor):
        yield tensor
        return
    for name in tensor.__tensor_flatten__()[0]:
        yield from _stored_tensors(getattr(tensor, name))


def _unique_tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    """Every parameter, buffer and quantization side tensor once (tied weights share storage)."""
    seen = set()
    for tensor in [*model.parameters(), *model.buffers(), *_module_state_tensors(model)]:
        for t in (inner for outer in (tensor, *_extra_quant_tensors(tensor)) for inner in _stored_tensors(outer)):
            if t.device.type == "meta":
                continue
            key = (id(t),) if is_traceable_wrapper_subclass(t) else (  # a wrapper (torchao) has no storage
                t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
            if key not in seen:
                seen.add(key)
                yield t


def _stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes of a tensor; for a tensor subclass that wraps others (torchao's float8 weights: fp8 data and scales,
    notebooks/11), the bytes of the tensors inside it."""
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return sum(_stored_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def weight_bytes(model: nn.Module) -> int:
    """Bytes that the model's tensors occupy, packed quantized weights at their real size."""
    return sum(_stored_bytes(t) for t in _unique_tensors(model))


def count_parameters(model: nn.Module) -> int:
    """Logical parameter count: a packed 4-bit or GPTQ weight counts as the matrix it stands for."""
    total = 0
    for p in model.parameters():  # each tied parameter once
        state = getattr(p, "quant_state", None)
        total += state.shape.numel() if state is not None else p.numel()
    # gptqmodel's GPTQ/AWQ layers keep packed buffers and no float weight parameter
    total += sum(m.in_features * m.out_features for m in model.modules() if hasattr(m, "qweight"))
    return total


def bits_per_parameter(model: nn.Module, n_parameters: int | None = None) -> float:
    """Average stored bits per logical parameter (16.0 for an fp16 model)."""
    return 8 * weight_bytes(model) / (n_parameters or count_parameters(model))


def disk_bytes(path: str | os.PathLike) -> int:
    """Size of a file, or of every file under a checkpoint folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def _reset_rss_peak() -> bool:
    """Linux lets a process reset its own peak RSS (VmHWM) by writing 5 to clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Peak:
    """Filled in when the ``measure_peak`` block ends; ``None`` where this platform cannot tell."""

    accelerator_bytes: int | None = None  # torch.cuda.max_memory_allocated during the block
    rss_peak_bytes: int | None = None  # process resident set size, highest during the block
    rss_delta_bytes: int | None = None  # RSS after minus before


@contextmanager
def measure_peak(device: str | torch.device | None = None):
    """Measure peak memory of the code inside ``with measure_peak() as peak:``."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    peak = Peak()
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    can_read_rss = Path("/proc/self/status").exists()
    rss_before = _rss_bytes("VmRSS") if can_read_rss else None
    rss_peak_resettable = can_read_rss and _reset_rss_peak()
    try:
        yield peak
    finally:
        if on_gpu:
            torch.cuda.synchronize(device)
            peak.accelerator_bytes = torch.cuda.max_memory_allocated(device)
        if can_read_rss:
            peak.rss_delta_bytes = _rss_bytes("VmRSS") - rss_before
            peak.rss_peak_bytes = _rss_bytes("VmHWM") if rss_peak_resettable else None


# --- theoretical sizes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightFormat:
    """How one weight matrix is stored: ``bits`` per value plus per-group scale and zero point.

    ``group_size=None`` means one scale per output row (per channel). ``extra_bits_per_weight`` holds
    overheads that are not a simple per-group scale (NF4's double quantization, GGUF block headers).
    """

    name: str
    bits: float
    group_size: int | None = None
    scale_bits: int = 0
    zero_bits: int = 0
    extra_bits_per_weight: float = 0.0

    def bits_per_weight(self, in_features: int | None = None) -> float:
        group = self.group_size or in_features
        overhead = (self.scale_bits + self.zero_bits) / group if group else 0.0
        return self.bits + overhead + self.extra_bits_per_weight


FLOAT_FORMATS = {
    "fp32": WeightFormat("fp32", 32),
    "fp16": WeightFormat("fp16", 16),
    "bf16": WeightFormat("bf16", 16),
}


def int_format(bits: int, group_size: int | None = 128, symmetric: bool = False, scale_bits: int = 16) -> WeightFormat:
    """Integer weights with a 16-bit scale per group (and a ``bits``-wide zero point when asymmetric).

    ``int_format(4, 128)`` is GPTQ/AWQ's 4-bit g128 layout; ``group_size=None`` is per output row.
    """
    label = f"int{bits} " + (f"g{group_size}" if group_size else "per-row") + (" sym" if symmetric else "")
    return WeightFormat(label, bits, group_size, scale_bits, 0 if symmetric else bits)


LLM_INT8 = WeightFormat("LLM.int8", 8, None, scale_bits=32)  # int8 + fp32 absmax per output row
NF4 = WeightFormat("NF4", 4, 64, scale_bits=32)  # fp32 absmax per block of 64
# Double quantization: 8-bit absmax per 64 weights, plus an fp32 constant per 256 of those blocks.
NF4_DOUBLE_QUANT = WeightFormat("NF4 + double quant", 4, None, extra_bits_per_weight=8 / 64 + 32 / (64 * 256))


def gguf_format(type_name: str) -> WeightFormat:
    """A GGUF block type (Q8_0, Q4_0, Q4_K, ...), from gguf-py's table of block sizes."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block_weights, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name.upper()]]
    return WeightFormat(type_name.upper(), 0, extra_bits_per_weight=8 * block_bytes / block_weights)


def is_quantized_by_default(name: str, module: nn.Module) -> bool:
    """The Linear layers that GPTQ, AWQ and bitsandbytes quantize: all but the output head."""
    return isinstance(module, nn.Linear) and not name.endswith("lm_head")


@dataclass(frozen=True)
class Inventory:
    """What a size estimate needs to know about a model: its quantizable weight matrices and the rest."""

    linear_weights: tuple[tuple[int, int], ...]  # (in_features, number of weights) per quantizable Linear
    other_values: int  # every other parameter and buffer value, each tied tensor once


def inventory(model: nn.Module, quantized=is_quantized_by_default) -> Inventory:
    """Take stock of ``model`` (a loaded float model, or one on the meta device)."""
    linear = {id(m.weight): (m.in_features, m.weight.numel())
              for name, m in model.named_modules() if quantized(name, m)}
    unique = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    other = sum(t.numel() for key, t in unique.items() if key not in linear)
    return Inventory(tuple(linear.values()), other)


def estimate_model_bytes(model: nn.Module | Inventory, fmt: WeightFormat, keep_bytes_per_value: float = 2.0,
                         quantized=is_quantized_by_default) -> int:
    """Theoretical bytes of ``model`` with its quantizable Linear weights stored in ``fmt``.

    Everything else (embeddings, tied or separate ``lm_head``, norms, biases, buffers) is counted at
    ``keep_bytes_per_value`` (2 for 16-bit, 4 for fp32). Takes a model or its :func:`inventory`.
    """
    stock = model if isinstance(model, Inventory) else inventory(model, quantized)
    linear = sum(n * fmt.bits_per_weight(in_features) / 8 for in_features, n in stock.linear_weights)
    return round(linear + stock.other_values * keep_bytes_per_value)
