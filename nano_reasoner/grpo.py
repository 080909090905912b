"""
GRPO: reinforcement learning with rule-based rewards, the DeepSeek-R1-Zero way.

A pre-trained policy already writes well-formed chains of thought, but it makes mistakes. Reinforcement learning lets
it practise: it tries each problem several times, an exact program checks the answers, and the policy is pushed
towards the attempts that were right and away from the ones that were wrong. No human labels, no learned reward model.

GRPO ("DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models", Shao et al.,
arXiv 2402.03300) is PPO without the value network: the baseline that says "was this attempt better than expected?"
is the average reward of the other attempts at the same problem. DeepSeek-R1 (arXiv 2501.12948) trained R1-Zero with
GRPO and two rule-based rewards only (accuracy and format), to leave the model nothing to fool. One batch goes
through five stages, numbered the same way in the code below and in the README:

    (1) sample    G completions per prompt, for all B prompts, in ONE sampler call (temperature 1: the policy's own
                  distribution, so the samples are on-policy).
    (2) rewards   r_i = accuracy (1 if tasks.verify says correct) + format_weight * (1 if the trace is well formed).
                  The verifiers are exact: for countdown *every step* must be legal, so an answer that equals the
                  target after bad arithmetic earns no accuracy reward (the reward hack is shut out).
    (3) advantage A_i = (r_i - mean(r_group)) / (std(r_group) + eps), within each group of G; every token of o_i gets
                  A_i. A group whose attempts all scored the same teaches nothing (all A_i = 0).
    (4) log-probs log pi_theta (with gradients), log pi_old (the policy that sampled) and log pi_ref (the frozen
                  starting model), per completion token.
    (5) loss      maximise  J = mean over tokens of  min(rho_t A, clip(rho_t, 1-eps, 1+eps) A) - beta KL_t,
                  rho_t = pi_theta(o_t) / pi_old(o_t),
                  KL_t = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1   (the "k3" estimator: unbiased, always >= 0),
                  with mu gradient steps (inner updates) on the same batch. The clip stops a step from moving a
                  token's probability far from where it was sampled; the KL keeps the policy near the reference.

Loss normalisation: how "mean over tokens" is taken is a flag, and it matters.
  - "sequence" (the DeepSeekMath paper): average the token terms of each completion, then average the completions:
        J = 1/N sum_i 1/|o_i| sum_t term_{i,t}.
    Every completion weighs the same, so a token of a short completion weighs more than a token of a long one. For a
    wrong answer (A < 0) the penalty per token is diluted by length, so long wrong answers are punished less per
    token than short ones, and long right answers are rewarded less: the objective itself biases response length
    ("Understanding R1-Zero-Like Training: A Critical Perspective", Liu et al., arXiv 2503.20783, Dr. GRPO).
  - "token" (DAPO, arXiv 2503.14476): average over all completion tokens of the batch,
        J = 1 / sum_i |o_i| * sum_i sum_t term_{i,t},
    so every token weighs the same whatever the length of its completion: no per-sequence length bias.
  Dr. GRPO also drops the std division of stage (3): a group with one right answer in G has a small std, so its
  advantages are scaled up, and such nearly uniform groups (too easy or too hard) weigh more than informative ones.
  It is a flag (divide_by_std, train_rl.py --no-std); the default divides, as DeepSeekMath does.

Groups whose G rewards are all equal (all right, or all wrong) have zero advantage: they would only add the KL term,
at the full cost of a forward and backward pass. With drop_uniform_groups they are left out of stages (4)-(5), as
DAPO's "dynamic sampling" does (DAPO then samples more prompts to refill the batch; we do not, so a batch shrinks).
On a small CPU this is most of the saving: early on, most groups of hard problems are all wrong.

pi_old: the first inner update runs on the policy that sampled the batch, so pi_old's log-probs are that pass's
log-probs, detached (rho = 1 exactly at the first update, no extra forward pass); later inner updates reuse them.

Optional process rewards (DeepSeekMath's process supervision): each step j of o_i gets a reward r_{i,j}; all step
rewards of a group are normalised by their mean and std, and a token's advantage is the sum of the normalised rewards
of the steps that end at or after it. `process_advantages` computes it from step scores; the outcome advantage is
added to it, weighted by process_weight. The step rewards come from a PRM (r_{i,j} = its P(good), train_rl.py --prm),
or, because our tasks can label every step, from the exact step labels (`exact_step_rewards`, train_rl.py
--exact-process-rewards): still a rule-based reward, and the upper bound of what a PRM could give. Why it could help:
an outcome reward gives every token of a wrong solution the same blame, although one slipped digit made it wrong;
step rewards put the blame on the step where the solution went off track, and they rank attempts of a problem that no
sample solves by how far each got. On the tiny preset it did not beat outcome rewards alone (README, stage 4).

Across ranks (torchrun, nano_reasoner/distributed.py): each rank samples the groups of its share of the prompts (a
group never straddles two ranks, so stages (2)-(3) need nothing from the others), the objective's normaliser (kept
completions, or kept tokens) is counted over all ranks, and the gradients are averaged before each of the mu steps:
the update is the one a single process makes on the same samples. A rank whose groups were all dropped still takes
part, with a zero gradient. The statistics are averaged over the ranks, each weighted by what it was taken over.

Simplifications against the paper:
  - one policy, one reference model (the starting checkpoint, never refreshed; DeepSeekMath refreshes it during
    iterative RL), no reward model training alongside;
  - the whole batch goes through one forward pass per inner update (no mini-batches inside an update);
  - groups with equal rewards are dropped from the update (drop_uniform_groups), so they get no KL term either;
  - entropy is estimated from the sampled tokens, H ~ -mean log pi(o_t): unbiased at temperature 1, no full-vocabulary
    pass;
  - rewards are rule-based only (plus an optional PRM), with a small format reward as in R1-Zero;
  - std in stage (3) is the population std of the G rewards (the paper does not say which).
"""
import contextlib
import time
from dataclasses import dataclass, field

