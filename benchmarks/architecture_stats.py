"""The shape of the code: lines of Python per package, which packages import which, and the places that compare a
method's name (dispatch by name) — the numbers of docs/architecture.md.

    .venv/bin/python benchmarks/architecture_stats.py [--json OUT]
"""
from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lit_retrieval"
METHOD_NAMES = ("mac", "spoc", "gem", "crow", "rmac", "regional_attention", "salient_regions", "local_similarity",
                "d2r")
NAME_TEST = re.compile(r"""name\s*(==|!=)\s*["'](%s)["']""" % "|".join(METHOD_NAMES))


def package(path: Path) -> str:
    """``methods.<paper>`` for a paper's files, else the first-level package or module."""
    rel = path.relative_to(SRC)
    if rel.parts[0] == "methods" and len(rel.parts) > 2:
        return f"methods.{rel.parts[1]}"
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def is_paper(pkg: str) -> bool:
    return pkg.startswith("methods.")


def imports(path: Path) -> set[str]:
    """The first-level lit_retrieval packages/modules ``path`` imports (relative or absolute)."""
    out = set()
    depth = len(path.relative_to(SRC).parts) - 1
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = list(path.relative_to(SRC).parts[:-1])[: max(0, depth - (node.level - 1))]
                parts = base + (node.module.split(".") if node.module else [])
                if not parts:  # "from . import x" at the top level
                    parts = [a.name for a in node.names]
                out.add(".".join(parts[:2]) if parts[0] == "methods" and len(parts) > 1 else parts[0])
            elif node.module and node.module.startswith("lit_retrieval."):
                parts = node.module.split(".")[1:]
                out.add(".".join(parts[:2]) if parts[0] == "methods" and len(parts) > 1 else parts[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers there")
    args = ap.parse_args()
    files = sorted(SRC.rglob("*.py"))
    lines: dict[str, int] = {}
    graph: dict[str, set[str]] = {}
    tests = []
    for f in files:
        pkg = package(f)
        text = f.read_text()
        lines[pkg] = lines.get(pkg, 0) + text.count("\n")
        graph.setdefault(pkg, set()).update(i for i in imports(f) if i != pkg)
        tests += [f"{f.relative_to(SRC.parent)}:{n}: {ln.strip()}" for n, ln in enumerate(text.splitlines(), 1)
                  if NAME_TEST.search(ln)]
    print(f"{'package':<22}{'lines':>7}  imports")
    for pkg, n in sorted(lines.items(), key=lambda kv: -kv[1]):
        print(f"{pkg:<22}{n:>7}  {', '.join(sorted(graph[pkg]))}")
    print(f"{'total':<22}{sum(lines.values()):>7}")
    own = {"mac": "methods/aml", "rmac": "methods/aml"}  # Tolias et al.'s MAC / R-MAC live in the AML package
    outside = [t for t in tests if "retrieval/methods.py" not in t  # the descriptor registry itself
               and not any(f"lit_retrieval/{own[m]}/" in t for m in own if f'"{m}"' in t)]
    print(f"\n{len(tests)} comparisons of a method's name ({len(outside)} outside the registry and the method's own "
          "package):")
    for t in tests:
        print("  " + t)
    importers = sorted(p for p, deps in graph.items() if "evaluate" in deps)
    print(f"\nmodules importing the evaluate.py orchestrator: {importers or 'none'}")
    upward = sorted(f"{p} -> {d}" for p, deps in graph.items() for d in deps
                    if is_paper(d) and not is_paper(p) or (is_paper(p) and is_paper(d) and d != p))
    print(f"imports pointing up (engine -> paper) or across papers: {upward or 'none'}")
    if args.json:
        args.json.write_text(json.dumps({"lines": lines, "imports": {k: sorted(v) for k, v in graph.items()},
                                         "name_comparisons": tests, "name_comparisons_outside": outside,
                                         "imports_evaluate": importers,
                                         "upward_imports": upward}, indent=1))


if __name__ == "__main__":
    main()
