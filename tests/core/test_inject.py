"""add_adapters on every supported architecture: forward, freezing, gradients, switching, errors."""

import math

import pytest
import torch
import transformers as T

import compacter
from compacter import CompacterConfig
from compacter.inject import SITE_ATTR, STATE_ATTR, get_state, iter_sites
from compacter.placement import is_norm

from .tiny import _ENC, ARCHS, t5_base_config, tiny

TINY = dict(reduction_factor=4)  # tiny models have d_model 32: a bottleneck of 8
ADAPTER_METHODS = ["compacter", "compacter++", "phm-adapter", "adapter", "pfeiffer", "adapter-lowrank"]


def _config(method, **kw):
    kw = {**TINY, **kw}
    if method == "phm-adapter":
        kw.setdefault("phm_dim", 4)  # n=12 does not divide 32
    return CompacterConfig(method, **kw)


def _allowed(model, name, config):
    """May parameter ``name`` be trained under ``config``? Adapters, rule, norms, head (and biases for BitFit)."""
    if f"{SITE_ATTR}." in name or name.startswith(STATE_ATTR + "."):
        return True
    owner = model.get_submodule(name.rsplit(".", 1)[0])
    parts = name.split(".")
    return (is_norm(owner) and config.train_layer_norms) or (config.train_head and any(p in config.head_modules for p in parts[:-1])) \
        or (config.train_biases and parts[-1] == "bias")


