"""
A generative verifier: check an answer by working it out again, then say so in a token.

GenRM ("Generative Verifiers: Reward Modeling as Next-Token Prediction", Zhang et al., arXiv 2408.15240) trains the
verifier as a language model: after the question and a candidate solution it predicts a verdict token, and its score
is the probability of "Yes". With a chain of thought first (GenRM-CoT) the verifier writes its own check of the
solution and only then the verdict; on algorithmic tasks that lifted best-of-N from 5% to 45%, because a check that
recomputes the answer another way catches errors that a score read off the solution's text does not.

Here, on countdown, whose answers can be checked from the problem alone. The verifier reads the problem and a
candidate's answer expression (not its thinking), works the expression out as an arith problem, in the arith trace
format the policy was pre-trained on, and ends with a verdict token:

    countdown: 81 61 51 -> 94            the problem, 18 16 15 -> 49 (every number units first, as the prompts
    arith: 81+61+51                      show them), and the candidate's answer 18+16+15 as an arith problem:
    <think>                              the verifier's prompt ends here
    81+61=43;43+51                       its own check: 18+16=34, then 34+15=49, the value of the answer,
    43+51=94;94                          written units first like the target it is compared with
    <good>                               or <bad>: the value is not the target, or the answer uses a number the
                                         problem does not give (or one too often), or a difference is not positive

score = P(<good>) / (P(<good>) + P(<bad>)) at the verdict, after the check the verifier writes itself, greedily.
The check is a trace the policy already writes well (the reasoner works 95% of its own countdown answers out
right as arith problems, docs/verifiers_log.md), so the verifier starts from the policy's weights and learns the
verdict: the joint objective of Cobbe et al. (arXiv 2110.14168), language modelling of the check plus the verdict,
in one next-token loss, the verdict weighted up.

Four checks were tried (200 held-out problems, the same data and 1,500 steps; docs/verifiers_log.md): the answer's
moves as countdown moves (`81+61=43;51 43`: a new skill, writing an expression's moves in post-order) picked 37.5%
best-of-16; the arith trace then `</think>` and the value in reading order, 41.0%; the arith trace ending on the
value units first, as here, 51.0%; the same after a line per number taken from the numbers left, 39.0%. Greedy
solves 53.0% and the checker 65.0% (pass@16).

Simplifications: countdown only (an arith answer cannot be re-derived without solving the problem again, so its
check would be a second solution, not a check); the checks are exact, written by code like every trace here, not
sampled from a larger model as in the paper; the verifier does not read the candidate's thinking, while
countdown.check also requires the path the answer comes from to be legal (rarely the only fault of an answer).
"""
from collections import Counter
from dataclasses import dataclass

import torch

from nano_reasoner import tasks
from nano_reasoner.cli import UserError, load_policy
from nano_reasoner.data import Example, batches, collate, decision_weights
from nano_reasoner.model import grow_vocab
from nano_reasoner.sampling import generate
from nano_reasoner.tasks import arith, countdown, expr
from nano_reasoner.prm import scoring_positions
from nano_reasoner.tasks.trace import ProblemError, flip_digits, shown_problem
from nano_reasoner.tokenizer import add_symbols

GOOD, BAD = "<good>", "<bad>"
CHECK_TOKENS = 160  # the longest check a verifier may write: three moves with worked-through products
VERDICT_WEIGHT = 8.0  # the verdict's share of the loss, as the reasoner's decisions (data.decision_weights)


@dataclass
class Check:
    lines: list      # the check's step lines, digits as the model writes them (units first)
    is_good: bool    # the verdict: every move legal and the last one makes the target
    reason: str      # why not ("" when good)


def as_arith(answer):
    """The candidate's answer expression as an arith problem, or None when it is not one."""
    try:
        return arith.parse_problem(answer.replace(" ", ""))
    except ProblemError:
        return None


