"""Image IO, cirtorch-compatible preprocessing and the revisited / classic ground-truth loaders."""
from __future__ import annotations

import json
import logging
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import Exploit
from lit_retrieval.data.classic import list_images, load_classic
from lit_retrieval.data.dataset import RetrievalDataset
from lit_retrieval.data.errors import BoxError, DataError, GroundTruthError, ImageLoadError
from lit_retrieval.data.images import (
    crop_query,
    load_for_retrieval,
    load_image,
    resize_max,
    safe_load,
    to_tensor,
)
from lit_retrieval.data.revisited import load_revisited, write_revisited

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def gnd_classic(name: str) -> Path:
    path = SHARED_DATA / "gnd-classic" / f"gnd_{name}.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent (shared real data lives next to the repository, in ../shared/data)")
    return path


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def assert_clear(err: pytest.ExceptionInfo, path: Path) -> None:
    """The message names the file and says how to fix it."""
    msg = str(err.value)
    assert str(path) in msg and "Fix:" in msg, msg


# ------------------------------------------------------------------------------------------ errors


def test_data_error_message_and_pickling():
    err = BoxError("box is bad", Path("/d/q.jpg"), "fix the box")
    assert str(err) == "box is bad (/d/q.jpg). Fix: fix the box"
    assert isinstance(err, ValueError) and isinstance(err, DataError)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is BoxError and str(back) == str(err) and back.file == "/d/q.jpg"
    # torch DataLoader workers re-raise as type(err)(text): a lone message must work
    assert str(ImageLoadError("Caught ImageLoadError in worker")) == "Caught ImageLoadError in worker"


# -------------------------------------------------------------------------------- bad image files


def test_missing_image(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError, match="not found") as err:
        load_image(path)
    assert_clear(err, path)
    assert "dataset.root" in str(err.value)


def test_empty_image(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty") as err:
        load_image(path)
    assert_clear(err, path)


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a JPEG\n" * 20)
    with pytest.raises(ImageLoadError, match="not an image") as err:
        load_image(path)
    assert_clear(err, path)


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    noise_image(256, 256).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated or corrupt") as err:
        load_image(path)
    assert_clear(err, path)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageLoadError, match="not a regular file") as err:
        load_image(tmp_path)
    assert_clear(err, tmp_path)


# -------------------------------------------------------------------------------- modes and EXIF


def _save_load(img: Image.Image, path: Path) -> np.ndarray:
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == img.size
    return np.asarray(out)


