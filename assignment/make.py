"""
Write the student copy of the repository (the package docstring says what it is), and check that its tests grade it.

    python -m assignment.make --out ../student            # about two minutes on 2 cores: it runs the suite once
    python -m assignment.make --out ../student --check    # then runs the copy's suite and checks the grading (CI)

Steps: (1) find the marked regions and check that they pair up; (2) run the solution's suite in a probe copy to learn
which tests reach which part (grading.py); (3) write the copy: every region replaced by a `raise NotImplementedError`
at its indentation, tests/graded.json, ASSIGNMENT.md; (4) with --check, run the copy's suite: every graded test must
fail with NotImplementedError, every other test pass, nothing fail to collect.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass

from assignment.parts import PARTS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION part (\d+)\s*$")
END = re.compile(r"^(\s*)# END SOLUTION\s*$")
PROBE_MODULE = "nano_reasoner/_assignment_probe.py"
PROBE_SOURCE = '''"""Written by assignment.make into its probe copy only: each marked region calls hit(N) as it starts."""
import os

_written = set()


def hit(part):
    path = os.environ.get("NR_ASSIGNMENT_HITS")
    if path and (path, part) not in _written:
        _written.add((path, part))
        with open(path, "a") as f:
            f.write(f"{part}\\n")
'''
PROBE_CALL = '__import__("nano_reasoner._assignment_probe", fromlist=["hit"]).hit({part})'
SKIPPED_FOLDERS = {".git", "runs", "__pycache__", ".pytest_cache", ".hypothesis"}


class AssignmentError(Exception):
    """What is wrong, in one line, for the person running make."""


@dataclass
class Region:
    part: int
    begin: int      # index of the BEGIN marker's line
    end: int        # index of the END marker's line
    indent: str     # the markers' indentation, which the stub takes


def find_regions(path, text):
    """The marked regions of one file, checked: they pair up, do not nest, are not empty, sit inside a function (so
    the stubbed module still imports) and have BEGIN and END at one indentation."""
    regions, open_region = [], None
    for index, line in enumerate(text.split("\n")):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if open_region is not None:
                raise AssignmentError(f"{path}:{index + 1}: BEGIN SOLUTION inside the region opened at line "
                                      f"{open_region.begin + 1}: close it with # END SOLUTION first")
            if not begin.group(1):
                raise AssignmentError(f"{path}:{index + 1}: a region at module level would not import as a stub: "
                                      f"mark the body of a function")
            open_region = Region(int(begin.group(2)), index, -1, begin.group(1))
        elif end:
            if open_region is None:
                raise AssignmentError(f"{path}:{index + 1}: END SOLUTION without a BEGIN SOLUTION before it")
            if end.group(1) != open_region.indent:
                raise AssignmentError(f"{path}:{index + 1}: END SOLUTION is not at the indentation of its BEGIN "
                                      f"(line {open_region.begin + 1})")
            if index == open_region.begin + 1:
                raise AssignmentError(f"{path}:{index + 1}: an empty region: mark the lines the student writes")
            open_region.end = index
            regions.append(open_region)
            open_region = None
    if open_region is not None:
        raise AssignmentError(f"{path}:{open_region.begin + 1}: BEGIN SOLUTION is never closed: add # END SOLUTION")
    return regions


def stub_text(text, regions, titles):
    """Each region, markers included, becomes one `raise NotImplementedError("part N: title")` at its indentation."""
    lines = text.split("\n")
    for region in sorted(regions, key=lambda r: r.begin, reverse=True):
        message = f"part {region.part}: {titles[region.part]} (ASSIGNMENT.md)"
        lines[region.begin:region.end + 1] = [f"{region.indent}raise NotImplementedError({message!r})"]
    return "\n".join(lines)


def probe_text(text, regions):
    """The solution with a call to the probe as the first statement of every region (the markers stay)."""
    lines = text.split("\n")
    for region in sorted(regions, key=lambda r: r.begin, reverse=True):
        lines.insert(region.begin + 1, region.indent + PROBE_CALL.format(part=region.part))
    return "\n".join(lines)


def repository_files(root):
    """The files a copy holds: what git tracks or would track (never runs/ or caches); every file when root is not
    a git checkout."""
    try:
        listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                                 capture_output=True, text=True, check=True).stdout.split("\n")
        return sorted(path for path in listing if path and os.path.isfile(os.path.join(root, path)))
    except (OSError, subprocess.CalledProcessError):
        files = []
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = [s for s in subfolders if s not in SKIPPED_FOLDERS]
            files.extend(os.path.relpath(os.path.join(folder, name), root) for name in names)
        return sorted(files)


def marked_files(root, files):
    """{path: regions} for every Python file of the package that holds a marked region, checked against PARTS. Only
    the package is read: the probe lives there, and tests may hold markers in strings (tests/test_assignment.py)."""
    by_file = {}
    for path in files:
        if path.endswith(".py") and path.startswith("nano_reasoner/"):
            with open(os.path.join(root, path)) as f:
                regions = find_regions(path, f.read())
            if regions:
                by_file[path] = regions
    marked = {region.part for regions in by_file.values() for region in regions}
    listed = {part.number for part in PARTS}
    if marked != listed:
        raise AssignmentError(f"parts marked in the code {sorted(marked)} differ from assignment/parts.py "
                              f"{sorted(listed)}: mark every listed part and list every marked one")
    return by_file


def write_copy(root, files, out, transform):
    """Copy files from root to out, passing marked Python files through transform(path, text)."""
    for path in files:
        target = os.path.join(out, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        changed = transform(path)
        if changed is None:
            shutil.copy2(os.path.join(root, path), target)
        else:
            with open(target, "w") as f:
                f.write(changed)


def run_suite(folder, mode, label):
    """Run the folder's test suite with the grading plugin in `mode`; -> the plugin's JSON and pytest's exit code."""
    result_path = os.path.join(folder, f".assignment-{mode}.json")
    environment = dict(os.environ, NR_ASSIGNMENT_MODE=mode, NR_ASSIGNMENT_OUT=result_path,
                       PYTHONPATH=folder + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"== {label}: python -m pytest -q -p assignment.grading (in {folder})", flush=True)
    exit_code = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "assignment.grading", "-p", "no:cacheprovider"],
                               cwd=folder, env=environment).returncode
    if not os.path.exists(result_path):
        raise AssignmentError(f"{label}: pytest wrote no results (exit {exit_code}): run it by hand in {folder}")
    with open(result_path) as f:
        results = json.load(f)
    os.remove(result_path)
    return results, exit_code


