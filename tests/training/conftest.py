"""Tiny pretrained-looking model folders (config + random weights + word-level tokenizer), offline."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from compacter.tasks import load_split

SPECIALS = ["[PAD]", "[UNK]", "[EOS]", "[BOS]"]


def _tokenizer(folder):
    texts = [e.source + " " + e.target for split in ("train", "validation", "test") for e in load_split("demo", split)]
    texts += ["answer: 0 1 2 3 4 5 6 7 8 9 . text: label:"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]", bos_token="[BOS]")
    fast.save_pretrained(folder)
    return fast


def _config(family: str, vocab: int):
    if family == "seq2seq":
        return T.T5Config(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16, vocab_size=vocab,
                          pad_token_id=0, eos_token_id=2, decoder_start_token_id=0, dropout_rate=0.0)
    if family == "encoder":
        return T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=vocab,
                            max_position_embeddings=128, pad_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         vocab_size=vocab, max_position_embeddings=256, pad_token_id=0, eos_token_id=2, bos_token_id=3)


def make_model_dir(folder, family: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(folder)
    config = _config(family, len(tok))
    torch.manual_seed(0)
    cls = {"seq2seq": T.T5ForConditionalGeneration, "encoder": T.BertForSequenceClassification, "decoder": T.LlamaForCausalLM}[family]
    cls(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {family: make_model_dir(root / family, family) for family in ("seq2seq", "encoder", "decoder")}
