"""Decoder batches are left-padded and their loss and label scores use the last columns' logits only:
both must equal what each row gives alone, unpadded, with the model's own full-width loss."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import transformers as T

from compacter.modeling import Batcher, family_of, _label_row_scores, decoder_loss, label_scores, load_tokenizer, target_span
from compacter.tasks import get_task, load_split

SMALL = dict(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, hidden_size=32, intermediate_size=64,
             max_position_embeddings=256, pad_token_id=0, eos_token_id=2, bos_token_id=3)


def _decoder(arch: str, vocab: int):
    torch.manual_seed(0)
    if arch == "gpt2":  # absolute positions: left padding is only right with position_ids
        return T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=vocab, n_positions=256,
                                              bos_token_id=3, eos_token_id=2, attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0))
    if arch == "mistral":  # a sliding window shorter than the prompts
        return T.MistralForCausalLM(T.MistralConfig(vocab_size=vocab, sliding_window=4, **SMALL))
    if arch == "qwen2":
        return T.Qwen2ForCausalLM(T.Qwen2Config(vocab_size=vocab, use_sliding_window=True, sliding_window=4, max_window_layers=0,
                                                **SMALL))
    return T.LlamaForCausalLM(T.LlamaConfig(vocab_size=vocab, **SMALL))


#: targets of 1-4 tokens (and eos), so that a batch's rows end their prompts in different columns
TARGETS = ("0 1", "2 3 4 5", "6", "7 8")


def _setup(model_dirs, arch):
    tok = load_tokenizer(model_dirs["decoder"], "decoder")
    task = get_task("demo")
    batcher = Batcher(tok, "decoder", task)
    examples = load_split("demo", "train")[:6]
    assert len({len(batcher.prompt_ids(e)) for e in examples}) > 1  # rows of different lengths: real padding
    return batcher, examples, _decoder(arch, len(tok)).eval()


def _alone(batcher, model, example, target):
    """One row, unpadded, through the model's own loss: (mean loss, number of target tokens)."""
    row = batcher._decoder_batch([batcher.prompt_ids(example)], [target])
    n = int((row["labels"] != -100).sum())
    return model(input_ids=row["input_ids"], attention_mask=row["attention_mask"], labels=row["labels"]).loss, n


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mistral", "qwen2"])
def test_decoder_loss_and_gradient_equal_unpadded_rows(model_dirs, arch):
    batcher, examples, model = _setup(model_dirs, arch)
    examples = [dataclasses.replace(e, target=TARGETS[i % len(TARGETS)]) for i, e in enumerate(examples)]
    batch = batcher.train_batch(examples)
    assert (batch["attention_mask"][:, -1] == 1).all() and (batch["attention_mask"][:, 0] == 0).any()  # left-padded
    span = target_span(batch["labels"])
    assert span == max(int((r != -100).sum()) for r in batch["labels"]) == 5

    losses = [_alone(batcher, model, e, e.target) for e in examples]
    reference = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    reference.backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    ours = decoder_loss(model, batch, span)
    ours.backward()
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    for k, g in want.items():
        torch.testing.assert_close(dict(model.named_parameters())[k].grad, g, rtol=1e-4, atol=1e-6, msg=k)
    # Hugging Face's Trainer calls model(**batch).loss on the same batches: the same number
    torch.testing.assert_close(model(**batch).loss, reference, rtol=1e-5, atol=1e-5)


def _no_cache(model):
    """``model`` behind a forward that takes neither ``logits_to_keep`` nor a cache and returns logits only."""

    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, position_ids, use_cache):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
            return T.modeling_outputs.CausalLMOutput(logits=out.logits)

    return Plain(model)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mistral", "qwen2"])
def test_label_scores_equal_unpadded_rows(model_dirs, arch, monkeypatch):
    batcher, examples, model = _setup(model_dirs, arch)
    batcher.task = SimpleNamespace(label_texts=TARGETS)
    assert sorted(len(batcher.target_ids(t)) for t in batcher.task.label_texts) == [2, 3, 3, 5]
    cpu = torch.device("cpu")
    want = _reference_scores(batcher, model, examples)
    with torch.no_grad():
        torch.testing.assert_close(_label_row_scores(model, batcher, examples, cpu), want, rtol=1e-5, atol=1e-4)
        # the prompt's cache, shared by the labels: the path evaluation takes, and it must not fall back
        monkeypatch.setattr("compacter.modeling._label_row_scores", lambda *a: pytest.fail("fell back to full rows"))
        torch.testing.assert_close(label_scores(model, batcher, examples, cpu), want, rtol=1e-5, atol=1e-4)


