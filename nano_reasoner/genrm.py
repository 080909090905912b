"""
A generative verifier: check an answer by working it out again, then say so in a token.

GenRM ("Generative Verifiers: Reward Modeling as Next-Token Prediction", Zhang et al., arXiv 2408.15240) trains the
verifier as a language model: after the question and a candidate solution it predicts a verdict token, and its score
is the probability of "Yes". With a chain of thought first (GenRM-CoT) the verifier writes its own check of the
solution and only then the verdict; on algorithmic tasks that lifted best-of-N from 5% to 45%, because a check that
recomputes the answer another way catches errors that a score read off the solution's text does not.

Countdown: the verifier reads the problem and a candidate's answer expression (not its thinking) and works out
(answer) - target as an arith problem, in the arith trace format the policy was pre-trained on; then the verdict:

    countdown: 81 61 51 -> 94            the problem, 18 16 15 -> 49 (every number units first, as the prompts
    arith: 81+61+51-94                   show them), and (the candidate's answer 18+16+15) - 49 as an arith problem:
    <think>                              the verifier's prompt ends here
    81+61=43;43+51-94                    its own check: 18+16=34, 34+15=49,
    43+51=94;94-94
    94-94=0;0                            and 49-49=0: the answer makes the target exactly when this is 0
    <good>                               or <bad>: not 0, or the answer uses a number the problem does not give (or
                                         one too often), or a difference is not positive

Arith: an answer cannot be checked without solving the problem again, but each step can: the verifier reads the
expression before a step and the step as the candidate wrote it, works out (the step's operation) - (the value it
wrote), 0 exactly when the step's arithmetic is right, and its verdict also says whether the expression left is
the one before with that operation replaced. A sample scores its lowest step.

    arith: 74+88+(45+53-34)              the expression before the step (units first), the step,
    74+88=531;531+(45+53-34)             and (47+88) - 135 as an arith problem:
    arith: 74+88-531
    <think>
    74+88=531;531-531                    47+88 worked out afresh: one operation, which the policy rarely gets wrong
    531-531=0;0                          alone, while a step deep in a long sampled solution often does
    <good>

A line that writes the expression the step should leave, for the verdict to compare, did not help (best-of-16
62.2% against 63.8%): the verifier copied the step's own wrong expression as often as it wrote the right one, and
passed the step either way (docs/verifiers_log.md).

score = P(<good>) / (P(<good>) + P(<bad>)) at the verdict, after the check the verifier writes itself, greedily.
The check is a trace the policy already writes well (the reasoner works 95% of its own countdown answers out
right as arith problems, docs/verifiers_log.md), so the verifier starts from the policy's weights and learns the
verdict: the joint objective of Cobbe et al. (arXiv 2110.14168), language modelling of the check plus the verdict,
in one next-token loss, the verdict weighted up.

What the check ends on decides (docs/verifiers_log.md, countdown, 200 held-out problems, 400 training problems,
1,500 steps): the answer's moves as countdown moves (`81+61=43;51 43`, a new skill) picked 37.5% best-of-16; the
answer's value in reading order after `</think>`, 41.0%; its value units first, 51.0%; the same after a line per
number taken, 39.0% (greedy 53.0%, pass@16 65.0%). With a value at the end, the verdict must compare it with the
target across the prompt, and it often did not: on 500 problems, with 1,200 training problems, it rejected 22% of
the right answers. Ending on the difference leaves the verdict a local question (is this 0?): 1.8% rejected, and
best-of-16 rose from 52.2% to 58.2% (greedy 51.4%, pass@16 64.8%).

Simplifications: the checks are exact, written by code like every trace here, not sampled from a larger model as
in the paper; the countdown verifier does not read the candidate's thinking, while countdown.check also requires
the path the answer comes from to be legal (rarely the only fault of an answer); the arith verifier does not check
that the answer line repeats the last step's value.
"""
import time
from collections import Counter
from dataclasses import dataclass

import torch

from nano_reasoner import tasks
from nano_reasoner.cli import UserError, autocast, load_policy
from nano_reasoner.data import Example, batches, collate, decision_weights
from nano_reasoner.model import grow_vocab
from nano_reasoner.prm import scoring_positions
from nano_reasoner.report import progress_line
from nano_reasoner.sampling import generate
from nano_reasoner.tasks import arith, countdown, expr
from nano_reasoner.tasks.trace import ProblemError, flip_digits, shown_problem, undone_state
from nano_reasoner.tokenizer import add_symbols

