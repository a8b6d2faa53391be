"""The weight bank: while training, every shared-rule PHM layer's W is built in one batched product
per forward pass. It must compute exactly what layer-by-layer building computes, forward and
backward, and step aside where it cannot be used (no gradients, activation checkpointing, calls
that do not go through the model root)."""

import pytest
import torch

import compacter
from compacter.inject import get_state
from compacter.phm import PHMLinear, batched_weights

from .tiny import tiny


def _adapted(arch="t5", method="compacter", **overrides):
    model, batch = tiny(arch)
    compacter.add_adapters(model, compacter.CompacterConfig(method, reduction_factor=4, **overrides))
    return model, batch


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _builds(monkeypatch) -> list[int]:
    """Record the number of layers in every bank build."""
    calls = []
    real = batched_weights

    def counting(layers, rule, dtype=None):
        calls.append(len(layers))
        return real(layers, rule, dtype)

    monkeypatch.setattr(compacter.inject, "batched_weights", counting)
    return calls


def _assert_layer_by_layer(model, batch, loss_ref, grads_ref, monkeypatch):
    """A training step builds no bank and gives the reference loss and gradients."""
    builds = _builds(monkeypatch)
    loss, grads = _loss_and_grads(model, batch)
    assert builds == []
    torch.testing.assert_close(loss, loss_ref)
    for n in grads_ref:
        torch.testing.assert_close(grads[n], grads_ref[n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("factorized", [True, False])
@pytest.mark.parametrize("own_rule", [True, False])
def test_batched_weights_equal_layer_by_layer(factorized, own_rule):
    torch.manual_seed(0)
    rule = None if own_rule else torch.randn(4, 4, 4, dtype=torch.float64)
    layers = [PHMLinear(k, d, 4, rank=r, factorized=factorized, own_rule=own_rule, rule_init_range=1.0).double()
              for k, d, r in [(8, 12, 1), (12, 8, 2), (8, 12, 1), (16, 4, 1)]]
    for layer, w in zip(layers, batched_weights(layers, rule), strict=True):
        torch.testing.assert_close(w, layer.weight(rule), rtol=1e-12, atol=0)
        expected = sum(torch.kron(a, b) for a, b in zip(layer.rule.A if own_rule else rule, layer.fast_weight()))
        torch.testing.assert_close(w, expected, rtol=1e-12, atol=1e-15)
    assert all(w.dtype == torch.float16 for w in batched_weights(layers, rule, torch.float16))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # no dtype given: autocast's, built once per group
        assert all(w.dtype == torch.bfloat16 for w in batched_weights(layers, rule))


@pytest.mark.parametrize("arch,method", [("t5", "compacter"), ("llama", "compacter"), ("bert", "compacter++"), ("t5", "phm-adapter")])
def test_bank_matches_layer_by_layer_forward_and_backward(arch, method, monkeypatch):
    model, batch = _adapted(arch, method, **({"phm_dim": 4} if method == "phm-adapter" else {}))
    model.eval()  # no dropout; gradients still on, so the bank is used
    builds = _builds(monkeypatch)
    loss, grads = _loss_and_grads(model, batch)
    assert builds == [len(get_state(model)._banked["default"])] and builds[0] > 0
    assert get_state(model)._bank is None  # dropped after the forward pass
    monkeypatch.setattr(get_state(model), "_banked", {})  # layer by layer
    loss_ref, grads_ref = _loss_and_grads(model, batch)
    assert len(builds) == 1
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-7)
    assert grads.keys() == grads_ref.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], grads_ref[n], rtol=1e-5, atol=1e-7, msg=n)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.endswith((".s", ".B")))


def test_no_bank_without_gradients_or_outside_the_root(monkeypatch):
    model, batch = _adapted("t5")
    builds = _builds(monkeypatch)
    with torch.no_grad():
        model(**batch)
    assert builds == []
    hidden = model.encoder(input_ids=batch["input_ids"]).last_hidden_state  # a sub-module called directly
    hidden.sum().backward()
    assert builds == []


@pytest.mark.parametrize("reentrant", [True, False])
def test_activation_checkpointing_builds_layer_by_layer_with_the_same_gradients(reentrant, monkeypatch):
    model, batch = _adapted("t5")
    model.train()
    for m in model.modules():  # training mode (checkpointing needs it) without dropout
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):
            m.dropout = 0.0
    loss_ref, grads_ref = _loss_and_grads(model, batch)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.config.use_cache = False
    _assert_layer_by_layer(model, batch, loss_ref, grads_ref, monkeypatch)


