"README.md is generated from nbs/index.ipynb (`make readme`): it must open with the two commands and stay in step."
from pathlib import Path
from posexplorer.core import names

README = (Path(__file__).parents[1] / "README.md").read_text()

def test_opens_with_the_two_commands():
    head = README[:1200]
    assert "make serve" in head and "make test" in head and head.index("make serve") < head.index("## What it is")

def test_lists_every_registered_encoding():
    "A newly registered encoding needs `make readme`"
    for n in names(): assert f"| `{n}` |" in README, f"README.md is out of step: no row for `{n}`; run make readme"

def test_figure_exists():
    assert "](nbs/images/rope_decay.png)" in README and (Path(__file__).parents[1] / "nbs/images/rope_decay.png").exists()
