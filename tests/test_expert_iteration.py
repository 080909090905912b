"""Tests for nano_reasoner/expert_iteration.py: the filter, the data mix, and one round on a toy policy."""
import pytest
import torch

from nano_reasoner import tasks
from nano_reasoner.data import Example
from nano_reasoner.expert_iteration import EIConfig, KeptAttempt, ei_round, filter_verified, finetune, mixed_batches
from nano_reasoner.model import GPT, GPTConfig, configure_optimizer
from nano_reasoner.sampling import generate, sequence_logprobs
from nano_reasoner.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    problems = tasks.generate("arith", 200, seed=0) + tasks.generate("countdown", 100, seed=0, difficulties=(3, 4))
    texts = [tasks.full_trace(p) for p in problems] + [tasks.full_trace(p, kind="search") for p in problems[200:]]
    return train_tokenizer(texts, str(tmp_path_factory.mktemp("tok") / "tok.model"))


def as_written(steps):
    """Steps in reading order -> as the model writes them (numbers in the thinking units digit first)."""
    return [tasks.flip_digits(step) for step in steps]


COUNTDOWN = tasks.Problem("countdown", "3 7 25 19 -> 63", 4)
# 25-19 is 6, not 9; then 7*9 = 63 "makes" the target after bad arithmetic: the reward hack
HACK = tasks.format_completion(as_written(["25-19=9;3 7 9", "7*9=63;3 63"]), "7*(25-19)")


def sample(tokenizer, problem, text, with_eos=True):
    """One attempt as ei_round's stage (1) returns it: (completion tokens, text, verdict)."""
    tokens = tokenizer.encode(text) + ([tokenizer.eos_id] if with_eos else [])
    return tokens, text, tasks.verify(problem, text)


def test_filter_keeps_only_verified_distinct_attempts_at_most_m_shortest_first(tokenizer):
    problem = tasks.Problem("countdown", "3 7 25 19 -> 45", 4)
    right = tasks.format_completion(*tasks.trace(problem, kind="straight"))
    right_search = tasks.format_completion(*tasks.trace(problem, kind="search"))
    wrong = tasks.format_completion(as_written(["25-19=6;3 7 6", "7*6=42;3 42"]), "7*6")
    assert tasks.verify(problem, right).is_correct and tasks.verify(problem, right_search).is_correct
    samples = [sample(tokenizer, problem, text) for text in (right_search, wrong, right, right, right_search)]
    samples.append(sample(tokenizer, problem, right, with_eos=False))  # cut by the budget: never kept
    prompt = tokenizer.encode_prompt(tasks.format_prompt(problem))
    kept = filter_verified([problem], [prompt], [samples], keep_per_problem=5, eos_id=tokenizer.eos_id)
    # two distinct right attempts (the duplicates and the one without eos dropped), shortest first
    expected = sorted({tuple(tokenizer.encode(t)) for t in (right, right_search)}, key=len)
    assert [k.tokens for k in kept] == [prompt + list(t) + [tokenizer.eos_id] for t in expected]
    assert all(k.prompt_length == len(prompt) for k in kept)
    one = filter_verified([problem], [prompt], [samples], keep_per_problem=1, eos_id=tokenizer.eos_id)
    assert [k.tokens for k in one] == [kept[0].tokens]


def test_reward_hack_is_never_kept(tokenizer):
    assert tasks.verify(COUNTDOWN, HACK).is_well_formed and not tasks.verify(COUNTDOWN, HACK).is_correct
    prompt = tokenizer.encode_prompt(tasks.format_prompt(COUNTDOWN))
    right = tasks.format_completion(*tasks.trace(COUNTDOWN, kind="straight"))
    samples = [sample(tokenizer, COUNTDOWN, HACK), sample(tokenizer, COUNTDOWN, right)]
    kept = filter_verified([COUNTDOWN], [prompt], [samples], keep_per_problem=2, eos_id=tokenizer.eos_id)
    assert [k.tokens for k in kept] == [prompt + samples[1][0]]  # the honest solution only


def numbered_examples(prefix, n):
    """n toy Examples whose first token is prefix, so a test can tell replayed ones from kept ones."""
    return [Example([prefix, i, 0], 1) for i in range(n)]


@pytest.mark.parametrize("replay_share, expected_replay", [(0.25, 4), (0.5, 8), (0.0, 0), (1.0, 16)])
def test_batches_mix_kept_attempts_and_replay_as_the_flag_says(replay_share, expected_replay):
    kept = [KeptAttempt(None, [7, i, 0], 1) for i in range(10)]
    replay = numbered_examples(9, 30)
    batch_list = mixed_batches(kept, replay, batch_size=16, replay_share=replay_share, steps=5, seed=0)
    assert len(batch_list) == 5
    for batch in batch_list:
        assert len(batch) == 16
        assert sum(ex.tokens[0] == 9 for ex in batch) == expected_replay
    # the kept attempts are drawn without replacement until all are used: 10 distinct in the first 10 draws
    if expected_replay == 4:
        first_kept = [tuple(ex.tokens) for ex in batch_list[0] if ex.tokens[0] == 7]
        assert len(set(first_kept[:10])) == 10


