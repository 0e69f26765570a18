"""A model read through nnsight: on this machine (the plain model wrapped in nnsight's
``TransformersModel``), or on NDIF (nnsight's meta model of a checkpoint the server hosts).

:class:`NnsightModel` answers what the engine's shared code asks of a loaded model (name,
tokenizer, layer and vocabulary sizes, the per-model caches) and what the nnsight backend
needs besides: the nnsight model, the module paths its traces read (from the native anatomy,
``engine/model/anatomy.py``: blocks, final norm, post-attention norms, attention, MLP, the
attention's output projection, the unembedding) and the :class:`~lenstui.engine.backends.
nnsight.transport.Transport` its traces run through.

Locally (``remote=False``) ``local`` is the native :class:`LoadedModel` it wraps (the same
tensors): what the nnsight backend does not compute in a trace (the token inspector's
neighbours, the speakability check, a fit) runs on it natively. Remotely there are no
weights here at all: nnsight builds the model on the meta device from its config and
tokenizer (read from the Hugging Face cache; nothing is downloaded unless allowed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from lenstui.core.callbacks import Progress
from lenstui.core.errors import InputError, ModelLoadError, quoted
from lenstui.engine.model.anatomy import context_length, find_anatomy
from lenstui.engine.model.caches import ModelCaches
from lenstui.engine.model.load import LoadedModel


@dataclass(frozen=True)
class ModulePaths:
    """Where a trace reads the lens: dotted module paths in the nnsight model's tree."""

    blocks: tuple[str, ...]
    final_norm: str
    unembed: str
    embed: str
    mid_norms: Optional[tuple[str, ...]]
    attns: Optional[tuple[str, ...]]
    mlps: Optional[tuple[str, ...]]
    out_projs: Optional[tuple[str, ...]]
    n_heads: int


def module_paths(hf_model: Any, name: str) -> ModulePaths:
    """The anatomy's modules of ``hf_model`` as paths; ModelLoadError for a family the
    anatomy does not know (the trace has to know where each row is). A model on the meta
    device (NDIF's, with no weights here) is probed through a miniature of its class."""
    if _on_meta(hf_model):
        return _paths_through_miniature(hf_model, name)
    anatomy = find_anatomy(hf_model)
    if anatomy is None:
        raise ModelLoadError(
            f"The nnsight backend reads the families whose parts lenstui knows by name, and "
            f"{quoted(name, middle=True)} ({type(hf_model).__name__}) is not one of them: open it "
            "with --backend native."
        )
    names = {id(module): path for path, module in hf_model.named_modules()}

    def path(module) -> str:
        return names[id(module)]

    def paths(modules) -> Optional[tuple[str, ...]]:
        return None if modules is None else tuple(path(m) for m in modules)

    return ModulePaths(
        blocks=paths(anatomy.blocks),
        final_norm=path(anatomy.final_norm),
        unembed=path(anatomy.unembed),
        embed=path(anatomy.embed),
        mid_norms=paths(anatomy.mid_norms),
        attns=paths(anatomy.attns),
        mlps=paths(anatomy.mlps),
        out_projs=paths(anatomy.out_projs),
        n_heads=anatomy.n_heads,
    )


def _on_meta(hf_model: Any) -> bool:
    first = next(iter(hf_model.parameters()), None)
    return first is not None and first.is_meta


# A miniature keeps the class and the module tree of a config, at widths a probe forward
# runs in milliseconds: two blocks, 64 wide, 4 heads of 16 (2 key-value heads where the
# model shares them), a 128-wide MLP.
_MINIATURE = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "head_dim": 16}


def _miniature(hf_model: Any) -> Any:
    """The same class as ``hf_model``, built small on the CPU with random weights: the
    anatomy is found by a forward (engine/model/anatomy.py), which a meta model cannot run."""
    import copy

    import torch

    from lenstui.engine.model.anatomy import text_config

    config = copy.deepcopy(hf_model.config)
    text = text_config(config)
    heads = getattr(text, "num_attention_heads", None)
    kv_heads = getattr(text, "num_key_value_heads", None)
    for key, value in _MINIATURE.items():
        if hasattr(text, key):
            setattr(text, key, value)
    if kv_heads is not None and heads:
        text.num_key_value_heads = 4 if kv_heads == heads else 2
    if isinstance(getattr(text, "layer_types", None), list):
        text.layer_types = text.layer_types[: text.num_hidden_layers]
    for key in ("moe_intermediate_size", "shared_expert_intermediate_size"):
        if hasattr(text, key):
            setattr(text, key, 128)
    mini = type(hf_model)(config)
    return mini.to(torch.float32).eval()


