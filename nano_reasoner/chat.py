"""
Conversation: a multi-turn chat in which each turn's reasoning is dropped from the next turn's context.

A reasoning model in a chat thinks before every answer, but what it carries from one turn to the next is the
conversation, not the thinking. OpenAI's reasoning guide draws it: the input and output tokens of each turn are
carried into the next turn's context, the reasoning tokens are discarded. DeepSeek-R1's chat template does the same
(an earlier assistant turn keeps only what follows its `</think>`; "DeepSeek-R1", arXiv 2501.12948), and Qwen3's keeps
the thinking of the current turn only. The thinking is scratch work: it is long, it was useful once, and carrying it
would fill the context in a few turns (the README measures by how much).

The format. Two markers, `<user>` and `<assistant>`, are single tokens; the pre-trained tokenizer never saw them, so
the chat fine-tune adds them (tokenizer.add_symbols) and the embedding grows by as many rows (model.grow_vocab),
as chat templates are added to a base model. A conversation of two turns, as the model reads it before it answers the
second (numbers in the problem and the thinking units digit first, tasks/trace.py):

    [bos]<user>arith: 7+83*2-51\\n<assistant>68[eos]          turn 1: question and reply; its thinking is gone
    <user>arith: ans*3\\n<assistant><think>\\n                  turn 2: the model writes from here
    ans=86;86*3                                              the first step puts the previous answer in for `ans`
    86*3=402;402                                             ... then the usual steps
    </think>\\n204[eos]

`ans` is the previous answer, as on a calculator, and is one token too. A turn that uses it starts its thinking by
writing the value in (`ans=86;86*3`, the expression it is then left with), copied from the reply in the context, so
the model must read the context to answer: a turn cannot be solved alone. The verifier checks that line exactly and
the rest as an arith trace of the problem with the value in (verify_turn). A turn is graded as a calculator would:
`ans` is what the model answered before, right or wrong.

The KV cache across turns (Conversation). Between turns the cache keeps the keys and values of everything the model
has read and written. The next turn's context shares a prefix with it: everything up to the `<assistant>` marker of the
previous turn. There it diverges, since the cache holds `<think>` and the thinking where the new context holds the
reply alone, and the reply's keys and values cannot be reused either: each position's key depends on every token
before it, the thinking included. So the cache is cut back to the longest common prefix (a plain comparison of token
ids, which finds exactly that point) and only the rest is prefilled: the reply, the end-of-turn token, the new
question. Conversation counts the tokens prefilled against those that re-encoding the whole context every turn would
prefill; the tests check that the cached route gives exactly the tokens of the re-encoding route.

Simplifications: one conversation at a time in Conversation (evaluate_conversations batches many conversations by
re-encoding); the cache is a fixed buffer of block_size slots, and a conversation that outgrows the context is
refused (production chats drop or summarise old turns); `ans` exists for arith only.
"""
import random
import re
from dataclasses import dataclass, field

import torch

from nano_reasoner import tasks
from nano_reasoner.data import Example
from nano_reasoner.model import KVCache, grow_vocab
from nano_reasoner.sampling import choose_next_tokens, generate
from nano_reasoner.tasks import arith, expr
from nano_reasoner.tasks.trace import to_text
from nano_reasoner.tokenizer import BOS_ID, add_symbols

USER, ASSISTANT, ANS = "<user>", "<assistant>", "ans"
CHAT_SYMBOLS = (USER, ASSISTANT, ANS)
MIN_ROOM = 64          # a turn needs at least this many free slots of context to think and answer in
_INTEGER = re.compile(r"-?[0-9]+")
_SENTINEL = 987654321012  # stands for `ans` while a question is parsed (12 digits: expr's largest number)


class ChatError(ValueError):
    """A line the conversation cannot take; str(error) is one line that says what is wrong and what to do."""


@dataclass
class Question:
    task: str               # "arith" | "countdown"
    text: str               # as the conversation shows it, in reading order ("ans*3"); `ans` kept
    problem: tasks.Problem  # what the answer is checked against: `ans` replaced by its value
    ans_value: int | None   # the value `ans` stood for, None when the question does not use it


@dataclass
class Turn:
    question: Question
    completion: str         # what the model wrote after `<think>\n` (eos dropped)
    tokens: list            # the generated token ids (eos included when it stopped there)
    reply: str              # the visible answer carried into later turns: the line after `</think>`, or ""
    verdict: tasks.Verdict
    context_tokens: int     # tokens of the context the model read before it wrote this turn
    prefilled_tokens: int   # of those, the ones pushed through the model for this turn (the rest came from the cache)


