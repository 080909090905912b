"""
Post-training from rule-based rewards, starting from the reasoner: expert iteration and GRPO.

    python train_rl.py --preset tiny --init runs/tiny/reason/ckpt.pt --out runs/tiny/rl              # the preset's method
    python train_rl.py --preset tiny --init runs/tiny/reason/ckpt.pt --out runs/tiny/grpo --algo grpo

Two methods, one flag (--algo), both rewarded by the exact verifiers only:
  - ei (expert iteration, nano_reasoner/expert_iteration.py): rounds of (1) K attempts at each of a batch of fresh
    problems, (2) keep the verified ones, (3) fine-tune on them mixed with replayed original traces, (4) repeat;
  - grpo (nano_reasoner/grpo.py): per step, the five GRPO stages: (1) sample G completions per problem, (2) rewards,
    (3) group-relative advantages, (4) log-probs of policy and reference, (5) the clipped objective with a k3 KL
    penalty, mu gradient steps;
  - ei+grpo: the EI rounds, then the GRPO steps.
Recipe: load the policy (for GRPO, freeze a copy as the reference) -> greedy accuracy, pass@k and response length on
the held-out problems (before) -> the method's rounds or steps on fresh problems of both tasks (never the held-out
ones), with greedy accuracy on the first --curve-problems held-out problems every --curve-every rounds or steps,
against samples drawn -> the same evaluation (after). Writes to --out: ckpt.pt (+ .json, kind "policy", so infer.py
loads it), config.json, metrics.jsonl, rl.png, rl_dynamics.png, eval.json and a section of report.md (in the parent
folder of --out). Resume after a stop with --resume (same flags).

Several processes: `torchrun --standalone --nproc_per_node N train_rl.py ...` (nano_reasoner/distributed.py). GRPO: each
rank samples the groups of its 1/N of the prompts, gradients averaged, statistics reduced; EI: the sampler calls
dealt out to the ranks and the attempts gathered, each fine-tuning batch split. Rank 0 alone evaluates and writes.
"""
import argparse
import copy
import os
import signal
import time

import torch

from nano_reasoner import distributed, tasks
from nano_reasoner.checkpoint import CheckpointError, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from nano_reasoner.cli import (UserError, autocast, cosine_lr, fill_from_preset,
                               load_policy, parse_range, pick_device, run_main)
from nano_reasoner.evaluate import accuracy_by_difficulty, attempt_problems
from nano_reasoner.expert_iteration import EIConfig, ei_round, replay_examples
from nano_reasoner.grpo import LOSS_NORMS, GRPOConfig, exact_step_rewards, grpo_step, is_reward_hack
from nano_reasoner.model import configure_optimizer
from nano_reasoner.prm import load_verifier, score_steps
from nano_reasoner.report import MetricsLogger, format_duration, markdown_table, plot_panels, progress_line, write_json, write_report_section
from nano_reasoner.evaluate import EVAL_DIFFICULTIES, held_out_problems

