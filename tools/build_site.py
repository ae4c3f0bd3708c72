"""Build the posexplorer docs site into `_docs/` without Quarto (`make site`); `make test` runs the notebooks here.

    .venv/bin/python tools/build_site.py --out _docs [--workers 2] [context/yarn spacetime/mrope ...]

`make docs` (nbdev-docs) needs the Quarto binary, which these machines cannot install, so this script renders the
same pages with standard tools, every asset served from `_docs/` itself:

1. **Process** each notebook with nbdev's own docs processors (`nbdev.processors.FilterDefaults`, what
   `nbdev-proc-nbs` runs): front matter from the `# title` / `> description` cell, `#| hide` and `#| export` cells
   removed, `show_doc` cells added, backticked names linked to their docs. (`nbdev-proc-nbs` itself tries to
   download Quarto and rewrites `_modidx.py`, so the processors are called directly.)
2. **Execute** it, inside that processing: nbdev's `exec_show_docs` step is replaced by running the whole notebook,
   show_doc cells included, in a fresh Jupyter kernel (nbclient), cwd the notebook's own folder (as Jupyter and
   nbdev-test open it), with `TRITON_INTERPRET=1`, `PLOTLY_RENDERER=plotly_mimetype`, `POSEXPLORER_STATIC=1`. The
   cells left out are those nbdev-test leaves out (its own predicate): pyproject's `tst_flags` (`notest slow cuda`),
   `#| eval: false`, `skip_exec` front matter. A cell that raises fails the build (non-zero exit) naming the
   notebook and the cell; every notebook still runs, so one build lists every failure. This is the test of the
   notebooks in `make test`. Results are cached by content with jupyter-cache (`.jupyter_cache/`): the key is the
   code cells sent to the kernel (which cells are skipped included) plus a hash of everything else they read (every
   file under `posexplorer/`, the data under `nbs/`, requirements.lock, pyproject.toml), so a rebuild with nothing
   changed executes nothing. When .jupyter_cache/ misses, the committed store `site-cache/<folder>/<nb>.json` is
   tried (the same inputs + every code cell's source and skip flag, hashed without paths, mtimes or cell ids; the
   outputs, compact and sorted); every execution rewrites it, so a fresh clone with an up-to-date store executes
   nothing and a change re-executes exactly the notebooks whose key it changes. Cells that nbdev-docs' own show_doc
   pass would run out of context are warned about. stderr outputs are dropped from the pages.
3. **Render** with nbconvert's HTMLExporter and its "classic" full-page template, extended by
   `tools/templates/posexplorer/` (sidebar, header, table of contents, pager, local plotly.js and MathJax 3). Quarto
   cell options nbdev leaves for Quarto are honoured (`echo`/`output`/`include: false`, `code-fold`, `fig-cap`),
   Pandoc-isms in markdown (`[text](url){attrs}`, `:::` divs) become HTML, headings get Pandoc's ids (nbdev's doc
   links point at them), plotly outputs become a div plus `Plotly.newPlot`, widgets a note.
4. **Lay out** the site as nbs/ is laid out: `nbs/context/yarn.ipynb` -> `_docs/context/yarn.html`, `index.html`
   at the root; every link and asset is relative (`folder/name.ipynb` links, written relative to the notebook's
   folder or to nbs/, and nbdev's doc links become relative `.html` links). The sidebar's sections and order come
   from tools/sidebar.py (GROUPS' folders, then each notebook's `order:` front matter).

Every page is checked before it is written: no `src`/`<link href>` may point off the machine (no CDN).
`build(out, nbs)` is the same thing as a library call.
"""
from __future__ import annotations

