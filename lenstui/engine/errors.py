"""The one exception type a user ever sees: a sentence that says what to do."""


class LenstuiError(Exception):
    """A failure with a message fit for a user (no traceback needed).

    The CLI prints the message and exits with status 2; the app shows it as a notice.
    """


class ModelLoadError(LenstuiError):
    """The model spec could not be turned into a loaded model."""


class InputError(LenstuiError):
    """A prompt, token or option the model cannot take as given."""


class Cancelled(LenstuiError):
    """A newer request superseded this one while it ran (raised between chunks)."""
