"""Adapter-only checkpoints: round trip, refusals that leave the model unchanged, atomic saves."""

import json
import os
import re

import pytest
import torch
import transformers as T

import compacter
from compacter import CheckpointError, CompacterConfig
from compacter.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from compacter.training import restore_trained

from .test_inject import _assert_unchanged, _config, _logits, _snapshot, _tied_mlm, _train
from .tiny import _ENC, ARCHS, tiny


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("method", ["compacter", "compacter++", "phm-adapter", "adapter-lowrank", "bitfit"])
def test_save_then_load_gives_identical_outputs(arch, method, tmp_path):
    model, batch = tiny(arch)
    compacter.add_adapters(model, _config(method))
    _train(model, batch, steps=2)
    expected = _logits(model, batch)
    compacter.save_adapters(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    fresh, _ = tiny(arch)
    compacter.load_adapters(fresh, tmp_path)
    torch.testing.assert_close(_logits(fresh, batch), expected, rtol=0, atol=0)
    assert compacter.count_parameters(fresh) == compacter.count_parameters(model)


def test_checkpoint_is_adapter_only_and_describes_itself(tmp_path):
    model, _ = tiny("t5")
    compacter.add_adapters(model, _config("compacter++"))
    compacter.save_adapters(model, tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert meta["format_version"] == 1 and meta["model_type"] == "t5" and len(meta["fingerprint"]) == 64
    assert CompacterConfig.from_dict(meta["config"]) == _config("compacter++")
    trainable, total = compacter.count_parameters(model)
    size = (tmp_path / WEIGHTS_NAME).stat().st_size
    assert size < 4 * trainable + 20_000  # float32 adapter tensors and a header, no base weights
    mask = os.umask(0o022)
    try:  # the files get an ordinary file's mode (mkstemp alone would leave them owner-only)
        compacter.save_adapters(model, tmp_path / "again")
    finally:
        os.umask(mask)
    assert {(tmp_path / "again" / n).stat().st_mode & 0o777 for n in (WEIGHTS_NAME, CONFIG_NAME)} == {0o644}


def test_full_method_round_trip(tmp_path):
    model, batch = tiny("bert")
    compacter.add_adapters(model, CompacterConfig("full"))
    _train(model, batch, steps=2)
    compacter.save_adapters(model, tmp_path)
    fresh, _ = tiny("bert")
    compacter.load_adapters(fresh, tmp_path)
    torch.testing.assert_close(_logits(fresh, batch), _logits(model, batch), rtol=0, atol=0)


def test_several_named_adapters_load_side_by_side(tmp_path):
    model, batch = tiny("bert")
    compacter.add_adapters(model, _config("compacter"), name="a")
    _train(model, batch)
    compacter.save_adapters(model, tmp_path / "a")
    compacter.add_adapters(model, _config("adapter"), name="b")
    _train(model, batch)
    compacter.save_adapters(model, tmp_path / "b")
    out_b = _logits(model, batch)
    compacter.set_active_adapter(model, "a")
    out_a = _logits(model, batch)
    fresh, _ = tiny("bert")
    compacter.load_adapters(fresh, tmp_path / "a")
    compacter.load_adapters(fresh, tmp_path / "b", name="second")
    torch.testing.assert_close(_logits(fresh, batch), out_b, rtol=0, atol=0)
    compacter.set_active_adapter(fresh, "a")
    torch.testing.assert_close(_logits(fresh, batch), out_a, rtol=0, atol=0)


def _saved(tmp_path, arch="t5", method="compacter"):
    model, _ = tiny(arch)
    compacter.add_adapters(model, _config(method))
    compacter.save_adapters(model, tmp_path)
    return tmp_path


def _refused(path, match, arch="t5"):
    model, _ = tiny(arch)
    snap = _snapshot(model)
    with pytest.raises(CheckpointError, match=match):
        compacter.load_adapters(model, path)
    _assert_unchanged(model, snap)


def _refused_by_both(path, match):
    """Refused by load_adapters and by restore_trained (how training reloads best/ for its test, and
    last/ to resume) into a model with a compacter adapter, which is left unchanged."""
    _refused(path, match)
    model, _ = tiny("t5")
    compacter.add_adapters(model, _config("compacter"))
    snap = _snapshot(model)
    with pytest.raises(CheckpointError, match=match):
        restore_trained(model, path)
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("beside", [None, "compacter"])
def test_an_adapter_loaded_inactive_is_frozen(tmp_path, beside):
    """``activate=False`` loads the adapter frozen, as set_active_adapter leaves every inactive one:
    its parameters had requires_grad, so trainable_parameters (an optimizer, DDP's unused-parameter
    check) disagreed with count_parameters."""
    _saved(tmp_path, "t5", "compacter++")
    model, _ = tiny("t5")
    if beside:
        compacter.add_adapters(model, _config(beside), name="main")
    trainable = [id(p) for p in compacter.trainable_parameters(model)] if beside else []
    compacter.load_adapters(model, tmp_path, name="side", activate=False)
    assert compacter.active_adapter(model) == ("main" if beside else None)
    assert [id(p) for p in compacter.trainable_parameters(model)] == trainable
    assert compacter.count_parameters(model)[0] == sum(p.numel() for p in compacter.trainable_parameters(model))
    compacter.set_active_adapter(model, "side")
    loaded_active, _ = tiny("t5")
    compacter.load_adapters(loaded_active, tmp_path, name="side")
    assert compacter.count_parameters(model) == compacter.count_parameters(loaded_active)


def test_method_full_cannot_be_loaded_inactive(tmp_path):
    _saved(tmp_path, "bert", "full")
    model, _ = tiny("bert")
    snap = _snapshot(model)
    with pytest.raises(CheckpointError, match="always the active adapter"):
        compacter.load_adapters(model, tmp_path, activate=False)
    _assert_unchanged(model, snap)


def test_refuses_other_shapes(tmp_path):
    _saved(tmp_path, "t5", "compacter")  # made on d_model 32
    wider = T.T5ForConditionalGeneration(T.T5Config(d_model=64, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16,
                                                    vocab_size=96, decoder_start_token_id=0))
    snap = _snapshot(wider)
    with pytest.raises(CheckpointError, match=r"other shapes(.|\n)*checkpoint has shape \[.*\], this model needs"):
        compacter.load_adapters(wider, tmp_path)
    _assert_unchanged(wider, snap)


def test_refuses_a_checkpoint_for_another_architecture(tmp_path):
    _saved(tmp_path, "bert", "compacter")
    _refused(tmp_path, "adapter trained on a 'bert' model", arch="t5")


@pytest.mark.parametrize("saved, loaded", [("llama", "mistral"), ("llama", "qwen2"), ("t5", "mt5")])
def test_refuses_a_checkpoint_of_another_model_type_with_the_same_shapes(tmp_path, saved, loaded):
    _saved(tmp_path, saved, "compacter++")
    _refused(tmp_path, f"adapter trained on a '{saved}' model .* this model is '{loaded}'", arch=loaded)


def _bert(head):
    torch.manual_seed(0)
    return getattr(T, head)(T.BertConfig(**_ENC, num_labels=2)).eval()


@pytest.mark.parametrize("loaded", ["BertForTokenClassification", "BertModel"])
def test_refuses_a_task_head_trained_on_another_model_class(tmp_path, loaded):
    """A BertForSequenceClassification classifier [2, 32] has the shape of BertForTokenClassification's
    (num_labels=2) and loaded into it silently: only the model type was checked."""
    model = _bert("BertForSequenceClassification")
    compacter.add_adapters(model, _config("compacter++"))
    compacter.save_adapters(model, tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["architecture"] == "BertForSequenceClassification"
    other = _bert(loaded)
    snap = _snapshot(other)
    with pytest.raises(CheckpointError, match=f"tuned.classifier.bias.* trained on BertForSequenceClassification, this model is {loaded}"):
        compacter.load_adapters(other, tmp_path)
    _assert_unchanged(other, snap)


def test_a_head_loads_into_a_subclass_of_its_class_and_back(tmp_path):
    """A user's subclass of the class a head was trained on is that class: a head saved from it
    records the transformers class, and a head of the transformers class loads into the subclass."""

    class MyBert(T.BertForSequenceClassification):
        pass

    model = _bert("BertForSequenceClassification")
    compacter.add_adapters(model, _config("compacter++"))
    compacter.save_adapters(model, tmp_path / "plain")
    mine = MyBert(model.config).eval()
    compacter.load_adapters(mine, tmp_path / "plain")
    compacter.save_adapters(mine, tmp_path / "mine")
    assert json.loads((tmp_path / "mine" / CONFIG_NAME).read_text())["architecture"] == "BertForSequenceClassification"
    compacter.load_adapters(_bert("BertForSequenceClassification"), tmp_path / "mine")


def test_a_head_class_built_on_a_pretrained_base_class_is_its_own(tmp_path):
    """A user's head model built on BertPreTrainedModel (not on a transformers task class) records
    its own class: its head is refused by BertForSequenceClassification, whose classifier has the same shape."""

    class MyTagger(T.BertPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.bert = T.BertModel(config, add_pooling_layer=False)
            self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
            self.post_init()

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            return self.classifier(self.bert(input_ids, attention_mask=attention_mask).last_hidden_state)

    model = MyTagger(_bert("BertForSequenceClassification").config).eval()
    compacter.add_adapters(model, _config("compacter++"))
    compacter.save_adapters(model, tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["architecture"] == "MyTagger"
    other = _bert("BertForSequenceClassification")
    with pytest.raises(CheckpointError, match="trained on MyTagger, this model is BertForSequenceClassification"):
        compacter.load_adapters(other, tmp_path)


def test_an_adapter_without_head_tensors_loads_into_another_class_with_the_same_body(tmp_path):
    model, batch = tiny("t5")  # Compacter++ on T5 trains no head: adapters and layer norms only
    base = {k: v.clone() for k, v in model.state_dict().items()}
    compacter.add_adapters(model, _config("compacter++"))
    _train(model, batch, steps=2)
    compacter.save_adapters(model, tmp_path / "t5")
    assert "architecture" not in json.loads((tmp_path / "t5" / CONFIG_NAME).read_text())  # the format earlier versions read
    body = T.T5Model(model.config).eval()
    assert not body.load_state_dict(base, strict=False).missing_keys  # the same body; T5Model has no lm_head
    compacter.load_adapters(body, tmp_path / "t5")
    with torch.no_grad():
        expected = model(**batch, output_hidden_states=True).decoder_hidden_states[-1]
        got = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=model._shift_right(batch["labels"])).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    bert = _bert("BertForSequenceClassification")
    compacter.add_adapters(bert, _config("compacter++", train_head=False))
    compacter.save_adapters(bert, tmp_path / "bert")
    compacter.load_adapters(_bert("BertForTokenClassification"), tmp_path / "bert")


def test_a_head_saved_before_the_architecture_field_still_loads(tmp_path):
    model = _bert("BertForSequenceClassification")
    compacter.add_adapters(model, _config("compacter++"))
    compacter.save_adapters(model, tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    del meta["architecture"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    fresh = _bert("BertForSequenceClassification")
    compacter.load_adapters(fresh, tmp_path)
    batch = tiny("bert")[1]
    torch.testing.assert_close(_logits(fresh, batch), _logits(model, batch), rtol=0, atol=0)


def test_refuses_an_invalid_saved_name(tmp_path):
    _saved(tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    meta["name"] = "v1.2"  # not covered by the fingerprint; would fail half-way through attaching
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    _refused(tmp_path, "adapter name must be a non-empty string without '.'")


def test_refuses_truncated_weights(tmp_path):
    _saved(tmp_path)
    data = (tmp_path / WEIGHTS_NAME).read_bytes()
    (tmp_path / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    _refused(tmp_path, "truncated or corrupt")


def test_refuses_garbage_weights(tmp_path):
    _saved(tmp_path)
    (tmp_path / WEIGHTS_NAME).write_bytes(b"\x00" * 64)
    _refused(tmp_path, "truncated or corrupt")


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(colour="blue"), "unknown field.*colour"),
    (lambda m: m.update(format_version=99), "format_version 99"),
    (lambda m: m.update(format_version=1.0), "format_version 1.0 is not supported"),  # 1.0 == 1 and True == 1
    (lambda m: m.update(format_version=True), "format_version True is not supported"),
    (lambda m: m["config"].update(phm_dims=4), "phm_dims"),
    (lambda m: m["config"].update(phm_dim=0), "phm_dim"),
    (lambda m: m.pop("config"), "missing 'config'"),
    (lambda m: m.update(fingerprint="0" * 64), "fingerprint"),
    (lambda m: m.update(architecture=["T5Model"]), "architecture must be a model class name"),
])
def test_refuses_bad_configs(tmp_path, edit, match):
    _saved(tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    edit(meta)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    _refused(tmp_path, match)


def test_a_config_that_fails_validation_is_a_checkpoint_error_naming_the_file(tmp_path):
    """An invalid config (older saves had no config hash to catch an edit) was a bare TypeError
    from inside add_adapters; it is a CheckpointError naming adapter_config.json, the model unchanged."""
    from safetensors.torch import load_file, save_file
    _saved(tmp_path, arch="bert")
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    meta["config"]["head_modules"] = 5
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    save_file(load_file(tmp_path / WEIGHTS_NAME), tmp_path / WEIGHTS_NAME, metadata={"format": "pt"})
    _refused(tmp_path, f"{CONFIG_NAME}: invalid CompacterConfig:\n  - head_modules must be a list", arch="bert")
    with pytest.raises(CheckpointError, match=CONFIG_NAME):
        compacter.read_adapter_config(tmp_path)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_refuses_tensors_that_are_not_floating_point(tmp_path, dtype):
    """An int64 or bool tensor was cast silently into the adapter (by load_adapters and by a resume)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file


    _saved(tmp_path)
    with safe_open(tmp_path / WEIGHTS_NAME, framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(tmp_path / WEIGHTS_NAME)
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].to(dtype)
    save_file(tensors, tmp_path / WEIGHTS_NAME, metadata=metadata)  # the same names, shapes and config hash
    match = f"{WEIGHTS_NAME}: every tensor must be floating-point; these are not: {re.escape(key)} \\({str(dtype)[6:]}\\)$"
    _refused_by_both(tmp_path, match)


def test_refuses_invalid_json_and_missing_files(tmp_path):
    _saved(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    _refused(tmp_path, "not valid JSON")
    _refused(tmp_path / "nowhere", "no adapter config")


def test_refuses_weights_of_another_config(tmp_path):
    _saved(tmp_path / "a", method="compacter")
    _saved(tmp_path / "b", method="compacter++")
    (tmp_path / "a" / WEIGHTS_NAME).write_bytes((tmp_path / "b" / WEIGHTS_NAME).read_bytes())
    _refused(tmp_path / "a", "fingerprint|missing tensor")


def test_refuses_weights_saved_with_another_config_of_the_same_shapes(tmp_path):
    model, _ = tiny("t5")
    compacter.add_adapters(model, _config("compacter", non_linearity="relu"))
    compacter.save_adapters(model, tmp_path / "relu")
    _saved(tmp_path / "gelu")  # the same shapes: the fingerprints agree
    (tmp_path / "gelu" / WEIGHTS_NAME).write_bytes((tmp_path / "relu" / WEIGHTS_NAME).read_bytes())
    _refused(tmp_path / "gelu", "saved with another config")


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_a_save_that_fails_writing_its_config_leaves_the_old_checkpoint(tmp_path, monkeypatch, failure):
    """The weights were renamed into place before the config was written: a failure there left new
    weights beside the old config, a folder that no longer loaded (fingerprint mismatch)."""
    from pathlib import Path

    _saved(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    model, _ = tiny("t5")
    compacter.add_adapters(model, _config("pfeiffer"))
    real = Path.write_text

    def fail_on_config(self, *a, **k):
        if CONFIG_NAME in self.name:
            raise failure
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", fail_on_config)
    with pytest.raises(type(failure)):
        compacter.save_adapters(model, tmp_path)
    monkeypatch.setattr(Path, "write_text", real)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # the old pair, no temporary files
    compacter.load_adapters(tiny("t5")[0], tmp_path)


@pytest.mark.parametrize("existing", [True, False])
def test_a_save_that_fails_while_swapping_puts_the_old_files_back(tmp_path, monkeypatch, existing):
    """Into a new folder, the first file renamed into place stayed when the second failed: half a checkpoint."""
    if existing:
        _saved(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    model, _ = tiny("t5")
    compacter.add_adapters(model, _config("pfeiffer"))
    real, calls = os.replace, []

    def fail_on_the_second_new_file(src, dst):
        if str(src).endswith(".tmp"):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_the_second_new_file)
    with pytest.raises(OSError, match="Input/output error"):
        compacter.save_adapters(model, tmp_path)
    monkeypatch.setattr(os, "replace", real)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    if existing:
        compacter.load_adapters(tiny("t5")[0], tmp_path)


def test_a_failed_save_into_a_new_path_leaves_no_folders(tmp_path, monkeypatch):
    model, _ = tiny("t5")
    compacter.add_adapters(model, _config("compacter"))

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("compacter.checkpoint.save_file", disk_full)
    (tmp_path / "old").mkdir()
    for target in (tmp_path / "a" / "b" / "c", tmp_path / "old" / "new"):
        with pytest.raises(OSError, match="No space left"):
            compacter.save_adapters(model, target)
    assert [p.name for p in tmp_path.rglob("*")] == ["old"]


def test_loads_checkpoints_written_before_the_config_hash(tmp_path):
    from safetensors.torch import load_file, save_file
    model, batch = tiny("t5")
    compacter.add_adapters(model, _config("compacter"))
    compacter.save_adapters(model, tmp_path)
    save_file(load_file(tmp_path / WEIGHTS_NAME), tmp_path / WEIGHTS_NAME, metadata={"format": "pt"})
    fresh, _ = tiny("t5")
    compacter.load_adapters(fresh, tmp_path)
    torch.testing.assert_close(_logits(fresh, batch), _logits(model, batch), rtol=0, atol=0)


def test_save_is_atomic(tmp_path, monkeypatch):
    _saved(tmp_path)
    good = (tmp_path / WEIGHTS_NAME).read_bytes()
    model, _ = tiny("t5")
    compacter.add_adapters(model, _config("compacter", bottleneck_dim=16))

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("compacter.checkpoint.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        compacter.save_adapters(model, tmp_path)
    assert (tmp_path / WEIGHTS_NAME).read_bytes() == good  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no temporary file left


def test_save_needs_adapters(tmp_path):
    model, _ = tiny("t5")
    with pytest.raises(ValueError, match="add_adapters"):
        compacter.save_adapters(model, tmp_path)


def test_save_without_an_active_adapter_asks_for_a_name(tmp_path):
    """Inside disable_adapters the message was "no adapter named None"."""
    model, _ = tiny("t5")
    compacter.add_adapters(model, _config("compacter"), name="rte")
    with compacter.disable_adapters(model), pytest.raises(ValueError, match="no adapter is active .* pass name=, one of: rte"):
        compacter.save_adapters(model, tmp_path)
    assert not tmp_path.joinpath(CONFIG_NAME).exists()


@pytest.mark.parametrize("name", ["", "a.b"])
def test_load_refuses_an_unusable_name_before_reading(tmp_path, name):
    """An empty name is refused, as add_adapters refuses it, instead of falling back to the saved name."""
    _saved(tmp_path)
    model, _ = tiny("t5")
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="adapter name must be a non-empty string"):
        compacter.load_adapters(model, tmp_path, name=name)
    _assert_unchanged(model, snap)


class _FakeHub:
    """A Hugging Face Hub in a folder: upload_folder copies, hf_hub_download serves from a cache."""

    def __init__(self, root):
        self.root, self.repos, self.calls = root, {}, []

    def install(self, monkeypatch):
        import huggingface_hub

        hub = self

        class Api:
            def __init__(self, token=None):
                hub.calls.append(("token", token))

            def create_repo(self, repo_id, private=None, exist_ok=False):
                hub.calls.append(("create", repo_id, private))
                hub.repos.setdefault(repo_id, {})

            def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None):
                hub.calls.append(("upload", repo_id, commit_message))
                hub.repos[repo_id] = {p.name: p.read_bytes() for p in __import__("pathlib").Path(folder_path).iterdir()}
                return type("Commit", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

        def download(repo_id, filename, revision=None, token=None):
            hub.calls.append(("download", repo_id, filename, revision))
            if repo_id not in hub.repos:
                raise OSError(f"Repository Not Found for url: https://hub/{repo_id}")
            cached = hub.root / repo_id.replace("/", "--") / (revision or "main") / filename
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_bytes(hub.repos[repo_id][filename])
            return str(cached)

        monkeypatch.setattr(huggingface_hub, "HfApi", Api)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
        return self


def test_push_then_load_from_the_hub(tmp_path, monkeypatch):
    hub = _FakeHub(tmp_path / "cache").install(monkeypatch)
    model, batch = tiny("llama")
    compacter.add_adapters(model, _config("compacter++"))
    _train(model, batch, steps=2)
    expected = _logits(model, batch)
    url = compacter.push_adapters(model, "someone/rte-adapter", private=True)
    assert url == "https://hub/someone/rte-adapter/commit/1" and ("create", "someone/rte-adapter", True) in hub.calls
    assert set(hub.repos["someone/rte-adapter"]) == {CONFIG_NAME, WEIGHTS_NAME, "README.md"}
    card = hub.repos["someone/rte-adapter"]["README.md"].decode()
    assert "library_name: compacter" in card and "compacter.load_adapters(model, 'someone/rte-adapter')" in card
    fresh, _ = tiny("llama")
    compacter.load_adapters(fresh, "someone/rte-adapter", revision="v1")
    assert ("download", "someone/rte-adapter", WEIGHTS_NAME, "v1") in hub.calls
    torch.testing.assert_close(_logits(fresh, batch), expected, rtol=0, atol=0)


def test_an_unreadable_hub_repo_is_one_clear_error_and_changes_nothing(tmp_path, monkeypatch):
    hub = _FakeHub(tmp_path / "cache").install(monkeypatch)
    model, _ = tiny("t5")
    snap = _snapshot(model)
    with pytest.raises(CheckpointError, match=r"someone/missing: no such local folder, and the Hugging Face Hub repo .*Repository Not Found"):
        compacter.load_adapters(model, "someone/missing")
    _assert_unchanged(model, snap)
    monkeypatch.chdir(tmp_path)  # a bare name or a path is a local folder: no Hub call
    for local in ("missing-adapter", "./someone/missing", str(tmp_path / "someone" / "missing")):
        with pytest.raises(CheckpointError, match="no adapter config here"):
            compacter.load_adapters(model, local)
    assert [c for c in hub.calls if c[0] == "download"] == [("download", "someone/missing", CONFIG_NAME, None)]
    _saved(tmp_path / "someone" / "local")  # an existing local folder wins over a repo of the same name
    compacter.load_adapters(model, "someone/local")
    assert [c for c in hub.calls if c[0] == "download"] == [("download", "someone/missing", CONFIG_NAME, None)]


def test_model_card_names_a_base_model_only_by_hub_id(tmp_path):
    """The Hub refuses a card whose base_model is a local path, which a model loaded from disk records."""
    from compacter.checkpoint import _model_card

    meta = {"config": {"method": "compacter++"}, "library": "compacter 0", "model_type": "bert"}
    assert "base_model: google-t5/t5-base" in _model_card({**meta, "base_model": "google-t5/t5-base"}, "a/b")
    assert "base_model: t5-small" in _model_card({**meta, "base_model": "t5-small"}, "a/b")
    for local in (str(tmp_path), "./minilm", "/data/models/minilm", "models/smollm2/v2"):
        card = _model_card({**meta, "base_model": local}, "a/b")
        assert "base_model" not in card and "a bert model" in card, local


def test_hub_files_from_two_revisions_are_refused(tmp_path, monkeypatch):
    """A branch that moves between the two downloads would pair one save's config with another's weights."""
    import huggingface_hub

    _saved(tmp_path / "repo")
    calls = []

    def download(repo_id, filename, revision=None, token=None):  # the branch moved after the first file
        calls.append(filename)
        folder = tmp_path / "cache" / f"commit{len(calls)}"
        folder.mkdir(parents=True)
        (folder / filename).write_bytes((tmp_path / "repo" / filename).read_bytes())
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    model, _ = tiny("t5")
    snap = _snapshot(model)
    with pytest.raises(CheckpointError, match="came from different revisions; pass revision=<commit>"):
        compacter.load_adapters(model, "someone/moving")
    _assert_unchanged(model, snap)


def test_a_saved_head_modules_null_still_loads(tmp_path):
    """Earlier versions saved head_modules=None (with train_head false); the stricter config check
    refused those checkpoints. Read, None means no head modules."""
    from safetensors.torch import load_file, save_file

    from compacter.checkpoint import config_hash

    model, batch = tiny("bert")
    compacter.add_adapters(model, _config("compacter++", train_head=False, head_modules=()))
    compacter.save_adapters(model, tmp_path / "a")
    meta = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    meta["config"]["head_modules"] = None  # as such a version wrote it, with the weights bound to that config
    (tmp_path / "a" / CONFIG_NAME).write_text(json.dumps(meta))
    weights = tmp_path / "a" / WEIGHTS_NAME
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        metadata = {**f.metadata(), "compacter_config_sha256": config_hash(meta["config"])}
    save_file(load_file(str(weights)), str(weights), metadata=metadata)
    fresh, _ = tiny("bert")
    compacter.load_adapters(fresh, tmp_path / "a")
    torch.testing.assert_close(_logits(fresh, batch), _logits(model, batch))


def test_a_tied_base_parameter_is_saved_once_and_loaded_under_all_its_names(tmp_path):
    """BitFit on BertForMaskedLM: the tied LM bias is saved under its first name only (it was
    saved twice, as two copies) and loads as one Parameter under both names."""
    from safetensors.torch import load_file

    model, batch = _tied_mlm()
    compacter.add_adapters(model, _config("bitfit"))
    _train(model, batch, steps=2, lr=1e-1)
    expected = _logits(model, batch)
    compacter.save_adapters(model, tmp_path)
    saved = load_file(tmp_path / WEIGHTS_NAME)
    assert "tuned.cls.predictions.bias" in saved and "tuned.cls.predictions.decoder.bias" not in saved
    fresh, _ = _tied_mlm()
    compacter.load_adapters(fresh, tmp_path)
    assert fresh.cls.predictions.bias is fresh.cls.predictions.decoder.bias
    torch.testing.assert_close(_logits(fresh, batch), expected, rtol=0, atol=0)
    assert compacter.count_parameters(fresh) == compacter.count_parameters(model)
    compacter.delete_adapter(fresh, "default")
    base, _ = _tied_mlm()
    assert fresh.cls.predictions.bias is fresh.cls.predictions.decoder.bias
    torch.testing.assert_close(_logits(fresh, batch), _logits(base, batch), rtol=0, atol=0)


def _as_saved_before_ties(folder, trained_under, dead_value):
    """Rewrite a checkpoint as versions that broke the tie saved it: a copy under each name of
    the tied LM bias, the trained one under ``trained_under``, ``dead_value`` under the other."""
    from safetensors.torch import load_file

    names = ("tuned.cls.predictions.bias", "tuned.cls.predictions.decoder.bias")
    tensors = load_file(folder / WEIGHTS_NAME)
    trained = tensors.pop(names[0])
    tensors.update({n: trained if n == trained_under else dead_value for n in names})
    _rewrite(folder, tensors)


def _rewrite(folder, tensors):
    """Save ``tensors`` as the adapter's weights, with its metadata and a fingerprint that fits them."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from compacter.checkpoint import fingerprint

    with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
        metadata = f.metadata()
    save_file(tensors, folder / WEIGHTS_NAME, metadata=metadata)
    meta = json.loads((folder / CONFIG_NAME).read_text())
    meta["fingerprint"] = fingerprint({k: tuple(v.shape) for k, v in tensors.items()})
    (folder / CONFIG_NAME).write_text(json.dumps(meta))


@pytest.mark.parametrize("trained_under", ["tuned.cls.predictions.decoder.bias", "tuned.cls.predictions.bias"])
def test_a_checkpoint_with_a_copy_per_tied_name_loads_the_trained_one_or_is_refused(tmp_path, trained_under):
    """The dead copy kept the base model's value: the other one is loaded. Two trained copies
    cannot be told apart: refused, the model unchanged."""
    model, batch = _tied_mlm()
    base = model.cls.predictions.bias.detach().clone()
    compacter.add_adapters(model, _config("bitfit"))
    _train(model, batch, steps=2, lr=1e-1)
    expected = _logits(model, batch)
    compacter.save_adapters(model, tmp_path / "old")
    _as_saved_before_ties(tmp_path / "old", trained_under, base)
    fresh, _ = _tied_mlm()
    compacter.load_adapters(fresh, tmp_path / "old")
    assert fresh.cls.predictions.bias is fresh.cls.predictions.decoder.bias
    torch.testing.assert_close(_logits(fresh, batch), expected, rtol=0, atol=0)
    compacter.save_adapters(model, tmp_path / "both")
    _as_saved_before_ties(tmp_path / "both", trained_under, base + 1)
    fresh, _ = _tied_mlm()
    snap = _snapshot(fresh)
    with pytest.raises(CheckpointError, match=r"copies of one tied tensor .*cls\.predictions\.bias.*more than one was trained"):
        compacter.load_adapters(fresh, tmp_path / "both")
    _assert_unchanged(fresh, snap)


def test_an_old_checkpoint_with_a_trained_copy_under_some_tied_names_only_is_refused(tmp_path):
    """Older versions trained a head's copy of a tensor tied into the body (a head_modules entry on
    lm_head / the MLM decoder) and left the other name at the base value: loading that copy as
    the one tied tensor would change the embeddings too, and the outputs."""
    from safetensors.torch import load_file

    model, batch = _tied_mlm()
    base = model.cls.predictions.bias.detach().clone()
    compacter.add_adapters(model, _config("bitfit"))
    _train(model, batch, steps=2, lr=1e-1)
    compacter.save_adapters(model, tmp_path / "old")
    _as_saved_before_ties(tmp_path / "old", "tuned.cls.predictions.decoder.bias", base)
    tensors = load_file(tmp_path / "old" / WEIGHTS_NAME)
    del tensors["tuned.cls.predictions.bias"]  # only the decoder's copy was saved
    _rewrite(tmp_path / "old", tensors)
    fresh, _ = _tied_mlm()
    snap = _snapshot(fresh)
    with pytest.raises(CheckpointError, match=r"tuned\.cls\.predictions\.decoder\.bias is a trained copy of a tensor the base "
                                              r"model ties to cls\.predictions\.bias, saved with those at the base value"):
        compacter.load_adapters(fresh, tmp_path / "old")
    _assert_unchanged(fresh, snap)


def _damage(tmp_path, name, value=None):
    """Overwrite the bytes of one tensor of ``name`` in place (the header, names and shapes intact):
    0xFF bytes are float32 NaNs, as a disk or a bad edit leaves them; or save ``value`` into it."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    file = tmp_path / name
    if value is not None:
        with safe_open(file, framework="pt") as f:
            metadata = f.metadata()
        tensors = load_file(file)
        key = sorted(tensors)[-1]
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = value
        save_file(tensors, file, metadata=metadata)
        return key
    data = bytearray(file.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:header])
    key = sorted(k for k in meta if k != "__metadata__")[-1]
    start, end = meta[key]["data_offsets"]
    data[header + start: header + end] = b"\xff" * (end - start)
    file.write_bytes(bytes(data))
    return key


@pytest.mark.parametrize("value", [None, float("inf")])
def test_refuses_nan_or_infinite_tensors_and_names_them(tmp_path, value):
    """Overwritten bytes that read as NaN loaded silently: `compacter evaluate` printed the untrained
    score with exit status 0, and a resume from such a last/ said "loss is nan ... try a lower
    --learning-rate". Training never saves a non-finite tensor (it stops at a non-finite loss first)."""
    _saved(tmp_path)
    key = _damage(tmp_path, WEIGHTS_NAME, value)
    count = "1" if value else r"\d+"  # one value set to inf; every value of the overwritten tensor NaN
    match = f"{WEIGHTS_NAME}: damaged: NaN or infinite values in {re.escape(key)} \\({count} of \\d+ values\\)"
    _refused_by_both(tmp_path, match)


def test_a_run_does_not_resume_from_a_nan_last_checkpoint(tmp_path):
    """A damaged last/ resumed into "loss is nan at step N; ... Try a lower --learning-rate": now the
    resume stops before training, naming the file and the tensor."""
    from compacter.training import TrainConfig, train
    from tests.training.conftest import make_model_dir

    model = make_model_dir(tmp_path / "model", "encoder")
    cfg = dict(task="demo", batch_size=8, max_steps=2, eval_every=2, max_eval_samples=8, progress=False, eval_before=False,
               adapter={"reduction_factor": 4}, model=model, output_dir=str(tmp_path / "run"))
    train(TrainConfig(**cfg), log=lambda *a: None)
    key = _damage(tmp_path / "run" / "last", WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=f"last/{WEIGHTS_NAME}: damaged: NaN or infinite values in {re.escape(key)} "
                                              ".*the run cannot resume from it"):
        train(TrainConfig(**{**cfg, "max_steps": 4}), log=lambda *a: None)


def test_a_run_directory_or_a_peer_checkpoint_says_what_it_is(tmp_path):
    """load_adapters("runs/x") said only "no adapter config here"."""
    _saved(tmp_path / "run" / "best")
    _refused(tmp_path / "run", f"no adapter config here .*; {re.escape(str(tmp_path / 'run'))} is a run directory: "
                               f"its best adapter is {re.escape(str(tmp_path / 'run' / 'best'))}")
    (tmp_path / "peer").mkdir()
    (tmp_path / "peer" / "peer_config.json").write_text('{"method": "peft-lora"}\n')
    _refused(tmp_path / "peer", "holds a peer method's checkpoint \\(peft-lora\\), not a compacter adapter")
    (tmp_path / "peer" / "peer_config.json").write_text('["peft-lora"]\n')  # damaged: the file is named instead
    _refused(tmp_path / "peer", "holds a peer method's checkpoint \\(peer_config.json\\), not a compacter adapter")


@pytest.mark.parametrize("text, message", [
    (None, None),
    ('{"method": "ah-compacter++"}', None),
    ("{not json", r"peer_config\.json: not a JSON object naming the peer method"),
    ('["peft-lora"]', r"peer_config\.json: not a JSON object naming the peer method"),
    ('{"method": "compacter++"}', r"peer_config\.json: method 'compacter\+\+' is not a peer method \(peft-lora, "),
])
def test_peer_method_reads_peer_config_or_names_the_file(tmp_path, text, message):
    """The one reader of peer_config.json, used by the CLI's evaluate/predict and by load_adapters' error."""
    from compacter.peers import peer_method

    if text is not None:
        (tmp_path / "peer_config.json").write_text(text)
    if message is None:
        assert peer_method(tmp_path) == (None if text is None else "ah-compacter++")
    else:
        with pytest.raises(CheckpointError, match=message):
            peer_method(tmp_path)
