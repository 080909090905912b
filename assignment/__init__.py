"""
Assignment mode: the repository as a course assignment, graded by its own tests.

The key pieces of the story are marked in the code (about fifteen: RoPE, attention over the KV cache, the sampler's
filters, budget forcing, the search-trace generator, the PRM's loss and aggregation, Monte-Carlo labels, expert
iteration's filter, GRPO's advantages and clipped loss, voting, PUCT and backup, int8 quantization, ...):

    def apply_rope(x, cos, sin):
        \"\"\"Rotate each pair ...\"\"\"
        # BEGIN SOLUTION part 2
        half = x.shape[-1] // 2
        ...
        # END SOLUTION

`python -m assignment.make --out DIR` writes a student copy in which every marked region is replaced by
`raise NotImplementedError("part 2: ...")` at its indentation, with ASSIGNMENT.md (the parts in the README's order,
what to read, the tests that grade each, the numbers a correct solution reaches) and tests/graded.json (which tests
grade which part; tests/conftest.py turns it into the marks `pytest -m part2` selects).

Which tests grade a part is measured, not declared: the solution's suite runs once in a "probe" copy whose marked
regions report that they ran (per test, fixtures and child processes included); a test grades every part whose code
it reached. So a student copy is graded exactly: a test fails if and only if it reaches a stub. `--check` runs the
student copy's suite and demands that: every graded test fails with NotImplementedError, every other test passes, and
nothing fails to collect. CI runs it.

The idea is the autograders of course notebooks: nbgrader and otter-grader strip `BEGIN SOLUTION` / `END SOLUTION`
regions; Stanford CS336 ships its assignments as stubs whose test suite starts all red.
"""