# ----------------------------------------------------------------------------------------------------------------------
# the format

def has_chat_tokens(tokenizer):
    return all(tokenizer.symbol_id(symbol) is not None for symbol in CHAT_SYMBOLS)


def add_chat_tokens(model, tokenizer):
    """-> (model, tokenizer) with the chat markers and `ans` in the vocabulary; unchanged when they are there."""
    if has_chat_tokens(tokenizer):
        return model, tokenizer
    new_tokenizer = type(tokenizer)(add_symbols(tokenizer.model_bytes, CHAT_SYMBOLS))
    return grow_vocab(model, max(model.config.vocab_size, new_tokenizer.vocab_size)), new_tokenizer


def answer_value(reply):
    """The integer a reply states, or None (a countdown expression, an empty reply, text)."""
    reply = reply.strip()
    return int(reply) if _INTEGER.fullmatch(reply) and len(reply) <= expr.MAX_DIGITS else None


def parse_question(text, previous_reply=None):
    """A line a person typed -> Question, or ChatError with the fix. previous_reply: the last turn's reply (for `ans`),
    None before the first turn."""
    if not isinstance(text, str) or not text.strip():
        raise ChatError("empty line: type a problem such as 7+38*2-15 or 3 7 25 19 -> 63 (or /quit)")
    text = text.strip()
    uses_ans = ANS in text
    if "->" in text:
        if uses_ans:
            raise ChatError("`ans` works in arith problems only; a countdown problem gives its numbers and target")
        try:
            problem = tasks.parse_problem("countdown", text)
        except tasks.ProblemError as error:
            raise ChatError(str(error)) from None
        return Question("countdown", problem.text, problem, None)
    if not uses_ans:
        try:
            problem = tasks.parse_problem("arith", text)
        except tasks.ProblemError as error:
            raise ChatError(str(error)) from None
        return Question("arith", problem.text, problem, None)
    if previous_reply is None:
        raise ChatError("`ans` is the previous answer and there is none yet: ask a problem without `ans` first")
    value = answer_value(previous_reply)
    if value is None:
        raise ChatError(f"the previous answer ({previous_reply!r}) is not a number, so `ans` has no value: ask a "
                        f"problem without `ans`")
    if str(_SENTINEL) in text:
        raise ChatError(f"{_SENTINEL} is reserved: use a smaller number")
    # parse with a number in place of `ans`, so the question is printed the way the problem is (expr.to_text)
    try:
        shown = expr.to_text(expr.parse(text.replace(ANS, str(_SENTINEL)))).replace(str(_SENTINEL), ANS)
    except expr.ExprError as error:
        raise ChatError(f"not an arith problem ({error}): give an expression such as ans*3-7") from None
    try:
        problem = tasks.parse_problem("arith", shown.replace(ANS, str(value)))
    except tasks.ProblemError as error:
        raise ChatError(str(error)) from None
    return Question("arith", shown, problem, value)


def header_ids(tokenizer, question):
    """`<user>{task}: {question as shown}\\n<assistant>`: the tokens of a turn before the assistant writes."""
    return tokenizer.encode_checked(f"{USER}{question.task}: {tasks.flip_digits(question.text)}\n{ASSISTANT}")


def render(tokenizer, turns, question=None, keep_thinking=False):
    """The token ids the model reads: [bos], every earlier turn (its question, then its reply and eos; with
    keep_thinking also its thinking, as it was written), then the new question and `<think>\\n`."""
    ids = [BOS_ID]
    for turn in turns:
        ids += header_ids(tokenizer, turn.question)
        if keep_thinking:
            ids += tokenizer.encode(tasks.THINK + "\n") + [t for t in turn.tokens if t != tokenizer.eos_id]
        else:
            ids += tokenizer.encode(turn.reply)
        ids.append(tokenizer.eos_id)
    if question is not None:
        ids += header_ids(tokenizer, question) + tokenizer.encode(tasks.THINK + "\n")
    return ids


def context_text(tokenizer, ids):
    """The exact text of a context, with bos and eos spelled out."""
    pieces, run = [], []
    for token in ids + [None]:
        if token in (BOS_ID, tokenizer.eos_id, None):
            pieces.append(tokenizer.decode(run))
            run = []
            if token is not None:
                pieces.append("<s>" if token == BOS_ID else "</s>")
        else:
            run.append(token)
    return "".join(pieces)


def substitution_step(question):
    """The first step of a turn that uses `ans`, as the model writes it: `ans=86;86*3` (units digit first)."""
    return tasks.flip_digits(f"{ANS}={question.ans_value};{question.problem.text}")


