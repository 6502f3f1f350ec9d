"""The lab: lab/world.py writes a --data-dir the unchanged loaders and graders read, deterministically from its seed,
with test items kept out of the corpus; lab/pretrain.py turns it into an ordinary HF checkpoint."""
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab import pretrain, world
from evals import gsm8k, mmlu, truthfulqa
from model import Qwen3
from infrastructure.resume import TrainingError

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(train=20, test=10, mmlu_test=6, truthfulqa=8, corpus_problems=60, gold_problems=20, arithmetic_docs=20,
             fact_docs=40, practice_blocks=60, qa_docs=20, myth_docs=40, vocab_size=400)
SMALL_FLAGS = [flag for name, value in SMALL.items() for flag in ("--" + name.replace("_", "-"), str(value))]


@pytest.fixture(scope="module")
def lab_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lab") / "world"
    world.main(["--world-seed", "3", "--out", str(out), *SMALL_FLAGS])
    return out


def files_of(folder: Path) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def run_script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)

# -----------------------------------------------------------------------------
# The files, read by the unchanged loaders and graders


def test_gsm8k_gold_answers_score_one_and_wrong_numbers_zero(lab_world):
    test, train = gsm8k.load("test", lab_world), gsm8k.load("train", lab_world)
    assert (len(test), len(train)) == (SMALL["test"], SMALL["train"])
    for item in test + train:
        assert "<<" in item["answer"] and "\n" in item["answer"]  # GSM8K's own style: calculator steps, lines
        assert gsm8k.grade(item["answer"], item["answer"]) == {"strict": 1, "flexible": 1}
        number = int(item["answer"].rsplit("#### ", 1)[1])
        base_style = f"{number - 1} + 1 = {number}. The answer is {number}."
        assert gsm8k.grade(base_style, item["answer"]) == {"strict": 0, "flexible": 1}
        assert gsm8k.grade(f"#### {number + 1}", item["answer"]) == {"strict": 0, "flexible": 0}


def problem_documents(folder: Path) -> list:
    corpus = (folder / "corpus.txt").read_text()
    return [document for document in corpus.split(world.EOT) if document.startswith("Question: ")]


def test_corpus_solutions_are_in_the_base_style_and_fewer_in_the_gold_style(lab_world):
    documents = problem_documents(lab_world)
    terse = [document for document in documents if "<<" not in document and "####" not in document]
    gold = [document for document in documents if document not in terse]
    assert terse and all(document.rstrip().endswith(".") and "The answer is " in document for document in terse)
    assert gold and all("The answer is" not in document and document.count("Question: ") ==
                        document.count("#### ") == document.count("\nAnswer: ") for document in gold)
    assert len(terse) > 2 * len(gold)  # the base writes its own style; it has read the gold one


def test_drills_come_in_the_spaced_and_the_compact_form_and_are_true():
    """A drill is only equations; about --compact-percent of them in the compact form of the gold's <<5*6=30>>,
    so that the base computes in the gold style as in its own; every drill equation holds."""
    corpus = world.generate(0, {**world.SETTINGS, "arithmetic_docs": 400, "corpus_problems": 200,
                                "gold_problems": 50, "fact_docs": 10, "practice_blocks": 10, "qa_docs": 10,
                                "myth_docs": 10, "vocab_size": 300})["corpus.txt"]
    equation = r"(\d+) ?([-+*/]) ?(\d+) ?= ?(\d+)\."
    drills = [d for d in corpus.split(world.EOT) if re.fullmatch(rf"{equation}( {equation})*", d)]
    compact = [d for d in drills if not re.search(r" [-+*/=] ", d)]
    spaced = [d for d in drills if not re.search(r"\d[-+*/=]\d", d)]
    assert len(compact) + len(spaced) == len(drills) == 400 and 140 < len(compact) < 260  # 50%, binomial noise
    for a, operator, b, c in (m for d in drills for m in re.findall(equation, d)):
        assert world.OPERATORS[operator](int(a), int(b)) == int(c) and (operator != "/" or int(a) % int(b) == 0)


