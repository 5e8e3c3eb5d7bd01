"""Loss terms for training and distilling the kws and ctc students.

Every function here is a pure function of tensors. Inputs may be float32,
bfloat16 or float16 (a mixed-precision student); they are cast to float32
first and every loss is a float32 scalar: a mean over the examples of the
batch, or for frame-level terms a mean over the valid frames of the batch.

``standard_terms`` (plain training) and ``distillation_terms`` (training
from a teacher) return a dict of named terms plus their weighted ``total``,
so that each term can be logged on its own (``kws_tf.distill.objectives``
feeds them from a batch):

  ``hard``       kws: cross entropy on the true class; ctc: CTC on the
                 transcript.
  ``kd``         ``temperature**2 * KL(teacher || student)`` with both
                 distributions softened by ``temperature`` (Hinton et al.,
                 2015); ctc: the same per frame, averaged over valid frames.
  ``feature``    mean squared error between the student's projection and the
                 teacher's features (only when ``feature_weight > 0``).
  ``infeasible`` ctc only, int32: how many examples of the batch have a
                 transcript too long for their logit frames; they add
                 nothing to ``hard`` (see ``ctc``).
  ``total``      ``hard_weight * hard + kd_scale * alpha * kd +
                 feature_weight * feature``.

Weights (``kws_tf.config.DistillConfig``): with ``beta=None`` the hard weight
is ``1 - alpha``, the usual Hinton convex mix; with ``beta`` set it is
``beta``, the form of the PyTorch Vietnamese KWS recipe
``total = alpha * KD + beta * CE + feature_weight * feature`` with
temperature 6, alpha 0.8, beta 0.2 and feature weight 0.3. ``kd_scale`` is 1
except in FitNet stage 2 (its annealed lambda). The ``kd`` term carries the
``temperature**2`` factor, which keeps its gradient on the scale of the hard
term whatever the temperature; no other factor of the temperature enters the
total.

Teacher logits and features are raw: the temperature is applied here, and
no gradient flows into them (``tf.stop_gradient``).
"""
from typing import Dict

import tensorflow as tf

from kws_tf.config import DistillConfig

TASKS = ("kws", "ctc")


def _float32(tensor) -> tf.Tensor:
  return tf.cast(tensor, tf.float32)


def _int32(tensor) -> tf.Tensor:
  return tf.cast(tensor, tf.int32)


def _frame_mask(logit_length, frames) -> tf.Tensor:
  """bool ``[B, frames]``: True at frames before each example's ``logit_length``."""
  return tf.sequence_mask(_int32(logit_length), maxlen=frames)


def _masked_mean(values, mask) -> tf.Tensor:
  """Mean of float32 ``values`` where bool ``mask`` is True (0 if none is).

  ``tf.where`` rather than a product, so that non-finite values in padding
  cannot leak into the mean.
  """
  total = tf.reduce_sum(tf.where(mask, values, tf.zeros_like(values)))
  count = tf.reduce_sum(tf.cast(mask, tf.float32))
  return tf.math.divide_no_nan(total, count)


def _same_shape(student, teacher, what: str):
  """``(student, teacher)``, checked to have one shape before any use.

  The returned tensors depend on the check, so that inside a ``tf.function``
  the clear message comes before any shape error of the arithmetic.
  """
  check = tf.debugging.assert_equal(
      tf.shape(student), tf.shape(teacher),
      message=(f"student and teacher {what} differ in shape; ctc teachers and "
               "students must both give one frame every 20 ms, and a teacher "
               "with more frames (a 30 s window) must be sliced to the "
               "student's frames by the caller"))
  with tf.control_dependencies([] if check is None else [check]):
    return tf.identity(student), tf.identity(teacher)


def cross_entropy(labels, logits) -> tf.Tensor:
  """Sparse softmax cross entropy, mean over the batch.

  Args:
    labels: int ``[B]``, class indices.
    logits: float ``[B, C]``, raw scores.

  Returns:
    float32 scalar, nats per example.
  """
  per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=_int32(labels), logits=_float32(logits))
  return tf.reduce_mean(per_example)


