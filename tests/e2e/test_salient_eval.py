"""``eval.py method=salient_regions``: every variant end to end on a tiny revisited-format benchmark."""
import json

import pytest
from conftest import eval_cfg

from lit_retrieval.evaluate import run_eval
from lit_retrieval.methods.salient_regions.pipeline import Settings


def test_salient_regions_variants_end_to_end(tiny, tmp_path):
    base = ["method=salient_regions", "dataset=revisited", f"dataset.root={tiny}", "dataset.name=tiny",
            "image_size=224", "method.reduced_dim=32", "method.dim=32", "method.pca_dataset.kind=transductive"]
    o2r = run_eval(eval_cfg(tmp_path, *base, "qe=regional", f"results_file={tmp_path}/out.json"), tmp_path / "o2r")
    assert json.loads((tmp_path / "out.json").read_text()) == o2r
    info = o2r["salient_regions"]
    assert info["variant"] == "O2_R" and info["dim"] == 32
    assert o2r["learned"]["salient_pca"]["transductive"] and o2r["learned"]["salient_pca"]["dataset"] == "tiny"
    assert 1 < info["regions_per_image"]["db"] <= 8 and info["regions_per_image"]["query"] == 1  # cropped queries
    assert info["bytes_per_image"] == pytest.approx(info["regions_per_image"]["db"] * 32 * 4, rel=1e-3)
    assert list(o2r["stages"]) == ["initial", "regional_qe"] and o2r["map"] == o2r["stages"]["regional_qe"]
    fb = info["salient_fallback"]  # 224 px: at most 7x7 cells, fewer than N_min = 300
    assert fb["db"]["images"] == o2r["n_db"] and info["salient_fallback_fraction"] == fb["db"]["fraction"]
    assert fb["query"] is None and fb["pca"] is None  # cropped queries have no salient points; transductive PCA
    assert info["settings"]["n_min_fraction"] == 0.1 and fb["db"]["all_cells"] == 0
    if fb["db"]["fallback"]:
        assert 0 < fb["db"]["cells_kept_mean"] <= 0.12 and fb["db"]["cells_mean"] <= 5  # about a tenth of the cells
    assert (tmp_path / "o2r" / "salient_regions.png").stat().st_size > 10_000

    o2w = run_eval(eval_cfg(tmp_path, *base, "method.regions=whole", "method.dim=64", "plots.enabled=false"),
                   tmp_path / "o2w")
    assert o2w["salient_regions"]["variant"] == "O2_W"
    assert o2w["salient_regions"]["dim"] == o2w["n_db"] - 1  # 37 whole-image vectors span 36 whitened dims, not 64
    assert o2w["salient_regions"]["regions_per_image"]["db"] == 1 and "stages" not in o2w
    assert o2w["salient_regions"]["salient_fallback_fraction"] is None  # no salient points: not "0% fallback"
    assert o2w["map"] != o2r["stages"]["initial"]  # the regions change the ranking

    o1r = run_eval(eval_cfg(tmp_path, *base, "method.order=1", "method.query=full", "plots.enabled=false"),
                   tmp_path / "o1r")
    assert o1r["salient_regions"]["variant"] == "O1_R_full" and o1r["salient_regions"]["dim"] == 1280
    assert o1r["salient_regions"]["regions_per_image"]["query"] > 1  # uncropped queries keep their regions

    from lit_retrieval.data.provenance import LeakageError

    with pytest.raises(LeakageError, match="method.pca_dataset"):  # the evaluated images, not asked for: refused
        run_eval(eval_cfg(tmp_path, *base, "method.regions=whole", "method.dim=64", "plots.enabled=false",
                          "~method.pca_dataset", f"+method.pca_dataset={{kind:revisited,root:{tiny},name:tiny}}"),
                 tmp_path / "pca_other")


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
                      "dataset.name=tiny", "image_size=224", "method.regions=whole", "plots.enabled=false",
                      "method.pca_dataset.kind=transductive"),
                 tmp_path / "run")


def test_settings_variant_names():
    assert Settings().variant == "O2_R"
    assert Settings(order=1, regions="whole").variant == "O1_W"