import torch

from nano_reasoner import distributed, prm, tasks
from nano_reasoner.sampling import generate, sequence_logprobs

LOSS_NORMS = ("sequence", "token")


@dataclass
class GRPOConfig:
    group_size: int = 8             # G: completions sampled per prompt
    max_new_tokens: int = 160       # completion budget per sample (prompt + budget must fit the block size)
    temperature: float = 1.0        # sampling temperature (1 = on-policy)
    format_weight: float = 0.1      # reward for a well-formed trace, added to the accuracy reward (0 or 1)
    clip_eps: float = 0.2           # epsilon of clip(rho, 1 - eps, 1 + eps)
    kl_beta: float = 0.04           # beta, weight of the k3 KL to the reference model
    inner_updates: int = 2          # mu: gradient steps per sampled batch
    loss_norm: str = "sequence"     # "sequence" (DeepSeekMath) or "token" (DAPO)
    advantage_eps: float = 1e-4     # eps in (r - mean) / (std + eps)
    divide_by_std: bool = True      # False: A = r - mean, Dr. GRPO (a nearly uniform group's tiny std inflates A)
    grad_clip: float = 1.0          # gradient norm clip per update
    process_weight: float = 0.0     # weight of process advantages (0 = outcome rewards only)
    drop_uniform_groups: bool = True  # leave out groups whose G rewards are all equal (their advantages are 0)


@dataclass
class Rollout:
    """Stage (1)'s output: B problems x G completions, rows prompt-major (row b * G + g is sample g of problem b)."""
    problems: list                  # (B,) tasks.Problem
    prompt_tokens: list             # (B,) [bos] + prompt ids
    completion_tokens: list         # (N,) generated ids, eos included when it was reached
    completions: list               # (N,) decoded text after the prompt
    sampled_logprobs: torch.Tensor  # (N, T) log pi_old of each sampled token, 0 past the end
    lengths: torch.Tensor           # (N,) generated tokens per row
    group_size: int
    decode_tokens: int = 0
    verdicts: list = field(default_factory=list)  # (N,) tasks.Verdict, filled in stage (2)


# ---------------------------------------------------------------------------------------------- (1) sample

