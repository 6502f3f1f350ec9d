"""
What sft.py, rl.py and opd.py do identically, so that each of them holds only its objective:
the command-line flags they share, loading the policy (LoRA or full fine-tuning), AdamW with warmup
and cosine decay, training sequences (a state, then target tokens that carry a loss) packed into
batches, the training step (the loss's normaliser, gradient accumulation, clipping, the NaN guard),
logging, and atomic checkpoints that `--resume` continues.

A training script's life:

    with Run(args, total_steps) as run:       # model + LoRA + optimizer, or resumed from args.out/resume/
        while run.step < total_steps:
            sequences = [sequence(state=..., targets=..., signal=[...])]   # what the script is about
            batches = make_batches(sequences, max_tokens=args.micro_batch_tokens)
            stats = run.train_step(batches, token_losses)   # token_losses(batch) -> (N,) per target token
            run.log(stats)                                  # and a save every --save-every steps
        run.save()

Ctrl-C or SIGTERM (a cluster's pre-emption) inside the `with` finishes the current step, saves, and exits
with a line saying how to resume; `--resume` refuses flags that would make it another run (resume.py holds
what a save writes beside the checkpoint and how a run stops and goes on).

Under `torchrun --nproc_per_node=N` the same script runs data-parallel (helpers in distributed.py, DDP
here): each rank takes its share of the step's sequences or prompts (`shard`), the loss
normalisers are summed over ranks (`all_sum`), DDP all-reduces the gradients once per step, and only
rank 0 prints and saves. A single process never starts torch.distributed.
"""
import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from checkpoint import DEFAULT_MODEL, CheckpointError, atomic_directory, load_tokenizer
from distributed import all_sum, barrier, is_main, setup_distributed, world_size
from evals import check_data_tokenizer
from model import DTYPES, Qwen3, add_lora, default_dtype, token_logprobs
from resume import Interrupted, StopOnSignal, TrainingError, check_output, read_state, write_state
from sample import generate


# -----------------------------------------------------------------------------
# Flags


def add_arguments(parser, out: str):
    """The flags every trainer has. Flags left at None are filled from the script's preset."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="starting checkpoint: directory or hub id")
    parser.add_argument("--out", default=out, help="output checkpoint directory")
    parser.add_argument("--data-dir", help="local data in the original formats (default: the hub)")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--limit", type=int, help="use only the first N training examples")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--warmup-steps", type=int, help="linear warmup before the cosine decay")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--lora-rank", type=int, help="0 means full fine-tuning")
    parser.add_argument("--lora-alpha", type=float)
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument("--micro-batch-tokens", type=int, default=8192, help="padded tokens per forward")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations")
    parser.add_argument("--save-every", type=int, default=50,
                        help="checkpoint and resume state every N steps, and at the end (0: only at the end)")
    parser.add_argument("--save-dtype", choices=DTYPES, default="float32")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")


def apply_preset(args, preset: dict):
    """Fill every flag the user left unset from the preset, then check the flags every trainer has."""
    for name, value in preset.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    check_at_least(args, 1, "max_steps", "limit", "micro_batch_tokens")
    check_at_least(args, 0, "warmup_steps", "weight_decay", "lora_rank", "lora_dropout", "save_every")
    if not 0 < args.lr < math.inf or not 0 < args.grad_clip < math.inf:  # 0 or inf: nothing learned, or NaN
        raise ValueError(f"--lr and --grad-clip must be positive and finite, got {args.lr} and {args.grad_clip}")
    if args.lora_rank and not 0 < args.lora_alpha < math.inf:  # alpha 0 scales the adapters to nothing
        raise ValueError(f"--lora-alpha must be positive, got {args.lora_alpha}")
    if args.lora_dropout >= 1:
        raise ValueError(f"--lora-dropout must be below 1, got {args.lora_dropout}")
    return args


def check_at_least(args, minimum, *names):
    """One line for a count below `minimum` (flags left unset, None, are not checked)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")


