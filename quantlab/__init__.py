"""quantlab: load, quantize, measure and compare LLMs, one notebook at a time.

The notebooks in ``notebooks/`` teach; this package holds what would be noise in a cell:
model resolution (``models``), memory accounting (``memory``), generation (``generate``),
the environment report (``env``) and the measurement harness (``methods``, ``evaluate``, ``compare``).
Importing it changes nothing outside it: no environment variables, warnings filters or log levels.
"""

__version__ = "0.1.0"
