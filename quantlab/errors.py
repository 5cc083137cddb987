"""The one exception quantlab raises on bad input: its message always says what to do.

The ``check_*`` helpers validate the arguments of the from-scratch quantizers (notebooks 02-08) in one place, so
that a bad ``bits``, group or block size is refused with the same clear sentence everywhere.
"""

import math
import numbers


class QuantlabError(RuntimeError):
    """A problem the reader can fix; the message names the fix."""


def _is_int(value) -> bool:
    """An integer of Python's or numpy's kind; not a bool, not a float such as 4.0."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _choices(allowed) -> str:
    return f"{allowed[0]} to {allowed[-1]}" if isinstance(allowed, range) else ", ".join(map(str, allowed))


def check_bits(bits, allowed=range(2, 9)) -> int:
    """``bits`` as an int when it is one of ``allowed`` (2 to 8 unless said), else a QuantlabError listing them."""
    if not _is_int(bits) or bits not in allowed:
        raise QuantlabError(f"bits must be a whole number of bits, one of {_choices(allowed)}; got {bits!r}.")
    return int(bits)


def check_positive_int(name: str, value, fix: str = "") -> int:
    """``value`` as an int when it is a whole number of at least 1, else a QuantlabError naming ``name``."""
    if not _is_int(value) or value < 1:
        raise QuantlabError(f"{name} must be a positive whole number, not {value!r}.{' ' + fix if fix else ''}")
    return int(value)


def check_group_size(group_size, others: str = "None (one group per row)") -> int | None:
    """A group size: a positive int, or None for one group per row (``others`` names the choices besides ints)."""
    if group_size is None:
        return None
    return check_positive_int("group_size", group_size, f"Use a size such as 128, or {others}.")


def check_non_negative(name: str, value, fix: str = "") -> float:
    """``value`` as a float when it is a finite real number of at least 0, else a QuantlabError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise QuantlabError(f"{name} must be a number of at least 0, not {value!r}.{' ' + fix if fix else ''}")
    return float(value)
