"""
Train the verifiers: a PRM on exact step labels, a PRM on Monte-Carlo step labels, an ORM, and a generative
verifier that checks answers and steps by working them out again; measure all four.

    python train_prm.py --preset tiny --policy runs/tiny/reason/ckpt.pt --out runs/tiny/prm

Recipe (the stages of nano_reasoner/prm.py and nano_reasoner/genrm.py):
  (1) data      the policy solves training problems at temperature (so its solutions hold real mistakes), plus one
                corrupted trace (tasks.corrupt) per problem; every scoring position gets its exact label, its outcome
                label, and Monte-Carlo labels from k rollouts of the policy (Math-Shepherd). For the generative
                verifier, many more samples (--genrm-problems x --genrm-samples) where the policy errs: every
                distinct countdown answer and arith step in them gets its exact check (genrm.training_data).
  (2) train     three verifiers, each initialised from the policy with a new scalar head, same data, same steps:
                PRM-exact, PRM-MC (hard or soft labels from k rollouts), ORM (the outcome label at every step end).
                With --rank-weight, each also learns to rank a right solution above a wrong one of the same problem
                (prm.ranking_loss), on pairs from the labelled traces and from --rank-problems more problems per
                task, sampled --rank-samples times each and labelled by outcome only (no rollouts, so they are cheap).
                Then the generative verifier: the policy with <good> and <bad> added, fine-tuned on check + verdict.
  (3) measure   on held-out problems: step-level AUROC and accuracy against the exact labels; agreement of Monte-
                Carlo labels with the exact ones for k = 1, 4, 16; best-of-N accuracy for N = 1, 2, ..., 64 choosing
                by each verifier, by the generative verifier's weighted vote and by majority vote, against greedy
                decoding and the pass@N oracle; each verifier's within-problem AUROC.

Writes to --out: ckpt.pt (the stage's verifier for later stages and `infer.py --verifier`: the generative one, or
with --genrm-problems 0 the PRM on --final-labels), prm_exact.pt and prm_mc.pt (the PRMs, one of them ckpt.pt when
there is no generative verifier), orm.pt, labels.pt and genrm_data.pt (the training data, reused by --resume),
config.json, metrics.jsonl, eval.json, verifiers.png, best_of_n.png and the "prm" section of report.md in the parent
folder of --out. Resume after a stop with --resume (same flags): the data and finished verifiers are reused, an
unfinished scalar verifier continues from its last checkpoint, an unfinished generative one starts again.
"""
import argparse
import dataclasses
import functools
import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass

import torch

from nano_reasoner import genrm, prm, search, tasks
from nano_reasoner.checkpoint import (CheckpointError, atomic_write, capture_rng_state, load_checkpoint,
                                      restore_rng_state, save_checkpoint)
from nano_reasoner.cli import UserError, autocast, cosine_lr, fill_from_preset, load_policy, pick_device, run_main
from nano_reasoner.evaluate import attempt_problems
from nano_reasoner.model import configure_optimizer
from nano_reasoner.report import (MetricsLogger, format_duration, markdown_table, plot_panels, progress_line,
                                  write_json, write_report_section)
from nano_reasoner.evaluate import EVAL_DIFFICULTIES, held_out_problems

