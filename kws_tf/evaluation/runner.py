"""Runs a model over a dataset and scores it: kws classification or ctc recognition.

``predict`` collects the model's outputs for every example of a
``kws_tf.data.make_dataset`` pipeline; ``score`` turns them into the metrics
of ``kws_tf.evaluation.metrics``; ``evaluate`` does both. The train loop uses
``evaluate(summary_only=True)`` for validation; ``kws_tf/bin/evaluate.py``
uses the full report.
"""
from typing import Dict, List, Optional, Sequence

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from kws_tf import text
from kws_tf.distill import losses
from kws_tf.evaluation import decoding, metrics

FAR_TARGETS = (0.01, 0.05)


class EmptyDatasetError(ValueError):
  """The dataset to evaluate has no examples."""
EXAMPLES_SHOWN = 5


def make_forward(model, task: str, element_spec):
  """A traced ``forward(batch) -> (logits, logit_frames, loss)`` for batches of ``element_spec``.

  Traced once for any batch and frame count, so the train loop can keep one
  for every validation.
  """
  @tf.function(input_signature=[element_spec])
  def forward(batch):
    outputs = model({"features": batch["features"], "num_frames": batch["num_frames"]},
                    training=False)
    if task == "kws":
      terms = losses.standard_terms("kws", labels=batch["label"], logits=outputs["logits"])
      return outputs["logits"], tf.zeros_like(batch["label"]), terms["total"]
    terms = losses.standard_terms("ctc", labels=batch["labels"],
                                  label_length=batch["label_length"],
                                  logits=outputs["logits"], logit_length=outputs["logit_frames"])
    return outputs["logits"], outputs["logit_frames"], terms["total"]

  return forward


def predict(model, dataset: tf.data.Dataset, task: str, forward=None) -> Dict[str, object]:
  """The model's outputs for every example of ``dataset``, in dataset order.

  ``forward`` is a ``make_forward`` result to reuse (made here when None).
  Returns a dict: ``ids`` (list of str); kws: ``labels`` int ``[N]``,
  ``logits`` float32 ``[N, classes]``; ctc: ``labels`` (N lists of ids),
  ``logits`` (N arrays ``[logit_frames_i, vocabulary]``, valid frames only);
  and ``loss``, the mean over batches of the task's plain loss (cross-entropy
  or CTC, nats).
  """
  forward = forward or make_forward(model, task, dataset.element_spec)
  ids: List[str] = []
  labels: List = []
  logits: List = []
  batch_losses: List[float] = []
  for batch in dataset:
    batch_logits, frames, loss = forward(batch)
    batch_logits = batch_logits.numpy()
    ids.extend(i.decode("utf-8") for i in batch["id"].numpy())
    batch_losses.append(float(loss))
    if task == "kws":
      labels.extend(batch["label"].numpy().tolist())
      logits.append(batch_logits)
    else:
      for row, n, lab, n_lab in zip(batch_logits, frames.numpy(), batch["labels"].numpy(),
                                    batch["label_length"].numpy()):
        logits.append(row[:n])
        labels.append(lab[:n_lab].tolist())
  if not ids:
    raise EmptyDatasetError("the dataset is empty: nothing to evaluate")
  out: Dict[str, object] = {"ids": ids, "labels": labels,
                            "loss": float(np.mean(batch_losses))}
  if task == "kws":
    out["labels"] = np.asarray(labels, np.int64)
    out["logits"] = np.concatenate(logits).astype(np.float32)
  else:
    out["logits"] = logits
  return out


def softmax(logits: np.ndarray) -> np.ndarray:
  """Softmax over the last axis, numerically stable."""
  shifted = logits - logits.max(axis=-1, keepdims=True)
  exp = np.exp(shifted)
  return exp / exp.sum(axis=-1, keepdims=True)


