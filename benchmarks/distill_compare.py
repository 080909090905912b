"""
Benchmark: four ways to train a student with a third of the teacher's parameters, at equal CPU time (issue 21).

    python -m benchmarks.distill_compare --teacher runs/tiny/rl/ckpt.pt --out runs/distill_compare --lock /tmp/nr_cpu.lock

The arms, all the same student (train_pretrain.py's DISTILL_PRESETS: 4 layers x 72, 254k parameters against the tiny
policy's 796k), the same seed, the same held-out problems (500 per task):
  (a) traces: the teacher's verified greedy solutions of fresh problems (sequence-level, DeepSeek-R1's distillation);
      the teacher's sampling counts in the arm's time;
  (b) logits: the task's exact traces with the teacher's soft targets (KL at temperature T, Hinton et al.);
  (c) exact: the task's exact traces alone, no teacher;
  (d) exact + GRPO: (c) for a share of the time, then GRPO (train_rl.py --algo grpo) for the rest: R1's other arm,
      reinforcement learning on the small model itself.
Each arm's number of steps is set so that its training takes about 240 seconds on this machine (the rates are
measured, docs/distill_log.md); the table reports the seconds each arm actually took. With --lock each run holds the
file lock exclusively, so that nothing else runs on the CPU while it is timed. Finished arms are skipped (delete a
folder to rerun it). Prints a markdown table and writes the plot (--plot, default docs/distill.png).
"""
import argparse
import json
import os
import subprocess
import sys

from nano_reasoner.report import markdown_table, plot_panels, read_metrics

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--teacher", required=True, help="the teacher policy checkpoint")
parser.add_argument("--out", default="runs/distill_compare", help="folder of the arms' run folders")
parser.add_argument("--plot", default="docs/distill.png", help="the plot to write (default docs/distill.png)")
parser.add_argument("--lock", default=None, help="a lock file each run holds exclusively (flock -x), for honest timing")
parser.add_argument("--seed", type=int, default=1337, help="seed of every arm (default 1337)")
parser.add_argument("--arms", default="abcd", help="the arms to run and tabulate, by letter (default abcd; another "
                    "seed of the two that decide the R1 comparison: --arms ad --seed 1)")
parser.add_argument("--threads", type=int, default=None, help="CPU threads of every run (default: all cores)")
# the steps that make each arm about 240 s on the 2-core CPU (rates in docs/distill_log.md)
parser.add_argument("--steps-traces", type=int, default=4100, help="(a) student steps (default 4100)")
parser.add_argument("--teacher-problems", type=int, default=2000, help="(a) countdown problems the teacher solves, "
                    "twice as many arith (default 2000)")
parser.add_argument("--steps-logits", type=int, default=2950, help="(b) student steps (default 2950)")
parser.add_argument("--kd-temperature", type=float, default=2.0, help="(b) T (default 2.0)")
parser.add_argument("--kd-weight", type=float, default=0.9, help="(b) weight of the KD term (default 0.9)")
parser.add_argument("--logits-folder", default="logits", help="(b) run folder, to keep variants apart (default logits)")
parser.add_argument("--steps-exact", type=int, default=4600, help="(c) student steps (default 4600)")
parser.add_argument("--steps-sft", type=int, default=3800, help="(d) steps of (c) before GRPO (default 3800)")
parser.add_argument("--grpo-steps", type=int, default=35, help="(d) GRPO steps (default 35)")
args = parser.parse_args()

# every arm: the same student, tokenizer and data (DISTILL_PRESETS); --distill none takes only the teacher's tokenizer
student = ["--teacher", args.teacher, "--countdown-traces", "search", "--eval-every", "100000", "--log-every", "200",
           "--seed", str(args.seed)]
