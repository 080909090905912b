"""
Benchmark: a generative verifier that re-derives countdown answers (nano_reasoner/genrm.py) against the stage's PRM
and ORM, best-of-N on the reasoner's own samples.

1. Training data: the reasoner's samples (K at temperature 1, the whole context each) on countdown training problems
   never in the held-out set, plus the exact solution of each problem; every candidate's answer gets its exact
   check and verdict (genrm.training_example).
2. The verifier: a copy of the reasoner with <good> and <bad> added, fine-tuned on those examples.
3. Held-out: 500 countdown problems; greedy; 16 samples a problem at temperature 1; each distinct answer scored by
   the verifier; best-of-N for N = 1..16 by the generative verifier, its weighted vote (P(good) summed per answer), by the PRM and the ORM of the pipeline's
   verifier stage (runs/tiny/prm), by majority vote, and `check` (the exact checker: pass@N); within-problem AUROC
   (right against wrong samples of the same problem) of every verifier.

    python -m benchmarks.genrm_countdown --out runs/genrm       # 13.7 minutes alone on 2 cores

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
    parser.add_argument("--policy", default="runs/tiny/reason/ckpt.pt", help="the policy whose samples are judged")
    parser.add_argument("--prm", default="runs/tiny/prm", help="the verifier stage's folder (ckpt.pt, orm.pt)")
    parser.add_argument("--train-problems", type=int, default=1200)
    parser.add_argument("--train-samples", type=int, default=8, help="samples per training problem")
    parser.add_argument("--steps", type=int, default=3000, help="fine-tuning steps of the verifier")
    parser.add_argument("--no-baselines", action="store_true", help="skip the PRM and ORM (their scoring is slow)")
    parser.add_argument("--problems", type=int, default=500, help="held-out countdown problems")
    parser.add_argument("--samples", type=int, default=16, help="N: samples per held-out problem")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--out", default="runs/genrm")
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
            answer = genrm.candidate_answer(pool.texts[i])
            if answer is None:
                continue
            totals[answer] = totals.get(answer, 0.0) + pool_scores[i]
            first.setdefault(answer, i)
        if totals:
            chosen = first[max(totals, key=lambda answer: (totals[answer], -first[answer]))]
            right += tasks.verify(pool.problem, pool.texts[chosen]).is_correct
    return right / len(pools)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    device = torch.device("cpu")
    policy, tokenizer, checkpoint = load_policy(args.policy, device)
    products = checkpoint["args"].get("countdown_products", "digits")
    held_out = held_out_problems(args.problems, args.seed)["countdown"]
    held_texts = {p.text for p in held_out}
    train_problems = [p for p in tasks.generate("countdown", 2 * args.train_problems, seed=args.seed + 777,
                                                difficulties=(3, 4)) if p.text not in held_texts][:args.train_problems]

    # 1. training data: the reasoner's own answers and the exact ones, each with its exact check
    train_pools = search.sample_pool(policy, tokenizer, train_problems, args.train_samples, temperature=1.0,
                                     seed=args.seed)
    pairs = {(pool.problem.text, answer): pool.problem for pool in train_pools
             for answer in map(genrm.candidate_answer, pool.texts) if answer and genrm.as_arith(answer)}
    for problem in train_problems:
        pairs[(problem.text, tasks.trace(problem, "digits", "straight", countdown_products=products)[1])] = problem
    verifier, verifier_tokenizer = genrm.add_verdict_tokens(policy, tokenizer)  # a new model
    examples = [genrm.training_example(verifier_tokenizer, problem, answer)
                for (_, answer), problem in pairs.items()]
    good_share = sum(genrm.answer_check(p, a).is_good for (_, a), p in pairs.items()) / len(pairs)
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
    distinct = sorted({(i, genrm.candidate_answer(text)) for i, pool in enumerate(pools) for text in pool.texts
                       if genrm.candidate_answer(text)})
    distinct_scores = genrm.score(verifier, verifier_tokenizer, [pools[i].problem for i, _ in distinct],
                                  [answer for _, answer in distinct])
    by_answer = dict(zip(distinct, distinct_scores))
    labels = [genrm.answer_check(pools[i].problem, answer).is_good for i, answer in distinct]
    calibration = {
        "candidates": len(distinct), "good": sum(labels),
        "verdict_accuracy": sum((s > 0.5) == y for s, y in zip(distinct_scores, labels)) / len(labels),
        "bad_accepted": sum(s > 0.5 for s, y in zip(distinct_scores, labels) if not y) / max(1, len(labels) - sum(labels)),
        "good_rejected": sum(s <= 0.5 for s, y in zip(distinct_scores, labels) if y) / max(1, sum(labels)),
        "auroc_all_candidates": auroc(distinct_scores, labels)}
    print(f"verdicts on the held-out candidates: {calibration}", flush=True)
    write_json(os.path.join(args.out, "candidates.json"),
               [{"problem": pools[i].problem.text, "answer": answer, "score": s, "good": y}
                for (i, answer), s, y in zip(distinct, distinct_scores, labels)])
    scores = {"generative verifier": [[by_answer.get((i, genrm.candidate_answer(text)), 0.0) for text in pool.texts]
                                      for i, pool in enumerate(pools)]}
    baselines = () if args.no_baselines else (("PRM (min)", os.path.join(args.prm, "ckpt.pt")),
                                              ("ORM", os.path.join(args.prm, "orm.pt")))
    for name, path in baselines:
        scalar = search.load_verifier(path, device, tokenizer)
        scored = search.score_pools(pools, scalar)
        scores[name] = [[aggregate(steps, "min" if name.startswith("PRM") else "last") for steps in pool.step_scores]
                        for pool in scored]
    print(f"scored: {time.time() - start:.0f}s", flush=True)
    exact = [[float(tasks.check(pool.problem, text)) for text in pool.texts] for pool in pools]

    ns = list(range(1, args.samples + 1))
    curves = {name: [best_of_n(pools, s, n) for n in ns] for name, s in scores.items()}
    curves["weighted vote (generative verifier)"] = [weighted_vote(pools, scores["generative verifier"], n)
                                                      for n in ns]
    curves["majority vote"] = [sum(tasks.verify(p.problem, search.pick_from_pool(p, n, "vote").completion).is_correct
                                   for p in pools) / len(pools) for n in ns]
    curves["check (pass@N)"] = [best_of_n(pools, exact, n) for n in ns]
    curves["greedy"] = [greedy_accuracy] * len(ns)
    aurocs = {name: within_problem_auroc(pools, s) for name, s in scores.items()}
    pass_n = curves["check (pass@N)"][-1]
    best = max(curves["generative verifier"][-1], curves["weighted vote (generative verifier)"][-1])
    gap_closed = (best - greedy_accuracy) / (pass_n - greedy_accuracy) if pass_n > greedy_accuracy else float("nan")
    seconds = time.time() - start

    rows = [[name, f"{100 * curve[-1]:.1f}%", f"{aurocs[name][0]:.3f}" if name in aurocs else "-"]
            for name, curve in curves.items()]
    text = (f"{args.problems} held-out countdown problems, {args.samples} samples each at temperature 1 from "
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
                title="best-of-N on the reasoner's countdown samples", xlabel="N samples", ylabel="accuracy")
    print(text, flush=True)


if __name__ == "__main__":
    main()
