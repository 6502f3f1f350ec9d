"""
Sampling with a hand-written static KV cache: the engine that produces the learner's states.

    python sample.py --model ckpt/tiny --prompt "Question: 2 + 3?\\nAnswer:" --n 4 --temperature 1 --seed 0
    python sample.py --prompt "Question: Ann has 3 pens and buys 2 more. How many pens?\\nAnswer:"   # Qwen3-0.6B-Base

A batch of ragged prompts is left-padded, so every row writes the same cache slot at each step:
row b holds pad[b] padding slots, then its prompt, then its completion. Each row has its own rotary
positions (slot - pad[b]) and a mask that hides its padding. Each prompt is prefilled once and its
cache copied to the other rows of its group, so the n samples of a prompt share one prefill.

Sampling is reproducible per prompt: each prompt's random numbers come from a generator seeded by
(seed, the prompt's tokens), so a prompt gets the same samples alone, in a batch, or on another rank.
"""
import math
import sys
import time
import zlib
from dataclasses import dataclass

import torch

from infrastructure import flags
from infrastructure.checkpoint import DEFAULT_MODEL, CheckpointError, load_tokenizer
from model import KVCache, Qwen3


@dataclass
class Completion:
    tokens: list  # generated token ids, including the end-of-text or stop-completing token
    text: str | None  # decoded completion (None without a tokenizer); ends before the stop string
    finish_reason: str  # "eos", "stop" or "length" (max_new_tokens reached)


def share_prefill(cache: KVCache, n: int, length: int):
    """Copy the first `length` slots of each group's first row into its other n - 1 rows."""
    for buffer in cache.keys + cache.values:
        groups = buffer.unflatten(0, (-1, n))  # (prompts, n, kv_heads, max_len, head_dim)
        groups[:, 1:, :, :length] = groups[:, :1, :, :length]

# -----------------------------------------------------------------------------
# Choosing the next token


def prompt_generator(seed: int, prompt: list) -> torch.Generator:
    """A random stream that depends only on the seed and the prompt's tokens (not on its batch)."""
    key = zlib.crc32(torch.tensor(prompt, dtype=torch.int64).numpy().tobytes(), seed & 0xFFFFFFFF)
    return torch.Generator().manual_seed(key)


def filter_probabilities(probs, top_k: int, top_p: float):
    """Keep the top_k most likely tokens, then the smallest set whose mass reaches top_p.

    probs (B, V) -> (kept probs sorted in descending order (B, V), their token ids (B, V)). The token that
    crosses top_p is kept: a token survives when the mass strictly before it is below top_p. As in
    transformers, top_p applies to the distribution renormalised over the top_k survivors.
    """
    sorted_probs, token_ids = probs.sort(dim=-1, descending=True)
    if top_k > 0:
        sorted_probs[:, top_k:] = 0
    if top_p < 1.0:
        cumulative = sorted_probs.cumsum(-1)
        mass_before = (cumulative - sorted_probs) / cumulative[:, -1:]  # of the kept mass
        sorted_probs[mass_before >= top_p] = 0
    return sorted_probs, token_ids


def choose_tokens(logits, uniforms, temperature: float, top_k: int, top_p: float):
    """logits (B, V) float32, uniforms (B,) in [0, 1) -> token ids (B,).

    Sampling is by inverse CDF with one uniform number per row, so each row's choice depends only on its
    own random stream. Temperature 0 is greedy.
    """
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    token_ids = None
    if top_k > 0 or top_p < 1.0:
        probs, token_ids = filter_probabilities(probs, top_k, top_p)
    cdf = probs.cumsum(-1)  # (B, V)
    index = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    index = index.clamp(max=probs.shape[-1] - 1)
    return index if token_ids is None else token_ids.gather(-1, index[:, None]).squeeze(-1)

# -----------------------------------------------------------------------------
# Generation


