"""The faithfulness ledger (`posexplorer.core.ledger`, nbs/core/ledger.ipynb): a row for every registered encoding, every
test it names exists in tests/, every "our reading" says what it rests on, and the live rows are the ones the page measures."""
import ast, json
from pathlib import Path
import pytest
from posexplorer.core import names
from posexplorer.core.ledger import LEDGER, KINDS, Row

TESTS = Path(__file__).parent
NB = TESTS.parent / "nbs/core/ledger.ipynb"

def _test_functions(file:str) -> set:
    "Names of the top-level test functions of tests/<file>"
    path = TESTS / file
    assert path.exists(), f"the ledger names {file}, which is not in tests/"
    return {n.name for n in ast.parse(path.read_text()).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test_")}

def test_every_registered_encoding_has_a_row():
    assert set(LEDGER) == set(names()), (set(names()) - set(LEDGER), set(LEDGER) - set(names()))
    assert all(k == r.name and isinstance(r, Row) for k, r in LEDGER.items())

@pytest.mark.parametrize("name", sorted(LEDGER))
def test_every_named_test_exists(name):
    for t in LEDGER[name].tests:
        file, func = t.split("::")
        assert func in _test_functions(file), f"{name}: {t} does not exist"

def test_rows_are_complete():
    for r in LEDGER.values():
        assert r.kind in KINDS, r.name
        assert r.reference.strip() and r.compared.strip() and r.difference.strip() and r.tests, r.name
        assert r.live or "recorded" in r.difference, f"{r.name}: a number not measured on the page must say it is recorded"

def test_our_readings_are_marked_and_say_what_they_rest_on():
    readings = {r.name for r in LEDGER.values() if r.kind == "our reading"}
    assert {"eva02at", "star", "dens3r", "rpe2d", "mousi", "rope_alibi_harmonic"} <= readings
    assert all("rest" in LEDGER[n].reference for n in readings)

def test_live_rows_are_measured_on_the_page():
    "The notebook's MEASURED dict has exactly the live rows as keys (read from its source, not run: the page runs in `make test`)"
    src = "\n".join("".join(c["source"]) for c in json.loads(NB.read_text())["cells"] if c["cell_type"] == "code")
    measured = next(n for n in ast.walk(ast.parse(src.replace("#|", "# |"))) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "MEASURED")
    keys = {k.value for k in measured.value.keys}
    assert keys == {r.name for r in LEDGER.values() if r.live}
    assert {"rope", "linear", "ntk", "yarn", "llama3", "longrope"} <= keys

def test_page_is_in_the_sidebar():
    "Front matter: title and an order, so tools/sidebar.py places the page in the Foundation section"
    first = "".join(json.loads(NB.read_text())["cells"][0]["source"])
    assert first.startswith("# Faithfulness ledger") and "- order:" in first
