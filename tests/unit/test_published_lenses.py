"""Published lenses by name (``--lens-path registry:NAME``), read from a Hugging Face cache
in a temp dir where the files are written in the hubs' own layouts (no download: the
tests never reach a hub): TransformerLens' J-lens registry at its pinned revision, and
the tuned-lens space's ``lens/<model id>`` folders; and the sentences that refuse a lens
that is not cached, unknown, or another model's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lenstui.core.errors import InputError
from lenstui.core.lenses import LensOptions
from lenstui.engine.lens import published
from lenstui.engine.lens.run import run_lens
from lenstui.engine.model.load import wrap_model
from testkit.models import CORPUS, tiny_gpt2_hf

SPACE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in a temp dir (HF_HUB_CACHE, as a user would set it)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import time
    return cache


@pytest.fixture(scope="module")
def gpt2_named():
    """The tiny GPT-2, loaded under the hub id the registries name GPT-2 by."""
    hf, tokenizer = tiny_gpt2_hf(seed=3)
    return wrap_model(hf, tokenizer, name="openai-community/gpt2", source="hub", device="cpu")


def registry_entry(name: str) -> dict:
    return published._jacobian_registry()[name]


def write_jlens_in_cache(cache: Path, model, name: str = "gpt2-small") -> Path:
    """A J-lens for ``model`` where ``JacobianLens.from_pretrained(name)`` leaves its file:
    models--<repo>/snapshots/<the registry's pinned revision>/<the entry's filename>."""
    from transformer_lens.tools.analysis import JacobianLens

    entry = registry_entry(name)
    revision = published._jacobian_registry()["revision"]
    repo = "models--" + entry["repo_id"].replace("/", "--")
    where = cache / repo / "snapshots" / revision / entry["filename"]
    where.parent.mkdir(parents=True)
    torch.manual_seed(0)
    d = model.d_model
    jacobians = {layer: torch.eye(d) + 0.3 * torch.randn(d, d) for layer in range(model.n_layers - 1)}
    JacobianLens(jacobians, n_prompts=4, d_model=d).save(str(where))
    return where


def test_a_registry_jlens_is_read_from_the_hf_cache_as_the_file_itself(hub_cache, gpt2_named):
    where = write_jlens_in_cache(hub_cache, gpt2_named)
    direct = run_lens(gpt2_named, CORPUS[1], LensOptions(lens="jacobian", lens_path=str(where), top_k=4), slot="pub-a")
    for spec in ("registry:gpt2-small", "registry:openai-community/gpt2", "registry:"):
        gpt2_named.caches.learned_lenses.clear()
        named = run_lens(gpt2_named, CORPUS[1], LensOptions(lens="jacobian", lens_path=spec, top_k=4), slot="pub-b")
        assert Path(named.lens_file.path) == where.resolve()
        assert "published registry:gpt2-small (neuronpedia/jacobian-lens @ " in named.lens_file.origin
        assert [[c.top for c in row] for row in named.grid] == [[c.top for c in row] for row in direct.grid]
    # Not the logit lens: the J rows read otherwise.
    logit = run_lens(gpt2_named, CORPUS[1], LensOptions(lens="logit", top_k=4), slot="pub-c")
    assert [c.top for c in logit.grid[2]] != [c.top for c in direct.grid[2]]


def test_a_published_tuned_lens_is_read_from_the_spaces_folder_in_the_cache(hub_cache, gpt2_named):
    from lenstui.engine.lens.learned import save_tuned

    snapshot = hub_cache / "spaces--AlignmentResearch--tuned-lens" / "snapshots" / SPACE_COMMIT
    (hub_cache / "spaces--AlignmentResearch--tuned-lens" / "refs").mkdir(parents=True)
    (hub_cache / "spaces--AlignmentResearch--tuned-lens" / "refs" / "main").write_text(SPACE_COMMIT)
    torch.manual_seed(1)
    n, d = gpt2_named.n_layers, gpt2_named.d_model
    folder = snapshot / "lens" / "gpt2"
    save_tuned(folder, gpt2_named, torch.eye(d) + 0.2 * torch.randn(n, d, d), 0.1 * torch.randn(n, d))
    gpt2_named.caches.learned_lenses.clear()
    named = run_lens(gpt2_named, CORPUS[0], LensOptions(lens="tuned", lens_path="registry:gpt2", top_k=3), slot="pub-t")
    assert Path(named.lens_file.path) == folder.resolve()
    direct = run_lens(gpt2_named, CORPUS[0], LensOptions(lens="tuned", lens_path=str(folder), top_k=3), slot="pub-u")
    assert [[c.top for c in row] for row in named.grid] == [[c.top for c in row] for row in direct.grid]


def test_the_refusals_are_one_sentence_each(hub_cache, gpt2_named):
    def refused(kind: str, spec: str) -> str:
        gpt2_named.caches.learned_lenses.clear()
        with pytest.raises(InputError) as err:
            run_lens(gpt2_named, CORPUS[0], LensOptions(lens=kind, lens_path=spec), slot="pub-r")
        message = str(err.value)
        assert message.count(". ") == 0 and message.endswith((".", ")")), message  # one sentence
        return message

    revision = published._jacobian_registry()["revision"]
    missing = refused("jacobian", "registry:gpt2-small")
    assert "not in the Hugging Face cache" in missing and "--allow-download" in missing and revision[:12] in missing
    other = refused("jacobian", "registry:gemma-2-2b")
    assert "fitted for google/gemma-2-2b, not openai-community/gpt2" in other
    assert "No published J-lens is named 'nope'" in refused("jacobian", "registry:nope")
    tuned_other = refused("tuned", "registry:EleutherAI/pythia-70m-deduped")
    assert "fitted for EleutherAI/pythia-70m-deduped, not openai-community/gpt2" in tuned_other
    assert "not in the Hugging Face cache" in refused("tuned", "registry:gpt2")


def test_which_published_lenses_are_for_a_model():
    class Named:  # what model_ids reads: the Hugging Face id of a hub model
        def __init__(self, name):
            self.name, self.source = name, "hub"

    names = {(lens.kind, lens.name) for lens in published.published_for(Named("openai-community/gpt2"))}
    assert names == {("jacobian", "gpt2-small"), ("tuned", "gpt2")}
    assert {lens.name for lens in published.published_for(Named("meta-llama/Llama-3.3-70B-Instruct"))} == {"llama3.3-70b-it"}
    assert published.published_for(Named("HuggingFaceTB/SmolLM2-135M-Instruct")) == []
    # Two owners' models of one name are two models.
    assert published.published_for(Named("someone/gpt2")) == []
    every = published.published_lenses()
    import transformer_lens.tools.analysis.jacobian_lens as jl

    registry = json.loads(Path(jl.__file__).with_name("jacobian_lens_registry.json").read_text())
    entries = {k for k, v in registry.items() if isinstance(v, dict)}
    assert {lens.name for lens in every if lens.kind == "jacobian"} == entries and len(entries) == 37


def test_lenses_list_published_all_names_every_registry_entry(hub_cache):
    out = subprocess.run(
        [sys.executable, "-m", "lenstui.cli", "lenses", "list", "--published", "--all", "--json"],
        capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    lenses = json.loads(out.stdout)["lenses"]
    specs = {(lens["kind"], lens["spec"]) for lens in lenses}
    assert ("jacobian", "registry:llama3.3-70b-it") in specs and ("tuned", "registry:gpt2") in specs
    assert all(lens["cached"] is None for lens in lenses)  # an empty cache: nothing fetched
