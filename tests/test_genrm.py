"""The generative verifier (nano_reasoner/genrm.py): exact checks of hand-made answers, its training sequence, its
score on a hand-made toy model, the same score as search reads it, and a tiny verifier that learns to tell right answers from wrong ones."""
import torch
import torch.nn as nn

from nano_reasoner import genrm, tasks
from nano_reasoner.model import GPT, GPTConfig
from nano_reasoner.prm import auroc
from nano_reasoner.tasks.trace import flip_digits
from nano_reasoner.tokenizer import Tokenizer, add_symbols, train_tokenizer

PROBLEM = tasks.parse_problem("countdown", "18 16 15 -> 49")
ARITH = tasks.parse_problem("arith", "47+88+(54+35-43)")


def test_a_right_answer_is_worked_out_as_arith():
    check = genrm.answer_check(PROBLEM, "18+16+15")
    # the arith trace of (18+16+15)-49, ending on 0; digits units first, as in every trace's thinking
    assert check == genrm.Check(["81+61=43;43+51-94", "43+51=94;94-94", "94-94=0;0"], True, "")
    # a product worked through single-digit products, as the policy writes it (`digits`)
    problem = tasks.parse_problem("countdown", "21 17 3 -> 360")
    assert genrm.answer_check(problem, "21*17+3").lines[0] == flip_digits(
        "21*17=20*10+1*10+20*7+1*7=200+10+140+7=210+147=357;357+3-360")


def test_wrong_answers_get_bad_verdicts_with_reasons():
    wrong_value = genrm.answer_check(PROBLEM, "18+16-15")
    assert wrong_value == genrm.Check(["81+61=43;43-51-94", "43-51=91;91-94", "91-94=-03;-03"], False,
                                      "the answer makes 19, not 49")
    # a number not given, one used twice, a difference that is not positive: worked out, then bad
    for text in ("18+16+16", "18+18", "25+24", "15-18+16"):
        check = genrm.answer_check(PROBLEM, text)
        assert not check.is_good and check.lines and check.reason.startswith("a number that is not given")
    # no operation, no expression, untrusted text: refused without a check, never raised
    for text in ("49", "", "((", "18+16+15\n</think>", "os.system(1)"):
        check = genrm.answer_check(PROBLEM, text)
        assert not check.is_good and check.lines == [] and check.reason


def toy_tokenizer(tmp_path):
    problems = tasks.generate("countdown", 200, seed=0, difficulties=(3,)) + tasks.generate("arith", 200, seed=0)
    return train_tokenizer([tasks.full_trace(p, "digits", countdown_products="digits") for p in problems],
                           str(tmp_path / "tok.model"))


def test_the_training_sequence_is_prompt_check_verdict(tmp_path):
    tokenizer = toy_tokenizer(tmp_path)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=160, n_layer=1, n_head=1, n_embd=16))
    model, tokenizer = genrm.add_verdict_tokens(model, tokenizer)
    assert model.config.vocab_size == tokenizer.vocab_size
    example = genrm.training_example(tokenizer, PROBLEM, "18+16+15")
    prompt = tokenizer.decode(example.tokens[:example.prompt_length])
    assert prompt.endswith("countdown: 81 61 51 -> 94\narith: 81+61+51-94\n<think>\n")  # shown units first
    completion = example.tokens[example.prompt_length:]
    assert completion[-2:] == [tokenizer.symbol_id(genrm.GOOD), tokenizer.eos_id]
    assert tokenizer.decode(completion[:-2]) == "81+61=43;43+51-94\n43+51=94;94-94\n94-94=0;0\n"
    bad = genrm.training_example(tokenizer, PROBLEM, "18+16-15")
    assert bad.tokens[-2] == tokenizer.symbol_id(genrm.BAD)


class ConstantVerdict(nn.Module):
    """A toy verifier: at every position <good> has logit log 3 and <bad> logit 0 (everything else far below), so it
    writes no check, and its score is 3 / (3 + 1) exactly."""

    def __init__(self, vocab_size, good_id, bad_id):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, block_size=512, n_layer=1, n_head=1, n_embd=2)
        self.logits = torch.full((vocab_size,), -30.0)
        self.logits[good_id], self.logits[bad_id] = torch.log(torch.tensor(3.0)), 0.0
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None, *, positions=None, attn_mask=None, kv_cache=None, loss_mask=None):
        B, T = idx.shape
        if kv_cache is not None:
            new = torch.zeros(B, 1, T, 1)
            kv_cache.append(0, new, new)
            kv_cache.advance(T)
        return self.logits.expand(B, T, -1).clone(), None