def answer_check(problem, answer):
    """The exact check of a candidate's answer expression (text) for a countdown problem: the arith trace that works
    it out, and the verdict. Never raises; an answer that is no expression gets no check and a bad verdict."""
    numbers, target = countdown.parse_numbers(problem.text)
    expression = as_arith(answer)
    if expression is None:
        return Check([], False, "the answer is not an expression with an operation")
    steps, value = tasks.trace(expression, "digits")
    lines = steps  # the last line ends on the value, units first like the target in the prompt: the verdict compares
    state = list(numbers)

    def is_legal(node):
        """Every number given (each at most once) and every difference positive, the moves in the order the
        expression computes them; the numbers a move makes join the numbers left."""
        if node[0] == "num":
            return True
        if not (is_legal(node[1]) and is_legal(node[2])):
            return False
        a, b = expr.evaluate(node[1]), expr.evaluate(node[2])
        made = countdown.combine(a, node[0], b)
        left = Counter(state)
        if made is None or left[a] < 1 or left[b] < 1 + (a == b):
            return False
        state.remove(a)
        state.remove(b)
        state.append(made)
        return True

    if not is_legal(expr.parse(expression.text)):
        return Check(lines, False, "a number that is not given, one used too often, or a difference not positive")
    if int(value) != target:
        return Check(lines, False, f"the answer makes {value}, not {target}")
    return Check(lines, True, "")


def add_verdict_tokens(model, tokenizer):
    """-> (model, tokenizer) with <good> and <bad> in the vocabulary (new embedding rows at the mean of the old)."""
    if tokenizer.symbol_id(GOOD) is not None:
        return model, tokenizer
    grown = type(tokenizer)(add_symbols(tokenizer.model_bytes, [GOOD, BAD]))
    return grow_vocab(model, max(model.config.vocab_size, grown.vocab_size)), grown


def verifier_prompt(tokenizer, problem, answer):
    """[bos] + the problem line + the candidate's answer as an arith prompt: what the verifier reads before its
    check (the answer must be an expression: as_arith)."""
    return tokenizer.encode_prompt(f"{problem.task}: {shown_problem(problem)}\n" +
                                   tasks.format_prompt(as_arith(answer)))


def training_example(tokenizer, problem, answer):
    """The verifier's training sequence for one candidate: its prompt, then the exact check and verdict."""
    check = answer_check(problem, answer)
    prompt = verifier_prompt(tokenizer, problem, answer)
    completion = tokenizer.encode("".join(line + "\n" for line in check.lines))
    completion += [tokenizer.symbol_id(GOOD if check.is_good else BAD), tokenizer.eos_id]
    return Example(prompt + completion, len(prompt))


def train(model, tokenizer, examples, *, steps, batch_size=32, lr=3e-4, verdict_weight=VERDICT_WEIGHT, seed=0,
          log_every=100):
    """Fine-tune the verifier on its examples: next-token loss on check and verdict, the verdict weighted
    `verdict_weight` times (one token of some forty, and the one the score reads); prints progress."""
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    verdict_ids = [tokenizer.symbol_id(GOOD), tokenizer.symbol_id(BAD)]
    model.train()
    stream = batches(examples, min(batch_size, len(examples)), seed)
    for step in range(steps):
        inputs, targets = collate(next(stream), tokenizer.pad_id, device)
        _, loss = model(inputs, targets, loss_mask=decision_weights(targets, verdict_ids, verdict_weight))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:  # linear decay to a tenth
            group["lr"] = lr * (1 - 0.9 * step / steps)
        optimizer.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            print(f"genrm step {step + 1}/{steps} | loss {loss.item():.4f}", flush=True)
    model.eval()
    return model


