"""Tests of evals/: graders on hand-written examples, the real data's shape and prompt lengths, the CLI.

Expected values are written out by hand (strings, numbers), never recomputed with the code under test.
"""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evals
from evals import DataError, binomial_stderr, bootstrap_stderr, encode_pairs, gsm8k, mmlu, truthfulqa
from evals.__main__ import main
from infrastructure.checkpoint import load_tokenizer
from model import Qwen3

ROOT = Path(__file__).resolve().parents[1]

# -----------------------------------------------------------------------------
# GSM8K: prompt format and answer extraction


def test_gsm8k_prompt_format():
    assert gsm8k.prompt("What is 2 + 3?") == "Question: What is 2 + 3?\nAnswer:"
    exemplar = {"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}
    assert gsm8k.prompt("What is 2 + 3?", [exemplar, exemplar]) == (
        "Question: What is 1 + 1?\nAnswer: 1 + 1 = 2\n#### 2\n\n"
        "Question: What is 1 + 1?\nAnswer: 1 + 1 = 2\n#### 2\n\n"
        "Question: What is 2 + 3?\nAnswer:")
    assert gsm8k.target("2 + 3 = 5\n#### 5") == " 2 + 3 = 5\n#### 5"


@pytest.mark.parametrize("completion, reference, strict, flexible", [
    (" 2 + 3 = 5\n#### 5", "2 + 3 = <<2+3=5>>5\n#### 5", 1, 1),  # the reference as a full solution
    ("#### 1,234", "#### 1234", 1, 1),  # commas are dropped on both sides
    ("#### 1234", "#### 1,234", 1, 1),
    ("Total: 1,000,000 dollars", "#### 1000000", 0, 1),
    ("She pays $18 in total.", "#### 18", 0, 1),  # "$18" is one match; "$" is dropped
    ("#### $18", "#### 18", 0, 1),  # strict wants a digit, "-", "." or "," right after "#### "
    ("#### -3", "#### -3", 1, 1),  # negative numbers
    ("The change is -$5", "#### -5", 0, 1),
    ("#### 3", "#### -3", 0, 0),
    ("#### 0.5", "#### 0.5", 1, 1),  # decimals
    ("#### 2.50", "#### 2.5", 0, 0),  # compared as strings, as lm-eval does
    ("so the answer is 18.", "#### 18", 0, 1),  # a trailing period is dropped
    ("#### 18.", "#### 18", 1, 1),
    ("#### 5\n#### 6", "#### 6", 0, 1),  # several ####: strict takes the first, flexible the last number
    ("#### 5\n#### 6", "#### 5", 1, 0),
    ("#### 7 apples, not 8", "#### 7", 1, 0),
    ("####7", "#### 7", 0, 1),  # strict needs the space after ####
    ("I do not know.", "#### 7", 0, 0),  # no number at all
    ("", "#### 7", 0, 0),
    ("The answer is 42", "42", 0, 1),  # a bare number as the reference
])
def test_gsm8k_score(completion, reference, strict, flexible):
    assert gsm8k.grade(completion, reference) == {"strict": strict, "flexible": flexible}


def test_gsm8k_extract_and_normalize():
    assert gsm8k.extract("x #### -1,5.0 y") == {"strict": "-1,5.0", "flexible": "-1,5.0"}
    assert gsm8k.extract("none here") == {"strict": "[invalid]", "flexible": "[invalid]"}
    assert gsm8k.extract("I paid $3 and then 4") == {"strict": "[invalid]", "flexible": "4"}
    assert gsm8k.normalize("He has 3 apples.\n#### $1,234.") == "1234"
    assert gsm8k.normalize("12..") == "12."  # only one trailing period goes
    assert gsm8k.normalize("ABC") == "abc"  # case-insensitive


def test_gsm8k_exemplars_are_fixed_per_item():
    pool = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(10)]
    first = gsm8k.exemplars(pool, 3, 7)
    assert len(first) == 3 and len({e["question"] for e in first}) == 3
    assert gsm8k.exemplars(pool, 3, 7) == first  # the same item gets the same exemplars
    assert gsm8k.exemplars(pool, 3, 7, seed=1) != first or gsm8k.exemplars(pool, 3, 7, seed=2) != first
    assert gsm8k.exemplars(pool, 0, 7) == []
    for item in range(10):  # a train item is never its own exemplar
        assert pool[item] not in gsm8k.exemplars(pool, 9, item, exclude=item)

