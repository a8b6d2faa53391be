"""Three model families, one text-to-text interface: batching and prediction.

- ``seq2seq`` (T5, BART): the target text is generated; the loss is on the target tokens.
- ``encoder`` (BERT family): a classification head (or a 1-unit regression head for STS-B).
- ``decoder`` (Llama, GPT-2): ``prompt + " " + target + eos``; the loss is on the target
  tokens only. Predictions score every label string (``decoder_predict="score"``) or generate.
  Rows are left-padded, so every target ends in the last column: the loss and the label scores
  need the vocabulary projection on those last few columns only, not on the whole prompt
  (``decoder_loss``; on SmolLM2, whose 49k-word projection is a fifth of its weights, this made a
  training step ~1.2x faster and keeps the [rows, length, vocabulary] logits out of memory).

A generated answer that is not a valid label is kept as is and counts as wrong in the metrics.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import torch
from torch import nn

from .tasks import Example, Task
from .tasks.base import join_fields

FAMILIES = ("seq2seq", "encoder", "decoder")
#: model types with a masked-LM class that are nonetheless used as left-to-right language models
CAUSAL_DESPITE_MASKED_LM = {"reformer"}
DECODER_PROMPT = "{source}\nanswer:"


#: decoder-only types whose forward ignores ``attention_mask``: in a padded batch they would read the padding
IGNORE_PADDING_MASK = {"rwkv"}


def family_of(model_config) -> str:
    """``seq2seq`` for encoder-decoders; ``encoder`` for types transformers knows as masked
    language models (the BERT family: bidirectional attention, so never trained to continue a
    prompt, whose label tokens they would see); ``decoder`` for the other causal-LM types and
    for remote-code models that name an AutoModelForCausalLM. Any other type is a ValueError."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    kind = model_config.model_type
    if getattr(model_config, "is_encoder_decoder", False):
        return "seq2seq"
    if kind in IGNORE_PADDING_MASK:
        raise ValueError(f"model type {kind!r} ignores attention_mask, so the padding of a batch's "
                         "shorter rows would enter its loss and predictions; compacter does not train such models")
    if kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES and kind not in CAUSAL_DESPITE_MASKED_LM:
        return "encoder"
    if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "AutoModelForCausalLM" in (getattr(model_config, "auto_map", None) or {}):
        return "decoder"
    raise ValueError(f"model type {kind!r} is neither an encoder-decoder, a masked LM (encoder) nor a causal LM "
                     "(decoder) that transformers knows, so compacter cannot tell how to train it on a task")


def check_model_path(path: str, option: str = "--model") -> None:
    """A ValueError naming ``option`` when ``path`` is neither an existing file or folder nor a
    possible Hugging Face Hub id ("t5-small", "google-t5/t5-base"): a local path that does not
    exist ("./minilm", "../models/t5", "/data/t5", "~/t5") would otherwise reach transformers as a
    repo id and fail there with "Repo id must use alphanumeric chars". Hub ids pass unchecked, so
    a missing "namespace/name" folder is still tried on the Hub, as before."""
    import os

    from .checkpoint import is_hub_id

    if not os.path.exists(path) and not is_hub_id(path, bare=True):
        where = os.path.abspath(os.path.expanduser(path))
        if where != os.path.abspath(path) and os.path.exists(where):  # a quoted "~": the shell did not expand it
            raise ValueError(f"{option} {path}: '~' is not expanded here; give the path as {where}")
        raise ValueError(f"{option} {path}: no such file or folder ({where}); a model is a local folder with its "
                         "config.json, or a Hugging Face Hub id such as 'google-t5/t5-base'")


def read_model_config(path: str, option: str = "--model"):
    """The transformers config of the model at ``path``; an unreadable one (not JSON, a data file
    given as the model, no such Hub repo) is a ValueError naming ``option`` and ``path``."""
    import transformers as T

    try:
        return T.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{option} {path}: cannot read the model's config ({err})") from None


def model_family(path: str, option: str = "--model") -> str:
    """The family of the model at ``path``, from its config (see :func:`read_model_config`)."""
    return family_of(read_model_config(path, option))


