"""kws_tf.evaluation.metrics and .plots on small cases whose results are worked out by hand."""
import math
import random
import warnings

import numpy as np
import pytest

from kws_tf.evaluation import metrics, plots

CLASSES = ["có", "là", "không", "negative"]
# True 0,0,0,1,1,3,3,3; predicted 0,0,1,1,1,3,0,0. Class "không" never occurs.
LABELS = [0, 0, 0, 1, 1, 3, 3, 3]
PREDICTIONS = [0, 0, 1, 1, 1, 3, 0, 0]
MATRIX = [[2, 1, 0, 0],
          [0, 2, 0, 0],
          [0, 0, 0, 0],
          [2, 0, 0, 1]]

# KWS detection case: keywords 0 and 1, negative 2. Highest keyword score and
# class per row in the comments.
DET_SCORES = np.array([
    [0.90, 0.05, 0.05],  # keyword 0: 0.90, right keyword
    [0.60, 0.10, 0.30],  # keyword 0: 0.60, right
    [0.10, 0.70, 0.20],  # keyword 1: 0.70, right
    [0.50, 0.30, 0.20],  # keyword 1: 0.50 for keyword 0, wrong: rejected at every θ
    [0.05, 0.05, 0.90],  # negative: 0.05
    [0.20, 0.10, 0.70],  # negative: 0.20
    [0.10, 0.65, 0.25],  # negative: 0.65
    [0.30, 0.10, 0.60],  # negative: 0.30
    [0.02, 0.03, 0.95],  # negative: 0.03
])
DET_LABELS = [0, 0, 1, 1, 2, 2, 2, 2, 2]
# (θ, FAR = negatives with top >= θ / 5, FRR = 1 - right keywords with top >= θ / 4)
DET_EXPECTED = [
    (0.03, 5 / 5, 1 / 4), (0.05, 4 / 5, 1 / 4), (0.20, 3 / 5, 1 / 4), (0.30, 2 / 5, 1 / 4),
    (0.50, 1 / 5, 1 / 4), (0.60, 1 / 5, 1 / 4), (0.65, 1 / 5, 2 / 4), (0.70, 0 / 5, 2 / 4),
    (0.90, 0 / 5, 3 / 4), (math.inf, 0.0, 1.0),
]


def test_classification_report_by_hand():
  report = metrics.classification_report(LABELS, PREDICTIONS, CLASSES)
  assert report["confusion_matrix"] == MATRIX
  assert report["num_examples"] == 8
  assert report["accuracy"] == pytest.approx(5 / 8)
  expected = {  # precision = diagonal / column sum, recall = diagonal / row sum
      "có": (2 / 4, 2 / 3, 4 / 7, 3),
      "là": (2 / 3, 2 / 2, 4 / 5, 2),
      "không": (0.0, 0.0, 0.0, 0),  # zero denominators give 0
      "negative": (1 / 1, 1 / 3, 1 / 2, 3),
  }
  for name, (precision, recall, f1, support) in expected.items():
    scores = report["per_class"][name]
    assert scores["precision"] == pytest.approx(precision)
    assert scores["recall"] == pytest.approx(recall)
    assert scores["f1"] == pytest.approx(f1)
    assert scores["support"] == support
  assert report["macro_f1"] == pytest.approx((4 / 7 + 4 / 5 + 0 + 1 / 2) / 4)


def test_classification_report_takes_scores():
  logits = np.full((len(PREDICTIONS), len(CLASSES)), -1.0)
  logits[np.arange(len(PREDICTIONS)), PREDICTIONS] = 2.0
  from_logits = metrics.classification_report(np.array(LABELS), logits, CLASSES)
  assert from_logits == metrics.classification_report(LABELS, PREDICTIONS, CLASSES)


