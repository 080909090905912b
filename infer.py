"""
Use a trained policy: solve one problem, or a JSONL file of problems, with a test-time strategy; check every answer.

    python infer.py --ckpt runs/tiny/pretrain/ckpt.pt --task arith "7+38*2-15"
    python infer.py --ckpt runs/tiny/pretrain/ckpt.pt --task countdown --problems in.jsonl --out out.jsonl \\
        --strategy bon --budget 16 --verifier runs/tiny/prm/ckpt.pt
    python infer.py --ckpt runs/tiny/pretrain/ckpt.pt --scaling --verifier runs/tiny/prm/prm_exact.pt --orm runs/tiny/prm/orm.pt

Strategies (nano_reasoner/search.py and mcts.py): greedy, sample (one at --temperature), vote (majority of --budget
samples), bon (best of --budget by the verifier), wvote (votes weighted by verifier scores), check (countdown only:
the first of --budget samples that the task's checker accepts), beam (PRM step-level beam search, --budget
expansions per step), mcts (MCTS over steps, --budget samples' worth of tokens; on countdown the checker judges
finished solutions, --no-checker leaves it to the PRM).

One problem: prints the trace (numbers in the thinking are written units digit first, see tasks/trace.py), the same
thinking in reading order, the answer, the verdict and the compute spent. A problems file: each input line is
{"problem": "..."}; each output line keeps every input field and adds "answer" (the parsed final answer, or null),
"output" (the generated text), "correct" (bool) and "compute" (tokens and FLOPs spent on that problem); accuracy by
difficulty is printed at the end. --scaling runs the test-time scaling sweep (nano_reasoner/scaling.py) on held-out
problems and writes runs/<name>/scaling/ and its section of report.md.
"""
import argparse
import json
import math
import os
import sys
import time

import torch

from nano_reasoner import scaling, search, tasks
from nano_reasoner.cli import UserError, check_output_file, load_policy, read_jsonl, pick_device, run_main
from nano_reasoner.evaluate import accuracy_by_difficulty, held_out_problems
from nano_reasoner.report import write_json, write_report_section
from nano_reasoner.thinking import thinking_budget

