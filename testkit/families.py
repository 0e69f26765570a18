"""The family matrix: tiny random-weight checkpoints of the model families researchers bring.

Each :class:`Family` is a transformers config (the family's own class, a few MB of weights
at most) that :func:`build` turns into a Hugging Face model folder (weights, config, the
tiny byte-level tokenizer of ``testkit/models.py``): what ``lenstui lens --model DIR``
reads. Nothing is downloaded; the folders are cached under a directory keyed by the
family's spec and the transformers version, so a test run builds each once.

Random weights at the usual ``initializer_range`` (0.02) give logits near zero: every
distribution is nearly uniform and a lens that drops a soft-cap, a logit scale or the
final norm reads nearly the same probabilities as one that does not. So the weights are
drawn wider (``INIT_RANGE``), and every *constant* parameter (norm gains at 1 or at 0 for
Gemma's ``1 + w``, biases at 0, Mamba's ``D``) is perturbed: a missed ``1 + w``, bias or
scale cannot pass as the right answer. Output transforms are set to values that bite
(Gemma's soft-cap at a few logits, Granite's ``logits_scaling`` at 4).

``expect`` is what the family is known to do in lenstui: ``native`` (the plain model
with hooks, ``engine/model/anatomy.py``), ``bridge`` (TransformerLens' bridge) or
``refuses`` (a load that ends in the sentence ``limit`` starts with). The suite
(tests/unit/test_families.py) checks every family against it, and the docs' table
(docs/reference/families.md) is generated from the same matrix: ``python -m
testkit.families --write`` rewrites it from a run of the matrix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

# Weights' std: about 1/sqrt(d_model) for d_model 32, so logits have a spread of a few units.
INIT_RANGE = 0.2
# The std of the noise added to every constant parameter (norm gains, biases).
PERTURB = 0.3
VOCAB_PAD = 512  # vocab_size of every family (the tiny tokenizer's 400 ids fit below it)

# What every family gets unless it overrides it (only the fields its config class has).
COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB_PAD,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
    initializer_range=INIT_RANGE,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
    tie_word_embeddings=False,
    use_cache=True,
)


@dataclass(frozen=True)
class Family:
    name: str  # as the docs' table names it
    config: str  # the transformers config class
    overrides: dict = field(default_factory=dict)
    expect: str = "native"  # "native", "bridge" or "refuses"
    limit: str = ""  # a known limit in one sentence (for "refuses": how the refusal starts)
    # sub-configs built from their own classes: {"text_config": ("Gemma3TextConfig", {...})}
    nested: dict = field(default_factory=dict)
    # a config attribute name -> the output transform a lens must apply (for the docs)
    seed: int = 0

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-")

    def spec_key(self) -> str:
        import transformers

        payload = json.dumps([self.config, self.overrides, self.nested, self.seed, transformers.__version__,
                              INIT_RANGE, PERTURB, _BUILD_VERSION], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


_BUILD_VERSION = 1  # bump when build() changes what it writes


def _accepts(cls) -> set[str]:
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return names | set(getattr(cls, "attribute_map", {}))


def make_config(family: Family):
    import transformers

    def build_config(class_name: str, overrides: dict, with_common: bool):
        cls = getattr(transformers, class_name)
        accepted = _accepts(cls)
        kwargs = {k: v for k, v in COMMON.items() if k in accepted} if with_common else {}
        kwargs.update(overrides)
        return cls(**kwargs)

    nested = {key: build_config(name, sub, with_common=True) for key, (name, sub) in family.nested.items()}
    config = build_config(family.config, {**family.overrides, **nested}, with_common=not nested)
    return config


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Every constant parameter (a norm's gain, a bias, ...) gets noise: a reading that
    skips it cannot agree with the model by accident."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.numel() > 1 and bool((param == param.flatten()[0]).all()):
                param.add_(torch.randn(param.shape, generator=generator) * PERTURB)
            elif param.numel() == 1:
                param.add_(torch.randn((), generator=generator) * PERTURB)


def build_model(family: Family):
    """The family's model (random weights, constants perturbed), in float32, eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(family.seed)
    model = AutoModelForCausalLM.from_config(make_config(family), dtype=torch.float32)
    _perturb(model, family.seed)
    return model.eval()


