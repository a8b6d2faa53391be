"""Adapter-only checkpoints: ``adapter_model.safetensors`` + ``adapter_config.json``.

The JSON holds the format version, the method config, the base model's name and type, a
fingerprint (SHA-256 of every tensor name and shape the adapter expects), and, where the adapter
holds trained task-head tensors, the model class ("architecture") that head was made for; the safetensors
metadata holds a SHA-256 of the method config, so weights and config written by two different
saves (a save interrupted between its two files, files mixed up by hand) do not load as one
checkpoint. Loading checks the config, the model type, the head's model class, the file and every shape *before* the
model is touched; saving writes both files to temporary names and only then renames them into
place (the old files moved aside and put back if a rename fails), so a failed save leaves the old
checkpoint as it was and no new folders, and a crash never leaves a file half-written or a
mismatched pair that loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import __version__
from .config import FORMAT_VERSION, CompacterConfig
from .inject import (FULL_IS_ACTIVE, PendingAdapters, adapter_modules, attach_adapters, body_prefix, build_adapters,
                     check_adapter_name, in_head, unwrap)

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
_TOP_LEVEL = {"format_version", "library", "config", "base_model", "model_type", "fingerprint", "name", "architecture"}
_CONFIG_HASH = "compacter_config_sha256"  # safetensors metadata key binding the weights to their config


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into this model; the model was left unchanged."""


def architecture(model) -> str:
    """The model class a trained head belongs to: the nearest transformers task-model class among
    ``model``'s classes (``BertForSequenceClassification`` for a user's ``class MyBert(BertForSequenceClassification)``),
    else its own class name (a class built on ``BertPreTrainedModel`` is its own head, not a BERT one)."""
    own = type(model)
    return next((c.__name__ for c in own.__mro__ if c.__module__.startswith("transformers.") and "For" in c.__name__),
                own.__name__)


