"""load_model: safetensors weights only."""

import pytest
import torch
import transformers as T
from safetensors.torch import load_file

from compacter.modeling import load_model
from compacter.tasks import get_task

from .training.conftest import make_model_dir


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("models") / "encoder", "encoder")


def _pickle_only(src, dst):
    """A copy of model folder ``src`` whose weights are only a pickle (pytorch_model.bin)."""
    import shutil

    shutil.copytree(src, dst)
    torch.save(load_file(dst / "model.safetensors"), dst / "pytorch_model.bin")
    (dst / "model.safetensors").unlink()
    return str(dst)


def test_a_pickled_model_is_refused_unread(encoder_dir, tmp_path, monkeypatch):
    """Only safetensors weights load: a pytorch_model.bin would be unpickled, and a pickle can run code."""
    folder = _pickle_only(__import__("pathlib").Path(encoder_dir), tmp_path / "binonly")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ValueError, match=rf"--model {folder}: only safetensors weights are loaded .* this folder has "
                                         r"pytorch_model\.bin; .*transformers\.BertForSequenceClassification\.from_pretrained"
                                         r".*save_pretrained\(.*safe_serialization=True\)"):
        load_model(folder, "encoder", get_task("demo"))


def test_a_folder_without_weights_says_so(encoder_dir, tmp_path):
    import shutil

    shutil.copytree(encoder_dir, tmp_path / "noweights")
    (tmp_path / "noweights" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="only safetensors weights are loaded .* this folder has no weights file"):
        load_model(str(tmp_path / "noweights"), "encoder", get_task("demo"))


def test_a_hub_repo_without_safetensors_is_a_clear_error(monkeypatch):
    def hub(*args, **kwargs):
        assert kwargs.get("use_safetensors") is True
        raise OSError("someone/model does not appear to have a file named model.safetensors or model.safetensors.index.json "
                      "and thus cannot be loaded with `safetensors`. Please do not set `use_safetensors=True`.")

    monkeypatch.setattr(T.AutoModelForSeq2SeqLM, "from_pretrained", hub)
    with pytest.raises(ValueError, match=r"--model someone/model: only safetensors weights are loaded .*the repo has no model\.safetensors"
                                         r".*save_pretrained\('\./model-safetensors', .*then pass --model \./model-safetensors"):
        load_model("someone/model", "seq2seq", get_task("demo"))  # a local copy named like the id would shadow it


def test_safetensors_models_still_load(encoder_dir):
    model = load_model(encoder_dir, "encoder", get_task("demo"))
    assert torch.equal(model.bert.embeddings.word_embeddings.weight,
                       load_file(f"{encoder_dir}/model.safetensors")["bert.embeddings.word_embeddings.weight"])


def test_train_refuses_a_pickled_model_before_making_the_run(encoder_dir, tmp_path, capsys):
    from compacter.cli import main

    folder = _pickle_only(__import__("pathlib").Path(encoder_dir), tmp_path / "binonly")
    out = tmp_path / "run"
    assert main(["train", "--model", folder, "--output-dir", str(out), "--max-steps", "1", "--batch-size", "2",
                 "--no-progress", "--no-eval-before"]) == 2
    assert "only safetensors weights are loaded" in capsys.readouterr().err and not out.exists()


# --- an encoder head made for another number of labels than the task's


def test_training_gets_a_new_head_for_another_label_count(encoder_dir, caplog):
    """A fine-tuned 2-label checkpoint for a 3-label task (or a regression one): the head is new
    and trained anyway, so it is initialized anew, as ignore_mismatched_sizes=True does, and the
    body keeps its pretrained weights; a warning names --model and the shapes."""
    from compacter.tasks import custom_task

    saved = load_file(f"{encoder_dir}/model.safetensors")
    for task, rows in ((custom_task("three", text_columns=["text"], label_names=["a", "b", "c"]), 3), (get_task("stsb"), 1)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="compacter.modeling"):
            model = load_model(encoder_dir, "encoder", task)
        assert model.classifier.weight.shape == (rows, 32) and model.config.num_labels == rows
        assert torch.equal(model.bert.pooler.dense.weight, saved["bert.pooler.dense.weight"])
        [warning] = [r.getMessage() for r in caplog.records if r.name == "compacter.modeling"]
        assert f"--model {encoder_dir}: its classification head (classifier.bias [2], classifier.weight [2, 32])" in warning
        assert f"({'regression: 1 output' if rows == 1 else '3 labels'})" in warning and f"classifier.weight [{rows}, 32]" in warning


