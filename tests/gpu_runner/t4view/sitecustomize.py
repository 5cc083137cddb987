"""The libraries' view of Colab's T4 on a bigger GPU (`run.sh t4-notebooks`, tests/gpu_runner/README.md).

Python imports ``sitecustomize`` at start-up when it is on the path, before any notebook or test code: this one
makes torch answer the questions the libraries ask when they choose a dtype, a kernel or a memory budget as a
T4 would (compute capability 7.5, 15 GB), and caps this process's GPU memory at 15 GB. It is an emulation of the
*choices*, not of a T4: speed is the real GPU's, and compiled code must still target the real GPU, or it cannot
run there (code that Triton or inductor compiled for the reported 7.5 failed on the H200 with "no kernel image is
available", 2026-12-02). So callers inside the compilers (Triton, inductor, torch's C++/CUDA extension builder)
get the real answers, everyone else the T4's.

``torch.cuda.is_bf16_supported()`` answers as torch 2.11 answers on a real T4: True by default (it counts
emulation), False with ``including_emulation=False``; quantlab's dtype choice must not rely on it (notebooks/01).
"""

import os
import sys

T4_CAPABILITY = (7, 5)
T4_MEMORY_BYTES = 15 * 10**9  # Colab's T4: 15 GB
T4_NAME = "Tesla T4 (view: the libraries' choices on a bigger GPU)"
COMPILER_MODULES = ("triton", "torch._inductor", "torch.utils.cpp_extension", "torch._dynamo")


def _called_from_a_compiler(depth: int = 2) -> bool:
    """Whether the code asking (``depth`` frames up, past the patched function) belongs to a compiler."""
    frame = sys._getframe(depth)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith(COMPILER_MODULES):
            return True
        if not module.startswith(("torch.cuda", __name__)):
            return False
        frame = frame.f_back
    return False


class _T4Properties:
    """The real device properties, with a T4's name, capability and memory."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        overrides = {"major": T4_CAPABILITY[0], "minor": T4_CAPABILITY[1], "total_memory": T4_MEMORY_BYTES,
                     "name": T4_NAME}
        return overrides[name] if name in overrides else getattr(self._real, name)

    def __repr__(self) -> str:
        return f"_CudaDeviceProperties(name='{T4_NAME}', major=7, minor=5, total_memory={T4_MEMORY_BYTES // 2**20}MB)"


def install(cuda) -> None:
    """Patch ``cuda`` (``torch.cuda``) in place; a no-op when it is patched already."""
    if getattr(cuda, "_t4_view", False):
        return
    real_capability, real_properties = cuda.get_device_capability, cuda.get_device_properties
    real_mem_get_info = cuda.mem_get_info

    def get_device_capability(device=None):
        return real_capability(device) if _called_from_a_compiler() else T4_CAPABILITY

    def get_device_properties(device=None):
        real = real_properties(device)
        return real if _called_from_a_compiler() else _T4Properties(real)

    def is_bf16_supported(including_emulation: bool = True):
        return including_emulation  # a T4 emulates bf16 and has no bf16 arithmetic of its own

    def mem_get_info(device=None):
        free, _ = real_mem_get_info(device)
        return min(free, T4_MEMORY_BYTES), T4_MEMORY_BYTES

    cuda.get_device_capability, cuda.get_device_properties = get_device_capability, get_device_properties
    cuda.is_bf16_supported, cuda.mem_get_info = is_bf16_supported, mem_get_info
    cuda._t4_view = True


def cap_memory(cuda) -> None:
    """Cap this process's allocations at a T4's memory, so that what does not fit a T4 fails here too."""
    if cuda.is_available():
        total = cuda.get_device_properties(0)._real.total_memory
        cuda.set_per_process_memory_fraction(min(1.0, T4_MEMORY_BYTES / total), 0)


if os.environ.get("QUANTLAB_T4_VIEW") == "1":
    import torch

    install(torch.cuda)
    cap_memory(torch.cuda)