@pytest.mark.parametrize("labels, predictions, match", [
    ([0, 1], [0], "differ in shape"),
    ([0, 4], [0, 1], r"labels must be in \[0, 4\)"),
    ([0, 1], [0.0, 1.0], "predictions must be integers"),
    ([], [], "no examples"),
    ([0, 1], np.zeros((2, 3)), "scores have 3 classes"),
])
def test_classification_report_rejects_bad_input(labels, predictions, match):
  with pytest.raises(ValueError, match=match):
    metrics.classification_report(labels, predictions, CLASSES)


def test_format_confusion_matrix():
  assert metrics.format_confusion_matrix(MATRIX, CLASSES) == (
      "true \\ predicted  có  là  không  negative\n"
      "có                 2   1      0         0\n"
      "là                 0   2      0         0\n"
      "không              0   0      0         0\n"
      "negative           2   0      0         1")


def test_det_curve_by_hand():
  curve = metrics.det_curve(DET_SCORES, DET_LABELS, negative_index=2)
  assert len(curve) == len(DET_EXPECTED)
  for point, expected in zip(curve, DET_EXPECTED):
    assert point == pytest.approx(expected)


@pytest.mark.parametrize("target, threshold, far, frr", [
    (1.0, 0.03, 1.0, 0.25),
    (0.2, 0.50, 0.2, 0.25),  # the lowest θ with FAR <= 20 %
    (0.1, 0.70, 0.0, 0.50),
    (0.0, 0.70, 0.0, 0.50),
])
def test_frr_at_far_by_hand(target, threshold, far, frr):
  result = metrics.frr_at_far(DET_SCORES, DET_LABELS, 2, target)
  assert result == pytest.approx({"target_far": target, "threshold": threshold, "far": far,
                                  "frr": frr, "num_keyword": 4, "num_negative": 5})


def test_frr_at_far_negative_class_not_last_and_infinite_threshold():
  # Negative class first; the one negative outscores every keyword example.
  scores = np.array([[0.01, 0.99, 0.00],   # negative, keyword score 0.99
                     [0.10, 0.80, 0.10],   # keyword 1
                     [0.30, 0.10, 0.60]])  # keyword 2
  result = metrics.frr_at_far(scores, [0, 1, 2], negative_index=0, target_far=0.5)
  assert result["threshold"] == math.inf
  assert (result["far"], result["frr"]) == (0.0, 1.0)
  result = metrics.frr_at_far(scores, [0, 1, 2], negative_index=0, target_far=1.0)
  assert (result["threshold"], result["far"], result["frr"]) == (0.6, 1.0, 0.0)


@pytest.mark.parametrize("labels, match", [
    ([0, 0, 1], "no negative examples"),
    ([2, 2, 2], "no keyword examples"),
])
def test_det_curve_needs_both_kinds(labels, match):
  with pytest.raises(ValueError, match=match):
    metrics.det_curve(np.full((3, 3), 1 / 3), labels, negative_index=2)


def test_edit_counts():
  assert metrics.edit_counts("kitten", "sitting") == (2, 0, 1)
  assert metrics.edit_counts("", "") == (0, 0, 0)
  assert metrics.edit_counts("abc", "") == (0, 3, 0)
  assert metrics.edit_counts("", "ab") == (0, 0, 2)
  assert metrics.edit_counts(["một", "hai"], ["hai"]) == (0, 1, 0)


def _distance(a, b):
  """Plain Levenshtein distance, one cell at a time."""
  row = list(range(len(b) + 1))
  for i in range(1, len(a) + 1):
    previous, row[0] = row[0], i
    for j in range(1, len(b) + 1):
      previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] != b[j - 1]))
  return row[-1]


def test_edit_counts_against_plain_levenshtein():
  rng = random.Random(0)
  for _ in range(300):
    a = "".join(rng.choice("abc") for _ in range(rng.randint(0, 9)))
    b = "".join(rng.choice("abc") for _ in range(rng.randint(0, 9)))
    substitutions, deletions, insertions = metrics.edit_counts(a, b)
    assert substitutions + deletions + insertions == _distance(a, b)
    assert deletions - insertions == len(a) - len(b)


