"""The worker's typed protocol: the requests the UI sends and the results it gets back.

Plain frozen dataclasses (no torch, no Textual), so the app, the worker and the tests
all speak them. A request class is a "kind": a newer request of a kind supersedes an
older one (``lenstui.jobs.scheduler``). Every result carries the ``seq`` its request
was given, so stale answers are recognised and dropped.

The values results carry are the core's result dataclasses (``LensResult``,
``PatchResult``, ...) and the few reply types defined at the end of this module;
``REPLIES`` says which one each request kind answers with, and the worker checks every
``Done`` against it (``check_reply``), so a face can rely on the type it gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Union

from lenstui.core.attribution_result import AttributionResult
from lenstui.core.comparison import Comparison
from lenstui.core.learned_lens import FitReport, LensEval, LensFile
from lenstui.core.lens_result import LensResult
from lenstui.core.lenses import LensOptions
from lenstui.core.patch_result import PatchResult, PatchSite, SteerResult, SteerSetting, SweepResult
from lenstui.core.placement import PlacementOptions
from lenstui.core.scan_result import ScanMarks
from lenstui.core.speak_result import SpeakResult
from lenstui.core.share_result import ShareSample
from lenstui.core.undertrained_result import UndertrainedMarks
from lenstui.core.token_bytes import JoinedSequence
from lenstui.core.token_report import TokenReport
from lenstui.core.wiring import WiringCheck

# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """Base of every request. Subclasses are the "kinds" that supersede each other."""

    title: ClassVar[str] = "Request"  # heads a user's notice about it; default: the class name
    priority: ClassVar[int] = 5  # lower runs sooner
    needs_model: ClassVar[bool] = True
    long_running: ClassVar[bool] = False  # may call ctx.checkpoint() to let short jobs in

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "title" not in cls.__dict__:
            cls.title = cls.__name__


@dataclass(frozen=True)
class LoadModel(Request):
    spec: Optional[str] = None  # None: the embedded model
    device: Optional[str] = None
    dtype: Optional[str] = None  # None: auto (the model's own on a GPU, float32 on a CPU)
    allow_download: bool = False  # a hub id not in the local cache may be fetched
    placement: PlacementOptions = PlacementOptions()  # device map, memory budgets, offload, quantization
    # Who reads the model (lenstui.core.backends): None native (nnsight with ``remote``);
    # ``remote``: on NDIF at ``endpoint`` (None: the config's, else NDIF's own). The API key
    # never travels in a request: the worker reads it (NDIF_API_KEY or config.toml).
    backend: Optional[str] = None
    remote: bool = False
    endpoint: Optional[str] = None

    title: ClassVar[str] = "Model"
    priority: ClassVar[int] = 0
    needs_model: ClassVar[bool] = False


# A prompt as requests carry it: text is encoded (and chat-templated when the request's
# ``chat`` is set) on the worker; a tuple of ids is used as given, so generation steps keep
# partial UTF-8 tokens intact.
Prompt = Union[str, tuple[int, ...]]


@dataclass(frozen=True)
class RunLens(Request):
    prompt: Prompt
    chat: bool = False
    options: LensOptions = LensOptions()
    # Positions to compute and post first (the cells in view; negative counts from the
    # end, since the app does not know a text prompt's length). Not part of equality:
    # a request that only re-prioritises is the same run, and reuses what was computed.
    first_positions: tuple[int, ...] = field(default=(), compare=False)

    title: ClassVar[str] = "Logit lens"
    priority: ClassVar[int] = 1


@dataclass(frozen=True)
class RunCompare(Request):
    """Two prompts side by side: both lenses (incremental, slots "a" and "b") and KL(A || B)
    per row between position ``position_a`` of A and ``position_b`` of B."""

    prompt_a: Prompt
    prompt_b: str
    position_a: int = -1
    position_b: int = -1
    chat: bool = False
    options: LensOptions = LensOptions()

    title: ClassVar[str] = "Compare prompts"
    priority: ClassVar[int] = 1


@dataclass(frozen=True)
class InspectToken(Request):
    """The token inspector's request: one token's report, and optionally the prompt's
    ids joined into characters with one position highlighted."""

    token_id: int
    neighbors: int = 20
    sequence: Optional[tuple[int, ...]] = None  # the prompt's ids, to join into characters
    selected: Optional[int] = None  # the prompt position to highlight in that sequence

    title: ClassVar[str] = "Token inspector"
    priority: ClassVar[int] = 1


@dataclass(frozen=True)
class CheckSpeakable(Request):
    """One token's certified speakability check."""

    token_id: int

    title: ClassVar[str] = "Speakability"
    priority: ClassVar[int] = 2


