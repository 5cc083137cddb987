"""Self-checks for the exercises at the end of every notebook (solutions: notebooks/solutions/)."""


def check(name: str, answer, expected, rel: float = 0.01) -> None:
    """Print whether ``answer`` matches ``expected`` (numbers within ``rel``); fail loudly if it is wrong.

    An unanswered exercise (``None``) only prints a reminder, so a notebook runs end to end before you try.
    """
    if answer is None:
        print(f"{name}: not answered yet")
        return
    numeric = isinstance(expected, int | float)
    ok = abs(answer - expected) <= rel * abs(expected) if numeric else answer == expected
    assert ok, f"{name}: {answer!r} is not right yet, try again"
    print(f"{name}: correct")
