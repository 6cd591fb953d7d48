"""`lgrnet info`: per-part parameter table with random weights; the reference total."""

from __future__ import annotations

import re

from lgrnet.cli import main


def table(capsys, argv: list[str]) -> dict[str, int]:
    assert main(argv) == 0
    text = capsys.readouterr().out
    rows = {}
    for line in text.splitlines():
        m = re.match(r"(.+?)\s{2,}([\d,]+)\s+([\d,]+)$", line)
        if m:
            rows[m[1].strip()] = int(m[2].replace(",", ""))
    return rows


def test_reference_total_without_dead_modules(capsys):
    rows = table(capsys, ["info", "--preset", "lgrnet-swin-s"])
    # 274,183,360 of the reference minus rpn_head, query_scale and the BERT pooler.
    assert rows["total"] == 274_183_360 - 593_935 - 131_584 - 590_592 == 272_867_249
    assert rows["text encoder"] == 109_482_240 - 590_592
    assert rows["visual backbone"] == 48_838_602
    assert rows["backbone QDA"] == 68_840_760
    assert rows["neck laterals"] == 369_664
    assert rows["neck QDA (soft down-sampling)"] == 36_775_080
    assert rows["TCA/TCF layers"] == 6 * 1_381_376
    assert rows["TFE coordinate head"] == 66_306
    assert sum(v for k, v in rows.items() if k != "total") == rows["total"]


def test_overrides_change_the_table(capsys):
    rows = table(capsys, ["info", "--preset", "lgrnet-swin-s", "--set", "model.num_layers=3",
                          "--set", "model.cross_attn_projections=true"])
    assert rows["TCA/TCF layers"] == 3 * (1_381_376 + 3 * (256 * 256 + 256))


def test_bad_override_is_a_clear_error(capsys):
    assert main(["info", "--set", "model.nope=1"]) == 2
    assert "unknown config key 'model.nope'" in capsys.readouterr().err


def test_every_preset_prints_a_table(capsys):
    # lgrnet-tiny names a pretrained (offline) encoder: the table is still built from its config alone.
    tiny = table(capsys, ["info", "--preset", "lgrnet-tiny"])
    assert tiny["text encoder"] == 22_565_376  # all-MiniLM-L6-v2 without its pooler
    assert tiny["total"] > tiny["text encoder"]
    for preset in ("lgrnet-paper-swin-s", "lgrnet-r101"):
        rows = table(capsys, ["info", "--preset", preset])
        assert sum(v for k, v in rows.items() if k != "total") == rows["total"]
        # The paper's text has no query-dynamic attention; the reference (and its ResNet variant) has.
        assert (rows["backbone QDA"] == 0) == (preset == "lgrnet-paper-swin-s")
