"""A talk's scene against a loaded model: does its prompt fit, do its tokens exist?

:mod:`lenstui.talks.format` checks what a file can say on its own; this module checks what
needs the model (its tokenizer, context length and layer count), and resolves a scene
into the token ids the worker runs. Every problem is collected into one sentence, so a
speaker sees all that is wrong with a scene at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from lenstui.core.errors import InputError, quoted
from lenstui.engine.model.chat import chat_prompt_ids
from lenstui.engine.model.load import LoadedModel
from lenstui.engine.model.vocab import encode_prompt, resolve_token
from lenstui.talks.format import Scene, token_spec_text


@dataclass
class ResolvedScene:
    """A scene in the model's terms. Positions count in the prompt after ``steps``
    generated tokens are appended (so -1 is the last generated token)."""

    scene: Scene
    prompt_ids: list[int]  # the prompt as the model reads it (chat template applied)
    target_id: Optional[int] = None
    pinned_ids: list[int] = field(default_factory=list)
    cursor_layer: Optional[str] = None  # a row label: "embed", "L12", "L3.attn"
    cursor_position: Optional[int] = None  # 0-based, in prompt + generated tokens

    @property
    def total_tokens(self) -> int:
        return len(self.prompt_ids) + self.scene.steps


def layer_label(model: LoadedModel, layer: Union[str, int]) -> str:
    """A row label for a scene's cursor layer, checked against the model's layers."""
    labels = ["embed"] + [f"L{i}" for i in range(model.n_layers)]
    if isinstance(layer, int):
        if not -len(labels) <= layer < len(labels):
            raise InputError(f"cursor layer {layer} is outside the {len(labels)} rows (embed, L0..L{model.n_layers - 1})")
        return labels[layer]
    base = layer.split(".")[0]
    if base not in labels:
        raise InputError(f"cursor layer {layer} does not exist: {model.name} has embed, L0..L{model.n_layers - 1}")
    return layer


def resolve_scene(model: LoadedModel, scene: Scene) -> ResolvedScene:
    """The scene's ids, tokens and cursor for this model; InputError naming every problem."""
    if scene.problem:
        raise InputError(scene.problem)
    problems: list[str] = []
    resolved = ResolvedScene(scene=scene, prompt_ids=[])
    try:
        if scene.chat:
            resolved.prompt_ids = chat_prompt_ids(model, scene.prompt or "")
        else:
            resolved.prompt_ids = encode_prompt(model, scene.prompt_value)
    except InputError as err:
        problems.append(str(err).rstrip("."))
    if resolved.prompt_ids and resolved.total_tokens > model.n_ctx:
        problems.append(
            f"the prompt ({len(resolved.prompt_ids)} tokens) plus {scene.steps} steps is more than "
            f"the {model.n_ctx} tokens {model.name} reads"
        )
    for spec, is_target in [(scene.target, True)] + [(p, False) for p in scene.pinned]:
        if spec is None:
            continue
        try:
            token_id = resolve_token(model, spec)
        except InputError as err:
            problems.append(f"{'target' if is_target else 'pinned'} {quoted(token_spec_text(spec))}: {str(err).rstrip('.')}")
            continue
        if is_target:
            resolved.target_id = token_id
        else:
            resolved.pinned_ids.append(token_id)
    if scene.cursor.layer is not None:
        try:
            resolved.cursor_layer = layer_label(model, scene.cursor.layer)
        except InputError as err:
            problems.append(str(err))
    if scene.cursor.position is not None and resolved.prompt_ids:
        total, position = resolved.total_tokens, scene.cursor.position
        if -total <= position < total:
            resolved.cursor_position = position % total
        else:
            problems.append(f"cursor position {position} is outside the {total} tokens of the prompt and its steps")
    if scene.lens == "extended" and scene.extended_blocks is not None and not 1 <= scene.extended_blocks < model.n_layers:
        problems.append(f"the extended lens needs 1..{model.n_layers - 1} decoder blocks, not {scene.extended_blocks}")
    if problems:
        raise InputError("; ".join(problems) + ".")
    return resolved


def scene_problem(model: LoadedModel, scene: Scene) -> Optional[str]:
    """One sentence saying why the scene cannot be shown on this model, or None."""
    try:
        resolve_scene(model, scene)
    except InputError as err:
        return str(err)
    return None
