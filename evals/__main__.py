"""
Evaluate a checkpoint on GSM8K, TruthfulQA and MMLU and write a JSON results file.

    python -m evals Qwen/Qwen3-0.6B-Base                         # all tasks, zero-shot, data from the hub
    python -m evals ckpt/sft_mild --data-dir ../shared/data --out results/sft_mild.json
    python -m evals ckpt/tiny --data-dir ../shared/data --limit 50 --shots 5 --tasks gsm8k,mmlu
    torchrun --nproc_per_node=8 -m evals ckpt/sft_mild   # 8 GPUs: each evaluates 1/8 of the batches

--shots applies to GSM8K and MMLU (TruthfulQA's preamble is fixed); --limit N evaluates N items per task
(GSM8K and TruthfulQA: the first N; MMLU: N taken round-robin over the subjects). The results file holds
the summary, each score's standard error, the exact protocol and one record per item.
"""
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from evals import DataError, check_data_tokenizer, gsm8k, mmlu, truthfulqa, write_atomically, written_by
from infrastructure import distributed, flags
from infrastructure.checkpoint import CheckpointError, check_writable, guard_output, load_tokenizer
from model import DTYPES, Qwen3

TASKS = ("gsm8k", "truthfulqa", "mmlu")
WRITER, OLD_KEYS = "python -m evals", {"model", "protocol", "summary"}  # how a results file is known as ours
METRICS = {"gsm8k": ("flexible", "strict"), "truthfulqa": ("mc1", "mc2"), "mmlu": ("accuracy",)}

# -----------------------------------------------------------------------------
# Arguments and data: every bad input is found before the model runs


def parse_args(argv=None):
    parser = flags.parser(__doc__, prog="python -m evals")
    parser.add_argument("model", help="checkpoint directory or hub repo id (e.g. Qwen/Qwen3-0.6B-Base)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, from: " + ", ".join(TASKS))
    parser.add_argument("--limit", type=flags.count(1), default=None, help="evaluate N items per task (a fixed subset)")
    parser.add_argument("--shots", type=flags.count(0), default=0,
                        help="few-shot exemplars for GSM8K and MMLU (lm-eval: 5)")
    parser.add_argument("--data-dir", default=None, help="local data in the original formats (default: the hub)")
    parser.add_argument("--batch-size", type=flags.count(1), default=16, help="prompts per generation / scoring batch")
    parser.add_argument("--seed", type=flags.count(0), default=gsm8k.FEWSHOT_SEED,
                        help="GSM8K exemplars and MC2 bootstrap")
    parser.add_argument("--out", default=None, help="results JSON (default: results/<model name>.json)")
    parser.add_argument("--compile", action="store_true", help="gsm8k: compile the decode step (CUDA graphs)")
    parser.add_argument("--dtype", choices=DTYPES, help="weights (default: the dtype the checkpoint was saved in, "
                        "so a float32 post-trained checkpoint is scored as trained; float32 on CPU)")
    return parser.parse_args(argv)


def check_args(args) -> list:
    """The tasks to run, in the order given; ValueError for anything the run could not use."""
    tasks = list(dict.fromkeys(task.strip() for task in args.tasks.split(",") if task.strip()))
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown task {unknown[0] if unknown else '(none)'}; choose from {', '.join(TASKS)}")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ValueError(f"--data-dir {args.data_dir}: not a directory")
    if Path(out_path(args)).is_dir():
        raise ValueError(f"--out {out_path(args)}: is a directory")
    check_writable(out_path(args))
    guard_output(out_path(args), [args.model, args.data_dir], own_output=lambda path: written_by(path, WRITER, OLD_KEYS))
    return tasks


def out_path(args) -> Path:
    return Path(args.out) if args.out else Path("results") / f"{Path(args.model.rstrip('/')).name}.json"


def load_data(tasks: list, shots: int, data_dir) -> dict:
    data = {}
    if "gsm8k" in tasks:
        data["gsm8k"] = (gsm8k.load("test", data_dir), gsm8k.load("train", data_dir) if shots else None)
    if "truthfulqa" in tasks:
        data["truthfulqa"] = truthfulqa.load(data_dir)
    if "mmlu" in tasks:
        data["mmlu"] = (mmlu.load("test", data_dir), mmlu.load("dev", data_dir) if shots else {})
    return data

# -----------------------------------------------------------------------------
# Running, reporting, writing


def evaluate(args, tasks: list, data: dict, model, tokenizer) -> dict:
    options = dict(limit=args.limit, batch_size=args.batch_size, progress=distributed.is_main())
    results = {}
    for task in tasks:
        if task == "gsm8k":
            results[task] = gsm8k.evaluate(model, tokenizer, *data[task], shots=args.shots, seed=args.seed,
                                           compile=args.compile, **options)
        elif task == "truthfulqa":
            results[task] = truthfulqa.evaluate(model, tokenizer, data[task], seed=args.seed, **options)
        else:
            results[task] = mmlu.evaluate(model, tokenizer, *data[task], shots=args.shots, **options)
    weight = model.model.embed_tokens.weight
    return {"written_by": WRITER, "model": args.model,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "protocol": {"tasks": tasks, "shots": args.shots, "limit": args.limit, "seed": args.seed,
                         "batch_size": args.batch_size, "data": args.data_dir or "Hugging Face hub",
                         "device": str(weight.device), "dtype": str(weight.dtype).replace("torch.", "")},
            "summary": {task: result.pop("summary") for task, result in results.items()},
            "tasks": results}


def print_table(results: dict):
    print(f"{'task':<12}{'metric':<10}{'value':>8}{'stderr':>9}{'items':>8}{'items/s':>10}")
    for task, summary in results["summary"].items():
        speed = summary["items"] / summary["seconds"] if summary["seconds"] > 0 else float("inf")
        for metric in METRICS[task]:
            print(f"{task:<12}{metric:<10}{summary[metric]:>8.4f}{summary[metric + '_stderr']:>9.4f}"
                  f"{summary['items']:>8}{speed:>10.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        tasks = check_args(args)
        data = load_data(tasks, args.shots, args.data_dir)
        device = distributed.setup()  # under torchrun: this rank's GPU; the graders split the batches
        model = Qwen3.from_pretrained(args.model, device=device, dtype=DTYPES.get(args.dtype))
        tokenizer = load_tokenizer(model)
        check_data_tokenizer(args.data_dir, tokenizer)
        started = time.perf_counter()
        results = evaluate(args, tasks, data, model, tokenizer)
        out = out_path(args)
        if not distributed.is_main():  # every rank holds the whole results; rank 0 writes them
            return 0
        write_atomically(out, results)
    except (CheckpointError, DataError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print_table(results)
    print(f"wrote {out} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # results are written whole at the end, so nothing was
        print("interrupted: nothing was written", file=sys.stderr)
        sys.exit(130)