def test_grey_and_palette_modes_to_rgb(tmp_path):
    assert (_save_load(Image.new("L", (4, 3), 100), tmp_path / "l.png") == 100).all()
    assert (_save_load(Image.new("LA", (4, 3), (100, 0)), tmp_path / "la.png") == 100).all()
    assert set(np.unique(_save_load(Image.new("1", (4, 3), 1), tmp_path / "b.png"))) == {255}
    pal = Image.new("P", (4, 3), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert (_save_load(pal, tmp_path / "p.png") == [10, 20, 30]).all()
    pal.info["transparency"] = 0  # one transparent palette entry (stored as an int)
    assert (_save_load(pal, tmp_path / "p0.png") == [10, 20, 30]).all()
    pal.info["transparency"] = bytes([0, 128] + [255] * 254)  # byte transparency: PIL warns on P -> RGB
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (_save_load(pal, tmp_path / "pt.png") == [10, 20, 30]).all()


def test_rgba_drops_alpha_and_cmyk_converts(tmp_path):
    # cirtorch convert("RGB"): the colour under transparent pixels is kept, not composited
    assert (_save_load(Image.new("RGBA", (4, 3), (10, 20, 30, 0)), tmp_path / "a.png") == [10, 20, 30]).all()
    assert (_save_load(Image.new("CMYK", (4, 3), (0, 0, 0, 0)), tmp_path / "w.tif") == 255).all()
    assert (_save_load(Image.new("CMYK", (4, 3), (255, 0, 0, 0)), tmp_path / "c.tif") == [0, 255, 255]).all()


def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    raw = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(raw).save(path)
    with Image.open(path) as stored:
        assert stored.mode == "I;16"  # PIL reads 16-bit grey PNG as I;16
    out = np.asarray(load_image(path))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()


def test_int32_and_float_grey(tmp_path):
    assert _save_load(Image.fromarray(np.array([[0, 100, 255]], np.int32)), tmp_path / "i8.tif")[0, :, 0].tolist() \
        == [0, 100, 255]  # already 8-bit range: kept
    assert _save_load(Image.fromarray(np.array([[0, 500, 1000]], np.int32)), tmp_path / "i.tif")[0, :, 0].tolist() \
        == [0, 128, 255]  # scaled by max
    assert _save_load(Image.fromarray(np.array([[0, 0.5, 1]], np.float32)), tmp_path / "f.tif")[0, :, 0].tolist() \
        == [0, 128, 255]  # unit float


def test_exif_orientation(tmp_path):
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    noise_image(40, 20).save(path, exif=exif)
    assert load_image(path).size == (40, 20)  # cirtorch: stored pixels
    assert load_image(path, exif_transpose=True).size == (20, 40)


# -------------------------------------------------------------------------- resizing and cropping


def test_resize_max_shrinks_only_and_keeps_aspect():
    img = noise_image(400, 200)
    small = resize_max(img, 100)
    assert small.size == (100, 50) and img.size == (400, 200)  # works on a copy
    big = resize_max(img, 1000)
    assert big.size == (400, 200) and big is not img
    assert resize_max(noise_image(333, 100), 100).size == (100, 30)
    ref = img.copy()
    ref.thumbnail((100, 100), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(small), np.asarray(ref))
    assert resize_max(img, None).size == (400, 200)
    with pytest.raises(ValueError, match="positive integer"):
        resize_max(img, 0)


def test_crop_query_matches_cirtorch():
    img = noise_image(640, 480, seed=1)
    bbx = [10.4, 20.6, 310.2, 120.5]
    out = crop_query(img, bbx, 300)
    # by hand: PIL rounds the box to (10, 21, 310, 120) -> crop 300x99; target 300 * 300 / 640 = 140.625,
    # floored to 140 by thumbnail; aspect 300/99 -> height 46
    assert out.size == (140, 46)
    ref = img.crop(bbx)  # cirtorch ImagesFromList: crop, then imresize(imsize * max(crop) / max(full))
    ref.thumbnail((300 * max(ref.size) / max(img.size),) * 2, Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(out), np.asarray(ref))
    assert crop_query(noise_image(1000, 500), [100, 50, 500, 250], 200).size == (80, 40)
    assert crop_query(img, None, 320).size == (320, 240)
    assert crop_query(img, [-0.5, 0, 640.8, 480], 640).size == (641, 480)  # within the 1 px tolerance


def test_box_outside_image(tmp_path):
    img = noise_image(64, 48)
    src = tmp_path / "query.jpg"
    with pytest.raises(BoxError, match=r"outside the 64x48") as err:
        crop_query(img, [10, 10, 70, 40], 32, source=src)
    assert_clear(err, src)
    assert "[10, 10, 70, 40]" in str(err.value)
    for box in ([-2, 0, 10, 10], [0, -1.5, 10, 10], [0, 0, 10, 49.5]):
        with pytest.raises(BoxError, match="outside"):
            crop_query(img, box, 32, source=src)
    with pytest.raises(BoxError, match="flipped"):
        crop_query(img, [30, 10, 20, 40], 32, source=src)
    with pytest.raises(BoxError, match="3 values, expected 4"):
        crop_query(img, [1, 2, 3], 32, source=src)
    with pytest.raises(BoxError, match="non-finite"):
        crop_query(img, [0, 0, float("nan"), 10], 32, source=src)


def test_to_tensor_and_load_for_retrieval(tmp_path):
    t = to_tensor(Image.new("RGB", (3, 2), (255, 0, 128)))
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    assert torch.allclose(t[:, 0, 0], torch.tensor([1.0, 0.0, 128 / 255]))
    with pytest.raises(ValueError, match="RGB"):
        to_tensor(Image.new("L", (3, 2)))
    path = tmp_path / "db.png"
    noise_image(400, 300).save(path)
    assert load_for_retrieval(path, 200).shape == (3, 150, 200)
    assert load_for_retrieval(path, 200, bbx=[0, 0, 200, 150]).shape == (3, 75, 100)


def test_safe_load_skips_with_warning_and_count(tmp_path, caplog):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    good = tmp_path / "good.png"
    noise_image(20, 10).save(good)
    skipped: list[tuple[Path, str]] = []
    with caplog.at_level(logging.WARNING, logger="lit_retrieval.data"):
        assert safe_load(bad, 16, skip_bad=True, on_skip=lambda p, r: skipped.append((p, r))) is None
        assert safe_load(good, 16, skip_bad=True, on_skip=lambda p, r: skipped.append((p, r))).shape == (3, 8, 16)
    assert skipped == [(bad, "image file is empty (0 bytes)")]
    records = [r for r in caplog.records if r.name == "lit_retrieval.data"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING and str(bad) in records[0].getMessage()
    with pytest.raises(ImageLoadError):
        safe_load(bad, 16, skip_bad=False)
    with pytest.raises(BoxError):  # a bad box is a ground-truth error: never skipped
        safe_load(good, 16, bbx=[0, 0, 99, 99], skip_bad=True)


# ------------------------------------------------------------------------------------- revisited


def _tiny_revisited(root: Path, name: str = "tiny") -> dict:
    jpg = root / name / "jpg"
    jpg.mkdir(parents=True)
    imlist = [f"db{i}" for i in range(5)]
    qimlist = ["q0", "q1"]
    for i, im in enumerate(imlist + qimlist):
        noise_image(32, 24, seed=i).save(jpg / f"{im}.jpg")
    gnd = [
        {"bbx": [1, 2, 20, 22], "easy": [0, 1], "hard": np.array([2]), "junk": []},
        {"easy": [3], "hard": [], "junk": [4]},
    ]
    return {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}


def test_revisited_round_trip(tmp_path):
    spec = _tiny_revisited(tmp_path)
    gnd_file = write_revisited(tmp_path, "tiny", **spec)
    assert gnd_file == tmp_path / "tiny" / "gnd_tiny.pkl"
    assert sorted(p.name for p in gnd_file.parent.iterdir()) == ["gnd_tiny.pkl", "jpg"]  # no temp file left
    ds = load_revisited(tmp_path, "tiny")
    assert isinstance(ds, RetrievalDataset) and ds.protocol == "revisited" and ds.name == "tiny"
    assert ds.db_paths == [tmp_path / "tiny" / "jpg" / f"db{i}.jpg" for i in range(5)]
    assert ds.query_paths == [tmp_path / "tiny" / "jpg" / "q0.jpg", tmp_path / "tiny" / "jpg" / "q1.jpg"]
    assert ds.query_bbx == [(1.0, 2.0, 20.0, 22.0), None]
    assert [g["easy"].tolist() for g in ds.gnd] == [[0, 1], [3]]
    assert [g["hard"].tolist() for g in ds.gnd] == [[2], []]
    assert [g["junk"].tolist() for g in ds.gnd] == [[], [4]]
    assert all(a.dtype == np.int64 for g in ds.gnd for a in g.values())
    img = load_for_retrieval(ds.query_paths[0], 32, ds.query_bbx[0])
    assert img.shape == (3, 20, 19)  # crop 19x20 of a 32x24 image at full scale


def test_revisited_missing_pickle(tmp_path):
    with pytest.raises(GroundTruthError, match="not found") as err:
        load_revisited(tmp_path, "roxford5k")
    assert_clear(err, tmp_path / "roxford5k" / "gnd_roxford5k.pkl")
    assert "revisitop" in str(err.value) and "jpg/" in str(err.value)


def _write_raw(root: Path, name: str, obj: object) -> Path:
    path = root / name / f"gnd_{name}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda s: s.pop("qimlist"), r"lacks key\(s\) \['qimlist'\]"),
        (lambda s: s["gnd"][1].pop("junk"), r"gnd\[1\] of the ground truth lacks key\(s\) \['junk'\]"),
        (lambda s: s["gnd"][0].update(easy=[0, 5]), r"index 5 out of range \[0, 5\)"),
        (lambda s: s["gnd"][0].update(junk=[-1]), r"index -1 out of range"),
        (lambda s: s["gnd"][0].update(hard=[1.5]), "non-integer"),
        (lambda s: s["gnd"].pop(), "'gnd' has 1 entries but 'qimlist' has 2"),
        (lambda s: s["gnd"][0].update(bbx=[5, 5, 1, 9]), r"gnd\[0\]\['bbx'\].*flipped"),
        (lambda s: s["gnd"][0].update(bbx=[0, 0, 5]), "3 values, expected 4"),
        (lambda s: s.update(imlist="db0"), "expected a list of image names"),
        (lambda s: s["gnd"][0].update(easy=[0, 0, 0]), r"gnd\[0\]\['easy'\] lists index 0 3 times"),
        (lambda s: s["gnd"][1].update(junk=[3]), r"gnd\[1\]: database index 3 is both 'easy' and 'junk'"),
        (lambda s: s["gnd"][0].update(hard=[1]), r"index 1 is both 'easy' and 'hard'"),
        (lambda s: s["imlist"].__setitem__(2, "../../etc/passwd"), r"imlist\[2\].*outside the dataset"),
        (lambda s: s["qimlist"].__setitem__(0, "/tmp/q0"), r"qimlist\[0\].*outside the dataset"),
    ],
)
def test_revisited_malformed_gnd(tmp_path, mutate, match):
    spec = _tiny_revisited(tmp_path)
    mutate(spec)
    path = _write_raw(tmp_path, "tiny", spec)
    with pytest.raises(GroundTruthError, match=match) as err:
        load_revisited(tmp_path, "tiny")
    assert_clear(err, path)