# -----------------------------------------------------------------------------
# TruthfulQA and MMLU arithmetic and prompts; shared helpers


def test_truthfulqa_mc1():
    assert truthfulqa.mc1([-0.5, -2.0, -1.0], [1, 0, 0]) == 1
    assert truthfulqa.mc1([-1.0, -2.0, -0.5], [1, 0, 0]) == 0
    assert truthfulqa.mc1([-1.0, -1.0], [1, 0]) == 1  # a tie goes to the first choice, as np.argmax
    assert truthfulqa.mc1([-3.0, -1.0, -2.0], [0, 1, 0]) == 1


def test_truthfulqa_mc2():
    # probabilities 0.2, 0.3, 0.5: the true mass is 0.2 + 0.3 = 0.5
    assert truthfulqa.mc2([math.log(0.2), math.log(0.3), math.log(0.5)], [1, 1, 0]) == pytest.approx(0.5)
    # unnormalised 1 and 3: 1 / 4
    assert truthfulqa.mc2([0.0, math.log(3)], [1, 0]) == pytest.approx(0.25)
    # very unlikely sentences: exp(-1000) underflows, the ratio must not
    assert truthfulqa.mc2([-1000.0, -1000.0 + math.log(3)], [1, 0]) == pytest.approx(0.25)
    # lm-eval 0.4.13 sums the choices labelled 1, wherever they stand: 0.2 + 0.5 (the older rule, the choices
    # before the first 0, gave 0.2)
    assert truthfulqa.mc2([math.log(0.2), math.log(0.3), math.log(0.5)], [1, 0, 1]) == pytest.approx(0.7)


def test_truthfulqa_mc2_on_the_two_questions_with_a_true_choice_after_a_false_one(data_dir):
    """Validation questions 25 and 208: a true choice follows a false one; with equal log-likelihoods the mass
    on the true choices is (number labelled 1) / (number of choices), not (number before the first 0) / n."""
    items = truthfulqa.load(data_dir)
    for index, true_count, count in [(25, 4, 9), (208, 3, 7)]:
        labels = items[index]["mc2_targets"]["labels"]
        assert labels.index(0) < len(labels) - 1 - labels[::-1].index(1)  # a 1 after the first 0
        assert truthfulqa.mc2([-2.0] * len(labels), labels) == pytest.approx(true_count / count)
        # all the mass on the late true choice: lm-eval 0.4.13 scores it 1 (the older rule scored it 0)
        late = len(labels) - 1 - labels[::-1].index(1)
        assert truthfulqa.mc2([-50.0 if i != late else 0.0 for i in range(len(labels))], labels) == pytest.approx(1.0)


def test_truthfulqa_context():
    text = truthfulqa.context("Is the sky green?")
    assert text.startswith("Q: What is human life expectancy in the United States?\n"
                           "A: Human life expectancy in the United States is 78 years.\n\nQ: Who was")
    assert text.endswith("A: The 1992 Olympics were held in Barcelona, Spain.\n\nQ: Is the sky green?\nA:")
    assert text.count("\n\nQ: ") == 6


def test_mmlu_prompt_for_a_made_up_subject():
    exemplar = {"question": "What do baskets hold?", "choices": ["Air", "Fish", "Water", "Rocks"], "answer": 1}
    item = {"question": "  Which reed floats best?\n", "choices": ["Cane", "Willow", "Rush", "Iron"], "answer": 2}
    assert mmlu.prompt("underwater_basket_weaving", item) == (
        "The following are multiple choice questions (with answers) about underwater basket weaving.\n\n"
        "Which reed floats best?\nA. Cane\nB. Willow\nC. Rush\nD. Iron\nAnswer:")
    assert mmlu.prompt("underwater_basket_weaving", item, [exemplar]) == (
        "The following are multiple choice questions (with answers) about underwater basket weaving.\n\n"
        "What do baskets hold?\nA. Air\nB. Fish\nC. Water\nD. Rocks\nAnswer: B\n\n"
        "Which reed floats best?\nA. Cane\nB. Willow\nC. Rush\nD. Iron\nAnswer:")


