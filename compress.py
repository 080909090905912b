"""
Make a trained policy smaller: quantize its weights (int8, int4) or prune it (unstructured or structured), write a
checkpoint that every script loads like any other, and measure what it cost on the held-out problems.

    python compress.py --ckpt runs/tiny/rl/ckpt.pt --quantize int8                  # -> runs/tiny/compress/int8/
    python compress.py --ckpt runs/tiny/rl/ckpt.pt --quantize int4 --group-size 32  # -> runs/tiny/compress/int4-g32/
    python compress.py --ckpt runs/tiny/rl/ckpt.pt --prune 0.5 --recover-steps 300  # -> .../compress/prune50-r300/
    python compress.py --ckpt runs/tiny/rl/ckpt.pt --prune 0.5 --structured --recover-steps 300
    python infer.py --ckpt runs/tiny/compress/int8/ckpt.pt --task arith "7+38*2-15"

Recipe: load the float policy -> quantize (nano_reasoner/quantize.py), or prune (nano_reasoner/prune.py: calibration
traces -> importance -> remove -> optional recovery by distillation from the float policy) -> save --out/ckpt.pt
(+ .json; its arguments say how it was made; a quantized one records extra["quantization"] so cli.load_policy
builds its layers quantized) -> greedy accuracy by difficulty on the held-out problems, of the float policy (once per
folder: kept in the eval.json of the folder's first run) and of the compressed one -> --out/eval.json. Then every
eval.json in --out's parent folder (each compression of the same policy) makes one table and one plot there
(compress.md, compress.png) and the `compress` section of report.md one folder further up.

Bytes: the checkpoint file, against the same checkpoint with float weights (the input file also holds optimizer
state, so it is larger still). Decode speed is measured by benchmarks/bench_compress.py, side by side, not here.
"""
import argparse
import copy
import glob
import hashlib
import io
import json
import math
import os
import time

import torch

from nano_reasoner import tasks
from nano_reasoner.checkpoint import save_checkpoint
from nano_reasoner.cli import UserError, load_policy, pick_device, run_main
from nano_reasoner.data import batches, collate, make_examples
from nano_reasoner.evaluate import EVAL_DIFFICULTIES, accuracy_by_difficulty, attempt_problems, held_out_problems
from nano_reasoner.prune import (apply_masks, magnitude_masks, prune_structured, recover, sparsity_of,
                                 unit_importance)
from nano_reasoner.quantize import SCHEMES, bits_per_weight, quantize_model, quantized_layers
from nano_reasoner.report import (format_duration, markdown_table, plot_panels, progress_line, write_json,
                                  write_report_section)

