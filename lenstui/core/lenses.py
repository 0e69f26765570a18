"""The logit lens's variants, named once (torch-free, so the app can list them before
the engine is imported)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

# The order is the order the app cycles through them.
LENS_KINDS = ("logit", "extended", "raw", "tuned", "jacobian", "patchscope")
LENS_DESCRIPTIONS = {
    "logit": "final norm, then unembedding (the classic)",
    "extended": "the last block joins the decoder (gpt-neo notes)",
    "raw": "unembedding without the final norm",
    "tuned": "an affine translator per layer before the readout (tuned-lens files)",
    "jacobian": "each layer transported by its average Jacobian (TransformerLens J-lens files)",
    "patchscope": "the model says what a residual holds: patched into a target prompt (Patchscopes)",
}
# The lenses read from a file (a fitted translator per row): lenstui.engine.lens.learned.
LEARNED_LENSES = ("tuned", "jacobian")
# The lenses that read block outputs only (no mid-block rows).
BLOCK_OUTPUT_LENSES = ("extended", *LEARNED_LENSES, "patchscope")

MAX_TOP_K = 100

# The Patchscope's default target (Ghandeharioun et al. 2024, the token-identity prompt):
# a residual written over the last token's ("?") is read as the token the model repeats.
DEFAULT_PATCHSCOPE_TARGET = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"


def patchscope_target_text(typed: str) -> str:
    """A target as typed on one line (the CLI, the palette): ``\\n`` is a line break."""
    return typed.replace("\\n", "\n")


def patchscope_target_line(text: str) -> str:
    """A target on one line, as it is typed (line breaks as ``\\n``)."""
    return text.replace("\n", "\\n")


def patchscope_cost(n_layers: int, n_positions: int = 0) -> str:
    """The Patchscope's cost, said before it runs: one short forward per cell, from the
    cell's row on (the last row is the model's own output and costs nothing)."""
    per_column = n_layers * (n_layers + 1) // 2
    cost = (
        f"the Patchscope runs the model once per cell, from the cell's row on: {per_column:,} block-steps "
        f"per column, about {(n_layers + 1) / 2:.0f}x the forward the logit lens needs"
    )
    if n_positions:
        cost += f" ({n_positions * n_layers:,} short runs for {n_positions:,} positions)"
    return cost


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
    # The Patchscope's target prompt (read only by that lens); None: DEFAULT_PATCHSCOPE_TARGET.
    patchscope_target: Optional[str] = None