def test_score_is_the_verdicts_probability_on_a_toy(tmp_path):
    tokenizer = toy_tokenizer(tmp_path)
    tokenizer = Tokenizer(add_symbols(tokenizer.model_bytes, [genrm.GOOD, genrm.BAD]))
    model = ConstantVerdict(tokenizer.vocab_size, tokenizer.symbol_id(genrm.GOOD), tokenizer.symbol_id(genrm.BAD))
    scores = genrm.score_candidates(model, tokenizer, [(PROBLEM, "18+16+15"), (PROBLEM, None), (PROBLEM, "18+16-15")])
    assert abs(scores[0] - 0.75) < 1e-6 and abs(scores[2] - 0.75) < 1e-6
    assert scores[1] == 0.0  # no well-formed answer: nothing to check


def test_a_tiny_verifier_learns_to_tell_right_from_wrong(tmp_path):
    torch.manual_seed(0)
    tokenizer = toy_tokenizer(tmp_path)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=256, n_layer=2, n_head=2, n_embd=64))
    model, tokenizer = genrm.add_verdict_tokens(model, tokenizer)
    problems = tasks.generate("countdown", 12, seed=3, difficulties=(3,))
    candidates = []
    for problem in problems:
        right = tasks.trace(problem, "digits", "straight", countdown_products="digits")[1]
        candidates += [(problem, right), (problem, right.replace("+", "-", 1) if "+" in right else right + "+1")]
    examples = [genrm.training_example(tokenizer, p, a) for p, a in candidates]
    genrm.train(model, tokenizer, examples, steps=400, batch_size=8, lr=3e-3, seed=0, log_every=1000)
    scores = genrm.score_candidates(model, tokenizer, candidates)
    labels = [genrm.answer_check(p, a).is_good for p, a in candidates]
    assert 0 < sum(labels) < len(labels)
    assert auroc(scores, labels) >= 0.9


def test_search_reads_the_verdict_at_every_step_end(tmp_path):
    policy_tokenizer = toy_tokenizer(tmp_path)
    tokenizer = Tokenizer(add_symbols(policy_tokenizer.model_bytes, [genrm.GOOD, genrm.BAD]))
    model = ConstantVerdict(tokenizer.vocab_size, tokenizer.symbol_id(genrm.GOOD), tokenizer.symbol_id(genrm.BAD))
    score_steps, count_tokens = genrm.step_scorer(model, tokenizer, policy_tokenizer)
    prompt = policy_tokenizer.encode_prompt(tasks.format_prompt(PROBLEM))
    assert genrm.problem_from_prompt(policy_tokenizer, prompt) == PROBLEM  # the prompt shows it units first
    assert genrm.problem_from_prompt(policy_tokenizer, policy_tokenizer.encode_prompt("countdown: 1 2 ->\n")) is None
    steps, answer = tasks.trace(PROBLEM, "digits", "straight", countdown_products="digits")
    finished = policy_tokenizer.encode(tasks.format_completion(steps, answer)) + [policy_tokenizer.eos_id]
    unfinished = policy_tokenizer.encode("".join(step + "\n" for step in steps[:1]))
    scores = score_steps([prompt] * 3, [finished, unfinished, finished])
    # the verdict (3 / (3 + 1)) at every step end and the eos; no answer yet: 0 at its one step end
    assert [len(s) for s in scores] == [len(steps) + 2, 1, len(steps) + 2]  # the steps, </think>'s line, eos
    assert all(abs(value - 0.75) < 1e-6 for value in scores[0] + scores[2]) and scores[1] == [0.0]
    # the same answer twice is checked once: what the verifier reads and writes for it, its exact check included
    assert count_tokens([prompt] * 3, [finished, unfinished, finished]) == len(
        genrm.training_example(tokenizer, PROBLEM, answer).tokens)
    # arith: the lowest verdict of the steps so far at each line's end; a line that is no equation scores 0 unchecked
    arith_prompt = policy_tokenizer.encode_prompt(tasks.format_prompt(ARITH))
    steps, answer = tasks.trace(ARITH, "digits")
    eos = [policy_tokenizer.eos_id]
    right = policy_tokenizer.encode(tasks.format_completion(steps, answer)) + eos
    broken = policy_tokenizer.encode(tasks.format_completion(steps[:2] + ["531"] + steps[3:], answer)) + eos
    unfinished = policy_tokenizer.encode("".join(step + "\n" for step in steps[:2]) + "</think>\n") + eos
    right_scores, broken_scores, unfinished_scores = score_steps([arith_prompt] * 3, [right, broken, unfinished])
    assert len(right_scores) == len(steps) + 2 and all(abs(value - 0.75) < 1e-6 for value in right_scores)
    assert [round(value, 6) for value in broken_scores] == [0.75, 0.75] + [0.0] * (len(steps) - 2 + 2)
    assert [round(value, 6) for value in unfinished_scores] == [0.75, 0.75, 0.75, 0.0]  # no answer: 0 at the eos


