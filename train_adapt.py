"""
Domain adaptation: teach a trained policy a shifted distribution, arith with three-digit operands (100..999) that it
never saw, from a couple of thousand problems and a few minutes, and measure what it forgets of the old one.

    python train_adapt.py --preset tiny --init runs/tiny/rl/ckpt.pt --out runs/tiny/adapt                # replay
    python train_adapt.py --preset tiny --init runs/tiny/rl/ckpt.pt --out runs/cmp/lora --method lora --lora-rank 8

Three methods (--method), the same new problems and steps:
  - full: fine-tune every weight on the new problems' exact traces;
  - lora: freeze the weights and learn a rank-r change of the blocks' matrices (nano_reasoner/lora.py), merged into
    the weights at the end, so the checkpoint is a plain policy;
  - replay: full fine-tuning with a share of every batch (--replay-share) drawn from the original traces of both tasks
    (data.replay_batches), the oldest guard against forgetting.
Recipe: load the policy -> greedy accuracy before, on held-out problems of the new domain (evaluate.held_out_shifted:
1-3 operations) and of the old one (evaluate.held_out_problems, the same problems every stage measures on) -> train
on the new problems (AdamW, warmup + cosine), with the new and the old arith measured on a few held-out problems along
the way -> the same evaluation after -> save. Writes to --out: ckpt.pt (+ .json; args.init names the start),
config.json, metrics.jsonl, eval.json, adapt.png and a section of report.md (in the parent folder of --out).

The stage is short (about three minutes on the 2-core CPU), so a stopped run is started again rather than resumed:
it writes its checkpoint only at the end, and pipeline.py reruns it.
"""
import argparse
import os
import time

import torch

from nano_reasoner import lora, tasks
from nano_reasoner.checkpoint import save_checkpoint
from nano_reasoner.cli import (UserError, autocast, cosine_lr, fill_from_preset,
                               load_policy, make_run_folder, pick_device, run_main)
from nano_reasoner.data import batches, collate, decision_weights, make_examples, replay_batches
from nano_reasoner.evaluate import (EVAL_DIFFICULTIES, SHIFTED_DIFFICULTIES, greedy_accuracy, held_out_problems,
                                    held_out_shifted)
from nano_reasoner.model import configure_optimizer
from nano_reasoner.report import MetricsLogger, markdown_table, plot_panels, progress_line, write_json, write_report_section

