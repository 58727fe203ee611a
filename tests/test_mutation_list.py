"""The mutation list of scripts/mutations.py stays applicable (docs/testing.md).

Each mutation is an exact text replacement in product code; a refactor that changes that text would
leave the mutation unable to apply, and the mutation run would report it stale only when someone runs
it. Checking here keeps the list in step with the code, and the tests it names in existence.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_every_mutation_applies_exactly_once_and_names_existing_tests() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        mutate = _load("mutate")
        mutations = _load("mutations").MUTATIONS
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert len(mutations) >= 80
    assert mutate.check_list(mutations) == []
    for m in mutations:
        for test in m.tests:
            if not test.startswith("-"):
                assert (ROOT / test.split("::")[0]).exists(), f"{m.name}: {test} does not exist"
