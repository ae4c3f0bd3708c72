"""Build the posexplorer docs site into `_docs/` without Quarto (`make site`).

    .venv/bin/python tools/build_site.py --out _docs [--workers 2] [nbs/10_rope.ipynb ...]

`make docs` (nbdev-docs) needs the Quarto binary, which these machines cannot install, so this script
renders the same pages with standard tools, every asset served from `_docs/` itself:

1. **Process** each notebook with nbdev's own docs processors (`nbdev.processors.FilterDefaults`: what
   `nbdev-proc-nbs` runs on every notebook): frontmatter from the `# title` / `> description` cell, `#| hide` and
   `#| export` cells removed (exported symbols are documented by the `show_doc` cells nbdev adds after them),
   `#| exports` shown folded, backticked names linked to their docs. We call the processors rather than the
   `nbdev-proc-nbs` command, which is unworkable here: it first tries to download and install Quarto (root and the
   internet), writes `nbs/nbdev.yml` and rebuilds `posexplorer/_modidx.py` as side effects.
2. **Execute**, inside that processing: nbdev's `exec_show_docs` step (which re-runs only exported cells, cells with
   an import and show_doc cells in an in-process shell, over notebooks whose outputs are cleared in git) is
   replaced by running the whole notebook, the show_doc cells included, in order, in a fresh Jupyter kernel
   (nbclient), cwd `nbs/`, with `TRITON_INTERPRET=1` and `PLOTLY_RENDERER=plotly_mimetype`. The cells left out are
   exactly those nbdev-test leaves out (nbdev's own predicate): flags in pyproject's `[tool.nbdev] tst_flags`
   (`notest slow cuda`), `#| eval: false`, `skip_exec` frontmatter. A cell that raises stops the build with a
   non-zero exit, naming the notebook and the cell. Cells that nbdev-docs' own show_doc pass would run out of
   context (an import plus code that reads earlier cells' names) are reported as warnings.
3. **Render** with nbconvert's HTMLExporter ("basic" template: body only) and honour the Quarto cell options that
   nbdev leaves for Quarto (`echo: false`, `output: false`, `include: false`, `code-fold`, `code-summary`;
   `output: asis` markdown is rendered as markdown). Pandoc-isms in markdown (`[text](url){attrs}`, `:::` fenced
   divs) become HTML; heading ids follow Pandoc's rule, so nbdev's doc links (`core.html#inv_freq`) are rewritten
   to our page names (`00_core.html#inv_freq`). Plotly outputs become a `div.plotly-graph-div` plus a
   `Plotly.newPlot` call (plotly.js copied from the installed `plotly` package), `$...$` / `$$...$$` math is
   typeset by a local MathJax 3 (`.site-deps`, installed by the Makefile).
4. **Wrap** each body in our page template: a sidebar built from `nbs/_quarto.yml` (`website.sidebar.contents`;
   entries whose notebook does not exist yet are skipped, notebooks not listed go under "Other"), the page title
   and description, an "On this page" list, `style.css` and nbconvert's pygments CSS. `index.ipynb` becomes
   `index.html`, `NN_name.ipynb` becomes `NN_name.html`.

Every page is checked before it is written: no `src`/`<link href>` may point off the machine (no CDN).
Notebooks run two at a time (`--workers`). `build(out, nbs)` is the same thing as a library call.
"""
from __future__ import annotations

import argparse, base64, concurrent.futures as cf, html, json, mimetypes, multiprocessing as mp, os, re, shutil, sys
import tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
MATHJAX_DIR = ROOT / ".site-deps" / "node_modules" / "mathjax" / "es5"
EXEC_ENV = {"TRITON_INTERPRET": "1", "PLOTLY_RENDERER": "plotly_mimetype", "POSEXPLORER_STATIC": "1"}  # static: `app.live` draws no widgets
CELL_TIMEOUT = 600  # seconds, as nbdev-test
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# Outputs that only work with a live kernel or load code from a CDN (bokeh/panel/holoviews loaders, raw JS).
DROP_MIMES = ("application/javascript", "application/vnd.jupyter.widget-state+json",
              "application/vnd.holoviews_load.v0+json", "application/vnd.holoviews_exec.v0+json",
              "application/vnd.bokehjs_load.v0+json", "application/vnd.bokehjs_exec.v0+json")


class BuildError(RuntimeError):
    "A notebook failed to execute or render"


