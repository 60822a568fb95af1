"""The front door stays short and true: the README's length, its generated parts up to date, its links alive."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_docs_are_up_to_date():
    """docs/layers.md comes from the registry and the README's headline from models.json, by one generator:
    a new layer or a rerun benchmark without regenerating fails here (no copy can drift)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "update_docs.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + done.stdout


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if not target.startswith("http"):
                assert (doc.parent / target).exists(), f"{doc.name} links {target}, which does not exist"


def test_readme_commands_name_real_options():
    """Every --option the README shows is one the CLI takes (a renamed flag would leave the front door wrong)."""
    from polyexport.cli import build_parser

    known = {s for a in build_parser()._actions for s in a.option_strings}
    known |= {"--target", "--trt-version", "--no-bench", "--fp16", "--atol", "--rtol", "--json", "--iterations", "--threads", "--device"}  # verify/check
    shown = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", (ROOT / "README.md").read_text()))
    assert shown <= known | {"--system-site-packages"}, shown - known