def ctc_feasible(labels, label_length, logit_length) -> tf.Tensor:
  """Whether each transcript fits in its logit frames.

  A CTC alignment needs one frame per label plus one blank between each pair
  of equal adjacent labels, so an example is feasible when
  ``label_length + repeats <= logit_length``.

  Args:
    labels: int ``[B, L]``, padded past ``label_length`` (padding ignored).
    label_length: int ``[B]``, labels of each example.
    logit_length: int ``[B]``, valid logit frames of each example.

  Returns:
    bool ``[B]``.
  """
  labels = _int32(labels)
  label_length = _int32(label_length)
  valid = tf.sequence_mask(label_length, maxlen=tf.shape(labels)[1])
  repeats = tf.logical_and(tf.equal(labels[:, 1:], labels[:, :-1]), valid[:, 1:])
  needed = label_length + tf.reduce_sum(_int32(repeats), axis=1)
  return needed <= _int32(logit_length)


def ctc(labels, label_length, logits, logit_length, blank_index: int = 0,
        normalize_by_label_length: bool = False) -> tf.Tensor:
  """CTC loss (``tf.nn.ctc_loss``), mean over the feasible examples.

  Infeasible examples (transcript longer than its logit frames allow, see
  ``ctc_feasible``) make ``tf.nn.ctc_loss`` return a huge meaningless value
  (about 700 nats, from the log of zero) with a meaningless gradient. Here
  such an example is trained on an empty transcript and then dropped: it adds
  nothing to the loss or its gradient, and the mean is over the feasible
  examples only (0 if there are none). ``distillation_terms`` and
  ``standard_terms`` report how many were dropped.

  Args:
    labels: int ``[B, L]``, label ids, padded past ``label_length`` with any
      value.
    label_length: int ``[B]``, labels of each example.
    logits: float ``[B, T, V]``, raw scores, batch major.
    logit_length: int ``[B]``, valid frames of each example; frames past it
      are ignored.
    blank_index: the blank's index in the vocabulary.
    normalize_by_label_length: False (default): each example's loss is its
      total negative log likelihood in nats, the usual choice of most
      toolkits. True: it is divided by the example's label length (nats per
      label; an empty transcript counts as length 1).

  Returns:
    float32 scalar.
  """
  labels = _int32(labels)
  label_length = _int32(label_length)
  logit_length = _int32(logit_length)
  feasible = ctc_feasible(labels, label_length, logit_length)
  per_example = tf.nn.ctc_loss(
      labels=labels, logits=_float32(logits),
      label_length=tf.where(feasible, label_length, tf.zeros_like(label_length)),
      logit_length=logit_length, logits_time_major=False,
      blank_index=blank_index)
  if normalize_by_label_length:
    per_example /= _float32(tf.maximum(label_length, 1))
  return _masked_mean(per_example, feasible)


def _softened_kl(student_logits, teacher_logits, temperature: float) -> tf.Tensor:
  """``KL(softmax(t/T) || softmax(s/T))`` over the last axis, float32 ``[...]``."""
  teacher_logits = tf.stop_gradient(_float32(teacher_logits))
  teacher_log_probs = tf.nn.log_softmax(teacher_logits / temperature, axis=-1)
  student_log_probs = tf.nn.log_softmax(_float32(student_logits) / temperature, axis=-1)
  return tf.reduce_sum(
      tf.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)


def _weighted_mean(values, weights) -> tf.Tensor:
  """Mean of float32 ``values`` ``[B]``, weighted by ``weights`` ``[B]`` (None:
  plain mean; 0 when every weight is 0)."""
  if weights is None:
    return tf.reduce_mean(values)
  weights = _float32(weights)
  return tf.math.divide_no_nan(tf.reduce_sum(weights * values), tf.reduce_sum(weights))


def distillation_kl(student_logits, teacher_logits, temperature: float,
                    weights=None) -> tf.Tensor:
  """Hinton's soft-target term ``T**2 * KL(softmax(t/T) || softmax(s/T))``.

  Its gradient with respect to the student logits is
  ``T * (softmax(s/T) - softmax(t/T)) / B``; none flows into the teacher.

  Args:
    student_logits: float ``[B, C]``, raw scores.
    teacher_logits: float ``[B, C]``, raw scores.
    temperature: T > 0.
    weights: optional float ``[B]``, each example's weight in the mean (0:
      left out; all 0 gives 0).

  Returns:
    float32 scalar, nats per example times T**2.
  """
  student_logits, teacher_logits = _same_shape(student_logits, teacher_logits, "logits")
  kl = _softened_kl(student_logits, teacher_logits, temperature)
  return temperature ** 2 * _weighted_mean(kl, weights)


