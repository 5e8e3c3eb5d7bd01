"""Parity of an exported model with the Keras model it came from.

The same examples go through the Keras model (on the features stored in the
records, ``keras_outputs``) and through an exported file (on their waveforms,
the front end inside). ``parity`` compares the two: the largest absolute logit
difference over all examples (ctc: over the valid frames), and the accuracy
(kws) or greedy CER and WER (ctc) of each, scored by
``kws_tf.evaluation.runner.score`` as ``kws-evaluate`` scores a model.
"""
import math
from typing import Callable, Dict, List, Sequence

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from kws_tf import model_dir as model_dir_lib
from kws_tf import text
from kws_tf.evaluation import runner as runner_lib
from kws_tf.export.examples import Example

# The metrics of ``score`` per task (fractions).
METRICS = {"kws": ("accuracy",), "ctc": ("cer", "wer")}

Outputs = Dict[str, np.ndarray]


def keras_outputs(model, examples: Sequence[Example]) -> List[Outputs]:
  """The Keras model's outputs for each example's features (batch of one), the
  training-only ``projection`` left out."""
  channels = examples[0].features.shape[1]

  @tf.function(input_signature=[tf.TensorSpec([1, None, channels], tf.float32),
                                tf.TensorSpec([1], tf.int32)])
  def forward(features, num_frames):
    return model({"features": features, "num_frames": num_frames}, training=False)

  outputs = []
  for example in examples:
    out = forward(example.features[np.newaxis], np.array([len(example.features)], np.int32))
    outputs.append({k: v.numpy() for k, v in out.items() if k != "projection"})
  return outputs


def score(spec: model_dir_lib.ModelSpec, examples: Sequence[Example],
          outputs: Sequence[Outputs]) -> Dict[str, float]:
  """kws: ``accuracy``; ctc: greedy ``cer`` and ``wer``; fractions.

  ``outputs`` are batches of one: kws ``logits [1, classes]``; ctc ``logits
  [1, frames, vocabulary]`` and ``logit_frames [1]``.
  """
  # runner.score reports the loss of its predictions; these have none.
  predictions = {"ids": [e.id for e in examples], "loss": math.nan}
  if spec.task == "kws":
    predictions["labels"] = np.array([e.label for e in examples], np.int64)
    predictions["logits"] = np.concatenate([o["logits"] for o in outputs]).astype(np.float32)
    summary = runner_lib.score("kws", predictions, spec.classes, summary_only=True)
  else:
    predictions["labels"] = [e.labels for e in examples]
    predictions["logits"] = [o["logits"][0][:int(o["logit_frames"][0])] for o in outputs]
    summary = runner_lib.score("ctc", predictions,
                               vocabulary=text.Vocabulary(spec.vocabulary["symbols"]),
                               summary_only=True)
  return {name: summary[name] for name in METRICS[spec.task]}


def max_logit_error(reference: Sequence[Outputs], outputs: Sequence[Outputs]) -> float:
  """Largest |logit difference| over examples (ctc: their common valid frames)."""
  worst = 0.0
  for ref, out in zip(reference, outputs):
    a, b = ref["logits"][0], out["logits"][0]
    if a.ndim == 2:
      frames = min(int(ref["logit_frames"][0]), int(out["logit_frames"][0]))
      a, b = a[:frames], b[:frames]
    worst = max(worst, float(np.max(np.abs(a - b))))
  return worst


def accuracy_drop(spec: model_dir_lib.ModelSpec, keras_metrics: Dict[str, float],
                  file_metrics: Dict[str, float]) -> float:
  """Points (percent) lost against Keras: kws accuracy, ctc CER increase.

  Rounded to 1e-9 points, so that one changed answer of 100 is 1.0 point, not
  1.0000000000000009 (0.79 - 0.78 in floating point), and a gate of 1 point
  lets it pass.
  """
  if spec.task == "kws":
    drop = keras_metrics["accuracy"] - file_metrics["accuracy"]
  else:
    drop = file_metrics["cer"] - keras_metrics["cer"]
  return round(100.0 * drop, 9)


def parity(spec: model_dir_lib.ModelSpec, runner: Callable[[np.ndarray], Outputs],
           examples: Sequence[Example], reference: Sequence[Outputs],
           keras_metrics: Dict[str, float]) -> dict:
  """Parity of an exported model with Keras.

  Args:
    runner: the exported model (``inference.TFLiteModel`` / ``SavedModel``):
      waveform float32 ``[samples]`` -> outputs of a batch of one.
    reference: ``keras_outputs`` of ``examples``; ``keras_metrics`` their ``score``.

  Returns ``num_examples``, ``max_abs_logit_error``, ``keras`` and ``exported``
  (``score``), ``drop_points`` (``accuracy_drop``); ctc also
  ``logit_frame_mismatches``, the examples whose valid frame counts differ.
  """
  outputs = [runner(e.waveform) for e in examples]
  file_metrics = score(spec, examples, outputs)
  result = {"num_examples": len(examples),
            "max_abs_logit_error": max_logit_error(reference, outputs),
            "keras": keras_metrics, "exported": file_metrics,
            "drop_points": accuracy_drop(spec, keras_metrics, file_metrics)}
  if spec.task == "ctc":
    result["logit_frame_mismatches"] = sum(
        int(r["logit_frames"][0]) != int(o["logit_frames"][0])
        for r, o in zip(reference, outputs))
  return result