GOOD, BAD = "<good>", "<bad>"
CHECK_TOKENS = 160  # the longest check a verifier may write: three moves with worked-through products, then - target
VERDICT_WEIGHT = 8.0  # the verdict's share of the loss, as the reasoner's decisions (data.decision_weights)


@dataclass
class Check:
    lines: list      # the check's step lines, digits as the model writes them (units first)
    is_good: bool    # the verdict: countdown, every move legal and the target made; arith, the step valid
    reason: str      # why not ("" when good)


def as_arith(answer):
    """The candidate's answer expression as an arith problem, or None when it is not one."""
    try:
        return arith.parse_problem(answer.replace(" ", ""))
    except ProblemError:
        return None


def checked_expression(problem, answer):
    """The arith problem the verifier works out for a candidate: (answer) - target, which is 0 exactly when the
    answer makes the target; None when the answer is no expression."""
    expression = as_arith(answer)
    if expression is None:
        return None
    _, target = countdown.parse_numbers(problem.text)
    return as_arith(f"({expression.text})-{target}")


def answer_check(problem, answer):
    """The exact check of a candidate's answer expression (text) for a countdown problem: the arith trace that works
    it out, and the verdict. Never raises; an answer that is no expression gets no check and a bad verdict."""
    numbers, target = countdown.parse_numbers(problem.text)
    expression = as_arith(answer)
    if expression is None:
        return Check([], False, "the answer is not an expression with an operation")
    lines, difference = tasks.trace(checked_expression(problem, answer), "digits")  # the last line ends on 0 or not
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
    if int(difference) != 0:
        return Check(lines, False, f"the answer makes {int(difference) + target}, not {target}")
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
                                   tasks.format_prompt(checked_expression(problem, answer)))


def training_example(tokenizer, problem, answer):
    """The verifier's training sequence for one candidate: its prompt, then the exact check and verdict."""
    return _example(tokenizer, verifier_prompt(tokenizer, problem, answer), answer_check(problem, answer))


def _example(tokenizer, prompt, check):
    completion = tokenizer.encode("".join(line + "\n" for line in check.lines))
    completion += [tokenizer.symbol_id(GOOD if check.is_good else BAD), tokenizer.eos_id]
    return Example(prompt + completion, len(prompt))


def train(model, tokenizer, examples, *, steps, batch_size=32, lr=3e-4, verdict_weight=VERDICT_WEIGHT, seed=0,
          log_every=100, on_log=None):
    """Fine-tune the verifier on its examples: next-token loss on check and verdict, the verdict weighted
    `verdict_weight` times (one token of some forty, and the one the score reads). Prints progress every log_every
    steps and hands (step, loss) to on_log there."""
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    verdict_ids = [tokenizer.symbol_id(GOOD), tokenizer.symbol_id(BAD)]
    model.train()
    stream = batches(examples, min(batch_size, len(examples)), seed)
    t_start = time.time()
    for step in range(steps):
        inputs, targets = collate(next(stream), tokenizer.pad_id, device)
        with autocast(device):
            _, loss = model(inputs, targets, loss_mask=decision_weights(targets, verdict_ids, verdict_weight))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:  # linear decay to a tenth
            group["lr"] = lr * (1 - 0.9 * step / steps)
        optimizer.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            print("genrm " + progress_line(step + 1, steps, time.time() - t_start, loss=loss.item()), flush=True)
            if on_log is not None:
                on_log(step + 1, loss.item())
    model.eval()
    return model


def prompt_of(tokenizer, candidate):
    """The verifier's prompt for a candidate of either task: countdown (problem, answer), arith (previous, line);
    None when there is nothing to check (no answer, no expression, no equation of one operation)."""
    first, text = candidate
    if isinstance(first, tasks.Problem):
        return verifier_prompt(tokenizer, first, text) if text and as_arith(text) is not None else None
    return step_prompt(tokenizer, first, text) if step_expression(text) is not None else None


def score_candidates(model, tokenizer, found, chunk_size=512):
    """P(<good>) for each candidate of either task, in order; one with nothing to check scores 0."""
    return score_prompts(model, tokenizer, [prompt_of(tokenizer, c) for c in found], chunk_size)


