"""The architecture facts in one place: the parts of a plain transformers causal LM the
engine reads, found by the model's module shape and one probe forward, not by its class.

``find_anatomy(model)`` names the decoder blocks, the final norm, the embedding and the
unembedding, and inside each block the sites an intervention or a mid row reads: the
module whose input (or, in a post-norm block, output) is the mid-block residual, the
sublayers whose outputs are added to the residual (the attention, the MLP) and the
attention's output projection (its input is the heads' outputs, concatenated:
TransformerLens' ``hook_z``). It also reads what the family does after the final norm
(OPT-350m's ``project_out``, a scale on the unembedding's input) and after the
unembedding (Gemma's soft-cap, Cohere's ``logit_scale``, Granite's ``logits_scaling``,
Falcon-H1's ``lm_head_multiplier``): the readout applies them as the family's code does.

Nothing is taken on trust from names: one short forward of the model itself (a handful of
tokens, every tensor recorded at the module boundaries) checks that block ``i + 1``
reads what block ``i`` wrote, that the final norm and projection turn the last block's
output into the unembedding's input, that the logits are the unembedding's output under
the transform found, and which of a block's modules carry the residual between its
sublayers. A model where any of this does not hold gets ``None``: the engine then reads it
through TransformerLens' bridge (and the wiring check, ``engine/model/wiring.py``, holds
whichever path to the model's own logits on every load).

Embedding scales (Gemma's sqrt(d), Granite's ``embedding_multiplier``) stay inside the
model's own forward: row 0 is what block 0 reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

# The output projection of an attention module, by the names transformers' families give it.
_OUT_PROJ_NAMES = ("o_proj", "out_proj", "c_proj", "dense", "wo", "o", "out", "proj")
# Config attributes that hold a soft-cap of the final logits (c * tanh(logits / c)).
_SOFTCAP_ATTRS = ("final_logit_softcapping", "logits_soft_cap", "output_logits_soft_cap", "logit_softcapping")
# Words in a sublayer's class name -> what kind of mixer a block runs (for row labels).
_MIXER_WORDS = (
    ("rwkv", "rec"), ("attention", "attn"), ("attn", "attn"), ("mamba", "ssm"), ("ssm", "ssm"), ("mixer", "ssm"),
    ("conv", "conv"), ("recurrent", "rec"), ("rglru", "rec"), ("lru", "rec"),
    ("deltanet", "lin"), ("linearattention", "lin"),
)
PROBE_TOKENS = 6


@dataclass(frozen=True)
class LogitTransform:
    """What the family applies to the unembedding's output, in order: a scale, then a
    soft-cap (either may be absent)."""

    scale: float = 1.0
    softcap: Optional[float] = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def describe(self) -> str:
        parts = []
        if self.scale != 1.0:
            parts.append(f"logits x {self.scale:g}")
        if self.softcap:
            parts.append(f"soft-cap {self.softcap:g}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Anatomy:
    """The architecture facts the engine reads a model by, found once per model: every
    module a lens row, a mid row or an intervention site flows through."""

    blocks: list[torch.nn.Module]  # decoder blocks, in order: block i's input is row i
    final_norm: Optional[torch.nn.Module]  # its input is the last block's output (None: the family has none)
    # block i's mid-block residual: (module, "pre") reads the module's input, (module, "post")
    # its output (a post-norm block's normalised residual); None where the block has none
    mids: list[Optional[tuple[torch.nn.Module, str]]]
    attns: list[Optional[torch.nn.Module]]  # block i's attention-side sublayer: its output is what it adds
    mlps: list[Optional[torch.nn.Module]]  # block i's MLP: its output is what it adds
    out_projs: list[Optional[torch.nn.Module]]  # block i's attention output projection (input: the heads' z)
    unembed: torch.nn.Module  # the lm head (weight [d_vocab, d_in], bias or None)
    embed: torch.nn.Module  # token embedding (weight [d_vocab, d_model])
    norm_kind: Optional[str]  # "RMS" or "LN" (TransformerLens' normalization_type); None: no final norm
    n_heads: int  # query heads per block
    family: str = ""  # the model's class name
    mixers: tuple[str, ...] = ()  # per block: "attn", "ssm", "conv", "rec" or a "+" of them
    parallel: tuple[bool, ...] = ()  # per block: attention and MLP added side by side
    norm_offset: bool = False  # the final RMSNorm multiplies by 1 + weight (Gemma)
    unembed_in: Optional[torch.nn.Module] = None  # a projection between the final norm and the unembedding
    unembed_scale: float = 1.0  # a scale on the unembedding's input
    logit_transform: Optional[LogitTransform] = None  # what follows the unembedding
    _folded: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def mid_norms(self) -> list[Optional[torch.nn.Module]]:
        """Block i's module whose input or output is the mid residual (None: none)."""
        return [None if mid is None else mid[0] for mid in self.mids]

    @property
    def has_mid(self) -> bool:
        return all(mid is not None for mid in self.mids)

    @property
    def W_U(self) -> torch.Tensor:
        """[d_model, d_vocab], as TransformerLens names it: a view of the lm head's weight,
        or (a family with a projection or a scale before it) that folded in, once."""
        if self.unembed_in is None and self.unembed_scale == 1.0:
            return self.unembed.weight.T
        if "W_U" not in self._folded:
            self._fold()
        return self._folded["W_U"]

    @property
    def b_U(self) -> Optional[torch.Tensor]:
        if self.unembed_in is not None and "b_U" not in self._folded:
            self._fold()
        if "b_U" in self._folded:
            return self._folded["b_U"]
        bias = getattr(self.unembed, "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    def _fold(self) -> None:
        """logits = W (s (P x + p)) + b = (s W P) x + (s W p + b)."""
        with torch.no_grad():
            weight = self.unembed.weight * self.unembed_scale  # [vocab, d_in]
            bias = getattr(self.unembed, "bias", None)
            bias = bias if isinstance(bias, torch.Tensor) else None
            if self.unembed_in is not None:
                p_weight, p_bias = _linear_parts(self.unembed_in)
                if isinstance(p_bias, torch.Tensor) and bool(p_bias.any()):
                    shift = weight @ p_bias
                    bias = shift if bias is None else bias + shift
                weight = weight @ p_weight  # [vocab, d_model]
            self._folded["W_U"] = weight.T
            self._folded["b_U"] = bias

    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.weight


def _linear_parts(module: torch.nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(weight [out, in], bias) of a Linear, or of transformers' Conv1D (weight [in, out])."""
    weight = module.weight
    if type(module).__name__ == "Conv1D":
        weight = weight.T
    bias = getattr(module, "bias", None)
    return weight, bias if isinstance(bias, torch.Tensor) else None


def _get(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def text_config(config: Any) -> Any:
    """The config of the model's language stack (a multimodal checkpoint's text config)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def find_blocks(hf_model: Any) -> Optional[tuple[str, list[torch.nn.Module]]]:
    """(path, the decoder blocks): the module list with one entry per layer of the text
    config, outside any vision or audio tower (the shallowest if several)."""
    n_layers = getattr(text_config(hf_model.config), "num_hidden_layers", None)
    if not isinstance(n_layers, int) or n_layers < 1:
        return None
    found = [
        (name, module)
        for name, module in hf_model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers
        and not any(word in name.lower() for word in ("vision", "visual", "audio", "encoder", "mtp"))
        and len({type(block) for block in module}) <= 2
    ]
    if not found:
        return None
    name, module = min(found, key=lambda item: (item[0].count("."), item[0]))
    return name, list(module)


# ---------------------------------------------------------------- the probe


def _first_tensor(value: Any) -> Optional[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    first = getattr(value, "last_hidden_state", None)
    return first if isinstance(first, torch.Tensor) else None


def _input_tensor(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return kwargs["hidden_states"]
    for value in kwargs.values():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == 3:
            return value
    return None


@dataclass
class _Call:
    module: torch.nn.Module
    name: str
    start: int  # order of the pre-hook
    end: int = -1  # order of the post-hook
    inp: Optional[torch.Tensor] = None
    out: Optional[torch.Tensor] = None


class _Probe:
    """One forward of the model with every module's boundary recorded (first tensors only)."""

    def __init__(self, hf_model: Any, blocks: list[torch.nn.Module], d_model: int):
        self.model = hf_model
        self.blocks = blocks
        self.d_model = d_model
        self.calls: list[_Call] = []
        self.logits: Optional[torch.Tensor] = None

    def run(self, tokens: torch.Tensor) -> None:
        counter = [0]
        open_calls: dict[int, list[_Call]] = {}
        handles = []
        names = {id(module): name for name, module in self.model.named_modules()}

        def keep(tensor):
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.dim() in (2, 3):
                return tensor.detach().clone()
            return None

        def pre(module, args, kwargs):
            call = _Call(module, names.get(id(module), ""), counter[0], inp=keep(_input_tensor(args, kwargs)))
            counter[0] += 1
            open_calls.setdefault(id(module), []).append(call)
            self.calls.append(call)

        def post(module, args, kwargs, output):
            stack = open_calls.get(id(module))
            if stack:
                call = stack.pop()
                call.end = counter[0]
                call.out = keep(_first_tensor(output))
            counter[0] += 1

        # The blocks, their own sublayers, and everything outside the blocks (the final norm,
        # a projection, the head): what is inside a sublayer is never compared.
        watched = [module for block in self.blocks for module in (block, *block.children())]
        inside = {id(module) for block in self.blocks for module in block.modules()}
        watched += [module for module in self.model.modules() if id(module) not in inside and module is not self.model]
        for module in watched:
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(module.register_forward_hook(post, with_kwargs=True))
        try:
            with torch.no_grad():
                out = self.model(input_ids=tokens, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        self.logits = out.logits.detach()

    def of(self, module: torch.nn.Module) -> list[_Call]:
        return [call for call in self.calls if call.module is module]


def _close(a: Optional[torch.Tensor], b: Optional[torch.Tensor], tol: float) -> bool:
    if a is None or b is None or a.numel() != b.numel():
        return False
    if a.shape != b.shape:
        a = a.reshape(b.shape)
    a, b = a.detach().double(), b.detach().double()
    scale = max(1.0, float(b.abs().max()))
    return float((a - b).abs().max()) <= tol * scale


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


def _descendants(module: torch.nn.Module) -> set[int]:
    return {id(m) for m in module.modules()}


def find_anatomy(hf_model: Any) -> Optional[Anatomy]:
    """The native anatomy of ``hf_model``, or None when the bridge must read it."""
    try:
        return _find_anatomy(hf_model)
    except Exception:  # noqa: BLE001 - any surprise in an unknown family means: the bridge reads it
        return None


def _find_anatomy(hf_model: Any) -> Optional[Anatomy]:
    config = text_config(hf_model.config)
    found = find_blocks(hf_model)
    embed = hf_model.get_input_embeddings()
    unembed = hf_model.get_output_embeddings()
    if found is None or embed is None or unembed is None:
        return None
    if not isinstance(getattr(unembed, "weight", None), torch.Tensor) or unembed.weight.dim() != 2:
        return None
    _, blocks = found
    d_model = int(config.hidden_size)
    param = next(hf_model.parameters())
    tol = _tolerance(param.dtype)
    vocab = int(unembed.weight.shape[0])
    device = execution_device(embed)
    tokens = (torch.arange(PROBE_TOKENS, device=device) * 7919 + 3) % max(vocab - 1, 1) + 1
    probe = _Probe(hf_model, blocks, d_model)
    probe.run(tokens[None])

    block_calls = []
    for block in blocks:
        calls = probe.of(block)
        if len(calls) != 1 or calls[0].inp is None or calls[0].out is None:
            return None  # a block run twice, or not run: not a plain stack
        block_calls.append(calls[0])
    # The residual stream: block i + 1 reads what block i wrote.
    for before, after in zip(block_calls, block_calls[1:]):
        if not _close(after.inp, before.out, tol):
            return None

    readout = _readout_chain(hf_model, probe, blocks, block_calls[-1], unembed, tol)
    if readout is None:
        return None
    final_norm, unembed_in, unembed_scale, transform = readout

    inside = [_block_sites(probe, block, call, tol) for block, call in zip(blocks, block_calls)]
    n_heads = int(getattr(config, "num_attention_heads", 0) or 0)
    out_projs = [_out_proj(block, n_heads, d_model) for block in blocks]
    norm_kind, offset = _norm_facts(final_norm, d_model, param.dtype)
    return Anatomy(
        blocks=blocks,
        final_norm=final_norm,
        mids=[site.mid for site in inside],
        attns=[site.attn for site in inside],
        mlps=[site.mlp for site in inside],
        out_projs=out_projs,
        unembed=unembed,
        embed=embed,
        norm_kind=norm_kind,
        n_heads=n_heads,
        family=type(hf_model).__name__,
        mixers=tuple(site.mixer for site in inside),
        parallel=tuple(site.parallel for site in inside),
        norm_offset=offset,
        unembed_in=unembed_in,
        unembed_scale=unembed_scale,
        logit_transform=transform,
    )


class _Chain(torch.nn.Module):
    """Several modules the family applies in turn after its last block (read as one norm)."""

    def __init__(self, modules: list[torch.nn.Module]):
        super().__init__()
        self.parts = torch.nn.ModuleList(modules)

    def forward(self, x):
        for part in self.parts:
            x = _first_tensor(part(x))
        return x


def _is_projection(module: torch.nn.Module, d_model: int) -> bool:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return False
    out_features, in_features = _linear_parts(module)[0].shape
    return in_features == d_model and out_features != d_model


def _readout_chain(hf_model, probe: _Probe, blocks, last: _Call, unembed, tol):
    """What turns the last block's output into the logits: (final norm or None, a
    projection or None, a scale on the unembedding's input, the logit transform or None);
    None when the probe shows something else."""
    head_calls = probe.of(unembed)
    if len(head_calls) != 1 or head_calls[0].inp is None:
        return None
    head = head_calls[0]
    inside_blocks = set().union(*(_descendants(block) for block in blocks))
    head_parts = _descendants(unembed)
    # The modules run between the last block and the unembedding (outermost ones only).
    between = [
        call for call in probe.calls
        if call.start > last.end and call.end < head.start and call.end >= 0
        and id(call.module) not in inside_blocks and id(call.module) not in head_parts
        and not isinstance(call.module, (torch.nn.Dropout, torch.nn.Identity))
    ]
    outer = [call for call in between if not any(
        other is not call and other.start < call.start and other.end > call.end for other in between)]
    d_model = last.out.shape[-1]
    projection = None
    if outer and _is_projection(outer[-1].module, d_model):
        projection = outer.pop().module
    if any(_is_projection(call.module, d_model) for call in outer):
        return None
    modules = [call.module for call in outer]
    final_norm = None if not modules else (modules[0] if len(modules) == 1 else _Chain(modules))
    with torch.no_grad():
        value = last.out
        if final_norm is not None:
            value = _first_tensor(final_norm(value))
        if projection is not None:
            value = _first_tensor(projection(value))
    scale = _fitted_scale(value, head.inp, tol, hf_model.config)
    if scale is None:
        return None
    with torch.no_grad():
        logits = unembed(head.inp)
    transform = _logit_transform(logits, probe.logits, tol, hf_model.config)
    if transform is None:
        return None
    return final_norm, projection, scale, (None if transform == LogitTransform() else transform)


def _config_numbers(config) -> list[float]:
    """Every float a config (and its text config) holds: the exact values fitted scales snap to."""
    numbers = []
    for source in {id(config): config, id(text_config(config)): text_config(config)}.values():
        for value in vars(source).values():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value not in (0, 1):
                numbers.append(float(value))
    return numbers


def _snap(value: float, config) -> float:
    """A fitted scale -> the config's own number (or its inverse) when it is that number."""
    if abs(value - 1.0) < 1e-4:
        return 1.0
    for number in _config_numbers(config):
        for candidate in (number, 1.0 / number):
            if abs(value - candidate) <= 1e-4 * abs(candidate):
                return candidate
    return value


def _fitted_scale(have: torch.Tensor, want: torch.Tensor, tol: float, config) -> Optional[float]:
    """s with want = s * have, or None."""
    if have is None or want is None or have.shape != want.shape:
        return None
    if _close(have, want, tol):
        return 1.0
    a, b = have.double().flatten(), want.double().flatten()
    scale = float((a @ b) / max(float(a @ a), 1e-30))
    scale = _snap(scale, config)
    return scale if _close(have.double() * scale, want, tol) else None


def _logit_transform(logits: torch.Tensor, want: torch.Tensor, tol: float, config) -> Optional[LogitTransform]:
    """The transform the family applies to the unembedding's output, checked on the probe."""
    if want is None or logits.shape != want.shape:
        return None
    if _close(logits, want, tol):
        return LogitTransform()
    caps = []
    for source in (text_config(config), config):
        for name in _SOFTCAP_ATTRS:
            value = getattr(source, name, None)
            if isinstance(value, (int, float)) and value > 0:
                caps.append(float(value))
    for cap in caps:
        candidate = LogitTransform(softcap=cap)
        if _close(candidate(logits.double()), want, tol):
            return candidate
    scale = _fitted_scale(logits, want, tol, config)
    if scale is not None:
        return LogitTransform(scale=scale)
    return None


@dataclass
class _BlockSites:
    mid: Optional[tuple[torch.nn.Module, str]] = None
    attn: Optional[torch.nn.Module] = None
    mlp: Optional[torch.nn.Module] = None
    mixer: str = "attn"
    parallel: bool = False


def _added(target: Optional[torch.Tensor], base: Optional[torch.Tensor], addend: Optional[torch.Tensor],
           tol: float) -> bool:
    """Whether ``target = base + s * addend`` for some scale s != 0 (a family may scale a
    sublayer's output before adding it: Granite's ``residual_multiplier``)."""
    if target is None or base is None or addend is None or addend.numel() != target.numel():
        return False
    base = _shaped(base, target)
    addend = _shaped(addend, target)
    if base is None:
        return False
    delta, add = (target.double() - base.double()).flatten(), addend.double().flatten()
    norm = float(add @ add)
    if norm <= 1e-30:
        return False
    scale = float(delta @ add) / norm
    # Both parts must carry weight: a base near zero (RWKV's tiny embeddings) would let any
    # module whose output is proportional to the target pass as a sublayer.
    size = float(target.double().norm())
    if float(base.double().norm()) < 1e-3 * size or abs(scale) * float(norm ** 0.5) < 1e-3 * size:
        return False
    return _close(base.double() + scale * addend.double(), target, tol)


def _block_sites(probe: _Probe, block: torch.nn.Module, call: _Call, tol: float) -> _BlockSites:
    """Which of a block's own modules carry its residual x -> y: m = x + a (the residual
    after the first sublayer: the mid residual, c's input), then y = m + b (sequential);
    y = x + a + b (parallel); n = N1(x + a), y = N2(n + b) (post-norm: n is the mid
    residual, N1's output); or y = x + a (one sublayer: an SSM block)."""
    children = {id(child): child for child in block.children()}
    calls = [
        c for c in probe.calls
        if id(c.module) in children and call.start < c.start and c.end < call.end
        and not isinstance(c.module, (torch.nn.Dropout, torch.nn.Identity))
    ]
    x, y = call.inp, call.out
    outs = [c for c in calls if c.out is not None and c.out.numel() == x.numel()]
    sites = _BlockSites(mixer=_mixer_kind(calls))

    def found(c: _Call, where: str, attn: Optional[_Call], mlp: Optional[_Call]) -> _BlockSites:
        sites.mid = (c.module, where)
        sites.attn = None if attn is None else attn.module
        sites.mlp = None if mlp is None else mlp.module
        sites.mixer = _mixer_kind([k for k in calls if k.end <= c.start]) or sites.mixer
        return sites

    candidates = [c for c in calls if c.inp is not None and c.inp.numel() == x.numel() and not _close(c.inp, x, tol)]
    # Post-norm: n = N1(x + a) is the mid residual, y = N2(n + b).
    for c in outs:
        if c.inp is None or c.inp.numel() != x.numel():
            continue
        for d in outs:
            if d.start <= c.end or d.inp is None or not _close(d.out, y, tol):
                continue
            mlps = [b for b in outs if c.end <= b.start and b.end <= d.start and _added(d.inp, c.out, b.out, tol)]
            if mlps:
                attns = [a for a in outs if a.end <= c.start and _added(c.inp, x, a.out, tol)]
                return found(c, "post", attns[-1] if attns else None, mlps[0])
    # Sequential: the first module whose input is x plus one earlier sublayer's output.
    for c in candidates:
        firsts = [a for a in outs if a.end <= c.start and a.inp is not None and not _close(a.inp, x, tol)
                  and _added(c.inp, x, a.out, tol)]
        if firsts:
            mlps = [b for b in outs if b.start >= c.start and _added(y, c.inp, b.out, tol)]
            return found(c, "pre", firsts[-1], mlps[0] if mlps else None)
    # Parallel: y = x + a + b.
    for i, a in enumerate(outs):
        for b in outs[i + 1:]:
            both = _shaped(a.out, x)
            other = _shaped(b.out, x)
            if both is not None and other is not None and _close(y, x + both + other, tol):
                first, second = (a, b) if _mixer_kind([a]) else (b, a)
                sites.attn, sites.mlp, sites.parallel = first.module, second.module, True
                return sites
    # Sequential, the first sublayer not one module's output (Falcon-H1 adds an SSM and an
    # attention side by side): y = m + b for the input m of a later module.
    for c in candidates:
        mlps = [b for b in outs if b.start >= c.start and _added(y, c.inp, b.out, tol)]
        if mlps:
            return found(c, "pre", None, mlps[0])
    # A block whose sublayers add the residual themselves (BLOOM, MPT's MLP): m, the input
    # of c, is a sublayer's output (one that did not read x itself), y a later one's.
    for c in candidates:
        made = [a for a in outs if a.end <= c.start and _close(c.inp, a.out, tol) and a.inp is not None
                and not _close(a.inp, x, tol)]
        if made and any(b.start >= c.start and _close(b.out, y, tol) for b in outs):
            return found(c, "pre", None, None)
    # One sublayer (an SSM block): y = x + a.
    single = [a for a in outs if _added(y, x, a.out, tol)]
    if single and sites.mixer == "attn":
        sites.attn = single[0].module
    return sites


def _shaped(tensor: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
    """``tensor`` in ``like``'s shape (OPT's MLP runs on [positions, d]), or None."""
    if tensor is None or tensor.numel() != like.numel():
        return None
    return tensor if tensor.shape == like.shape else tensor.reshape(like.shape)


def _mixer_kind(calls: list[_Call]) -> str:
    """What a block's sublayers before its MLP are, by their classes' names: "attn", "ssm",
    "conv", "rec", "lin" (linear attention), several joined by "+"; "mlp" for a block
    with an MLP only (Nemotron-H's); "" when nothing says."""
    kinds = []
    mlp = False
    for c in calls:
        name = type(c.module).__name__.lower()
        if "norm" in name:
            continue
        kind = next((kind for word, kind in _MIXER_WORDS if word in name), None)
        if kind is not None:
            if kind not in kinds:
                kinds.append(kind)
        elif "mlp" in name or "feedforward" in name or "moe" in name or "expert" in name:
            mlp = True
    return "+".join(sorted(kinds)) or ("mlp" if mlp else "")


def _out_proj(block: torch.nn.Module, n_heads: int, d_model: int) -> Optional[torch.nn.Module]:
    """The attention's output projection: a linear map to d_model named as the families name
    it, inside the block's attention module (its input is the heads' outputs, concatenated)."""
    if n_heads < 1:
        return None
    for name, child in block.named_children():
        kind = type(child).__name__.lower()
        if "attention" not in kind and "attn" not in kind:
            continue
        # The shallowest module with an output projection's name (GPT-Neo nests its
        # attention one level down: attn.attention.out_proj).
        named = sorted(child.named_modules(), key=lambda item: item[0].count("."))
        for path, proj in named:
            if path.rpartition(".")[2] not in _OUT_PROJ_NAMES:
                continue
            if isinstance(getattr(proj, "weight", None), torch.Tensor) and proj.weight.dim() == 2:
                out_features, in_features = _linear_parts(proj)[0].shape
                if out_features == d_model and in_features % n_heads == 0:
                    return proj
    return None


def _norm_facts(norm: Optional[torch.nn.Module], d_model: int, dtype: torch.dtype) -> tuple[Optional[str], bool]:
    """("LN" or "RMS", whether an RMSNorm multiplies by 1 + weight), read by running it:
    a LayerNorm does not see a constant shift of its input, an RMSNorm does."""
    if norm is None:
        return None, False
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, d_model, generator=generator).to(device=execution_device(norm), dtype=dtype) * 4
    with torch.no_grad():
        plain, shifted = _first_tensor(norm(x)), _first_tensor(norm(x + 3.0))
    kind = "LN" if _close(plain, shifted, _tolerance(dtype)) else "RMS"
    weight = getattr(norm, "weight", None)
    offset = False
    if kind == "RMS" and isinstance(weight, torch.Tensor) and weight.shape == (d_model,) and not weight.is_meta:
        unit = x.double() / x.double().pow(2).mean(-1, keepdim=True).sqrt()
        gain = weight.detach().double().to(unit.device)
        offset = _close(plain.double(), unit * (1.0 + gain), 1e-2) and not _close(plain.double(), unit * gain, 1e-2)
    return kind, offset


def execution_device(module: torch.nn.Module) -> torch.device:
    """The device a module computes on: accelerate's hook's (an offloaded module's weights
    are on the meta device), else its first weight's."""
    hook = getattr(module, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:
        return torch.device(execution if not isinstance(execution, int) else f"cuda:{execution}")
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


# ---------------------------------------------------------------- what rows are


def row_words(anatomy: Optional[Anatomy]) -> Optional[str]:
    """One sentence saying what a row is, for a family whose blocks are not all attention
    blocks (SSM, convolution, recurrent, hybrid); None for a transformer."""
    if anatomy is None or all(kind == "attn" for kind in anatomy.mixers):
        return None
    names = {"ssm": "an SSM (Mamba-style) mixer", "conv": "a short convolution",
             "rec": "a recurrent (linear RNN) layer", "lin": "linear attention (a recurrent state)",
             "attn": "attention", "mlp": "an MLP only", "": "an unnamed mixer"}

    def words(kind: str) -> str:
        return " and ".join(names.get(part, part) for part in kind.split("+"))

    kinds = list(dict.fromkeys(anatomy.mixers))
    if len(kinds) == 1:
        return (f"{anatomy.family} has no attention: row Ln is the residual after block n, whose mixer is "
                f"{words(kinds[0])}.")
    groups = []
    for kind in kinds:
        layers = [str(i) for i, k in enumerate(anatomy.mixers) if k == kind]
        groups.append(f"{words(kind)} in L{', L'.join(layers)}")
    return f"{anatomy.family} is a hybrid: row Ln is the residual after block n, which runs " + "; ".join(groups) + "."


def mid_label(anatomy: Optional[Anatomy], layer: int) -> str:
    """A mid row's label: "L3.attn", or what the block's first sublayer is ("L3.conv")."""
    kind = "attn" if anatomy is None or layer >= len(anatomy.mixers) else (anatomy.mixers[layer] or "attn")
    return f"L{layer}.{kind}"


def mid_rows_missing(model: Any) -> Optional[str]:
    """None when every block of a LoadedModel has a mid-block residual to read (--mid);
    else one sentence saying why not and what exists instead."""
    anatomy = model.anatomy
    if anatomy is None:
        bridge = model.bridge
        hooks = getattr(bridge, "hook_dict", {}) or {}
        if all(f"blocks.{i}.hook_resid_mid" in hooks for i in range(model.n_layers)):
            return None
        return (f"TransformerLens' bridge has no mid-block residual for {type(model.hf).__name__}, so there are "
                "no mid rows to read: the block rows are all there is.")
    if anatomy.has_mid:
        return None
    family = anatomy.family
    missing = [i for i, mid in enumerate(anatomy.mids) if mid is None]
    if len(missing) < len(anatomy.mids):
        return (f"Only some of {family}'s blocks have a residual between two sublayers (not L"
                f"{', L'.join(map(str, missing))}): --mid reads one in every block.")
    if all(anatomy.parallel):
        return (f"{family}'s blocks add attention and the MLP to the residual side by side (parallel attention), "
                "so no residual lies between them for --mid to read; what attention adds is the attn site "
                "(`lenstui patch --component attn`).")
    if all(kind and kind != "attn" for kind in anatomy.mixers) or not any(anatomy.mlps):
        return (f"{family}'s blocks have a single sublayer each, so there is no mid-block residual: each row Ln is "
                "already the residual after block n.")
    return f"lenstui finds no residual between the sublayers of {family}'s blocks, so there are no mid rows to read."


# ---------------------------------------------------------------- the model's other facts


def has_recurrent_state(model: Any) -> bool:
    """Whether some of a LoadedModel's layers keep a recurrent state (an SSM's, a short
    convolution's) in the cache: such a cache grows by appending only, it cannot be cut
    back to a prefix or shared as views, so the lens state runs these families without one."""
    caches = model.caches
    if caches.recurrent_state is None:
        caches.recurrent_state = _recurrent_layers(model.hf)
    return caches.recurrent_state


def _recurrent_layers(hf_model: Any) -> bool:
    from transformers import DynamicCache
    from transformers.cache_utils import LinearAttentionCacheLayerMixin

    try:
        cache = DynamicCache(config=hf_model.config)
    except Exception:  # noqa: BLE001 - a config the cache cannot read: plain attention layers
        return False
    return any(isinstance(layer, LinearAttentionCacheLayerMixin) for layer in cache.layers)


def new_cache(model: Any) -> Any:
    """A fresh cache for one sequence of forwards that only append: the family's own kind
    (``DynamicCache(config=...)``: recurrent layers for a hybrid or an SSM), else a plain
    ``DynamicCache`` (full layers, whose prefixes the engine takes as views)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.hf.config) if has_recurrent_state(model) else DynamicCache()



def context_length(hf_model: Any) -> int:
    """How many tokens the model reads (what TransformerLens calls n_ctx); a family with
    no position limit (an SSM) reads as many as memory allows: 1,048,576 here."""
    config = text_config(hf_model.config)
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 20


def plain_twin(hf_model: Any) -> Any:
    """A second module tree of ``hf_model``'s class whose parameters and buffers are the
    very same tensors (nothing copied): TransformerLens' bridge rewires the modules it is
    given, so it gets this twin and ``hf_model`` stays plain."""
    import copy

    config = copy.deepcopy(hf_model.config)
    with torch.device("meta"):
        twin = type(hf_model)(config)
    tensors = dict(hf_model.state_dict(keep_vars=True))
    twin.load_state_dict({name: tensors[name] for name in twin.state_dict(keep_vars=True)}, strict=True, assign=True)
    buffers = dict(hf_model.named_buffers())
    for name, buffer in list(twin.named_buffers()):
        if buffer.is_meta:  # non-persistent buffers (rotary inv_freq) are not in the state dict
            owner, _, leaf = name.rpartition(".")
            (_get(twin, owner) if owner else twin)._buffers[leaf] = buffers[name]
    for module in twin.modules():
        original = getattr(module, "original_inv_freq", None)
        if isinstance(original, torch.Tensor) and original.is_meta:
            module.original_inv_freq = module.inv_freq.clone()
    if getattr(config, "tie_word_embeddings", False):
        twin.tie_weights()
    twin.train(hf_model.training)
    return twin

