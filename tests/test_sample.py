"""sample.py: cached generation against full forwards and transformers, sampling controls, stops, scoring."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import reference_checkpoint
from infrastructure.checkpoint import load_tokenizer
from model import Qwen3
from evals import continuation_logprobs
from sample import choose_tokens, filter_probabilities, generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lively(tiny_checkpoint):
    """The tiny checkpoint with larger random weights, so greedy text varies and logits are peaked."""
    model = Qwen3.from_pretrained(tiny_checkpoint)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.endswith("norm.weight"):
                parameter.normal_(0, 0.3)
    return model, load_tokenizer(model)


def prompts_of(tokenizer):
    texts = ["Question: Ann has 3 apples and buys 4 more.\nAnswer:", "Question: hi", "12 + 7 ="]
    return [tokenizer.encode(text).ids for text in texts]


def greedy_without_cache(model, prompt, steps):
    """The reference: an argmax loop over full forwards of the growing sequence, with the top-two margins."""
    ids, margins = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids]))[0, -1]
            top = logits.topk(2).values
            margins.append((top[0] - top[1]).item())
            ids.append(logits.argmax().item())
    return ids[len(prompt):], margins


def agree_while_clear(actual, expected, margins, clear=1e-3):
    """Tokens are equal up to the first step whose top-two logit margin is too small to call."""
    for a, e, margin in zip(actual, expected, margins):
        if margin < clear:
            return True
        if a != e:
            return False
    return True


def test_greedy_equals_full_forward_loop_and_ragged_batch(lively):
    model, tokenizer = lively
    prompts = prompts_of(tokenizer)
    batched = generate(model, prompts, max_new_tokens=24, eos_token_id=-1)
    for prompt, completion in zip(prompts, batched):
        expected, margins = greedy_without_cache(model, prompt, 24)
        assert agree_while_clear(completion.tokens, expected, margins)
        alone = generate(model, [prompt], max_new_tokens=24, eos_token_id=-1)[0]
        assert agree_while_clear(completion.tokens, alone.tokens, margins)
        assert completion.finish_reason == "length" and len(completion.tokens) == 24


def test_greedy_equals_transformers_generate(tmp_path):
    reference = reference_checkpoint(tmp_path, tie=False, heads=8, kv_heads=2, head_dim=16, hidden=96)
    ours = Qwen3.from_pretrained(tmp_path)
    prompt = torch.randint(0, 300, (1, 13), generator=torch.Generator().manual_seed(3))
    expected = reference.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)[0, 13:].tolist()
    actual = generate(ours, [prompt[0].tolist()], max_new_tokens=30, eos_token_id=-1)[0].tokens
    _, margins = greedy_without_cache(ours, prompt[0].tolist(), 30)
    assert agree_while_clear(actual, expected, margins)
    assert actual[:5] == expected[:5]


def test_seeded_samples_do_not_depend_on_the_batch(lively):
    model, tokenizer = lively
    prompts = prompts_of(tokenizer)
    options = dict(max_new_tokens=10, temperature=1.0, n=3, seed=7, eos_token_id=-1)
    batched = generate(model, prompts, **options)
    for index, prompt in enumerate(prompts):
        alone = generate(model, [prompt], **options)
        assert [c.tokens for c in alone] == [c.tokens for c in batched[3 * index:3 * index + 3]]
    group = [c.tokens for c in batched[:3]]
    assert len(set(map(tuple, group))) > 1  # the n samples of a prompt differ from each other
    assert [c.tokens for c in generate(model, prompts, **options)] == [c.tokens for c in batched]
    other_seed = generate(model, prompts, **{**options, "seed": 8})
    assert [c.tokens for c in other_seed] != [c.tokens for c in batched]


def test_two_prompts_under_one_seed_draw_different_random_streams(lively, monkeypatch):
    """The stream is seeded by the seed and the prompt's tokens: two prompts get different uniforms (a seed that
    ignored the prompt would pass the batch-independence test above with one stream for every prompt)."""
    import sample
    model, tokenizer = lively
    drawn = []
    real = sample.choose_tokens
    monkeypatch.setattr(sample, "choose_tokens", lambda logits, uniforms, *rest: drawn.append(uniforms.clone())
                        or real(logits, uniforms, *rest))
    first, second = prompts_of(tokenizer)[:2]
    generate(model, [first, second], max_new_tokens=4, temperature=1.0, seed=7, eos_token_id=-1)
    streams = torch.stack(drawn, dim=1)  # (rows, steps)
    assert not torch.equal(streams[0], streams[1])
    drawn.clear()
    generate(model, [first, first], max_new_tokens=4, temperature=1.0, seed=7, eos_token_id=-1)
    again = torch.stack(drawn, dim=1)
    assert torch.equal(again[0], again[1])  # the same prompt, the same stream
    assert any(torch.equal(again[0], row) for row in streams)  # (rows are ordered by prompt length)


def test_top_k_and_top_p_keep_the_right_tokens():
    probs = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    kept, ids = filter_probabilities(probs.clone(), top_k=2, top_p=1.0)
    assert ids[0, :2].tolist() == [1, 3] and kept[0].tolist() == pytest.approx([0.4, 0.3, 0, 0])
    # top-p 0.7: 0.4 (mass before 0) and 0.3 (mass before 0.4) reach 0.7 exactly; 0.2 is not needed
    kept, ids = filter_probabilities(probs.clone(), top_k=0, top_p=0.7)
    assert kept[0].tolist() == pytest.approx([0.4, 0.3, 0, 0])
    # top-p 0.75: the token that crosses p (0.2, mass before 0.7) is kept
    kept, ids = filter_probabilities(probs.clone(), top_k=0, top_p=0.75)
    assert kept[0].tolist() == pytest.approx([0.4, 0.3, 0.2, 0])
    # top-p smaller than the top token keeps the top token only
    kept, _ = filter_probabilities(probs.clone(), top_k=0, top_p=0.1)
    assert kept[0].tolist() == pytest.approx([0.4, 0, 0, 0])


@pytest.mark.parametrize("top_k, top_p", [(2, 0.5), (3, 0.6), (3, 0.9), (0, 0.6), (4, 0.3)])
def test_top_p_after_top_k_keeps_what_transformers_keeps(top_k, top_p):
    """transformers (the reference) applies top-p to the distribution renormalised over the top-k survivors:
    with [0.4, 0.3, 0.2, 0.1], top_k 2 and top_p 0.5 keep 0.4 alone (4/7 of the kept mass is past 0.5)."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])
    logits = probs.log()
    if top_k:
        logits = TopKLogitsWarper(top_k)(None, logits)
    expected = torch.isfinite(TopPLogitsWarper(top_p)(None, logits))  # the tokens transformers keeps
    kept, ids = filter_probabilities(probs.clone(), top_k, top_p)
    ours = torch.zeros_like(expected).scatter(1, ids, kept > 0)
    assert torch.equal(ours, expected)