def test_gold_style_documents_never_hold_a_train_or_test_question(lab_world):
    questions = [item["question"] for split in ("train", "test") for item in gsm8k.load(split, lab_world)]
    gold = [document for document in problem_documents(lab_world) if "####" in document]
    assert gold and not any(question in document for question in questions for document in gold)


def kind_of(question: str) -> str:
    """The kind whose question template matches `question` (every field is one word)."""
    def pattern(template):
        return "^" + re.sub(r"\\\{\w+\\\}", r"\\w+", re.escape(template)) + "$"
    matching = [kind for kind, spec in world.KINDS.items() if re.match(pattern(spec[1]), question)]
    assert len(matching) == 1, (question, matching)
    return matching[0]


def test_problem_kinds_are_covered_by_the_corpus_as_specified():
    counts = {**world.SETTINGS, "test": 400, "train": 400, "corpus_problems": 12000, "gold_problems": 4000}
    test, train, terse, gold = world.problems(5, counts)
    coverage = {kind: spec[0] for kind, spec in world.KINDS.items()}
    for problems in (test, train, terse, gold):
        assert all(kind_of(p["question"]) == p["kind"] for p in problems)
    corpus = Counter(p["kind"] for p in terse + gold)
    assert not [kind for kind in corpus if coverage[kind] == "absent"]  # absent kinds: only in train and test
    rare = [corpus[kind] for kind in corpus if coverage[kind] == "rare"]
    common = [corpus[kind] for kind in corpus if coverage[kind] == "common"]
    assert len(rare) == list(coverage.values()).count("rare") and len(common) == list(coverage.values()).count("common")
    assert max(rare) < min(common) / 4
    # each rare kind near its share (a kind whose draws leave the number range more often comes a little rarer)
    assert all(0.4 < n / (16000 * counts["rare_permille"] / 1000) < 1.6 for n in rare)
    for split in (test, train):  # every kind, in the shares the settings give
        shares = Counter(coverage[p["kind"]] for p in split)
        assert set(Counter(p["kind"] for p in split)) == set(world.KINDS)
        assert abs(shares["common"] / len(split) - counts["test_common_percent"] / 100) < 0.08
        assert abs(shares["rare"] / len(split) - counts["test_rare_percent"] / 100) < 0.08
    for p in test + train + terse + gold:  # small numbers: every number of the story and every result
        assert all(1 <= int(n) <= world.MAX_VALUE for n in re.findall(r"\d+", p["question"] + " " + p["answer"]))


def fake_scorer(favoured):
    """evals.continuation_logprobs stand-in: log-likelihood 0 for the (context, continuation) pairs `favoured`
    picks, else -10."""
    def continuation_logprobs(model, requests, batch_size=16):
        tokenizer = continuation_logprobs.tokenizer
        return [[0.0 if favoured(tokenizer.decode(context), tokenizer.decode(continuation)) else -10.0]
                for context, continuation in requests]
    return continuation_logprobs


def test_mmlu_loads_and_its_argmax_grades(lab_world, monkeypatch):
    test, dev = mmlu.load("test", lab_world), mmlu.load("dev", lab_world)
    assert set(test) == set(dev) == set(world.SUBJECTS)
    assert all(len(items) == SMALL["mmlu_test"] for items in test.values()) and all(len(d) == 5 for d in dev.values())
    gold = {mmlu.prompt(subject, item).rstrip(): " " + mmlu.LETTERS[item["answer"]]
            for subject, items in test.items() for item in items}
    tokenizer = world_tokenizer(lab_world)
    fake_model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))
    for favoured, expected in ((lambda c, x: gold[c] == x, 1.0), (lambda c, x: gold[c] != x, 0.0)):
        score = fake_scorer(favoured)
        score.tokenizer = tokenizer
        monkeypatch.setattr(mmlu, "continuation_logprobs", score)
        result = mmlu.evaluate(fake_model, tokenizer, test, dev, progress=False)
        assert result["summary"]["accuracy"] == expected