@torch.no_grad()
def generate(model: Qwen3, prompts: list, *, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, n: int = 1, stop=None, seed: int | None = None, tokenizer=None,
             eos_token_id=None, batch_size: int | None = None, compile: bool = False) -> list:
    """Complete each prompt (a list of token ids) n times; returns len(prompts) * n Completions in prompt order.

    `stop` strings end a row when they appear in its decoded text (needs `tokenizer`); the text is cut
    before the stop string, the tokens keep the token that completed it. `eos_token_id` defaults to
    the checkpoint's. `batch_size` caps the rows (prompts x n) decoded together; prompts of similar
    length are batched together. `compile` compiles the fixed-shape decode step (CUDA graphs on a GPU);
    its cache (rows x a rounded-up length) stays allocated between calls.
    """
    for name, value, smallest in (("n", n, 1), ("max_new_tokens", max_new_tokens, 1), ("top_k", top_k, 0),
                                  ("batch_size", batch_size or 1, 1)):
        if value < smallest:
            raise ValueError(f"{name} must be at least {smallest}, got {value}")
    if not (math.isfinite(temperature) and temperature >= 0) or not 0 < top_p <= 1:  # NaN fails both
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
    context = model.config.max_position_embeddings
    for prompt in prompts:
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) + max_new_tokens > context:
            raise ValueError(f"prompt of {len(prompt)} tokens + {max_new_tokens} new tokens exceeds the "
                             f"model's context of {context} tokens")
    if stop and tokenizer is None:
        raise ValueError("stop strings need a tokenizer")
    eos = model.config.eos_token_id if eos_token_id is None else eos_token_id
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    prompts_per_batch = max(1, (batch_size or len(prompts) * n) // n)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # little padding per batch
    results = [None] * len(prompts)
    for start in range(0, len(order), prompts_per_batch):
        chunk = order[start:start + prompts_per_batch]
        completions = generate_batch(model, [prompts[i] for i in chunk], max_new_tokens, temperature, top_k,
                                     top_p, n, stop, seed, tokenizer, eos_ids, compile)
        for j, i in enumerate(chunk):
            results[i] = completions[j * n:(j + 1) * n]
    return [completion for group in results for completion in group]


def generate_batch(model, prompts, max_new_tokens, temperature, top_k, top_p, n, stop, seed, tokenizer,
                   eos_ids, compile):
    device = model.model.embed_tokens.weight.device
    P = max(len(p) for p in prompts)  # prompt slots; row b's prompt sits in slots pad[b]..P-1
    max_len = P + max_new_tokens
    pad = torch.tensor([P - len(p) for p in prompts], device=device)  # (B,)
    input_ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts], device=device)  # (B, P)

    rows = len(prompts) * n
    if compile:  # a view of the compiled step's own cache, perhaps longer than max_len (see infrastructure/compiled.py)
        from infrastructure.compiled import compiled_decoder
        decoder = compiled_decoder(model)
        cache, step_function = decoder.cache_for(rows, max_len), decoder.step
    else:
        cache, step_function = KVCache.allocate(model, rows, max_len), model
    slots = torch.arange(cache.keys[0].shape[2], device=device)  # (S,)

    # --- prefill: each prompt once, into the first row of its group of n; a padding slot attends only
    # to itself (no empty softmax rows)
    query, key = slots[:P, None], slots[None, :P]
    real_key = key >= pad[:, None, None]  # (B, 1, P)
    mask = ((key <= query) & (real_key | (key == query)))[:, None]  # (B, 1, P, P)
    positions = (slots[None, :P] - pad[:, None]).clamp(min=0)  # (B, P)
    first_rows = cache.view(slice(None, None, n))
    hidden = model(input_ids, positions, mask, first_rows, slots[:P], return_hidden=True)[:, -1:]  # (B, 1, H)

    # --- n samples per prompt share the prefill: copy it to the group's other rows, and pads, hidden state
    share_prefill(cache, n, P)
    pad, hidden = pad.repeat_interleave(n), hidden.repeat_interleave(n, dim=0)
    uniforms = torch.zeros(rows, max_new_tokens)  # (B*n, new): each prompt's stream, drawn up front
    if temperature > 0:
        for i, prompt in enumerate(prompts):
            generator = prompt_generator(seed, prompt) if seed is not None else None
            uniforms[i * n:(i + 1) * n] = torch.rand(n, max_new_tokens, generator=generator)
    uniforms = uniforms.to(device)

    tokens = torch.zeros(rows, max_new_tokens, dtype=torch.long, device=device)  # (B*n, new)
    length = [max_new_tokens] * rows  # where each row stopped growing
    reasons = [None] * rows  # why each row finished; None while it runs
    texts = [None] * rows
    for step in range(max_new_tokens):
        logits = model.lm_head(hidden[:, 0]).float()  # (B*n, V): the LM head at the last position only
        chosen = choose_tokens(logits, uniforms[:, step], temperature, top_k, top_p)  # (B*n,)
        tokens[:, step] = chosen
        if finish_rows(tokens, step, length, reasons, texts, eos_ids, stop, tokenizer) or step == max_new_tokens - 1:
            break
        slot = P + step
        # a row sees its own slots up to this one; compiled: fixed shapes, so the mask spans the whole cache
        width = len(slots) if compile else slot + 1
        visible = (slots[None, :width] >= pad[:, None]) & (slots[None, :width] <= slot)
        mask = visible[:, None, None]  # (B*n, 1, 1, width)
        positions = (slot - pad)[:, None]  # (B*n, 1)
        hidden = step_function(chosen[:, None], positions, mask, cache, slots[slot:slot + 1], return_hidden=True)

    tokens = tokens.tolist()
    completions = []
    for row in range(rows):
        ids = tokens[row][:length[row]]
        text = texts[row]
        if text is None and tokenizer is not None:
            text = tokenizer.decode(ids)
        completions.append(Completion(ids, text, reasons[row] or "length"))
    return completions


