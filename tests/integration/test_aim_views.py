"""Where the aim measure shows: `lenstui speak`'s "aim" field and words, the scan's
theta_lower_deg column (and its cache format), the grid's ° rule, the distribution view."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from lenstui.core.scan_result import METHODS, SPEAKABLE
from lenstui.core.verdicts import Method
from lenstui.engine.speak.aim import aim, cap_lower_bounds
from lenstui.engine.speak.check import CANDIDATE_FAMILIES, as_readout, candidate_directions
from lenstui.engine.speak.scan import scan_vocabulary

LIMIT = 300


def _hats(embedded, token: int) -> np.ndarray:
    """Normalised a_j = W_eff[t] - W_eff[j] from the model's own weights, float64."""
    bridge = embedded.bridge
    W = (bridge.W_U.detach().to(torch.float64) * bridge.ln_final.weight.detach().to(torch.float64)[:, None]).T.numpy()
    hats = W[token] - W
    lengths = np.linalg.norm(hats, axis=1)
    lengths[token] = np.inf
    return hats / lengths[:, None]


# ---------------------------------------------------------------- lenstui speak


def test_speak_json_aim_matches_the_engine_and_the_weights(embedded, capsys):
    from lenstui.cli import main

    assert main(["speak", "--id", "657", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["verdict"] == "speakable" and payload["id"] == 657  # the old keys stay
    field = payload["aim"]
    direct = aim(embedded, 657).to_json()
    for key in ("theta_deg", "theta_upper_deg", "offset_deg", "log10_share_lower", "method", "upper"):
        assert field[key] == direct[key], key
    assert np.array_equal(np.array(field["axis"]), np.array(direct["axis"]))
    # Both bounds re-checked from the weights alone, float64.
    hats = _hats(embedded, 657)
    axis = np.array(field["axis"])
    assert abs(np.linalg.norm(axis) - 1) < 1e-12
    sines = hats @ axis
    sines[657] = np.inf
    assert math.degrees(math.asin(sines.min())) >= field["theta_deg"] > 0
    ids = [e["id"] for e in field["upper"]]
    weights = np.array([e["weight"] for e in field["upper"]])
    assert weights.min() >= 0 and weights.sum() == pytest.approx(1.0)
    upper = math.degrees(math.asin(np.linalg.norm(weights @ hats[ids])))
    assert upper == pytest.approx(field["theta_upper_deg"], abs=1e-7)
    assert field["theta_deg"] <= field["theta_upper_deg"]


def test_speak_words_and_null_aim_for_an_unspeakable_token(embedded, capsys):
    from lenstui.cli import main

    assert main(["speak", "--id", "15107"]) == 0
    out = capsys.readouterr().out
    theta = aim(embedded, 15107)
    assert f"the model must aim within {theta.theta_deg:.1f}° of one axis" in out
    assert f"{theta.offset_deg:.1f}° away from the token's own direction" in out
    assert f"at least 1 in 10^{math.ceil(-theta.log10_share_lower)} directions" in out
    assert main(["speak", "--id", "5", "--json"]) == 0  # an exact twin: unspeakable
    payload = json.loads(capsys.readouterr().out)
    assert payload["verdict"] == "unspeakable" and payload["aim"] is None


# ---------------------------------------------------------------- the scan's column


@pytest.fixture(scope="module")
def limited_scan(embedded):
    return scan_vocabulary(embedded, limit=LIMIT, cache=False)


def _witness_axes(readout, scan, ids):
    """Each speakable token's witness direction, as the scan used it (float32)."""
    axes = []
    for t in ids:
        method = METHODS[int(scan.method[t])]
        if method == Method.LP:
            axes.append(torch.as_tensor(scan.lp_witnesses[t], dtype=torch.float64).to(torch.float32))
        elif method == Method.OWN:
            axes.append(readout.full_rows32()[t])
        else:
            assert method in CANDIDATE_FAMILIES
            axes.append(candidate_directions(readout, torch.tensor([t]), method).to(torch.float32)[0])
    return torch.stack(axes)


def test_scan_theta_column_equals_per_token_bounds_and_stays_below_the_exact_theta(embedded, limited_scan, tmp_path):
    from lenstui.store.scan_export import write_scan

    readout = as_readout(embedded)
    scan = limited_scan
    speakable = [t for t in range(LIMIT) if scan.verdicts[t] == SPEAKABLE]
    assert len(speakable) > 250 and {METHODS[int(scan.method[t])] for t in speakable} >= {Method.OWN, Method.WHITENED}
    expected = cap_lower_bounds(readout, speakable, _witness_axes(readout, scan, speakable))
    # Own-direction witnesses also try the whitened axis: the larger bound is kept.
    own = [i for i, t in enumerate(speakable) if METHODS[int(scan.method[t])] == Method.OWN]
    whitened = cap_lower_bounds(
        readout, [speakable[i] for i in own], candidate_directions(readout, torch.tensor([speakable[i] for i in own]), Method.WHITENED)
    )
    assert (whitened > expected[own]).any()  # it does help some
    expected[own] = np.maximum(expected[own], whitened)
    # The CSV: the new column is the last one; every other column keeps its place.
    write_scan(scan, tmp_path / "scan.csv")
    with open(tmp_path / "scan.csv", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:9] == ["id", "text", "verdict", "hard_to_speak", "best_match", "best_match_text", "margin", "method", "certificate"]
    assert rows[0][-1] == "theta_lower_deg"
    column = {int(r[0]): r[-1] for r in rows[1:]}
    assert len(column) == LIMIT
    np.testing.assert_allclose([float(column[t]) for t in speakable], expected, rtol=0, atol=1e-9)
    assert all(column[t] == "" for t in range(LIMIT) if scan.verdicts[t] != SPEAKABLE)
    # The JSON, per token.
    write_scan(scan, tmp_path / "scan.json")
    tokens = json.loads((tmp_path / "scan.json").read_text(encoding="utf-8"))["tokens"]
    np.testing.assert_allclose([tokens[t]["theta_lower_deg"] for t in speakable], expected, rtol=0, atol=1e-9)
    assert tokens[5]["theta_lower_deg"] is None  # unspeakable
    # A lower bound of the exact measure.
    for t in (0, 100, 257, speakable[-1]):
        exact = aim(readout, t)
        assert 0 <= scan.theta_lower[t] <= exact.theta_upper_deg
        assert scan.theta_lower[t] <= exact.theta_deg + 1e-6


def test_scan_summary_prints_theta_quantiles(limited_scan):
    from lenstui.cli.speak_cmd import format_scan

    text = format_scan(limited_scan, limited_scan.counts(), 0.0, None, None)
    values = limited_scan.theta_values()
    assert "aim θ (certified lower bound" in text
    assert f"= {values.min():.1f} / " in text and f" / {values.max():.1f}°" in text


def test_grid_mark_is_the_hardest_percent_by_theta(limited_scan):
    from lenstui.core.scan_result import marks_for

    marks = marks_for(limited_scan)
    speakable = np.nonzero(limited_scan.verdicts[:LIMIT] == SPEAKABLE)[0]
    assert len(marks.hard_to_speak) == math.ceil(0.01 * len(speakable))
    marked = np.array(sorted(marks.hard_to_speak))
    rest = np.setdiff1d(speakable, marked)
    assert limited_scan.theta_lower[marked].max() <= limited_scan.theta_lower[rest].min()
    assert "hardest 1%" in marks.hard_rule
    # Without theta bounds (an old cache): the own-direction test, as before.
    saved = limited_scan.theta_lower.copy()
    try:
        limited_scan.theta_lower[:] = np.nan
        assert marks_for(limited_scan).hard_to_speak == limited_scan.hard_to_speak_ids
    finally:
        limited_scan.theta_lower[:] = saved


# ---------------------------------------------------------------- the distribution view


async def _open_view(app, pilot, scan, token_id: int, text: str):
    from lenstui.core.scan_result import marks_for

    await app.model_settled.wait()
    await app.lens_settled.wait()
    await pilot.press("escape")
    await pilot.pause()
    app.set_scan_marks(marks_for(scan))
    app.speak_pane.show_token(token_id, text)
    await pilot.press("A")
    await pilot.pause()


def _explorer(embedded, **kwargs):
    from lenstui.tui.app import LenstuiApp

    app = LenstuiApp("The Eiffel Tower is located in the city of", loader=lambda spec, **kw: embedded, show_timings=False, **kwargs)
    app.worker_stop_timeout = 120
    return app


async def test_aim_view_opens_marks_the_selected_token_and_goes_back(embedded, limited_scan):
    from lenstui.tui.screens.aim import AimDistribution

    app = _explorer(embedded)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("escape")
        await pilot.press("A")  # no scan yet: a notice, no view
        await pilot.pause()
        assert not isinstance(app.screen, AimDistribution)
        app.speak_pane.aim = None
        await _open_view(app, pilot, limited_scan, 0, "<|endoftext|>")
        screen = app.screen
        assert isinstance(screen, AimDistribution) and screen.token_id == 0
        bound = float(limited_scan.theta_lower[0])
        assert screen.marked == {"bound": bound}
        heading = str(screen.query_one("#aim-heading").render())
        assert f"#0: θ ≥ {bound:.2f}°" in heading
        values = limited_scan.theta_values()
        assert f"{(values < bound).mean() * 100:.1f}% of speakable tokens" in heading
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, AimDistribution)
        # After a check, the exact theta is marked too.
        app.speak_pane.aim = {"theta_deg": 27.5}
        await pilot.press("A")
        await pilot.pause()
        assert app.screen.marked == {"bound": bound, "exact": 27.5}
        await pilot.press("escape")
        # The speakability pane's check measures the aim (the worker's handler) and says it in words.
        pane = app.speak_pane
        pane.check(100, "")
        while pane.verdict is None:
            await pilot.pause(0.1)
        body = str(pane.query_one("#speak-body").render())
        theta = aim(embedded, 100)
        assert f"the model must aim within {theta.theta_deg:.1f}° of one axis" in body
        assert pane.aim["theta_deg"] == theta.theta_deg
        await pilot.press("A")  # now the exact theta of token 100 is marked beside its bound
        await pilot.pause()
        assert app.screen.marked == {"bound": float(limited_scan.theta_lower[100]), "exact": theta.theta_deg}


def _snapshot_before(scan):
    async def run_before(pilot) -> None:
        pilot.app.prompt_pane.input.cursor_blink = False
        await _open_view(pilot.app, pilot, scan, 0, "<|endoftext|>")

    return run_before


def test_aim_view_snapshot_80x24(snap_compare, embedded, limited_scan):
    assert snap_compare(_explorer(embedded), terminal_size=(80, 24), run_before=_snapshot_before(limited_scan))


def test_aim_view_contrast_snapshot_120x40(snap_compare, embedded, limited_scan):
    app = _explorer(embedded, theme="lenstui-contrast")
    assert snap_compare(app, terminal_size=(120, 40), run_before=_snapshot_before(limited_scan))
