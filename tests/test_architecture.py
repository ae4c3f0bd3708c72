"""The architecture (DESIGN.md §1, nbs/core/architecture.ipynb): layers that import only downward, a light core,
the registry as data, no import cycles, no underscore names taken from another module."""
import ast, functools, importlib, json, pkgutil, subprocess, sys
from pathlib import Path

import pytest

import posexplorer
from posexplorer.core import registry, names
from posexplorer.core.catalog import CATALOG

LIB = Path(posexplorer.__file__).parent
LAYERS = ("core", "ops", "encodings", "figures", "tools")  # each imports only from those before it (or itself)
PUBLIC_HOMES = {"kernels": "ops", "attention": "ops", "bias": "encodings", "multimodal": "encodings", "pie": "encodings", "hf": "tools"}
HEAVY = ("plotly", "panel", "bokeh", "ipywidgets", "tqdm", "ray")  # UI and tool libraries: extras, never in the light layers


def modules() -> dict:
    "module name -> path of every posexplorer module"
    out = {"posexplorer": LIB / "__init__.py"}
    for info in pkgutil.walk_packages([str(LIB)], "posexplorer."):
        p = LIB.joinpath(*info.name.split(".")[1:])
        out[info.name] = p / "__init__.py" if info.ispkg else p.with_suffix(".py")
    return out


def layer(mod: str) -> str | None:
    "The layer of a module: its first package under posexplorer/, or the layer a public home re-exports"
    parts = mod.split(".")
    if len(parts) < 2 or parts[1].startswith("_"): return None
    return parts[1] if parts[1] in LAYERS else PUBLIC_HOMES.get(parts[1])


def imports(mod: str, path: Path) -> list[tuple[str, tuple, int]]:
    "(imported module, names, line) for every import statement of a module, at any depth (inside functions too)"
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import): out += [(a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = tuple(a.name for a in node.names)
            out.append((base, names, node.lineno))
            out += [(f"{base}.{n}", (), node.lineno) for n in names if f"{base}.{n}" in MODS]  # `from pkg import submodule`
    return out


MODS = modules()


@functools.cache
def internal_edges() -> dict:
    "module -> set of posexplorer modules it imports"
    return {m: {t for t, _, _ in imports(m, p) if t in MODS and t != m} for m, p in MODS.items()}


def test_layers_import_only_downward():
    bad = []
    for m, p in MODS.items():
        lm = layer(m)
        if lm is None: continue
        for t, _, line in imports(m, p):
            lt = layer(t) if t.startswith("posexplorer.") else None
            if lt and LAYERS.index(lt) > LAYERS.index(lm): bad.append(f"{p.relative_to(LIB.parent)}:{line} ({lm}) imports {t} ({lt})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_light_layers_import_no_ui_or_tool_library():
    bad = [f"{p.relative_to(LIB.parent)}:{line} imports {t}" for m, p in MODS.items() if layer(m) in ("core", "ops", "encodings")
           for t, _, line in imports(m, p) if t.split(".")[0] in HEAVY]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    edges, state, cycles = internal_edges(), {}, []
    def visit(m, stack):
        state[m] = "open"
        for t in sorted(edges[m]):
            # a package's __init__ importing its own submodules is not a cycle through the package
            if t.startswith(m + "."): continue
            if state.get(t) == "open": cycles.append(" -> ".join(stack[stack.index(t):] + [t]) if t in stack else f"{m} -> {t}")
            elif t not in state: visit(t, stack + [t])
        state[m] = "done"
    for m in sorted(edges):
        if m not in state: visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_underscore_names_from_other_modules():
    bad = [f"{p.relative_to(LIB.parent)}:{line} takes {', '.join(n for n in names if n.startswith('_'))} from {t}"
           for m, p in MODS.items() for t, names, line in imports(m, p)
           if t.startswith("posexplorer") and t != m and any(n.startswith("_") and not n.startswith("__") for n in names)]
    assert not bad, "\n".join(bad)


def test_catalog_matches_register():
    "The generated name -> module table is what the `@register` calls record (run `make check` after a notebook edit)"
    for m in MODS:
        if layer(m) == "encodings" or m.startswith("posexplorer.tools.hf"): importlib.import_module(m)
    seen = {n: (cls.__module__, dict(title=c.title, year=c.year, arxiv=c.arxiv, family=c.family, notebook=c.notebook,
                                     properties=dict(c.properties)))
            for n, (cls, c) in registry._REGISTRY.items() if cls.__module__.startswith("posexplorer.")}
    assert seen == CATALOG
    for name, (mod, card) in CATALOG.items():  # the notebook it names exists, in the folder of its module's family
        assert (LIB.parent / "nbs" / card["notebook"]).exists(), (name, card["notebook"])


SCRIPT = """
import json, sys
for m in {blocked!r}: sys.modules[m] = None  # as if the extras were not installed: importing them raises
import torch
base = set(sys.modules)
from posexplorer.core import get, names
out = {{}}
for name in {names!r}:
    before = set(sys.modules)
    enc = get(name)
    out[name] = sorted(m for m in set(sys.modules) - before if m.startswith("posexplorer."))
    if {apply!r}:  # through attention, on the torch backend, with small inputs each encoding accepts
        from posexplorer.ops.attention import attend
        T, fam = 6, enc.family
        if fam == "additive": y = enc.embed(enc.default_positions(T)); assert y.shape[0] == T and torch.isfinite(y).all(), name
        elif fam != "none":
            H = getattr(enc, "n_heads", 2)
            D = max(32, getattr(enc, "rotary_dim", 0), getattr(getattr(enc, "rotary", None), "rotary_dim", 0), getattr(enc, "dim", 0) if fam != "bias" else 0)
            m = getattr(enc, "dim_multiple", 2); D = -(-D // m) * m
            q, k, v = torch.randn(3, 1, T, H, D).unbind(0)
            kw = dict(x=torch.randn(1, T, enc.context_dim)) if getattr(enc, "context_dim", None) else {{}}
            try: o = attend(q, k, v, enc, backend="torch", **kw)
            except Exception as e: raise RuntimeError(f"{{name}}: {{e}}") from e
            assert o.shape == q.shape and torch.isfinite(o).all(), name
print(json.dumps(dict(per_name=out, all=sorted(m for m in set(sys.modules) - base if not m.startswith(("posexplorer", "torch"))))))
"""


def _run(names, blocked=HEAVY, apply=False):
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(names=list(names), blocked=list(blocked), apply=apply)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def closure(mod: str) -> set:
    "The posexplorer modules a module imports, transitively (with the packages above each)"
    edges, seen, todo = internal_edges(), set(), [mod]
    while todo:
        m = todo.pop()
        if m in seen: continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))] + sorted(edges.get(m, ()))
    return seen


