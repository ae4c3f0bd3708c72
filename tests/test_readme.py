"README.md is generated from nbs/index.ipynb (`make readme`): it must open with the two commands and stay in step."
from pathlib import Path
from posexplorer.core import names

README = (Path(__file__).parents[1] / "README.md").read_text()

def test_opens_with_the_two_commands():
    head = README[:2200]
    assert "make serve" in head and "make test" in head and head.index("make serve") < head.index("## What it is")

def test_lists_every_registered_encoding():
    "A newly registered encoding needs `make readme`"
    for n in names(): assert f"| `{n}` |" in README, f"README.md is out of step: no row for `{n}`; run make readme"

def test_figure_exists():
    assert "](nbs/images/rope_decay.png)" in README and (Path(__file__).parents[1] / "nbs/images/rope_decay.png").exists()

def test_says_how_long_each_command_takes():
    "issue 19: a new user knows what to expect from make serve, make test and make lab"
    i = README.index("How long they take")
    for cmd in ("`make serve`", "`make test`", "`make lab`", "site-cache/"): assert cmd in README[i:i + 900], cmd
