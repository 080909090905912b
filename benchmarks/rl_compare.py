"""
Benchmark: post-training methods side by side, held-out greedy accuracy against samples drawn, one line per run.

Reads the metrics.jsonl of finished train_rl.py runs made with --curve-every (each logs greedy accuracy on the first
--curve-problems held-out problems, before training and every few rounds or steps) and draws one panel per task,
one line per run, with samples drawn on the x axis so that EI rounds and GRPO steps compare at equal sampling cost.
Prints each run's before/after table from its eval.json. Run the methods from the same --init with the same budget
first, for example (two at a time, one thread each):

    python train_rl.py --init runs/tiny/reason/ckpt.pt --out runs/cmp/ei --algo ei --curve-every 1 --threads 1
    python train_rl.py --init runs/tiny/reason/ckpt.pt --out runs/cmp/grpo --algo grpo --steps 50 --curve-every 5 --threads 1
    python -m benchmarks.rl_compare --runs runs/cmp/ei runs/cmp/grpo --out runs/cmp/rl_compare.png
"""
import argparse
import json
import os
import sys

from nano_reasoner.report import plot_panels, read_metrics

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--runs", nargs="+", required=True, help="train_rl.py run folders (--out of each)")
parser.add_argument("--out", default="rl_compare.png", help="the plot to write (default rl_compare.png)")
args = parser.parse_args()

curves = {}
for run in args.runs:
    if not os.path.exists(os.path.join(run, "eval.json")):
        sys.exit(f"error: {run} holds no eval.json: give the folder of a finished train_rl.py run")
    with open(os.path.join(run, "config.json")) as f:
        run_args = json.load(f)["args"]
    with open(os.path.join(run, "eval.json")) as f:
        evaluation = json.load(f)
    points = [m for m in read_metrics(os.path.join(run, "metrics.jsonl")) if "curve_countdown" in m]
    if not points:
        sys.exit(f"error: {run} logged no accuracy curve: run it with --curve-every N")
    label = f"{run_args['algo']} ({os.path.basename(os.path.normpath(run))})"
    curves[label] = points
    print(f"{label}: {points[-1]['samples']} samples drawn")
    for task in ("countdown", "arith"):
        before, after = evaluation["before"][task], evaluation["after"][task]
        print(f"  {task}: greedy {before['greedy']['all']:.1%} -> {after['greedy']['all']:.1%} "
              f"({100 * (after['greedy']['all'] - before['greedy']['all']):+.1f}) | pass@{evaluation['pass_k']} "
              f"{before['pass_at_k']:.1%} -> {after['pass_at_k']:.1%} | tokens {before['mean_len']:.0f} -> "
              f"{after['mean_len']:.0f}")

panels = [{"title": f"{task}: held-out greedy accuracy", "xlabel": "samples drawn", "ylabel": "accuracy",
           "series": {label: ([m["samples"] for m in points], [m[f"curve_{task}"] for m in points])
                      for label, points in curves.items()}}
          for task in ("countdown", "arith")]
plot_panels(args.out, panels, title="post-training from the same start: accuracy against samples drawn")
print(f"wrote {args.out}")
