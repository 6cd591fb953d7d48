"""Generalized REC metrics against hand-computed cases: the one-to-one matching (TP / FP / FN, F1), the aggregate
figures (Precision@(F1=1, IoU>=0.5), N-acc, T-acc, Acc@0.5 of the top box on single-target samples) and the threshold
sweep with its choice of threshold."""

from __future__ import annotations

import pytest
import torch

from lgrnet.data.records import target_kind
from lgrnet.engine.metrics import (
    SWEEP_THRESHOLDS,
    GrecAccumulator,
    GrecOutcome,
    GrecSample,
    best_threshold,
    grec_match,
    grec_sweep,
    meets_min_n_acc,
)

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 20.0, 30.0, 30.0]
FAR = [100.0, 100.0, 110.0, 110.0]  # overlaps neither A nor B


def outcome(predictions, targets) -> tuple[int, int, int]:
    o = grec_match(torch.tensor(predictions).reshape(-1, 4), torch.tensor(targets).reshape(-1, 4))
    return o.tp, o.fp, o.fn


def test_no_target_sample_is_correct_only_without_a_prediction():
    empty = grec_match(torch.zeros(0, 4), torch.zeros(0, 4))
    assert (empty.tp, empty.fp, empty.fn) == (0, 0, 0)
    assert empty.f1 == 1.0 and empty.correct  # 0 / 0: nothing to find, nothing claimed
    claimed = grec_match(torch.tensor([A]), torch.zeros(0, 4))
    assert (claimed.tp, claimed.fp, claimed.fn) == (0, 1, 0)
    assert claimed.f1 == 0.0 and not claimed.correct


@pytest.mark.parametrize(
    ("predictions", "targets", "expected", "f1"),
    [
        ([A, B], [A, B], (2, 0, 0), 1.0),  # all matched
        ([A], [A, B], (1, 0, 1), 2 / 3),  # one missed: 2*1 / (2*1 + 0 + 1)
        ([A, B, FAR], [A, B], (2, 1, 0), 4 / 5),  # one extra: 2*2 / (2*2 + 1 + 0)
        ([B, A], [A, B], (2, 0, 0), 1.0),  # order does not matter
        ([], [A, B], (0, 0, 2), 0.0),  # nothing predicted for two targets
        ([FAR], [A], (0, 1, 1), 0.0),  # a wrong box is a false positive and a miss
    ],
)
def test_multi_target_matching(predictions, targets, expected, f1):
    assert outcome(predictions, targets) == expected
    o = GrecOutcome(*expected)
    assert o.f1 == pytest.approx(f1)
    assert o.correct == (f1 == 1.0)


def test_duplicate_predictions_on_one_target_count_one_true_positive():
    # Both predictions overlap A well (IoU 1 and 81/100); only one may take it, the other is a false positive.
    assert outcome([A, [0.0, 0.0, 9.0, 9.0]], [A]) == (1, 1, 0)
    assert GrecOutcome(1, 1, 0).f1 == pytest.approx(2 / 3)


def test_iou_of_exactly_half_matches_just_below_does_not():
    # [0, 0, 10, 10] inside [0, 0, 10, 20]: intersection 100, union 200 -> IoU 0.5 exactly: a match (inclusive).
    assert outcome([A], [[0.0, 0.0, 10.0, 20.0]]) == (1, 0, 0)
    # Target [0, 0, 10, 20.5]: 100 / 205 < 0.5: no match.
    assert outcome([A], [[0.0, 0.0, 10.0, 20.5]]) == (0, 1, 1)


def test_matching_is_maximal_not_greedy():
    # T1 = [0,0,10,10], T2 = [0,0,10,14]; P1 = [0,0,10,11] has IoU 100/110 = 0.91 with T1 and 110/140 = 0.79 with
    # T2; P2 = [0,0,10,6] has IoU 60/100 = 0.6 with T1 and 60/140 = 0.43 with T2. Pairing the best IoU first
    # (P1-T1) would leave P2 unmatched; the maximum matching P1-T2, P2-T1 finds both.
    t1, t2 = [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 14.0]
    p1, p2 = [0.0, 0.0, 10.0, 11.0], [0.0, 0.0, 10.0, 6.0]
    assert outcome([p1, p2], [t1, t2]) == (2, 0, 0)
    assert outcome([p2, p1], [t2, t1]) == (2, 0, 0)


def test_zero_area_boxes_never_match():
    point = [5.0, 5.0, 5.0, 5.0]
    assert outcome([point], [point]) == (0, 1, 1)  # 0 / 0 is no match, not a NaN count


def test_kinds_by_set_size():
    assert [target_kind(n) for n in (0, 1, 2, 5)] == ["none", "single", "multi", "multi"]