def _train(model, batch, steps=3, lr=1e-2):
    model.train()
    opt = torch.optim.AdamW(compacter.trainable_parameters(model), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("method", ["compacter", "compacter++", "bitfit"])
def test_train_step_touches_only_adapters_norms_and_head(arch, method):
    model, batch = tiny(arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    base_out = _logits(model, batch)
    config = _config(method)
    compacter.add_adapters(model, config)
    model.train()
    model(**batch).loss.backward()
    grads = [n for n, p in model.named_parameters() if p.grad is not None]
    assert grads, "nothing received a gradient"
    bad = [n for n in grads if not _allowed(model, n, config)]
    assert not bad, f"frozen parameters got gradients: {bad[:5]}"
    trainable, total = compacter.count_parameters(model)
    assert trainable == sum(p.numel() for p in compacter.trainable_parameters(model)) > 0
    _train(model, batch)
    assert not torch.equal(_logits(model, batch), base_out)
    with compacter.disable_adapters(model):
        torch.testing.assert_close(_logits(model, batch), base_out, rtol=0, atol=0)
        after = dict(model.named_parameters())
        changed = [n for n, v in before.items() if not torch.equal(after[n], v)]
        assert not changed, f"base weights changed: {changed[:5]}"
    assert compacter.active_adapter(model) == "default"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_adapter_method_runs_on_every_architecture(arch):
    for method in ADAPTER_METHODS:
        model, batch = tiny(arch)
        compacter.add_adapters(model, _config(method))
        out = model(**batch)
        assert torch.isfinite(out.loss)
        roles = {site.role for _, site in iter_sites(model)}
        assert roles == ({"attention", "ffn"} if _config(method).after_attention else {"ffn"})


@pytest.mark.parametrize("method,expected", [
    ("compacter++", 104_704), ("compacter", 161_728), ("phm-adapter", 398_976),
    ("adapter", 1_855_104), ("pfeiffer", 951_360), ("adapter-lowrank", 161_664),
    ("adapterdrop", 1_101_984),  # Houlsby's on 7 of 12 layers of each stack
])
def test_t5_base_trainable_counts_equal_the_paper(method, expected):
    with torch.device("meta"):
        model = T.T5ForConditionalGeneration(t5_base_config())
    base_total = compacter.count_parameters(model)[1]
    compacter.add_adapters(model, CompacterConfig(method))
    trainable, total = compacter.count_parameters(model)
    assert trainable == expected
    assert total == base_total + trainable - 47_616  # the 62 layer norms are base parameters, counted once


def test_t5_base_table_of_the_readme():
    """Every row of the README's methods table: trainable count and % of T5-base (4 decimals)."""
    import re
    from pathlib import Path

    from compacter.params import count_methods

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = {}
    for line in readme.split("## Methods", 1)[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = re.match(r"`([^`]+)`", cells[0])
        if line.startswith("| `") and name:
            table[name.group(1)] = (int(cells[3].replace(",", "")), f"{float(cells[4]):.4f}")
    assert set(table) == set(compacter.METHODS)
    rows = count_methods("t5-base-shapes", list(table))
    assert {r["method"]: (r["trainable"], f"{r['percent']:.4f}") for r in rows} == table


def test_paper_formula_for_compacter_parts():
    with torch.device("meta"):
        model = T.T5ForConditionalGeneration(t5_base_config())
    compacter.add_adapters(model, CompacterConfig("compacter"))
    L, k, d, n = 24, 24, 768, 4
    adapters = sum(p.numel() for n_, p in model.named_parameters() if SITE_ATTR in n_ and not n_.endswith("bias"))
    assert adapters == 4 * L * (k + d)
    assert model.compacter.rules["default"].A.shape == (n, n, n)


def test_shared_rule_is_one_module_in_the_tree_and_state_dict():
    model, batch = tiny("t5")
    compacter.add_adapters(model, _config("compacter"))
    keys = [k for k in model.state_dict() if k.endswith(".A")]
    assert keys == ["compacter.rules.default.A"]
    model(**batch).loss.backward()
    assert model.compacter.rules["default"].A.grad is not None


@pytest.mark.parametrize("overrides", [
    dict(factorized_phm=False), dict(shared_phm_rule=False), dict(learn_phm=False), dict(phm_rank=2),
    dict(shared_phm_rule=False, learn_phm=False),
    dict(phm_init="glorot-normal"), dict(phm_init="normal"), dict(phm_rule_init="uniform"), dict(phm_init_range=0.05),
    dict(phm_init="glorot-uniform-released"), dict(phm_init="glorot-normal-released"),
    dict(adapter_bias=False), dict(bottleneck_dim=16), dict(phm_dim=8, bottleneck_dim=16),
    *[dict(non_linearity=a) for a in ("gelu", "relu", "silu", "swish", "tanh", "identity")],
])
def test_phm_options(overrides):
    model, batch = tiny("t5")
    config = _config("compacter", **overrides)
    compacter.add_adapters(model, config)
    adapter = next(site for _, site in iter_sites(model))["default"]
    assert adapter.down.factorized is config.factorized_phm and adapter.down.rank == config.phm_rank
    assert (adapter.down.rule is None) is config.shared_phm_rule
    assert (adapter.down.bias is None) is (not config.adapter_bias)
    if config.bottleneck_dim:
        assert adapter.bottleneck == config.bottleneck_dim
    rules = [p for n, p in model.named_parameters() if n.endswith(".A")]
    assert rules and all(p.requires_grad is config.learn_phm for p in rules)
    compacter.set_active_adapter(model, "default")  # activating again keeps frozen rules frozen
    assert all(p.requires_grad is config.learn_phm for p in rules)
    model.train()
    model(**batch).loss.backward()
    assert all((p.grad is not None) is config.learn_phm for p in rules)


def test_lowrank_and_linear_options():
    model, batch = tiny("bert")
    compacter.add_adapters(model, _config("adapter-lowrank", lowrank_rank=3))
    adapter = next(site for _, site in iter_sites(model))["default"]
    assert adapter.down.u.shape == (32, 3)
    model, batch = tiny("bert")  # Adapter-LowRank's u, v follow phm_init too
    compacter.add_adapters(model, _config("adapter-lowrank", phm_init="glorot-uniform-released"))
    adapter = next(site for _, site in iter_sites(model))["default"]
    bound = math.sqrt(6 / (adapter.down.u.shape[0] + 1))  # standard Glorot bound of u [k, 1]
    assert bound < adapter.down.u.abs().max() <= math.sqrt(2) * bound
    model, batch = tiny("bert")
    compacter.add_adapters(model, _config("adapter", adapter_init_std=0.5))
    adapter = next(site for _, site in iter_sites(model))["default"]
    assert 0.3 < adapter.down.weight.std().item() < 0.7


@pytest.mark.parametrize("train_layer_norms,train_head", [(True, True), (False, True), (True, False), (False, False)])
def test_norm_and_head_switches(train_layer_norms, train_head):
    model, batch = tiny("distilbert")
    config = _config("compacter++", train_layer_norms=train_layer_norms, train_head=train_head)
    compacter.add_adapters(model, config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("LayerNorm" in n or "layer_norm" in n for n in trainable) is train_layer_norms
    assert any(n.startswith(("classifier.", "pre_classifier.")) for n in trainable) is train_head


def test_custom_head_modules():
    model, _ = tiny("bert")
    compacter.add_adapters(model, _config("compacter++", head_modules=["bert.pooler"]))  # a path: inside the body too
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "bert.pooler.dense.weight" in trainable and "classifier.weight" not in trainable


@pytest.mark.parametrize("arch, head, frozen", [
    ("bert", {"classifier"}, {"bert.pooler"}),  # BERT's pooler is pretrained: part of the body
    ("deberta-v2", {"pooler", "classifier"}, set()),  # DeBERTa's pooler is new, outside the body: the head
    ("distilbert", {"pre_classifier", "classifier"}, set()),
])
def test_the_head_is_what_lies_outside_the_pretrained_body(arch, head, frozen):
    model, _ = tiny(arch)
    compacter.add_adapters(model, _config("compacter++"))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    for module in head:  # trained whole
        params = [n for n, _ in model.get_submodule(module).named_parameters()]
        assert params and all(f"{module}.{n}" in trained for n in params), module
    assert not [n for n in trained if n.startswith(tuple(f"{m}." for m in frozen))]


_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=64)
_MODERNBERT = dict(_SMALL, pad_token_id=0, num_labels=2, max_position_embeddings=64)
_SEQ_CLS = {  # a tiny *ForSequenceClassification of each family
    "bert": lambda: T.BertForSequenceClassification(T.BertConfig(**_SMALL)),
    "distilbert": lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                                                                  vocab_size=64)),
    "albert": lambda: T.AlbertForSequenceClassification(T.AlbertConfig(**_SMALL, embedding_size=16)),
    "deberta-v2": lambda: T.DebertaV2ForSequenceClassification(T.DebertaV2Config(**_SMALL)),
    "modernbert": lambda: T.ModernBertForSequenceClassification(T.ModernBertConfig(**_MODERNBERT)),
    "llama": lambda: T.LlamaForSequenceClassification(T.LlamaConfig(**_SMALL, num_key_value_heads=1, pad_token_id=0)),
    # question answering, where the new head is not one "classifier": XLNet's three modules, BigBird's qa_classifier
    "xlnet-qa": lambda: T.XLNetForQuestionAnswering(T.XLNetConfig(d_model=32, n_layer=2, n_head=2, d_inner=64, vocab_size=64)),
    "bigbird-qa": lambda: T.BigBirdForQuestionAnswering(T.BigBirdConfig(**_SMALL, attention_type="original_full")),
    "bart": lambda: T.BartForSequenceClassification(T.BartConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                                                                 decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                                                 vocab_size=64, max_position_embeddings=64)),
}


