"""The placement table on tiny models of each type it names: one adapter per self-attention and per
feed-forward sub-layer, exactly on the named output projections (none on cross-attention), and the
model then trains, generates, and comes back unchanged with its adapters disabled.

That each named module is the last projection of its sub-layer (only dropout, a norm, a scale and
the residual add follow it) was read in the transformers sources; for decoder-only layers it is
also tested: with both sites' outputs zeroed, each layer returns its input unchanged, so the two
sites are all that a layer adds to the residual stream (in sequence or, in parallel-residual
blocks, side by side)."""

from collections import Counter
from typing import NamedTuple

import pytest
import torch
import transformers as T

import compacter
from compacter.inject import iter_sites
from compacter.modeling import family_of
from compacter.placement import PLACEMENTS

V = 96
_DEC = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
            vocab_size=V, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_ENC = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=V, max_position_embeddings=64,
            pad_token_id=0, num_labels=2)
_S2S = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
            decoder_ffn_dim=64, vocab_size=V, max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2)
_T5 = dict(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16, vocab_size=V, decoder_start_token_id=0)
_NO_HEAD_DIM = {k: v for k, v in _DEC.items() if k != "head_dim"}  # configs where head_dim is derived, not set


class Case(NamedTuple):
    model_type: str
    family: str  # what family_of says, and so the Auto class that loads it
    config: dict
    attention: tuple[str, ...]  # the expected sites; "{i}" runs over the 2 layers of each stack
    ffn: tuple[str, ...]
    runs: int = 1  # how often each site runs in one forward pass


def _dec(mtype, attention, ffn, **kw):
    return Case(mtype, "decoder", {**_DEC, **kw}, attention, ffn)


def _s2s(mtype, attention=("model.encoder.layers.{i}.self_attn.out_proj", "model.decoder.layers.{i}.self_attn.out_proj"),
         ffn=("model.encoder.layers.{i}.fc2", "model.decoder.layers.{i}.fc2"), **kw):
    return Case(mtype, "seq2seq", {**_S2S, **kw}, attention, ffn)


def _enc(mtype, prefix, attention=("encoder.layer.{i}.attention.output.dense",), ffn=("encoder.layer.{i}.output.dense",), **kw):
    return Case(mtype, "encoder", {**_ENC, **kw}, tuple(f"{prefix}.{a}" for a in attention), tuple(f"{prefix}.{f}" for f in ffn))


_LLAMA = ("model.layers.{i}.self_attn.o_proj",), ("model.layers.{i}.mlp.down_proj",)
_BLOOM = ("transformer.h.{i}.self_attention.dense",), ("transformer.h.{i}.mlp.dense_4h_to_h",)
_NEOX = ("gpt_neox.layers.{i}.attention.dense",), ("gpt_neox.layers.{i}.mlp.dense_4h_to_h",)
_GPTJ = ("transformer.h.{i}.attn.out_proj",), ("transformer.h.{i}.mlp.fc_out",)
_GPTJ_CONFIG = dict(_NO_HEAD_DIM, n_embd=32, n_layer=2, n_head=2, rotary_dim=8, n_positions=64)
_T5_DECODER_ATTENTION = "decoder.block.{i}.layer.0.SelfAttention.o"
_T5_FFN = ("encoder.block.{i}.layer.1.DenseReluDense.wo", "decoder.block.{i}.layer.2.DenseReluDense.wo")
_ALBERT = "albert.encoder.albert_layer_groups.{g}.albert_layers.{l}."

