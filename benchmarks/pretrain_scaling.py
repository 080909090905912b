"""
Benchmark: the pre-training scaling law of our tasks (nano_reasoner/scaling_law.py says what is fitted and why).

A grid of model sizes, each pre-trained at several compute budgets C (training FLOPs, scaling_law.training_flops) on
the pipeline's data (both tasks, exact straight traces, the tiny preset's recipe with its weight average off). A
run's steps are chosen so that it spends its budget: D = C / FLOPs-per-token training tokens. After each run the
held-out loss (on the completions of 256 held-out problems per task, the same for every run) and the greedy
accuracy (100 held-out problems per task) are recorded. Then: L(C) on the frontier (the best loss at each budget)
as E + a * C^b, the iso-FLOP valley of each budget with three sizes or more (Chinchilla's approach 2), and the
surface L(N, D) where the grid allows (approach 3).

    python -m benchmarks.pretrain_scaling --quick --out runs/scaling_law_quick    # 3 sizes x 3 budgets, 2.7 minutes
    python -m benchmarks.pretrain_scaling --out runs/scaling_law                  # 7 sizes x 4 budgets, 46.6 min

Writes DIR/runs.jsonl (one record a run; a finished run is read, not trained again), DIR/scaling_law.json ("exponent"
and "r2" of the frontier's L(C), the iso-FLOP minima, the surface) and DIR/scaling_law.png. Each run is
`train_pretrain.py` in DIR/<size>-<budget>/ with a shared tokenizer, so the losses compare.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

from nano_reasoner import scaling_law, tasks
from nano_reasoner.cli import load_policy
from nano_reasoner.data import collate, make_examples
from nano_reasoner.evaluate import held_out_problems
from nano_reasoner.model import GPTConfig
from nano_reasoner.report import plot_panels, write_json
from nano_reasoner.tokenizer import train_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (layers, width, heads): from 0.025M to 2.7M non-embedding parameters; (4, 128, 4) is the tiny preset's model. A small
# model runs far below the CPU's FLOP rate (its steps are short, the overhead per step is not), so the grid's smallest
# sizes would spend most of its time at its largest budgets: the budgets stop at 1e13, and a grid point that would
# take more than MAX_STEPS steps is skipped, to keep the grid within an hour.
SIZES = [(2, 32, 2), (2, 48, 2), (2, 64, 4), (3, 96, 4), (4, 128, 4), (5, 160, 5), (6, 192, 6)]
MAX_STEPS = 60000  # the smallest size at 1e13 takes 51k steps (13 minutes)
BUDGETS = [3e11, 1e12, 3e12, 1e13]
QUICK_SIZES = [(2, 48, 2), (2, 64, 4), (3, 96, 4)]
QUICK_BUDGETS = [1e11, 3e11, 9e11]
MIN_STEPS = 20
BATCH_SIZE = 16
GRANULARITY, COUNTDOWN_PRODUCTS = "digits", "once"  # the tiny preset's traces


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/scaling_law", help="folder of the grid (default runs/scaling_law)")
    parser.add_argument("--quick", action="store_true", help="3 sizes x 3 budgets, 2.7 minutes alone on 2 cores")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of each run (default 2)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of every run (default 1337)")
    parser.add_argument("--budgets", help="training FLOPs of the runs, comma separated (default: the grid's)")
    args = parser.parse_args(argv)
    if args.budgets is not None:
        try:
            args.budgets = sorted(float(b) for b in args.budgets.split(","))
        except ValueError:
            parser.error(f"--budgets {args.budgets!r}: give numbers such as 1e12,3e12,1e13")
    return args


def training_mix(seed, n=2000):
    """A sample of the training problems of the tiny preset (arith 1-3 operations and 4, countdown 3-4 numbers)."""
    return (tasks.generate("arith", n, seed=seed + 1, difficulties=(1, 2, 3, 4)) +
            tasks.generate("countdown", n, seed=seed + 2, difficulties=(3, 4)))


def heldout_loss(model, examples, pad_id, batch_size=64):
    """Mean next-token loss over the completion tokens of examples (token-weighted, as in training)."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            inputs, targets = collate(examples[start:start + batch_size], pad_id, device)
            _, loss = model(inputs, targets)
            count = int((targets != -1).sum())
            total, tokens = total + float(loss) * count, tokens + count
    return total / tokens


