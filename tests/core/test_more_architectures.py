"""The other model types of the placement table: adapters land on both sub-layers, train, and disable exactly."""

import pytest
import torch
import transformers as T

import compacter
from compacter.inject import iter_sites

V = 96
_ENC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=V, max_position_embeddings=64)
_DEC = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, vocab_size=V,
            max_position_embeddings=64, head_dim=16)
_S2S = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
            decoder_ffn_dim=64, vocab_size=V, max_position_embeddings=64, pad_token_id=1, decoder_start_token_id=2)

MODELS = {
    "xlm-roberta": lambda: T.XLMRobertaForSequenceClassification(T.XLMRobertaConfig(**_ENC, pad_token_id=1)),
    "camembert": lambda: T.CamembertForSequenceClassification(T.CamembertConfig(**_ENC, pad_token_id=1)),
    "deberta": lambda: T.DebertaForSequenceClassification(T.DebertaConfig(**_ENC)),
    "umt5": lambda: T.UMT5ForConditionalGeneration(T.UMT5Config(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
                                                               d_kv=16, vocab_size=V, decoder_start_token_id=0)),
    "mbart": lambda: T.MBartForConditionalGeneration(T.MBartConfig(**_S2S)),
    "marian": lambda: T.MarianMTModel(T.MarianConfig(**_S2S)),
    "pegasus": lambda: T.PegasusForConditionalGeneration(T.PegasusConfig(**_S2S)),
    "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(**_DEC)),
    "gemma": lambda: T.GemmaForCausalLM(T.GemmaConfig(**_DEC)),
    "gemma2": lambda: T.Gemma2ForCausalLM(T.Gemma2Config(**_DEC)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_adapters_on_more_architectures(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    ids = torch.randint(3, V, (2, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if model.config.is_encoder_decoder:
        batch["labels"] = torch.randint(3, V, (2, 4))
    elif "Causal" in type(model).__name__:
        batch["labels"] = ids
    else:
        batch["labels"] = torch.tensor([0, 1])
    with torch.no_grad():
        base = model(**batch).logits
    compacter.add_adapters(model, compacter.CompacterConfig("compacter", reduction_factor=4))
    assert {site.role for _, site in iter_sites(model)} == {"attention", "ffn"}
    model(**batch).loss.backward()
    assert model.compacter.rules["default"].A.grad is not None
    with compacter.disable_adapters(model), torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base, rtol=0, atol=0)
