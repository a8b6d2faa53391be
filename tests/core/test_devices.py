"""Adapters on a model split over devices, and trained copies that survive dtype/device conversion.

No second device is needed: "meta" stands in for one (as a layer offloaded or on another GPU),
and the CPU part must compute exactly what a single-device model computes.
"""

import contextlib
import tempfile

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

import compacter
from compacter import CompacterConfig
from compacter.inject import STATE_ATTR, _key, get_state, iter_sites
from compacter.phm import PHMLinear, batched_weights, kronecker_sum

from .tiny import tiny

# Compacter with BitFit biases (zero ones added to Llama's bias-free layers) and a trained LM head:
# every kind of trained copy (norms, head, biases) and the shared rule
SPLIT = dict(reduction_factor=4, train_biases=True, head_modules=("lm_head",))
FRONT = ("model.embed_tokens",)  # as the reproduction: the embedding elsewhere
BACK = ("model.layers.1", "model.norm", "lm_head")  # the second half elsewhere, as device_map="auto" splits


def _split(parts, seed=1):
    model, batch = tiny("llama")
    for part in parts:
        model.get_submodule(part).to("meta")
    torch.manual_seed(seed)
    compacter.add_adapters(model, CompacterConfig("compacter", **SPLIT))
    return model, batch


def _to_device(device):
    """A forward pre-hook that moves a module's inputs to ``device``, as accelerate's hooks do."""
    def move(x):
        if isinstance(x, (tuple, list)):  # Llama's position_embeddings: (cos, sin)
            return type(x)(move(t) for t in x)
        return x.to(device) if isinstance(x, torch.Tensor) else x

    def hook(module, args, kwargs):
        return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}
    return hook


@pytest.mark.parametrize("parts", [FRONT, BACK], ids=["embedding-elsewhere", "second-half-elsewhere"])
def test_adapters_and_trained_copies_sit_with_their_modules(parts):
    model, _ = _split(parts)
    state = get_state(model)
    sites = list(iter_sites(model))
    assert {model.get_submodule(t).weight.device.type for t, _ in sites} == {"cpu", "meta"} or parts == FRONT
    for target, site in sites:
        weight = model.get_submodule(target).weight
        assert {(p.device, p.dtype) for p in site.parameters()} == {(weight.device, weight.dtype)}, target
    assert state.rules["default"].A.device.type == "cpu"  # with the first adapter (layer 0, on cpu)
    for key, copy in state.tuned["default"].items():
        full = key.replace("/", ".")
        if key in state.base:
            where = state.base[key].device
        else:  # a BitFit bias the base model lacks: where its layer's weight is
            where = model.get_submodule(full.rsplit(".", 1)[0]).weight.device
        assert copy.device == where, full
        assert model.get_parameter(full) is copy


def test_cpu_part_of_a_split_model_computes_as_on_one_device():
    ref, batch = _split(())
    model, _ = _split(BACK)
    for part in BACK:
        model.get_submodule(part).register_forward_pre_hook(_to_device("meta"), with_kwargs=True)
    seen = {}

    def keep(name):
        def hook(module, args, output):
            seen[name] = output[0] if isinstance(output, tuple) else output
        return hook

    for which, m in (("ref", ref), ("split", model)):
        m.model.layers[0].register_forward_hook(keep(which))
        m.train()  # the weight bank: one batched build, groups on cpu and on meta
        out = m(**batch)
        assert out.logits.device.type == ("meta" if m is model else "cpu")
        seen[which].float().pow(2).sum().backward()  # the cpu part's graph only
    assert seen["split"].device.type == "cpu"
    torch.testing.assert_close(seen["split"], seen["ref"], rtol=0, atol=0)
    rule, rule_ref = get_state(model).rules["default"].A, get_state(ref).rules["default"].A
    torch.testing.assert_close(rule.grad, rule_ref.grad, rtol=0, atol=0)  # the shared A learns from the cpu layers
    for m in (ref, model):
        m.eval()
        with torch.no_grad():  # layer by layer (eval cache): meta layers use a copy of the cpu rule
            m(**batch)
    torch.testing.assert_close(seen["split"], seen["ref"], rtol=0, atol=0)


