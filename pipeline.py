"""
Run every stage end to end: pre-training -> reasoning traces (the reasoner) -> verifiers -> post-training with
rule-based rewards (expert iteration; train_rl.py --algo grpo for GRPO) -> compression (int8 and int4 copies of the
final policy, compress.py) -> conversation (the chat fine-tune, chat.py) -> a student with a third of the final
policy's parameters, trained the way that won at equal CPU time (train_pretrain.py --teacher, DISTILL_ARM) ->
domain adaptation (the final policy taught three-digit arith, train_adapt.py) -> test-time scaling.

    python pipeline.py --preset tiny            # the whole story on a laptop CPU, into runs/tiny/

Each stage is its own script (run them by hand to change a flag); this file only calls them in order, each reading
the previous stage's checkpoint from runs/<preset>/<stage>/ckpt.pt. A finished stage is skipped and a stage stopped
half way is resumed from its checkpoint, so an interrupted pipeline picks up where it stopped (--fresh starts over). The stages' sections of
runs/<preset>/report.md tell the story with its numbers and plots.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time


# the sweep on the tiny reasoner: its traces are ~4x longer than a straight policy's, so fewer problems and budgets
SCALING_TINY = ["--scaling-problems", "32", "--scaling-budgets", "1,2,4,8,16"]
REASON_ARITH_TRACES = "straight"  # retry traces cost 3-operation arith 7 points (docs/reasoning_log.md)
# the best of the four arms at equal CPU time (benchmarks/distill_compare.py, docs/distill_log.md): the student on the
# exact traces alone (the teacher gives its tokenizer and the size to beat) beat the teacher's traces (a) and soft
# targets (b) and the exact traces + GRPO (d); "traces" is R1's recipe, if a run wants the student to learn from it
DISTILL_ARM = "none"


def stages(preset, run_dir):
    """(name, command, the file a stage writes last, which marks it done)."""
    pretrain = os.path.join(run_dir, "pretrain", "ckpt.pt")
    # the reasoner (train_pretrain.py --init): from here on the verifiers, RL and the sweep use it
    reason = os.path.join(run_dir, "reason", "ckpt.pt")
    prm = os.path.join(run_dir, "prm", "ckpt.pt")
    final = os.path.join(run_dir, "rl", "ckpt.pt")  # the final policy: compressed, chatted with, distilled, adapted
    planned = [
        ("pretrain", ["train_pretrain.py", "--preset", preset, "--out", os.path.dirname(pretrain)],
         os.path.join(run_dir, "pretrain", "eval.json")),
        ("reason", ["train_pretrain.py", "--preset", preset, "--init", pretrain, "--countdown-traces", "search",
                    "--arith-traces", REASON_ARITH_TRACES, "--out", os.path.dirname(reason)],
         os.path.join(run_dir, "reason", "eval.json")),
        ("prm", ["train_prm.py", "--preset", preset, "--policy", reason, "--out", os.path.dirname(prm)],
         os.path.join(run_dir, "prm", "eval.json")),
        ("rl", ["train_rl.py", "--preset", preset, "--init", reason, "--out", os.path.join(run_dir, "rl")],
         os.path.join(run_dir, "rl", "eval.json")),
        # the final policy compressed (compress.py): int8 and int4 in runs/<preset>/compress/, one report section
        ("compress-int8", ["compress.py", "--ckpt", os.path.join(run_dir, "rl", "ckpt.pt"), "--quantize", "int8",
                           "--out", os.path.join(run_dir, "compress", "int8")],
         os.path.join(run_dir, "compress", "int8", "eval.json")),
        ("compress-int4", ["compress.py", "--ckpt", os.path.join(run_dir, "rl", "ckpt.pt"), "--quantize", "int4",
                           "--group-size", "32", "--out", os.path.join(run_dir, "compress", "int4-g32")],
         os.path.join(run_dir, "compress", "int4-g32", "eval.json")),
        ("chat", ["train_pretrain.py", "--preset", preset, "--init", os.path.join(run_dir, "rl", "ckpt.pt"), "--chat",
                  "--out", os.path.join(run_dir, "chat")],
         os.path.join(run_dir, "chat", "eval.json")),
        ("distill", ["train_pretrain.py", "--preset", preset, "--teacher", final, "--distill", DISTILL_ARM,
                     "--countdown-traces", "search", "--out", os.path.join(run_dir, "distill")],
         os.path.join(run_dir, "distill", "eval.json")),
        ("adapt", ["train_adapt.py", "--preset", preset, "--init", final, "--out", os.path.join(run_dir, "adapt")],
         os.path.join(run_dir, "adapt", "eval.json")),
        # the sweep reads the scalar PRM: the generative verifier (prm/ckpt.pt) writes a check per candidate
        ("scaling", ["infer.py", "--scaling", "--ckpt", reason,
                     "--verifier", os.path.join(run_dir, "prm", "prm_exact.pt"),
                     "--orm", os.path.join(run_dir, "prm", "orm.pt"), "--scaling-out", os.path.join(run_dir, "scaling")]
         + (SCALING_TINY if preset == "tiny" else []),
         os.path.join(run_dir, "scaling", "scaling.md")),
    ]
    return planned


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("tiny", "small", "base"), default="tiny", help="sizes (default tiny, CPU)")
    parser.add_argument("--runs", default="runs", help="parent folder of the run (default runs)")
    parser.add_argument("--fresh", action="store_true", help="delete runs/<preset>/ first and redo every stage")
    args = parser.parse_args()
    run_dir = os.path.join(args.runs, args.preset)
    if args.fresh and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    timings = []
    for name, command, done_marker in stages(args.preset, run_dir):
        if os.path.exists(done_marker):
            print(f"== {name}: done already ({done_marker}), skipped")
            continue
        # the sweep, the compressions and the adaptation are short: they run again from the start rather than resume
        is_resumable = name not in ("scaling", "adapt") and not name.startswith("compress")
        started = [os.path.join(os.path.dirname(done_marker), name) for name in ("ckpt.pt", "labels.pt")]
        if is_resumable and any(map(os.path.exists, started)):
            command = command + ["--resume"]  # stopped half way last time: continue it
        print(f"== {name}: python {' '.join(command)}", flush=True)
        t_start = time.time()
        result = subprocess.run([sys.executable] + command)
        if result.returncode != 0:
            print(f"pipeline stopped: stage {name} failed (exit {result.returncode}); fix it and run again, "
                  f"finished stages are kept", file=sys.stderr)
            sys.exit(result.returncode)
        timings.append((name, time.time() - t_start))
    for name, seconds in timings:
        print(f"{name}: {seconds / 60:.1f} min")
    print(f"report: {os.path.join(run_dir, 'report.md')}")


if __name__ == "__main__":
    main()