def _paths_through_miniature(hf_model: Any, name: str) -> ModulePaths:
    """``hf_model``'s paths from its miniature's anatomy: the same names outside the blocks,
    the same names inside each block (a block's parts are the first block's, relative)."""
    from lenstui.engine.model.anatomy import find_blocks, text_config

    try:
        mini = _miniature(hf_model)
    except Exception:  # noqa: BLE001 - a config the miniature cannot shrink: refused below
        mini = None
    anatomy = find_anatomy(mini) if mini is not None else None
    blocks = find_blocks(hf_model)
    if anatomy is None or blocks is None or len(set(anatomy.mixers)) > 1:
        raise ModelLoadError(
            f"The nnsight backend reads the families whose parts lenstui finds in a small copy of the model, "
            f"and {quoted(name, middle=True)} ({type(hf_model).__name__}) is not one of them: open it "
            "with --backend native."
        )
    names = {id(module): path for path, module in mini.named_modules()}
    first_block = names[id(anatomy.blocks[0])]
    block_paths = tuple(f"{blocks[0]}.{i}" for i in range(len(blocks[1])))

    def per_block(modules) -> Optional[tuple[str, ...]]:
        if modules is None or any(m is None for m in modules):
            return None
        relative = names[id(modules[0])].removeprefix(first_block + ".")
        return tuple(f"{block}.{relative}" for block in block_paths)

    return ModulePaths(
        blocks=block_paths,
        final_norm=names[id(anatomy.final_norm)],
        unembed=names[id(anatomy.unembed)],
        embed=names[id(anatomy.embed)],
        mid_norms=per_block(anatomy.mid_norms),
        attns=per_block(anatomy.attns),
        mlps=per_block(anatomy.mlps),
        out_projs=per_block(anatomy.out_projs),
        n_heads=int(text_config(hf_model.config).num_attention_heads),
    )


@dataclass
class NnsightModel:
    lm: Any  # nnsight.TransformersModel
    hf: Any  # its module tree (real weights locally, the meta device on NDIF)
    tokenizer: Any
    name: str
    source: str
    device: str
    dtype: str
    paths: ModulePaths
    transport: Any  # engine.backends.nnsight.transport.Transport
    local: Optional[LoadedModel] = None  # the native model it wraps (local only)
    load_seconds: float = 0.0
    from_cache: bool = False
    notes: list[str] = field(default_factory=list)
    caches: ModelCaches = field(default_factory=ModelCaches, repr=False)
    weights_sha256: Optional[str] = None
    weights_files: tuple[str, ...] = ()
    placement: dict[str, str] = field(default_factory=dict)  # module -> device (here); NDIF's own there
    quantize: Optional[str] = None
    # The wiring check of the native model it wraps (locally); on NDIF none is run (it would
    # cost a remote request per load): the JSON and the status line then say nothing of it.
    wiring: Any = None

    backend: ClassVar[str] = "nnsight"

    @property
    def remote(self) -> bool:
        return self.transport.remote

    @property
    def endpoint(self) -> Optional[str]:
        return self.transport.endpoint

    @property
    def n_layers(self) -> int:
        return len(self.paths.blocks)

    @property
    def anatomy(self):
        """The native anatomy where the model runs here (the rows' labels read it); on
        NDIF none (its rows are labelled as an attention model's)."""
        return self.local.anatomy if self.local is not None else None

    # What reads only the config and the tokenizer is LoadedModel's own.
    d_model = LoadedModel.d_model
    d_vocab = LoadedModel.d_vocab
    decode = LoadedModel.decode
    piece = LoadedModel.piece

    @property
    def n_ctx(self) -> int:
        return context_length(self.hf)

    # What learned lenses read (their file's check against the unembedding, the J-lens's
    # bridge): the weights here, when the model runs here.
    @property
    def W_U(self):
        return self._here("The unembedding").W_U

    @property
    def b_U(self):
        return self._here("The unembedding").b_U

    @property
    def bridge(self):
        return self._here("TransformerLens' bridge").bridge

    def _here(self, what: str) -> LoadedModel:
        if self.local is None:
            raise InputError(f"{what} of {self.name} stays on NDIF: this needs the model on this machine.")
        return self.local

    def envoy(self, path: str):
        """The nnsight envoy at a dotted module path."""
        return self.lm.get(path)


