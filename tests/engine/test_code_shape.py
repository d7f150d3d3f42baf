"""The shape the code keeps: the engine never imports a paper's package, the orchestrator names no method, and calls
stay readable (long parameter lists are grouped in settings dataclasses)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "lit_retrieval"
MAX_PARAMS = 9
# constructors whose keyword arguments are the keys of their YAML section (Hydra instantiates them with keywords,
# or their DataModule passes its own section on): the config is their settings object
CONFIG_CONSTRUCTORS = {
    "callbacks/retrieval_eval.py", "methods/local_similarity/module.py", "methods/regional_attention/module.py",
    "methods/detect_to_retrieve/detector/data.py", "data/classification.py", "data/pairs.py",
}

ABOVE_THE_ORCHESTRATOR = ("api.py",)  # the Python API is an entry point, as eval.py is: it runs the orchestrator


def _imported(path: Path) -> set[str]:
    """Dotted ``lit_retrieval`` modules ``path`` imports (relative imports resolved)."""
    pkg = list(path.relative_to(SRC.parent).with_suffix("").parts)[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("lit_retrieval")}


def test_the_engine_never_imports_a_paper_and_papers_never_import_each_other():
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).parts
        own = f"lit_retrieval.methods.{rel[1]}" if rel[0] == "methods" and len(rel) > 2 else None
        for mod in _imported(path):
            if mod.startswith("lit_retrieval.methods.") and not (own and (mod == own or mod.startswith(own + "."))):
                bad.append(f"{path.relative_to(SRC)} imports {mod}")
            if mod == "lit_retrieval.evaluate" and rel != ABOVE_THE_ORCHESTRATOR:
                bad.append(f"{path.relative_to(SRC)} imports the evaluate.py orchestrator")
    assert not bad, "imports must point down (papers -> engine): " + "; ".join(sorted(bad))


def test_the_orchestrator_names_no_method():
    text = (SRC / "evaluate.py").read_text()
    assert not re.search(r"method\.name *==|method\.get\(.name.\) *==", text)
    from lit_retrieval.retrieval.interface import method_names

    quoted = [n for n in method_names() if re.search(rf"[\"']{n}[\"']", text)]
    assert not quoted, f"evaluate.py names methods {quoted}: dispatch through the registry"


def test_no_function_takes_more_than_nine_parameters():
    long = []
    for path in SRC.rglob("*.py"):
        rel = str(path.relative_to(SRC))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
                n = len(names) - (names[:1] in (["self"], ["cls"]))
                if n > MAX_PARAMS and not (node.name == "__init__" and rel in CONFIG_CONSTRUCTORS):
                    long.append(f"{rel}:{node.lineno} {node.name} ({n})")
    assert not long, f"group the parameters in a settings dataclass: {long}"


_BOX_CONVERTER = re.compile(r"(^|_)(boxes?|cells|pixels|xyxy|xywh|yxhw|yxyx)_to_|_to_(xyxy|xywh|cells|pixels)$"
                            r"|^hflip_boxes$|^resized?_boxes$|^crop_window$")


def test_box_conversions_live_in_one_module():
    """Box formats and frames are converted by ``lit_retrieval/boxes.py`` only (one box type, one set of converters)."""
    found = []
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).as_posix() == "boxes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _BOX_CONVERTER.search(node.name):
                found.append(f"{path.relative_to(SRC)}: {node.name}")
    assert not found, "convert boxes with lit_retrieval.boxes.Boxes / convert: " + "; ".join(found)


def _resolve(module_path: Path, dotted: str) -> bool:
    import importlib

    mod = importlib.import_module(".".join(module_path.relative_to(SRC.parent).with_suffix("").parts))
    obj = mod
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def test_every_function_a_paper_readme_names_exists():
    """Each paper's README maps equations to ``file.py: name``; every such name must exist where it says."""
    missing, seen = [], 0
    for readme in (SRC / "methods").rglob("README.md"):
        for rel, dotted in re.findall(r"`((?:lit_retrieval/)?[\w/]+\.py): ([A-Za-z_][\w.]*)`", readme.read_text()):
            path = SRC.parent / rel if rel.startswith("lit_retrieval/") else readme.parent / rel
            seen += 1
            if not path.exists() or not _resolve(path, dotted):
                missing.append(f"{readme.relative_to(SRC)}: {rel}: {dotted}")
    assert seen > 50 and not missing, f"{seen} names read; missing: {missing}"
