"""The run report (``report.html``): every value and picture of a run on one self-contained page.

Unit tests build the page from synthetic results and fake pictures; one test runs a real evaluation on the tiny
generated benchmark; the browser test opens that page in headless Chromium (skipped when none is installed)."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from conftest import CONF, eval_cfg
from lit_retrieval.metrics import format_ci, format_diff
from lit_retrieval.report import (CAPTIONS, LEARNING_CURVES, REPORT_NAME, epoch_history, find_pictures, image_data_uri,
                                  report_or_warn, write_eval_report, write_train_report)

VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr"}
BROWSERS = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")


class Page(HTMLParser):
    """The parsed page: every ``<img>``'s attributes, every ``src``/``href``, and nesting errors."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed {self.stack}")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a)
        self.urls += [a[k] for k in ("src", "href") if k in a]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def captions(self) -> list[str]:
        return [i.get("alt", "") for i in self.images]


def parsed(path: Path) -> Page:
    page = Page(path.read_text())
    assert not page.errors, page.errors
    assert page.images and all(i["src"].startswith("data:image/") for i in page.images)
    assert not [u for u in page.urls if re.match(r"\s*(https?:)?//", u)], "the page must be self-contained"
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?://""", path.read_text())
    return page


def _png_matplotlib(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(3, 2), dpi=60)
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)


