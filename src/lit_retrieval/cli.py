"""What ``eval.py`` and ``train.py`` do with a user's mistake (one clear message and exit status 2, no traceback; an
override Hydra refuses gets the closest valid key or choice) and what their ``--help`` lists (every choice of each
config group, with the first comment line of its YAML)."""
from __future__ import annotations

import difflib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TRACEBACK_ENV = "LIT_RETRIEVAL_TRACEBACK"

# Keys that moved under their method (D2R's settings were first written at the top level, its detector checkpoint
# as detector.ckpt_path): the former spellings are still accepted as overrides, with one warning each.
RENAMED_KEYS = {
    "kernel": "method.kernel",
    "aggregation": "method.aggregation",
    "detector.threshold": "method.detector.threshold",
    "detector.max_boxes": "method.detector.max_boxes",
    "detector.ckpt_path": "ckpt_path",
}
_warned: set[str] = set()


def renamed_overrides(args: list[str]) -> list[str]:
    """``args`` (Hydra overrides; flags and other arguments pass unchanged) with the former spellings of
    :data:`RENAMED_KEYS` replaced by the current keys, warning once per spelling."""
    out = []
    for arg in args:
        body = arg.lstrip("+~")
        key, eq, value = body.partition("=")
        new = RENAMED_KEYS.get(key) if not arg.startswith("-") else None
        if new is not None:
            if key not in _warned:
                _warned.add(key)
                warnings.warn(f"{key}= is now {new}= (the old spelling still works)", FutureWarning, stacklevel=2)
            arg = arg[: len(arg) - len(body)] + new + eq + value
        out.append(arg)
    return out