# ----------------------------------------------------------------------------------------------------------------
# Project settings
# ----------------------------------------------------------------------------------------------------------------
def nbdev_config():
    "nbdev's view of pyproject's [tool.nbdev] (with its defaults)"
    from nbdev.config import get_config
    return get_config(ROOT)


def skip_flags() -> list[str]:
    "nbdev's tst_flags: cells carrying one of these directives are not run"
    f = nbdev_config().get("tst_flags", "") or ""
    return f.split() if isinstance(f, str) else list(f)


def notebooks() -> list[Path]:
    "Every notebook of the project, as nbdev globs them (names starting with `_` or `.` are skipped)"
    return sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith(("_", ".")))


def page_name(nb: Path) -> str:
    "The html page of a notebook: `classics/rope.ipynb` -> `10_rope.html`"
    return nb.with_suffix(".html").name


# ----------------------------------------------------------------------------------------------------------------
# The executor (shared with tools/build_readme.py)
# ----------------------------------------------------------------------------------------------------------------
def skip_predicate(nb, flags: list[str] | None = None):
    """nbdev-test's rule for the cells it leaves out of `nb` (read by nbdev's NBProcessor): cells with a flag in
    `flags` (default: pyproject's tst_flags), `#| eval: false` cells, every cell under `skip_exec` frontmatter"""
    flags = skip_flags() if flags is None else flags
    try:
        from nbdev.test import _skip_cell  # nbdev's own predicate, so the docs run what the tests run
        return _skip_cell(nb, flags)
    except ImportError:  # pragma: no cover - a future nbdev without it: the same rule by hand
        def skip(c):
            d = getattr(c, "directives_", None) or {}
            return c.cell_type != "code" or set(flags) & d.keys() or str(d.get("eval", "")).lower() == "false"
        return skip


def cells_to_skip(path: Path, flags: list[str] | None = None) -> set[int]:
    "Indices of the code cells of the notebook at `path` that nbdev-test leaves out"
    from nbdev.process import NBProcessor
    nb = NBProcessor(path, rm_directives=False).nb
    skip = skip_predicate(nb, flags)
    return {i for i, c in enumerate(nb.cells) if c.cell_type == "code" and skip(c)}


