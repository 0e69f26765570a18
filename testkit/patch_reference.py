"""An independent activation patcher for the tests: plain PyTorch forward hooks on a
plain Hugging Face model (not the TransformerLens bridge, not lenstui's code).

``Plain(hf)`` knows where a Llama-style or GPT-2 model keeps its decoder layers, norms,
attention and MLP modules. ``record(ids)`` returns the clean activations of a prompt;
``run(ids, interventions)`` the logits and the residual stack of a run with
interventions, each a dict:

    {"kind": "resid", "layer": L, "pos": P, "value": v}   # the output of layer L (-1: the embedding)
    {"kind": "attn" | "mlp", "layer": L, "pos": P, "value": v}
    {"kind": "head", "layer": L, "pos": P, "head": h, "value": z}   # z: [d_head], o_proj's input slice
    {"kind": "steer", "layer": L, "from": P, "vector": v}   # added to layer L's output at positions >= P

``value`` None is a zero ablation.

Below ``Plain``: the reference values and checks the causal-lens tests share
(tests/unit/test_patching.py on the tiny models, tests/integration/test_patching_embedded.py).
"""

from __future__ import annotations

import pytest
import torch

from lenstui.core.patch_result import in_cone

TOL = 1e-5  # how close a patched run's probabilities must be to the reference's


