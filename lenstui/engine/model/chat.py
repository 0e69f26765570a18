"""Chat templating for instruct models: a user message -> the prompt's token ids.

The explorer's chat toggle wraps what the user typed as one user turn plus the
assistant's generation prompt, the way the model saw prompts in instruction tuning,
so the lens shows what the model "would say" as the assistant.
"""

from __future__ import annotations

from lenstui.core.errors import InputError, clipped
from lenstui.engine.model.load import LoadedModel
from lenstui.engine.model.vocab import encode_prompt


def has_chat_template(model: LoadedModel) -> bool:
    return bool(getattr(model.tokenizer, "chat_template", None))


def chat_prompt_ids(model: LoadedModel, user_text: str) -> list[int]:
    """Token ids of ``user_text`` as one user turn, ending where the assistant speaks."""
    if not user_text:
        raise InputError("The prompt is empty: type some text to run the lens on.")
    if not has_chat_template(model):
        raise InputError(f"{model.name} has no chat template: turn the chat toggle off.")
    # Templated to text first, then encoded: tokenize=True's return type differs between
    # transformers versions, and the template already holds any special tokens it needs.
    try:
        text = model.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=False
        )
    except Exception as err:  # jinja2's TemplateError (a raise_exception, a syntax error), or worse
        # The template is the model's, not lenstui's: whatever it raised is one sentence.
        raise InputError(
            f"The chat template of {model.name} failed on this prompt ({type(err).__name__}: "
            f"{clipped(err, 160)}): turn the chat toggle off, or fix the template."
        ) from None
    if not isinstance(text, str):
        raise InputError(f"The chat template of {model.name} did not produce text: turn the chat toggle off.")
    ids = list(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    return encode_prompt(model, ids)
