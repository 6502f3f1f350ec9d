"""
Plain-Python graders for GSM8K, TruthfulQA and MMLU, following lm-evaluation-harness's protocols.

    python -m evals ckpt/sft_mild                      # all three tasks, zero-shot, data from the hub
    python -m evals ckpt/tiny --data-dir ../shared/data --limit 50 --shots 5

One file per task (gsm8k.py, truthfulqa.py, mmlu.py) and the command line in __main__.py. This file
holds what the tasks share: reading data files (local or from the hub), the standard errors, lm-eval's rule
for tokenizing a context and its continuation, `continuation_logprobs` (the log-likelihoods of continuations, which
opd.py's reverse_kl uses for the teacher too), and running the model over batches (split across ranks
under torchrun).
"""
import json
import math
import os
import signal
import sys
import time
from pathlib import Path


def interrupted(number, frame):
    print("interrupted: nothing was written", file=sys.stderr)  # results are written whole at the end
    raise SystemExit(130)


# `python -m evals`, `-m evals.drift`, `-m evals.report`: a Ctrl-C is one line and exit 130 from the first moment,
# while the modules below still load too (the package is imported before its __main__ runs)
if "-m" in sys.orig_argv[:-1] and sys.orig_argv[sys.orig_argv.index("-m") + 1].split(".")[0] == "evals":
    signal.signal(signal.SIGINT, interrupted)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from infrastructure.checkpoint import CheckpointError, load_tokenizer, write_failure  # noqa: E402
from infrastructure.distributed import gather, shard  # noqa: E402
from model import KVCache, token_logprobs  # noqa: E402
from sample import share_prefill  # noqa: E402


SHARED_MINIMUM = 32  # common first tokens worth a forward of their own (see forward_after_prefix)


class DataError(ValueError):
    """Benchmark data we cannot use; the message is one line naming the file (and line)."""

# -----------------------------------------------------------------------------
# Data: a local file in the --data-dir layout, or parquet files from the Hugging Face hub


def data_file(data_dir, relative: str) -> Path:
    """DATA_DIR/relative, or a one-line error when it is missing."""
    path = Path(data_dir) / relative
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected the --data-dir layout, see README)")
    return path


def check_data_tokenizer(data_dir, tokenizer):
    """A --data-dir that holds a tokenizer.json (a lab world, written by lab/world.py) holds the tokenizer its text
    was written for; a model with another tokenizer would be trained or scored on noise, so refuse it."""
    if data_dir is None or not (Path(data_dir) / "tokenizer.json").is_file():
        return
    if load_tokenizer(Path(data_dir)).get_vocab() != tokenizer.get_vocab():
        raise DataError(f"{data_dir} holds the tokenizer its files were written for (tokenizer.json), and the "
                        f"model's tokenizer is another")


def hub_rows(repo_id: str, pattern: str) -> list:
    """Rows (dicts) of the parquet files of a hub dataset repo matching `pattern`, in file-name order.

    The files are found by glob, never by hard-coded names; huggingface_hub caches the download.
    """
    import huggingface_hub
    import pyarrow.parquet
    try:
        folder = huggingface_hub.snapshot_download(repo_id, repo_type="dataset", allow_patterns=[pattern])
    except Exception as error:  # offline, unknown repo, ...: any failure is one line for the user
        raise DataError(f"cannot download {repo_id} ({pattern}) from the Hugging Face hub "
                        f"({type(error).__name__}; offline?); pass --data-dir DIR with local copies") from None
    files = sorted(Path(folder).glob(pattern))
    if not files:
        raise DataError(f"{repo_id}: no files match {pattern} in the downloaded snapshot {folder}")
    rows = []
    for file in files:
        rows += pyarrow.parquet.read_table(file).to_pylist()
    return rows


def subset_text(total: int, limit) -> str:
    """What --limit took, for the results file."""
    return "all" if limit is None or limit >= total else f"the first {limit} of {total} items, in file order"

