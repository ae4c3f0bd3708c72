"""Notebooks that call `posexplorer.tools.app.live` run headless (nbclient, as `jupyter nbconvert --execute`) in the
time their cells take (issue 15, item 6).

The stall: `live` used `ipywidgets.interact`, which draws its figure inside an Output widget by *capturing* the
cell's output (`with out:`). nbclient mimics a front end's Output widget: each captured output is synced back to
the kernel with a `comm_msg` sent on the shell socket, while nbclient is awaiting the `execute_reply` on that same
socket; the reply's wake-up is lost and nbclient only reads it when the cell timeout expires, with no error
(jupyter/nbclient#312, open). A notebook with a `live` cell therefore took its cell timeout per live cell (nbconvert:
minutes, or forever with no timeout). `live` now fills the Output widget from the kernel (`Output.append_display_data`),
so nothing is captured and nbclient sends nothing back.

The check: the notebooks run with a cell timeout well above what their cells take (a stall ends at the timeout, so
the wall time shows it) and with the widget path of `live` on (no `IN_TEST`, no `POSEXPLORER_STATIC`). The one-cell
notebook of the issue and two paper notebooks with a `live` cell run at the same time, in three kernels, to keep this
file near 25 s on two cores: nbs/context/yarn.ipynb, the one the issue saw run for over 15 minutes (10 s alone now, on
a 2-core CPU sandbox), and nbs/context/llama3.ipynb (11 s). The other paper notebooks with a live cell (pi 14 s, ntk
17 s) test nothing more.
"""
import asyncio, os, sys, time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from build_site import cells_to_skip  # nbdev-test's rule for the cells it leaves out

WIDGET = "application/vnd.jupyter.widget-view+json"
PLOTLY = "application/vnd.plotly.v1+json"
ONE_CELL = 'from posexplorer.tools.app import live\nlive("yarn,rope", tab="angles", context=4096, extended=16384)'
PAPERS = ["context/yarn.ipynb", "context/llama3.ipynb"]
TIMEOUT = 60  # seconds per cell: a stalled live cell ends exactly here; the slowest cell here takes about 10 s


def _notebook(name: str):
    "(notebook, cwd) of a paper notebook with the cells nbdev-test skips emptied, or of the one-cell notebook"
    if name == "one-cell":
        nb = nbformat.v4.new_notebook(); nb.cells = [nbformat.v4.new_code_cell(ONE_CELL)]
        return nb, ROOT
    path = ROOT / "nbs" / name
    nb = nbformat.read(path, as_version=4)
    for i in cells_to_skip(path): nb.cells[i].source = ""
    return nb, path.parent


async def _run(name: str, env: dict) -> tuple:
    "Execute one notebook in its own kernel: (executed notebook, wall seconds, client)"
    nb, cwd = _notebook(name)
    client = NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(cwd)}})
    t0 = time.perf_counter()
    await client.async_execute(env=env)
    return nb, time.perf_counter() - t0, client


@pytest.fixture(scope="module")
def executed():
    "name -> (notebook, seconds, client), the three notebooks run at once"
    env = {k: v for k, v in os.environ.items() if k not in ("IN_TEST", "POSEXPLORER_STATIC")}  # live's widget path
    env |= {"OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    names = ["one-cell", *PAPERS]
    async def run_all(): return await asyncio.wait_for(asyncio.gather(*(_run(n, env) for n in names)), 3 * TIMEOUT)
    results = asyncio.run(run_all())
    return dict(zip(names, results))


def _live_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and "live(" in c.source]


@pytest.mark.parametrize("name", ["one-cell", *PAPERS])
def test_live_notebook_runs_headless(executed, name):
    nb, seconds, client = executed[name]
    assert seconds < TIMEOUT - 5, f"{name} took {seconds:.0f} s: a live cell waited for the cell timeout ({TIMEOUT} s)"
    cells = _live_cells(nb)
    assert cells, f"{name} has no live cell"
    for cell in cells:  # live drew its widgets (no front end here, but a ZMQ kernel with ipywidgets)...
        assert any(WIDGET in o.get("data", {}) for o in cell.outputs), cell.source
    outputs = [s.get("outputs", ()) for s in client.widget_state.values() if s.get("_model_name") == "OutputModel"]
    assert any(PLOTLY in o.get("data", {}) for outs in outputs for o in outs)  # ...and its figure, inside the Output widget
