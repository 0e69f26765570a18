"""What the engine builds once per loaded model and keeps with it, one typed field each.

Every table here is derived from the model's weights or its last runs, built on first use
by the module named beside it, and dropped with the model (a new load starts empty). The
fields are typed loosely (``Any``) where the type lives in a module that imports this one
(the engine's layers would cycle); the comment names the real type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ModelCaches:
    # engine.model.anatomy.Anatomy, or None when only the bridge can read the model;
    # ``anatomy_known`` says whether it was looked for yet (None is a valid answer).
    anatomy: Any = None
    anatomy_known: bool = False
    # engine.model.anatomy.has_recurrent_state: some layers cache a recurrent state (an
    # SSM's): the cache only appends (None: not looked at yet).
    recurrent_state: Optional[bool] = None
    # engine.model.forward: the machines that run this model (NativeForward on the plain
    # model, BridgeForward on TransformerLens' bridge), made on first use.
    forward: Any = None
    bridge_forward: Any = None
    # engine.lens.readout.Unembedding: the fused readout's layout of W_U.
    unembedding: Any = None
    # engine.lens.state.LensState per slot ("a" the explorer, "b" the compare view).
    lens_states: dict[str, Any] = field(default_factory=dict)
    # engine.causal.steer: (the steer's key, its LensState), so a step under the same
    # steer runs one position.
    steered: Optional[tuple[Any, Any]] = None
    # engine.model.vocab.token_ref: id -> core.tokens.TokenRef (a run decodes many cells).
    token_refs: dict[int, Any] = field(default_factory=dict)
    # core.token_bytes.ByteReader over the tokenizer.
    byte_reader: Any = None
    # engine.lens.learned: the tuned-lens package's unembed hash, the weights' sha256,
    # and each learned lens kind's (where, file stamp) and loaded lens.
    unembed_hash: Optional[str] = None
    weights_key: Optional[str] = None
    learned_lenses: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    # engine.lens.patchscope.PatchscopeTarget per target text (its prefix's KV cache), the
    # newest few, so every cell of every run under a target reuses its prefix.
    patchscope_targets: dict[str, Any] = field(default_factory=dict)
    # engine.inspect.geometry: (W_eff, c) and the final norm's affine part.
    effective_unembedding: Optional[tuple[Any, Any]] = None
    final_norm_affine: Any = None
    # engine.inspect.neighbors: the normalised tables nearest-neighbour look-ups read.
    neighbor_tables: Any = None
    # engine.speak.geometry.Readout: the float64 readout the speakability check reads.
    speak_readout: Any = None
    # engine.attribution: the vocabulary's mean unembedding column (float64).
    attribution_mean_w_u: Any = None
    # engine.lens.fit: False once an incremental forward of the fit's sampler did not
    # fill the KV cache (that model then samples with full forwards).
    fit_kv_works: bool = True
