"""
Verifiers: a process reward model (PRM) scores every reasoning step, an outcome reward model (ORM) scores the answer.

Sampling many solutions is easy; knowing which one is right is the hard part. A verifier is the policy's own
transformer with a scalar head instead of next-token logits: it reads a problem and a (partial) solution and outputs,
at chosen positions, the probability that the solution is still on track. "Let's Verify Step by Step" (Lightman et
al., arXiv 2305.20050) trained two kinds and found process supervision better for picking the best of N samples:

- **PRM**: one label per step, "is this step (and everything before it) good". Read at the newline that ends a step.
- **ORM**: one label per solution, "is the final answer right" ("Training Verifiers to Solve Math Word Problems",
  Cobbe et al., arXiv 2110.14168). We train it at the same positions as the PRM, every step end, all with the
  outcome label, so that the two differ in nothing but their labels. Only its last score (at eos) is used to rank.

Where the step labels come from is the question of this file. Our tasks can label every step exactly
(`tasks.step_labels`: the prefix up to step i is sound, i.e. the right answer can still be reached). Real math cannot,
so "Math-Shepherd" (Wang et al., arXiv 2312.08935) labels a step by rolling out: from the prefix up to step i, the
policy writes k completions; the **hard** label is 1 when any reaches the right answer, the **soft** label is the
fraction that does. Both are estimates of the exact label: a sound prefix from which this policy never finishes
correctly gets a false 0 (and the smaller k, the more often), a broken prefix almost never gets a 1 (the answer
would have to come out right after wrong work). Having both, this project can measure how good the estimates are.

Positions scored ("scoring positions"): in the completion, every step_end token (the newline that ends each step
line, the `</think>` line and any answer line) and the eos token if present, in order. Labels per position:

    step line i            exact: tasks.step_labels(...)[i]     Monte-Carlo: rollouts from the prefix through it
    the </think> line      exact: all steps sound               Monte-Carlo: rollouts (they only write the answer)
    answer line, eos       exact = Monte-Carlo = outcome: the trace ended with eos and tasks.verify says correct

Loss, for scores s (raw head outputs) and labels y in [0, 1] at the scoring positions P of a batch:

    L = - 1/|P| * sum_{p in P} [ y_p log sigmoid(s_p) + (1 - y_p) log(1 - sigmoid(s_p)) ]

Aggregating step scores into one solution score (for best-of-N): "min" (default), "prod" or "last". Our labels
mean "the prefix so far is sound", which can only go from 1 to 0 along a solution, so the PRM's score should only go
down; the solution is as good as its weakest prefix, which is the min. The product (Lightman et al.'s choice) treats
the scores as independent per-step probabilities, which ours are not: it punishes long solutions for their length.
"last" trusts the final score alone, which is what an ORM does.

Within-problem ranking (optional, `ranking_loss`). The loss above can be lowered a long way by learning which
*problems* are hard: solutions of an easy problem are mostly good, those of a hard one mostly bad, and a verifier
that only knows the difference already has a high step AUROC over all problems. Best-of-N cannot use that knowledge:
it compares solutions of one problem, where the difficulty is the same for all. A ranking term trains exactly that
comparison. For pairs (right, wrong) of solutions of the same problem (the policy's samples, or a sample and a
corrupted trace), with s the raw score at each solution's last scoring position,

    L_rank = - mean over pairs of log sigmoid(s_right - s_wrong)

the Bradley-Terry loss that reward models for RLHF are trained with (InstructGPT, Ouyang et al., arXiv 2203.02155),
here with the exact outcome deciding which of the two is preferred. The problem's difficulty cancels in the
difference, so only what tells the two solutions apart can lower it. On countdown that is mostly whether the last
number left is the target; on arith it is a wrong digit somewhere, which the verifier has to check as well as the
policy computes it. The training loss is L + rank_weight * L_rank (README, stage 3, for what it does and costs).

Simplifications against the papers: the verifier starts from the tiny policy itself (Lightman et al. fine-tune a large
base model); labels come from one policy at one temperature; Monte-Carlo rollouts are judged by our exact outcome
verifier (Math-Shepherd compares the final answer with the reference answer); the ORM is trained at every step end
with the outcome label rather than at every token; no label balancing or negative mining.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nano_reasoner import tasks
from nano_reasoner.cli import UserError, load_policy
from nano_reasoner.model import GPT, GPTConfig
from nano_reasoner.sampling import generate

VERIFIER_KINDS = ("prm", "orm")
AGGREGATIONS = ("min", "prod", "last")


# ----------------------------------------------------------------------------------------------------------------------
# the model: the policy's transformer with a scalar head

def verifier_from_policy(policy):
    """A GPT with a scalar head whose trunk is a copy of the policy's weights; the new head starts at zero, so every
    first score is sigmoid(0) = 0.5 and nothing the policy learned is disturbed by a random head."""
    config = GPTConfig(**{**vars(policy.config), "has_scalar_head": True})
    verifier = GPT(config).to(next(policy.parameters()).device)
    missing, unexpected = verifier.load_state_dict(policy.state_dict(), strict=False)
    assert missing == ["scalar_head.weight"] and not unexpected, (missing, unexpected)
    torch.nn.init.zeros_(verifier.scalar_head.weight)
    return verifier


def load_verifier(path, device):
    """A verifier checkpoint (kind "prm" or "orm") -> (model, tokenizer, checkpoint dict), or UserError."""
    model, tokenizer, ckpt = load_policy(path, device, expected_kind=None)
    if ckpt["kind"] == "genrm":
        raise UserError(f"{path} is a generative verifier, which scores by writing a check: this needs a scalar "
                        f"verifier, such as the stage's prm_exact.pt")
    if ckpt["kind"] not in VERIFIER_KINDS or model.scalar_head is None:
        raise UserError(f"{path} holds a {ckpt['kind']} checkpoint, expected a verifier (prm or orm): "
                        f"pass a checkpoint written by train_prm.py")
    return model, tokenizer, ckpt


# ----------------------------------------------------------------------------------------------------------------------
# where a verifier is read: the end of every step

def scoring_positions(tokenizer, completion):
    """Indices into `completion` of every step_end token and of the first eos (nothing after an eos is read)."""
    positions = []
    for index, token in enumerate(completion):
        if token == tokenizer.step_end_id or token == tokenizer.eos_id:
            positions.append(index)
        if token == tokenizer.eos_id:
            break
    return positions


def _batch(tokenizer, prompts, completions, device):
    """Right-padded [prompt + completion] rows and where to read them.
    -> idx (B, T) long, read_at (B, S) long absolute positions, is_read (B, S) bool; S = most scoring positions."""
    positions = [[len(p) + j for j in scoring_positions(tokenizer, c)] for p, c in zip(prompts, completions)]
    T = max(len(p) + len(c) for p, c in zip(prompts, completions))
    S = max(1, max(len(pos) for pos in positions))
    idx = torch.full((len(prompts), T), tokenizer.pad_id, dtype=torch.long)
    read_at = torch.zeros(len(prompts), S, dtype=torch.long)
    is_read = torch.zeros(len(prompts), S, dtype=torch.bool)
    for row, (prompt, completion, pos) in enumerate(zip(prompts, completions, positions)):
        idx[row, :len(prompt) + len(completion)] = torch.tensor(list(prompt) + list(completion))
        read_at[row, :len(pos)] = torch.tensor(pos, dtype=torch.long)
        is_read[row, :len(pos)] = True
    return idx.to(device), read_at.to(device), is_read.to(device)


def position_logits(model, tokenizer, prompts, completions):
    """Raw scores at the scoring positions, with gradients: (logits (B, S), is_read (B, S)). Right padding needs
    no attention mask: attention is causal, so a pad token after a position never changes its score."""
    device = next(model.parameters()).device
    idx, read_at, is_read = _batch(tokenizer, prompts, completions, device)
    scores = model.scalar_scores(idx)                   # (B, T)
    return scores.gather(1, read_at), is_read           # (B, S) each


@torch.no_grad()
def score_steps(model, tokenizer, prompts, completions, chunk_size=256):
    """P(good) = sigmoid(score) at each sequence's scoring positions (every step end, then eos if present), in
    order: list (one per sequence) of lists of floats. One forward pass per chunk of chunk_size sequences."""
    assert len(prompts) == len(completions), "one completion per prompt"
    assert model.scalar_head is not None, "score_steps needs a verifier (a GPT with has_scalar_head=True)"
    device = next(model.parameters()).device
    step_scores = []
    for start in range(0, len(prompts), chunk_size):
        chunk_prompts, chunk_completions = prompts[start:start + chunk_size], completions[start:start + chunk_size]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, is_read = position_logits(model, tokenizer, chunk_prompts, chunk_completions)  # (B, S)
        probs = torch.sigmoid(logits.float()).cpu()
        counts = is_read.sum(dim=1).tolist()
        step_scores += [probs[row, :count].tolist() for row, count in enumerate(counts)]
    return step_scores


def verifier_tokens(prompts, completions):
    """Tokens one score_steps call pushes through the verifier (for compute accounting): every prompt and
    completion token once."""
    return sum(len(p) + len(c) for p, c in zip(prompts, completions))


def aggregate(step_scores, how="min"):
    """One score for a whole solution from its step scores (see the module docstring for why min is the default).
    A solution with no scoring position (nothing finished, not even one step) scores 0: nothing vouches for it."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation {how!r}: choose one of {', '.join(AGGREGATIONS)}")
    # BEGIN SOLUTION part 7
    if not step_scores:
        return 0.0
    if how == "min":
        # score = min_i p_i
        return min(step_scores)
    if how == "prod":
        # score = prod_i p_i
        product = 1.0
        for p in step_scores:
            product *= p
        return product
    return step_scores[-1]
    # END SOLUTION