RECOVER_LR = 1e-4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="the float policy to compress, e.g. runs/tiny/rl/ckpt.pt")
    parser.add_argument("--out", default=None, help="folder of the compressed checkpoint (default: compress/<what> "
                        "beside the policy's run folder, e.g. runs/tiny/compress/int8)")
    # quantization
    parser.add_argument("--quantize", metavar="SCHEME", help="int8 (per output channel) or int4 (per group of "
                        "--group-size input weights)")
    parser.add_argument("--group-size", type=int, default=None, help="int4: input weights per scale and offset "
                        "(default 32)")
    # pruning
    parser.add_argument("--prune", type=float, metavar="FRACTION", help="share to remove, in (0, 1): of the blocks' "
                        "weights (smallest magnitude first), or with --structured of every block's heads and MLP neurons")
    parser.add_argument("--structured", action="store_true", help="remove whole heads and MLP neurons (smaller, "
                        "faster matrices) instead of single weights")
    parser.add_argument("--calibration-traces", type=int, default=64,
                        help="--structured: traces on which the importance of heads and neurons is measured (default 64)")
    parser.add_argument("--recover-steps", type=int, default=0, help="steps of distillation from the float policy "
                        "after pruning (default 0: none)")
    parser.add_argument("--recover-lr", type=float, default=RECOVER_LR, help="learning rate of the recovery, constant "
                        f"(default {RECOVER_LR:g})")
    parser.add_argument("--recover-batch-size", type=int, default=16, help="traces per recovery step (default 16)")
    # evaluation
    parser.add_argument("--eval-problems", type=int, default=500, help="held-out problems per task (default 500)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the held-out problems and the recovery data "
                        "(default 1337, as every stage)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = parser.parse_args(argv)

    if (args.quantize is None) == (args.prune is None):
        raise UserError("give one of --quantize int8|int4 and --prune FRACTION")
    if args.quantize is not None:
        if args.quantize not in SCHEMES:
            raise UserError(f"--quantize {args.quantize}: choose int8 or int4 (int4 takes --group-size)")
        if args.structured or args.recover_steps:
            raise UserError("--structured and --recover-steps go with --prune")
        if args.quantize == "int8" and args.group_size is not None:
            raise UserError("--group-size goes with --quantize int4 (int8 has one scale per output channel)")
        if args.quantize == "int4":
            args.group_size = args.group_size or 32
            if args.group_size < 2 or args.group_size % 2:
                raise UserError(f"--group-size {args.group_size}: give an even number of weights, such as 32")
    else:
        # written as "not (good)" so that nan, which fails every comparison, is refused too
        if not 0 < args.prune < 1:
            raise UserError(f"--prune {args.prune}: give the share to remove, a number between 0 and 1 such as 0.5")
        if args.group_size is not None:
            raise UserError("--group-size goes with --quantize int4")
    if args.recover_steps < 0 or args.calibration_traces < 1 or args.recover_batch_size < 1:
        raise UserError("--recover-steps must be >= 0, --calibration-traces and --recover-batch-size positive")
    if not (args.recover_lr > 0 and math.isfinite(args.recover_lr)):
        raise UserError(f"--recover-lr {args.recover_lr}: give a positive learning rate such as 1e-4")
    if args.eval_problems < 1:
        raise UserError("--eval-problems must be positive")
    args.out = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(args.ckpt))), "compress",
                                        label(args))
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a file: give a folder")
    return args


def label(args):
    """A short name for what was done: int8, int4-g32, prune50, prune50-structured-r300."""
    if args.quantize:
        return "int8" if args.quantize == "int8" else f"int4-g{args.group_size}"
    name = f"prune{round(100 * args.prune)}" + ("-structured" if args.structured else "")
    if args.recover_steps:
        name += f"-r{args.recover_steps}" + (f"-lr{args.recover_lr:g}" if args.recover_lr != RECOVER_LR else "")
    return name


# ----------------------------------------------------------------------------------------------------------------------
# data for calibration and recovery

