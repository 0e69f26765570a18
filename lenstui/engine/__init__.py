"""The engine: computation on models with torch (never Textual).

- ``model/``: loading (embedded GGUF, files, Hugging Face), the anatomy of the
  architectures the lens reads natively, chat templates, vocabulary look-ups, greedy
  generation;
- ``lens/``: the forward pass that captures the residuals, the lens runs, their
  incremental state, the fused readout, comparisons, and the learned lenses (tuned,
  jacobian): their files, their fit, their evaluation;
- ``inspect/``: the token inspector's neighbours and the readout geometry;
- ``speak/``: the certified speakability check, its LP, the vocabulary scan and its
  cache, the aim measure;
- ``attribution``: direct logit attribution of a lens cell;
- ``patching``: the causal lens: activation patching and ablation, sweeps, steering.

Every public function returns the core's plain dataclasses.
"""
