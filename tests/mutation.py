"""Mutation testing of the modules whose every line the tests must hold (README, "Mutation
testing"): mutmut over the modules ``[tool.mutmut] only_mutate`` names in pyproject.toml.

    .venv/bin/python tests/mutation.py                      # every module
    .venv/bin/python tests/mutation.py shared/enqueue.py    # one (a path or a dotted name)
    .venv/bin/python tests/mutation.py --list               # the modules it knows

Each mutant of the chosen modules is run again (never a verdict cached from an earlier run),
then the score of each module is printed: killed / total, the survivors that
``tests/mutation_equivalents.toml`` shows equivalent (with why), and every other survivor by
name (see it with ``.venv/bin/mutmut show NAME``). Exit status 1 when a survivor is not
justified there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import tomllib
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.toml"
MUTMUT = Path(sys.executable).with_name("mutmut")

#: mutmut's verdicts that count as the tests noticing the mutant (a mutant that makes the
#: tests hang or the type checker refuse it is noticed too)
KILLED = {"killed", "timeout", "caught by type check"}


def modules() -> dict[str, list[str]]:
    """Each module (``shared.signatures`` stands for the whole package) and the files it has."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    out: dict[str, list[str]] = {}
    for pattern in config["only_mutate"]:
        files = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern))
        if pattern.endswith("/*.py"):
            out[pattern.removesuffix("/*.py").replace("/", ".")] = files
        else:
            out[pattern.removesuffix(".py").replace("/", ".")] = files
    return out


def chosen(name: str, known: dict[str, list[str]]) -> str:
    dotted = name.strip("/").removesuffix(".py").replace("/", ".")
    dotted = dotted.removesuffix(".__init__")
    if dotted in known:
        return dotted
    for module, files in known.items():
        if name.strip("/") in files or dotted.startswith(module + "."):
            return module
    raise SystemExit(f"mutation: {name} is not mutated (see --list)")


def verdicts() -> dict[str, str]:
    """Every mutant's name and verdict, as mutmut recorded them."""
    out = subprocess.run(
        [str(MUTMUT), "results", "--all", "true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pairs = (line.strip().rsplit(": ", 1) for line in out.splitlines() if ": " in line)
    return {name: verdict for name, verdict in pairs}


def equivalents() -> dict[str, tuple[str, str]]:
    """Each mutant listed as equivalent: (the mutated line recorded, why)."""
    out: dict[str, tuple[str, str]] = {}
    for table in tomllib.loads(EQUIVALENTS.read_text()).values():
        for name, line in table["mutants"].items():
            out[name] = (line, table["why"])
    return out


def mutated_line(name: str) -> str:
    """The line the mutant changes, as it now reads (its diff's added line)."""
    diff = subprocess.run(
        [str(MUTMUT), "show", name], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+ ")]
    return added[0] if added else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", nargs="*", help="a mutated module (default: all of them)")
    parser.add_argument("--list", action="store_true", help="print the mutated modules")
    args = parser.parse_args()
    known = modules()
    if args.list:
        for module, files in known.items():
            print(module, " ".join(files))
        return 0
    picked = [chosen(m, known) for m in args.module] or list(known)
    started = time.monotonic()
    subprocess.run([str(MUTMUT), "run", *(f"{m}.*" for m in picked)], cwd=ROOT, check=True)
    elapsed = time.monotonic() - started
    results = verdicts()
    listed = equivalents()
    unjustified = 0
    print(f"\nmutation score ({elapsed:.0f} s):")
    for module in picked:
        mine = {n: v for n, v in results.items() if fnmatch(n, f"{module}.*")}
        counts = Counter("killed" if v in KILLED else v for v in mine.values())
        left = sorted(n for n, v in mine.items() if v not in KILLED)
        equivalent = [n for n in left if n in listed and mutated_line(n) == listed[n][0]]
        others = [n for n in left if n not in equivalent]
        unjustified += len(others)
        print(
            f"  {module}: {counts['killed']} / {len(mine)} killed, "
            f"{len(equivalent)} equivalent, {len(others)} unjustified"
        )
        for name in equivalent:
            print(f"    equivalent: {name} ({listed[name][1]})")
        for name in others:
            print(f"    {mine[name]}: {name}")
    return 1 if unjustified else 0


if __name__ == "__main__":
    sys.exit(main())