CASES = {
    # the Llama layout: self_attn.o_proj, mlp.down_proj (Cohere's are parallel branches, Granite scales them)
    **{t: _dec(t, *_LLAMA) for t in ("gemma3_text", "vaultgemma", "phi3", "olmo", "olmo2", "olmo3", "smollm3", "granite", "cohere",
                                      "cohere2", "helium", "glm", "glm4", "exaone4", "seed_oss", "arcee", "apertus", "nemotron",
                                      "hunyuan_v1_dense", "ernie4_5", "ministral", "stablelm")},
    "stablelm-parallel": _dec("stablelm", *_LLAMA, use_parallel_residual=True),
    "starcoder2": _dec("starcoder2", _LLAMA[0], ("model.layers.{i}.mlp.c_proj",)),
    "opt": _dec("opt", ("model.decoder.layers.{i}.self_attn.out_proj",), ("model.decoder.layers.{i}.fc2",), ffn_dim=64,
                word_embed_proj_dim=32, head_dim=None),
    "biogpt": _dec("biogpt", ("biogpt.layers.{i}.self_attn.out_proj",), ("biogpt.layers.{i}.fc2",), head_dim=None),
    "xglm": _dec("xglm", ("model.layers.{i}.self_attn.out_proj",), ("model.layers.{i}.fc2",), head_dim=None, d_model=32, ffn_dim=64,
                 num_layers=2, attention_heads=2),
    "gpt_bigcode": Case("gpt_bigcode", "decoder", dict(_NO_HEAD_DIM, n_embd=32, n_layer=2, n_head=2, n_positions=64),
                        ("transformer.h.{i}.attn.c_proj",), ("transformer.h.{i}.mlp.c_proj",)),
    "gpt_neo": Case("gpt_neo", "decoder", dict(_NO_HEAD_DIM, num_layers=2, attention_types=[[["global", "local"], 1]]),
                    ("transformer.h.{i}.attn.attention.out_proj",), ("transformer.h.{i}.mlp.c_proj",)),
    "gptj": Case("gptj", "decoder", _GPTJ_CONFIG, *_GPTJ),
    "codegen": Case("codegen", "decoder", dict(_GPTJ_CONFIG, n_ctx=64), *_GPTJ),
    "gpt_neox": Case("gpt_neox", "decoder", _NO_HEAD_DIM, *_NEOX),
    "gpt_neox-sequential": Case("gpt_neox", "decoder", dict(_NO_HEAD_DIM, use_parallel_residual=False), *_NEOX),
    "persimmon": Case("persimmon", "decoder", _NO_HEAD_DIM, ("model.layers.{i}.self_attn.dense",), ("model.layers.{i}.mlp.dense_4h_to_h",)),
    "phi": Case("phi", "decoder", _NO_HEAD_DIM, ("model.layers.{i}.self_attn.dense",), ("model.layers.{i}.mlp.fc2",)),
    "bloom": Case("bloom", "decoder", dict(_NO_HEAD_DIM, n_layer=2, n_head=2), *_BLOOM),
    "falcon": Case("falcon", "decoder", _NO_HEAD_DIM, *_BLOOM),
    "falcon-new-architecture": Case("falcon", "decoder", dict(_NO_HEAD_DIM, new_decoder_architecture=True, num_kv_heads=1), *_BLOOM),
    "falcon-sequential": Case("falcon", "decoder", dict(_NO_HEAD_DIM, parallel_attn=False), *_BLOOM),
    # encoder-decoders: the BART layout, LED's and BigBird-Pegasus's wrapped encoder attention, LongT5
    **{t: _s2s(t) for t in ("m2m_100", "blenderbot", "blenderbot-small", "plbart")},
    "led": _s2s("led", ("led.encoder.layers.{i}.self_attn.output", "led.decoder.layers.{i}.self_attn.out_proj"),
                ("led.encoder.layers.{i}.fc2", "led.decoder.layers.{i}.fc2"), attention_window=4,
                max_encoder_position_embeddings=64, max_decoder_position_embeddings=64),
    "bigbird_pegasus": _s2s("bigbird_pegasus", ("model.encoder.layers.{i}.self_attn.output", "model.decoder.layers.{i}.self_attn.out_proj"),
                            attention_type="original_full"),
    "longt5": Case("longt5", "seq2seq", _T5, ("encoder.block.{i}.layer.0.LocalSelfAttention.o", _T5_DECODER_ATTENTION), _T5_FFN),
    "longt5-tglobal": Case("longt5", "seq2seq", dict(_T5, encoder_attention_type="transient-global"),
                           ("encoder.block.{i}.layer.0.TransientGlobalSelfAttention.o", _T5_DECODER_ATTENTION), _T5_FFN),
    # encoders, with a classification head
    "xlm-roberta-xl": _enc("xlm-roberta-xl", "roberta"),
    "roberta-prelayernorm": _enc("roberta-prelayernorm", "roberta_prelayernorm"),
    "megatron-bert": _enc("megatron-bert", "bert"),
    "ernie": _enc("ernie", "ernie"),
    "roformer": _enc("roformer", "roformer"),
    "data2vec-text": _enc("data2vec-text", "data2vec_text"),
    "mpnet": _enc("mpnet", "mpnet", attention=("encoder.layer.{i}.attention.attn.o",)),
    "modernbert": _enc("modernbert", "model", attention=("layers.{i}.attn.Wo",), ffn=("layers.{i}.mlp.Wo",)),
    # ALBERT: one layer shared by both depths, so one site per sub-layer that runs twice
    "albert": Case("albert", "encoder", dict(_ENC, embedding_size=16), (_ALBERT.format(g=0, l=0) + "attention.dense",),
                   (_ALBERT.format(g=0, l=0) + "ffn_output",), runs=2),
    "albert-groups": Case("albert", "encoder", dict(_ENC, embedding_size=16, num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2),
                          tuple(_ALBERT.format(g=g, l=l) + "attention.dense" for g in (0, 1) for l in (0, 1)),
                          tuple(_ALBERT.format(g=g, l=l) + "ffn_output" for g in (0, 1) for l in (0, 1)), runs=2),
}

