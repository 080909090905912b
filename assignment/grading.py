"""
A pytest plugin that assignment.make loads (`-p assignment.grading`) into the suites it runs; the repository's own
test command never loads it. Two modes, chosen by the environment:

- probe (NR_ASSIGNMENT_MODE=probe), in a copy of the solution whose marked regions call
  `nano_reasoner._assignment_probe.hit(N)` as they start: every hit is appended to the file that NR_ASSIGNMENT_HITS
  names, and this plugin points that variable at a fresh file for each test and for each fixture's setup. Child
  processes inherit the variable, so a test that runs a script in a subprocess is measured too. A test grades the
  parts its own hits name plus those of every fixture it uses (a module-scoped fixture runs once, for the first test
  that asks for it, and the later ones must not look independent of it).
- outcomes (NR_ASSIGNMENT_MODE=outcomes), in the student copy: what happened to every test, and whether the report
  (traceback and captured output) names NotImplementedError.

Both write one JSON file, NR_ASSIGNMENT_OUT: {"tests": {nodeid: {"outcome", "not_implemented", "parts"}},
"collection_errors": [...]}.
"""
import json
import os
import tempfile

import pytest

MODE = os.environ.get("NR_ASSIGNMENT_MODE")
HITS_VARIABLE = "NR_ASSIGNMENT_HITS"

_tests = {}                 # nodeid -> {"outcome", "not_implemented", "parts"}
_fixture_parts = {}         # fixture name -> parts reached while setting it up
_collection_errors = []
_hits_folder = tempfile.mkdtemp(prefix="assignment-hits-") if MODE == "probe" else None
_files_made = 0


def _fresh_hits_file():
    global _files_made
    _files_made += 1
    return os.path.join(_hits_folder, f"{_files_made}.hits")


def _read_hits(path):
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        return {int(line) for line in f if line.strip()}


def _fixture_key(fixturedef):
    """One fixture: its name where it is defined (two modules may each define a fixture called `tokenizer`)."""
    return f"{fixturedef.baseid}::{fixturedef.argname}"


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    if MODE != "probe":
        yield
        return
    outer = os.environ.get(HITS_VARIABLE)
    path = os.environ[HITS_VARIABLE] = _fresh_hits_file()
    try:
        yield
    finally:
        _fixture_parts.setdefault(_fixture_key(fixturedef), set()).update(_read_hits(path))
        if outer is None:
            os.environ.pop(HITS_VARIABLE, None)
        else:
            os.environ[HITS_VARIABLE] = outer


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if MODE != "probe":
        yield
        return
    path = os.environ[HITS_VARIABLE] = _fresh_hits_file()
    try:
        yield
    finally:
        os.environ.pop(HITS_VARIABLE, None)
        parts = _read_hits(path)
        for definitions in item._fixtureinfo.name2fixturedefs.values():
            parts |= _fixture_parts.get(_fixture_key(definitions[-1]), set())  # the definition this test uses
        _tests.setdefault(item.nodeid, {"outcome": "passed", "not_implemented": False})["parts"] = sorted(parts)


def pytest_runtest_logreport(report):
    if MODE is None:
        return
    record = _tests.setdefault(report.nodeid, {"outcome": "passed", "not_implemented": False, "parts": []})
    if report.failed:
        # a failure in setup or teardown counts as the test's failure too
        record["outcome"] = "failed" if report.when == "call" else "error"
        text = report.longreprtext + "".join(content for _, content in report.sections)
        record["not_implemented"] = record["not_implemented"] or "NotImplementedError" in text
    elif report.skipped and record["outcome"] == "passed":
        record["outcome"] = "skipped"


def pytest_collectreport(report):
    if MODE is not None and report.failed:
        _collection_errors.append(f"{report.nodeid}: {report.longreprtext.splitlines()[-1] if report.longreprtext else ''}")


def pytest_sessionfinish(session, exitstatus):
    if MODE is None:
        return
    with open(os.environ["NR_ASSIGNMENT_OUT"], "w") as f:
        json.dump({"tests": _tests, "collection_errors": _collection_errors}, f, indent=1)
