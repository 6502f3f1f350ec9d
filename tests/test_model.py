"""model.py against transformers' Qwen3 (the independent reference), LoRA, log-probs, bad checkpoints."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen3ForCausalLM

from conftest import reference_checkpoint
from infrastructure.checkpoint import CheckpointError, atomic_directory, load_tokenizer, recover_directory
from model import Qwen3, add_lora, load_dtype, token_logprobs

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("tie,heads,kv_heads,head_dim,hidden", [
    (True, 4, 2, 32, 64),    # GQA 2:1, head_dim * heads (128) != hidden (64), tied, as Qwen3-0.6B
    (False, 8, 2, 16, 96),   # GQA 4:1, untied, as Qwen3-8B and up
    (True, 4, 4, 16, 64),    # plain multi-head
])
def test_logits_match_transformers(tmp_path, tie, heads, kv_heads, head_dim, hidden):
    reference = reference_checkpoint(tmp_path, tie, heads, kv_heads, head_dim, hidden)
    ours = Qwen3.from_pretrained(tmp_path, device="cpu")
    ids = torch.randint(0, 300, (3, 41), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = reference(ids).logits, ours(ids)
    assert expected.std() > 0.5  # the comparison is on informative logits
    assert (expected - actual).abs().max() <= 1e-4


def test_real_qwen3_style_config(tmp_path):
    reference = reference_checkpoint(tmp_path, real_style=True)
    ours = Qwen3.from_pretrained(tmp_path, device="cpu")
    assert ours.config.rope_theta == 10000.0 and ours.model.embed_tokens.weight.dtype == torch.float32
    ids = torch.randint(0, 300, (2, 30))
    with torch.no_grad():
        assert (reference(ids).logits - ours(ids)).abs().max() <= 1e-4


def test_round_trip_through_transformers(tmp_path):
    reference_checkpoint(tmp_path / "source", tie=False)
    ours = Qwen3.from_pretrained(tmp_path / "source")
    ours.save_pretrained(tmp_path / "saved")
    ids = torch.randint(0, 300, (2, 25))
    with torch.no_grad():
        expected = ours(ids)
        from_transformers = Qwen3ForCausalLM.from_pretrained(tmp_path / "saved").eval()(ids).logits
        reloaded = Qwen3.from_pretrained(tmp_path / "saved")(ids)
    assert (from_transformers - expected).abs().max() <= 1e-4
    assert (reloaded - expected).abs().max() == 0


def test_sharded_save_and_load(tmp_path):
    reference = reference_checkpoint(tmp_path / "source")
    ours = Qwen3.from_pretrained(tmp_path / "source")
    ours.save_pretrained(tmp_path / "sharded", max_shard_bytes=100_000)
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    ids = torch.randint(0, 300, (1, 20))
    with torch.no_grad():
        expected = reference(ids).logits
        assert (Qwen3ForCausalLM.from_pretrained(tmp_path / "sharded")(ids).logits - expected).abs().max() <= 1e-4
        assert (Qwen3.from_pretrained(tmp_path / "sharded")(ids) - expected).abs().max() <= 1e-4


def test_lora(tmp_path):
    reference_checkpoint(tmp_path / "source")
    model = Qwen3.from_pretrained(tmp_path / "source")
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        before = model(ids)
    trainable = add_lora(model, rank=4, alpha=8)
    with torch.no_grad():
        assert torch.equal(model(ids), before)  # B = 0: a fresh adapter changes nothing
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(3):
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    graded = {name for name, p in model.named_parameters() if p.grad is not None}
    assert graded and all("lora_" in name for name in graded)  # only adapters get gradients
    with torch.no_grad():
        trained = model(ids)
        assert (trained - before).abs().max() > 1e-3  # the adapter did learn something
        # merged weights computed by hand reproduce the unmerged forward
        merged = Qwen3(model.config)
        merged.load_state_dict(model.exported_state_dict(), strict=False)
        assert (merged(ids) - trained).abs().max() <= 1e-5
    model.save_pretrained(tmp_path / "merged")
    with torch.no_grad():
        assert (Qwen3.from_pretrained(tmp_path / "merged")(ids) - trained).abs().max() <= 1e-4
        from_transformers = Qwen3ForCausalLM.from_pretrained(tmp_path / "merged")(ids).logits
        assert (from_transformers - trained).abs().max() <= 1e-4


def test_hidden_states_and_chunked_logprobs(tmp_path):
    reference_checkpoint(tmp_path)
    model = Qwen3.from_pretrained(tmp_path)
    ids = torch.randint(0, 300, (2, 33))
    logits = model(ids)  # (B, T, V)
    hidden = model(ids, return_hidden=True)  # (B, T, H)
    rows, positions = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([3, 10, 0, 31, 32])
    targets = torch.tensor([5, 6, 7, 8, 299])
    expected = torch.log_softmax(logits[rows, positions], -1)[torch.arange(5), targets]
    actual = token_logprobs(model, hidden[rows, positions], targets, chunk_size=2)
    assert (actual - expected).abs().max() <= 1e-5
    # chunked cross-entropy and its gradient equal F.cross_entropy on the full logits
    flat_hidden, flat_targets = hidden[:, :-1].flatten(0, 1), ids[:, 1:].flatten()
    loss = -token_logprobs(model, flat_hidden, flat_targets, chunk_size=7).mean()
    reference_loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), flat_targets)
    assert abs(loss.item() - reference_loss.item()) <= 1e-5
    gradient = torch.autograd.grad(loss, model.model.embed_tokens.weight, retain_graph=True)[0]
    reference_gradient = torch.autograd.grad(reference_loss, model.model.embed_tokens.weight)[0]
    assert (gradient - reference_gradient).abs().max() <= 1e-6


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        Qwen3.from_pretrained(tmp_path / "missing")
    reference_checkpoint(tmp_path / "good")
    empty = tmp_path / "no_weights"
    empty.mkdir()
    shutil.copy(tmp_path / "good" / "config.json", empty)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        Qwen3.from_pretrained(empty)
    truncated = tmp_path / "truncated"
    shutil.copytree(tmp_path / "good", truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated/model.safetensors"):
        Qwen3.from_pretrained(truncated)
    wrong_shape = tmp_path / "wrong_shape"
    shutil.copytree(tmp_path / "good", wrong_shape)
    config = json.loads((wrong_shape / "config.json").read_text())
    config["intermediate_size"] = 100
    (wrong_shape / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mlp\.\w+\.weight has shape \((96, 64|64, 96)\), expected \((100, 64|64, 100)\)"):
        Qwen3.from_pretrained(wrong_shape)
    for index, (change, message) in enumerate([({"model_type": "qwen3_moe", "num_experts": 8}, "qwen3_moe"),
                            ({"use_sliding_window": True}, "sliding-window"),
                            ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling"),
                            ({"attention_bias": True}, "attention bias")]):
        unsupported = tmp_path / f"unsupported_{index}"
        shutil.copytree(tmp_path / "good", unsupported)
        (unsupported / "config.json").write_text(json.dumps({**config, "intermediate_size": 96, **change}))
        with pytest.raises(CheckpointError, match=f"unsupported config: .*{message}"):
            Qwen3.from_pretrained(unsupported)


def test_offline_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="download from the Hugging Face hub failed"):
        Qwen3.from_pretrained("Qwen/Qwen3-0.6B-Base-not-cached")


def test_tiny_checkpoint_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tools.tiny", str(tmp_path / "tiny")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    model = Qwen3.from_pretrained(tmp_path / "tiny")
    tokenizer = load_tokenizer(model)
    assert model.config.vocab_size == tokenizer.get_vocab_size()
    assert tokenizer.token_to_id("<|endoftext|>") == model.config.eos_token_id
    text = "Question: Ann has 12 pens.\nAnswer: 12 + 3 = 15\n#### 15"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    with torch.no_grad():  # and transformers reads it too
        ids = torch.tensor([tokenizer.encode(text).ids])
        assert (Qwen3ForCausalLM.from_pretrained(tmp_path / "tiny")(ids).logits - model(ids)).abs().max() <= 1e-4


def test_real_qwen_tokenizer(data_dir):
    tokenizer = load_tokenizer(data_dir / "qwen_tokenizer")
    assert tokenizer.encode("Hello world").ids == [9707, 1879]
    assert tokenizer.token_to_id("<|endoftext|>") == 151643


def test_a_small_update_survives_the_reload_in_the_saved_dtype(tmp_path, monkeypatch):
    """A post-trained checkpoint is saved in float32 and loaded back in float32, also where the GPU computes in
    bf16: round_bf16(W + dW) would drop much of an RL-sized update (|W| ~ 3e-2, |dW| ~ 1e-4)."""
    reference_checkpoint(tmp_path / "base")
    base = Qwen3.from_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in base.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.03)
    base.save_pretrained(tmp_path / "base")
    trained = Qwen3.from_pretrained(tmp_path / "base")
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(torch.randn_like(parameter) * 1e-4)
    trained.save_pretrained(tmp_path / "trained")  # float32, as the trainers save
    assert json.loads((tmp_path / "trained" / "config.json").read_text())["torch_dtype"] == "float32"
    reloaded = Qwen3.from_pretrained(tmp_path / "trained")
    for (name, a), (_, b), (_, w) in zip(trained.named_parameters(), reloaded.named_parameters(), base.named_parameters()):
        assert b.dtype == torch.float32 and torch.equal(a, b), name
        if "norm" not in name:  # what bf16 would have done to the update: a third of it gone or worse
            lost = (a.to(torch.bfloat16).float() == w.to(torch.bfloat16).float()).float().mean()
            assert lost > 0.25, name
    # the rule on a GPU (checked without one): the saved dtype where the GPU has it
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    cuda = torch.device("cuda")
    assert load_dtype("float32", cuda) == torch.float32 and load_dtype("bfloat16", cuda) == torch.bfloat16
    assert load_dtype(None, cuda) == torch.bfloat16 and load_dtype("float16", cuda) == torch.float16
    assert load_dtype("bfloat16", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)  # a T4
    assert load_dtype("bfloat16", cuda) == torch.float32


def test_non_finite_weights_are_refused(tmp_path):
    reference_checkpoint(tmp_path / "good")
    model = Qwen3.from_pretrained(tmp_path / "good")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    with pytest.raises(CheckpointError, match="model.layers.0.mlp.up_proj.weight has NaN or infinite values"):
        Qwen3.from_pretrained(tmp_path / "nan")


def test_a_save_killed_midway_is_tidied_up_on_the_next_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "version").write_text("1")
    staging, old = tmp_path / ".run.staging-99999", tmp_path / ".run.old-99998"
    staging.mkdir()
    (staging / "state.pt").write_bytes(b"trunc")  # killed while writing
    with atomic_directory(out) as folder:
        (folder / "version").write_text("2")
    assert (out / "version").read_text() == "2" and not staging.exists()
    # killed between the two renames: no `run`, the previous version in .run.old-PID: it comes back
    out.rename(old)
    recover_directory(out)
    assert (out / "version").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_tiny_refuses_an_existing_directory(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tools.tiny", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip() == f"error: {tmp_path} already exists: remove it or " \
                                                                "choose another directory"


def test_lora_forward_is_the_base_plus_alpha_over_rank_times_the_adapter_product():
    """Adapters set to known non-zero values: the forward is x W^T + (alpha / r) x A^T B^T, computed here directly
    (merged and unmerged outputs agree at any scale, so only this pins the scale)."""
    from model import Linear
    torch.manual_seed(0)
    layer = Linear(6, 5)
    layer.add_lora(rank=2, alpha=8.0, dropout=0.0)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(2, 6))
        layer.lora_B.copy_(torch.randn(5, 2))
    x = torch.randn(3, 6)
    W, A, B = layer.weight.detach(), layer.lora_A.detach(), layer.lora_B.detach()
    expected = x @ W.T + (8.0 / 2) * (x @ A.T @ B.T)
    assert (x @ A.T @ B.T).abs().max() > 0.5  # the adapter's part is large enough to tell scales apart
    with torch.no_grad():
        assert (layer(x) - expected).abs().max() <= 1e-5
        assert (x @ layer.merged_weight().T - expected).abs().max() <= 1e-5


def test_rmsnorm_equals_a_direct_computation():
    """x / sqrt(mean(x^2) + eps) * weight in float64, with an eps large against mean(x^2), so that an eps moved
    past the square root (or dropped) misses by far more than the tolerance."""
    from model import RMSNorm
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=0.5)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = 0.3 * torch.randn(4, 8)
    x64 = x.double()
    expected = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 0.5) * norm.weight.detach().double()
    with torch.no_grad():
        assert (norm(x).double() - expected).abs().max() <= 1e-6
    wrong = x64 / (torch.sqrt(x64.pow(2).mean(-1, keepdim=True)) + 0.5) * norm.weight.detach().double()
    assert (wrong - expected).abs().max() > 1e-2  # the margin the check has over that mistake
