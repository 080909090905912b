"""
Benchmark: the exchange rate between pre-training compute and test-time compute, by difficulty.

The seed's question: with a fixed FLOP budget, should it go to pre-training (a bigger model) or to inference (more
samples from a smaller one)? Snell et al. ("Scaling LLM Test-Time Compute Optimally", arXiv 2408.03314, section 7)
answer it by matching FLOPs: a model 14x larger answers greedily at 14x the inference FLOPs of the small model's
greedy answer, so at equal inference FLOPs per problem the small model may draw about 14 samples and pick one. They
found that on easy and medium problems the small model with compute-optimal test-time search wins, and on the
hardest problems the larger model does. Their totals also count pre-training: X = 6 N D_pretrain + 2 N D_inference,
so test-time compute is cheapest when few problems are answered with a model (the larger model's extra pre-training
is spread over few answers) and pre-training is cheapest when many are.

Here, on the held-out problems of both tasks, by difficulty (arith: operations 1-4; countdown: 3 or 4 numbers):

- the small model: by default the grid's best run at its largest budget (benchmarks/pretrain_scaling.py:
  runs/scaling_law/L2-d48-C1e13, 56k non-embedding parameters, 1e13 training FLOPs), with the test-time strategies
  that need nothing it does not have: greedy, majority vote over k samples, and on countdown `check` (the first of k
  samples that the task's own checker accepts; countdown can be checked without knowing an answer, arith cannot),
  each with samples at temperature 0.5 or 1 (four strategies; the best at each level is the compute-optimal one);
- the larger models, greedy: the grid's other sizes at the same budget, and the tiny preset's pre-trained policy
  (runs/tiny/pretrain: 788k non-embedding parameters, 14x the small model like Snell's pair, trained for about 4.5x
  the small model's FLOPs);
- inference FLOPs per problem are counted as compute.py counts them (2 * params * tokens through the policy), and
  the small model at "equal inference FLOPs" answers with the largest k whose mean FLOPs per problem do not exceed
  the larger model's greedy FLOPs at that difficulty;
- pre-training FLOPs: a grid run's record, or C = 6 N D with the attention term (scaling_law.training_flops) from a
  checkpoint's steps and batch size; scaling_law.break_even_problems says up to how many answered problems the small
  model with its extra sampling costs fewer FLOPs in all than the larger model (pre-training included).

    python -m benchmarks.exchange_rate --out runs/exchange_rate            # 4.1-4.4 minutes alone on 2 cores

Writes DIR/exchange_rate.json (every curve and the table), DIR/exchange_rate.md and DIR/exchange_rate.png.
"""
import argparse
import json
import math
import os
import time

import torch

from nano_reasoner import scaling_law, search, tasks
from nano_reasoner.cli import load_policy
from nano_reasoner.data import make_examples
from nano_reasoner.evaluate import held_out_problems
from nano_reasoner.model import GPTConfig
from nano_reasoner.report import markdown_table, plot_panels, write_json

SAMPLES = 64  # k = 1..SAMPLES from one pool of samples per problem


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", default="runs/scaling_law/L2-d48-C1e13",
                        help="the small model's grid folder (ckpt.pt and record.json)")
    parser.add_argument("--grid", default="runs/scaling_law", help="the grid whose other sizes at the small "
                        "model's budget are compared greedily (benchmarks/pretrain_scaling.py)")
    parser.add_argument("--large", default="runs/tiny/pretrain/ckpt.pt",
                        help="a larger pre-trained policy trained for longer (default: the pipeline's)")
    parser.add_argument("--problems", type=int, default=500, help="held-out problems per task (default 500)")
    parser.add_argument("--temperatures", default="0.5,1.0",
                        help="of the small model's samples, comma separated: each is a strategy (default 0.5,1.0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--out", default="runs/exchange_rate")
    args = parser.parse_args(argv)
    try:
        args.temperatures = [float(t) for t in args.temperatures.split(",")]
    except ValueError:
        parser.error(f"--temperatures {args.temperatures!r}: give numbers such as 0.5,1.0")
    return args


def bins(problems):
    """(task, difficulty) of every level present, in order: the table's columns."""
    return sorted({(p.task, p.difficulty) for p in problems}, key=lambda b: (list(tasks.TASKS).index(b[0]), b[1]))


def accuracy_and_flops(answers, level):
    """Accuracy and mean inference FLOPs per problem over the answers at one (task, difficulty)."""
    chosen = [a for a in answers if (a.problem.task, a.problem.difficulty) == level]
    correct = [tasks.verify(a.problem, a.completion).is_correct for a in chosen]
    return sum(correct) / len(chosen), sum(a.compute.flops() for a in chosen) / len(chosen)


