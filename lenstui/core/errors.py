"""The one exception type a user ever sees: a sentence that says what to do."""


class LenstuiError(Exception):
    """A failure with a message fit for a user (no traceback needed).

    The CLI prints the message and exits with status 2; the app shows it as a notice.
    """


class ModelLoadError(LenstuiError):
    """The model spec could not be turned into a loaded model."""


class InputError(LenstuiError):
    """A prompt, token or option the model cannot take as given."""


class Cancelled(Exception):
    """A computation stopped because its ``should_stop()`` turned true (a newer request
    superseded it, or the user cancelled it).

    Deliberately not a ``LenstuiError``: a cancel is not a failure to tell the user
    about, so code that reports ``LenstuiError`` never swallows it by accident, and
    ``except Cancelled`` need not come first. It lives here, beside the errors and
    away from torch, so the worker and the CLI can catch it without importing the
    engine's numeric modules.
    """


# How much of what the user typed an error sentence quotes.
QUOTE_LIMIT = 60


def quoted(value: object, limit: int = QUOTE_LIMIT, middle: bool = False) -> str:
    """``repr(value)`` for an error sentence, quoting at most about ``limit`` characters
    of it: a 1 MB prompt or token text comes back as its first characters, an ellipsis
    and its length, never whole. ``middle``: keep both ends instead (a path, whose file
    name is at the end)."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        if middle:
            head = (limit - 1) // 2
            return repr(value[:head] + "…" + value[-(limit - 1 - head):])
        return f"{value[: limit - 1] + '…'!r} ({len(value):,} characters)"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clipped(text: object, limit: int = 200) -> str:
    """``str(text)`` cut to ``limit`` characters (an exception's message inside a
    sentence: it may carry the input that caused it)."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
