"""What ``eval.py`` and ``train.py`` do with a user's mistake (one clear message and exit status 2, no traceback)
and what their ``--help`` lists (every choice of each config group, with the first comment line of its YAML)."""
from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
HELP_GROUPS = {"eval": ("method", "dataset", "backbone", "whitening", "qe", "rerank", "trainer"),
               "train": ("experiment", "model", "data", "backbone", "trainer", "logger", "callbacks")}
HELP_EXAMPLES = {"eval": "python eval.py method=rmac rerank=aml dataset=roxford5k backbone=resnet101 image_size=1024",
                 "train": "python train.py experiment=regional_attention_shared trainer=gpu"}


def _conf_dir() -> Path:
    return Path(os.environ.get("LIT_RETRIEVAL_ROOT", Path(__file__).resolve().parents[2])) / "conf"


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