def load_model(path: str, family: str, task: Task, dtype: torch.dtype | None = None, *, adapter: str | None = None,
               train_head: bool = True) -> nn.Module:
    """The pretrained model of ``family`` for ``task`` (a new head for encoders).

    Weights load from safetensors files only (a pickle such as ``pytorch_model.bin`` can run any
    code as it is read): a model without them is a ValueError naming --model and how to convert it.

    An encoder whose classification head was made for another number of labels than the task's
    (a fine-tuned 2-label checkpoint for a 3-label task, or for regression) gets a new head in its
    place, with a logged warning naming the shapes, as ``ignore_mismatched_sizes=True`` does: the
    head is trained anyway (``train_head=False``, a method that would leave it at its random start,
    makes that a ValueError). ``adapter``: the adapter folder that is loaded into the model next
    (evaluate, predict); there a new head must be replaced by the adapter's trained head for the
    task's labels, and where the adapter carries none, the mismatch is a ValueError naming
    --model, its head's shape and the task's label count. Weights of the pretrained body that do
    not fit the model's config are a ValueError either way.
    """
    import transformers as T

    kw = {"dtype": dtype} if dtype is not None else {}
    if family == "seq2seq":
        return _from_pretrained(T.AutoModelForSeq2SeqLM, path, **kw)
    if family == "decoder":
        return _from_pretrained(T.AutoModelForCausalLM, path, **kw)
    if task.num_labels is None:
        raise ValueError(f"task {task.name!r} generates text: use a seq2seq or decoder model, not an encoder")
    problem = "regression" if task.is_regression else "single_label_classification"
    model, info = _from_pretrained(T.AutoModelForSequenceClassification, path, num_labels=task.num_labels, problem_type=problem,
                                   ignore_mismatched_sizes=True, output_loading_info=True, **kw)
    mismatched = sorted((key, tuple(saved), tuple(new)) for key, saved, new in (info or {}).get("mismatched_keys") or ())
    if mismatched:
        _check_new_head(model, path, task, mismatched, adapter, train_head)
    return model


_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_OTHER_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack", "model.ckpt.index")