def test_mmlu_csv_answer_letters_map_to_choice_indices(tmp_path):
    """The original layout's answer letter A-D is the index 0-3 of the choice it names, row by row."""
    rows = "".join(f'Question {i}?,first {i},second {i},third {i},fourth {i},{"ABCD"[i]}\n' for i in range(4))
    write(tmp_path / "mmlu" / "test" / "botany_test.csv", rows)
    items = mmlu.load("test", tmp_path)["botany"]
    assert [item["answer"] for item in items] == [0, 1, 2, 3]
    assert [item["choices"][item["answer"]] for item in items] == ["first 0", "second 1", "third 2", "fourth 3"]


def test_mmlu_limit_is_round_robin_over_subjects():
    test = {"algebra": [{}, {}], "botany": [{}, {}, {}], "chemistry": [{}]}
    assert mmlu.choose(test, 4) == [("algebra", 0), ("algebra", 1), ("botany", 0), ("chemistry", 0)]
    assert mmlu.choose(test) == [("algebra", 0), ("algebra", 1), ("botany", 0), ("botany", 1), ("botany", 2),
                                 ("chemistry", 0)]


def test_standard_errors():
    assert binomial_stderr(0.25, 4) == pytest.approx(0.2165064)  # sqrt(0.1875 / 4)
    assert binomial_stderr(0.5, 100) == pytest.approx(0.05)
    assert bootstrap_stderr([0.3] * 50, seed=0) == pytest.approx(0.0, abs=1e-12)
    # the mean of 100 values, half 0 and half 1: standard error sqrt(0.25 / 100) = 0.05
    assert bootstrap_stderr([0.0, 1.0] * 50, seed=0) == pytest.approx(0.05, abs=0.006)
    assert bootstrap_stderr([0.0, 1.0] * 50, seed=3) == bootstrap_stderr([0.0, 1.0] * 50, seed=3)


def test_encode_pairs_split_rule():
    from tokenizers import Tokenizer, models
    # a byte-free BPE over the characters "x", "y", " " with the merges " "+"y" -> " y" and "x"+"y" -> "xy"
    vocab = {"x": 0, "y": 1, " ": 2, " y": 3, "xy": 4}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[(" ", "y"), ("x", "y")]))
    # the trailing space of "x " moves to the continuation: "x" | " y" -> [0] | [3], not [0, 2] | [1]
    assert encode_pairs(tokenizer, [("x ", "y")]) == [([0], [3])]
    # context and continuation are tokenized together and split at the context's length
    assert encode_pairs(tokenizer, [("x", " y"), ("x", " x"), ("x y", "y")]) == [
        ([0], [3]), ([0], [2, 0]), ([0, 3], [1])]
    # merged across the boundary: "xy" is one token, and the continuation gets what is left (nothing)
    assert encode_pairs(tokenizer, [("x", "y")]) == [([0], [])]

# -----------------------------------------------------------------------------
# Scoring through the model (tiny random checkpoint)


def direct_loglikelihood(model, context_ids, continuation_ids) -> float:
    """Sum of log p(continuation) from the full logits of one plain forward (not evals.score)."""
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids)[0].float(), dim=-1)  # (T, V)
    return sum(logprobs[len(context_ids) - 1 + i, token].item() for i, token in enumerate(continuation_ids))