def _samples() -> list[GrecSample]:
    """Four samples whose outcome at each threshold is worked out in the test below."""

    def sample(tokens, targets):
        boxes = torch.tensor([box for box, _ in tokens], dtype=torch.float64)
        scores = torch.tensor([score for _, score in tokens], dtype=torch.float64)
        return GrecSample(boxes, scores, torch.tensor(targets, dtype=torch.float64).reshape(-1, 4))

    return [
        sample([(A, 0.3), (B, 0.1)], []),  # s1: no target
        sample([(A, 0.9), (FAR, 0.4)], [A]),  # s2: single target, top box right
        sample([(A, 0.8), (B, 0.45), (FAR, 0.05)], [A, B]),  # s3: two targets
        sample([(FAR, 0.7), (A, 0.6)], [A]),  # s4: single target, top box wrong
    ]


def test_aggregate_figures_at_one_threshold():
    acc = GrecAccumulator([0.5])
    acc.update(_samples())
    (row,) = acc.compute()
    # At 0.5 the predictions are: s1 none (correct), s2 A (correct), s3 A only (TP 1, FN 1: F1 2/3),
    # s4 FAR and A (TP 1, FP 1: F1 2/3).
    assert row["threshold"] == 0.5
    assert row["count"] == 4 and row["correct"] == 2
    assert (row["single_count"], row["multi_count"], row["none_count"]) == (2, 1, 1)
    assert row["precision"] == pytest.approx(50.0)
    assert row["n_acc"] == pytest.approx(100.0)  # s1 claims nothing
    assert row["t_acc"] == pytest.approx(100.0)  # s2, s3, s4 all claim something
    assert row["single_acc50"] == pytest.approx(50.0)  # s2's top box A hits, s4's top box FAR misses
    assert row["precision_single"] == pytest.approx(50.0) and row["precision_multi"] == pytest.approx(0.0)
    assert row["mean_f1"] == pytest.approx(100 * (1 + 1 + 2 / 3 + 2 / 3) / 4)


def test_sweep_and_chosen_threshold():
    assert pytest.approx([0.05 * i for i in range(1, 20)]) == SWEEP_THRESHOLDS
    rows, chosen = grec_sweep(_samples())
    by_threshold = {round(r["threshold"], 2): r for r in rows}
    assert list(by_threshold) == [round(0.05 * i, 2) for i in range(1, 20)]
    # Correct samples per threshold, by hand:
    #   0.05: s1 claims A, B; s2 claims FAR too; s3 claims FAR too; s4 two boxes           -> 0
    #   0.10 .. 0.30: s3 A, B right; s1 (0.3 >= t), s2 (FAR 0.4), s4 wrong                -> 1
    #   0.35, 0.40: s1 right (0.3 < t), s3 right; s2 claims FAR (0.4 >= t); s4 wrong       -> 2
    #   0.45: s1, s2, s3 (B's score 0.45 counts: inclusive) right; s4 wrong                -> 3
    #   0.50 .. 0.90: s1, s2 right; s3 misses B; s4 claims FAR                            -> 2
    #   0.95: s1 right only (s2's A at 0.9 is dropped)                                     -> 1
    expected = {0.05: 0, 0.1: 1, 0.15: 1, 0.2: 1, 0.25: 1, 0.3: 1, 0.35: 2, 0.4: 2, 0.45: 3, 0.5: 2, 0.55: 2,
                0.6: 2, 0.65: 2, 0.7: 2, 0.75: 2, 0.8: 2, 0.85: 2, 0.9: 2, 0.95: 1}
    assert {t: r["correct"] for t, r in by_threshold.items()} == expected
    assert by_threshold[0.45]["precision"] == pytest.approx(75.0)
    # N-acc: s1 (scores 0.3, 0.1) is answered with nothing above 0.3 only.
    assert by_threshold[0.3]["n_acc"] == 0.0 and by_threshold[0.35]["n_acc"] == 100.0
    # T-acc: at 0.9 only s2 (A at 0.9) claims a box of the three target samples; at 0.95 none does.
    assert by_threshold[0.9]["t_acc"] == pytest.approx(100 / 3) and by_threshold[0.95]["t_acc"] == 0.0
    # The top box does not depend on the threshold.
    assert {r["single_acc50"] for r in rows} == {50.0}
    assert chosen == pytest.approx(0.45)


def test_best_threshold_ties_go_to_the_one_closest_to_half():
    def rows(correct_by_threshold):
        return [{"threshold": t, "correct": c} for t, c in correct_by_threshold.items()]

    assert best_threshold(rows({0.3: 3, 0.45: 2, 0.65: 3, 0.9: 3})) == 0.65  # 0.65 is closer to 0.5 than 0.3
    assert best_threshold(rows({0.4: 3, 0.5: 2, 0.6: 3})) == 0.6  # equally close: the higher claims fewer boxes
    assert best_threshold(rows({0.05: 1, 0.5: 1, 0.95: 1})) == 0.5
    assert best_threshold(rows({0.05: 4, 0.5: 1})) == 0.05  # more correct beats closeness


