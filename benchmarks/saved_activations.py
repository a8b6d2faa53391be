#!/usr/bin/env python
"""Activation memory of one training step: the bytes autograd keeps for backward, per row, in one process.

What a training step holds at its peak, besides weights, gradients and optimizer state, is what
the forward saved for backward. This counts it exactly on any device (the CPU too, where the
allocator reports no peak): the largest total, during the row's step, of the saved tensors still
alive, each storage counted once, without the model's parameters and buffers (resident in every
row alike). The rows are
those of ``train_step.py``; ``compacter++-autograd-norms`` is compacter++ with its trained RMS
norms run by the norm classes' own forward (``compacter.norms`` off), so the pair shows what the
lean norms keep out of memory.

    python benchmarks/saved_activations.py --size small
    python benchmarks/saved_activations.py --size base --batch 64 --src-len 128 --dtype bf16 --json saved.json
"""

from __future__ import annotations

import os
import sys
import weakref

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import (  # noqa: E402
    ALL_METHODS, DESCRIPTIONS, Row, Skip, common_args, count_trainable, environment, fmt_bytes, fmt_count, free,
    make_batch, make_train_step, prepare_model, print_table, resolve_shape, write_json,
)

METHODS = ("floor", "compacter++", "compacter++-autograd-norms", "compacter++-noln", "compacter", "compacter-autograd-norms",
           "full", "peft-lora")


def saved_bytes(step, model) -> tuple[int, int]:
    """(bytes, tensors) at the peak of what is saved for backward during ``step()``: the distinct
    storages of saved tensors still alive (a graph branch can be dropped during the forward and
    its memory reused), not counting the model's parameters and buffers."""
    resident = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    live: dict[int, tuple[weakref.ref, int]] = {}
    peak = [0, 0]

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in resident and storage.nbytes():
            live[storage.data_ptr()] = (weakref.ref(t), storage.nbytes())
            for ptr in [ptr for ptr, (ref, _) in live.items() if ref() is None]:
                del live[ptr]
            total = sum(n for _, n in live.values())
            if total > peak[0]:
                peak[:] = [total, len(live)]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return peak[0], peak[1]


def main(argv=None) -> list[dict]:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated; floor is always added. Known: {', '.join(ALL_METHODS)}")
    args = p.parse_args(argv)
    resolve_shape(args)
    methods = ["floor"] + [m for m in dict.fromkeys(x.strip() for x in args.methods.split(",")) if m and m != "floor"]
    unknown = [m for m in methods if m not in ALL_METHODS or m.startswith("ah-")]
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {', '.join(m for m in ALL_METHODS if not m.startswith('ah-'))}")
    device = torch.device(args.device)
    batch = make_batch(args.size, args.batch, args.src_len, args.tgt_len, device, args.seed + 1)
    rows = []
    for method in methods:
        try:
            model, params = prepare_model(method, args.size, device, args.seed)
        except Skip as exc:
            print(f"| {method} | skipped: {exc} |")
            continue
        opt = torch.optim.AdamW(params) if params else None
        trainable, total = count_trainable(model, params)
        row = Row(method, model, params, opt, trainable, total)
        step = make_train_step(row, batch, device, args.dtype, model)
        step()  # a first step outside the count: lazy state (optimizer, caches) is made here
        nbytes, ntensors = saved_bytes(step, model)
        rows.append(dict(method=method, description=DESCRIPTIONS.get(method, ""), saved_bytes=nbytes, saved_tensors=ntensors,
                         trainable=trainable, total=total, size=args.size, dtype=args.dtype, batch=args.batch,
                         src_len=args.src_len, tgt_len=args.tgt_len, device=args.device))
        print(f"  {method}: {fmt_bytes(nbytes)} in {ntensors} tensors", file=sys.stderr)
        free(model, opt, row)
    floor = rows[0]["saved_bytes"]
    for r in rows:
        r["ratio_to_floor"] = round(r["saved_bytes"] / floor, 4) if floor else None
    print(f"\nSaved for backward, one training step, T5-{args.size}, {args.device}, {args.dtype}, batch {args.batch}, "
          f"src {args.src_len}, tgt {args.tgt_len} (torch {torch.__version__})\n")
    print_table(rows, "floor", [
        ("method", "method", str),
        ("saved for backward", "saved_bytes", fmt_bytes),
        ("x floor", "ratio_to_floor", lambda v: f"{v:.3f}"),
        ("tensors", "saved_tensors", str),
        ("trainable", "trainable", fmt_count),
    ])
    write_json(args.json, rows, environment())
    return rows


if __name__ == "__main__":
    main()
