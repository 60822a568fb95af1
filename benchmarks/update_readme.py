"""Put benchmark tables into README.md between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.

The README's results are generated, never typed: each benchmark writes a markdown file
(`--markdown`), and this replaces the marked section with it.

    python benchmarks/update_readme.py runtimes benchmarks/results/runtimes.md
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def replace_section(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {re.escape(name)}:begin -->\n).*?(<!-- {re.escape(name)}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no section '{name}' (<!-- {name}:begin --> … <!-- {name}:end -->)")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    name, source = sys.argv[1], Path(sys.argv[2])
    README.write_text(replace_section(README.read_text(), name, source.read_text()))
    print(f"README.md: section '{name}' <- {source}")


if __name__ == "__main__":
    main()