@dataclass(frozen=True)
class ScanVocabulary(Request):
    """A vocabulary-wide speakability scan: long, chunked, interleaved with short jobs."""

    limit: Optional[int] = None  # scan only ids 0..limit-1 (not cached), as `lenstui scan --limit`
    resume: bool = True  # continue a cached partial scan
    cached_only: bool = False  # just load the cached scan (None when there is none)

    title: ClassVar[str] = "Vocabulary scan"
    priority: ClassVar[int] = 3
    long_running: ClassVar[bool] = True


@dataclass(frozen=True)
class AttributeCell(Request):
    """Direct logit attribution of one lens cell (``lenstui.engine.attribution``)."""

    prompt_ids: tuple[int, ...]  # the ids the grid shows (chat template and steps included)
    position: int
    row: int  # the lens row index: 0 = embed, k + 1 = after block k
    token_id: int
    contrast_id: Optional[int] = None  # None: against the mean logit
    heads: int = 8

    title: ClassVar[str] = "Attribution"
    priority: ClassVar[int] = 2


@dataclass(frozen=True)
class RenderScenes(Request):
    """A talk's scenes computed ahead, one after another in ``order`` (scene numbers,
    the current scene first). Long-running: between scenes the handler calls
    ``ctx.checkpoint()`` so interactive requests get in, and it hands each finished
    scene back at once with ``ctx.partial`` (a ``Partial`` result)."""

    scenes: tuple = ()  # lenstui.talks.format.Scene, in file order
    order: tuple[int, ...] = ()  # scene numbers (1-based) to compute, in this order
    top_k: int = 10
    incl_mid: bool = False

    title: ClassVar[str] = "Scenes"
    priority: ClassVar[int] = 2
    long_running: ClassVar[bool] = True


@dataclass(frozen=True)
class FitLens(Request):
    """Fit a learned lens for the loaded model (``lenstui.engine.lens.fit``): long, with
    progress and an ETA; between chunks it lets interactive requests in, and a cancel
    stops it with nothing saved. Done: a ``FitReport``."""

    kind: str = "tuned"
    tokens: Optional[int] = None  # None: the default budget
    text_path: Optional[str] = None  # fit on this text file instead of sampled text
    refine_steps: int = 0
    out: Optional[str] = None  # None: the model's lens folder in the user cache

    title: ClassVar[str] = "Lens fit"
    priority: ClassVar[int] = 4
    long_running: ClassVar[bool] = True


@dataclass(frozen=True)
class EvaluateLenses(Request):
    """Per row, each lens's KL to the final row, top-1 agreement and final top-1 rank over
    the prompt's ids or a text file (``lenstui.engine.lens.evaluate``). Done: a ``LensEval``."""

    lenses: tuple[str, ...] = ("logit", "tuned")
    prompt_ids: tuple[int, ...] = ()  # the grid's ids (chat template and steps included)
    text_path: Optional[str] = None  # or a text file (paragraphs)
    lens_path: Optional[str] = None  # a learned lens's file; None: the ones fitted for the model
    patchscope_target: Optional[str] = None  # the Patchscope's target (None: token identity)

    title: ClassVar[str] = "Lens evaluation"
    priority: ClassVar[int] = 3
    long_running: ClassVar[bool] = True


