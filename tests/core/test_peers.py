"""The peer methods' options (--adapter with --method peft-lora): bad ones are clear errors before the model is touched."""

import pytest
import torch

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