def execute_notebook(nb, cwd: Path = NBS, timeout: int = CELL_TIMEOUT, flags: list[str] | None = None,
                     env: dict | None = None, skip: set[int] | None = None, name: str | None = None):
    """Run a notebook (a path, or an nbformat notebook with `skip` and `name`) in a fresh Jupyter kernel, cwd `cwd`,
    env `os.environ` + `EXEC_ENV` + `env`, leaving out the code cells nbdev-test leaves out (`skip`: their indices).
    Returns the executed nbformat notebook; raises `BuildError` naming the notebook and the cell that raised."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    from jupyter_client.manager import AsyncKernelManager

    if isinstance(nb, (str, Path)):
        path = Path(nb)
        nb, name = nbformat.read(path, as_version=4), name or path.name
        if skip is None: skip = cells_to_skip(path, flags)
    skip, name = skip or set(), name or "notebook"

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
        client = Client(nb, timeout=timeout, allow_errors=False, resources={"metadata": {"path": str(cwd)}})
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


def _processor():
    "nbdev's docs processors, with `exec_show_docs` replaced by running the whole notebook in a kernel"
    from nbdev.process import Processor
    from nbdev.processors import FilterDefaults, exec_show_docs
    from fastcore.nbio import dict2nb

    class exec_in_kernel(Processor):
        "Run every cell (the show_doc cells nbdev added included) in order in one Jupyter kernel"
        def begin(self):
            import nbformat
            nb, name = self.nb, Path(self.nb.path_).name
            ids = {c.get("id"): i for i, c in enumerate(json.loads(Path(nb.path_).read_text())["cells"])}
            skip = skip_predicate(nb)
            self.nb.lint_ = _nbdev_docs_lint(nb, name, ids, skip)
            node = _to_nbformat(nb)
            node.cells.insert(0, nbformat.v4.new_code_cell("from nbdev.showdoc import show_doc"))
            skipped = {i + 1 for i, c in enumerate(nb.cells) if c.cell_type == "code" and skip(c)}
            for c in node.cells[1:]:
                if c.cell_type == "code" and c.get("id") in ids:
                    c.metadata["posx_where"] = f"cell {ids[c['id']]} (id {c['id']})"
                elif c.cell_type == "code":
                    c.metadata["posx_where"] = "a show_doc cell added by nbdev"
            ex = execute_notebook(node, skip=skipped, name=name)
            done = dict2nb({"cells": [dict(c) for c in json.loads(nbformat.writes(ex, version=4))["cells"][1:]],
                            "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
            for c, e in zip(nb.cells, done.cells):
                if c.cell_type == "code": c["outputs"], c["execution_count"] = e.get("outputs", []), e.get("execution_count")

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
            f'<script>Plotly.newPlot("{div_id}", {js(spec.get("data", []))}, {js(spec.get("layout", {}))}, '
            f'{js(config)});</script>')


def prepare_cells(nb, stem: str) -> dict:
    "Apply Quarto cell options and rewrite outputs, in place. Returns page info: title, description, plotly, math"
    import yaml
    info = {"title": stem, "description": "", "plotly": False}
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
            if data is None:
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
                    data["text/markdown"] = fix_markdown("".join(md) if isinstance(md, list) else md)
            outs.append(o)
        cell.outputs = outs
        if meta.get("hide_input") and not outs: continue
        cells.append(cell)
    nb.cells = cells
    return info


# ----------------------------------------------------------------------------------------------------------------
# nbconvert
# ----------------------------------------------------------------------------------------------------------------
_TEMPLATE = r"""{%- extends 'basic/index.html.j2' -%}
{% block input_group -%}
{%- set px = cell.metadata.get('posx', {}) -%}
{%- if px.get('hide_input') -%}
{%- elif px.get('fold') -%}
<details class="code-fold"{{ ' open' if px.get('fold') == 'show' else '' }}><summary>{{ px.get('summary') | e }}</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock input_group %}
{% block output_group -%}
{{ super() }}
{%- if cell.metadata.get('posx', {}).get('caption') %}
<p class="fig-cap">{{ cell.metadata['posx']['caption'] | e }}</p>
{%- endif -%}
{%- endblock output_group %}
"""


def _exporter():
    import jinja2
    from nbconvert import HTMLExporter
    return HTMLExporter(extra_loaders=[jinja2.DictLoader({"posexplorer.html.j2": _TEMPLATE})],
                        template_file="posexplorer.html.j2", exclude_input_prompt=True,
                        exclude_output_prompt=True, sanitize_html=False)


def _slug(text: str, seen: dict) -> str:
    "Pandoc's auto identifier (what Quarto gives headings and nbdev's doc links point at), made unique"
    s = re.sub(r"[^\w\s.-]", "", text, flags=re.U).strip().lower()
    s = re.sub(r"\s+", "-", s)
    s = re.sub(r"^[^a-z]+", "", s) or "section"
    n = seen.get(s, 0); seen[s] = n + 1
    return s if n == 0 else f"{s}-{n}"


def postprocess(body: str, links: dict[str, str], site_url: str) -> tuple[str, list, list]:
    """Pandoc heading ids, local doc links, `.ipynb` links, local images inlined; returns the body, its
    (level, id, text) headings and the local images that do not exist"""
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(body, "html.parser")
    seen, toc, missing = {}, [], []
    for h in soup.find_all(["h1", "h2", "h3", "h4", "h5", "h6"]):
        for a in h.find_all("a", class_="anchor-link"): a.decompose()
        text = h.get_text(" ", strip=True)
        hid = _slug(text, seen)
        h["id"] = hid
        a = soup.new_tag("a", href=f"#{hid}", **{"class": "anchor-link"}); a.string = "¶"
        h.append(a)
        if h.name in ("h2", "h3") and not h.find_parent(class_="output_area"): toc.append((int(h.name[1]), hid, text))
    for img in soup.find_all("img", src=True):  # local images in markdown: inline them (nbconvert's embed_images
        src = img["src"]                          # re-parses raw HTML blocks and breaks `<div>` fragments)
        f = NBS / src
        if "://" in src or src.startswith("data:"): continue
        if not f.is_file():
            missing.append(src); continue
        mime = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        img["src"] = f"data:{mime};base64,{base64.b64encode(f.read_bytes()).decode()}"
    for a in soup.find_all("a", href=True):
        href = a["href"]
        if site_url and href.startswith(site_url):
            page, _, frag = href[len(site_url):].partition("#")
            if page in links: a["href"] = links[page] + (f"#{frag}" if frag else "")
            continue
        if "://" in href or href.startswith(("#", "mailto:", "data:")): continue
        page, _, frag = href.partition("#")
        if page.endswith(".ipynb"): a["href"] = Path(page).with_suffix(".html").as_posix() + (f"#{frag}" if frag else "")
    return str(soup), toc, missing


def render_notebook(path: str, links: dict[str, str], site_url: str) -> dict:
    "Execute, process and convert one notebook: {'page', 'title', 'description', 'body', 'toc', 'plotly', 'lint', ...}"
    from fastcore.nbio import read_nb
    t0 = time.time()
    path = Path(path)
    fnb = read_nb(path)
    _processor()(fnb)  # nbdev's docs processing, executing the notebook on the way (see the module docstring)
    nb = _to_nbformat(fnb)
    info = prepare_cells(nb, path.stem)
    body, _ = _exporter().from_notebook_node(nb, resources={"metadata": {"path": str(NBS), "name": path.stem}})
    body, toc, missing = postprocess(body, links, site_url)
    lint = list(getattr(fnb, "lint_", []) or []) + [f"{path.name}: image {m} not found (paths are relative to nbs/)"
                                                     for m in missing]
    return {**info, "page": page_name(path), "body": body, "toc": toc, "seconds": time.time() - t0,
            "math": "$" in body or "\\(" in body or "\\[" in body, "lint": lint}


def _worker_init():
    "Workers run nbdev's processors: the project's config is found from nbs/, env as the kernels"
    os.environ.update(EXEC_ENV)
    os.chdir(NBS)


# ----------------------------------------------------------------------------------------------------------------
# Sidebar and page
# ----------------------------------------------------------------------------------------------------------------
def nb_title(path: Path) -> str:
    "The `# Title` of a notebook's first markdown cell (nbdev's frontmatter title), else its name"
    try:
        for c in json.loads(path.read_text())["cells"]:
            if c["cell_type"] == "markdown":
                src = "".join(c["source"])
                if m := re.search(r"^\s*#\s+(.+?)\s*$", src, re.M): return m[1]
                break
            if c["cell_type"] == "raw" and (m := re.search(r"^title:\s*(.+?)\s*$", "".join(c["source"]), re.M)):
                return m[1].strip("\"'")
    except Exception: pass
    return path.stem


def sidebar_groups(available: list[Path]) -> list[tuple[str, list[tuple[str, Path]]]]:
    """Groups `[(section, [(label, notebook)])]` from nbs/_quarto.yml's `website.sidebar.contents`; entries whose
    notebook does not exist are skipped, notebooks not listed go under "Other"."""
    import yaml
    q = NBS / "_quarto.yml"
    conf = yaml.safe_load(q.read_text()) if q.exists() else {}
    contents = ((conf or {}).get("website", {}).get("sidebar", {}) or {}).get("contents", []) or []
    avail = {p.name: p for p in available}
    groups, listed = [], set()

    def entry(e):
        if isinstance(e, str): href, text = e, None
        elif isinstance(e, dict) and "href" in e: href, text = e["href"], e.get("text")
        else: return None
        name = Path(href).name
        if name not in avail: return None
        listed.add(name)
        return (text or nb_title(avail[name]), avail[name])

    loose = []
    for e in contents:
        if isinstance(e, dict) and "section" in e:
            items = [x for x in map(entry, e.get("contents", []) or []) if x]
            if items: groups.append((str(e["section"]), items))
        elif (x := entry(e)): loose.append(x)
    if loose: groups.insert(0, ("", loose))
    other = [(nb_title(p), p) for p in available if p.name not in listed]
    if other: groups.append(("Other", other))
    return groups


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{page_title}</title>
<meta name="description" content="{description_attr}">
<link rel="icon" href="data:,">
<link rel="stylesheet" href="pygments.css">
<link rel="stylesheet" href="style.css">
{head}
</head>
<body>
<nav class="sidebar" aria-label="Notebooks">
<a class="site-title" href="index.html">{site}</a>
{sidebar}
</nav>
<main class="content">
<header class="page-header">
<h1 class="title">{title}</h1>
{description}
</header>
{toc}
<article class="page-body">
{body}
</article>
{pager}
</main>
</body>
</html>
"""