@torch.no_grad()
def score_prompts(model, tokenizer, prompts, chunk_size=512):
    """P(<good>) after each verifier prompt: the verifier writes its check greedily (until a verdict token), then
    the verdict's two logits are read at the position after the check. A prompt that is None, or leaves no room for
    a check in the context (a runaway sampled line), scores 0."""
    good_id, bad_id = tokenizer.symbol_id(GOOD), tokenizer.symbol_id(BAD)
    scores = [0.0] * len(prompts)
    todo = [i for i, prompt in enumerate(prompts)
            if prompt is not None and len(prompt) + CHECK_TOKENS <= model.config.block_size]
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        chunk_prompts = [prompts[i] for i in chunk]
        result = generate(model, chunk_prompts, CHECK_TOKENS, temperature=0.0, stop_ids=[good_id, bad_id],
                          pad_id=tokenizer.pad_id)
        sequences = []
        for row, prompt in enumerate(chunk_prompts):
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
# arith: each step checked by a difference

def step_expression(line):
    """An arith step as the policy writes it (`74+88=531;531+(45+53-34)`, digits units first) -> the arith problem
    (its operation) - (the value it wrote), 0 exactly when the step's arithmetic is right; None when the line is not
    an equation that starts with one operation on two numbers and ends on a number."""
    chain = flip_digits(line).split(";")[0]
    links = chain.split("=")
    if len(links) < 2:
        return None
    try:
        operation, value = expr.parse(links[0]), expr.parse(links[-1])
    except expr.ExprError:
        return None
    if expr.count_ops(operation) != 1 or operation[1][0] != "num" or operation[2][0] != "num" or value[0] != "num":
        return None
    return as_arith(f"({links[0]})-({links[-1]})")


def step_check(previous, line):
    """The exact check of one arith step: `previous` the expression before it (reading order), `line` the step as
    the policy wrote it. lines: the arith trace of step_expression, ending on 0 when the arithmetic is right; the
    verdict: arith.check_step's (right arithmetic, and the expression left is `previous` with that operation
    replaced by its value), which the verifier reads off its check and the step's two expressions. Never raises."""
    difference = step_expression(line)
    if difference is None:
        return Check([], False, "the step is not an equation of one operation")
    lines, _ = tasks.trace(difference, "digits")
    try:
        tree = expr.parse(previous)
    except expr.ExprError:
        return Check(lines, False, "the expression before the step is unreadable")
    is_valid, reason, _ = arith.check_step(tree, flip_digits(line))
    return Check(lines, is_valid, reason)


def completion_steps(problem, completion):
    """The steps of an arith completion, each with the expression before it: [(previous, line)], previous in
    reading order (the problem, then each step's expression left; an undo line moves back to the expression it
    names and is not itself checked). Stops at a step whose expression left is unreadable. Never raises."""
    previous, pairs = problem.text, []
    for line in tasks.parse_completion(completion).steps:
        undone = undone_state(line)
        if undone is not None:
            previous = flip_digits(undone)
            continue
        pairs.append((previous, line))
        left = flip_digits(line).split(";")
        if len(left) != 2:
            break
        previous = left[1]
    return pairs


def step_prompt(tokenizer, previous, line):
    """[bos] + the expression before the step (shown units first) + the step line + the step's difference as an
    arith prompt: what the verifier reads before its check of one arith step."""
    return tokenizer.encode_prompt(f"arith: {flip_digits(previous)}\n{line}\n" +
                                   tasks.format_prompt(step_expression(line)))


def step_training_example(tokenizer, previous, line):
    """The verifier's training sequence for one arith step: its prompt, then the exact check and verdict."""
    check = step_check(previous, line)
    return _example(tokenizer, step_prompt(tokenizer, previous, line), check)


# ----------------------------------------------------------------------------------------------------------------------
# training data: what the verifier judges in a policy's samples, with the exact check of each

def candidates(problem, texts):
    """What the verifier judges in one problem's sampled completions, each once: countdown, every distinct
    well-formed answer expression -> {(problem, answer)}; arith, every distinct step that is an equation of one
    operation -> {(previous, line)} (a sample's other lines score 0 unchecked)."""
    if problem.task == "countdown":
        return {(problem, answer) for answer in map(candidate_answer, texts) if answer and as_arith(answer)}
    return {pair for text in texts for pair in completion_steps(problem, text) if step_expression(pair[1]) is not None}


def check_of(candidate):
    """The exact check of a candidate of either task (countdown (problem, answer); arith (previous, line))."""
    return answer_check(*candidate) if isinstance(candidate[0], tasks.Problem) else step_check(*candidate)