def test_best_threshold_with_a_minimum_n_acc():
    def rows(table):  # threshold: (correct, n_acc)
        return [{"threshold": t, "correct": c, "n_acc": n} for t, (c, n) in table.items()]

    table = {0.35: (9, 80.0), 0.45: (8, 90.0), 0.6: (8, 95.0), 0.7: (5, 99.0)}
    assert best_threshold(rows(table)) == 0.35
    assert best_threshold(rows(table), min_n_acc=90) == 0.45  # 0.6 has the same precision but is further from 0.5
    assert best_threshold(rows(table), min_n_acc=94.5) == 0.6
    assert best_threshold(rows(table), min_n_acc=99.5) == 0.7  # none reaches it: the highest N-acc
    # Without no-target samples there is no N-acc to constrain.
    assert best_threshold(rows({0.3: (4, None), 0.5: (3, None)}), min_n_acc=90) == 0.3
    assert meets_min_n_acc({"n_acc": 89.99}, 90) is False and meets_min_n_acc({"n_acc": 90.0}, 90) is True
    assert meets_min_n_acc({"n_acc": None}, 90) is True and meets_min_n_acc({"n_acc": 0.0}, None) is True


def test_model_threshold_outside_the_sweep_gets_its_own_row():
    acc = GrecAccumulator([*SWEEP_THRESHOLDS, 0.42, 0.5])  # 0.5 twice: one row
    assert len(acc.thresholds) == 20 and 0.42 in acc.thresholds
    assert list(acc.thresholds) == sorted(acc.thresholds)


def test_accumulator_suppresses_duplicates_per_threshold():
    # One target A; tokens A (0.9) and A2 (0.6), IoU 100 / 110 = 0.909; a two-target sample whose targets overlap
    # by 0.909 too (A and A2), found by both tokens.
    a2 = [0.0, 0.0, 10.0, 11.0]
    single = GrecSample(torch.tensor([A, a2], dtype=torch.float64), torch.tensor([0.9, 0.6]),
                        torch.tensor([A], dtype=torch.float64))
    pair = GrecSample(torch.tensor([A, a2], dtype=torch.float64), torch.tensor([0.9, 0.6]),
                      torch.tensor([A, a2], dtype=torch.float64))
    rows, _ = grec_sweep([single, pair], [0.5, 0.7])
    assert [r["correct"] for r in rows] == [1, 1]  # 0.5: pair right, single has a false positive; 0.7: the reverse
    rows, _ = grec_sweep([single, pair], [0.5, 0.7], nms_iou=0.9)
    assert [r["correct"] for r in rows] == [1, 1]  # 0.5: the duplicate goes, and so does the pair's second target
    assert rows[0]["precision_single"] == 100.0 and rows[0]["precision_multi"] == 0.0
    rows, _ = grec_sweep([single, pair], [0.5], nms_iou=0.95)  # the overlap 0.909 is not above 0.95
    assert rows[0]["precision_single"] == 0.0 and rows[0]["precision_multi"] == 100.0


def test_top_box_defaults_to_the_highest_score_and_can_be_given():
    tokens = torch.tensor([FAR, A], dtype=torch.float64)
    targets = torch.tensor([A], dtype=torch.float64)
    default = GrecSample(tokens, torch.tensor([0.2, 0.1]), targets)
    given = GrecSample(tokens, torch.tensor([0.2, 0.1]), targets, top_box=torch.tensor(A))
    rows, _ = grec_sweep([default], [0.5])
    assert rows[0]["single_acc50"] == 0.0
    rows, _ = grec_sweep([given], [0.5])
    assert rows[0]["single_acc50"] == 100.0


def test_empty_inputs_give_no_figure_and_count_zero():
    rows, chosen = grec_sweep([])
    assert len(rows) == 19 and all(r["count"] == 0 for r in rows)
    assert all(r[k] is None for r in rows for k in ("precision", "n_acc", "t_acc", "single_acc50", "mean_f1"))
    assert chosen == 0.5  # every threshold ties at 0 correct
    # Only no-target samples: T-acc and the single-target accuracy have no sample; N-acc and precision do.
    rows, _ = grec_sweep([GrecSample(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 4))], [0.5])
    assert rows[0]["precision"] == 100.0 and rows[0]["n_acc"] == 100.0
    assert rows[0]["t_acc"] is None and rows[0]["single_acc50"] is None
    with pytest.raises(ValueError):
        best_threshold([])


def test_threshold_compares_in_the_scores_dtype_as_a_tensor_comparison_does():
    # float32(0.45) is 0.449999988...: below the float 0.45, yet `tensor >= 0.45` keeps it (torch compares in the
    # tensor's dtype); the sweep must keep it too, or its rows would disagree with the boxes a model returns.
    score = torch.tensor([0.45], dtype=torch.float32)
    assert bool(score >= 0.45) and float(score) < 0.45
    sample = GrecSample(torch.tensor([A]), score, torch.tensor([A]))
    rows, _ = grec_sweep([sample], [0.45])
    assert rows[0]["correct"] == 1