def fingerprint(shapes: dict[str, tuple[int, ...]]) -> str:
    """SHA-256 over the sorted ``name:shape`` pairs of the adapter's tensors."""
    text = "\n".join(f"{k}:{list(v)}" for k, v in sorted(shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def config_hash(config: dict) -> str:
    """SHA-256 of a method config's canonical JSON (stored in the weights file's metadata)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _shapes(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Method 'full': every parameter of the model, each tensor once."""
    seen, out = set(), {}
    for name, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out[f"model.{name}"] = p
    return out


def _head_tensors(tensors: dict[str, torch.Tensor], config: CompacterConfig, model: nn.Module) -> list[str]:
    """The saved tensors of ``model``'s task head (trained copies ``tuned.*``, or method 'full''s ``model.*``)."""
    body = body_prefix(model)
    return sorted(k for k in tensors if k.startswith(("tuned.", "model.")) and in_head(k.split(".", 1)[1], config, body))


def save_adapters(model: nn.Module, path: str | os.PathLike, name: str | None = None) -> Path:
    """Write adapter ``name`` (default: the active one) to the folder ``path``; returns the folder."""
    model = unwrap(model)  # a torch.compile wrapper saves its model's adapter, under the model's names
    pending = adapter_modules(model, name)
    tensors = _full_state(model) if pending.config.train_all else pending.state_dict()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    config = getattr(model, "config", None)
    meta = {
        "format_version": FORMAT_VERSION,
        "library": f"compacter {__version__}",
        "name": pending.name,
        "config": pending.config.to_dict(),
        "base_model": getattr(config, "_name_or_path", None) or None,
        "model_type": getattr(config, "model_type", None),
        "fingerprint": fingerprint(_shapes(tensors)),
    }
    if _head_tensors(tensors, pending.config, model):  # written only here: versions before this field refuse
        meta["architecture"] = architecture(model)  # it (an unknown field), and a headless adapter fits any class
    folder = Path(path)
    metadata = {"format": "pt", _CONFIG_HASH: config_hash(meta["config"])}
    created = _make_folders(folder)
    staged: dict[str, Path] = {}
    try:  # both files are written in full before either replaces the old checkpoint's
        staged[WEIGHTS_NAME] = _stage(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata=metadata))
        staged[CONFIG_NAME] = _stage(folder / CONFIG_NAME,
                                     lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n"))
        _swap_files(folder, staged)
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        for made in created:  # a failed save into a new path leaves no empty folders
            try:
                made.rmdir()
            except OSError:
                break
        raise
    return folder


def _make_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it made, the deepest first."""
    missing, part = [], folder
    while not os.path.lexists(part) and part != part.parent:
        missing.append(part)
        part = part.parent
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _stage(target: Path, write) -> Path:
    """Write ``target``'s new content to a temporary file beside it, with an ordinary file's mode; returns that file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file owner-only; give it a normal file's mode
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _swap_files(folder: Path, staged: dict[str, Path]) -> None:
    """Rename the staged files over their targets in ``folder``, together: the old files are moved
    aside first and put back if any rename fails, and removed only once every new file is in place."""
    aside: dict[str, Path] = {}
    placed: list[str] = []
    try:
        for name in staged:
            if os.path.lexists(folder / name):
                aside[name] = folder / f".{name}.{secrets.token_hex(8)}.old"
                os.replace(folder / name, aside[name])
        for name, tmp in staged.items():
            os.replace(tmp, folder / name)
            placed.append(name)
    except BaseException:
        for name in placed:  # new files without an old one to put back would be half a checkpoint
            if name not in aside:
                (folder / name).unlink(missing_ok=True)
        for name, old in aside.items():
            os.replace(old, folder / name)
        raise
    for old in aside.values():
        old.unlink(missing_ok=True)


def _atomic_write(target: Path, write) -> None:
    tmp = _stage(target, write)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_adapter_config(path: str | os.PathLike) -> tuple[CompacterConfig, dict]:
    """Parse and validate ``adapter_config.json`` in folder ``path``; returns the config and the raw metadata."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"{file}: no adapter config here (expected {CONFIG_NAME} beside {WEIGHTS_NAME})"
                              f"{_other_checkpoint(Path(path))}")
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(meta).__name__}")
    unknown = sorted(set(meta) - _TOP_LEVEL)
    if unknown:
        raise CheckpointError(f"{file}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TOP_LEVEL))}")
    version = meta.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:  # not 1.0 or true, which compare equal to 1
        raise CheckpointError(f"{file}: format_version {version!r} is not supported (this library reads {FORMAT_VERSION})")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{file}: missing 'config' object")
    try:
        saved = meta["config"]
        if "head_modules" in saved and saved["head_modules"] is None:  # earlier versions saved None for "no head modules"
            saved = {**saved, "head_modules": []}
        config = CompacterConfig.from_dict(saved)
        if meta.get("name") is not None:
            check_adapter_name(meta["name"])
        if "architecture" in meta and not (isinstance(meta["architecture"], str) and meta["architecture"]):
            raise ValueError(f"architecture must be a model class name, got {meta['architecture']!r}")
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{file}: {err}") from None
    return config, meta


def _other_checkpoint(folder: Path) -> str:
    """What ``folder`` holds instead of an adapter, for the error: a run directory (its best/ is the
    adapter), or a peer run's checkpoint (peer_config.json), which :func:`load_adapters` does not read."""
    from .peers import PEER_CONFIG, peer_method  # peers imports this module

    if (folder / "best" / CONFIG_NAME).is_file() or (folder / "best" / PEER_CONFIG).is_file():
        return f"; {folder} is a run directory: its best adapter is {folder / 'best'}"
    if (folder / PEER_CONFIG).is_file():
        try:
            method = peer_method(folder)
        except CheckpointError:
            method = None
        return (f"; {folder} holds a peer method's checkpoint ({method or 'peer_config.json'}), not a compacter adapter: "
                "`compacter evaluate` and `compacter predict` read it inside its run directory")
    return ""


def _read_weights(path: Path, name: str = WEIGHTS_NAME, what: str = "adapter weights") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of weights file ``name`` in folder ``path``; a missing or damaged
    file is a CheckpointError naming it (``what``: what the file holds, for the message)."""
    file = path / name
    if not file.is_file():
        raise CheckpointError(f"{file}: no {what} here")
    try:
        with safe_open(file, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{file}: truncated or corrupt safetensors file ({err})") from None


def _check_floating(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Trained tensors are floating-point: an integer or bool tensor was cast silently when copied in."""
    bad = [f"{k} ({str(v.dtype).removeprefix('torch.')})" for k, v in sorted(tensors.items()) if not v.is_floating_point()]
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise CheckpointError(f"{file}: every tensor must be floating-point; these are not: {shown}")


def _check_finite(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    """No trained tensor holds NaN or an infinity. Training refuses a non-finite loss before it
    saves, so such values are damage (bytes overwritten, a bad edit); loaded, they silently turn the
    model's outputs into garbage (an untrained-looking score) or a NaN loss at the next step."""
    bad = []
    for key, value in sorted(tensors.items()):
        if value.is_floating_point():
            count = int((~torch.isfinite(value)).sum())
            if count:
                bad.append(f"{key} ({count} of {value.numel()} values)")
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise CheckpointError(f"{file}: damaged: NaN or infinite values in {shown}; training never saves those "
                              f"(it stops at a non-finite loss), so the file was changed after it was written: "
                              f"use another copy, or train again")


def _compare(file: Path, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> None:
    problems = [f"missing tensor {k} {list(v)}" for k, v in sorted(expected.items()) if k not in found]
    problems += [f"unexpected tensor {k} {list(v)}" for k, v in sorted(found.items()) if k not in expected]
    problems += [
        f"{k}: checkpoint has shape {list(found[k])}, this model needs {list(v)}"
        for k, v in sorted(expected.items()) if k in found and found[k] != v
    ]
    if problems:
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise CheckpointError(f"{file}: made for other shapes than this model's:\n  - " + "\n  - ".join(shown))


def load_adapters(model: nn.Module, path: str | os.PathLike, name: str | None = None, activate: bool = True, *,
                  revision: str | None = None, token: str | bool | None = None) -> nn.Module:
    """Load a saved adapter into ``model`` under ``name`` (default: the saved name) and activate it
    (``activate=False``: load it frozen, as every inactive adapter is, and keep the active one).

    ``path``: a local folder, or a Hugging Face Hub repo id ``"namespace/name"`` that is not a
    local path (as :func:`push_adapters` writes; ``revision``: a branch, tag or commit; ``token``
    for private repos; files are cached by ``huggingface_hub`` and ``HF_HUB_OFFLINE=1`` uses the
    cache only).

    Refuses, with :class:`CheckpointError` and no change to the model, a checkpoint made for
    other shapes or another model type (a Llama adapter on a Mistral model: same shapes, but its
    trained norms and head belong to the other architecture), a trained task head made for another
    model class (a BertForSequenceClassification ``classifier`` on BertForTokenClassification;
    an adapter without head tensors loads into any class with the same body), a truncated or corrupt file,
    a tensor holding NaN or infinite values (damage: training never saves them), weights and config
    from different saves, a config with unknown fields or version, and a repo that cannot be read.
    A checkpoint written before a tied base tensor got one trained copy loads its trained copy, or
    is refused where that cannot be told (:func:`_one_copy_per_tie`).
    """
    if name is not None:  # "" is no name: it does not fall back to the saved one
        check_adapter_name(name)
    given, model = model, unwrap(model)  # a torch.compile wrapper loads into the model it runs
    folder = adapter_folder(path, revision=revision, token=token)
    config, meta = read_adapter_config(folder)
    tensors, metadata = _read_weights(folder)
    _check_floating(folder / WEIGHTS_NAME, tensors)
    _check_finite(folder / WEIGHTS_NAME, tensors)
    if config.train_all and not activate:  # before its weights are copied into the model
        raise CheckpointError(f"{folder}: {FULL_IS_ACTIVE}")
    name = name if name is not None else meta.get("name") or "default"
    found = _shapes(tensors)
    if meta.get("fingerprint") != fingerprint(found):
        raise CheckpointError(f"{folder / CONFIG_NAME}: fingerprint does not match the weights file (mixed-up or edited checkpoint)")
    if _CONFIG_HASH in metadata and metadata[_CONFIG_HASH] != config_hash(meta["config"]):
        raise CheckpointError(f"{folder}: {WEIGHTS_NAME} was saved with another config than {CONFIG_NAME}'s "
                              f"(an interrupted save, or files of two checkpoints); save the adapter again")
    saved_type, model_type = meta.get("model_type"), getattr(getattr(model, "config", None), "model_type", None)
    if saved_type and model_type and saved_type != model_type:
        raise CheckpointError(f"{folder / CONFIG_NAME}: adapter trained on a {saved_type!r} model "
                              f"({meta.get('base_model') or 'unnamed'}), this model is {model_type!r}")
    heads, saved_class = _head_tensors(tensors, config, model), meta.get("architecture")
    if heads and saved_class and saved_class not in {architecture(model), *(c.__name__ for c in type(model).__mro__)}:
        raise CheckpointError(f"{folder / CONFIG_NAME}: the adapter's task head ({', '.join(heads[:3])}{', ...' if len(heads) > 3 else ''}) "
                              f"was trained on {saved_class}, this model is {type(model).__name__}; load it into a {saved_class}, "
                              f"or save an adapter without its head (train_head=False)")
    try:
        pending = build_adapters(model, config, name)
    except ValueError as err:
        raise CheckpointError(f"{folder}: cannot build this adapter on {type(model).__name__}: {err}") from None
    if config.train_all:
        _compare(folder / WEIGHTS_NAME, _shapes(_full_state(model)), found)
        with torch.no_grad():
            for full, p in model.named_parameters():
                if f"model.{full}" in tensors:
                    p.copy_(tensors[f"model.{full}"])
        attach_adapters(model, pending, activate=activate)
        return given
    tensors = _one_copy_per_tie(folder / WEIGHTS_NAME, pending, tensors)
    own = pending.state_dict()
    _compare(folder / WEIGHTS_NAME, _shapes(own), _shapes(tensors))
    _copy_into(pending, tensors)
    attach_adapters(model, pending, activate=activate)
    return given


def is_hub_id(path: str | os.PathLike, bare: bool = False) -> bool:
    """``"namespace/name"``, as the Hub spells a repo (a bare "name" is taken as a local folder,
    unless ``bare``: "t5-small" is a Hub model id). A path ("./x", "~/x", "/x", "a/b/c", a Path)
    is not: adapters and ``--model`` (:func:`~compacter.modeling.check_model_path`) share this rule."""
    text = str(path)
    if isinstance(path, Path) or text.count("/") > 1 or (text.count("/") == 0 and not bare) or text.startswith((".", "~")):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def adapter_folder(path: str | os.PathLike, revision: str | None = None, token: str | bool | None = None) -> Path:
    """The local folder holding an adapter checkpoint: ``path`` itself where it exists or is not a
    Hub repo id; else the ``huggingface_hub`` cache folder its two files are downloaded into."""
    folder = Path(path)
    if folder.exists() or not is_hub_id(path):
        return folder
    from huggingface_hub import hf_hub_download

    try:
        files = [Path(hf_hub_download(str(path), file, revision=revision, token=token)) for file in (CONFIG_NAME, WEIGHTS_NAME)]
    except Exception as err:  # offline, no such repo or file, no access: one clear error, model untouched
        raise CheckpointError(f"{path}: no such local folder, and the Hugging Face Hub repo {str(path)!r} could not be "
                              f"read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no message'})") from None
    if files[0].parent != files[1].parent:  # the revision moved between the two downloads
        raise CheckpointError(f"{path}: {CONFIG_NAME} and {WEIGHTS_NAME} came from different revisions; pass revision=<commit>")
    return files[0].parent


def push_adapters(model: nn.Module, repo_id: str, name: str | None = None, *, private: bool | None = None,
                  token: str | bool | None = None, revision: str | None = None,
                  commit_message: str | None = None) -> str:
    """Save adapter ``name`` (default: the active one) and upload it to the Hugging Face Hub repo
    ``repo_id`` (created if missing), with a short model card; returns the commit's URL.
    ``load_adapters(model, repo_id)`` loads it back. Nothing is uploaded if saving fails."""
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_adapters(model, tmp, name)
        meta = json.loads((folder / CONFIG_NAME).read_text())
        (folder / "README.md").write_text(_model_card(meta, repo_id))
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                 commit_message=commit_message or f"compacter adapter {meta['name']!r} ({meta['config']['method']})")
    return getattr(info, "commit_url", str(info))


def _model_card(meta: dict, repo_id: str) -> str:
    """README.md for the Hub; ``base_model`` only where it is a Hub id (the Hub refuses a card
    whose base_model is a local path, as a model loaded from disk records)."""
    base = meta.get("base_model")
    if base and (os.path.exists(base) or not is_hub_id(base, bare=True)):
        base = None
    what = f"`{base}`" if base else f"a {meta.get('model_type') or 'transformers'} model"
    front = ["---", "library_name: compacter", "tags:", "- compacter", "- adapter"] + ([f"base_model: {base}"] if base else []) + ["---"]
    return "\n".join(front + [
        "", f"# {repo_id}", "",
        f"A {meta['config']['method']} adapter ({meta['library']}) for {what}: the adapter's weights only.", "",
        "```python", "import compacter, transformers", "",
        f"model = transformers.AutoModel.from_pretrained({base or '<the base model>'!r})  # the Auto class of its task",
        f"compacter.load_adapters(model, {repo_id!r})", "```", ""])


def _copy_into(pending: PendingAdapters, tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, p in pending.state_dict().items():
            p.copy_(tensors[key].to(device=p.device, dtype=p.dtype))


def _one_copy_per_tie(file: Path, pending: PendingAdapters, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with one copy of each tensor the base model ties under several names, under its
    first name (``tuned.<first name>``, as :func:`save_adapters` writes it).

    Checkpoints saved before a tie got one trained copy hold a copy under each name (BitFit on
    BertForMaskedLM: ``tuned.cls.predictions.bias`` and ``tuned.cls.predictions.decoder.bias``),
    trained apart: the forward used one of them, the other got no gradient and kept its start,
    the base model's value. Such a checkpoint loads the copy that differs from this model's base
    value (the trained one; copies equal to each other are one); where more than one differs
    (both trained, or the adapter was trained on another base model), it is refused: which one
    the forward used cannot be told. So is a trained copy saved under some of the names only (a
    head's ``lm_head.weight`` trained, its tied ``shared.weight`` left at the base value): loaded
    as one tensor, it would change the embeddings too. (One saved under the first name only reads
    as the current format.)"""
    out = dict(tensors)
    for full, others in pending.ties.items():
        names = [f"tuned.{n}" for n in (full, *others) if f"tuned.{n}" in tensors]
        if names in ([], [f"tuned.{full}"]):
            continue  # the current format (or a checkpoint that _compare refuses)
        start = pending.tuned[full].detach().to("cpu")  # a fresh copy: the base model's value
        if any(tensors[n].shape != start.shape for n in names):
            continue  # other shapes: _compare names them
        trained: list[str] = []
        for n in names:
            if not torch.equal(tensors[n].to(start.dtype), start) and not any(torch.equal(tensors[n], tensors[t]) for t in trained):
                trained.append(n)
        if trained and len(names) < 1 + len(others):  # e.g. a trained head's lm_head.weight, its tied shared.weight left out
            missing = [n for n in (full, *others) if f"tuned.{n}" not in tensors]
            raise CheckpointError(f"{file}: {trained[0]} is a trained copy of a tensor the base model ties to "
                                  f"{', '.join(missing)}, saved with those at the base value (by an older version, or from a model "
                                  f"that does not tie them): the model used two values there, which one tied tensor cannot hold")
        if len(trained) > 1:
            raise CheckpointError(f"{file}: {', '.join(trained)} are copies of one tied tensor of the base model ({full}), "
                                  f"saved apart by an older version, and more than one was trained (or this is another "
                                  f"base model than the adapter's): which one the model used cannot be told")
        kept = out[(trained or names)[0]]
        for n in names:
            del out[n]
        out[f"tuned.{full}"] = kept
    return out