@torch.no_grad()
def score(model, tokenizer, problems, answers, chunk_size=512):
    """P(<good>) for each (problem, answer): the verifier writes its check greedily (until a verdict token), then
    the verdict's two logits are read at the position after the check. An answer that is None (no well-formed
    answer) or no expression scores 0."""
    good_id, bad_id = tokenizer.symbol_id(GOOD), tokenizer.symbol_id(BAD)
    scores = [0.0] * len(problems)
    todo = [i for i, answer in enumerate(answers) if answer and as_arith(answer) is not None]
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        prompts = [verifier_prompt(tokenizer, problems[i], answers[i]) for i in chunk]
        room = min(CHECK_TOKENS, model.config.block_size - max(len(p) for p in prompts))
        result = generate(model, prompts, room, temperature=0.0, stop_ids=[good_id, bad_id],
                          pad_id=tokenizer.pad_id)
        sequences = []
        for row, prompt in enumerate(prompts):
            check = [t for t in result.row_tokens(row) if t not in (good_id, bad_id)]
            sequences.append(prompt + check)
        length = max(len(s) for s in sequences)
        inputs = torch.full((len(sequences), length), tokenizer.pad_id, dtype=torch.long)  # (B, T), right-padded
        for row, sequence in enumerate(sequences):
            inputs[row, :len(sequence)] = torch.tensor(sequence)
        logits, _ = model(inputs.to(next(model.parameters()).device))                     # (B, T, V)
        last = torch.tensor([len(s) - 1 for s in sequences])                                # (B,) the check's end
        verdict = logits[torch.arange(len(sequences)), last][:, [good_id, bad_id]].float()  # (B, 2)
        for i, p_good in zip(chunk, torch.softmax(verdict, dim=-1)[:, 0].tolist()):
            scores[i] = p_good
    return scores


# ----------------------------------------------------------------------------------------------------------------------
# the verifier as search reads a PRM (search.Verifier): bon, wvote and MCTS with --verifier DIR/genrm.pt

def load(path, device, policy_tokenizer):
    """A generative verifier's checkpoint (kind "genrm") -> (model, tokenizer), or UserError. Its tokenizer must be
    the policy's with <good> and <bad> added, so that it reads the policy's answers as the policy wrote them."""
    model, tokenizer, _ = load_policy(path, device, expected_kind="genrm")
    if not tokenizer.model_bytes.startswith(policy_tokenizer.model_bytes) or tokenizer.symbol_id(GOOD) is None:
        raise UserError(f"{path} is a generative verifier of another policy: use one grown from this policy")
    return model, tokenizer


def problem_from_prompt(policy_tokenizer, prompt):
    """The policy's prompt tokens -> the Problem it asks (tasks.format_prompt read backwards), or None."""
    task, _, shown = policy_tokenizer.decode(prompt).split("\n", 1)[0].partition(": ")
    try:
        return tasks.parse_problem(task.strip(), flip_digits(shown.strip()))
    except (ProblemError, KeyError, ValueError):
        return None


def step_scorer(model, tokenizer, policy_tokenizer):
    """-> (score_steps, count_tokens) for search.Verifier. score_steps(prompts, completions), in the policy's
    tokens -> for each completion, the verdict on its answer, P(good), at every scoring position (prm.scoring_positions:
    step ends and eos), so that min, last and MCTS's node values all read the verdict; a completion with no answer yet
    scores 0 throughout. Each distinct (problem, answer) of a call is checked once. count_tokens: what the verifier
    reads and writes for them, counting the exact check's length for the one it writes."""
    def answers_of(prompts, completions):
        keys = []
        for prompt, completion in zip(prompts, completions):
            problem = problem_from_prompt(policy_tokenizer, prompt)
            if problem is not None and problem.task != "countdown":
                raise UserError(f"the generative verifier judges countdown answers only, not {problem.task}: "
                                f"use the PRM (runs/tiny/prm/ckpt.pt) there")
            answer = candidate_answer(policy_tokenizer.decode(completion)) if problem is not None else None
            keys.append((problem, answer) if answer and as_arith(answer) is not None else None)
        return keys

    def score_steps(prompts, completions):
        keys = answers_of(prompts, completions)
        distinct = sorted({key for key in keys if key is not None}, key=lambda key: (key[0].text, key[1]))
        verdicts = dict(zip(distinct, score(model, tokenizer, [p for p, _ in distinct], [a for _, a in distinct])))
        return [[verdicts.get(key, 0.0)] * len(scoring_positions(policy_tokenizer, completion))
                for key, completion in zip(keys, completions)]

    def count_tokens(prompts, completions):
        distinct = {key for key in answers_of(prompts, completions) if key is not None}
        return sum(len(training_example(tokenizer, problem, answer).tokens) for problem, answer in distinct)

    return score_steps, count_tokens


def candidate_answer(completion):
    """The answer line of a policy's completion, or None when it is not well formed."""
    parsed = tasks.parse_completion(completion)
    return parsed.answer if parsed.is_well_formed and parsed.answer else None
