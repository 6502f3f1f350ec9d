"""
The compiled decode step: sample.generate(..., compile=True) decodes with the model's forward compiled by
torch.compile for one-token steps (CUDA graphs on a GPU), which removes the per-operator overhead that
bounds eager decoding of small models.

A CUDA graph replays fixed memory addresses, and torch.compile skips the graph of a step that writes into an
ordinary input tensor. So the compiled step owns its KV cache: one allocation per model, kept between calls
and grown when a call needs more; each call gets a view of its first rows, marked static, so a shape keeps
its memory and its recorded graph replays. The length is rounded up to a power of two (at most the context)
so that most prompt lengths reuse a compiled shape; the decode mask hides the slots beyond each row's
current one. The price: the cache stays allocated between calls (see docs/performance.md).
"""
import torch

from model import KVCache, Qwen3


class CompiledDecoder:
    """The model's forward compiled for one-token decode steps, and the cache it owns."""
    def __init__(self, model: Qwen3):
        self.model = model
        self.step = torch.compile(model, mode="reduce-overhead", dynamic=False)
        self.cache = None

    def cache_for(self, rows: int, max_len: int) -> KVCache:
        context = self.model.config.max_position_embeddings  # max_len <= context (generate checks)
        length = min(max(256, 1 << (max_len - 1).bit_length()), context)
        held_rows, _, held_length, _ = self.cache.keys[0].shape if self.cache is not None else (0, 0, 0, 0)
        if rows > held_rows or length > held_length:
            self.cache = None  # free the old cache before allocating the larger one
            self.cache = KVCache.allocate(self.model, max(rows, held_rows), max(length, held_length))
        view = self.cache.view(slice(rows))
        for tensor in view.keys + view.values:
            torch._dynamo.mark_static_address(tensor)  # unguarded: a new address re-records, never recompiles
        return view


# model -> its CompiledDecoder. The compiled module refers to the model, so an entry (and its cache) lasts as
# long as the process: a script compiles one or two models (the policy, an OPD teacher).
COMPILED = {}


def compiled_decoder(model: Qwen3) -> CompiledDecoder:
    if model not in COMPILED:
        COMPILED[model] = CompiledDecoder(model)
    return COMPILED[model]
