"""Give every notebook under nbs/ the project's kernelspec ("posexplorer", installed into .venv by `make setup`), so
that JupyterLab opens it on that kernel with no "Select Kernel" dialog. Idempotent: a notebook that already has it is
not rewritten. nbdev-clean keeps `kernelspec` (it sets display_name to the name, so that is what is written here).

    .venv/bin/python tools/set_kernelspec.py [--check]

--check: change nothing, exit 1 naming the notebooks that lack it.
"""
import json, sys
from pathlib import Path

NBS = Path(__file__).resolve().parents[1] / "nbs"
SPEC = {"display_name": "posexplorer", "language": "python", "name": "posexplorer"}


def missing() -> list[Path]:
    return [p for p in sorted(NBS.rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts
            and json.loads(p.read_text()).get("metadata", {}).get("kernelspec") != SPEC]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    todo = missing()
    if "--check" in argv:
        for p in todo: print(f"{p.relative_to(NBS)}: no posexplorer kernelspec (run tools/set_kernelspec.py)")
        return 1 if todo else 0
    for p in todo:
        text = p.read_text()
        nb = json.loads(text)
        nb.setdefault("metadata", {})["kernelspec"] = SPEC
        # nbdev-clean's layout (indent 1, non-ASCII kept, trailing newline), so only the metadata lines change
        p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"{p.relative_to(NBS)}: kernelspec set")
    return 0


if __name__ == "__main__":
    sys.exit(main())