def test_error_rates_by_hand():
  result = metrics.error_rates(["một hai ba bốn", "xin chào"],
                               ["Một, hai  bà bốn năm!", "chào"])  # normalised first
  # Words: ba -> bà (S), + năm (I); - xin (D); 6 reference words.
  assert result["words"] == {"substitutions": 1, "deletions": 1, "insertions": 1,
                             "errors": 3, "reference_length": 6}
  assert result["wer"] == pytest.approx(3 / 6)
  # Characters, spaces included: a -> à (S), + " năm" (4 I); - "xin " (4 D);
  # references have 14 + 8 characters.
  assert result["characters"] == {"substitutions": 1, "deletions": 4, "insertions": 4,
                                  "errors": 9, "reference_length": 22}
  assert result["cer"] == pytest.approx(9 / 22)
  assert result["num_utterances"] == 2


def test_error_rates_word_boundary_costs_one_character():
  result = metrics.error_rates(["không có"], ["khôngcó"])
  assert result["characters"]["deletions"] == 1
  assert result["cer"] == pytest.approx(1 / 8)
  assert result["wer"] == pytest.approx(2 / 2)  # one substitution, one deletion


def test_error_rates_empty_hypothesis():
  result = metrics.error_rates(["có không"], [""])
  assert result["words"]["deletions"] == 2
  assert result["characters"]["deletions"] == 8
  assert (result["wer"], result["cer"]) == (1.0, 1.0)


def test_error_rates_empty_reference():
  # Within a corpus: its insertions count, its length is zero.
  result = metrics.error_rates(["có không", ""], ["có không", "là"])
  assert result["words"]["insertions"] == 1
  assert result["wer"] == pytest.approx(1 / 2)
  assert result["cer"] == pytest.approx(2 / 8)
  # No reference at all: 0 without errors, inf with any.
  assert metrics.error_rates([""], ["..."])["wer"] == 0.0
  assert metrics.error_rates([""], ["là"])["wer"] == math.inf
  assert metrics.error_rates([], [])["cer"] == 0.0


def test_error_rates_count_mismatch():
  with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
    metrics.error_rates(["a", "b"], ["a"])


def _assert_png(path):
  with open(path, "rb") as f:
    data = f.read()
  assert data.startswith(b"\x89PNG\r\n\x1a\n")
  assert len(data) > 10_000
  assert not (path.parent / (path.name + ".tmp")).exists()


def test_plots_write_pngs(tmp_path):
  curve = metrics.det_curve(DET_SCORES, DET_LABELS, 2)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # a missing Vietnamese glyph warns
    plots.plot_confusion_matrix(MATRIX, CLASSES, str(tmp_path / "confusion.png"),
                                title="Nhận dạng từ khoá")
    points = [(far, frr) for _, far, frr in curve]
    plots.plot_det_curve(points, str(tmp_path / "det.png"))
    plots.plot_det_curve({"giáo viên": points, "học sinh": [(0.0, 1.0), (1.0, 0.0)]},
                         str(tmp_path / "dets.png"))
  _assert_png(tmp_path / "confusion.png")
  _assert_png(tmp_path / "det.png")
  _assert_png(tmp_path / "dets.png")
  with pytest.raises(ValueError, match="'học sinh'"):
    plots.plot_det_curve({"giáo viên": points, "học sinh": []}, str(tmp_path / "bad.png"))
  assert not (tmp_path / "bad.png").exists()


def test_plot_confusion_matrix_shape_mismatch(tmp_path):
  with pytest.raises(ValueError, match="does not match 3 class names"):
    plots.plot_confusion_matrix(MATRIX, CLASSES[:3], str(tmp_path / "x.png"))
  assert not list(tmp_path.iterdir())
