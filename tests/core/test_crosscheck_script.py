"""scripts/crosscheck_adapterhub.py: its compare phase, fed a dump made here with AdapterHub's PHM formula.

AdapterHub itself pins another transformers and is not installed in this environment; the real two-venv run is
in docs/CROSSCHECK.md and runs here only when ``CROSSCHECK_ADAPTERS_PYTHON`` names an interpreter with ``adapters``
(opt-in, so that the suite never depends on what happens to lie in /tmp).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "crosscheck_adapterhub.py"


def _load():
    spec = importlib.util.spec_from_file_location("crosscheck_adapterhub", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ah_kronecker_product(a, b):
    """AdapterHub adapters 1.3.0, adapters/methods/modeling.py ``kronecker_product`` (from rabeehk/compacter)."""
    siz1 = torch.Size(torch.tensor(a.shape[-2:]) * torch.tensor(b.shape[-2:]))
    res = a.unsqueeze(-1).unsqueeze(-3) * b.unsqueeze(-2).unsqueeze(-4)
    return res.reshape(res.shape[:-4] + siz1)


def _ah_phm(params, prefix, rule, x, transpose_rule=False):
    """AdapterHub ``PHMLayer.forward``: H = Σ_i A_i ⊗ W_i, y = x @ H + b."""
    W = torch.bmm(params[prefix + "W_left"], params[prefix + "W_right"]) if prefix + "W_left" in params else params[prefix + "W"]
    rule = params.get(prefix + "phm_rule", rule)
    if transpose_rule:
        rule = rule.transpose(1, 2)
    H = _ah_kronecker_product(rule, W).sum(0)
    return H, x @ H + params[prefix + "b"]


def _make_dump(mod, out_dir, variants, transpose_rule=False):
    g = torch.Generator().manual_seed(0)
    d, k = mod.D_MODEL, mod.BOTTLENECK
    tensors, meta = {}, {"versions": {"adapters": "formula copy"}, "variants": {}}
    for vname in variants:
        cls_name, ah_over, our_method, our_over = mod.VARIANTS[vname]
        n = ah_over.get("phm_dim", 4)
        r = ah_over.get("phm_rank", 1)
        params, shared = {}, {}
        for prefix, i, o in (("adapter_down.0.", d, k), ("adapter_up.", k, d)):
            if ah_over.get("factorized_phm_W", True):
                params[prefix + "W_left"] = torch.randn(n, i // n, r, generator=g) * 0.5
                params[prefix + "W_right"] = torch.randn(n, r, o // n, generator=g) * 0.5
            else:
                params[prefix + "W"] = torch.randn(n, i // n, o // n, generator=g) * 0.5
            params[prefix + "b"] = torch.randn(o, generator=g) * 0.1
            if not ah_over.get("shared_phm_rule", True):
                params[prefix + "phm_rule"] = torch.randn(n, n, n, generator=g) * 0.5
        if ah_over.get("shared_phm_rule", True):
            shared["phm_rule"] = torch.randn(n, n, n, generator=g) * 0.5
        x = torch.randn(2, 3, d, generator=g)
        p = f"{vname}/"
        tensors[p + "x"] = x
        tensors.update({p + "ah/" + name: t for name, t in params.items()})
        tensors.update({p + "shared/" + name: t for name, t in shared.items()})
        for dtype, tag in ((torch.float32, "32"), (torch.float64, "64")):
            pd = {name: t.to(dtype) for name, t in params.items()}
            rule = shared["phm_rule"].to(dtype) if shared else None
            H_down, h = _ah_phm(pd, "adapter_down.0.", rule, x.to(dtype), transpose_rule)
            h = torch.nn.functional.gelu(h)
            H_up, up = _ah_phm(pd, "adapter_up.", rule, h, transpose_rule)
            tensors.update({p + "H_down" + tag: H_down, p + "H_up" + tag: H_up, p + "down_act" + tag: h,
                            p + "up" + tag: up, p + "out" + tag: up + x.to(dtype)})
        meta["variants"][vname] = {"our_method": our_method, "our_overrides": our_over}
    save_file({k_: v.contiguous() for k_, v in tensors.items()}, os.path.join(out_dir, mod.DUMP_TENSORS))
    Path(out_dir, mod.DUMP_META).write_text(json.dumps(meta))


def test_compare_accepts_adapterhub_formula(tmp_path):
    mod = _load()
    _make_dump(mod, tmp_path, ["compacter", "phm-adapter-n12"])
    result = mod.phase_compare(str(tmp_path), 1e-5, 1e-12)
    assert result["all_ok"], [r for r in result["rows"] if not r["ok"]]
    assert {r["variant"] for r in result["rows"]} == {"compacter", "phm-adapter-n12"}


def test_compare_rejects_a_transposed_rule(tmp_path):
    mod = _load()
    _make_dump(mod, tmp_path, ["compacter"], transpose_rule=True)
    result = mod.phase_compare(str(tmp_path), 1e-5, 1e-12)
    assert not result["all_ok"]
    assert not any(r["ok"] for r in result["rows"] if r["check"] == "adapter(x)")


def _adapters_python():
    path = os.environ.get("CROSSCHECK_ADAPTERS_PYTHON")
    return path if path and os.path.exists(path) else None


@pytest.mark.skipif(_adapters_python() is None, reason="set CROSSCHECK_ADAPTERS_PYTHON (see docs/CROSSCHECK.md)")
def test_real_adapterhub_crosscheck(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--phase", "all", "--adapters-python", _adapters_python(),
                          "--out", str(tmp_path), "--json", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert json.loads((tmp_path / "r.json").read_text())["all_ok"]