@dataclass(frozen=True)
class RunPatch(Request):
    """A patched lens run (``lenstui.engine.causal.patch``): prompt A with ``site``
    (block, component, position) taken from prompt B at the site's ``from_position``, or
    ablated (``ablate`` "zero"/"mean", no prompt B). Both prompts run in the lens' slots
    "a" and "b", so the explorer's and the compare view's runs are reused."""

    prompt_a: Prompt
    prompt_b: Optional[Prompt] = None
    site: PatchSite = PatchSite(layer="L0")
    ablate: Optional[str] = None
    chat: bool = False
    options: LensOptions = LensOptions()

    title: ClassVar[str] = "Patch"
    priority: ClassVar[int] = 1


@dataclass(frozen=True)
class RunSweep(Request):
    """Patch after patch (``lenstui.engine.causal.sweep``): the site's position at every
    layer (``mode`` "layers") or every position at the site's layer ("positions"),
    reading the target's probability at A's last position."""

    prompt_a: Prompt
    prompt_b: Optional[Prompt] = None
    mode: str = "layers"
    site: PatchSite = PatchSite()
    ablate: Optional[str] = None
    chat: bool = False
    target: Union[str, int, None] = None
    track: tuple[Union[str, int], ...] = ()

    title: ClassVar[str] = "Patch sweep"
    priority: ClassVar[int] = 2


@dataclass(frozen=True)
class RunSteer(Request):
    """A steered lens run (``lenstui.engine.causal.steer``): the ``setting``'s ``alpha``
    median residual norms toward a token's unembedding direction (away from another's)
    added after its block from its position on; ``steps`` greedy tokens under it. The
    setting's ``scale`` fixes the unit (the app keeps the first run's while it steps)."""

    prompt: Prompt
    setting: SteerSetting
    steps: int = 0
    chat: bool = False
    options: LensOptions = LensOptions()

    title: ClassVar[str] = "Steer"
    priority: ClassVar[int] = 1


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Result:
    seq: int  # what submit() returned for the request
    request: Request

    @property
    def kind(self) -> type:
        return type(self.request)


@dataclass(frozen=True)
class Progress(Result):
    message: str
    fraction: Optional[float] = None  # 0..1, None when unknown


@dataclass(frozen=True)
class Partial(Result):
    """Part of a request's answer, posted before its ``Done`` and tagged with the
    request's seq like every result, so the stale rule applies; unlike Progress,
    partials never merge. RunLens: a LensResult whose ``positions`` are the columns
    of this chunk; RenderScenes: one computed scene."""

    value: Any


@dataclass(frozen=True)
class Done(Result):
    value: Any  # what REPLIES (end of this module) says its request kind answers
    seconds: float = 0.0


@dataclass(frozen=True)
class Failed(Result):
    message: str  # a sentence for the user
    error: str = ""  # the exception's type name


@dataclass(frozen=True)
class Stopped(Result):
    """The request was superseded (or the worker is shutting down) before it finished."""

    reason: str = "superseded"


@dataclass(frozen=True)
class ModelInfo:
    """What the UI may know about the loaded model: plain values, no tensors."""

    name: str
    source: str
    device: str
    dtype: str
    n_layers: int
    n_ctx: int
    d_vocab: int
    load_seconds: float
    from_cache: bool
    has_chat_template: bool
    notes: tuple[str, ...] = ()  # sentences about the load (the GGUF cache could not be written, ...)
    lenses: tuple[LensFile, ...] = ()  # learned lenses fitted for these weights (found in the cache)
    placement: tuple[tuple[str, str], ...] = ()  # (module, device) pairs: where the weights are
    placement_summary: str = ""  # one line of it ("cuda:0 embed L0-39 · cuda:1 L40-79 norm unembed")
    quantize: Optional[str] = None  # "4bit", "8bit", a checkpoint's own method, or None
    wiring: Optional[WiringCheck] = None  # the lens held to the model's own output on this load
    mid_rows: Optional[str] = None  # why the model has no mid-block rows (None: it has them)
    backend: str = "native"  # who reads the model: "native" or "nnsight"
    remote: bool = False  # nnsight on NDIF
    endpoint: Optional[str] = None  # the NDIF endpoint, when remote
    limits: tuple[str, ...] = ()  # what this backend cannot do here, one sentence each