def families_root() -> Path:
    root = os.environ.get("LENSTUI_FAMILIES_DIR")
    path = Path(root) if root else Path(tempfile.gettempdir()) / f"lenstui-families-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def build(family: Family, root: Optional[Path] = None) -> Path:
    """The family's model folder (config, safetensors, tokenizer), built once per spec."""
    from testkit.models import tiny_tokenizer

    root = families_root() if root is None else root
    folder = root / f"{family.slug}-{family.spec_key()}"
    if (folder / "config.json").is_file() and (folder / "done").is_file():
        return folder
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{family.slug}-"))
    model = build_model(family)
    model.save_pretrained(staging)
    tiny_tokenizer().save_pretrained(staging)
    (staging / "done").write_text(family.name + "\n")
    try:
        staging.rename(folder)
    except OSError:  # another process built it meanwhile
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return folder


# ---------------------------------------------------------------- the matrix

_MOE = dict(num_local_experts=4, num_experts_per_tok=2)
_SIGLIP = ("SiglipVisionConfig", dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=16, patch_size=8))

FAMILIES: list[Family] = [
    Family("Llama (tied)", "LlamaConfig", dict(tie_word_embeddings=True)),
    Family("Llama (untied, biases)", "LlamaConfig", dict(attention_bias=True, mlp_bias=True)),
    Family("Mistral", "MistralConfig", dict(sliding_window=16)),
    Family("Ministral 3", "Ministral3Config"),
    Family("Mixtral (MoE)", "MixtralConfig", _MOE),
    Family("Qwen2", "Qwen2Config", dict(tie_word_embeddings=True)),
    Family("Qwen2-MoE", "Qwen2MoeConfig", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                               shared_expert_intermediate_size=32)),
    Family("Qwen3", "Qwen3Config"),
    Family("Qwen3-MoE", "Qwen3MoeConfig", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)),
    Family("Gemma", "GemmaConfig"),
    Family("Gemma 2 (soft-capped)", "Gemma2Config", dict(final_logit_softcapping=2.0, attn_logit_softcapping=5.0,
                                                        sliding_window=16)),
    Family("Gemma 3 (text)", "Gemma3TextConfig", dict(final_logit_softcapping=2.0, sliding_window=16)),
    Family("Gemma 3 (multimodal checkpoint)", "Gemma3Config",
           nested={"text_config": ("Gemma3TextConfig", dict(final_logit_softcapping=2.0, sliding_window=16)),
                   "vision_config": _SIGLIP},
           overrides=dict(mm_tokens_per_image=4)),
    Family("Gemma 4 (text)", "Gemma4TextConfig", dict(final_logit_softcapping=2.0, sliding_window=16,
                                                     vocab_size_per_layer_input=VOCAB_PAD, hidden_size_per_layer_input=8,
                                                     layer_types=["sliding_attention", "full_attention", "full_attention"])),
    Family("RecurrentGemma", "RecurrentGemmaConfig", dict(lru_width=32, attention_window_size=16, logits_soft_cap=2.0,
                                                          block_types=["recurrent", "attention"])),
    Family("Cohere (logit_scale)", "CohereConfig", dict(logit_scale=0.5)),
    Family("Cohere 2", "Cohere2Config", dict(logit_scale=0.5, sliding_window=16)),
    Family("Granite (logits_scaling)", "GraniteConfig", dict(logits_scaling=4.0, embedding_multiplier=2.0,
                                                            residual_multiplier=0.5, attention_multiplier=0.3)),
    Family("Granite MoE", "GraniteMoeConfig", dict(logits_scaling=4.0, **_MOE)),
    Family("Phi", "PhiConfig", dict(partial_rotary_factor=0.5)),
    Family("Phi-3", "Phi3Config"),
    Family("Phi-MoE", "PhimoeConfig", _MOE),
    Family("GPT-2", "GPT2Config"),
    Family("GPT-Neo", "GPTNeoConfig", dict(attention_types=[[["global", "local"], 1], [["global"], 1]], window_size=8)),
    Family("GPT-NeoX (Pythia)", "GPTNeoXConfig", dict(rotary_pct=0.5)),
    Family("GPT-NeoX (sequential)", "GPTNeoXConfig", dict(rotary_pct=0.5, use_parallel_residual=False)),
    Family("GPT-J", "GPTJConfig", dict(rotary_dim=4)),
    Family("CodeGen", "CodeGenConfig", dict(rotary_dim=4, n_ctx=64)),
    Family("OPT-125m style", "OPTConfig", dict(ffn_dim=64, word_embed_proj_dim=32)),
    Family("OPT-350m style (project_out)", "OPTConfig", dict(ffn_dim=64, word_embed_proj_dim=16,
                                                             do_layer_norm_before=False)),
    Family("Falcon-7B style (parallel, multi-query)", "FalconConfig", dict(multi_query=True, parallel_attn=True,
                                                                         new_decoder_architecture=False)),
    Family("Falcon-RW style (ALiBi, sequential)", "FalconConfig", dict(alibi=True, parallel_attn=False, bias=True,
                                                                     multi_query=False, new_decoder_architecture=False)),
    Family("Falcon-40B style (new decoder)", "FalconConfig", dict(new_decoder_architecture=True, num_kv_heads=2,
                                                                 multi_query=False)),
    Family("Falcon-40B style (new decoder, multi-query)", "FalconConfig", dict(new_decoder_architecture=True,
                                                                              multi_query=True, num_kv_heads=1)),
    Family("BLOOM", "BloomConfig", dict(n_head=4)),
    Family("MPT", "MptConfig", dict(d_model=32, n_heads=4, n_layers=3, expansion_ratio=2, max_seq_len=64)),
    Family("StableLM", "StableLmConfig", dict(partial_rotary_factor=0.5)),
    Family("OLMo", "OlmoConfig"),
    Family("OLMo 2", "Olmo2Config"),
    Family("OLMo 3", "Olmo3Config", dict(sliding_window=16)),
    Family("OLMoE", "OlmoeConfig", dict(num_experts=4, num_experts_per_tok=2)),
    Family("Starcoder2", "Starcoder2Config", dict(sliding_window=16)),
    Family("Nemotron", "NemotronConfig", dict(partial_rotary_factor=0.5)),
    Family("XGLM", "XGLMConfig", dict(d_model=32, ffn_dim=64, num_layers=3, attention_heads=4)),
    Family("GPTBigCode (multi-query)", "GPTBigCodeConfig", dict(multi_query=True)),
    Family("gpt-oss", "GptOssConfig", dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=16)),
    Family("Llama 4 (text)", "Llama4TextConfig", dict(intermediate_size_mlp=64, num_local_experts=2,
                                                     num_experts_per_tok=1, attention_chunk_size=16)),
    Family("DeepSeek-V3", "DeepseekV3Config", dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                                  n_group=1, topk_group=1, first_k_dense_replace=1, kv_lora_rank=16,
                                                  q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4,
                                                  v_head_dim=8, num_key_value_heads=4)),
    Family("SmolLM3", "SmolLM3Config"),
    Family("GLM", "GlmConfig"),
    Family("GLM-4", "Glm4Config"),
    Family("EXAONE 4", "Exaone4Config", dict(sliding_window=16)),
    Family("Apertus", "ApertusConfig"),
    Family("Arcee", "ArceeConfig"),
    Family("Ernie 4.5", "Ernie4_5Config"),
    Family("HunYuan (dense)", "HunYuanDenseV1Config"),
    Family("Seed-OSS", "SeedOssConfig"),
    Family("BitNet", "BitNetConfig"),
    Family("Helium", "HeliumConfig"),
    Family("OpenAI-GPT", "OpenAIGPTConfig", dict(n_embd=32, n_layer=3, n_head=4, n_positions=64)),
    Family("Mamba", "MambaConfig", dict(state_size=4, expand=2, conv_kernel=4)),
    Family("Mamba 2", "Mamba2Config", dict(state_size=4, expand=2, num_heads=8, head_dim=8, n_groups=1, chunk_size=8)),
    Family("Falcon-H1 (hybrid)", "FalconH1Config", dict(mamba_d_ssm=32, mamba_n_heads=4, mamba_d_state=4,
                                                        mamba_chunk_size=8, lm_head_multiplier=0.5)),
    Family("LFM2 (hybrid)", "Lfm2Config", dict(layer_types=["conv", "full_attention", "conv"], block_multiple_of=16)),
    Family("Jamba (hybrid MoE)", "JambaConfig", dict(num_hidden_layers=4, attn_layer_period=2, attn_layer_offset=1,
                                                     expert_layer_period=2, expert_layer_offset=1, num_experts=4,
                                                     num_experts_per_tok=2, mamba_d_state=4, mamba_dt_rank=4,
                                                     use_mamba_kernels=False)),
]