def pretraining_flops(checkpoint, tokenizer, seed):
    """C of a pre-trained checkpoint: its steps x batch x the mean training trace, at scaling_law's count. The mean
    trace is measured on a fresh sample of the preset's training mix (the exact batches are not stored)."""
    args = checkpoint["args"]
    config = GPTConfig(**checkpoint["model_config"])
    mix = (tasks.generate("arith", 1000, seed=seed + 1, difficulties=(1, 2, 3, 4)) +
           tasks.generate("countdown", 1000, seed=seed + 2, difficulties=(3, 4)))
    examples = make_examples(tokenizer, mix, args["granularity"], countdown_products=args["countdown_products"])
    mean_length = sum(len(e.tokens) for e in examples) / len(examples)
    tokens = checkpoint["step"] * args["batch_size"] * mean_length
    return scaling_law.training_flops(config, tokens, context=mean_length / 2)


def greedy_row(name, path, pretrain_flops, problems, levels, seed):
    policy, tokenizer, checkpoint = load_policy(path, torch.device("cpu"))
    answers = search.greedy(policy, tokenizer, problems, seed=seed)
    if pretrain_flops is None:
        pretrain_flops = pretraining_flops(checkpoint, tokenizer, seed)
    config = GPTConfig(**checkpoint["model_config"])
    return {"name": name, "path": path, "params": scaling_law.non_embedding_params(config),
            "pretrain_flops": pretrain_flops,
            "levels": {f"{t}-{d}": dict(zip(("accuracy", "flops"), accuracy_and_flops(answers, (t, d))))
                       for t, d in levels}}


def small_curves(path, problems, levels, temperatures, seed):
    """The small model's vote / check curves for k = 1..SAMPLES, per sampling temperature and level:
    {"<strategy> T=<t>/<level>": [{"accuracy", "flops"} for k = 1..SAMPLES]}."""
    policy, tokenizer, _ = load_policy(path, torch.device("cpu"))
    params = policy.num_params()
    curves = {}
    for temperature in temperatures:
        pools = search.sample_pool(policy, tokenizer, problems, SAMPLES, temperature=temperature, seed=seed)
        for strategy in ("vote", "check"):
            for t, d in levels:
                if strategy == "check" and t != "countdown":
                    continue  # an arith answer cannot be checked without knowing it
                level_pools = [pool for pool in pools if (pool.problem.task, pool.problem.difficulty) == (t, d)]
                points = []
                for k in range(1, SAMPLES + 1):
                    answers = [search.pick_from_pool(pool, k, strategy, policy_params=params) for pool in level_pools]
                    points.append(dict(zip(("accuracy", "flops"), accuracy_and_flops(answers, (t, d)))))
                curves[f"{strategy} T={temperature:g}/{t}-{d}"] = points
    return curves


def at_flops(curve, flops):
    """The point of a k-curve with the largest k whose FLOPs do not exceed `flops` (None: not even k = 1 does)."""
    affordable = [(k + 1, point) for k, point in enumerate(curve) if point["flops"] <= flops]
    return affordable[-1] if affordable else None


def exchange_table(small, curves, large, levels):
    """One row per level: the larger model's greedy answer against the small model's, greedy and with its best
    strategy at the larger model's inference FLOPs, and with its best strategy at any k."""
    rows = []
    for t, d in levels:
        level = f"{t}-{d}"
        big = large["levels"][level]
        best_equal, best_any = None, None
        for name, curve in curves.items():
            strategy, curve_level = name.split("/")
            if curve_level != level:
                continue
            hit = at_flops(curve, big["flops"])
            if hit is not None and (best_equal is None or hit[1]["accuracy"] > best_equal[2]["accuracy"]):
                best_equal = (strategy, hit[0], hit[1])
            k, point = max(enumerate(curve), key=lambda kp: (kp[1]["accuracy"], -kp[0]))
            if best_any is None or point["accuracy"] > best_any[2]["accuracy"]:
                best_any = (strategy, k + 1, point)
        rows.append({"level": level, "large_accuracy": big["accuracy"], "large_flops": big["flops"],
                     "small_greedy": small["levels"][level]["accuracy"],
                     "small_greedy_flops": small["levels"][level]["flops"],
                     "equal_strategy": best_equal[0], "equal_k": best_equal[1],
                     "equal_accuracy": best_equal[2]["accuracy"], "equal_flops": best_equal[2]["flops"],
                     "best_strategy": best_any[0], "best_k": best_any[1], "best_accuracy": best_any[2]["accuracy"],
                     "best_flops": best_any[2]["flops"],
                     "break_even_problems": scaling_law.break_even_problems(
                         small["pretrain_flops"], best_any[2]["flops"], large["pretrain_flops"], big["flops"])})
    return rows