def rollout(model, tokenizer, problems, config, seed):
    """Stage (1): G samples per problem from one batched sampler call (one prefill per prompt, then a fork)."""
    assert len(problems) > 0 and config.group_size >= 1
    prompts = [tokenizer.encode_prompt(tasks.format_prompt(problem)) for problem in problems]
    budget = min(config.max_new_tokens, model.config.block_size - max(len(p) for p in prompts))
    was_training = model.training
    model.eval()
    result = generate(model, prompts, budget, num_samples=config.group_size, temperature=config.temperature,
                      stop_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id, seed=seed)
    model.train(was_training)
    completion_tokens = [result.row_tokens(i) for i in range(len(prompts) * config.group_size)]
    return Rollout(problems=list(problems), prompt_tokens=prompts, completion_tokens=completion_tokens,
                   completions=[tokenizer.decode(tokens) for tokens in completion_tokens],
                   sampled_logprobs=result.logprobs, lengths=result.lengths, group_size=config.group_size,
                   decode_tokens=result.decode_tokens)


# ---------------------------------------------------------------------------------------------- (2) rewards

def rule_rewards(problems, completions, group_size, format_weight):
    """
    Stage (2): r_i = accuracy_i + format_weight * is_well_formed_i, from the exact verifiers.
    problems (B,), completions (N = B * G,) prompt-major. -> rewards (N,) float, is_correct (N,) bool, verdicts (N,).
    """
    assert len(completions) == len(problems) * group_size
    verdicts = [tasks.verify(problems[i // group_size], completion) for i, completion in enumerate(completions)]
    is_correct = torch.tensor([v.is_correct for v in verdicts], dtype=torch.bool)          # (N,)
    is_well_formed = torch.tensor([v.is_well_formed for v in verdicts], dtype=torch.bool)  # (N,)
    rewards = is_correct.float() + format_weight * is_well_formed.float()                 # (N,)
    return rewards, is_correct, verdicts


def is_reward_hack(problem, verdict, completion):
    """
    Did this countdown attempt claim the target without legal reasoning? True when the trace is well formed, a step
    is illegal, and the trace says it reached the target anyway: its last step's result is the target
    ("7*9=36;3 36" after "52-91=9", numbers units digit first) or its answer expression alone makes the target. The
    verifier pays nothing for either (every step must be legal); this only names what the model tried, for the report.
    arith is never counted: its verifier judges the final answer, which cannot be right by accident of bad steps.
    """
    if problem.task != "countdown" or verdict.is_correct or not verdict.is_well_formed:
        return False
    if not verdict.reason.startswith("step"):
        return False  # the steps are legal: an honest wrong answer
    steps = tasks.parse_completion(completion).steps
    target = problem.text.split("->")[1].strip()
    # a step reads "a op b=c;numbers left": c is the step's result, written units digit first
    last_result = tasks.flip_digits(steps[-1].split("=")[-1].split(";")[0].strip()) if steps else ""
    if last_result == target:
        return True
    return tasks.verify(problem, tasks.format_completion([], verdict.answer)).is_correct


# ---------------------------------------------------------------------------------------------- (3) advantages

def group_advantages(rewards, group_size, eps=1e-4, divide_by_std=True):
    """
    Stage (3): A_i = (r_i - mean(r_group)) / (std(r_group) + eps), per group of G consecutive rows; with
    divide_by_std=False, A_i = r_i - mean(r_group) (Dr. GRPO).
    rewards (N,) with N = B * G -> advantages (N,). Each group's advantages sum to zero; equal rewards give zero.
    """
    assert rewards.dim() == 1 and rewards.numel() % group_size == 0
    # BEGIN SOLUTION part 10
    grouped = rewards.view(-1, group_size)                 # (B, G)
    mean = grouped.mean(dim=1, keepdim=True)               # (B, 1)
    std = grouped.std(dim=1, unbiased=False, keepdim=True)  # (B, 1) population std of the group
    advantages = (grouped - mean) / (std + eps) if divide_by_std else grouped - mean  # (B, G)
    # equal rewards give exactly 0: float rounding in the mean of e.g. eight 0.1s would otherwise leave ~1e-5,
    # which Adam (it divides by the gradient's own scale) would turn into full-size random steps
    is_uniform = grouped.max(dim=1, keepdim=True).values == grouped.min(dim=1, keepdim=True).values  # (B, 1)
    return advantages.masked_fill(is_uniform, 0.0).view(-1)  # (N,)
    # END SOLUTION


def process_advantages(step_scores, step_ends, group_size, num_tokens, eps=1e-4):
    """
    Process supervision (DeepSeekMath 4.1.3): step rewards normalised over the whole group, then a token's advantage
    is the sum of the normalised rewards of the steps ending at or after it.
    step_scores: (N,) lists of per-step rewards; step_ends: (N,) lists of the completion index of each step's last
    token (step_end_positions); num_tokens: T_c. -> (N, T_c) float.
    """
    N = len(step_scores)
    assert N == len(step_ends) and N % group_size == 0
    advantages = torch.zeros(N, num_tokens)
    for start in range(0, N, group_size):
        group_scores = [s for row in step_scores[start:start + group_size] for s in row]
        if not group_scores:
            continue
        all_scores = torch.tensor(group_scores, dtype=torch.float)
        mean, std = all_scores.mean(), all_scores.std(unbiased=False)
        for row in range(start, start + group_size):
            for score, end in zip(step_scores[row], step_ends[row]):
                # the normalised reward of a step counts for every token up to and including its last one
                advantages[row, : end + 1] += (score - mean) / (std + eps)
    return advantages


# ---------------------------------------------------------------------------------------------- (4) log-probs

def completion_logprobs(model, rollout_batch):
    """Stage (4): log pi(o_t | q, o_<t) for every completion token, teacher-forced -> (logprobs, mask), (N, T_c)."""
    G = rollout_batch.group_size
    prompts = [rollout_batch.prompt_tokens[i // G] for i in range(len(rollout_batch.completion_tokens))]
    sequences = [prompt + completion for prompt, completion in zip(prompts, rollout_batch.completion_tokens)]
    return sequence_logprobs(model, sequences, [len(prompt) for prompt in prompts])


def subset(rollout_batch, is_kept):
    """The rows where is_kept (N,) is True, whole groups at a time, as a smaller Rollout; None when no row is kept."""
    G = rollout_batch.group_size
    kept_groups = is_kept.view(-1, G)[:, 0].tolist()  # (B,)
    if not any(kept_groups):
        return None
    rows = [i for i, keep in enumerate(is_kept.tolist()) if keep]
    return Rollout(problems=[p for p, keep in zip(rollout_batch.problems, kept_groups) if keep],
                   prompt_tokens=[p for p, keep in zip(rollout_batch.prompt_tokens, kept_groups) if keep],
                   completion_tokens=[rollout_batch.completion_tokens[i] for i in rows],
                   completions=[rollout_batch.completions[i] for i in rows],
                   sampled_logprobs=rollout_batch.sampled_logprobs[rows], lengths=rollout_batch.lengths[rows],
                   group_size=G)


# ---------------------------------------------------------------------------------------------- (5) loss

def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, kl_beta, loss_norm):
    """
    Stage (5): the negated GRPO objective, and statistics.

    logprobs (N, T) log pi_theta (with gradients); old_logprobs, ref_logprobs (N, T) without; advantages (N,) one per
    completion, or (N, T) one per token (process supervision); mask (N, T) bool, True on completion tokens.
    -> (loss, {"kl", "clip_frac", "ratio"}) with the statistics as floats averaged over real tokens.
    """
    N, T = logprobs.shape
    assert old_logprobs.shape == ref_logprobs.shape == mask.shape == (N, T)
    assert loss_norm in LOSS_NORMS, f"loss_norm must be one of {LOSS_NORMS}"
    token_advantages = advantages[:, None].expand(N, T) if advantages.dim() == 1 else advantages  # (N, T)
    assert token_advantages.shape == (N, T)
    old_logprobs, ref_logprobs = old_logprobs.detach(), ref_logprobs.detach()  # only pi_theta is trained
    mask_float = mask.float()

    # BEGIN SOLUTION part 11
    # rho_t = pi_theta / pi_old = exp(log pi_theta - log pi_old)
    ratio = torch.exp(logprobs - old_logprobs)                                   # (N, T)
    # min(rho A, clip(rho, 1 - eps, 1 + eps) A): the pessimistic bound of PPO
    surrogate = torch.minimum(ratio * token_advantages,
                              ratio.clamp(1 - clip_eps, 1 + clip_eps) * token_advantages)  # (N, T)
    # KL_t = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1, the k3 estimator of KL(pi_theta || pi_ref)
    log_ref_over_theta = ref_logprobs - logprobs
    kl = torch.exp(log_ref_over_theta) - log_ref_over_theta - 1                  # (N, T)
    per_token = (surrogate - kl_beta * kl) * mask_float                          # (N, T), 0 past each end

    if loss_norm == "sequence":
        # J = 1/N sum_i 1/|o_i| sum_t term_{i,t}
        lengths = mask_float.sum(dim=1).clamp(min=1)                             # (N,)
        objective = (per_token.sum(dim=1) / lengths).mean()
    else:
        # J = 1/sum_i |o_i| sum_i sum_t term_{i,t}
        objective = per_token.sum() / mask_float.sum().clamp(min=1)
    # END SOLUTION

    num_tokens = mask_float.sum().clamp(min=1)
    with torch.no_grad():
        stats = {
            "kl": float((kl * mask_float).sum() / num_tokens),
            "clip_frac": float((((ratio - 1).abs() > clip_eps).float() * mask_float).sum() / num_tokens),
            "ratio": float((ratio * mask_float).sum() / num_tokens),
        }
    return -objective, stats


# ---------------------------------------------------------------------------------------------- one batch

def grpo_step(policy, reference, optimizer, tokenizer, problems, config, seed, autocast=None, step_scorer=None):
    """
    Stages (1)-(5) on one batch of problems, with config.inner_updates gradient steps. -> dict of statistics
    (reward, acc, format, kl, clip_frac, entropy, response_len, sample_s, update_s, hack_frac, kept_frac), the
    rollout, and per row whether it is a reward-hack attempt. KL and clip_frac are 0 when no group was kept.

    reference: the frozen model of the KL term (never trained). autocast: a context manager factory for the
    forward passes (bf16 on CUDA). step_scorer: used when config.process_weight > 0: (problem per row, prompt tokens
    per row, completion tokens per row) -> per row, a reward at each of step_end_positions (a PRM's P(good), or
    exact_step_rewards).
    """
    assert config.loss_norm in LOSS_NORMS
    make_autocast = autocast or contextlib.nullcontext
    G = config.group_size

    # (1) sample
    t_sample = time.time()
    batch = rollout(policy, tokenizer, problems, config, seed)
    sample_s = time.time() - t_sample

    t_update = time.time()
    # (2) rewards
    rewards, is_correct, batch.verdicts = rule_rewards(problems, batch.completions, G, config.format_weight)
    # (3) group-relative advantages
    device = next(policy.parameters()).device
    advantages = group_advantages(rewards, G, config.advantage_eps, config.divide_by_std).to(device)  # (N,)
    if config.process_weight > 0:
        assert step_scorer is not None, "process_weight > 0 needs a step_scorer (a PRM, or exact_step_rewards)"
        row_prompts = [batch.prompt_tokens[i // G] for i in range(len(batch.completion_tokens))]
        row_problems = [problems[i // G] for i in range(len(batch.completion_tokens))]
        step_scores = step_scorer(row_problems, row_prompts, batch.completion_tokens)  # (N,) lists, one per step end
        step_ends = [step_end_positions(tokens, tokenizer) for tokens in batch.completion_tokens]
        assert [len(scores) for scores in step_scores] == [len(ends) for ends in step_ends]
        num_tokens = max(len(tokens) for tokens in batch.completion_tokens)
        process = process_advantages(step_scores, step_ends, G, num_tokens, config.advantage_eps).to(device)
        advantages = advantages[:, None] + config.process_weight * process  # (N, T_c): outcome + process
    is_kept = torch.ones(len(batch.completion_tokens), dtype=torch.bool)  # (N,)
    if config.drop_uniform_groups:
        is_kept = (advantages.view(len(problems), G, -1) != 0).flatten(1).any(dim=1).repeat_interleave(G).cpu()
    update_batch = subset(batch, is_kept)

    stats = {"kl": 0.0, "clip_frac": 0.0}
    loss = torch.zeros(())
    kept_rows = 0 if update_batch is None else len(update_batch.completion_tokens)
    kept_tokens = 0 if update_batch is None else sum(len(tokens) for tokens in update_batch.completion_tokens)
    # the mean of stage (5) is over the kept completions (or tokens) of every rank: this rank's share of them
    (scale,), total_kept = distributed.loss_scales([kept_rows if config.loss_norm == "sequence" else kept_tokens])
    if total_kept > 0:  # some rank kept a group (one process: this one did)
        if update_batch is not None:
            kept_advantages = advantages[is_kept.to(device)]
            # (4) log-probs of the reference (no gradients: it is never trained)
            with torch.no_grad(), make_autocast():
                ref_logprobs, _ = completion_logprobs(reference, update_batch)  # (N', T_c)
            if kept_advantages.dim() == 2:
                kept_advantages = kept_advantages[:, :ref_logprobs.shape[1]]  # (N', T_c): the kept rows' longest
        policy.train()
        old_logprobs = None
        for _ in range(config.inner_updates):
            optimizer.zero_grad(set_to_none=True)
            if update_batch is not None:
                with make_autocast():
                    logprobs, mask = completion_logprobs(policy, update_batch)  # (N', T_c), with gradients
                if old_logprobs is None:
                    # pi_old is the policy that sampled: at the first update it equals pi_theta (rho = 1 exactly)
                    old_logprobs = logprobs.detach()
                # (5) loss and one gradient step
                loss, stats = grpo_loss(logprobs.float(), old_logprobs.float(), ref_logprobs.float(), kept_advantages,
                                        mask, config.clip_eps, config.kl_beta, config.loss_norm)
                (loss * scale).backward()
            distributed.average_gradients(policy)  # over the ranks (a rank that kept nothing adds zeros)
            torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
            optimizer.step()
    update_s = time.time() - t_update

    lengths = batch.lengths.float()
    # entropy H = E[-log pi(o_t)] estimated on the sampled tokens themselves (on-policy at temperature 1)
    entropy = float(-batch.sampled_logprobs.sum() / lengths.sum().clamp(min=1))
    hacks = [is_reward_hack(problems[i // G], verdict, completion)
             for i, (verdict, completion) in enumerate(zip(batch.verdicts, batch.completions))]
    summary = {
        "reward": float(rewards.mean()),
        "acc": float(is_correct.float().mean()),
        "format": float(torch.tensor([v.is_well_formed for v in batch.verdicts]).float().mean()),
        "loss": float(loss.detach()),
        "kl": stats["kl"],
        "clip_frac": stats["clip_frac"],
        "entropy": entropy,
        "response_len": float(lengths.mean()),
        "hack_frac": sum(hacks) / len(hacks),
        "kept_frac": float(is_kept.float().mean()),
        "sample_s": sample_s,
        "update_s": update_s,
        "decode_tokens": batch.decode_tokens,
    }
    # over the ranks: each mean weighted by the rows or tokens it was taken over (one process: unchanged)
    n_rows, n_tokens = len(batch.completion_tokens), float(lengths.sum())
    weights = {"reward": n_rows, "acc": n_rows, "format": n_rows, "response_len": n_rows, "hack_frac": n_rows,
               "kept_frac": n_rows, "entropy": n_tokens, "kl": kept_tokens, "clip_frac": kept_tokens,
               "loss": kept_rows if config.loss_norm == "sequence" else kept_tokens}
    summary.update(distributed.weighted_means({key: summary[key] for key in weights}, weights))
    summary["decode_tokens"] = round(distributed.all_reduce_sum([batch.decode_tokens])[0])
    return summary, batch, hacks


def exact_step_rewards(tokenizer):
    """A step_scorer from the tasks' exact step labels (prm.label_trace): 1 at a step end while the solution is still
    sound (every step so far legal, and for countdown the target still reachable), 0 from the first bad step on;
    the `</think>` line scores 1 when every step was sound, the answer line and eos score the outcome."""
    def step_scorer(problems, prompts, completions):
        return [prm.label_trace(tokenizer, problem, prompt, completion).exact
                for problem, prompt, completion in zip(problems, prompts, completions)]
    return step_scorer


def step_end_positions(completion_tokens, tokenizer):
    """Completion indices where a step ends: every newline token (step lines, the `</think>` line) and the first eos.
    These are the positions a PRM scores (prm.scoring_positions reads the same ones)."""
    positions = []
    for index, token in enumerate(completion_tokens):
        if token in (tokenizer.step_end_id, tokenizer.eos_id):
            positions.append(index)
        if token == tokenizer.eos_id:
            break
    return positions