_AUTO = {"decoder": T.AutoModelForCausalLM, "seq2seq": T.AutoModelForSeq2SeqLM, "encoder": T.AutoModelForSequenceClassification}


def _build(case: Case):
    config = T.AutoConfig.for_model(case.model_type, **{k: v for k, v in case.config.items() if v is not None})
    torch.manual_seed(0)
    return _AUTO[case.family].from_config(config).eval()


def _expand(templates):
    return sorted(t.format(i=i) for t in templates for i in ((0, 1) if "{i}" in t else (0,)))


def _batch(family):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, V, (2, 7), generator=g)
    if family == "seq2seq":
        return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.randint(3, V, (2, 4), generator=g))
    if family == "encoder":
        return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1]))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left-padded, with each row's own positions, as the library's decoder batches
    ids[1, :3] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return dict(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), labels=labels)


@pytest.mark.parametrize("name", list(CASES))
def test_one_adapter_per_sub_layer_on_its_output_projection(name):
    case = CASES[name]
    model = _build(case)
    assert model.config.model_type == case.model_type and case.model_type in PLACEMENTS
    assert family_of(model.config) == case.family
    expected = {"attention": _expand(case.attention), "ffn": _expand(case.ffn)}
    batch = _batch(case.family)

    runs = Counter()
    hooks = [model.get_submodule(n).register_forward_hook(lambda *_, n=n: runs.update([n])) for names in expected.values() for n in names]
    model.requires_grad_(False)  # as add_adapters leaves the base: torch picks some matmul kernels by requires_grad (LED)
    with torch.no_grad():
        base = model(**batch).logits
    for hook in hooks:
        hook.remove()
    assert runs == {n: case.runs for names in expected.values() for n in names}

    compacter.add_adapters(model, compacter.CompacterConfig("compacter", reduction_factor=4))
    sites = {role: sorted(n for n, site in iter_sites(model) if site.role == role) for role in ("attention", "ffn")}
    assert sites == expected

    model.train()
    model(**batch).loss.backward()
    adapters = [(n, p) for n, p in model.named_parameters() if "compacter_adapters" in n and p.requires_grad]
    assert adapters and all(p.grad is not None for _, p in adapters)
    assert model.compacter.rules["default"].A.grad is not None
    model.eval()
    with compacter.disable_adapters(model), torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base, rtol=0, atol=0)
    if case.family != "encoder":
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=2, do_sample=False,
                             pad_token_id=model.config.pad_token_id)
        assert out.shape[0] == 2


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.family == "decoder"])
def test_zeroed_sites_make_each_decoder_layer_the_identity(name):
    case = CASES[name]
    model = _build(case)
    seen = {}

    def keep_input(module, args, kwargs):
        seen[module] = [args[0] if args else kwargs["hidden_states"]]

    def keep_output(module, args, output):
        seen[module].append(output[0] if isinstance(output, tuple) else output)

    hooks = []
    for template in case.attention + case.ffn:
        for i in (0, 1):
            hooks.append(model.get_submodule(template.format(i=i)).register_forward_hook(lambda m, a, out: torch.zeros_like(out)))
    for i in (0, 1):
        layer = model.get_submodule(case.attention[0].split("{i}")[0] + str(i))
        hooks += [layer.register_forward_pre_hook(keep_input, with_kwargs=True), layer.register_forward_hook(keep_output)]
    batch = _batch(case.family)
    with torch.no_grad():
        model(**batch)
    for hook in hooks:
        hook.remove()
    assert len(seen) == 2
    for layer_in, layer_out in seen.values():
        torch.testing.assert_close(layer_out, layer_in, rtol=0, atol=0)


