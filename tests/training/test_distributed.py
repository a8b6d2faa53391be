"""Two CPU processes (DDP over gloo) end where one process with the same global batch ends (dropout-free models:
with dropout each process draws its own masks);
the library's adapters also train unchanged under the transformers Trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

import compacter
from compacter.checkpoint import WEIGHTS_NAME
from compacter.training import TrainConfig, train

from .test_training import FAST


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_ddp_matches_one_process(model_dirs, tmp_path):
    """`torchrun --nproc_per_node 2 -m compacter train` (the documented multi-process command, CPU/gloo
    here) ends with the adapter one process gets from the same global batch, and exits cleanly.
    21 examples at a global batch of 8: each epoch's third step is the 5 left, split 3 + 2 over the
    processes, each example weighing what it weighs in the one process's batch of 5."""
    common = {**FAST, "model": model_dirs["encoder"], "train_samples": 21, "max_steps": 5, "eval_every": 2, "eval_before": False}
    train(TrainConfig(**{**common, "batch_size": 8, "output_dir": str(tmp_path / "one")}), log=lambda *a: None)
    cfg = tmp_path / "two.json"
    cfg.write_text(json.dumps({**common, "batch_size": 4, "output_dir": str(tmp_path / "two")}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                           "--master_port", str(_free_port()), "-m", "compacter", "train", "--config", str(cfg)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    one, two = (load_file(tmp_path / name / "last" / WEIGHTS_NAME) for name in ("one", "two"))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    base = json.loads((tmp_path / "two" / "results.json").read_text())
    assert base["steps"] == 5
    evals_one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    evals_two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [(e["step"], e["epoch"]) for e in evals_two] == [(2, 0), (4, 1), (5, 1)]  # 3 steps an epoch
    assert [e["score"] for e in evals_one] == [e["score"] for e in evals_two]
    # the logged training loss is the mean over both processes' halves of each batch
    for a, b in zip(evals_one, evals_two, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-4 * abs(a["train_loss"])


def test_adapters_train_unchanged_under_the_transformers_trainer(model_dirs, tmp_path):
    import transformers as T

    from compacter.modeling import Batcher
    from compacter.tasks import get_task, load_split

    task = get_task("demo")
    model = T.AutoModelForSequenceClassification.from_pretrained(model_dirs["encoder"], num_labels=2)
    tokenizer = T.AutoTokenizer.from_pretrained(model_dirs["encoder"])
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    compacter.add_adapters(model, compacter.CompacterConfig("compacter++", reduction_factor=4))
    batcher = Batcher(tokenizer, "encoder", task)
    examples = load_split("demo", "train")[:32]
    args = T.TrainingArguments(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=8, max_steps=3, learning_rate=1e-2,
                               report_to=[], save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True)
    trainer = T.Trainer(model=model, args=args, train_dataset=examples, data_collator=batcher.train_batch)
    trainer.train()
    assert trainer.state.global_step == 3
    with compacter.disable_adapters(model):
        for n, p in model.named_parameters():
            if n in base:
                assert torch.equal(p, base[n]), n
    pending = compacter.inject.adapter_modules(model)
    fresh = compacter.CompacterConfig("compacter++", reduction_factor=4)
    assert pending.config == fresh
    compacter.save_adapters(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / WEIGHTS_NAME).exists()


def test_adapters_train_unchanged_under_seq2seq_trainer(model_dirs, tmp_path):
    import transformers as T

    from compacter.modeling import Batcher
    from compacter.tasks import get_task, load_split

    model = T.AutoModelForSeq2SeqLM.from_pretrained(model_dirs["seq2seq"])
    tokenizer = T.AutoTokenizer.from_pretrained(model_dirs["seq2seq"])
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    compacter.add_adapters(model, compacter.CompacterConfig("compacter", reduction_factor=4))
    rule_before = model.compacter.rules["default"].A.detach().clone()
    batcher = Batcher(tokenizer, "seq2seq", get_task("demo"))
    args = T.Seq2SeqTrainingArguments(output_dir=str(tmp_path / "s2s"), per_device_train_batch_size=8, max_steps=2, learning_rate=1e-2,
                                      report_to=[], save_strategy="steps", save_steps=2, use_cpu=True, disable_tqdm=True)
    trainer = T.Seq2SeqTrainer(model=model, args=args, train_dataset=load_split("demo", "train")[:16], data_collator=batcher.train_batch)
    trainer.train()  # its checkpoint (save_pretrained) failed on the twice-registered layer norms
    assert (tmp_path / "s2s" / "checkpoint-2" / "model.safetensors").exists()
    assert not torch.equal(model.compacter.rules["default"].A, rule_before)  # the shared rule was trained
    with compacter.disable_adapters(model):
        assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)


_DIVERGE_ON_RANK_1 = """
import json, os, sys
import compacter.training as training
from compacter.training import TrainConfig, TrainingDiverged, end_distributed, train

real_load = training.load_model

def poisoned(*args, **kw):  # process 1's third training loss becomes NaN; process 0's stay finite
    model = real_load(*args, **kw)
    forward, calls = model.forward, []
    def nan_forward(*a, **k):
        out = forward(*a, **k)
        if model.training and os.environ["RANK"] == "1":
            calls.append(1)
            if len(calls) == 3:
                out.loss = out.loss * float("nan")
        return out
    model.forward = nan_forward
    return model

training.load_model = poisoned
try:
    train(TrainConfig(**json.loads(open(sys.argv[1]).read())), log=lambda *a: None)
except TrainingDiverged as err:
    print(f"rank {os.environ['RANK']}: {err}", flush=True)
    end_distributed()
    os._exit(3)
"""


def test_a_loss_diverging_on_one_process_stops_every_process(model_dirs, tmp_path):
    """Without the agreement, process 1 raised alone and process 0 hung in the gradient all-reduce."""
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**FAST, "model": model_dirs["encoder"], "batch_size": 4, "max_steps": 6, "eval_every": 2,
                               "eval_before": False, "output_dir": str(tmp_path / "run")}))
    script = tmp_path / "diverge.py"
    script.write_text(_DIVERGE_ON_RANK_1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                           "--master_port", str(_free_port()), str(script), str(cfg)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "rank 0: another process's loss is not finite at step 2" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "rank 1: loss is nan at step 2" in proc.stdout, proc.stdout + proc.stderr[-3000:]
