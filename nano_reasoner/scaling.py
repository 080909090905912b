"""
The test-time scaling sweep: accuracy against inference compute, for every strategy, by difficulty.

"Scaling LLM Test-Time Compute Optimally" (Snell et al., arXiv 2408.03314) asks: given a fixed policy, a verifier and
a compute budget, which way of spending it gives the most right answers? Their findings: the answer depends on the
problem's difficulty; beam search against a PRM wins at small budgets and on hard problems, best-of-N catches up at
large budgets on easy ones; picking the best strategy per difficulty ("compute-optimal") matches best-of-N with about
4x less compute. This sweep measures the same things on our toy tasks:

    (1) for each task, take held-out problems (train_pretrain.held_out_problems: never trained on);
    (2) greedy once; sample 64 solutions per problem once, score them with the PRM and the ORM, and answer with
        vote / best-of-N (ORM, PRM) / weighted vote on the first N for N = 1, 2, 4, ..., 64 (search.pick_from_pool);
    (3) PRM beam search and MCTS at the same budgets (N samples' worth of tokens);
        on countdown, which has a test-time checker (tasks.check), also `check` (the first of N samples the checker
        accepts: pass@N, reached by a real decoder) and `mcts-prm` (MCTS with the PRM alone, checker off);
    (4) record accuracy by difficulty and the mean compute per problem (compute.py), plot accuracy against FLOPs,
        and for each difficulty and compute level name the best strategy (the compute-optimal table).

Simplifications compared with the paper: difficulty bins are the task's own difficulty (number of operations or of
numbers), not bins of the policy's pass rate; budgets are counted in samples' worth of generated tokens and every
point is placed at the FLOPs it really spent; there is no revision (sequential) strategy; a few dozen problems per
task, so each accuracy carries a sampling error of several points (stated with the table).
"""
import time
from collections import defaultdict

from nano_reasoner import mcts, search, tasks
from nano_reasoner.report import markdown_table, plot_panels

BUDGETS = (1, 2, 4, 8, 16, 32, 64)
MCTS_TEMPERATURE = 1.0  # a tree needs diverse rollouts: MCTS@16 on 200 countdown problems, 61.0% at 1.0, 49.5% at 0.5
SWEEP_STRATEGIES = ("greedy", "vote", "bon-orm", "bon-prm", "wvote", "check", "beam", "mcts", "mcts-prm")


def run_strategy(strategy, policy, tokenizer, problems, budget, *, verifier=None, temperature=1.0, how="min",
                 seed=0, beam_width=None, mcts_options=None, thinking_budget=None, max_new_tokens=None):
    """One strategy on a list of problems -> list of search.Answer (one per problem, with its compute).
    thinking_budget (sampling.ThinkingBudget) and max_new_tokens apply to the strategies that sample whole
    solutions (greedy, sample, vote, bon, wvote, check)."""
    assert strategy in search.STRATEGIES, f"unknown strategy {strategy!r}"
    if strategy == "greedy":
        return search.greedy(policy, tokenizer, problems, seed=seed, budget=thinking_budget,
                             max_new_tokens=max_new_tokens)
    if strategy == "beam":
        return search.beam_search(policy, tokenizer, problems, verifier, budget, beam_width=beam_width,
                                  temperature=temperature, how=how, seed=seed)
    if strategy == "mcts":
        return mcts.mcts(policy, tokenizer, problems, verifier, budget, how=how, seed=seed, temperature=temperature,
                         **(mcts_options or {}))
    n = 1 if strategy == "sample" else budget
    pools = search.sample_pool(policy, tokenizer, problems, n, temperature=temperature, seed=seed,
                               budget=thinking_budget, max_new_tokens=max_new_tokens)
    if strategy in ("bon", "wvote"):
        pools = search.score_pools(pools, verifier)
    verifier_params = verifier.params if verifier is not None else 0
    return [search.pick_from_pool(pool, n, strategy, how, policy.num_params(), verifier_params) for pool in pools]


def summarise(task, strategy, budget, answers):
    """Accuracy by difficulty and mean compute per problem -> one record per difficulty bin (and "all")."""
    bins = defaultdict(list)
    for answer in answers:
        is_correct = tasks.verify(answer.problem, answer.completion).is_correct
        for key in ("all", answer.problem.difficulty):
            bins[key].append((is_correct, answer.compute))
    records = []
    for key, rows in bins.items():
        def mean(values):
            return sum(values) / len(values)
        records.append({
            "task": task, "strategy": strategy, "budget": budget, "difficulty": key, "problems": len(rows),
            "accuracy": mean([float(ok) for ok, _ in rows]),
            "flops": mean([c.flops() for _, c in rows]),
            "flops_with_prefix_reuse": mean([c.flops_with_prefix_reuse() for _, c in rows]),
            "generated_tokens": mean([c.generated_tokens for _, c in rows]),
            "prefill_tokens": mean([c.prefill_tokens for _, c in rows]),
            "verifier_tokens": mean([c.verifier_tokens for _, c in rows]),
            "redundant_prefill_tokens": mean([c.redundant_prefill_tokens for _, c in rows]),
            "tree_tokens": mean([c.tree_tokens for _, c in rows]),
        })
    return records