def test_bloom_computing_its_dense_layers_by_slices_is_refused():
    """slow_but_exact BLOOM never calls the dense modules: their adapters would silently never run."""
    model = _build(CASES["bloom"]._replace(config=dict(CASES["bloom"].config, slow_but_exact=True, pretraining_tp=2)))
    with pytest.raises(ValueError, match="slow_but_exact"):
        compacter.add_adapters(model, compacter.CompacterConfig("compacter", reduction_factor=4))
    assert not list(iter_sites(model))


def test_every_placement_is_tested_on_a_tiny_model():
    """Each model type of the table is built by this file, tiny.ARCHS or test_more_architectures."""
    from .test_more_architectures import MODELS
    from .tiny import ARCHS

    tested = {case.model_type for case in CASES.values()}
    with torch.device("meta"):
        tested |= {builder().config.model_type for builder, _, _ in ARCHS.values()}
        tested |= {builder().config.model_type for builder in MODELS.values()}
    assert set(PLACEMENTS) <= tested, sorted(set(PLACEMENTS) - tested)


_LORA_CASES = [name for name, case in CASES.items() if case.model_type in __import__("compacter.peers", fromlist=["_LORA_TARGETS"])._LORA_TARGETS]


@pytest.mark.parametrize("name", _LORA_CASES)
def test_the_lora_peer_trains_the_targets_we_give_where_peft_has_none(name):
    """PEFT has no default LoRA targets for these types; ours (peers._LORA_TARGETS) name layers that exist."""
    pytest.importorskip("peft")
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    from compacter.peers import _LORA_TARGETS, add_peer

    case = CASES[name]
    assert case.model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING  # else PEFT's own would be used
    model = add_peer(_build(case), "peft-lora", case.family, {})  # eval mode: no layerdrop (M2M100 skips layers in training)
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert adapted == set(_LORA_TARGETS[case.model_type])
    model(**_batch(case.family)).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if ".lora_B" in n)


def test_every_type_of_the_placement_table_has_lora_targets():
    pytest.importorskip("peft")
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    from compacter.peers import _LORA_TARGETS

    assert [t for t in PLACEMENTS if t not in _LORA_TARGETS and t not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING] == []