# ----------------------------------------------------------------------------------------------------------------------
# labels: exact, outcome, Monte-Carlo

@dataclass
class LabelledTrace:
    """One solution with labels at each of its scoring positions."""
    problem: tasks.Problem
    prompt: list             # [bos] + prompt tokens
    completion: list         # completion tokens as written (eos included when present)
    exact: list              # per scoring position, 1.0 / 0.0 (see the table in the module docstring)
    outcome: bool            # ended with eos and tasks.verify says correct
    num_step_lines: int      # the first num_step_lines scoring positions end step lines (the rest: </think>, answer)
    source: str = "policy"   # "policy" (sampled) or "corrupt" (tasks.corrupt)


def trace_outcome(tokenizer, problem, completion):
    """Is the solution finished (eos) and correct by the task's exact verifier?"""
    if tokenizer.eos_id not in completion:
        return False
    return tasks.verify(problem, tokenizer.decode(completion)).is_correct


def label_trace(tokenizer, problem, prompt, completion, source="policy"):
    """Exact labels at every scoring position of one solution (the table in the module docstring)."""
    positions = scoring_positions(tokenizer, completion)
    outcome = trace_outcome(tokenizer, problem, completion)
    lines, start = [], 0
    for position in positions:
        lines.append(tokenizer.decode(completion[start:position]))
        start = position + 1
    think_end = lines.index(tasks.END_THINK) if tasks.END_THINK in lines else len(lines)
    is_eos = [completion[p] == tokenizer.eos_id for p in positions]
    num_step_lines = min(think_end, len(positions) - sum(is_eos))
    step_ok = tasks.step_labels(problem, lines[:num_step_lines])
    exact = []
    for index in range(len(positions)):
        if index < num_step_lines:
            exact.append(float(step_ok[index]))
        elif index == think_end and not is_eos[index]:
            exact.append(float(all(step_ok)))
        else:
            exact.append(float(outcome))
    return LabelledTrace(problem, list(prompt), list(completion), exact, outcome, num_step_lines, source)