def sweep_task(task, policy, tokenizer, problems, prm_verifier, orm_verifier, *, budgets=BUDGETS, temperature=1.0,
               mcts_temperature=MCTS_TEMPERATURE, seed=0, mcts_options=None, log=print):
    """Every strategy at every budget on one task's problems -> list of records (see summarise). Samples for vote,
    best-of-N and beam are drawn at `temperature`, MCTS rollouts at `mcts_temperature`."""
    records = []
    started = time.time()

    def done(strategy, budget, answers):
        records.extend(summarise(task, strategy, budget, answers))
        accuracy = next(r["accuracy"] for r in records[::-1] if r["strategy"] == strategy and r["difficulty"] == "all")
        log(f"{task} | {strategy}@{budget} | acc {accuracy:.1%} | {time.time() - started:.0f}s")

    params = policy.num_params()
    checkable = tasks.checkable_at_test_time(task)
    mcts_options = dict(mcts_options or {}, use_checker=True)
    done("greedy", 1, search.greedy(policy, tokenizer, problems, seed=seed))
    # one pool of the largest budget serves vote, best-of-N and weighted vote at every smaller budget
    pools = search.sample_pool(policy, tokenizer, problems, max(budgets), temperature=temperature, seed=seed)
    by_prm, by_orm = search.score_pools(pools, prm_verifier), search.score_pools(pools, orm_verifier)
    for budget in budgets:
        done("vote", budget, [search.pick_from_pool(p, budget, "vote", "min", params) for p in pools])
        done("bon-orm", budget, [search.pick_from_pool(p, budget, "bon", "last", params, orm_verifier.params)
                                 for p in by_orm])
        done("bon-prm", budget, [search.pick_from_pool(p, budget, "bon", "min", params, prm_verifier.params)
                                 for p in by_prm])
        done("wvote", budget, [search.pick_from_pool(p, budget, "wvote", "min", params, prm_verifier.params)
                               for p in by_prm])
        if checkable:
            done("check", budget, [search.pick_from_pool(p, budget, "check", "min", params) for p in pools])
    for budget in budgets:
        done("beam", budget, search.beam_search(policy, tokenizer, problems, prm_verifier, budget,
                                                temperature=temperature, seed=seed))
    for budget in budgets:
        done("mcts", budget, mcts.mcts(policy, tokenizer, problems, prm_verifier, budget,
                                       temperature=mcts_temperature, seed=seed, **mcts_options))
    for budget in budgets if checkable else ():
        done("mcts-prm", budget, mcts.mcts(policy, tokenizer, problems, prm_verifier, budget,
                                           temperature=mcts_temperature, seed=seed,
                                           **dict(mcts_options, use_checker=False)))
    return records


def curve(records, task, strategy, difficulty="all"):
    """(flops, accuracy, budgets) of one strategy, sorted by budget."""
    points = sorted((r["budget"], r["flops"], r["accuracy"]) for r in records
                    if r["task"] == task and r["strategy"] == strategy and r["difficulty"] == difficulty)
    return [p[1] for p in points], [p[2] for p in points], [p[0] for p in points]


def plot_task(records, task, path_png):
    series, styles = {}, {}
    for strategy in SWEEP_STRATEGIES:
        flops, accuracy, _ = curve(records, task, strategy)
        if flops:
            series[strategy] = (flops, accuracy)
            styles[strategy] = "*" if strategy == "greedy" else "-o"
    plot_panels(path_png, [{"title": task, "xlabel": "FLOPs per problem (log)", "ylabel": "accuracy",
                            "series": series, "styles": styles, "logx": True}],
                f"test-time scaling: {task}, held-out problems")


def compute_optimal_rows(records, task, budgets=BUDGETS):
    """For each difficulty and each compute level (the FLOPs of best-of-N by PRM at N samples): the most accurate
    strategy among every point that spent at most that much. -> (headers, rows)."""
    difficulties = sorted({r["difficulty"] for r in records if r["task"] == task}, key=lambda d: (d == "all", str(d)))
    levels = {b: f for f, _, b in zip(*curve(records, task, "bon-prm"))}
    headers = ["difficulty"] + [f"<= {b} samples' FLOPs" for b in budgets if b in levels]
    rows = []
    for difficulty in difficulties:
        points = [r for r in records if r["task"] == task and r["difficulty"] == difficulty]
        row = [difficulty]
        for budget in budgets:
            if budget not in levels:
                continue
            affordable = [r for r in points if r["flops"] <= levels[budget] * 1.0001]
            if not affordable:
                row.append("-")
                continue
            best = max(affordable, key=lambda r: (r["accuracy"], -r["flops"]))
            row.append(f"{best['strategy']}@{best['budget']} {best['accuracy']:.0%}")
        rows.append(row)
    return headers, rows


