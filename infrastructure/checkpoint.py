"""
Where checkpoints come from and how directories are written: a local directory or a hub download, JSON files,
directories written atomically (and tidied after a kill), the tokenizer beside the weights. model.py reads
and writes the checkpoint files themselves (config.json, safetensors).

A checkpoint directory holds config.json, model.safetensors (or model-0000N-of-0000M.safetensors
with model.safetensors.index.json) and tokenizer.json (+ tokenizer_config.json,
generation_config.json when the source had them).
"""
import glob
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


DEFAULT_MODEL = "Qwen/Qwen3-0.6B-Base"
HUB_FILES = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
             "tokenizer.json", "tokenizer_config.json"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]


class CheckpointError(ValueError):
    """A checkpoint we cannot use; the message is one line that names the file or key."""


def resolve_checkpoint(path_or_repo_id: str) -> Path:
    """A local directory as is; otherwise a hub repo id, downloaded (config, weights, tokenizer only)."""
    path, name = Path(path_or_repo_id), str(path_or_repo_id)
    if path.is_dir():
        return path
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise CheckpointError(f"{name}: not a checkpoint directory (and not a hub repo id)")
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as error:
        raise CheckpointError(f"{name}: not a local directory, and the download from the Hugging "
                              f"Face hub failed (offline?): {type(error).__name__}") from None


# -----------------------------------------------------------------------------
# JSON files and atomic directories


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: invalid JSON ({error})") from None


def write_json(path: Path, data):
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


@contextmanager
def atomic_directory(out_dir):
    """Yield a staging directory next to `out_dir`; on success it replaces `out_dir` by rename."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old)
    else:
        staging.rename(out_dir)


def check_writable(path):
    """Refuse, before any work, an output path that could not be created: one under a file, or in a folder
    this process may not write to (the nearest folder above it that exists must be writable)."""
    path = Path(path).absolute()
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise CheckpointError(f"{path}: cannot be created, {folder} is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CheckpointError(f"{path}: cannot be created, {folder} is not writable")


def recover_directory(out_dir: Path):
    """Tidy up after a save that was killed midway (its folders are named with the dead process's id).

    A kill between the two renames of atomic_directory leaves no `out_dir` and the previous version in
    `.NAME.old-PID`: it is renamed back. Staging folders (perhaps half written) and old versions are removed.
    """
    out_dir = Path(out_dir)
    name = glob.escape(out_dir.name)
    old = sorted(out_dir.parent.glob(f".{name}.old-*"))
    if old and not out_dir.exists():
        old.pop().rename(out_dir)
    for leftover in old + sorted(out_dir.parent.glob(f".{name}.staging-*")):
        shutil.rmtree(leftover, ignore_errors=True)


def load_tokenizer(path_or_model):
    """The `tokenizers` tokenizer of a checkpoint directory (or of a loaded model's source directory)."""
    from tokenizers import Tokenizer
    # a loaded model (it knows its source directory), a directory, or a hub repo id
    directory = path_or_model.source if hasattr(path_or_model, "source") else resolve_checkpoint(path_or_model)
    if directory is None or not (Path(directory) / "tokenizer.json").exists():
        raise CheckpointError(f"{directory}: no tokenizer.json")
    try:
        return Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
    except Exception as error:  # the tokenizers library raises its own exception types
        raise CheckpointError(f"{Path(directory) / 'tokenizer.json'}: not a valid tokenizer ({error})") from None