_MATHJAX = """<script>
window.MathJax = {
  loader: {load: ['[tex]/textmacros']},
  tex: {packages: {'[+]': ['textmacros']}, inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
        processEscapes: true, processEnvironments: true},
  options: {ignoreHtmlClass: 'tex2jax_ignore|plotly-graph-div', processHtmlClass: 'tex2jax_process'},
  chtml: {fontURL: 'mathjax/output/chtml/fonts/woff-v2'}
};
</script>
<script id="MathJax-script" defer src="mathjax/tex-chtml.js"></script>"""

CSS = """
:root { --side: 250px; --fg: #212529; --muted: #6c757d; --accent: #2761a3; --border: #dee2e6; --code-bg: #f7f7f9; }
* { box-sizing: border-box; }
html { scroll-padding-top: 1rem; }
body { margin: 0; color: var(--fg); font: 16px/1.6 system-ui, -apple-system, "Segoe UI", Roboto,
       "Helvetica Neue", Arial, "Noto Sans", "Liberation Sans", sans-serif; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.sidebar { position: fixed; top: 0; left: 0; bottom: 0; width: var(--side); overflow-y: auto; padding: 1.2rem 1rem;
           font-size: .92rem; }
body { background: linear-gradient(90deg, #f8f9fa var(--side), var(--border) var(--side), var(--border) calc(var(--side) + 1px),
                                   #fff calc(var(--side) + 1px)); }  /* the sidebar's column, full height in screenshots */
.sidebar .site-title { display: block; font-weight: 700; font-size: 1.25rem; color: var(--fg); margin-bottom: 1rem; }
.sidebar .section { margin: 1rem 0 .3rem; color: var(--muted); font-size: .75rem; font-weight: 600;
                    text-transform: uppercase; letter-spacing: .06em; }
.sidebar ul { list-style: none; margin: 0; padding: 0; }
.sidebar li a { display: block; padding: .18rem .5rem; border-radius: 4px; color: var(--fg); }
.sidebar li a:hover { background: #e9ecef; text-decoration: none; }
.sidebar li a.active { background: var(--accent); color: #fff; }
.content { margin-left: var(--side); max-width: 1000px; padding: 1.5rem 2.5rem 4rem; }
.page-header { border-bottom: 1px solid var(--border); margin-bottom: 1.2rem; }
.page-header .title { margin: .2rem 0 .4rem; font-size: 2.2rem; }
.page-header .description { color: var(--muted); font-size: 1.1rem; margin: 0 0 1rem; }
.page-toc { display: none; }
@media (min-width: 1350px) {
  .content { margin-right: 240px; }
  .page-toc { display: block; position: fixed; top: 0; right: 0; width: 240px; max-height: 100vh; overflow-y: auto;
              padding: 1.6rem 1rem; font-size: .85rem; }
  .page-toc ul { border-left: 2px solid var(--border); padding-left: .7rem; } }
.page-toc .toc-title { font-weight: 600; margin-bottom: .4rem; }
.page-toc ul { list-style: none; margin: 0; } .page-toc li { margin: .15rem 0; } .page-toc li.l3 { padding-left: .8rem; }
h1, h2, h3, h4 { line-height: 1.25; margin: 1.6rem 0 .6rem; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2rem; }
.anchor-link { visibility: hidden; margin-left: .3rem; font-size: .8em; color: var(--muted); }
h1:hover .anchor-link, h2:hover .anchor-link, h3:hover .anchor-link, h4:hover .anchor-link { visibility: visible; }
.cell { margin: .8rem 0; }
.input_area, .highlight { background: var(--code-bg); border-radius: 6px; }
.highlight pre, .output_text pre, pre { margin: 0; padding: .7rem .9rem; overflow-x: auto; font-size: .85rem;
  line-height: 1.45; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; }
.input_area { border: 1px solid #e4e6ea; }
.output_wrapper { margin-top: .3rem; }
.output_text pre { background: #fff; border-left: 3px solid var(--border); }
.output_stderr pre { background: #fff5f5; }
code { font-size: .88em; background: var(--code-bg); padding: .08em .3em; border-radius: 3px; }
pre code { background: none; padding: 0; }
.rendered_html table, .text_cell_render table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; }
.rendered_html th, .rendered_html td { border: 1px solid var(--border); padding: .3rem .6rem; text-align: left; }
.rendered_html th { background: #f1f3f5; }
.rendered_html img, .output_png img { max-width: 100%; }
.output_markdown hr:first-child { border: 0; border-top: 1px solid var(--border); }
.output_markdown h3, .output_markdown h4 { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 1.05rem; }
p.fig-cap { color: var(--muted); font-style: italic; font-size: .92rem; margin: .2rem 0 1.2rem; }
details.code-fold > summary { cursor: pointer; color: var(--muted); font-size: .85rem; margin-bottom: .2rem; }
.plotly-graph-div { margin: .5rem 0; }
.callout { border-left: 4px solid var(--accent); background: #f3f7fc; padding: .2rem 1rem; margin: 1rem 0;
           border-radius: 4px; }
.callout-warning { border-color: #e0a800; background: #fff9e6; }
.callout-important { border-color: #c0392b; background: #fdf0ef; }
.widget-note { color: var(--muted); font-style: italic; }
.pager { display: flex; justify-content: space-between; border-top: 1px solid var(--border); margin-top: 3rem;
         padding-top: 1rem; }
@media (max-width: 900px) {
  body { background: #fff; }
  .sidebar { position: static; width: auto; background: #f8f9fa; border-bottom: 1px solid var(--border); }
  .content { margin-left: 0; padding: 1rem; } }
"""