METHODS = ("full", "lora", "replay")
PRESETS = {
    # method, steps, lr, new problems; LoRA rank, alpha and lr; the replay share (docs/adapt_log.md)
    "tiny": dict(method="replay", steps=400, lr=5e-4, train_problems=2000, lora_rank=8, lora_alpha=16, lora_lr=2e-3,
                 replay_share=0.5),
    "small": dict(method="replay", steps=400, lr=5e-4, train_problems=2000, lora_rank=16, lora_alpha=32, lora_lr=2e-3,
                  replay_share=0.5),
    "base": dict(method="replay", steps=400, lr=3e-4, train_problems=2000, lora_rank=16, lora_alpha=32, lora_lr=1e-3,
                 replay_share=0.5),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="tiny", help="sizes: tiny (CPU), small, base (GPU)")
    parser.add_argument("--init", required=True, help="the policy to adapt (a policy checkpoint: runs/tiny/rl/ckpt.pt)")
    parser.add_argument("--out", default="runs/tiny/adapt", help="run folder (default runs/tiny/adapt)")
    parser.add_argument("--method", choices=METHODS, help="full fine-tuning, lora, or replay (full fine-tuning with "
                        "original traces mixed in) (preset)")
    # data
    parser.add_argument("--operands", default="100-999", help="the new domain: range of the arith operands "
                        "(default 100-999, three digits)")
    parser.add_argument("--train-problems", type=int, help="distinct new-domain training problems, 1-3 operations "
                        "(preset: 2000)")
    parser.add_argument("--replay-share", type=float, help="--method replay: share of each batch drawn from the "
                        "original traces of both tasks (preset)")
    parser.add_argument("--countdown-traces", choices=tasks.TRACE_KINDS["countdown"], default="search",
                        help="replay: the kind of countdown trace the policy writes (default search, the reasoner's)")
    # lora
    parser.add_argument("--lora-rank", type=int, help="--method lora: r, the rank of the learned change (preset)")
    parser.add_argument("--lora-alpha", type=float, help="--method lora: alpha; the change is scaled by alpha / r (preset)")
    parser.add_argument("--lora-targets", default=",".join(lora.TARGETS),
                        help=f"--method lora: the matrices of every block to adapt (default {','.join(lora.TARGETS)})")
    parser.add_argument("--lora-lr", type=float, help="--method lora: peak learning rate (preset; LoRA takes a larger "
                        "one than full fine-tuning, its B starts at zero)")
    # optimization
    parser.add_argument("--steps", type=int, help="optimizer steps (preset)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--lr", type=float, help="peak learning rate of full fine-tuning and replay (preset)")
    parser.add_argument("--warmup", type=int, default=50, help="warmup steps (default 50)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (default 1.0)")
    parser.add_argument("--decision-weight", type=float, default=4.0,
                        help="loss weight of `</think>` and the undo marker, as the policy was trained (default 4)")
    # evaluation and output
    parser.add_argument("--eval-problems", type=int, default=500, help="held-out problems per domain, before and "
                        "after (default 500)")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between measures on 100 held-out problems "
                        "of each domain (default 100)")
    parser.add_argument("--log-every", type=int, default=50, help="steps between progress lines (default 50)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of everything (default 1337)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    fill_from_preset(args, PRESETS[args.preset])
    for key in ("steps", "batch_size", "train_problems", "eval_problems", "eval_every", "log_every", "lora_rank"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be a positive number")
    if not 0 <= args.replay_share < 1:
        raise UserError("--replay-share must be a number in [0, 1): the share of each batch that is original traces")
    if not (args.lr > 0 and args.lora_lr > 0 and args.lora_alpha > 0):
        raise UserError("--lr, --lora-lr and --lora-alpha must be positive numbers")
    args.lora_targets = tuple(t for t in args.lora_targets.split(",") if t)
    if not args.lora_targets or not set(args.lora_targets) <= set(lora.TARGETS):
        raise UserError(f"--lora-targets {','.join(args.lora_targets)!r}: choose among {','.join(lora.TARGETS)}")
    low, _, high = args.operands.partition("-")
    if not (low.isdigit() and high.isdigit() and int(low) <= int(high) <= 9999):
        raise UserError(f"--operands {args.operands!r}: give a range such as 100-999 within 0-9999")
    args.operand_range = (int(low), int(high))
    return args


def new_domain_problems(n, operands, seed, held_out):
    """n distinct arith problems of the new domain (1-3 operations), none of them held out."""
    held_out_texts = {p.text for p in held_out}
    seen, problems = set(), []
    for p in tasks.arith.generate(int(n * 1.2) + 100, seed, SHIFTED_DIFFICULTIES, operands):
        if p.text not in seen and p.text not in held_out_texts and len(problems) < n:
            seen.add(p.text)
            problems.append(p)
    if len(problems) < n:
        raise UserError(f"--operands {operands[0]}-{operands[1]} holds fewer than {n} distinct problems: widen the range "
                        f"or lower --train-problems")
    return problems


def replay_problems(n_countdown, seed, held_out):
    """Fresh problems of the original distribution, two arith to one countdown (as the policy was fine-tuned)."""
    held_out_texts = {p.text for problems in held_out.values() for p in problems}
    problems = tasks.generate("arith", 2 * n_countdown, seed + 1, difficulties=EVAL_DIFFICULTIES["arith"]) \
        + tasks.generate("countdown", n_countdown, seed + 2, difficulties=EVAL_DIFFICULTIES["countdown"])
    return [p for p in problems if p.text not in held_out_texts]


def evaluate(model, tokenizer, problems_by_domain):
    """Greedy accuracy -> {domain: {"all": acc, difficulty: acc}}."""
    was_training = model.training
    model.eval()
    accuracy = {domain: greedy_accuracy(model, tokenizer, problems)[0] for domain, problems in problems_by_domain.items()}
    model.train(was_training)
    return accuracy


def init_params(model):
    """Parameters of the model, a LoRA model's frozen weights included and its LoRA matrices not."""
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)


DOMAINS = {"new": "three-digit arith", "arith": "arith (original)", "countdown": "countdown (original)"}


def main():
    args = parse_args()
    device = pick_device(args.device, args.threads)
    torch.manual_seed(args.seed)
    make_run_folder(args.out)
    model, tokenizer, init = load_policy(args.init, device, for_training=True)

    # data: the held-out problems first, so training never sees them
    t_data = time.time()
    original = held_out_problems(args.eval_problems, args.seed)  # what every stage measures on
    held_out = {"new": held_out_shifted(args.eval_problems, args.seed, args.operand_range), **original}
    curve_problems = {domain: held_out[domain][:100] for domain in ("new", "arith")}
    new = new_domain_problems(args.train_problems, args.operand_range, args.seed, held_out["new"])
    trace_kinds = {"arith": "straight", "countdown": args.countdown_traces}
    block_size = model.config.block_size
    try:
        new_examples = make_examples(tokenizer, new, tasks.DEFAULT_GRANULARITY, trace_kinds, countdown_products="digits")
        new_examples = [ex for ex in new_examples if len(ex.tokens) <= block_size]
        if len(new_examples) < args.batch_size:  # the batch stream would wait forever for a first full batch
            raise UserError(f"only {len(new_examples)} new-domain traces fit in {args.init}'s context of {block_size} "
                            f"tokens, fewer than one batch of {args.batch_size}: raise --train-problems or lower "
                            f"--batch-size")
        # the replay traces only after that check: a bad flag is refused before the longer work
        replay = make_examples(tokenizer, replay_problems(2000, args.seed, original), tasks.DEFAULT_GRANULARITY,
                               trace_kinds, countdown_products="digits") if args.method == "replay" else []
    except ValueError as error:
        raise UserError(f"{args.init}'s tokenizer cannot encode the traces ({error}): adapt a policy of this project") from None
    replay = [ex for ex in replay if len(ex.tokens) <= block_size]
    print(f"data: {len(new)} new problems ({sum(len(ex.tokens) for ex in new_examples) / len(new_examples):.0f} tokens "
          f"on average), {len(replay)} original traces to replay, {time.time() - t_data:.1f}s")

    # before: the start, on the held-out problems of both domains
    t_eval = time.time()
    before = evaluate(model, tokenizer, held_out)
    print("before: " + " | ".join(f"{DOMAINS[d]} {acc['all']:.1%}" for d, acc in before.items())
          + f" ({time.time() - t_eval:.0f}s)", flush=True)

    # the method: LoRA freezes the weights and adds the trainable low-rank change; the others train every weight
    if args.method == "lora":
        lora.add_lora(model, args.lora_rank, args.lora_alpha, args.lora_targets, seed=args.seed)
    peak_lr = args.lora_lr if args.method == "lora" else args.lr
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"method {args.method}: {trainable:,} trainable parameters of {init_params(model):,}")
    optimizer = configure_optimizer(model, lr=peak_lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    if args.method == "replay":
        stream = replay_batches(new_examples, replay, args.batch_size, args.replay_share, args.seed, bucket_batches=4)
    else:
        stream = batches(new_examples, args.batch_size, seed=args.seed, bucket_batches=4)
    decision_ids = [tokenizer.end_think_id, tokenizer.encode(tasks.UNDO)[0]]
    metrics = MetricsLogger(args.out)
    metrics.truncate_after(-1)  # a run starts afresh: nothing from an earlier attempt stays
    write_json(os.path.join(args.out, "config.json"), {"args": vars(args), "model_config": init["model_config"],
                                                       "trainable_params": trainable})
    curve = evaluate(model, tokenizer, curve_problems)
    metrics.log(step=0, **{f"{d}_acc": acc["all"] for d, acc in curve.items()})

    model.train()
    t_start, eval_seconds, t_window, tokens_seen = time.time(), 0.0, time.time(), 0
    for step in range(1, args.steps + 1):
        lr = cosine_lr(step - 1, args.steps, peak_lr, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = collate(next(stream), tokenizer.pad_id, device)  # (B, T) each
        loss_mask = decision_weights(targets, decision_ids, args.decision_weight)
        with autocast(device):
            _, loss = model(inputs, targets, loss_mask=loss_mask)
        if not torch.isfinite(loss):
            raise UserError(f"the loss became {loss.item()} at step {step}: lower --lr or --lora-lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], args.grad_clip)
        optimizer.step()
        tokens_seen += inputs.numel()
        if step % args.log_every == 0 or step == args.steps:
            tok_s = tokens_seen / (time.time() - t_window)
            print(progress_line(step, args.steps, time.time() - t_start - eval_seconds, loss=loss.item(), lr=lr,
                                tok_s=tok_s), flush=True)
            metrics.log(step=step, loss=loss.item(), lr=lr, tok_s=tok_s)
            tokens_seen, t_window = 0, time.time()
        if step % args.eval_every == 0 or step == args.steps:
            t_curve = time.time()
            curve = evaluate(model, tokenizer, curve_problems)
            metrics.log(step=step, **{f"{d}_acc": acc["all"] for d, acc in curve.items()})
            print(f"eval step {step} | " + " | ".join(f"{DOMAINS[d]} {acc['all']:.0%}" for d, acc in curve.items()), flush=True)
            eval_seconds += time.time() - t_curve
            t_window, tokens_seen = time.time(), 0
    train_seconds = time.time() - t_start - eval_seconds

    # after: merge a LoRA change into the weights (a plain policy again), then the same evaluation
    handed_on = lora.merge(model) if args.method == "lora" else model
    t_eval = time.time()
    after = evaluate(handed_on, tokenizer, held_out)
    print(f"after ({time.time() - t_eval:.0f}s), greedy on {args.eval_problems} held-out problems per domain:")
    rows = []
    for domain, name in DOMAINS.items():
        change = 100 * (after[domain]["all"] - before[domain]["all"])
        by_difficulty = ", ".join(f"{d}: {before[domain][d]:.0%} -> {after[domain][d]:.0%}"
                                  for d in sorted(k for k in after[domain] if k != "all"))
        print(f"  {name}: {before[domain]['all']:.1%} -> {after[domain]['all']:.1%} ({change:+.1f}) | {by_difficulty}")
        rows.append([name, f"{before[domain]['all']:.1%}", f"{after[domain]['all']:.1%}", f"{change:+.1f}", by_difficulty])
    ckpt_path = os.path.join(args.out, "ckpt.pt")
    save_checkpoint(ckpt_path, kind="policy", model_state=handed_on.state_dict(), model_config=init["model_config"],
                    tokenizer_bytes=tokenizer.model_bytes, step=args.steps, args=vars(args))
    write_json(os.path.join(args.out, "eval.json"), {
        "before": {d: {str(k): v for k, v in acc.items()} for d, acc in before.items()},
        "after": {d: {str(k): v for k, v in acc.items()} for d, acc in after.items()},
        "train_seconds": train_seconds, "trainable_params": trainable})

    logged = metrics.read()
    history = [m for m in logged if "loss" in m]
    curves = [m for m in logged if "new_acc" in m]
    plot_panels(os.path.join(args.out, "adapt.png"), [
        {"title": "training loss", "xlabel": "step", "ylabel": "loss",
         "series": {"loss": ([m["step"] for m in history], [m["loss"] for m in history])}},
        {"title": "greedy accuracy, 100 held-out per domain", "xlabel": "step", "ylabel": "accuracy",
         "series": {DOMAINS[d]: ([m["step"] for m in curves], [m[f"{d}_acc"] for m in curves]) for d in ("new", "arith")}},
    ], title=f"adapting to arith with operands {args.operands} ({args.method})")
    details = {"full": "every weight trained",
               "lora": f"LoRA rank {args.lora_rank}, alpha {args.lora_alpha:g} on {', '.join(args.lora_targets)}, merged",
               "replay": f"every weight trained, {args.replay_share:.0%} of each batch original traces"}[args.method]
    write_report_section(os.path.join(os.path.dirname(os.path.abspath(args.out)), "report.md"), "adapt", "\n".join([
        f"## Domain adaptation from {args.init} ({args.preset}, adapt)", "",
        f"The policy adapted to arith with operands {args.operands} (1-3 operations), never seen before: "
        f"{len(new)} problems, {args.steps} steps of {args.batch_size} traces, {details}, {trainable:,} trainable "
        f"parameters, {train_seconds / 60:.1f} min on {device}. Greedy accuracy on {args.eval_problems} held-out "
        f"problems per domain, the same before and after:", "",
        markdown_table(["domain", "before", "after", "change (points)", "by operations"], rows), "",
        f"![adapt](adapt/adapt.png)", ""]))
    print(f"wrote {ckpt_path}, {args.out}/adapt.png, report.md ({train_seconds / 60:.1f} min of training)")


if __name__ == "__main__":
    run_main(main)