import argparse, base64, concurrent.futures as cf, hashlib, html, json, mimetypes, multiprocessing as mp, os
import posixpath, re, shutil, sys, tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
TEMPLATES = ROOT / "tools" / "templates"  # nbconvert template folder: posexplorer/ extends nbconvert's "classic"
CACHE_DIR = Path(os.environ.get("POSX_JUPYTER_CACHE", ROOT / ".jupyter_cache"))  # override: try a fresh clone
MATHJAX_DIR = ROOT / ".site-deps" / "node_modules" / "mathjax" / "es5"
EXEC_ENV = {"TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "PLOTLY_RENDERER": "plotly_mimetype", "POSEXPLORER_STATIC": "1"}  # static: `app.live` draws no widgets
# OMP_NUM_THREADS: one torch thread per kernel, since notebooks run two at a time on two cores (six heavy notebooks: 127 s -> 63 s)
CELL_TIMEOUT = 600  # seconds, as nbdev-test
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# Outputs that only work with a live kernel or load code from a CDN (bokeh/panel/holoviews loaders, raw JS).
DROP_MIMES = ("application/javascript", "application/vnd.jupyter.widget-state+json",
              "application/vnd.holoviews_load.v0+json", "application/vnd.holoviews_exec.v0+json",
              "application/vnd.bokehjs_load.v0+json", "application/vnd.bokehjs_exec.v0+json")


PANEL_MIMES = ("application/vnd.holoviews_exec.v0+json", "application/vnd.bokehjs_exec.v0+json")
_re_main = re.compile(r"\b__main__\.")  # `__main__.BlockRotary` in a signature: the public name is `BlockRotary`


class BuildError(RuntimeError):
    "A notebook failed to execute or render"


def nbdev_config():
    "nbdev's view of pyproject's [tool.nbdev] (with its defaults)"
    from nbdev.config import get_config
    return get_config(ROOT)


def page_path(nb: Path) -> str:
    "The page of a notebook, relative to the site root: nbs/context/yarn.ipynb -> `context/yarn.html` (nbdev's rule)"
    from nbdev.config import nbpath2html
    return nbpath2html(Path(nb).resolve().relative_to(NBS)).as_posix()


# ----------------------------------------------------------------------------------------------------------------
# The executor (shared with tools/build_readme.py) and its cache
# ----------------------------------------------------------------------------------------------------------------
def skip_predicate(nb, flags: list[str] | None = None):
    "nbdev-test's own rule for the cells it leaves out of `nb`: tst_flags (default pyproject's), eval: false, skip_exec"
    from nbdev.test import _skip_cell
    if flags is None:
        f = nbdev_config().get("tst_flags", "") or ""
        flags = f.split() if isinstance(f, str) else list(f)
    return _skip_cell(nb, flags)


def cells_to_skip(path: Path, flags: list[str] | None = None) -> set[int]:
    "Indices of the code cells of the notebook at `path` that nbdev-test leaves out"
    from nbdev.process import NBProcessor
    nb = NBProcessor(path, rm_directives=False).nb
    skip = skip_predicate(nb, flags)
    return {i for i, c in enumerate(nb.cells) if c.cell_type == "code" and skip(c)}


def execute_notebook(nb, cwd: Path | None = None, timeout: int = CELL_TIMEOUT, flags: list[str] | None = None,
                     env: dict | None = None, skip: set[int] | None = None, name: str | None = None):
    """Run a notebook (a path, or an nbformat notebook with `skip` and `name`) in a fresh Jupyter kernel, cwd `cwd`
    (default: the notebook's folder, else nbs/), env `os.environ` + `EXEC_ENV` + `env`, leaving out the code cells
    nbdev-test leaves out (`skip`: their indices). Returns the executed notebook; raises `BuildError` naming the
    notebook and the cell that raised."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    from jupyter_client.manager import AsyncKernelManager

    if isinstance(nb, (str, Path)):
        path = Path(nb).resolve()
        nb, name, cwd = nbformat.read(path, as_version=4), name or path.name, cwd or path.parent
        if skip is None: skip = cells_to_skip(path, flags)
    skip, name, cwd = skip or set(), name or "notebook", cwd or NBS

    class Client(NotebookClient):
        current = None

        async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
            if cell.cell_type == "code" and cell_index in skip:
                cell.outputs, cell.execution_count = [], None
                return cell
            self.current = cell_index
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)

        def create_kernel_manager(self):
            # IPC sockets in a private folder: no TCP port, nothing written next to the notebooks
            self.km = AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(Path(self.sockdir) / "k"),
                                         config=self.config)
            return self.km

    kenv = {**os.environ, **EXEC_ENV, **(env or {})}
    kenv.pop("IN_TEST", None)  # docs show the full notebook, not its test-time shortcuts
    with tempfile.TemporaryDirectory(prefix="posx-kernel-") as tmp:
        client = Client(nb, timeout=timeout, allow_errors=False, record_timing=False, resources={"metadata": {"path": str(cwd)}})
        client.sockdir = tmp
        try:
            client.execute(env=kenv)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
            i = client.current
            cell = nb.cells[i] if i is not None else None
            where = (cell.metadata.get("posx_where") or f"cell {i} (id {cell.get('id', '?')})") if cell is not None \
                else "kernel start"
            msg = _re_ansi.sub("", str(e)).strip()
            if cell is not None and not isinstance(e, CellExecutionError):  # nbclient's message has no source
                msg = "--- cell source ---\n" + cell.source + "\n--- error ---\n" + msg
            raise BuildError(f"{name}: {where} raised {type(e).__name__}\n{msg}") from None
    return nb


def inputs_key() -> str:
    "A hash of what the notebooks read besides their own cells: posexplorer/, data under nbs/, the pinned tools"
    h = hashlib.sha256(json.dumps(sorted(EXEC_ENV.items())).encode())
    files = [p for p in (ROOT / "posexplorer").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    files += [p for p in NBS.rglob("*") if p.is_file() and p.suffix != ".ipynb" and p.name != "_quarto.yml"
              and not any(s.startswith(".") for s in p.relative_to(NBS).parts)]
    for p in sorted(files) + [ROOT / "requirements.lock", ROOT / "pyproject.toml"]:
        if p.is_file(): h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


TEST_IMPORT = re.compile(r"^\s*from (test_\w+|conftest) import", re.M)  # a notebook that takes its references from tests/ (the ledger)


def tests_key(node) -> str:
    """A hash of tests/*.py for a notebook that imports from them (any test may import another), else '': the ledger's
    outputs follow the references it measures against"""
    if not any(c.cell_type == "code" and TEST_IMPORT.search(c.source) for c in node.cells): return ""
    h = hashlib.sha256()
    for p in sorted((ROOT / "tests").glob("*.py")): h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return "+tests:" + h.hexdigest()


STORE_DIR = ROOT / "site-cache"  # committed: a fresh clone takes the outputs from here instead of executing


def store_key(node, key: str) -> str:
    """The committed store's key: `key` (`inputs_key()`: posexplorer/, nbs data, the pins, hashed by relative path and
    bytes) plus every code cell's source and whether it is skipped. No absolute path, mtime or cell id enters it."""
    h = hashlib.sha256(key.encode())
    for c in node.cells:
        if c.cell_type == "code":
            h.update(b"\0" + str(bool(c.metadata.get("posx_skip"))).encode() + b"\0" + c.source.encode())
    return h.hexdigest()


def store_load(node, store: Path, skey: str):
    "The notebook `node` with the outputs stored in `store` under `skey`, or None when the store misses"
    try: rec = json.loads(store.read_text())
    except (OSError, ValueError): return None
    codes = [c for c in node.cells if c.cell_type == "code"]
    if rec.get("key") != skey or len(rec.get("cells", ())) != len(codes): return None
    import nbformat
    for c, r in zip(codes, rec["cells"]):
        c.outputs = [nbformat.from_dict(o) for o in r["outputs"]]
        c.execution_count = r["execution_count"]
    return node


def store_save(done, store: Path, skey: str):
    "Write the executed outputs of `done` to `store` under `skey`: compact, sorted, no timestamps (deterministic)"
    cells = [{"execution_count": c.get("execution_count"), "outputs": c.get("outputs", [])}
             for c in done.cells if c.cell_type == "code"]
    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": skey, "cells": cells}, sort_keys=True, separators=(",", ":")) + "\n")
    tmp.replace(store)


def execute_cached(node, path: Path, skip: set[int], key: str):
    """`execute_notebook` through jupyter-cache: jupyter-cache hashes the code cells with their metadata, so the
    skipped cells are marked there and `key` (`inputs_key()`) is stored on the first cell. Returns (notebook whose
    code cells carry the outputs, whether it ran)."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn
    key += tests_key(node)
    node.cells[0].metadata["posx_inputs"] = key
    for i in skip: node.cells[i].metadata["posx_skip"] = True
    cache = get_cache(str(CACHE_DIR))
    try: return cache.get_cache_bundle(cache.match_cache_notebook(node).pk).nb, False
    except KeyError: pass
    name = path.relative_to(NBS).as_posix()
    skey, store = store_key(node, key), STORE_DIR / (name[:-len(".ipynb")] + ".json")
    if ran := (done := store_load(node, store, skey)) is None:
        done = execute_notebook(node, cwd=path.parent, skip=skip, name=name)
        store_save(done, store, skey)
    cache.cache_notebook_bundle(CacheBundleIn(done, uri=name), check_validity=False, overwrite=True)
    return done, ran


_re_ansi = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_KEEP = {"cell_type", "id", "metadata", "source", "outputs", "execution_count", "attachments"}


def _to_nbformat(fnb):
    "A fastcore (nbdev) notebook as an nbformat one, without nbdev's scratch keys"
    import nbformat
    from fastcore.nbio import nb2str
    from nbformat.v4.rwbase import rejoin_lines
    d = json.loads(nb2str(fnb))
    d["cells"] = [{k: v for k, v in c.items() if k in _KEEP} for c in d["cells"]]
    for c in d["cells"]:
        c.get("metadata", {}).pop("execution", None)  # execnb's timings (not schema-valid)
        if c["cell_type"] == "code": c.setdefault("outputs", []); c.setdefault("execution_count", None)
    return rejoin_lines(nbformat.from_dict(d))


def _names(tree) -> tuple[set[str], set[str]]:
    "The names a cell reads, and those it defines or imports (an approximation: enough for a lint)"
    import ast
    loads, stores = set(), set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name): (loads if isinstance(n.ctx, ast.Load) else stores).add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): stores.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            stores.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, ast.arg): stores.add(n.arg)
        elif isinstance(n, ast.ExceptHandler) and n.name: stores.add(n.name)
        elif isinstance(n, (ast.Global, ast.Nonlocal)): stores.update(n.names)
    return loads, stores


def _nbdev_docs_lint(nb, name: str, ids: dict, skip) -> list[str]:
    """Cells that `nbdev-docs` (Quarto) would mishandle: its show_doc pass (nbdev's `exec_show_docs`) re-runs alone
    every cell with an import anywhere in it, flagged `notest`/`slow`/`cuda` cells included. Such a cell that reads
    names from earlier cells breaks the real docs build, though this build and nbdev-test pass."""
    import ast, warnings
    try: from nbdev.processors import _do_eval
    except ImportError: return []
    import builtins
    out, defined = [], set(dir(builtins)) | {"show_doc", "get_ipython", "display", "In", "Out"}
    for c in nb.cells:  # walk the cells nbdev's shell runs, in order, tracking what they define
        if c.cell_type != "code": continue
        try: tree = ast.parse(split_directives(c.source)[1])
        except SyntaxError: continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try: runs = _do_eval(c)
            except Exception: runs = False
        if not runs: continue
        loads, stores = _names(tree)
        free = sorted(loads - stores - defined)
        defined |= stores
        d = getattr(c, "directives_", None) or {}
        if c.get("id") not in ids or d.keys() & {"export", "exports", "exporti", "exec_doc"}: continue
        where = f"{name}: cell {ids[c['id']]} (id {c['id']})"
        if free: out.append(f"{where} has an import, so nbdev-docs' show_doc pass re-runs it alone, where "
                            f"{', '.join(free[:6])} {'is' if len(free) == 1 else 'are'} undefined: put the import in "
                            f"a cell of its own")
        elif skip(c) and not all(isinstance(t, (ast.Import, ast.ImportFrom)) for t in tree.body):
            out.append(f"{where} is skipped by nbdev-test, but has an import, so nbdev-docs' show_doc pass runs it: "
                       f"put the import in a cell of its own")
    return out


def _processor(key: str):
    "nbdev's docs processors, with `exec_show_docs` replaced by running the whole notebook in a kernel (cached)"
    from nbdev.process import Processor
    from nbdev.processors import FilterDefaults, exec_show_docs
    from fastcore.nbio import dict2nb

    class exec_in_kernel(Processor):
        "Run every cell (the show_doc cells nbdev added included) in order in one Jupyter kernel"
        def begin(self):
            import nbformat
            nb, path = self.nb, Path(self.nb.path_).resolve()
            name = path.relative_to(NBS).as_posix()
            ids = {c.get("id"): i for i, c in enumerate(json.loads(path.read_text())["cells"])}
            skip = skip_predicate(nb)
            nb.lint_ = _nbdev_docs_lint(nb, name, ids, skip)
            node = _to_nbformat(nb)
            node.cells.insert(0, nbformat.v4.new_code_cell("from nbdev.showdoc import show_doc"))
            for c in node.cells[1:]:
                if c.cell_type == "code":
                    c.metadata["posx_where"] = (f"cell {ids[c['id']]} (id {c['id']})" if c.get("id") in ids
                                                else "a show_doc cell added by nbdev")
            skipped = {i + 1 for i, c in enumerate(nb.cells) if c.cell_type == "code" and skip(c)}
            done, nb.executed_ = execute_cached(node, path, skipped, key)
            codes = [c for c in dict2nb(json.loads(nbformat.writes(done))).cells if c.cell_type == "code"][1:]
            for c, e in zip([c for c in nb.cells if c.cell_type == "code"], codes):
                c["outputs"], c["execution_count"] = e.get("outputs", []), e.get("execution_count")

    class Filter(FilterDefaults):
        def base_procs(self): return [exec_in_kernel if p is exec_show_docs else p for p in super().base_procs()]
    return Filter()


# ----------------------------------------------------------------------------------------------------------------
# Markdown: pandoc-isms, escapes
# ----------------------------------------------------------------------------------------------------------------
_re_code = re.compile(r"(^```.*?^```[ \t]*$|^~~~.*?^~~~[ \t]*$|`+[^`\n]*`+)", re.S | re.M)
_re_link_attrs = re.compile(r"\[([^\]\n]*)\]\(([^)\s]+)\)\{([^}\n]*)\}")
_re_div_open = re.compile(r"^:::+\s*(?:\{([^}]*)\}|([\w-]+))\s*$")
_re_div_close = re.compile(r"^:::+\s*$")


def _pandoc_attrs(s: str) -> str:
    "Pandoc attributes `.cls #id key=\"v\"` as an HTML attribute string"
    classes, out = [], []
    for tok in re.findall(r'[^\s=]+="[^"]*"|[^\s=]+=\S+|\S+', s):
        if tok.startswith("."): classes.append(tok[1:])
        elif tok.startswith("#"): out.append(f'id="{html.escape(tok[1:])}"')
        elif "=" in tok:
            k, v = tok.split("=", 1)
            out.append(f'{k}="{html.escape(v.strip(chr(34)))}"')
    if classes: out.insert(0, f'class="{" ".join(classes)}"')
    return " ".join(out)


def _fix_text(s: str) -> str:
    "Outside code: link attributes and escaped dollars"
    s = _re_link_attrs.sub(lambda m: f'<a href="{html.escape(m[2])}" {_pandoc_attrs(m[3])}>{m[1]}</a>', s)
    return re.sub(r"(?<!\\)\\\$", '<span class="tex2jax_ignore">&#36;</span>', s)


def fix_markdown(md: str) -> str:
    "Turn the Pandoc/Quarto markdown that nbdev emits into what nbconvert's mistune renders right"
    lines, depth = [], 0
    in_fence = False
    for line in md.splitlines():
        if line.lstrip().startswith(("```", "~~~")): in_fence = not in_fence
        if not in_fence and (m := _re_div_open.match(line)):
            attrs = _pandoc_attrs(m[1]) if m[1] is not None else f'class="{m[2]}"'
            if "callout" in attrs: attrs = attrs.replace('class="', 'class="callout ', 1)
            lines += ["", f"<div {attrs}>", ""]; depth += 1; continue
        if not in_fence and depth and _re_div_close.match(line):
            lines += ["", "</div>", ""]; depth -= 1; continue
        lines.append(line)
    md = "\n".join(lines) + "\n</div>\n" * depth
    parts = _re_code.split(md)
    return "".join(p if i % 2 else _fix_text(p) for i, p in enumerate(parts))


# ----------------------------------------------------------------------------------------------------------------
# Cells and outputs
# ----------------------------------------------------------------------------------------------------------------
_re_directive = re.compile(r"^\s*#\s*\|\s*([^\s:]+)\s*:?\s?(.*?)\s*$")


def split_directives(source: str) -> tuple[dict, str]:
    "Leading `#| key: value` lines of a code cell as a dict, and the rest of the source"
    lines, d = source.splitlines(True), {}
    i = 0
    while i < len(lines) and (m := _re_directive.match(lines[i])):
        d[m[1]] = m[2].strip().strip("\"'"); i += 1
    return d, "".join(lines[i:]).strip("\n")


def _false(v) -> bool: return str(v).lower() in ("false", "no", "0")


def plotly_html(spec: dict, div_id: str) -> str:
    "A plotly figure as a div and a Plotly.newPlot call (config gets responsive: true)"
    def js(o): return json.dumps(o, separators=(",", ":")).replace("</", "<\\/")
    config = {**spec.get("config", {}), "responsive": True}
    return (f'<div id="{div_id}" class="plotly-graph-div tex2jax_ignore" style="width:100%;"></div>\n'
            f'<script>addEventListener("DOMContentLoaded", () => Plotly.newPlot("{div_id}", '
            f'{js(spec.get("data", []))}, {js(spec.get("layout", {}))}, {js(config)}));</script>')
    # DOMContentLoaded: plotly.js is a `defer` script (one shared file, cached by the browser), run before that event


def prepare_cells(nb, stem: str) -> dict:
    "Apply Quarto cell options and rewrite outputs, in place. Returns page info: title, description, plotly, math"
    import yaml
    info = {"title": stem, "description": "", "plotly": False, "stderr": False}
    nb.metadata.pop("widgets", None)  # widget state nbdev saves: no widget manager on a static page
    cells, n_plot = [], 0
    for cell in nb.cells:
        if cell.cell_type == "raw":
            s = cell.source.strip()
            if s.startswith("---") and not cells:  # the frontmatter cell nbdev makes
                fm = yaml.safe_load(s.strip("-\n")) or {}
                info["title"] = str(fm.get("title", info["title"]))
                info["description"] = str(fm.get("description", ""))
            continue  # raw cells are for other formats
        if cell.cell_type == "markdown":
            if cell.source.strip().startswith("<!-- WARNING: THIS FILE WAS AUTOGENERATED"): continue
            cell.source = fix_markdown(cell.source)
            cells.append(cell); continue
        d, src = split_directives(cell.source)
        if _false(d.get("include", "true")): continue
        cell.source = src
        meta = cell.metadata.setdefault("posx", {})
        if _false(d.get("echo", "true")) or not src.strip(): meta["hide_input"] = True
        if "code-fold" in d and not _false(d["code-fold"]):
            meta["fold"] = "show" if d["code-fold"] == "show" else "hide"
            meta["summary"] = d.get("code-summary", "Code")
        if d.get("fig-cap"): meta["caption"] = str(d["fig-cap"]).strip('"')
        if _false(d.get("output", "true")): cell.outputs = []
        outs = []
        for o in cell.get("outputs", []):
            data = o.get("data")
            if o.get("output_type") == "stream" and o.get("name") == "stderr":
                info["stderr"] = True; continue  # library warnings and progress bars: noise on a docs page
            if data is None:
                outs.append(o); continue
            if any(m in data for m in PANEL_MIMES):  # a Panel/Bokeh view: needs its server or a CDN loader
                o.data = {"text/html": '<p class="widget-note">An interactive Panel app: run <code>make serve</code> '
                                       'or the notebook in Jupyter to use it.</p>'}
                outs.append(o); continue
            if PLOTLY_MIME in data:
                n_plot += 1; info["plotly"] = True
                o.data = {"text/html": plotly_html(data[PLOTLY_MIME], f"{stem}-plot-{n_plot}")}
            elif WIDGET_MIME in data:
                o.data = {"text/html": '<p class="widget-note">An interactive widget: run the notebook in Jupyter '
                                       'to use it.</p>'}
            else:
                for m in DROP_MIMES: data.pop(m, None)
                if not data: continue
                if "text/markdown" in data:
                    md = data["text/markdown"]
                    md = fix_markdown("".join(md) if isinstance(md, list) else md)
                    data["text/markdown"] = _re_main.sub("", md)  # show_doc of a class defined in the notebook
            outs.append(o)
        cell.outputs = outs
        if meta.get("hide_input") and not outs: continue
        cells.append(cell)
    nb.cells = cells
    return info


# ----------------------------------------------------------------------------------------------------------------
# Rendering: nbconvert's classic page, our template (tools/templates/posexplorer)
# ----------------------------------------------------------------------------------------------------------------
def _exporter():
    from nbconvert import HTMLExporter
    return HTMLExporter(template_name="posexplorer", extra_template_basedirs=[str(TEMPLATES)],
                        exclude_input_prompt=True, exclude_output_prompt=True, sanitize_html=False)


def _slug(text: str, seen: dict) -> str:
    "Pandoc's auto identifier (what Quarto gives headings and nbdev's doc links point at), made unique"
    s = re.sub(r"[^\w\s.-]", "", text, flags=re.U).strip().lower()
    s = re.sub(r"\s+", "-", s)
    s = re.sub(r"^[^a-z]+", "", s) or "section"
    n = seen.get(s, 0); seen[s] = n + 1
    return s if n == 0 else f"{s}-{n}"


def _href(target: str, page: str) -> str:
    "A site-root-relative `target` as seen from `page` (both relative to the site root)"
    path, _, frag = target.partition("#")
    return posixpath.relpath(path, posixpath.dirname(page) or ".") + (f"#{frag}" if frag else "")


def postprocess(page_html: str, nb: Path, site_url: str, pages: set[str]) -> tuple[str, list[str]]:
    """Pandoc heading ids and the table of contents, local images inlined, `.ipynb` links and nbdev's doc links made
    relative `.html` links. Returns the page and what it could not resolve."""
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(page_html, "html.parser")
    page, body, seen, missing = page_path(nb), soup.find("article", class_="page-body"), {}, []
    toc = soup.find("nav", class_="page-toc")
    for h in body.find_all(["h1", "h2", "h3", "h4", "h5", "h6"]):
        for a in h.find_all("a", class_="anchor-link"): a.decompose()
        text = h.get_text(" ", strip=True)
        h["id"] = hid = _slug(text, seen)
        a = soup.new_tag("a", href=f"#{hid}", **{"class": "anchor-link"}); a.string = "¶"
        h.append(a)
        if h.name in ("h2", "h3") and not h.find_parent(class_="output_area"):
            li = soup.new_tag("li", **{"class": f"l{h.name[1]}"}); link = soup.new_tag("a", href=f"#{hid}")
            link.string = text; li.append(link); toc.ul.append(li)
    if len(toc.ul.find_all("li")) < 2: toc.decompose()

    def local(src: str) -> Path | None:
        "A path written relative to the notebook's folder, or (the project's convention) to nbs/"
        f = (nb.parent / src).resolve()
        return f if f.exists() else (NBS / src).resolve() if (NBS / src).exists() else None
    for img in body.find_all("img", src=True):  # inlined: nbconvert's embed_images re-parses raw HTML blocks
        src = img["src"]
        if "://" in src or src.startswith("data:"): continue
        if not (f := local(src)) or not f.is_file(): missing.append(f"image {src}"); continue
        mime = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        img["src"] = f"data:{mime};base64,{base64.b64encode(f.read_bytes()).decode()}"
    for a in body.find_all("a", href=True):
        href = a["href"]
        if site_url and href.startswith(site_url):  # nbdev's doc links: https://host/base/context/yarn.html#x
            target = href[len(site_url):]
            if target.partition("#")[0] in pages: a["href"] = _href(target, page)
        elif "://" not in href and not href.startswith(("#", "mailto:", "data:")) and ".ipynb" in href:
            path, _, frag = href.partition("#")
            f = local(path)
            if f is None or NBS not in f.parents: missing.append(f"link {href}"); continue
            a["href"] = _href(page_path(f) + (f"#{frag}" if frag else ""), page)
    return str(soup), missing


def check_offline(page: str, name: str):
    "Every src= and <link href=> must stay on this machine (relative, data: or 127.0.0.1)"
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(page, "html.parser")
    bad = []
    for tag in soup.find_all(src=True): bad.append(tag["src"])
    for tag in soup.find_all("link", href=True): bad.append(tag["href"])
    bad = [u for u in bad if re.match(r"^(https?:)?//", u.strip(), re.I) and not re.match(r"^(https?:)?//127\.0\.0\.1[:/]", u)]
    if bad: raise BuildError(f"{name}: page would load from off the machine (CDN?): {sorted(set(bad))[:5]}")


def render_notebook(path: str, site_url: str, sections: list, site: str, key: str) -> dict:
    """Execute (or take from the cache), process and render one notebook into its full page. `sections`:
    [(section, [(title, page), ...]), ...] in reading order. Returns {'page', 'html', 'lint', 'seconds', 'executed'}"""
    from fastcore.nbio import read_nb
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    t0, path = time.time(), Path(path)
    fnb = read_nb(path)
    _processor(key)(fnb)  # nbdev's docs processing, executing the notebook on the way (see the module docstring)
    nb = _to_nbformat(fnb)
    info = prepare_cells(nb, path.stem)
    page = page_path(path)
    order = [(p, t) for _, items in sections for t, p in items]
    i = [p for p, _ in order].index(page) if page in dict(order) else None
    near = lambda j: (_href(order[j][0], page), order[j][1]) if i is not None and 0 <= j < len(order) else None
    desc = info["description"]
    desc_html = markdown2html_mistune(fix_markdown(desc)).strip() if desc else ""
    if desc_html.startswith("<p>"): desc_html = '<p class="description">' + desc_html[3:]
    nb.metadata["title"] = site if info["title"] == site else f"{info['title']} – {site}"
    up = posixpath.relpath(".", posixpath.dirname(page) or ".")
    px = dict(root="" if up == "." else up + "/", site=site, title=info["title"], description_html=desc_html,
              description_text=re.sub(r"\s+", " ", desc), plotly=info["plotly"], math=False,
              sidebar=[(s, [(t, _href(p, page), p == page) for t, p in items]) for s, items in sections],
              prev=near(i - 1) if i is not None else None, next=near(i + 1) if i is not None else None)
    text = "".join(c.source for c in nb.cells if c.cell_type == "markdown") + desc + "".join(
        str(v) for c in nb.cells for o in c.get("outputs", []) for v in o.get("data", {}).values())
    px["math"] = "$" in text or "\\(" in text or "\\[" in text
    out, _ = _exporter().from_notebook_node(nb, resources={"metadata": {"path": str(path.parent), "name": path.stem},
                                                            "posx": px})
    out, missing = postprocess(out, path, site_url, {p for p, _ in order})
    check_offline(out, page)
    name = path.relative_to(NBS).as_posix()
    lint = list(getattr(fnb, "lint_", []) or []) + [f"{name}: {m} not found" for m in missing]
    return {"page": page, "html": out, "lint": lint, "seconds": time.time() - t0,
            "executed": getattr(fnb, "executed_", True)}


def _worker_init():
    "Workers run nbdev's processors: the project's config is found from nbs/, env as the kernels"
    os.environ.update(EXEC_ENV)
    os.chdir(NBS)


def copy_assets(out: Path):
    "Our CSS, plotly.js from the installed plotly package, MathJax from .site-deps, nbs/images"
    import plotly
    shutil.copy2(TEMPLATES / "posexplorer" / "static" / "style.css", out / "style.css")
    shutil.copy2(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", out / "plotly.min.js")
    if not (MATHJAX_DIR / "tex-chtml.js").exists():
        raise BuildError(f"MathJax is missing: run `make .site-deps/node_modules/mathjax/es5/tex-chtml.js` "
                         f"(npm install --prefix .site-deps mathjax@3)")
    shutil.copytree(MATHJAX_DIR, out / "mathjax", ignore=shutil.ignore_patterns("sre", "*-full*", "node-main.js"))
    if (NBS / "images").is_dir(): shutil.copytree(NBS / "images", out / "images")


# ----------------------------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------------------------
def find_notebook(n: str, every: list[Path]) -> Path:
    "A notebook named as a path (from here or nbs/, `.ipynb` optional) or by its name alone"
    for p in (Path(n), NBS / n):
        for q in (p, p.with_suffix(".ipynb")):
            if q.is_file(): return q.resolve()
    hits = [p for p in every if p.stem == Path(n).stem]
    if len(hits) == 1: return hits[0]
    raise BuildError(f"no such notebook: {n}" + (f" (which of {[p.relative_to(NBS).as_posix() for p in hits]}?)" if hits else ""))


def build(out: Path, nbs: list | None = None, workers: int = 2, progress: bool = True) -> list[Path]:
    """Build the site into `out` (replaced): every project notebook, or only `nbs` (paths or names like
    "context/yarn"). Every notebook runs; raises `BuildError` listing those that fail, before `out` is touched."""
    from tqdm.auto import tqdm
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sidebar
    out = Path(out) if Path(out).is_absolute() else ROOT / out
    every = sidebar.notebooks()
    todo = every if nbs is None else [find_notebook(str(n), every) for n in nbs]
    if not todo: raise BuildError(f"no notebooks in {NBS}")
    cfg = nbdev_config()
    site = cfg.get("title") or cfg.get("lib_name") or "posexplorer"
    site_url = f"{cfg.get('doc_host', '')}{cfg.get('doc_baseurl', '')}".rstrip("/") + "/"
    sections = [(s, [(t, page_path(p)) for t, p in items]) for s, items in sidebar.sections(sorted(set(every) | set(todo)))]
    key = inputs_key()
    from jupyter_cache import get_cache
    get_cache(str(CACHE_DIR)).list_cache_records()  # create the cache's database here, not in two workers at once
    todo = sorted(todo, key=lambda p: -p.stat().st_size)  # longest first, so that the workers finish together

    results, errors, t0 = {}, [], time.time()
    import build_site as task  # workers unpickle the task by module name: `build_site`, however this was loaded
    with cf.ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo))), mp_context=mp.get_context("spawn"),
                                initializer=task._worker_init) as pool:  # spawn: torch and triton dislike fork
        futs = {pool.submit(task.render_notebook, str(p), site_url, sections, site, key): p for p in todo}
        bar = tqdm(total=len(futs), desc="notebooks", unit="nb", disable=not progress, file=sys.stderr)
        for f in cf.as_completed(futs):
            name = futs[f].relative_to(NBS).as_posix()
            try: results[name] = r = f.result()
            except BuildError as e: errors.append(str(e)); r = None
            except Exception as e:
                errors.append(f"{name}: {type(e).__name__}: {e}\n{''.join(traceback.format_exception(e))}"); r = None
            bar.set_postfix_str(f"{name} {'failed' if r is None else ('%.0fs' % r['seconds'])}"); bar.update()
        bar.close()
    for name, r in sorted(results.items()):
        for w in r["lint"]: print(f"warning: {w}", file=sys.stderr)
    if errors: raise BuildError(f"{len(errors)} of {len(todo)} notebook(s) failed:\n\n" + "\n\n".join(sorted(errors)))
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    copy_assets(out)
    for r in results.values():
        (out / r["page"]).parent.mkdir(parents=True, exist_ok=True)
        (out / r["page"]).write_text(r["html"], encoding="utf-8")
    (out / ".nojekyll").touch()
    if progress:
        ran = sorted(((n, r) for n, r in results.items() if r["executed"]), key=lambda x: -x[1]["seconds"])
        print(f"built {len(results)} page(s) into {out} in {time.time() - t0:.0f}s; executed {len(ran)} notebook(s)"
              f"{': ' if ran else ''}{', '.join('%s %.0fs' % (n, r['seconds']) for n, r in ran)}; the rest from "
              f"{os.path.relpath(CACHE_DIR, ROOT)}/ or site-cache/", file=sys.stderr)
    return [out / r["page"] for r in results.values()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="_docs", help="output folder (replaced)")
    ap.add_argument("--workers", type=int, default=2, help="notebooks executed at once")
    ap.add_argument("nbs", nargs="*", help="only these notebooks, e.g. context/yarn (default: every notebook)")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import build_site  # workers unpickle `build_site.render_notebook`, not `__main__.render_notebook`
    try: build_site.build(Path(a.out), a.nbs or None, workers=a.workers)
    except build_site.BuildError as e:
        print(f"\nerror: docs build failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
