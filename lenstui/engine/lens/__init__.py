"""The lens: ``forward`` (the forward pass that captures the residual stack, on the plain
model or the bridge), ``run`` (a lens run on a prompt), ``state`` (what was computed, kept for the
next run), ``readout`` (residuals to top-k, entropy, KL and ranks, fused), ``compare``
(two prompts row by row), and the learned lenses: ``learned`` (tuned-lens folders and
J-lens files read as translators of the rows), ``fit`` (fitting them here, on the model's
own text) and ``evaluate`` (each lens's per-row KL, top-1 agreement and rank over a text)."""