def efficiency(records, task, budgets=BUDGETS):
    """The "4x" check: the cheapest point (any strategy) that reaches the accuracy of majority vote or ORM
    best-of-N at their largest budget -> dict, or None when nothing reaches it."""
    reference = max((r for r in records if r["task"] == task and r["difficulty"] == "all"
                     and r["strategy"] in ("vote", "bon-orm") and r["budget"] == max(budgets)),
                    key=lambda r: r["accuracy"], default=None)
    if reference is None:
        return None
    reaching = [r for r in records if r["task"] == task and r["difficulty"] == "all"
                and r["accuracy"] >= reference["accuracy"]]
    cheapest = min(reaching, key=lambda r: r["flops"])
    return {"reference": f"{reference['strategy']}@{reference['budget']}", "reference_accuracy": reference["accuracy"],
            "reference_flops": reference["flops"], "cheapest": f"{cheapest['strategy']}@{cheapest['budget']}",
            "cheapest_accuracy": cheapest["accuracy"], "cheapest_flops": cheapest["flops"],
            "compute_ratio": reference["flops"] / cheapest["flops"]}


def headline(records, task, budget=16):
    """Greedy, best-of-N by PRM, beam, MCTS (and on countdown check and MCTS without the checker) at one budget
    (all problems): the numbers the README quotes."""
    pick = {r["strategy"]: r for r in records if r["task"] == task and r["difficulty"] == "all"
            and (r["budget"] == budget or r["strategy"] == "greedy")}
    return {name: (pick[name]["accuracy"], pick[name]["flops"])
            for name in ("greedy", "bon-prm", "beam", "mcts", "mcts-prm", "check") if name in pick}


def report_markdown(records, task_names, plot_files, seconds, num_problems, budgets=BUDGETS):
    lines = ["## Test-time compute: strategies at equal FLOPs", "",
             f"{num_problems} held-out problems per task; budgets {', '.join(map(str, budgets))} samples' worth; "
             f"the sweep took {seconds / 60:.1f} min. Each accuracy has a standard error of up to "
             f"{50 / num_problems ** 0.5:.0f} points on all problems (more per difficulty bin).", ""]
    for task in task_names:
        lines += [f"### {task}", "", f"![{task}]({plot_files[task]})", ""]
        heads = headline(records, task)
        lines.append(markdown_table(["strategy (budget 16)", "accuracy", "FLOPs per problem"],
                                    [[name, f"{acc:.1%}", f"{flops:.3g}"] for name, (acc, flops) in heads.items()]))
        lines.append("")
        headers, rows = compute_optimal_rows(records, task, budgets)
        lines += ["Compute-optimal strategy per difficulty (the best accuracy among all points that spent at most "
                  "the FLOPs of best-of-N by PRM at N samples):", "", markdown_table(headers, rows), ""]
        result = efficiency(records, task, budgets)
        if result:
            lines.append(f"Efficiency: {result['reference']} reaches {result['reference_accuracy']:.1%} at "
                         f"{result['reference_flops']:.3g} FLOPs; {result['cheapest']} reaches "
                         f"{result['cheapest_accuracy']:.1%} at {result['cheapest_flops']:.3g} FLOPs: "
                         f"{result['compute_ratio']:.1f}x less compute.")
            greedy_accuracy = headline(records, task).get("greedy", (0.0, 0.0))[0]
            if result["reference_accuracy"] <= greedy_accuracy:
                lines.append(f"This is vacuous: {result['reference']} is no better than greedy "
                             f"({greedy_accuracy:.1%}); the verifiers do not yet rank this policy's samples well.")
            lines.append("")
        reuse = [r for r in records if r["task"] == task and r["difficulty"] == "all" and r["strategy"] in
                 ("beam", "mcts") and r["budget"] == 16]
        for r in reuse:
            lines.append(f"Prefix cache: {r['strategy']}@16 prefills {r['prefill_tokens']:.0f} tokens per problem for "
                         f"a tree of {r['tree_tokens']:.0f} unique tokens "
                         f"({r['prefill_tokens'] / max(r['tree_tokens'], 1):.2f}x).")
        lines.append("")
    return "\n".join(lines)