def test_mmlu_one_forward_per_question(tiny_checkpoint):
    model = Qwen3.from_pretrained(tiny_checkpoint, device="cpu")
    tokenizer = load_tokenizer(model)
    test = {"astronomy": [{"question": "Which is a planet?", "choices": ["Mars", "Sun", "Moon", "Io"], "answer": 0},
                          {"question": "How many moons has Mars?", "choices": ["0", "1", "2", "3"], "answer": 2}],
            "botany": [{"question": "What do plants need?", "choices": ["Light", "Iron", "Salt", "Gold"],
                        "answer": 0}]}
    dev = {subject: [items[0]] for subject, items in test.items()}
    rows, forward = [], model.forward

    def counting_forward(input_ids, *args, **kwargs):
        rows.append(input_ids.shape[0])
        return forward(input_ids, *args, **kwargs)
    model.forward = counting_forward
    result = mmlu.evaluate(model, tokenizer, test, dev, shots=1, progress=False)
    # three questions, one forward row each (4 letters share it), after at most one row of their shared header
    assert rows[-1] == 3 and sum(rows) <= 4
    model.forward = forward

    record = result["items"][2]
    assert record["id"] == "botany/test/0" and record["answer"] == "A"
    context = ("The following are multiple choice questions (with answers) about botany.\n\n"
               "What do plants need?\nA. Light\nB. Iron\nC. Salt\nD. Gold\nAnswer: A\n\n"
               "What do plants need?\nA. Light\nB. Iron\nC. Salt\nD. Gold\nAnswer:")
    context_ids = tokenizer.encode(context).ids
    for letter, value in zip("ABCD", record["loglikelihoods"]):
        continuation = tokenizer.encode(context + " " + letter).ids[len(context_ids):]
        assert value == pytest.approx(direct_loglikelihood(model, context_ids, continuation), abs=1e-4)
    assert record["prediction"] == "ABCD"[max(range(4), key=lambda i: record["loglikelihoods"][i])]
    assert result["summary"]["items"] == 3 and set(result["subjects"]) == {"astronomy", "botany"}


def test_a_shared_prefix_runs_once_and_changes_no_loglikelihood(tiny_checkpoint):
    """Rows that share their first 40 tokens (a preamble) run them once, in one row; every continuation's
    log-likelihood is still the plain full forward's, including a request whose context ends inside the
    others' shared tokens (the prefix stops before the first position a target is read at)."""
    model = Qwen3.from_pretrained(tiny_checkpoint, device="cpu")
    generator = torch.Generator().manual_seed(0)
    preamble = torch.randint(1, 100, (40,), generator=generator).tolist()
    requests = [(preamble + torch.randint(1, 100, (n,), generator=generator).tolist(),
                 torch.randint(1, 100, (m,), generator=generator).tolist()) for n, m in ((3, 2), (7, 1), (1, 4))]
    requests.append((preamble[:36], preamble[36:40]))  # its first target is read at position 35
    calls, forward = [], model.forward

    def counting_forward(input_ids, *args, **kwargs):
        calls.append(tuple(input_ids.shape))
        return forward(input_ids, *args, **kwargs)
    model.forward = counting_forward
    results = evals.continuation_logprobs(model, requests, batch_size=16)
    model.forward = forward
    assert calls[0] == (1, 35) and calls[1][0] == 4  # the shared 35 tokens once, then the rest of the 4 rows
    for (context_ids, continuation), values in zip(requests, results):
        assert sum(values) == pytest.approx(direct_loglikelihood(model, context_ids, continuation), abs=1e-4)
    assert evals.shared_prefix([preamble, preamble[:20] + [0] * 30], limit=40) == 0  # 20 < SHARED_MINIMUM


def test_truthfulqa_loglikelihoods(tiny_checkpoint):
    model = Qwen3.from_pretrained(tiny_checkpoint, device="cpu")
    tokenizer = load_tokenizer(model)
    item = {"question": "Can pigs fly?",
            "mc1_targets": {"choices": ["No, pigs cannot fly.", "Yes."], "labels": [1, 0]},
            "mc2_targets": {"choices": ["No.", "No, pigs cannot fly.", "Yes."], "labels": [1, 1, 0]}}
    record = truthfulqa.evaluate(model, tokenizer, [item], progress=False)["items"][0]
    context = truthfulqa.context("Can pigs fly?")
    context_ids = tokenizer.encode(context).ids
    expected = []
    for choice in ["No, pigs cannot fly.", "Yes.", "No."]:
        continuation = tokenizer.encode(context + " " + choice).ids[len(context_ids):]
        expected.append(direct_loglikelihood(model, context_ids, continuation))
    assert record["mc1_loglikelihoods"] == pytest.approx(expected[:2], abs=1e-4)
    assert record["mc2_loglikelihoods"] == pytest.approx([expected[2], expected[0], expected[1]], abs=1e-4)

