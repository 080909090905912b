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

Writes DIR/genrm.json, DIR/genrm.md, DIR/genrm.png and the verifier, DIR/genrm.pt (kind "genrm"). With --verifier
it measures a trained one instead (the verifier stage's runs/tiny/prm/ckpt.pt; benchmarks/lightman.py draws two
such runs at --samples 64). With --data-sizes 25x2,100x8,... it trains one verifier per (problems, samples) of one
training pool, --steps each, and a scalar PRM with the ranking loss for the largest one's training time, into
DIR/data_size.{json,md,png} (countdown, 6 sizes, 200 held-out problems: 21.6 minutes).
"""
import argparse
import os
import random
import time
from dataclasses import asdict, replace
from functools import partial

import torch

from nano_reasoner import genrm, prm, search, tasks
from nano_reasoner.checkpoint import save_checkpoint
from nano_reasoner.cli import load_policy
from nano_reasoner.evaluate import held_out_problems
from nano_reasoner.model import configure_optimizer
from nano_reasoner.prm import aggregate, auroc, within_problem_auroc
from nano_reasoner.report import markdown_table, plot_curves, write_json


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("countdown", "arith"), default="countdown")
    parser.add_argument("--policy", default="runs/tiny/reason/ckpt.pt", help="the policy whose samples are judged")
    parser.add_argument("--prm", default="runs/tiny/prm", help="the verifier stage's folder (prm_exact.pt, orm.pt)")
    parser.add_argument("--verifier", help="measure this generative verifier (e.g. runs/tiny/prm/ckpt.pt, the stage's) "
                        "instead of training one")
    parser.add_argument("--difficulties", help="held-out difficulties, comma separated (default: arith 3,4; "
                        "countdown 3,4)")
    parser.add_argument("--train-problems", type=int, default=1200)
    parser.add_argument("--train-samples", type=int, default=8, help="samples per training problem")
    parser.add_argument("--steps", type=int, default=3000, help="fine-tuning steps of the verifier")
    parser.add_argument("--no-baselines", action="store_true", help="skip the PRM and ORM (their scoring is slow)")
    parser.add_argument("--problems", type=int, default=500, help="held-out problems (arith: of 3 and 4 operations)")
    parser.add_argument("--samples", type=int, default=16, help="N: samples per held-out problem")
    parser.add_argument("--data-sizes", help="instead: the verifier against its data, one fresh verifier of --steps "
                        "steps per PROBLEMSxSAMPLES, comma separated (e.g. 50x2,50x8,800x8), each from the first "
                        "problems and samples of one training pool; no baselines")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--out", default=None, help="default runs/genrm_<task>")
    return parser.parse_args(argv)


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


def problems_of(args):
    """-> (held-out problems, training problems never among them). The held-out problems at the default
    difficulties are those of every stage's held-out stream; at others (arith 5 and 6 operations are not in it),
    problems of a seed no stage trains on."""
    difficulties = tuple(int(d) for d in args.difficulties.split(",")) if args.difficulties else (3, 4)
    if args.task == "countdown" and set(difficulties) == {3, 4}:
        held_out = held_out_problems(args.problems, args.seed)["countdown"]
    elif args.task == "countdown" and set(difficulties) <= {3, 4}:
        held_out = [p for p in held_out_problems(3 * args.problems, args.seed)["countdown"]
                    if p.difficulty in difficulties][:args.problems]
    elif args.task == "arith" and set(difficulties) <= {1, 2, 3, 4}:
        held_out = [p for p in held_out_problems(4 * args.problems, args.seed)["arith"]
                    if p.difficulty in difficulties][:args.problems]
    else:
        held_out = tasks.generate(args.task, args.problems, seed=args.seed + 999, difficulties=difficulties)
    held_texts = {p.text for p in held_out}
    train = [p for p in tasks.generate(args.task, 2 * args.train_problems, seed=args.seed + 777,
                                       difficulties=(3, 4)) if p.text not in held_texts]
    return held_out, train[:args.train_problems]


def sample_score(task, problem, text, verdicts):
    """A sample's score from the verdicts on its candidates: countdown, its answer's; arith, its lowest step's (0 for
    a sample that is not well formed or has no step)."""
    if task == "countdown":
        return verdicts.get((problem, genrm.candidate_answer(text)), 0.0)
    if not tasks.parse_completion(text).is_well_formed:
        return 0.0
    steps = genrm.completion_steps(problem, text)
    return min((verdicts.get(pair, 0.0) for pair in steps), default=0.0)


def parse_sizes(text, args):
    sizes = []
    for part in text.split(","):
        problems, _, samples = part.strip().partition("x")
        if not (problems.isdigit() and samples.isdigit() and 0 < int(problems) and 0 < int(samples)):
            raise SystemExit(f"--data-sizes: {part!r} is not PROBLEMSxSAMPLES, such as 200x8")
        sizes.append((int(problems), int(samples)))
    args.train_problems = max(args.train_problems, max(p for p, _ in sizes))
    args.train_samples = max(args.train_samples, max(k for _, k in sizes))
    return sizes


def train_scalar_prm(policy, tokenizer, train_pools, seconds, seed, batch_size=16, lr=5e-4):
    """The stage's PRM recipe at the generative verifier's training time, on its data: a scalar head on a copy of
    the policy, exact step labels (prm.label_trace) and the within-problem ranking loss (prm.ranking_loss), trained
    until `seconds` have passed. -> (model, steps taken)"""
    traces = [prm.label_trace(tokenizer, pool.problem, pool.prompt, row) for pool in train_pools for row in pool.samples]
    pairs = prm.ranking_pairs(traces)
    model = prm.verifier_from_policy(policy)
    optimizer = configure_optimizer(model, lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    rng = random.Random(seed)
    model.train()
    t_start, steps = time.time(), 0
    while time.time() - t_start < seconds:
        batch = rng.sample(traces, min(batch_size, len(traces)))
        loss = prm.verifier_loss(model, tokenizer, [t.prompt for t in batch], [t.completion for t in batch],
                                 [t.exact for t in batch])
        if pairs:
            chosen = rng.sample(pairs, min(len(pairs), batch_size // 2))
            loss = loss + prm.ranking_loss(model, tokenizer, [traces[r] for r, _ in chosen],
                                           [traces[w] for _, w in chosen])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        steps += 1
    model.eval()
    return model, steps


def data_size_sweep(args, policy, tokenizer, train_problems, pools, greedy_accuracy, start):
    """One fresh verifier per (problems, samples), all trained --steps steps from the policy (equal training time):
    how best-of-N and the within-problem AUROC grow with the data. Writes DIR/data_size.{json,md,png}."""
    sizes = parse_sizes(args.data_sizes, args)
    train_pools = search.sample_pool(policy, tokenizer, train_problems, args.train_samples, temperature=1.0,
                                     seed=args.seed)
    print(f"training pool: {len(train_pools)} x {args.train_samples}, {time.time() - start:.0f}s", flush=True)
    exact = [[float(tasks.verify(pool.problem, text).is_correct) for text in pool.texts] for pool in pools]
    distinct = sorted(set().union(*(genrm.candidates(pool.problem, pool.texts) for pool in pools)), key=str)
    results = []
    for num_problems, num_samples in sizes:
        verifier, verifier_tokenizer = genrm.add_verdict_tokens(policy, tokenizer)
        examples, counts = genrm.training_data(
            verifier_tokenizer, [(p.problem, p.texts[:num_samples]) for p in train_pools[:num_problems]],
            policy.config.block_size)
        torch.manual_seed(args.seed)
        t_train = time.time()
        genrm.train(verifier, verifier_tokenizer, examples, steps=args.steps, seed=args.seed, log_every=args.steps)
        train_seconds = time.time() - t_train
        verdicts = dict(zip(distinct, genrm.score_candidates(verifier, verifier_tokenizer, distinct)))
        scores = [[sample_score(args.task, pool.problem, text, verdicts) for text in pool.texts] for pool in pools]
        results.append({**counts, "problems": num_problems, "per_problem": num_samples,  # counts["samples"]: in all
                        "best_of_n": best_of_n(pools, scores, args.samples),
                        "weighted_vote": weighted_vote(pools, scores, args.samples),
                        "within_problem_auroc": within_problem_auroc(scores, exact)[0], "train_seconds": train_seconds})
        print(f"{num_problems}x{num_samples}: {results[-1]}, {time.time() - start:.0f}s", flush=True)
    # the scalar PRM at equal training time, on the largest size's samples
    largest = max(results, key=lambda r: r["samples"])
    subset = [replace(pool, samples=pool.samples[:largest["per_problem"]]) for pool in train_pools[:largest["problems"]]]
    torch.manual_seed(args.seed)
    scalar, scalar_steps = train_scalar_prm(policy, tokenizer, subset, largest["train_seconds"], args.seed)
    scored = search.score_pools(pools, search.Verifier("prm", scalar.num_params(),
                                                       partial(prm.score_steps, scalar, tokenizer),
                                                       prm.verifier_tokens))
    prm_scores = [[aggregate(steps, "min") for steps in pool.step_scores] for pool in scored]
    prm_result = {"problems": largest["problems"], "per_problem": largest["per_problem"], "steps": scalar_steps,
                  "best_of_n": best_of_n(pools, prm_scores, args.samples),
                  "weighted_vote": weighted_vote(pools, prm_scores, args.samples),
                  "within_problem_auroc": within_problem_auroc(prm_scores, exact)[0]}
    print(f"scalar PRM, {largest['train_seconds']:.0f}s: {prm_result}", flush=True)
    pass_n = best_of_n(pools, exact, args.samples)
    rows = [[f"{r['problems']} x {r['per_problem']}", r["candidates"], f"{100 * r['best_of_n']:.1f}%",
             f"{100 * r['weighted_vote']:.1f}%", f"{r['within_problem_auroc']:.3f}"] for r in results]
    rows.append([f"scalar PRM + ranking, {prm_result['problems']} x {prm_result['per_problem']}, "
                 f"{prm_result['steps']} steps in the same time", "-", f"{100 * prm_result['best_of_n']:.1f}%",
                 f"{100 * prm_result['weighted_vote']:.1f}%", f"{prm_result['within_problem_auroc']:.3f}"])
    text = (f"{len(pools)} held-out {args.task} problems, {args.samples} samples each; one verifier per row, "
            f"{args.steps} steps each; greedy {100 * greedy_accuracy:.1f}%, pass@{args.samples} "
            f"{100 * pass_n:.1f}%; {(time.time() - start) / 60:.1f} min.\n\n"
            + markdown_table(["problems x samples", "distinct candidates", f"best-of-{args.samples}",
                              "weighted vote", "within-problem AUROC"], rows) + "\n")
    write_json(os.path.join(args.out, "data_size.json"), {"results": results, "scalar_prm": prm_result,
                                                           "greedy": greedy_accuracy, "pass_n": pass_n})
    with open(os.path.join(args.out, "data_size.md"), "w") as f:
        f.write(text)
    series = {}
    for k in sorted({r["per_problem"] for r in results}):
        chosen = [r for r in results if r["per_problem"] == k]
        series[f"best-of-{args.samples}, {k} samples a problem"] = ([r["samples"] for r in chosen],
                                                                    [r["best_of_n"] for r in chosen])
    xs = [r["samples"] for r in results]
    series["scalar PRM, same data and time"] = ([largest["samples"]], [prm_result["best_of_n"]])
    series["greedy"] = ([min(xs), max(xs)], [greedy_accuracy] * 2)
    series[f"pass@{args.samples}"] = ([min(xs), max(xs)], [pass_n] * 2)
    plot_curves(os.path.join(args.out, "data_size.png"), series, logx=True,
                title=f"the generative verifier against its data ({args.task})",
                xlabel="training samples (problems x samples)", ylabel="held-out accuracy")
    print(text, flush=True)


def main():
    args = parse_args()
    args.out = args.out or f"runs/genrm_{args.task}"
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    device = torch.device("cpu")
    policy, tokenizer, _ = load_policy(args.policy, device)
    if args.data_sizes:
        parse_sizes(args.data_sizes, args)  # the training pool must hold the largest size
    held_out, train_problems = problems_of(args)
    if args.data_sizes:
        greedy = search.greedy(policy, tokenizer, held_out, seed=args.seed)
        greedy_accuracy = sum(tasks.verify(a.problem, a.completion).is_correct for a in greedy) / len(held_out)
        pools = search.sample_pool(policy, tokenizer, held_out, args.samples, temperature=1.0, seed=args.seed + 1)
        data_size_sweep(args, policy, tokenizer, train_problems, pools, greedy_accuracy, start)
        return

    # 1. training data: the reasoner's own answers (or steps) and the exact solutions', each with its exact check
    verifier, verifier_tokenizer = genrm.add_verdict_tokens(policy, tokenizer)  # a new model
    if args.verifier:  # the stage's (or an earlier run's) verifier, measured as it is
        verifier, verifier_tokenizer = genrm.load(args.verifier, device, tokenizer)
        examples = []
    else:
        train_pools = search.sample_pool(policy, tokenizer, train_problems, args.train_samples, temperature=1.0,
                                         seed=args.seed)
        examples, counts = genrm.training_data(verifier_tokenizer, [(p.problem, p.texts) for p in train_pools],
                                               policy.config.block_size)
        print(f"training data: {counts}, {time.time() - start:.0f}s", flush=True)

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
    distinct = sorted(set().union(*(genrm.candidates(pool.problem, pool.texts) for pool in pools)), key=str)
    distinct_scores = genrm.score_candidates(verifier, verifier_tokenizer, distinct)
    verdicts = dict(zip(distinct, distinct_scores))
    labels = [genrm.check_of(candidate).is_good for candidate in distinct]
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
    baselines = () if args.no_baselines else (("PRM (min)", os.path.join(args.prm, "prm_exact.pt")),
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
    aurocs = {name: within_problem_auroc(s, exact) for name, s in scores.items()}
    pass_n = curves["pass@N (exact)"][-1]
    best = max(curves["generative verifier"][-1], curves["weighted vote (generative verifier)"][-1])
    gap_closed = (best - greedy_accuracy) / (pass_n - greedy_accuracy) if pass_n > greedy_accuracy else float("nan")
    seconds = time.time() - start

    rows = [[name, f"{100 * curve[-1]:.1f}%", f"{aurocs[name][0]:.3f}" if name in aurocs else "-"]
            for name, curve in curves.items()]
    text = (f"{len(held_out)} held-out {args.task} problems, {args.samples} samples each at temperature 1 from "
            f"{args.policy}; " + (f"the generative verifier {args.verifier}" if args.verifier else
                                  f"the generative verifier fine-tuned {args.steps} steps on {len(examples)} "
                                  f"candidates of {args.train_problems} training problems")
            + f"; {seconds / 60:.1f} min.\n\n"
            + markdown_table([f"strategy (N = {args.samples})", "accuracy", "within-problem AUROC"], rows)
            + (f"\n\nThe generative verifier's better pick closes {gap_closed:.0%} of the gap from greedy "
               f"({100 * greedy_accuracy:.1f}%) to pass@{args.samples} ({100 * pass_n:.1f}%)"
               if pass_n > greedy_accuracy else "\n\nNo gap from greedy to pass@N to close")
            + f"; within-problem AUROC over {aurocs['generative verifier'][1]} problems with right and wrong "
              f"samples.\n")
    low, high = min(p.difficulty for p in held_out), max(p.difficulty for p in held_out)
    title = (f"{args.task}, {low if low == high else f'{low}-{high}'} "
             f"{'operations' if args.task == 'arith' else 'numbers'}, {len(held_out)} problems")
    write_json(os.path.join(args.out, "genrm.json"), {"title": title, "curves": curves, "auroc": aurocs, "gap_closed": gap_closed,
                                                       "examples": len(examples), "calibration": calibration,
                                                       "seconds": seconds})
    with open(os.path.join(args.out, "genrm.md"), "w") as f:
        f.write(text)
    plot_curves(os.path.join(args.out, "genrm.png"), {name: (ns, curve) for name, curve in curves.items()},
                title=f"best-of-N on the reasoner's {args.task} samples", xlabel="N samples", ylabel="accuracy")
    print(text, flush=True)


if __name__ == "__main__":
    main()
