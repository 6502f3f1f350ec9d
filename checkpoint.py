"""
Checkpoints in Hugging Face layout: find or download them, read config.json (and refuse what model.py does
not implement), read and write safetensors (one file or shards), write a directory atomically, load the
tokenizer. model.py builds on these.

A checkpoint directory holds config.json, model.safetensors (or model-0000N-of-0000M.safetensors
with model.safetensors.index.json) and tokenizer.json (+ tokenizer_config.json,
generation_config.json when the source had them).
"""
import dataclasses
import glob
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

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
# config.json: what model.Config needs from it, and what we write


def config_fields(d: dict, source: str = "config.json") -> dict:
    """model.Config's fields from a Hugging Face config.json; refuse the Qwen3 variants model.py does not implement."""
    def refuse(what):
        raise CheckpointError(f"{source}: unsupported config: {what}")
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(d).__name__}")
    if d.get("model_type") != "qwen3":
        refuse(f"model_type {d.get('model_type')!r} (only dense 'qwen3' is implemented; no MoE)")
    if d.get("num_experts") or d.get("num_local_experts"):
        refuse("mixture of experts")
    if d.get("use_sliding_window") or any(t != "full_attention" for t in d.get("layer_types") or []):
        refuse("sliding-window attention")
    if d.get("attention_bias"):
        refuse("attention bias")
    if d.get("hidden_act", "silu") != "silu":
        refuse(f"hidden_act {d['hidden_act']!r}")
    # transformers 4 writes rope_theta at top level (the real Qwen3 files), transformers 5 writes
    # rope_parameters = {rope_theta, rope_type}; anything but plain RoPE is rope scaling.
    rope = d.get("rope_parameters") or {}
    if d.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        refuse(f"rope scaling {d.get('rope_scaling') or rope}")
    sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "max_position_embeddings")
    for key in sizes:
        if key in d and d[key] is not None and not (type(d[key]) is int and d[key] > 0):
            raise CheckpointError(f"{source}: {key} must be a positive integer, got {d[key]!r}")
    try:
        return dict(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"], num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"],
            rope_theta=rope.get("rope_theta", d.get("rope_theta", 10000.0)), rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            max_position_embeddings=d.get("max_position_embeddings", 32768),
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"))
    except KeyError as key:
        raise CheckpointError(f"{source}: missing key {key}") from None


def config_json(config, dtype: torch.dtype) -> dict:
    """A config.json for a model.Config, in the style of the published Qwen3 files (rope_theta at top level)."""
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", **dataclasses.asdict(config),
            "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
            "rope_scaling": None, "use_sliding_window": False, "sliding_window": None,
            "torch_dtype": str(dtype).removeprefix("torch.")}


def load_safetensors(parameters: dict, directory: Path, dtype: torch.dtype, skip=lambda name: False):
    """Copy every tensor of the checkpoint into the parameter of the same name, checking shapes.

    `parameters` maps HF names to tensors; tensors for which skip(name) is true are not read."""
    from safetensors import safe_open
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map", {})
    elif (directory / "model.safetensors").exists():
        weight_map = None
    else:
        raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json")
    files = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
    missing = set(parameters)
    for filename in files:
        try:
            with safe_open(directory / filename, framework="pt") as file:
                for name in file.keys():
                    if skip(name):
                        continue
                    if name not in parameters:
                        raise CheckpointError(f"{directory / filename}: unexpected tensor {name}")
                    tensor = file.get_tensor(name)
                    if tensor.shape != parameters[name].shape:
                        raise CheckpointError(f"{directory / filename}: {name} has shape {tuple(tensor.shape)}, "
                                              f"expected {tuple(parameters[name].shape)}")
                    if not torch.isfinite(tensor).all():  # a diverged run: its scores would be meaningless
                        raise CheckpointError(f"{directory / filename}: {name} has NaN or infinite values")
                    with torch.no_grad():
                        parameters[name].copy_(tensor.to(dtype))
                    missing.discard(name)
        except CheckpointError:
            raise
        except Exception as error:  # truncated or corrupt file, or a shard that is not there
            raise CheckpointError(f"{directory / filename}: cannot read safetensors ({error})") from None
    if missing:
        raise CheckpointError(f"{directory}: missing tensor {sorted(missing)[0]} ({len(missing)} missing)")


def write_safetensors(tensors: dict, directory: Path, max_shard_bytes: int):
    """One model.safetensors, or shards of at most `max_shard_bytes` and their index, as HF writes them."""
    from safetensors.torch import save_file
    shards, size = [{}], 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name], size = tensor, size + nbytes
    if len(shards) == 1:
        save_file(shards[0], directory / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / filename, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, filename))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    write_json(directory / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


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