def test_one_shared_rule_serves_layers_on_other_devices_and_dtypes():
    """float64 layers stand in for a device that backward can reach (meta cannot): the one float32
    rule gets the gradient of every layer, through a copy where the layer is elsewhere."""
    torch.manual_seed(0)
    rule = torch.nn.Parameter(torch.randn(4, 4, 4))
    layers = [PHMLinear(8, 16, 4), PHMLinear(8, 16, 4).double(), PHMLinear(8, 16, 4).to("meta")]
    bank = batched_weights(layers, rule)
    assert [w.dtype for w in bank] == [torch.float32, torch.float64, torch.float32]
    assert [w.device.type for w in bank] == ["cpu", "cpu", "meta"]
    for layer, w in zip(layers[:2], bank[:2]):
        torch.testing.assert_close(w, kronecker_sum(rule.to(w.dtype), layer.fast_weight()))  # batched: rounding may differ
        torch.testing.assert_close(layer.weight(rule), w)  # layer by layer alike
    assert layers[2].weight(rule).device.type == "meta"
    (bank[0].sum() + bank[1].sum()).backward()
    expected = torch.autograd.grad(kronecker_sum(rule, layers[0].fast_weight()).sum()
                                   + kronecker_sum(rule.double(), layers[1].fast_weight()).sum(), rule)[0]
    torch.testing.assert_close(rule.grad, expected)