def by_name(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(name)


# ---------------------------------------------------------------- the reference


PROMPT = "The Eiffel Tower is located in the city of Paris, hello world"


def decoder_blocks(hf_model) -> list[torch.nn.Module]:
    """The decoder blocks, found the simple way (the reference's own rule, not the
    engine's): the module list with one entry per layer of the text config, outside any
    vision or audio tower."""
    config = hf_model.config.get_text_config()
    n_layers = int(config.num_hidden_layers)
    found = [
        (name, module) for name, module in hf_model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers
        and not any(word in name for word in ("vision", "audio", "encoder"))
    ]
    if not found:
        raise LookupError(f"no block list of {n_layers} in {type(hf_model).__name__}")
    return list(min(found, key=lambda item: item[0].count("."))[1])


def reference_probs(folder: Path, ids: list[int]) -> list[torch.Tensor]:
    """Per residual row (the embedding, then each block's output): [positions, vocab]
    probabilities in float64, each from the family's own forward with the blocks above
    that row passed through (their input comes out as their output): the model's own
    final norm, unembedding and output transforms read that residual."""
    default = torch.get_default_dtype()
    # Some families build constants with the default dtype (XGLM's mask floor): float64 too.
    torch.set_default_dtype(torch.float64)
    try:
        return _reference_probs(folder, ids)
    finally:
        torch.set_default_dtype(default)


def _reference_probs(folder: Path, ids: list[int]) -> list[torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, local_files_only=True)
    model.set_attn_implementation("eager")
    if model._can_set_experts_implementation():
        model.set_experts_implementation("eager")  # grouped_mm takes no float64
    model.eval()
    blocks = decoder_blocks(model)
    form: dict[str, Any] = {}

    def learn(module, args, output):
        form["kind"] = type(output) if isinstance(output, (tuple, list)) else None
        form["length"] = len(output) if form["kind"] else 0

    def passthrough(*args, **kwargs):
        value = args[0] if args else next(v for k, v in kwargs.items() if k in ("hidden_states", "activations"))
        return form["kind"]([value, *([None] * (form["length"] - 1))]) if form["kind"] else value

    tokens = torch.tensor([ids])
    handle = blocks[-1].register_forward_hook(learn)
    with torch.no_grad():
        full = model(input_ids=tokens, use_cache=False).logits[0]
    handle.remove()
    rows = []
    for keep in range(len(blocks) + 1):  # row r: blocks 0..r-1 run
        for block in blocks[keep:]:
            block.forward = passthrough
        try:
            with torch.no_grad():
                logits = model(input_ids=tokens, use_cache=False).logits[0]
        finally:
            for block in blocks[keep:]:
                del block.forward
        rows.append(torch.softmax(logits.double(), dim=-1))
    assert torch.allclose(rows[-1], torch.softmax(full.double(), dim=-1))
    return rows