def test_revisited_unreadable_pickles(tmp_path):
    path = _write_raw(tmp_path, "a", ["not", "a", "dict"])
    with pytest.raises(GroundTruthError, match="expected a dict") as err:
        load_revisited(tmp_path, "a")
    assert_clear(err, path)
    broken = tmp_path / "b" / "gnd_b.pkl"
    broken.parent.mkdir()
    broken.write_bytes(pickle.dumps({"imlist": ["x"] * 100})[:40])
    with pytest.raises(GroundTruthError, match="cannot be read") as err:
        load_revisited(tmp_path, "b")
    assert_clear(err, broken)



def test_revisited_pickle_cannot_run_code(tmp_path):
    target = tmp_path / "pwned"
    _write_raw(tmp_path, "evil", {"imlist": [], "qimlist": [], "gnd": Exploit(target)})
    with pytest.raises(GroundTruthError, match="refusing to load"):
        load_revisited(tmp_path, "evil")
    assert not target.exists()


def test_revisited_missing_images(tmp_path):
    spec = _tiny_revisited(tmp_path)
    write_revisited(tmp_path, "tiny", **spec)
    for im in ("db1", "db3", "q1"):
        (tmp_path / "tiny" / "jpg" / f"{im}.jpg").unlink()
    with pytest.raises(ImageLoadError, match=r"3 of 7 image files are missing: db1.jpg, db3.jpg, q1.jpg") as err:
        load_revisited(tmp_path, "tiny")
    assert_clear(err, tmp_path / "tiny" / "jpg")
    assert load_revisited(tmp_path, "tiny", check_images=False).n_db == 5
    for p in (tmp_path / "tiny" / "jpg").iterdir():
        p.unlink()
    (tmp_path / "tiny" / "jpg").rmdir()
    with pytest.raises(ImageLoadError, match="image folder not found"):
        load_revisited(tmp_path, "tiny")