PRESETS = {
    # grpo: steps, prompts per step, G, lr, mu, completion budget; ei: rounds, problems per round, K, m, fine-tuning
    # steps per round and their lr; evaluation: pass@k, held-out problems per task, the curve's problems and spacing
    "tiny": dict(algo="ei", steps=30, prompts_per_step=16, group_size=8, lr=5e-5, inner_updates=2, max_new_tokens=480,
                 ei_rounds=6, ei_problems=256, ei_samples=8, ei_keep=2, ei_steps=50, ei_lr=5e-5, ei_ema=0.99,
                 ei_temperature=0.7, ei_focus_failures=False,
                 pass_k=8, eval_problems=500, curve_problems=100, curve_every=2),
    "small": dict(algo="ei", steps=300, prompts_per_step=64, group_size=16, lr=1e-4, inner_updates=2, max_new_tokens=480,
                  ei_rounds=10, ei_problems=2048, ei_samples=16, ei_keep=2, ei_steps=200, ei_lr=5e-5, ei_ema=0.99,
                  ei_temperature=0.7, ei_focus_failures=False,
                  pass_k=16, eval_problems=500, curve_problems=200, curve_every=1),
    "base": dict(algo="ei", steps=600, prompts_per_step=128, group_size=16, lr=5e-5, inner_updates=2, max_new_tokens=480,
                 ei_rounds=10, ei_problems=4096, ei_samples=16, ei_keep=2, ei_steps=400, ei_lr=5e-5, ei_ema=0.99,
                 ei_temperature=0.7, ei_focus_failures=False,
                 pass_k=16, eval_problems=500, curve_problems=200, curve_every=1),
}
ALGOS = ("ei", "grpo", "ei+grpo")
EXAMPLES_KEPT = 3  # reward-hack attempts kept for the report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="tiny", help="sizes: tiny (CPU, ~10 min), small, base (GPU)")
    parser.add_argument("--init", default=None, help="the policy to start from (default runs/<preset>/reason/ckpt.pt, "
                        "the reasoner)")
    parser.add_argument("--out", default=None, help="run folder (default runs/<preset>/rl)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/ckpt.pt")
    parser.add_argument("--algo", choices=ALGOS, help="ei (expert iteration), grpo, or ei+grpo (the EI rounds, then "
                        "the GRPO steps) (preset)")
    # expert iteration
    parser.add_argument("--ei-rounds", type=int, help="rounds of attempt -> filter -> fine-tune (preset)")
    parser.add_argument("--ei-problems", type=int, help="fresh problems per round, two countdown to one arith (preset)")
    parser.add_argument("--ei-samples", type=int, help="K: attempts per problem (preset)")
    parser.add_argument("--ei-keep", type=int, help="m: verified attempts kept per problem, shortest first (preset)")
    parser.add_argument("--ei-steps", type=int, help="fine-tuning steps per round, batches of --ei-batch-size (preset)")
    parser.add_argument("--ei-lr", type=float, help="learning rate of the fine-tuning, constant (preset)")
    parser.add_argument("--ei-batch-size", type=int, default=16, help="sequences per fine-tuning step (default 16)")
    parser.add_argument("--ei-replay-share", type=float, default=0.25,
                        help="share of each fine-tuning batch that replays the original traces (default 0.25)")
    parser.add_argument("--ei-temperature", type=float, help="sampling temperature of the attempts (preset)")
    parser.add_argument("--ei-ema", type=float, help="decay of the weight average that attempts and is handed on, "
                        "0 = the last weights (preset)")
    parser.add_argument("--ei-focus-failures", action=argparse.BooleanOptionalAction,
                        help="answer each problem greedily first, sample K only where that is wrong, keep the right "
                        "greedy answers as they are (preset)")
    parser.add_argument("--ei-arith-difficulties", default="3-4",
                        help="operations per arith EI problem: where the policy still fails (default 3-4)")
    # grpo
    parser.add_argument("--steps", type=int, help="GRPO steps, one sampled batch each (preset)")
    parser.add_argument("--prompts-per-step", type=int, help="problems per batch, half of each task (preset)")
    parser.add_argument("--group-size", type=int, help="G: completions sampled per problem (preset)")
    parser.add_argument("--inner-updates", type=int, help="mu: gradient steps per sampled batch (preset)")
    parser.add_argument("--max-new-tokens", type=int, help="completion budget per sample, capped by the context (preset)")
    parser.add_argument("--clip-eps", type=float, default=0.2, help="ratio clip epsilon (default 0.2)")
    parser.add_argument("--kl-beta", type=float, default=0.04, help="weight of the k3 KL to the reference (default 0.04)")
    parser.add_argument("--no-std", action="store_true",
                        help="advantages r - mean(group), not divided by the group's std (Dr. GRPO, arXiv 2503.20783)")
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
    parser.add_argument("--eval-problems", type=int, help="held-out problems per task for greedy accuracy (preset)")
    parser.add_argument("--pass-k", type=int, help="k of pass@k, sampled at temperature 1 (preset)")
    parser.add_argument("--pass-k-problems", type=int, default=100, help="held-out problems per task for pass@k, the first of the greedy ones (default 100)")
    parser.add_argument("--curve-problems", type=int, help="held-out problems per task of the accuracy curve (preset)")
    parser.add_argument("--curve-every", type=int, help="rounds or steps between points of the accuracy curve, 0 = "
                        "before and after only (preset)")
    parser.add_argument("--log-every", type=int, default=1, help="steps between progress lines (default 1)")
    parser.add_argument("--save-every", type=int, default=20, help="steps between checkpoints (default 20)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of everything (default 1337; the held-out problems use it too)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: all cores, shared "
                        "out among the processes torchrun starts)")
    args = parser.parse_args(argv)
    fill_from_preset(args, PRESETS[args.preset])
    args.init = args.init or os.path.join("runs", args.preset, "reason", "ckpt.pt")
    args.out = args.out or os.path.join("runs", args.preset, "rl")
    for key in ("steps", "prompts_per_step", "group_size", "inner_updates", "max_new_tokens", "eval_problems",
                "pass_k", "pass_k_problems", "log_every", "save_every", "ei_rounds", "ei_problems", "ei_samples",
                "ei_keep", "ei_steps", "ei_batch_size", "curve_problems"):
        if getattr(args, key) <= 0:
            raise UserError(f"--{key.replace('_', '-')} must be positive")
    if args.curve_every < 0:
        raise UserError("--curve-every must be >= 0 (0: no curve)")
    if args.ei_problems < 3:
        raise UserError("--ei-problems must be at least 3: two countdown problems to one arith problem")
    if not (0 < args.ei_lr < float("inf") and 0 <= args.ei_replay_share <= 1 and 0 < args.ei_temperature < float("inf")
            and 0 <= args.ei_ema < 1):
        raise UserError("--ei-lr and --ei-temperature must be positive, --ei-replay-share and --ei-ema in [0, 1)")
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
    try:
        args.world_size = distributed.env_world_size()  # torchrun's ranks (1: a single process)
    except ValueError as error:
        raise UserError(f"{error}: start several processes with torchrun, which sets it") from None
    if "grpo" in args.algo.split("+") and args.prompts_per_step % args.world_size:
        raise UserError(f"--prompts-per-step {args.prompts_per_step} does not split evenly into {args.world_size} "
                        f"ranks: give a multiple of {args.world_size}")
    if "ei" in args.algo.split("+") and args.ei_batch_size % args.world_size:
        raise UserError(f"--ei-batch-size {args.ei_batch_size} does not split evenly into {args.world_size} ranks: "
                        f"give a multiple of {args.world_size}")
    args.pass_k_problems = min(args.pass_k_problems, args.eval_problems)
    args.curve_problems = min(args.curve_problems, args.eval_problems)
    return args


