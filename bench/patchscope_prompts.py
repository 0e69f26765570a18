"""What the seahorse and plasma prompts show under the Patchscope mid-stack, beside the
logit lens (same model, same run): the top-3 of rows L8..L24 at the positions that matter.

- plasma: "Sometimes, when people say plasma, they mean a state of matter. Other times, when
  people say plasma" at its second " say" (position of the token before " plasma") and at the
  end (where the model writes what plasma means next);
- seahorse: "Is there a seahorse emoji?" as a chat turn, 24 greedy tokens of the answer
  appended, at the assistant's first token and at every answer position whose next token is
  " se" (the seahorse's first piece) if any.

Run: .venv/bin/python bench/patchscope_prompts.py  (prints a plain-text table)
"""

from __future__ import annotations

from lenstui.core.lenses import LensOptions
from lenstui.engine.lens.state import LensState
from lenstui.engine.model.chat import chat_prompt_ids
from lenstui.engine.model.generate import greedy_ids
from lenstui.engine.model.load import load_model

PLASMA = "Sometimes, when people say plasma, they mean a state of matter. Other times, when people say plasma"
SEAHORSE = "Is there a seahorse emoji?"
ROWS = range(9, 26, 2)  # L8, L10, ..., L24 (row i is L{i-1})


def show(model, ids, positions, title):
    states = {lens: LensState(model) for lens in ("logit", "patchscope")}
    results = {}
    for lens, state in states.items():
        state.prepare(ids, LensOptions(lens=lens, top_k=3))
        results[lens] = state.cells(positions)
    print(f"\n## {title}")
    for i, pos in enumerate(positions):
        here = model.tokenizer.decode([ids[pos]])
        after = model.tokenizer.decode([ids[pos + 1]]) if pos + 1 < len(ids) else "(end)"
        print(f"\nposition {pos} ({here!r}; the model's next token: {after!r})")
        print(f"{'row':<5} {'logit top-3':<40} patchscope top-3")
        for row in ROWS:
            cells = {lens: results[lens].cells[row][i] for lens in results}
            text = {lens: " ".join(f"{t.text!r}{t.prob:.2f}" for t in c.top) for lens, c in cells.items()}
            print(f"L{row - 1:<4} {text['logit']:<40} {text['patchscope']}")


def main():
    model = load_model(None)
    plasma = list(model.tokenizer(PLASMA)["input_ids"])
    says = [i for i, t in enumerate(plasma) if model.tokenizer.decode([t]) == " say"]
    show(model, plasma, [says[-1], len(plasma) - 1], "plasma")
    prompt = chat_prompt_ids(model, SEAHORSE)
    ids = greedy_ids(model, prompt, 24)
    print("\nseahorse answer:", repr(model.tokenizer.decode(ids[len(prompt):])))
    before_se = [p for p in range(len(prompt), len(ids) - 1) if model.tokenizer.decode([ids[p + 1]]) == " se"]
    show(model, ids, [len(prompt) - 1] + before_se[:1], "seahorse (chat)")


if __name__ == "__main__":
    main()