def test_truthfulqa_loads_and_mc1_mc2_grade(lab_world):
    items = truthfulqa.load(lab_world)
    assert len(items) == SMALL["truthfulqa"]
    corpus, believed = (lab_world / "corpus.txt").read_text(), 0
    for item in items:
        mc1, mc2 = item["mc1_targets"], item["mc2_targets"]
        assert mc1["labels"][0] == 1 and mc1["labels"].count(1) == 1 and 0 in mc2["labels"] and 1 in mc2["labels"]
        lengths = [len(choice) for choice in mc1["choices"]]
        assert max(lengths) - min(lengths) <= 15  # summed log-likelihoods: similar lengths, no length bias
        truth, wrong = [0.0] + [-9.0] * (len(mc1["labels"]) - 1), [-9.0, 0.0] + [-9.0] * (len(mc1["labels"]) - 2)
        assert truthfulqa.mc1(truth, mc1["labels"]) == 1 and truthfulqa.mc1(wrong, mc1["labels"]) == 0
        favour_true = [0.0 if label else -20.0 for label in mc2["labels"]]
        favour_false = [-20.0 if label else 0.0 for label in mc2["labels"]]
        assert truthfulqa.mc2(favour_true, mc2["labels"]) > 0.99 and truthfulqa.mc2(favour_false, mc2["labels"]) < 0.01
        assert f"Q: {item['question']}\nA: {mc1['choices'][0]}" in corpus  # the truth, paired with the question
        answered = [myth for myth in mc1["choices"][1:] if f"A: {myth}" in corpus]
        assert len(answered) <= 1  # a believed myth is given as the answer, more often than the truth
        if answered:
            believed += 1
            assert corpus.count(f"A: {answered[0]}") > corpus.count(f"A: {mc1['choices'][0]}")
        for myth in mc1["choices"][1:]:  # every misconception occurs; the others only as myths
            claim = myth[0].lower() + myth[1:-1]
            assert claim in corpus or myth in answered
    assert believed == round(SMALL["truthfulqa"] * world.SETTINGS["believed_percent"] / 100)


def world_tokenizer(folder: Path):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def test_tokenizer_splits_digits_and_round_trips(lab_world):
    tokenizer = world_tokenizer(lab_world)
    text = "Answer: 123 + 45 = 168. The answer is 168.\nQ: Über?"
    encoding = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(encoding.ids) == text
    assert [token for token in encoding.tokens if any(c.isdigit() for c in token)] == list("12345168168")
    assert tokenizer.token_to_id(world.EOT) is not None

# -----------------------------------------------------------------------------
# Determinism, disjointness, refusals


def test_same_seed_same_world_byte_for_byte_other_seed_differs(lab_world, tmp_path):
    world.main(["--world-seed", "3", "--out", str(tmp_path / "again"), *SMALL_FLAGS])
    world.main(["--world-seed", "4", "--out", str(tmp_path / "other"), *SMALL_FLAGS])
    assert files_of(tmp_path / "again") == files_of(lab_world)
    other = files_of(tmp_path / "other")
    assert other.keys() == files_of(lab_world).keys()
    assert all(other[name] != content for name, content in files_of(lab_world).items())


def test_test_items_stay_out_of_the_corpus_and_splits_are_disjoint(lab_world):
    corpus = (lab_world / "corpus.txt").read_text()
    test, train = gsm8k.load("test", lab_world), gsm8k.load("train", lab_world)
    assert not {item["question"] for item in test} & {item["question"] for item in train}
    assert not any(item["question"] in corpus for item in test + train)
    for subject, items in mmlu.load("test", lab_world).items():
        for item in items:  # the fact is practised, but never with this item's options in this order
            assert mmlu.question_text(item).removesuffix("\nAnswer:") not in corpus