# handler(model or None, request, ctx: lenstui.jobs.scheduler.JobContext) -> value; runs on
# the worker thread (lenstui.jobs.handlers).
Handler = Callable[[Any, Request, Any], Any]


# ---------------------------------------------------------------- reply values


@dataclass(frozen=True)
class InspectReply:
    report: "TokenReport"
    sequence: Optional["JoinedSequence"]  # the prompt's tokens joined into characters
    selected: Optional[int]  # prompt position to highlight in the sequence


@dataclass(frozen=True)
class SceneRender:
    """One talk scene computed on the loaded model: its lens result and cursor, or the
    sentence saying why it cannot be shown (``problem``)."""

    number: int
    problem: Optional[str] = None
    request: Optional[RunLens] = None  # the lens run this scene is (what the session asks next)
    result: Optional["LensResult"] = None
    prompt_length: int = 0  # tokens before the generated steps
    cursor_layer: Optional[str] = None  # a row label
    cursor_position: Optional[int] = None  # 0-based, in prompt + generated tokens
    target_id: Optional[int] = None
    pinned_ids: tuple[int, ...] = ()


# ---------------------------------------------------------------- what each kind answers

# Request kind -> the types its Done's value may have.
REPLIES: dict[type, tuple[type, ...]] = {
    LoadModel: (ModelInfo,),
    RunLens: (LensResult,),
    RunCompare: (Comparison,),
    InspectToken: (InspectReply,),
    CheckSpeakable: (SpeakResult,),
    ScanVocabulary: (ScanMarks, type(None)),  # None: only the cache was asked for, and none exists
    AttributeCell: (AttributionResult,),
    RenderScenes: (int,),  # how many scenes; each came before as a Partial(SceneRender)
    FitLens: (FitReport,),
    EvaluateLenses: (LensEval,),
    RunPatch: (PatchResult,),
    RunSweep: (SweepResult,),
    RunSteer: (SteerResult,),
}


def check_reply(request: Request, value: Any) -> None:
    """A handler's answer is what its request kind promises (TypeError otherwise: a bug)."""
    allowed = REPLIES.get(type(request))
    if allowed is not None and not isinstance(value, allowed):
        names = " or ".join(t.__name__ for t in allowed)
        raise TypeError(f"{type(request).__name__} answered with a {type(value).__name__}, not {names}")


# ---------------------------------------------------------------- speakability: issue 32
# (kept together at the end: under-trained tokens and the share of directions)


@dataclass(frozen=True)
class FindUndertrained(Request):
    """Under-trained tokens (Magikarp): candidates from the indicator, verified by repetition
    prompts; long, batched, resumable (the verifications are cached per model)."""

    share: float = 2.0  # percent of the reachable tokens taken as candidates
    limit: Optional[int] = None  # verify only the first N candidates
    verify: bool = True
    cached_only: bool = False  # just what earlier runs verified (no prompting)

    title: ClassVar[str] = "Under-trained tokens"
    priority: ClassVar[int] = 3
    long_running: ClassVar[bool] = True


@dataclass(frozen=True)
class EstimateShare(Request):
    """One token's aim and share of directions (``lenstui aim --share``)."""

    token_id: int
    samples: int = 128
    seed: int = 0

    title: ClassVar[str] = "Share of directions"
    priority: ClassVar[int] = 2


@dataclass(frozen=True)
class SampleShares(Request):
    """Share estimates over a sample of the vocabulary (the share-vs-theta plot)."""

    count: int = 40
    hardest: int = 8
    cached_only: bool = False

    title: ClassVar[str] = "Share sample"
    priority: ClassVar[int] = 3
    long_running: ClassVar[bool] = True


@dataclass(frozen=True)
class ShareReply:
    """EstimateShare's answer: the aim (``AimResult.to_json``) and ``ShareResult.share_json``."""

    token_id: int
    text: str
    aim: dict
    share: dict


REPLIES.update(
    {
        FindUndertrained: (UndertrainedMarks, type(None)),  # None: only what was kept, and none is
        EstimateShare: (ShareReply,),
        SampleShares: (ShareSample, type(None)),
    }
)
