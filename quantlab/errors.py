"""The one exception quantlab raises on bad input: its message always says what to do."""


class QuantlabError(RuntimeError):
    """A problem the reader can fix; the message names the fix."""
