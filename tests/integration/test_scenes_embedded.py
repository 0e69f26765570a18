"""The seeds talk holds on the embedded model: every scene shows what it says."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lenstui.talks.format import load_talk

ROOT = Path(__file__).resolve().parents[2]

SEEDS = ROOT / "talks" / "seeds.toml"


def test_the_seeds_talk_holds_on_the_embedded_model(embedded):
    from lenstui.engine.model.chat import chat_prompt_ids
    from lenstui.talks.resolve import resolve_scene

    talk = load_talk(SEEDS)
    resolved = [resolve_scene(embedded, scene) for scene in talk.scenes]
    assert resolved[0].prompt_ids == chat_prompt_ids(embedded, "Is there a seahorse emoji?")
    assert resolved[0].pinned_ids[2] == embedded.tokenizer.get_vocab()["ĠðŁ"]
    # Scene 3's cursor is on the second " say", just before the repeated " plasma".
    plasma = resolved[2]
    assert embedded.piece(plasma.prompt_ids[plasma.cursor_position]) == "Ġsay"
    assert embedded.piece(plasma.prompt_ids[plasma.cursor_position + 1]) == "Ġplasma"
    # Scene 4's story: token 5's unembedding row is an exact copy of its pinned twins'.
    unspeakable = resolved[3]
    w_u = embedded.bridge.W_U.detach().double().numpy()
    assert unspeakable.target_id == 5 and unspeakable.pinned_ids == [9, 11, 36743]
    for twin in unspeakable.pinned_ids:
        assert np.array_equal(w_u[:, 5], w_u[:, twin])
    assert not np.array_equal(w_u[:, 5], w_u[:, 6])
