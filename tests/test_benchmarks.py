"""Helpers of the benchmark scripts in benchmarks/: they time what the library does, and write their rows.

Loaded from their files (benchmarks/ is not a package); tiny shapes and a few repetitions, so each
test takes a second or two. The timings themselves are not checked, only what is timed and written.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _keep_threads():
    """The scripts set torch's thread count (1 thread): give the rest of the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the scripts import their shared _common
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_profile_step_layer_weight_is_the_libraries_w_under_bf16_autocast():
    from compacter.phm import PHMLinear, PHMRule, batched_weights

    prof = _load("profile_step")
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    layer, rule = PHMLinear(64, 16, 4), PHMRule(4, init_range=0.1)
    x = torch.randn(3, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = prof.layer_weight(layer, rule.A, cpu)
        assert w.dtype == torch.bfloat16
        # what the bank hands a layer, and what the layer's own forward multiplies by
        assert torch.equal(w, batched_weights([layer], rule.A)[0])
        assert torch.equal(layer(x, rule.A), torch.addmm(layer.bias.to(w.dtype), x.to(w.dtype), w))
        bf16_products = layer.weight(rule.A)  # PHMLinear.weight under autocast: not the library's W
    assert not torch.equal(w, bf16_products)
    w32 = prof.layer_weight(layer, rule.A, cpu)  # no autocast: the layer's dtype, no cast
    assert w32.dtype == torch.float32 and torch.equal(w32, layer.weight(rule.A))


def test_profile_step_micro_benchmarks_run_on_the_uninstrumented_library():
    from compacter import inject, phm

    prof = _load("profile_step")
    before = (inject.AdapterSite.hook, phm.PHMLinear.weight, inject.batched_weights)
    prof.instrument_library()
    try:
        assert phm.PHMLinear.weight is not before[1] and inject.batched_weights is not before[2]
    finally:
        prof.uninstrument_library()
    assert (inject.AdapterSite.hook, phm.PHMLinear.weight, inject.batched_weights) == before


def _rows(path: Path) -> list[dict]:
    rows = json.loads(path.read_text())
    assert rows and all(r["env"]["torch"] == torch.__version__ for r in rows)
    return rows


def test_bank_build_writes_both_builds_of_each_method(tmp_path):
    out = tmp_path / "bank.json"
    _load("bank_build").main(["--size", "tiny", "--method", "compacter++", "compacter", "--reps", "2", "--json", str(out)])
    rows = _rows(out)
    assert [(r["adapter_method"], r["method"]) for r in rows] == [
        ("compacter++", "per layer"), ("compacter++", "bank"), ("compacter", "per layer"), ("compacter", "bank")]
    for r in rows:
        assert len(r["ms_all"]) == 2 and r["ratio_to_per_layer_paired"] is not None
    # the ratios are within one method's run, and the bank needs fewer autograd nodes (kernels on a GPU)
    assert rows[0]["ratio_to_per_layer"] == 1.0 and rows[1]["autograd_nodes"] < rows[0]["autograd_nodes"]
    assert rows[2]["layers"] == 2 * rows[0]["layers"]  # compacter: adapters after attention and FFN


def test_kron_build_writes_both_ways(tmp_path):
    out = tmp_path / "kron.json"
    _load("kron_build").main(["--rounds", "2", "--calls", "3", "--json", str(out)])
    rows = _rows(out)
    assert [r["method"] for r in rows] == ["einsum", "one GEMM"]
    assert all(len(r["ms_all"]) == len(r["us_per_call_all"]) == 2 for r in rows) and rows[0]["ratio_to_einsum"] == 1.0


def test_adapter_variants_writes_every_variant_and_build(tmp_path):
    av = _load("adapter_variants")
    out = tmp_path / "variants.json"
    av.main(["--device", "cpu", "--size", "tiny", "--threads", "1", "--batch", "2", "--src-len", "8", "--tgt-len", "4",
             "--reps", "2", "--json", str(out)])
    rows = _rows(out)
    keys = [k for k, _ in av.SITE_VARIANTS]
    assert [(r["site"], r["method"]) for r in rows] == (
        [("encoder", k) for k in keys] + [("decoder", k) for k in keys] + [("all", k) for k, _ in av.BUILDS])
    assert all(r["ratio_to_library"] == 1.0 for r in rows if r["method"] == "library")
    assert next(r for r in rows if r["method"] == "layer by layer")["ratio_to_layer_by_layer"] == 1.0


def test_a_row_built_twice_is_the_same_model_and_draws_the_same_adapter_weights():
    # GPU runs build every row twice (memory pass, timed pass); later builds copy the first
    # instead of initialising again, and must give what a fresh build would.
    _load("train_step")  # puts benchmarks/ on the path
    import _common as common

    cpu = torch.device("cpu")
    first, _ = common.prepare_model("compacter++", "tiny", cpu, seed=3)
    again, _ = common.prepare_model("compacter++", "tiny", cpu, seed=3)
    assert first is not again
    a, b = first.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(first.parameters(), again.parameters()))  # no shared storage
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(3)
    fresh = T5ForConditionalGeneration(common.t5_config("tiny"))
    f = fresh.state_dict()
    assert all(torch.equal(f[k], a[k]) for k in f)  # the base weights a fresh build gives
    other, _ = common.prepare_model("compacter++", "tiny", cpu, seed=4)
    assert not torch.equal(other.state_dict()["shared.weight"], a["shared.weight"])  # the seed still matters


def test_saved_activations_counts_what_the_lean_norms_keep_out(tmp_path):
    """The pair compacter++ / compacter++-autograd-norms differs only in compacter.norms being on:
    the row without it keeps each trained norm's normalized activation (float32, the hidden states'
    size). Not for the first norm of each stack: its input (the frozen embeddings) needs no grad, so
    autograd keeps only the normalized tensor there, and the lean norm its input and the per-row
    rsqrt instead. Tiny T5: 2 encoder blocks x 2 norms + 1 final, 2 decoder blocks x 3 + 1."""
    out = tmp_path / "saved.json"
    _load("saved_activations").main(["--size", "tiny", "--batch", "2", "--src-len", "8", "--tgt-len", "4", "--threads", "1",
                                     "--methods", "compacter++,compacter++-autograd-norms,compacter++-noln", "--json", str(out)])
    rows = {r["method"]: r for r in _rows(out)}
    assert list(rows) == ["floor", "compacter++", "compacter++-autograd-norms", "compacter++-noln"]
    assert rows["floor"]["ratio_to_floor"] == 1.0
    d = 256  # tiny's d_model
    normalized = (4 * 2 * 8 + 6 * 2 * 4) * d * 4  # all norms but each stack's first
    first_rsqrt = (2 * 8 + 2 * 4) * 4
    assert rows["compacter++-autograd-norms"]["saved_bytes"] - rows["compacter++"]["saved_bytes"] == normalized - first_rsqrt
    from compacter import norms

    assert norms.ENABLED  # the row switched the lean norms off for its own steps only