NEEDS_VERIFIER = ("bon", "wvote", "beam", "mcts")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("problem", nargs="?", help="one problem, e.g. '7+38*2-15' or '3 7 25 19 -> 63'")
    # what to solve
    parser.add_argument("--ckpt", required=True, help="policy checkpoint, e.g. runs/tiny/pretrain/ckpt.pt")
    parser.add_argument("--task", choices=tuple(tasks.TASKS), help="which task the problems are (--scaling: both)")
    parser.add_argument("--problems", help="JSONL file, one {\"problem\": \"...\"} per line")
    parser.add_argument("--out", help="JSONL file to write the results to (with --problems)")
    # strategy
    parser.add_argument("--strategy", choices=search.STRATEGIES, default="greedy", help="test-time strategy (default greedy)")
    parser.add_argument("--budget", type=int, default=16, help="samples' worth of compute for vote/bon/wvote/beam/mcts (default 16)")
    parser.add_argument("--verifier", help="verifier checkpoint for bon, wvote, beam, mcts: the stage's generative "
                        "verifier (runs/tiny/prm/ckpt.pt), a PRM (prm_exact.pt) or an ORM (orm.pt)")
    parser.add_argument("--aggregate", choices=("min", "prod", "last"), default=None,
                        help="step scores -> solution score (default: min for a PRM, last for an ORM)")
    parser.add_argument("--beam-width", type=int, default=None, help="beams kept per step (default budget // 4, at least 1)")
    parser.add_argument("--c-puct", type=float, default=1.0, help="MCTS exploration constant (default 1.0)")
    parser.add_argument("--rollouts", type=int, default=2, help="MCTS rollouts per expansion (default 2)")
    parser.add_argument("--no-checker", action="store_true",
                        help="MCTS on countdown: value finished solutions by the PRM, not by the task's checker")
    parser.add_argument("--pick", choices=("visits", "value"), default="visits",
                        help="MCTS answer: the most visited path or the best-scored finished solution (default visits)")
    # decoding
    parser.add_argument("--temperature", type=float, default=None,
                        help="0 = greedy; default 0 for greedy, 1.0 for mcts (a tree needs diverse rollouts) and 0.5 for every other sampling strategy (the tiny policy's samples at 1.0 are mostly wrong); the --scaling sweep runs MCTS at 1.0")
    parser.add_argument("--max-think", type=int, default=None,
                        help="budget forcing: at most N thinking tokens, then </think> is forced and the answer "
                        "written (default: no cap; not with beam or mcts)")
    parser.add_argument("--min-think", type=int, default=None,
                        help="budget forcing: the thinking may not end before N tokens; an early </think> becomes an "
                        "undo line, and the model goes back and thinks on (default: no floor; not with beam or mcts)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    # scaling sweep
    parser.add_argument("--scaling", action="store_true", help="run the test-time scaling sweep on held-out problems")
    parser.add_argument("--orm", default="runs/tiny/prm/orm.pt", help="ORM checkpoint for the sweep (default runs/tiny/prm/orm.pt)")
    parser.add_argument("--scaling-problems", type=int, default=48, help="held-out problems per task in the sweep (default 48)")
    parser.add_argument("--scaling-budgets", default="1,2,4,8,16,32,64",
                        help="budgets of the sweep in samples' worth, comma separated, 16 among them (default "
                        "1,2,4,8,16,32,64)")
    parser.add_argument("--scaling-out", default=None, help="sweep folder (default: scaling/ beside the policy's run folder)")
    args = parser.parse_args()
    if args.scaling:
        if args.problem is not None or args.problems:
            raise UserError("--scaling runs on held-out problems: give no problem and no --problems")
        if not args.verifier:
            raise UserError("--scaling needs a PRM: pass --verifier runs/tiny/prm/prm_exact.pt")
        try:
            args.scaling_budgets = tuple(sorted({int(b) for b in args.scaling_budgets.split(",")}))
        except ValueError:
            raise UserError(f"--scaling-budgets {args.scaling_budgets}: give whole numbers, comma separated, such as "
                            f"1,2,4,8,16") from None
        if args.scaling_budgets[0] < 1 or 16 not in args.scaling_budgets:
            raise UserError("--scaling-budgets: every budget must be >= 1, and 16 among them (the headline budget)")
        if args.scaling_problems <= 0:
            raise UserError("--scaling-problems must be positive")
    else:
        if (args.problem is None) == (args.problems is None):
            raise UserError("give either one problem as an argument or --problems FILE, not both or neither")
        if args.task is None:
            raise UserError("--task is required: arith or countdown")
    if args.out and not args.problems:
        raise UserError("--out goes with --problems")
    # `not x >= 0` rather than `x < 0`: nan compares False with everything, so it is refused too
    if args.temperature is not None and not (args.temperature >= 0 and math.isfinite(args.temperature)):
        raise UserError(f"--temperature {args.temperature}: give a number >= 0 (0 = greedy)")
    if args.out:
        check_output_file(args.out, args.problems, "--problems")
    if args.temperature is None:
        args.temperature = 0.0 if args.strategy == "greedy" and not args.scaling else 0.5
        if args.strategy == "mcts" and not args.scaling:
            args.temperature = scaling.MCTS_TEMPERATURE
    if args.budget < 1 or args.rollouts < 1 or (args.beam_width is not None and args.beam_width < 1):
        raise UserError("--budget, --rollouts and --beam-width must be at least 1")
    if args.strategy == "check" and not args.scaling and args.task != "countdown":
        raise UserError(f"--strategy check needs a task whose answers can be checked without solving it: countdown, "
                        f"not {args.task}")
    for flag, value in (("--max-think", args.max_think), ("--min-think", args.min_think)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1 (thinking tokens)")
    if (args.max_think or args.min_think) and (args.strategy in ("beam", "mcts") or args.scaling):
        raise UserError("--max-think and --min-think apply to strategies that sample whole solutions: greedy, sample, "
                        "vote, bon, wvote, check")
    if args.max_think and args.min_think and args.min_think > args.max_think:
        raise UserError(f"--min-think {args.min_think} is above --max-think {args.max_think}: the floor must not "
                        f"exceed the cap")
    if args.strategy in NEEDS_VERIFIER and not args.verifier:
        raise UserError(f"--strategy {args.strategy} needs a verifier: pass --verifier runs/tiny/prm/ckpt.pt")
    return args


def read_problems(path, task):
    """-> (input records, Problems); any bad line is a UserError naming the line."""
    records, problems = [], []
    for number, record in read_jsonl(path, "problems", '{"problem": "..."}'):
        if not isinstance(record, dict) or not isinstance(record.get("problem"), str):
            raise UserError(f"{path}:{number}: each line must be {{\"problem\": \"...\"}}")
        try:
            problems.append(tasks.parse_problem(task, record["problem"]))
        except tasks.ProblemError as error:
            raise UserError(f"{path}:{number}: {error}") from None
        records.append(record)
    if not problems:
        raise UserError(f"{path} holds no problems")
    return records, problems


def check_encodable(tokenizer, model, problems):
    for problem in problems:
        try:
            prompt = tokenizer.encode_prompt(tasks.format_prompt(problem))
        except ValueError as error:
            raise UserError(f"problem {problem.text!r}: {error}") from None
        if len(prompt) >= model.config.block_size - 8:
            raise UserError(f"problem {problem.text!r} is {len(prompt)} tokens, too long for the model's "
                            f"{model.config.block_size}-token context: give a shorter problem")


def load_verifier(path, device, tokenizer):
    try:
        return search.load_verifier(path, device, tokenizer)
    except ValueError as error:
        raise UserError(str(error)) from None


def run_scaling(args, model, tokenizer, device):

    out_dir = args.scaling_out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(args.ckpt))), "scaling")
    prm_verifier = load_verifier(args.verifier, device, tokenizer)
    orm_verifier = load_verifier(args.orm, device, tokenizer)
    task_names = [args.task] if args.task else list(tasks.TASKS)
    held_out = held_out_problems(args.scaling_problems, seed=1337)
    mcts_options = dict(rollouts_per_expansion=args.rollouts, c_puct=args.c_puct)
    started, records, plot_files = time.time(), [], {}
    for task in task_names:
        records += scaling.sweep_task(task, model, tokenizer, held_out[task], prm_verifier, orm_verifier,
                                      budgets=args.scaling_budgets, temperature=args.temperature, seed=args.seed,
                                      mcts_options=mcts_options)
        plot_files[task] = f"scaling_{task}.png"
        scaling.plot_task(records, task, os.path.join(out_dir, plot_files[task]))
    seconds = time.time() - started
    write_json(os.path.join(out_dir, "config.json"), {**vars(args), "seconds": seconds})
    with open(os.path.join(out_dir, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    markdown = scaling.report_markdown(records, task_names, {t: f"scaling/{p}" for t, p in plot_files.items()},
                                       seconds, args.scaling_problems, args.scaling_budgets)
    with open(os.path.join(out_dir, "scaling.md"), "w") as f:
        f.write(markdown)
    write_report_section(os.path.join(os.path.dirname(out_dir), "report.md"), "scaling", markdown)
    print(markdown)


def strategy_label(args):
    return args.strategy if args.strategy in ("greedy", "sample") else f"{args.strategy}@{args.budget}"


def main():
    args = parse_args()
    device = pick_device(args.device, args.threads)
    if args.scaling:
        model, tokenizer, _ = load_policy(args.ckpt, device)
        with torch.no_grad():
            run_scaling(args, model, tokenizer, device)
        return
    if args.problems:
        records, problems = read_problems(args.problems, args.task)
    else:
        try:
            problems = [tasks.parse_problem(args.task, args.problem)]
        except tasks.ProblemError as error:
            raise UserError(str(error)) from None
    model, tokenizer, _ = load_policy(args.ckpt, device)
    check_encodable(tokenizer, model, problems)
    verifier = load_verifier(args.verifier, device, tokenizer) if args.verifier else None
    how = args.aggregate or ("last" if verifier is not None and verifier.kind == "orm" else "min")
    budget = None
    if args.max_think or args.min_think:
        budget = thinking_budget(tokenizer, max_think=args.max_think, min_think=args.min_think)
    # room for the whole thinking the flags allow, and an answer after it
    max_new_tokens = model.config.block_size if budget is not None else None
    with torch.no_grad():
        answers = scaling.run_strategy(args.strategy, model, tokenizer, problems, args.budget, verifier=verifier,
                                       temperature=args.temperature, how=how, seed=args.seed,
                                       beam_width=args.beam_width,
                                       mcts_options=dict(rollouts_per_expansion=args.rollouts, c_puct=args.c_puct,
                                                         use_checker=not args.no_checker,
                                                         pick=args.pick),
                                       thinking_budget=budget, max_new_tokens=max_new_tokens)
    verdicts = [tasks.verify(answer.problem, answer.completion) for answer in answers]

    if not args.problems:
        answer, verdict = answers[0], verdicts[0]
        print(tasks.format_prompt(answer.problem) + answer.completion)
        thinking = tasks.parse_completion(answer.completion).steps
        if tasks.shown_problem(answer.problem) != answer.problem.text:
            print(f"problem as typed: {answer.problem.text} (the prompt shows it units digit first)")
        if thinking:  # the model writes numbers units digit first while it thinks (tasks/trace.py)
            print("thinking in reading order: " + " | ".join(tasks.flip_digits(step) for step in thinking))
        print(f"answer: {verdict.answer}")
        print("verdict: correct" if verdict.is_correct else f"verdict: wrong ({verdict.reason})")
        c = answer.compute
        print(f"compute: {strategy_label(args)} | {c.generated_tokens} tokens generated | {c.prefill_tokens} "
              f"prefilled | {c.verifier_tokens} verifier tokens | {c.flops():.3g} FLOPs")
        return

    lines = []
    for record, answer, verdict in zip(records, answers, verdicts):
        lines.append(json.dumps({**record, "answer": verdict.answer, "output": answer.completion,
                                 "correct": verdict.is_correct, "strategy": args.strategy, "budget": args.budget,
                                 "compute": answer.compute.as_dict()}))
    if args.out:
        tmp_path = args.out + ".tmp"
        try:
            with open(tmp_path, "w") as f:
                f.write("\n".join(lines) + "\n")
            os.replace(tmp_path, args.out)
        except OSError as error:
            raise UserError(f"cannot write --out {args.out} ({error.strerror}): choose another file") from None
    else:
        sys.stdout.write("\n".join(lines) + "\n")
    accuracy = accuracy_by_difficulty(problems, [v.is_correct for v in verdicts])
    by_difficulty = ", ".join(f"{d}: {accuracy[d]:.1%}" for d in sorted(k for k in accuracy if k != "all"))
    mean_flops = sum(a.compute.flops() for a in answers) / len(answers)
    print(f"accuracy {accuracy['all']:.1%} on {len(problems)} problems ({by_difficulty}) | {strategy_label(args)} "
          f"| {mean_flops:.3g} FLOPs per problem", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
