"""
Benchmark: a generative verifier (nano_reasoner/genrm.py) against the stage's PRM and ORM, best-of-N on the
reasoner's own samples. --task countdown: it works each answer out again; --task arith: it checks each step.

1. Training data: the reasoner's samples (K at temperature 1, the whole context each) on training problems never in
   the held-out set (arith: 3 and 4 operations, where there is headroom), plus the exact solution of each problem;
   every countdown answer, or every arith step, gets its exact check and verdict (genrm.training_example,
   genrm.step_training_example).
2. The verifier: a copy of the reasoner with <good> and <bad> added, fine-tuned on those examples.
3. Held-out: 500 problems; greedy; 16 samples a problem at temperature 1; each distinct answer (countdown) or step
   (arith: a sample scores its lowest step) scored by the verifier; best-of-N for N = 1..16 by the generative
   verifier, its weighted vote (P(good) summed per answer), by the PRM and the ORM of the pipeline's
   verifier stage (runs/tiny/prm), by majority vote, and pass@N (the exact verifier); within-problem AUROC
   (right against wrong samples of the same problem) of every verifier.

    python -m benchmarks.genrm --task countdown     # 24.7 minutes alone on 2 cores, into runs/genrm_countdown
    python -m benchmarks.genrm --task arith         # 16.6 minutes, into runs/genrm_arith

Writes DIR/genrm.json, DIR/genrm.md, DIR/genrm.png and the verifier, DIR/genrm.pt (kind "genrm").
"""
import argparse
import os
import time
from dataclasses import asdict

import torch

from nano_reasoner import genrm, search, tasks
from nano_reasoner.checkpoint import save_checkpoint
from nano_reasoner.cli import load_policy
from nano_reasoner.evaluate import held_out_problems
from nano_reasoner.prm import aggregate, auroc
from nano_reasoner.report import markdown_table, plot_curves, write_json


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("countdown", "arith"), default="countdown")
    parser.add_argument("--policy", default="runs/tiny/reason/ckpt.pt", help="the policy whose samples are judged")
    parser.add_argument("--prm", default="runs/tiny/prm", help="the verifier stage's folder (ckpt.pt, orm.pt)")
    parser.add_argument("--train-problems", type=int, default=1200)
    parser.add_argument("--train-samples", type=int, default=8, help="samples per training problem")
    parser.add_argument("--steps", type=int, default=3000, help="fine-tuning steps of the verifier")
    parser.add_argument("--no-baselines", action="store_true", help="skip the PRM and ORM (their scoring is slow)")
    parser.add_argument("--problems", type=int, default=500, help="held-out problems (arith: of 3 and 4 operations)")
    parser.add_argument("--samples", type=int, default=16, help="N: samples per held-out problem")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--out", default=None, help="default runs/genrm_<task>")
    return parser.parse_args(argv)


def within_problem_auroc(pools, scores):
    """Mean over problems with right and wrong samples of the AUROC of the scores of that problem's samples."""
    values = []
    for pool, pool_scores in zip(pools, scores):
        labels = [tasks.verify(pool.problem, text).is_correct for text in pool.texts]
        if 0 < sum(labels) < len(labels):
            values.append(auroc(pool_scores, labels))
    return sum(values) / len(values), len(values)


def best_of_n(pools, scores, n):
    """Accuracy when each problem answers with the highest-scoring of its first n samples (ties: the first)."""
    right = 0
    for pool, pool_scores in zip(pools, scores):
        chosen = max(range(n), key=lambda i: (pool_scores[i], -i))
        right += tasks.verify(pool.problem, pool.texts[chosen]).is_correct
    return right / len(pools)


def weighted_vote(pools, scores, n):
    """Accuracy when each problem answers with the answer whose first-n samples have the largest summed score (the
    verifier-weighted vote of Uesato et al., arXiv 2211.14275, and GenRM's "majority voting with the verifier"):
    one confident false accept no longer wins alone against a right answer sampled several times."""
    right = 0
    for pool, pool_scores in zip(pools, scores):
        totals, first = {}, {}
        for i in range(n):
            answer = search.answer_key(pool.problem, pool.texts[i])
            if answer is None:
                continue
            totals[answer] = totals.get(answer, 0.0) + pool_scores[i]
            first.setdefault(answer, i)
        if totals:
            chosen = first[max(totals, key=lambda answer: (totals[answer], -first[answer]))]
            right += tasks.verify(pool.problem, pool.texts[chosen]).is_correct
    return right / len(pools)


ARITH_DIFFICULTIES = (3, 4)


