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
    with pytest.raises(ValueError, match=r"--model someone/model: only safetensors weights are loaded .*the repo has no model\.safetensors"):
        load_model("someone/model", "seq2seq", get_task("demo"))


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