def reply_of(completion):
    """The visible part of a turn: the first non-empty line after `</think>`, or "" when the thinking never ended."""
    lines = to_text(completion).split("\n")
    if tasks.END_THINK not in lines:
        return ""
    after = [line.strip() for line in lines[lines.index(tasks.END_THINK) + 1:] if line.strip()]
    return after[0][:40] if after else ""  # a runaway reply must not flood the next context


def verify_turn(question, completion):
    """The exact verdict on one turn (never raises). A turn with `ans` must start with its substitution step; the
    rest is checked as a trace of the problem with the value in."""
    if question.ans_value is None:
        return tasks.verify(question.problem, completion)
    first, _, rest = to_text(completion).partition("\n")
    if first != substitution_step(question):
        verdict = tasks.verify(question.problem, rest)
        return tasks.Verdict(False, verdict.answer, f"the first step must put the previous answer in: "
                             f"{tasks.flip_digits(substitution_step(question))}", verdict.is_well_formed)
    return tasks.verify(question.problem, rest)


# ----------------------------------------------------------------------------------------------------------------------
# a conversation with a carried KV cache

def reusable_prefix(cached_ids, context_ids):
    """How many leading tokens of the new context a carried cache still holds: the longest common prefix of what it
    holds and the context, leaving at least one context token to prefill (its logits give the first new token)."""
    # BEGIN SOLUTION part 14
    keep = 0
    while keep < min(len(cached_ids), len(context_ids) - 1) and cached_ids[keep] == context_ids[keep]:
        keep += 1
    return keep
    # END SOLUTION


class Conversation:
    """One conversation with a model: ask() a line, get a Turn. The KV cache is carried between turns (module
    docstring); prefill_tokens and reencode_tokens count what it saves."""

    def __init__(self, model, tokenizer, *, max_new_tokens=400, temperature=0.0, seed=0, keep_thinking=False):
        assert has_chat_tokens(tokenizer), "this tokenizer has no chat tokens: fine-tune with train_pretrain.py --chat"
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.keep_thinking = max_new_tokens, temperature, keep_thinking
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        config = model.config
        self.cache = KVCache(config, 1, config.block_size, self.device, next(model.parameters()).dtype)
        self.prefill_tokens = 0  # tokens pushed through the model as context, over all turns of all conversations
        self.reencode_tokens = 0  # what re-encoding the whole context at every turn would have pushed
        self.reset()

    def reset(self):
        """Start a new conversation (the token counts go on)."""
        self.turns = []
        self.cached_ids = []     # the tokens whose keys and values the cache holds, in order
        self.cache.pos = 0

    def context_ids(self, question=None):
        return render(self.tokenizer, self.turns, question, self.keep_thinking)

    def parse(self, text):
        return parse_question(text, self.turns[-1].reply if self.turns else None)

    @torch.no_grad()
    def ask(self, text):
        """Answer one line. A bad line raises ChatError and leaves the conversation as it was."""
        question = self.parse(text)
        try:
            ids = self.context_ids(question)
        except ValueError as error:  # a character the tokenizer does not know
            raise ChatError(f"{error}: retype the problem") from None
        block_size = self.model.config.block_size
        room = block_size - len(ids)
        if room < MIN_ROOM:
            raise ChatError(f"the conversation would take {len(ids)} of the model's {block_size} tokens of context, "
                            f"leaving no room to think: /reset to start a new one (or ask a shorter problem)")
        # (1) cut the cache back to the prefix it shares with the new context
        keep = reusable_prefix(self.cached_ids, ids)
        self.cache.pos = keep
        # (2) prefill the rest, (3) decode until eos
        tokens = self._generate(ids[keep:], min(self.max_new_tokens, room))
        # the last token is never pushed through the model: the cache holds the context and all tokens before it
        self.cached_ids = ids + tokens[:-1]
        completion = self.tokenizer.decode(tokens)
        turn = Turn(question, completion, tokens, reply_of(completion), verify_turn(question, completion),
                    context_tokens=len(ids), prefilled_tokens=len(ids) - keep)
        self.turns.append(turn)
        self.prefill_tokens += turn.prefilled_tokens
        self.reencode_tokens += len(ids)
        return turn

    def _generate(self, new_ids, max_new_tokens):
        """Push new_ids through the model on top of the cache, then write up to max_new_tokens (stop at eos)."""
        chunk = torch.tensor([new_ids], dtype=torch.long, device=self.device)  # (1, T)
        tokens = []
        for _ in range(max_new_tokens):
            logits, _ = self.model(chunk, kv_cache=self.cache)  # positions count on from the cache's
            next_token = choose_next_tokens(logits[:, -1].float(), self.temperature, None, None, self.generator)  # (1,)
            tokens.append(int(next_token))
            if tokens[-1] == self.tokenizer.eos_id or len(tokens) == max_new_tokens:
                return tokens
            chunk = next_token[:, None]  # (1, 1)
        return tokens