threads = ["--threads", str(args.threads)] if args.threads else []
ARMS = {  # name: list of (run folder, command)
    "(a) teacher's traces": [("traces", ["train_pretrain.py", "--distill", "traces",
                                         "--teacher-problems", str(args.teacher_problems),
                                         "--steps", str(args.steps_traces)] + student)],
    "(b) teacher's logits": [(args.logits_folder, ["train_pretrain.py", "--distill", "logits", "--kd-temperature",
                                         str(args.kd_temperature), "--kd-weight", str(args.kd_weight),
                                         "--steps", str(args.steps_logits)] + student)],
    "(c) exact traces": [("exact", ["train_pretrain.py", "--distill", "none", "--steps", str(args.steps_exact)] + student)],
    "(d) exact + GRPO": [("exact_short", ["train_pretrain.py", "--distill", "none", "--steps", str(args.steps_sft)]
                          + student),
                         ("grpo", ["train_rl.py", "--algo", "grpo", "--init", os.path.join(args.out, "exact_short", "ckpt.pt"),
                                   "--steps", str(args.grpo_steps), "--curve-every", "0", "--seed", str(args.seed)])],
}

ARMS = {name: runs for name, runs in ARMS.items() if name[1] in args.arms}
for name, runs in ARMS.items():
    for folder, command in runs:
        out = os.path.join(args.out, folder)
        if os.path.exists(os.path.join(out, "eval.json")):
            print(f"== {name}: {out} done already")
            continue
        full = ([ "flock", "-x", args.lock] if args.lock else []) + [sys.executable] + command + threads + ["--out", out]
        print(f"== {name}: {' '.join(full)}", flush=True)
        if subprocess.run(full).returncode != 0:
            sys.exit(f"error: {name} failed; its folder {out} is kept")


def read(folder, name):
    with open(os.path.join(args.out, folder, name)) as f:
        return json.load(f)


def train_seconds(folder):
    """train_rl.py writes its training seconds to eval.json, train_pretrain.py to the last record of metrics.jsonl."""
    evaluation = read(folder, "eval.json")
    if "train_seconds" in evaluation:
        return evaluation["train_seconds"]
    return [m for m in read_metrics(os.path.join(args.out, folder, "metrics.jsonl")) if m.get("final")][-1]["train_seconds"]


rows, points = [], {}
for name, runs in ARMS.items():
    seconds = sum(train_seconds(folder) for folder, _ in runs)
    last = runs[-1][0]
    evaluation = read(last, "eval.json")
    if "after" in evaluation:  # train_rl.py: before (the SFT) and after (GRPO), a line from one to the other
        accuracy = {task: evaluation["after"][task]["greedy"] for task in ("arith", "countdown")}
        params = read(runs[0][0], "config.json")["params"]
        sft_seconds = train_seconds(runs[0][0])
        points[name] = ([sft_seconds, seconds], {task: [evaluation["before"][task]["greedy"]["all"], accuracy[task]["all"]]
                                                 for task in accuracy})
    else:
        accuracy = {task: evaluation[task] for task in ("arith", "countdown")}
        params = read(last, "config.json")["params"]
        points[name] = ([seconds], {task: [accuracy[task]["all"]] for task in accuracy})
    rows.append([name, f"{params:,}", f"{seconds:.0f}", f"{accuracy['arith']['all']:.1%}",
                 f"{accuracy['countdown']['all']:.1%}", ", ".join(f"{d}: {accuracy['arith'][d]:.0%}" for d in "1234")])
teacher_params = read(next(iter(ARMS.values()))[0][0], "config.json")["teacher_params"]
print(f"student {rows[0][1]} parameters, teacher {teacher_params:,}; greedy on 500 held-out problems per task:")
print(markdown_table(["arm", "parameters", "CPU seconds", "arith", "countdown", "arith by operations"], rows))
panels = [{"title": f"{task}: held-out greedy accuracy (500)", "xlabel": "training CPU seconds (2 cores)",
           "ylabel": "accuracy", "series": {name: (xs, ys[task]) for name, (xs, ys) in points.items()}}
          for task in ("arith", "countdown")]
plot_panels(args.plot, panels, title=f"students of {teacher_params / 1e3:.0f}k -> {int(rows[0][1].replace(',', '')) / 1e3:.0f}k "
                                     f"parameters at equal CPU time")
print(f"wrote {args.plot}")
