"""Tests of the cut-and-paste compositor, patch shuffle and synthetic benchmark builders."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from conftest import Exploit
from lit_retrieval.data.synthetic import (
    SHARED_SPEC,
    BenchmarkSpec,
    CocoObjects,
    ImageFolderBackgrounds,
    ObjectInstance,
    PasteParams,
    PasteTransform,
    ProceduralBackgrounds,
    ProceduralObjects,
    build_benchmark,
    build_embedded,
    build_from_shared,
    compose,
    decode_segmentation,
    embedded_root,
    paste,
    procedural_background,
    shuffle_dataset,
    shuffle_patches,
    split_by_image,
)
from lit_retrieval.data.synthetic import build as build_cli

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _shared(*parts: str) -> Path:
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent: shared real data lives next to the repository in ../shared/data")
    return p


def _mask_bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] + 1), int(rows[-1] + 1)]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def proc_objects() -> ProceduralObjects:
    return ProceduralObjects(6, seed=3)


# ------------------------------------------------------------------------------------------------ COCO

def test_coco_skips_crowd_and_small_instances():
    root = _shared("coco128")
    data = json.loads((root / "annotations" / "instances.json").read_text())
    expected = {a["id"] for a in data["annotations"] if not a["iscrowd"] and a["bbox"][2] >= 80 and a["bbox"][3] >= 80}
    objects = CocoObjects(root)
    assert {r.ann_id for r in objects.refs} == expected
    assert 0 < len(objects) < len(data["annotations"])
    ref = objects.refs[0]
    obj = objects.load(ref)
    x1, y1, x2, y2 = ref.crop_box
    assert obj.rgb.shape == (y2 - y1, x2 - x1, 3) and obj.mask.shape == obj.rgb.shape[:2]
    with Image.open(ref.source) as im:
        assert np.array_equal(obj.rgb, np.asarray(im.convert("RGB"))[y1:y2, x1:x2])


def test_coco_decoding_agrees_with_pycocotools_area():
    root = _shared("coco128")
    data = json.loads((root / "annotations" / "instances.json").read_text())
    images = {im["id"]: im for im in data["images"]}
    kept = {r.ann_id for r in CocoObjects(root).refs}
    n_poly = n_rle = 0
    for ann in data["annotations"]:
        im = images[ann["image_id"]]
        h, w, seg = im["height"], im["width"], ann["segmentation"]
        mask = decode_segmentation(seg, h, w)
        rles = mask_utils.frPyObjects(seg, h, w)
        rle = mask_utils.merge(rles) if isinstance(seg, list) else rles
        assert mask.shape == (h, w) and mask.sum() == mask_utils.area(rle)
        if isinstance(seg, list):
            n_poly += 1
            if ann["id"] in kept:  # large instances: the annotated area matches the rasterised polygons
                assert abs(int(mask.sum()) - ann["area"]) <= 0.02 * ann["area"]
        else:
            n_rle += 1
            # compressed RLE (bytes or str counts) decodes to the same mask
            enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert np.array_equal(decode_segmentation(enc, h, w), mask)
            assert np.array_equal(decode_segmentation({**enc, "counts": enc["counts"].decode()}, h, w), mask)
    assert n_poly > 100 and n_rle > 0


def _tiny_coco(tmp_path: Path, segmentation, bbox=(10, 10, 100, 90), iscrowd=0) -> Path:
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "annotations").mkdir()
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(tmp_path / "images" / "a.jpg")
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 120, "width": 160}],
            "annotations": [{"id": 7, "image_id": 1, "bbox": list(bbox), "segmentation": segmentation,
                             "iscrowd": iscrowd, "category_id": 1, "area": 1.0}],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "annotations" / "instances.json").write_text(json.dumps(data))
    return tmp_path


def test_coco_compressed_rle_instance_and_errors(tmp_path):
    mask = np.zeros((120, 160), np.uint8)
    mask[10:100, 10:110] = 1
    enc = mask_utils.encode(np.asfortranarray(mask))
    root = _tiny_coco(tmp_path / "ok", {"size": [120, 160], "counts": enc["counts"].decode()}, bbox=(10, 10, 100, 90))
    objects = CocoObjects(root)
    obj = objects.load(objects.refs[0])
    assert obj.category == "thing" and obj.mask.all() and obj.mask.shape == (90, 100)

    with pytest.raises(FileNotFoundError, match="instances.json"):
        CocoObjects(tmp_path / "nowhere")
    bad = _tiny_coco(tmp_path / "bad", [])
    (bad / "annotations" / "instances.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoObjects(bad)
    missing = _tiny_coco(tmp_path / "missing", [[10, 10, 110, 10, 110, 100]])
    (missing / "images" / "a.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="a.jpg"):
        CocoObjects(missing)
    malformed = _tiny_coco(tmp_path / "malformed", {"counts": "x"})
    with pytest.raises(ValueError, match="annotation 7"):
        CocoObjects(malformed).load(CocoObjects(malformed).refs[0])
    # crowd and small instances are left out
    assert len(CocoObjects(_tiny_coco(tmp_path / "crowd", [[10, 10, 110, 10, 110, 100]], iscrowd=1))) == 0
    assert len(CocoObjects(_tiny_coco(tmp_path / "small", [[10, 10, 110, 10, 110, 100]], bbox=(10, 10, 100, 79)))) == 0


# ----------------------------------------------------------------------------------------- procedural

def test_procedural_sources_are_deterministic_and_fast(proc_objects):
    a = procedural_background(np.random.default_rng(5), 320, 240)
    b = procedural_background(np.random.default_rng(5), 320, 240)
    assert a.shape == (240, 320, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, procedural_background(np.random.default_rng(6), 320, 240))
    assert a.std() > 5  # a texture, not a flat colour
    t = time.perf_counter()
    for i in range(10):
        procedural_background(np.random.default_rng(i), 320, 240)
    assert (time.perf_counter() - t) / 10 < 0.05
    # instances: reproducible, the mask fills the box, the crop matches the source scene
    ref = proc_objects.refs[2]
    o1, o2 = proc_objects.load(ref), ProceduralObjects(3, seed=3).load(ProceduralObjects(3, seed=3).refs[2])
    assert np.array_equal(o1.rgb, o2.rgb) and np.array_equal(o1.mask, o2.mask)
    assert _mask_bbox(o1.mask) == [0, 0, o1.mask.shape[1], o1.mask.shape[0]]
    x1, y1, x2, y2 = ref.crop_box
    assert np.array_equal(proc_objects.source_image(ref)[y1:y2, x1:x2], o1.rgb)
    bgs = ProceduralBackgrounds(3, seed=1)
    assert np.array_equal(bgs.load(1), ProceduralBackgrounds(5, seed=1).load(1))


def _masked_hist(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    q = (rgb[mask] // 64).astype(int)
    h = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(float)
    return h / h.sum()


def test_procedural_objects_are_distinguishable(proc_objects):
    """Each instance keeps its identity across easy pastes: a colour histogram of the pasted box
    retrieves the right instance among all of them."""
    objs = [proc_objects.load(r) for r in proc_objects.refs]
    refs = np.stack([_masked_hist(o.rgb, o.mask) for o in objs])
    bg = procedural_background(np.random.default_rng(0), 400, 300)
    for i, o in enumerate(objs):
        img, box, _ = paste(bg, o, np.random.default_rng(i), "easy")
        x1, y1, x2, y2 = box
        crop = img[y1:y2, x1:x2]
        diff = np.abs(crop.astype(int) - bg[y1:y2, x1:x2]).sum(axis=2) > 30
        scores = np.minimum(refs, _masked_hist(crop, diff)[None]).sum(axis=1)  # histogram intersection
        assert int(np.argmax(scores)) == i


# ----------------------------------------------------------------------------------------------- paste

@pytest.mark.parametrize("preset", ["easy", "hard", "junk", "distractor"])
def test_paste_box_matches_pasted_mask(proc_objects, preset):
    bg = procedural_background(np.random.default_rng(1), 360, 270)
    for seed in range(4):
        obj = proc_objects.load(proc_objects.refs[seed])
        img, box, info = paste(bg, obj, np.random.default_rng(seed), preset)
        again = paste(bg, obj, np.random.default_rng(seed), preset)
        assert np.array_equal(img, again[0]) and box == again[1]  # deterministic
        # render the mask alone (white object on black) with the same transform
        white = ObjectInstance(obj.ref, np.repeat(obj.mask[..., None], 3, axis=2).astype(np.uint8) * 255, obj.mask)
        transform = PasteTransform(**info["transform"])
        alone, box2, _ = compose(np.zeros_like(bg), white, transform)
        rendered = alone.max(axis=2) > alone.max() / 2
        assert box2 == box
        assert np.abs(np.array(_mask_bbox(rendered)) - np.array(box)).max() <= 2
        # nothing outside the box (plus the feathered edge) changed
        changed = np.abs(img.astype(int) - bg).max(axis=2) > 0
        x1, y1, x2, y2 = box
        pad = 4
        changed[max(y1 - pad, 0):y2 + pad, max(x1 - pad, 0):x2 + pad] = False
        assert not changed.any()
        assert 0 <= x1 < x2 <= bg.shape[1] and 0 <= y1 < y2 <= bg.shape[0]


def test_truncation_and_presets_visible_fraction(proc_objects):
    bg = procedural_background(np.random.default_rng(2), 320, 240)
    truncated = PasteParams(scale=(0.3, 0.4), truncation_prob=1.0, visible=(0.5, 0.8))
    for seed in range(6):
        obj = proc_objects.load(proc_objects.refs[seed % len(proc_objects.refs)])
        rng = np.random.default_rng(seed)
        assert paste(bg, obj, rng, "easy")[2]["visible"] == 1.0
        _, box, info = paste(bg, obj, rng, truncated)
        assert 0.3 < info["visible"] < 1.0 and box is not None
        _, box, info = paste(bg, obj, rng, "junk")
        assert 0.0 < info["visible"] < 0.4 and box is not None
        assert paste(bg, obj, rng, "hard")[2]["visible"] >= 0.75
    with pytest.raises(ValueError, match="preset"):
        paste(bg, obj, np.random.default_rng(0), "medium")


# --------------------------------------------------------------------------------------------- shuffle

def test_shuffle_patches_is_a_permutation_of_patches():
    rng = np.random.default_rng(0)
    img = procedural_background(rng, 203, 157)  # not a multiple of the grid: 20 x 15 patches + strips
    out = shuffle_patches(img, 10, np.random.default_rng(1))
    assert out.shape == img.shape and out.dtype == img.dtype
    assert np.array_equal(out[150:], img[150:]) and np.array_equal(out[:, 200:], img[:, 200:])  # remainders kept
    crop, out = img[:150, :200], out[:150, :200]
    assert not np.array_equal(out, crop)
    assert np.array_equal(np.sort(out.reshape(-1, 3), axis=0), np.sort(crop.reshape(-1, 3), axis=0))

    def patches(x):
        return sorted(x[i * 15:(i + 1) * 15, j * 20:(j + 1) * 20].tobytes() for i in range(10) for j in range(10))

    assert patches(out) == patches(crop)
    assert np.array_equal(out, shuffle_patches(img, 10, np.random.default_rng(1))[:150, :200])
    assert shuffle_patches(img[..., 0], 4, np.random.default_rng(2)).shape == (157, 203)
    with pytest.raises(ValueError, match="smaller than"):
        shuffle_patches(img[:5], 10, rng)


def test_split_by_image_never_splits_an_image():
    objects = ProceduralObjects(20, seed=0)
    refs = list(objects.refs) + [replace(r, ann_id=100 + r.ann_id) for r in objects.refs[:5]]  # 2 per image
    train, test = split_by_image(refs, [0.75, 0.25], seed=1)
    assert len(train) + len(test) == len(refs)
    assert not {r.source for r in train} & {r.source for r in test}
    assert len({r.source for r in test}) == 5
    assert split_by_image(refs[::-1], [0.75, 0.25], seed=1)[1] == [r for r in refs[::-1] if r in test]
    paths = [Path(f"/bg/{i}.jpg") for i in range(10)]
    a, b, c = split_by_image(paths, [0.5, 0.3, 0.2], seed=0)
    assert (len(a), len(b), len(c)) == (5, 3, 2) and not set(a) & set(b)
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_image(paths, [0.5, 0.3])


# ------------------------------------------------------------------------------------------- benchmarks

@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("embedded")
    t = time.perf_counter()
    root = build_embedded(out, seed=0, progress=False)
    return root, time.perf_counter() - t


def _load(root: Path) -> dict:
    with open(root / f"gnd_{root.name}.pkl", "rb") as f:
        return pickle.load(f)


def test_embedded_benchmark_structure(embedded):
    root, seconds = embedded
    assert seconds < 20
    d = _load(root)
    assert {"imlist", "qimlist", "gnd", "boxes", "pastes", "shuffled", "meta"} <= set(d)
    imlist, qimlist, gnd = d["imlist"], d["qimlist"], d["gnd"]
    assert len(qimlist) == 12 == len(gnd) and len(imlist) == len(set(imlist))
    assert all(n.startswith("q_") for n in qimlist) and all(n.startswith("db_") for n in imlist)
    files = {p.stem for p in (root / "jpg").glob("*.jpg")}
    assert files == set(imlist) | set(qimlist)
    for q, g in enumerate(gnd):
        assert (len(g["easy"]), len(g["hard"]), len(g["junk"])) == (3, 2, 1)
        with Image.open(root / "jpg" / f"{qimlist[q]}.jpg") as im:
            w, h = im.size
            assert 320 <= max(w, h) <= 480
        x1, y1, x2, y2 = g["bbx"]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        for label in ("easy", "hard", "junk"):
            for i in g[label]:
                assert 0 <= i < len(imlist)
                name = imlist[i]
                (rec,) = [r for r in d["pastes"][name] if r["role"] == "query"]
                assert rec["query"] == q and rec["label"] == label and d["boxes"][name] == rec["box"]
                assert rec["source"] == d["meta"]["query_sources"][q]
                if label == "easy":
                    assert rec["visible"] == 1.0
                elif label == "junk":
                    assert rec["visible"] < 0.4
    listed = {i for g in gnd for k in ("easy", "hard", "junk") for i in g[k]}
    assert set(d["boxes"]) == {imlist[i] for i in listed}
    shuffled = {imlist.index(n) for n in d["shuffled"]}
    assert len(shuffled) == 12 * 5 and not shuffled & listed
    assert all(d["shuffled"][n] in d["boxes"] for n in d["shuffled"])
    distractors = [n for n, recs in d["pastes"].items() if not any(r["role"] == "query" for r in recs)]
    assert len(distractors) == 30 and len(imlist) == 12 * 6 + 60 + 30
    assert not set(d["meta"]["distractor_sources"]) & set(d["meta"]["query_sources"])
    # every database image has its own background
    bgs = [recs[0]["background"] for recs in d["pastes"].values() if recs]
    assert len(bgs) == len(set(bgs))


def test_embedded_benchmark_is_deterministic(embedded, tmp_path):
    root, _ = embedded
    again = build_embedded(tmp_path / "a", seed=0, progress=False)
    assert (root / "gnd_embedded.pkl").read_bytes() == (again / "gnd_embedded.pkl").read_bytes()
    assert _digest(root / "jpg") == _digest(again / "jpg")
    other = build_embedded(tmp_path / "b", seed=1, progress=False)
    assert (other / "gnd_embedded.pkl").read_bytes() != (again / "gnd_embedded.pkl").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        build_embedded(tmp_path / "a", seed=0, progress=False)
    assert not [p for p in (tmp_path / "a").iterdir() if p.name != "embedded"]  # no temp leftovers


def test_embedded_root_builds_once(embedded, tmp_path):
    root = embedded_root(tmp_path)
    stamp = (root / "gnd_embedded.pkl").stat().st_mtime_ns
    assert embedded_root(tmp_path) == root and (root / "gnd_embedded.pkl").stat().st_mtime_ns == stamp
    assert (root / "gnd_embedded.pkl").read_bytes() == (embedded[0] / "gnd_embedded.pkl").read_bytes()


def test_shuffle_dataset_adds_negatives(embedded, tmp_path):
    root, _ = embedded
    src = _load(root)
    dst = shuffle_dataset(root.parent, root.name, tmp_path, "embedded_shf", seed=0, progress=False)
    d = _load(dst)
    positives = {src["imlist"][i] for g in src["gnd"] for k in ("easy", "hard") for i in g[k]}
    assert d["imlist"][: len(src["imlist"])] == src["imlist"] and d["gnd"] == src["gnd"]
    added = d["imlist"][len(src["imlist"]):]
    assert {d["shuffled"][n] for n in added} == positives and len(added) == len(positives)
    listed = {i for g in d["gnd"] for k in ("easy", "hard", "junk") for i in g[k]}
    assert all(d["imlist"].index(n) not in listed for n in added)
    assert {p.stem for p in (dst / "jpg").glob("*.jpg")} == set(d["imlist"]) | set(d["qimlist"])
    with pytest.raises(FileNotFoundError, match="gnd_nothing.pkl"):
        shuffle_dataset(root.parent, "nothing", tmp_path, "x", progress=False)


def test_shuffle_dataset_makes_several_copies_per_positive(embedded, tmp_path):
    root, _ = embedded
    src = _load(root)
    d = _load(shuffle_dataset(root.parent, root.name, tmp_path, "x3", seed=0, progress=False, copies=3))
    added = d["imlist"][len(src["imlist"]):]
    positives = {src["imlist"][i] for g in src["gnd"] for k in ("easy", "hard") for i in g[k]}
    assert len(added) == 3 * len(positives) == len(set(added))
    assert all(sum(d["shuffled"][n] == p for n in added) == 3 for p in positives)
    p = next(iter(positives))
    copies = [np.asarray(Image.open(tmp_path / "x3" / "jpg" / f"{n}.jpg")) for n in added if d["shuffled"][n] == p]
    assert not np.array_equal(copies[0], copies[1]) and not np.array_equal(copies[1], copies[2])
    assert d["meta"]["shuffle_copies"] == 3


def test_build_from_shared_held_out_part_uses_only_its_images(tmp_path):
    from lit_retrieval.data.synthetic import CocoObjects, list_images, split_by_image

    coco, imagenet = _shared("coco128"), _shared("imagenet-samples")
    fractions = [0.5, 0.1, 0.4]
    spec = dataclasses.replace(SHARED_SPEC, n_queries=4, n_distractors=6, n_shuffled_negatives=0)
    root = build_from_shared(coco, imagenet, tmp_path, spec=spec, n_backgrounds=30, progress=False,
                             split=(fractions, 0, 2))
    d = _load(root)
    part = {r.source for r in split_by_image(CocoObjects(coco).refs, fractions, 0)[2]}
    bgs = {str(p) for p in split_by_image(list_images(imagenet), fractions, 0)[2]}
    used = {r["source"] for recs in d["pastes"].values() for r in recs}
    assert set(d["meta"]["query_sources"]) <= part and used <= part
    assert {r["background"] for recs in d["pastes"].values() for r in recs} <= bgs
    assert not d["shuffled"] and len(d["imlist"]) == 4 * 6 + 6


def test_cocopaste_config_rejects_a_split_part_that_does_not_exist(tmp_path):
    from lit_retrieval.data import load_dataset
    from lit_retrieval.data.errors import DataError

    cfg = {"kind": "cocopaste", "coco_dir": str(_shared("coco128")),
           "backgrounds_dir": str(_shared("imagenet-samples")), "cache_dir": str(tmp_path),
           "split": {"fractions": [0.5, 0.5], "seed": 0, "part": 2}}
    with pytest.raises(DataError, match="dataset.split.part=2"):
        load_dataset(cfg)


def test_build_from_shared_splits_by_source_image(tmp_path):
    coco, imagenet = _shared("coco128"), _shared("imagenet-samples")
    spec = dataclasses.replace(SHARED_SPEC, n_queries=3, n_distractors=12)
    root = build_from_shared(coco, imagenet, tmp_path, spec=spec, n_backgrounds=40, progress=False)
    d = _load(root)
    assert len(d["qimlist"]) == 3 and len(d["imlist"]) == 3 * 6 + 3 * 5 + 12
    query_sources, distractor_sources = set(d["meta"]["query_sources"]), set(d["meta"]["distractor_sources"])
    assert len(query_sources) == 3 and distractor_sources and not query_sources & distractor_sources
    used = {r["source"] for recs in d["pastes"].values() for r in recs if r["role"] == "distractor"}
    assert used == distractor_sources
    for q, g in enumerate(d["gnd"]):
        src = Path(d["meta"]["query_sources"][q])
        assert (root / "jpg" / f"{d['qimlist'][q]}.jpg").read_bytes() == src.read_bytes()
        for label in ("easy", "hard", "junk"):
            for i in g[label]:
                assert d["pastes"][d["imlist"][i]][0]["source"] == str(src)
    with Image.open(root / "jpg" / f"{d['imlist'][0]}.jpg") as im:
        assert max(im.size) == 384
    bgs = ImageFolderBackgrounds(imagenet, max_images=40, seed=0)
    assert {r["background"] for recs in d["pastes"].values() for r in recs} <= set(bgs.keys)


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        build_cli.main(["--help"])
    assert e.value.code == 0 and "--shuffle-from" in capsys.readouterr().out
    out = build_cli.main(["--objects", "procedural", "--out", str(tmp_path), "--name", "mini", "--queries", "2",
                          "--distractors", "2", "--positives", "easy=1,hard=1", "--no-progress"])
    d = _load(out)
    assert len(d["qimlist"]) == 2
    assert all(len(g["easy"]) == 1 and len(g["hard"]) == 1 and not g["junk"] for g in d["gnd"])
    assert len(d["imlist"]) == 2 * 2 + 2 * 2 + 2
    shf = build_cli.main(["--shuffle-from", str(out), "--out", str(tmp_path), "--name", "mini_shf", "--no-progress"])
    assert len(_load(shf)["imlist"]) == len(d["imlist"]) + 4
    with pytest.raises(SystemExit):
        build_cli.main(["--objects", "coco:" + str(tmp_path), "--out", str(tmp_path), "--name", "x"])  # no backgrounds


def test_build_benchmark_rejects_bad_requests(tmp_path, proc_objects):
    bgs = ProceduralBackgrounds(4, seed=0)
    with pytest.raises(ValueError, match="source images"):
        build_benchmark(proc_objects, bgs, tmp_path, "x", BenchmarkSpec(n_queries=50), progress=False)
    with pytest.raises(ValueError, match="positives_per_query"):
        build_benchmark(proc_objects, bgs, tmp_path, "x", BenchmarkSpec(1, positives_per_query={"medium": 1}),
                        progress=False)
    with pytest.warns(UserWarning, match="reused"):
        build_benchmark(proc_objects, bgs, tmp_path, "y", BenchmarkSpec(1, n_distractors=2), progress=False)
    assert not [p for p in tmp_path.iterdir() if p.name != "y"]



def test_shuffle_from_refuses_a_pickle_that_would_run_code(tmp_path):
    from lit_retrieval.data.errors import GroundTruthError
    from lit_retrieval.data.synthetic.build import main

    target = tmp_path / "pwned"
    src = tmp_path / "src" / "evil"
    (src / "jpg").mkdir(parents=True)
    with open(src / "gnd_evil.pkl", "wb") as f:
        pickle.dump({"imlist": ["a"], "qimlist": ["q"], "gnd": [Exploit(target)]}, f)
    with pytest.raises(GroundTruthError, match="refusing to load"):
        main(["--shuffle-from", str(src), "--out", str(tmp_path / "out"), "--name", "SHUF", "--no-progress"])
    assert not target.exists() and not (tmp_path / "out" / "SHUF").exists()


def test_embedded_freshness_check_never_runs_code(tmp_path):
    from lit_retrieval.data.synthetic import embedded_root

    target = tmp_path / "pwned"
    root = tmp_path / "embedded"
    root.mkdir()
    with open(root / "gnd_embedded.pkl", "wb") as f:  # a planted cache file: treated as stale and rebuilt
        pickle.dump({"meta": Exploit(target)}, f)
    out = embedded_root(tmp_path, seed=0, name="embedded")
    assert not target.exists()
    assert "meta" in _load(out) and len(_load(out)["qimlist"]) == 12


def test_loaded_benchmark_knows_its_pasted_objects(tiny):
    """``RetrievalDataset.object_boxes``: every pasted object of every database image, in stored pixels; each
    positive's own box among them; nothing for patch-shuffled copies and empty distractors."""
    from lit_retrieval.data import load_dataset

    data = load_dataset({"kind": "revisited", "root": str(tiny), "name": "tiny"})
    raw = pickle.loads((tiny / "tiny" / "gnd_tiny.pkl").read_bytes())
    names = [p.stem for p in data.db_paths]
    assert data.object_boxes and set(data.object_boxes) <= set(range(data.n_db))
    for name, box in raw["boxes"].items():  # the positives' query object
        assert [float(v) for v in box] in data.object_boxes[names.index(name)]
    for name in raw["shuffled"]:
        assert names.index(name) not in data.object_boxes
    for i, boxes in data.object_boxes.items():
        w, h = Image.open(data.db_paths[i]).size
        assert all(0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h for x1, y1, x2, y2 in boxes)
