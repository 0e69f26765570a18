"""`lenstui present FILE.toml`: present a talk's scenes in the app (lenstui.tui.presenter).

`lenstui present FILE.toml --check [--with-model]` validates a talk file headlessly: it prints each scene with what it will show and any problem. Exit status: 0 when every
scene can be shown, 1 when some cannot (the rest of the talk still runs), 2 when the
file itself is not a talk. ``--with-model`` also loads the model (the talk's ``model``,
or ``--model``) and checks that prompts fit its context and that named tokens exist.
"""

from __future__ import annotations

import argparse
from typing import Optional

from lenstui.cli.common import add_model_options, print_json
from lenstui.talks.format import Scene, Talk, load_talk, token_spec_text


def configure(parser: argparse.ArgumentParser, command: str = "") -> None:
    parser.description = "Present a talk file of prepared scenes, or check it with --check."
    parser.add_argument("talk", metavar="FILE.toml", help="a talk file: [[scene]] tables (see docs/guide/talks.md)")
    parser.add_argument("--check", action="store_true", help="validate the file and print each scene; no screen")
    parser.add_argument(
        "--with-model", action="store_true", help="also load the model and check prompts and tokens against it"
    )
    parser.add_argument("--json", action="store_true", help="print the check as JSON")
    parser.add_argument("--theme", metavar="NAME", default=None, help="the theme to start in (default: the talk's)")
    parser.add_argument(
        "--no-stage", dest="stage", action="store_false", help="start with the panes shown (f toggles the stage layout)"
    )
    add_model_options(parser)
    parser.set_defaults(func=run)


def describe(scene: Scene) -> str:
    """A one-line summary of what the scene shows."""
    if scene.prompt_ids is not None:
        prompt = f"ids {scene.prompt_ids[:6]}{'…' if len(scene.prompt_ids) > 6 else ''}"
    else:
        text = (scene.prompt or "").replace("\n", "\\n")
        prompt = repr(text if len(text) <= 48 else text[:47] + "…")
    parts = [prompt]
    if scene.chat:
        parts.append("chat")
    if scene.steps:
        parts.append(f"+{scene.steps} steps")
    parts.append(scene.view)
    if scene.lens != "logit":
        parts.append(f"{scene.lens} lens" + (f" ({scene.extended_blocks} blocks)" if scene.extended_blocks else ""))
    if scene.cursor.layer is not None or scene.cursor.position is not None:
        layer = "?" if scene.cursor.layer is None else scene.cursor.layer
        position = "?" if scene.cursor.position is None else scene.cursor.position
        parts.append(f"cursor {layer}@{position}")
    if scene.target is not None:
        parts.append(f"target {token_spec_text(scene.target)!r}")
    if scene.pinned:
        parts.append("pinned " + ", ".join(repr(token_spec_text(p)) for p in scene.pinned))
    if scene.theme:
        parts.append(scene.theme)
    return " · ".join(parts)


def _model_problems(talk: Talk, args: argparse.Namespace) -> None:
    """Set each valid scene's problem from the model's point of view."""
    from lenstui.cli.common import load_from_args
    from lenstui.talks.resolve import scene_problem

    if args.model is None and talk.model:
        args.model = talk.model
    model = load_from_args(args)
    for scene in talk.scenes:
        if scene.ok:
            scene.problem = scene_problem(model, scene)


def run(args: argparse.Namespace) -> int:
    talk = load_talk(args.talk)
    if not args.check:
        return present(talk, args)
    if args.with_model:
        _model_problems(talk, args)
    if args.json:
        print_json(
            {
                "path": str(talk.path),
                "title": talk.title,
                "model": talk.model,
                "notes": talk.notes,
                "scenes": [
                    {"number": s.number, "title": s.title, "line": s.line, "summary": describe(s),
                     "problem": s.problem, "notes": s.notes}
                    for s in talk.scenes
                ],
            }
        )
    else:
        _print_check(talk)
    return 0 if all(s.ok for s in talk.scenes) else 1


def present(talk: Talk, args: argparse.Namespace) -> int:
    # Imported here so `--check` never pays for Textual.
    from lenstui.tui.presenter import PresenterApp

    app = PresenterApp(
        talk,
        stage=args.stage,
        model=args.model or talk.model,
        device=args.device,
        dtype=args.dtype,
        theme=args.theme or talk.theme,
        allow_download=args.allow_download,
    )
    app.run()
    return int(app.return_code or 0)


def _print_check(talk: Talk) -> None:
    broken = sum(not s.ok for s in talk.scenes)
    head = f"{talk.title} · " if talk.title else ""
    model = f" · model {talk.model}" if talk.model else ""
    print(f"{head}{talk.path} · {len(talk.scenes)} scenes{model} · "
          + ("all can be shown" if not broken else f"{broken} cannot be shown"))
    for note in talk.notes:
        print(f"  note: {note}")
    width = len(str(len(talk.scenes)))
    for scene in talk.scenes:
        where = f" (line {scene.line})" if scene.line else ""
        print(f"{scene.number:>{width}}. {scene.title}{where}")
        print(f"{'':>{width}}  {describe(scene) if scene.ok else 'cannot be shown: ' + _lower_first(scene.problem)}")
        for note in scene.notes:
            print(f"{'':>{width}}  note: {note}")


def _lower_first(text: Optional[str]) -> str:
    return text[:1].lower() + text[1:] if text else ""
