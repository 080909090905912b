"""
Reinforcement learning with rule-based rewards (GRPO, R1-Zero style), starting from the pre-trained policy.

    python train_rl.py --preset tiny --init runs/tiny/pretrain/ckpt.pt --out runs/tiny/rl

Recipe: load the pre-trained policy and freeze a copy of it as the reference -> greedy accuracy and pass@k on the
held-out problems (before) -> for each step: draw fresh problems of both tasks (never the held-out ones), then the
five GRPO stages of nano_reasoner/grpo.py: (1) sample G completions per problem in one sampler call, (2) rewards from
the exact verifiers, (3) group-relative advantages, (4) log-probs of policy and reference, (5) the clipped objective
with a k3 KL penalty, mu gradient steps -> the same evaluation (after). Writes to --out: ckpt.pt (+ .json, kind
"policy", so infer.py loads it), config.json, metrics.jsonl, rl.png, rl_dynamics.png, eval.json and a section of
report.md (in the parent folder of --out). Resume after a stop with --resume (same flags).
"""
import argparse
import copy
import os
import signal
import time

import torch

from nano_reasoner import tasks
from nano_reasoner.checkpoint import CheckpointError, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from nano_reasoner.cli import UserError, autocast, cosine_lr, load_policy, parse_range, pick_device, run_main
from nano_reasoner.evaluate import accuracy_by_difficulty, attempt_problems
from nano_reasoner.grpo import LOSS_NORMS, GRPOConfig, exact_step_rewards, grpo_step
from nano_reasoner.model import configure_optimizer
from nano_reasoner.prm import load_verifier, score_steps
from nano_reasoner.report import MetricsLogger, format_duration, markdown_table, plot_panels, progress_line, write_json, write_report_section
from nano_reasoner.evaluate import EVAL_DIFFICULTIES, held_out_problems

