"""Scores a keyword spotter on a robustness set (``kws-make-robustness-set``), per condition.

A set is a folder of 1 s WAV windows and ``manifest.jsonl`` rows (``label``,
``placement`` centred/offset/negative, ``condition``, ``noise``, ``snr_db``...).
Each window is classified by the argmax of the model's probabilities (as the
exported model runs: raw audio in), and every group of rows gets

  accuracy        correct class over all windows of the group
  keyword_recall  keyword windows classified as their keyword
  false_accepts   negative windows classified as any keyword
  windows         how many windows the group holds

and, given the probabilities, the detection trade-off of a threshold on the
keyword score (``kws_tf.evaluation.metrics``' detection rule):

  recall_at_5pct_fa  keyword recall at the lowest threshold that fires on at
                     most 5 % of the group's negative windows (a point of the
                     group's DET curve: the threshold is the set's own, not one
                     a shipped model carries)

Groups: ``all``, ``clean`` (condition clean), ``centred`` and ``offset``
(keyword placement, with the group's negatives), ``condition=<c>``,
``noise=<type>``, ``snr=<dB>`` and ``gain=<dB>`` (the level condition's
gains). ``evaluate`` runs a loaded exported model
(``kws_tf.inference.load_model``) with its model card over a whole set
(``window_scores`` gives its probabilities, e.g. for a DET curve).
"""
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from kws_tf import audio, records, text
from kws_tf.evaluation import metrics

MANIFEST = records.SET_MANIFEST
_ROW_KEYS = ("path", "label", "placement", "condition")
DETECTION_FAR = 0.05  # recall_at_5pct_fa's false-accept rate


def read_manifest(set_dir: str) -> List[dict]:
  """The rows of ``<set_dir>/manifest.jsonl``, each with ``path`` made absolute
  (``records.read_set_manifest``)."""
  return records.read_set_manifest(set_dir, _ROW_KEYS, "window", "kws-make-robustness-set")


def load_windows(rows: Sequence[dict], sample_rate: int) -> np.ndarray:
  """float32 ``[windows, samples]`` of the rows' WAV files."""
  return np.stack([audio.read_audio(row["path"], sample_rate) for row in rows])


def probabilities(model: Callable[[np.ndarray], Dict[str, np.ndarray]], windows: np.ndarray,
                  classes: Sequence[str], model_classes: Sequence[str]) -> np.ndarray:
  """float32 ``[windows, len(classes)]``: the model's probabilities in the order of ``classes``.

  ``model_classes`` are the model's output classes in order (its card's);
  every one must be in ``classes`` (the set's); a class of the set that the
  model lacks gets probability 0.
  """
  unknown = [c for c in model_classes if c not in classes]
  if unknown:
    raise ValueError(f"the model's classes {unknown} are not keywords of the set ({classes})")
  columns = [classes.index(c) for c in model_classes]
  out = np.zeros((len(windows), len(classes)), np.float32)
  for i, window in enumerate(windows):
    out[i, columns] = model(window)["probabilities"][0]
  return out


def predict(probabilities: np.ndarray, classes: Sequence[str]) -> List[str]:
  """The class name of each row's highest probability (``probabilities [N, len(classes)]``)."""
  return [classes[i] for i in np.argmax(probabilities, axis=1)]


def _metrics(rows: Sequence[dict], predicted: Sequence[str],
             scores: Optional[np.ndarray]) -> Dict[str, float]:
  labels = [r["label"] for r in rows]
  keyword = [i for i, label in enumerate(labels) if label != text.NEGATIVE_LABEL]
  negative = [i for i, label in enumerate(labels) if label == text.NEGATIVE_LABEL]
  out = {"windows": len(rows),
         "accuracy": float(np.mean([p == label for p, label in zip(predicted, labels)]))}
  out["keyword_recall"] = (float(np.mean([predicted[i] == labels[i] for i in keyword]))
                           if keyword else float("nan"))
  out["false_accepts"] = (float(np.mean([predicted[i] != text.NEGATIVE_LABEL for i in negative]))
                          if negative else float("nan"))
  if scores is not None:
    classes = text.keyword_classes()
    out["recall_at_5pct_fa"] = (
        1.0 - metrics.frr_at_far(scores, [classes.index(label) for label in labels],
                                 classes.index(text.NEGATIVE_LABEL), DETECTION_FAR)["frr"]
        if keyword and negative else float("nan"))
  return out


def groups(rows: Sequence[dict]) -> Dict[str, List[int]]:
  """Group name -> row indices (see the module docstring), in a stable order."""
  out: Dict[str, List[int]] = {"all": list(range(len(rows)))}
  out["clean"] = [i for i, r in enumerate(rows) if r["condition"] == "clean"]
  negatives = [i for i, r in enumerate(rows) if r["placement"] == "negative"]
  for placement in ("centred", "offset"):
    out[placement] = sorted([i for i, r in enumerate(rows) if r["placement"] == placement]
                            + negatives)
  for key in ("condition", "noise", "snr_db", "gain_db"):
    values = sorted({r[key] for r in rows if r.get(key) is not None})
    for value in values:
      name = f"{key.removesuffix('_db')}={value:g}" if key.endswith("_db") else f"{key}={value}"
      out[name] = [i for i, r in enumerate(rows) if r.get(key) == value]
  return {name: indices for name, indices in out.items() if indices}


def score(rows: Sequence[dict], predicted: Sequence[str],
          scores: Optional[np.ndarray] = None) -> Dict[str, Dict[str, float]]:
  """Group name -> metrics (see the module docstring).

  ``predicted``: a class name per row; ``scores``: optional float ``[rows,
  C]`` probabilities in ``text.keyword_classes()`` order, for the detection
  metric.
  """
  if len(rows) != len(predicted) or (scores is not None and len(scores) != len(rows)):
    raise ValueError(f"{len(rows)} rows but {len(predicted)} predictions"
                     + ("" if scores is None else f" and {len(scores)} score rows"))
  return {name: _metrics([rows[i] for i in indices], [predicted[i] for i in indices],
                         None if scores is None else np.asarray(scores)[indices])
          for name, indices in groups(rows).items()}


def window_scores(model: Callable[[np.ndarray], Dict[str, np.ndarray]], card: dict,
                  set_dir: str) -> Tuple[List[dict], np.ndarray]:
  """The set's rows and an exported kws model's probabilities for them, run as shipped
  (raw audio in): float32 ``[rows, C]`` in ``text.keyword_classes()`` order.

  ``model`` is a loaded ``kws_tf.inference`` model, ``card`` its model card.
  """
  if card.get("task") != "kws":
    raise ValueError(f"{card.get('file')} is not a kws model (its card says task "
                     f"{card.get('task')!r})")
  rows = read_manifest(set_dir)
  windows = load_windows(rows, card["sample_rate"])
  if windows.shape[1] != card["clip_samples"]:
    raise ValueError(f"the set's windows hold {windows.shape[1]} samples but "
                     f"{card.get('file')} takes {card['clip_samples']}")
  return rows, probabilities(model, windows, text.keyword_classes(), card["labels"]["classes"])


def evaluate(model: Callable[[np.ndarray], Dict[str, np.ndarray]], card: dict,
             set_dir: str) -> Dict[str, Dict[str, float]]:
  """``score`` of an exported kws model on the set in ``set_dir`` (see ``window_scores``)."""
  rows, scores = window_scores(model, card, set_dir)
  return score(rows, predict(scores, text.keyword_classes()), scores)
