#!/usr/bin/env python
"""W build micro-benchmark: the old einsum kronecker_sum against the one-GEMM version, fwd+bwd, 1 thread.

One PHM layer's ``W = Σ_i A_i ⊗ (s_i t_i)`` at T5-base down-projection shapes (A [4,4,4], s [4,192,1],
t [4,1,6]), forward + backward; each round times ``--calls`` calls of each way, the two interleaved
(the order rotating each round); the rows hold µs per call of every round (``ms_*`` fields are ms
per call) and the ratios to the einsum within the run. ``--json PATH`` writes the rows.

    .venv/bin/python benchmarks/kron_build.py --rounds 3 --calls 2000 --json kron.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import environment, summarise, timing_fields, write_json  # noqa: E402

WAYS = {"einsum": "einsum (the old compacter.phm.kronecker_sum)", "one GEMM": "one GEMM (compacter.phm.kronecker_sum)"}


def old(rule, fast):
    n, p, q = fast.shape[-3:]
    w = torch.einsum("iab,...ixy->...axby", rule, fast)
    return w.reshape(*fast.shape[:-3], n * p, n * q)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=2000, help="calls of each way per round (default 2000)")
    p.add_argument("--json", metavar="PATH", default=None, help="write the rows as a JSON list")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from compacter.phm import kronecker_sum

    A = torch.randn(4, 4, 4, requires_grad=True)
    s = torch.randn(4, 192, 1, requires_grad=True)
    t = torch.randn(4, 1, 6, requires_grad=True)
    torch.testing.assert_close(old(A, s @ t), kronecker_sum(A, s @ t))
    fns = {"einsum": old, "one GEMM": kronecker_sum}
    per_call: dict[str, list[float]] = {name: [] for name in fns}  # ms per call, one value per round
    for r in range(args.rounds):
        for name in list(fns)[r % 2:] + list(fns)[:r % 2]:
            f = fns[name]
            t0 = time.perf_counter()
            for _ in range(args.calls):
                w = f(A, torch.bmm(s, t))
                w.sum().backward()
            per_call[name].append((time.perf_counter() - t0) / args.calls * 1e3)
    rows = [dict(method=name, way=WAYS[name], shapes=dict(A=[4, 4, 4], s=[4, 192, 1], t=[4, 1, 6]), rounds=args.rounds,
                 calls_per_round=args.calls, threads=1, us_per_call_all=[round(v * 1e3, 1) for v in ms],
                 **timing_fields(ms, digits=6))
            for name, ms in per_call.items()]
    summarise(rows, "einsum")
    print(f"W build, fwd+bwd, 1 thread, {args.rounds} interleaved rounds of {args.calls} calls: µs per call")
    print("| way | each round | min | x einsum (min) | x einsum (paired) |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['way']} | {' / '.join(f'{v:.1f}' for v in r['us_per_call_all'])} | {r['ms_min'] * 1e3:.1f} "
              f"| {r['ratio_to_einsum_min']:.3f} | {r['ratio_to_einsum_paired']:.3f} |")
    write_json(args.json, rows, environment())
    return rows


if __name__ == "__main__":
    main()