PRESETS = {
    #        steps, prompts per step, G, lr, mu, completion budget, pass@k
    # tiny: the reasoner's search traces run to ~500 tokens, so fewer, smaller steps than a straight policy needs
    "tiny": dict(steps=30, prompts_per_step=16, group_size=8, lr=5e-5, inner_updates=2, max_new_tokens=480, pass_k=8,
                 eval_problems=200),
    "small": dict(steps=300, prompts_per_step=64, group_size=16, lr=1e-4, inner_updates=2, max_new_tokens=480, pass_k=16,
                  eval_problems=500),
    "base": dict(steps=600, prompts_per_step=128, group_size=16, lr=5e-5, inner_updates=2, max_new_tokens=480, pass_k=16,
                 eval_problems=500),
}
EXAMPLES_KEPT = 3  # reward-hack attempts kept for the report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="tiny", help="sizes: tiny (CPU, ~10 min), small, base (GPU)")
    parser.add_argument("--init", default=None, help="pre-trained policy checkpoint (default runs/<preset>/pretrain/ckpt.pt)")
    parser.add_argument("--out", default=None, help="run folder (default runs/<preset>/rl)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/ckpt.pt")
    # rl
    parser.add_argument("--steps", type=int, help="GRPO steps, one sampled batch each (preset)")
    parser.add_argument("--prompts-per-step", type=int, help="problems per batch, half of each task (preset)")
    parser.add_argument("--group-size", type=int, help="G: completions sampled per problem (preset)")
    parser.add_argument("--inner-updates", type=int, help="mu: gradient steps per sampled batch (preset)")
    parser.add_argument("--max-new-tokens", type=int, help="completion budget per sample, capped by the context (preset)")
    parser.add_argument("--clip-eps", type=float, default=0.2, help="ratio clip epsilon (default 0.2)")
    parser.add_argument("--kl-beta", type=float, default=0.04, help="weight of the k3 KL to the reference (default 0.04)")
    parser.add_argument("--format-weight", type=float, default=0.1, help="reward for a well-formed trace (default 0.1)")
    parser.add_argument("--loss-norm", choices=LOSS_NORMS, default="sequence",
                        help="average per sequence then over sequences (DeepSeekMath) or over all tokens (DAPO) "
                             "(default sequence)")
    parser.add_argument("--prm", default=None, help="a PRM checkpoint (train_prm.py): adds process rewards (default: none)")
    parser.add_argument("--exact-process-rewards", action="store_true",
                        help="add process rewards from the tasks' exact step labels instead of a PRM")
    parser.add_argument("--process-weight", type=float, default=0.5,
                        help="weight of the process advantages next to the outcome ones, with --prm or "
                             "--exact-process-rewards (default 0.5)")
    parser.add_argument("--arith-difficulties", default="1-4", help="operations per arith RL problem (default 1-4)")
    parser.add_argument("--countdown-difficulties", default="3-4", help="numbers per countdown RL problem (default 3-4)")
    # optimization
    parser.add_argument("--lr", type=float, help="learning rate after warmup, constant (preset)")
    parser.add_argument("--warmup", type=int, default=5, help="linear warmup steps (default 5)")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (default 1.0)")
    # evaluation and output
    parser.add_argument("--eval-problems", type=int, help="held-out problems per task for greedy accuracy (preset; tiny 200)")
    parser.add_argument("--pass-k", type=int, help="k of pass@k, sampled at temperature 1 (preset)")
    parser.add_argument("--pass-k-problems", type=int, default=50, help="held-out problems per task for pass@k, the first of the greedy ones (default 50)")
    parser.add_argument("--log-every", type=int, default=1, help="steps between progress lines (default 1)")
    parser.add_argument("--save-every", type=int, default=20, help="steps between checkpoints (default 20)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of everything (default 1337; the held-out problems use it too)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.init = args.init or os.path.join("runs", args.preset, "pretrain", "ckpt.pt")
    args.out = args.out or os.path.join("runs", args.preset, "rl")
    for key in ("steps", "prompts_per_step", "group_size", "inner_updates", "max_new_tokens", "eval_problems",
                "pass_k", "pass_k_problems", "log_every", "save_every"):
        if getattr(args, key) <= 0:
            raise UserError(f"--{key.replace('_', '-')} must be positive")
    if args.prompts_per_step % len(tasks.TASKS):
        raise UserError(f"--prompts-per-step must be a multiple of {len(tasks.TASKS)} (half the problems of each task)")
    # written as "not (good)" so that nan, which fails every comparison, is refused too
    if not (args.lr > 0 and 0 < args.clip_eps < 1 and args.kl_beta >= 0 and args.format_weight >= 0 and args.grad_clip > 0):
        raise UserError("--lr and --grad-clip must be positive, --clip-eps in (0, 1), --kl-beta and --format-weight >= 0")
    if args.group_size < 2:
        raise UserError("--group-size must be at least 2: GRPO's advantage compares samples of the same problem")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a file: give a folder")
    if args.prm and args.exact_process_rewards:
        raise UserError("--prm and --exact-process-rewards both give process rewards: choose one")
    if not args.process_weight >= 0:
        raise UserError("--process-weight must be >= 0")
    args.pass_k_problems = min(args.pass_k_problems, args.eval_problems)
    return args


def process_rewards_text(args):
    """Where the process rewards come from, for the report."""
    if args.prm:
        return f"process rewards from {args.prm} (weight {args.process_weight})"
    if args.exact_process_rewards:
        return f"process rewards from the exact step labels (weight {args.process_weight})"
    return "outcome rewards only"


def rl_problems(step, args, difficulties, held_out_texts):
    """The step's problems: half of each task, seeded by the step (a resumed run draws the same ones), none of them
    held out. Seeds start at 1e6, far from pre-training's (seed + i) and the held-out ones (seed + 10000 + i)."""
    per_task = args.prompts_per_step // len(tasks.TASKS)
    problems = []
    for i, task in enumerate(tasks.TASKS):
        seed = 1_000_000 + args.seed + step * len(tasks.TASKS) + i
        fresh = [p for p in tasks.generate(task, 2 * per_task, seed, difficulties[task]) if p.text not in held_out_texts]
        problems.extend(fresh[:per_task])
    return problems


def evaluate_policy(model, tokenizer, held_out, args):
    """Greedy accuracy (by difficulty) on every held-out problem, pass@k (k samples at temperature 1) on the first
    pass_k_problems of them, with the RL completion budget (max_new_tokens) -> {task: {"greedy": {"all": acc, "3": acc, ...}, "pass_at_k": acc}}, and the greedy
    attempts."""
    model.eval()
    results, greedy_attempts = {}, {}
    for task, problems in held_out.items():
        attempts, _ = attempt_problems(model, tokenizer, problems, temperature=0.0, seed=args.seed,
                                       max_new_tokens=args.max_new_tokens)
        greedy = accuracy_by_difficulty(problems, [a[0].verdict.is_correct for a in attempts])
        sampled, _ = attempt_problems(model, tokenizer, problems[:args.pass_k_problems], num_samples=args.pass_k,
                                      temperature=1.0, seed=args.seed, max_new_tokens=args.max_new_tokens)
        pass_at_k = sum(any(a.verdict.is_correct for a in group) for group in sampled) / len(sampled)
        results[task] = {"greedy": {str(key): value for key, value in greedy.items()}, "pass_at_k": pass_at_k}
        greedy_attempts[task] = attempts
    return results, greedy_attempts


def print_eval(label, results, args):
    for task, result in results.items():
        by_difficulty = ", ".join(f"{d}: {result['greedy'][str(d)]:.1%}" for d in EVAL_DIFFICULTIES[task])
        print(f"{label} {task}: greedy {result['greedy']['all']:.1%} ({by_difficulty}) | "
              f"pass@{args.pass_k} {result['pass_at_k']:.1%}", flush=True)


def main():
    args = parse_args()
    device = pick_device(args.device, args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "ckpt.pt")
    if os.path.exists(ckpt_path) and not args.resume:
        raise UserError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out")

    # model: the policy starts as the pre-trained checkpoint; the reference is a frozen copy of it
    policy, tokenizer, init_ckpt = load_policy(args.init, device)
    reference = copy.deepcopy(policy).eval()
    for param in reference.parameters():
        param.requires_grad_(False)  # the reference is never trained: the KL anchors to where RL started
    optimizer = configure_optimizer(policy, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    grpo_config = GRPOConfig(group_size=args.group_size, max_new_tokens=args.max_new_tokens, temperature=1.0,
                             format_weight=args.format_weight, clip_eps=args.clip_eps, kl_beta=args.kl_beta,
                             inner_updates=args.inner_updates, loss_norm=args.loss_norm, grad_clip=args.grad_clip,
                             process_weight=args.process_weight if args.prm or args.exact_process_rewards else 0.0)
    step_scorer = exact_step_rewards(tokenizer) if args.exact_process_rewards else None
    if args.prm:
        verifier, verifier_tokenizer, _ = load_verifier(args.prm, device)
        if verifier_tokenizer.sha256 != tokenizer.sha256:
            raise UserError(f"{args.prm} was trained with another tokenizer than {args.init}: pass the PRM of this policy")

        def step_scorer(problems, prompts, completions):
            return score_steps(verifier, tokenizer, prompts, completions)
    print(f"policy: {policy.num_params() / 1e6:.2f}M parameters from {args.init}, device {device}")

    # data: the held-out problems are only evaluated on; RL draws fresh problems each step
    held_out = held_out_problems(args.eval_problems, seed=1337)
    held_out_texts = {p.text for problems in held_out.values() for p in problems}
    difficulties = {"arith": parse_range(args.arith_difficulties, "--arith-difficulties"),
                    "countdown": parse_range(args.countdown_difficulties, "--countdown-difficulties")}
    for task, values in difficulties.items():
        allowed = tasks.module(task).DIFFICULTIES
        if not set(values) <= set(allowed):
            raise UserError(f"--{task}-difficulties {values}: {task} difficulties lie in {allowed[0]}-{allowed[-1]}")

    step, metrics = 0, MetricsLogger(args.out)
    state = {"eval_before": None, "hack_examples": [], "hack_count": 0, "samples_seen": 0, "sample_s": 0.0, "update_s": 0.0}
    if args.resume and os.path.exists(ckpt_path):
        try:
            ckpt = load_checkpoint(ckpt_path, expected_kind="policy")
        except CheckpointError as error:
            raise UserError(str(error)) from None
        if ckpt["tokenizer_sha256"] != tokenizer.sha256 or ckpt["model_config"] != init_ckpt["model_config"]:
            raise UserError(f"{ckpt_path} was made from another --init: resume with the flags of that run")
        policy.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        restore_rng_state(ckpt["rng_state"])
        step, state = ckpt["step"], ckpt["extra"]
        metrics.truncate_after(step)
        print(f"resumed from {ckpt_path} at step {step}")
    write_json(os.path.join(args.out, "config.json"), {"args": vars(args), "model_config": init_ckpt["model_config"],
                                                       "grpo": vars(grpo_config), "params": policy.num_params()})

    def save(at_step):
        save_checkpoint(ckpt_path, kind="policy", model_state=policy.state_dict(), model_config=init_ckpt["model_config"],
                        tokenizer_bytes=tokenizer.model_bytes, step=at_step, args=vars(args),
                        optimizer_state=optimizer.state_dict(), rng_state=capture_rng_state(), extra=state)

    # before: the pre-trained policy on the held-out problems
    if state["eval_before"] is None:
        t_eval = time.time()
        state["eval_before"], _ = evaluate_policy(policy, tokenizer, held_out, args)
        print_eval("before", state["eval_before"], args)
        print(f"(evaluation {time.time() - t_eval:.0f}s)")

    interrupted = False

    def on_sigint(signum, frame):
        nonlocal interrupted
        interrupted = True
    signal.signal(signal.SIGINT, on_sigint)

    t_start, start_step = time.time(), step
    while step < args.steps and not interrupted:
        lr = cosine_lr(step, args.steps, args.lr, args.warmup, min_lr_frac=1.0)  # warmup, then constant
        for group in optimizer.param_groups:
            group["lr"] = lr
        problems = rl_problems(step, args, difficulties, held_out_texts)
        summary, batch, hacks = grpo_step(policy, reference, optimizer, tokenizer, problems, grpo_config,
                                          seed=args.seed + step, autocast=lambda: autocast(device),
                                          step_scorer=step_scorer)
        step += 1
        for index, is_hack in enumerate(hacks):
            if is_hack and len(state["hack_examples"]) < EXAMPLES_KEPT:
                state["hack_examples"].append({"step": step, "problem": problems[index // args.group_size].text,
                                               "completion": batch.completions[index],
                                               "reason": batch.verdicts[index].reason})
        state["hack_count"] += sum(hacks)
        state["samples_seen"] += len(hacks)
        state["sample_s"] += summary["sample_s"]
        state["update_s"] += summary["update_s"]
        by_task = {f"{task}_acc": sum(v.is_correct for i, v in enumerate(batch.verdicts)
                                      if problems[i // args.group_size].task == task) /
                   sum(problems[i // args.group_size].task == task for i in range(len(batch.verdicts)))
                   for task in tasks.TASKS}
        metrics.log(step=step, lr=lr, **summary, **by_task)
        if step % args.log_every == 0 or step == args.steps:
            print(progress_line(step, args.steps, time.time() - t_start, start_step=start_step, reward=summary["reward"],
                                acc=summary["acc"], kl=summary["kl"], clip_frac=summary["clip_frac"],
                                entropy=summary["entropy"], len=round(summary["response_len"], 1),
                                sample=f"{summary['sample_s']:.1f}s", update=f"{summary['update_s']:.1f}s"), flush=True)
        if step % args.save_every == 0:
            save(step)
    save(step)
    if interrupted:
        print(f"interrupted: saved {ckpt_path} at step {step}; continue with --resume")
        return
    train_seconds = state["sample_s"] + state["update_s"]

    # after: the same held-out problems, the same way
    t_eval = time.time()
    eval_after, greedy_attempts = evaluate_policy(policy, tokenizer, held_out, args)
    print_eval("before", state["eval_before"], args)
    print_eval("after ", eval_after, args)
    print(f"(evaluation {time.time() - t_eval:.0f}s)")
    write_json(os.path.join(args.out, "eval.json"), {"before": state["eval_before"], "after": eval_after,
                                                     "pass_k": args.pass_k, "pass_k_problems": args.pass_k_problems})

    history = [m for m in metrics.read() if "reward" in m]
    steps_axis = [m["step"] for m in history]

    def series(*keys):
        return {key: (steps_axis, [m[key] for m in history]) for key in keys}
    title = f"GRPO ({args.preset}, G={args.group_size}, {args.prompts_per_step} prompts/step, loss {args.loss_norm})"
    plot_panels(os.path.join(args.out, "rl.png"), [
        {"title": "reward and accuracy of the samples", "xlabel": "step", "ylabel": "mean over the batch",
         "series": series("reward", "arith_acc", "countdown_acc")},
        {"title": "KL to the reference (k3)", "xlabel": "step", "ylabel": "per token", "series": series("kl")},
        {"title": "clipped tokens (last inner update)", "xlabel": "step", "ylabel": "fraction", "series": series("clip_frac")},
    ], title=title)
    plot_panels(os.path.join(args.out, "rl_dynamics.png"), [
        {"title": "entropy (estimated on sampled tokens)", "xlabel": "step", "ylabel": "nats per token", "series": series("entropy")},
        {"title": "response length", "xlabel": "step", "ylabel": "tokens", "series": series("response_len")},
        {"title": "time per step", "xlabel": "step", "ylabel": "seconds", "series": series("sample_s", "update_s")},
    ], title=title)

    # report: before/after table, curves, reward hacking
    rows = []
    for task in tasks.TASKS:
        before, after = state["eval_before"][task], eval_after[task]
        rows.append([task, f"{before['greedy']['all']:.1%}", f"{after['greedy']['all']:.1%}",
                     f"{100 * (after['greedy']['all'] - before['greedy']['all']):+.1f}",
                     f"{before['pass_at_k']:.1%}", f"{after['pass_at_k']:.1%}",
                     ", ".join(f"{d}: {before['greedy'][str(d)]:.0%} → {after['greedy'][str(d)]:.0%}"
                               for d in EVAL_DIFFICULTIES[task])])
    if state["hack_examples"]:
        example = state["hack_examples"][0]
        hack_text = (f"The model tried it: {state['hack_count']} of {state['samples_seen']} sampled completions "
                     f"claimed the countdown target after an illegal step (no accuracy reward was paid). "
                     f"First seen at step {example['step']}:\n\n```\ncountdown: {example['problem']}\n"
                     f"{example['completion']}\n-> {example['reason']}\n```")
    else:
        hack_text = (f"No reward-hacking attempt was seen: none of the {state['samples_seen']} sampled completions "
                     f"claimed the countdown target after an illegal step.")
    sample_share = state["sample_s"] / max(train_seconds, 1e-9)
    run_name = os.path.basename(os.path.abspath(args.out))
    write_report_section(os.path.join(os.path.dirname(os.path.abspath(args.out)), "report.md"), "rl", "\n".join([
        f"## Reinforcement learning: GRPO with rule-based rewards ({args.preset})", "",
        f"`python train_rl.py --preset {args.preset} --init {args.init} --out {args.out}`", "",
        f"{args.steps} steps of {args.prompts_per_step} problems x G={args.group_size} samples, mu={args.inner_updates} "
        f"updates per batch, lr {args.lr:g}, clip {args.clip_eps}, KL beta {args.kl_beta}, loss normalised per "
        f"{args.loss_norm}, {process_rewards_text(args)}; RL problems: arith {args.arith_difficulties} operations, countdown "
        f"{args.countdown_difficulties} numbers. {format_duration(train_seconds)} on {device}: "
        f"{sample_share:.0%} sampling, {1 - sample_share:.0%} updates (rewards and log-probs included).", "",
        f"Held-out problems ({args.eval_problems} per task for greedy accuracy, the first {args.pass_k_problems} for "
        f"pass@{args.pass_k} at temperature 1):", "",
        markdown_table(["task", "greedy before", "greedy after", "points", f"pass@{args.pass_k} before",
                        f"pass@{args.pass_k} after", "greedy by difficulty"], rows), "",
        f"![GRPO training]({run_name}/rl.png)", "", f"![GRPO dynamics]({run_name}/rl_dynamics.png)", "",
        "Entropy is estimated from the sampled tokens' log-probs (mean of -log pi), not from the full distribution.", "",
        "**Reward hacking.** " + hack_text, ""]))
    print(f"wrote {ckpt_path}, {args.out}/rl.png, {args.out}/rl_dynamics.png, report.md "
          f"({format_duration(train_seconds)} of RL: {format_duration(state['sample_s'])} sampling, "
          f"{format_duration(state['update_s'])} updates)")


if __name__ == "__main__":
    run_main(main)