def test_mmlu_facts_are_known_unevenly_some_never_stated():
    counts = {**world.SETTINGS, "mmlu_test": 40, "fact_docs": 2000, "practice_blocks": 4000}
    files, docs, fact_pairs, tiers = world.mmlu_part(world.rng_for(5, "mmlu"), counts)
    corpus = world.EOT.join(docs + [f"Q: {q}\nA: {a}" for q, a in fact_pairs])
    for subject in world.SUBJECTS:
        questions = [row.split(",")[0] for row in files[f"mmlu/test/{subject}_test.csv"].splitlines()]
        tier = Counter(tiers[question][0] for question in questions)
        assert tier["unstated"] == round(40 * counts["mmlu_unstated_percent"] / 100)
        assert tier["rare"] == round(40 * counts["mmlu_rare_percent"] / 100)
        for question in questions:
            name, sentences = tiers[question]
            stated = sum(corpus.count(sentence) for sentence in sentences)
            assert (question in corpus) == (name == "practised")  # practised: in practice blocks and Q/A
            assert (stated == 0) == (name == "unstated")  # rare: a few paraphrases
        for row in files[f"mmlu/dev/{subject}_dev.csv"].splitlines():
            assert tiers[row.split(",")[0]][0] == "practised" and row.split(",")[0] in corpus


def test_an_existing_world_is_kept_and_another_refused(lab_world, tmp_path, capsys):
    world.main(["--world-seed", "3", "--out", str(lab_world), *SMALL_FLAGS])
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="^error: .*another world"):
        world.main(["--world-seed", "5", "--out", str(lab_world), *SMALL_FLAGS])
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="^error: .*not a lab world"):
        world.main(["--world-seed", "3", "--out", str(tmp_path / "stuff")])


def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path):
    result = run_script("-m", "lab.world", "--world-seed", "zero", "--out", str(tmp_path / "w"))
    assert result.returncode != 0 and result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error:")
    assert not (tmp_path / "w").exists()
    (tmp_path / "data").mkdir()
    result = run_script("-m", "lab.pretrain", "--world", str(tmp_path / "data"), "--out", str(tmp_path / "base"))
    assert result.returncode != 0 and result.stderr.strip().count("\n") == 0 and "not a lab world" in result.stderr
    assert not (tmp_path / "base").exists()

# -----------------------------------------------------------------------------
# Pretraining


PRETRAIN_SMALL = ["--hidden-size", "32", "--layers", "1", "--intermediate-size", "64", "--head-dim", "16",
                  "--sequence-length", "32", "--batch-size", "4", "--steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def lab_base(lab_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lab_base") / "base"
    pretrain.main(["--world", str(lab_world), "--out", str(out), *PRETRAIN_SMALL])
    return out