def _sidebar_html(groups, current: str) -> str:
    out = []
    for section, items in groups:
        if section: out.append(f'<div class="section">{html.escape(section)}</div>')
        out.append("<ul>")
        for label, p in items:
            pg = page_name(p)
            cls = ' class="active" aria-current="page"' if pg == current else ""
            out.append(f'<li><a href="{pg}"{cls}>{html.escape(label)}</a></li>')
        out.append("</ul>")
    return "\n".join(out)


def _toc_html(toc) -> str:
    if len(toc) < 2: return ""
    items = "\n".join(f'<li class="l{lvl}"><a href="#{hid}">{html.escape(t)}</a></li>' for lvl, hid, t in toc)
    return f'<nav class="page-toc"><div class="toc-title">On this page</div><ul>\n{items}\n</ul></nav>'


def _pager_html(order: list[tuple[str, str]], current: str) -> str:
    pages = [p for p, _ in order]
    if current not in pages: return ""
    i = pages.index(current)
    prev = f'<a href="{order[i-1][0]}">&larr; {html.escape(order[i-1][1])}</a>' if i > 0 else "<span></span>"
    nxt = f'<a href="{order[i+1][0]}">{html.escape(order[i+1][1])} &rarr;</a>' if i + 1 < len(order) else "<span></span>"
    return f'<nav class="pager">{prev}{nxt}</nav>'