# ----------------------------------------------------------------------------------------------------------------------
# data: conversations to train on and to measure with

def follow_up(previous_value, n_ops, rng):
    """A question that uses `ans` = previous_value with n_ops operations (`ans` at a random operand), whose steps
    stay within arith's bounds; None when the draw left them."""
    tree = arith.random_tree(n_ops, rng)
    leaves, stack = [], [((), tree)]
    while stack:
        path, node = stack.pop()
        if node[0] == "num":
            leaves.append(path)
        else:
            stack += [(path + (1,), node[1]), (path + (2,), node[2])]
    template = expr.replace(tree, rng.choice(sorted(leaves)), ("num", _SENTINEL))
    text = expr.to_text(template).replace(str(_SENTINEL), ANS)
    question = parse_question(text, str(previous_value))
    return question if arith.within_bounds(expr.parse(question.problem.text)) else None


def held_out_conversations(n, seed, turns=3, first_ops=(1, 2, 3), follow_ops=(1, 2)):
    """n arith conversations: a first problem with first_ops operations, then turns - 1 questions with `ans` and
    follow_ops more operations; the right answer of each turn is the value of the chain so far. Seeded apart from
    the training conversations (train_pretrain.py --chat excludes their first problems)."""
    rng = random.Random(seed + 30_000)
    firsts = arith.generate(n, seed=seed + 30_001, difficulties=first_ops)
    conversations = []
    for first in firsts:
        questions = [Question("arith", first.text, first, None)]
        while len(questions) < turns:
            question = follow_up(arith.answer_of(questions[-1].problem), rng.choice(follow_ops), rng)
            if question is not None:
                questions.append(question)
        conversations.append([question.text for question in questions])
    return conversations


@dataclass
class ChatMix:
    """What the chat fine-tune trains on. Each example is a conversation of 1 to max_turns turns, the last one with
    its thinking (the loss is on it), the earlier ones as the model will see them: question and reply."""
    max_turns: int = 3
    countdown_share: float = 0.2    # a turn is a countdown problem (search trace) this often
    follow_up_share: float = 0.9    # a turn after an arith turn uses `ans` this often (0.7: 83% of turns, not 94%)
    plain_share: float = 0.2        # examples in the plain single-problem format (no markers), against forgetting
    first_ops: tuple = (1, 2, 3, 1, 2, 3, 4)  # operations of an arith problem without `ans` (4 one time in seven)
    follow_ops: tuple = (1, 2)      # operations of a question with `ans`


def _trace(question, granularity, countdown_products):
    kind = "search" if question.task == "countdown" else "straight"
    steps, answer = tasks.trace(question.problem, granularity, kind, countdown_products=countdown_products)
    if question.ans_value is not None:
        steps = [substitution_step(question)] + steps
    return steps, answer