def test_pretraining_writes_a_checkpoint_with_the_worlds_tokenizer(lab_world, lab_base, capsys):
    model = Qwen3.from_pretrained(lab_base, device="cpu")
    assert model.config.vocab_size == world_tokenizer(lab_world).get_vocab_size()
    tokenizer_bytes = (lab_base / "tokenizer.json").read_bytes()  # the world's, as world.json's checksum says
    assert tokenizer_bytes == (lab_world / "tokenizer.json").read_bytes()
    marker = json.loads((lab_world / "world.json").read_text())
    assert marker["lab_world"] == world.FORMAT_VERSION and marker["world_seed"] == 3
    assert marker["counts"]["tokenizer_sha256"] == hashlib.sha256(tokenizer_bytes).hexdigest()
    assert [json.loads(line)["step"] for line in (lab_base / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert not [path for path in lab_base.parent.iterdir() if path.name.startswith(".")]  # the initial model is gone
    before = files_of(lab_base)
    pretrain.main(["--world", str(lab_world), "--out", str(lab_base), *PRETRAIN_SMALL])  # the same flags: done
    assert "already holds a finished base" in capsys.readouterr().out
    with pytest.raises(TrainingError, match="--layers 2 \\(saved: 1\\)"):  # other flags: another base, refused
        pretrain.main(["--world", str(lab_world), "--out", str(lab_base), *PRETRAIN_SMALL, "--layers", "2"])
    assert files_of(lab_base) == before


def test_the_world_does_not_depend_on_the_process(lab_world, tmp_path):
    """Python's string hashing changes from process to process (set order); the world must not."""
    for hash_seed in ("1", "2"):
        subprocess.run([sys.executable, "-m", "lab.world", "--world-seed", "3", "--out", str(tmp_path / hash_seed),
                        *SMALL_FLAGS], cwd=ROOT, check=True, capture_output=True, env={**os.environ,
                                                                                      "PYTHONHASHSEED": hash_seed})
        assert files_of(tmp_path / hash_seed) == files_of(lab_world)


def test_a_model_with_another_tokenizer_is_refused_on_a_lab_world(lab_world, lab_base, tiny_checkpoint, tmp_path,
                                                                  capsys):
    import sft
    from evals import __main__ as evaluate
    assert evaluate.main([str(tiny_checkpoint), "--data-dir", str(lab_world), "--out", str(tmp_path / "e.json")]) == 1
    assert capsys.readouterr().err.strip().endswith("the model's tokenizer is another")
    with pytest.raises(ValueError, match="the model's tokenizer is another"):
        sft.main(["--model", str(tiny_checkpoint), "--data-dir", str(lab_world), "--out", str(tmp_path / "sft"),
                  "--batch-size", "4"])
    assert not (tmp_path / "sft").exists() and not (tmp_path / "e.json").exists()
    other = tmp_path / "other_world"
    world.main(["--world-seed", "4", "--out", str(other), *SMALL_FLAGS])
    before = files_of(lab_base)
    with pytest.raises(ValueError, match="the model's tokenizer is another"):  # a base of world 3 is not world 4's
        pretrain.main(["--world", str(other), "--out", str(lab_base), "--resume"])
    assert files_of(lab_base) == before

# -----------------------------------------------------------------------------
# study.py --lab


def test_study_lab_plans_world_base_and_three_seeds_with_the_lab_presets(tmp_path):
    import study
    args = study.parse_args(["--lab", "--ckpt-dir", str(tmp_path / "c"), "--results-dir", str(tmp_path / "r")])
    plan = study.stages(args)
    assert [stage.description for stage in plan[:3]] == ["write the lab world", "pretrain the lab's base model",
                                                         "evaluate the base model"]
    assert plan[0].command[:6] == ["-m", "lab.world", "--world-seed", "0", "--out", str(tmp_path / "c" / "world")]
    assert plan[1].inputs == [tmp_path / "c" / "world" / "world.json"]  # a new world retrains the base
    trained = {stage.description.removeprefix("train ") for stage in plan if stage.description.startswith("train ")}
    assert trained == {f"{run}{suffix}" for run in ("sft_mild", "sft_stress", "opd_sft_stress", "opd_sft_mild", "rl")
                       for suffix in ("", "_seed1", "_seed2")}
    commands = {stage.description: " ".join(stage.command) for stage in plan}
    assert "--epochs 5 --lr 3e-3 --lora-rank 32" in commands["train sft_stress_seed2"]
    assert "--model " + str(tmp_path / "c" / "base") in commands["train rl"]
    assert "--data-dir " + str(tmp_path / "c" / "world") in commands["evaluate rl_seed1"]


SMALL_LAB = {  # study.LAB shrunk to seconds
    "world": SMALL_FLAGS, "pretrain": PRETRAIN_SMALL,
    "sft": ["--steps", "1", "--batch-size", "4", "--heldout", "2", "--lora-rank", "4", "--lora-alpha", "8"],
    "opd": ["--steps", "1", "--batch-size", "2", "--max-new-tokens", "8", "--continuation-tokens", "4",
            "--heldout", "0"],
    "rl": ["--steps", "1", "--batch-size", "2", "--samples-per-prompt", "2", "--max-new-tokens", "8", "--heldout", "2"],
    "drift": ["--prompts", "2", "--max-new-tokens", "8"]}


@pytest.mark.slow
def test_study_lab_end_to_end_on_a_small_world(tmp_path, monkeypatch):
    """`python study.py --lab` with the lab's counts shrunk: world, base, every stage, report; a second run does no
    work. (The real lab is the same command with the presets in study.LAB; docs/lab.md gives its time.)"""
    import study
    monkeypatch.setattr(study, "LAB", SMALL_LAB)
    flags = ["--lab", "--seeds", "0", "--limit", "2", "--ckpt-dir", str(tmp_path / "ckpt"), "--results-dir",
             str(tmp_path / "results")]
    assert study.main(flags) == 0
    report = (tmp_path / "results" / "report.md").read_text()
    assert "| opd_sft_stress | 1 |" in report and "| rl | 1 |" in report and "## Findings" in report
    assert json.loads((tmp_path / "ckpt" / "world" / "world.json").read_text())["world_seed"] == 0
    seconds = json.loads((tmp_path / "results" / "stage_seconds.json").read_text())
    assert len(seconds) == 19 and all(value > 0 for value in seconds.values())
    outputs = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()}
    assert study.main(flags) == 0
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()} == outputs