def _reference_scores(batcher, model, examples):
    with torch.no_grad():
        return torch.tensor([[-loss.item() * n for loss, n in (_alone(batcher, model, e, label) for label in batcher.task.label_texts)]
                             for e in examples])


def test_label_scores_fall_back_without_a_usable_cache(model_dirs):
    """No cache, or one that does not hold the prompt (AdapterHub's Llama under transformers 4.57
    returns an empty one): every (prompt, label) row is scored in full, and correctly."""
    batcher, examples, model = _setup(model_dirs, "llama")
    batcher.task = SimpleNamespace(label_texts=TARGETS)
    want = _reference_scores(batcher, model, examples)

    class EmptyCache(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, position_ids, use_cache, cache=None, logits_to_keep=0):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                             logits_to_keep=logits_to_keep)
            output = T.modeling_outputs.CausalLMOutputWithPast
            name = "cache" if "cache" in output.__dataclass_fields__ else "past_key_values"  # transformers 5 / 4
            return output(logits=out.logits, **{name: T.DynamicCache() if use_cache else None})

    cpu = torch.device("cpu")
    with torch.no_grad():
        for wrapped in (_no_cache(model), EmptyCache(model)):
            torch.testing.assert_close(label_scores(wrapped, batcher, examples, cpu), want, rtol=1e-5, atol=1e-4)


def test_adapterhub_label_scores_equal_unpadded_rows(model_dirs):
    """AdapterHub's `adapters` (its own venv, transformers 4.x): its Llama returns an empty cache."""
    pytest.importorskip("adapters")
    from compacter.peers import add_peer

    batcher, examples, model = _setup(model_dirs, "llama")
    batcher.task = SimpleNamespace(label_texts=TARGETS)
    model = add_peer(model, "ah-compacter++", "decoder", {"reduction_factor": 4}).eval()
    torch.testing.assert_close(label_scores(model, batcher, examples, torch.device("cpu")),
                               _reference_scores(batcher, model, examples), rtol=1e-5, atol=1e-4)


def test_decoder_loss_without_logits_to_keep(model_dirs):
    """A model whose forward has no logits_to_keep computes every column; the loss is the same."""
    batcher, examples, model = _setup(model_dirs, "llama")
    batch = batcher.train_batch(examples)
    span = target_span(batch["labels"])

    torch.testing.assert_close(decoder_loss(_no_cache(model), batch, span), decoder_loss(model, batch, span))


def test_models_that_ignore_the_padding_mask_are_refused():
    with pytest.raises(ValueError, match="'rwkv' ignores attention_mask"):
        family_of(T.RwkvConfig())


@pytest.mark.parametrize("config,family", [
    (T.BertConfig(), "encoder"), (T.ModernBertConfig(), "encoder"), (T.RobertaPreLayerNormConfig(), "encoder"),
    (T.LongformerConfig(), "encoder"), (T.ErnieConfig(), "encoder"), (T.BigBirdConfig(), "encoder"),
    (T.GPT2Config(), "decoder"), (T.LlamaConfig(), "decoder"), (T.ReformerConfig(), "decoder"),
    (T.T5Config(), "seq2seq"), (T.BartConfig(), "seq2seq"),
])
def test_family_follows_the_kind_of_language_model_transformers_knows(config, family):
    """Encoders outside a hand-kept list (ModernBERT, RoBERTa-PreLayerNorm, ERNIE, BigBird...)
    were taken for decoders: loaded as *ForCausalLM with bidirectional attention, they saw the
    label tokens they were to predict."""
    assert family_of(config) == family


def test_a_model_type_of_no_known_family_is_refused():
    with pytest.raises(ValueError, match="'vit' is neither an encoder-decoder, a masked LM .* nor a causal LM"):
        family_of(T.ViTConfig())
    remote = T.PretrainedConfig(auto_map={"AutoModelForCausalLM": "modeling_mine.MyLM"})
    remote.model_type = "mine"
    assert family_of(remote) == "decoder"  # remote code that names its causal-LM class