def test_sampled_frequencies_follow_the_filtered_distribution():
    logits = torch.log(torch.tensor([0.1, 0.4, 0.2, 0.3])).expand(40000, 4)
    uniforms = torch.rand(40000, generator=torch.Generator().manual_seed(0))

    def frequencies(**options):
        chosen = choose_tokens(logits, uniforms, **options)
        return (torch.bincount(chosen, minlength=4).float() / len(chosen)).tolist()
    assert frequencies(temperature=1.0, top_k=0, top_p=1.0) == pytest.approx([0.1, 0.4, 0.2, 0.3], abs=0.01)
    assert frequencies(temperature=1.0, top_k=2, top_p=1.0) == pytest.approx([0, 4 / 7, 0, 3 / 7], abs=0.01)
    assert frequencies(temperature=1.0, top_k=0, top_p=0.75) == pytest.approx([0, 4 / 9, 2 / 9, 3 / 9], abs=0.01)
    assert frequencies(temperature=1.0, top_k=1, top_p=1.0) == [0, 1, 0, 0]  # top-k 1 is greedy
    assert frequencies(temperature=0.0, top_k=0, top_p=1.0) == [0, 1, 0, 0]
    # temperature 0.5 squares the probabilities before renormalising
    squared = torch.tensor([0.01, 0.16, 0.04, 0.09])
    expected = (squared / squared.sum()).tolist()
    assert frequencies(temperature=0.5, top_k=0, top_p=1.0) == pytest.approx(expected, abs=0.01)


def test_stop_strings_and_end_of_text(lively):
    model, tokenizer = lively
    prompt = prompts_of(tokenizer)[0]
    free = generate(model, [prompt], max_new_tokens=30, tokenizer=tokenizer, eos_token_id=-1)[0]
    text = free.text
    stop = text[12:15]  # a stop string that first appears at character 12 or earlier
    first = text.find(stop)
    stopped = generate(model, [prompt], max_new_tokens=30, tokenizer=tokenizer, eos_token_id=-1, stop=[stop])[0]
    assert stopped.finish_reason == "stop" and stopped.text == text[:first]
    # the tokens end with the token that completed the stop string: one fewer would not contain it
    assert stop in tokenizer.decode(stopped.tokens) and stop not in tokenizer.decode(stopped.tokens[:-1])
    assert stopped.tokens == free.tokens[:len(stopped.tokens)]
    # end of text: the first occurrence of the 5th token ends the row, and is kept in tokens
    eos = free.tokens[4]
    ended = generate(model, [prompt], max_new_tokens=30, eos_token_id=eos)[0]
    assert ended.finish_reason == "eos" and ended.tokens == free.tokens[:free.tokens.index(eos) + 1]
    # a row that finished early stops growing while the others go on
    both = generate(model, [prompt, prompts_of(tokenizer)[1]], max_new_tokens=30, eos_token_id=eos)
    assert both[0].tokens == ended.tokens


def test_max_new_tokens_and_context_limit(lively):
    model, tokenizer = lively
    prompt = prompts_of(tokenizer)[0]
    assert len(generate(model, [prompt], max_new_tokens=3, eos_token_id=-1)[0].tokens) == 3
    too_long = [1] * (model.config.max_position_embeddings - 2)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        generate(model, [too_long], max_new_tokens=3)


