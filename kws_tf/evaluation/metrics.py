"""Metrics in numpy: KWS classification and detection, CTC word and character error rates.

Keyword spotting (classes of ``kws_tf.text.keyword_classes()``, the keywords
then "negative"):

* :func:`classification_report`: accuracy, macro-F1, per-class precision,
  recall, F1 and support, and the confusion matrix (rows true, columns
  predicted). :func:`format_confusion_matrix` renders the matrix as text.
* :func:`det_curve` and :func:`frr_at_far`: the detection trade-off between
  false rejects and false accepts as a threshold on the keyword score moves.

Detection rule (the usual posterior-threshold keyword spotter). Given the
scores of one example, the detector takes the keyword class with the highest
score (the negative class is left out of this maximum) and fires that keyword
when its score is >= the threshold θ; otherwise it fires nothing. Then

* a negative example is a *false accept* when the detector fires any keyword,
  i.e. when its highest keyword score is >= θ;
  FAR(θ) = false accepts / negative examples;
* a keyword example is a *false reject* when the detector does not fire its
  own keyword: the highest keyword score is < θ, or the highest-scoring
  keyword is another keyword (a substitution, counted as a false reject at
  every θ); FRR(θ) = false rejects / keyword examples.

With softmax probabilities and θ > 0.5, "the highest keyword is the true one"
follows from "the true keyword's score >= θ", so the rule is then the plain
"true keyword's score < θ" false reject. Any score where higher means more
confident works; thresholds are in the units of the scores.

CTC recognition: :func:`error_rates` gives the corpus word and character error
rates (total edits / total reference words or characters) with the
substitution, deletion and insertion counts of a minimum-edit alignment
(:func:`edit_counts`). Texts are normalised with ``kws_tf.text.normalize``
first; words are split on white space; the characters of the CER are those of
the normalised text *including* the single spaces between words (as jiwer,
NeMo and ESPnet count them), so a wrong word boundary costs one character
error. An empty reference contributes its hypothesis' insertions to the
edits and nothing to the reference length; when the whole reference side is
empty the rate is 0.0 without edits and ``inf`` with any.
"""
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

from kws_tf import text as text_lib


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
  """int64 ``[num_classes, num_classes]``: counts of (true row, predicted column).

  ``labels`` and ``predictions`` are int ``[N]`` class indices.
  """
  labels = _class_indices(labels, num_classes, "labels")
  predictions = _class_indices(predictions, num_classes, "predictions")
  if labels.shape != predictions.shape:
    raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ in shape")
  counts = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes)


def classification_report(labels, predictions, class_names: Sequence[str]) -> dict:
  """Accuracy, macro-F1, per-class scores and the confusion matrix.

  Args:
    labels: int ``[N]`` true class indices.
    predictions: int ``[N]`` predicted class indices, or float ``[N, C]``
      logits / scores whose argmax is the prediction.
    class_names: the ``C`` class names, in index order.

  Returns:
    A JSON-ready dict: ``num_examples``; ``accuracy``; ``macro_f1``, the
    unweighted mean of the F1 of all ``C`` classes; ``per_class``, class name
    -> ``precision``, ``recall``, ``f1``, ``support`` (true examples);
    ``class_names``; ``confusion_matrix``, nested lists ``[C][C]`` of counts,
    rows true, columns predicted. A precision, recall or F1 whose denominator
    is zero (a class never predicted, or absent) is 0.0, as sklearn's
    ``zero_division=0``; such classes still count in the macro-F1.
  """
  num_classes = len(class_names)
  predictions = np.asarray(predictions)
  if predictions.ndim == 2:
    if predictions.shape[1] != num_classes:
      raise ValueError(f"scores have {predictions.shape[1]} classes, class_names {num_classes}")
    predictions = np.argmax(predictions, axis=1)
  matrix = confusion_matrix(labels, predictions, num_classes)
  num_examples = int(matrix.sum())
  if num_examples == 0:
    raise ValueError("no examples")
  true_positives = np.diag(matrix)
  support = matrix.sum(axis=1)
  precision = _divide(true_positives, matrix.sum(axis=0))
  recall = _divide(true_positives, support)
  f1 = _divide(2 * precision * recall, precision + recall)
  per_class = {
      name: {"precision": float(precision[c]), "recall": float(recall[c]),
             "f1": float(f1[c]), "support": int(support[c])}
      for c, name in enumerate(class_names)
  }
  return {
      "num_examples": num_examples,
      "accuracy": float(true_positives.sum() / num_examples),
      "macro_f1": float(f1.mean()),
      "per_class": per_class,
      "class_names": list(class_names),
      "confusion_matrix": matrix.tolist(),
  }


