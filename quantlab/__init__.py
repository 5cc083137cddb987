"""quantlab: load, quantize, measure and compare LLMs, one notebook at a time.

The notebooks in ``notebooks/`` teach; this package holds what would be noise in a cell:
model resolution (``models``), memory accounting (``memory``), generation (``generate``),
the environment report (``env``) and, later in the series, the measurement harness.
"""

import os

__version__ = "0.1.0"

# gptqmodel on a small CPU machine (see notebooks/01_setup): its default worker pool asks for
# (ncpu + 1) // 2 workers per device and fails on 2 cores, and its C++ packing extension takes about
# a minute to compile on first use. Both are harmless settings on a large machine; a reader's own
# values win.
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")
