"""LensSession: the explorer's lens state, without a screen, a model or torch."""

from __future__ import annotations

from lenstui.core.lenses import LensOptions
from lenstui.jobs.protocol import RunLens
from lenstui.tui.state.session import LensSession, Step


def test_text_becomes_a_chat_aware_request_with_the_settings():
    session = LensSession(top_k=7, chat=True)
    session.set_text("The capital of France is")
    assert session.request() == RunLens("The capital of France is", chat=True, options=LensOptions(top_k=7))
    session.set_target(7042)
    session.set_lens("raw")
    assert session.request() == RunLens("The capital of France is", chat=True, options=LensOptions(top_k=7, lens="raw", target=7042))


def test_steps_run_on_ids_and_a_new_text_drops_them():
    session = LensSession()
    session.set_text("Hi")
    session.step((1, 2, 3), " there", "Ġthere")
    session.step((1, 2, 3, 4), "!", "!")
    assert session.request().prompt == (1, 2, 3, 4)
    assert session.request().chat is False  # ids are used as given
    assert session.unstep() and session.request().prompt == (1, 2, 3)
    session.set_text("Hi")  # the same text keeps the steps
    assert len(session.steps) == 1
    session.set_text("Hello")
    assert session.steps == [] and session.request().prompt == "Hello"
    assert not session.unstep()


def test_the_same_request_is_not_rerun_unless_it_failed():
    session = LensSession()
    session.set_text("x")
    request = session.request()
    assert session.wants_run(request)
    session.submitted(request)
    assert not session.wants_run(session.request())
    session.failed()
    assert session.wants_run(session.request())  # Enter retries a failed run
    session.submitted(request)
    session.set_target(5)
    assert session.wants_run(session.request())


def test_lens_variants_cycle_and_mid_rows_exclude_the_extended_lens():
    session = LensSession()
    assert [session.lens_kind, session.next_lens()] == ["logit", "extended"]
    session.toggle_mid()
    assert session.incl_mid
    session.set_lens("extended")
    assert not session.incl_mid  # the extended decoder reads block outputs only
    session.toggle_mid()
    assert session.incl_mid and session.lens_kind == "logit"
    session.set_lens("raw")
    assert session.next_lens() == "patchscope"  # (no tuned or jacobian file)
    session.set_lens("patchscope")
    assert session.next_lens() == "logit"


def test_chat_toggle_drops_steps_and_has_prompt_sees_either():
    session = LensSession()
    assert not session.has_prompt
    session.set_text("  ")
    assert not session.has_prompt
    session.step((1,), "a", "a")
    assert session.has_prompt
    session.set_chat(True)
    assert session.chat and session.steps == []


def test_info_line_lists_the_newest_steps_and_shows_partial_tokens_by_piece():
    session = LensSession(chat=False)
    keys = dict(chat_key="^t", unstep_key="^b", step_key="^n")
    assert session.info(chat_available=True, **keys) == (
        "chat template off (^t) · ^n appends the model's next token"
    )
    assert session.info(chat_available=False, **keys) == "^n appends the model's next token"
    for k in range(13):
        session.step((k,), " a" if k else "\ufffd", "ĠðŁ")
    line = session.info(chat_available=False, **keys)
    assert line.startswith("+13 generated: … ") and line.endswith("(^b undo)")
    assert "ĠðŁ" not in line  # the partial token was the oldest, beyond the 12 shown
    assert line.count("␣a") == 12
    assert Step((1,), "\ufffd", "ĠðŁ").label == "ĠðŁ"


def test_queued_steps_are_taken_one_per_answer_and_dropped_with_their_prompt():
    session = LensSession()
    session.set_text("Hi")
    session.queue_step()
    session.queue_step()
    info = session.info(chat_available=False, chat_key="^t", unstep_key="^b", step_key="^n")
    assert "2 more steps queued" in info and "appends" not in info
    assert session.take_queued_step() and session.queued_steps == 1
    session.set_text("Hello")  # a new prompt: the queued steps belonged to the old one
    assert session.queued_steps == 0 and not session.take_queued_step()
    session.queue_step()
    session.failed()  # nothing to extend
    assert session.queued_steps == 0
    session.queue_step()
    session.set_chat(True)
    assert session.queued_steps == 0


def test_learned_lenses_are_cycled_only_once_the_model_has_a_file():
    session = LensSession()
    session.set_text("x")
    cycle = []
    for _ in range(5):
        session.set_lens(session.next_lens())
        cycle.append(session.lens_kind)
    assert cycle == ["extended", "raw", "patchscope", "logit", "extended"]  # no tuned or jacobian file yet
    session.learned_available = frozenset({"tuned"})
    session.set_lens("raw")
    assert session.next_lens() == "tuned"
    session.set_lens("tuned")
    assert session.next_lens() == "patchscope"  # no J-lens: skipped
    assert session.request() == RunLens("x", options=LensOptions(lens="tuned"))  # the model's own fitted lens
    session.use_lens_file("jacobian", "/lenses/j.pt")
    assert session.lens_kind == "jacobian" and session.request().options.lens_path == "/lenses/j.pt"
    session.toggle_mid()  # learned lenses read block outputs only
    assert session.incl_mid and session.lens_kind == "logit"
    session.set_lens("tuned")
    assert not session.incl_mid
    session.learned_available = frozenset()
    session.forget_model()  # another model: its files are not this one's
    assert session.lens_paths == {} and session.lens_kind == "logit"