def test_a_new_head_that_would_not_be_trained_is_refused(encoder_dir):
    """With train_head=false a new head would stay at its random start: the run trained and scored
    it, and only evaluate refused the adapter afterwards."""
    with pytest.raises(ValueError, match=r"train_head is false, so a new head would stay at its random start"):
        load_model(encoder_dir, "encoder", get_task("stsb"), train_head=False)
    assert load_model(encoder_dir, "encoder", get_task("sst2"), train_head=False).classifier.weight.shape == (2, 32)  # fits


def test_a_body_that_does_not_fit_its_config_is_an_error(encoder_dir, tmp_path):
    """Only the head may be new: a body weight of another shape than config.json says is an error, not reinitialized."""
    import json
    import shutil

    shutil.copytree(encoder_dir, tmp_path / "odd")
    config = json.loads((tmp_path / "odd" / "config.json").read_text())
    (tmp_path / "odd" / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    with pytest.raises(ValueError, match=rf"--model {tmp_path / 'odd'}: weights of the pretrained model do not fit its config\.json: "
                                         r"bert\.encoder\.layer\.0\.intermediate\.dense\.bias \[64\] \(config: \[48\]\)"):
        load_model(str(tmp_path / "odd"), "encoder", get_task("demo"))


def _run(root, model, task, **config):
    """A run folder with an untrained adapter saved from ``model`` loaded for ``task``."""
    import json

    from compacter import CompacterConfig, add_adapters, save_adapters

    net = load_model(model, "encoder", get_task(task))
    add_adapters(net, CompacterConfig("compacter++", reduction_factor=4, **config))
    save_adapters(net, root / "best")
    (root / "config.json").write_text(json.dumps({"model": model, "task": task}))
    return str(root / "best")


MNLI_TEXT = '{"premise": "it is good", "hypothesis": "it is"}'


def test_predict_refuses_a_head_that_fits_neither_model_nor_adapter(encoder_dir, tmp_path, capsys):
    """predict --task mnli with an adapter trained on a 2-label task, on a 2-label model: the
    3-label head would be random; the error names --model, the head's shape and the label count."""
    from compacter.cli import main

    adapter = _run(tmp_path / "wsc-run", encoder_dir, "wsc")
    assert main(["predict", adapter, "--task", "mnli", "--text", MNLI_TEXT]) == 2
    err = capsys.readouterr().err
    assert (f"error: --model {encoder_dir}: its classification head (classifier.bias [2], classifier.weight [2, 32]) does not fit "
            f"task 'mnli' (3 labels), and the adapter {adapter} carries a head for another number of labels "
            "(classifier.bias [2], classifier.weight [2, 32])") in err and "Traceback" not in err


def test_predict_refuses_a_new_head_the_adapter_does_not_replace(encoder_dir, tmp_path, capsys):
    from compacter.cli import main

    adapter = _run(tmp_path / "headless", encoder_dir, "wsc", train_head=False)
    assert main(["predict", adapter, "--task", "stsb", "--text", '{"sentence1": "a", "sentence2": "b"}']) == 2
    err = capsys.readouterr().err
    assert f"does not fit task 'stsb' (regression: 1 output), and the adapter {adapter} carries no trained head to put in its place" in err


def test_predict_takes_the_adapters_head_trained_for_the_task(encoder_dir, tmp_path, capsys):
    """A run trained on MNLI from the 2-label model: its adapter carries the 3-label head, so
    predict loads it although the model's own head has 2 labels."""
    import json

    from compacter.cli import main

    adapter = _run(tmp_path / "mnli-run", encoder_dir, "mnli")
    assert main(["predict", adapter, "--text", MNLI_TEXT]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in ("entailment", "neutral", "contradiction")
