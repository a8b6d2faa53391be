"""The peer methods' options (--adapter with --method peft-lora): bad ones are clear errors before the model is touched."""

import pytest
import torch
import transformers as T

from .tiny import tiny

peft = pytest.importorskip("peft")


def _peft_lora(options):
    from compacter.peers import add_peer

    model, batch = tiny("bert")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        return add_peer(model, "peft-lora", "encoder", options), batch
    except ValueError:  # the model is as it was: no LoRA layer, no head wrapper
        assert {n: p for n, p in model.named_parameters()}.keys() == before.keys()
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
        raise


@pytest.mark.parametrize("options, message", [
    ({"nosuch": 1}, r"--adapter nosuch: not an option of peft\.LoraConfig for --method peft-lora; allowed: .*\blora_alpha\b.*\br\b"),
    ({"task_type": "CAUSAL_LM"}, r"--adapter task_type: .*set by compacter"),
    ({"r": "abc"}, r"--adapter r='abc' \(--method peft-lora\): expected an integer, got str"),
    ({"r": 2.5}, r"--adapter r=2\.5 \(--method peft-lora\): the LoRA rank must be a positive integer"),
    ({"r": True}, r"--adapter r=True .*expected an integer, got bool"),
    ({"r": 0}, r"--adapter r=0 \(--method peft-lora\): the LoRA rank must be a positive integer"),
    ({"lora_dropout": 1.5}, r"--adapter lora_dropout=1\.5 .*\[0, 1\)"),
    ({"bias": "some"}, r"--adapter bias='some' .*expected one of 'none', 'all', 'lora_only'"),
    ({"target_modules": [1, 2]}, r"--adapter target_modules=\[1, 2\] .*expected a list of strings, a string or null"),
    ({"use_dora": "yes"}, r"--adapter use_dora='yes' .*expected true or false"),
    ({"r": 4, "layers_pattern": "layer"},  # LoraConfig's own check: the option it refuses is named
     r"--adapter layers_pattern='layer' \(--method peft-lora\): peft\.LoraConfig refuses it: .*layers_to_transform"),
])
def test_bad_lora_options_name_adapter_and_the_key(options, message):
    with pytest.raises(ValueError, match=message):
        _peft_lora(options)


def test_good_lora_options_still_apply():
    model, batch = _peft_lora({"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["query", "value"]})
    ranks = {p.shape[0] for n, p in model.named_parameters() if "lora_A" in n}
    assert ranks == {4} and torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("options", [{"lora_alpha": 16.5}, {"init_lora_weights": "pissa_niter_4"}])
def test_values_peft_accepts_beyond_its_annotations_pass(options):
    """lora_alpha is annotated int but PEFT scales by a float alpha too; init_lora_weights' Literal
    holds the placeholder 'pissa_niter_[number of iters]'. Both were refused by our pre-check."""
    model, batch = _peft_lora(options)
    assert torch.isfinite(model(**batch).loss)


_ENC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=96, max_position_embeddings=64,
            num_labels=2)
# types PEFT has no default LoRA targets for: ours, the query and value projections (Phi-3's fused qkv_proj)
_NO_PEFT_DEFAULT = {
    "distilbert": (lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                                                                  vocab_size=96, max_position_embeddings=64)),
                   "encoder", {"q_lin", "v_lin"}, 4),  # 2 layers x 2
    "albert": (lambda: T.AlbertForSequenceClassification(T.AlbertConfig(**_ENC, embedding_size=16)),
               "encoder", {"query", "value"}, 2),  # one shared layer
    "phi3": (lambda: T.Phi3ForCausalLM(T.Phi3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                                    num_key_value_heads=1, vocab_size=96, max_position_embeddings=64, pad_token_id=0)),
             "decoder", {"qkv_proj"}, 2),
}


@pytest.mark.parametrize("arch", list(_NO_PEFT_DEFAULT))
def test_lora_trains_where_peft_has_no_default_targets(arch):
    """PEFT's own error ("Please specify target_modules") stopped --method peft-lora on DistilBERT, ALBERT and Phi-3."""
    from compacter.peers import _outside_body, add_peer

    build, family, targets, count = _NO_PEFT_DEFAULT[arch]
    torch.manual_seed(0)
    model = build()
    head = sum(p.numel() for c in _outside_body(model) for p in model.get_submodule(c).parameters()) if family == "encoder" else 0
    linears = {n: m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets}
    assert len(linears) == count
    wrapped = add_peer(model, "peft-lora", family, {})
    lora = {n: p for n, p in wrapped.named_parameters() if p.requires_grad and "lora_" in n}
    # r=8: A [8, d_in] and B [d_out, 8] on each targeted linear (Phi-3's qkv_proj: d_out = (2 + 2 * 1) * 16 = 64)
    assert sum(p.numel() for p in lora.values()) == sum(8 * (m.in_features + m.out_features) for m in linears.values())
    assert sum(p.numel() for p in wrapped.parameters() if p.requires_grad) == sum(p.numel() for p in lora.values()) + head
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora} == targets
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 96, (2, 7), generator=g)
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1]) if family == "encoder" else ids.clone())
    wrapped.train()
    wrapped(**batch).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lora.values())
    assert all(p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)  # B starts at zero, so A's gradient does too


def test_a_type_peft_cannot_map_is_a_clear_error(monkeypatch):
    from compacter import peers
    from compacter.peers import add_peer

    monkeypatch.delitem(peers._LORA_TARGETS, "mpnet")  # every type of the placement table has targets: pretend one has none
    model = T.MPNetForSequenceClassification(T.MPNetConfig(**_ENC))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    message = r"no default LoRA target modules for model type 'mpnet' \(MPNetForSequenceClassification\).*linear layers: dense, k, o, q, v" \
              r".*--adapter 'target_modules=\[\"query\",\"value\"\]'.*TrainConfig\(method=\"peft-lora\", adapter="
    with pytest.raises(ValueError, match=message):
        add_peer(model, "peft-lora", "encoder", {})
    assert {n for n, _ in model.named_parameters()} == before.keys()  # untouched
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    wrapped = add_peer(model, "peft-lora", "encoder", {"target_modules": ["q", "v"]})  # named targets: LoRA as asked
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in wrapped.named_parameters() if "lora_" in n} == {"q", "v"}
