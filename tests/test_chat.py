"""
The conversation (nano_reasoner/chat.py, chat.py): the format, the dropped thinking, the carried KV cache, follow-up
questions with `ans`, and the interactive mode driven through a pseudo-terminal as a person would use it.
"""
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
import torch

from nano_reasoner import chat, tasks
from nano_reasoner.checkpoint import save_checkpoint
from nano_reasoner.model import GPT, GPTConfig, grow_vocab
from nano_reasoner.sampling import generate
from nano_reasoner.tokenizer import Tokenizer, add_symbols, train_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def base_tokenizer(tmp_path_factory):
    work = tmp_path_factory.mktemp("chat_tok")
    problems = tasks.generate("arith", 200, seed=0, difficulties=(1, 2, 3)) + \
        tasks.generate("countdown", 100, seed=0, difficulties=(3, 4))
    return train_tokenizer([tasks.full_trace(p, "digits") for p in problems], str(work / "tok.model"))


@pytest.fixture(scope="module")
def chat_model(base_tokenizer):
    """A random 2-layer model with the chat tokens, in float64 so that no two logits tie by rounding."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=base_tokenizer.vocab_size, block_size=256, n_layer=2, n_head=2, n_embd=32))
    model, tokenizer = chat.add_chat_tokens(model, base_tokenizer)
    with torch.no_grad():
        model.wte.weight.mul_(40)  # spread the logits: a random model at init gives nearly uniform ones
    return model.double().eval(), tokenizer


def test_added_symbols_are_single_tokens_and_old_text_encodes_as_before(base_tokenizer):
    grown = Tokenizer(add_symbols(base_tokenizer.model_bytes, chat.CHAT_SYMBOLS))
    old_size = base_tokenizer.vocab_size
    assert grown.vocab_size == old_size + 3
    assert [grown.symbol_id(s) for s in chat.CHAT_SYMBOLS] == [old_size, old_size + 1, old_size + 2]
    for problem in tasks.generate("arith", 30, seed=5) + tasks.generate("countdown", 10, seed=5, difficulties=(3,)):
        text = tasks.full_trace(problem, "digits")
        assert grown.encode(text) == base_tokenizer.encode(text)
    text = "<user>arith: ans*3\n<assistant><think>\n"
    assert grown.decode(grown.encode(text)) == text
    assert grown.encode("<user>ans<assistant>") == [old_size, old_size + 2, old_size + 1]
    with pytest.raises(ValueError, match="already holds"):
        add_symbols(grown.model_bytes, ["ans"])


def test_grown_vocab_keeps_every_old_logit():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=8))
    grown = grow_vocab(model, 23)
    idx = torch.randint(0, 20, (2, 7))
    old_logits, _ = model(idx)
    new_logits, _ = grown(idx)
    assert new_logits.shape == (2, 7, 23)
    assert torch.allclose(new_logits[..., :20], old_logits)
    assert grown.lm_head.weight is grown.wte.weight
    assert torch.allclose(grown.wte.weight[20:], model.wte.weight.mean(dim=0).expand(3, -1))


def test_questions_with_ans_are_put_in_as_the_previous_value():
    question = chat.parse_question(" ans * 3 - 7 ", previous_reply="68")
    assert (question.task, question.text, question.problem.text, question.ans_value) == ("arith", "ans*3-7", "68*3-7", 68)
    negative = chat.parse_question("7-ans", previous_reply="-52")
    assert negative.problem.text == "7--52" and tasks.arith.answer_of(negative.problem) == 59
    assert chat.substitution_step(question) == "ans=86;86*3-7"  # units digit first, as the model writes it
    countdown = chat.parse_question("3 7 25 19 -> 63", previous_reply="68")
    assert countdown.task == "countdown" and countdown.ans_value is None


@pytest.mark.parametrize("line, previous, message", [
    ("ans*3", None, "there is none yet"),
    ("", "5", "empty line"),
    ("   ", "5", "empty line"),
    ("7+é", None, "not an arith problem"),
    ("ans+é", "5", "not an arith problem"),
    ("ans*3", "(4*8)+16", "is not a number"),
    ("ans 3 7 -> 10", "5", "arith problems only"),
    ("ans", "5", "nothing to compute"),
])
def test_bad_lines_raise_one_line_chat_errors(line, previous, message):
    with pytest.raises(chat.ChatError, match=message) as error:
        chat.parse_question(line, previous)
    assert "\n" not in str(error.value)


def test_verify_turn_checks_the_substitution_step_then_the_trace():
    question = chat.parse_question("ans*3", previous_reply="68")
    steps, answer = tasks.trace(question.problem, "digits")
    right = tasks.format_completion([chat.substitution_step(question)] + steps, answer)
    assert chat.verify_turn(question, right).is_correct
    without = tasks.format_completion(steps, answer)
    verdict = chat.verify_turn(question, without)
    assert not verdict.is_correct and "put the previous answer in" in verdict.reason
    wrong_value = tasks.format_completion(["ans=87;87*3"] + steps, answer)
    assert not chat.verify_turn(question, wrong_value).is_correct
    assert not chat.verify_turn(question, "\xff garbage \x00").is_correct  # never raises on model output


def test_contexts_drop_earlier_thinking_and_hold_every_question_and_reply(chat_model):
    model, tokenizer = chat_model
    conversation = chat.Conversation(model, tokenizer, max_new_tokens=24)
    lines = ["7+38*2-15", "3 7 25 19 -> 63", "12*4"]
    for line in lines:
        conversation.ask(line)
    # fake replies that a later turn must find in the context: the random model's own are usually empty
    for turn, reply in zip(conversation.turns, ["68", "(25+19)+7", "48"]):
        turn.reply = reply
    context = chat.context_text(tokenizer, conversation.context_ids(chat.parse_question("ans+1", "48")))
    assert context.count(tasks.THINK) == 1 and context.endswith(f"<assistant>{tasks.THINK}\n")  # only the new turn's
    for turn in conversation.turns:
        assert f"<user>{turn.question.task}: {tasks.flip_digits(turn.question.text)}\n<assistant>{turn.reply}</s>" in context
        thinking = turn.completion.split(tasks.END_THINK)[0]
        assert len(thinking) < 4 or thinking not in context
    kept = chat.render(tokenizer, conversation.turns, None, keep_thinking=True)
    assert tokenizer.decode(kept).count(tasks.THINK) == 3


def test_carried_cache_gives_exactly_the_tokens_of_reencoding_the_context(chat_model):
    model, tokenizer = chat_model
    for keep_thinking in (False, True):
        conversation = chat.Conversation(model, tokenizer, max_new_tokens=20, keep_thinking=keep_thinking)
        for index, line in enumerate(["7+38*2-15", "3 7 25 19 -> 63", "12*4-9", "5+5"]):
            context = conversation.context_ids(conversation.parse(line))
            turn = conversation.ask(line)
            reencoded = generate(model, [context], 20, temperature=0.0, stop_ids=[tokenizer.eos_id])
            assert turn.tokens == reencoded.row_tokens(0)
            assert turn.context_tokens == len(context)
            if index == 0:
                assert turn.prefilled_tokens == len(context)
            else:  # the cache held the shared prefix: up to the previous <assistant> (dropped) or all of it (kept)
                assert turn.prefilled_tokens < len(context)
        assert conversation.prefill_tokens < conversation.reencode_tokens


def test_dropped_thinking_cuts_the_cache_back_to_the_previous_assistant_marker(chat_model):
    model, tokenizer = chat_model
    conversation = chat.Conversation(model, tokenizer, max_new_tokens=10)
    first = conversation.ask("7+38*2-15")
    second = conversation.ask("3 7 25 19 -> 63")
    # reused: [bos] + the first question's header; prefilled: the reply, eos and the whole second header + <think>\n
    first_header = 1 + len(chat.header_ids(tokenizer, first.question))
    assert second.context_tokens - second.prefilled_tokens == first_header


def test_a_context_too_long_is_refused_and_the_conversation_goes_on(chat_model):
    model, tokenizer = chat_model
    conversation = chat.Conversation(model, tokenizer, max_new_tokens=8)
    conversation.ask("7+3")
    long_problem = "+".join(["12345"] * 39)  # 38 operations: parses, but leaves no room to think in 256 tokens
    with pytest.raises(chat.ChatError, match="/reset"):
        conversation.ask(long_problem)
    assert len(conversation.turns) == 1
    conversation.ask("2*3")
    assert len(conversation.turns) == 2


def test_held_out_conversations_follow_the_issue_recipe():
    conversations = chat.held_out_conversations(40, seed=1)
    assert conversations == chat.held_out_conversations(40, seed=1)
    for lines in conversations:
        assert len(lines) == 3 and chat.ANS not in lines[0]
        assert 1 <= tasks.parse_problem("arith", lines[0]).difficulty <= 3
        value = tasks.arith.answer_of(tasks.parse_problem("arith", lines[0]))
        for line in lines[1:]:
            question = chat.parse_question(line, str(value))
            assert chat.ANS in line and 1 <= question.problem.difficulty <= 2
            assert tasks.arith.within_bounds(tasks.expr.parse(question.problem.text))
            value = tasks.arith.answer_of(question.problem)


def test_training_examples_are_rendered_as_at_inference(base_tokenizer):
    tokenizer = Tokenizer(add_symbols(base_tokenizer.model_bytes, chat.CHAT_SYMBOLS))
    examples = chat.training_examples(tokenizer, 300, seed=0)
    user_id = tokenizer.symbol_id(chat.USER)
    chat_examples = [ex for ex in examples if user_id in ex.tokens]
    assert 0.6 < len(chat_examples) / len(examples) < 0.95  # plain_share 0.2 of plain single problems
    follow_ups = 0
    for ex in chat_examples:
        prompt, completion = ex.tokens[:ex.prompt_length], tokenizer.decode(ex.tokens[ex.prompt_length:])
        assert prompt.count(tokenizer.think_id) == 1 and prompt[-2:] == tokenizer.encode(tasks.THINK + "\n")
        assert prompt.count(user_id) == prompt.count(tokenizer.eos_id) + 1  # every earlier turn ends with eos
        # the last turn parses back (from its rendered text) into a question that the completion solves exactly
        text = chat.context_text(tokenizer, prompt)
        last_line = text.split(chat.USER)[-1].split("\n")[0].split(": ", 1)[1]
        previous = text.split(chat.USER)[-2].split(chat.ASSISTANT)[1].split("</s>")[0] if prompt.count(user_id) > 1 else None
        question = chat.parse_question(tasks.flip_digits(last_line), previous)
        assert chat.verify_turn(question, completion).is_correct, (text, completion)
        follow_ups += question.ans_value is not None
    assert follow_ups > 0.2 * len(chat_examples)


# ----------------------------------------------------------------------------------------------------------------------
# the script

@pytest.fixture(scope="module")
def chat_checkpoint(chat_model, tmp_path_factory):
    model, tokenizer = chat_model
    path = tmp_path_factory.mktemp("chat_ckpt") / "chat.pt"
    save_checkpoint(str(path), kind="policy", model_state=model.float().state_dict(), model_config=vars(model.config),
                    tokenizer_bytes=tokenizer.model_bytes, step=0)
    model.double()
    return path


def test_script_mode_writes_answers_contexts_and_records_bad_turns(chat_checkpoint, tmp_path):
    script = tmp_path / "convs.jsonl"
    script.write_text(json.dumps({"id": 7, "turns": ["ans*2", "7+38*2-15", "", "2+é", "+".join(["12345"] * 39), "3*4"]})
                      + "\n" + json.dumps({"turns": ["12+4"]}) + "\n")
    out = tmp_path / "out.jsonl"
    process = subprocess.run([sys.executable, os.path.join(REPO, "chat.py"), "--ckpt", str(chat_checkpoint),
                              "--script", str(script), "--out", str(out), "--max-new-tokens", "12", "--threads", "1"],
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["id"] == 7 and rows[0]["turns"][0] == "ans*2"
    row = rows[0]
    assert [error is None for error in row["errors"]] == [False, True, False, False, False, True]
    assert "none yet" in row["errors"][0] and "empty line" in row["errors"][2]
    assert "not an arith problem" in row["errors"][3] and "/reset" in row["errors"][4]
    assert row["context_tokens"][1] < row["context_tokens"][5]
    assert row["contexts"][1] == "<s><user>arith: 7+83*2-51\n<assistant><think>\n"
    assert row["contexts"][5].startswith("<s><user>arith: 7+83*2-51\n<assistant>")  # the bad lines left no trace
    assert "<think>" not in row["contexts"][5][:-len("<think>\n")]
    assert all(len(row[key]) == 6 for key in ("answers", "contexts", "context_tokens", "correct", "errors"))
    assert rows[1]["contexts"] == ["<s><user>arith: 21+4\n<assistant><think>\n"]  # a new conversation per line


def read_until(fd, marker, timeout=60):
    """Read from the terminal until `marker` has appeared -> everything read."""
    text, deadline = "", time.time() + timeout
    while marker not in text:
        remaining = deadline - time.time()
        assert remaining > 0, f"timed out waiting for {marker!r}; got:\n{text}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                text += os.read(fd, 4096).decode("utf-8", errors="replace")
            except OSError:  # the child closed the terminal
                break
    return text


def test_interactive_mode_through_a_terminal(chat_checkpoint):
    """A new user's session: three turns, /context, a bad line, an unknown command, /reset, /quit, typed into a
    pseudo-terminal."""
    main_fd, child_fd = pty.openpty()
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "chat.py"), "--ckpt", str(chat_checkpoint),
                                "--max-new-tokens", "12", "--threads", "1"],
                               stdin=child_fd, stdout=child_fd, stderr=child_fd, close_fds=True)
    os.close(child_fd)
    try:
        assert "Commands: /context, /reset, /quit" in read_until(main_fd, "you> ")
        transcript = []
        for line in ["7+38*2-15", "3 7 25 19 -> 63", "12*4", "/context", "ans+", "/help", "/reset", "/context", "ans*2",
                     "/quit"]:
            os.write(main_fd, (line + "\n").encode())
            transcript.append(read_until(main_fd, "you> " if line != "/quit" else "prefilled"))
        first, second, third, context, bad, unknown, reset, context_after_reset, ans_first, quit_text = transcript
        for turn in (first, second, third):
            assert "answer: " in turn and "check: " in turn
        assert " 0 from the cache" in first and int(re.search(r"(\d+) from the cache", second).group(1)) > 0
        assert "<user>arith: 7+83*2-51" in context and "<user>countdown: 3 7 52 91 -> 36" in context
        assert "<user>arith: 21*4" in context and "<think>" not in context
        assert "error: " in bad and "Traceback" not in bad
        assert "unknown command /help: use /context, /reset or /quit" in unknown
        assert "a new conversation" in reset and "context (1 tokens" in context_after_reset
        assert "error: `ans` is the previous answer and there is none yet" in ans_first
        assert "re-encoding every context would have prefilled" in quit_text
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(main_fd)


def test_reusable_prefix_is_the_common_prefix_leaving_one_token_to_prefill():
    assert chat.reusable_prefix([1, 5, 7, 9], [1, 5, 8]) == 2   # diverges at the third token
    assert chat.reusable_prefix([1, 5, 7], [1, 5, 7, 4, 4]) == 3  # the cache holds all of it: only the new tokens
    assert chat.reusable_prefix([1, 5, 7], [1, 5, 7]) == 2        # identical: the last token is pushed again
    assert chat.reusable_prefix([], [1, 5]) == 0