def frame_distillation_kl(student_logits, teacher_logits, logit_length,
                          temperature: float) -> tf.Tensor:
  """Frame-level ``T**2 * KL(teacher || student)``, mean over valid frames.

  Padding frames (at or past ``logit_length``) are masked out: their logits
  do not change the value. Teacher and student must have the same frames
  (both one every 20 ms); a mismatch is an error. A teacher that gives more
  frames (a Whisper encoder over a 30 s window) is sliced by the caller:
  ``teacher_logits[:, :student_frames]``.

  Args:
    student_logits: float ``[B, T, V]``, raw scores.
    teacher_logits: float ``[B, T, V]``, raw scores.
    logit_length: int ``[B]``, valid frames of each example.
    temperature: T > 0.

  Returns:
    float32 scalar, nats per valid frame times T**2 (each valid frame of the
    batch weighs the same).
  """
  student_logits, teacher_logits = _same_shape(student_logits, teacher_logits, "logits")
  kl = _softened_kl(student_logits, teacher_logits, temperature)
  mask = _frame_mask(logit_length, tf.shape(kl)[1])
  return temperature ** 2 * _masked_mean(kl, mask)


def feature_mse(student_projection, teacher_features, weights=None) -> tf.Tensor:
  """Mean squared error between per-example features (kws).

  Args:
    student_projection: float ``[B, D]``, the student's feature projector.
    teacher_features: float ``[B, D]``, the teacher's features.
    weights: optional float ``[B]``, each example's weight (as
      ``distillation_kl``).

  Returns:
    float32 scalar, mean over examples and dimensions.
  """
  student_projection, teacher_features = _same_shape(student_projection, teacher_features,
                                                     "features")
  teacher_features = tf.stop_gradient(_float32(teacher_features))
  squared = tf.square(_float32(student_projection) - teacher_features)
  return _weighted_mean(tf.reduce_mean(squared, axis=-1), weights)


def frame_feature_mse(student_projection, teacher_features, logit_length) -> tf.Tensor:
  """Mean squared error between per-frame features over valid frames (ctc).

  Args:
    student_projection: float ``[B, T, D]``, the student's feature projector.
    teacher_features: float ``[B, T, D]``, the teacher's features at the
      same frames (sliced by the caller, as in ``frame_distillation_kl``).
    logit_length: int ``[B]``, valid frames of each example.

  Returns:
    float32 scalar, mean over valid frames and dimensions.
  """
  student_projection, teacher_features = _same_shape(student_projection, teacher_features,
                                                     "features")
  teacher_features = tf.stop_gradient(_float32(teacher_features))
  squared = tf.square(_float32(student_projection) - teacher_features)
  mask = _frame_mask(logit_length, tf.shape(squared)[1])
  return _masked_mean(tf.reduce_mean(squared, axis=-1), mask)


def _check_task(task: str, label_length, logit_length):
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  has_lengths = (label_length is not None, logit_length is not None)
  if task == "ctc" and not all(has_lengths):
    raise ValueError("ctc needs label_length and logit_length")
  if task == "kws" and any(has_lengths):
    raise ValueError("kws takes no label_length or logit_length")


def _hard_terms(task: str, labels, logits, label_length, logit_length,
                blank_index: int) -> Dict[str, tf.Tensor]:
  """``hard`` (and for ctc ``infeasible``) of either task."""
  if task == "kws":
    return {"hard": cross_entropy(labels, logits)}
  feasible = ctc_feasible(labels, label_length, logit_length)
  return {
      "hard": ctc(labels, label_length, logits, logit_length, blank_index),
      "infeasible": tf.reduce_sum(_int32(tf.logical_not(feasible))),
  }


