"""Direct logit attribution's independent reference: an unwrapped float64 copy of a Hugging Face
model (hidden states, attention patterns, the inputs of each output projection) with the final
norm, head outputs and unembedding redone in numpy float64, and the check that holds
lenstui's attribution to it (tests/unit/test_attribution.py, tests/integration/test_attribution_embedded.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lenstui.engine.attribution import attribute


class Reference:
    """An unwrapped float64 copy of a model plus how to reach its parts."""

    def __init__(self, hf, family: str):
        self.hf = copy.deepcopy(hf).double().eval()
        self.hf.set_attn_implementation("eager")  # so output_attentions returns the weights
        self.family = family
        if family == "gpt2":
            self.norm = self.hf.transformer.ln_f
            self.blocks = [b.attn.c_proj for b in self.hf.transformer.h]
            self.eps = self.norm.eps
            self.n_heads = self.hf.config.n_head
        else:
            self.norm = self.hf.model.norm
            self.blocks = [layer.self_attn.o_proj for layer in self.hf.model.layers]
            self.eps = self.norm.variance_epsilon
            self.n_heads = self.hf.config.num_attention_heads
        self.w_u = self.hf.lm_head.weight.detach().numpy().T  # [d_model, d_vocab]
        bias = getattr(self.hf.lm_head, "bias", None)
        self.b_u = None if bias is None else bias.detach().numpy()
        self.w = self.norm.weight.detach().numpy()
        norm_bias = getattr(self.norm, "bias", None)
        self.b = None if norm_bias is None else norm_bias.detach().numpy()

    def run(self, ids, row, position):
        """Pre-norm residual at the row, the per-block inputs of W_O, attention rows."""
        captured = {}
        handles = [
            proj.register_forward_pre_hook(lambda m, args, i=i: captured.__setitem__(i, args[0][0]))
            for i, proj in enumerate(self.blocks)
        ]
        handles.append(self.norm.register_forward_pre_hook(lambda m, args: captured.__setitem__("final", args[0][0])))
        with torch.no_grad():
            out = self.hf(torch.tensor([ids]), output_hidden_states=True, output_attentions=True)
        for handle in handles:
            handle.remove()
        n_layers = len(self.blocks)
        resid = captured["final"] if row == n_layers else out.hidden_states[row][0]
        return {
            "resid": resid[position].numpy(),
            "z": {b: captured[b][position].numpy() for b in range(n_layers)},
            "attentions": [a[0, :, position, : position + 1].numpy() for a in out.attentions],
            "final_logits": out.logits[0, position].numpy(),
        }

    def centered(self, x):
        return x - x.mean(axis=-1, keepdims=True) if self.family == "gpt2" else x

    def scale(self, resid):
        x = self.centered(resid)
        return np.sqrt((x * x).mean() + self.eps)

    def logits(self, resid):
        normed = self.centered(resid) / self.scale(resid) * self.w
        if self.b is not None:
            normed = normed + self.b
        logits = normed @ self.w_u
        return logits if self.b_u is None else logits + self.b_u

    def direction(self, token, contrast):
        base = self.w_u.mean(axis=1) if contrast is None else self.w_u[:, contrast]
        return self.w_u[:, token] - base

    def readout(self, vector, resid, token, contrast):
        """A component's direct contribution: frozen scale, final norm weight, unembedding."""
        return float(self.centered(vector) / self.scale(resid) * self.w @ self.direction(token, contrast))

    def head_output(self, block, head, z):
        d_head = z.shape[-1] // self.n_heads
        part = z[head * d_head : (head + 1) * d_head]
        weight = self.blocks[block].weight.detach().numpy()
        # GPT-2's Conv1D stores [d_in, d_out]; Linear stores [d_out, d_in].
        rows = weight[head * d_head : (head + 1) * d_head] if self.family == "gpt2" else weight[:, head * d_head : (head + 1) * d_head].T
        return part @ rows

    def o_bias(self, block):
        bias = self.blocks[block].bias
        return None if bias is None else bias.detach().numpy()


def check_sum_and_parts(model, reference, ids, row, position, token=None, contrast=None, tol=1e-4):
    result = attribute(model, ids, position=position, layer=row, token=token, contrast=contrast, heads=5)
    ref = reference.run(ids, row, position)
    logits = reference.logits(ref["resid"])
    if row == model.n_layers:  # the reference's own readout is the model's output
        # (HF's RMSNorm computes in float32 even in a float64 model: 1e-8 apart)
        np.testing.assert_allclose(logits, ref["final_logits"], rtol=1e-6, atol=1e-6)
    t = result.token.id
    if token is None:
        assert t == int(np.argmax(logits))
    c = None if contrast is None else result.contrast.id
    expected = logits[t] - (logits.mean() if c is None else logits[c])
    spread = max(1.0, float(np.abs(logits).max()))
    assert result.total == pytest.approx(expected, abs=tol * spread)
    # The parts add up to the row's logit (difference): the frozen scale makes it exact.
    assert result.component_sum == pytest.approx(expected, abs=tol * spread)
    assert abs(result.unexplained) < tol * spread
    assert result.norm_scale == pytest.approx(reference.scale(ref["resid"]), rel=1e-4)

    parts = {component.name: component.contribution for component in result.components}
    # The token embedding alone, read independently.
    embed = reference.hf.get_input_embeddings().weight[ids[position]].detach().numpy()
    assert parts["embed"] == pytest.approx(reference.readout(embed, ref["resid"], t, c), abs=tol * spread)
    # Every head, from the input of its block's output projection.
    for block in range(row):
        for head in range(reference.n_heads):
            output = reference.head_output(block, head, ref["z"][block])
            assert result.head_grid[block][head] == pytest.approx(
                reference.readout(output, ref["resid"], t, c), abs=tol * spread
            )
        # Heads + the output bias = the attention output's contribution.
        bias = reference.o_bias(block)
        expected_bias = 0.0 if bias is None else reference.readout(bias, ref["resid"], t, c)
        assert result.attn_bias[block] == pytest.approx(expected_bias, abs=tol * spread)
        assert sum(result.head_grid[block]) + result.attn_bias[block] == pytest.approx(
            parts[f"L{block}.attn"], abs=tol * spread
        )
    # Top heads: ordered by |contribution|, their attention rows are HF's own.
    magnitudes = [abs(h.contribution) for h in result.heads]
    assert magnitudes == sorted(magnitudes, reverse=True)
    all_heads = sorted((abs(v) for blk in result.head_grid for v in blk), reverse=True)
    assert magnitudes == pytest.approx(all_heads[: len(magnitudes)])
    for head in result.heads:
        weights = np.array(head.pattern)
        assert weights.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(weights, ref["attentions"][head.layer][head.head], atol=1e-5)
        assert head.attends_to[0].weight == pytest.approx(weights.max())
        assert head.attends_to[0].token.id == ids[head.attends_to[0].position]
    return result, expected