def finish_rows(tokens, step, length, reasons, texts, eos_ids, stop, tokenizer) -> bool:
    """Mark rows that just produced end-of-text or a stop string; True when every row is done."""
    running = [row for row in range(len(length)) if reasons[row] is None]
    newest = tokens[:, step].tolist()
    for row in running:
        if newest[row] in eos_ids:
            length[row], reasons[row] = step + 1, "eos"
    if stop:
        # a stop string completed by the newest token lies within its last few tokens: decode only those,
        # and the whole row on a hit (earlier steps saw no stop string, so the first one is this one)
        running = [row for row in running if reasons[row] is None]
        window = max(0, step + 1 - max(map(len, stop)) - 8)
        tails = tokenizer.decode_batch(tokens[running, window:step + 1].tolist()) if running else []
        for row, tail in zip(running, tails):
            if any(s in tail for s in stop):
                text = tokenizer.decode(tokens[row, :step + 1].tolist())
                cut = min(text.find(s) for s in stop if s in text)
                length[row], reasons[row], texts[row] = step + 1, "stop", text[:cut]
    return all(reason is not None for reason in reasons)


# -----------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    parser = flags.parser(__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory or hub repo id")
    parser.add_argument("--prompt", required=True, help="prompt text (\\n is a newline)")
    parser.add_argument("--max-new-tokens", type=flags.count(1), default=64)
    parser.add_argument("--temperature", type=flags.number(at_least=0), default=0.0, help="0 is greedy")
    parser.add_argument("--top-k", type=flags.count(0), default=0, help="0 keeps all tokens")
    parser.add_argument("--top-p", type=flags.number(above=0, at_most=1), default=1.0)
    parser.add_argument("--n", type=flags.count(1), default=1, help="samples of the prompt")
    parser.add_argument("--seed", type=flags.count(0), default=0)
    parser.add_argument("--stop", action="append", help="stop string (repeatable)")
    parser.add_argument("--compile", action="store_true", help="compile the decode step (CUDA graphs on a GPU)")
    args = parser.parse_args(argv)
    try:  # undecodable bytes in argv arrive as lone surrogates, which no tokenizer takes
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("--prompt is not valid UTF-8 text") from None
    return args


def main(argv=None):
    args = parse_args(argv)
    model = Qwen3.from_pretrained(args.model)
    tokenizer = load_tokenizer(model)
    prompt = tokenizer.encode(args.prompt.replace("\\n", "\n")).ids
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, n=args.n, stop=args.stop, seed=args.seed, tokenizer=tokenizer,
                   compile=args.compile)
    if args.compile:
        started = time.perf_counter()
        generate(model, [prompt], **options)  # the first call compiles
        print(f"compile (first call): {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    completions = generate(model, [prompt], **options)
    seconds = time.perf_counter() - started
    for i, completion in enumerate(completions):
        print(f"--- sample {i} ({completion.finish_reason}, {len(completion.tokens)} tokens)")
        print(args.prompt.replace("\\n", "\n") + completion.text)
    total = sum(len(c.tokens) for c in completions)
    print(f"--- {total} tokens in {seconds:.2f} s: {total / seconds:.1f} tokens/s")


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, ValueError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit(130)