@pytest.mark.parametrize("method, kw", [("compacter++", {}), ("compacter", {"train_layer_norms": False}), ("bitfit", {})])
@pytest.mark.parametrize("arch", list(_SEQ_CLS))
def test_the_head_we_train_is_what_the_peers_train(arch, method, kw):
    """README: an encoder's new task head is trained whole by our methods and by the peers (PEFT's
    modules_to_save and AdapterHub take peers._outside_body). The peers took every child outside
    the body, and so trained ModernBERT's pretrained ``head`` (dense + norm), which ours keep frozen
    but for the norm. Outside the body, ours train the peers' modules whole and besides them only
    what the method trains everywhere (layer norms, biases)."""
    from compacter.inject import body_prefix
    from compacter.peers import _outside_body

    torch.manual_seed(0)
    model = _SEQ_CLS[arch]()
    body = body_prefix(model)
    peers = {f"{child}.{n}" for child in _outside_body(model) for n, _ in model.get_submodule(child).named_parameters()}
    if arch == "bigbird-qa":  # not in the placement table: BERT's layout, named
        kw = dict(kw, attention_modules=[r".*layer\.\d+\.attention\.output\.dense"], ffn_modules=[r".*layer\.\d+\.output\.dense"])
    if arch == "xlnet-qa":  # nor is XLNet, whose attention output is a bare Parameter: feed-forward sites only
        kw = dict(kw, ffn_modules=[r".*layer\.\d+\.ff\.layer_2"], after_attention=False)
    compacter.add_adapters(model, _config(method, **kw))
    ours = {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith((body + ".", STATE_ATTR + "."))}
    assert peers and peers <= ours
    besides = {n for n in ours - peers if not (n.endswith(".bias") and method == "bitfit")}
    assert all(is_norm(model.get_submodule(n.rsplit(".", 1)[0])) for n in besides)
    if arch == "modernbert":
        assert "head.dense.weight" not in ours | peers
        assert ("head.norm.weight" in ours) == kw.get("train_layer_norms", True)  # trained with every layer norm


_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=64)


@pytest.mark.parametrize("build, head, frozen", [
    # multiple-choice heads: ELECTRA's (and XLNet's, XLM's) new sequence_summary stayed frozen at its random start
    (lambda: T.ElectraForMultipleChoice(T.ElectraConfig(**_SMALL, embedding_size=32)), {"sequence_summary", "classifier"}, set()),
    (lambda: T.GPT2DoubleHeadsModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64)),
     {"multiple_choice_head"}, {"lm_head", "transformer.wte"}),  # the LM head is pretrained (tied to the embeddings)
])
def test_new_heads_train_and_pretrained_parts_do_not(build, head, frozen):
    torch.manual_seed(0)
    model = build()
    compacter.add_adapters(model, _config("compacter++"))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    for module in head:
        params = [n for n, _ in model.get_submodule(module).named_parameters()]
        assert params and all(f"{module}.{n}" in trained for n in params), module
    assert not [n for n in trained if n.startswith(tuple(f"{m}." for m in frozen))]


@pytest.mark.parametrize("add_missing", [True, False])
def test_bitfit_on_bias_free_t5(add_missing):
    model, batch = tiny("t5")
    base = _logits(model, batch)
    compacter.add_adapters(model, _config("bitfit", add_missing_biases=add_missing))
    q = model.get_submodule("encoder.block.0.layer.0.SelfAttention.q")
    assert (q.bias is not None) is add_missing
    assert model.get_submodule("lm_head").bias is None  # the output layer stays frozen and bias-free
    _train(model, batch)
    with compacter.disable_adapters(model):
        assert q.bias is None
        torch.testing.assert_close(_logits(model, batch), base, rtol=0, atol=0)
    if add_missing:  # a second BitFit adapter starts from zero biases, not from the first one's trained ones
        assert q.bias.abs().sum() > 0
        compacter.add_adapters(model, _config("bitfit"), name="second")
        assert q.bias.abs().sum() == 0


def test_full_fine_tuning_trains_everything_and_cannot_be_disabled():
    model, batch = tiny("bert")
    compacter.add_adapters(model, CompacterConfig("full"))
    trainable, total = compacter.count_parameters(model)
    assert trainable == total
    with pytest.raises(ValueError, match="full"):
        compacter.set_active_adapter(model, None)
    with pytest.raises(ValueError, match="full"):
        compacter.add_adapters(model, _config("compacter"), name="other")


