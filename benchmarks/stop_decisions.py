"""
Benchmark: where a reasoner's wrong countdown answers go wrong, and how it decides to stop.

A search trace ends its thinking when a check makes the target and goes back (an undo line) when it misses. The
comparison behind that decision is one token per attempt among a hundred of copying and arithmetic. This script lets
each checkpoint solve the held-out countdown problems greedily and reports

- how every wrong output ends: stopped on a number that is not the target (a false stop), the context ran out while
  it was still searching, the path to the answer holds an illegal line, or the path made the target and the answer
  does not;
- every decision taken on a single number reached by legal moves (thinking.stop_decisions): how many misses were
  followed by an undo line and how many by `</think>`, and what the numbers it stopped on wrongly share with the
  target (its units digit, which the model writes first; its number of digits; a value within 10%).

    python -m benchmarks.stop_decisions --ckpt runs/tiny/reason/ckpt.pt
    python -m benchmarks.stop_decisions --ckpt runs/a/ckpt.pt --ckpt runs/b/ckpt.pt --seed 1 --out runs/stops.md

`--seed` picks the held-out problems the way train_pretrain.py's `--seed` does, so a run is measured on its own.
docs/reasoning_log.md (round 5) has what it found.
"""
import argparse
import os
from collections import Counter

import torch

from nano_reasoner.cli import load_policy
from nano_reasoner.evaluate import attempt_problems, held_out_problems
from nano_reasoner.report import markdown_table
from nano_reasoner.tasks import countdown
from nano_reasoner.thinking import stop_decisions


def how_it_ends(attempt, decisions, tokenizer):
    """One wrong attempt and its stop decisions -> where it went wrong, in a few words."""
    if tokenizer.end_think_id not in attempt.tokens:
        return "the context ran out while searching"
    if decisions and decisions[-1][2] == "end" and decisions[-1][0] != decisions[-1][1]:
        return "stopped on one number, not the target"
    if attempt.verdict.reason.startswith("step"):  # countdown.check: the first illegal line of the answer's path
        return "the answer's path holds an illegal line"
    return "other (an early stop, a wrong answer line)"


def measure(path, problems, threads):
    torch.set_num_threads(threads)
    model, tokenizer, _ = load_policy(path, "cpu")
    model.eval()
    with torch.no_grad():
        attempts, _ = attempt_problems(model, tokenizer, problems)
    attempts = [a[0] for a in attempts]
    per_attempt = [stop_decisions(a.problem, a.completion) for a in attempts]
    ends = Counter(how_it_ends(a, d, tokenizer) for a, d in zip(attempts, per_attempt) if not a.verdict.is_correct)
    decisions = [d for attempt_decisions in per_attempt for d in attempt_decisions]
    misses = [(n, t, after) for n, t, after in decisions if n != t]
    false_stops = [(n, t) for n, t, after in misses if after == "end"]
    shares = {"units digit": sum(n % 10 == t % 10 for n, t in false_stops),
              "number of digits": sum(len(str(n)) == len(str(t)) for n, t in false_stops),
              "within 10%": sum(abs(n - t) <= 0.1 * t for n, t in false_stops)}
    return {"accuracy": sum(a.verdict.is_correct for a in attempts) / len(attempts), "ends": ends,
            "misses": len(misses), "false_stops": len(false_stops), "shares": shares,
            "hits_missed": sum(1 for n, t, after in decisions if n == t and after != "end")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", action="append", required=True, help="a reasoner checkpoint (repeat for more)")
    parser.add_argument("--seed", type=int, default=1337, help="held-out problems of this training seed (default 1337)")
    parser.add_argument("--problems", type=int, default=500, help="held-out countdown problems (default 500)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--out", help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    for path in args.ckpt:
        if not os.path.exists(path):
            raise SystemExit(f"error: --ckpt {path} does not exist: train a reasoner first (pipeline.py, stage reason)")
    problems = held_out_problems(args.problems, args.seed)["countdown"]
    results = {path: measure(path, problems, args.threads) for path in args.ckpt}
    kinds = sorted({kind for r in results.values() for kind in r["ends"]})
    n = len(problems)
    lines = [f"Greedy on {n} held-out countdown problems (seed {args.seed}); how the wrong outputs end, share of all:", ""]
    lines += [markdown_table(["checkpoint", "right"] + kinds,
                            [[path, f"{r['accuracy']:.1%}"] + [f"{r['ends'][k] / n:.1%}" for k in kinds]
                             for path, r in results.items()])]
    lines += ["", "Decisions on a single number reached by legal moves: misses, and those followed by `</think>` "
              "(false stops), with what the false stops share with the target:", ""]
    lines += [markdown_table(["checkpoint", "misses", "false stops", "its units digit", "its number of digits",
                             "within 10%", "hits not stopped on"],
                            [[path, r["misses"], f"{r['false_stops']} ({r['false_stops'] / max(1, r['misses']):.1%})"]
                             + [f"{v} ({v / max(1, r['false_stops']):.0%})" for v in r["shares"].values()]
                             + [r["hits_missed"]] for path, r in results.items()])]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