def problems_of(args):
    """-> (held-out problems, training problems never among them)."""
    if args.task == "countdown":
        held_out = held_out_problems(args.problems, args.seed)["countdown"]
    else:  # enough held-out arith problems of 3 and 4 operations, from the same held-out stream as every stage's
        held_out = [p for p in held_out_problems(4 * args.problems, args.seed)["arith"]
                    if p.difficulty in ARITH_DIFFICULTIES][:args.problems]
    held_texts = {p.text for p in held_out}
    difficulties = (3, 4) if args.task == "countdown" else ARITH_DIFFICULTIES
    train = [p for p in tasks.generate(args.task, 2 * args.train_problems, seed=args.seed + 777,
                                       difficulties=difficulties) if p.text not in held_texts]
    return held_out, train[:args.train_problems]


def candidates_of(task, problem, texts):
    """What the verifier judges in a problem's samples: countdown, each distinct well-formed answer (problem,
    answer); arith, each distinct step (previous expression, line)."""
    if task == "countdown":
        return {(problem, answer) for answer in map(genrm.candidate_answer, texts) if answer and genrm.as_arith(answer)}
    return {pair for text in texts for pair in genrm.completion_steps(problem, text)
            if genrm.step_expression(pair[1]) is not None}  # a step that is no equation scores 0 unchecked


def check_of(task, candidate):
    return genrm.answer_check(*candidate) if task == "countdown" else genrm.step_check(*candidate)


def example_of(task, tokenizer, candidate):
    if task == "countdown":
        return genrm.training_example(tokenizer, *candidate)
    return genrm.step_training_example(tokenizer, *candidate)


def sample_score(task, problem, text, verdicts):
    """A sample's score from the verdicts on its candidates: countdown, its answer's; arith, its lowest step's (0 for
    a sample that is not well formed or has no step)."""
    if task == "countdown":
        return verdicts.get((problem, genrm.candidate_answer(text)), 0.0)
    if not tasks.parse_completion(text).is_well_formed:
        return 0.0
    steps = genrm.completion_steps(problem, text)
    return min((verdicts.get(pair, 0.0) for pair in steps), default=0.0)