def test_named_adapters_switch_and_delete():
    model, batch = tiny("t5")
    base = _logits(model, batch)
    compacter.add_adapters(model, _config("compacter"), name="a")
    _train(model, batch)
    out_a = _logits(model, batch)
    compacter.add_adapters(model, _config("pfeiffer"), name="b")
    assert compacter.active_adapter(model) == "b" and compacter.list_adapters(model) == ["a", "b"]
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".a." in n or n.endswith(".a.A"))
    _train(model, batch)
    out_b = _logits(model, batch)
    compacter.set_active_adapter(model, "a")
    torch.testing.assert_close(_logits(model, batch), out_a, rtol=0, atol=0)
    compacter.set_active_adapter(model, "b")
    torch.testing.assert_close(_logits(model, batch), out_b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="already"):
        compacter.add_adapters(model, _config("compacter"), name="a")
    with pytest.raises(ValueError, match="no adapter named 'c'"):
        compacter.set_active_adapter(model, "c")
    compacter.delete_adapter(model, "a")
    compacter.delete_adapter(model, "b")
    assert not hasattr(model, STATE_ATTR) and not list(iter_sites(model))
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(_logits(model, batch), base, rtol=0, atol=0)


def _adapted_pair(arch, method):
    """``method`` as "default" beside an adapter that trains other base parameters ("other":
    BitFit's biases beside Compacter++, Compacter++ beside BitFit), "default" active."""
    model, batch = tiny(arch)
    compacter.add_adapters(model, _config(method))
    compacter.add_adapters(model, _config("bitfit" if method != "bitfit" else "compacter++"), name="other")
    compacter.set_active_adapter(model, "default")
    return model, batch


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("method", ["compacter++", "bitfit"])
def test_state_dict_holds_each_tensor_once_and_round_trips(arch, method, tmp_path):
    """A trained layer norm (head, BitFit bias) is registered in its owner and in the state (as
    the active adapter's copy, or as the base original where only another adapter trains it):
    state_dict keeps it once, under the owner's key, so save_pretrained (and the Trainer's
    checkpoints) work; load_state_dict of that state_dict is strict-clean and restores it, also
    with assign=True (the state takes the new Parameters)."""
    model, batch = _adapted_pair(arch, method)
    _train(model, batch, steps=2)
    expected = _logits(model, batch)
    for active in ("default", "other", None):
        compacter.set_active_adapter(model, active)
        state = model.state_dict()
        storages = [(v.untyped_storage().data_ptr(), v.storage_offset(), v.shape) for k, v in state.items()]
        tied = {k for k in state if k.endswith(("embed_tokens.weight", "lm_head.weight", "shared.weight", "word_embeddings.weight"))}
        assert len(set(storages)) >= len(storages) - len(tied), active  # only transformers' own tied embeddings repeat
        model.save_pretrained(tmp_path / f"full-{active}")
    compacter.set_active_adapter(model, "default")
    for assign in (False, True):
        fresh, _ = _adapted_pair(arch, method)
        assert not fresh.load_state_dict(model.state_dict(), strict=True, assign=assign).missing_keys
        torch.testing.assert_close(_logits(fresh, batch), expected, rtol=0, atol=0)
        compacter.save_adapters(fresh, tmp_path / f"adapter-{assign}")
        compacter.set_active_adapter(fresh, "other")
        compacter.set_active_adapter(fresh, "default")  # switching restores what was loaded
        torch.testing.assert_close(_logits(fresh, batch), expected, rtol=0, atol=0)
        again, _ = tiny(arch)
        compacter.load_adapters(again, tmp_path / f"adapter-{assign}")
        torch.testing.assert_close(_logits(again, batch), expected, rtol=0, atol=0)  # the saved adapter holds it


@pytest.mark.parametrize("arch", ["bert", "t5"])
@pytest.mark.parametrize("kept, deleted", [("compacter++", "bitfit"), ("bitfit", "compacter++")])
@pytest.mark.parametrize("active", ["kept", "deleted"])
def test_after_delete_adapter_the_model_is_one_that_never_had_it(arch, kept, deleted, active, tmp_path):
    """Deleting an adapter forgets the base originals only it trained (BitFit's biases beside
    Compacter++): state_dict has the keys of a model that never had it, save_pretrained works, and
    that state_dict loads strictly into such a model."""
    model, batch = tiny(arch)
    compacter.add_adapters(model, _config(kept), name="kept")
    _train(model, batch, steps=2)
    compacter.add_adapters(model, _config(deleted), name="deleted")
    compacter.set_active_adapter(model, active)
    compacter.delete_adapter(model, "deleted")
    compacter.set_active_adapter(model, "kept")
    never, _ = tiny(arch)
    compacter.add_adapters(never, _config(kept), name="kept")
    assert model.state_dict().keys() == never.state_dict().keys()
    model.save_pretrained(tmp_path)
    never.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(_logits(never, batch), _logits(model, batch), rtol=0, atol=0)
    compacter.delete_adapter(model, "kept")
    base, _ = tiny(arch)
    assert model.state_dict().keys() == base.state_dict().keys()


