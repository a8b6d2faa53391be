#!/usr/bin/env python
"""Decoder models: the loss and the label scores from the last columns' logits vs from every column.

A decoder row is ``prompt target eos``; only the few target columns enter the loss and the label
scores, yet ``model(**batch).loss`` (what Hugging Face's Trainer calls) projects every column onto
the vocabulary and takes a softmax there. `compacter train` left-pads decoder batches so that the
targets end in the last column, and asks the model for the logits of the last ``span + 1`` columns
only (``logits_to_keep``). Rows, all on the same real-task batches, timed round-robin in one process:

* ``train step / every column``: forward, ``model(**batch).loss``, backward, AdamW step;
* ``train step / last columns``: the same with ``compacter.modeling.decoder_loss`` (what `compacter train` runs);
* ``label scores / every column``: one no-grad forward of every (prompt, label) row, log-softmax on every column
  (the computation `compacter train` made before 2026-11-29, there on right-padded rows);
* ``label scores / last columns``: the same rows, logits on the last columns only (the fallback for models that
  return no key/value cache: ``compacter.modeling._label_row_scores``);
* ``label scores / prompt once``: ``compacter.modeling.label_scores``, what evaluation runs: the prompts once,
  then each label's few tokens on a copy of the prompts' key/value cache.

``logits MiB`` is the size of the float32 logits each row materialises (rows x columns x vocabulary x 4
bytes), computed from the shapes, not measured. The adapters are ours (``--method``, default compacter++).

    python benchmarks/decoder_loss.py --model models/smollm2-135m --task mrpc --threads 1 --json decoder_loss.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import environment, summarise, write_json  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M", help="a decoder model folder or hub name")
    p.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"),
                   help="benchmark files (default ../shared/data; empty string: the HF hub)")
    p.add_argument("--task", default="mrpc")
    p.add_argument("--method", default="compacter++")
    p.add_argument("--adapter", nargs="*", default=["reduction_factor=24"], metavar="KEY=VALUE")
    p.add_argument("--batch", type=int, default=8, help="training batch (the scoring batch is 8 examples x #labels)")
    p.add_argument("--steps", type=int, default=6, help="timed rounds")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import compacter
    from compacter.cli import parse_key_values
    from compacter.modeling import (Batcher, _label_row_scores, decoder_loss, family_of, label_scores, load_model, load_tokenizer,
                                    target_span)
    from compacter.tasks import get_task, paper_splits
    from compacter.training import adamw
    import transformers as T

    family = family_of(T.AutoConfig.from_pretrained(args.model))
    if family != "decoder":
        sys.exit(f"--model {args.model} is a {family} model; this benchmark is for decoder-only models")
    task = get_task(args.task)
    if not task.label_texts:
        sys.exit(f"--task {args.task} has no label strings to score; pick a classification task")
    examples = paper_splits(task, args.data_dir or None, seed=42, train_samples=args.batch * (args.steps + args.warmup),
                            sample_seed=42)["train"]
    torch.manual_seed(0)
    model = load_model(args.model, family, task)
    compacter.add_adapters(model, compacter.CompacterConfig(args.method, **parse_key_values(args.adapter)))
    tokenizer = load_tokenizer(args.model, family)
    batcher = Batcher(tokenizer, family, task)
    optimizer = adamw(compacter.trainable_parameters(model), 3e-3)
    batches = [batcher.train_batch(examples[i:i + args.batch]) for i in range(0, len(examples), args.batch)]
    vocab = model.get_output_embeddings().weight.shape[0]
    labels = list(task.label_texts)

    def train_every(b):
        model.train()
        model(**b).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def train_last(b):
        model.train()
        decoder_loss(model, b, target_span(b["labels"])).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    score_examples = examples[:8]
    every = batcher._decoder_batch([ids for e in score_examples for ids in [batcher.prompt_ids(e)] * len(labels)],
                                   labels * len(score_examples))

    @torch.no_grad()
    def score_every(_):
        model.eval()
        logits = model(input_ids=every["input_ids"], attention_mask=every["attention_mask"],
                       position_ids=every["position_ids"], use_cache=False).logits.float()
        targets = every["labels"][:, 1:]
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        (logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets != -100)).sum(-1)

    @torch.no_grad()
    def score_last(_):
        model.eval()
        _label_row_scores(model, batcher, score_examples, torch.device("cpu"))

    @torch.no_grad()
    def score_once(_):
        model.eval()
        label_scores(model, batcher, score_examples, torch.device("cpu"))

    width = lambda b: b["input_ids"].shape  # noqa: E731
    rows = [
        {"method": "train step / every column", "fn": train_every,
         "logits": max(width(b)[0] * width(b)[1] for b in batches)},
        {"method": "train step / last columns", "fn": train_last,
         "logits": max(width(b)[0] * (target_span(b["labels"]) + 1) for b in batches)},
        {"method": "label scores / every column", "fn": score_every, "logits": width(every)[0] * width(every)[1]},
        {"method": "label scores / last columns", "fn": score_last,
         "logits": width(every)[0] * (target_span(every["labels"]) + 1)},
        {"method": "label scores / prompt once", "fn": score_once,
         "logits": len(score_examples) * (1 + sum(len(batcher.target_ids(t)) - 1 for t in labels))},
    ]
    print(f"{args.model}: {task.name}, {args.method}, batch {args.batch} (widths "
          f"{min(width(b)[1] for b in batches)}-{max(width(b)[1] for b in batches)} tokens), vocabulary {vocab:,}; "
          f"scoring {len(score_examples)} examples x {len(labels)} labels; {torch.get_num_threads()} thread(s)")
    for r in rows:
        r["ms_all"] = []
    for i in range(args.warmup + args.steps):
        b = batches[i]
        for k in range(len(rows)):
            r = rows[(i + k) % len(rows)]  # rotate the order every round
            t0 = time.perf_counter()
            r["fn"](b)
            if i >= args.warmup:
                r["ms_all"].append(1000 * (time.perf_counter() - t0))
    out = []
    for r in rows:
        ms = r["ms_all"]
        out.append({"method": r["method"], "ms_median": round(statistics.median(ms), 2), "ms_min": round(min(ms), 2),
                    "ms_all": [round(x, 2) for x in ms], "logits_mib": round(r["logits"] * vocab * 4 / 2**20, 1)})
    summarise(out[:2], "train step / every column", "ratio")
    summarise(out[2:], "label scores / every column", "ratio")
    print("| row | median ms | min ms | ratio (paired) | logits MiB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in out:
        print(f"| {r['method']} | {r['ms_median']:.0f} | {r['ms_min']:.0f} | {r['ratio_paired']:.3f} | {r['logits_mib']:.0f} |")
    write_json(args.json, [{**r, "model": args.model, "task": task.name, "adapter_method": args.method,
                            "batch": args.batch, "environment": environment()} for r in out])


if __name__ == "__main__":
    main()
