"""The Patchscope on the embedded SmolLM2-135M-Instruct: cells against an independent
patch made with forward hooks on the transformers model, the CLI (the target in the JSON,
the cost said up front), the worker's first streamed part on a 128-token prompt, and the
published-lens sentences for this model."""

from __future__ import annotations

import json

import pytest

from lenstui.cli import main
from lenstui.core.lenses import DEFAULT_PATCHSCOPE_TARGET, LensOptions
from lenstui.engine.lens.run import run_lens
from testkit.patchscope_reference import hooked_patchscope

pytestmark = pytest.mark.integration

EIFFEL = "The Eiffel Tower is located in the city of"


@pytest.mark.parametrize("target", [DEFAULT_PATCHSCOPE_TARGET, "Paris -> Paris\nRome -> Rome\n?"])
def test_every_row_at_the_last_positions_is_the_hooked_patch(embedded, target):
    options = LensOptions(lens="patchscope", top_k=10, patchscope_target=target)
    result = run_lens(embedded, EIFFEL, options, positions="-2,-1", slot="ps-embedded")
    ids = list(result.token_ids)
    reference = hooked_patchscope(embedded.hf, ids, embedded.tokenizer(target)["input_ids"], positions=result.column_positions)
    worst = 0.0
    for row in range(len(result.layers)):
        for col, pos in enumerate(result.column_positions):
            cell, ref = result.grid[row][col], reference[(row, pos)]
            assert cell.top[0].id == int(ref.argmax()), (result.layers[row], pos)
            worst = max([worst, abs(cell.target_prob - float(ref[result.targets[col].id]))]
                        + [abs(t.prob - float(ref[t.id])) for t in cell.top])
    assert worst <= 1e-4, worst
    assert len(result.layers) == embedded.n_layers + 1 and result.patchscope_target == target


def test_the_cli_names_the_target_and_states_the_cost(capsys):
    code = main(["lens", EIFFEL, "--lens", "patchscope", "--positions", "-1", "--top-k", "3", "--json",
                 "--patchscope-target", "Rome -> Rome\\n?"])
    out, err = capsys.readouterr()
    assert code == 0, err
    payload = json.loads(out)
    assert payload["lens"] == "patchscope" and payload["patchscope_target"] == "Rome -> Rome\n?"
    assert payload["positions"] == [len(payload["tokens"]) - 1]
    assert "runs the model once per cell" in err and "465 block-steps per column" in err


def test_the_worker_streams_the_first_visible_column_alone_on_a_long_prompt(embedded):
    from lenstui.jobs.handlers import run_lens_handler
    from lenstui.jobs.protocol import RunLens

    text = "Sometimes, when people say plasma, they mean a state of matter. " * 12
    ids = tuple(embedded.tokenizer(text)["input_ids"][:128])

    class Ctx:
        partials: list = []

        def should_stop(self):
            return False

        def progress(self, message, fraction=None):
            pass

        def partial(self, result):
            self.partials.append(result.column_positions)

    embedded.caches.lens_states.pop("a", None)
    ctx = Ctx()
    request = RunLens(ids, options=LensOptions(lens="patchscope", top_k=5), first_positions=tuple(range(-10, 0)))
    done = run_lens_handler(embedded, request, ctx)
    assert ctx.partials[0] == [127] and all(len(p) <= 8 for p in ctx.partials[1:])
    assert done.complete and len(done.tokens) == 128


def test_published_lenses_for_another_model_are_refused_in_one_sentence(capsys):
    code = main(["lens", EIFFEL, "--lens", "jacobian", "--lens-path", "registry:gpt2-small"])
    err = capsys.readouterr().err
    assert code == 2
    assert "The published J-lens gpt2-small was fitted for openai-community/gpt2, not HuggingFaceTB/SmolLM2-135M-Instruct" in err
    code = main(["lens", EIFFEL, "--lens", "logit", "--lens-path", "registry:gpt2-small"])
    assert code == 2 and "add --lens tuned or --lens jacobian" in capsys.readouterr().err
    assert main(["lenses", "list", "--published"]) == 0
    assert "No published lens is listed for HuggingFaceTB/SmolLM2-135M-Instruct" in capsys.readouterr().out
