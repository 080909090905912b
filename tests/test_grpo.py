"""Tests for nano_reasoner/grpo.py: advantages, the loss against a hand computation, one update, reward hacking."""
import math

import pytest
import torch

from nano_reasoner import tasks
from nano_reasoner.grpo import (GRPOConfig, exact_step_rewards, group_advantages, grpo_loss, grpo_step, is_reward_hack,
                                process_advantages, rule_rewards, step_end_positions)
from nano_reasoner.model import GPT, GPTConfig, configure_optimizer
from nano_reasoner.sampling import sequence_logprobs
from nano_reasoner.tokenizer import train_tokenizer


# ---------------------------------------------------------------------------------------------- (3) advantages

def test_grpo_advantages_are_group_normalised():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0,     # group 0: two right, two wrong
                            1.1, 0.1, 0.1, 0.1,     # group 1: one right (with format rewards)
                            0.1, 0.1, 0.1, 0.1])    # group 2: all the same
    advantages = group_advantages(rewards, group_size=4, eps=0.0 + 1e-12).view(3, 4)
    # group 0: mean 0.5, population std 0.5 -> +-1
    assert torch.allclose(advantages[0], torch.tensor([1.0, -1.0, -1.0, 1.0]))
    # group 1: mean 0.35, std sqrt(0.1875) -> (0.75, -0.25, -0.25, -0.25) / 0.4330
    std = math.sqrt(0.1875)
    assert torch.allclose(advantages[1], torch.tensor([0.75, -0.25, -0.25, -0.25]) / std, atol=1e-5)
    assert torch.allclose(advantages.sum(dim=1), torch.zeros(3), atol=1e-5)  # mean zero in every group


def test_dr_grpo_advantages_are_not_divided_by_the_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0,   # mean 0.5
                            1.1, 0.1, 0.1, 0.1,   # mean 0.35: one right in four is not scaled up by 1 / 0.433
                            0.1, 0.1, 0.1, 0.1])
    advantages = group_advantages(rewards, group_size=4, divide_by_std=False).view(3, 4)
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.75, -0.25, -0.25, -0.25], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(advantages, expected, atol=1e-6)
    assert torch.equal(advantages[2], torch.zeros(4))  # equal rewards: exactly zero, as with the std


def test_equal_rewards_give_zero_advantage():
    rewards = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    assert torch.equal(group_advantages(rewards, group_size=3), torch.zeros(6))
    format_only = torch.full((8,), 0.1)  # the mean of eight 0.1s carries a rounding error: still exactly zero
    assert torch.equal(group_advantages(format_only, group_size=8), torch.zeros(8))


