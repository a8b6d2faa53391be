"""All PHM weights of a model, built layer by layer or as one bank (compacter.phm.batched_weights).

Forward + backward of every W a Compacter(++) step needs at T5 shapes (random weights; the W go
into a sum so that backward runs), the two ways interleaved, min and median of the repetitions,
and the number of autograd nodes each way (a proxy for kernel launches on a GPU). 1 thread.

    .venv/bin/python benchmarks/bank_build.py --size base --method compacter --reps 200
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import compacter
from compacter.inject import get_state
from compacter.phm import batched_weights


def _layers(size: str, method: str):
    import transformers as T

    d = {"small": (512, 2048, 6), "base": (768, 3072, 12), "large": (1024, 4096, 24)}[size]
    config = T.T5Config(d_model=d[0], d_ff=d[1], num_layers=d[2], num_decoder_layers=d[2], num_heads=8, d_kv=64, vocab_size=128)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("small", "base", "large"), default="base")
    p.add_argument("--method", choices=("compacter", "compacter++"), default="compacter")
    p.add_argument("--reps", type=int, default=100)
    args = p.parse_args()
    torch.set_num_threads(1)
    layers, rule = _layers(args.size, args.method)
    for layer in layers:  # real values (to_empty leaves memory uninitialised)
        for t in layer._fast_params():
            torch.nn.init.normal_(t.data, std=0.1)

    def per_layer():
        return sum(layer.weight(rule).sum() for layer in layers)

    def bank():
        return sum(w.sum() for w in batched_weights(layers, rule))

    torch.testing.assert_close(per_layer(), bank(), rtol=1e-4, atol=1e-4)
    times: dict[str, list[float]] = {"per layer": [], "bank": []}
    nodes = {"per layer": _nodes(per_layer()), "bank": _nodes(bank())}
    for _ in range(args.reps):
        for name, f in (("per layer", per_layer), ("bank", bank)):
            t0 = time.perf_counter()
            f().backward()
            times[name].append((time.perf_counter() - t0) * 1e3)
    print(f"{args.method} at T5-{args.size} shapes: {len(layers)} PHM layers, fwd+bwd of all W, {args.reps} interleaved reps, 1 thread")
    print("| build | min ms | median ms | autograd nodes |\n|---|---:|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts):.2f} | {statistics.median(ts):.2f} | {nodes[name]} |")
    print("(the node count includes the summation used to run backward; the same on both sides)")


if __name__ == "__main__":
    main()
