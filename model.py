"""
Qwen3 (the dense family, 0.6B to 32B) in one file: the architecture, the KV cache its attention writes into,
LoRA, the log-probabilities of chosen tokens, the dtype rule, and loading and saving Hugging Face checkpoints
(config.json and safetensors, read and written here).

    model = Qwen3.from_pretrained("Qwen/Qwen3-0.6B-Base")     # or a local directory
    logits = model(input_ids)                                # (B, T) -> (B, T, V)

Parameter names are Hugging Face's (model.layers.N.self_attn.q_proj.weight, ...), so loading a
checkpoint is a name-for-name copy and what we save loads in transformers. Sections: the model (Config to
Qwen3), Hugging Face files, the dtype rule, LoRA and log-probabilities. About 470 lines, over the 400 of its
budget, because it holds every step of loading and saving (config.json, safetensors shards) in one place.
"""
import dataclasses
import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from infrastructure.checkpoint import (DEFAULT_MODEL, TOKENIZER_FILES, CheckpointError, atomic_directory, read_json,
                                       resolve_checkpoint, write_json)


@dataclass
class Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | None = None

# -----------------------------------------------------------------------------
# The model


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        # normalise in float32 (bf16 squares lose too much), scale in the input dtype, as HF does
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_angles(positions, head_dim: int, theta: float, dtype):
    """Rotary embedding: positions (B, T) -> cos, sin (B, 1, T, head_dim), angles computed in float32.
    HF's rotate-half layout: the first and second halves of a head's dimensions form the rotated pairs."""
    half = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
    inverse_frequency = 1.0 / (theta ** (half / head_dim))  # (D/2,)
    angles = positions[..., None].float() * inverse_frequency  # (B, T, D/2)
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, T, D): broadcast over heads
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x, cos, sin):
    """Rotate each (x_i, x_{i + D/2}) pair of x (B, heads, T, D) by its position's angle."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class Linear(nn.Linear):
    """nn.Linear without bias, plus an optional LoRA adapter: y = x W^T + (alpha / r) * drop(x) A^T B^T.

    The adapter lives in float32 next to the (possibly bf16) base weight, and B starts at zero, so a fresh
    adapter changes nothing. Keeping the adapter inside the layer keeps HF's parameter names.
    """
    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)
        self.lora_A = self.lora_B = None

    def add_lora(self, rank: int, alpha: float, dropout: float):
        device = self.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=device))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # the nn.Linear / peft init
        self.lora_scale = alpha / rank
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x):
        y = F.linear(x, self.weight)
        if self.lora_A is None:
            return y
        update = F.linear(F.linear(self.lora_dropout(x).to(self.lora_A.dtype), self.lora_A), self.lora_B)
        return y + (self.lora_scale * update).to(y.dtype)

    def merged_weight(self) -> torch.Tensor:
        """The weight with the adapter folded in, in float32: (out, in)."""
        weight = self.weight.detach().float()
        if self.lora_A is None:
            return weight
        return weight + self.lora_scale * (self.lora_B.detach() @ self.lora_A.detach())


class KVCache:
    """The keys and values of the states read so far (sample.py), so that a new token costs one position's forward,
    not the whole prefix's. Per layer, (B, kv_heads, max_len, head_dim) buffers allocated once, written in place."""
    def __init__(self, keys: list, values: list):
        self.keys, self.values = keys, values

    @classmethod
    def allocate(cls, model: "Qwen3", batch_size: int, max_len: int) -> "KVCache":
        config, weight = model.config, model.model.embed_tokens.weight
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        keys = [torch.zeros(shape, device=weight.device, dtype=weight.dtype) for _ in range(config.num_hidden_layers)]
        return cls(keys, [torch.zeros_like(k) for k in keys])

    def update(self, layer: int, slots, k, v):
        """Write k, v (B, kv_heads, T, head_dim) at `slots` (T,); return the layer's whole buffers."""
        self.keys[layer].index_copy_(2, slots, k)
        self.values[layer].index_copy_(2, slots, v)
        return self.keys[layer], self.values[layer]

    def view(self, rows: slice) -> "KVCache":
        """The same memory, restricted to some rows."""
        return KVCache([k[rows] for k in self.keys], [v[rows] for v in self.values])


