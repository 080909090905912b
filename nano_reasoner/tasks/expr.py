"""
Integer expressions, parsed and evaluated safely.

Both tasks read arithmetic that a model wrote: the steps of an `arith` trace, the final expression of a `countdown`
answer. Model output is untrusted text, so it is never handed to Python's `eval`. Instead this file holds a small
recursive-descent parser for the grammar

    expr   := term (('+' | '-') term)*
    term   := factor ('*' factor)*
    factor := NUMBER | '-' NUMBER | '(' expr ')'

which gives standard precedence (`*` before `+ -`) and left associativity (`9-3-2` is `(9-3)-2`). A minus sign
directly in front of digits is part of the number (`5*-3`), which is how negative intermediate results are written.

Every input is bounded before any work is done (length, digits per number, number of operations, nesting depth), so
a 1 MB string, a 10,000-digit number or `((((...))))` is rejected with a reason instead of hanging or overflowing the
stack. Errors are `ExprError` with a short human-readable reason; nothing else ever escapes `parse`.

A parsed expression is a tree of plain tuples: `("num", value)` or `(op, left, right)` with op in `+ - *`.
`to_text` prints a tree with the fewest parentheses that parse back to the *same tree*, so the text of a problem and
the trees the tasks reduce step by step always agree.
"""

MAX_CHARS = 400         # longer text is not an expression any task produces
MAX_DIGITS = 12         # per number; keeps every product small and fast
MAX_OPS = 40            # operations in one expression
MAX_DEPTH = 40          # nesting of parentheses

PRECEDENCE = {"+": 1, "-": 1, "*": 2}


class ExprError(ValueError):
    """The text is not an expression we accept; str(error) says why."""


def _is_digit(ch):
    return "0" <= ch <= "9"  # ASCII only: str.isdigit() also accepts '²' and other scripts' digits


def _tokenize(text):
    if not isinstance(text, str):
        raise ExprError("not text")
    if len(text) > MAX_CHARS:
        raise ExprError(f"expression longer than {MAX_CHARS} characters")
    tokens = []  # ("num", int) | ("op", ch) | ("(",) | (")",)
    i = 0
    n_ops = 0
    while i < len(text):
        ch = text[i]
        if ch == " ":
            i += 1
            continue
        is_sign = ch == "-" and (not tokens or tokens[-1][0] in ("op", "(")) and i + 1 < len(text) and _is_digit(text[i + 1])
        if _is_digit(ch) or is_sign:
            j = i + 1
            while j < len(text) and _is_digit(text[j]):
                j += 1
            if j - i - is_sign > MAX_DIGITS:
                raise ExprError(f"number with more than {MAX_DIGITS} digits")
            tokens.append(("num", int(text[i:j])))
            i = j
        elif ch in "+-*":
            n_ops += 1
            if n_ops > MAX_OPS:
                raise ExprError(f"more than {MAX_OPS} operations")
            tokens.append(("op", ch))
            i += 1
        elif ch in "()":
            tokens.append((ch,))
            i += 1
        else:
            raise ExprError(f"unexpected character {ch!r}")
    if not tokens:
        raise ExprError("empty expression")
    return tokens


class _Parser:
    def __init__(self, tokens):
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def expr(self):
        node = self.term()
        while self.peek() is not None and self.peek()[0] == "op" and self.peek()[1] in "+-":
            op = self.tokens[self.pos][1]
            self.pos += 1
            node = (op, node, self.term())
        return node

    def term(self):
        node = self.factor()
        while self.peek() == ("op", "*"):
            self.pos += 1
            node = ("*", node, self.factor())
        return node

    def factor(self):
        token = self.peek()
        if token is None:
            raise ExprError("expression ends too early")
        self.pos += 1
        if token[0] == "num":
            return token
        if token[0] == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExprError(f"parentheses nested deeper than {MAX_DEPTH}")
            node = self.expr()
            if self.peek() != (")",):
                raise ExprError("missing ')'")
            self.pos += 1
            self.depth -= 1
            return node
        raise ExprError(f"expected a number or '(' but found {token[-1]!r}")


def parse(text):
    """Text -> expression tree, or ExprError with the reason."""
    parser = _Parser(_tokenize(text))
    tree = parser.expr()
    if parser.pos != len(parser.tokens):
        raise ExprError(f"unexpected {parser.tokens[parser.pos][-1]!r} after the expression")
    return tree


def evaluate(tree):
    """The exact integer value of a tree (depth is bounded by parse, so recursion is safe)."""
    if tree[0] == "num":
        return tree[1]
    left, right = evaluate(tree[1]), evaluate(tree[2])
    if tree[0] == "+":
        return left + right
    if tree[0] == "-":
        return left - right
    return left * right


def count_ops(tree):
    return 0 if tree[0] == "num" else 1 + count_ops(tree[1]) + count_ops(tree[2])


def numbers(tree):
    """The number literals of a tree, left to right."""
    return [tree[1]] if tree[0] == "num" else numbers(tree[1]) + numbers(tree[2])


def to_text(tree):
    """Print with the fewest parentheses that parse back to this exact tree (left-associative grammar)."""
    if tree[0] == "num":
        return str(tree[1])
    op, left, right = tree
    left_text, right_text = to_text(left), to_text(right)
    if left[0] != "num" and PRECEDENCE[left[0]] < PRECEDENCE[op]:
        left_text = f"({left_text})"
    # a right child of equal precedence needs parentheses too: a-(b-c) differs from a-b-c, and even for + and * the
    # tree a+(b+c) would re-parse as (a+b)+c, which reduces in another order
    if right[0] != "num" and PRECEDENCE[right[0]] <= PRECEDENCE[op]:
        right_text = f"({right_text})"
    return f"{left_text}{op}{right_text}"


def first_reducible(tree, path=()):
    """Path (tuple of 1/2 child indices) to the first operation, in evaluation order, whose operands are both numbers.

    Evaluation order is the post-order of the tree: left subtree, right subtree, then the node. This is the order in
    which a person applies standard precedence, one operation at a time. Returns None for a bare number."""
    if tree[0] == "num":
        return None
    for child in (1, 2):
        found = first_reducible(tree[child], path + (child,))
        if found is not None:
            return found
    return path


def subtree(tree, path):
    for child in path:
        tree = tree[child]
    return tree


def replace(tree, path, new):
    if not path:
        return new
    parts = list(tree)
    parts[path[0]] = replace(tree[path[0]], path[1:], new)
    return tuple(parts)