def _nnsight_quietly():
    """Import nnsight with its terminal status display off: the app owns the screen and
    the CLI reports progress itself (``transport.py``)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import nnsight
        from nnsight.schema.config import CONFIG

    CONFIG.APP.REMOTE_LOGGING = False
    return nnsight


def wrap_local(model: LoadedModel, transport=None) -> NnsightModel:
    """The nnsight backend over a model loaded here (its tensors shared, nothing copied)."""
    from lenstui.engine.backends.nnsight.transport import Transport

    _nnsight_quietly()
    from nnsight import TransformersModel

    paths = module_paths(model.hf, model.name)
    lm = TransformersModel(model.hf, tokenizer=model.tokenizer, task="text-generation")
    return NnsightModel(
        lm=lm,
        hf=model.hf,
        tokenizer=model.tokenizer,
        name=model.name,
        source=model.source,
        device=model.device,
        dtype=model.dtype,
        paths=paths,
        transport=transport or Transport.local(),
        local=model,
        load_seconds=model.load_seconds,
        from_cache=model.from_cache,
        notes=list(model.notes),
        weights_sha256=model.weights_sha256,
        weights_files=model.weights_files,
        placement=dict(getattr(model, "placement", {}) or {}),
        wiring=getattr(model, "wiring", None),
        quantize=getattr(model, "quantize", None),
    )


def open_remote(
    repo_id: str,
    transport,
    *,
    dtype: str = "bfloat16",
    allow_download: bool = False,
    progress: Optional[Progress] = None,
) -> NnsightModel:
    """nnsight's meta model of ``repo_id`` (its config and tokenizer only, from the Hugging
    Face cache unless downloads are allowed), its traces sent through ``transport``."""
    from lenstui.engine.model.load import _HUB_ID, hub_offline

    started = time.perf_counter()
    if not (_HUB_ID.match(repo_id) and "/" in repo_id):
        raise ModelLoadError(
            f"NDIF serves models by their Hugging Face id (like meta-llama/Llama-3.3-70B-Instruct), "
            f"not {quoted(repo_id, middle=True)}."
        )
    offline = hub_offline(allow_download)
    if progress is not None:
        progress(f"reading {repo_id}'s config and tokenizer (no weights)", 0.2)
    _nnsight_quietly()
    from nnsight import TransformersModel

    if offline:
        # nnsight asks the hub for a repo's canonical spelling when it first mints the
        # model key; offline, the id as typed is the key (NDIF refuses a misspelt one).
        from nnsight.modeling import huggingface

        huggingface._ID_CACHE.setdefault(repo_id, repo_id)
    try:
        from transformers import AutoTokenizer

        # The tokenizer read here and handed over: nnsight's meta build leaves finding it
        # to the pipeline, which cannot for a model it did not load (transformers 5).
        tokenizer = AutoTokenizer.from_pretrained(repo_id, local_files_only=offline)
        lm = TransformersModel(repo_id, task="text-generation", tokenizer=tokenizer)
    except Exception as err:  # a missing config or tokenizer, a gated repo: one sentence
        raise ModelLoadError(_meta_load_sentence(repo_id, err, offline)) from None
    hf = lm._module
    paths = module_paths(hf, repo_id)
    return NnsightModel(
        lm=lm,
        hf=hf,
        tokenizer=lm.tokenizer,
        name=repo_id,
        source="ndif",
        device="ndif",
        dtype=dtype,
        paths=paths,
        transport=transport,
        load_seconds=time.perf_counter() - started,
    )


def _meta_load_sentence(repo_id: str, err: Exception, offline: bool) -> str:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
    if offline:
        return (
            f"{repo_id}'s config and tokenizer are not in the local Hugging Face cache ({first}): "
            f"fetch them once (`hf download {repo_id} --include '*.json'`), or pass --allow-download."
        )
    return f"Cannot read {repo_id}'s config and tokenizer from the Hugging Face hub ({first})."