class Attention(nn.Module):
    def __init__(self, config: Config, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.heads, self.kv_heads, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                    config.head_dim)
        self.q_proj = Linear(config.hidden_size, self.heads * self.head_dim)
        self.k_proj = Linear(config.hidden_size, self.kv_heads * self.head_dim)
        self.v_proj = Linear(config.hidden_size, self.kv_heads * self.head_dim)
        self.o_proj = Linear(self.heads * self.head_dim, config.hidden_size)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)  # Qwen3's QK-norm, per head, before RoPE
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache, slots):
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.heads, self.head_dim)).transpose(1, 2)  # (B, H, T, D)
        k = self.k_norm(self.k_proj(x).view(B, T, self.kv_heads, self.head_dim)).transpose(1, 2)  # (B, KV, T, D)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            # write this step's keys and values into the cache, then attend over its first S slots, the ones the
            # mask (B, 1, T, S) covers: the slots written so far (or, for the compiled fixed-shape step, all)
            keys, values = cache.update(self.layer_index, slots, k, v)  # (B, KV, S_max, D)
            k, v = keys[:, :, :mask.shape[-1]], values[:, :, :mask.shape[-1]]  # (B, KV, S, D)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, config: Config, layer_index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, cache, slots):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, slots)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """HF's Qwen3Model, under the `model.` prefix of the parameter names: token ids -> final hidden states."""
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False  # recompute each layer in backward instead of keeping its activations

    def forward(self, input_ids, positions=None, mask=None, cache=None, slots=None):
        B, T = input_ids.shape
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        x = self.embed_tokens(input_ids)  # (B, T, H)
        cos, sin = rope_angles(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, mask, cache, slots, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, slots)
        return self.norm(x)


class Qwen3(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.source = None  # the directory this model was loaded from (for its tokenizer files)

    def forward(self, input_ids, positions=None, mask=None, cache=None, slots=None, return_hidden=False):
        """input_ids (B, T) -> logits (B, T, V), or the final hidden states (B, T, H) with return_hidden, so
        that the LM head runs only where it is needed (token_logprobs, the sampler's last position).

        Without a cache: plain causal attention over the T tokens, positions 0..T-1 by default.
        With a cache (sample.py): `slots` (T,) are the cache slots this step writes, `positions` (B, T)
        the rotary positions of each row, and `mask` (B, 1, T, S) a boolean mask over the first S slots.
        """
        hidden = self.model(input_ids, positions, mask, cache, slots)
        return hidden if return_hidden else self.lm_head(hidden)

    # --- loading and saving -------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str = DEFAULT_MODEL, device=None, dtype=None) -> "Qwen3":
        """Load a local HF-layout directory or a hub repo id, by default in the dtype it was saved in
        (see load_dtype): a float32 post-trained checkpoint is evaluated as it was trained."""
        directory = resolve_checkpoint(path_or_repo_id)  # a local directory, or downloaded from the hub
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        settings = read_json(directory / "config.json")
        config = config_from_json(settings, str(directory / "config.json"))
        dtype = dtype or load_dtype(settings.get("torch_dtype") or settings.get("dtype"), device)
        with torch.device("meta"):  # no memory until the weights arrive; then they are allocated in `dtype`
            model = cls(config).to(dtype)
        model.to_empty(device=device)
        if config.tie_word_embeddings:  # to_empty unties: tie again
            model.lm_head.weight = model.model.embed_tokens.weight

        def skip(name):  # recomputed (rotary frequencies), or the embedding itself (a tied lm_head)
            return name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and config.tie_word_embeddings)
        load_safetensors(dict(model.named_parameters()), directory, dtype, skip)
        model.source = directory
        return model.eval()

    def exported_state_dict(self, dtype=torch.float32) -> dict:
        """HF tensors with LoRA merged in, in `dtype`; lm_head is left out when tied, as HF does."""
        tensors = {}
        for name, module in self.named_modules():
            if isinstance(module, Linear):
                tensors[name + ".weight"] = module.merged_weight()
            elif isinstance(module, (RMSNorm, nn.Embedding)):
                tensors[name + ".weight"] = module.weight.detach()
        if self.config.tie_word_embeddings:
            del tensors["lm_head.weight"]
        return {name: t.to(dtype).contiguous().cpu() for name, t in tensors.items()}

    def save_pretrained(self, out_dir, dtype=torch.float32, max_shard_bytes=5 * 2**30):
        """Write an HF-layout checkpoint atomically: a half-written save never replaces `out_dir`."""
        with atomic_directory(out_dir) as staging:
            self.write_checkpoint(staging, dtype, max_shard_bytes)

    def write_checkpoint(self, directory: Path, dtype=torch.float32, max_shard_bytes=5 * 2**30):
        """The files of an HF checkpoint into an existing directory (callers stage it; see atomic_directory)."""
        write_safetensors(self.exported_state_dict(dtype), directory, max_shard_bytes)
        write_json(directory / "config.json", config_to_json(self.config, dtype))
        for filename in TOKENIZER_FILES:
            if self.source is not None and (self.source / filename).exists():
                shutil.copy(self.source / filename, directory / filename)