def run_main(main):
    """Run a script's main(); expected failures become one `error:` line and exit status 1, an interrupt
    one line and 130 (SIGINT) or 143 (SIGTERM)."""
    try:
        main()
    except (TrainingError, CheckpointError, ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    except Interrupted as interrupt:
        print(interrupt, file=sys.stderr)
        sys.exit(interrupt.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before training started (loading data or the model)
        print("interrupted before the first step: nothing was saved", file=sys.stderr)
        sys.exit(130)

# -----------------------------------------------------------------------------
# Batches of token ids with per-token columns


def sequence(state: list, targets: list, **columns) -> dict:
    """One training sequence: the state (token ids the model reads, no loss), then the target tokens, each
    trained on given the state and the targets before it. Each column is a list of floats, one per target
    (an advantage, a teacher's log-probability): the signal that lands on that target."""
    if not state or any(len(values) != len(targets) for values in columns.values()):
        raise ValueError("a training sequence needs a state and one value per target in each column")
    return {"state": list(state), "targets": list(targets), **columns}


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) tokens fed to the model
    targets: torch.Tensor  # (B, T) the next token at each position
    mask: torch.Tensor  # (B, T) bool: positions whose next token is a target
    columns: dict = field(default_factory=dict)  # name -> (N,) values of the targets, in mask order (row-major)


def make_batches(sequences: list, max_tokens: int, device="cpu") -> list:
    """Pack training sequences into micro-batches of at most `max_tokens` padded tokens, similar lengths together."""
    length = [len(s["state"]) + len(s["targets"]) - 1 for s in sequences]  # model inputs: the last token is not read
    order = sorted(range(len(sequences)), key=length.__getitem__)
    groups, current = [], []
    for index in order:  # shortest first: the newest is the longest of its group
        if current and length[index] * (len(current) + 1) > max_tokens:
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    batches = []
    for group in groups:
        T = max(length[i] for i in group)
        ids = torch.zeros(len(group), T + 1, dtype=torch.long)
        mask = torch.zeros(len(group), T, dtype=torch.bool)  # mask[b, t]: token t + 1 is a target
        names = [name for name in sequences[group[0]] if name not in ("state", "targets")]
        for row, i in enumerate(group):  # row by row: the order of batch.mask's positions, and of the columns
            state, targets = sequences[i]["state"], sequences[i]["targets"]
            ids[row, :len(state) + len(targets)] = torch.tensor(state + targets)
            mask[row, len(state) - 1:len(state) + len(targets) - 1] = True
        columns = {name: torch.tensor([v for i in group for v in sequences[i][name]], dtype=torch.float32,
                                      device=device) for name in names}
        batches.append(Batch(ids[:, :-1].to(device), ids[:, 1:].to(device), mask.to(device), columns))
    return batches


def examples_of_step(step: int, count: int, batch_size: int, seed: int) -> list:
    """Indices of the `batch_size` examples of optimizer step `step`: a fresh shuffle each epoch, full batches.

    A pure function of the step, so a resumed run sees exactly the data an uninterrupted one would.
    """
    if count < batch_size:
        raise ValueError(f"{count} training examples, fewer than one step's {batch_size} (raise --limit)")
    epoch, position = divmod(step, count // batch_size)
    order = list(range(count))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return order[position * batch_size:(position + 1) * batch_size]


def target_logprobs(model: Qwen3, batch: Batch) -> torch.Tensor:
    """log p(target) at the masked positions, in row-major order: (N,) float32. The LM head runs only there."""
    hidden = model(batch.input_ids, return_hidden=True)  # (B, T, H)
    return token_logprobs(model, hidden[batch.mask], batch.targets[batch.mask])

# -----------------------------------------------------------------------------
# The run: policy, optimizer, schedule, step, logging, checkpoints


class Run:
    def __init__(self, args, total_steps: int):
        self.args, self.total_steps, self.out = args, total_steps, Path(args.out)
        self.device = setup_distributed(args.device)  # under torchrun: this rank's GPU, and the process group
        resume_file = check_output(args)  # --out usable; with --resume, the saved run is this run
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        # bf16 compute where the GPU has it; float32 on CPU and on GPUs without bf16 (T4 and older).
        # LoRA: base weights in that dtype, adapters in float32. Full fine-tuning: float32 master weights.
        self.compute_dtype = default_dtype(self.device)
        dtype = self.compute_dtype if args.lora_rank else torch.float32
        self.model = Qwen3.from_pretrained(args.model, device=self.device, dtype=dtype)
        self.tokenizer = load_tokenizer(self.model)
        check_data_tokenizer(args.data_dir, self.tokenizer)
        if args.lora_rank:
            self.parameters = add_lora(self.model, args.lora_rank, args.lora_alpha, args.lora_dropout)
        else:
            self.parameters = list(self.model.parameters())
        self.model.model.gradient_checkpointing = args.gradient_checkpointing  # on the decoder's layers
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.parameters, lr=args.lr, weight_decay=args.weight_decay)
        self.step, self.metrics, self.saved_step = 0, [], None
        if args.resume:
            read_state(self, resume_file)  # weights, optimizer, RNGs, step, metrics
            self.saved_step = self.step
        self.ddp = None
        if world_size() > 1:  # distributed: DDP all-reduces the gradients (and starts every rank from rank 0's weights)
            self.ddp = DistributedDataParallel(LossModule(self.model), gradient_as_bucket_view=True)
        self.progress = tqdm(total=total_steps, initial=self.step, desc=self.out.name, dynamic_ncols=True,
                             disable=None if is_main() else True)
        self.started = time.perf_counter()
        self.stopper = StopOnSignal(self)  # active inside `with Run(...)`
        if self.step >= total_steps:
            self.write(f"{self.out} finished all {total_steps} steps already: nothing to do")

    def __enter__(self):
        self.stopper.__enter__()
        return self

    def __exit__(self, *exception):
        self.stopper.__exit__(*exception)
        self.progress.close()
        return False

    def learning_rate(self) -> float:
        """Linear warmup to --lr, then cosine decay to zero at the last step."""
        warmup = min(self.args.warmup_steps, self.total_steps)
        if self.step < warmup:
            return self.args.lr * (self.step + 1) / warmup
        progress = (self.step - warmup) / max(1, self.total_steps - warmup)
        return self.args.lr * 0.5 * (1 + math.cos(math.pi * progress))

    def sample(self, prompts: list, **options) -> list:
        """The policy's own states: sample.generate in eval mode (no dropout), seeded by --seed and the step,
        so a resumed run draws the samples an uninterrupted one would."""
        self.model.eval()
        completions = generate(self.model, prompts, seed=self.args.seed * 1_000_003 + self.step,
                               tokenizer=self.tokenizer, **options)
        self.model.train()
        return completions

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.compute_dtype == torch.bfloat16)

    def write(self, text: str):
        """A line on the console, from rank 0 only."""
        if is_main():
            self.progress.write(text)

    def train_step(self, batches: list, token_losses, normaliser=None) -> dict:
        """One optimizer step over micro-batches. The loss is the sum over every target token of
        token_losses(batch) (N,), divided by `normaliser`: by default the number of target tokens in the
        step, on every rank (a mean over the step's targets)."""
        started = time.perf_counter()
        learning_rate = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        targets = all_sum(sum(batch.mask.sum().item() for batch in batches))  # every rank's
        normaliser = normaliser or max(1, targets)

        def loss_of(batch):
            return token_losses(batch).sum() / normaliser
        if self.ddp is not None and not batches:  # distributed: a rank with no data still joins the all-reduce
            batches, loss_of = [None], lambda batch: sum(p.sum() for p in self.parameters) * 0.0
        total = 0.0
        for index, batch in enumerate(batches):
            with self.no_sync(index < len(batches) - 1):
                with self.autocast():
                    loss = loss_of(batch) if self.ddp is None else self.ddp(loss_of, batch)
                if not torch.isfinite(loss):
                    raise TrainingError(f"step {self.step + 1}: loss is {loss.item()}; stopped before saving anything")
                (loss * world_size()).backward()  # DDP averages over ranks: see no_sync
            total += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.args.grad_clip)
        if not torch.isfinite(norm):
            raise TrainingError(f"step {self.step + 1}: gradient norm is {norm.item()}; stopped before saving")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        tokens = all_sum(sum(b.input_ids.numel() for b in batches if b is not None))  # every rank's
        seconds = time.perf_counter() - started
        stats = {"loss": all_sum(total), "lr": learning_rate, "grad_norm": norm.item(), "target_tokens": targets,
                 "train_tokens_per_s": tokens / seconds, "train_s": seconds}
        if self.device.type == "cuda":
            stats["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return stats

    def no_sync(self, skip: bool):
        """Distributed: DDP all-reduces (averages) the gradients in the backward of the last micro-batch only.

        Every loss is divided by a count summed over all ranks, so the sum of the ranks' gradients is the
        one-process gradient; backward of world_size x loss turns DDP's average into that sum."""
        return self.ddp.no_sync() if self.ddp is not None and skip else contextlib.nullcontext()

    def log(self, stats: dict):
        """One line per step on the console, one JSON line in metrics.jsonl (written with the checkpoint);
        a save every --save-every steps, and the stop a signal asked for."""
        record = {"step": self.step, **stats, "elapsed_s": time.perf_counter() - self.started}
        self.metrics.append(record)
        self.progress.update(1)
        shown = " | ".join(f"{name} {format_number(value)}" for name, value in stats.items())
        self.write(f"step {self.step}/{self.total_steps} | {shown}")
        if self.args.save_every and self.step % self.args.save_every == 0:
            self.save()
        if self.step < self.total_steps and all_sum(int(self.stopper.requested is not None)):  # all ranks at once
            self.save()
            self.stopper.stop()

    def save(self):
        """Checkpoint (LoRA merged) + args + metrics + resume state, all replacing --out in one rename,
        unless this step is saved already. Rank 0 writes (every rank holds the same weights); the others
        wait for it. Weights that are NaN or infinite are never saved."""
        if self.saved_step == self.step:
            return
        broken = [name for name, p in self.model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
        if broken:
            raise TrainingError(f"step {self.step}: {len(broken)} weight tensors are NaN or infinite ({broken[0]}, "
                                f"...); stopped before saving them")
        if is_main():
            self.write_checkpoint()
        if world_size() > 1:
            barrier()
        self.saved_step = self.step

    def write_checkpoint(self):
        with atomic_directory(self.out) as staging:
            self.model.write_checkpoint(staging, DTYPES[self.args.save_dtype])
            write_state(self, staging)  # args.json, progress.json, metrics.jsonl, resume/
        self.write(f"saved {self.out} at step {self.step}")


def format_number(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


class LossModule(torch.nn.Module):
    """The model, as the module DDP wraps: DDP all-reduces the gradients of what runs in its forward, and
    our losses run the model themselves (hidden states, the LM head only where a loss is), so the
    forward is the whole loss: ddp(loss_of, batch) = loss_of(batch)."""
    def __init__(self, model: Qwen3):
        super().__init__()
        self.model = model

    def forward(self, loss_of, batch):
        return loss_of(batch)