def grading_map(root, files, by_file):
    """Run the solution's suite in a probe copy -> ({test nodeid: [parts it reaches]} for every test that reaches
    one, the number of tests run)."""
    with tempfile.TemporaryDirectory(prefix="assignment-probe-") as probe:
        def transform(path):
            if path not in by_file:
                return None
            with open(os.path.join(root, path)) as f:
                return probe_text(f.read(), by_file[path])
        write_copy(root, files, probe, transform)
        with open(os.path.join(probe, PROBE_MODULE), "w") as f:
            f.write(PROBE_SOURCE)
        results, exit_code = run_suite(probe, "probe", "the solution, probed")
    failing = [nodeid for nodeid, test in results["tests"].items() if test["outcome"] in ("failed", "error")]
    if exit_code != 0 or failing or results["collection_errors"]:
        raise AssignmentError(f"the solution's own suite does not pass ({len(failing)} failing, e.g. "
                              f"{(failing + results['collection_errors'] + ['?'])[0]}): fix it before making the copy")
    graded = {nodeid: test["parts"] for nodeid, test in sorted(results["tests"].items()) if test["parts"]}
    return graded, len(results["tests"])


def assignment_markdown(graded, num_tests):
    """ASSIGNMENT.md: the parts in order, what to read, the tests that grade each, what a solution reaches."""
    tests_of = {part.number: [nodeid for nodeid, parts in graded.items() if part.number in parts] for part in PARTS}
    lines = [
        "# The nano-reasoner assignment", "",
        f"This copy of nano-reasoner has {len(PARTS)} holes: each `raise NotImplementedError(\"part N: ...\")` is "
        "code you write. The parts follow the README's story, from the trace the model learns to the policy that "
        "compresses it; each file's docstring teaches its idea and cites its paper. Read it, then fill the hole.", "",
        f"The tests grade you. Of the {num_tests} tests, {len(graded)} reach at least one hole and fail until it is "
        "filled; the rest pass from the start. `python -m pytest -m partN -q` runs part N's tests; a test that also "
        "needs earlier parts says so by failing on their hole first, so work in order. When every part is done, "
        "`python -m pytest -q` passes and `python pipeline.py --preset tiny` trains the whole story (about 35 "
        "minutes on a 2-core CPU) to the numbers below.", "",
    ]
    for part in PARTS:
        tests = tests_of[part.number]
        alone = [nodeid for nodeid in tests if graded[nodeid] == [part.number]]
        also = Counter(other for nodeid in tests for other in graded[nodeid] if other != part.number)
        needs = ", ".join(f"part {other}" for other in sorted(also))
        lines += [
            f"## Part {part.number}: {part.title}", "",
            f"- Write: `{part.where}`",
            f"- Read: {part.read}",
            f"- Graded by: `python -m pytest -m part{part.number} -q`: {len(tests)} tests, {len(alone)} of them need "
            f"this part alone" + (f"; the others also need {needs}" if needs else ""),
            f"- A correct solution reaches: {part.reaches}", "",
        ]
        examples = sorted(tests, key=lambda nodeid: len(graded[nodeid]))[:3]  # those that need the fewest parts
        if examples:
            lines += ["  Start with: " + ", ".join(f"`{nodeid}`" for nodeid in examples), ""]
    return "\n".join(lines)


