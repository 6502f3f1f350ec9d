"""
Where checkpoints come from and how directories are written: a local directory or a hub download, JSON files,
directories written atomically (and tidied after a kill), the tokenizer beside the weights. model.py reads
and writes the checkpoint files themselves (config.json, safetensors).

A checkpoint directory holds config.json, model.safetensors (or model-0000N-of-0000M.safetensors
with model.safetensors.index.json) and tokenizer.json (+ tokenizer_config.json,
generation_config.json when the source had them).
"""
import atexit
import errno
import fcntl
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
    `.NAME.old-PID`: it is renamed back. Staging folders (perhaps half written) and old versions are removed,
    but never those of a process that is still running (another run writing there: see hold_lock).
    """
    out_dir = Path(out_dir)
    name = glob.escape(out_dir.name)
    leftovers = [path for path in sorted(out_dir.parent.glob(f".{name}.old-*"))
                 + sorted(out_dir.parent.glob(f".{name}.staging-*")) if not running(path.name.rsplit("-", 1)[-1])]
    old = [path for path in leftovers if ".old-" in path.name]
    if old and not out_dir.exists():
        old.pop().rename(out_dir)
        leftovers = [path for path in leftovers if path.exists()]
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)


def running(pid: str) -> bool:
    """Whether the process `pid` (a string from a folder name) is alive, other than this one."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True

# -----------------------------------------------------------------------------
# What a tool may write: never one of its inputs, never a file it did not write; one writer per folder


def guard_output(out, inputs=(), own_output=None, what: str = "--out"):
    """Refuse, in one line and before any work, an output that would destroy what this tool did not write: one of
    its inputs, a path inside an input folder or a folder holding an input (a save renames its folder), or an
    existing file that own_output(path) does not recognise as this tool's earlier output. Paths are compared
    resolved (symlinks, `..`), files by identity (the same file under another name)."""
    out = Path(out)
    target = out.resolve()
    identity = (out.stat().st_dev, out.stat().st_ino) if out.is_file() else None
    for item in inputs:
        if item is None or not Path(item).exists():  # a hub repo id, or nothing there
            continue
        source = Path(item).resolve()
        files = [source] if source.is_file() else [Path(folder) / name for folder, _, names in os.walk(source)
                                                   for name in names]
        same_file = identity is not None and any((path.stat().st_dev, path.stat().st_ino) == identity
                                                 for path in files if path.exists())
        if same_file or target == source or source in target.parents or target in source.parents:
            raise CheckpointError(f"{what} {out} is, holds or lies inside this run's input {item}: "
                                  f"choose another {what}")
    if out.is_file() and own_output is not None and not own_output(out):
        raise CheckpointError(f"{what} {out} exists and was not written by this tool: choose another {what} "
                              f"(or remove the file)")


HELD = {}  # resolved output path -> (lock file path, its open file), while this process holds the lock


def hold_lock(path):
    """Take the lock of output `path` (the file .NAME.lock beside it, not inside it: saves replace `path`) until
    release_lock or this process's exit, or refuse in one line that names the process holding it. The kernel
    releases the lock of a process that dies, however it dies, so a lock left by a killed run never blocks."""
    path = Path(path)
    key = path.resolve()
    if key in HELD:
        return
    lock_path = path.parent / f".{path.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        lock = open(lock_path, "a+", encoding="utf-8")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise CheckpointError(f"{path} is being written by another run (process {holder}): wait for it, or "
                                  f"choose another output") from None
        if lock_path.exists() and os.stat(lock_path).st_ino == os.fstat(lock.fileno()).st_ino:
            break
        lock.close()  # the holder released it and removed the file as this process opened it: take the new one
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    HELD[key] = (lock_path, lock)


def release_lock(path):
    """Give back the lock of `path` (if this process holds it) and remove its file: nothing is left beside it."""
    held = HELD.pop(Path(path).resolve(), None)
    if held:
        lock_path, lock = held
        lock_path.unlink(missing_ok=True)  # removed while still locked: a waiting run retries on a new file
        lock.close()


atexit.register(lambda: [release_lock(path) for path in list(HELD)])


def write_failure(path, error: BaseException) -> str:
    """One line for an output that could not be written: the path, and the reason (a full disk said plainly:
    torch.save reports it as 'unexpected pos')."""
    folder = Path(path).absolute().parent
    while not folder.exists():
        folder = folder.parent
    full = shutil.disk_usage(folder).free < 2**20 or getattr(error, "errno", None) == errno.ENOSPC
    reason = "the disk is full" if full else getattr(error, "strerror", None) or str(error).splitlines()[0]
    return f"cannot write {path}: {reason}; nothing half-written was left"


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