def standard_terms(task: str, labels, logits, label_length=None,
                   logit_length=None, blank_index: int = 0) -> Dict[str, tf.Tensor]:
  """Loss terms of plain training (no teacher).

  Args:
    task: "kws" or "ctc".
    labels: kws int ``[B]``; ctc int ``[B, L]`` padded.
    logits: kws float ``[B, C]``; ctc float ``[B, T, V]``.
    label_length: ctc only, int ``[B]``.
    logit_length: ctc only, int ``[B]``, valid frames of ``logits``.
    blank_index: ctc only, the blank's index.

  Returns:
    ``{"hard", "total"}`` float32 scalars (``total`` is ``hard``), plus for
    ctc ``"infeasible"``, an int32 count of examples dropped by ``ctc``.
  """
  _check_task(task, label_length, logit_length)
  terms = _hard_terms(task, labels, logits, label_length, logit_length, blank_index)
  terms["total"] = terms["hard"]
  return terms


def distillation_terms(task: str, config: DistillConfig, labels, student_logits,
                       teacher_logits, label_length=None, logit_length=None,
                       student_projection=None, teacher_features=None,
                       blank_index: int = 0, kd_scale=1.0,
                       teacher_weights=None) -> Dict[str, tf.Tensor]:
  """Loss terms of training from a teacher, with their weighted total.

  kws: ``hard`` is ``cross_entropy``, ``kd`` is ``distillation_kl`` and
  ``feature`` is ``feature_mse``. ctc: ``hard`` is ``ctc``, ``kd`` is
  ``frame_distillation_kl`` and ``feature`` is ``frame_feature_mse``, both
  over the frames before ``logit_length``; the teacher's frames must equal
  the student's (slice a longer teacher first).

  Args:
    task: "kws" or "ctc".
    config: temperature and weights (checked: ConfigError naming a bad field).
    labels: kws int ``[B]``; ctc int ``[B, L]`` padded.
    student_logits: kws float ``[B, C]``; ctc float ``[B, T, V]``.
    teacher_logits: raw teacher scores, the shape of ``student_logits``.
    label_length: ctc only, int ``[B]``.
    logit_length: ctc only, int ``[B]``, valid frames of both logits.
    student_projection: kws float ``[B, D]``; ctc float ``[B, T, D]``; needed
      when ``config.feature_weight > 0``, ignored otherwise.
    teacher_features: the shape of ``student_projection``; same rule.
    blank_index: ctc only, the blank's index.
    kd_scale: float or float32 scalar tensor multiplying ``config.alpha``.
    teacher_weights: kws only, optional float ``[B]``: each example's weight in
      ``kd`` and ``feature`` (0: an example whose guidance is not for what the
      student heard, e.g. a fresh view; ``hard`` takes every example).

  Returns:
    float32 scalars ``hard``, ``kd``, ``feature`` (only when
    ``config.feature_weight > 0``) and ``total``
    (``config.hard_weight * hard + kd_scale * config.alpha * kd +
    config.feature_weight * feature``); for ctc also ``infeasible``, an
    int32 count of examples dropped from ``hard``.
  """
  config.validate()
  _check_task(task, label_length, logit_length)
  if task == "ctc" and teacher_weights is not None:
    raise ValueError("teacher_weights are for kws")
  terms = _hard_terms(task, labels, student_logits, label_length, logit_length,
                      blank_index)
  if task == "kws":
    terms["kd"] = distillation_kl(student_logits, teacher_logits, config.temperature,
                                  teacher_weights)
  else:
    terms["kd"] = frame_distillation_kl(student_logits, teacher_logits,
                                        logit_length, config.temperature)
  total = config.hard_weight * terms["hard"] + kd_scale * config.alpha * terms["kd"]
  if config.feature_weight > 0:
    if student_projection is None or teacher_features is None:
      raise ValueError("feature_weight > 0 needs student_projection and "
                       "teacher_features")
    if task == "kws":
      terms["feature"] = feature_mse(student_projection, teacher_features, teacher_weights)
    else:
      terms["feature"] = frame_feature_mse(student_projection, teacher_features,
                                           logit_length)
    total += config.feature_weight * terms["feature"]
  terms["total"] = total
  return terms