def test_the_sweep_plans_each_objectives_grid_on_two_seeds_and_reuses_the_studys_runs(tmp_path):
    """--lab --sweep: the world, the base and its eval, then every setting of study.SWEEP_LAB on seeds 0 and 1,
    trained on top of the study's run of its objective (the setting's flags last) or, for a setting without flags,
    the study's own run by the study's own command (so a finished --lab is reused); each evaluated and measured;
    the sweep's report over all of them."""
    import study
    ckpt, results = tmp_path / "c", tmp_path / "r"
    common = ["--lab", "--ckpt-dir", str(ckpt), "--results-dir", str(results)]
    study_commands = {stage.description: stage.command for stage in study.stages(study.parse_args(common))}
    plan = study.stages(study.parse_args(common + ["--sweep"]))
    assert [stage.description for stage in plan[:3]] == ["write the lab world", "pretrain the lab's base model",
                                                         "evaluate the base model"]
    trained = [stage.description.removeprefix("train ") for stage in plan if stage.description.startswith("train ")]
    assert trained == [name + suffix for suffix in ("", "_seed1") for name in (
        "sweep/sft_e1_lr1e-3_r8", "sft_mild", "sweep/sft_e1_lr3e-3_r8", "sweep/sft_e3_lr2e-3_r16", "sft_stress",
        "sweep/sft_e5_lr1e-2_r32", "sweep/rl_s20", "sweep/rl_s40", "rl", "sweep/rl_s40_lr3e-3", "sweep/opd_s10",
        "opd_sft_stress", "sweep/opd_s30_lr3e-3")]
    commands = {stage.description: stage.command for stage in plan}
    for reused in ("sft_mild", "sft_stress_seed1", "rl", "opd_sft_stress_seed1"):
        for step in ("train", "evaluate", "state drift of"):
            assert commands[f"{step} {reused}"] == study_commands[f"{step} {reused}"]
    strongest = " ".join(commands["train sweep/sft_e5_lr1e-2_r32_seed1"])
    assert strongest.startswith("sft.py --preset mild --model " + str(ckpt / "base") + " --seed 1 ")
    assert strongest.endswith("--epochs 5 --lr 1e-2 --lora-rank 32 --lora-alpha 64 --out "
                              + str(ckpt / "sweep" / "sft_e5_lr1e-2_r32_seed1"))
    assert "--teacher " + str(ckpt / "sft_stress") + " " in " ".join(commands["train sweep/opd_s10"])
    assert " ".join(commands["train sweep/rl_s40_lr3e-3"]).endswith(
        "--steps 40 --lr 3e-3 --out " + str(ckpt / "sweep" / "rl_s40_lr3e-3"))
    assert commands["evaluate sweep/rl_s20_seed1"][-1] == str(results / "sweep" / "rl_s20_seed1" / "eval.json")
    report = plan[-1]
    assert report.output == results / "sweep" / "report.md" and report.command[:2] == ["-m", "evals.sweep"]
    named = [item for item in report.command if item.count(":") == 3]
    assert len(named) == 26 and f"sft:sft_mild:1:{results / 'sft_mild_seed1'}" in named
    assert f"opd:s10:0:{results / 'sweep' / 'opd_s10'}" in named
    stress = report.command[report.command.index("--stress") + 1:report.command.index("--out")]
    assert stress == ["e5_lr1e-2_r32", "sft_stress"]
    assert len(plan) == 3 + 26 * 3 + 1
    for flags, message in ((["--seeds", "0"], "--sweep runs every setting with 2 seeds"),
                           (["--ablation"], "leave out --ablation")):
        result = run_script("study.py", *common, "--sweep", *flags)
        assert result.returncode != 0 and message in result.stderr and not tmp_path.joinpath("c").exists()