def score(task: str, predictions: Dict[str, object], class_names: Sequence[str] = (),
          vocabulary: Optional[text.Vocabulary] = None, beam_width: int = 0,
          summary_only: bool = False,
          lm_decoder: Optional[decoding.CtcDecoder] = None) -> dict:
  """Metrics of ``predict``'s output.

  kws: accuracy, macro_f1, loss; in full, ``keyword_decisions``, the classification report
  (per-class precision / recall / F1, confusion matrix) and the false-reject
  rate at false-accept rates of ``FAR_TARGETS`` on the negative class.
  ctc: greedy ``cer``, ``wer`` and loss; with ``beam_width`` > 0 also
  ``beam_cer``, ``beam_wer``; with ``lm_decoder`` (a ``beam_lm`` decoder) also
  ``beam_lm_cer``, ``beam_lm_wer``; in full, edit counts, the language model's
  settings (``lm``) and a few decoded examples.
  ``summary_only`` keeps just the float metrics (what validation logs).
  """
  if task == "kws":
    logits = predictions["logits"]
    labels = predictions["labels"]
    report = metrics.classification_report(labels, logits, class_names)
    summary = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
               "loss": predictions["loss"]}
    if summary_only:
      return summary
    negative = list(class_names).index(text.NEGATIVE_LABEL)
    summary.update(keyword_decisions(logits, labels, negative))
    scores = softmax(logits)
    detection = {}
    if (labels == negative).any() and (labels != negative).any():
      detection = {f"frr_at_far_{t:g}": metrics.frr_at_far(scores, labels, negative, t)
                   for t in FAR_TARGETS}
    return {**summary, "report": report, "detection": detection,
            "num_examples": report["num_examples"]}

  if vocabulary is None:
    raise ValueError("ctc scoring needs the vocabulary")
  logits = predictions["logits"]
  references = [vocabulary.decode(ids) for ids in predictions["labels"]]
  greedy = [vocabulary.decode(_decode_one(decoding.greedy_decode, row)) for row in logits]
  rates = metrics.error_rates(references, greedy)
  summary = {"cer": rates["cer"], "wer": rates["wer"], "loss": predictions["loss"]}
  beam = None
  if beam_width > 0:
    beam = [vocabulary.decode(_decode_one(decoding.beam_search_decode, row, beam_width=beam_width))
            for row in logits]
    beam_rates = metrics.error_rates(references, beam)
    summary.update(beam_cer=beam_rates["cer"], beam_wer=beam_rates["wer"])
  with_lm = None
  if lm_decoder is not None:
    with_lm = [vocabulary.decode(lm_decoder.decode(row[None], [len(row)], vocabulary)[0])
               for row in logits]
    lm_rates = metrics.error_rates(references, with_lm)
    summary.update(beam_lm_cer=lm_rates["cer"], beam_lm_wer=lm_rates["wer"])
  if summary_only:
    return summary
  shown = []
  for i in range(min(EXAMPLES_SHOWN, len(references))):
    example = {"id": predictions["ids"][i], "reference": references[i], "greedy": greedy[i]}
    if beam is not None:
      example["beam"] = beam[i]
    if with_lm is not None:
      example["beam_lm"] = with_lm[i]
    shown.append(example)
  full = {**summary, "greedy": rates, "examples": shown, "num_examples": len(references)}
  if beam is not None:
    full["beam"] = beam_rates
    full["beam_width"] = beam_width
  if with_lm is not None:
    full["beam_lm"] = lm_rates
    full["lm"] = {"path": lm_decoder.lm.path, "beam_width": lm_decoder.beam_width,
                  "lm_weight": lm_decoder.lm_weight, "word_bonus": lm_decoder.word_bonus,
                  "hotwords": [" ".join(p) for p in lm_decoder.hotwords],
                  "hotword_weight": lm_decoder.hotword_weight}
  return full


def keyword_decisions(logits: np.ndarray, labels: np.ndarray, negative: int) -> Dict[str, float]:
  """kws decisions by arg max of ``logits [examples, classes]``: ``keyword_recall``,
  the fraction of keyword examples given their own keyword, and ``false_accepts``,
  the fraction of negatives (class ``negative``) given a keyword; NaN without any."""
  predicted = np.argmax(logits, axis=-1)
  keyword, negatives = labels != negative, labels == negative
  return {"keyword_recall": float(np.mean(predicted[keyword] == labels[keyword]))
                            if keyword.any() else float("nan"),
          "false_accepts": float(np.mean(predicted[negatives] != negative))
                           if negatives.any() else float("nan")}


def _decode_one(decoder, logits: np.ndarray, **kwargs) -> List[int]:
  return decoder(logits[None], np.array([len(logits)]), **kwargs)[0]


def evaluate(model, dataset: tf.data.Dataset, task: str, class_names: Sequence[str] = (),
             vocabulary: Optional[text.Vocabulary] = None, beam_width: int = 0,
             summary_only: bool = False, forward=None) -> dict:
  """``score(predict(model, dataset, task, forward))``; see both."""
  predictions = predict(model, dataset, task, forward)
  return score(task, predictions, class_names, vocabulary, beam_width, summary_only)
