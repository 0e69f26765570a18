"""Learned lenses on tiny models: the least-squares solve, the tuned-lens file format (as
the package writes and reads it), lenses that read better than the logit lens on text
the fit never saw, published-style and J-lens files, and the cache per model."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import numpy as np
import pytest
import torch

from lenstui.core.lenses import LensOptions
from lenstui.core.errors import InputError
from lenstui.engine.lens import learned
from lenstui.engine.lens.evaluate import evaluate_lenses
from lenstui.engine.lens.fit import NormalEquations, fit_jacobian, fit_tuned
from lenstui.engine.lens.sampling import rows_forward, sample_sequences
from lenstui.engine.lens.readout import unembedding
from lenstui.engine.lens.run import run_lens
from testkit.models import CORPUS, tiny_llama

HELD_OUT = "\n\n".join(CORPUS)  # the tiny models' own corpus: never sampled, so never fitted on


@pytest.fixture(scope="module")
def peaked():
    """A tiny Llama whose distributions are peaked (the logit lens reads it badly)."""
    return tiny_llama(seed=0, initializer_range=0.3, name="tiny-llama-peaked")


@pytest.fixture(scope="module")
def peaked_lens(peaked, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lens") / "tuned"
    report = fit_tuned(peaked, tokens=600, seed=1, out=folder)
    return report


# ---------------------------------------------------------------- the solve


def _ridge_reference(x: np.ndarray, y: np.ndarray, alpha: float):
    """Centred ridge regression with an unpenalised bias, in float64 numpy."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = alpha * np.trace(gram) / gram.shape[0]
    coef = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xc.T @ yc)  # [in, out]
    return coef.T, my - mx @ coef


