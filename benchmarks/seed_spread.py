"""
Benchmark: how far does the seed alone move a pre-training result?

One pre-training run is one draw. The seed picks the training problems, the initial weights, the batch order and
the held-out problems, and on the tiny preset it moves greedy arith accuracy by up to 28 points with everything
else fixed (README, stage 2). A different thread count also changes the order of float additions, so
the same seed on another machine is another run. So a recipe is only better than another when its spread over seeds says so. This script trains
one recipe under several seeds, a few runs at a time, and prints the accuracy of each with the mean, standard
deviation, minimum and maximum.

Everything after `--` goes to train_pretrain.py unchanged; each run writes to <root>/seed<N>/, and a seed whose
folder already holds a finished run (eval.json) is read, not trained again.

    python -m benchmarks.seed_spread --seeds 1337,1,2 --parallel 2 --root runs/seeds/default -- --preset tiny --threads 1
    python -m benchmarks.seed_spread --seeds 1,2 --root runs/seeds/b16 -- --preset tiny --batch-size 16 --steps 9600 --threads 1

On 2 cores run two at a time with --threads 1 each. On a GPU (--device cuda after the --) many runs share the card.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from nano_reasoner.report import format_duration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1337,1,2", help="comma-separated seeds (default 1337,1,2)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--root", default="runs/seeds", help="folder of the runs, one seed<N>/ each (default runs/seeds)")
    parser.add_argument("--report-every", type=float, default=60.0, help="seconds between progress lines (default 60)")
    argv = sys.argv[1:] if argv is None else argv
    ours, passed = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give whole numbers separated by commas, such as 1337,1,2")
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    for flag in ("--out", "--seed", "--resume"):
        if flag in passed:
            parser.error(f"{flag} is set by this script for each seed: leave it out of the train_pretrain.py flags")
    args.train_flags = passed
    return args


def last_progress_line(log_path):
    """The last 'step ...' line a run has printed so far, or '' if none."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as file:
            lines = [line.strip() for line in file if line.startswith("step ")]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def run_all(args):
    """Train every seed that has no finished run, args.parallel at a time. -> {seed: error line} of failed runs."""
    pending = [seed for seed in args.seeds if not os.path.exists(os.path.join(args.root, f"seed{seed}", "eval.json"))]
    for seed in args.seeds:
        if seed not in pending:
            print(f"seed {seed}: finished run found in {args.root}/seed{seed}, read as is")
    running, failed = {}, {}
    t_start, t_report = time.time(), time.time()
    while pending or running:
        while pending and len(running) < args.parallel:
            seed = pending.pop(0)
            out = os.path.join(args.root, f"seed{seed}")
            os.makedirs(out, exist_ok=True)
            log = open(os.path.join(out, "train.log"), "w")
            command = [sys.executable, os.path.join(REPO, "train_pretrain.py"), "--out", out, "--seed", str(seed),
                       *args.train_flags]
            if os.path.exists(os.path.join(out, "ckpt.pt")):
                command.append("--resume")  # a run stopped half way continues
            running[seed] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log)
            print(f"seed {seed}: started ({' '.join(command[1:])})", flush=True)
        time.sleep(2)
        for seed, (process, log) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[seed]
            log_path = os.path.join(args.root, f"seed{seed}", "train.log")
            if process.returncode != 0:
                with open(log_path, encoding="utf-8", errors="replace") as file:
                    lines = file.read().strip().splitlines()
                failed[seed] = lines[-1] if lines else f"exit code {process.returncode}"
                print(f"seed {seed}: FAILED: {failed[seed]} (log: {log_path})", flush=True)
            else:
                print(f"seed {seed}: done after {format_duration(time.time() - t_start)}", flush=True)
        if running and time.time() - t_report >= args.report_every:
            t_report = time.time()
            for seed in running:
                line = last_progress_line(os.path.join(args.root, f"seed{seed}", "train.log"))
                print(f"  seed {seed}: {line or 'preparing data'}", flush=True)
    return failed


def summarize(args):
    """Read every finished run -> (table rows, summary dict) and print the table."""
    results = {}
    for seed in args.seeds:
        path = os.path.join(args.root, f"seed{seed}", "eval.json")
        if os.path.exists(path):
            with open(path) as file:
                results[seed] = json.load(file)
    if not results:
        return {}
    # the tasks' accuracies; eval.json also holds the countdown thinking and budget-sweep summaries
    tasks = [key for key, value in next(iter(results.values())).items() if isinstance(value, dict) and "all" in value]
    print(f"\ngreedy accuracy on the held-out problems, {len(results)} seeds "
          f"(train_pretrain.py {' '.join(args.train_flags)}):")
    header = f"{'seed':>6} " + " ".join(f"{task:>10}" for task in tasks) + "   by difficulty"
    print(header)
    for seed, result in results.items():
        by_difficulty = "; ".join(task + " " + ", ".join(f"{d}: {acc:.0%}" for d, acc in sorted(result[task].items())
                                                            if d != "all") for task in tasks)
        print(f"{seed:>6} " + " ".join(f"{result[task]['all']:>10.1%}" for task in tasks) + f"   {by_difficulty}")
    summary = {"seeds": list(results), "train_flags": args.train_flags, "tasks": {}}
    for task in tasks:
        values = [result[task]["all"] for result in results.values()]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        summary["tasks"][task] = {"per_seed": values, "mean": statistics.mean(values), "std": std,
                                  "min": min(values), "max": max(values)}
    for name in ("mean", "std", "min", "max"):
        print(f"{name:>6} " + " ".join(f"{summary['tasks'][task][name]:>10.1%}" for task in tasks))
    with open(os.path.join(args.root, "summary.json"), "w") as file:
        json.dump(summary, file, indent=2)
    return summary


def main():
    args = parse_args()
    os.makedirs(args.root, exist_ok=True)
    failed = run_all(args)
    summarize(args)
    if failed:
        print(f"\n{len(failed)} run(s) failed: " + "; ".join(f"seed {s}: {line}" for s, line in failed.items()),
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