def render_page(r: dict, groups, order, site: str) -> str:
    head = []
    if r["plotly"]: head.append('<script src="plotly.min.js"></script>')
    if r["math"]: head.append(_MATHJAX)
    desc = r["description"]
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    desc_html = markdown2html_mistune(fix_markdown(desc)).strip() if desc else ""
    if desc_html.startswith("<p>"): desc_html = '<p class="description">' + desc_html[3:]
    title = r["title"]
    return _PAGE.format(
        page_title=html.escape(site if title == site else f"{title} – {site}"),
        description_attr=html.escape(re.sub(r"\s+", " ", desc)), head="\n".join(head), site=html.escape(site),
        sidebar=_sidebar_html(groups, r["page"]), title=html.escape(title), description=desc_html,
        toc=_toc_html(r["toc"]), body=r["body"], pager=_pager_html(order, r["page"]))


def check_offline(page: str, name: str):
    "Every src= and <link href=> must stay on this machine (relative, data: or 127.0.0.1)"
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(page, "html.parser")
    bad = []
    for tag in soup.find_all(src=True): bad.append(tag["src"])
    for tag in soup.find_all("link", href=True): bad.append(tag["href"])
    bad = [u for u in bad if re.match(r"^(https?:)?//", u.strip(), re.I) and not re.match(r"^(https?:)?//127\.0\.0\.1[:/]", u)]
    if bad: raise BuildError(f"{name}: page would load from off the machine (CDN?): {sorted(set(bad))[:5]}")


