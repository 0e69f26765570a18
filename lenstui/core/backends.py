"""The backends a model can be read through, named once (torch-free, so the CLI's flags,
the config and the app's model picker list them without importing the engine)."""

from __future__ import annotations

BACKENDS = ("native", "nnsight")
BACKEND_DESCRIPTIONS = {
    "native": "the model on this machine, read with hooks (every feature)",
    "nnsight": "the model through nnsight: here, or on NDIF with --remote (lens, compare, patch, steer)",
}

# What the nnsight backend on NDIF cannot do, one sentence each (the views show them as
# they are): every one needs the model's weights on this machine.
REMOTE_LIMITS = (
    "The token inspector's neighbours, the speakability check, the vocabulary scan and the aim "
    "measure read the whole unembedding, which stays on NDIF.",
    "Attribution, lens fits and lens evaluations run through TransformerLens or thousands of "
    "forwards here, not through nnsight.",
    "The extended lens (the last blocks run again over every row) is native-only.",
)


def cannot_sentence(what: str, model_name: str, unembedding_bytes: int = 0) -> str:
    """One sentence: ``what`` needs the weights on this machine, and on NDIF they are not
    (``unembedding_bytes``: the size of the unembedding it would need, when that is what)."""
    needs = f"{model_name}'s weights"
    if unembedding_bytes:
        needs = f"{model_name}'s whole unembedding (W_U, {unembedding_bytes / 1e9:.1f} GB)"
    return (
        f"{what} needs {needs} on this machine, and with --remote they stay on NDIF (lenstui does not "
        "fetch them): open the model with --backend native, or nnsight without --remote, where it fits."
    )


def backend_label(backend: str, remote: bool, endpoint: str | None) -> str:
    """What the status line says about who reads the model ("" for the native backend)."""
    if backend == "native" and not remote:
        return ""
    if remote:
        host = (endpoint or "").split("://", 1)[-1]
        return f"nnsight · NDIF {host}".rstrip()
    return "nnsight (local)"