# -----------------------------------------------------------------------------
# Hugging Face files: config.json (read, refusing what this file does not implement, and written) and the
# safetensors weights (one file, or shards with an index)


def config_from_json(d: dict, source: str = "config.json") -> Config:
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(d).__name__}")
    # transformers 4 writes rope_theta at top level (the real Qwen3 files), transformers 5 writes
    # rope_parameters = {rope_theta, rope_type}; anything but plain RoPE is rope scaling.
    rope = d.get("rope_parameters") or {}
    unsupported = [
        (d.get("model_type") != "qwen3", f"model_type {d.get('model_type')!r} (only dense 'qwen3' is implemented; no MoE)"),
        (d.get("num_experts") or d.get("num_local_experts"), "mixture of experts"),
        (d.get("use_sliding_window") or any(t != "full_attention" for t in d.get("layer_types") or []),
         "sliding-window attention"),
        (d.get("attention_bias"), "attention bias"), (d.get("hidden_act", "silu") != "silu", f"hidden_act {d.get('hidden_act')!r}"),
        (d.get("rope_scaling") or rope.get("rope_type", "default") != "default", f"rope scaling {d.get('rope_scaling') or rope}")]
    for refused, what in unsupported:
        if refused:
            raise CheckpointError(f"{source}: unsupported config: {what}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings"):
        if key in d and d[key] is not None and not (type(d[key]) is int and d[key] > 0):
            raise CheckpointError(f"{source}: {key} must be a positive integer, got {d[key]!r}")
    try:
        return Config(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
                      num_hidden_layers=d["num_hidden_layers"], num_attention_heads=d["num_attention_heads"],
                      num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
                      head_dim=d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"],
                      rope_theta=rope.get("rope_theta", d.get("rope_theta", 10000.0)),
                      rms_norm_eps=d.get("rms_norm_eps", 1e-6), tie_word_embeddings=d.get("tie_word_embeddings", False),
                      max_position_embeddings=d.get("max_position_embeddings", 32768),
                      bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"))
    except KeyError as key:
        raise CheckpointError(f"{source}: missing key {key}") from None


def config_to_json(config: Config, dtype: torch.dtype) -> dict:
    """In the style of the published Qwen3 files (rope_theta at top level)."""
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", **dataclasses.asdict(config),
            "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0, "rope_scaling": None,
            "use_sliding_window": False, "sliding_window": None, "torch_dtype": str(dtype).removeprefix("torch.")}


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
    """One model.safetensors, or shards of at most `max_shard_bytes` and their index."""
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