@pytest.mark.parametrize("training", [False, True])
def test_new_adapters_take_the_mode_of_the_model(training, tmp_path):
    """Adapters added to (or loaded into) a model in eval mode are in eval mode: built in training
    mode, their PHM layers never used the eval-mode weight cache until model.eval() was called again."""
    from compacter.phm import PHMLinear

    model, batch = tiny("t5")
    model.train(training)
    compacter.add_adapters(model, _config("compacter"), name="a")
    compacter.save_adapters(model, tmp_path)
    compacter.load_adapters(model, tmp_path, name="b")
    assert {m.training for m in model.modules()} == {training}
    if not training:
        _logits(model, batch)
        layers = [m for n, m in model.named_modules() if isinstance(m, PHMLinear) and f"{SITE_ATTR}.b." in n]
        assert layers and all(m._cache is not None for m in layers)


def _two_adapters(model, train_batch=None):
    for name, method in (("a", "compacter++"), ("b", "bitfit")):
        compacter.add_adapters(model, _config(method), name=name)
        if train_batch is not None:
            _train(model, train_batch, steps=2)
    return model


@pytest.mark.parametrize("arch", ["t5", "bert", "gpt2"])
def test_a_save_pretrained_checkpoint_reloads_as_the_readme_says(arch, tmp_path):
    """The README's recipe for a Trainer checkpoint: from_pretrained of the base model, the same
    adapters, load_state_dict(strict=False) of the saved file; from_pretrained of the checkpoint
    alone gives neither the base nor the adapted model."""
    from safetensors.torch import load_file

    model, batch = tiny(arch)
    model.save_pretrained(tmp_path / "base")
    base_out = _logits(model, batch)
    _two_adapters(model, batch)
    expected = {}
    for name in ("b", "a"):  # saved with "a" active
        compacter.set_active_adapter(model, name)
        expected[name] = _logits(model, batch)
    model.save_pretrained(tmp_path / "run")
    reloaded = _two_adapters(type(model).from_pretrained(tmp_path / "base").eval())
    compacter.set_active_adapter(reloaded, "a")
    result = reloaded.load_state_dict(load_file(tmp_path / "run" / "model.safetensors"), strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith(("embed_tokens.weight", "lm_head.weight")) for k in result.missing_keys), result.missing_keys  # tied
    for name in ("a", "b"):
        compacter.set_active_adapter(reloaded, name)
        torch.testing.assert_close(_logits(reloaded, batch), expected[name], rtol=0, atol=0)
    with compacter.disable_adapters(reloaded):
        torch.testing.assert_close(_logits(reloaded, batch), base_out, rtol=0, atol=0)
    plain = type(model).from_pretrained(tmp_path / "run").eval()
    assert not hasattr(plain, STATE_ATTR) and not torch.equal(_logits(plain, batch), base_out)


def test_state_dict_keys_follow_the_active_adapter():
    """As documented (README, _drop_shared): a state_dict saved while "b" is active loads strictly
    with "b" active, and a strict load with "a" active reports b's copies missing."""
    model, batch = tiny("t5")
    _two_adapters(model, batch)
    saved = model.state_dict()  # "b" active
    compacter.set_active_adapter(model, "a")
    assert model.state_dict().keys() != saved.keys()
    fresh = _two_adapters(tiny("t5")[0])
    compacter.set_active_adapter(fresh, "a")
    with pytest.raises(RuntimeError, match=r"Missing key.*compacter\.tuned\.b\."):
        fresh.load_state_dict(saved)
    compacter.set_active_adapter(fresh, "b")
    fresh.load_state_dict(saved)
    for name in ("a", "b"):
        compacter.set_active_adapter(fresh, name)
        compacter.set_active_adapter(model, name)
        torch.testing.assert_close(_logits(fresh, batch), _logits(model, batch), rtol=0, atol=0)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m).__name__ for m in model.modules()], \
        sum(len(m._forward_hooks) for m in model.modules()), [p.requires_grad for p in model.parameters()]


def _assert_unchanged(model, snap):
    state, types, hooks, flags = _snapshot(model)
    assert state.keys() == snap[0].keys() and all(torch.equal(state[k], snap[0][k]) for k in state)
    assert types == snap[1] and hooks == snap[2] and flags == snap[3]


def test_indivisible_dimension_leaves_the_model_unmodified():
    model, _ = tiny("t5")
    snap = _snapshot(model)
    with pytest.raises(ValueError) as err:
        compacter.add_adapters(model, CompacterConfig("compacter", phm_dim=4, bottleneck_dim=6))
    msg = str(err.value)
    assert "SelfAttention.o" in msg and "out=6" in msg and "n=4" in msg
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("overrides, grow", [({}, "lower reduction_factor or set bottleneck_dim"),
                                               ({"bottleneck_dim": 1}, "set a larger bottleneck_dim")])
def test_a_phm_dim_that_fits_no_bottleneck_says_to_grow_the_bottleneck(overrides, grow):
    """phm_dim 3 on a 32-wide model with a bottleneck of 1: the message ended at 'no phm_dim > 1
    divides both 32 and 1', without saying which setting makes one divide."""
    model, _ = tiny("t5")
    snap = _snapshot(model)
    with pytest.raises(ValueError) as err:
        compacter.add_adapters(model, CompacterConfig("compacter", phm_dim=3, **overrides))
    msg = str(err.value)
    assert "no phm_dim > 1 divides both 32 and 1" in msg and grow in msg and "divisors of 32 [2, 4, 8, 16, 32]" in msg, msg
    _assert_unchanged(model, snap)