def format_confusion_matrix(matrix, class_names: Sequence[str]) -> str:
  """The confusion matrix as text: one line per true class, right-aligned columns.

  The first line names the predicted classes; the first column names the
  true classes. Lines end without trailing spaces; no final newline.
  """
  matrix = np.asarray(matrix)
  corner = "true \\ predicted"
  first_width = max([len(corner)] + [len(name) for name in class_names])
  widths = [max(len(name), len(str(matrix[:, c].max()))) for c, name in enumerate(class_names)]
  rows = [[corner] + list(class_names)]
  rows += [[name] + [str(count) for count in matrix[r]] for r, name in enumerate(class_names)]
  lines = []
  for row in rows:
    cells = [row[0].ljust(first_width)] + [cell.rjust(w) for cell, w in zip(row[1:], widths)]
    lines.append("  ".join(cells).rstrip())
  return "\n".join(lines)


def det_curve(scores, labels, negative_index: int) -> List[Tuple[float, float, float]]:
  """The detection trade-off: (threshold, FAR, FRR) at every distinct threshold.

  Uses the detection rule of the module docstring. Every operating point is
  reached by a threshold equal to one of the examples' highest keyword scores
  (the decisions only change there), plus ``inf`` (nothing fires: FAR 0,
  FRR 1).

  Args:
    scores: float ``[N, C]`` scores, e.g. softmax probabilities.
    labels: int ``[N]`` true classes.
    negative_index: index of the negative class.

  Returns:
    ``(threshold, far, frr)`` tuples, thresholds increasing, so FAR is
    non-increasing and FRR non-decreasing. FAR and FRR are fractions in [0, 1].
  """
  top_score, top_keyword, labels = _keyword_decisions(scores, labels, negative_index)
  negative = labels == negative_index
  if not negative.any():
    raise ValueError("no negative examples: the false-accept rate is undefined")
  if negative.all():
    raise ValueError("no keyword examples: the false-reject rate is undefined")
  negative_scores = np.sort(top_score[negative])
  # A keyword example is a hit when its keyword wins and scores >= θ.
  hit_scores = np.sort(top_score[~negative & (top_keyword == labels)])
  thresholds = np.append(np.unique(top_score), np.inf)
  false_accepts = len(negative_scores) - np.searchsorted(negative_scores, thresholds, side="left")
  hits = len(hit_scores) - np.searchsorted(hit_scores, thresholds, side="left")
  num_keyword = int((~negative).sum())
  far = false_accepts / len(negative_scores)
  frr = 1.0 - hits / num_keyword
  return [(float(t), float(a), float(r)) for t, a, r in zip(thresholds, far, frr)]


def frr_at_far(scores, labels, negative_index: int, target_far: float) -> dict:
  """The false-reject rate at the lowest threshold whose FAR is <= ``target_far``.

  FRR only grows with the threshold, so this is the least FRR with FAR <=
  ``target_far`` (e.g. 0.01 or 0.05). Arguments as :func:`det_curve`.

  Returns:
    A dict: ``target_far``; ``threshold`` (fire when the keyword score is >=
    it; ``inf`` when even the highest score gives too many false accepts);
    ``far`` and ``frr`` at that threshold; ``num_keyword`` and
    ``num_negative`` examples.
  """
  if not 0.0 <= target_far <= 1.0:
    raise ValueError(f"target_far must be in [0, 1], got {target_far}")
  curve = det_curve(scores, labels, negative_index)
  threshold, far, frr = next(point for point in curve if point[1] <= target_far)
  labels = np.asarray(labels)
  num_negative = int((labels == negative_index).sum())
  return {"target_far": float(target_far), "threshold": threshold, "far": far, "frr": frr,
          "num_keyword": len(labels) - num_negative, "num_negative": num_negative}


