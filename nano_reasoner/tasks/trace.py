"""
The chain-of-thought trace format shared by every task, and its never-crashing parser.

A reasoning model first thinks, then answers (DeepSeek-R1, arXiv 2501.12948, puts the thinking between `<think>`
and `</think>` and rewards that format). Here a trace is plain text, one reasoning step per line:

    arith: 7+83*2-51            <- prompt: task tag, problem (7+38*2-15; an arith problem is shown units first)
    <think>                     <- prompt ends here; the model writes the rest
    83*2=67;7+67-51             <- step: one operation, then the state it leaves
    7+67=38;38-51                  (numbers in the thinking are written units digit first)
    38-51=86;86
    </think>
    68                          <- the final answer, in the usual order, then the end-of-sequence token

Exact bytes: prompt = f"{task}: {problem as shown}\\n<think>\\n"; completion = "".join(step + "\\n" for each step) +
"</think>\\n" + answer. The tokenizer adds an end-of-sequence token after the answer. A step is everything up to a
newline, so step-level search can stop the sampler at the newline token; a step holds no newline and no `<think>`.

Digit order. Inside the thinking every number is written units digit first: 76 is written `67`, 1026 is `6201`.
A model writes left to right, and the units digit of a sum or a product is the one that depends on the fewest
digits of the operands; the leading digit depends on every carry below it. Written in the usual order, a tiny model
must settle all the carries before it writes the first digit, and its errors are exactly there (before this
choice, 1-operation sums were off by ten in most failures: `38+24=52`). Written units first, each digit needs only
the operands' digits in that column and the carry it has just written, which is how people add on paper.
"Teaching Arithmetic to Small Transformers" (Lee et al., arXiv 2307.03381) found the reversed output learns
addition with several times fewer examples; here it about doubled the accuracy that the tiny pre-training
reaches in its 10 minutes (README). The final answer keeps the usual order. An arith problem is typed in the
usual order too, but the prompt shows it to the model units digit first: the first step copies the rest of the
expression, and a copy that had to reverse every number on the way caused a third of the failures on problems with
2-4 operations (README, stage 2). A countdown problem is shown units digit first for the same reason (`19 18 5 ->
77` is shown `91 81 5 -> 77`): a state copies the numbers, and a search compares each number it makes with the
target, a plain comparison only when both are written in the same order (docs/reasoning_log.md measures it).
`flip_digits` turns a step from one order to the other (it is its own inverse); the task files check steps in
reading order, and tasks/__init__.py flips between the two.

Thinking that searches. Besides straight traces (one step after another to the answer), two trace kinds let the
model go back inside its own thinking, with one more kind of line, the undo line `undo <move>;<state>` (or
`undo;<state>`): it gives up the move named and returns to `<state>`, written exactly as a step writes the state it
leaves, which must be a state the trace really reached (the problem itself, or the state after an earlier legal
step; its numbers in any order). Exact bytes, in reading order (the model writes the digits of both kinds of line
units first, as above):

    countdown: 4 8 16 -> 48            a search trace (countdown.search_solve): the moves from the problem are
    <think>                            tried in a fixed order (countdown.root_moves: the first two numbers, +, the
    4+8=12;16 12                       larger minus the smaller, *, then the numbers rotated left)
    12+16=28;28                        below it a probe to one number; 28 is not 48: a miss
    undo 4+8;4 8 16                    give 4+8 up, back to the numbers in the order of the next move
    8-4=4;16 4                         attempt 2, the next move in the order
    4*16=4*10+4*6=40+24=64;64          a product worked through single digits; 64 is not 48
    undo 8-4;4 8 16
    4*8=32;16 32                       attempt 3
    32+16=48;48                        the check hits the target: the thinking ends
    </think>
    (4*8)+16                           the answer: the path's moves, every number made in brackets

    (With 4 numbers the probe makes two moves: the number made last with one of the others, then the check.
    countdown.search_solve says how the probe is chosen.)

    arith: 12+34*5                     a retry trace (arith.retry_solve): at a share of the steps a plausible
    <think>                            slip (here a wrong leading digit), an undo line back to the expression
    34*5=30*5+4*5=150+20=870;12+870    before it, and the right step
    undo;12+34*5
    34*5=30*5+4*5=150+20=170;12+170
    12+170=182;182
    </think>
    182

How the verifiers read them: the lines are walked in order, every step line is checked from the state the walk is
in, and an undo line moves the walk to the state it names (or, when the trace never reached that state, or names a
move the trace never tried from it, is itself an illegal line). The answer is judged from where the walk ends: every line of the path that leads there must be
legal, while a wrong step that was undone costs nothing (Physics of Language Models 2.2, Ye et al., arXiv
2408.16293, trains on such mistakes unmasked). So a countdown answer that reaches the target after an illegal move
still scores zero, and an undo line cannot launder it: it can only return to a state reached legally. The exact
step label of a line is, as for straight traces, "the state the walk is in after this line is legal and can still
reach the answer": a move into a dead end is labelled bad, the undo line out of it good again (prm.py learns
exactly that).

Each task file (arith.py, countdown.py) says what a step line holds for that task.
"""
import re
from dataclasses import dataclass, field