def example_of(tokenizer, candidate):
    """The training sequence of a candidate of either task."""
    if isinstance(candidate[0], tasks.Problem):
        return training_example(tokenizer, *candidate)
    return step_training_example(tokenizer, *candidate)


def training_data(tokenizer, pools, block_size):
    """The verifier's training examples from the policy's samples: pools is [(problem, sampled texts)]; each
    problem's exact solution joins its samples, so that every problem has a good candidate (its answer, its arith
    steps: how the trace writes products does not change them). -> (examples, counts):
    counts holds problems, samples, candidates (distinct), good (of them) and examples (those that fit block_size;
    a runaway sampled line may not)."""
    found = set()
    for problem, texts in pools:
        exact = tasks.format_completion(*tasks.trace(problem, "digits", "straight"))
        found |= candidates(problem, list(texts) + [exact])
    found = sorted(found, key=str)
    examples = [e for e in (example_of(tokenizer, c) for c in found) if len(e.tokens) <= block_size]
    counts = {"problems": len(pools), "samples": sum(len(texts) for _, texts in pools), "candidates": len(found),
              "good": sum(check_of(c).is_good for c in found), "examples": len(examples)}
    return examples, counts


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
    tokens -> for each completion, a score at every scoring position (prm.scoring_positions: step ends and eos), so
    that min, last and MCTS's node values all read the verdicts. Countdown: the verdict on the answer, at every
    position (0 throughout while there is no answer). Arith: at each line's end the lowest verdict of the steps so
    far, at the eos that of all of them (0 when the completion is not well formed). Each distinct candidate of a
    call (countdown answer, arith step) is checked once. count_tokens: what the verifier reads and writes for them,
    counting the exact check's length for the one it writes."""
    def candidates_of(prompts, completions):
        """-> per completion (problem, text, its candidates): countdown [(problem, answer)], arith [(previous, line)]"""
        found = []
        for prompt, completion in zip(prompts, completions):
            problem, text = problem_from_prompt(policy_tokenizer, prompt), policy_tokenizer.decode(completion)
            if problem is None:
                found.append((None, text, []))
            elif problem.task == "countdown":
                answer = candidate_answer(text)
                found.append((problem, text, [(problem, answer)] if answer and as_arith(answer) else []))
            else:
                found.append((problem, text, completion_steps(problem, text)))
        return found

    def score_steps(prompts, completions):
        found = candidates_of(prompts, completions)
        answers = sorted({c for problem, _, cs in found if problem and problem.task == "countdown" for c in cs},
                         key=lambda c: (c[0].text, c[1]))
        steps = sorted({c for problem, _, cs in found if problem and problem.task == "arith" for c in cs})
        verdicts = dict(zip(answers + steps, score_candidates(model, tokenizer, answers + steps)))
        all_scores = []
        for (problem, text, candidates), completion in zip(found, completions):
            positions = len(scoring_positions(policy_tokenizer, completion))
            if problem is None or problem.task == "countdown":
                all_scores.append([verdicts.get(candidates[0], 0.0) if candidates else 0.0] * positions)
                continue
            values, lowest, pending = [], 1.0, list(candidates)
            for line in text.split("\n")[:-1]:  # every line that a step end closes
                if pending and line == pending[0][1]:
                    lowest = min(lowest, verdicts.get(pending.pop(0), 0.0))
                values.append(lowest)
            values.append(lowest if tasks.parse_completion(text).is_well_formed else 0.0)  # the eos, if reached
            all_scores.append((values + [values[-1]] * positions)[:positions])
        return all_scores

    def count_tokens(prompts, completions):
        distinct = {c for _, _, candidates in candidates_of(prompts, completions) for c in candidates}
        answers = [c for c in distinct if isinstance(c[0], tasks.Problem)]  # countdown: (problem, answer)
        steps = [c for c in distinct if c not in answers and step_expression(c[1]) is not None]  # arith steps
        return (sum(len(training_example(tokenizer, *c).tokens) for c in answers) +
                sum(len(step_training_example(tokenizer, *c).tokens) for c in steps))

    return score_steps, count_tokens


def candidate_answer(completion):
    """The answer line of a policy's completion, or None when it is not well formed."""
    parsed = tasks.parse_completion(completion)
    return parsed.answer if parsed.is_well_formed and parsed.answer else None