def test_normal_equations_solve_matches_numpy_least_squares():
    rng = np.random.default_rng(0)
    rows, n, d_in, d_out = 3, 301, 6, 5
    x = rng.normal(size=(rows, n, d_in)) * rng.uniform(0.5, 30, size=d_in) + rng.normal(size=d_in) * 50
    y = rng.normal(size=(n, d_out)) + x[1] @ rng.normal(size=(d_in, d_out))
    equations = NormalEquations(rows, d_in, d_out)
    for start in range(0, n, 37):  # chunked, as the sampler adds them
        equations.add(torch.tensor(x[:, start : start + 37], dtype=torch.float32), torch.tensor(y[start : start + 37]))
    assert equations.n == n
    a, b = equations.solve(alpha=0.0)
    for r in range(rows):
        design = np.concatenate([x[r].astype(np.float32).astype(np.float64), np.ones((n, 1))], axis=1)
        solution = np.linalg.lstsq(design, y, rcond=None)[0]
        np.testing.assert_allclose(a[r].numpy(), solution[:-1].T, rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(b[r].numpy(), solution[-1], rtol=2e-4, atol=2e-3)
    a, b = equations.solve(alpha=0.05)
    for r in range(rows):
        ref_a, ref_b = _ridge_reference(x[r].astype(np.float32).astype(np.float64), y, 0.05)
        np.testing.assert_allclose(a[r].numpy(), ref_a, rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(b[r].numpy(), ref_b, rtol=2e-4, atol=2e-3)


# ---------------------------------------------------------------- the model's own text


def test_sampled_rows_are_the_rows_of_a_full_forward(tiny_llama):
    """The sampler's incremental (KV-cached) forwards capture what one forward over the
    finished sequence computes, and position 0 is never counted."""
    batches = []

    def sink(rows, keep):
        batches.append((rows.clone(), keep.clone()))
        assert not keep[:, 0].any() or rows.shape[2] == 1
        return int(keep.sum())

    sequences = sample_sequences(tiny_llama, 40, seed=3, sink=sink, new_tokens=12)
    first_batch = [rows for rows, _ in batches[:13]]
    stitched = torch.cat(first_batch, dim=2)  # [R, B, positions, d]
    for b in range(2):
        ids = sequences[b]
        _, full = rows_forward(tiny_llama, torch.tensor([ids]), None)
        n = min(len(ids), stitched.shape[2])
        torch.testing.assert_close(stitched[:, b, :n], full[:, 0, :n], rtol=1e-4, atol=1e-4)


def test_chat_sampling_feeds_the_template_between_question_and_answer(monkeypatch):
    model = tiny_llama(seed=1, name="tiny-chat")
    model.tokenizer.chat_template = (
        "{% for m in messages %}<|endoftext|>user: {{ m['content'] }}<|endoftext|>{% endfor %}"
        "{% if add_generation_prompt %}bot: {% endif %}"
    )
    from lenstui.engine.lens import sampling

    starts = sampling._starts(model)
    assert starts.chat_prefix and starts.chat_suffix and starts.chat_openers
    monkeypatch.setattr(sampling, "MAX_QUESTION", 6)
    sequences = sampling.sample_sequences(model, 200, seed=0, new_tokens=30)
    prefix, suffix = starts.chat_prefix, starts.chat_suffix
    chats = [s for s in sequences if s[: len(prefix)] == prefix]
    assert chats, "a chat batch was sampled"
    for seq in chats:
        body = seq[len(prefix) :]
        where = next((i for i in range(len(body)) if body[i : i + len(suffix)] == suffix), None)
        assert where is not None and where <= sampling.MAX_QUESTION, "the question ends and the answer's header is fed"


# ---------------------------------------------------------------- the file format


def test_a_fitted_lens_is_saved_in_the_tuned_lens_format(peaked, peaked_lens):
    folder = learned.Path(peaked_lens.path)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "lenstui.json", "params.pt"]
    config = json.loads((folder / "config.json").read_text())
    assert list(config) == [
        "base_model_name_or_path", "d_model", "num_hidden_layers", "bias", "base_model_revision",
        "unembed_hash", "lens_type",
    ]
    assert config["d_model"] == peaked.d_model and config["num_hidden_layers"] == peaked.n_layers
    assert config["bias"] is True and config["lens_type"] == "linear_tuned_lens"
    # The package's hash, recomputed here from its definition.
    weight = peaked.bridge.W_U.detach().T.float().numpy()
    with np.printoptions(precision=8, threshold=1000, edgeitems=3, linewidth=75):
        expected = hashlib.sha256(np.array_str(weight, precision=1).encode()).hexdigest()
    assert config["unembed_hash"] == expected
    state = torch.load(folder / "params.pt", weights_only=True)
    n, d = peaked.n_layers, peaked.d_model
    assert list(state) == [k for i in range(n) for k in (f"{i}.weight", f"{i}.bias")]
    assert all(state[f"{i}.weight"].shape == (d, d) and state[f"{i}.bias"].shape == (d,) for i in range(n))
    assert all(state[k].dtype == torch.float32 for k in state)
    side = json.loads((folder / "lenstui.json").read_text())
    assert side["fitted_by"] == "lenstui" and side["tokens"] == peaked_lens.tokens == 600


def _package_style_logits(model, folder, row: int, h: torch.Tensor) -> torch.Tensor:
    """What tuned-lens 0.2.0's loader computes, reproduced: a ModuleList of Linear(d, d)
    loaded strictly from params.pt; translator ``row`` applied as h + W h + b; then the
    model's final norm and unembedding."""
    config = json.loads((folder / "config.json").read_text())
    d = config["d_model"]
    translators = torch.nn.ModuleList(torch.nn.Linear(d, d, bias=config["bias"]) for _ in range(config["num_hidden_layers"]))
    translators.load_state_dict(torch.load(folder / "params.pt", weights_only=True))
    unembed = unembedding(model)
    with torch.no_grad():
        moved = h + translators[row](h)
        normed = model.bridge.ln_final(moved[None])[0]
        return normed @ model.bridge.W_U + model.bridge.b_U


def _rows(model, prompt: str) -> torch.Tensor:
    ids = model.tokenizer(prompt)["input_ids"]
    _, rows = rows_forward(model, torch.tensor([ids]), None)
    return rows[:, 0]  # [R, T, d]


def test_lenstui_reads_its_lens_as_the_packages_loader_does(peaked, peaked_lens):
    folder = learned.Path(peaked_lens.path)
    prompt = CORPUS[1]
    rows = _rows(peaked, prompt)
    result = run_lens(peaked, prompt, LensOptions(lens="tuned", lens_path=str(folder), top_k=5))
    assert result.lens == "tuned" and result.lens_file.path == str(folder.resolve())
    for row in range(peaked.n_layers):  # every translated row (the last is read as is)
        for pos in (1, 5, len(result.tokens) - 1):
            reference = _package_style_logits(peaked, folder, row, rows[row, pos])
            top = torch.topk(reference, 5)
            cell = result.grid[row][pos]
            assert [t.id for t in cell.top] == top.indices.tolist()
            np.testing.assert_allclose([t.logit for t in cell.top], top.values.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("tuned_lens") is None, reason="the tuned-lens package is not installed")
def test_the_tuned_lens_package_loads_lenstui_files_and_agrees(peaked, peaked_lens):
    """tuned-lens 0.2.0 (installed with --no-deps where it fits beside our pins). Its
    Unembed(model) does not work under TransformerLens 4, so it is built by hand."""
    from tuned_lens.nn.lenses import TunedLens
    from tuned_lens.nn.unembed import Unembed

    unembed = Unembed.__new__(Unembed)
    torch.nn.Module.__init__(unembed)
    unembed.final_norm = peaked.bridge.ln_final._original_component
    linear = torch.nn.Linear(peaked.d_model, peaked.d_vocab, bias=False)
    linear.weight.data = peaked.bridge.W_U.detach().T.contiguous().float()
    unembed.unembedding = linear
    assert unembed.unembedding_hash() == learned.unembed_hash(peaked)
    lens = TunedLens.from_unembed_and_pretrained(unembed, peaked_lens.path)
    assert len(lens) == peaked.n_layers
    rows = _rows(peaked, CORPUS[0])
    result = run_lens(peaked, CORPUS[0], LensOptions(lens="tuned", lens_path=peaked_lens.path, top_k=3))
    with torch.no_grad():
        for row in range(peaked.n_layers):
            theirs = lens(rows[row, 1:], idx=row)  # [T-1, vocab]
            for pos in range(1, len(result.tokens)):
                top = torch.topk(theirs[pos - 1], 3)
                cell = result.grid[row][pos]
                assert [t.id for t in cell.top] == top.indices.tolist()
                np.testing.assert_allclose([t.logit for t in cell.top], top.values.numpy(), rtol=1e-4, atol=1e-4)


def _write_package_style_lens(folder, model, *, base="gpt2", unembed=None, drop=None, d_model=None, scale=0.02):
    """A lens as tuned-lens's TunedLens.save writes it: the translators' ModuleList
    state_dict, and config.json as json.dump(TunedLensConfig.to_dict())."""
    folder.mkdir(parents=True, exist_ok=True)
    d = model.d_model
    torch.manual_seed(7)
    translators = torch.nn.ModuleList(torch.nn.Linear(d, d) for _ in range(model.n_layers))
    with torch.no_grad():
        for t in translators:
            t.weight.mul_(scale * 50)
            t.bias.mul_(scale * 10)
    state = translators.state_dict()
    if drop:
        del state[drop]
    torch.save(state, folder / "params.pt")
    config = {
        "base_model_name_or_path": base, "d_model": d_model or d, "num_hidden_layers": model.n_layers,
        "bias": True, "base_model_revision": None,
        "unembed_hash": unembed if unembed is not None else learned.unembed_hash(model),
        "lens_type": "linear_tuned_lens",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return translators


def test_a_published_style_gpt2_lens_loads_and_reads_as_the_package_would(tiny_gpt2, tmp_path):
    folder = tmp_path / "gpt2"
    translators = _write_package_style_lens(folder, tiny_gpt2)
    prompt = CORPUS[0]
    rows = _rows(tiny_gpt2, prompt)
    result = run_lens(tiny_gpt2, prompt, LensOptions(lens="tuned", lens_path=str(folder), top_k=4))
    assert result.lens_file.origin == "tuned-lens file for gpt2"
    with torch.no_grad():
        for row in range(tiny_gpt2.n_layers):
            h = rows[row, 3]
            normed = tiny_gpt2.bridge.ln_final((h + translators[row](h))[None])[0]
            reference = normed @ tiny_gpt2.bridge.W_U + tiny_gpt2.bridge.b_U
            top = torch.topk(reference, 4)
            assert [t.id for t in result.grid[row][3].top] == top.indices.tolist()
    # the last row is the model's own output, as under the logit lens
    logit = run_lens(tiny_gpt2, prompt, LensOptions(lens="logit", top_k=4))
    assert [t.id for t in result.grid[-1][3].top] == [t.id for t in logit.grid[-1][3].top]


def test_a_lens_for_another_model_is_refused_with_a_sentence(tiny_gpt2, tmp_path):
    _write_package_style_lens(tmp_path / "hash", tiny_gpt2, unembed="0" * 64)
    with pytest.raises(InputError, match="fitted on another unembedding.*made for gpt2"):
        run_lens(tiny_gpt2, "hello", LensOptions(lens="tuned", lens_path=str(tmp_path / "hash")))
    _write_package_style_lens(tmp_path / "missing", tiny_gpt2, drop="2.weight")
    with pytest.raises(InputError, match=r"params.pt .* lacks 2.weight"):
        run_lens(tiny_gpt2, "hello", LensOptions(lens="tuned", lens_path=str(tmp_path / "missing")))
    _write_package_style_lens(tmp_path / "wide", tiny_gpt2, d_model=64)
    with pytest.raises(InputError, match="d_model 64.*another model"):
        run_lens(tiny_gpt2, "hello", LensOptions(lens="tuned", lens_path=str(tmp_path / "wide")))
    with pytest.raises(InputError, match="No tuned lens for tiny-gpt2 yet"):
        run_lens(tiny_gpt2, "hello", LensOptions(lens="tuned"))
    with pytest.raises(InputError, match="block outputs only"):
        run_lens(tiny_gpt2, "hello", LensOptions(lens="tuned", lens_path=str(tmp_path / "gpt2-none"), incl_mid=True))


# ---------------------------------------------------------------- what it is for


def test_the_tuned_lens_reads_text_the_fit_never_saw_better(peaked, peaked_lens):
    result = evaluate_lenses(peaked, HELD_OUT, ["logit", "tuned"], lens_path=peaked_lens.path)
    logit, tuned = result.lenses["logit"], result.lenses["tuned"]
    assert result.tokens > 40 and result.rows[0] == "embed"
    for row in range(len(result.rows) - 1):
        assert tuned.kl[row] < logit.kl[row]
    assert result.mean_kl("tuned") < 0.7 * result.mean_kl("logit")
    assert tuned.kl[-1] == pytest.approx(0.0, abs=1e-5) and tuned.top1_agree[-1] == 1.0
    payload = result.to_json()
    assert list(payload) == ["tokens", "rows", "lenses"]
    assert list(payload["lenses"]["tuned"]) == ["kl", "top1_agree", "final_rank"]
    assert len(payload["lenses"]["logit"]["kl"]) == len(payload["rows"]) == peaked.n_layers + 1


def test_position_0_reads_as_the_logit_lens(peaked, peaked_lens):
    tuned = run_lens(peaked, CORPUS[2], LensOptions(lens="tuned", lens_path=peaked_lens.path, top_k=3))
    logit = run_lens(peaked, CORPUS[2], LensOptions(lens="logit", top_k=3))
    for row in range(len(tuned.layers)):
        assert tuned.grid[row][0].top == logit.grid[row][0].top
    assert any(tuned.grid[r][4].top != logit.grid[r][4].top for r in range(len(tuned.layers) - 1))
    assert "position 0" in tuned.lens_file.note


def test_kl_refinement_lowers_the_held_out_kl(peaked, tmp_path):
    report = fit_tuned(peaked, tokens=400, seed=2, refine_steps=15, out=tmp_path / "refined")
    before, after = report.refine_kl
    assert after < before
    assert json.loads((tmp_path / "refined" / "lenstui.json").read_text())["refine_steps"] == 15


def test_the_fitted_lens_is_found_again_for_the_same_weights():
    from lenstui.jobs.handlers import model_info

    first = tiny_llama(seed=4, name="tiny-again")
    assert learned.available_lenses(first) == []
    report = fit_tuned(first, tokens=200)
    assert report.path == str(learned.cached_path(first, "tuned"))
    again = tiny_llama(seed=4, name="tiny-again")  # a new load of the same weights
    found = learned.available_lenses(again)
    assert [f.kind for f in found] == ["tuned"] and found[0].path == report.path
    assert model_info(again).lenses == tuple(found)
    assert run_lens(again, "hello world", LensOptions(lens="tuned")).lens_file.origin.startswith("fitted by lenstui on 200")
    other = tiny_llama(seed=5, name="tiny-again")  # other weights: not its lens
    assert learned.available_lenses(other) == []


def test_a_refitted_lens_is_read_anew(tmp_path):
    model = tiny_llama(seed=6, initializer_range=0.3, name="tiny-refit")
    fit_tuned(model, tokens=150, seed=0)
    first = run_lens(model, CORPUS[0], LensOptions(lens="tuned", top_k=2))
    fit_tuned(model, tokens=300, seed=1)
    second = run_lens(model, CORPUS[0], LensOptions(lens="tuned", top_k=2))
    assert second.lens_file.origin != first.lens_file.origin
    assert [c.top for c in second.grid[1]] != [c.top for c in first.grid[1]]


# ---------------------------------------------------------------- the Jacobian lens


def test_a_jacobian_lens_file_reads_as_transformer_lens_reads_it(tiny_llama, tmp_path):
    from transformer_lens.tools.analysis import JacobianLens

    lens = JacobianLens.fit(
        tiny_llama.bridge, CORPUS * 2, corpus="test", dim_batch=16, max_seq_len=40,
        skip_first_positions=2, show_progress=False,
    )
    path = tmp_path / "lens.pt"
    lens.save(str(path))
    prompt = CORPUS[1]
    result = run_lens(tiny_llama, prompt, LensOptions(lens="jacobian", lens_path=str(path), top_k=3))
    assert result.lens_file.kind == "jacobian" and "embed" in result.lens_file.note
    tokens = torch.tensor([result.token_ids])
    reference = JacobianLens.load(str(path)).readout(tiny_llama.bridge, tokens, top_k=3)
    for layer in lens.source_layers:
        for pos in range(1, len(result.tokens)):
            assert [t.id for t in result.grid[layer + 1][pos].top] == reference.lens_topk_indices[layer][pos].tolist()
    logit = run_lens(tiny_llama, prompt, LensOptions(lens="logit", top_k=3))
    assert result.grid[0][3].top == logit.grid[0][3].top  # the embeddings have no J


def test_a_jacobian_fit_is_refused_on_the_cpu_unless_asked(tmp_path):
    model = tiny_llama(seed=8, name="tiny-jlens")
    with pytest.raises(InputError, match=r"backward passes per prompt: about .* --allow-cpu"):
        fit_jacobian(model, prompts=3)
    report = fit_jacobian(model, prompts=2, allow_cpu=True, seq_len=24)
    assert report.kind == "jacobian" and report.sequences == 2
    found = learned.available_lenses(model)
    assert [f.kind for f in found] == ["jacobian"]
    result = run_lens(model, CORPUS[0], LensOptions(lens="jacobian", top_k=2))
    assert result.lens_file.origin == "J-lens on 2 prompts (lenstui self-sampled text, seed 0)"


def test_compare_reads_both_prompts_through_the_learned_lens(peaked, peaked_lens):
    from lenstui.engine.lens.compare import compare_rows

    tuned = compare_rows(peaked, CORPUS[0], -1, CORPUS[1], -1, LensOptions(lens="tuned", lens_path=peaked_lens.path, top_k=2))
    logit = compare_rows(peaked, CORPUS[0], -1, CORPUS[1], -1, LensOptions(lens="logit", top_k=2))
    assert tuned.a.lens == tuned.b.lens == "tuned" and tuned.a.lens_file is not None
    assert len(tuned.kl) == peaked.n_layers + 1
    assert tuned.kl[-1] == pytest.approx(logit.kl[-1], rel=1e-4)  # the last row is the model's own
    assert tuned.kl[:-1] != pytest.approx(logit.kl[:-1])