def edit_counts(reference: Sequence, hypothesis: Sequence) -> Tuple[int, int, int]:
  """(substitutions, deletions, insertions) of a minimum-edit (Levenshtein) alignment.

  ``reference`` and ``hypothesis`` are sequences of comparable hashable items
  (words, characters). Among alignments of least total cost the backtrace
  prefers a match or substitution, then a deletion, then an insertion.
  """
  ids: Dict = {}
  ref = np.array([ids.setdefault(item, len(ids)) for item in reference], dtype=np.int64)
  hyp = np.array([ids.setdefault(item, len(ids)) for item in hypothesis], dtype=np.int64)
  columns = np.arange(len(hyp) + 1)
  # cost[i, j]: edits turning ref[:i] into hyp[:j].
  cost = np.empty((len(ref) + 1, len(hyp) + 1), dtype=np.int64)
  cost[0] = columns
  for i in range(1, len(ref) + 1):
    # Reaching (i, j) by a deletion, or by a match / substitution.
    without_insertion = cost[i - 1] + 1
    substitution = cost[i - 1, :-1] + (hyp != ref[i - 1])
    without_insertion[1:] = np.minimum(without_insertion[1:], substitution)
    # Insertions: cost[i, j] = min over k <= j of without_insertion[k] + (j - k).
    cost[i] = np.minimum.accumulate(without_insertion - columns) + columns
  substitutions = deletions = insertions = 0
  i, j = len(ref), len(hyp)
  while i > 0 or j > 0:
    if i > 0 and j > 0 and cost[i, j] == cost[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
      substitutions += int(ref[i - 1] != hyp[j - 1])
      i, j = i - 1, j - 1
    elif i > 0 and cost[i, j] == cost[i - 1, j] + 1:
      deletions += 1
      i -= 1
    else:
      insertions += 1
      j -= 1
  return substitutions, deletions, insertions


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict:
  """Corpus WER and CER of hypotheses against references (conventions: module docstring).

  Returns:
    A dict: ``wer`` and ``cer`` (fractions; can exceed 1 with insertions);
    ``num_utterances``; ``words`` and ``characters``, each with
    ``substitutions``, ``deletions``, ``insertions``, ``errors`` (their sum)
    and ``reference_length``.
  """
  if len(references) != len(hypotheses):
    raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
  references = [text_lib.normalize(r) for r in references]
  hypotheses = [text_lib.normalize(h) for h in hypotheses]
  words = _corpus_counts([r.split() for r in references], [h.split() for h in hypotheses])
  characters = _corpus_counts(references, hypotheses)
  return {"wer": _rate(words), "cer": _rate(characters), "num_utterances": len(references),
          "words": words, "characters": characters}


def _corpus_counts(references: Sequence[Sequence], hypotheses: Sequence[Sequence]) -> dict:
  """Summed edit counts and reference length over utterances."""
  counts = np.zeros(3, dtype=np.int64)
  for reference, hypothesis in zip(references, hypotheses):
    counts += edit_counts(reference, hypothesis)
  substitutions, deletions, insertions = (int(c) for c in counts)
  return {"substitutions": substitutions, "deletions": deletions, "insertions": insertions,
          "errors": substitutions + deletions + insertions,
          "reference_length": sum(len(r) for r in references)}


def _rate(counts: dict) -> float:
  """errors / reference_length; with no reference: 0.0 without errors, else inf."""
  if counts["reference_length"] == 0:
    return 0.0 if counts["errors"] == 0 else math.inf
  return counts["errors"] / counts["reference_length"]


def _keyword_decisions(scores, labels, negative_index: int):
  """Checks the inputs; returns the highest keyword score float64 ``[N]``, its
  class index int ``[N]`` and the labels int ``[N]``."""
  scores = np.asarray(scores, dtype=np.float64)
  if scores.ndim != 2 or scores.shape[1] < 2:
    raise ValueError(f"scores must be [N, C] with C >= 2, got shape {scores.shape}")
  num_classes = scores.shape[1]
  if not 0 <= negative_index < num_classes:
    raise ValueError(f"negative_index {negative_index} out of range for {num_classes} classes")
  labels = _class_indices(labels, num_classes, "labels")
  if labels.shape != scores.shape[:1]:
    raise ValueError(f"labels {labels.shape} do not match scores {scores.shape}")
  keyword_scores = np.delete(scores, negative_index, axis=1)
  keyword_classes = np.delete(np.arange(num_classes), negative_index)
  best = np.argmax(keyword_scores, axis=1)
  return keyword_scores[np.arange(len(best)), best], keyword_classes[best], labels


def _class_indices(values, num_classes: int, name: str) -> np.ndarray:
  """``values`` as an int64 ``[N]`` array of indices in [0, num_classes)."""
  array = np.asarray(values)
  if array.ndim != 1:
    raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
  if array.size and not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"{name} must be integers, got {array.dtype}")
  array = array.astype(np.int64)
  if array.size and (array.min() < 0 or array.max() >= num_classes):
    raise ValueError(f"{name} must be in [0, {num_classes}), got [{array.min()}, {array.max()}]")
  return array


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator elementwise, 0.0 where the denominator is 0."""
  numerator = np.asarray(numerator, dtype=np.float64)
  denominator = np.asarray(denominator, dtype=np.float64)
  return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)
