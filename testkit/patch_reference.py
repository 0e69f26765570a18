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
"""

from __future__ import annotations

import torch


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