# -----------------------------------------------------------------------------
# The real data (EVAL_DATA_DIR)


def test_gsm8k_references_score_themselves(data_dir):
    for split, count in (("test", 1319), ("train", 7473)):
        items = gsm8k.load(split, data_dir)
        assert len(items) == count
        wrong = [i for i, item in enumerate(items)
                 if gsm8k.grade(item["answer"], item["answer"]) != {"strict": 1, "flexible": 1}]
        assert wrong == [], f"{split} items {wrong[:5]} do not match themselves"


def test_real_data_counts(data_dir):
    questions = truthfulqa.load(data_dir)
    assert len(questions) == 817
    assert questions[0]["question"] == ("What is the smallest country in the world that is at least one square "
                                        "mile in area?")  # the hub's (v0) order
    test, dev = mmlu.load("test", data_dir), mmlu.load("dev", data_dir)
    assert len(test) == 57 and sum(len(items) for items in test.values()) == 14042
    assert set(dev) == set(test) and all(len(items) == 5 for items in dev.values())


def test_prompt_lengths_fit_the_context(data_dir):
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(data_dir / "qwen_tokenizer" / "tokenizer.json"))
    context = 32768  # Qwen3-0.6B-Base max_position_embeddings

    test, train = gsm8k.load("test", data_dir), gsm8k.load("train", data_dir)
    texts = [gsm8k.prompt(item["question"], gsm8k.exemplars(train, 5, index)) for index, item in enumerate(test)]
    longest = max(len(e.ids) for e in tokenizer.encode_batch(texts))
    assert 500 < longest and longest + gsm8k.MAX_NEW_TOKENS <= context

    pairs = [(truthfulqa.context(item["question"]), f" {choice}") for item in truthfulqa.load(data_dir)
             for key in ("mc1_targets", "mc2_targets") for choice in item[key]["choices"]]
    encoded = encode_pairs(tokenizer, pairs)
    assert all(len(continuation) > 0 for _, continuation in encoded)
    assert max(len(c) + len(ids) for c, ids in encoded) <= context

    # MMLU 5-shot: the longest prompt of every subject exactly, every prompt by header + question tokens
    test, dev = mmlu.load("test", data_dir), mmlu.load("dev", data_dir)
    for subject, items in test.items():
        prompt = mmlu.prompt(subject, items[0], dev[subject])
        prefix_tokens = len(tokenizer.encode(prompt[:-len(mmlu.question_text(items[0]))]).ids)  # header + shots
        question_tokens = [len(e.ids) for e in tokenizer.encode_batch([mmlu.question_text(i) for i in items])]
        assert prefix_tokens + max(question_tokens) + 16 <= context
        longest = max(items, key=lambda item: len(mmlu.question_text(item)))
        prompt_ids, letters = encode_pairs(tokenizer, [(mmlu.prompt(subject, longest, dev[subject]), " A")])[0]
        assert len(letters) == 1 and len(prompt_ids) + 1 <= context

# -----------------------------------------------------------------------------
# Bad input: one line on stderr, a non-zero exit, nothing written


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_malformed_files_name_file_and_line(tmp_path):
    good = json.dumps({"question": "q", "answer": "#### 1"})
    path = write(tmp_path / "a" / "gsm8k" / "test.jsonl", f"{good}\n{{not json\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: invalid JSON"):
        gsm8k.load("test", tmp_path / "a")
    path = write(tmp_path / "b" / "gsm8k" / "test.jsonl", f"{good}\n{good}\n" + '{"question": "q"}\n')
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:3: expected an object"):
        gsm8k.load("test", tmp_path / "b")
    with pytest.raises(DataError, match=r"gsm8k/train.jsonl: file not found"):
        gsm8k.load("train", tmp_path / "b")

    path = write(tmp_path / "c" / "truthfulqa" / "mc_task.json", '[\n  {"question": "q",\n  oops\n]')
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:3: invalid JSON"):
        truthfulqa.load(tmp_path / "c")
    entry = {"question": "q", "mc1_targets": {"a": 1, "b": 1}, "mc2_targets": {"a": 1, "b": 0}}
    path = write(tmp_path / "d" / "truthfulqa" / "mc_task.json", json.dumps([entry]))
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: entry 0: .*exactly one 1"):
        truthfulqa.load(tmp_path / "d")

    rows = 'q,a,b,c,d,A\n"two\nlines",a,b,c,d,B\nq,a,b,c,E\n'  # the third row starts on line 4
    path = write(tmp_path / "e" / "mmlu" / "test" / "art_test.csv", rows)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:4: expected 6 fields"):
        mmlu.load("test", tmp_path / "e")
    path = write(tmp_path / "f" / "mmlu" / "test" / "art_test.csv", "q,a,b,c,d,E\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:1: the answer must be A-D, got 'E'"):
        mmlu.load("test", tmp_path / "f")
    with pytest.raises(DataError, match=r"mmlu/dev: no <subject>_dev.csv files"):
        mmlu.load("dev", tmp_path / "f")


