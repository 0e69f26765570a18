"""The logit lens's variants, named once (torch-free, so the app can list them before
the engine is imported)."""

from __future__ import annotations

# The order is the order the app cycles through them.
LENS_KINDS = ("logit", "extended", "raw", "tuned", "jacobian")
LENS_DESCRIPTIONS = {
    "logit": "final norm, then unembedding (the classic)",
    "extended": "the last block joins the decoder (gpt-neo notes)",
    "raw": "unembedding without the final norm",
    "tuned": "an affine translator per layer before the readout (tuned-lens files)",
    "jacobian": "each layer transported by its average Jacobian (TransformerLens J-lens files)",
}
# The lenses read from a file (a fitted translator per row): lenstui.engine.lens.learned.
LEARNED_LENSES = ("tuned", "jacobian")

MAX_TOP_K = 100


# Tokens followed through the layers at once (pinned in the app, --track in the CLI).
MAX_TRACKED = 8