def _from_pretrained(auto_class, path: str, **kw):
    """``auto_class.from_pretrained(path, use_safetensors=True)``: a ValueError naming --model where
    the model has no safetensors weights (transformers would unpickle a ``pytorch_model.bin``)."""
    import os

    if os.path.isfile(path):
        raise ValueError(f"--model {path}: a file; give the model's folder (its config.json and model.safetensors) "
                         "or a Hugging Face Hub id")
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, name)) for name in _SAFE_WEIGHTS):
        found = [name for name in sorted(os.listdir(path)) if name in _OTHER_WEIGHTS or name.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        has = f"this folder has {', '.join(found)}" if found else "this folder has no weights file"
        raise ValueError(_no_safetensors(path, auto_class, has))
    try:
        return auto_class.from_pretrained(path, use_safetensors=True, **kw)
    except OSError as err:  # a Hub repo without safetensors files
        if "safetensors" not in str(err):
            raise
        raise ValueError(_no_safetensors(path, auto_class, "the repo has no model.safetensors")) from None


def _no_safetensors(path: str, auto_class, has: str) -> str:
    import json
    import os

    name = f"transformers.{auto_class.__name__}"
    try:  # the class it was saved from keeps its head on conversion
        with open(os.path.join(path, "config.json")) as f:
            name = f"transformers.{json.load(f)['architectures'][0]}"
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    return (f"--model {path}: only safetensors weights are loaded (model.safetensors or a sharded "
            f"model.safetensors.index.json), and {has}; a pickled file such as pytorch_model.bin can run any code "
            f"as it is read. If you trust it, convert it once: {name}.from_pretrained({path!r})"
            f".save_pretrained({_local_copy(path)!r}, safe_serialization=True)"
            + ("" if os.path.isdir(path) else f", then pass --model {_local_copy(path)}"))


def _local_copy(path: str) -> str:
    """Where a converted copy goes: the folder itself, or for a Hub id a local folder that does
    not shadow the id ("./t5-base-safetensors", not "google-t5/t5-base")."""
    import os

    return path if os.path.isdir(path) else "./" + path.rstrip("/").split("/")[-1] + "-safetensors"


def _labels(task: Task) -> str:
    return "regression: 1 output" if task.is_regression else f"{task.num_labels} labels"


def _check_new_head(model: nn.Module, path: str, task: Task, mismatched: list[tuple[str, tuple, tuple]], adapter: str | None,
                    train_head: bool = True) -> None:
    """See :func:`load_model`: warn that the head is new, or refuse where it cannot be."""
    import logging

    from .inject import body_prefix

    body = body_prefix(model)
    inside = [m for m in mismatched if body is not None and m[0].startswith(body + ".")]
    if inside:
        shown = ", ".join(f"{key} {list(saved)} (config: {list(new)})" for key, saved, new in inside[:5])
        raise ValueError(f"--model {path}: weights of the pretrained model do not fit its config.json: {shown}")
    head = ", ".join(f"{key} {list(saved)}" for key, saved, _ in mismatched)
    if adapter is None and not train_head:
        raise ValueError(f"--model {path}: its classification head ({head}) was made for another number of labels than "
                         f"task {task.name!r} has ({_labels(task)}), and train_head is false, so a new head would stay at "
                         "its random start: train it (leave train_head at true) or use a model whose head fits the task")
    if adapter is None:
        logging.getLogger(__name__).warning(
            "--model %s: its classification head (%s) was made for another number of labels than task %r has (%s): "
            "a new head (%s) is initialized in its place and trained", path, head, task.name, _labels(task),
            ", ".join(f"{key} {list(new)}" for key, _, new in mismatched))
        return
    shapes = _adapter_shapes(adapter)
    if shapes is None:  # unreadable: loading the adapter says why
        return
    own = {key: shapes.get(f"tuned.{key}", shapes.get(f"model.{key}")) for key, _, _ in mismatched}
    if all(own[key] == new for key, _, new in mismatched):
        return  # the adapter brings its trained head for the task's labels
    carried = {key: shape for key, shape in own.items() if shape is not None}
    what = (f"carries a head for another number of labels ({', '.join(f'{k} {list(v)}' for k, v in carried.items())})" if carried
            else "carries no trained head to put in its place")
    raise ValueError(f"--model {path}: its classification head ({head}) does not fit task {task.name!r} ({_labels(task)}), "
                     f"and the adapter {adapter} {what}; pass the task the adapter was trained on (--task) or the model "
                     "whose head it was trained with (--model)")


def _adapter_shapes(adapter: str) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> shape of a saved adapter's weights file (its header only); None if unreadable."""
    from safetensors import safe_open

    from .checkpoint import WEIGHTS_NAME, adapter_folder

    try:
        with safe_open(str(adapter_folder(adapter) / WEIGHTS_NAME), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception:  # noqa: BLE001 - any unreadable file: load_adapters reports it properly
        return None


def load_tokenizer(path: str, family: str):
    import transformers as T

    tokenizer = T.AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class Batcher:
    """Turns examples into model inputs for one family."""

    def __init__(self, tokenizer, family: str, task: Task, max_source_length: int = 128, max_target_length: int = 16):
        if family not in FAMILIES:
            raise ValueError(f"unknown model family {family!r}; allowed: {', '.join(FAMILIES)}")
        self.tok, self.family, self.task = tokenizer, family, task
        self.max_source, self.max_target = max_source_length, max_target_length

    def train_batch(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        if self.family == "seq2seq":
            enc = self._sources(examples)
            tgt = self.tok([e.target for e in examples], max_length=self.max_target, truncation=True, padding=True, return_tensors="pt")
            labels = tgt["input_ids"].masked_fill(tgt["attention_mask"] == 0, -100)
            return {**enc, "labels": labels}
        if self.family == "encoder":
            enc = self._sources(examples)
            dtype = torch.float32 if self.task.is_regression else torch.long
            return {**enc, "labels": torch.tensor([e.label for e in examples], dtype=dtype)}
        return self._decoder_batch([self.prompt_ids(e) for e in examples], [e.target for e in examples])

    def _sources(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Encoder and seq2seq inputs, at most ``max_source_length`` tokens.

        An encoder input that is too long loses the end of its longest field, as a decoder prompt
        does (``prompt_ids``): a long RTE premise no longer pushes the whole hypothesis out. A
        seq2seq input loses its end, as the paper's T5 code truncates.
        """
        sources = [e.source for e in examples]
        encoder = self.family == "encoder"  # an encoder batch is tokenized whole first: one call where all fit
        cut = {} if encoder else {"max_length": self.max_source, "truncation": True}
        enc = dict(self.tok(sources, padding=True, return_tensors="pt", **cut))
        if encoder and enc["input_ids"].shape[1] > self.max_source:
            lengths = enc["attention_mask"].sum(1).tolist()
            sources = [self._fit_source(e, "{source}")[0] if n > self.max_source else e.source for e, n in zip(examples, lengths)]
            enc = dict(self.tok(sources, max_length=self.max_source, truncation=True, padding=True, return_tensors="pt"))
        if self.family == "seq2seq":  # a tokenizer's token_type_ids (transformers 4 gives some): T5/BART take none
            enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        return enc

    def prompt_ids(self, example: Example) -> list[int]:
        """Token ids of a decoder prompt ``source + "\nanswer:"``, at most ``max_source_length``.

        A prompt that is too long loses the end of its longest input fields (a passage, a premise;
        see ``_fit_source``), as Hugging Face's "longest_first" truncation does for text pairs:
        the start token, the short fields (a question, a hypothesis) and the answer cue stay.
        An example without separate fields keeps its start token and its last tokens.
        """
        ids = self._fit_source(example, DECODER_PROMPT)[1]
        if len(ids) <= self.max_source:
            return ids
        start = len(self.tok("", add_special_tokens=True)["input_ids"])  # BOS, where the tokenizer adds one
        return ids[:start] + ids[len(ids) - (self.max_source - start):]

    def _fit_source(self, example: Example, template: str) -> tuple[str, list[int]]:
        """``(source, ids)``: the example's source with its longest fields cut from the end until
        ``template.format(source=source)`` takes at most ``max_source_length`` tokens with the
        special tokens: every field longer than a common cap is cut to that cap, the largest cap
        that removes enough (Hugging Face's "longest_first": a long premise is cut before a short
        hypothesis, two long ones evenly). Without separate fields (or when they cannot be cut
        enough) the ids may stay too long; the caller cuts them."""
        source = example.source
        ids = self.tok(template.format(source=source), add_special_tokens=True)["input_ids"]
        fields = dict(example.fields)
        if len(ids) <= self.max_source or not fields or join_fields(fields) != source:
            return source, ids
        for _ in range(8):  # retokenising the whole text can differ by a token or two: a few rounds at most
            tokens = {name: self.tok(text, add_special_tokens=False)["input_ids"] for name, text in fields.items()}
            cap = _cap([len(t) for t in tokens.values()], len(ids) - self.max_source)
            for name, toks in tokens.items():
                if len(toks) > cap:
                    fields[name] = self.tok.decode(toks[:cap]).rstrip()
            source = join_fields(fields)
            ids = self.tok(template.format(source=source), add_special_tokens=True)["input_ids"]
            if len(ids) <= self.max_source:
                break
        return source, ids

    def _decoder_batch(self, prompts: Sequence[list[int]], targets: Sequence[str]) -> dict[str, torch.Tensor]:
        """Left-padded ``prompt target eos`` rows from prompt token ids.

        ``labels`` are -100 except on the target and eos; ``position_ids`` count each row's own
        tokens from 0, so absolute-position models (GPT-2) see the positions an unpadded row would.
        Every row ends in the last column: the targets lie in the last ``target_span`` columns.
        A plain ``model(**batch).loss`` (Hugging Face's Trainer) works on these batches too.
        """
        rows, label_rows = [], []
        for p, target in zip(prompts, targets):
            t = self.target_ids(target)
            rows.append(p + t)
            label_rows.append([-100] * len(p) + t)
        width = max(len(r) for r in rows)
        labels = torch.tensor([[-100] * (width - len(r)) + r for r in label_rows])
        return {**self.left_pad(rows), "labels": labels}

    def left_pad(self, rows: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``position_ids`` (each row's own count from 0) of left-padded rows."""
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.tok.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}

    def target_ids(self, target: str) -> list[int]:
        """The token ids a decoder is trained to produce for ``target``: `` target`` and eos."""
        eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
        return (self.tok(" " + target, add_special_tokens=False)["input_ids"] + eos)[: self.max_target]


def _cap(lengths: Sequence[int], excess: int) -> int:
    """The largest ``c >= 0`` with ``sum(max(0, n - c) for n in lengths) >= excess``: cutting every
    field longer than ``c`` to ``c`` removes at least ``excess`` tokens, the longest first."""
    cap = max(lengths, default=0)
    while cap > 0 and sum(max(0, n - cap) for n in lengths) < excess:
        cap -= 1
    return cap


def target_span(labels: torch.Tensor) -> int:
    """How many last columns of a left-padded decoder batch hold target tokens (read on the host)."""
    has_target = (labels != -100).any(0)
    return labels.shape[1] - int(has_target.int().argmax()) if bool(has_target.any()) else 0


def _accepts(model: nn.Module, name: str) -> bool:
    """Whether the Hugging Face model inside ``model`` (DDP, FSDP, DeepSpeed, torch.compile, PEFT) takes ``name``."""
    inner = model
    for _ in range(8):
        if hasattr(inner, "get_base_model"):  # PEFT
            inner = inner.get_base_model()
        elif isinstance(getattr(inner, "_orig_mod", None), nn.Module):  # torch.compile
            inner = inner._orig_mod
        elif isinstance(getattr(inner, "module", None), nn.Module):  # DDP, FSDP, DeepSpeed engines
            inner = inner.module
        else:
            break
    return name in inspect.signature(inner.forward).parameters


def _target_logits(model: nn.Module, batch: dict[str, torch.Tensor], span: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``span`` columns of a left-padded decoder batch: float logits predicting them
    [rows, span, vocab], and their labels [rows, span] (-100 where a row's target is shorter)."""
    kw = {"logits_to_keep": span + 1} if _accepts(model, "logits_to_keep") else {}
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
                use_cache=False, **kw)
    width = out.logits.shape[1]  # span + 1, or the whole row where the model computes every column
    labels = batch["labels"]
    return out.logits[:, width - span - 1:width - 1].float(), labels[:, labels.shape[1] - span:]  # t is predicted at t-1


def decoder_loss(model: nn.Module, batch: dict[str, torch.Tensor], span: int) -> torch.Tensor:
    """Mean cross-entropy over the target tokens of a decoder batch (``Batcher.train_batch``), as
    ``model(**batch).loss`` gives, with logits computed on the last ``span + 1`` columns only."""
    logits, targets = _target_logits(model, batch, span)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


@torch.no_grad()
def predict_batch(model: nn.Module, batcher: Batcher, examples: Sequence[Example], decoder_predict: str = "score") -> list[str]:
    """Predicted target strings for ``examples``."""
    device = next(model.parameters()).device
    task = batcher.task
    if batcher.family == "encoder":
        enc = {k: v.to(device) for k, v in batcher._sources(examples).items()}
        logits = model(**enc).logits.float()  # [B, num_labels]
        outputs = logits[:, 0].tolist() if task.is_regression else logits.argmax(-1).tolist()
        return task.to_targets(outputs)
    if batcher.family == "decoder" and decoder_predict == "score" and task.label_texts:
        return _score_labels(model, batcher, examples, device)
    return _generate(model, batcher, examples, device)


def _generate(model: nn.Module, batcher: Batcher, examples: Sequence[Example], device) -> list[str]:
    tok = batcher.tok
    if batcher.family == "seq2seq":
        enc = {k: v.to(device) for k, v in batcher._sources(examples).items()}
        out = model.generate(**enc, max_new_tokens=batcher.max_target, do_sample=False)
    else:
        padded = batcher.left_pad([batcher.prompt_ids(e) for e in examples])  # the prompts training saw
        enc = {k: padded[k].to(device) for k in ("input_ids", "attention_mask")}
        out = model.generate(**enc, max_new_tokens=batcher.max_target, do_sample=False, pad_token_id=tok.pad_token_id)
        out = out[:, enc["input_ids"].shape[1]:]  # only the new tokens
    return [text.strip() for text in tok.batch_decode(out, skip_special_tokens=True)]


def _score_labels(model: nn.Module, batcher: Batcher, examples: Sequence[Example], device) -> list[str]:
    """Pick, for each example, the label string with the highest log-likelihood after the prompt."""
    labels = list(batcher.task.label_texts)
    return [labels[i] for i in label_scores(model, batcher, examples, device).argmax(-1).tolist()]


def label_scores(model: nn.Module, batcher: Batcher, examples: Sequence[Example], device) -> torch.Tensor:
    """[examples, labels]: the log-likelihood of each label string (`` label`` and eos) after each prompt.

    The prompts run once and keep their key/value cache; each label's tokens then run on a copy of
    that cache (one [examples, label length] batch per label: every example gets the same label
    tokens). A model without such a cache scores every (prompt, label) row in full instead.
    """
    labels = list(batcher.task.label_texts)
    prompts = {k: v.to(device) for k, v in batcher.left_pad([batcher.prompt_ids(e) for e in examples]).items()}
    keep = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    cache_arg = next((name for name in ("cache", "past_key_values") if _accepts(model, name)), None)  # transformers 5 / 4
    out = model(**prompts, use_cache=True, **keep) if cache_arg else None
    cache = _attention_cache(out, prompts["input_ids"].shape[1])
    if cache is None:
        return _label_row_scores(model, batcher, examples, device)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [B, V]: the first label token's
    lengths = prompts["attention_mask"].sum(-1, keepdim=True)  # [B, 1]
    scores = []
    for label in labels:
        target = torch.tensor(batcher.target_ids(label), device=device)
        score = first[:, target[0]]
        if len(target) > 1:  # feed all but the last label token after the prompt; they predict the rest
            fed = target[:-1].expand(len(examples), -1)
            mask = torch.cat([prompts["attention_mask"], torch.ones_like(fed)], dim=1)
            positions = lengths + torch.arange(fed.shape[1], device=device)
            logits = model(input_ids=fed, attention_mask=mask, position_ids=positions, use_cache=True,
                           **{cache_arg: copy.deepcopy(cache)}).logits.float()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, target[1:].expand(len(examples), -1).unsqueeze(-1))
            score = score + logp.squeeze(-1).sum(-1)
        scores.append(score)
    return torch.stack(scores, dim=1)


def _attention_cache(out, width: int):
    """The key/value cache of a prompt pass, if it is one that label tokens can continue: it holds all
    ``width`` prompt columns (AdapterHub's Llama under transformers 4.57 returns an empty one) and no
    layer keeps a recurrent state (Mamba's, whose padding handling expects a mask of the new tokens only)."""
    if out is None:
        return None
    fields = out if isinstance(out, dict) else vars(out)  # a ModelOutput is a dict: no deprecated-name property read
    cache = fields.get("cache")  # transformers 5
    cache = cache if cache is not None else fields.get("past_key_values")  # transformers 4
    if cache is None or any("LinearAttention" in type(layer).__name__ for layer in getattr(cache, "layers", [])):
        return None
    return cache if hasattr(cache, "get_seq_length") and cache.get_seq_length() == width else None


def _label_row_scores(model: nn.Module, batcher: Batcher, examples: Sequence[Example], device) -> torch.Tensor:
    """``label_scores`` without a cache: every (prompt, label) row in full, logits on the last columns only."""
    labels = list(batcher.task.label_texts)
    prompts = [ids for e in examples for ids in [batcher.prompt_ids(e)] * len(labels)]
    batch = batcher._decoder_batch(prompts, labels * len(examples))
    span = target_span(batch["labels"])
    batch = {k: v.to(device) for k, v in batch.items()}
    logits, targets = _target_logits(model, batch, span)
    logp = torch.log_softmax(logits, dim=-1)  # [B*C, span, V]
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets != -100)
    return picked.sum(-1).view(len(examples), len(labels))