def test_an_embedding_target_is_refused_and_changes_nothing():
    model, _ = tiny("llama")
    snap = _snapshot(model)
    with pytest.raises(ValueError, match=r"output width of model\.embed_tokens \(Embedding\)"):
        compacter.add_adapters(model, CompacterConfig("compacter++", reduction_factor=4, ffn_modules=[r"model\.embed_tokens"]))
    _assert_unchanged(model, snap)


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mix = torch.nn.Linear(16, 16)
        self.ff = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x):
        x = self.norm(x + self.mix(x))
        return x + self.ff(x)


class _Custom(torch.nn.Module):
    """A model transformers does not know: only a user-supplied placement can serve it."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([_Block(), _Block()])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_unknown_architecture_says_how_to_name_modules_and_changes_nothing():
    model = _Custom()
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="attention_modules=.*ffn_modules="):
        compacter.add_adapters(model, CompacterConfig("compacter", bottleneck_dim=4))
    _assert_unchanged(model, snap)


def test_user_supplied_placement_works_on_any_model():
    torch.manual_seed(0)
    model = _Custom()
    x = torch.randn(3, 16)
    base = model(x).detach()
    config = CompacterConfig("compacter", bottleneck_dim=4, attention_modules=[r"blocks\.\d+\.mix"], ffn_modules=[r"blocks\.\d+\.ff\.2"])
    compacter.add_adapters(model, config)
    assert sorted(t for t, _ in iter_sites(model)) == ["blocks.0.ff.2", "blocks.0.mix", "blocks.1.ff.2", "blocks.1.mix"]
    model(x).sum().backward()
    assert model.blocks[0].norm.weight.grad is not None and model.blocks[0].mix.weight.grad is None
    with compacter.disable_adapters(model):
        torch.testing.assert_close(model(x), base, rtol=0, atol=0)


def test_an_ffn_only_method_needs_only_ffn_patterns_on_an_unknown_model():
    model = _Custom()
    with pytest.raises(ValueError, match=r"this one needs ffn_modules\)"):
        compacter.add_adapters(model, CompacterConfig("compacter++", bottleneck_dim=4, attention_modules=[r"blocks\.\d+\.mix"]))
    compacter.add_adapters(model, CompacterConfig("compacter++", bottleneck_dim=4, ffn_modules=[r"blocks\.\d+\.ff\.2"]))
    assert sorted(t for t, _ in iter_sites(model)) == ["blocks.0.ff.2", "blocks.1.ff.2"]
    # the command-line form the error shows parses to the same config
    from compacter.cli import parse_key_values

    assert parse_key_values(['ffn_modules=[".*mlp\\\\.fc_out"]']) == {"ffn_modules": [r".*mlp\.fc_out"]}


def test_patterns_that_match_nothing_raise():
    model, _ = tiny("bert")
    with pytest.raises(ValueError, match="no module of BertForSequenceClassification matches the ffn patterns"):
        compacter.add_adapters(model, _config("compacter++", ffn_modules=[r"nothing\.here"]))


def test_patterns_skip_the_modules_of_adapters_already_attached(tmp_path):
    """A second adapter's pattern that also matches the first adapter's own modules (its up
    projections, its site) targets the base model's modules only: nested in the first adapter, it
    would load into no fresh model."""
    model, batch = tiny("bert")
    compacter.add_adapters(model, _config("compacter"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"matches only modules of the adapters already attached: \['bert\.encoder.*compacter_adapters"):
        compacter.add_adapters(model, _config("pfeiffer", ffn_modules=[r".*\.up"]), name="second")
    assert compacter.list_adapters(model) == ["default"] and {n: p for n, p in model.named_parameters()}.keys() == before.keys()
    compacter.add_adapters(model, _config("pfeiffer", ffn_modules=[r".*output\.dense.*"]), name="third")  # the site and its adapters match too
    targets = sorted(t for t, site in iter_sites(model) if "third" in site)
    assert targets == [f"bert.encoder.layer.{i}.{m}output.dense" for i in (0, 1) for m in ("attention.", "")]
    model(**batch)
    compacter.save_adapters(model, tmp_path / "third", name="third")
    fresh, _ = tiny("bert")
    compacter.load_adapters(fresh, tmp_path / "third")  # the checkpoint fits the base model
    assert sorted(t for t, _ in iter_sites(fresh)) == targets


def test_adapters_follow_model_dtype_and_work_under_bf16():
    model, batch = tiny("llama")
    model = model.to(torch.bfloat16)
    compacter.add_adapters(model, _config("compacter"))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.isfinite(model(**batch).loss.float())


def test_generation_with_adapters_uses_the_adapter():
    model, batch = tiny("t5")
    compacter.add_adapters(model, _config("compacter++"))
    _train(model, batch, steps=5, lr=5e-2)
    model.eval()  # generation goes through the eval cache of W
    kw = dict(attention_mask=batch["attention_mask"], max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
    out = model.generate(batch["input_ids"], **kw)
    with compacter.disable_adapters(model):
        base = model.generate(batch["input_ids"], **kw)
    assert out.sequences.shape[0] == 2 and not torch.allclose(out.scores[0], base.scores[0])
    start = torch.full((2, 1), model.config.decoder_start_token_id)
    with torch.no_grad():  # the first generated step is the adapted model's forward pass
        first = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=start).logits[:, -1]
    torch.testing.assert_close(out.scores[0], first)


@pytest.mark.parametrize("name", ["my.adapter", "", 7, "items", "update", "role", "training"])
def test_an_unusable_adapter_name_is_refused_and_changes_nothing(name):
    for config in (_config("compacter"), CompacterConfig("full")):  # full would overwrite nothing either
        model, _ = tiny("bert")
        snap = _snapshot(model)
        with pytest.raises(ValueError, match="adapter name"):
            compacter.add_adapters(model, config, name=name)
        _assert_unchanged(model, snap)
        assert not hasattr(model, STATE_ATTR) and all(p.requires_grad for p in model.parameters())


def test_an_adapter_named_like_the_head_is_not_trained_as_another_adapters_head():
    model, _ = tiny("bert")  # BERT's head module is called "classifier"
    compacter.add_adapters(model, _config("compacter"), name="classifier")
    compacter.add_adapters(model, _config("compacter++"), name="second")
    tuned = getattr(model, STATE_ATTR).tuned["second"]
    assert tuned and not [k for k in tuned if SITE_ATTR in k]


@pytest.mark.parametrize("arch", ["t5", "bert", "llama", "gpt2", "bart"])
def test_adapterdrop_leaves_each_stacks_first_layers_without_adapters(arch):
    """AdapterDrop (drop_first_layers=N): no site in the first N layers of the encoder nor of the
    decoder, Houlsby's sites everywhere else."""
    from compacter.inject import layer_indices

    model, batch = tiny(arch)
    houlsby = {name for name, _ in iter_sites(compacter.add_adapters(tiny(arch)[0], _config("adapter")))}
    compacter.add_adapters(model, _config("adapterdrop", drop_first_layers=1))
    kept = {name for name, _ in iter_sites(model)}
    with torch.no_grad():
        model(**batch)  # runs
    layers = layer_indices(sorted(houlsby))
    assert kept == {name for name in houlsby if layers[name] >= 1}
    assert kept and kept < houlsby
    if arch in ("t5", "bart"):  # both stacks lose their layer 0, both keep their layer 1
        assert {name.split(".")[0 if arch == "t5" else 1] for name in houlsby - kept} == {"encoder", "decoder"}
        assert {name.split(".")[0 if arch == "t5" else 1] for name in kept} == {"encoder", "decoder"}