def process_rewards_text(args):
    """Where the process rewards come from, for the report."""
    if args.prm:
        return f"process rewards from {args.prm} (weight {args.process_weight})"
    if args.exact_process_rewards:
        return f"process rewards from the exact step labels (weight {args.process_weight})"
    return "outcome rewards only"


def method_text(args):
    """The method's name, for titles."""
    return {"ei": "expert iteration", "grpo": "GRPO", "ei+grpo": "expert iteration, then GRPO"}[args.algo]


def method_details(args):
    """One sentence per method with its settings, for the report."""
    parts = []
    if "ei" in args.algo.split("+"):
        parts.append(f"{args.ei_rounds} EI rounds of {args.ei_problems} fresh problems (two countdown to one arith, "
                     f"arith {args.ei_arith_difficulties} operations) x K={args.ei_samples} attempts at temperature "
                     f"{args.ei_temperature:g}, at most m={args.ei_keep} verified ones kept per problem, then "
                     f"{args.ei_steps} fine-tuning steps of {args.ei_batch_size} at lr {args.ei_lr:g}, "
                     f"{args.ei_replay_share:.0%} of each batch replaying the original traces.")
    if "grpo" in args.algo.split("+"):
        parts.append(f"{args.steps} GRPO steps of {args.prompts_per_step} problems x G={args.group_size} samples, "
                     f"mu={args.inner_updates} updates per batch, lr {args.lr:g}, clip {args.clip_eps}, KL beta "
                     f"{args.kl_beta}, loss normalised per {args.loss_norm}, advantages "
                     f"{'not ' if args.no_std else ''}divided by the group's std, {process_rewards_text(args)}; arith "
                     f"{args.arith_difficulties} operations, countdown {args.countdown_difficulties} numbers.")
    return " ".join(parts)


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