def test_hub_download_failure_is_one_line(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("network is unreachable\nwith a second line")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(DataError, match=r"cannot download openai/gsm8k .*--data-dir") as error:
        gsm8k.load("test")
    assert "\n" not in str(error.value)


def test_hub_parquet_files_give_the_same_records(tmp_path, monkeypatch):
    import huggingface_hub
    import pyarrow
    import pyarrow.parquet
    tables = {  # hand-made files in the hub repos' layouts (file names found by glob, in name order)
        "main/test-00000-of-00002.parquet": {"question": ["q1"], "answer": ["#### 1"]},
        "main/test-00001-of-00002.parquet": {"question": ["q2"], "answer": ["#### 2"]},
        "multiple_choice/validation-00000-of-00001.parquet": {
            "question": ["Can pigs fly?"], "mc1_targets": [{"choices": ["No.", "Yes."], "labels": [1, 0]}],
            "mc2_targets": [{"choices": ["No.", "Never.", "Yes."], "labels": [1, 1, 0]}]},
        "all/test-00000-of-00001.parquet": {"question": ["b1", "a1", "b2"], "subject": ["botany", "art", "botany"],
                                            "choices": [["1", "2", "3", "4"]] * 3, "answer": [3, 0, 1]},
    }
    for name, columns in tables.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        pyarrow.parquet.write_table(pyarrow.table(columns), tmp_path / name)
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kwargs: calls.append((repo_id, kwargs)) or str(tmp_path))
    assert gsm8k.load("test") == [{"question": "q1", "answer": "#### 1"}, {"question": "q2", "answer": "#### 2"}]
    assert calls[0] == ("openai/gsm8k", {"repo_type": "dataset", "allow_patterns": ["main/test-*.parquet"]})
    assert truthfulqa.load() == [{"question": "Can pigs fly?",
                                  "mc1_targets": {"choices": ["No.", "Yes."], "labels": [1, 0]},
                                  "mc2_targets": {"choices": ["No.", "Never.", "Yes."], "labels": [1, 1, 0]}}]
    assert mmlu.load("test") == {"art": [{"question": "a1", "choices": ["1", "2", "3", "4"], "answer": 0}],
                                 "botany": [{"question": "b1", "choices": ["1", "2", "3", "4"], "answer": 3},
                                            {"question": "b2", "choices": ["1", "2", "3", "4"], "answer": 1}]}
    assert [call[1]["allow_patterns"] for call in calls[1:]] == [["multiple_choice/validation-*.parquet"],
                                                                 ["all/test-*.parquet"]]


def test_compile_flag_reaches_the_sampler(monkeypatch, tiny_checkpoint, data_dir, tmp_path):
    """`--compile` asks sample.generate for the compiled decode step (whose tokens test_sample checks)."""
    import sample
    asked, generate = [], sample.generate

    def spy(*arguments, **options):
        asked.append(options.get("compile"))
        return generate(*arguments, **{**options, "compile": False})
    monkeypatch.setattr(sample, "generate", spy)
    for flags in ([], ["--compile"]):
        out = tmp_path / f"results{len(flags)}.json"
        assert main([str(tiny_checkpoint), "--tasks", "gsm8k", "--limit", "2", "--data-dir", str(data_dir),
                     *flags, "--out", str(out)]) == 0
    assert asked == [False, True]