def test_process_advantages_sum_normalised_rewards_of_later_steps():
    # one group of two completions; step scores 1, 0 (row 0, steps end at tokens 1 and 3) and 0.5 (row 1, token 0)
    advantages = process_advantages([[1.0, 0.0], [0.5]], [[1, 3], [0]], group_size=2, num_tokens=5, eps=0.0)
    mean, std = 0.5, math.sqrt(((0.5) ** 2 + (0.5) ** 2 + 0.0) / 3)
    high, low = (1.0 - mean) / std, (0.0 - mean) / std
    expected = torch.tensor([[high + low, high + low, low, low, 0.0],
                             [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(advantages, expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------- (5) loss

LOGPROBS = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, 0.0]])
OLD = torch.tensor([[-1.1, -1.5, -0.5], [-0.3, -0.9, 0.0]])
REF = torch.tensor([[-0.9, -2.0, -1.0], [-0.5, -1.0, 0.0]])
MASK = torch.tensor([[True, True, True], [True, True, False]])
ADVANTAGES = torch.tensor([1.0, -2.0])


def hand_objective_terms(clip_eps, kl_beta):
    """Per-token GRPO terms written out one scalar at a time (rows, then tokens), only for real tokens."""
    rows = []
    for i in range(2):
        terms = []
        for t in range(3):
            if not MASK[i, t]:
                continue
            logp, old, ref, adv = (float(LOGPROBS[i, t]), float(OLD[i, t]), float(REF[i, t]), float(ADVANTAGES[i]))
            rho = math.exp(logp - old)
            clipped = min(max(rho, 1 - clip_eps), 1 + clip_eps)
            kl = math.exp(ref - logp) - (ref - logp) - 1
            terms.append(min(rho * adv, clipped * adv) - kl_beta * kl)
        rows.append(terms)
    return rows


@pytest.mark.parametrize("loss_norm", ["sequence", "token"])
def test_loss_equals_hand_computation(loss_norm):
    clip_eps, kl_beta = 0.2, 0.1
    rows = hand_objective_terms(clip_eps, kl_beta)
    if loss_norm == "sequence":
        expected = -sum(sum(terms) / len(terms) for terms in rows) / len(rows)
    else:
        expected = -sum(sum(terms) for terms in rows) / sum(len(terms) for terms in rows)
    loss, stats = grpo_loss(LOGPROBS, OLD, REF, ADVANTAGES, MASK, clip_eps, kl_beta, loss_norm)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # ratios exp(0.1), exp(-0.5), 1, 1, exp(-0.3): two of five real tokens lie outside [0.8, 1.2]; the last one has
    # A < 0 and rho < 0.8, so min() takes the clipped side 0.8 * A
    assert stats["clip_frac"] == pytest.approx(2 / 5)


def test_clipping_uses_the_pessimistic_side():
    # rho = e^0.5 = 1.65 with A > 0: clipped to 1.2; rho = e^-0.5 = 0.61 with A < 0: clipped to 0.8 (min picks it)
    logprobs = torch.tensor([[0.5], [-0.5]])
    zeros = torch.zeros(2, 1)
    loss, _ = grpo_loss(logprobs, zeros, logprobs, torch.tensor([1.0, -1.0]), torch.ones(2, 1, dtype=torch.bool),
                        clip_eps=0.2, kl_beta=0.0, loss_norm="token")
    assert loss.item() == pytest.approx(-(1.2 * 1.0 + 0.8 * -1.0) / 2, abs=1e-6)


def test_k3_kl_is_zero_at_the_reference_and_positive_elsewhere():
    mask = torch.ones(1, 3, dtype=torch.bool)
    logprobs = torch.tensor([[-1.0, -0.2, -3.0]])
    _, at_reference = grpo_loss(logprobs, logprobs, logprobs, torch.zeros(1), mask, 0.2, 1.0, "token")
    assert at_reference["kl"] == 0.0
    loss, away = grpo_loss(logprobs, logprobs, logprobs - 0.7, torch.zeros(1), mask, 0.2, 1.0, "token")
    assert away["kl"] == pytest.approx(math.exp(-0.7) + 0.7 - 1, abs=1e-6)
    assert loss.item() == pytest.approx(away["kl"], abs=1e-6)  # A = 0: the loss is beta * KL


def test_sequence_normalisation_weights_short_completions_more():
    # one short and one long completion, both with advantage -1: per token, the short one is pushed down harder
    logprobs = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[True, False, False, False], [True, True, True, True]])
    for loss_norm, short_weight, long_weight in (("sequence", 1 / 2, 1 / 8), ("token", 1 / 5, 1 / 5)):
        loss, _ = grpo_loss(logprobs, logprobs.detach(), logprobs.detach(), torch.tensor([-1.0, -1.0]), mask,
                            0.2, 0.0, loss_norm)
        (gradient,) = torch.autograd.grad(loss, logprobs)
        # d loss / d logp = -A * rho * weight = weight at rho = 1
        assert gradient[0, 0].item() == pytest.approx(short_weight)
        assert gradient[1, 0].item() == pytest.approx(long_weight)


# ---------------------------------------------------------------------------------------------- one update

def test_one_update_raises_the_logprob_of_rewarded_samples():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=16, block_size=16, n_layer=1, n_head=2, n_embd=16))
    reference = GPT(model.config)
    reference.load_state_dict(model.state_dict())
    prompt = [1, 5, 6]
    completions = [[7, 8, 2], [9, 10, 2], [7, 11, 2], [12, 8, 2]]  # a group of G = 4 for one prompt
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    sequences, prompt_lengths = [prompt + c for c in completions], [len(prompt)] * 4

    def total_logprobs(policy):
        with torch.no_grad():
            logprobs, _ = sequence_logprobs(policy, sequences, prompt_lengths)
        return logprobs.sum(dim=1)  # (4,)

    before = total_logprobs(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    logprobs, mask = sequence_logprobs(model, sequences, prompt_lengths)
    with torch.no_grad():
        ref_logprobs, _ = sequence_logprobs(reference, sequences, prompt_lengths)
    loss, _ = grpo_loss(logprobs, logprobs.detach(), ref_logprobs, group_advantages(rewards, 4), mask,
                        0.2, 0.04, "sequence")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    change = total_logprobs(model) - before
    assert change[0] > 0 and change[3] > 0   # rewarded samples became more likely
    assert change[1] < 0 and change[2] < 0   # unrewarded ones less likely


# ---------------------------------------------------------------------------------------------- (2) rewards

def as_written(steps):
    """Steps in reading order -> as the model writes them (numbers in the thinking units digit first)."""
    return [tasks.flip_digits(step) for step in steps]


COUNTDOWN = tasks.Problem("countdown", "3 7 25 19 -> 63", 4)
# 25-19 is 6, not 9; then 7*9 = 63 "makes" the target after bad arithmetic
HACK = tasks.format_completion(as_written(["25-19=9;3 7 9", "7*9=63;3 63"]), "7*(25-19)")
# the same bad steps, followed by an answer expression that is right: the steps still fail
HACK_RIGHT_ANSWER = tasks.format_completion(as_written(["25-19=9;3 7 9", "7*9=63;3 63"]), "7*(25-19+3)")


def test_countdown_reward_hack_earns_no_accuracy_reward():
    assert not tasks.verify(COUNTDOWN, HACK).is_correct
    rewards, is_correct, verdicts = rule_rewards([COUNTDOWN], [HACK], group_size=1, format_weight=0.0)
    assert rewards.tolist() == [0.0] and is_correct.tolist() == [False]
    rewards_with_format, _, _ = rule_rewards([COUNTDOWN], [HACK], group_size=1, format_weight=0.1)
    assert rewards_with_format.tolist() == [pytest.approx(0.1)]  # the format reward only
    assert is_reward_hack(COUNTDOWN, verdicts[0], HACK)


def test_right_answer_after_illegal_steps_earns_no_accuracy_reward():
    verdict = tasks.verify(COUNTDOWN, tasks.format_completion([], "7*(25-19+3)"))
    assert verdict.is_correct  # the answer alone is a solution...
    rewards, _, verdicts = rule_rewards([COUNTDOWN], [HACK_RIGHT_ANSWER], group_size=1, format_weight=0.0)
    assert rewards.tolist() == [0.0]  # ...but the trace that leads to it is not
    assert is_reward_hack(COUNTDOWN, verdicts[0], HACK_RIGHT_ANSWER)


def test_honest_mistake_is_not_called_a_reward_hack():
    # legal steps that end at 45, then an answer that claims the target: wrong, but the answer alone is also wrong
    problem = tasks.Problem("countdown", "3 7 25 19 -> 45", 4)
    wrong_answer = tasks.format_completion(as_written(["25-19=6;3 7 6", "7*6=42;3 42", "42+3=45;45"]), "7*6")
    verdict = tasks.verify(problem, wrong_answer)
    assert not verdict.is_correct and not is_reward_hack(problem, verdict, wrong_answer)


def test_correct_and_malformed_rewards():
    problem = tasks.Problem("arith", "2+3*4", 2)
    correct = tasks.format_completion(as_written(["3*4=12;2+12", "2+12=14;14"]), "14")
    unfinished = as_written(["3*4=12;2+12"])[0] + "\n"
    rewards, is_correct, _ = rule_rewards([problem], [correct, unfinished], group_size=2, format_weight=0.1)
    assert rewards.tolist() == [pytest.approx(1.1), 0.0] and is_correct.tolist() == [True, False]


def test_exact_step_rewards_blame_the_step_that_went_wrong(tokenizer):
    # hand-written: the hack's first step is wrong arithmetic, so every later step end scores 0 as well
    good = tasks.format_completion(as_written(["25-19=6;3 7 6", "7*6=42;3 42", "3*42=126;126"]), "3*7*(25-19)")
    problem = tasks.Problem("countdown", "3 7 25 19 -> 126", 4)
    rows = [(problem, good), (COUNTDOWN, HACK)]
    prompts = [tokenizer.encode_prompt(tasks.format_prompt(p)) for p, _ in rows]
    completions = [tokenizer.encode(text) + [tokenizer.eos_id] for _, text in rows]
    rewards = exact_step_rewards(tokenizer)([p for p, _ in rows], prompts, completions)
    # per step end: the step lines, the </think> line, then eos after the answer (the outcome)
    assert rewards == [[1, 1, 1, 1, 1], [0, 0, 0, 0]]
    assert [len(r) for r in rewards] == [len(step_end_positions(c, tokenizer)) for c in completions]


# ---------------------------------------------------------------------------------------------- one batch, end to end

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    problems = tasks.generate("arith", 200, seed=0) + tasks.generate("countdown", 100, seed=0, difficulties=(3, 4))
    return train_tokenizer([tasks.full_trace(p) for p in problems], str(tmp_path_factory.mktemp("tok") / "tok.model"))


def random_policy_and_reference(tokenizer):
    """A tiny untrained policy and a reference that starts as its exact copy (as train_rl.py makes them)."""
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)
    policy, reference = GPT(config), GPT(config)
    reference.load_state_dict(policy.state_dict())
    return policy, reference


def test_grpo_step_samples_one_group_per_problem_and_reports_statistics(tokenizer):
    torch.manual_seed(0)
    policy, reference = random_policy_and_reference(tokenizer)
    reference_before = {name: tensor.clone() for name, tensor in reference.state_dict().items()}
    optimizer = configure_optimizer(policy, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.99))
    problems = tasks.generate("arith", 3, seed=5, difficulties=(1,))
    grpo_config = GRPOConfig(group_size=4, max_new_tokens=24, inner_updates=2)
    summary, batch, hacks = grpo_step(policy, reference, optimizer, tokenizer, problems, grpo_config, seed=0)
    assert len(batch.completions) == len(hacks) == 12
    assert batch.lengths.max() <= 24
    # entropy estimate: mean negative log-prob of the sampled tokens, positive for a sampling policy
    assert summary["entropy"] > 0 and summary["kl"] >= 0 and 0 <= summary["clip_frac"] <= 1
    assert summary["response_len"] == pytest.approx(float(batch.lengths.float().mean()))
    assert summary["sample_s"] > 0 and summary["update_s"] > 0
    assert all(torch.equal(reference_before[name], tensor) for name, tensor in reference.state_dict().items())


def test_groups_with_equal_rewards_are_left_out_of_the_update(tokenizer):
    torch.manual_seed(0)
    policy, reference = random_policy_and_reference(tokenizer)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    before = [p.clone() for p in policy.parameters()]
    # a random policy never writes a well-formed trace: every reward is 0, every group uniform, nothing to learn
    summary, _, _ = grpo_step(policy, reference, optimizer, tokenizer, tasks.generate("arith", 2, seed=5),
                              GRPOConfig(group_size=3, max_new_tokens=16), seed=0)
    assert summary["reward"] == 0.0 and summary["kept_frac"] == 0.0
    assert all(torch.equal(b, p) for b, p in zip(before, policy.parameters()))


def test_process_rewards_reach_the_loss_through_a_step_scorer(tokenizer):
    torch.manual_seed(0)
    policy, reference = random_policy_and_reference(tokenizer)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    problems = tasks.generate("countdown", 2, seed=5, difficulties=(3,))
    seen = {}

    def step_scorer(row_problems, prompts, completions):
        # a stand-in PRM: the first step of every completion is good, every later one bad
        seen["rows"] = len(completions)
        seen["problems"] = row_problems
        ends = [step_end_positions(tokens, tokenizer) for tokens in completions]
        return [[1.0 if j == 0 else 0.0 for j in range(len(row))] for row in ends]

    # outcome rewards are all zero for a random policy, so only the process advantages can move the weights
    grpo_config = GRPOConfig(group_size=3, max_new_tokens=24, inner_updates=1, kl_beta=0.0, process_weight=1.0)
    before = [p.clone() for p in policy.parameters()]
    summary, _, _ = grpo_step(policy, reference, optimizer, tokenizer, problems, grpo_config, seed=0,
                              step_scorer=step_scorer)
    assert seen["rows"] == 6 and summary["acc"] == 0.0
    assert seen["problems"] == [problems[0]] * 3 + [problems[1]] * 3  # one problem per row, prompt-major
    assert any(not torch.equal(b, p) for b, p in zip(before, policy.parameters()))


def test_step_end_positions_stop_at_the_first_eos(tokenizer):
    newline, eos = tokenizer.step_end_id, tokenizer.eos_id
    assert step_end_positions([9, newline, 9, 9, newline, 9, eos, newline], tokenizer) == [1, 4, 6]
