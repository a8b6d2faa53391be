"""torch.compile sees adapted models as one graph (our hooks and layers cause no graph break), and the API takes the compiled wrapper as its model."""

import pytest
import torch

import compacter
from compacter.inject import get_state

from .tiny import tiny


def _explain(model, batch):
    torch._dynamo.reset()
    try:
        return torch._dynamo.explain(model)(**batch)
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("arch,training", [("t5", True), ("llama", False)])
def test_no_graph_break_from_adapters(arch, training):
    model, batch = tiny(arch)
    base = _explain(model, batch)
    compacter.add_adapters(model, compacter.CompacterConfig("compacter", reduction_factor=4))
    model.train(training)
    with torch.set_grad_enabled(training):
        adapted = _explain(model, batch)
    assert adapted.graph_break_count == base.graph_break_count == 0, [str(r.reason) for r in adapted.break_reasons]
    assert adapted.graph_count == 1


@pytest.mark.parametrize("autocast", [False, True])
def test_no_graph_break_where_autocast_availability_is_untraceable(monkeypatch, autocast):
    """Before torch 2.13, dynamo could not trace `torch._C._is_autocast_available`: a graph break in
    every PHM layer, then recompiles per layer, made compiled T5-base steps 3.8x the compiled floor
    on an H200 (torch 2.11). The layers read it once per device type, outside any compiled step;
    here the call breaks the graph wherever it is made, as it did there."""
    model, batch = tiny("t5")
    compacter.add_adapters(model, compacter.CompacterConfig("compacter", reduction_factor=4))
    model.train()

    def untraceable(device_type):
        torch._dynamo.graph_break()
        return True

    monkeypatch.setattr(torch.amp, "is_autocast_available", untraceable)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        adapted = _explain(model, batch)
    assert adapted.graph_break_count == 0, [str(r.reason) for r in adapted.break_reasons]
    assert adapted.graph_count == 1


def test_the_api_takes_a_compiled_model_as_the_model_it_wraps(tmp_path):
    """`model = torch.compile(model)` then the API: every function acts on the wrapped model, under
    its own names (adding through the wrapper registered the state on the wrapper and failed half
    way; counts and saved keys carried the wrapper's `_orig_mod.` prefix)."""
    from safetensors import safe_open

    model, batch = tiny("llama")
    compiled = torch.compile(model)  # no forward: nothing is compiled
    config = compacter.CompacterConfig("compacter", reduction_factor=4)
    assert compacter.add_adapters(compiled, config, name="a") is compiled
    assert list(compiled._modules) == ["_orig_mod"] and compacter.list_adapters(model) == ["a"]
    plain, _ = tiny("llama")
    compacter.add_adapters(plain, config, name="a")
    assert compacter.count_parameters(compiled) == compacter.count_parameters(model) == compacter.count_parameters(plain)
    assert compacter.trainable_parameters(compiled) == compacter.trainable_parameters(model)
    compacter.save_adapters(compiled, tmp_path / "a")
    with safe_open(tmp_path / "a" / "adapter_model.safetensors", framework="pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "_orig_mod" in k]
    fresh, _ = tiny("llama")
    compacter.load_adapters(fresh, tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    assert compacter.load_adapters(compiled, tmp_path / "a", name="b") is compiled
    assert compacter.list_adapters(compiled) == ["a", "b"] and compacter.active_adapter(compiled) == "b"
    compacter.set_active_adapter(compiled, "a")
    with compacter.disable_adapters(compiled) as inside:
        assert inside is compiled and compacter.active_adapter(model) is None
    assert compacter.active_adapter(model) == "a"
    compacter.delete_adapter(compiled, "b")
    compacter.delete_adapter(compiled, "a")
    assert get_state(model) is None and list(compiled._modules) == ["_orig_mod"]