@pytest.mark.parametrize("model, arguments, message", [
    ("tiny", ["--tasks", "gsm8k,hellaswag"], "error: unknown task hellaswag"),
    ("tiny", ["--limit", "0"], "error: argument --limit: must be at least 1"),
    ("tiny", ["--data-dir", "{bad}"], "bad/gsm8k/test.jsonl:2: invalid JSON"),
    ("missing", ["--data-dir", "{good}"], "no-such-checkpoint: not a checkpoint directory"),
])
def test_cli_bad_input(model, arguments, message, tiny_checkpoint, tmp_path, capsys):
    line = json.dumps({"question": "q", "answer": "#### 1"})
    good = write(tmp_path / "good" / "gsm8k" / "test.jsonl", f"{line}\n").parents[1]
    bad = write(tmp_path / "bad" / "gsm8k" / "test.jsonl", f"{line}\nnot json\n").parents[1]
    model = str(tiny_checkpoint) if model == "tiny" else str(tmp_path / "no-such-checkpoint")
    out = tmp_path / "results" / "out.json"
    try:
        code = main([model, "--tasks", "gsm8k", *[a.format(good=good, bad=bad) for a in arguments], "--out", str(out)])
        error = capsys.readouterr().err
    except SystemExit as exit:  # a bad flag: argparse's one line (flags.parser), status 1
        code, error = 1, f"{exit.code}\n"
    assert code == 1 and error.startswith("error: ") and message in error
    assert error.count("\n") == 1  # one line
    assert not (tmp_path / "results").exists()

# -----------------------------------------------------------------------------
# End to end: python -m evals on the tiny checkpoint and the real data


@pytest.mark.parametrize("shots", [0, 5])
def test_end_to_end(shots, tiny_checkpoint, data_dir, tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-m", "evals", str(tiny_checkpoint), "--data-dir", str(data_dir),
                          "--limit", "3", "--shots", str(shots), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "mmlu" in run.stdout and "wrote" in run.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind
    results = json.loads(out.read_text())
    assert results["protocol"]["shots"] == shots and results["protocol"]["limit"] == 3
    assert set(results["summary"]) == set(results["tasks"]) == {"gsm8k", "truthfulqa", "mmlu"}
    metrics_of = {"gsm8k": ["flexible", "strict"], "truthfulqa": ["mc1", "mc2"], "mmlu": ["accuracy"]}
    for name, metrics in metrics_of.items():
        task = results["tasks"][name]
        assert len(task["items"]) == 3 and results["summary"][name]["items"] == 3
        assert task["protocol"]["subset"] != "all"
        for metric in metrics:
            assert 0 <= results["summary"][name][metric] <= 1 and results["summary"][name][metric + "_stderr"] >= 0
        assert all({"id", "prediction", "extracted" if name != "mmlu" else "answer", "correct"} <= set(item)
                   for item in task["items"])
    gsm8k_items = results["tasks"]["gsm8k"]["items"]
    assert [item["id"] for item in gsm8k_items] == ["test/0", "test/1", "test/2"]
    assert gsm8k_items[0]["reference"] == "18" and results["tasks"]["gsm8k"]["protocol"]["max_new_tokens"] == 256
    assert [item["id"] for item in results["tasks"]["mmlu"]["items"]] == [
        "abstract_algebra/test/0", "anatomy/test/0", "astronomy/test/0"]
    assert results["tasks"]["mmlu"]["protocol"]["shots"] == shots


def test_the_results_file_records_the_dtype_it_scored_in(tiny_checkpoint, tmp_path):
    """A checkpoint is scored in the dtype it was saved in (float32 here) unless --dtype says otherwise."""
    line = json.dumps({"question": "q", "answer": "#### 1"})
    data = write(tmp_path / "data" / "gsm8k" / "test.jsonl", f"{line}\n").parents[1]
    for flags, dtype in [([], "float32"), (["--dtype", "bfloat16"], "bfloat16")]:
        out = tmp_path / f"{dtype}.json"
        assert main([str(tiny_checkpoint), "--tasks", "gsm8k", "--data-dir", str(data), *flags, "--out", str(out)]) == 0
        assert json.loads(out.read_text())["protocol"]["dtype"] == dtype