def monte_carlo_rollouts(policy, tokenizer, traces, k, *, temperature=1.0, seed=0, max_rows=512):
    """Math-Shepherd rollouts: for every scoring position of every trace, k completions by the policy from the prefix
    through that position, each judged by the exact outcome verifier.
    -> per trace, per scoring position, a list of k booleans (is this rollout correct). At an eos position the
    solution is already finished and its outcome stands for all k rollouts.

    All prefixes go through the sampler together: sorted by length (less padding), then cut into calls of at most
    max_rows rows, each call one prefill of its prefixes forked into k samples (num_samples=k)."""
    assert k >= 1
    rollouts = [[None] * len(scoring_positions(tokenizer, t.completion)) for t in traces]
    jobs = []  # (trace index, position index, prefix completion tokens)
    for t_index, trace in enumerate(traces):
        for p_index, position in enumerate(scoring_positions(tokenizer, trace.completion)):
            if trace.completion[position] == tokenizer.eos_id:
                rollouts[t_index][p_index] = [trace.outcome] * k
            else:
                jobs.append((t_index, p_index, trace.completion[:position + 1]))
    jobs.sort(key=lambda job: len(traces[job[0]].prompt) + len(job[2]))
    block_size = policy.config.block_size
    prefixes_per_call = max(1, max_rows // k)
    for start in range(0, len(jobs), prefixes_per_call):
        chunk = jobs[start:start + prefixes_per_call]
        prompts = [traces[t].prompt + prefix for t, _, prefix in chunk]
        room = block_size - max(len(p) for p in prompts)
        if room < 1:  # prefixes that fill the context cannot be finished: no rollout can be correct
            for t, p, _ in chunk:
                rollouts[t][p] = [False] * k
            continue
        result = generate(policy, prompts, room, num_samples=k, temperature=temperature,
                          stop_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id, seed=seed + start)
        for j, (t, p, prefix) in enumerate(chunk):
            rows = range(j * k, (j + 1) * k)  # prompt-major: prefix j's k samples are adjacent
            rollouts[t][p] = [trace_outcome(tokenizer, traces[t].problem, prefix + result.row_tokens(r)) for r in rows]
    return rollouts


def monte_carlo_labels(rollouts, k, hard):
    """Labels from the first k rollouts of each position: hard = 1 if any is correct, soft = the fraction correct."""
    # BEGIN SOLUTION part 8
    labels = []
    for trace_rollouts in rollouts:
        assert all(len(r) >= k for r in trace_rollouts), f"fewer than {k} rollouts per position"
        if hard:
            labels.append([float(any(r[:k])) for r in trace_rollouts])
        else:
            labels.append([sum(r[:k]) / k for r in trace_rollouts])
    # END SOLUTION
    return labels


# ----------------------------------------------------------------------------------------------------------------------
# training

def verifier_loss(model, tokenizer, prompts, completions, labels):
    """Binary cross-entropy of sigmoid(score) against labels in [0, 1], averaged over all scoring positions of the
    batch (the formula in the module docstring). labels: per sequence, one float per scoring position."""
    # BEGIN SOLUTION part 6
    logits, is_read = position_logits(model, tokenizer, prompts, completions)   # (B, S) each
    targets = torch.zeros_like(logits, dtype=torch.float32)                     # (B, S)
    for row, row_labels in enumerate(labels):
        assert len(row_labels) == int(is_read[row].sum()), f"row {row}: {len(row_labels)} labels for " \
                                                            f"{int(is_read[row].sum())} scoring positions"
        targets[row, :len(row_labels)] = torch.tensor(row_labels, dtype=torch.float32)
    position_losses = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")  # (B, S)
    return (position_losses * is_read).sum() / is_read.sum().clamp(min=1)
    # END SOLUTION


def ranking_pairs(traces):
    """Every (right, wrong) pair of solutions of the same problem: a list of (index of right, index of wrong) into
    traces. A solution is right when its outcome is (finished, and correct by the exact verifier)."""
    by_problem = {}
    for index, trace in enumerate(traces):
        if not trace.exact:  # nothing finished, not even one step: no score to compare
            continue
        right, wrong = by_problem.setdefault((trace.problem.task, trace.problem.text), ([], []))
        (right if trace.outcome else wrong).append(index)
    return [(r, w) for right, wrong in by_problem.values() for r in right for w in wrong]


def last_logits(model, tokenizer, prompts, completions):
    """Raw score at each solution's last scoring position (its eos when it finished), with gradients: (B,)."""
    logits, is_read = position_logits(model, tokenizer, prompts, completions)     # (B, S) each
    last = (is_read.sum(dim=1) - 1).clamp(min=0)                                  # (B,)
    return logits.gather(1, last[:, None])[:, 0].float()


def ranking_loss(model, tokenizer, right, wrong):
    """Bradley-Terry loss -mean log sigmoid(s_right - s_wrong) over pairs of solutions of the same problem (see the
    module docstring). right, wrong: equal-length lists of LabelledTrace, pair i = (right[i], wrong[i])."""
    assert len(right) == len(wrong) and right, "one wrong solution per right one, at least one pair"
    both = right + wrong
    scores = last_logits(model, tokenizer, [t.prompt for t in both], [t.completion for t in both])  # (2P,)
    s_right, s_wrong = scores[:len(right)], scores[len(right):]                                      # (P,) each
    # -log sigmoid(x) = softplus(-x), computed without overflow for large |x|
    return F.softplus(s_wrong - s_right).mean()


# ----------------------------------------------------------------------------------------------------------------------
# measuring a verifier

def auroc(scores, labels):
    """Area under the ROC curve: the probability that a random good position scores above a random bad one (ties
    count half), by the Mann-Whitney rank formula. nan when either class is empty."""
    assert len(scores) == len(labels)
    num_good = sum(1 for y in labels if y)
    num_bad = len(labels) - num_good
    if num_good == 0 or num_bad == 0:
        return float("nan")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):  # tied scores share the mean of their ranks (1-based)
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    # AUROC = (sum of the good ranks - num_good (num_good + 1) / 2) / (num_good * num_bad)
    good_rank_sum = sum(rank for rank, y in zip(ranks, labels) if y)
    return (good_rank_sum - num_good * (num_good + 1) / 2) / (num_good * num_bad)


def within_problem_auroc(scores, labels):
    """The mean over problems of the AUROC of one problem's samples (right against wrong), over the problems that
    have both: how well a verifier picks among one problem's samples, which is what best-of-N asks of it (a pooled
    AUROC also rewards telling easy problems from hard ones). scores, labels: per problem, per sample.
    -> (mean AUROC, problems counted); nan when no problem has both."""
    values = [auroc(s, y) for s, y in zip(scores, labels) if 0 < sum(map(bool, y)) < len(y)]
    return (sum(values) / len(values) if values else float("nan")), len(values)
