"""The run report: ``report.html`` in the run folder, the whole run on one self-contained page.

Every ``eval.py`` run (:func:`write_eval_report`) and every ``train.py`` run (:func:`write_train_report`) writes
it next to ``results.json``. The page needs nothing but a browser, offline: the pictures are embedded as base64
``data:`` URIs, the style sheet is inline, and the only script is three lines that count the pictures that loaded.

An evaluation's page holds the header (method, dataset, backbone, date, command line), the mAP table with the 95%
bootstrap interval of each protocol, the method's stages with their paired differences, what each learned piece
saw, skipped images, timings, the method's own sections, every picture of the run folder and the composed config.
A training run's page holds the header (best checkpoint, monitor), the final metrics, the learning curves (drawn
from ``history.json``, the CSV logger's ``metrics.csv`` or ``retrieval.json`` into ``plots/learning_curves.png``),
the retrieval table of every validation epoch, the test table with its intervals and paired differences, the
overlap checks, the pictures under ``plots/`` and the config.

A picture that is missing or unreadable is left out, never an error; callers write the page through
:func:`report_or_warn`, so that a failing report never fails the run.
"""
from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import json
import logging
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from .atomic import atomic_write
from .metrics import format_ci, format_diff

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
LEARNING_CURVES = Path("plots") / "learning_curves.png"
MAX_IMAGE_BYTES = 1_500_000   # larger pictures are downscaled for the page (the files themselves are untouched)
MAX_IMAGE_SIDE = 1600
MAX_CURVE_PANELS = 12
# folders of a run that hold loggers' or checkpoints' files, not the run's pictures
NOT_PICTURES = frozenset({"wandb", "csv", "tensorboard", "mlruns", "lightning_logs", "checkpoints"})
EPOCH_COPY = re.compile(r"_epoch\d+$")
PROTOCOLS = {"E": "easy", "M": "medium", "H": "hard", "": "all"}
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232a; margin: 0;
       background: #f6f7f9; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 12px; }