class _Copies(TorchDispatchMode):
    """Counts copies to another device or dtype (``.to``) of tensors shaped like the rule."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.count = shape, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default) and args[0].shape == self.shape:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("train", [True, False], ids=["bank", "layer-by-layer"])
def test_single_device_model_makes_no_copy_of_the_rule(train):
    model, batch = tiny("llama")
    compacter.add_adapters(model, CompacterConfig("compacter", reduction_factor=4))
    rule = get_state(model).rules["default"].A
    model.train(train)
    with _Copies(rule.shape) as copies, (contextlib.nullcontext() if train else torch.no_grad()):
        loss = model(**batch).loss
        if train:
            loss.backward()
    assert copies.count == 0
    if train:
        assert rule.grad is not None and rule.grad.abs().sum() > 0


@contextlib.contextmanager
def _overwrite_on_conversion():
    """What ``Module._apply`` does on XLA-like devices: new Parameter objects instead of in-place updates."""
    before = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        yield
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(before)


NORM = "encoder.final_layer_norm.weight"


def _owner_is_state_copy(model, state, name="default"):
    for key, copy in state.tuned[name].items():
        assert model.get_parameter(key.replace("/", ".")) is copy, key


def test_trained_copies_stay_one_parameter_after_conversion():
    model, batch = tiny("t5")
    compacter.add_adapters(model, CompacterConfig("compacter", reduction_factor=4))
    with _overwrite_on_conversion():
        model.double()
    state = get_state(model)
    _owner_is_state_copy(model, state)
    assert state.tuned["default"][_key(NORM)].dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in model.parameters())

    model.train()
    opt = torch.optim.SGD(compacter.trainable_parameters(model), lr=1.0)
    model(**batch).loss.backward()
    opt.step()
    trained = model.get_parameter(NORM).detach().clone()
    assert not torch.equal(trained, torch.ones_like(trained))
    with tempfile.TemporaryDirectory() as folder:
        compacter.save_adapters(model, folder)
        saved = load_file(f"{folder}/adapter_model.safetensors")[f"tuned.{NORM}"]
    torch.testing.assert_close(saved, trained, rtol=0, atol=0)

    compacter.set_active_adapter(model, None)  # the base original: converted, and the owner's again
    base = model.get_parameter(NORM)
    assert base is state.base[_key(NORM)] and base.dtype == torch.float64 and torch.equal(base, torch.ones_like(base))
    compacter.set_active_adapter(model, "default")
    torch.testing.assert_close(model.get_parameter(NORM).detach(), trained, rtol=0, atol=0)
    _owner_is_state_copy(model, state)


def test_base_originals_stay_one_parameter_after_conversion_while_inactive():
    model, _ = tiny("t5")
    compacter.add_adapters(model, CompacterConfig("compacter", reduction_factor=4))
    compacter.set_active_adapter(model, None)
    with _overwrite_on_conversion():
        model.double()
    state = get_state(model)
    assert model.get_parameter(NORM) is state.base[_key(NORM)]
    compacter.set_active_adapter(model, "default")
    _owner_is_state_copy(model, state)
    compacter.delete_adapter(model, "default")  # the base model back, converted
    assert not hasattr(model, STATE_ATTR) and all(p.dtype == torch.float64 for p in model.parameters())


def test_offloaded_layer_gets_its_adapter_on_the_execution_device():
    """accelerate's offload keeps a layer's weights on "meta" and computes it on the hook's
    execution device: the adapter belongs there, not on meta."""
    from types import SimpleNamespace

    model, _ = tiny("llama")
    model.model.embed_tokens.to("meta")  # the model's first parameter: where adapters went before
    model.model.layers[1].to("meta")
    model.model.layers[1]._hf_hook = SimpleNamespace(hooks=[SimpleNamespace(execution_device="cpu")])  # a SequentialHook
    compacter.add_adapters(model, CompacterConfig("compacter", reduction_factor=4))
    for target, site in iter_sites(model):
        assert {p.device.type for p in site.parameters()} == {"cpu"}, target


@pytest.mark.parametrize("arch,method", [("t5", "compacter"), ("llama", "compacter++"), ("bert", "bitfit")])
def test_data_parallel_replicas_compute_with_their_own_copies(arch, method, monkeypatch):
    """nn.DataParallel (the Trainer's choice on several GPUs without a distributed launch) runs
    shallow copies of the model whose parameters are broadcast copies. Simulated on the CPU: each
    replica's copies of the trained tensors are scaled by its own factor, so its output matches a
    model holding those values only if every adapter, norm and head it runs is its own copy (the
    shared rule aside: replicas use the original's, whose values the real broadcast copies equal).
    The replicas' hooks also leave the original's forward state (the weight bank) alone."""
    import copy
    import importlib

    replicate_module = importlib.import_module("torch.nn.parallel.replicate")  # the module, not the function

    model, batch = tiny(arch)
    compacter.add_adapters(model, CompacterConfig(method, reduction_factor=4))
    model.eval()  # no dropout; gradients on
    torch.manual_seed(0)
    with torch.no_grad():  # trained-looking adapters: at init their output is ~0 and copies would not show
        for p in compacter.trainable_parameters(model):
            p.normal_(0, 0.3)
    state = get_state(model)
    rule = state.rules["default"].A if "default" in state.rules else None
    factors = [1.5, 0.5]

    def broadcast(tensors, devices, detach=False):  # the real one needs CUDA
        return [[t * factors[j] if t.requires_grad and t is not rule else t for t in tensors] for j in range(len(devices))]

    monkeypatch.setattr(replicate_module, "_broadcast_coalesced_reshape", broadcast)
    replicas = replicate_module.replicate(model, [0, 1])
    loss = 0
    for replica, factor in zip(replicas, factors):
        reference = copy.deepcopy(model)
        with torch.no_grad():
            for p in compacter.trainable_parameters(reference):
                if p is not reference.compacter.rules["default"].A if rule is not None else True:
                    p.mul_(factor)
        out = replica(**batch)
        torch.testing.assert_close(out.logits, _logits(reference, batch), rtol=1e-5, atol=1e-6)
        assert state._bank is None and not state._in_forward
        loss = loss + out.loss
    loss.backward()  # the gradients reach the original parameters
    assert all(p.grad is not None for p in compacter.trainable_parameters(model))


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits
