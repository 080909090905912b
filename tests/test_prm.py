"""Tests for nano_reasoner/prm.py: where the verifier reads, its labels (exact and Monte-Carlo), aggregation, training."""
import math

import pytest
import torch
import torch.nn as nn

from nano_reasoner import prm, tasks
from nano_reasoner.checkpoint import save_checkpoint
from nano_reasoner.cli import UserError
from nano_reasoner.model import GPT, GPTConfig
from nano_reasoner.tasks import expr
from nano_reasoner.tokenizer import train_tokenizer



def as_written(steps):
    """Steps in reading order -> as the model writes them (numbers in the thinking units digit first)."""
    return [tasks.flip_digits(step) for step in steps]


ARITH = tasks.Problem("arith", "2+3*4", 2)           # 14
GOOD_STEPS, GOOD_ANSWER = as_written(["3*4=12;2+12", "2+12=14;14"]), "14"
SLIP_STEPS, SLIP_ANSWER = as_written(["3*4=12;2+12", "2+12=15;15"]), "15"   # step 2 is wrong
EARLY_STEPS, EARLY_ANSWER = as_written(["3*4=13;2+13", "2+13=15;15"]), "15"  # step 1 is wrong, step 2 is right from it


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    problems = tasks.generate("arith", 300, seed=0) + tasks.generate("countdown", 150, seed=0, difficulties=(3, 4))
    return train_tokenizer([tasks.full_trace(p) for p in problems], str(tmp_path_factory.mktemp("tok") / "tok.model"))


def encode_trace(tokenizer, problem, steps, answer, has_eos=True):
    prompt = tokenizer.encode_prompt(tasks.format_prompt(problem))
    completion = tokenizer.encode(tasks.format_completion(steps, answer)) + ([tokenizer.eos_id] if has_eos else [])
    return prompt, completion


def random_policy(tokenizer, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=160, n_layer=2, n_head=2, n_embd=32))


# ----------------------------------------------------------------------------------------------------------------------
# where the verifier reads

def test_scoring_positions_are_every_newline_then_eos(tokenizer):
    prompt, completion = encode_trace(tokenizer, ARITH, GOOD_STEPS, GOOD_ANSWER)
    positions = prm.scoring_positions(tokenizer, completion)
    # two step lines, the </think> line, then eos after the answer
    assert [completion[p] for p in positions] == [tokenizer.step_end_id] * 3 + [tokenizer.eos_id]
    assert positions[-1] == len(completion) - 1
    assert prm.scoring_positions(tokenizer, completion + [tokenizer.step_end_id]) == positions, "nothing after eos"


def test_head_scores_line_up_with_step_ends_and_ignore_padding(tokenizer):
    verifier = prm.verifier_from_policy(random_policy(tokenizer))
    torch.nn.init.normal_(verifier.scalar_head.weight, std=1.0)
    short = encode_trace(tokenizer, ARITH, GOOD_STEPS, GOOD_ANSWER)
    unfinished = encode_trace(tokenizer, ARITH, EARLY_STEPS, EARLY_ANSWER, has_eos=False)
    four_ops = tasks.Problem("arith", "12+34*56-7*8", 4)
    longer = encode_trace(tokenizer, four_ops, *tasks.solve(four_ops))
    batch = [short, unfinished, longer]
    scores = prm.score_steps(verifier, tokenizer, [p for p, _ in batch], [c for _, c in batch])
    for (prompt, completion), row_scores in zip(batch, scores):
        # the reference: the whole unpadded sequence alone, read at its step_end and eos tokens
        raw = verifier.scalar_scores(torch.tensor([prompt + completion]))[0]  # (T,)
        expected = [torch.sigmoid(raw[len(prompt) + j]).item()
                    for j, token in enumerate(completion) if token in (tokenizer.step_end_id, tokenizer.eos_id)]
        assert row_scores == pytest.approx(expected, abs=1e-5)
    assert [len(s) for s in scores] == [4, 3, 6]  # steps + </think> line (+ eos when the trace has one)


# ----------------------------------------------------------------------------------------------------------------------
# exact labels

@pytest.mark.parametrize("steps, answer, expected", [
    (GOOD_STEPS, GOOD_ANSWER, [1, 1, 1, 1]),
    (SLIP_STEPS, SLIP_ANSWER, [1, 0, 0, 0]),
    (EARLY_STEPS, EARLY_ANSWER, [0, 0, 0, 0]),   # step 2 is right arithmetic from a wrong state: still 0
])
def test_exact_labels_on_hand_written_arith_traces(tokenizer, steps, answer, expected):
    prompt, completion = encode_trace(tokenizer, ARITH, steps, answer)
    trace = prm.label_trace(tokenizer, ARITH, prompt, completion)
    assert trace.exact == expected  # step 1, step 2, the </think> line, eos (the outcome)
    assert trace.outcome == (answer == GOOD_ANSWER)
    assert trace.num_step_lines == 2


def test_unfinished_trace_has_no_eos_label_and_a_false_outcome(tokenizer):
    prompt, completion = encode_trace(tokenizer, ARITH, GOOD_STEPS, GOOD_ANSWER, has_eos=False)
    trace = prm.label_trace(tokenizer, ARITH, prompt, completion)
    assert trace.exact == [1, 1, 1] and trace.outcome is False


def test_exact_labels_on_a_countdown_dead_end(tokenizer):
    problem = tasks.Problem("countdown", "2 3 5 -> 25", 3)
    good = encode_trace(tokenizer, problem, as_written(["2+3=5;5 5", "5*5=25;25"]), "(2+3)*5")
    # legal arithmetic, but {5, 1} can never make 25: every later prefix is unsound too
    dead_end = encode_trace(tokenizer, problem, as_written(["3-2=1;5 1", "5*1=5;5"]), "5*(3-2)")
    assert prm.label_trace(tokenizer, problem, *good).exact == [1, 1, 1, 1]
    assert prm.label_trace(tokenizer, problem, *dead_end).exact == [0, 0, 0, 0]


# ----------------------------------------------------------------------------------------------------------------------
# Monte-Carlo labels

class AnswersFromLastState(nn.Module):
    """A mock policy the real sampler can run. Whatever arith prefix it is given, it closes the thinking and answers
    the value of the expression that the last step left (the problem's, when there is no step). So every rollout
    from a sound prefix is correct and none from an unsound one: its Monte-Carlo labels must equal the exact ones.
    It sees each row's whole history because it stores token ids in the KV cache, which the sampler forks and
    compacts row by row."""

    def __init__(self, tokenizer, block_size=96):
        super().__init__()
        self.config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=2)
        self.tokenizer = tokenizer
        self.anchor = nn.Parameter(torch.zeros(1))  # the sampler reads device and dtype from the parameters

    def next_token(self, history):
        text = self.tokenizer.decode(history)
        prompt, completion = text.split(tasks.THINK + "\n", 1)
        if tasks.END_THINK + "\n" not in completion:
            return self.tokenizer.step_end_id if completion.endswith(tasks.END_THINK) else self.tokenizer.end_think_id
        thinking, answer_so_far = completion.split(tasks.END_THINK + "\n", 1)
        states = [tasks.flip_digits(line.split(";")[1]) for line in thinking.split("\n") if ";" in line]
        answer = str(expr.evaluate(expr.parse(states[-1] if states else prompt.split(": ", 1)[1].strip())))
        if answer_so_far == answer:
            return self.tokenizer.eos_id
        return self.tokenizer.encode(answer[len(answer_so_far)])[0]  # digits are single tokens

    def forward(self, idx, targets=None, *, positions=None, attn_mask=None, kv_cache=None):
        B, T = idx.shape
        token_ids = idx.float()[:, None, :, None].expand(B, 1, T, 2)  # (B, n_head, T, head_dim)
        history_ids, _ = kv_cache.append(0, token_ids, token_ids)     # (B, 1, pos + T, 2)
        kv_cache.advance(T)
        logits = torch.full((B, T, self.config.vocab_size), -1e4)
        for row in range(B):
            history = history_ids[row, 0, :, 0].long()[attn_mask[row]].tolist()
            logits[row, -1, self.next_token(history)] = 0.0  # one-hot after softmax: sampling is deterministic
        return logits, None


def test_monte_carlo_labels_equal_exact_labels_for_a_policy_that_finishes_from_the_state(tokenizer, monkeypatch):
    traces = [prm.label_trace(tokenizer, ARITH, *encode_trace(tokenizer, ARITH, steps, answer))
              for steps, answer in [(GOOD_STEPS, GOOD_ANSWER), (SLIP_STEPS, SLIP_ANSWER), (EARLY_STEPS, EARLY_ANSWER)]]
    sampler_calls, real_generate = [], prm.generate

    def counting_generate(*args, **kwargs):
        sampler_calls.append(kwargs["num_samples"])
        return real_generate(*args, **kwargs)
    monkeypatch.setattr(prm, "generate", counting_generate)
    rollouts = prm.monte_carlo_rollouts(AnswersFromLastState(tokenizer), tokenizer, traces, k=3)
    assert sampler_calls == [3], "all 9 prefixes go through one sampler call, forked 3 ways"
    for trace, trace_rollouts in zip(traces, rollouts):
        assert [len(r) for r in trace_rollouts] == [3, 3, 3, 3]
    assert prm.monte_carlo_labels(rollouts, k=3, hard=False) == [t.exact for t in traces]
    assert prm.monte_carlo_labels(rollouts, k=1, hard=True) == [t.exact for t in traces]


def test_monte_carlo_hard_and_soft_labels_from_rollouts():
    rollouts = [[[True, False, False, False], [False, False, False, False], [True, True, False, True]]]
    assert prm.monte_carlo_labels(rollouts, k=4, hard=False) == [[0.25, 0.0, 0.75]]
    assert prm.monte_carlo_labels(rollouts, k=4, hard=True) == [[1.0, 0.0, 1.0]]
    assert prm.monte_carlo_labels(rollouts, k=1, hard=True) == [[1.0, 0.0, 1.0]]
    assert prm.monte_carlo_labels(rollouts, k=2, hard=False) == [[0.5, 0.0, 1.0]]


# ----------------------------------------------------------------------------------------------------------------------
# aggregation and measurement

def test_aggregation_min_prod_last():
    step_scores = [0.9, 0.5, 0.8]
    assert prm.aggregate(step_scores, "min") == 0.5
    assert prm.aggregate(step_scores, "prod") == pytest.approx(0.36)
    assert prm.aggregate(step_scores, "last") == 0.8
    assert prm.aggregate(step_scores) == 0.5, "min is the default"
    assert prm.aggregate([], "min") == 0.0, "an unfinished first step has nothing to vouch for it"
    with pytest.raises(ValueError):
        prm.aggregate(step_scores, "mean")


def test_auroc_by_hand():
    assert prm.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # 3 of the 4 good-bad pairs are ordered right
    assert prm.auroc([0.5, 0.5, 0.9], [1, 0, 1]) == 0.75          # a tie counts half
    assert math.isnan(prm.auroc([0.2, 0.3], [1, 1]))


def test_within_problem_auroc_by_hand():
    scores = [[0.9, 0.2, 0.5], [0.3, 0.6, 0.6, 0.1], [0.4, 0.7]]
    labels = [[1, 0, 0], [1, 0, 1, 0], [1, 1]]
    # problem 1 ranks its one right sample first: 1.0. Problem 2, right {0.3, 0.6} against wrong {0.6, 0.1}:
    # 0.3 < 0.6 (0), 0.3 > 0.1 (1), a tie (1/2), 0.6 > 0.1 (1) -> 2.5 / 4. Problem 3 has no wrong sample: left out.
    assert prm.within_problem_auroc(scores, labels) == ((1.0 + 0.625) / 2, 2)
    # pooled, problem 3's right samples at 0.4 and 0.7 rank below problem 1's wrong 0.5 only in part: another number
    assert prm.auroc(sum(scores, []), sum(labels, [])) != (1.0 + 0.625) / 2
    value, count = prm.within_problem_auroc([[0.5, 0.5]], [[1, 1]])
    assert math.isnan(value) and count == 0


def test_verifier_tokens_counts_prompt_and_completion():
    assert prm.verifier_tokens([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]]) == 5 + 4


# ----------------------------------------------------------------------------------------------------------------------
# the model and its training

def test_verifier_starts_as_the_policy_with_a_neutral_head(tokenizer):
    policy = random_policy(tokenizer)
    verifier = prm.verifier_from_policy(policy)
    prompt, completion = encode_trace(tokenizer, ARITH, GOOD_STEPS, GOOD_ANSWER)
    idx = torch.tensor([prompt + completion])
    assert torch.equal(verifier.hidden_states(idx), policy.hidden_states(idx))
    assert prm.score_steps(verifier, tokenizer, [prompt], [completion]) == [[0.5] * 4]


@pytest.fixture
def one_thread():
    """Tiny matmuls run fastest on one thread; two threads on a busy machine spend their time waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_tiny_training_run_lowers_the_loss(tokenizer, one_thread):
    verifier = prm.verifier_from_policy(random_policy(tokenizer))
    rng = __import__("random").Random(0)
    problems = tasks.generate("arith", 8, seed=3, difficulties=(2, 3))
    traces = []
    for problem in problems:
        traces.append(prm.label_trace(tokenizer, problem, *encode_trace(tokenizer, problem, *tasks.solve(problem))))
        steps, answer, _ = tasks.corrupt(problem, rng)
        traces.append(prm.label_trace(tokenizer, problem, *encode_trace(tokenizer, problem, steps, answer)))
    prompts, completions = [t.prompt for t in traces], [t.completion for t in traces]
    labels = [t.exact for t in traces]
    optimizer = torch.optim.AdamW(verifier.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = prm.verifier_loss(verifier, tokenizer, prompts, completions, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6), "a zero head scores 0.5: the loss starts at log 2"
    # below the loss of the best constant guess (the label frequency): the head reads the trace, not just the prior
    good_frac = sum(sum(row) for row in labels) / sum(len(row) for row in labels)
    constant_guess_loss = -(good_frac * math.log(good_frac) + (1 - good_frac) * math.log(1 - good_frac))
    assert losses[-1] < 0.85 * constant_guess_loss


def test_verifier_loss_by_hand_with_soft_labels_and_padding(tokenizer, one_thread):
    verifier = prm.verifier_from_policy(random_policy(tokenizer))
    torch.nn.init.normal_(verifier.scalar_head.weight, std=0.5)
    # two solutions of different lengths (the shorter is padded) with soft labels, as Monte-Carlo labelling gives
    traces = [prm.label_trace(tokenizer, ARITH, *encode_trace(tokenizer, ARITH, GOOD_STEPS, GOOD_ANSWER)),
              prm.label_trace(tokenizer, ARITH, *encode_trace(tokenizer, ARITH, EARLY_STEPS, EARLY_ANSWER,
                                                              has_eos=False))]
    prompts, completions = [t.prompt for t in traces], [t.completion for t in traces]
    assert len(traces[0].exact) > len(traces[1].exact) > 0  # so one row of the batch is padded
    labels = [[(i % 4) / 4 for i in range(len(t.exact))] for t in traces]
    # the hand computation: sigmoid scores read one solution at a time, then BCE averaged over all positions
    terms = []
    for prompt, completion, row_labels in zip(prompts, completions, labels):
        scores = prm.score_steps(verifier, tokenizer, [prompt], [completion])[0]
        assert len(scores) == len(row_labels)
        terms += [-(y * math.log(p) + (1 - y) * math.log(1 - p)) for p, y in zip(scores, row_labels)]
    loss = prm.verifier_loss(verifier, tokenizer, prompts, completions, labels)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-5)
    with pytest.raises(AssertionError, match="labels for"):
        prm.verifier_loss(verifier, tokenizer, prompts, completions, [labels[0], labels[1][:-1]])


def test_ranking_pairs_are_right_wrong_pairs_of_the_same_problem(tokenizer):
    other = tasks.Problem("arith", "5+6", 1)
    traces = [prm.label_trace(tokenizer, ARITH, *encode_trace(tokenizer, ARITH, GOOD_STEPS, GOOD_ANSWER)),
              prm.label_trace(tokenizer, ARITH, *encode_trace(tokenizer, ARITH, SLIP_STEPS, SLIP_ANSWER)),
              prm.label_trace(tokenizer, other, *encode_trace(tokenizer, other, as_written(["5+6=12;12"]), "12")),
              prm.label_trace(tokenizer, ARITH, *encode_trace(tokenizer, ARITH, EARLY_STEPS, EARLY_ANSWER)),
              prm.label_trace(tokenizer, other, *encode_trace(tokenizer, other, as_written(["5+6=11;11"]), "11")),
              prm.label_trace(tokenizer, ARITH, *encode_trace(tokenizer, ARITH, GOOD_STEPS, GOOD_ANSWER)),
              prm.label_trace(tokenizer, ARITH, tokenizer.encode_prompt(tasks.format_prompt(ARITH)), [])]
    assert [t.outcome for t in traces] == [True, False, False, False, True, True, False]
    # the empty completion (no scoring position) is in no pair; 5+6 pairs only with 5+6
    assert sorted(prm.ranking_pairs(traces)) == [(0, 1), (0, 3), (4, 2), (5, 1), (5, 3)]


def test_ranking_loss_by_hand_and_its_gradient_separates_right_from_wrong(tokenizer, one_thread):
    verifier = prm.verifier_from_policy(random_policy(tokenizer))
    right = [prm.label_trace(tokenizer, ARITH, *encode_trace(tokenizer, ARITH, GOOD_STEPS, GOOD_ANSWER))]
    wrong = [prm.label_trace(tokenizer, ARITH, *encode_trace(tokenizer, ARITH, SLIP_STEPS, SLIP_ANSWER))]
    # a zero head gives both the score 0: the loss is -log sigmoid(0) = log 2
    assert prm.ranking_loss(verifier, tokenizer, right, wrong).item() == pytest.approx(math.log(2), abs=1e-6)
    torch.nn.init.normal_(verifier.scalar_head.weight, std=0.5)
    s_right, s_wrong = prm.last_logits(verifier, tokenizer, [t.prompt for t in right + wrong],
                                       [t.completion for t in right + wrong]).tolist()
    # the last scoring position is the eos: the same score score_steps reports last
    assert prm.score_steps(verifier, tokenizer, [right[0].prompt], [right[0].completion])[0][-1] == \
        pytest.approx(1 / (1 + math.exp(-s_right)), abs=1e-5)
    assert prm.ranking_loss(verifier, tokenizer, right, wrong).item() == \
        pytest.approx(math.log(1 + math.exp(s_wrong - s_right)), abs=1e-5)
    optimizer = torch.optim.SGD(verifier.parameters(), lr=0.05)
    for _ in range(5):
        loss = prm.ranking_loss(verifier, tokenizer, right, wrong)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    new_right, new_wrong = prm.last_logits(verifier, tokenizer, [t.prompt for t in right + wrong],
                                           [t.completion for t in right + wrong]).tolist()
    assert new_right - new_wrong > s_right - s_wrong + 0.1


def test_load_verifier_round_trip_and_refuses_a_policy(tokenizer, tmp_path):
    policy = random_policy(tokenizer)
    verifier = prm.verifier_from_policy(policy)
    torch.nn.init.normal_(verifier.scalar_head.weight, std=1.0)
    for kind, model in (("policy", policy), ("prm", verifier)):
        save_checkpoint(str(tmp_path / f"{kind}.pt"), kind=kind, model_state=model.state_dict(),
                        model_config=vars(model.config), tokenizer_bytes=tokenizer.model_bytes, step=0)
    with pytest.raises(UserError, match="expected a verifier"):
        prm.load_verifier(str(tmp_path / "policy.pt"), "cpu")
    loaded, loaded_tokenizer, ckpt = prm.load_verifier(str(tmp_path / "prm.pt"), "cpu")
    prompt, completion = encode_trace(tokenizer, ARITH, GOOD_STEPS, GOOD_ANSWER)
    assert ckpt["kind"] == "prm" and loaded_tokenizer.sha256 == tokenizer.sha256
    assert prm.score_steps(loaded, tokenizer, [prompt], [completion]) == prm.score_steps(verifier, tokenizer, [prompt], [completion])