def test_write_revisited_refuses_bad_input(tmp_path):
    spec = _tiny_revisited(tmp_path)
    spec["gnd"][1]["easy"] = [7]
    with pytest.raises(GroundTruthError, match="out of range"):
        write_revisited(tmp_path, "tiny", **spec)
    assert not (tmp_path / "tiny" / "gnd_tiny.pkl").exists()


# --------------------------------------------------------------------------------------- classic


def test_classic_oxford_real_ground_truth(tmp_path):
    ds = load_classic(gnd_classic("oxford5k"), tmp_path / "oxford5k", check_images=False)
    assert ds.name == "oxford5k" and ds.protocol == "classic"
    assert ds.n_queries == 55 and ds.n_db == 5063
    raw = json.loads(gnd_classic("oxford5k").read_text())
    for i, q in enumerate(raw["qidx"]):
        assert ds.query_paths[i] == ds.db_paths[q] == tmp_path / "oxford5k" / f"{raw['qimlist'][i]}.jpg"
        assert q in ds.gnd[i]["ok"]  # Oxford: the query stays in the database as a positive
    assert ds.query_bbx[0] == (136.5, 34.1, 648.5, 955.7)
    assert all(a.dtype == np.int64 for g in ds.gnd for a in g.values())
    with pytest.raises(ImageLoadError, match="image folder not found"):
        load_classic(gnd_classic("oxford5k"), tmp_path / "oxford5k")