def _png_pil(path: Path, color: tuple[int, int, int] = (30, 120, 200), size: tuple[int, int] = (90, 60)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _eval_results() -> dict:
    return {
        "method": "gem", "dataset": "synthbench", "backbone": "efficientnet_lite0", "weights": "imagenet",
        "image_size": 256, "scales": [1.0, 0.7071], "ckpt_path": None, "protocol": "revisited",
        "whitening": {"kind": "pca", "dataset": "embedded-s1", "n_images": 162},
        "qe": {"kind": "avg", "k": 5},
        "map": {"easy": 61.2345, "medium": 47.5, "hard": 12.3456},
        "mpk": {"easy": {"1": 100.0, "5": 71.4286, "10": 55.5}, "medium": {"1": 66.6667, "5": 60.0, "10": 43.3333},
                "hard": {"1": 33.3333, "5": 13.3333, "10": 9.9999}},
        "map_ci95": {"easy": [40.1234, 80.9876], "medium": [30.5, 64.25], "hard": [3.3, 21.7]},
        "ap_per_query": {"easy": [81.25, None, 41.2], "medium": [60.0, 35.0, 47.5], "hard": [12.0, 10.5, 14.5]},
        "n_db": 37, "n_queries": 3,
        "skipped_images": {"db": ["/data/synthbench/jpg/db_7.jpg"], "query": [], "count": 1},
        "time_s": {"extract": 1.234, "search_qe": 0.0009},
        "extraction": {"processes": 1, "store_dtype": "float16"},
        "learned": {"whitening": {"dataset": "embedded-s1", "n_images": 162, "digest": "c389f16b", "overlap": 0,
                                  "transductive": False},
                    "training_data": {"checked": False, "checkpoint": "/runs/x/best.ckpt"}},
        "stages": {"initial": {"easy": 58.1, "medium": 44.2, "hard": 11.0},
                   "aml": {"easy": 61.2345, "medium": 47.5, "hard": 12.3456}},
        "stages_ci95": {"initial": {"easy": [37.0, 79.0], "medium": [29.0, 61.0], "hard": [2.0, 20.0]},
                        "aml": {"easy": [40.1234, 80.9876], "medium": [30.5, 64.25], "hard": [3.3, 21.7]}},
        "stage_differences": {"aml - initial": {
            "easy": {"diff": 3.1345, "ci95": [0.4, 5.9], "within_noise": False},
            "medium": {"diff": 3.3, "ci95": [1.25, 6.5], "within_noise": False},
            "hard": {"diff": 1.3456, "ci95": [-0.8, 3.1], "within_noise": True}}},
        "rerank": {"kind": "aml", "n": 37, "bytes_per_image": {"stored": 1250.5}, "note": "<script>alert(1)</script>"},
    }


def _eval_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    _png_matplotlib(out / "pr_curve.png")
    _png_pil(out / "topk.png")
    _png_pil(out / "aml_localization.png", (200, 40, 40))
    _png_pil(out / "plots" / "attention_regions.png", (40, 160, 40))
    _png_pil(out / "plots" / "attention_regions_epoch3.png", (10, 10, 10))  # a per-epoch copy: left out
    (out / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")  # unreadable: left out, not fatal
    _png_pil(out / "wandb" / "run-1" / "media" / "copy.png")  # a logger's copy, hidden folders: left out
    _png_pil(out / ".hydra" / "hidden.png")
    return out


CFG = OmegaConf.create({"method": {"name": "gem", "p": 3.0}, "plots": {"enabled": True, "n_queries": 4},
                        "rerank": {"kind": "aml"}, "image_size": 256})


def test_eval_report_holds_every_value_and_picture(tmp_path, caplog):
    res, out = _eval_results(), _eval_run(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lit_retrieval.report"):
        path = write_eval_report(res, CFG, out)
    assert path == out / REPORT_NAME
    page, text = parsed(path), path.read_text()
    assert "broken.png" in caplog.text  # logged, skipped
    assert page.captions == [CAPTIONS["pr_curve"], CAPTIONS["topk"], "Aml localization", "Attention regions"]
    for i in page.images:
        _, b64 = i["src"].split(",", 1)
        assert b64 and re.fullmatch(r"[A-Za-z0-9+/=]+", b64)
    # header, mAP table with intervals (format_ci), mP@k, stages, paired differences (format_diff)
    for value in ("gem on synthbench", "efficientnet_lite0", "revisited", "37 database, 3 queries", "embedded-s1",
                  "python ", "100.00", "71.43", "43.33", "10.00", "aml - initial", "initial"):
        assert value in text, value
    for proto, m in res["map"].items():
        assert format_ci(m, res["map_ci95"][proto]) in text
    for name, maps in res["stages"].items():
        for proto, m in maps.items():
            assert format_ci(m, res["stages_ci95"][name][proto]) in text
    for c in res["stage_differences"]["aml - initial"].values():
        assert format_diff(c) in text
    # learned pieces, skipped images, timings, per-query AP, the method's own section (escaped), the config
    for value in ("c389f16b", "/runs/x/best.ckpt", "/data/synthbench/jpg/db_7.jpg", "1.234", "0.0009", "float16",
                  "81.25", "bytes_per_image.stored", "1250", "&lt;script&gt;alert(1)&lt;/script&gt;",
                  "<details><summary>The composed Hydra config (YAML)</summary>", "n_queries: 4"):
        assert value in text, value
    assert "<script>alert" not in text
    assert re.search(r'<td class="num">47\.50 \[30\.5, 64\.2\]</td>', text)  # numbers right-aligned


def test_a_missing_picture_is_skipped_and_pictures_off_leave_the_tables(tmp_path):
    res, out = _eval_results(), _eval_run(tmp_path)
    (out / "pr_curve.png").unlink()
    page = parsed(write_eval_report(res, CFG, out))
    assert CAPTIONS["pr_curve"] not in page.captions and CAPTIONS["topk"] in page.captions
    off = OmegaConf.merge(CFG, {"plots": {"enabled": False}})
    text = write_eval_report(res, off, out).read_text()
    assert "<img" not in text and "plots.enabled=false" in text and format_ci(47.5, [30.5, 64.25]) in text
    # no config at all, nothing but the results: still a page
    bare = {"method": "mac", "dataset": "d", "map": {"all": 10.0}, "mpk": {"all": {"1": 5.0}}}
    assert "10.00" in write_eval_report(bare, None, tmp_path / "empty").read_text()


def test_large_pictures_are_downscaled_for_the_page(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (1100, 1100, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "big.png")
    assert (tmp_path / "big.png").stat().st_size > 1_500_000
    uri = image_data_uri(tmp_path / "big.png")
    assert uri is not None and len(uri) < 2_100_000 and uri.startswith("data:image/")
    assert image_data_uri(tmp_path / "absent.png") is None


def _train_run(tmp_path: Path) -> tuple[dict, Path]:
    out = tmp_path / "train"
    key = "retrieval/val1/regional_attention/mAP_M"
    history = [{"epoch": e, "step": 3 * (e + 1), key: v, "retrieval/val1/regional_attention/mAP_E": v + 10,
                "retrieval/val1/gem/mAP_M": 40.0, "retrieval/val1/gem/mAP_E": 50.0,
                "differences": {"val1/regional_attention - gem": {
                    "medium": {"diff": v - 40.0, "ci95": [v - 42.0, v - 38.0], "within_noise": abs(v - 40) < 2}}}}
               for e, v in enumerate((41.5, 47.125, 44.0))]
    test = {"test/retrieval/held/regional_attention/mAP_M": 52.75, "test/retrieval/held/gem/mAP_M": 49.5}
    diffs = {"held/regional_attention - gem": {"medium": {"diff": 3.25, "ci95": [0.5, 6.0], "within_noise": False}}}
    cis = {"held/regional_attention": {"medium": [45.0, 60.5]}, "held/gem": {"medium": [41.0, 57.0]}}
    (out / "plots").mkdir(parents=True)
    (out / "retrieval.json").write_text(json.dumps({"history": history, "test": test, "test_differences": diffs,
                                                    "test_ci95": cis}))
    records = [{"stage": s, "epoch": e, "step": 3 * (e + 1),
                "metrics": {"train/loss": 2.0 - e / 2, "val/loss": 2.2 - e / 3, key: history[e][key]}}
               for e in range(3) for s in ("validation", "train")]
    (out / "history.json").write_text(json.dumps({"records": records}))
    _png_pil(out / "plots" / "attention_regions.png", (40, 160, 40))
    _png_pil(out / "plots" / "attention_regions_final.png", (160, 40, 160))
    _png_pil(out / "plots" / "attention_regions_epoch1.png")
    results = {"task": "train", "monitor": key, "monitor_value": 47.125,
               "best_checkpoint": str(out / "checkpoints" / "best.ckpt"), "last_checkpoint": "", "epochs": 3,
               "global_step": 9,
               "metrics": {key: 44.0, "retrieval/val1/gem/mAP_M": 40.0, "train/loss": 1.0, "val/loss": 1.5333,
                           "retrieval/held/regional_attention/mAP_M": 52.75},
               "test": {"checkpoint": str(out / "checkpoints" / "best.ckpt"), "metrics": test,
                        "differences": diffs, "ci95": cis},
               "overlap": {"training data vs test held": {"dataset": "pairs", "n_images": 24, "overlap": 0,
                                                          "transductive": False}},
               "attention": {"tag": "final", "regions_on_objects": {"top_k": 0.4, "chance": 0.27}}}
    return results, out


def test_train_report_holds_curves_tables_and_pictures(tmp_path):
    results, out = _train_run(tmp_path)
    cfg = OmegaConf.create({"model": {"_target_": "pkg.RegionalAttentionModule", "loss": "retrieval"},
                            "monitor": results["monitor"], "monitor_mode": "max", "trainer": {"max_epochs": 3}})
    page, text = parsed(write_train_report(results, cfg, out)), (out / REPORT_NAME).read_text()
    assert (out / LEARNING_CURVES).stat().st_size > 1000
    assert page.captions[0] == "Learning curves by epoch"
    assert sorted(page.captions[1:]) == ["Attention regions", "Attention regions final"]  # no epoch copy
    for value in ("RegionalAttentionModule", "retrieval/val1/regional_attention/mAP_M (max)", "47.125",
                  str(out / "checkpoints" / "best.ckpt"), "1.5333", "training data vs test held", "pairs",
                  "regions_on_objects.top_k", "max_epochs: 3", format_ci(52.75, [45.0, 60.5]),
                  format_ci(49.5, [41.0, 57.0]), format_diff(results["test"]["differences"][
                      "held/regional_attention - gem"]["medium"]), "val1/regional_attention - gem"):
        assert value in text, value
    # the per-epoch table, the selected epoch highlighted
    best = re.findall(r'<tr class="best">(.*?)</tr>', text)
    assert len(best) == 1 and "47.12" in best[0] and ">1<" in best[0]
    for v in ("41.50", "44.00", "57.12"):
        assert v in text
    series = epoch_history(out)
    assert series["train/loss"] == {0: 2.0, 1: 1.5, 2: 1.0}
    assert series["retrieval/val1/gem/mAP_M"] == {0: 40.0, 1: 40.0, 2: 40.0}  # from retrieval.json


def test_train_history_falls_back_on_the_csv_logger(tmp_path):
    csv_dir = tmp_path / "csv" / "version_1"
    csv_dir.mkdir(parents=True)
    (csv_dir / "metrics.csv").write_text("epoch,step,train/loss,val/loss\n0,2,1.5,\n0,2,,1.75\n1,5,1.25,\n"
                                         "1,5,,1.5\n")
    (tmp_path / "csv" / "version_0").mkdir()
    (tmp_path / "csv" / "version_0" / "metrics.csv").write_text("epoch,step,train/loss\n0,1,9.0\n")
    assert epoch_history(tmp_path) == {"train/loss": {0: 1.5, 1: 1.25}, "val/loss": {0: 1.75, 1: 1.5}}
    results = {"task": "train", "monitor": "val/loss", "monitor_value": 1.5, "metrics": {"val/loss": 1.5}}
    _png_pil(tmp_path / "plots" / "detector_ap.png")
    page = parsed(write_train_report(results, None, tmp_path))
    assert page.captions == ["Learning curves by epoch", "Detector ap"]


def test_a_failing_report_is_a_warning(tmp_path, caplog):
    def broken(*_):
        raise RuntimeError("disk on fire")

    with caplog.at_level(logging.WARNING, logger="lit_retrieval.report"):
        assert report_or_warn(broken, {}, None, tmp_path) is None
    assert "disk on fire" in caplog.text and "results are unaffected" in caplog.text
    assert find_pictures(tmp_path / "absent") == []


# -- the metric history callback ----------------------------------------------------------------------------------

def test_metric_history_records_each_epoch_of_a_fit(tmp_path):
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from lit_retrieval.callbacks.history import MetricHistory

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            loss = self.lin(batch[0]).pow(2).mean()
            self.log("train/loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, _):
            self.log("val/loss", self.lin(batch[0]).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)
    history = MetricHistory(output_dir=str(tmp_path))
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[history], accelerator="cpu")
    model = Tiny()
    trainer.fit(model, data, data)
    records = json.loads((tmp_path / "history.json").read_text())["records"]
    assert [(r["stage"], r["epoch"]) for r in records] == [("validation", 0), ("train", 0), ("validation", 1),
                                                            ("train", 1)]  # the sanity check is not recorded
    assert all("val/loss" in r["metrics"] for r in records) and "train/loss" in records[1]["metrics"]
    trainer.validate(model, data, verbose=False)  # after fitting (e.g. the test benchmarks): not an epoch
    assert len(json.loads((tmp_path / "history.json").read_text())["records"]) == 4
    series = epoch_history(tmp_path)
    assert set(series["train/loss"]) == set(series["val/loss"]) == {0, 1}
    restored = MetricHistory()
    restored.load_state_dict(history.state_dict())
    assert restored.records == records


def test_the_default_training_callbacks_record_the_history(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}", f"paths.root_dir={tmp_path}"])
    c = cfg.callbacks.metric_history
    assert get_class(c._target_).__name__ == "MetricHistory" and c.output_dir == str(tmp_path) and c.enabled


# -- a real evaluation, and the page in a browser -----------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_report(tiny, tmp_path_factory):
    """``run_eval`` (GeM, efficientnet_lite0, the tiny benchmark at 64 px): its results and run folder."""
    from lit_retrieval.evaluate import run_eval

    tmp = tmp_path_factory.mktemp("report_eval")
    cfg = eval_cfg(tmp, "method=gem", "backbone=efficientnet_lite0", "dataset=revisited", f"dataset.root={tiny}",
                   "dataset.name=tiny", "image_size=64")
    return run_eval(cfg, tmp / "run"), tmp / "run"


def test_every_evaluation_writes_its_report(eval_report):
    res, out = eval_report
    page = parsed(out / REPORT_NAME)
    text = (out / REPORT_NAME).read_text()
    assert page.captions[:2] == [CAPTIONS["pr_curve"], CAPTIONS["topk"]]
    assert format_ci(res["map"]["medium"], res["map_ci95"]["medium"]) in text
    assert "gem on tiny" in text and "dataset:" in text  # the composed config


def find_browser() -> str | None:
    """Chromium or Chrome: ``/usr/bin/chromium``, else the first on ``PATH``."""
    for name in BROWSERS:
        path = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
        if path:
            return path
    return None


def headless(browser: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Open ``page`` in a headless browser with a throwaway profile and no network services."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_the_report_renders_in_a_browser_with_every_picture(eval_report, tmp_path):
    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium installed (apt-get install chromium): the report was not checked in a browser")
    report = eval_report[1] / REPORT_NAME
    shot = tmp_path / "shot.png"
    run = headless(browser, report, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000")
    assert shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as img:
        extrema = img.convert("RGB").getextrema()
    assert any(lo != hi for lo, hi in extrema), "the screenshot is blank"
    dom = headless(browser, report, tmp_path / "profile", "--dump-dom")
    got = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom.stdout)
    assert got, dom.stderr[-2000:]
    loaded, total = map(int, got.groups())
    assert total > 0 and loaded == total