def ei_problems(round_index, args, difficulties, held_out_texts):
    """A round's problems, two countdown to one arith (countdown's searches are the long, weak part; arith traces are
    short), and fresh problems for the replayed original traces; seeded by the round, none held out. Seeds start at
    2e6."""
    wanted = {"countdown": args.ei_problems - args.ei_problems // 3, "arith": args.ei_problems // 3}
    attempted, replayed = [], []
    for i, task in enumerate(tasks.TASKS):
        seed = 2_000_000 + args.seed + 4 * round_index + 2 * i
        fresh = [p for p in tasks.generate(task, 2 * wanted[task] + 10, seed, difficulties[task])
                 if p.text not in held_out_texts]
        attempted.extend(fresh[:wanted[task]])
        # replay: about twice the traces the round's batches draw (they draw at random), arith twice as often as
        # countdown (the reason stage's mix)
        n_replay = args.ei_steps * args.ei_batch_size * (2 if task == "arith" else 1) // 3 + 1
        replay_difficulties = difficulties["replay_" + task]
        replayed.extend(p for p in tasks.generate(task, 2 * n_replay, seed + 1, replay_difficulties)
                        if p.text not in held_out_texts)
    return attempted, replayed


def replay_trace_config(init_ckpt):
    """How the original traces are written: as the policy was last fine-tuned (its checkpoint's args), else as the
    pipeline's reason stage writes them (search countdown traces, straight arith traces, products through digits)."""
    init_args = init_ckpt.get("args") or {}
    return {"trace_kinds": {"arith": init_args.get("arith_traces", "straight"),
                            "countdown": init_args.get("countdown_traces", "search")},
            "granularity": init_args.get("granularity", tasks.DEFAULT_GRANULARITY),
            "countdown_products": init_args.get("countdown_products", "digits"),
            "arith_difficulties": init_args.get("arith_difficulties", "1-4")}


def curve_accuracy(model, tokenizer, held_out, args):
    """Greedy accuracy on the first curve_problems held-out problems per task -> {task: acc}."""
    model.eval()
    accuracy = {}
    for task, problems in held_out.items():
        attempts, _ = attempt_problems(model, tokenizer, problems[:args.curve_problems], temperature=0.0,
                                       seed=args.seed, max_new_tokens=args.max_new_tokens)
        accuracy[task] = sum(a[0].verdict.is_correct for a in attempts) / len(attempts)
    return accuracy


def evaluate_policy(model, tokenizer, held_out, args):
    """Greedy accuracy (by difficulty) on every held-out problem, pass@k (k samples at temperature 1) on the first
    pass_k_problems of them, and the mean greedy response length, with the RL completion budget (max_new_tokens)
    -> {task: {"greedy": {"all": acc, "3": acc, ...}, "pass_at_k": acc, "mean_len": tokens}}, and the greedy
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
        mean_len = sum(len(a[0].tokens) for a in attempts) / len(attempts)  # greedy completion tokens
        results[task] = {"greedy": {str(key): value for key, value in greedy.items()}, "pass_at_k": pass_at_k,
                         "mean_len": mean_len}
        greedy_attempts[task] = attempts
    return results, greedy_attempts


def print_eval(label, results, args):
    for task, result in results.items():
        # `if`: a small --eval-problems sample may hold no problem of some difficulty
        by_difficulty = ", ".join(f"{d}: {result['greedy'][str(d)]:.1%}" for d in EVAL_DIFFICULTIES[task]
                                  if str(d) in result["greedy"])
        print(f"{label} {task}: greedy {result['greedy']['all']:.1%} ({by_difficulty}) | "
              f"pass@{args.pass_k} {result['pass_at_k']:.1%} | {result['mean_len']:.0f} tokens", flush=True)


def main():
    args = parse_args()
    # under torchrun: join the other ranks (rank r drives GPU r, or shares the CPU cores); alone: nothing changes
    device = distributed.setup(pick_device(args.device, args.threads or distributed.threads_per_rank()))
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "ckpt.pt")
    if os.path.exists(ckpt_path) and not args.resume:
        raise UserError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out")

    # model: the policy starts as the pre-trained checkpoint; the reference is a frozen copy of it
    policy, tokenizer, init_ckpt = load_policy(args.init, device, for_training=True)
    reference = copy.deepcopy(policy).eval()
    for param in reference.parameters():
        param.requires_grad_(False)  # the reference is never trained: the KL anchors to where RL started
    optimizer = configure_optimizer(policy, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    grpo_config = GRPOConfig(group_size=args.group_size, max_new_tokens=args.max_new_tokens, temperature=1.0,
                             format_weight=args.format_weight, clip_eps=args.clip_eps, kl_beta=args.kl_beta,
                             inner_updates=args.inner_updates, loss_norm=args.loss_norm, grad_clip=args.grad_clip,
                             divide_by_std=not args.no_std,
                             process_weight=args.process_weight if args.prm or args.exact_process_rewards else 0.0)
    step_scorer = exact_step_rewards(tokenizer) if args.exact_process_rewards else None
    if args.prm:
        verifier, verifier_tokenizer, _ = load_verifier(args.prm, device)
        if verifier_tokenizer.sha256 != tokenizer.sha256:
            raise UserError(f"{args.prm} was trained with another tokenizer than {args.init}: pass the PRM of this policy")

        def step_scorer(problems, prompts, completions):
            return score_steps(verifier, tokenizer, prompts, completions)
    print(f"policy: {policy.num_params() / 1e6:.2f}M parameters from {args.init}, device {device}")

    # data: the held-out problems are only evaluated on; RL draws fresh problems each step or round
    held_out = held_out_problems(args.eval_problems, seed=1337)
    held_out_texts = {p.text for problems in held_out.values() for p in problems}
    replay_config = replay_trace_config(init_ckpt)
    difficulties = {"arith": parse_range(args.arith_difficulties, "--arith-difficulties"),
                    "countdown": parse_range(args.countdown_difficulties, "--countdown-difficulties")}
    ei_difficulties = {"arith": parse_range(args.ei_arith_difficulties, "--ei-arith-difficulties"),
                       "countdown": difficulties["countdown"],
                       "replay_arith": parse_range(replay_config["arith_difficulties"], "the init's arith difficulties"),
                       "replay_countdown": difficulties["countdown"]}
    for flag, task, values in [("--arith-difficulties", "arith", difficulties["arith"]),
                               ("--countdown-difficulties", "countdown", difficulties["countdown"]),
                               ("--ei-arith-difficulties", "arith", ei_difficulties["arith"])]:
        allowed = tasks.module(task).DIFFICULTIES
        if not set(values) <= set(allowed):
            raise UserError(f"{flag} {values}: {task} difficulties lie in {allowed[0]}-{allowed[-1]}")
    ei_config = EIConfig(samples_per_problem=args.ei_samples, keep_per_problem=args.ei_keep,
                         temperature=args.ei_temperature, max_new_tokens=args.max_new_tokens,
                         finetune_steps=args.ei_steps, batch_size=args.ei_batch_size,
                         replay_share=args.ei_replay_share, grad_clip=args.grad_clip,
                         decision_weight=(init_ckpt.get("args") or {}).get("decision_weight", 1.0),
                         ema=args.ei_ema, focus_failures=args.ei_focus_failures)
    # the run is a sequence of iterations: the EI rounds first, then the GRPO steps
    n_ei = args.ei_rounds if "ei" in args.algo.split("+") else 0
    n_grpo = args.steps if "grpo" in args.algo.split("+") else 0
    total = n_ei + n_grpo
    # EI trains the policy and hands on its weight average (the average attempts too); GRPO starts from that average
    averaged = copy.deepcopy(policy) if n_ei and args.ei_ema > 0 else None

    step, metrics = 0, MetricsLogger(args.out)
    state = {"eval_before": None, "hack_examples": [], "hack_count": 0, "samples_seen": 0, "sample_s": 0.0,
             "update_s": 0.0, "kept_seen": 0}
    if args.resume and os.path.exists(ckpt_path):
        try:
            ckpt = load_checkpoint(ckpt_path, expected_kind="policy")
        except CheckpointError as error:
            raise UserError(str(error)) from None
        if ckpt["tokenizer_sha256"] != tokenizer.sha256 or ckpt["model_config"] != init_ckpt["model_config"]:
            raise UserError(f"{ckpt_path} was made from another --init: resume with the flags of that run")
        step, state = ckpt["step"], ckpt["extra"]
        training_state = state.pop("training_state", None)
        if averaged is not None and step < n_ei:
            averaged.load_state_dict(ckpt["model_state"])
            policy.load_state_dict(training_state)
        else:
            averaged = None
            policy.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        restore_rng_state(ckpt["rng_state"])
        print(f"resumed from {ckpt_path} at step {step}")
    if distributed.is_main():
        metrics.truncate_after(step)
        write_json(os.path.join(args.out, "config.json"), {"args": vars(args), "model_config": init_ckpt["model_config"],
                                                           "grpo": vars(grpo_config), "ei": vars(ei_config),
                                                           "replay": replay_config, "params": policy.num_params()})

    def handed_on():
        """The weights the run hands on: EI's weight average while it has one, else the trained policy."""
        return averaged if averaged is not None else policy

    def save(at_step):
        if not distributed.is_main():
            return  # every rank holds the same weights; rank 0 writes them
        # with a weight average the trained weights are kept beside it, for --resume
        extra = dict(state, training_state=policy.state_dict()) if averaged is not None else state
        save_checkpoint(ckpt_path, kind="policy", model_state=handed_on().state_dict(),
                        model_config=init_ckpt["model_config"], tokenizer_bytes=tokenizer.model_bytes, step=at_step,
                        args=vars(args), optimizer_state=optimizer.state_dict(), rng_state=capture_rng_state(),
                        extra=extra)

    # before: the starting policy on the held-out problems (rank 0; the others wait at the first collective)
    if state["eval_before"] is None and distributed.is_main():
        t_eval = time.time()
        state["eval_before"], before_attempts = evaluate_policy(policy, tokenizer, held_out, args)
        print_eval("before", state["eval_before"], args)
        print(f"(evaluation {time.time() - t_eval:.0f}s)")
        if args.curve_every:  # the curve's first point: the same first curve_problems, from the greedy pass just made
            metrics.log(step=0, samples=0, **{
                f"curve_{task}": sum(a[0].verdict.is_correct for a in attempts[:args.curve_problems]) /
                len(attempts[:args.curve_problems]) for task, attempts in before_attempts.items()})

    # a Ctrl-C is seen by each rank at its own moment: the ranks agree after every round or step whether to stop
    interrupted, stop_requested = False, False

    def on_sigint(signum, frame):
        nonlocal stop_requested
        stop_requested = True
    signal.signal(signal.SIGINT, on_sigint)

    t_start, start_step = time.time(), step
    while step < total and not interrupted:
        if step < n_ei:  # an expert-iteration round (expert_iteration.py)
            problems, replay_problems = ei_problems(step, args, ei_difficulties, held_out_texts)
            replay = [ex for ex in replay_examples(tokenizer, replay_problems, replay_config["trace_kinds"],
                                                   replay_config["granularity"], replay_config["countdown_products"])
                      if len(ex.tokens) <= policy.config.block_size]
            summary, kept, per_problem = ei_round(policy, optimizer, tokenizer, problems, replay, ei_config,
                                                  args.ei_lr, seed=args.seed + step, autocast=lambda: autocast(device),
                                                  averaged=averaged)
            step += 1
            for problem, samples in zip(problems, per_problem):
                for _, completion, verdict in samples:
                    if is_reward_hack(problem, verdict, completion):  # never kept: the verifier said wrong
                        state["hack_count"] += 1
                        if len(state["hack_examples"]) < EXAMPLES_KEPT:
                            state["hack_examples"].append({"step": step, "problem": problem.text,
                                                           "completion": completion, "reason": verdict.reason})
            state["samples_seen"] += summary["round_samples"]
            state["kept_seen"] += summary["kept"]
            state["sample_s"] += summary["sample_s"]
            state["update_s"] += summary["update_s"]
            if distributed.is_main():
                metrics.log(step=step, phase="ei", lr=args.ei_lr, samples=state["samples_seen"], **summary)
            print(progress_line(step, total, time.time() - t_start, start_step=start_step, loss=summary["loss"],
                                kept=summary["kept"], acc_countdown=summary["countdown_acc"],
                                acc_arith=summary["arith_acc"], solved_countdown=summary["countdown_solved"],
                                sample=f"{summary['sample_s']:.0f}s", update=f"{summary['update_s']:.0f}s"), flush=True)
        else:  # a GRPO step (grpo.py)
            if averaged is not None:  # after the EI rounds: GRPO trains on from the weights EI handed on
                policy.load_state_dict(averaged.state_dict())
                averaged = None
            grpo_step_index = step - n_ei
            lr = cosine_lr(grpo_step_index, n_grpo, args.lr, args.warmup, min_lr_frac=1.0)  # warmup, then constant
            for group in optimizer.param_groups:
                group["lr"] = lr
            problems = rl_problems(grpo_step_index, args, difficulties, held_out_texts)
            # each rank samples the groups of its share of the prompts, with a seed of its own
            local_problems = distributed.shard(problems)
            summary, batch, hacks = grpo_step(policy, reference, optimizer, tokenizer, local_problems, grpo_config,
                                              seed=distributed.rank_seed(args.seed + step),
                                              autocast=lambda: autocast(device), step_scorer=step_scorer)
            step += 1
            # every rank gets every group back, in the order of `problems`: the counts below are the whole batch's
            G = args.group_size
            groups = distributed.gather([(batch.completions[i * G:(i + 1) * G], batch.verdicts[i * G:(i + 1) * G],
                                          hacks[i * G:(i + 1) * G]) for i in range(len(local_problems))])
            completions, verdicts, hacks = ([row for group in groups for row in group[k]] for k in range(3))
            for index, is_hack in enumerate(hacks):
                if is_hack and len(state["hack_examples"]) < EXAMPLES_KEPT:
                    state["hack_examples"].append({"step": step, "problem": problems[index // args.group_size].text,
                                                   "completion": completions[index],
                                                   "reason": verdicts[index].reason})
            state["hack_count"] += sum(hacks)
            state["samples_seen"] += len(hacks)
            state["sample_s"] += summary["sample_s"]
            state["update_s"] += summary["update_s"]
            by_task = {f"{task}_acc": sum(v.is_correct for i, v in enumerate(verdicts)
                                          if problems[i // args.group_size].task == task) /
                       sum(problems[i // args.group_size].task == task for i in range(len(verdicts)))
                       for task in tasks.TASKS}
            if distributed.is_main():
                metrics.log(step=step, phase="grpo", lr=lr, samples=state["samples_seen"], **summary, **by_task)
            if step % args.log_every == 0 or step == total:
                print(progress_line(step, total, time.time() - t_start, start_step=start_step,
                                    reward=summary["reward"], acc=summary["acc"], kl=summary["kl"],
                                    clip_frac=summary["clip_frac"], entropy=summary["entropy"],
                                    len=round(summary["response_len"], 1), sample=f"{summary['sample_s']:.1f}s",
                                    update=f"{summary['update_s']:.1f}s"), flush=True)
        if args.curve_every and (step % args.curve_every == 0 or step == total) and distributed.is_main():
            curve = curve_accuracy(handed_on(), tokenizer, held_out, args)
            metrics.log(step=step, samples=state["samples_seen"], **{f"curve_{task}": acc for task, acc in curve.items()})
            print(f"curve step {step} | samples {state['samples_seen']} | " +
                  " | ".join(f"{task} {acc:.1%}" for task, acc in curve.items()), flush=True)
        if step % args.save_every == 0 or step < n_ei:
            save(step)  # every EI round is minutes of work: never lose one
        interrupted = distributed.any_rank(stop_requested)
    save(step)
    distributed.teardown()  # the ranks part here: rank 0 evaluates alone
    if interrupted:
        print(f"interrupted: saved {ckpt_path} at step {step}; continue with --resume")
        return
    if not distributed.is_main():
        distributed.exit_worker()  # rank 0 alone evaluates and reports
    train_seconds = state["sample_s"] + state["update_s"]

    # after: the same held-out problems, the same way
    t_eval = time.time()
    eval_after, greedy_attempts = evaluate_policy(handed_on(), tokenizer, held_out, args)
    print_eval("before", state["eval_before"], args)
    print_eval("after ", eval_after, args)
    print(f"(evaluation {time.time() - t_eval:.0f}s)")
    write_json(os.path.join(args.out, "eval.json"), {"before": state["eval_before"], "after": eval_after,
                                                     "pass_k": args.pass_k, "pass_k_problems": args.pass_k_problems,
                                                     "train_seconds": train_seconds})

    # plots, against samples drawn so that rounds of EI and steps of GRPO share one axis
    logged = metrics.read()
    history = [m for m in logged if "phase" in m]
    curve = [m for m in logged if "curve_countdown" in m]

    def series(rows, *keys):
        return {key: ([m["samples"] for m in rows if key in m], [m[key] for m in rows if key in m]) for key in keys
                if any(key in m for m in rows)}
    grpo_rows = [m for m in history if m["phase"] == "grpo"]
    ei_rows = [m for m in history if m["phase"] == "ei"]
    title = method_text(args)
    panels = [{"title": "accuracy of the samples", "xlabel": "samples drawn", "ylabel": "mean over the batch",
               "series": series(history, "countdown_acc", "arith_acc")}]
    if curve:
        panels.append({"title": f"held-out greedy accuracy (first {args.curve_problems})", "xlabel": "samples drawn",
                       "ylabel": "accuracy", "series": series(curve, "curve_countdown", "curve_arith")})
    if ei_rows:
        panels.append({"title": "EI: verified attempts kept per round", "xlabel": "samples drawn",
                       "ylabel": "attempts", "series": series(ei_rows, "kept")})
    if grpo_rows:
        panels.append({"title": "GRPO: KL to the reference (k3)", "xlabel": "samples drawn", "ylabel": "per token",
                       "series": series(grpo_rows, "kl")})
    plot_panels(os.path.join(args.out, "rl.png"), panels, title=title)
    dynamics = [{"title": "response length of the samples", "xlabel": "samples drawn", "ylabel": "tokens",
                 "series": series(history, "response_len")},
                {"title": "time per round or step", "xlabel": "samples drawn", "ylabel": "seconds",
                 "series": series(history, "sample_s", "update_s")}]
    if grpo_rows:
        dynamics.insert(0, {"title": "GRPO: entropy (estimated on sampled tokens)", "xlabel": "samples drawn",
                            "ylabel": "nats per token", "series": series(grpo_rows, "entropy")})
    plot_panels(os.path.join(args.out, "rl_dynamics.png"), dynamics, title=title)

    # report: before/after table, curves, reward hacking
    rows = []
    for task in tasks.TASKS:
        before, after = state["eval_before"][task], eval_after[task]
        rows.append([task, f"{before['greedy']['all']:.1%}", f"{after['greedy']['all']:.1%}",
                     f"{100 * (after['greedy']['all'] - before['greedy']['all']):+.1f}",
                     f"{before['pass_at_k']:.1%}", f"{after['pass_at_k']:.1%}",
                     f"{before['mean_len']:.0f}", f"{after['mean_len']:.0f}",
                     ", ".join(f"{d}: {before['greedy'][str(d)]:.0%} → {after['greedy'][str(d)]:.0%}"
                               for d in EVAL_DIFFICULTIES[task] if str(d) in before["greedy"])])
    if state["hack_examples"]:
        example = state["hack_examples"][0]
        hack_text = (f"The model tried it: {state['hack_count']} of {state['samples_seen']} sampled completions "
                     f"claimed the countdown target after an illegal step (no reward was paid, none was kept as "
                     f"training data). "
                     f"First seen at step {example['step']}:\n\n```\ncountdown: {example['problem']}\n"
                     f"{example['completion']}\n-> {example['reason']}\n```")
    else:
        hack_text = (f"No reward-hacking attempt was seen: none of the {state['samples_seen']} sampled completions "
                     f"claimed the countdown target after an illegal step.")
    sample_share = state["sample_s"] / max(train_seconds, 1e-9)
    run_name = os.path.basename(os.path.abspath(args.out))
    write_report_section(os.path.join(os.path.dirname(os.path.abspath(args.out)), "report.md"), "rl", "\n".join([
        f"## Post-training: {method_text(args)} ({args.preset})", "",
        f"`python train_rl.py --preset {args.preset} --algo {args.algo} --init {args.init} --out {args.out}`", "",
        f"{method_details(args)} {format_duration(train_seconds)} on {device}: {sample_share:.0%} sampling, "
        f"{1 - sample_share:.0%} updates; {state['samples_seen']} samples drawn.", "",
        f"Held-out problems ({args.eval_problems} per task for greedy accuracy, the first {args.pass_k_problems} for "
        f"pass@{args.pass_k} at temperature 1):", "",
        markdown_table(["task", "greedy before", "greedy after", "points", f"pass@{args.pass_k} before",
                        f"pass@{args.pass_k} after", "tokens before", "tokens after", "greedy by difficulty"], rows), "",
        f"![post-training]({run_name}/rl.png)", "", f"![post-training dynamics]({run_name}/rl_dynamics.png)", "",
        "**Reward hacking.** " + hack_text, ""]))
    print(f"wrote {ckpt_path}, {args.out}/rl.png, {args.out}/rl_dynamics.png, report.md "
          f"({format_duration(train_seconds)} of post-training: {format_duration(state['sample_s'])} sampling, "
          f"{format_duration(state['update_s'])} updates)")


if __name__ == "__main__":
    run_main(main)