def check_copy(out, graded):
    """Run the student copy's suite and check that it grades: -> a list of problems (empty when it does)."""
    results, _ = run_suite(out, "outcomes", "the student copy")
    problems = [f"collection error: {error}" for error in results["collection_errors"]]
    counts = Counter()
    for nodeid, test in sorted(results["tests"].items()):
        if nodeid in graded:
            if test["outcome"] in ("failed", "error") and test["not_implemented"]:
                counts["graded"] += 1
            else:
                how = "passed" if test["outcome"] == "passed" else f"{test['outcome']} without NotImplementedError"
                problems.append(f"{nodeid}: graded by part(s) {graded[nodeid]} but {how}")
        elif test["outcome"] in ("passed", "skipped"):
            counts["ungraded"] += 1
        else:
            problems.append(f"{nodeid}: reaches no part but {test['outcome']} in the student copy")
    missing = set(graded) - set(results["tests"])
    problems += [f"{nodeid}: graded but did not run in the student copy" for nodeid in sorted(missing)]
    print(f"student copy: {counts['graded']} graded tests fail with NotImplementedError, {counts['ungraded']} "
          f"others pass, {len(results['collection_errors'])} collection errors")
    return problems


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the student copy (must not exist, or be empty)")
    parser.add_argument("--check", action="store_true", help="then run the copy's suite and check the grading")
    parser.add_argument("--grading", help="reuse a tests/graded.json written before instead of probing the suite")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise AssignmentError(f"--out {args.out} already exists and is not an empty folder: give a new folder")
    if os.path.commonpath([out, REPO]) == REPO:
        raise AssignmentError(f"--out {args.out} is inside the repository: put the student copy outside it")
    files = repository_files(REPO)
    by_file = marked_files(REPO, files)
    print(f"{sum(len(r) for r in by_file.values())} marked regions in {len(by_file)} files, {len(PARTS)} parts")
    if args.grading:
        try:
            with open(args.grading) as f:
                graded = json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            raise AssignmentError(f"--grading {args.grading}: cannot read it ({error}): omit it to probe the suite")
        num_tests = None  # counted in the copy
    else:
        graded, num_tests = grading_map(REPO, files, by_file)
    titles = {part.number: part.title for part in PARTS}

    def transform(path):
        if path not in by_file:
            return None
        with open(os.path.join(REPO, path)) as f:
            return stub_text(f.read(), by_file[path], titles)
    write_copy(REPO, files, out, transform)
    with open(os.path.join(out, "tests", "graded.json"), "w") as f:
        json.dump(graded, f, indent=1)
    with open(os.path.join(out, "ASSIGNMENT.md"), "w") as f:
        f.write(assignment_markdown(graded, num_tests if num_tests is not None else _count_tests(out)))
    per_part = Counter(part for parts in graded.values() for part in parts)
    print(f"wrote {out}: ASSIGNMENT.md, tests/graded.json ({len(graded)} graded tests; by part: "
          + ", ".join(f"{part}: {per_part[part]}" for part in sorted(per_part)) + ")")
    if args.check:
        problems = check_copy(out, graded)
        unreached = sorted({part.number for part in PARTS} - set(per_part))
        problems += [f"part {part}: no test reaches it" for part in unreached]
        if len(graded) < 10:
            problems.append(f"only {len(graded)} graded tests: the assignment needs at least 10")
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        if problems:
            raise AssignmentError(f"the student copy does not grade: {len(problems)} problems above")
        print("the student copy grades: every graded test fails with NotImplementedError, every other test passes")


def _count_tests(folder):
    """How many tests the suite collects in folder (with the default options, slow tests left out)."""
    listing = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider"],
                             cwd=folder, capture_output=True, text=True).stdout
    return sum(1 for line in listing.split("\n") if "::" in line)


if __name__ == "__main__":
    try:
        main()
    except AssignmentError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