@pytest.mark.parametrize("method", ["compacter", "compacter++"])
def test_checkpointing_outside_transformers_flag_builds_layer_by_layer(method, monkeypatch):
    """FSDP's and Accelerate's activation checkpointing wrap layers in a non-reentrant
    torch.utils.checkpoint without transformers' flag; a replayed layer must save what its forward
    saved (it raised CheckpointError). Reentrant regions run without gradients: see the test above."""
    from torch.utils.checkpoint import checkpoint

    model, batch = _adapted("llama", method)
    model.eval()  # no dropout; gradients still on
    loss_ref, grads_ref = _loss_and_grads(model, batch)
    for layer in model.model.layers:
        layer.forward = (lambda f: lambda *a, **k: checkpoint(f, *a, use_reentrant=False, **k))(layer.forward)
    _assert_layer_by_layer(model, batch, loss_ref, grads_ref, monkeypatch)


def test_methods_without_phm_layers_have_no_bank():
    for method in ("adapter", "pfeiffer", "adapter-lowrank", "bitfit"):
        model, _ = _adapted("t5", method)
        assert get_state(model)._banked == {}, method


def test_bank_follows_the_active_adapter_and_deletion():
    model, batch = _adapted("t5")
    compacter.inject.attach_adapters(model, compacter.inject.build_adapters(model, compacter.CompacterConfig("compacter++", reduction_factor=4), "b"))
    state = get_state(model)
    assert set(state._banked) == {"default", "b"} and len(state._banked["b"]) < len(state._banked["default"])
    model(**batch).loss.backward()
    compacter.delete_adapter(model, "b")
    assert set(state._banked) == {"default"}
    compacter.delete_adapter(model, "default")
    assert not model._forward_pre_hooks and not model._forward_hooks  # the base model again


@pytest.mark.parametrize("switch_modes", [True, False])
@pytest.mark.parametrize("arch,method", [("t5", "compacter"), ("bert", "compacter++"), ("llama", "phm-adapter")])
def test_evaluation_after_a_fused_adamw_step_sees_the_new_weights(arch, method, switch_modes):
    """Fused AdamW updates parameters without bumping their version, which the eval cache keys on:
    an evaluation after a training step must still use the updated W (the training loop switches
    train()/eval(); a user may also train in eval mode)."""
    torch.manual_seed(0)
    model, batch = _adapted(arch, method, **({"phm_dim": 4} if method == "phm-adapter" else {}))
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits  # fills every layer's eval cache
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, fused=True)
    if switch_modes:
        model.train()
    for _ in range(3):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        after = model(**batch).logits
    state = get_state(model)
    for layer in state._banked["default"]:  # every W the evaluation used is the current one
        assert layer._cache is not None
        torch.testing.assert_close(layer._cache[1], layer.weight(state.rule("default")).detach(), rtol=0, atol=0)
    expected = model(**batch).logits.detach()  # gradients on: W built afresh from the parameters
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, expected)


def _fused_step_without_a_training_forward(model, batch):
    """Gradients from a backward in eval mode, a no-grad forward (eval cache filled), then a fused step."""
    params = [p for p in model.parameters() if p.requires_grad]
    model(**batch).loss.backward()
    with torch.no_grad():
        model(**batch)
    torch.optim.AdamW(params, lr=1e-2, fused=True).step()


def _new_tensors(model, batch):
    """``p.data = ...`` and vector_to_parameters: new storage behind the same parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    params[0].data = params[0].detach() + 0.5
    vector = torch.nn.utils.parameters_to_vector(params[1:])
    torch.nn.utils.vector_to_parameters(vector + 0.1, params[1:])


def _fused_sgd(model, batch):
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.ones_like(p)
    torch.optim.SGD(params, lr=0.1, fused=True).step()


@pytest.mark.parametrize("update", [_fused_step_without_a_training_forward, _new_tensors, _fused_sgd])
def test_the_eval_cache_sees_updates_that_bump_no_version(update):
    """Staying in eval mode, with no training forward between: fused optimizers (the cache key
    counts optimizer steps) and new tensors behind the parameters (it keys on storage too)."""
    torch.manual_seed(0)
    model, batch = _adapted("t5", "compacter")
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits  # fills every layer's eval cache
    update(model, batch)
    with torch.no_grad():
        after = model(**batch).logits
    for layer in get_state(model)._banked["default"]:
        layer._cache = None
    with torch.no_grad():
        expected = model(**batch).logits  # W built afresh from the parameters
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)
