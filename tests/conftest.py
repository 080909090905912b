"""
Marks for the course assignment (assignment/): in the student copy that `python -m assignment.make` writes,
tests/graded.json maps each test to the parts whose code it reaches, and every part becomes a mark, so that
`python -m pytest -m part3` runs part 3's tests. In the repository itself there is no graded.json and no mark.
"""
import json
from pathlib import Path

GRADED = Path(__file__).with_name("graded.json")


def _graded():
    if not GRADED.exists():
        return {}
    with open(GRADED) as f:
        return json.load(f)


def pytest_configure(config):
    for part in sorted({part for parts in _graded().values() for part in parts}):
        config.addinivalue_line("markers", f"part{part}: graded by part {part} of ASSIGNMENT.md")


def pytest_collection_modifyitems(config, items):
    import pytest
    graded = _graded()
    for item in items:
        for part in graded.get(item.nodeid, ()):
            item.add_marker(getattr(pytest.mark, f"part{part}"))