PRESETS = {
    #        problems per task, policy samples per problem, steps, batch, lr, held-out problems per task
    # tiny: the reasoner's traces are long and its Monte-Carlo rollouts run ~20 per second on 2 cores, so few problems
    # and the generative verifier's: problems per task, samples per problem, fine-tuning steps (genrm.py)
    # tiny: 10 minutes on 2 cores, most of it for the generative verifier, the verifier that works (README, stage 3)
    "tiny": dict(train_problems=16, samples_per_problem=4, steps=100, batch_size=16, lr=1e-3, eval_problems=24,
                 agreement_problems=3, max_n=16, genrm_problems=160, genrm_samples=8, genrm_steps=600),
    "small": dict(train_problems=2000, samples_per_problem=8, steps=2000, batch_size=64, lr=5e-4, eval_problems=500,
                  agreement_problems=100, max_n=64, genrm_problems=1200, genrm_samples=16, genrm_steps=3000),
    "base": dict(train_problems=5000, samples_per_problem=8, steps=4000, batch_size=128, lr=3e-4, eval_problems=500,
                 agreement_problems=200, max_n=64, genrm_problems=5000, genrm_samples=16, genrm_steps=8000),
}
GENRM_DIFFICULTIES = {"arith": (3, 4), "countdown": (3, 4)}  # where the policy's samples hold mistakes
AGREEMENT_KS = (1, 4, 16)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="tiny", help="sizes: tiny (CPU), small, base (GPU)")
    parser.add_argument("--policy", default="runs/tiny/pretrain/ckpt.pt", help="policy checkpoint (default runs/tiny/pretrain/ckpt.pt)")
    parser.add_argument("--out", default="runs/tiny/prm", help="run folder (default runs/tiny/prm)")
    parser.add_argument("--resume", action="store_true", help="continue from what --out already holds")
    # data
    parser.add_argument("--train-problems", type=int, help="training problems per task (preset)")
    parser.add_argument("--samples-per-problem", type=int, help="policy solutions per training problem (preset)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the policy for data, "
                        "rollouts and best-of-N (default 1.0)")
    parser.add_argument("--mc-k", type=int, default=4, help="Monte-Carlo rollouts per step for PRM-MC (default 4)")
    parser.add_argument("--mc-label", choices=("hard", "soft"), default="hard",
                        help="PRM-MC labels: hard = any rollout correct, soft = fraction correct (default hard)")
    parser.add_argument("--tasks", default=",".join(tasks.TASKS), help="tasks to train and measure on, comma "
                        f"separated (default {','.join(tasks.TASKS)})")
    parser.add_argument("--rank-weight", type=float, default=0.0, help="weight of the within-problem ranking loss "
                        "(prm.ranking_loss) added to each verifier's loss; 0 = off (default 0)")
    parser.add_argument("--rank-problems", type=int, default=0, help="extra problems per task whose samples are used "
                        "only for ranking pairs (outcome labels only, no rollouts; default 0)")
    parser.add_argument("--rank-samples", type=int, default=8, help="policy samples per --rank-problems problem "
                        "(default 8)")
    parser.add_argument("--final-labels", choices=("exact", "mc"), default="exact",
                        help="which PRM becomes --out/ckpt.pt when there is no generative verifier (default exact)")
    parser.add_argument("--genrm-problems", type=int, help="training problems per task of the generative verifier "
                        "(preset; 0 = none, and ckpt.pt is the PRM)")
    parser.add_argument("--genrm-samples", type=int, help="policy samples per --genrm-problems problem (preset)")
    parser.add_argument("--genrm-steps", type=int, help="fine-tuning steps of the generative verifier (preset)")
    parser.add_argument("--genrm-lr", type=float, default=3e-4, help="its learning rate (default 3e-4)")
    # optimization
    parser.add_argument("--steps", type=int, help="optimizer steps per verifier (preset)")
    parser.add_argument("--batch-size", type=int, help="solutions per step (preset)")
    parser.add_argument("--lr", type=float, help="peak learning rate (preset)")
    parser.add_argument("--warmup", type=int, default=25, help="warmup steps (default 25)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default 0.1)")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (default 1.0)")
    # evaluation and output
    parser.add_argument("--eval-problems", type=int, help="held-out problems per task for best-of-N and AUROC (preset)")
    parser.add_argument("--max-n", type=int, help="largest N of best-of-N, a power of 2 (preset)")
    parser.add_argument("--auroc-samples", type=int, default=4, help="solutions per held-out problem scored for "
                        "step-level AUROC (default 4)")
    parser.add_argument("--agreement-problems", type=int, help="held-out problems per task for the Monte-Carlo "
                        "label agreement study, 16 rollouts per step (preset)")
    parser.add_argument("--log-every", type=int, default=25, help="steps between progress lines (default 25)")
    parser.add_argument("--save-every", type=int, default=100, help="steps between checkpoints (default 100)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of everything (default 1337)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    fill_from_preset(args, PRESETS[args.preset])
    for key in ("train_problems", "samples_per_problem", "mc_k", "steps", "batch_size", "eval_problems", "max_n",
                "auroc_samples", "agreement_problems", "log_every", "save_every", "genrm_samples", "genrm_steps"):
        if getattr(args, key) <= 0:
            raise UserError(f"--{key.replace('_', '-')} must be positive")
    if args.genrm_problems < 0 or not args.genrm_lr > 0:
        raise UserError("--genrm-problems must be >= 0 (0: no generative verifier) and --genrm-lr positive")
    if args.max_n & (args.max_n - 1):
        raise UserError(f"--max-n {args.max_n}: give a power of 2 such as 64")
    if args.auroc_samples > args.max_n:
        raise UserError(f"--auroc-samples must be at most --max-n ({args.max_n})")
    if not (args.lr > 0 and args.temperature > 0 and args.grad_clip > 0):
        raise UserError("--lr, --temperature and --grad-clip must be positive")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a file: give a folder")
    args.tasks = list(dict.fromkeys(name.strip() for name in args.tasks.split(",") if name.strip()))
    if not args.tasks or not set(args.tasks) <= set(tasks.TASKS):
        raise UserError(f"--tasks {','.join(args.tasks) or 'nothing'}: choose among {', '.join(tasks.TASKS)}, "
                        f"comma separated")
    if not 0 <= args.rank_weight < float("inf") or args.rank_problems < 0 or args.rank_samples < 2:
        raise UserError("--rank-weight and --rank-problems must be >= 0, --rank-samples at least 2")
    return args


# ----------------------------------------------------------------------------------------------------------------------
# (1) data

def training_problems(args, held_out):
    """Training problems per task at the held-out difficulties, none of them held out: (the problems of the labelled
    traces, the --rank-problems more whose samples only make ranking pairs)."""
    held_out_texts = {p.text for problems in held_out.values() for p in problems}
    problems, rank_problems = [], []
    for i, task in enumerate(tasks.TASKS):
        if task not in args.tasks:
            continue
        wanted = args.train_problems + args.rank_problems
        candidates = tasks.generate(task, 2 * wanted + 100, seed=args.seed + 500 + i,
                                    difficulties=EVAL_DIFFICULTIES[task])
        fresh = list(dict.fromkeys(p for p in candidates if p.text not in held_out_texts))
        problems += fresh[:args.train_problems]
        rank_problems += fresh[args.train_problems:wanted]
    return problems, rank_problems


def sampled_traces(policy, tokenizer, problems, num_samples, temperature, seed):
    """The policy's own solutions, labelled exactly: a list per problem of LabelledTrace."""
    attempts, _ = attempt_problems(policy, tokenizer, problems, num_samples=num_samples, temperature=temperature,
                                   seed=seed, chunk_size=512)
    return [[prm.label_trace(tokenizer, a.problem, a.prompt_tokens, a.tokens) for a in per_problem]
            for per_problem in attempts]


def corrupted_traces(tokenizer, problems, granularity, seed):
    """One trace per problem with a wrong step and a consistent continuation (tasks.corrupt)."""
    rng = random.Random(seed)
    traces = []
    for problem in problems:
        steps, answer, _ = tasks.corrupt(problem, rng, granularity)
        prompt = tokenizer.encode_prompt(tasks.format_prompt(problem))
        completion = tokenizer.encode(tasks.format_completion(steps, answer)) + [tokenizer.eos_id]
        traces.append(prm.label_trace(tokenizer, problem, prompt, completion, source="corrupt"))
    return traces


def save_data(path, traces, rollouts, rank_traces):
    """The labelled training data as plain lists (loadable with weights_only), written atomically."""
    def row(t, rollouts_of_trace):
        return {"task": t.problem.task, "text": t.problem.text, "difficulty": t.problem.difficulty, "prompt": t.prompt,
                "completion": t.completion, "exact": t.exact, "outcome": t.outcome,
                "num_step_lines": t.num_step_lines, "source": t.source, "rollouts": rollouts_of_trace}
    atomic_write(path, lambda file: torch.save({"rows": [row(t, r) for t, r in zip(traces, rollouts)],
                                                "rank_rows": [row(t, []) for t in rank_traces]}, file))


def load_data(path):
    """-> (labelled traces, their rollouts, traces used only for ranking pairs)."""
    data = torch.load(path, weights_only=True)

    def trace(r):
        return prm.LabelledTrace(tasks.Problem(r["task"], r["text"], r["difficulty"]), r["prompt"], r["completion"],
                                 r["exact"], r["outcome"], r["num_step_lines"], r["source"])
    return ([trace(r) for r in data["rows"]], [r["rollouts"] for r in data["rows"]],
            [trace(r) for r in data.get("rank_rows", [])])


def genrm_pools(policy, tokenizer, args, held_out):
    """The generative verifier's data: --genrm-problems training problems per task where the policy errs
    (GENRM_DIFFICULTIES), none held out, each with --genrm-samples of the policy's solutions. -> [(problem, texts)]"""
    held_out_texts = {p.text for problems in held_out.values() for p in problems}
    problems = []
    for i, task in enumerate(tasks.TASKS):
        if task in args.tasks:
            candidates = tasks.generate(task, 2 * args.genrm_problems + 100, seed=args.seed + 900 + i,
                                        difficulties=GENRM_DIFFICULTIES[task])
            problems += list(dict.fromkeys(p for p in candidates if p.text not in held_out_texts))[:args.genrm_problems]
    pools = search.sample_pool(policy, tokenizer, problems, args.genrm_samples, temperature=args.temperature,
                               seed=args.seed + 4)
    return [(pool.problem, pool.texts) for pool in pools]


def save_genrm_pools(path, pools):
    atomic_write(path, lambda file: torch.save([{"task": p.task, "text": p.text, "difficulty": p.difficulty,
                                                 "samples": texts} for p, texts in pools], file))


def load_genrm_pools(path):
    return [(tasks.Problem(r["task"], r["text"], r["difficulty"]), r["samples"])
            for r in torch.load(path, weights_only=True)]


# ----------------------------------------------------------------------------------------------------------------------
# (2) training one verifier

def train_verifier(name, kind, ckpt_path, policy, tokenizer, traces, labels, args, device, metrics, pair_traces=(),
                   pairs=()):
    """Train (or resume, or reload when finished) one verifier on `labels` (per trace, one per scoring position),
    plus args.rank_weight x the ranking loss on batch_size // 2 of `pairs` (indices into pair_traces) per step."""
    model = prm.verifier_from_policy(policy)
    optimizer = configure_optimizer(model, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    step = 0
    if os.path.exists(ckpt_path):
        if not args.resume:
            raise UserError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out")
        try:
            ckpt = load_checkpoint(ckpt_path, expected_kind=kind)
        except CheckpointError as error:
            raise UserError(str(error)) from None
        if ckpt["model_config"] != vars(model.config) or ckpt["extra"].get("verifier") != name:
            raise UserError(f"{ckpt_path} was made with other settings: resume with the flags of that run")
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        restore_rng_state(ckpt["rng_state"])
        step = ckpt["step"]
        drop_records_after(metrics, name, step)
        print(f"{name}: resumed from {ckpt_path} at step {step}" if step < args.steps else f"{name}: already trained")

    def save(at_step):
        save_checkpoint(ckpt_path, kind=kind, model_state=model.state_dict(), model_config=vars(model.config),
                        tokenizer_bytes=tokenizer.model_bytes, step=at_step, args=vars(args),
                        optimizer_state=optimizer.state_dict(), rng_state=capture_rng_state(),
                        extra={"verifier": name, "labels": name.split("-", 1)[-1] if kind == "prm" else "outcome"})

    # the batch order is a pure function of the seed, so a resumed run takes the batches it had not taken yet
    rng = random.Random(args.seed)
    order = []
    while len(order) < args.steps * args.batch_size:
        epoch = list(range(len(traces)))
        rng.shuffle(epoch)
        order += epoch
    interrupted = False

    def on_sigint(signum, frame):
        nonlocal interrupted
        interrupted = True
    signal.signal(signal.SIGINT, on_sigint)

    model.train()
    t_start, start_step = time.time(), step
    while step < args.steps and not interrupted:
        lr = cosine_lr(step, args.steps, args.lr, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = [traces[i] for i in order[step * args.batch_size:(step + 1) * args.batch_size]]
        batch_labels = [labels[i] for i in order[step * args.batch_size:(step + 1) * args.batch_size]]
        with autocast(device):
            loss = prm.verifier_loss(model, tokenizer, [t.prompt for t in batch], [t.completion for t in batch],
                                     batch_labels)
            rank_loss = None
            if args.rank_weight > 0 and pairs:
                # a pure function of (seed, step), so a resumed run draws the pairs it would have drawn
                num_pairs = min(len(pairs), max(1, args.batch_size // 2))
                chosen = random.Random(args.seed * 1_000_003 + step).sample(pairs, num_pairs)
                rank_loss = prm.ranking_loss(model, tokenizer, [pair_traces[r] for r, _ in chosen],
                                             [pair_traces[w] for _, w in chosen])
                loss = loss + args.rank_weight * rank_loss
        if not torch.isfinite(loss):
            raise UserError(f"{name}: the loss became {loss.item()} at step {step}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        step += 1
        if step % args.log_every == 0 or step == args.steps:
            extra = {} if rank_loss is None else {"rank_loss": rank_loss.item()}
            print(f"{name} " + progress_line(step, args.steps, time.time() - t_start, start_step=start_step, loss=loss.item(),
                                             lr=lr, **extra), flush=True)
            metrics.log(verifier=name, step=step, loss=loss.item(), lr=lr, **extra)
        if step % args.save_every == 0:
            save(step)
    save(step)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    model.eval()
    return model, interrupted


def train_genrm(ckpt_path, policy, tokenizer, pools, args, device, metrics):
    """Train the generative verifier on the policy's samples (genrm.training_data), or reload it when a resumed run
    finished it (an unfinished one starts again: it has no checkpoint of its own mid-way). -> (model, its tokenizer,
    the data counts)"""
    model, verifier_tokenizer = genrm.add_verdict_tokens(policy, tokenizer)  # a new model: the policy stays as it is
    examples, counts = genrm.training_data(verifier_tokenizer, pools, policy.config.block_size)
    print(f"genrm data: {counts['problems']} problems x {args.genrm_samples} samples -> {counts['candidates']} "
          f"distinct answers and steps ({counts['good'] / max(1, counts['candidates']):.0%} good), "
          f"{counts['examples']} examples", flush=True)
    if os.path.exists(ckpt_path):
        if not args.resume:
            raise UserError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out")
        model, verifier_tokenizer = genrm.load(ckpt_path, device, tokenizer)
        print(f"genrm: already trained ({ckpt_path})")
        return model, verifier_tokenizer, counts
    drop_records_after(metrics, "genrm", 0)
    genrm.train(model, verifier_tokenizer, examples, steps=args.genrm_steps, lr=args.genrm_lr, seed=args.seed,
                log_every=args.log_every, on_log=lambda step, loss: metrics.log(verifier="genrm", step=step, loss=loss))
    save_checkpoint(ckpt_path, kind="genrm", model_state=model.state_dict(), model_config=vars(model.config),
                    tokenizer_bytes=verifier_tokenizer.model_bytes, step=args.genrm_steps, args=vars(args),
                    extra={"verifier": "genrm", "data": counts})
    return model, verifier_tokenizer, counts


# ----------------------------------------------------------------------------------------------------------------------
# (3) measuring

def step_metrics(step_scores, traces):
    """AUROC and accuracy (threshold 0.5) of scores against the exact labels, over the step lines only."""
    scores, labels = [], []
    for row_scores, trace in zip(step_scores, traces):
        scores += row_scores[:trace.num_step_lines]
        labels += trace.exact[:trace.num_step_lines]
    correct = sum((s > 0.5) == (y > 0.5) for s, y in zip(scores, labels))
    return {"auroc": prm.auroc(scores, labels), "acc": correct / max(1, len(labels)), "positions": len(labels),
            "good_frac": sum(labels) / max(1, len(labels))}


def label_agreement(traces, rollouts, k):
    """How Monte-Carlo labels from the first k rollouts compare with the exact labels, over the step lines."""
    hard = prm.monte_carlo_labels(rollouts, k, hard=True)
    soft = prm.monte_carlo_labels(rollouts, k, hard=False)
    pairs = [(h, s, y) for trace, h_row, s_row in zip(traces, hard, soft)
             for h, s, y in zip(h_row[:trace.num_step_lines], s_row, trace.exact[:trace.num_step_lines])]
    num_good = sum(1 for _, _, y in pairs if y)
    return {"k": k, "hard_agreement": sum(h == y for h, _, y in pairs) / len(pairs),
            "false_bad_frac": sum(1 for h, _, y in pairs if y and not h) / max(1, num_good),
            "false_good_frac": sum(1 for h, _, y in pairs if h and not y) / max(1, len(pairs) - num_good),
            "soft_auroc": prm.auroc([s for _, s, _ in pairs], [y for _, _, y in pairs])}


def vote_is_correct(traces, weights=None):
    """Majority vote over the final answers of well-formed solutions, each vote weighted by `weights` when given (a
    verifier's scores: the weighted vote of Uesato et al., arXiv 2211.14275); a tie goes to the answer seen first."""
    answers = [tasks.parse_completion(t.text) for t in traces]
    votes = Counter()
    for i, parsed in enumerate(answers):
        if parsed.is_well_formed:
            votes[parsed.answer] += 1.0 if weights is None else weights[i]
    if not votes:
        return False
    best = max(votes.values())
    winner = next(parsed.answer for parsed in answers if parsed.is_well_formed and votes[parsed.answer] == best)
    return next(t.outcome for t, parsed in zip(traces, answers) if parsed.is_well_formed and parsed.answer == winner)


def best_of_n_curves(samples, solution_scores, task, max_n, weighted=()):
    """Accuracy for N = 1, 2, 4, ..., max_n. Each problem's max_n samples are cut into max_n / N disjoint groups of N
    and the accuracy is averaged over groups, which uses every sample at every N (less noise than one group).
    samples: per problem, max_n records with .outcome and .text; solution_scores: {verifier: per problem, per sample};
    weighted: the verifiers whose scores also weight a vote, "<name> weighted vote"."""
    ns = [2 ** e for e in range(max_n.bit_length()) if 2 ** e <= max_n]
    curves = {name: [] for name in list(solution_scores) + [f"{name} weighted vote" for name in weighted] +
              (["majority"] if task == "arith" else []) + ["pass@N"]}
    for n in ns:
        hits = Counter()
        groups = 0
        for p_index, per_problem in enumerate(samples):
            for start in range(0, max_n, n):
                group = range(start, start + n)
                groups += 1
                for name, scores in solution_scores.items():
                    chosen = max(group, key=lambda i: scores[p_index][i])  # ties: the first sample
                    hits[name] += per_problem[chosen].outcome
                for name in weighted:
                    weights = [solution_scores[name][p_index][i] for i in group]
                    hits[f"{name} weighted vote"] += vote_is_correct([per_problem[i] for i in group], weights)
                if task == "arith":
                    hits["majority"] += vote_is_correct([per_problem[i] for i in group])
                hits["pass@N"] += any(per_problem[i].outcome for i in group)
        for name in curves:
            curves[name].append(hits[name] / groups)
    return ns, curves


@dataclass
class Sample:
    """One held-out solution for best-of-N: its text and whether it is correct."""
    text: str
    outcome: bool


def drop_records_after(metrics, name, step):
    """A resumed verifier logs its later steps again, and evaluation runs again: drop both from metrics.jsonl."""
    kept = [m for m in metrics.read() if "eval" not in m and not (m.get("verifier") == name and m["step"] > step)]
    text = "".join(json.dumps(m) + "\n" for m in kept)
    atomic_write(metrics.path, lambda file: file.write(text.encode("utf-8")))


def main():
    args = parse_args()
    device = pick_device(args.device, args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    final_path = os.path.join(args.out, "ckpt.pt")
    data_path = os.path.join(args.out, "labels.pt")
    if os.path.exists(data_path) and not args.resume:
        raise UserError(f"{args.out} already holds a run: pass --resume to continue it, or choose another --out")
    policy, tokenizer, policy_ckpt = load_policy(args.policy, device, for_training=True)
    granularity = policy_ckpt["args"].get("granularity", tasks.DEFAULT_GRANULARITY)  # the traces the policy knows
    metrics = MetricsLogger(args.out)
    write_json(os.path.join(args.out, "config.json"), {"args": vars(args), "policy": args.policy,
                                                       "policy_config": policy_ckpt["model_config"]})

    # (1) data: the policy's solutions and corrupted traces, each step labelled exactly and by k rollouts
    t_train_start = time.time()
    # never train on the pre-training run's held-out problems, of any size this script or others evaluate on (the
    # benchmarks pick their 500 arith problems of 3-4 operations among the first 2,000)
    policy_seed = policy_ckpt["args"].get("seed", args.seed)
    held_out = {task: held_out_problems(max(2000, args.eval_problems), policy_seed)[task] for task in tasks.TASKS}
    if os.path.exists(data_path):
        traces, rollouts, rank_traces = load_data(data_path)
        print(f"data: {len(traces)} labelled traces from {data_path}")
    else:
        problems, rank_problems = training_problems(args, held_out)
        traces = [t for per_problem in sampled_traces(policy, tokenizer, problems, args.samples_per_problem,
                                                      args.temperature, args.seed) for t in per_problem]
        traces += corrupted_traces(tokenizer, problems, granularity, args.seed)
        t_rollouts = time.time()
        print(f"data: {len(traces)} traces sampled and labelled exactly ({t_rollouts - t_train_start:.0f}s); "
              f"{args.mc_k} rollouts from each of {sum(len(t.exact) for t in traces)} scoring positions...", flush=True)
        rollouts = prm.monte_carlo_rollouts(policy, tokenizer, traces, args.mc_k, temperature=args.temperature,
                                            seed=args.seed)
        t_rank = time.time()
        rank_traces = []
        if rank_problems:
            rank_traces = [dataclasses.replace(t, source="rank") for per_problem in sampled_traces(
                policy, tokenizer, rank_problems, args.rank_samples, args.temperature, args.seed + 3) for t in per_problem]
            print(f"data: {len(rank_traces)} more samples of {len(rank_problems)} problems for ranking pairs "
                  f"({time.time() - t_rank:.0f}s)", flush=True)
        save_data(data_path, traces, rollouts, rank_traces)
        print(f"data: {len(problems)} problems -> {len(traces)} traces, {t_rank - t_rollouts:.0f}s of "
              f"{args.mc_k} rollouts per step, {time.time() - t_train_start:.0f}s in all", flush=True)
    sampled = [t for t in traces if t.source == "policy"]
    positions = sum(len(t.exact) for t in traces)
    data_stats = {"traces": len(traces), "policy_traces": len(sampled),
                  "policy_correct_frac": sum(t.outcome for t in sampled) / max(1, len(sampled)),
                  "positions": positions, "good_frac": sum(sum(t.exact) for t in traces) / positions}
    print(f"data: {data_stats['policy_correct_frac']:.1%} of the policy's solutions are correct, "
          f"{data_stats['good_frac']:.1%} of scoring positions are good")

    genrm_data_path = os.path.join(args.out, "genrm_data.pt")
    pools = []
    if args.genrm_problems and os.path.exists(genrm_data_path):
        pools = load_genrm_pools(genrm_data_path)
        print(f"genrm data: {len(pools)} problems' samples from {genrm_data_path}")
    elif args.genrm_problems:
        t_genrm = time.time()
        pools = genrm_pools(policy, tokenizer, args, held_out)
        save_genrm_pools(genrm_data_path, pools)
        print(f"genrm data: {args.genrm_samples} samples of each of {len(pools)} problems "
              f"({time.time() - t_genrm:.0f}s)", flush=True)

    pair_traces = traces + rank_traces
    pairs = prm.ranking_pairs(pair_traces) if args.rank_weight > 0 else []
    data_stats["rank_traces"], data_stats["rank_pairs"] = len(rank_traces), len(pairs)
    if args.rank_weight > 0:
        print(f"data: {len(pairs)} (right, wrong) pairs of solutions of the same problem for the ranking loss")

    # (2) train PRM-exact, PRM-MC and ORM on the same traces
    mc_name = f"prm-mc{args.mc_k}-{args.mc_label}"
    label_sets = {
        "prm-exact": ("prm", [t.exact for t in traces]),
        mc_name: ("prm", prm.monte_carlo_labels(rollouts, args.mc_k, hard=args.mc_label == "hard")),
        "orm": ("orm", [[float(t.outcome)] * len(t.exact) for t in traces]),
    }
    # the stage's best verifier is ckpt.pt: the generative one when it is trained (docs/verifiers_log.md), else a PRM
    final_name = "genrm" if args.genrm_problems else ("prm-exact" if args.final_labels == "exact" else mc_name)
    paths = {"prm-exact": os.path.join(args.out, "prm_exact.pt"), mc_name: os.path.join(args.out, "prm_mc.pt"),
             "orm": os.path.join(args.out, "orm.pt"), "genrm": os.path.join(args.out, "genrm.pt")}
    paths[final_name] = final_path
    scorers = {}  # verifier -> score_steps(prompts, completions): a score at every scoring position
    for name, (kind, labels) in label_sets.items():
        model, interrupted = train_verifier(name, kind, paths[name], policy, tokenizer, traces, labels,
                                            args, device, metrics, pair_traces, pairs)
        if interrupted:
            print(f"interrupted: saved {paths[name]}; continue with --resume")
            return
        scorers[name] = functools.partial(prm.score_steps, model, tokenizer)
    if args.genrm_problems:
        model, verifier_tokenizer, data_stats["genrm"] = train_genrm(paths["genrm"], policy, tokenizer, pools, args,
                                                                     device, metrics)
        scorers["genrm"] = genrm.step_scorer(model, verifier_tokenizer, tokenizer)[0]
    train_seconds = time.time() - t_train_start
    print(f"verifier training took {format_duration(train_seconds)} (labels included)", flush=True)

    # (3) measure on held-out problems
    t_eval = time.time()
    eval_sets = {task: problems for task, problems in held_out_problems(args.eval_problems, policy_seed).items()
                 if task in args.tasks}
    results = {"data": data_stats, "train_seconds": train_seconds, "tasks": {}}
    best_of_n = {}
    all_auroc_traces = {name: ([], []) for name in scorers}
    for task, problems in eval_sets.items():
        greedy, _ = attempt_problems(policy, tokenizer, problems, temperature=0.0, seed=args.seed)
        greedy_acc = sum(a[0].verdict.is_correct for a in greedy) / len(problems)
        per_problem = sampled_traces(policy, tokenizer, problems, args.max_n, args.temperature, args.seed + 1)
        flat = [t for traces_of_problem in per_problem for t in traces_of_problem]
        step_scores = {name: score_steps([t.prompt for t in flat], [t.completion for t in flat])
                       for name, score_steps in scorers.items()}
        # step-level quality on the first --auroc-samples solutions of each problem
        auroc_rows = [i for i in range(len(flat)) if i % args.max_n < args.auroc_samples]
        auroc_traces = [flat[i] for i in auroc_rows]
        task_result = {"greedy_acc": greedy_acc, "step": {}}
        for name in scorers:
            rows_scores = [step_scores[name][i] for i in auroc_rows]
            task_result["step"][name] = step_metrics(rows_scores, auroc_traces)
            all_auroc_traces[name][0].extend(rows_scores)
            all_auroc_traces[name][1].extend(auroc_traces)
        # best-of-N: PRMs aggregate by min (and the exact PRM also by prod and last), the ORM reads its last score;
        # the generative verifier's min is its lowest verdict (countdown: its one verdict on the answer)
        solution_scores = {}
        for name in scorers:
            hows = ("last",) if name == "orm" else ("min",)
            for how in hows:
                flat_scores = [prm.aggregate(s, how) for s in step_scores[name]]
                solution_scores[name if name == "genrm" else f"{name} ({how})"] = [
                    flat_scores[i:i + args.max_n] for i in range(0, len(flat_scores), args.max_n)]
        for how in ("prod", "last"):
            flat_scores = [prm.aggregate(s, how) for s in step_scores["prm-exact"]]
            solution_scores[f"prm-exact ({how})"] = [flat_scores[i:i + args.max_n]
                                                     for i in range(0, len(flat_scores), args.max_n)]
        samples = [[Sample(tokenizer.decode(t.completion), t.outcome) for t in traces_of_problem]
                   for traces_of_problem in per_problem]
        ns, curves = best_of_n_curves(samples, solution_scores, task, args.max_n,
                                      weighted=["genrm"] if "genrm" in scorers else [])
        task_result["best_of_n"] = {"n": ns, **curves}
        # how well each verifier ranks one problem's right samples above its wrong ones
        outcomes = [[s.outcome for s in per_sample] for per_sample in samples]
        task_result["within_problem_auroc"] = {name: prm.within_problem_auroc(scores, outcomes)
                                               for name, scores in solution_scores.items()}
        best_of_n[task] = (ns, curves, greedy_acc)
        # Monte-Carlo labels against exact labels, k = 1, 4, 16, on the first solutions of a subset of problems
        agreement_traces = [t for traces_of_problem in per_problem[:args.agreement_problems]
                            for t in traces_of_problem[:args.auroc_samples]]
        agreement_rollouts = prm.monte_carlo_rollouts(policy, tokenizer, agreement_traces, max(AGREEMENT_KS),
                                                      temperature=args.temperature, seed=args.seed + 2)
        task_result["mc_agreement"] = [label_agreement(agreement_traces, agreement_rollouts, k) for k in AGREEMENT_KS]
        results["tasks"][task] = task_result
        metrics.log(eval=task, greedy_acc=greedy_acc,
                    **{f"bo16_{name}": curves[name][ns.index(16)] for name in curves if 16 in ns})
        print(f"eval {task}: greedy {greedy_acc:.1%} | " + " | ".join(
            f"{name} AUROC {m['auroc']:.3f}" for name, m in task_result["step"].items()), flush=True)
    results["step_all"] = {name: step_metrics(*all_auroc_traces[name]) for name in scorers}
    results["eval_seconds"] = time.time() - t_eval
    write_json(os.path.join(args.out, "eval.json"), results)
    write_outputs(args, results, best_of_n, mc_name, final_name)
    print(f"wrote {final_path} ({final_name}), {paths['orm']}, {args.out}/best_of_n.png, "
          f"report.md ({format_duration(train_seconds)} of verifier training, {format_duration(results['eval_seconds'])} "
          f"of evaluation)")


def write_outputs(args, results, best_of_n, mc_name, final_name):
    """Plots and the report section."""
    panels = []
    for task, (ns, curves, greedy_acc) in best_of_n.items():
        series = {name: (ns, ys) for name, ys in curves.items() if "prod" not in name and "prm-exact (last)" != name}
        series["greedy"] = (ns, [greedy_acc] * len(ns))
        panels.append({"title": f"{task}: best-of-N, held-out" + ("" if task == "arith" else " (no majority vote: "
                                                                                               "every answer is the target)"),
                       "xlabel": "N (samples per problem)", "ylabel": "accuracy", "logx": True, "series": series})
    plot_panels(os.path.join(args.out, "best_of_n.png"), panels, title="choosing among N policy samples")
    history = read_losses(args.out)
    plot_panels(os.path.join(args.out, "verifiers.png"), [
        {"title": "verifier training loss (BCE" + (" + ranking" if args.rank_weight > 0 else "") +
                  ("; genrm: next-token" if args.genrm_problems else "") + ")",
         "xlabel": "step", "ylabel": "loss", "series": history},
        {"title": "Monte-Carlo labels vs exact (step lines)", "xlabel": "k (rollouts per step)",
         "ylabel": "agreement of the hard label", "logx": True,
         "series": {task: ([a["k"] for a in r["mc_agreement"]], [a["hard_agreement"] for a in r["mc_agreement"]])
                    for task, r in results["tasks"].items()}},
    ], title="verifiers")

    step_rows = [[name, f"{m['auroc']:.3f}", f"{m['acc']:.1%}"] +
                 [f"{results['tasks'][task]['step'][name]['auroc']:.3f}" for task in results["tasks"]]
                 for name, m in results["step_all"].items()]
    agreement_rows = [[task, a["k"], f"{a['hard_agreement']:.1%}", f"{a['false_bad_frac']:.1%}",
                       f"{a['false_good_frac']:.1%}", f"{a['soft_auroc']:.3f}"]
                      for task, r in results["tasks"].items() for a in r["mc_agreement"]]
    within_rows = [[task, name, f"{value:.3f}", count] for task, r in results["tasks"].items()
                   for name, (value, count) in r["within_problem_auroc"].items()]
    bon_rows = []
    for task, (ns, curves, greedy_acc) in best_of_n.items():
        for name, ys in curves.items():
            bon_rows.append([task, name] + [f"{y:.1%}" for y in ys])
        bon_rows.append([task, "greedy"] + [f"{greedy_acc:.1%}"] * len(ns))
    data = results["data"]
    genrm_data = data.get("genrm", {})
    folder = os.path.basename(os.path.abspath(args.out))
    write_report_section(os.path.join(os.path.dirname(os.path.abspath(args.out)), "report.md"), "prm", "\n".join([
        f"## Verifiers: PRM and ORM ({args.preset})", "",
        f"Data: {data['traces']} traces ({data['policy_traces']} sampled from the policy at temperature "
        f"{args.temperature}, {data['policy_correct_frac']:.1%} of them correct, plus one corrupted trace per problem), "
        f"{data['positions']} scoring positions, {data['good_frac']:.1%} good. Three verifiers, each initialised from "
        f"the policy, {args.steps} steps of {args.batch_size}: PRM on exact labels, PRM on Monte-Carlo labels "
        f"({mc_name}: {args.mc_k} rollouts per step, {args.mc_label} label), ORM (outcome label at every step end). "
        f"{format_duration(results['train_seconds'])} for labels and training, "
        f"{format_duration(results['eval_seconds'])} for evaluation." + (
            f" A generative verifier (genrm.py), fine-tuned {args.genrm_steps} steps from the policy on its checks of "
            f"{genrm_data.get('candidates')} distinct answers and steps "
            f"({genrm_data.get('good', 0) / max(1, genrm_data.get('candidates', 0)):.0%} good) "
            f"in {genrm_data.get('samples')} samples of {genrm_data.get('problems')} problems: it works each countdown "
            f"answer and each arith step out again, then writes its verdict." if args.genrm_problems else "")
        + f" `{folder}/ckpt.pt` is the stage's verifier for the later stages, {final_name}; `{folder}/orm.pt` the "
          f"ORM." + (
            f" Each verifier also had the within-problem ranking loss, weight {args.rank_weight:g}, on "
            f"{args.batch_size // 2} pairs a step drawn from {data['rank_pairs']} (right, wrong) pairs of solutions of "
            f"the same problem ({data['rank_traces']} more samples of {args.rank_problems} problems per task at "
            f"{args.rank_samples} each, beside the labelled traces)." if args.rank_weight > 0 else ""), "",
        "Step-level quality against the exact labels (step lines of held-out policy solutions; accuracy at 0.5):", "",
        markdown_table(["verifier", "AUROC", "accuracy"] + [f"AUROC {task}" for task in results["tasks"]], step_rows), "",
        "Monte-Carlo labels against exact labels (held-out solutions; hard label = any of k rollouts correct; "
        "false bad = sound steps labelled bad; false good = unsound steps labelled good; soft AUROC ranks steps by "
        "the fraction of correct rollouts):", "",
        markdown_table(["task", "k", "hard agreement", "false bad", "false good", "soft AUROC"], agreement_rows), "",
        "Best-of-N accuracy on held-out problems (PRMs aggregate step scores by min, unless named; the ORM uses its "
        "last score). Majority vote does not apply to countdown: every correct answer is a different expression "
        "with the same value, the target, so votes over answer strings say nothing.", "",
        markdown_table(["task", "chooser"] + [f"N={n}" for n in next(iter(best_of_n.values()))[0]], bon_rows), "",
        f"Within-problem AUROC (right against wrong samples of the same problem, over the {args.max_n} samples of "
        f"each held-out problem that has both; the number of such problems):", "",
        markdown_table(["task", "verifier", "within-problem AUROC", "problems"], within_rows), "",
        f"![best-of-N]({folder}/best_of_n.png)", "", f"![verifiers]({folder}/verifiers.png)", ""]))


def read_losses(run_dir):
    """{verifier: (steps, losses)} from metrics.jsonl."""
    history = {}
    for m in MetricsLogger(run_dir).read():
        if "loss" in m and "verifier" in m:
            steps, losses = history.setdefault(m["verifier"], ([], []))
            steps.append(m["step"])
            losses.append(m["loss"])
    return history


if __name__ == "__main__":
    run_main(main)