def main():
    args = parse_args()
    args.out = args.out or f"runs/genrm_{args.task}"
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    device = torch.device("cpu")
    policy, tokenizer, checkpoint = load_policy(args.policy, device)
    products = checkpoint["args"].get("countdown_products", "digits")
    held_out, train_problems = problems_of(args)

    # 1. training data: the reasoner's own answers (or steps) and the exact solutions', each with its exact check
    train_pools = search.sample_pool(policy, tokenizer, train_problems, args.train_samples, temperature=1.0,
                                     seed=args.seed)
    candidates = set()
    for pool in train_pools:
        exact = tasks.format_completion(*tasks.trace(pool.problem, "digits", "straight", countdown_products=products))
        candidates |= candidates_of(args.task, pool.problem, pool.texts + [exact])
    candidates = sorted(candidates, key=str)
    verifier, verifier_tokenizer = genrm.add_verdict_tokens(policy, tokenizer)  # a new model
    examples = [example_of(args.task, verifier_tokenizer, candidate) for candidate in candidates]
    examples = [e for e in examples if len(e.tokens) <= policy.config.block_size]  # runaway sampled lines
    good_share = sum(check_of(args.task, candidate).is_good for candidate in candidates) / len(candidates)
    print(f"training data: {len(examples)} candidates ({good_share:.0%} good), {time.time() - start:.0f}s", flush=True)

    # 2. the verifier
    genrm.train(verifier, verifier_tokenizer, examples, steps=args.steps, seed=args.seed)
    print(f"trained: {time.time() - start:.0f}s", flush=True)
    save_checkpoint(os.path.join(args.out, "genrm.pt"), kind="genrm", model_state=verifier.state_dict(),
                    model_config=asdict(verifier.config), tokenizer_bytes=verifier_tokenizer.model_bytes,
                    step=args.steps, args=vars(args))

    # 3. held-out: greedy, samples, scores
    greedy = search.greedy(policy, tokenizer, held_out, seed=args.seed)
    greedy_accuracy = sum(tasks.verify(a.problem, a.completion).is_correct for a in greedy) / len(held_out)
    pools = search.sample_pool(policy, tokenizer, held_out, args.samples, temperature=1.0, seed=args.seed + 1)
    print(f"held-out samples: {time.time() - start:.0f}s", flush=True)
    distinct = sorted(set().union(*(candidates_of(args.task, pool.problem, pool.texts) for pool in pools)), key=str)
    if args.task == "countdown":
        distinct_scores = genrm.score(verifier, verifier_tokenizer, [p for p, _ in distinct], [a for _, a in distinct])
    else:
        distinct_scores = genrm.score_steps_of(verifier, verifier_tokenizer, distinct)
    verdicts = dict(zip(distinct, distinct_scores))
    labels = [check_of(args.task, candidate).is_good for candidate in distinct]
    calibration = {
        "candidates": len(distinct), "good": sum(labels),
        "verdict_accuracy": sum((s > 0.5) == y for s, y in zip(distinct_scores, labels)) / len(labels),
        "bad_accepted": sum(s > 0.5 for s, y in zip(distinct_scores, labels) if not y) / max(1, len(labels) - sum(labels)),
        "good_rejected": sum(s <= 0.5 for s, y in zip(distinct_scores, labels) if y) / max(1, sum(labels)),
        "auroc_all_candidates": auroc(distinct_scores, labels)}
    print(f"verdicts on the held-out candidates: {calibration}", flush=True)
    write_json(os.path.join(args.out, "candidates.json"),
               [{"candidate": [getattr(part, "text", part) for part in candidate], "score": s, "good": y}
                for candidate, s, y in zip(distinct, distinct_scores, labels)])
    scores = {"generative verifier": [[sample_score(args.task, pool.problem, text, verdicts) for text in pool.texts]
                                      for pool in pools]}
    baselines = () if args.no_baselines else (("PRM (min)", os.path.join(args.prm, "ckpt.pt")),
                                              ("ORM", os.path.join(args.prm, "orm.pt")))
    for name, path in baselines:
        scalar = search.load_verifier(path, device, tokenizer)
        scored = search.score_pools(pools, scalar)
        scores[name] = [[aggregate(steps, "min" if name.startswith("PRM") else "last") for steps in pool.step_scores]
                        for pool in scored]
    print(f"scored: {time.time() - start:.0f}s", flush=True)
    exact = [[float(tasks.verify(pool.problem, text).is_correct) for text in pool.texts] for pool in pools]

    ns = list(range(1, args.samples + 1))
    curves = {name: [best_of_n(pools, s, n) for n in ns] for name, s in scores.items()}
    curves["weighted vote (generative verifier)"] = [weighted_vote(pools, scores["generative verifier"], n)
                                                      for n in ns]
    curves["majority vote"] = [sum(tasks.verify(p.problem, search.pick_from_pool(p, n, "vote").completion).is_correct
                                   for p in pools) / len(pools) for n in ns]
    curves["pass@N (exact)"] = [best_of_n(pools, exact, n) for n in ns]
    curves["greedy"] = [greedy_accuracy] * len(ns)
    aurocs = {name: within_problem_auroc(pools, s) for name, s in scores.items()}
    pass_n = curves["pass@N (exact)"][-1]
    best = max(curves["generative verifier"][-1], curves["weighted vote (generative verifier)"][-1])
    gap_closed = (best - greedy_accuracy) / (pass_n - greedy_accuracy) if pass_n > greedy_accuracy else float("nan")
    seconds = time.time() - start

    rows = [[name, f"{100 * curve[-1]:.1f}%", f"{aurocs[name][0]:.3f}" if name in aurocs else "-"]
            for name, curve in curves.items()]
    text = (f"{len(held_out)} held-out {args.task} problems, {args.samples} samples each at temperature 1 from "
            f"{args.policy}; the generative verifier fine-tuned {args.steps} steps on {len(examples)} candidates "
            f"of {args.train_problems} training problems; {seconds / 60:.1f} min.\n\n"
            + markdown_table([f"strategy (N = {args.samples})", "accuracy", "within-problem AUROC"], rows)
            + (f"\n\nThe generative verifier's better pick closes {gap_closed:.0%} of the gap from greedy "
               f"({100 * greedy_accuracy:.1f}%) to pass@{args.samples} ({100 * pass_n:.1f}%)"
               if pass_n > greedy_accuracy else "\n\nNo gap from greedy to pass@N to close")
            + f"; within-problem AUROC over {aurocs['generative verifier'][1]} problems with right and wrong "
              f"samples.\n")
    write_json(os.path.join(args.out, "genrm.json"), {"curves": curves, "auroc": aurocs, "gap_closed": gap_closed,
                                                       "examples": len(examples), "calibration": calibration,
                                                       "seconds": seconds})
    with open(os.path.join(args.out, "genrm.md"), "w") as f:
        f.write(text)
    plot_curves(os.path.join(args.out, "genrm.png"), {name: (ns, curve) for name, curve in curves.items()},
                title=f"best-of-N on the reasoner's {args.task} samples", xlabel="N samples", ylabel="accuracy")
    print(text, flush=True)


if __name__ == "__main__":
    main()
