"""The causal lens: activation patching, ablation and steering, with the grid they change.

**Patch** (``patch.py``). Prompt A runs with one activation replaced: the residual after
block L (``resid``; L = -1 the embedding), block L's attention output (``attn``), its MLP
output (``mlp``) or one attention head's output (``head``: the head's slice of the
attention's per-head output before its output projection, TransformerLens' ``hook_z``, so
per query head even with grouped-query attention) at position P, taken from prompt B at
position Q (source "prompt"), or set to zero or to its mean over A's positions 1..n-1
("zero", "mean" ablation; position 0 is left out of the mean because its residual is the
attention sink's, an order of magnitude larger than the others in most models).

**What is recomputed** (``interventions.py``). Positions before P cannot change, and
neither can blocks before the patched one: a patched run starts from the clean run's KV
cache over positions < P (views, no copy) and its residual at block L, and runs only blocks
L.. (L+1.. for a residual patch) over positions P.. (``ForwardCost.path`` "resume"). A model
whose forward does not take skipped blocks runs all blocks over positions P.. with that cache
("prefix"), and a model without a working KV cache runs everything ("full"). Every run goes
through the engine's one forward machinery (``engine/model/forward.py``). The patched lens
grid then reads only positions >= P (earlier cells are the clean run's).

**Effects.** Per cell: KL(patched || clean) between the two runs' readouts and the target's
probability before and after (the target per position is the clean run's: ``--target``, or
the clean run's own top-1 there), plus the causal cone (``lenstui.core.patch_result``):
outside it nothing can change, and the effect there is exactly 0.

**Sweep** (``sweep.py``). Patch position P at every layer ("layers") or every position at
one layer ("positions") and read the target's probability at A's last position each time;
the readout of all points is one batched pass.

**Steer** (``steer.py``). ``alpha x scale x unit(d)`` is added to block L's output at every
position from P on, where ``d`` is a token's effective unembedding row (``inspect.geometry``:
the final norm's gain folded in) or the difference of two tokens' rows and ``scale`` the
median residual norm after block L over the prompt. The steered run is a lens state of its
own (the clean one is never touched, so clearing a steer costs nothing), and greedy
generation steps continue under the steer incrementally.

Patch, sweep and steer share the prompts' preparation (``prepared.py``: both prompts in the
lens' slots "a" and "b", so the explorer's and the compare view's runs are reused) and the
reading of sites (``sites.py``). Everything returns the plain dataclasses of
``lenstui.core.patch_result``.
"""

from lenstui.engine.causal.patch import patch
from lenstui.engine.causal.steer import steer
from lenstui.engine.causal.sweep import sweep

__all__ = ["patch", "steer", "sweep"]