def test_without_kept_attempts_every_batch_is_replay_and_replay_is_required():
    batch_list = mixed_batches([], numbered_examples(9, 5), batch_size=4, replay_share=0.25, steps=3, seed=0)
    assert all(ex.tokens[0] == 9 for batch in batch_list for ex in batch)
    with pytest.raises(ValueError):
        mixed_batches([], [], batch_size=4, replay_share=0.25, steps=3, seed=0)


def test_same_seed_gives_the_same_batches():
    kept = [KeptAttempt(None, [7, i, 0], 1) for i in range(10)]
    first = mixed_batches(kept, numbered_examples(9, 30), 8, 0.5, 4, seed=3)
    again = mixed_batches(kept, numbered_examples(9, 30), 8, 0.5, 4, seed=3)
    assert [[ex.tokens for ex in b] for b in first] == [[ex.tokens for ex in b] for b in again]


def tiny_policy(tokenizer, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32))


@torch.no_grad()
def kept_logprob(model, kept):
    sequences = [k.tokens for k in kept]
    logprobs, mask = sequence_logprobs(model, sequences, [k.prompt_length for k in kept])
    return float((logprobs * mask).sum() / len(kept))


TOY_PROBLEM = tasks.Problem("arith", "2+3", 1)


def toy_policy_and_optimizer(tokenizer, config):
    """A tiny GPT taught TOY_PROBLEM's trace until it writes it most of the time, and its optimizer."""
    right = tasks.format_completion(*tasks.trace(TOY_PROBLEM, "digits"))
    prompt = tokenizer.encode_prompt(tasks.format_prompt(TOY_PROBLEM))
    trace = Example(prompt + tokenizer.encode(right) + [tokenizer.eos_id], len(prompt))
    policy = tiny_policy(tokenizer)
    optimizer = configure_optimizer(policy, lr=3e-3, weight_decay=0.0, betas=(0.9, 0.95))
    finetune(policy, optimizer, [[trace]] * 60, tokenizer, config, lr=3e-3)
    return policy, optimizer


def test_a_round_on_a_toy_policy_keeps_its_right_attempts_and_raises_their_logprob(tokenizer):
    problem = TOY_PROBLEM
    config = EIConfig(samples_per_problem=8, keep_per_problem=2, max_new_tokens=40, finetune_steps=60, batch_size=4,
                      replay_share=0.0, decision_weight=1.0)
    policy, optimizer = toy_policy_and_optimizer(tokenizer, config)
    before_policy = tiny_policy(tokenizer)
    before_policy.load_state_dict(policy.state_dict())

    config.finetune_steps = 5
    summary, kept, per_problem = ei_round(policy, optimizer, tokenizer, [problem], [], config, lr=1e-3, seed=0)
    assert summary["round_samples"] == 8 and len(per_problem) == 1 and len(per_problem[0]) == 8
    n_right = sum(v.is_correct for _, _, v in per_problem[0])
    assert n_right >= 1 and summary["arith_acc"] == pytest.approx(n_right / 8)
    assert 1 <= len(kept) <= 2 and summary["kept"] == len(kept)
    assert all(tasks.verify(problem, tokenizer.decode(k.tokens[k.prompt_length:])).is_correct for k in kept)
    policy.eval()
    assert kept_logprob(policy, kept) > kept_logprob(before_policy.eval(), kept)


def generate_greedy(policy, tokenizer, prompt):
    result = generate(policy.eval(), [prompt], 40, temperature=0.0, stop_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id)
    return result.row_tokens(0)


def test_focus_on_failures_keeps_a_right_greedy_answer_and_samples_only_the_wrong_ones(tokenizer):
    config = EIConfig(samples_per_problem=4, keep_per_problem=2, max_new_tokens=40, finetune_steps=1, batch_size=2,
                      replay_share=0.0, decision_weight=1.0, focus_failures=True)
    policy, optimizer = toy_policy_and_optimizer(tokenizer, config)
    other = tasks.Problem("arith", "7*8", 1)  # the toy policy writes 2+3's trace: its greedy answer is wrong here
    prompt = tokenizer.encode_prompt(tasks.format_prompt(TOY_PROBLEM))
    greedy_tokens = generate_greedy(policy, tokenizer, prompt)
    summary, kept, per_problem = ei_round(policy, optimizer, tokenizer, [TOY_PROBLEM, other], [], config, lr=0.0,
                                          seed=0)
    assert len(per_problem[0]) == 1 and per_problem[0][0][0] == greedy_tokens  # the greedy answer, not sampled
    assert per_problem[0][0][2].is_correct and len(per_problem[1]) == 4       # K samples where greedy was wrong
    assert summary["arith_greedy"] == 0.5 and summary["round_samples"] == 2 + 4
    assert kept[0].tokens == prompt + greedy_tokens                             # the anchor
    assert all(tasks.verify(k.problem, tokenizer.decode(k.tokens[k.prompt_length:])).is_correct for k in kept)