def trace_examples(tokenizer, ckpt_args, n, seed, held_out_texts, block_size):
    """n fresh problems' exact traces (half of each task, none held out), written the way the policy was fine-tuned
    (its checkpoint's arguments; an RL checkpoint holds none, so the pipeline's reason-stage ones: search countdown
    traces, straight arith ones, products worked through digits)."""
    trace_kinds = {"arith": ckpt_args.get("arith_traces", "straight"),
                   "countdown": ckpt_args.get("countdown_traces", "search")}
    granularity = ckpt_args.get("granularity", tasks.DEFAULT_GRANULARITY)
    products = ckpt_args.get("countdown_products", "digits")
    problems = []
    for i, task in enumerate(tasks.TASKS):
        # seeds start at 3e6, away from pre-training's, the held-out ones (seed + 10000 + i) and RL's (1e6, 2e6)
        fresh = tasks.generate(task, n, seed=3_000_000 + seed + i, difficulties=EVAL_DIFFICULTIES[task])
        problems += [p for p in fresh if p.text not in held_out_texts][:(n + 1) // 2]
    examples = make_examples(tokenizer, problems, granularity, trace_kinds, countdown_products=products)
    return [ex for ex in examples if len(ex.tokens) <= block_size]


def calibration_batches(examples, batch_size, pad_id, device):
    """Examples -> list of (inputs (B, T), is_real (B, T)), the input unit_importance reads."""
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        inputs, _ = collate(chunk, pad_id, device)                                            # (B, T)
        lengths = torch.tensor([len(ex.tokens) - 1 for ex in chunk], device=device)           # (B,)
        out.append((inputs, torch.arange(inputs.shape[1], device=device)[None, :] < lengths[:, None]))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# evaluation

def evaluate_greedy(model, tokenizer, held_out, seed):
    """Greedy accuracy by difficulty on every held-out problem -> {task: {"greedy": {"all": acc, "3": acc, ...},
    "mean_len": tokens, "decode_tokens": n, "seconds": s}}."""
    model.eval()
    results = {}
    for task, problems in held_out.items():
        start = time.perf_counter()
        with torch.no_grad():
            attempts, spent = attempt_problems(model, tokenizer, problems, temperature=0.0, seed=seed)
        seconds = time.perf_counter() - start
        greedy = accuracy_by_difficulty(problems, [a[0].verdict.is_correct for a in attempts])
        results[task] = {"greedy": {str(key): value for key, value in greedy.items()},
                         "mean_len": sum(len(a[0].tokens) for a in attempts) / len(attempts),
                         "decode_tokens": spent["decode_tokens"], "seconds": seconds}
    return results


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def saved_bytes(state):
    """Bytes that torch.save writes for `state`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


def read_folder(folder):
    """Every compression record (eval.json) in the subfolders of `folder`: quantizations from the most bits down, then
    prunings, unstructured before structured, by share removed, unrecovered first."""
    records = []
    for path in glob.glob(os.path.join(folder, "*", "eval.json")):
        with open(path) as f:
            records.append(json.load(f))
    return sorted(records, key=lambda r: (r["method"] != "quantize", -r.get("bits_per_weight", 0),
                                          r.get("structured", False), r.get("prune", 0), r.get("recover_steps", 0),
                                          r["label"]))


def cached_source_eval(folder, source_sha256, eval_problems, seed):
    """The float policy's evaluation from an earlier run in the folder on the same policy and problems, or None."""
    for record in read_folder(folder):
        if (record.get("source_sha256"), record.get("eval_problems"), record.get("seed")) == \
                (source_sha256, eval_problems, seed):
            return record["source"]
    return None


# ----------------------------------------------------------------------------------------------------------------------
# the folder's table, plot and report section

def _accuracy_cell(result, source):
    accuracy = result["greedy"]["all"]
    if source is None:
        return f"{accuracy:.1%}"
    return f"{accuracy:.1%} ({100 * (accuracy - source['greedy']['all']):+.1f})"


def _by_difficulty(result, task):
    return ", ".join(f"{d}: {result['greedy'][str(d)]:.0%}" for d in EVAL_DIFFICULTIES[task]
                     if str(d) in result["greedy"])


def _what(record):
    """How the record's model differs from float: bits per weight or sparsity and parameters."""
    if record["method"] == "quantize":
        return f"{record['bits_per_weight']:.2f} bits/weight"
    kept = f"{record['params'] / record['source_params']:.0%} of the parameters"
    if record["structured"]:
        return f"{record['prune']:.0%} of heads and neurons removed, {kept}"
    return f"{record['sparsity']:.0%} of block weights zero"


def folder_markdown(records, folder_name):
    """The table of every compression in the folder, the float policies first."""
    rows, sources = [], {}
    for record in records:
        sources.setdefault(record["source_sha256"], record)
    for first in sources.values():
        float_bytes = next((r["bytes"]["float_checkpoint"] for r in records
                            if r["source_sha256"] == first["source_sha256"] and r["bytes"]), None)
        rows.append([f"float ({first['ckpt']})", "32 bits/weight", f"{float_bytes:,}" if float_bytes else "-"]
                    + [_accuracy_cell(first["source"][t], None) for t in tasks.TASKS]
                    + [_by_difficulty(first["source"][t], t) for t in tasks.TASKS])
    for record in records:
        source, result = record["source"], record["compressed"]
        recovered = f", {record['recover_steps']} recovery steps ({format_duration(record['recover_seconds'])})" \
            if record.get("recover_steps") else ""
        if record["bytes"] is None:  # benchmarks/compress_sweep.py: simulated, no checkpoint
            size = "(no checkpoint)"
        else:
            share = record["bytes"]["checkpoint"] / record["bytes"]["float_checkpoint"]
            size = f"{record['bytes']['checkpoint']:,} ({share:.0%})"
        rows.append([record["label"] + recovered, _what(record), size]
                    + [_accuracy_cell(result[t], source[t]) for t in tasks.TASKS]
                    + [_by_difficulty(result[t], t) for t in tasks.TASKS])
    n = records[0]["eval_problems"] if records else 0
    headers = ["model", "size", "checkpoint bytes (of float)"] + [f"{t} greedy (points)" for t in tasks.TASKS] \
        + [f"{t} by difficulty" for t in tasks.TASKS]
    return "\n".join([
        f"## Compression: quantization and pruning ({folder_name})", "",
        f"Greedy accuracy on {n} held-out problems per task, in points against the float policy. Bytes: the checkpoint "
        f"file, against the same checkpoint with float weights. Made by `compress.py`; decode speed is measured by "
        f"`benchmarks/bench_compress.py`.", "",
        markdown_table(headers, rows), "",
        f"![accuracy against bits and against sparsity]({folder_name}/compress.png)", ""])


def pruning_family(record):
    """The curve a pruning record belongs to: how it pruned and how long it recovered."""
    kind = "structured" if record["structured"] else f"unstructured ({record.get('prune_by', 'magnitude')})"
    if not record["recover_steps"]:
        return kind
    lr = "" if record["recover_lr"] == RECOVER_LR else f" at lr {record['recover_lr']:g}"
    return kind + f", {record['recover_steps']} recovery steps{lr}"


def plot_folder(records, path_png):
    """Per task: accuracy by difficulty against the bits of the grid (quantization, groups of 32 below 8 bits) and
    against the share of weights removed (the largest family of unstructured prunings, recovered ones first), and
    every family of pruning side by side (all difficulties). The float policy is the point at 32 bits, 0 removed."""

    def by_difficulty(rows, x_of, source_x, task):
        """One line per difficulty through the float point and the rows' points, in the order of x."""
        source = rows[0]["source"][task]
        series = {}
        for d in [str(d) for d in EVAL_DIFFICULTIES[task]] + ["all"]:
            points = sorted([(source_x, source["greedy"][d])] +
                            [(x_of(r), r["compressed"][task]["greedy"][d]) for r in rows])
            series["all" if d == "all" else f"difficulty {d}"] = ([x for x, _ in points], [y for _, y in points])
        return series
    quantized = sorted((r for r in records if r["method"] == "quantize" and r.get("group_size") in (None, 32)),
                       key=lambda r: r["grid_bits"])
    families = {}
    for r in sorted((r for r in records if r["method"] == "prune"), key=lambda r: r["prune"]):
        families.setdefault(pruning_family(r), []).append(r)
    unstructured = max((rows for rows in families.values() if not rows[0]["structured"]),
                       key=lambda rows: (len(rows), rows[0]["recover_steps"] > 0), default=None)
    panels = []
    for task in tasks.TASKS:
        if quantized:
            panels.append({"title": f"{task}: quantized", "ylabel": "greedy accuracy",
                           "xlabel": "log2 of the bits per weight (1: 2 bits, 2: 4, 3: 8; 5: float)",
                           "series": by_difficulty(quantized, lambda r: math.log2(r["grid_bits"]), 5, task)})
        if unstructured:
            panels.append({"title": f"{task}: {pruning_family(unstructured[0])}",
                           "xlabel": "share of block weights removed", "ylabel": "greedy accuracy",
                           "series": by_difficulty(unstructured, lambda r: r["prune"], 0.0, task)})
        if families:
            panels.append({"title": f"{task}: pruning (all difficulties)", "xlabel": "share removed",
                           "ylabel": "greedy accuracy", "series": {
                               family: ([0.0] + [r["prune"] for r in rows],
                                        [rows[0]["source"][task]["greedy"]["all"]] +
                                        [r["compressed"][task]["greedy"]["all"] for r in rows])
                               for family, rows in families.items()}})
    if panels:
        plot_panels(path_png, panels, title="compressing the policy: greedy accuracy on held-out problems")


def summarize_folder(folder):
    """Rewrite the folder's compress.md and compress.png, and the compress section of report.md one folder up."""
    records = read_folder(folder)
    folder_name = os.path.basename(os.path.normpath(folder))
    markdown = folder_markdown(records, folder_name)
    with open(os.path.join(folder, "compress.md"), "w") as f:
        f.write(markdown)
    plot_folder(records, os.path.join(folder, "compress.png"))
    write_report_section(os.path.join(os.path.dirname(os.path.abspath(folder)), "report.md"), "compress", markdown)
    return markdown


# ----------------------------------------------------------------------------------------------------------------------

def main():
    args = parse_args()
    device = pick_device(args.device, args.threads)
    torch.manual_seed(args.seed)
    policy, tokenizer, ckpt = load_policy(args.ckpt, device)
    if isinstance(ckpt["extra"], dict) and ckpt["extra"].get("quantization"):
        raise UserError(f"{args.ckpt} is quantized already: compress the float checkpoint it was made from")
    ckpt_args = ckpt["args"] if isinstance(ckpt["args"], dict) else {}
    held_out = held_out_problems(args.eval_problems, seed=args.seed)
    held_out_texts = {p.text for problems in held_out.values() for p in problems}
    print(f"policy: {policy.num_params() / 1e6:.2f}M parameters from {args.ckpt}, device {device}")

    # compress
    t_start = time.time()
    recover_seconds, recover_losses, record = 0.0, [], {}
    if args.quantize:
        model = copy.deepcopy(policy)
        try:
            quantize_model(model, args.quantize, args.group_size)
        except ValueError as error:
            raise UserError(f"--group-size {args.group_size}: {error}") from None
        layers = [getattr(parent, name) for parent, name in quantized_layers(model)]
        record.update(grid_bits=8 if args.quantize == "int8" else 4, group_size=args.group_size,
                      bits_per_weight=sum(layer.weight_count * bits_per_weight(args.quantize, layer.in_features,
                                                                                args.group_size) for layer in layers)
                      / sum(layer.weight_count for layer in layers))
        extra = {"quantization": {"scheme": args.quantize, "group_size": args.group_size}}
        print(f"quantized to {args.quantize}" + (f", groups of {args.group_size}" if args.group_size else "") +
              f": {record['bits_per_weight']:.2f} bits per block weight")
    else:
        examples = []
        if args.structured or args.recover_steps:
            # every recovery trace is seen about twice; calibration reads the first ones
            wanted = max(args.calibration_traces, args.recover_steps * args.recover_batch_size // 2,
                         2 * args.recover_batch_size)
            examples = trace_examples(tokenizer, ckpt_args, wanted, args.seed, held_out_texts, policy.config.block_size)
            if len(examples) < args.recover_batch_size:
                raise UserError(f"only {len(examples)} of {wanted} traces fit in the model's "
                                f"{policy.config.block_size}-token context, fewer than one batch of "
                                f"--recover-batch-size {args.recover_batch_size}")
        if args.structured:
            calibration = calibration_batches(examples[:args.calibration_traces], args.recover_batch_size,
                                              tokenizer.pad_id, device)
            model = prune_structured(policy, args.prune, unit_importance(policy, calibration))
            masks = None
            print(f"structured pruning: {model.config.n_head} of {policy.config.n_head} heads and "
                  f"{model.config.mlp_width} of {policy.config.mlp_width} MLP neurons kept in every block")
        else:
            model = copy.deepcopy(policy)
            masks = magnitude_masks(model, args.prune)
            apply_masks(model, masks)
            print(f"unstructured pruning: {sparsity_of(model):.1%} of the block weights set to zero")
        if args.recover_steps:
            stream = batches(examples, args.recover_batch_size, seed=args.seed)
            batch_list = [next(stream) for _ in range(args.recover_steps)]
            t_recover = time.time()

            def on_step(step, loss):
                if step % 50 == 0 or step == args.recover_steps:
                    print(progress_line(step, args.recover_steps, time.time() - t_recover, kl=loss), flush=True)
            recover_losses = recover(model, policy, batch_list, tokenizer.pad_id, args.recover_lr, masks,
                                     on_step=on_step)
            recover_seconds = time.time() - t_recover
        record.update(prune=args.prune, structured=args.structured, sparsity=sparsity_of(model),
                      recover_steps=args.recover_steps, recover_lr=args.recover_lr, recover_seconds=recover_seconds,
                      recover_kl_first=recover_losses[0] if recover_losses else None,
                      recover_kl_last=recover_losses[-1] if recover_losses else None)
        extra = {}
    compress_seconds = time.time() - t_start

    # save: a policy checkpoint like any other, with no optimizer state
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "ckpt.pt")
    model_state = model.state_dict()
    save_checkpoint(ckpt_path, kind="policy", model_state=model_state, model_config=vars(model.config),
                    tokenizer_bytes=tokenizer.model_bytes, step=ckpt["step"], args=vars(args), extra=extra)
    checkpoint_bytes = os.path.getsize(ckpt_path)
    # the float reference is the same file with the input policy's float weights in place of these
    sizes = {"checkpoint": checkpoint_bytes, "input": os.path.getsize(args.ckpt),
             "float_checkpoint": checkpoint_bytes - saved_bytes(model_state) + saved_bytes(policy.state_dict())}
    print(f"wrote {ckpt_path}: {checkpoint_bytes:,} bytes, {checkpoint_bytes / sizes['float_checkpoint']:.0%} "
          f"of the float checkpoint's {sizes['float_checkpoint']:,} ({format_duration(compress_seconds)})")

    # evaluate the float policy (once per folder) and the compressed one on the same held-out problems
    folder = os.path.dirname(os.path.abspath(args.out))
    source_sha256 = file_sha256(args.ckpt)
    source_eval = cached_source_eval(folder, source_sha256, args.eval_problems, args.seed)
    if source_eval is None:
        source_eval = evaluate_greedy(policy, tokenizer, held_out, args.seed)
    compressed_eval = evaluate_greedy(model, tokenizer, held_out, args.seed)
    for name, result in (("float", source_eval), (label(args), compressed_eval)):
        print(f"{name:>24}: " + " | ".join(f"{task} {result[task]['greedy']['all']:.1%} "
                                             f"({_by_difficulty(result[task], task)})"
                                             for task in tasks.TASKS), flush=True)
    write_json(os.path.join(args.out, "eval.json"), {
        "label": label(args), "method": "quantize" if args.quantize else "prune", "ckpt": args.ckpt,
        "source_sha256": source_sha256, "eval_problems": args.eval_problems, "seed": args.seed,
        "params": model.num_params(), "source_params": policy.num_params(), "bytes": sizes,
        "compress_seconds": compress_seconds, **record, "source": source_eval, "compressed": compressed_eval})
    print(summarize_folder(folder))


if __name__ == "__main__":
    run_main(main)
