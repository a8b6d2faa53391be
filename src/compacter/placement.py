"""Where the adapters go in each architecture: the only module that knows transformers' layouts.

An adapter is applied to the *output of a sub-layer's last projection*, i.e. before the block's
dropout and residual connection, as in the released Compacter code. Patterns are regular
expressions matched in full against module names (``model.named_modules()``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Placement:
    """Regexes for the module whose output is the self-attention (resp. feed-forward) sub-layer output."""

    attention: tuple[str, ...]
    ffn: tuple[str, ...]


_T5 = Placement(attention=(r".*\.layer\.0\.SelfAttention\.o",), ffn=(r".*\.DenseReluDense\.wo",))
# LongT5's encoder attends locally or transient-globally; its decoder is T5's
_LONGT5 = Placement(attention=(r".*\.layer\.0\.(SelfAttention|LocalSelfAttention|TransientGlobalSelfAttention)\.o",), ffn=_T5.ffn)
# BART and the fairseq-style decoders (OPT, BioGPT, XGLM) name their sub-layers alike
_BART = Placement(attention=(r".*layers\.\d+\.self_attn\.out_proj",), ffn=(r".*layers\.\d+\.fc2",))
# LED's and BigBird-Pegasus's encoders wrap their sparse attention: its projection is self_attn.output
_LED = Placement(attention=(r".*encoder\.layers\.\d+\.self_attn\.output", r".*decoder\.layers\.\d+\.self_attn\.out_proj"), ffn=_BART.ffn)
_BERT = Placement(attention=(r".*layer\.\d+\.attention\.output\.dense",), ffn=(r".*layer\.\d+\.output\.dense",))
_MPNET = Placement(attention=(r".*layer\.\d+\.attention\.attn\.o",), ffn=_BERT.ffn)
# ALBERT runs each layer of a layer group at num_hidden_layers / num_hidden_groups depths with the same
# weights, so its adapters are shared the same way: one per sub-layer of each distinct layer, its hook
# firing at every depth (albert-base: 1 adapter pair for 12 layers, 1/12 of a BERT-base's); AdapterHub
# shares ALBERT's adapters across the groups' repetitions likewise
_ALBERT = Placement(attention=(r".*albert_layers\.\d+\.attention\.dense",), ffn=(r".*albert_layers\.\d+\.ffn_output",))
_MODERNBERT = Placement(attention=(r".*layers\.\d+\.attn\.Wo",), ffn=(r".*layers\.\d+\.mlp\.Wo",))
_DISTILBERT = Placement(attention=(r".*layer\.\d+\.attention\.out_lin",), ffn=(r".*layer\.\d+\.ffn\.lin2",))
_GPT2 = Placement(attention=(r".*h\.\d+\.attn\.c_proj",), ffn=(r".*h\.\d+\.mlp\.c_proj",))
_GPT_NEO = Placement(attention=(r".*h\.\d+\.attn\.attention\.out_proj",), ffn=_GPT2.ffn)
# Parallel-residual blocks (GPT-J, CodeGen, Phi, Falcon, Cohere; GPT-NeoX and StableLM where
# use_parallel_residual) add the attention and the feed-forward outputs to the same residual side by
# side: each branch's adapter still sits on that branch's output projection.
_GPTJ = Placement(attention=(r".*h\.\d+\.attn\.out_proj",), ffn=(r".*h\.\d+\.mlp\.fc_out",))
_GPT_NEOX = Placement(attention=(r".*layers\.\d+\.attention\.dense",), ffn=(r".*layers\.\d+\.mlp\.dense_4h_to_h",))
_PERSIMMON = Placement(attention=(r".*layers\.\d+\.self_attn\.dense",), ffn=_GPT_NEOX.ffn)
_PHI = Placement(attention=(r".*layers\.\d+\.self_attn\.dense",), ffn=(r".*layers\.\d+\.mlp\.fc2",))
# BLOOM with slow_but_exact=True and pretraining_tp > 1 multiplies by slices of dense.weight without
# calling these modules, so no adapter would run: placement_for refuses it (the default is False)
_BLOOM = Placement(attention=(r".*h\.\d+\.self_attention\.dense",), ffn=(r".*h\.\d+\.mlp\.dense_4h_to_h",))
_LLAMA = Placement(attention=(r".*layers\.\d+\.self_attn\.o_proj",), ffn=(r".*layers\.\d+\.mlp\.down_proj",))
_STARCODER2 = Placement(attention=_LLAMA.attention, ffn=(r".*layers\.\d+\.mlp\.c_proj",))

#: model_type -> placement. Cross-attention gets no adapter (as in the paper). Every entry is tested on
#: a tiny model (tests/core/test_inject.py, test_more_architectures.py, test_placements.py): one
#: attention and one feed-forward site per layer (per encoder and per decoder layer), each the last
#: projection of its sub-layer. Not here: mixture-of-experts feed-forwards (Mixtral, Qwen2/3-MoE, ...),
#: whose experts are 3-D parameters rather than one Linear; hybrids whose layers are not all attention
#: (LFM2, Jamba, ...); multimodal wrappers (Gemma 3 with vision, Qwen2-VL).
PLACEMENTS: dict[str, Placement] = {
    **dict.fromkeys(("t5", "mt5", "umt5"), _T5),
    "longt5": _LONGT5,
    **dict.fromkeys(("bart", "mbart", "marian", "pegasus", "m2m_100", "blenderbot", "blenderbot-small", "plbart",
                     "opt", "biogpt", "xglm"), _BART),
    **dict.fromkeys(("led", "bigbird_pegasus"), _LED),
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "camembert", "electra", "deberta", "deberta-v2", "xlm-roberta-xl",
                     "roberta-prelayernorm", "megatron-bert", "ernie", "roformer", "data2vec-text"), _BERT),
    "mpnet": _MPNET,
    "albert": _ALBERT,
    "modernbert": _MODERNBERT,
    "distilbert": _DISTILBERT,
    **dict.fromkeys(("gpt2", "gpt_bigcode"), _GPT2),
    "gpt_neo": _GPT_NEO,
    **dict.fromkeys(("gptj", "codegen"), _GPTJ),
    "gpt_neox": _GPT_NEOX,
    "persimmon": _PERSIMMON,
    "phi": _PHI,
    **dict.fromkeys(("bloom", "falcon"), _BLOOM),
    **dict.fromkeys(("llama", "mistral", "ministral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "vaultgemma", "phi3",
                     "olmo", "olmo2", "olmo3", "smollm3", "granite", "cohere", "cohere2", "stablelm", "helium", "glm", "glm4",
                     "exaone4", "seed_oss", "arcee", "apertus", "nemotron", "hunyuan_v1_dense", "ernie4_5"), _LLAMA),
    "starcoder2": _STARCODER2,
}

#: Class-name suffixes of normalisation layers ("the model's layer norms", trained by default).
_NORM_SUFFIXES = ("LayerNorm", "RMSNorm")


def model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def placement_for(model: nn.Module, attention: tuple[str, ...] | None, ffn: tuple[str, ...] | None,
                  roles: tuple[str, ...] = ("attention", "ffn")) -> Placement:
    """The placement for ``model``: the user's patterns where given, else the table's entry.
    ``roles``: the sites the method uses; patterns for those suffice on a model the table lacks
    (Compacter++ needs only ``ffn``)."""
    given = {"attention": attention, "ffn": ffn}
    if all(given[role] is not None for role in roles):
        return Placement(attention or (), ffn or ())
    mtype = model_type(model)
    known = PLACEMENTS.get(mtype)
    if known is None:
        raise ValueError(
            f"no adapter placement is known for model_type={mtype!r} ({type(model).__name__}); "
            f"known: {', '.join(sorted(PLACEMENTS))}. Name the modules yourself with regexes over "
            "model.named_modules(), e.g. CompacterConfig(attention_modules=[r'.*layers\\.\\d+\\.attn\\.out_proj'], "
            "ffn_modules=[r'.*layers\\.\\d+\\.mlp\\.fc_out']) (methods that use only the feed-forward site, "
            f"such as compacter++, need only ffn_modules; this one needs {' and '.join(r + '_modules' for r in roles)}); "
            "on the command line, JSON lists: --adapter 'attention_modules=[\".*attn\\\\.out_proj\"]' "
            "--adapter 'ffn_modules=[\".*mlp\\\\.fc_out\"]'"
        )
    config = model.config
    if known is _BLOOM and getattr(config, "slow_but_exact", False) and getattr(config, "pretraining_tp", 1) > 1:
        raise ValueError(f"{type(model).__name__} has slow_but_exact=True (pretraining_tp={config.pretraining_tp}): it multiplies "
                         "by slices of each dense layer's weight without calling the layer, so adapters there would never run; "
                         "load it with slow_but_exact=False")
    return Placement(attention if attention is not None else known.attention, ffn if ffn is not None else known.ffn)


def match_modules(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Names of the modules whose full name matches one of ``patterns``, in model order."""
    compiled = [re.compile(p) for p in patterns]
    return [name for name, _ in model.named_modules() if name and any(c.fullmatch(name) for c in compiled)]


def output_features(module: nn.Module, name: str) -> int:
    """Width of a module's output: ``out_features`` (Linear), ``nf`` (GPT-2 Conv1D) or the weight's first dim."""
    for attr in ("out_features", "nf"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() == 2 and not isinstance(module, nn.Embedding):  # an embedding's weight is [vocab, width]
        return weight.shape[0]
    raise ValueError(f"cannot tell the output width of {name} ({type(module).__name__}): target a Linear-like module")


def is_norm(module: nn.Module) -> bool:
    """A layer norm or RMS norm, by type or by the class-name convention of transformers."""
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith(_NORM_SUFFIXES)