class Plain:
    def __init__(self, hf):
        self.hf = hf.eval()
        if hasattr(hf, "transformer"):  # GPT-2
            base = hf.transformer
            self.layers, self.norm = base.h, base.ln_f
            self.attn = lambda layer: layer.attn
            self.ln2 = lambda layer: layer.ln_2
            self.o_proj = lambda layer: layer.attn.c_proj
            self.n_heads = hf.config.n_head
            self.d_head = hf.config.n_embd // hf.config.n_head
        else:  # Llama and friends
            base = hf.model
            self.layers, self.norm = base.layers, base.norm
            self.attn = lambda layer: layer.self_attn
            self.ln2 = lambda layer: layer.post_attention_layernorm
            self.o_proj = lambda layer: layer.self_attn.o_proj
            self.n_heads = hf.config.num_attention_heads
            self.d_head = getattr(hf.config, "head_dim", None) or hf.config.hidden_size // self.n_heads

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def effective_row(self, token_id: int) -> torch.Tensor:
        """The unembedding row with the final norm's gain folded in (what a steer adds)."""
        return (self.hf.lm_head.weight[token_id] * self.norm.weight).detach().float()

    def _recording_hooks(self, rec):
        def first(out):
            return out[0] if isinstance(out, tuple) else out

        handles = []
        for i, layer in enumerate(self.layers):
            handles.append(layer.register_forward_hook(lambda m, a, out, i=i: rec["resid"].__setitem__(i, first(out).detach()[0])))
            handles.append(self.attn(layer).register_forward_hook(lambda m, a, out, i=i: rec["attn"].__setitem__(i, first(out).detach()[0])))
            handles.append(layer.mlp.register_forward_hook(lambda m, a, out, i=i: rec["mlp"].__setitem__(i, first(out).detach()[0])))
            handles.append(
                self.ln2(layer).register_forward_pre_hook(lambda m, a, i=i: rec["mid"].__setitem__(i, a[0].detach()[0]))
            )
            handles.append(
                self.o_proj(layer).register_forward_pre_hook(
                    lambda m, a, i=i: rec["z"].__setitem__(
                        i, a[0].detach()[0].reshape(a[0].shape[1], self.n_heads, self.d_head)
                    )
                )
            )
        handles.append(
            self.layers[0].register_forward_pre_hook(
                lambda m, a, kw: rec["resid"].__setitem__(-1, (a[0] if a else kw["hidden_states"]).detach()[0]),
                with_kwargs=True,
            )
        )
        return handles

    def _intervention_hooks(self, interventions):
        handles = []
        for iv in interventions:
            kind, layer_index = iv["kind"], iv["layer"]
            if kind in ("resid", "steer") and layer_index < 0:

                def pre(module, args, kwargs, iv=iv):
                    x = (args[0] if args else kwargs["hidden_states"]).clone()
                    _apply(iv, x)
                    return ((x,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

                handles.append(self.layers[0].register_forward_pre_hook(pre, with_kwargs=True))
            elif kind in ("resid", "steer", "attn", "mlp"):
                layer = self.layers[layer_index]
                module = {"resid": layer, "steer": layer, "attn": self.attn(layer), "mlp": layer.mlp}[kind]

                def post(module, args, out, iv=iv):
                    if isinstance(out, tuple):
                        x = out[0].clone()
                        _apply(iv, x)
                        return (x,) + tuple(out[1:])
                    x = out.clone()
                    _apply(iv, x)
                    return x

                handles.append(module.register_forward_hook(post))
            elif kind == "head":

                def pre_o(module, args, iv=iv):
                    x = args[0].clone()
                    h, d = iv["head"], self.d_head
                    x[:, iv["pos"], h * d : (h + 1) * d] = 0 if iv.get("value") is None else iv["value"]
                    return (x,) + tuple(args[1:])

                handles.append(self.o_proj(self.layers[layer_index]).register_forward_pre_hook(pre_o))
            else:
                raise ValueError(kind)
        return handles

    def run(self, ids, interventions=()):
        """(logits [pos, vocab] float64, record) of a run with ``interventions``; record
        holds "stack" [n_layers + 1, pos, d] (embedding, then each layer's output),
        "mid" [n_layers, pos, d] (after each attention), "attn", "mlp", "z"."""
        rec = {"resid": {}, "attn": {}, "mlp": {}, "mid": {}, "z": {}}
        handles = self._intervention_hooks(interventions) + self._recording_hooks(rec)
        try:
            with torch.no_grad():
                logits = self.hf(input_ids=torch.tensor([list(ids)])).logits[0].double()
        finally:
            for handle in handles:
                handle.remove()
        n = self.n_layers
        out = {"stack": torch.stack([rec["resid"][i] for i in range(-1, n)])}
        for key in ("attn", "mlp", "mid", "z"):
            out[key] = torch.stack([rec[key][i] for i in range(n)])
        return logits, out

    def probs(self, ids, interventions=()) -> torch.Tensor:
        logits, _ = self.run(ids, interventions)
        return torch.softmax(logits, dim=-1)

    def greedy(self, ids, steps: int, interventions=()) -> list[int]:
        out = list(ids)
        for _ in range(steps):
            logits, _ = self.run(out, interventions)
            out.append(int(logits[-1].argmax()))
        return out[len(ids) :]


def _apply(iv, x):
    if iv["kind"] == "steer":
        x[:, iv["from"] :] += iv["vector"].to(x.dtype)
    else:
        x[:, iv["pos"]] = 0 if iv.get("value") is None else iv["value"]


def reference_value(plain: Plain, rec_b, rec_a, spec, n_a: int):
    """What the reference writes for ``spec`` (a PatchSpec)."""
    if spec.source == "zero":
        return None
    if spec.source == "prompt":
        rec, positions = rec_b, [spec.from_position]
    else:
        rec, positions = rec_a, list(range(1, n_a))
    if spec.component == "resid":
        rows = rec["stack"][spec.layer + 1][positions]
    elif spec.component == "head":
        rows = rec["z"][spec.layer][positions, spec.head]
    else:
        rows = rec[spec.component][spec.layer][positions]
    return rows.mean(0) if spec.source == "mean" else rows[0]


def reference_intervention(plain, rec_b, rec_a, spec, n_a):
    iv = {"kind": spec.component, "layer": spec.layer, "pos": spec.position,
          "value": reference_value(plain, rec_b, rec_a, spec, n_a)}
    if spec.component == "head":
        iv["head"] = spec.head
    return iv


def assert_final_rows_match(patched, probs: torch.Tensor, first: int = 0, tol: float = TOL) -> float:
    """A lens grid's final row at every position from ``first`` on against the
    reference's softmax there (top-k by id, the target, the tracked tokens). Returns the
    worst gap."""
    worst = 0.0
    for col, pos in enumerate(patched.column_positions):
        if pos < first:
            continue
        cell = patched.grid[-1][col]
        ref = probs[pos]
        gaps = [abs(float(ref[t.id]) - t.prob) for t in cell.top]
        gaps.append(abs(float(ref[patched.targets[col].id]) - cell.target_prob))
        gaps += [abs(float(ref[t.id]) - t.prob) for t in cell.tracked]
        # and nothing the reference ranks above the engine's k-th token is missing
        kth = cell.top[-1].prob
        outside = [i for i in torch.topk(ref, len(cell.top)).indices.tolist() if i not in {t.id for t in cell.top}]
        gaps += [max(0.0, float(ref[i]) - kth) for i in outside]
        worst = max(worst, max(gaps))
    assert worst < tol, f"final rows differ from the independent patch by {worst:.2e}"
    return worst


def row_residual(rec, label: str) -> torch.Tensor:
    if label == "embed":
        return rec["stack"][0]
    block, _, mid = label[1:].partition(".")
    return rec["mid"][int(block)] if mid else rec["stack"][int(block) + 1]


def reference_row_probs(plain: Plain, residual: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(plain.hf.lm_head(plain.norm(residual)).double(), dim=-1)


def check_cone(result, plain: Plain, rec_clean, rec_patched, tol: float = TOL) -> None:
    """The cone against the reference's residual stacks, and every engine cell against
    the reference's readout (inside) or the clean cell (outside)."""
    layers = result.patched.layers
    n = len(result.patched.tokens)
    for row, label in enumerate(layers):
        clean_res = row_residual(rec_clean, label)
        patched_res = row_residual(rec_patched, label)
        moved = (patched_res - clean_res).abs().amax(dim=-1)  # [pos]
        scale = clean_res.abs().amax(dim=-1).clamp_min(1.0)
        for pos in range(n):
            inside = in_cone(result.cone, row, pos)
            if not inside:
                assert float(moved[pos]) <= 1e-6 * float(scale[pos]), (
                    f"{label}@{pos} is outside the cone but the reference's residual moved by {float(moved[pos]):.2e}"
                )
            elif row == result.cone[pos]:
                assert float(moved[pos]) > 0.0, f"{label}@{pos} opens the cone but did not move in the reference"
        probs = reference_row_probs(plain, patched_res)
        for pos in range(n):
            cell, clean_cell = result.patched.grid[row][pos], result.clean.grid[row][pos]
            if in_cone(result.cone, row, pos):
                gaps = [abs(float(probs[pos, t.id]) - t.prob) for t in cell.top]
                gaps.append(abs(float(probs[pos, result.patched.targets[pos].id]) - cell.target_prob))
                assert max(gaps) < tol, f"{label}@{pos}: {max(gaps):.2e} from the reference"
            else:
                assert [t.id for t in cell.top] == [t.id for t in clean_cell.top]
                assert [t.prob for t in cell.top] == pytest.approx([t.prob for t in clean_cell.top], abs=1e-6)
                assert cell.target_prob == pytest.approx(clean_cell.target_prob, abs=1e-6)
                assert result.kl[row][pos] == 0.0
                assert result.target_after[row][pos] == result.target_before[row][pos]


def reference_steer(plain: Plain, ids, toward: int, layer: int, alpha: float, position: int, away=None):
    _, rec = plain.run(ids)
    scale = float(rec["stack"][layer + 1].norm(dim=-1).median())
    direction = plain.effective_row(toward)
    if away is not None:
        direction = direction - plain.effective_row(away)
    vector = alpha * scale * direction / direction.norm()
    return {"kind": "steer", "layer": layer, "from": position, "vector": vector}, scale
