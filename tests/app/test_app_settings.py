"""The user's config reaching the explorer: its keymap, a bad setting's notice, the on-screen key
hints (the files themselves: tests/unit/test_settings_files.py)."""

from __future__ import annotations

from pathlib import Path


async def test_config_keymap_and_a_bad_setting_reach_the_app(tmp_path, monkeypatch):
    import os

    from lenstui.tui.app import LenstuiApp

    config_dir = Path(os.environ["LENSTUI_CONFIG_DIR"])
    config_dir.mkdir(parents=True)
    (config_dir / "config.toml").write_text(
        'theme = "lenstui-contrast"\ntop_k = 500\n[keymap]\n"lenstui.step" = "f8"\n'
    )
    notices = []

    def no_model(spec, **kw):
        from lenstui.core.errors import ModelLoadError

        raise ModelLoadError("No model in this test.")

    app = LenstuiApp("", loader=no_model)
    monkeypatch.setattr(app, "notify", lambda message, **kw: notices.append(str(message)))
    async with app.run_test(size=(80, 24)) as pilot:
        await app.model_settled.wait()
        assert app.theme == "lenstui-contrast"
        await pilot.press("f8")  # rebound step: nothing to step from yet
        await pilot.pause()
    text = " | ".join(notices)
    assert "top_k = 500 is not allowed" in text
    assert "Wait for the lens to finish" in text or "fix the prompt first" in text


async def test_on_screen_key_hints_follow_the_keymap(tmp_path):
    import os

    from lenstui.tui.app import LenstuiApp

    config_dir = Path(os.environ["LENSTUI_CONFIG_DIR"])
    config_dir.mkdir(parents=True)
    (config_dir / "config.toml").write_text(
        '[keymap]\n"lenstui.chat" = "ctrl+g"\n"lenstui.unstep" = "f9"\n"lenstui.speak_check" = "c"\n'
    )

    def no_model(spec, **kw):
        from lenstui.core.errors import ModelLoadError

        raise ModelLoadError("No model in this test.")

    app = LenstuiApp("", loader=no_model)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.model_settled.wait()
        await pilot.pause()
        info = str(app.prompt_pane.query_one("#prompt-info").render())
        assert "chat template off (^g)" in info and "^n appends the model's next token" in info
        app.session.step((1, 2), " a", "Ġa")
        app.lens.show_prompt_info()
        await pilot.pause()
        assert "(f9 undo)" in str(app.prompt_pane.query_one("#prompt-info").render())
        assert app.speak_pane.check_key == "c" and app.speak_pane.cancel_key == "x"