THINK = "<think>"
END_THINK = "</think>"
UNDO = "undo"                   # an undo line is f"{UNDO};{state}" (module docstring)
MAX_COMPLETION_CHARS = 20_000   # longer output is rejected before it is split into lines


@dataclass(frozen=True)
class Problem:
    task: str            # "arith" | "countdown"
    text: str            # exactly as a person types it: "7+38*2-15", "3 7 25 19 -> 63"
    difficulty: int      # arith: number of operations; countdown: how many numbers are given


@dataclass
class ParsedCompletion:
    steps: list          # the step lines, in order (str)
    answer: str | None   # the final answer line, None when missing
    is_well_formed: bool # a `</think>` line, then one non-empty answer line, nothing after
    reason: str          # why it is not well formed ("" when it is)


@dataclass
class Verdict:
    is_correct: bool
    answer: str | None           # the parsed final answer, None when there is none
    reason: str                  # why it is wrong ("" when correct)
    is_well_formed: bool
    step_ok: list = field(default_factory=list)  # per step: is the prefix up to and including it still sound


def shown_problem(problem):
    """The problem as the prompt shows it: units digit first (`7+38*2-15` -> `7+83*2-51`, `19 18 5 -> 77` ->
    `91 81 5 -> 77`), the order of the thinking, so that copying a number or comparing one is plain."""
    return flip_digits(problem.text)


def format_prompt(problem):
    """The prompt the model reads: the task tag, the problem as shown (shown_problem), `<think>`."""
    return f"{problem.task}: {shown_problem(problem)}\n{THINK}\n"


def format_completion(steps, answer):
    return "".join(step + "\n" for step in steps) + f"{END_THINK}\n{answer}"


_DIGIT_RUN = re.compile(r"[0-9]+")


def flip_digits(text):
    """Reverse every run of digits: '38*2=76;7+76' <-> '83*2=67;7+67'. Applying it twice gives the text back."""
    return _DIGIT_RUN.sub(lambda match: match.group()[::-1], text)


def flip_thinking(completion):
    """A completion with the digits of its thinking flipped (see Digit order) and the answer lines untouched."""
    lines = to_text(completion).split("\n")
    end = lines.index(END_THINK) if END_THINK in lines else len(lines)
    return "\n".join([flip_digits(line) for line in lines[:end]] + lines[end:])


def undo_line(state_text, move_text=None):
    """`undo;<state>`, or `undo <move>;<state>` when it names the move it gives up."""
    return f"{UNDO};{state_text}" if move_text is None else f"{UNDO} {move_text};{state_text}"


def undone_state(line):
    """The state an undo line returns to (text), or None when the line is not an undo line."""
    if not (line.startswith(UNDO + ";") or line.startswith(UNDO + " ")) or ";" not in line:
        return None
    return line.split(";", 1)[1]


def undone_move(line):
    """The move an undo line gives up (text), or None when it names none (or is not an undo line)."""
    if undone_state(line) is None or not line.startswith(UNDO + " "):
        return None
    return line[len(UNDO) + 1:line.index(";")]


def to_text(data):
    """Untrusted model output may arrive as bytes that are not UTF-8; make it text without raising."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data).decode("utf-8", errors="replace")
    if not isinstance(data, str):
        return ""
    return data


def parse_completion(completion):
    """Split what the model wrote after the prompt into steps and the answer. Never raises."""
    text = to_text(completion)
    if len(text) > MAX_COMPLETION_CHARS:
        return ParsedCompletion([], None, False, f"output longer than {MAX_COMPLETION_CHARS} characters")
    lines = text.split("\n")
    if END_THINK not in lines:
        steps = [line for line in lines if line]
        return ParsedCompletion(steps, None, False, f"no '{END_THINK}' line: the thinking never ended")
    end = lines.index(END_THINK)
    steps = lines[:end]
    after = [line for line in lines[end + 1:] if line.strip()]
    if not after:
        return ParsedCompletion(steps, None, False, f"nothing after '{END_THINK}': no final answer")
    answer = after[0].strip()
    if len(after) > 1:
        return ParsedCompletion(steps, answer, False, "more than one line after the final answer")
    if any(THINK in step or END_THINK in step for step in steps):
        return ParsedCompletion(steps, answer, False, "a step holds a think tag")
    return ParsedCompletion(steps, answer, True, "")


class ProblemError(ValueError):
    """A problem a person typed is not one of the task's problems; str(error) says what is wrong."""