@pytest.fixture(scope="module")
def fetched():
    "Every encoding fetched and applied in one fresh interpreter with the UI and tool libraries unimportable"
    return _run(names(), apply=True)


def test_get_imports_only_the_encodings_module(fetched):
    "`get(name)` imports the module that registers `name` and what that module imports (and the registry, the first time)"
    first = names()[0]
    for name, got in fetched["per_name"].items():
        allowed = closure(CATALOG[name][0]) | (closure("posexplorer.core") | {"posexplorer.core.catalog"} if name == first else set())
        assert set(got) <= allowed, f"get({name!r}) imported {sorted(set(got) - allowed)} beyond its module's imports"
        assert not any(m.startswith(("posexplorer.figures", "posexplorer.tools")) for m in got), (name, got)
    assert CATALOG["yarn"][0] in fetched["per_name"]["yarn"] or CATALOG["yarn"][0] in sum(fetched["per_name"].values(), [])


def test_every_encoding_fetched_and_applied_without_extras(fetched):
    "What a plain `pip install posexplorer` gives: every encoding is fetched and applied with plotly, panel, tqdm and ray unimportable"
    assert set(fetched["per_name"]) == set(names())
    assert not [m for m in fetched["all"] if m.split(".")[0] in HEAVY]


def test_names_and_cards_import_nothing():
    r = subprocess.run([sys.executable, "-c", "import sys; from posexplorer.core import names, cards; n = names(); c = cards(); "
                        "print(len(n), len(c), sorted(m for m in sys.modules if m.startswith('posexplorer.encodings')))"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    n, c, mods = r.stdout.split(" ", 2)
    assert int(n) == int(c) == len(CATALOG) and mods.strip() == "[]"


def test_plain_install_needs_no_extra():
    "pyproject's dependencies: torch, numpy, fastcore and (Linux) triton; the UI and tool libraries are extras"
    import tomllib
    meta = tomllib.loads((LIB.parent / "pyproject.toml").read_text())["project"]
    deps = {d.split(">")[0].split("=")[0].split(";")[0].split("<")[0].strip() for d in meta["dependencies"]}
    assert deps == {"torch", "triton", "numpy", "fastcore"}
    extras = meta["optional-dependencies"]
    assert {"viz", "app", "lab", "hf", "dev"} <= set(extras)


MISSING = {"posexplorer.figures.shared": "viz", "posexplorer.figures.mrope": "viz", "posexplorer.tools.app": "app",
           "posexplorer.tools.lab": "lab", "posexplorer.tools.bench": "lab", "posexplorer.tools.train_seqpe": "lab"}


def test_missing_extra_is_one_line_naming_it():
    "Importing a layer above the core without its extra (plotly, panel, tqdm blocked): one line that says which extra to install"
    code = ("import sys, importlib\nfor m in ('plotly', 'panel', 'tqdm'): sys.modules[m] = None\n"
            f"for mod in {list(MISSING)!r}:\n"
            "    try: importlib.import_module(mod); print(mod, '| imported')\n"
            "    except ImportError as e: print(mod, '|', type(e).__name__, '|', e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = dict(l.split(" | ", 1) for l in r.stdout.strip().splitlines())
    for mod, extra in MISSING.items():
        assert lines[mod].startswith("MissingExtra | ") and lines[mod].endswith(f"pip install 'posexplorer[{extra}]'"), (mod, lines[mod])


def test_public_names_keep_their_homes():
    "DESIGN.md §8: the public calls work from their old homes, as the same objects the layers define"
    from posexplorer.core import inv_freq, angles, rotate, RotaryEncoding, BiasEncoding, AdditiveEncoding, GeneralEncoding, register, get, names, cards
    from posexplorer.kernels import apply_rotary
    from posexplorer.attention import attend
    from posexplorer.hf import from_hf_config
    from posexplorer.bias import alibi_slopes, t5_bucket
    from posexplorer.multimodal import mrope_position_ids
    from posexplorer.pie import shift_keys_
    from posexplorer.ops import rotary, attention
    from posexplorer.encodings.classics import bias
    from posexplorer.encodings.spacetime import mrope
    from posexplorer.encodings.inference import pie
    from posexplorer.tools import hf
    assert apply_rotary is rotary.apply_rotary and attend is attention.attend and from_hf_config is hf.from_hf_config
    assert alibi_slopes is bias.alibi_slopes and t5_bucket is bias.t5_bucket
    assert mrope_position_ids is mrope.mrope_position_ids and shift_keys_ is pie.shift_keys_


def test_architecture_page_shows_the_tree():
    "nbs/core/architecture.ipynb's trees list exactly the modules and notebooks there are (refresh them when adding one)"
    root = LIB.parent
    text = "".join("".join(c["source"]) for c in json.loads((root / "nbs/core/architecture.ipynb").read_text())["cells"])
    trees = text.split("```")
    lib_tree, nb_tree = next(t for t in trees if t.lstrip().startswith("posexplorer/")), next(t for t in trees if t.lstrip().startswith("nbs/"))
    def listed(tree, folder):
        line = next((l for l in tree.splitlines() if l.lstrip("│ ├└─").startswith(folder + "/")), None)
        assert line is not None, f"no line for {folder}/"
        return set(line.lstrip("│ ├└─")[len(folder) + 1:].split())
    def actual(d, ext): return {p.stem for p in d.iterdir() if p.suffix == ext and p.stem != "__init__"}
    for d in [LIB / "core", LIB / "ops", LIB / "figures", LIB / "tools", *[p for p in (LIB / "encodings").iterdir() if p.is_dir() and p.name != "__pycache__"]]:
        assert listed(lib_tree, d.name) == actual(d, ".py"), d.name
    for d in (root / "nbs").iterdir():
        if d.is_dir() and any(d.glob("*.ipynb")): assert listed(nb_tree, d.name) == actual(d, ".ipynb"), d.name


def test_wheel_ships_every_subpackage():
    "pyproject's package list takes in every layer (a plain `pip install .` once shipped posexplorer/ without core/)"
    import tomllib
    from setuptools import find_packages
    include = tomllib.loads((LIB.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    shipped = set(find_packages(str(LIB.parent), include=include))
    assert shipped == {m for m, p in MODS.items() if p.name == "__init__.py"}
