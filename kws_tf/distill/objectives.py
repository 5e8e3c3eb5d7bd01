"""One training objective per mode: the loss terms of a batch and their total.

The train step calls ``objective(batch, outputs, step)`` with

  ``batch``    the dict of ``kws_tf.data.make_dataset``: kws ``label`` int
               ``[B]``; ctc ``labels`` int ``[B, L]`` and ``label_length``
               int ``[B]``; the joined guidance: ``guidance_logits`` (kws
               ``[B, C]``, ctc ``[B, T', V]``), ``guidance_frames`` int
               ``[B]``, ``guidance_features`` (optional, kws ``[B, D]``, ctc
               ``[B, T', D]``), ``guidance_hint`` ``[B, T', d]``, kws
               ``guidance_weight`` (optional float ``[B]``: 0 for an example
               on a fresh view, whose teacher terms are left out);
  ``outputs``  the model's dict: ``logits`` (kws ``[B, C]``, ctc
               ``[B, T, V]``), ctc ``logit_frames`` int ``[B]``, optional
               ``projection``; FitNet stage 1's hint model gives ``hint``
               ``[B, T, d]`` and ``hint_frames`` int ``[B]``;
  ``step``     the 0-based int optimizer step (scalar tensor),

and gets float32 scalars by name (ctc also the int32 ``infeasible`` count),
among them ``total``, the loss minimised; the loop logs each as
``loss/<name>``. The terms are those of ``kws_tf.distill.losses``:

  mode                  objective     terms
  ``standard``          Standard      hard, total
  ``distill``           Distill       hard, kd, feature, total
  ``quantized_distill`` Distill       (its train step runs at quantized
                                      weights: ``quantization.QuantizedTraining``)
  ``fitnet`` stage 1    FitNetHint    hint, total
  ``fitnet`` stage 2    FitNetKD      hard, kd, feature, kd_weight, total

``feature`` only when ``distill.feature_weight > 0``; ``kd`` is
``T^2 * KL(teacher_T || student_T)``, nats times T^2 (per example, or per valid
frame for ctc).
"""
from typing import Dict

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from kws_tf import config as config_lib
from kws_tf.distill import fitnet, losses

Terms = Dict[str, tf.Tensor]


class Standard:
  """Hard labels only: cross entropy (kws) or CTC (ctc); ``total = hard``."""

  def __init__(self, task: str):
    self.task = task

  def __call__(self, batch, outputs, step) -> Terms:
    if self.task == "kws":
      return losses.standard_terms("kws", labels=batch["label"], logits=outputs["logits"])
    return losses.standard_terms("ctc", labels=batch["labels"],
                                 label_length=batch["label_length"], logits=outputs["logits"],
                                 logit_length=outputs["logit_frames"])


class Distill:
  """Hinton's distillation from the teacher's logits in the guidance.

  ``total = hard_weight * hard + alpha * kd + feature_weight * feature``
  (``kws_tf.config.DistillConfig``). For ctc the teacher and the student both
  give 20 ms frames whose counts can differ by one (STFT centring): every
  term runs over the frames both have, valid up to the smaller count.
  """

  def __init__(self, task: str, distill: config_lib.DistillConfig):
    self.task = task
    self.distill = distill.validate()

  def __call__(self, batch, outputs, step, kd_scale=1.0) -> Terms:
    """The terms; ``kd_scale`` (float or float32 scalar) multiplies ``alpha``."""
    features = batch.get("guidance_features")
    projection = outputs.get("projection")
    if self.task == "kws":
      return losses.distillation_terms(
          "kws", self.distill, labels=batch["label"], student_logits=outputs["logits"],
          teacher_logits=batch["guidance_logits"], student_projection=projection,
          teacher_features=features, kd_scale=kd_scale,
          teacher_weights=batch.get("guidance_weight"))
    frames = tf.minimum(tf.shape(outputs["logits"])[1], tf.shape(batch["guidance_logits"])[1])
    return losses.distillation_terms(
        "ctc", self.distill, labels=batch["labels"], label_length=batch["label_length"],
        student_logits=outputs["logits"][:, :frames],
        logit_length=tf.minimum(outputs["logit_frames"], batch["guidance_frames"]),
        teacher_logits=batch["guidance_logits"][:, :frames],
        student_projection=None if projection is None else projection[:, :frames],
        teacher_features=None if features is None else features[:, :frames],
        kd_scale=kd_scale)


class FitNetHint:
  """FitNet stage 1: ``hint``, the MSE between the regressor's output and the
  teacher's hint over their common valid frames (``fitnet.hint_loss``);
  ``total = hint``."""

  def __call__(self, batch, outputs, step) -> Terms:
    loss = fitnet.hint_loss(outputs["hint"], outputs["hint_frames"], batch["guidance_hint"],
                            batch["guidance_frames"])
    return {"hint": loss, "total": loss}


class FitNetKD:
  """FitNet stage 2: ``Distill`` with ``alpha`` multiplied by lambda.

  ``total = hard_weight * hard + lambda * alpha * kd + feature_weight *
  feature``, with ``kd`` carrying ``T^2`` once and lambda (logged as
  ``kd_weight``) going linearly from ``kd_weight_start`` at step 0 to
  ``kd_weight_end`` at step ``steps - 1`` (``fitnet.kd_weight``).
  """

  def __init__(self, task: str, distill: config_lib.DistillConfig,
               fitnet_config: config_lib.FitNetConfig, steps: int):
    self._distill = Distill(task, distill)
    self.start, self.end = fitnet_config.kd_weight_start, fitnet_config.kd_weight_end
    self.steps = steps

  def __call__(self, batch, outputs, step) -> Terms:
    weight = fitnet.kd_weight(step, self.steps, self.start, self.end)
    terms = self._distill(batch, outputs, step, kd_scale=weight)
    terms["kd_weight"] = weight
    return terms


def for_config(config: config_lib.Config):
  """The objective of ``config.mode`` (FitNet: of ``config.fitnet.stage``, 1
  or 2; stage 2 anneals over ``train.steps``)."""
  if config.mode == "standard":
    return Standard(config.task)
  if config.mode in ("distill", "quantized_distill"):
    return Distill(config.task, config.distill)
  if config.mode == "fitnet" and config.fitnet.stage == 1:
    return FitNetHint()
  if config.mode == "fitnet" and config.fitnet.stage == 2:
    return FitNetKD(config.task, config.distill, config.fitnet, config.train.steps)
  raise ValueError(f"no objective for mode={config.mode!r} with fitnet.stage="
                   f"{config.fitnet.stage} (a run trains one FitNet stage, 1 or 2)")
