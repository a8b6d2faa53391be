#!/usr/bin/env python
"""All PHM weights of a model, built layer by layer or as one bank (compacter.phm.batched_weights).

Forward + backward of every W a Compacter(++) step needs at T5 shapes (random weights; the W go
into a sum so that backward runs), the two ways interleaved (one call of each per round), min and
median of the repetitions and the ratios within the run, and the number of autograd nodes each way
(a proxy for kernel launches on a GPU). 1 thread, fp32. ``--json PATH`` writes the rows.

    .venv/bin/python benchmarks/bank_build.py --size base --method compacter compacter++ --reps 100 --json bank.json
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import SIZES, environment, interleaved, summarise, timing_fields, write_json  # noqa: E402

BUILDS = {"per layer": "layer by layer (PHMLinear._build_weight, as a layer without the bank)",
          "bank": "bank (compacter.phm.batched_weights, as a training step)"}


def _layers(size: str, method: str):
    import transformers as T

    import compacter
    from compacter.inject import get_state

    d = SIZES[size]
    config = T.T5Config(d_model=d["d_model"], d_ff=d["d_ff"], num_layers=d["num_layers"], num_decoder_layers=d["num_decoder_layers"],
                        num_heads=8, d_kv=64, vocab_size=128)
    with torch.device("meta"):
        model = T.T5ForConditionalGeneration(config)
    model = model.to_empty(device="cpu")
    compacter.add_adapters(model, compacter.CompacterConfig(method))
    state = get_state(model)
    return state._banked["default"], state.rule("default")


def _nodes(out: torch.Tensor) -> int:
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(f for f, _ in fn.next_functions)
    return len(seen)


def measure(size: str, method: str, reps: int) -> list[dict]:
    """The two rows of one method: timings, autograd nodes, ratios to layer by layer within this run."""
    from compacter.phm import batched_weights

    layers, rule = _layers(size, method)
    for layer in layers:  # real values (to_empty leaves memory uninitialised)
        for t in layer._fast_params():
            torch.nn.init.normal_(t.data, std=0.1)

    def per_layer():
        return sum(layer._build_weight(rule).sum() for layer in layers)

    def bank():
        return sum(w.sum() for w in batched_weights(layers, rule))

    torch.testing.assert_close(per_layer(), bank(), rtol=1e-4, atol=1e-4)
    builds = {"per layer": per_layer, "bank": bank}
    nodes = {name: _nodes(f()) for name, f in builds.items()}
    ms = interleaved({name: (lambda f=f: f().backward()) for name, f in builds.items()}, reps, torch.device("cpu"))
    rows = [dict(method=name, build=BUILDS[name], adapter_method=method, size=size, layers=len(layers), autograd_nodes=nodes[name],
                 reps=reps, threads=torch.get_num_threads(), dtype="fp32", **timing_fields(ms[name]))
            for name in builds]
    return summarise(rows, "per layer", key="ratio_to_per_layer")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=tuple(SIZES), default="base")
    p.add_argument("--method", choices=("compacter", "compacter++"), nargs="+", default=["compacter"],
                   help="one or more (default: compacter)")
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--json", metavar="PATH", default=None, help="write the rows as a JSON list")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    env = environment()
    out: list[dict] = []
    for method in dict.fromkeys(args.method):
        rows = measure(args.size, method, args.reps)
        print(f"\n{method} at T5-{args.size} shapes: {rows[0]['layers']} PHM layers, fwd+bwd of all W, {args.reps} interleaved reps, "
              "1 thread")
        print("| build | min ms | median ms | x per layer (min) | x per layer (median) | x per layer (paired) | autograd nodes |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['method']} | {r['ms_min']:.2f} | {r['ms_median']:.2f} | {r['ratio_to_per_layer_min']:.3f} "
                  f"| {r['ratio_to_per_layer']:.3f} | {r['ratio_to_per_layer_paired']:.3f} | {r['autograd_nodes']} |")
        out += rows
    print("(the node count includes the summation used to run backward; the same on both sides)")
    write_json(args.json, out, env)
    return out


if __name__ == "__main__":
    main()
