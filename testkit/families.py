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
from typing import Any, Optional

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
    # The block's module whose input is the mid residual, as the family's code names it
    # (":out": the module's output, a post-norm block's); "" when the blocks have none
    # (parallel attention, one sublayer). The reference reads it by this name.
    mid: str = "post_attention_layernorm"
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
    """The family's model (random weights, constants perturbed), in float32, eval mode:
    the class ``AutoModelForCausalLM`` builds for its config (a multimodal config it does
    not map: the image-text-to-text class, as lenstui loads it)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    torch.manual_seed(family.seed)
    config = make_config(family)
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except ValueError:
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
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
                                                        sliding_window=16), mid="pre_feedforward_layernorm"),
    Family("Gemma 3 (text)", "Gemma3TextConfig", dict(final_logit_softcapping=2.0, sliding_window=16),
           mid="pre_feedforward_layernorm"),
    Family("Gemma 3 (multimodal checkpoint)", "Gemma3Config",
           nested={"text_config": ("Gemma3TextConfig", dict(final_logit_softcapping=2.0, sliding_window=16)),
                   "vision_config": _SIGLIP},
           overrides=dict(mm_tokens_per_image=4), mid="pre_feedforward_layernorm"),
    Family("Gemma 4 (text)", "Gemma4TextConfig", dict(
        final_logit_softcapping=2.0, sliding_window=16, vocab_size_per_layer_input=VOCAB_PAD,
        hidden_size_per_layer_input=8, layer_types=["sliding_attention", "full_attention", "full_attention"]),
           mid="pre_feedforward_layernorm"),
    Family("RecurrentGemma", "RecurrentGemmaConfig", dict(lru_width=32, attention_window_size=16, logits_soft_cap=2.0,
                                                          block_types=["recurrent", "attention"]),
           mid="channel_pre_norm"),
    Family("Cohere (logit_scale)", "CohereConfig", dict(logit_scale=0.5), mid=""),
    Family("Cohere 2", "Cohere2Config", dict(logit_scale=0.5, sliding_window=16), mid=""),
    Family("Granite (logits_scaling)", "GraniteConfig", dict(logits_scaling=4.0, embedding_multiplier=2.0,
                                                            residual_multiplier=0.5, attention_multiplier=0.3)),
    Family("Granite MoE", "GraniteMoeConfig", dict(logits_scaling=4.0, **_MOE)),
    Family("Phi", "PhiConfig", dict(partial_rotary_factor=0.5), mid=""),
    Family("Phi-3", "Phi3Config"),
    Family("Phi-MoE", "PhimoeConfig", _MOE),
    Family("GPT-2", "GPT2Config", mid="ln_2"),
    Family("GPT-Neo", "GPTNeoConfig", dict(attention_types=[[["global", "local"], 1], [["global"], 1]], window_size=8),
           mid="ln_2"),
    Family("GPT-NeoX (Pythia)", "GPTNeoXConfig", dict(rotary_pct=0.5), mid=""),
    Family("GPT-NeoX (sequential)", "GPTNeoXConfig", dict(rotary_pct=0.5, use_parallel_residual=False)),
    Family("GPT-J", "GPTJConfig", dict(rotary_dim=4), mid=""),
    Family("CodeGen", "CodeGenConfig", dict(rotary_dim=4, n_ctx=64), mid=""),
    Family("OPT-125m style", "OPTConfig", dict(ffn_dim=64, word_embed_proj_dim=32), mid="final_layer_norm"),
    Family("OPT-350m style (project_out)", "OPTConfig", dict(ffn_dim=64, word_embed_proj_dim=16,
                                                             do_layer_norm_before=False),
           mid="self_attn_layer_norm:out"),
    Family("Falcon-7B style (parallel, multi-query)", "FalconConfig",
           dict(multi_query=True, parallel_attn=True, new_decoder_architecture=False), mid=""),
    Family("Falcon-RW style (ALiBi, sequential)", "FalconConfig",
           dict(alibi=True, parallel_attn=False, bias=True, multi_query=False, new_decoder_architecture=False)),
    Family("Falcon-40B style (new decoder)", "FalconConfig", dict(new_decoder_architecture=True, num_kv_heads=2,
                                                                 multi_query=False), mid=""),
    Family("Falcon-40B style (new decoder, multi-query)", "FalconConfig",
           dict(new_decoder_architecture=True, multi_query=True, num_kv_heads=1), mid=""),
    Family("BLOOM", "BloomConfig", dict(n_head=4)),
    Family("MPT", "MptConfig", dict(d_model=32, n_heads=4, n_layers=3, expansion_ratio=2, max_seq_len=64),
           mid="norm_2"),
    Family("StableLM", "StableLmConfig", dict(partial_rotary_factor=0.5)),
    Family("OLMo", "OlmoConfig"),
    Family("OLMo 2", "Olmo2Config", mid="mlp"),
    Family("OLMo 3", "Olmo3Config", dict(sliding_window=16), mid="mlp"),
    Family("OLMoE", "OlmoeConfig", dict(num_experts=4, num_experts_per_tok=2)),
    Family("Starcoder2", "Starcoder2Config", dict(sliding_window=16)),
    Family("Nemotron", "NemotronConfig", dict(partial_rotary_factor=0.5)),
    Family("XGLM", "XGLMConfig", dict(d_model=32, ffn_dim=64, num_layers=3, attention_heads=4), mid="final_layer_norm"),
    Family("GPTBigCode (multi-query)", "GPTBigCodeConfig", dict(multi_query=True), mid="ln_2"),
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
    Family("EXAONE 4", "Exaone4Config", dict(sliding_window=16), mid="mlp"),
    Family("Apertus", "ApertusConfig", mid="feedforward_layernorm"),
    Family("Arcee", "ArceeConfig"),
    Family("Ernie 4.5", "Ernie4_5Config"),
    Family("HunYuan (dense)", "HunYuanDenseV1Config"),
    Family("Seed-OSS", "SeedOssConfig"),
    Family("BitNet", "BitNetConfig"),
    Family("Helium", "HeliumConfig"),
    Family("OpenAI-GPT", "OpenAIGPTConfig", dict(n_embd=32, n_layer=3, n_head=4, n_positions=64), mid="ln_1:out"),
    Family("Mamba", "MambaConfig", dict(state_size=4, expand=2, conv_kernel=4), mid=""),
    Family("Mamba 2", "Mamba2Config", dict(state_size=4, expand=2, num_heads=8, head_dim=8, n_groups=1, chunk_size=8),
           mid=""),
    Family("Falcon-H1 (hybrid)", "FalconH1Config", dict(mamba_d_ssm=32, mamba_n_heads=4, mamba_d_state=4,
                                                        mamba_chunk_size=8, lm_head_multiplier=0.5),
           mid="pre_ff_layernorm"),
    Family("LFM2 (hybrid)", "Lfm2Config", dict(layer_types=["conv", "full_attention", "conv"], block_multiple_of=16),
           mid="ffn_norm"),
    Family("Jamba (hybrid MoE)", "JambaConfig", dict(num_hidden_layers=4, attn_layer_period=2, attn_layer_offset=1,
                                                     expert_layer_period=2, expert_layer_offset=1, num_experts=4,
                                                     num_experts_per_tok=2, mamba_d_state=4, mamba_dt_rank=4,
                                                     use_mamba_kernels=False), mid="pre_ff_layernorm"),
    Family("Bamba (hybrid)", "BambaConfig", dict(mamba_d_state=4, mamba_n_heads=4, mamba_d_head=16, mamba_chunk_size=8,
                                                 attn_layer_indices=[1]), mid="pre_ff_layernorm"),
    Family("Granite MoE hybrid", "GraniteMoeHybridConfig", dict(layer_types=["mamba", "attention", "mamba"],
                                                                mamba_d_state=4, mamba_n_heads=4, mamba_d_head=16,
                                                                mamba_chunk_size=8, shared_intermediate_size=32,
                                                                **_MOE)),
    Family("Nemotron-H (hybrid)", "NemotronHConfig", dict(hybrid_override_pattern="M*-", mamba_num_heads=4,
                                                          mamba_head_dim=16, ssm_state_size=4, n_groups=1,
                                                          chunk_size=8), mid=""),
    Family("Zamba2 (hybrid, shared blocks)", "Zamba2Config", dict(
        num_hidden_layers=4, mamba_d_state=4, mamba_headdim=8, n_mamba_heads=8, hybrid_layer_ids=[1, 3],
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid"], use_mem_rope=False, adapter_rank=4,
        num_mem_blocks=1),
           mid=""),
    Family("Qwen3-Next (linear attention)", "Qwen3NextConfig", dict(
        linear_num_value_heads=2, linear_num_key_heads=2, linear_key_head_dim=8, linear_value_head_dim=8,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16,
        layer_types=["linear_attention", "full_attention", "linear_attention"])),
    Family("MiniMax (lightning attention)", "MiniMaxConfig", dict(layer_types=["linear_attention", "full_attention",
                                                                               "linear_attention"], block_size=8,
                                                                  **_MOE), mid="post_attention_layernorm:out"),
    Family("VaultGemma", "VaultGemmaConfig", dict(final_logit_softcapping=2.0), mid="pre_feedforward_layernorm"),
    Family("Cwm", "CwmConfig", dict(sliding_window=16)),
    Family("JetMoe", "JetMoeConfig", dict(kv_channels=8, num_key_value_heads=4, **_MOE)),
    Family("Llama 4 (multimodal checkpoint)", "Llama4Config", nested={
        "text_config": ("Llama4TextConfig", dict(intermediate_size_mlp=64, num_local_experts=2, num_experts_per_tok=1,
                                                 attention_chunk_size=16)),
        "vision_config": ("Llama4VisionConfig", dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, image_size=16, patch_size=8,
                                                     vision_output_dim=32, projector_input_dim=32,
                                                     projector_output_dim=32))}),
    Family("Qwen2-VL (multimodal checkpoint)", "Qwen2VLConfig", nested={
        "text_config": ("Qwen2VLTextConfig", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                   "mrope_section": [1, 1, 2]})),
        "vision_config": ("Qwen2VLVisionConfig", dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2,
                                                      patch_size=2, spatial_merge_size=1, temporal_patch_size=1))}),
    Family("Gemma 3n (text)", "Gemma3nTextConfig", dict(
        vocab_size_per_layer_input=VOCAB_PAD, hidden_size_per_layer_input=8, laurel_rank=4, altup_num_inputs=2,
        num_kv_shared_layers=0, intermediate_size=[64, 64, 64], activation_sparsity_pattern=[0.0, 0.0, 0.0],
        layer_types=["sliding_attention", "sliding_attention", "full_attention"], sliding_window=16),
           expect="refuses", mid="", limit="TransformerLens 4.3.0 has no adapter for Gemma3nForCausalLM"),
    Family("RWKV", "RwkvConfig", dict(attention_hidden_size=32, context_length=64), mid="ln2"),
    Family("FalconMamba", "FalconMambaConfig", dict(state_size=4, expand=2), mid=""),
    Family("Zamba (hybrid)", "ZambaConfig", dict(num_hidden_layers=4, attn_layer_period=2, attn_layer_offset=1,
                                                 mamba_d_state=4, mamba_dt_rank=4, n_mamba_heads=2), mid=""),
    Family("OLMo hybrid", "OlmoHybridConfig", mid="OlmoHybridAttentionDecoderLayer=mlp;post_attention_layernorm"),
    Family("Persimmon", "PersimmonConfig", dict(partial_rotary_factor=0.5)),
    Family("BioGPT", "BioGptConfig", mid="final_layer_norm"),
    Family("CTRL", "CTRLConfig", dict(n_embd=32, n_layer=3, n_head=4, dff=64, n_positions=64), mid="layernorm2"),
    Family("DeepSeek-V2", "DeepseekV2Config", dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                                  n_group=1, topk_group=1, first_k_dense_replace=1, kv_lora_rank=16,
                                                  q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4,
                                                  v_head_dim=8, num_key_value_heads=4)),
    Family("GLM-4 MoE", "Glm4MoeConfig", dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                             n_group=1, topk_group=1, first_k_dense_replace=1)),
    Family("EXAONE MoE", "ExaoneMoeConfig"),
    Family("Mistral 3 (multimodal checkpoint)", "Mistral3Config", nested={
        "text_config": ("MistralConfig", {}),
        "vision_config": ("PixtralVisionConfig", dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                      num_attention_heads=2, image_size=16, patch_size=8,
                                                      head_dim=8))}),
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
        and not any(word in name for word in ("vision", "visual", "audio", "encoder"))
    ]
    if not found:
        raise LookupError(f"no block list of {n_layers} in {type(hf_model).__name__}")
    return list(min(found, key=lambda item: item[0].count("."))[1])


def reference_probs(folder: Path, ids: list[int], mid: str = "") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per residual row (the embedding, then each block's output) and, with ``mid`` (the
    block's module named as in ``Family.mid``), per mid row: [positions, vocab]
    probabilities in float64, each from the family's own forward with the blocks above that
    row passed through (their input comes out as their output; block L itself, for its mid
    row, hands on its mid residual): the model's own final norm, unembedding and output
    transforms read that residual."""
    default = torch.get_default_dtype()
    # Some families build constants with the default dtype (XGLM's mask floor): float64 too.
    torch.set_default_dtype(torch.float64)
    try:
        return _reference_probs(folder, ids, mid)
    finally:
        torch.set_default_dtype(default)


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _reference_probs(folder: Path, ids: list[int], mid: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    from lenstui.engine.model.load import auto_causal_lm

    model = auto_causal_lm(str(folder), dtype=torch.float64, local_files_only=True)
    if model._can_set_attn_implementation():
        model.set_attn_implementation("eager")
    if model._can_set_experts_implementation():
        model.set_experts_implementation("eager")  # grouped_mm takes no float64
    model.eval()
    blocks = decoder_blocks(model)
    form: dict[str, Any] = {}

    def learn(module, args, output):
        form["kind"] = type(output) if isinstance(output, (tuple, list)) else None
        form["length"] = len(output) if form["kind"] else 0

    def shaped(value):
        return form["kind"]([value, *([None] * (form["length"] - 1))]) if form["kind"] else value

    def passthrough(*args, **kwargs):
        return shaped(args[0] if args else next(v for k, v in kwargs.items() if k in ("hidden_states", "activations")))

    def hands_on_mid(block):
        # "Class=name;name": the first entry naming the block's class, else the plain name
        entries = [entry.partition("=") for entry in mid.split(";")]
        chosen = next((name for cls, eq, name in entries if eq and cls == type(block).__name__), None)
        chosen = chosen or next(cls for cls, eq, name in entries if not eq)
        name, _, side = chosen.partition(":")
        target = getattr(block, name)

        def forward(*args, **kwargs):
            seen = {}

            def read_output(module, args, output):
                seen["v"] = _first(output)

            def read_input(module, args, kwargs):
                seen["v"] = args[0] if args else kwargs["hidden_states"]

            if side == "out":
                handle = target.register_forward_hook(read_output)
            else:
                handle = target.register_forward_pre_hook(read_input, with_kwargs=True)
            try:
                type(block).forward(block, *args, **kwargs)
            finally:
                handle.remove()
            return shaped(seen["v"].reshape(1, len(ids), -1))

        return forward

    tokens = torch.tensor([ids])

    def probs(replaced: dict) -> torch.Tensor:
        for block, forward in replaced.items():
            block.forward = forward
        try:
            with torch.no_grad():
                logits = model(input_ids=tokens, use_cache=False).logits[0]
        finally:
            for block in replaced:
                del block.forward
        return torch.softmax(logits.double(), dim=-1)

    handle = blocks[-1].register_forward_hook(learn)
    full = probs({})
    handle.remove()
    rows = [probs({block: passthrough for block in blocks[keep:]}) for keep in range(len(blocks) + 1)]
    assert torch.allclose(rows[-1], full)
    mids = []
    if mid:
        for layer, block in enumerate(blocks):
            mids.append(probs({block: hands_on_mid(block), **{above: passthrough for above in blocks[layer + 1:]}}))
    return rows, mids


# ---------------------------------------------------------------- one family, as a user reads it


@dataclass
class Outcome:
    """What lenstui does with one family's checkpoint, measured against the reference."""

    family: Family
    path: str  # "native", "bridge" or "refuses"
    sentence: str = ""  # the refusal's sentence
    readout: str = ""  # the output transforms the readout applies ("soft-cap 2", ...)
    labels: list = field(default_factory=list)  # the rows (without --mid)
    mixers: tuple = ()  # per block: what it runs before its MLP ("attn", "ssm", ...)
    max_dp: float = float("nan")  # every row's top-k probabilities vs the reference
    max_dh: float = float("nan")  # every row's entropy vs the reference
    top1_off: int = 0  # cells whose top-1 is not the reference's (beyond a tie)
    mid_sentence: Optional[str] = None  # why --mid reads nothing (None: it reads)
    mid_labels: list = field(default_factory=list)
    mid_dp: float = float("nan")  # the mid rows vs the reference (nan: not checked)
    extended_dp: float = float("nan")  # --lens extended's last row vs the model's own
    wiring: Any = None  # core.wiring.WiringCheck
    notes: list = field(default_factory=list)
    limits: list = field(default_factory=list)


def _compare(grid, reference) -> tuple[float, float, int]:
    worst = entropy = 0.0
    off = 0
    for row, probs in zip(grid, reference):
        for position, cell in enumerate(row):
            p = probs[position]
            for token in cell.top:
                worst = max(worst, abs(token.prob - float(p[token.id])))
            top1 = int(p.argmax())
            if cell.top[0].id != top1 and float(p[top1] - p[cell.top[0].id]) > 1e-6:
                off += 1
            h = float(-(p * torch.log(p.clamp_min(1e-300))).sum())
            entropy = max(entropy, abs(cell.entropy - h))
    return worst, entropy, off


def evaluate(family: Family, root: Optional[Path] = None) -> Outcome:
    """Load the family's checkpoint as ``lenstui lens --model DIR`` does, read the prompt
    (plain, ``--mid``, ``--lens extended``) and hold every row to the reference. A load that
    ends in a ModelLoadError is a refusal with its sentence; any other exception escapes."""
    from lenstui.core.errors import InputError, ModelLoadError
    from lenstui.core.lenses import LensOptions
    from lenstui.engine.lens.run import run_lens
    from lenstui.engine.model.anatomy import has_recurrent_state
    from lenstui.engine.model.wiring import load_checked

    folder = build(family, root)
    try:
        model = load_checked(str(folder))
    except ModelLoadError as err:
        return Outcome(family, "refuses", sentence=str(err))
    anatomy = model.anatomy
    outcome = Outcome(family, "native" if anatomy is not None else "bridge", wiring=model.wiring,
                      notes=list(model.notes))
    if anatomy is not None:
        outcome.mixers = anatomy.mixers
        outcome.readout = anatomy.logit_transform.describe() if anatomy.logit_transform else ""
    result = run_lens(model, PROMPT, LensOptions(top_k=10))
    outcome.labels = list(result.layers)
    rows, mids = reference_probs(folder, result.token_ids, family.mid)
    outcome.max_dp, outcome.max_dh, outcome.top1_off = _compare(result.grid, rows)
    try:
        with_mid = run_lens(model, PROMPT, LensOptions(top_k=10, incl_mid=True))
    except InputError as err:
        outcome.mid_sentence = str(err)
    else:
        mid_rows = [i for i, label in enumerate(with_mid.layers) if "." in label]
        outcome.mid_labels = [with_mid.layers[i] for i in mid_rows]
        if mids:
            outcome.mid_dp = _compare([with_mid.grid[i] for i in mid_rows], mids)[0]
    extended = run_lens(model, PROMPT, LensOptions(top_k=10, lens="extended", extended_blocks=1))
    outcome.extended_dp = _compare(extended.grid[-1:], rows[-1:])[0]
    outcome.limits = _limits(model, outcome, has_recurrent_state(model))
    return outcome


def _limits(model, outcome: Outcome, recurrent: bool) -> list[str]:
    """What a user of this family cannot do, in short phrases (the docs' last column)."""
    limits = []
    if outcome.family.limit:
        limits.append(outcome.family.limit)
    anatomy = model.anatomy
    if anatomy is not None:
        missing = [name for name, sites in (("attn", anatomy.attns), ("mlp", anatomy.mlps), ("head", anatomy.out_projs))
                   if not all(site is not None for site in sites)]
        if missing:
            limits.append(f"patch/steer sites {', '.join(missing)} not on every block natively")
    if recurrent:
        limits.append("a recurrent state has no prefix: every prompt edit reruns the whole forward")
    if model.hf.config.get_text_config() is not model.hf.config:
        limits.append("text only (images are not read)")
    return limits


# ---------------------------------------------------------------- the docs' table

DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "families.md"

_KINDS = {"attn": "attention", "ssm": "SSM", "conv": "convolution", "rec": "recurrent", "lin": "linear attention",
          "mlp": "MLP only", "": "?"}


def _rows_cell(outcome: Outcome) -> str:
    n = len(outcome.labels) - 1
    span = f"embed, L0–L{n - 1}"
    kinds = [("+".join(_KINDS.get(k, k) for k in kind.split("+"))) for kind in outcome.mixers]
    if not kinds or all(kind == "attention" for kind in kinds):
        return span
    if len(set(kinds)) == 1:
        return f"{span} ({kinds[0]} blocks)"
    return f"{span} ({', '.join(kinds)})"


def _mid_cell(outcome: Outcome) -> str:
    if outcome.mid_sentence is not None:
        text = outcome.mid_sentence
        if "parallel" in text:
            return "none: parallel attention"
        if "single sublayer" in text:
            return "none: one sublayer per block"
        if "Only some" in text:
            return "none: not in every block"
        return "none"
    labels = outcome.mid_labels
    kinds = {label.split(".", 1)[1] for label in labels}
    return f"{labels[0]}–{labels[-1]}" if len(kinds) == 1 else ", ".join(labels)


def render_table(outcomes: list[Outcome]) -> str:
    """docs/reference/families.md, from a run of the matrix."""
    native = sum(o.path == "native" for o in outcomes)
    bridge = sum(o.path == "bridge" for o in outcomes)
    refused = sum(o.path == "refuses" for o in outcomes)
    lines = [
        "# Model families",
        "",
        "<!-- Generated by `python -m testkit.families --write` from the family matrix (testkit/families.py);",
        "     tests/unit/test_families.py fails when this page differs from what the matrix gives. -->",
        "",
        f"Every family below is a tiny random-weight checkpoint built from its transformers config "
        f"({len(outcomes)} in all) that the suite loads the way `lenstui lens --model DIR` does. Every row of",
        "every family is held to the family's own forward in float64 (its blocks above the row passed through, so its",
        "own final norm, unembedding and soft-cap or logit scale read that residual); the wiring check that runs on",
        "every load holds the last row and one intermediate row to the model's own output.",
        "",
        f"**{native} read natively** (the plain transformers model with hooks, found by its module shape), "
        f"**{bridge} through TransformerLens' bridge**, **{refused} refuse** with a sentence.",
        "",
        "| family | path | rows | mid rows | known limits |",
        "| --- | --- | --- | --- | --- |",
    ]
    for outcome in outcomes:
        path = outcome.path if not outcome.readout else f"{outcome.path} · {outcome.readout}"
        if outcome.path == "refuses":
            lines.append(f"| {outcome.family.name} | refuses | | | {outcome.sentence} |")
            continue
        limits = "; ".join(outcome.limits) or "–"
        lines.append(f"| {outcome.family.name} | {path} | {_rows_cell(outcome)} | {_mid_cell(outcome)} | {limits} |")
    lines += [
        "",
        "**path**: *native* runs the plain model with PyTorch hooks on the modules `engine/model/anatomy.py` finds",
        "by one probe forward (the blocks, the final norm, the module carrying each block's mid residual, the",
        "sublayers, the attention's output projection), with the family's own output transforms after the",
        "unembedding; *bridge* runs TransformerLens' bridge. **mid rows** are the residual between a block's first",
        "sublayer and its MLP (`--mid`); where a block has none, `--mid` says why in one sentence.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m testkit.families")
    parser.add_argument("--write", action="store_true", help="rewrite docs/reference/families.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    outcomes = []
    for family in FAMILIES:
        outcome = evaluate(family)
        outcomes.append(outcome)
        print(f"{outcome.path:8s} {family.name:45s} dp={outcome.max_dp:.1e} mid={outcome.mid_dp:.1e} "
              f"wiring={outcome.wiring.max_abs_dp if outcome.wiring else float('nan'):.1e}", flush=True)
    page = render_table(outcomes)
    if args.write:
        DOCS_PAGE.write_text(page)
        print(f"wrote {DOCS_PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