def copy_assets(out: Path):
    "pygments CSS, our CSS, plotly.js from the installed plotly package, MathJax from .site-deps"
    import plotly
    from pygments.formatters import HtmlFormatter
    (out / "pygments.css").write_text(HtmlFormatter(style="default").get_style_defs(".highlight") + "\n")
    (out / "style.css").write_text(CSS.lstrip())
    shutil.copy2(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", out / "plotly.min.js")
    if not (MATHJAX_DIR / "tex-chtml.js").exists():
        raise BuildError(f"MathJax is missing: run `make .site-deps/node_modules/mathjax/es5/tex-chtml.js` "
                         f"(npm install --prefix .site-deps mathjax@3)")
    shutil.copytree(MATHJAX_DIR, out / "mathjax", ignore=shutil.ignore_patterns("sre", "*-full*", "node-main.js"))
    if (NBS / "images").is_dir(): shutil.copytree(NBS / "images", out / "images")


# ----------------------------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------------------------
def build(out: Path, nbs: list | None = None, workers: int = 2, progress: bool = True) -> list[Path]:
    """Build the site into `out` (replaced): every project notebook, or only `nbs` (paths or names like
    "10_rope"). Raises `BuildError` if a notebook fails; `out` is only touched once every page is rendered."""
    from tqdm.auto import tqdm
    out = Path(out)
    if not out.is_absolute(): out = ROOT / out
    every = notebooks()
    if nbs is None: todo = every
    else:
        todo = []
        for n in nbs:
            p = Path(n)
            if not p.suffix: p = p.with_suffix(".ipynb")
            if not p.exists() and (NBS / p.name).exists(): p = NBS / p.name
            if not p.exists(): raise BuildError(f"no such notebook: {n}")
            todo.append(p.resolve())
    if not todo: raise BuildError(f"no notebooks in {NBS}")

    from nbdev.config import nbpath2html
    cfg = nbdev_config()
    site = cfg.get("title") or cfg.get("lib_name") or "posexplorer"
    site_url = f"{cfg.get('doc_host', '')}{cfg.get('doc_baseurl', '')}".rstrip("/") + "/"
    site_nbs = {p.name: p for p in every} | {p.name: p for p in todo}  # a notebook given by path wins
    links = {nbpath2html(p).name: page_name(p) for p in site_nbs.values()}
    groups = sidebar_groups(sorted(site_nbs.values(), key=lambda p: p.name))
    order = [(page_name(p), label) for _, items in groups for label, p in items]
    # longest first (the kernels and registry notebooks), so two workers finish together
    todo = sorted(todo, key=lambda p: -p.stat().st_size)

    results, t0 = {}, time.time()
    # workers unpickle the task by module name: make it `build_site`, however this module was loaded
    if str(Path(__file__).resolve().parent) not in sys.path: sys.path.insert(0, str(Path(__file__).resolve().parent))
    import build_site as task
    ctx = mp.get_context("spawn")  # torch and triton do not like being forked
    with cf.ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo))), mp_context=ctx,
                                initializer=task._worker_init) as pool:
        futs = {pool.submit(task.render_notebook, str(p), links, site_url): p for p in todo}
        bar = tqdm(total=len(futs), desc="notebooks", unit="nb", disable=not progress, file=sys.stderr)
        try:
            for f in cf.as_completed(futs):
                p = futs[f]
                try: r = f.result()
                except BuildError: raise
                except Exception as e:
                    tb = "".join(traceback.format_exception(e))
                    raise BuildError(f"{p.name}: {type(e).__name__}: {e}\n{tb}") from None
                results[p] = r
                bar.set_postfix_str(f"{p.name} {r['seconds']:.0f}s"); bar.update()
        except BaseException:
            for f in futs: f.cancel()
            raise
        finally: bar.close()

    for p, r in sorted(results.items()):
        for w in r["lint"]: print(f"warning: {w}", file=sys.stderr)
    pages = {}
    for p, r in results.items():
        page = render_page(r, groups, order, site)
        check_offline(page, r["page"])
        pages[r["page"]] = page
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    copy_assets(out)
    for name, page in pages.items(): (out / name).write_text(page, encoding="utf-8")
    (out / ".nojekyll").touch()
    if progress:
        slow = ", ".join(f"{p.name} {r['seconds']:.0f}s" for p, r in sorted(results.items(), key=lambda x: -x[1]['seconds']))
        print(f"built {len(pages)} page(s) into {out} in {time.time() - t0:.0f}s ({slow})", file=sys.stderr)
    return [out / n for n in pages]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="_docs", help="output folder (replaced)")
    ap.add_argument("--workers", type=int, default=2, help="notebooks executed at once")
    ap.add_argument("nbs", nargs="*", help="only these notebooks (default: every nbs/*.ipynb)")
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