h2 { font-size: 18px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #dde1e6; }
h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid #dde1e6; padding: 3px 8px; vertical-align: top; }
th { background: #eef1f4; text-align: left; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.best td { background: #e7f5ea; font-weight: 600; }
.noise { color: #6b7480; }
.muted { color: #6b7480; }
code, pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #f3f4f6; padding: 10px 12px; overflow-x: auto; border-radius: 4px; }
.scroll { overflow-x: auto; }
.meta { min-width: 640px; }
.meta td:first-child { width: 150px; font-weight: 600; background: #f8f9fb; }
.meta td { overflow-wrap: anywhere; }
figure { margin: 14px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid #dde1e6; }
figcaption { color: #4a525c; margin-top: 4px; }
details { margin: 8px 0; }
summary { cursor: pointer; font-weight: 600; }
"""

# sets <body data-images-loaded="loaded/total"> once the page has loaded (read by the report's browser test)
IMAGES_LOADED_SCRIPT = """<script>
window.addEventListener("load", function () { var im = Array.prototype.slice.call(document.images);
  document.body.dataset.imagesLoaded = im.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length
    + "/" + im.length; });
</script>"""


# -- small HTML helpers -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One table cell: ``text`` (escaped when rendered), right-aligned when ``num``, with an optional CSS class."""
    text: str
    num: bool = False
    cls: str = ""


def esc(value: Any) -> str:
    """``value`` as HTML-escaped text."""
    return html.escape(str(value), quote=True)


def number(value: Any, digits: int = 2) -> Cell:
    """A right-aligned number cell (``—`` for a missing or non-finite value)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return Cell("—", num=True)
    if isinstance(value, bool):
        return Cell(str(value))
    if isinstance(value, int):
        return Cell(str(value), num=True)
    return Cell(f"{float(value):.{digits}f}", num=True)


def plain(value: Any) -> str:
    """A compact text form of a JSON value for key/value tables."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value) if all(not isinstance(v, (dict, list)) for v in value) \
            else json.dumps(value, default=str)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)


def _cell(value: Any) -> Cell:
    if isinstance(value, Cell):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Cell(plain(value), num=True)
    return Cell(plain(value))


def table(head: Sequence[str | Cell], rows: Iterable[Sequence[Any]], cls: str = "",
          row_cls: Sequence[str] | None = None) -> str:
    """An HTML table: ``head`` cells, then ``rows`` (numbers right-aligned, text escaped); ``row_cls`` gives each
    row a CSS class (e.g. ``best``)."""
    rows = [list(r) for r in rows]
    if not rows:
        return ""
    out = ['<div class="scroll">', f'<table class="{esc(cls)}">' if cls else "<table>"]
    heads = [_cell(h) for h in head]
    if any(c.text for c in heads):  # (a key/value table without titles has no header row)
        out.append("<thead><tr>")
        out += [f'<th class="num">{esc(c.text)}</th>' if c.num else f"<th>{esc(c.text)}</th>" for c in heads]
        out.append("</tr></thead>")
    out.append("<tbody>")
    for i, row in enumerate(rows):
        rc = (row_cls or [""] * len(rows))[i]
        out.append(f'<tr class="{esc(rc)}">' if rc else "<tr>")
        for value in row:
            c = _cell(value)
            classes = " ".join(x for x in ("num" if c.num else "", c.cls) if x)
            out.append(f'<td class="{classes}">{esc(c.text)}</td>' if classes else f"<td>{esc(c.text)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": value}``."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def kv_table(mapping: Mapping[str, Any], cls: str = "") -> str:
    """A two-column table of a (flattened) mapping."""
    return table(["", "value"], ([Cell(k), _cell(v)] for k, v in flatten(mapping).items()), cls=cls)


def section(title: str, *parts: str) -> str:
    """``<section>`` with an ``<h2>``, or nothing when every part is empty."""
    body = "".join(p for p in parts if p)
    if not body:
        return ""
    anchor = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def details(summary: str, body: str, open_: bool = False) -> str:
    """A collapsible block (nothing when ``body`` is empty)."""
    if not body:
        return ""
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def paragraph(text: str, cls: str = "") -> str:
    return f'<p class="{esc(cls)}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def page(title: str, sections: Sequence[str]) -> str:
    """The whole document: inline CSS, the sections, the images-loaded script."""
    body = "".join(s for s in sections if s)
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><main><h1>{esc(title)}</h1>{body}</main>{IMAGES_LOADED_SCRIPT}</body></html>\n")


def write_page(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))
    return path


# -- pictures -----------------------------------------------------------------------------------------------------

def _shrunk(path: Path) -> tuple[bytes, str]:
    """A picture too large for the page, downscaled to ``MAX_IMAGE_SIDE`` (PNG, or JPEG when smaller)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        img.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
        png = io.BytesIO()
        img.save(png, "PNG", optimize=True)
        if png.tell() <= MAX_IMAGE_BYTES:
            return png.getvalue(), "image/png"
        jpg = io.BytesIO()
        img.convert("RGB").save(jpg, "JPEG", quality=85)
        return jpg.getvalue(), "image/jpeg"


def image_data_uri(path: Path) -> str | None:
    """``path`` as a ``data:`` URI, or ``None`` when it is missing or not a readable image (logged)."""
    from PIL import Image

    path = Path(path)
    mime = IMAGE_TYPES.get(path.suffix.lower())
    if mime is None or not path.is_file():
        return None
    try:
        with Image.open(path) as img:
            img.verify()
        data = path.read_bytes()
        if len(data) > MAX_IMAGE_BYTES:
            data, mime = _shrunk(path)
    except Exception as err:  # noqa: BLE001 - truncated, not an image, too large to decode: left out
        log.warning("report: %s is not a readable picture (%s: %s); left out of the page", path,
                    type(err).__name__, err)
        return None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# the pictures every eval run draws, captioned as a reader names them (the others: from their file names)
CAPTIONS = {"pr_curve": "Precision-recall curve of each protocol",
            "topk": "Top-10 results of a few queries (green: positive, red: negative, yellow: junk)"}


def caption(path: Path) -> str:
    """A picture's caption from its file name: ``plots/attention_regions_final.png`` -> ``Attention regions
    final`` (:data:`CAPTIONS` for the generic ones)."""
    if path.stem in CAPTIONS:
        return CAPTIONS[path.stem]
    words = path.stem.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:] if words else path.name


def figure(path: Path, root: Path, text: str | None = None) -> str:
    """A ``<figure>`` of ``path`` embedded as a data URI, captioned; empty when it cannot be embedded."""
    uri = image_data_uri(path)
    if uri is None:
        return ""
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    label = text or caption(path)
    return (f'<figure><img src="{uri}" alt="{esc(label)}" loading="eager">'
            f"<figcaption>{esc(label)} <code>{esc(rel)}</code></figcaption></figure>")


def find_pictures(root: Path, first: Sequence[str] = (), leave_out: Sequence[str] = ()) -> list[Path]:
    """The pictures of a run folder: its images and those of its sub-folders (e.g. ``plots/``), without the
    loggers' and checkpoints' folders, hidden ones and the per-epoch copies (``*_epoch<N>.png``: the latest is
    kept under its plain name). ``first``: relative paths shown first, in that order; ``leave_out``: not at all."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        # (pruned in place: neither hidden folders nor the loggers' are walked, and at most 3 levels down)
        dirs[:] = [] if depth >= 3 else sorted(d for d in dirs if not d.startswith(".")
                                               and not (depth == 0 and d in NOT_PICTURES))
        for name in files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if path.suffix.lower() in IMAGE_TYPES and not name.startswith(".") and path.is_file() \
                    and not EPOCH_COPY.search(path.stem) and rel not in leave_out:
                found.append(path)
    order = {name: i for i, name in enumerate(first)}
    return sorted(found, key=lambda p: (order.get(p.relative_to(root).as_posix(), len(order)),
                                        len(p.relative_to(root).parts), p.relative_to(root).as_posix()))


def pictures_section(root: Path, enabled: bool = True, first: Sequence[str] = (),
                     leave_out: Sequence[str] = ()) -> str:
    """Every picture of the run folder, embedded (or a note when pictures are off)."""
    if not enabled:
        return section("Pictures", paragraph("Pictures are off for this run (plots.enabled=false).", "muted"))
    figures = [figure(p, root) for p in find_pictures(root, first, leave_out)]
    return section("Pictures", *figures)


# -- shared sections ----------------------------------------------------------------------------------------------

def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this process (``sys.argv``), shell-quoted."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    text = shlex.join(argv)
    return f"python {text}" if argv[0].endswith(".py") else text


def now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def config_yaml(cfg: DictConfig | Mapping[str, Any] | None) -> str:
    """The composed config as YAML, interpolations resolved where they resolve (else as written)."""
    if cfg is None:
        return ""
    conf = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    try:
        return OmegaConf.to_yaml(conf, resolve=True)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra run: shown as written
        return OmegaConf.to_yaml(conf)


def config_section(cfg: DictConfig | Mapping[str, Any] | None) -> str:
    text = config_yaml(cfg)
    return section("Config", details("The composed Hydra config (YAML)", f"<pre>{esc(text)}</pre>")) if text else ""


def select(cfg: DictConfig | Mapping[str, Any] | None, key: str) -> Any:
    """``cfg``'s value at dotted ``key``, or ``None`` (missing, or an interpolation that does not resolve)."""
    if cfg is None:
        return None
    conf = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    try:
        value = OmegaConf.select(conf, key, default=None, throw_on_resolution_failure=False)
    except Exception:  # noqa: BLE001
        return None
    return OmegaConf.to_container(value, resolve=False) if isinstance(value, DictConfig) else value


def meta_table(rows: Sequence[tuple[str, Any]]) -> str:
    """The header's key/value table, leaving out empty values."""
    return table(["", ""], ([Cell(k), Cell(plain(v))] for k, v in rows if v not in (None, "", [], {})), cls="meta")


def records_table(records: Mapping[str, Mapping[str, Any]], first: str = "") -> str:
    """One row per record (e.g. ``learned`` or ``overlap``), one column per key any record has."""
    if not records:
        return ""
    cols = list(dict.fromkeys(k for r in records.values() for k in r))
    return table([first, *cols], ([Cell(name), *(_cell(r.get(c)) for c in cols)] for name, r in records.items()))


def ci_cell(value: Any, ci: Sequence[Any] | None) -> Cell:
    """``"44.24 [38.1, 50.2]"`` (``format_ci``), right-aligned."""
    if value is None:
        return Cell("—", num=True)
    return Cell(format_ci(float(value), ci), num=True)


def diff_cell(c: Mapping[str, Any] | None) -> Cell:
    """A paired difference ``"+3.10 [+0.4, +5.9]"`` (``format_diff``), greyed when within noise."""
    if not c or c.get("diff") is None or None in (c.get("ci95") or [None]):
        return Cell("—", num=True)
    return Cell(format_diff(c), num=True, cls="noise" if c.get("within_noise") else "")


def differences_table(differences: Mapping[str, Mapping[str, Any]], first: str = "difference") -> str:
    """Rows ``"a - b"``, one column per protocol: the paired bootstrap interval of the mAP difference."""
    if not differences:
        return ""
    protos = list(dict.fromkeys(p for d in differences.values() for p in d))
    return table([first, *(Cell(p, num=True) for p in protos)],
                 ([Cell(pair), *(diff_cell(d.get(p)) for p in protos)] for pair, d in differences.items()))


def report_or_warn(write: Callable[..., Path], *args: Any) -> Path | None:
    """``write(*args)`` (a report writer), or ``None`` with a warning when it fails: a report never fails a run."""
    try:
        return write(*args)
    except Exception as err:  # noqa: BLE001 - the report is best effort by design
        log.warning("could not write the run report %s (%s: %s); the results are unaffected", REPORT_NAME,
                    type(err).__name__, err)
        return None


# -- the evaluation report ----------------------------------------------------------------------------------------

EVAL_KEYS = frozenset({"method", "dataset", "backbone", "weights", "image_size", "scales", "ckpt_path",
                       "whitening", "qe", "protocol", "map", "mpk", "map_ci95", "ap_per_query", "n_db",
                       "n_queries", "skipped_images", "time_s", "extraction", "learned", "stages", "stages_ci95",
                       "stage_differences", "rank"})


def _eval_header(results: Mapping[str, Any], cfg: Any, out_dir: Path) -> str:
    whitening = results.get("whitening") or {}
    learned_on = f" (learned on {whitening['dataset']})" if whitening.get("dataset") else ""
    rerank = select(cfg, "rerank.kind")
    return meta_table([
        ("method", results.get("method")), ("dataset", results.get("dataset")),
        ("backbone", f"{results.get('backbone')} ({results.get('weights')} weights)" if results.get("weights")
         else results.get("backbone")),
        ("image size", results.get("image_size")), ("scales", results.get("scales")),
        ("protocol", results.get("protocol")),
        ("images", f"{results.get('n_db')} database, {results.get('n_queries')} queries"
         if results.get("n_db") is not None else None),
        ("whitening", f"{whitening.get('kind')}{learned_on}" if whitening else None),
        ("query expansion", (results.get("qe") or {}).get("kind")),
        ("re-ranking", None if rerank in (None, "none") else rerank),
        ("checkpoint", results.get("ckpt_path")), ("run folder", str(out_dir)), ("date", now()),
        ("command", command_line()),
    ])


def map_table(results: Mapping[str, Any]) -> str:
    """Per protocol: mAP with its 95% bootstrap interval over queries, then mP@k."""
    maps, mpk, cis = results.get("map") or {}, results.get("mpk") or {}, results.get("map_ci95") or {}
    ks = sorted({k for p in mpk.values() for k in p}, key=lambda k: (not str(k).isdigit(), int(k)
                                                                     if str(k).isdigit() else 0, str(k)))
    head = ["protocol", Cell("mAP [95% CI]", num=True), *(Cell(f"mP@{k}", num=True) for k in ks)]
    return table(head, ([Cell(p), ci_cell(m, cis.get(p)), *(number((mpk.get(p) or {}).get(k)) for k in ks)]
                        for p, m in maps.items()))


def stages_tables(results: Mapping[str, Any]) -> str:
    """The method's stages (mAP with intervals per protocol) and each stage's paired difference to the first."""
    stages, cis = results.get("stages") or {}, results.get("stages_ci95") or {}
    if not stages:
        return ""
    protos = list(dict.fromkeys(p for s in stages.values() for p in s))
    stage_rows = ([Cell(name), *(ci_cell(maps.get(p), (cis.get(name) or {}).get(p)) for p in protos)]
                  for name, maps in stages.items())
    diffs = results.get("stage_differences") or {}
    return (table(["stage", *(Cell(p, num=True) for p in protos)], stage_rows)
            + (paragraph("Paired difference of mAP to the first stage (95% bootstrap interval over the same "
                         "queries; grey: the interval contains 0).") + differences_table(diffs) if diffs else ""))


def learned_section(records: Mapping[str, Mapping[str, Any]]) -> str:
    if not records:
        return section("What was learned on what",
                       paragraph("Nothing in this run was learned from data (no whitening, codebook or checkpoint "
                                 "records).", "muted"))
    return section("What was learned on what",
                   paragraph("Each learned piece, the images it saw and their overlap with the evaluated images "
                             "(by content)."), records_table(records, "component"))


def skipped_section(skipped: Mapping[str, Any] | None) -> str:
    if not skipped:
        return ""
    count = int(skipped.get("count") or 0)
    if not count:
        return section("Skipped images", paragraph("No image was skipped.", "muted"))
    rows = [[Cell(part), Cell(p)] for part in ("db", "query") for p in skipped.get(part) or []]
    return section("Skipped images", paragraph(f"{count} unreadable images were skipped (zero descriptors)."),
                   details(f"the {count} files", table(["part", "file"], rows), open_=count <= 20))


def ap_per_query_section(results: Mapping[str, Any]) -> str:
    aps = results.get("ap_per_query") or {}
    if not aps:
        return ""
    protos = list(aps)
    n = max(len(v) for v in aps.values())
    rows = ([Cell(str(i), num=True), *(number(aps[p][i] if i < len(aps[p]) else None) for p in protos)]
            for i in range(n))
    return details(f"AP of each of the {n} queries (percent; — : no positive)",
                   table([Cell("query", num=True), *(Cell(p, num=True) for p in protos)], rows))


def method_sections(results: Mapping[str, Any], known: frozenset[str]) -> str:
    """The results' other sections (a method's own, e.g. ``rerank``; a callback's, e.g. ``attention``)."""
    parts = []
    for key, value in results.items():
        if key in known:
            continue
        body = kv_table(value) if isinstance(value, Mapping) else table(["", "value"], [[Cell(key), _cell(value)]])
        if body:
            parts.append(f"<h3>{esc(key)}</h3>{body}")
    return "".join(parts)


def eval_report(results: Mapping[str, Any], cfg: DictConfig | Mapping[str, Any] | None, out_dir: Path) -> str:
    """The evaluation page as HTML text (see :func:`write_eval_report`)."""
    out_dir = Path(out_dir)
    enabled = select(cfg, "plots.enabled") is not False
    timings = {"time_s": results.get("time_s") or {}, "extraction": results.get("extraction") or {}}
    title = f"{results.get('method')} on {results.get('dataset')}"
    return page(title, [
        section("Run", _eval_header(results, cfg, out_dir)),
        section("Mean average precision",
                paragraph("mAP and mP@k in percent; the interval is the 95% percentile bootstrap over queries."),
                map_table(results), ap_per_query_section(results)),
        section("Stages", stages_tables(results)),
        learned_section(results.get("learned") or {}),
        skipped_section(results.get("skipped_images")),
        section("Timings", kv_table({k: v for k, v in timings.items() if v})),
        section("Method details", method_sections(results, EVAL_KEYS)),
        pictures_section(out_dir, enabled, first=("pr_curve.png", "topk.png")),
        config_section(cfg),
    ])


def write_eval_report(results: Mapping[str, Any], cfg: DictConfig | Mapping[str, Any] | None,
                      out_dir: str | Path) -> Path:
    """Write ``<out_dir>/report.html`` for an ``eval.py`` run (``results``: its ``results.json``); returns its
    path."""
    out_dir = Path(out_dir)
    return write_page(out_dir / REPORT_NAME, eval_report(results, cfg, out_dir))


# -- the training report ------------------------------------------------------------------------------------------

Series = dict[str, dict[int, float]]  # metric -> epoch -> value

TRAIN_KEYS = frozenset({"task", "monitor", "monitor_value", "best_checkpoint", "last_checkpoint", "epochs",
                        "global_step", "metrics", "test", "overlap"})


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def history_series(path: Path) -> Series:
    """``history.json`` (:class:`~lit_retrieval.callbacks.history.MetricHistory`) as series by epoch: ``train/``
    metrics from the training-epoch records, the others from the validation records (when any)."""
    records = (_read_json(path) or {}).get("records") or []
    stages = {r.get("stage") for r in records}
    out: Series = {}
    for r in records:
        for key, value in (r.get("metrics") or {}).items():
            train_key = key.startswith("train/")
            if (train_key and r.get("stage") != "train" and "train" in stages) or \
                    (not train_key and r.get("stage") == "train" and "validation" in stages):
                continue
            v = _finite(value)
            if v is not None and r.get("epoch") is not None:
                out.setdefault(key, {})[int(r["epoch"])] = v
    return out


def csv_series(root: Path) -> Series:
    """The latest CSV logger file (``*/version_N/metrics.csv``) as series by epoch (last value of each epoch)."""
    files = sorted(root.glob("*/version_*/metrics.csv"),
                   key=lambda p: int(p.parent.name.rsplit("_", 1)[-1]) if p.parent.name.rsplit("_", 1)[-1]
                   .isdigit() else -1)
    if not files:
        return {}
    out: Series = {}
    with open(files[-1], newline="") as f:
        for row in csv.DictReader(f):
            epoch = _finite(row.get("epoch"))
            if epoch is None:
                continue
            for key, value in row.items():
                v = _finite(value) if key not in ("epoch", "step") else None
                if v is not None:
                    out.setdefault(key, {})[int(epoch)] = v
    return out


def retrieval_series(history: Sequence[Mapping[str, Any]]) -> Series:
    """``retrieval.json`` ``history`` (every validation table) as series by epoch."""
    out: Series = {}
    for h in history:
        for key, value in h.items():
            v = _finite(value) if key.startswith("retrieval/") else None
            if v is not None and h.get("epoch") is not None:
                out.setdefault(key, {})[int(h["epoch"])] = v
    return out


def epoch_history(out_dir: Path) -> Series:
    """A training run's metrics by epoch: ``history.json``, else the CSV logger's ``metrics.csv``, completed by
    ``retrieval.json``'s validation tables."""
    out_dir = Path(out_dir)
    series = history_series(out_dir / "history.json") if (out_dir / "history.json").is_file() else {}
    if not series:
        series = csv_series(out_dir)
    retrieval = retrieval_series((_read_json(out_dir / "retrieval.json") or {}).get("history") or [])
    return {**retrieval, **series}


def curve_panels(series: Series) -> list[tuple[str, dict[str, dict[int, float]]]]:
    """Panels of the learning curves: the losses together, each validation benchmark's mAP (medium, or the classic
    protocol's) with one line per method, then each other metric alone (mP@k and test values left out)."""
    keys = [k for k in series if not k.startswith("test/") and "mP@" not in k and k not in ("epoch", "step")]
    panels: dict[str, dict[str, dict[int, float]]] = {}
    losses = {k: series[k] for k in keys if "loss" in k.rsplit("/", 1)[-1]}
    if losses:
        panels["loss"] = losses
    retrieval = [k for k in keys if k.startswith("retrieval/") and k.count("/") == 3]
    for k in retrieval:
        _, ds, method, name = k.split("/")
        if name in ("mAP_M", "mAP") or (name.startswith("mAP") and not any(
                o.startswith(f"retrieval/{ds}/{method}/mAP_M") for o in retrieval)):
            panels.setdefault(f"{ds}: {name.replace('_', ' ')}" if name != "mAP_M" else f"{ds}: mAP (medium)",
                              {})[method if name in ("mAP_M", "mAP") else f"{method} {name}"] = series[k]
    for k in keys:
        if k not in losses and k not in retrieval:
            panels[k] = {k: series[k]}
    return list(panels.items())[:MAX_CURVE_PANELS]


def draw_learning_curves(series: Series, path: Path) -> Path | None:
    """Draw :func:`curve_panels` of ``series`` into ``path`` (PNG, written atomically); ``None`` when there is no
    metric to draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = curve_panels(series)
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.3 * cols, 3.0 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i, (title, lines) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, points in sorted(lines.items()):
            epochs = sorted(points)
            ax.plot(epochs, [points[e] for e in epochs], marker="o", markersize=3, linewidth=1.4, label=label)
        seen = sorted({e for points in lines.values() for e in points})
        if len(seen) == 1:  # one epoch: a point in the middle, not an axis of fractions
            ax.set_xlim(seen[0] - 1, seen[0] + 1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


def split_metric(key: str) -> tuple[str, str, str] | None:
    """``[test/]retrieval/<dataset>/<method>/<metric>`` -> ``(dataset, method, metric)``."""
    parts = key.removeprefix("test/").split("/")
    return (parts[1], parts[2], parts[3]) if len(parts) == 4 and parts[0] == "retrieval" else None


def _metric_order(name: str) -> tuple[int, int, int, str]:
    kind = 0 if name.startswith("mAP") else 1
    k = re.search(r"@(\d+)", name)
    sfx = name.rsplit("_", 1)[-1] if "_" in name else ""
    return kind, int(k.group(1)) if k else 0, "EMH".find(sfx) if sfx in PROTOCOLS else 9, name


def retrieval_table(metrics: Mapping[str, Any], intervals: Mapping[str, Mapping[str, Any]] | None = None,
                    columns: Callable[[str], bool] = lambda name: True) -> str:
    """Rows (dataset, method), one column per retrieval metric name; a mAP cell carries its interval when
    ``intervals`` (``"<dataset>/<method>" -> protocol -> [lo, hi]``) has it."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in metrics.items():
        parts = split_metric(key)
        if parts is not None and columns(parts[2]):
            rows.setdefault(parts[:2], {})[parts[2]] = value
    if not rows:
        return ""
    cols = sorted({c for r in rows.values() for c in r}, key=_metric_order)

    def cell(ds: str, method: str, name: str, value: Any) -> Cell:
        proto = PROTOCOLS.get(name.rsplit("_", 1)[-1] if "_" in name else "")
        ci = ((intervals or {}).get(f"{ds}/{method}") or {}).get(proto or "")
        return ci_cell(value, ci) if name.startswith("mAP") and ci else number(value)

    return table(["dataset", "method", *(Cell(c, num=True) for c in cols)],
                 ([Cell(ds), Cell(m), *(cell(ds, m, c, r.get(c)) for c in cols)]
                  for (ds, m), r in sorted(rows.items())))


def _train_header(results: Mapping[str, Any], cfg: Any, out_dir: Path) -> str:
    model = select(cfg, "model._target_")
    data = select(cfg, "data._target_")
    return meta_table([
        ("model", str(model).rsplit(".", 1)[-1] if model else None), ("objective", select(cfg, "model.loss")),
        ("data", str(data).rsplit(".", 1)[-1] if data else None), ("backbone", select(cfg, "backbone.name")),
        ("epochs", results.get("epochs")), ("steps", results.get("global_step")),
        ("monitor", f"{results.get('monitor')} ({select(cfg, 'monitor_mode') or 'max'})"
         if results.get("monitor") else None),
        ("best value", plain(results.get("monitor_value")) if results.get("monitor_value") is not None else None),
        ("best checkpoint", results.get("best_checkpoint")), ("last checkpoint", results.get("last_checkpoint")),
        ("run folder", str(out_dir)), ("date", now()), ("command", command_line()),
    ])


def final_metrics_section(results: Mapping[str, Any]) -> str:
    metrics = results.get("metrics") or {}
    others = {k: v for k, v in metrics.items() if split_metric(k) is None}
    validation = {k: v for k, v in metrics.items() if split_metric(k) is not None and not k.startswith("test/")}
    tested = {split_metric(k)[0] for k in (results.get("test") or {}).get("metrics") or {} if split_metric(k)}
    val_only = {k: v for k, v in validation.items() if split_metric(k)[0] not in tested}
    return section("Final metrics",
                   paragraph("The values at the end of training (the last validation; the test benchmarks have "
                             "their own table below)."),
                   retrieval_table(val_only),
                   table(["metric", Cell("value", num=True)], ([Cell(k), number(v, 4)] for k, v in others.items())))


def epochs_section(retrieval: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    """Every validation table by epoch (mAP per protocol), the selected epoch highlighted, and the paired
    differences of each epoch."""
    history = retrieval.get("history") or []
    if not history:
        return ""
    monitor, best = results.get("monitor"), _finite(results.get("monitor_value"))
    picked = split_metric(str(monitor)) if monitor else None
    rows, classes, diff_rows = [], [], []
    for h in history:
        by: dict[tuple[str, str], dict[str, Any]] = {}
        for key, value in h.items():
            parts = split_metric(key)
            if parts is not None and parts[2].startswith("mAP"):
                by.setdefault(parts[:2], {})[parts[2]] = value
        for (ds, method), r in sorted(by.items()):
            rows.append((h.get("epoch"), ds, method, r))
            chosen = picked is not None and (ds, method) == picked[:2] and best is not None and \
                _finite(h.get(str(monitor))) is not None and abs(float(h[str(monitor)]) - best) < 1e-3
            classes.append("best" if chosen else "")
        for pair, by_proto in (h.get("differences") or {}).items():
            diff_rows.append((h.get("epoch"), pair, by_proto))
    cols = sorted({c for *_, r in rows for c in r}, key=_metric_order)
    epochs = table([Cell("epoch", num=True), "dataset", "method", *(Cell(c, num=True) for c in cols)],
                   ([number(e), Cell(ds), Cell(m), *(number(r.get(c)) for c in cols)] for e, ds, m, r in rows),
                   row_cls=classes)
    protos = list(dict.fromkeys(p for *_, d in diff_rows for p in d))
    diffs = table([Cell("epoch", num=True), "difference", *(Cell(p, num=True) for p in protos)],
                  ([number(e), Cell(pair), *(diff_cell(d.get(p)) for p in protos)] for e, pair, d in diff_rows))
    note = f"Highlighted: the selected checkpoint's epoch (best {monitor})." if picked else ""
    return section("Validation by epoch", paragraph("mAP in percent of every method at each validation. " + note),
                   epochs, details("Paired differences by epoch (95% bootstrap interval over queries)", diffs))


def test_section(results: Mapping[str, Any]) -> str:
    test = results.get("test") or {}
    if not test.get("metrics"):
        return ""
    where = f"Evaluated once, on {test.get('checkpoint') or 'the final weights'}; never used for selection."
    return section("Test benchmarks", paragraph(where),
                   retrieval_table(test["metrics"], test.get("ci95") or {}),
                   paragraph("Paired difference of mAP of each learned method to each reference (95% bootstrap "
                             "interval over the same queries; grey: the interval contains 0).")
                   if test.get("differences") else "",
                   differences_table(test.get("differences") or {}))


def curves_section(out_dir: Path) -> str:
    series = epoch_history(out_dir)
    path = draw_learning_curves(series, out_dir / LEARNING_CURVES) if series else None
    if path is None:
        return section("Learning curves", paragraph("No per-epoch metric was recorded.", "muted"))
    return section("Learning curves", figure(path, out_dir, "Learning curves by epoch"))


def train_report(results: Mapping[str, Any], cfg: DictConfig | Mapping[str, Any] | None, out_dir: Path) -> str:
    """The training page as HTML text (see :func:`write_train_report`)."""
    out_dir = Path(out_dir)
    retrieval = _read_json(out_dir / "retrieval.json") or {}
    model = str(select(cfg, "model._target_") or "").rsplit(".", 1)[-1]
    return page(f"train {model}".rstrip(), [
        section("Run", _train_header(results, cfg, out_dir)),
        curves_section(out_dir),
        final_metrics_section(results),
        epochs_section(retrieval, results),
        test_section(results),
        section("Overlap checks",
                paragraph("The training data and learned sets against every benchmark, and validation against "
                          "test, by image content."), records_table(results.get("overlap") or {}, "check")),
        section("Other records", method_sections(results, TRAIN_KEYS)),
        pictures_section(out_dir, leave_out=(LEARNING_CURVES.as_posix(),)),
        config_section(cfg),
    ])


def write_train_report(results: Mapping[str, Any], cfg: DictConfig | Mapping[str, Any] | None,
                       out_dir: str | Path) -> Path:
    """Write ``<out_dir>/report.html`` for a ``train.py`` run (``results``: its ``results.json``; the learning
    curves also go to ``plots/learning_curves.png``); returns its path."""
    out_dir = Path(out_dir)
    return write_page(out_dir / REPORT_NAME, train_report(results, cfg, out_dir))
