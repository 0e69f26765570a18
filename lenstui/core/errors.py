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
