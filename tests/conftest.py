"""Shared fixtures: a tiny random checkpoint (the `python -m tools.tiny` code path) and the real data."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's flat modules

from tools.tiny import write_tiny  # noqa: E402


def reference_checkpoint(path, tie=True, heads=4, kv_heads=2, head_dim=32, hidden=64, vocab=300, seed=0,
                         real_style=False):
    """A random-weight transformers Qwen3ForCausalLM saved with save_pretrained; weights scaled up so that
    logits are far from uniform (a parity test on near-zero logits proves little)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                         tie_word_embeddings=tie, initializer_range=0.2, rope_parameters={
                             "rope_theta": 10000.0, "rope_type": "default"})
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)  # non-trivial norm weights, q/k norm included
    model.save_pretrained(path)
    if real_style:  # the published Qwen3 files: rope_theta at top level, bf16 dtype, transformers 4 era
        config_file = Path(path) / "config.json"
        data = json.loads(config_file.read_text())
        data["rope_theta"] = data.pop("rope_parameters")["rope_theta"]
        data.update(rope_scaling=None, torch_dtype="bfloat16", max_window_layers=28, use_sliding_window=False)
        data.pop("layer_types", None)
        config_file.write_text(json.dumps(data))
        model = Qwen3ForCausalLM.from_pretrained(path).eval()
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random Qwen3 with its byte-level BPE tokenizer, in HF layout. Read-only: copy to modify."""
    return write_tiny(tmp_path_factory.mktemp("tiny") / "ckpt")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data in the --data-dir layout, from EVAL_DATA_DIR (.ci/run points it at ../shared/data)."""
    value = os.environ.get("EVAL_DATA_DIR")
    if not value:
        pytest.skip("EVAL_DATA_DIR is not set: no real data (GSM8K, TruthfulQA, MMLU, Qwen tokenizer)")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"EVAL_DATA_DIR={value} is not a directory")
    return path