def run_grid_point(args, size, budget, tokenizer_bytes, mean_length):
    """Train one size at one budget (or read its record) -> the record."""
    n_layer, n_embd, n_head = size
    folder = os.path.join(args.out, f"L{n_layer}-d{n_embd}-C{budget:.0e}".replace("+", ""))
    record_path = os.path.join(folder, "record.json")
    if os.path.exists(record_path):
        with open(record_path) as f:
            return json.load(f)
    config = GPTConfig(vocab_size=64, block_size=320, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    per_token = scaling_law.flops_per_token(config, context=mean_length / 2)  # a token attends to half a trace
    tokens = budget / per_token
    steps = max(MIN_STEPS, round(tokens / (BATCH_SIZE * mean_length)))
    if steps > MAX_STEPS:
        return None  # too slow on this CPU: the grid skips it
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "tokenizer.model"), "wb") as f:  # the shared tokenizer: train_pretrain keeps it
        f.write(tokenizer_bytes)
    command = [sys.executable, os.path.join(REPO, "train_pretrain.py"), "--preset", "tiny", "--out", folder,
               "--n-layer", str(n_layer), "--n-embd", str(n_embd), "--n-head", str(n_head), "--steps", str(steps),
               "--warmup", str(max(10, steps // 10)), "--ema", "0", "--eval-every", str(10 ** 9),
               "--save-every", str(10 ** 9), "--log-every", str(max(1, steps // 4)), "--eval-problems", "100",
               "--train-problems", str(min(40000, steps * BATCH_SIZE)), "--threads", str(args.threads),
               "--seed", str(args.seed)]
    start = time.time()
    with open(os.path.join(folder, "train.log"), "w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"the run in {folder} failed (exit {result.returncode}): see {folder}/train.log")
    seconds = time.time() - start
    model, tokenizer, _ = load_policy(os.path.join(folder, "ckpt.pt"), torch.device("cpu"))
    with open(os.path.join(folder, "eval.json")) as f:
        accuracy = json.load(f)
    record = {"n_layer": n_layer, "n_embd": n_embd, "params": scaling_law.non_embedding_params(config),
              "budget": budget, "tokens": steps * BATCH_SIZE * mean_length, "steps": steps,
              "flops": steps * BATCH_SIZE * mean_length * per_token,  # above the budget when MIN_STEPS binds
              "loss": heldout_loss(model, HELD_OUT[0], tokenizer.pad_id), "arith": accuracy["arith"]["all"],
              "countdown": accuracy["countdown"]["all"], "seconds": seconds}
    write_json(record_path, record)
    return record


def fit(records, budgets):
    """The fits of scaling_law.py on a grid's records -> a JSON-able dict. A run that MIN_STEPS pushed past its
    budget is left out of them."""
    records = [r for r in records if r["flops"] <= 1.05 * r["budget"]]
    frontier = [min((r for r in records if r["budget"] == b), key=lambda r: r["loss"]) for b in budgets]
    compute_law = scaling_law.fit_loss_vs_compute([r["budget"] for r in frontier], [r["loss"] for r in frontier])
    minima = {}
    for budget in budgets:
        runs = sorted((r for r in records if r["budget"] == budget), key=lambda r: r["params"])
        if len(runs) >= 3:
            minima[f"{budget:.0e}"] = scaling_law.iso_flop_minimum([r["params"] for r in runs], [r["loss"] for r in runs])
    result = {"exponent": compute_law.law.exponent, "r2": compute_law.law.r2,
              "irreducible_loss": compute_law.irreducible, "coefficient": compute_law.law.coefficient,
              "frontier": [{"budget": r["budget"], "params": r["params"], "loss": r["loss"]} for r in frontier],
              "iso_flop_minimum_params": minima, "runs": len(records)}
    if len(records) >= 8:
        surface = scaling_law.fit_chinchilla([r["params"] for r in records], [r["tokens"] for r in records],
                                             [r["loss"] for r in records])
        result["chinchilla"] = {"E": surface.E, "A": surface.A, "alpha": surface.alpha, "B": surface.B,
                                "beta": surface.beta,
                                "optimal_params_exponent": surface.beta / (surface.alpha + surface.beta)}
    return result, compute_law


def plot(path, records, sizes, budgets, compute_law):
    by_size = {f"{n_layer}x{n_embd}": ([r["budget"] for r in records if (r["n_layer"], r["n_embd"]) == (n_layer, n_embd)],
                                        [r["loss"] for r in records if (r["n_layer"], r["n_embd"]) == (n_layer, n_embd)])
               for n_layer, n_embd, _ in sizes}
    by_size["fit: E + a C^b (frontier)"] = (budgets, [compute_law(b) for b in budgets])
    iso = {f"C = {b:.0e}": ([r["params"] for r in sorted(records, key=lambda r: r["params"]) if r["budget"] == b],
                            [r["loss"] for r in sorted(records, key=lambda r: r["params"]) if r["budget"] == b])
           for b in budgets}
    best = [min((r for r in records if r["budget"] == b), key=lambda r: r["loss"]) for b in budgets]
    accuracy = {task: (budgets, [r[task] for r in best]) for task in ("arith", "countdown")}
    plot_panels(path, [
        {"title": "held-out loss against compute, one line a size", "xlabel": "training FLOPs",
         "ylabel": "loss (completion tokens)", "series": by_size, "logx": True, "logy": True},
        {"title": "iso-FLOP curves", "xlabel": "non-embedding parameters", "ylabel": "loss", "series": iso,
         "logx": True},
        {"title": "greedy accuracy of the best run per budget", "xlabel": "training FLOPs", "ylabel": "accuracy",
         "series": accuracy, "logx": True},
    ], "pre-training scaling law (benchmarks/pretrain_scaling.py)")


HELD_OUT = []  # the held-out examples, made once in main


def main():
    args = parse_args()
    sizes, budgets = (QUICK_SIZES, QUICK_BUDGETS) if args.quick else (SIZES, BUDGETS)
    budgets = args.budgets or budgets
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads)
    mix = training_mix(args.seed)
    tokenizer = train_tokenizer([tasks.full_trace(p, GRANULARITY, "straight", COUNTDOWN_PRODUCTS) for p in mix[::2]],
                                os.path.join(args.out, "tokenizer.model"))
    examples = make_examples(tokenizer, mix, GRANULARITY, countdown_products=COUNTDOWN_PRODUCTS)
    mean_length = sum(len(e.tokens) for e in examples) / len(examples)
    held_out = held_out_problems(256, args.seed)
    HELD_OUT.append(make_examples(tokenizer, held_out["arith"] + held_out["countdown"], GRANULARITY,
                                  countdown_products=COUNTDOWN_PRODUCTS))
    print(f"{len(sizes)} sizes x {len(budgets)} budgets; mean trace {mean_length:.0f} tokens", flush=True)
    records, start = [], time.time()
    for budget in budgets:
        for size in sizes:
            record = run_grid_point(args, size, budget, tokenizer.model_bytes, mean_length)
            if record is None:
                print(f"L{size[0]} d{size[1]} C={budget:.0e}: skipped (more than {MAX_STEPS} steps)", flush=True)
                continue
            records.append(record)
            print(f"L{size[0]} d{size[1]} ({record['params'] / 1e6:.3f}M) C={budget:.0e}: {record['steps']} steps, "
                  f"loss {record['loss']:.4f}, arith {record['arith']:.1%}, countdown {record['countdown']:.1%} "
                  f"({record['seconds']:.0f}s; {time.time() - start:.0f}s in all)", flush=True)
    with open(os.path.join(args.out, "runs.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    result, compute_law = fit(records, budgets)
    result["seconds"] = time.time() - start
    result["train_seconds"] = sum(r["seconds"] for r in records)  # what the grid costs from scratch, cache or not
    write_json(os.path.join(args.out, "scaling_law.json"), result)
    plot(os.path.join(args.out, "scaling_law.png"), records, sizes, budgets, compute_law)
    print(f"L(C) on the frontier: {compute_law.irreducible:.3f} + {compute_law.law.coefficient:.3g} C^"
          f"{compute_law.law.exponent:.3f} (r2 {compute_law.law.r2:.3f}); iso-FLOP minima "
          f"{result['iso_flop_minimum_params']}; {result['seconds'] / 60:.1f} min ({result['train_seconds'] / 60:.1f} min "
          f"of runs from scratch); {args.out}/scaling_law.json, .png")


if __name__ == "__main__":
    main()
