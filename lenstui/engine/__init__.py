"""The engine: computation on models with torch (never Textual).

- ``model/``: loading (embedded GGUF, files, Hugging Face), chat templates, vocabulary
  look-ups, greedy generation;
- ``lens/``: the lens runs, their incremental state, the fused readout, comparisons, and
  the learned lenses (tuned, jacobian): their files, their fit, their evaluation;
- ``inspect/``: the token inspector's neighbours and the readout geometry;
- ``speak/``: the certified speakability check, its LP, the vocabulary scan and its
  cache, the aim measure;
- ``attribution``: direct logit attribution of a lens cell.

Every public function returns the core's plain dataclasses.
"""