def test_adapterdrop_preset_is_the_papers_and_refuses_a_model_it_would_leave_without_adapters():
    config = CompacterConfig("adapterdrop")
    assert (config.adapter_type, config.after_attention, config.after_ffn, config.drop_first_layers) == ("linear", True, True, 5)
    assert config.learning_rate == 3e-4
    model = tiny("t5")[0]  # 2 layers per stack
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"drop_first_layers=5 leaves no attention site of T5ForConditionalGeneration.*lower drop_first_layers"):
        compacter.add_adapters(model, _config("adapterdrop"))
    assert not hasattr(model, STATE_ATTR) and not list(iter_sites(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_sites_layer_is_the_number_that_varies_within_its_stack():
    from compacter.inject import layer_indices

    t5 = [f"{stack}.block.{i}.layer.{j}.DenseReluDense.wo" for stack, j in (("encoder", 1), ("decoder", 2)) for i in range(3)]
    assert list(layer_indices(t5).values()) == [0, 1, 2, 0, 1, 2]
    wrapped = [f"0.encoder.layer.{i}.attention.output.dense" for i in range(7)]  # a SentenceTransformer-style wrapper
    assert list(layer_indices(wrapped).values()) == list(range(7))
    assert layer_indices(["model.layers.0.mlp.down_proj"]) == {"model.layers.0.mlp.down_proj": 0}  # one layer
    assert layer_indices(["adapter.out"]) == {"adapter.out": None}


def test_adapterdrop_in_a_wrapper_counts_the_wrapped_models_layers_and_refuses_albert():
    model = torch.nn.Sequential(T.BertModel(T.BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                                         intermediate_size=64, vocab_size=99)))
    config = _config("adapterdrop", drop_first_layers=2, attention_modules=[r".*layer\.\d+\.attention\.output\.dense"],
                     ffn_modules=[r".*layer\.\d+\.output\.dense"])
    compacter.add_adapters(model, config)
    assert {name for name, _ in iter_sites(model)} == {"0.encoder.layer.2.attention.output.dense", "0.encoder.layer.2.output.dense"}
    with pytest.raises(ValueError, match=r"drop_first_layers=3 leaves no attention site of BertModel: it has 3 layer\(s\) per stack"):
        compacter.add_adapters(T.BertModel(model[0].config), _config("adapterdrop", drop_first_layers=3))
    albert = T.AlbertModel(T.AlbertConfig(embedding_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                          intermediate_size=64, vocab_size=99))
    with pytest.raises(ValueError, match="ALBERT runs one layer's weights"):
        compacter.add_adapters(albert, _config("adapterdrop", drop_first_layers=1))
    assert not list(iter_sites(albert))


def test_an_adapterdrop_adapter_round_trips_through_its_checkpoint(tmp_path):
    model, batch = tiny("t5")
    compacter.add_adapters(model, _config("adapterdrop", drop_first_layers=1))
    for p in compacter.trainable_parameters(model):
        torch.nn.init.normal_(p, std=0.1)  # not the zero-output start
    compacter.save_adapters(model, tmp_path / "ad")
    fresh = tiny("t5")[0]
    compacter.load_adapters(fresh, tmp_path / "ad")
    assert {n for n, _ in iter_sites(fresh)} == {n for n, _ in iter_sites(model)}
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, fresh(**batch).logits)


