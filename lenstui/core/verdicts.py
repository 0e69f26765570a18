"""The speakability check's vocabulary, named once: verdicts and the methods that reach them.

String-valued (``StrEnum``), so they compare, hash, format and serialize exactly as the
plain strings they replace: JSON, CSV and printed text stay byte-identical. Torch-free,
so the widgets and the CLI's printers can use them too.
"""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    # The order is the scan's on-disk int8 code (ScanResult.verdicts): append, never reorder.
    PENDING = "pending"  # the scan has not decided this token yet
    SPEAKABLE = "speakable"  # a verified witness residual makes it the argmax
    UNSPEAKABLE = "unspeakable"  # a checked certificate: no reachable residual can
    UNDETERMINED = "undetermined"  # neither proof passed its tolerance


# The three a finished check can return, in the order summaries list them.
DECIDED = (Verdict.SPEAKABLE, Verdict.UNSPEAKABLE, Verdict.UNDETERMINED)


class Method(StrEnum):
    """How a verdict was reached: a witness direction family, the offsets alone, an
    exact twin, or the LP."""

    # The order is the scan's on-disk int8 code (ScanResult.method): append, never reorder.
    NONE = ""
    OWN = "own"
    CENTRED = "centred"
    WHITENED = "whitened"
    PRECISION = "precision"
    ZERO = "zero"
    TWIN = "twin"
    LP = "lp"