# -----------------------------------------------------------------------------
# Standard errors, so a reader can tell which differences between runs are noise


def binomial_stderr(accuracy: float, count: int) -> float:
    """Standard error of a mean of `count` 0/1 scores: sqrt(p (1 - p) / n)."""
    return math.sqrt(accuracy * (1 - accuracy) / count) if count else 0.0


def bootstrap_stderr(values, seed: int, resamples: int = 1000) -> float:
    """Standard deviation of the mean over `resamples` resamplings of the items with replacement."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return float(means.std(ddof=1))

# -----------------------------------------------------------------------------
# Tokenizing a context and its continuations (lm-eval's rule, lm_eval/api/model.py `_encode_pair`)


def encode_pairs(tokenizer, pairs: list) -> list:
    """(context ids, continuation ids) of each (context, continuation) string pair, as lm-eval scores them.

    Trailing whitespace of the context moves to the start of the continuation; then context +
    continuation is tokenized as one string and split at the token length of the context alone.
    Each distinct context is tokenized once, so the choices of one question get the same context ids:
    for one-token continuations (MMLU's " A".." D") the model input, context + continuation[:-1], is
    the same, and `continuation_logprobs` runs one forward for all of them.
    """
    stripped = list(dict.fromkeys(context.rstrip() for context, _ in pairs))  # distinct contexts, in order
    encodings = tokenizer.encode_batch(stripped, add_special_tokens=False)
    context_ids = {text: encoding.ids for text, encoding in zip(stripped, encodings)}
    # moving the whitespace leaves the joined string as it was: context + continuation
    wholes = tokenizer.encode_batch([context + continuation for context, continuation in pairs],
                                    add_special_tokens=False)
    encoded = []
    for (context, _), whole in zip(pairs, wholes):
        ids = context_ids[context.rstrip()]
        encoded.append((ids, whole.ids[len(ids):]))
    return encoded


@torch.no_grad()
def continuation_logprobs(model, requests: list, batch_size: int = 16) -> list:
    """Log-probabilities of continuations: requests are (context ids, continuation ids) pairs.

    Returns, per request, the list of log p(continuation token | everything before it). Requests whose
    model input (context + continuation[:-1]) is the same share one forward: the four one-token answers
    of an MMLU question cost one forward of the question. The first tokens that all of a batch's inputs
    share (TruthfulQA's preamble) run once for the batch (forward_after_prefix).
    """
    context = model.config.max_position_embeddings
    device = model.model.embed_tokens.weight.device
    rows, targets = {}, []  # input tuple -> row index; per request: (row, first position, tokens)
    for context_ids, continuation_ids in requests:
        if not context_ids or not continuation_ids:
            raise ValueError("continuation_logprobs needs a non-empty context and continuation")
        inputs = tuple(context_ids) + tuple(continuation_ids[:-1])
        if len(inputs) > context:
            raise ValueError(f"sequence of {len(inputs)} tokens exceeds the model's context of {context}")
        row = rows.setdefault(inputs, len(rows))
        targets.append((row, len(context_ids) - 1, list(continuation_ids)))
    inputs = list(rows)
    by_row = [[] for _ in inputs]
    for index, (row, _, _) in enumerate(targets):
        by_row[row].append(index)
    results = [None] * len(requests)
    order = sorted(range(len(inputs)), key=lambda r: len(inputs[r]))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        T = max(len(inputs[r]) for r in batch)
        ids = torch.tensor([list(inputs[r]) + [0] * (T - len(inputs[r])) for r in batch], device=device)
        picks = [(j, index) for j, r in enumerate(batch) for index in by_row[r]]
        # the rows' common first tokens (TruthfulQA's preamble), up to the first position a target is read at
        shared = shared_prefix([inputs[r] for r in batch], min(targets[index][1] for _, index in picks))
        hidden = forward_after_prefix(model, ids, shared)  # (b, T - shared, H): positions shared..T-1
        batch_rows, positions, wanted = [], [], []
        for j, index in picks:
            _, first, continuation = targets[index]
            batch_rows += [j] * len(continuation)
            positions += range(first - shared, first - shared + len(continuation))
            wanted += continuation
        values = token_logprobs(model, hidden[batch_rows, positions], torch.tensor(wanted, device=device))
        if not torch.isfinite(values).all():  # NaN would win every argmax comparison as the first choice
            raise ValueError("the model gives NaN or infinite log-probabilities: its weights are unusable")
        values = values.tolist()
        offset = 0
        for _, index in picks:
            count = len(targets[index][2])
            results[index], offset = values[offset:offset + count], offset + count
    return results


def shared_prefix(rows: list, limit: int) -> int:
    """How many first tokens all `rows` share, at most `limit`; 0 when under SHARED_MINIMUM (not worth a call)."""
    length = 0
    while length < limit and all(len(row) > length and row[length] == rows[0][length] for row in rows):
        length += 1
    return length if length >= SHARED_MINIMUM and len(rows) > 1 else 0


def forward_after_prefix(model, ids, shared: int):
    """Final hidden states of ids (b, T) at positions shared..T-1: (b, T - shared, H). The first `shared` tokens,
    the same in every row, run once (one row) into a KV cache that the b rows then read: TruthfulQA's 230-token
    preamble costs one forward per batch instead of one per choice."""
    if shared == 0:
        return model(ids, return_hidden=True)  # right padding does not reach earlier tokens
    b, T = ids.shape
    slots = torch.arange(T, device=ids.device)
    causal = slots[None, :] <= slots[:, None]  # (T, T): a position sees itself and what comes before
    cache = KVCache.allocate(model, b, T)
    model(ids[:1, :shared], mask=causal[None, None, :shared, :shared], cache=cache.view(slice(0, 1)),
          slots=slots[:shared], return_hidden=True)
    share_prefill(cache, b, shared)  # the sampler's copy of a prefill to the other rows of its group
    positions = slots[shared:].expand(b, -1)  # (b, T - shared)
    return model(ids[:, shared:], positions=positions, mask=causal[None, None, shared:], cache=cache,
                 slots=slots[shared:], return_hidden=True)


def run_batches(task: str, lengths: list, batch_size: int, run_batch, progress: bool) -> tuple:
    """Items in batches of similar `lengths`; run_batch(indices) -> one result per index.

    Under torchrun each rank runs its share of the batches (the batches one process would run), then all
    gather. Returns ({item index: result} for every item, seconds).
    """
    started = time.perf_counter()
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    chunks = shard([order[start:start + batch_size] for start in range(0, len(order), batch_size)])
    results = {}
    with tqdm(total=sum(map(len, chunks)), desc=task, disable=not progress) as bar:
        for chunk in chunks:
            results.update(zip(chunk, run_batch(chunk)))
            bar.update(len(chunk))
    return dict(gather(list(results.items()))), time.perf_counter() - started


def write_atomically(path: Path, results):
    """Write JSON (or text) to a temporary file beside `path`, then rename: a crash, a full disk or a Ctrl-C never
    leaves half a file; a failure is one line naming the path (CheckpointError)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "w", encoding="utf-8") as file:
            if isinstance(results, str):
                file.write(results)
            else:
                json.dump(results, file, indent=1, ensure_ascii=False)
                file.write("\n")
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise CheckpointError(write_failure(path, error)) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def written_by(path: Path, tool: str, legacy_keys: set) -> bool:
    """Whether the JSON file at `path` is `tool`'s own output: its `written_by` field, or, for files written before
    that field existed, its keys. Anything else (another JSON, text, a checkpoint's config.json) is not."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and (data.get("written_by") == tool or ("written_by" not in data
                                                                           and legacy_keys <= set(data)))
