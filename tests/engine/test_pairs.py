"""Cut-and-paste query/gallery pairs (data=synthetic_pairs): items, determinism, workers, split, sources, errors."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path
from omegaconf import OmegaConf
from PIL import Image

from lit_retrieval.data import pairs
from lit_retrieval.data.errors import DataError
from lit_retrieval.data.pairs import SyntheticPairs, SyntheticPairsDataModule, one_per_image, split_sources
from lit_retrieval.data.synthetic import ProceduralBackgrounds, ProceduralObjects

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"
SMALL = {"gallery_size": 128, "query_size": 64}


def _module(n_objects: int = 8, n_backgrounds: int = 10, **kwargs) -> SyntheticPairsDataModule:
    args = {"objects": {"n": n_objects}, "backgrounds": {"n": n_backgrounds}, "syntheses": 2, "batch_size": 4,
            **SMALL, **kwargs}
    dm = SyntheticPairsDataModule(**args)
    dm.setup("fit")
    return dm


def _dataset(**kwargs) -> SyntheticPairs:
    objects, backgrounds = split_sources(ProceduralObjects(6), ProceduralBackgrounds(6), (0.5, 0.5))
    return SyntheticPairs(objects[0], backgrounds[0], **{"syntheses": 2, "seed": 3, **SMALL, **kwargs})


def test_item() -> None:
    ds = _dataset()
    assert len(ds) == 3 * 2 == len(ds.refs) * ds.syntheses
    for i in (0, 3):
        item = ds[i]
        assert set(item) == {"query", "gallery", "box", "object"}
        assert item["query"].shape == (3, 64, 64) and item["gallery"].shape == (3, 128, 128)
        assert item["query"].dtype == item["gallery"].dtype == item["box"].dtype == torch.float32
        assert item["object"].dtype == torch.int64 and int(item["object"]) == i // 2
        for key in ("query", "gallery"):
            assert 0 <= float(item[key].min()) and float(item[key].max()) <= 1
        x1, y1, x2, y2 = (int(v) for v in item["box"])
        assert item["box"].tolist() == [x1, y1, x2, y2] and 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128

        # the object is pasted inside the box; outside it (plus the feathered edge) the background is untouched
        gallery = (item["gallery"].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        background = ds.background(i)
        assert np.abs(gallery[y1:y2, x1:x2].astype(int) - background[y1:y2, x1:x2]).mean() > 5
        outside = np.ones((128, 128), dtype=bool)
        outside[max(y1 - 3, 0):y2 + 3, max(x1 - 3, 0):x2 + 3] = False
        assert np.array_equal(gallery[outside], background[outside])

        # the query is the object's box cut from its source image
        ref = ds.refs[i // 2]
        crop = Image.fromarray(ds.objects.source_image(ref)).crop(ref.crop_box)
        crop = crop.resize((64, 64), Image.Resampling.BILINEAR)
        assert torch.equal(item["query"], torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1).float() / 255)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_determinism() -> None:
    ds, twin = _dataset(), _dataset()
    a = ds[1]
    assert all(torch.equal(a[k], twin[1][k]) for k in a)  # same seed and epoch, built apart
    ds.set_epoch(1)
    b = ds[1]
    assert not torch.equal(a["gallery"], b["gallery"]) and torch.equal(a["query"], b["query"])
    twin.set_epoch(1)
    assert torch.equal(b["gallery"], twin[1]["gallery"])
    assert not torch.equal(_dataset(seed=4)[1]["gallery"], a["gallery"])

    fixed = _dataset(resample=False)
    c = fixed[1]
    fixed.set_epoch(5)
    assert all(torch.equal(c[k], fixed[1][k]) for k in c)


def test_loaders_workers_and_epochs() -> None:
    dm0, dm2 = _module(), _module(num_workers=2)
    assert len(dm0.train_set) == 4 * 2 and len(dm0.val_set) == 1 * 2

    def epoch_batches(dm: SyntheticPairsDataModule, epoch: int) -> list[dict[str, torch.Tensor]]:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)  # what Lightning does before it starts the workers
        return list(loader)

    ref = epoch_batches(dm0, 1)
    assert len(ref) == 2 and ref[0]["gallery"].shape == (4, 3, 128, 128) and ref[0]["object"].shape == (4,)
    for got, want in zip(epoch_batches(dm2, 1), ref, strict=True):
        assert all(torch.equal(got[k], want[k]) for k in want)
    first = epoch_batches(dm2, 0)  # the epoch reaches the workers: another order and other galleries
    assert not all(torch.equal(x["gallery"], y["gallery"]) for x, y in zip(first, ref))
    assert sorted(torch.cat([b["object"] for b in first]).tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]

    val = [b["gallery"] for b in dm0.val_dataloader()]  # validation galleries never change
    dm0.set_epoch(7)
    dm0.val_set.set_epoch(7)
    assert [b["gallery"] for b in dm0.val_dataloader()][0].equal(val[0]) and dm0.train_set.epoch == 7


def test_split_by_image(monkeypatch: pytest.MonkeyPatch) -> None:
    read: dict[str, set] = {"objects": set(), "backgrounds": set()}

    class Spy:  # records what the data module reads
        def __init__(self, base, kind: str) -> None:
            self.base, self.kind = base, kind

        def __getattr__(self, name: str):
            return getattr(self.base, name)

        def source_image(self, ref):
            read["objects"].add(ref.source)
            return self.base.source_image(ref)

        def load(self, what):
            read[self.kind].add(what.source if self.kind == "objects" else self.base.keys[what])
            return self.base.load(what)

    make_objects, make_backgrounds = pairs.make_objects, pairs.make_backgrounds
    monkeypatch.setattr(pairs, "make_objects", lambda spec: Spy(make_objects(spec), "objects"))
    monkeypatch.setattr(pairs, "make_backgrounds", lambda spec: Spy(make_backgrounds(spec), "backgrounds"))
    dm = _module()
    train, val = dm.train_set, dm.val_set
    objects, backgrounds = split_sources(ProceduralObjects(8), ProceduralBackgrounds(10), [0.5, 0.1, 0.4])
    held_objects = {r.source for r in objects[2].refs}
    held_backgrounds = set(backgrounds[2].keys)
    assert held_objects and held_backgrounds
    train_src, val_src = {r.source for r in train.refs}, {r.source for r in val.refs}
    assert train_src == {r.source for r in objects[0].refs} and val_src == {r.source for r in objects[1].refs}
    assert not train_src & val_src and not (train_src | val_src) & held_objects
    train_bg, val_bg = set(train.backgrounds.keys), set(val.backgrounds.keys)
    assert train_bg and val_bg and not train_bg & val_bg and not (train_bg | val_bg) & held_backgrounds
    for ds in (train, val):
        for i in range(len(ds)):
            ds[i]
    assert read["objects"] == train_src | val_src  # every pair read, nothing of the held-out part
    assert read["backgrounds"] <= train_bg | val_bg and not read["backgrounds"] & held_backgrounds

    limited = _module(limit_train=2)
    assert len(limited.train_set.refs) == 2 and set(limited.train_set.refs) <= set(train.refs)
    info = dm.describe()
    assert (info["train"]["n_objects"], info["val"]["n_objects"], info["train"]["split"]["part"]) == (4, 1, 0)


def test_coco_objects_on_folder_backgrounds() -> None:
    coco, folder = shared_path("data", "coco128"), shared_path("data", "imagenet-samples")
    dm = SyntheticPairsDataModule(objects={"kind": "coco", "dir": str(coco)},
                                  backgrounds={"kind": "folder", "dir": str(folder)}, **SMALL)
    dm.setup()
    train, val = dm.train_set, dm.val_set
    for ds in (train, val):
        assert len({r.source for r in ds.refs}) == len(ds.refs)  # one object per source image
        assert all(x2 - x1 >= 80 and y2 - y1 >= 80 for x1, y1, x2, y2 in (r.bbox for r in ds.refs))
    everything = dm.train_set.objects.base
    assert set(train.refs) | set(val.refs) <= set(one_per_image(everything.refs))
    objects, backgrounds = split_sources(everything, dm.train_set.backgrounds.base, [0.5, 0.1, 0.4])
    held = {r.source for r in objects[2].refs}
    train_src, val_src = {r.source for r in train.refs}, {r.source for r in val.refs}
    assert held and not train_src & val_src and not (train_src | val_src) & held
    assert not set(train.backgrounds.keys) & set(val.backgrounds.keys)
    item = train[0]
    assert item["query"].shape == (3, 64, 64) and item["gallery"].shape == (3, 128, 128)
    assert dm.describe()["train"]["objects"]["kind"] == "coco"


def test_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=rf"{re.escape(str(missing))}.*data\.objects\.dir"):
        _module(objects={"kind": "coco", "dir": str(missing)})
    with pytest.raises(DataError, match=rf"{re.escape(str(missing))}.*data\.backgrounds\.dir"):
        _module(backgrounds={"kind": "folder", "dir": str(missing)})
    with pytest.raises(DataError, match="data.objects.dir"):
        _module(objects={"kind": "coco"})
    (tmp_path / "coco").mkdir()
    with pytest.raises(DataError, match="instances.json"):
        _module(objects={"kind": "coco", "dir": str(tmp_path / "coco")})
    with pytest.raises(ValueError, match="procedural.*coco"):
        _module(objects={"kind": "lvis"})
    with pytest.raises(ValueError, match="procedural.*folder"):
        _module(backgrounds={"kind": "coco"})
    with pytest.raises(ValueError, match="unknown data.paste keys"):
        _module(paste={"scales": [0.1, 0.2]})
    with pytest.raises(ValueError, match="at least 2 parts"):
        _module(split={"fractions": [1.0]})
    with pytest.raises(DataError, match="validation part .* has no objects .*procedural objects.*Fix"):
        _module(n_objects=2)
    with pytest.raises(DataError, match="no full batch"):
        _module(batch_size=64)


def test_hydra_config(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    cfg = OmegaConf.load(CONF / "synthetic_pairs.yaml")
    params = set(inspect.signature(SyntheticPairsDataModule.__init__).parameters) - {"self"}
    assert set(cfg) - {"_target_"} == params
    assert set(cfg.objects) == set(pairs.OBJECTS_DEFAULTS) and set(cfg.backgrounds) == set(pairs.BACKGROUNDS_DEFAULTS)
    root = OmegaConf.create({"seed": 5, "paths": {"shared_dir": str(tmp_path), "cache_dir": str(tmp_path)},
                             "data": cfg})
    dm = instantiate(root.data, limit_train=3, limit_val=2)
    assert dm.seed == 5 and dm.objects_spec["n"] == 64 and dm.backgrounds_spec["n"] == 128
    assert dm.gallery_size == 448 and dm.query_size == 224 and dm.batch_size == 8 and dm.syntheses == 4
    assert dm.paste_params.scale == (0.15, 0.5) and dm.paste_params.rotation == (0.0, 30.0)
    dm.setup()
    assert (len(dm.train_set.refs), len(dm.val_set.refs)) == (3, 2) and dm.train_set.resample
    assert not dm.val_set.resample


def test_trainer_epochs_reach_workers() -> None:
    """Under a real Trainer (workers re-created every epoch): new galleries each epoch, the same with 0 or 2
    workers, and validation galleries that never change."""
    import pytorch_lightning as pl

    class Probe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.train_sums: dict[int, list[float]] = {}
            self.val_sums: list[float] = []

        def training_step(self, batch, batch_idx):
            self.train_sums.setdefault(self.current_epoch, []).append(batch["gallery"].sum().item())
            return (self.w * batch["gallery"].mean()).sum()

        def validation_step(self, batch, batch_idx):
            self.val_sums.append(batch["gallery"].sum().item())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(workers: int) -> Probe:
        dm = SyntheticPairsDataModule(objects={"n": 8}, backgrounds={"n": 10}, syntheses=2, batch_size=4,
                                      gallery_size=64, query_size=32, num_workers=workers)
        probe = Probe()
        pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0,
                   ).fit(probe, datamodule=dm)
        return probe

    a, b = fit(0), fit(2)
    assert a.train_sums == b.train_sums and a.val_sums == b.val_sums
    assert len(a.train_sums) == 3 and len({tuple(v) for v in a.train_sums.values()}) == 3
    assert len(a.val_sums) == 3 and len(set(a.val_sums)) == 1


def test_keeping_smaller_or_all_instances_never_moves_an_image_into_another_part():
    from lit_retrieval.data.pairs import make_backgrounds, make_objects, split_sources
    from lit_retrieval.data.synthetic.recipes import split_by_image

    coco = shared_path("data", "coco128")
    backgrounds = make_backgrounds({"kind": "procedural", "n": 8})
    fractions = [0.45, 0.15, 0.4]
    benchmark = make_objects({"kind": "coco", "dir": str(coco)})  # what the cut-and-paste benchmarks split
    held = {r.source for r in split_by_image(benchmark.refs, fractions, 0)[2]}
    for min_size, per_image in ((48, "all"), (32, "largest"), (80, "all"), (120, "all"), (120, "largest")):
        objects = make_objects({"kind": "coco", "dir": str(coco), "min_size": min_size})
        parts, _ = split_sources(objects, backgrounds, fractions, 0, min_size, per_image)
        assert not held & {r.source for p in parts[:2] for r in p.refs}, (min_size, per_image)
        kept = {r.source for p in parts for r in p.refs}
        assert held & kept <= {r.source for r in parts[2].refs}
    small = make_objects({"kind": "coco", "dir": str(coco), "min_size": 48})
    assert len(split_sources(small, backgrounds, fractions, 0, 48, "all")[0][0].refs) > 3 * len(
        split_sources(benchmark, backgrounds, fractions, 0)[0][0].refs)  # many more training objects