def _tied_mlm():
    """A tiny BertForMaskedLM: ``cls.predictions.bias`` and ``cls.predictions.decoder.bias`` are
    one Parameter (as the word embeddings and the decoder's weight are), and its batch."""
    torch.manual_seed(0)
    model = T.BertForMaskedLM(T.BertConfig(**_ENC)).eval()
    assert model.cls.predictions.bias is model.cls.predictions.decoder.bias
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, _ENC["vocab_size"], (2, 7), generator=g)
    return model, dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())


def test_a_tied_base_parameter_gets_one_trained_copy_under_all_its_names():
    """BitFit on BertForMaskedLM: the tied LM bias got a copy per name, the tie was broken, the
    copy the forward does not use had no gradient, and count_parameters counted the bias twice."""
    model, batch = _tied_mlm()
    base = model.cls.predictions.bias.detach().clone()
    expected = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n)  # each tensor once
    compacter.add_adapters(model, _config("bitfit"))
    bias = model.cls.predictions.bias
    assert bias is model.cls.predictions.decoder.bias and bias.requires_grad
    tuned = get_state(model).tuned["default"]
    assert "cls/predictions/bias" in tuned and "cls/predictions/decoder/bias" not in tuned
    assert compacter.count_parameters(model)[0] == expected == sum(p.numel() for p in compacter.trainable_parameters(model))
    model.train()
    model(**batch).loss.backward()
    assert bias.grad is not None and bias.grad.abs().sum() > 0
    _train(model, batch, steps=2, lr=1e-1)
    assert model.cls.predictions.bias is model.cls.predictions.decoder.bias is bias and not torch.equal(bias, base)


def test_switching_disabling_and_deleting_keep_a_tie():
    model, batch = _tied_mlm()
    original = model.cls.predictions.bias
    base_out = _logits(model, batch)
    base_keys = model.state_dict().keys()
    for name in ("a", "b"):
        compacter.add_adapters(model, _config("bitfit"), name=name)
        _train(model, batch, steps=2, lr=1e-1)
    predictions = model.cls.predictions
    for name in ("a", "b", None):
        compacter.set_active_adapter(model, name)
        assert predictions.bias is predictions.decoder.bias
        assert (predictions.bias is original) is (name is None)
    assert torch.equal(_logits(model, batch), base_out)
    compacter.set_active_adapter(model, "a")
    with compacter.disable_adapters(model):
        assert predictions.bias is predictions.decoder.bias is original
    assert predictions.bias is predictions.decoder.bias is not original
    compacter.delete_adapter(model, "a")
    assert predictions.bias is predictions.decoder.bias is original  # "b" inactive: the base's again
    compacter.set_active_adapter(model, "b")
    assert predictions.bias is predictions.decoder.bias is not original
    compacter.delete_adapter(model, "b")
    assert predictions.bias is predictions.decoder.bias is original
    assert model.state_dict().keys() == base_keys and torch.equal(_logits(model, batch), base_out)


def test_a_save_pretrained_checkpoint_of_a_tied_model_reloads_as_the_readme_says(tmp_path):
    """save_pretrained keeps one name of a tie; the other was reported missing
    (``compacter.base.cls/predictions/decoder/bias``). A strict load of the model's own
    state_dict, also with assign=True, keeps the tie."""
    from safetensors.torch import load_file

    model, batch = _tied_mlm()
    compacter.add_adapters(model, _config("bitfit"))
    _train(model, batch, steps=2, lr=1e-1)
    expected = _logits(model, batch)
    model.save_pretrained(tmp_path)
    fresh, _ = _tied_mlm()
    compacter.add_adapters(fresh, _config("bitfit"))
    result = fresh.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys == ["cls.predictions.decoder.weight"]  # transformers' tied embeddings, as the README says
    torch.testing.assert_close(_logits(fresh, batch), expected, rtol=0, atol=0)
    assert fresh.cls.predictions.bias is fresh.cls.predictions.decoder.bias
    for assign in (False, True):
        again, _ = _tied_mlm()
        compacter.add_adapters(again, _config("bitfit"))
        assert not again.load_state_dict(model.state_dict(), strict=True, assign=assign).missing_keys
        bias = again.cls.predictions.bias
        assert bias is again.cls.predictions.decoder.bias is get_state(again).tuned["default"]["cls/predictions/bias"]
        torch.testing.assert_close(_logits(again, batch), expected, rtol=0, atol=0)
