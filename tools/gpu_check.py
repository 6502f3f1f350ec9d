"""
The CUDA paths in one command, on a machine with NVIDIA GPUs: bf16 (or the float32 fallback on GPUs
without it), the compiled decode step, a few training steps of sft.py, rl.py and opd.py on one GPU, the
same data-parallel on every GPU under torchrun (NCCL), and `python -m evals` on one GPU and on all of
them. Prints throughput and peak memory; exits 1 when any run fails.

    python -m tools.gpu_check --tokenizer ../shared/data/qwen_tokenizer/tokenizer.json
    python -m tools.gpu_check --tokenizer Qwen/Qwen3-0.6B-Base     # that hub checkpoint's tokenizer.json only
    python -m tools.gpu_check --tokenizer ... --gpus 1             # one GPU even when there are more

The model is a random-weight checkpoint with Qwen3-0.6B's shape (bench.py's "0.6b": 28 layers, hidden
1024, vocabulary 151,936), written here: random weights are a fair stand-in for speed and memory, not
for quality. It needs a tokenizer with Qwen's token ids (end of text = 151643), so --tokenizer names
Qwen's tokenizer.json (a file, a folder holding one, or a hub id); the tiny test tokenizer has 512 ids.
The data is --data-dir (default data/tiny, the small offline slice of the real benchmarks).

--cpu-dry-run runs the same steps on CPU with a 2-layer model of the same vocabulary, to check this
script itself on a machine without a GPU; it exercises none of the CUDA paths.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # the project's root: the scripts run from there
EOS = 151643  # <|endoftext|> in Qwen's tokenizer


def find_tokenizer(name: str) -> Path:
    """tokenizer.json from a file, a folder, or a hub repo id (only that file is downloaded)."""
    path = Path(name)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
            sys.exit(f"error: --tokenizer {name}: no tokenizer.json there")
        from huggingface_hub import hf_hub_download
        try:
            path = Path(hf_hub_download(name, "tokenizer.json"))
        except Exception as error:
            sys.exit(f"error: --tokenizer {name}: download failed ({type(error).__name__}); pass a local file")
    from tokenizers import Tokenizer
    if Tokenizer.from_file(str(path)).token_to_id("<|endoftext|>") != EOS:
        sys.exit(f"error: --tokenizer {path}: <|endoftext|> is not id {EOS}: not Qwen's tokenizer")
    return path


def write_checkpoint(directory: Path, shape: str, tokenizer: Path, device: str):
    """A random-weight Qwen3 of bench.py's `shape` with Qwen's vocabulary and tokenizer, saved in bf16."""
    from tools.bench import random_checkpoint
    random_checkpoint(shape, directory, vocab_size=151936, eos_token_id=EOS, dtype=torch.bfloat16, device=device)
    shutil.copy(tokenizer, directory / "tokenizer.json")


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def check_sampling(checkpoint: Path, device: str, compile_options: list):
    """Decode tokens/s of sample.generate, eager and compiled, at a few batch sizes (64-token prompts)."""
    from model import Qwen3
    from sample import generate
    model = Qwen3.from_pretrained(checkpoint, device=device)
    print(f"\nsampling: {model.model.embed_tokens.weight.dtype}, 64-token random prompts, 128 new tokens")
    print("| batch | compiled | tokens/s | peak GiB |\n|---|---|---|---|")
    for batch in (1, 16, 64):
        prompts = torch.randint(0, 151643, (batch, 64), generator=torch.Generator().manual_seed(0)).tolist()
        for compile in compile_options:
            if compile:
                generate(model, prompts, max_new_tokens=128, eos_token_id=-1, compile=True)  # the first call compiles
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            generate(model, prompts, max_new_tokens=128, eos_token_id=-1, compile=compile)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            print(f"| {batch} | {compile} | {batch * 128 / seconds:.0f} | {peak_gib():.2f} |", flush=True)
    if True in compile_options:  # compiled.CompiledDecoder keeps its cache static so that no graph is skipped
        from torch._dynamo.utils import counters
        print(f"CUDA graphs skipped by torch.compile: {counters['inductor']['cudagraph_skips']} (expected 0)")
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def launch(name: str, arguments: list, processes: int, environment: dict, failures: list) -> float:
    """Run `python ARGUMENTS` (or under torchrun on `processes` GPUs); returns the wall time in seconds."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *launcher, *map(str, arguments)], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        failures.append(name)
        print(f"FAILED {name} (exit {result.returncode}):\n{result.stderr[-3000:]}", flush=True)
    return seconds


