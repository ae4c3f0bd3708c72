"""The faithfulness ledger (`posexplorer.core.ledger`, nbs/core/ledger.ipynb): a row for every registered encoding, every
test it names exists in tests/, every "our reading" says what it rests on, and every row is live: measured on the page (or
listed in NOT_MEASURED with its reason), so the table cannot fall back to recorded bounds."""
import ast, json
from pathlib import Path
import pytest
from posexplorer.core import names
from posexplorer.core.ledger import LEDGER, KINDS, Row

TESTS = Path(__file__).parent
NB = TESTS.parent / "nbs/core/ledger.ipynb"
NOT_MEASURED = {}  # row name -> why the page cannot measure it (e.g. a package not installed); the row's `difference` must say it
INLINE = {  # rows whose authors' code, written again, the page cannot import from the row's own test file, and why
    "cq_nir": "test_cq_nir.py writes the grid inline in its test function",
    "neurbf": "test_neurbf.py writes the basis and the frequency table inline in its test functions",
    "hope": "test_hope.py's helpers are test_videorope.py's, which the page imports",
}

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
        assert r.live or (r.name in NOT_MEASURED and NOT_MEASURED[r.name] in r.difference), f"{r.name}: not measured on the page, and no listed reason"

def test_our_readings_are_marked_and_say_what_they_rest_on():
    readings = {r.name for r in LEDGER.values() if r.kind == "our reading"}
    assert {"eva02at", "star", "dens3r", "rpe2d", "mousi", "rope_alibi_harmonic"} <= readings
    assert all("rest" in LEDGER[n].reference for n in readings)

def _measured_keys(src:str) -> set:
    "Row names the page measures: keys of a `MEASURED = {...}` literal and of every `MEASURED['name'] = ...` (tuple targets too)"
    keys = set()
    for n in ast.walk(ast.parse(src.replace("#|", "# |"))):
        if not isinstance(n, ast.Assign): continue
        if getattr(n.targets[0], "id", "") == "MEASURED" and isinstance(n.value, ast.Dict): keys |= {k.value for k in n.value.keys}
        for t in n.targets:
            for e in (t.elts if isinstance(t, ast.Tuple) else [t]):
                if isinstance(e, ast.Subscript) and getattr(e.value, "id", "") == "MEASURED" and isinstance(e.slice, ast.Constant): keys.add(e.slice.value)
    return keys

def test_measured_keys_reads_every_form():
    assert _measured_keys('MEASURED = {"a": 1}\nMEASURED["b"] = 2\nMEASURED["c"], MEASURED["d"] = 3, 4\nOTHER["e"] = 5') == {"a", "b", "c", "d"}

def test_every_row_is_measured_on_the_page():
    "Each live row is measured by name in the notebook's code (read from its source, not run: the page runs in `make test`)"
    src = "\n".join("".join(c["source"]) for c in json.loads(NB.read_text())["cells"] if c["cell_type"] == "code")
    live = {r.name for r in LEDGER.values() if r.live}
    assert live == set(LEDGER) - set(NOT_MEASURED), set(LEDGER) - set(NOT_MEASURED) - live
    assert _measured_keys(src) == live, (live - _measured_keys(src), _measured_keys(src) - live)
    assert "assert set(MEASURED) == set(LEDGER)" in src and "g.value <= g.bound" in src  # the page checks it all at run time too

def test_written_again_references_are_imported_from_the_tests():
    "Where a test re-implements the authors' code, the page imports that test's helpers: one reference, so the two cannot drift"
    src = "\n".join("".join(c["source"]) for c in json.loads(NB.read_text())["cells"] if c["cell_type"] == "code")
    imported = {n.module for n in ast.walk(ast.parse(src.replace("#|", "# |"))) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("test_")}
    for r in LEDGER.values():
        if "written again" in r.reference and r.name not in INLINE:
            assert {t.split("::")[0][:-3] for t in r.tests} & imported, f"{r.name}: the page does not import its test's reference"
    assert "test_videorope" in imported and set(INLINE) <= set(LEDGER)

def test_page_is_in_the_sidebar():
    "Front matter: title and an order, so tools/sidebar.py places the page in the Foundation section"
    first = "".join(json.loads(NB.read_text())["cells"][0]["source"])
    assert first.startswith("# Faithfulness ledger") and "- order:" in first
