"""
Assignment mode (assignment/): the markers pair up, the stub and the probe are written exactly, every stubbed file of
the repository still compiles, and the maker refuses bad input in one line. The full check (the student copy's suite
fails exactly on its graded tests) runs the suite twice, so CI runs it as its own step: `python -m assignment.make
--out DIR --check` in .ci/run.
"""
import importlib.util
import os
import subprocess
import sys

import pytest

from assignment import make
from assignment.parts import PARTS

SOURCE = '''def f(x):
    """Doc."""
    y = x + 1
    # BEGIN SOLUTION part 2
    if y > 3:
        y = y * 2
    # END SOLUTION
    return y


class A:
    def g(self):
        # BEGIN SOLUTION part 5
        return 7
        # END SOLUTION
'''


def test_regions_are_found_with_their_part_lines_and_indentation():
    regions = make.find_regions("toy.py", SOURCE)
    assert [(r.part, r.begin, r.end, r.indent) for r in regions] == [(2, 3, 6, "    "), (5, 12, 14, "        ")]


def test_stub_replaces_each_region_by_one_raise_at_its_indentation(tmp_path):
    stubbed = make.stub_text(SOURCE, make.find_regions("toy.py", SOURCE), {2: "two", 5: "five"})
    assert stubbed == '''def f(x):
    """Doc."""
    y = x + 1
    raise NotImplementedError('part 2: two (ASSIGNMENT.md)')
    return y


class A:
    def g(self):
        raise NotImplementedError('part 5: five (ASSIGNMENT.md)')
'''
    (tmp_path / "toy_stubbed.py").write_text(stubbed)
    spec = importlib.util.spec_from_file_location("toy_stubbed", tmp_path / "toy_stubbed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the stub imports: its holes raise only when called
    with pytest.raises(NotImplementedError, match="part 2: two"):
        module.f(1)


def test_probe_calls_first_and_keeps_the_solution():
    probed = make.probe_text(SOURCE, make.find_regions("toy.py", SOURCE))
    lines = probed.split("\n")
    assert lines[4] == "    " + make.PROBE_CALL.format(part=2)
    assert lines[14] == "        " + make.PROBE_CALL.format(part=5)
    # without the probe lines it is the solution again
    assert "\n".join(line for line in lines if "_assignment_probe" not in line) == SOURCE


@pytest.mark.parametrize("text, reason", [
    ("def f():\n    # BEGIN SOLUTION part 1\n    x = 1\n    # BEGIN SOLUTION part 2\n", "inside the region opened at line 2"),
    ("def f():\n    x = 1\n    # END SOLUTION\n", "END SOLUTION without a BEGIN"),
    ("def f():\n    # BEGIN SOLUTION part 1\n    x = 1\n", "never closed"),
    ("# BEGIN SOLUTION part 1\nx = 1\n# END SOLUTION\n", "module level"),
    ("def f():\n    # BEGIN SOLUTION part 1\n    x = 1\n  # END SOLUTION\n", "not at the indentation"),
    ("def f():\n    # BEGIN SOLUTION part 1\n    # END SOLUTION\n", "an empty region"),
])
def test_bad_markers_are_refused_with_the_line_and_the_fix(text, reason):
    with pytest.raises(make.AssignmentError, match=reason):
        make.find_regions("bad.py", text)


@pytest.mark.skipif(os.path.exists(os.path.join(make.REPO, "tests", "graded.json")),
                    reason="a student copy: its markers are replaced by stubs")
def test_the_repository_marks_every_listed_part_and_every_stub_compiles():
    files = make.repository_files(make.REPO)
    by_file = make.marked_files(make.REPO, files)
    assert {r.part for regions in by_file.values() for r in regions} == {p.number for p in PARTS}
    assert len(PARTS) >= 15 and [p.number for p in PARTS] == list(range(1, len(PARTS) + 1))
    titles = {p.number: p.title for p in PARTS}
    for path, regions in by_file.items():
        with open(os.path.join(make.REPO, path)) as f:
            text = f.read()
        stubbed = make.stub_text(text, regions, titles)
        compile(stubbed, path, "exec")
        compile(make.probe_text(text, regions), path, "exec")
        assert stubbed.count("raise NotImplementedError(") == len(regions)
        assert "BEGIN SOLUTION" not in stubbed and "END SOLUTION" not in stubbed


def test_assignment_markdown_lists_each_part_with_its_tests():
    graded = {"tests/test_a.py::test_one": [2], "tests/test_a.py::test_two": [2, 3], "tests/test_b.py::test_x": [1]}
    text = make.assignment_markdown(graded, num_tests=10)
    assert "Of the 10 tests, 3 reach at least one hole" in text
    part2 = text.split("## Part 2:")[1].split("## Part 3:")[0]
    assert "2 tests, 1 of them need this part alone; the others also need part 3" in part2
    assert "Start with: `tests/test_a.py::test_one`, `tests/test_a.py::test_two`" in part2


@pytest.mark.parametrize("out, reason", [
    ("taken", "already exists and is not an empty folder"),
    ("INSIDE", "is inside the repository"),
])
def test_make_refuses_a_bad_out_folder_in_one_line(tmp_path, out, reason):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("mine")
    target = os.path.join(make.REPO, "runs", "student") if out == "INSIDE" else str(tmp_path / out)
    result = subprocess.run([sys.executable, "-m", "assignment.make", "--out", target], cwd=make.REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and reason in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "taken" / "file.txt").read_text() == "mine"