def training_row(name: str, out: Path, processes: int, seconds: float) -> str:
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last, nan = metrics[0], metrics[-1], float("nan")
    sampling = f"{last['sampling_tokens_per_s']:.0f}" if "sampling_tokens_per_s" in last else "-"
    peak = max((m["peak_memory_gib"] for m in metrics if "peak_memory_gib" in m), default=nan)  # CUDA only
    return (f"| {name} | {processes} | {len(metrics)} | {last.get('train_tokens_per_s', nan):.0f} | {sampling} | "
            f"{peak:.2f} | {first.get('loss', nan):.4f} | {first.get('grad_norm', nan):.4f} | {seconds:.0f} |")


def without_timing(results: dict) -> dict:
    results.pop("created", None)
    for summary in results["summary"].values():
        summary.pop("seconds", None)
    return results


def parse_args(argv=None):
    from infrastructure import flags
    parser = flags.parser(__doc__)
    parser.add_argument("--tokenizer", required=True, help="Qwen's tokenizer.json: a file, a folder or a hub id")
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "tiny"), help="--data-dir for the scripts")
    parser.add_argument("--gpus", type=flags.count(1), help="GPUs for the data-parallel runs (default: all visible)")
    parser.add_argument("--steps", type=flags.count(1), default=3, help="optimizer steps per training run")
    parser.add_argument("--work", help="folder for the checkpoint and the runs (default: a temporary one, removed)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="check this script on CPU (no CUDA path runs)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not args.cpu_dry_run and not torch.cuda.is_available():
        sys.exit(f"error: tools/gpu_check.py needs a CUDA GPU, and torch.cuda.is_available() is False here (torch "
                 f"{torch.__version__}, CUDA build {torch.version.cuda}); --cpu-dry-run checks the script itself")
    args.data_dir = str(Path(args.data_dir).resolve())  # the scripts run in the project's root
    if not Path(args.data_dir, "gsm8k", "train.jsonl").is_file():
        sys.exit(f"error: --data-dir {args.data_dir}: no gsm8k/train.jsonl")
    tokenizer = find_tokenizer(args.tokenizer)
    device, shape = ("cpu", "tiny") if args.cpu_dry_run else ("cuda", "0.6b")
    gpus = args.gpus or (2 if args.cpu_dry_run else torch.cuda.device_count())
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.cpu_dry_run:
        environment["CUDA_VISIBLE_DEVICES"] = ""

    from model import default_dtype
    print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}")
    if device == "cuda":
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            print(f"GPU {index}: {properties.name}, {properties.total_memory / 2**30:.0f} GiB, "
                  f"compute capability {properties.major}.{properties.minor}")
        print(f"bf16 in hardware: {torch.cuda.is_bf16_supported(including_emulation=False)}; the scripts compute "
              f"in {default_dtype(torch.device('cuda'))} (bf16 where the GPU has it, else float32)")

    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / f"random_{shape}"
    failures = []
    try:
        if not checkpoint.exists():
            started = time.perf_counter()
            write_checkpoint(checkpoint, shape, tokenizer, device)
            print(f"wrote a random {shape} checkpoint to {checkpoint} ({time.perf_counter() - started:.0f} s)")

        # --- sampling: eager and the compiled decode step (CUDA graphs), then the sample.py CLI with --compile
        check_sampling(checkpoint, device, [False] if args.cpu_dry_run else [False, True])
        cli = ["sample.py", "--model", checkpoint, "--prompt", "Question: 2 + 3?\\nAnswer:", "--n", "4",
               "--temperature", "1", "--max-new-tokens", "64"] + ([] if args.cpu_dry_run else ["--compile"])
        result = subprocess.run([sys.executable, *map(str, cli)], cwd=ROOT, env=environment, capture_output=True,
                                text=True, timeout=1800)
        if result.returncode != 0:
            failures.append("sample.py")
            print(f"FAILED sample.py:\n{result.stderr[-3000:]}")
        else:
            print("sample.py" + (" --compile" if not args.cpu_dry_run else "") + ": "
                  + " / ".join(line for line in result.stdout.splitlines() if "tokens/s" in line or "compile" in line))

        # --- training: a few steps of each script on one GPU, then data-parallel on all of them
        common = ["--model", checkpoint, "--data-dir", args.data_dir, "--steps", args.steps]
        if args.cpu_dry_run:
            common += ["--device", "cpu"]
        sampled = ["--batch-size", 8, "--max-new-tokens", 128]
        # a random model never gets a GSM8K answer right, and RL skips groups whose rewards all agree: with the
        # reference "[invalid]", a completion is rewarded when it holds no number, so the groups disagree
        rl_data = work / "rl_data"
        (rl_data / "gsm8k").mkdir(parents=True, exist_ok=True)
        items = [json.loads(line) for line in Path(args.data_dir, "gsm8k", "train.jsonl").read_text().splitlines()]
        (rl_data / "gsm8k" / "train.jsonl").write_text(
            "".join(json.dumps({"question": item["question"], "answer": "#### [invalid]"}) + "\n" for item in items))
        runs = [("sft LoRA r16", ["sft.py", "--preset", "mild", "--batch-size", 32]),
                ("sft full, checkpointing", ["sft.py", "--preset", "mild", "--lora-rank", 0, "--lr", "1e-5",
                                              "--batch-size", 32, "--gradient-checkpointing"]),
                ("rl LoRA r32", ["rl.py", *sampled, "--samples-per-prompt", 8, "--heldout", 8, "--eval-every", args.steps,
                                 "--data-dir", rl_data]),
                ("rl compiled decode, LoRA r32", ["rl.py", *sampled, "--samples-per-prompt", 8, "--heldout", 8,
                                                  "--eval-every", args.steps, "--data-dir", rl_data, "--compile"]),
                ("opd continuation, bf16 teacher", ["opd.py", "--teacher", checkpoint, "--teacher-dtype", "bfloat16",
                                                    *sampled, "--heldout", 0]),
                ("opd full_kl, bf16 teacher", ["opd.py", "--teacher", checkpoint, "--teacher-dtype", "bfloat16",
                                               "--mode", "full_kl", *sampled, "--heldout", 0])]
        print(f"\ntraining: {args.steps} steps each; throughput of the last step, peak memory of rank 0, "
              f"loss and gradient norm of step 1 (1 GPU and {gpus} GPUs should agree to bf16 precision)")
        print("| run | GPUs | steps | train tok/s | sampling tok/s | peak GiB | loss 1 | grad norm 1 | wall s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for processes in sorted({1, gpus}):
            for name, arguments in runs:
                out = work / f"{name.split(',')[0].replace(' ', '_')}_{processes}"
                shutil.rmtree(out, ignore_errors=True)
                script, *flags = arguments  # the run's own flags after the common ones: the last one wins
                seconds = launch(f"{name} on {processes}", [script, *common, *flags, "--out", out], processes,
                                 environment, failures)
                if (out / "metrics.jsonl").exists():
                    print(training_row(name, out, processes, seconds), flush=True)

        # --- evals: one process and all GPUs must write the same results (timing fields aside)
        print()
        evals = ["-m", "evals", checkpoint, "--data-dir", args.data_dir, "--limit", 16, "--batch-size", 4]
        results = {}
        for processes in sorted({1, gpus}):
            out = work / f"eval_{processes}.json"
            seconds = launch(f"evals on {processes}", [*evals, "--out", out], processes, environment, failures)
            if out.exists():
                results[processes] = without_timing(json.loads(out.read_text()))
                print(f"python -m evals on {processes} GPU(s), 16 items per task: {seconds:.0f} s")
        if gpus < 2:
            print("one GPU: the data-parallel runs and the 1 vs N comparison need two or more")
        if len(results) == 2:
            same = results[1] == results[gpus]
            print(f"results file on 1 and on {gpus} GPUs: {'identical' if same else 'DIFFERENT'}")
            if not same:
                failures.append("evals: 1 and N GPUs differ")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'all runs passed' if not failures else 'failed: ' + ', '.join(failures)}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