def test_classic_distractors_are_appended(tmp_path):
    d = tmp_path / "flickr100k"
    (d / "sub").mkdir(parents=True)
    (d / ".cache").mkdir()
    for rel in ("b.JPEG", "a.jpg", "c.png", "notes.txt", "._a.jpg", "sub/e.jpg", ".cache/f.jpg"):
        (d / rel).write_bytes(b"x")
    ds = load_classic(gnd_classic("oxford5k"), tmp_path / "ox", check_images=False, distractor_dirs=[d])
    assert ds.n_db == 5063 + 4 and ds.n_queries == 55
    assert ds.db_paths[5063:] == [d / "a.jpg", d / "b.JPEG", d / "c.png", d / "sub" / "e.jpg"]
    assert max(int(a.max()) for g in ds.gnd for a in g.values() if a.size) < 5063  # never positives
    assert list_images(d) == ds.db_paths[5063:]
    with pytest.raises(ImageLoadError, match="distractor folder not found"):
        load_classic(gnd_classic("oxford5k"), tmp_path, check_images=False, distractor_dirs=[tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageLoadError, match="no .jpg/.jpeg/.png images"):
        load_classic(gnd_classic("oxford5k"), tmp_path, check_images=False, distractor_dirs=[tmp_path / "empty"])


def test_classic_holidays_excludes_query(tmp_path):
    ds = load_classic(gnd_classic("holidays"), tmp_path, check_images=False)
    assert ds.n_queries == 500 and ds.n_db == 1491 and ds.query_bbx == [None] * 500
    raw = json.loads(gnd_classic("holidays").read_text())
    for i, q in enumerate(raw["qidx"]):
        assert q not in ds.gnd[i]["ok"] and q in ds.gnd[i]["junk"]


def _classic_spec() -> dict:
    return {
        "imlist": ["a", "b", "c", "d"],
        "qimlist": ["a", "c"],
        "qidx": [0, 2],
        "gnd": [{"ok": [0, 1], "junk": [3]}, {"ok": [2, 3], "junk": [], "bbx": [0, 0, 4, 4]}],
    }


def test_classic_exclude_query_flag_and_pickle(tmp_path):
    path = tmp_path / "gnd_toy.pkl"
    path.write_bytes(pickle.dumps(_classic_spec()))
    kept = load_classic(path, tmp_path, check_images=False)
    assert kept.name == "toy" and [g["ok"].tolist() for g in kept.gnd] == [[0, 1], [2, 3]]
    assert kept.query_bbx == [None, (0.0, 0.0, 4.0, 4.0)]
    moved = load_classic(path, tmp_path, check_images=False, exclude_query_from_db=True)
    assert [g["ok"].tolist() for g in moved.gnd] == [[1], [3]]
    assert [g["junk"].tolist() for g in moved.gnd] == [[3, 0], [2]]


def test_classic_qimlist_only_and_missing_images(tmp_path):
    spec = _classic_spec()
    del spec["qidx"]
    path = tmp_path / "gnd_toy.json"
    path.write_text(json.dumps(spec))
    images = tmp_path / "jpg"
    images.mkdir()
    for im in ("a", "b", "c"):
        noise_image(8, 8).save(images / f"{im}.jpg")
    assert load_classic(path, images, check_images=False).query_paths == [images / "a.jpg", images / "c.jpg"]
    with pytest.raises(ImageLoadError, match="1 of 4 image files are missing: d.jpg") as err:
        load_classic(path, images)
    assert_clear(err, images)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda s: s.update(qidx=[0, 1]), r"qimlist names 'c' but imlist\[qidx\[1\]=1\] is 'b'"),
        (lambda s: s.update(qidx=[0, 4]), r"qidx has index 4 out of range \[0, 4\)"),
        (lambda s: s["gnd"].append({"ok": [], "junk": []}), "'gnd' has 3 entries"),
        (lambda s: s["gnd"][0].pop("ok"), r"lacks key\(s\) \['ok'\]"),
        (lambda s: s["gnd"][1].update(junk=[9]), r"gnd\[1\]\['junk'\] has index 9 out of range"),
        (lambda s: [s.pop("qidx"), s.pop("qimlist")], "neither 'qidx' nor 'qimlist'"),
        (lambda s: s["gnd"][0].update(junk=[1]), r"gnd\[0\]: database index 1 is both 'ok' and 'junk'"),
        (lambda s: s["gnd"][1].update(ok=[2, 3, 3]), r"gnd\[1\]\['ok'\] lists index 3 2 times"),
    ],
)
def test_classic_malformed_gnd(tmp_path, mutate, match):
    spec = _classic_spec()
    mutate(spec)
    path = tmp_path / "gnd_toy.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(GroundTruthError, match=match) as err:
        load_classic(path, tmp_path, check_images=False)
    assert_clear(err, path)


def test_classic_bad_files(tmp_path):
    with pytest.raises(GroundTruthError, match="not found") as err:
        load_classic(tmp_path / "gnd_x.json", tmp_path)
    assert_clear(err, tmp_path / "gnd_x.json")
    bad_json = tmp_path / "gnd_y.json"
    bad_json.write_text("{not json")
    with pytest.raises(GroundTruthError, match="cannot be parsed") as err:
        load_classic(bad_json, tmp_path)
    assert_clear(err, bad_json)
    mat = tmp_path / "gnd_z.mat"
    mat.write_bytes(b"x")
    with pytest.raises(GroundTruthError, match="unknown ground-truth file type"):
        load_classic(mat, tmp_path)