@contextmanager
def reported_errors(tool: str) -> Iterator[None]:
    """Bad input (a ``ValueError``: bad options, data, ground truth, leakage; an ``OSError``: missing or unwritable
    files) ends the run with its message, which names what is wrong and the fix, and exit status 2.
    ``LIT_RETRIEVAL_TRACEBACK=1`` re-raises it with the full traceback."""
    try:
        yield
    except (ValueError, OSError) as err:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        logging.getLogger(tool).error("%s: %s", type(err).__name__, err)
        print(f"{tool}: error: {err}\n({TRACEBACK_ENV}=1 shows the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


#: the config groups ``--help`` lists, per script (``task_name``)
HELP_GROUPS = {"eval": ("method", "dataset", "backbone", "whitening", "qe", "rerank", "trainer", "logger"),
               "train": ("experiment", "model", "data", "backbone", "trainer", "logger", "callbacks")}
HELP_EXAMPLES = {"eval": "python eval.py method=rmac rerank=aml dataset=roxford5k backbone=resnet101 image_size=1024",
                 "train": "python train.py experiment=regional_attention_shared trainer=gpu"}


def _conf_dir() -> Path:
    return project_root() / "conf"


def describe_option(path: Path) -> str:
    """The first comment line of a config file (after Hydra's ``@package`` header), or ``""``."""
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text.startswith("#"):
            break
        text = text.lstrip("#").strip()
        if text and not text.startswith("@package"):
            return text
    return ""


def group_help(group: str, width: int = 120) -> str:
    """One line per choice of ``conf/<group>/``: its name and description (cut to ``width``)."""
    rows = []
    files = sorted((_conf_dir() / group).glob("*.yaml"))
    name_width = max((len(f.stem) for f in files), default=0) + 2
    for f in files:
        line = f"  {f.stem:<{name_width}}{describe_option(f)}".rstrip()
        rows.append(line if len(line) <= width else line[: width - 1] + "…")
    return "\n".join(rows)


def task_help(task: str) -> str:
    """The ``--help`` listing of a script: each of its config groups and their choices."""
    text = "\n\n".join([f"e.g. {HELP_EXAMPLES[str(task)]}"] * (str(task) in HELP_EXAMPLES)
                       + [f"{g}=...\n{group_help(g)}" for g in HELP_GROUPS.get(str(task), ())])
    return text.replace("$", "$$")  # Hydra fills the template with string.Template: a literal $ is $$


def register_help() -> None:
    """Make ``${lit_help:<task>}`` (``conf/hydra/default.yaml``'s help template) available to Hydra."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("lit_help", task_help, replace=True)


def _groups(conf: Path) -> dict[str, list[str]]:
    """Every config group under ``conf`` (``hydra`` and nested ones included) and its choices."""
    return {d.relative_to(conf).as_posix(): sorted(f.stem for f in d.glob("*.yaml"))
            for d in sorted(p for p in conf.rglob("*") if p.is_dir()) if any(d.glob("*.yaml"))}


def _keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a composed config (values are not resolved)."""
    from omegaconf import DictConfig

    out = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            key = f"{prefix}{k}"
            out.append(key)
            out += _keys(node._get_node(k), key + ".")
    return out


def _closest(word: str, candidates: list[str]) -> str | None:
    found = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


def override_hints(task: str, args: list[str]) -> list[str]:
    """For each override in ``args`` that names no config key or no choice of its group, one line with the closest
    valid spelling (``image_sise=512`` -> ``image_size``, ``method=gemm`` -> ``gem``). ``+key=``/``~key`` overrides
    (which add or delete) and ``hydra.*`` ones are not checked."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from omegaconf import OmegaConf

    conf = _conf_dir()
    groups = _groups(conf)
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except Exception:  # noqa: BLE001 - a syntax error: Hydra's own message says where
        return []
    hints, keys, choices = [], [], []
    for o in parsed:
        key = o.key_or_group
        if o.type != OverrideType.CHANGE or key.split(".")[0] == "hydra" or o.package:
            continue
        if key in groups:
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
            bad = [str(v) for v in values if v is not None and str(v) not in groups[key]]
            for v in bad:
                near = _closest(v, groups[key])
                hints.append(f"{key}={v}: {key} has no choice {v!r}; "
                             + (f"did you mean {key}={near}?" if near else f"its choices: {', '.join(groups[key])}"))
            if not bad and not o.is_sweep_override():
                choices.append(f"{key}={o.value()}")
        else:
            keys.append(key)
    if not keys:
        return hints
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(task, overrides=choices)
    except Exception:  # noqa: BLE001 - the choices themselves do not compose: Hydra said why
        return hints
    finally:
        GlobalHydra.instance().clear()
    known = _keys(cfg)
    absent = object()
    for key in keys:
        if OmegaConf.select(cfg, key, default=absent) is not absent:
            continue
        parent, _, leaf = key.rpartition(".")
        siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
        near = _closest(leaf, siblings)
        if near:
            hints.append(f"{key}: no such config key; did you mean {parent + '.' if parent else ''}{near}?")
        elif parent and parent in known:
            hints.append(f"{key}: {parent} has no key {leaf!r} (its keys: {', '.join(siblings)})")
        else:
            near = _closest(key, known + list(groups))
            hints.append(f"{key}: no such config key; " + (f"did you mean {near}?" if near else
                                                            f"to add a new key write +{key}=..."))
    return hints


@contextmanager
def override_help(task: str, args: list[str]) -> Iterator[None]:
    """Around Hydra's ``main``: when Hydra refuses the command line (its exit status 1, or its exception under
    ``HYDRA_FULL_ERROR=1``), print the closest valid key or choice of each unknown override after its message."""
    try:
        yield
    except SystemExit as e:
        if e.code == 1:
            _print_hints(task, args)
        raise
    except Exception as e:
        if type(e).__module__.split(".")[0] in ("hydra", "omegaconf"):
            _print_hints(task, args)
        raise


def _print_hints(task: str, args: list[str]) -> None:
    try:
        hints = override_hints(task, args)
    except Exception as err:  # noqa: BLE001 - a hint must never hide Hydra's own message
        logging.getLogger(__name__).debug("no override hints: %s", err)
        return
    for line in hints:
        print(f"{task}.py: {line}", file=sys.stderr, flush=True)


def project_root() -> Path:
    """The checkout holding ``eval.py``, ``train.py`` and ``conf/`` (``$LIT_RETRIEVAL_ROOT``, else the folder above
    ``src/``, which is where an editable install points)."""
    env = os.environ.get("LIT_RETRIEVAL_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[2]


def _run_script(name: str) -> None:
    import runpy

    script = project_root() / name
    if not script.is_file() or not (script.parent / "conf").is_dir():
        print(f"lit-{name.removesuffix('.py')}: error: {script} not found: the console scripts run the checkout's "
              f"{name} and conf/. Fix: install the checkout editable (pip install -e . / uv pip install -e .) or "
              "set LIT_RETRIEVAL_ROOT to the checkout", file=sys.stderr)
        raise SystemExit(2)
    sys.argv[0] = str(script)
    runpy.run_path(str(script), run_name="__main__")


def eval_command() -> None:
    """``lit-eval ARGS``: the same as ``python eval.py ARGS`` (console script)."""
    _run_script("eval.py")


def train_command() -> None:
    """``lit-train ARGS``: the same as ``python train.py ARGS`` (console script)."""
    _run_script("train.py")
