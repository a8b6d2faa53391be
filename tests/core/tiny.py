"""Tiny models of every supported architecture, built from configs (no network)."""

from __future__ import annotations

import torch
import transformers as T

VOCAB = 96


def _seq2seq_batch(model):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 7), generator=g)
    labels = torch.randint(3, VOCAB, (2, 4), generator=g)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)


def _encoder_batch(model):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 7), generator=g)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1]))


def _decoder_batch(model):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 7), generator=g)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())


_ENC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=64)
_DEC = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, vocab_size=VOCAB,
            max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)

#: name -> (builder, batch maker, family)
ARCHS = {
    "t5": (lambda: T.T5ForConditionalGeneration(T.T5Config(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16,
                                                           vocab_size=VOCAB, decoder_start_token_id=0)), _seq2seq_batch, "seq2seq"),
    "mt5": (lambda: T.MT5ForConditionalGeneration(T.MT5Config(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16,
                                                              vocab_size=VOCAB, decoder_start_token_id=0)), _seq2seq_batch, "seq2seq"),
    "flan-t5": (lambda: T.T5ForConditionalGeneration(T.T5Config(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16,
                                                                vocab_size=VOCAB, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                                                decoder_start_token_id=0)), _seq2seq_batch, "seq2seq"),
    "bart": (lambda: T.BartForConditionalGeneration(T.BartConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                                                                 decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                                                 vocab_size=VOCAB, max_position_embeddings=64)), _seq2seq_batch, "seq2seq"),
    "bert": (lambda: T.BertForSequenceClassification(T.BertConfig(**_ENC, num_labels=2)), _encoder_batch, "encoder"),
    "roberta": (lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**_ENC, num_labels=2, pad_token_id=1)), _encoder_batch, "encoder"),
    "deberta-v2": (lambda: T.DebertaV2ForSequenceClassification(T.DebertaV2Config(**_ENC, num_labels=2)), _encoder_batch, "encoder"),
    "distilbert": (lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                                                                    vocab_size=VOCAB, max_position_embeddings=64, num_labels=2)),
                   _encoder_batch, "encoder"),
    "electra": (lambda: T.ElectraForSequenceClassification(T.ElectraConfig(**_ENC, embedding_size=32, num_labels=2)), _encoder_batch, "encoder"),
    "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=64,
                                                    bos_token_id=1, eos_token_id=2)), _decoder_batch, "decoder"),
    "llama": (lambda: T.LlamaForCausalLM(T.LlamaConfig(**_DEC)), _decoder_batch, "decoder"),
    "mistral": (lambda: T.MistralForCausalLM(T.MistralConfig(**_DEC)), _decoder_batch, "decoder"),
    "qwen2": (lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**_DEC)), _decoder_batch, "decoder"),
}


def tiny(arch: str, seed: int = 0):
    """A fresh tiny model of ``arch`` (deterministic weights) in eval mode, and a batch for it."""
    builder, batch, _ = ARCHS[arch]
    torch.manual_seed(seed)
    model = builder().eval()
    return model, batch(model)


def t5_base_config():
    """T5-base's real shapes (random weights): the paper's parameter counts are asserted on it."""
    return T.T5Config(d_model=768, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12, d_kv=64, vocab_size=32128)