def training_examples(tokenizer, n, seed, mix=None, exclude=(), granularity="digits", countdown_products="digits",
                      keep_thinking=False):
    """n training examples (data.Example) of the chat format and, for plain_share of them, the plain format.
    exclude: problem texts never to use as a first turn (the held-out sets). keep_thinking: earlier turns keep their
    thinking (the comparison of the README; chat.py drops it)."""
    mix = mix or ChatMix()
    rng = random.Random(seed)
    exclude = set(exclude)
    arith_pool = [p for p in arith.generate(n + 100, seed=seed + 1, difficulties=mix.first_ops) if p.text not in exclude]
    countdown_pool = [p for p in tasks.generate("countdown", n // 4 + 100, seed=seed + 2, difficulties=(3, 4))
                      if p.text not in exclude]

    def fresh_question():
        if rng.random() < mix.countdown_share:
            problem = rng.choice(countdown_pool)
        else:
            problem = rng.choice(arith_pool)
        return Question(problem.task, problem.text, problem, None)

    examples = []
    while len(examples) < n:
        if rng.random() < mix.plain_share:
            question = fresh_question()
            steps, answer = _trace(question, granularity, countdown_products)
            prompt = tokenizer.encode_prompt(tasks.format_prompt(question.problem))
            completion = tokenizer.encode(tasks.format_completion(steps, answer)) + [tokenizer.eos_id]
            examples.append(Example(prompt + completion, len(prompt)))
            continue
        questions = [fresh_question()]
        for _ in range(rng.randint(1, mix.max_turns) - 1):
            question = None
            if questions[-1].task == "arith" and rng.random() < mix.follow_up_share:
                question = follow_up(arith.answer_of(questions[-1].problem), rng.choice(mix.follow_ops), rng)
            questions.append(question or fresh_question())
        earlier = []
        for question in questions[:-1]:
            steps, answer = _trace(question, granularity, countdown_products)
            tokens = tokenizer.encode(tasks.format_completion(steps, answer)) + [tokenizer.eos_id] if keep_thinking else []
            earlier.append(Turn(question, "", tokens, answer, None, 0, 0))
        prompt = render(tokenizer, earlier, questions[-1], keep_thinking)
        steps, answer = _trace(questions[-1], granularity, countdown_products)
        completion = tokenizer.encode(tasks.format_completion(steps, answer)) + [tokenizer.eos_id]
        examples.append(Example(prompt + completion, len(prompt)))
    return examples


# ----------------------------------------------------------------------------------------------------------------------
# measuring: many conversations at once

@dataclass
class ConversationResult:
    turns: list = field(default_factory=list)   # Turn per turn answered
    error: str = ""                               # why the conversation stopped early ("" when it did not)


def evaluate_conversations(model, tokenizer, conversations, *, keep_thinking=False, max_new_tokens=256, chunk_size=256):
    """Run every conversation (lists of lines) greedily, turn by turn, all conversations of a turn in one batched
    sampler call (each context re-encoded whole: the same tokens as the carried cache, tested). -> list of
    ConversationResult. A turn that cannot be asked (`ans` after a reply that is not a number) ends its conversation."""
    results = [ConversationResult() for _ in conversations]
    previous_ids = [[] for _ in conversations]  # what a carried cache would hold after the last turn
    for turn_index in range(max(len(lines) for lines in conversations)):
        asked = []  # (conversation index, question, context ids)
        for index, lines in enumerate(conversations):
            result = results[index]
            if turn_index >= len(lines) or result.error:
                continue
            try:
                question = parse_question(lines[turn_index], result.turns[-1].reply if result.turns else None)
                ids = render(tokenizer, result.turns, question, keep_thinking)
            except ValueError as error:  # ChatError, or a character the tokenizer does not know
                result.error = f"turn {turn_index + 1}: {error}"
                continue
            if len(ids) + MIN_ROOM > model.config.block_size:
                result.error = f"turn {turn_index + 1}: the context is full ({len(ids)} tokens)"
                continue
            asked.append((index, question, ids))
        for start in range(0, len(asked), chunk_size):
            chunk = asked[start:start + chunk_size]
            room = min(max_new_tokens, model.config.block_size - max(len(ids) for _, _, ids in chunk))
            sampled = generate(model, [ids for _, _, ids in chunk], room, temperature=0.0,
                               stop_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id)
            for row, (index, question, ids) in enumerate(chunk):
                tokens = sampled.row_tokens(row)
                completion = tokenizer.decode(tokens)
                keep = reusable_prefix(previous_ids[index], ids)  # what a carried cache would still hold
                results[index].turns.append(Turn(question, completion, tokens, reply_of(completion),
                                                 verify_turn(question, completion), len(ids), len(ids) - keep))
                previous_ids[index] = ids + tokens[:-1]
    return results


def summarise(results, conversations):
    """Accuracy of turns (graded as a calculator would: `ans` is the model's own previous answer), of whole
    conversations (every turn right), and by turn: accuracy, context tokens and tokens prefilled with a carried cache."""
    n_turns = max(len(lines) for lines in conversations)
    by_turn = []
    for t in range(n_turns):
        rows = [(result, lines) for result, lines in zip(results, conversations) if len(lines) > t]
        answered = [result.turns[t] for result, _ in rows if len(result.turns) > t]
        by_turn.append({
            "turn": t + 1,
            "accuracy": sum(turn.verdict.is_correct for turn in answered) / len(rows),
            "context_tokens": sum(turn.context_tokens for turn in answered) / max(1, len(answered)),
            "prefilled_tokens": sum(turn.prefilled_tokens for turn in answered) / max(1, len(answered)),
        })
    all_right = [len(result.turns) == len(lines) and all(turn.verdict.is_correct for turn in result.turns)
                 for result, lines in zip(results, conversations)]
    all_turns = [turn for result in results for turn in result.turns]
    total_turns = sum(len(lines) for lines in conversations)
    return {
        "conversations": len(conversations),
        "turn_accuracy": sum(turn.verdict.is_correct for turn in all_turns) / total_turns,
        "conversation_accuracy": sum(all_right) / len(conversations),
        "by_turn": by_turn,
        "stopped_early": sum(bool(result.error) for result in results),
    }
