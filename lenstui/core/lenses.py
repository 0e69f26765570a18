"""The logit lens's variants, named once (torch-free, so the app can list them before
the engine is imported)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

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


@dataclass(frozen=True)
class LensOptions:
    """How a lens reads a prompt: the options every lens-reading request and engine call
    shares (the explorer's grid, compare, a patched or steered grid, a scene)."""

    top_k: int = 10
    lens: str = "logit"  # one of LENS_KINDS
    extended_blocks: int = 1  # the extended lens's decoder blocks (read only by that lens)
    incl_mid: bool = False  # mid-block rows (after each block's attention)
    target: Union[str, int, None] = None  # text, vocabulary piece or id; None: each position's own top-1
    track: tuple[Union[str, int], ...] = ()  # pinned tokens, read in every cell (at most MAX_TRACKED)
    lens_path: Optional[str] = None  # a learned lens's file; None: the one fitted for the model