def report(rows, small, greedy_rows, large, seconds, problems):
    def pct(x):
        return f"{100 * x:.1f}"
    lines = [f"Small: {small['name']} ({small['params'] / 1e3:.0f}k non-embedding parameters, "
             f"{small['pretrain_flops']:.1e} pre-training FLOPs); larger: {large['name']} "
             f"({large['params'] / 1e3:.0f}k, {large['pretrain_flops']:.1e}). {problems} held-out problems per task, "
             f"{seconds / 60:.1f} min.", ""]
    lines.append(markdown_table(
        ["level", "larger, greedy", "small, greedy", "small at the larger's inference FLOPs", "small, best k <= 64",
         "FLOPs ratio (best / larger)", "small cheaper in total up to N problems"],
        [[r["level"], pct(r["large_accuracy"]), pct(r["small_greedy"]),
          f"{pct(r['equal_accuracy'])} ({r['equal_strategy']}, k={r['equal_k']})",
          f"{pct(r['best_accuracy'])} ({r['best_strategy']}, k={r['best_k']})",
          f"{r['best_flops'] / r['large_flops']:.1f}",
          "any number" if r["break_even_problems"] == math.inf else f"{r['break_even_problems']:.2g}"]
         for r in rows]))
    lines += ["", "Every grid size at the small model's budget, greedy (accuracy by level):", ""]
    levels = [r["level"] for r in rows]
    lines.append(markdown_table(["model", "params", "pre-training FLOPs"] + levels,
                                [[g["name"], f"{g['params'] / 1e3:.0f}k", f"{g['pretrain_flops']:.1e}"] +
                                 [pct(g["levels"][lv]["accuracy"]) for lv in levels] for g in greedy_rows]))
    return "\n".join(lines) + "\n"


def plot(path, levels, curves, small, large):
    """One panel per level: the small model's curves against k, its greedy answer and the larger model's (the grid's
    other sizes, all below the small model at its budget, are in the table)."""
    panels = []
    for t, d in levels:
        level = f"{t}-{d}"
        series = {}
        for name, curve in curves.items():
            if name.endswith("/" + level):
                series[f"small, {name.split('/')[0]}, k = 1..{SAMPLES}"] = ([p["flops"] for p in curve],
                                                                           [p["accuracy"] for p in curve])
        for label, row in (("small, greedy", small), (f"{large['name']}, greedy", large)):
            point = row["levels"][level]
            series[label] = ([point["flops"]], [point["accuracy"]])
        panels.append({"title": f"{t}, difficulty {d}", "xlabel": "inference FLOPs per problem",
                       "ylabel": "accuracy", "series": series, "logx": True})
    plot_panels(path, panels, f"{small['params'] / 1e3:.0f}k model + test-time compute against a "
                              f"{large['params'] / 1e3:.0f}k model, greedy (benchmarks/exchange_rate.py)")


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    held_out = held_out_problems(args.problems, args.seed)
    problems = held_out["arith"] + held_out["countdown"]
    levels = bins(problems)
    for path in (os.path.join(args.small, "record.json"), os.path.join(args.small, "ckpt.pt"), args.large):
        if not os.path.exists(path):
            raise SystemExit(f"error: {path} does not exist: run `python -m benchmarks.pretrain_scaling` (the grid) "
                             f"and the pipeline's pretrain stage first, or pass --small / --large")
    with open(os.path.join(args.small, "record.json")) as f:
        budget = json.load(f)["budget"]
    greedy_rows = []
    for folder in sorted(os.listdir(args.grid)):
        record_path = os.path.join(args.grid, folder, "record.json")
        if not os.path.exists(record_path):
            continue
        with open(record_path) as f:
            record = json.load(f)
        if record["budget"] == budget:
            greedy_rows.append(greedy_row(f"{record['n_layer']}x{record['n_embd']}",
                                          os.path.join(args.grid, folder, "ckpt.pt"), record["flops"], problems,
                                          levels, args.seed))
            print(f"{greedy_rows[-1]['name']}: greedy {time.time() - start:.0f}s", flush=True)
    greedy_rows.sort(key=lambda g: g["params"])
    small_path = os.path.join(args.small, "ckpt.pt")
    small = next(g for g in greedy_rows if os.path.samefile(g["path"], small_path))
    large = greedy_row("tiny preset", args.large, None, problems, levels, args.seed)
    curves = small_curves(small_path, problems, levels, args.temperatures, args.seed)
    print(f"small model's {SAMPLES} samples a problem: {time.time() - start:.0f}s", flush=True)
    rows = exchange_table(small, curves, large, levels)
    seconds = time.time() - start
    text = report(rows, small, greedy_rows, large, seconds, args.problems)
    write_json(os.path.join(args.out, "exchange_rate.json"),
               {"rows": rows, "small": small, "grid": greedy_rows, "large": large, "curves": curves,
                "temperatures": args.temperatures, "seconds": seconds})
    with open(os.path.join(args.out, "exchange_rate.md"), "w") as f:
        f.write(text)
    plot(os.path.join(args.out, "exchange_rate.png"), levels, curves, small, large)
    print(text, flush=True)


if __name__ == "__main__":
    main()