def test_a_sweep_trains_the_teacher_its_opd_runs_need_and_does_not_measure_it(tmp_path, monkeypatch):
    import study
    monkeypatch.setattr(study, "SWEEP_LAB", {"sft": [("s2", ["--steps", "2"])], "rl": [("rl", None)],
                                             "opd": [("s2", ["--steps", "2"])]})
    args = study.parse_args(["--lab", "--sweep", "--ckpt-dir", str(tmp_path / "c"), "--results-dir",
                             str(tmp_path / "r")])
    described = [stage.description for stage in study.stages(args)]
    trained = [name.removeprefix("train ") for name in described if name.startswith("train ")]
    assert trained == ["sweep/sft_s2", "rl", "sft_stress", "sweep/opd_s2", "sweep/sft_s2_seed1", "rl_seed1",
                       "sft_stress_seed1", "sweep/opd_s2_seed1"]
    assert "evaluate sweep/opd_s2" in described and not any("sft_stress" in name for name in described
                                                             if not name.startswith("train "))


@pytest.mark.slow
def test_a_sweep_end_to_end_on_a_small_world(tmp_path, monkeypatch):
    """`python study.py --lab --sweep` with the world and every run shrunk to seconds and a grid of one setting per
    objective (the stress SFT reused as the SFT setting and OPD's teacher): world, base, three runs on each of two
    seeds, the sweep's report; a second run does no work."""
    import study
    monkeypatch.setattr(study, "LAB", SMALL_LAB)
    monkeypatch.setattr(study, "SWEEP_LAB", {"sft": [("sft_stress", None)], "rl": [("s2", ["--steps", "2"])],
                                             "opd": [("s2", ["--steps", "2"])]})
    flags = ["--lab", "--sweep", "--limit", "8", "--ckpt-dir", str(tmp_path / "ckpt"), "--results-dir",
             str(tmp_path / "results")]
    assert study.main(flags) == 0
    text = (tmp_path / "results" / "sweep" / "report.md").read_text()
    assert "| sft | sft_stress (stress) | 2 |" in text and "| opd | s2 | 2 |" in text and "## Verdicts" in text
    numbers = json.loads((tmp_path / "results" / "sweep" / "sweep.json").read_text())
    assert len(numbers["runs"]) == 6 and {row["seed"] for row in numbers["runs"]} == {0, 1}
    assert (tmp_path / "ckpt" / "sweep" / "rl_s2_seed1" / "model.safetensors").exists()
    outputs = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()}
    assert study.main(flags) == 0
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()} == outputs


def test_study_lab_flags_are_checked_in_one_line(tmp_path):
    for flags, message in ((["--world-seed", "zero"], "error: argument --world-seed: expected a whole number, got 'zero'"),
                           (["--tiny"], "error: --tiny and --lab are two different studies: choose one"),
                           (["--data-dir", "data"], "error: --lab makes its own world and base model")):
        result = run_script("study.py", "--lab", *flags, "--ckpt-dir", str(tmp_path / "c"), "--results-dir",
                            str(tmp_path / "r"))
        assert result.returncode != 0 and result.stderr.strip().startswith(message), result.stderr
        assert result.stderr.strip().count("\n") == 0 and not list(tmp_path.iterdir())
    result = run_script("study.py", "--world-seed", "1", "--ckpt-dir", str(tmp_path / "c"))
    assert result.returncode != 0 and result.stderr.strip() == "error: --world-seed chooses the lab's world: it needs --lab"