def test_an_arith_step_is_checked_by_its_difference():
    # the step as the policy writes it, digits units first: 47+88 = 135
    check = genrm.step_check(ARITH.text, "74+88=531;531+(45+53-34)")
    assert check == genrm.Check(["74+88=531;531-531", "531-531=0;0"], True, "")
    slip = genrm.step_check(ARITH.text, "74+88=541;541+(45+53-34)")
    assert slip.lines[-1] == "531-541=-01;-01" and not slip.is_good and slip.reason.startswith("wrong arithmetic")
    # right arithmetic, but the expression left is not the one before with 47+88 replaced by 135
    copied_wrong = genrm.step_check(ARITH.text, "74+88=531;531+(45+53-35)")
    assert copied_wrong.lines[-1] == "531-531=0;0" and not copied_wrong.is_good
    assert copied_wrong.reason == "the expression left does not follow from the previous one"
    for line in ("", "74+88", "531;531", "74+88+1=641;641", "os.system('x')=1;1"):
        assert genrm.step_check(ARITH.text, line) == genrm.Check([], False, "the step is not an equation of one operation")


def test_a_completion_is_cut_into_steps_each_with_the_expression_before_it():
    completion = ("74+88=531;531+(45+53-34)\n45+53=98;531+(98-34)\n98-34=64;531+64\n531+64=181;181\n</think>\n181")
    assert genrm.completion_steps(ARITH, completion) == [
        ("47+88+(54+35-43)", "74+88=531;531+(45+53-34)"), ("135+(54+35-43)", "45+53=98;531+(98-34)"),
        ("135+(89-43)", "98-34=64;531+64"), ("135+46", "531+64=181;181")]
    assert all(genrm.step_check(*pair).is_good for pair in genrm.completion_steps(ARITH, completion))
    assert genrm.completion_steps(ARITH, "</think>\n181") == []
    # a slip, then an undo line back to the expression before it: the retry is checked from there, the undo not at all
    retry = "74+88=541;541+(45+53-34)\nundo;74+88+(45+53-34)\n74+88=531;531+(45+53-34)\n</think>\n181"
    pairs = genrm.completion_steps(ARITH, retry)
    assert pairs == [(ARITH.text, "74+88=541;541+(45+53-34)"), (ARITH.text, "74+88=531;531+(45+53-34)")]
    assert [genrm.step_check(*pair).is_good for pair in pairs] == [False, True]


def test_the_training_data_counts_each_distinct_candidate_once(tmp_path):
    tokenizer = Tokenizer(add_symbols(toy_tokenizer(tmp_path).model_bytes, [genrm.GOOD, genrm.BAD]))
    exact_answer = tasks.trace(PROBLEM, "digits", "straight")[1]
    assert exact_answer == "16+(18+15)"
    countdown_samples = [tasks.format_completion([], "18+16+15"), tasks.format_completion([], "18+16+15"),
                         tasks.format_completion([], "18+16-15"), "no answer", tasks.format_completion([], "49")]
    steps, answer = tasks.trace(ARITH, "digits", "straight")
    arith_samples = [tasks.format_completion(steps, answer),                         # the exact solution again
                     tasks.format_completion(["74+88=041;041+(45+53-34)"], "180")]  # a slip: 47+88 is not 140
    examples, counts = genrm.training_data(tokenizer, [(PROBLEM, countdown_samples), (ARITH, arith_samples)], 512)
    # countdown: 18+16+15 (twice), 18+16-15, and the exact 16+(18+15); "no answer" and "49" give nothing to check.
    # arith: the exact solution's 4 steps (sampled once more) and the slip
    assert counts == {"problems": 2, "samples": 7, "candidates": 3 + 5, "good": 2 + 4, "examples": 8}
    assert sorted(e.tokens[-2] == tokenizer.symbol_id(genrm.GOOD) for e in examples) == [False] * 2 + [True] * 6
    # a context too short for any of them keeps the counts of what was found, and no example
    _, short = genrm.training_data(tokenizer, [(PROBLEM, countdown_samples), (ARITH, arith_samples)], 10)
    assert short == dict(counts, examples=0)