# -----------------------------------------------------------------------------
# Dtypes: the one rule, which every script follows
#   compute     bf16 autocast on a GPU that has bf16, float32 elsewhere (CPU, T4 and older cards): default_dtype;
#   training    the weights being trained are float32: full fine-tuning keeps float32 master weights, LoRA
#               adapters are float32 beside a frozen base held in the compute dtype;
#   loading     a checkpoint loads in the dtype it was saved in (load_dtype), float32 on CPU; a --dtype flag
#               overrides it;
#   saving      merged weights in float32 by default (--save-dtype): bf16 would round a small update away.

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # the --*-dtype flags


def default_dtype(device: torch.device) -> torch.dtype:
    """The compute dtype: bf16 where the GPU has it, float32 elsewhere (CPU, T4 and older cards)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):  # T4: emulated, slow
        return torch.bfloat16
    return torch.float32


def load_dtype(saved: str | None, device: torch.device) -> torch.dtype:
    """The dtype a checkpoint loads in: the one it was saved in (config.json's torch_dtype), where the device
    has it. Rounding a float32 checkpoint to bf16 would round away much of a small fine-tuning update
    (the base's weights are ~3e-2, an RL update ~1e-4; bf16 keeps 8 bits of mantissa). float32 on CPU."""
    if device.type != "cuda" or saved == "float32":
        return torch.float32
    if saved == "float16":
        return torch.float16
    return default_dtype(device)  # bfloat16 (the published Qwen3 files) or not stated


# -----------------------------------------------------------------------------
# LoRA and log-probabilities


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(model: Qwen3, rank: int, alpha: float, dropout: float = 0.0, targets=LORA_TARGETS) -> list:
    """Freeze the model and add adapters to the named linear layers; returns the trainable parameters."""
    model.requires_grad_(False)
    for name, module in model.named_modules():
        if isinstance(module, Linear) and name.rsplit(".", 1)[-1] in targets:
            module.add_lora(rank, alpha, dropout)
    return [p for p in model.parameters() if p.requires_grad]


@contextmanager
def lora_disabled(model: Qwen3):
    """The model as it was before its adapters: the frozen starting point of a LoRA run."""
    adapted = [m for m in model.modules() if isinstance(m, Linear) and m.lora_A is not None]
    scales = [m.lora_scale for m in adapted]
    for module in adapted:
        module.lora_scale = 0.0
    try:
        yield model
    finally:
        for module, scale in zip(adapted, scales):
            module.lora_scale = scale


LOGITS_PER_CHUNK = 2**27  # float32 logits of one chunk: 512 MiB, 883 rows of Qwen's 151,936-token vocabulary


def token_logprobs(model: Qwen3, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int | None = None):
    """log p(target) at each position from final hidden states: (N, H), (N,) -> (N,) float32.

    The LM head runs on `chunk_size` rows at a time (default: LOGITS_PER_CHUNK / V), so at most
    (chunk_size, V) float32 logits exist at once; with gradients on and several chunks, each chunk is
    recomputed in backward instead of keeping its logits (a single chunk is kept: no more memory, no
    recomputation).
    """
    chunk_size = chunk_size or max(1, LOGITS_PER_CHUNK // model.config.vocab_size)

    def chunk_logprobs(h, t):
        logits = model.lm_head(h).float()  # (chunk, V)
        return -F.cross_entropy(logits, t, reduction="none")  # fused log-softmax + pick: log p(t)
    pieces = []
    several = hidden.shape[0] > chunk_size
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        if several and torch.is_grad_enabled() and (h.requires_grad or model.lm_head.weight.requires_grad):
            pieces.append(checkpoint(chunk_logprobs, h, t, use_reentrant=False))
        else:
            pieces.append(chunk_logprobs(h, t))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
