"""The prompts a patch, sweep or steer reads, prepared once the same way for all three:
prompt A in the lens' slot "a" and prompt B (a patch's source) in slot "b", so the
explorer's and the compare view's runs are reused, and the site read against the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

from lenstui.core.callbacks import StopCheck
from lenstui.core.lenses import LensOptions
from lenstui.core.patch_result import PatchSite
from lenstui.engine.causal.sites import check_head, parse_site
from lenstui.engine.lens.state import LensPlan, LensState, lens_state

Prompt = Union[str, Sequence[int]]


@dataclass
class Prepared:
    clean: LensState  # prompt A (slot "a"), prepared with the options
    plan: LensPlan
    source: str  # "prompt", "zero" or "mean"
    other: Optional[LensState] = None  # prompt B (slot "b"), for source "prompt"
    other_plan: Optional[LensPlan] = None

    @property
    def n(self) -> int:
        return self.plan.n_positions


def prepare_prompts(
    model,
    prompt: Prompt,
    options: LensOptions,
    *,
    source: str = "none",
    source_prompt: Optional[Prompt] = None,
    should_stop: Optional[StopCheck] = None,
) -> Prepared:
    """Prompt A (and, for ``source`` "prompt", prompt B) through the incremental lens
    with ``options``."""
    clean = lens_state(model, "a")
    plan = clean.prepare(prompt, options, should_stop)
    prepared = Prepared(clean, plan, source)
    if source == "prompt":
        prepared.other = lens_state(model, "b")
        prepared.other_plan = prepared.other.prepare(source_prompt, options, should_stop)
    return prepared


def read_site(model, site: PatchSite, layer=None) -> tuple[str, int, Optional[int]]:
    """(component, block, head) of ``site`` on ``model`` (``layer`` overrides the site's),
    the head checked against the model's."""
    comp, block, parsed_head = parse_site(site.layer if layer is None else layer, site.component, model.n_layers)
    head = parsed_head if parsed_head is not None else site.head
    check_head(model, comp, head)
    return comp, block, head