def test_score_equals_full_forward(lively):
    model, tokenizer = lively
    prompts = prompts_of(tokenizer)
    requests = [(prompts[0], [5, 6, 7]), (prompts[1], [9]), (prompts[1], [10]), (prompts[2], [11, 12])]
    results = continuation_logprobs(model, requests, batch_size=2)
    for (context, continuation), values in zip(requests, results):
        with torch.no_grad():
            logits = model(torch.tensor([context + continuation]))[0]
        positions = torch.arange(len(context) - 1, len(context) + len(continuation) - 1)
        expected = torch.log_softmax(logits[positions], -1)[torch.arange(len(continuation)), continuation]
        assert torch.tensor(values) == pytest.approx(expected, abs=1e-4)


def test_cli(tiny_checkpoint):
    result = subprocess.run([sys.executable, "sample.py", "--model", str(tiny_checkpoint), "--prompt",
                             "Question: 2 + 3?\\nAnswer:", "--n", "2", "--temperature", "1", "--max-new-tokens", "8"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "sample 1" in result.stdout and "tokens/s" in result.stdout
    bad = subprocess.run([sys.executable, "sample.py", "--model", "/no/such/dir", "--prompt", "x"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "not a checkpoint" in bad.stderr


@pytest.mark.slow
def test_compiled_decode_step_gives_the_same_tokens_and_keeps_its_cache(lively):
    """torch.compile of the fixed-shape decode step (inductor; CUDA graphs on a GPU) changes nothing. Calls
    with other prompt lengths or fewer rows use views of one cache, and a shape seen before compiles nothing."""
    from torch._dynamo.utils import counters
    from infrastructure import compiled as compiled_step
    model, tokenizer = lively
    prompts = prompts_of(tokenizer)
    calls = [prompts, [prompts[1], prompts[0][:4], prompts[2]], prompts[1:], prompts]  # P varies, then rows
    caches, graphs = [], []
    for call in calls:
        eager = generate(model, call, max_new_tokens=12, eos_token_id=-1)
        compiled = generate(model, call, max_new_tokens=12, eos_token_id=-1, compile=True)
        caches.append(compiled_step.COMPILED[model].cache)
        graphs.append(counters["stats"]["unique_graphs"])
        for prompt, a, b in zip(call, eager, compiled):
            _, margins = greedy_without_cache(model, prompt, 12)
            assert agree_while_clear(b.tokens, a.tokens, margins)
    assert all(cache is caches[0] for cache in caches)  # one allocation throughout
    assert graphs[0] == graphs[1] < graphs[2] == graphs[3]  # new rows compile once; a known shape reuses its step
    # more rows and a longer prompt grow the cache; its length is rounded up to a power of two, but never past
    # the context (the forward does not read the context, so lowering it here changes nothing else)
    longer = prompts + [[(7 * i) % 500 + 5 for i in range(250)]]
    context, model.config.max_position_embeddings = model.config.max_position_embeddings, 300
    try:
        eager = generate(model, longer, max_new_tokens=12, eos_token_id=-1)
        compiled = generate(model, longer, max_new_tokens=12, eos_token_id=-1, compile=True)
    finally:
        model.config.max_position_embeddings = context
    assert compiled_step.COMPILED[model].cache.keys[0].shape[::2] == (4, 300)
    for prompt, a, b in zip(longer, eager, compiled):
        _, margins = greedy_without_cache(model, prompt, 12)
        assert agree_while_clear(b.tokens, a.tokens, margins)
    # the compiled step reads the weights as they are now (training changes them in place between samplings):
    # four short prompts take the (4 rows, 300 slots) shape compiled above, before the weights change
    four = prompts + [prompts[0][:4]]
    before = generate(model, four, max_new_tokens=12, eos_token_id=-1)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(-1)
    try:
        changed = generate(model, four, max_new_tokens=12, eos_token_id=-1)
        compiled = generate(model, four, max_new_tokens=12, eos_token_id=-1, compile=True)
        margins = [greedy_without_cache(model, prompt, 12)[1] for prompt in four]
    finally:
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.mul_(-1)
    assert [c.tokens for c in changed] != [c.tokens for c in before]  # the change shows in the greedy text
    for a, b, margin in zip(changed, compiled, margins):
        assert agree_while_clear(b.tokens, a.tokens, margin)  # the compiled step follows the new weights
    # n samples per prompt, their prefill copied into the group's rows: the compiled step samples the same
    sampled = dict(max_new_tokens=8, eos_token_id=-1, n=3, temperature=1.0, seed=5)
    expected = generate(model, prompts, **sampled)
    actual = generate(model, prompts, compile=True, **sampled)
    assert [c.tokens for c in actual] == [c.tokens for c in expected]


def test_score_refuses_nan_log_probabilities(tiny_checkpoint):
    """NaN log-likelihoods would make TruthfulQA's argmax pick the first choice, always the true one (MC1 = 1)."""
    model = Qwen3.from_pretrained(tiny_checkpoint)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite log-probabilities"):
        continuation_logprobs(model, [([1, 2, 3], [4, 5])])
