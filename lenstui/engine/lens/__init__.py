"""The lens: ``run`` (a lens run on a prompt), ``state`` (what was computed, kept for the
next run), ``readout`` (residuals to top-k, entropy, KL and ranks, fused), ``compare``
(two prompts row by row)."""
