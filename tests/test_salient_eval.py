"""``eval.py method=salient_regions``: every variant end to end on a tiny revisited-format benchmark."""
import json

import pytest
from conftest import eval_cfg

from lit_retrieval.evaluate import run_eval
from lit_retrieval.salient.pipeline import Settings


def test_salient_regions_variants_end_to_end(tiny, tmp_path):
    base = ["method=salient_regions", "dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny",
            "image_size=224", "method.reduced_dim=32", "method.dim=32"]
    o2r = run_eval(eval_cfg(tmp_path, *base, "qe=regional", f"results_file={tmp_path}/out.json"), tmp_path / "o2r")
    assert json.loads((tmp_path / "out.json").read_text()) == o2r
    info = o2r["salient_regions"]
    assert info["variant"] == "O2_R" and info["dim"] == 32
    assert 1 < info["regions_per_image"]["db"] <= 8 and info["regions_per_image"]["query"] == 1  # cropped queries
    assert info["bytes_per_image"] == pytest.approx(info["regions_per_image"]["db"] * 32 * 4, rel=1e-3)
    assert list(o2r["stages"]) == ["initial", "regional_qe"] and o2r["map"] == o2r["stages"]["regional_qe"]
    assert (tmp_path / "o2r" / "salient_regions.png").stat().st_size > 10_000

    o2w = run_eval(eval_cfg(tmp_path, *base, "method.regions=whole", "method.dim=64", "plots.enabled=false"),
                   tmp_path / "o2w")
    assert o2w["salient_regions"]["variant"] == "O2_W"
    assert o2w["salient_regions"]["dim"] == o2w["n_db"] - 1  # 37 whole-image vectors span 36 whitened dims, not 64
    assert o2w["salient_regions"]["regions_per_image"]["db"] == 1 and "stages" not in o2w
    assert o2w["map"] != o2r["stages"]["initial"]  # the regions change the ranking

    o1r = run_eval(eval_cfg(tmp_path, *base, "method.order=1", "method.query=full", "plots.enabled=false"),
                   tmp_path / "o1r")
    assert o1r["salient_regions"]["variant"] == "O1_R_full" and o1r["salient_regions"]["dim"] == 1280
    assert o1r["salient_regions"]["regions_per_image"]["query"] > 1  # uncropped queries keep their regions

    other = run_eval(eval_cfg(tmp_path, *base, "method.regions=whole", "method.dim=64", "plots.enabled=false",
                          "~method.pca_dataset", f"+method.pca_dataset={{kind:revisited,root:{tiny},name:tiny}}"),
                     tmp_path / "pca_other")
    assert other["map"] == o2w["map"]  # the same images, learned through the separate PCA-set path


@pytest.mark.parametrize("overrides,match", [
    (["method=salient_regions", "qe=avg"], "qe=regional"),
    (["method=salient_regions", "whitening=pca"], "whitening=none"),
    (["method=salient_regions", "method.order=3"], "method.order=3"),
    (["method=gem", "qe=regional"], "qe=avg|alpha"),
])
def test_salient_bad_configs_fail_before_work(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        run_eval(eval_cfg(tmp_path, "dataset=revisited", f"dataset.root={tmp_path}/nowhere", "dataset.name=x",
                      *overrides), tmp_path / "run")


def test_too_small_pca_set_names_the_fix(tiny, tmp_path):
    with pytest.raises(ValueError, match="lower method.reduced_dim"):
        run_eval(eval_cfg(tmp_path, "method=salient_regions", "dataset=revisited", f"dataset.root={tiny}",
                      "dataset.name=tiny", "image_size=224", "method.regions=whole", "plots.enabled=false"),
                 tmp_path / "run")


def test_settings_variant_names():
    assert Settings().variant == "O2_R"
    assert Settings(order=1, regions="whole").variant == "O1_W"
