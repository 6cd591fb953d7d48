"""Visual Genome leakage guard: VG images that are COCO images of evaluation splits are dropped.

The fixture's VG images point (through image_data.json's coco_id) at COCO images that SOURCES.md places in
RefCOCO testB (154, 605) and RefCOCOg-umd val (309), at an id no COCO image has, and at no COCO image at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lgrnet.cli import main
from lgrnet.config import DataConfig, load_config
from lgrnet.data.readers import load_records, read_visual_genome, read_visual_genome_excluding
from lgrnet.data.readers.safe_pickle import safe_load
from lgrnet.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SPLITS = REPO.parent / "shared" / "data" / "transvg_splits"
UNC_TESTB = SPLITS / "unc" / "unc_testB.pth"
UMD_VAL = SPLITS / "gref_umd" / "gref_umd_val.pth"


def region(region_id: int, image_id: int, phrase: str, w: float = 10.0) -> dict:
    return {"region_id": region_id, "image_id": image_id, "phrase": phrase, "x": 1, "y": 2, "width": w, "height": 5}


@pytest.fixture
def vg(tmp_path: Path) -> Path:
    images = [  # VG image id -> (coco_id, regions with a positive size)
        {"id": 1, "regions": [region(10, 1, "zebra"), region(11, 1, "grass"), region(12, 1, "sky")]},
        {"id": 2, "regions": [region(20, 2, "bus"), region(21, 2, "road"), region(22, 2, "nothing", w=0)]},
        {"id": 3, "regions": [region(30, 3, "woman")]},
        {"id": 4, "regions": [region(40, 4, "tree"), region(41, 4, "bench")]},
        {"id": 5, "regions": [region(50, 5, "dog")]},
    ]
    coco_ids = {1: 154, 2: 605, 3: 309, 4: 999_999_999, 5: None}
    (tmp_path / "region_descriptions.json").write_text(json.dumps(images))
    (tmp_path / "image_data.json").write_text(json.dumps(
        [{"image_id": i, "coco_id": c, "flickr_id": None, "width": 800, "height": 600} for i, c in coco_ids.items()]))
    return tmp_path / "region_descriptions.json"


def coco_ids(split_file: Path) -> set[int]:
    """COCO ids of a TransVG split file: the 12 digits before '.jpg' of each row's image name."""
    return {int(row[0][-16:-4]) for row in safe_load(split_file)}


def test_drops_the_vg_images_of_an_evaluation_split(vg):
    assert len(read_visual_genome(vg)) == 9  # every region with a positive size
    records, exclusion = read_visual_genome_excluding(vg, [UNC_TESTB], image_root="/vg")
    assert sorted(r.id for r in records) == ["vg/30", "vg/40", "vg/41", "vg/50"]
    assert (exclusion.images, exclusion.regions) == (2, 5)  # VG 1 and 2 (COCO 154, 605); the empty region of 2
    assert exclusion.eval_images == 750  # RefCOCO testB's images
    assert "dropped 2 VG images (5 regions) that are among the 750 COCO images of unc_testB.pth" in exclusion.summary()


def test_several_split_files_and_jsonl(vg, tmp_path):
    records, exclusion = read_visual_genome_excluding(vg, [UNC_TESTB, UMD_VAL])
    assert sorted(r.id for r in records) == ["vg/40", "vg/41", "vg/50"]
    assert (exclusion.images, exclusion.regions) == (3, 6)
    assert exclusion.eval_images == len(coco_ids(UNC_TESTB) | coco_ids(UMD_VAL))
    split = tmp_path / "my_eval.jsonl"  # COCO 2014 and COCO 2017 file names
    split.write_text("\n".join(json.dumps({"image": name, "expression": "x", "box": [0, 0, 1, 1]}) for name in (
        "coco/COCO_val2014_000000000154.jpg", "000000000309.jpg")) + "\n")
    records, exclusion = read_visual_genome_excluding(vg, [split])
    assert sorted(r.id for r in records) == ["vg/20", "vg/21", "vg/40", "vg/41", "vg/50"]
    assert (exclusion.eval_images, exclusion.images, exclusion.regions) == (2, 2, 4)


def test_bad_guard_inputs_are_one_line_errors(vg, tmp_path):
    with pytest.raises(DataError, match="'9739.jpg' is not a COCO file name"):
        read_visual_genome_excluding(vg, [SPLITS / "referit" / "referit_val.pth"])
    with pytest.raises(DataError, match=r"split file not found"):
        read_visual_genome_excluding(vg, [tmp_path / "unc" / "unc_val.pth"])
    with pytest.raises(DataError, match="takes TransVG .pth or lgrnet .jsonl"):
        read_visual_genome_excluding(vg, [tmp_path / "ids.txt"])
    (tmp_path / "image_data.json").unlink()
    with pytest.raises(DataError, match=r"image_data.json not found .*set it to \[\] to keep every VG image"):
        read_visual_genome_excluding(vg, [UNC_TESTB])


def test_load_records_guards_by_config_and_empty_list_is_the_reference(vg, capsys):
    guarded = DataConfig(format="vg", root=str(vg.parent), image_root="/vg", exclude_images_of=[str(UNC_TESTB)])
    assert len(load_records(guarded, "train")) == 4
    assert "lgrnet: Visual Genome: dropped 2 VG images (5 regions)" in capsys.readouterr().err
    reference = DataConfig(format="vg", root=str(vg.parent), image_root="/vg", exclude_images_of=[])
    assert len(load_records(reference, "train")) == 9


def test_vg_pretrain_config_guards_every_refcoco_evaluation_split():
    config = load_config(REPO / "configs" / "vg-pretrain.yaml")
    names = {Path(p).name for p in config.data.exclude_images_of}
    assert names >= {"unc_val.pth", "unc_testA.pth", "unc_testB.pth", "unc+_val.pth", "unc+_testA.pth",
                     "unc+_testB.pth", "gref_umd_val.pth", "gref_umd_test.pth"}
    off = load_config(REPO / "configs" / "vg-pretrain.yaml", ["data.exclude_images_of=[]"])
    assert off.data.exclude_images_of == []


def test_data_stats_reports_what_was_dropped(vg, capsys):
    assert main(["data", "stats", "--format", "vg", "--root", str(vg), "--exclude-images-of", str(UNC_TESTB),
                 "--exclude-images-of", str(UMD_VAL)]) == 0
    out = capsys.readouterr().out
    assert "dropped 3 VG images (6 regions)" in out and "unc_testB.pth, gref_umd_val.pth" in out
    row = next(line for line in out.splitlines() if line.startswith("| vg train"))
    assert row.split("|")[2].strip() == "3"
