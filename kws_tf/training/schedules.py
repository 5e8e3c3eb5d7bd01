"""Learning-rate schedules (linear warm-up, then cosine decay or a constant)
and the optimizer built on them."""
import math

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from kws_tf import config as config_lib


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then decay.

  After warm-up, ``decay="cosine"`` follows half a cosine from ``peak`` at
  step ``warmup_steps`` to ``peak * final_ratio`` at ``total_steps`` (and stays
  there); ``decay="constant"`` keeps ``peak``. Steps count from 0, so the first
  update uses ``peak / warmup_steps``.
  """

  def __init__(self, peak: float, warmup_steps: int, total_steps: int,
               decay: str = "cosine", final_ratio: float = 0.01):
    if decay not in ("cosine", "constant"):
      raise ValueError(f"decay must be cosine or constant, got {decay!r}")
    self.peak = float(peak)
    self.warmup_steps = int(warmup_steps)
    self.total_steps = int(total_steps)
    self.decay = decay
    self.final_ratio = float(final_ratio)

  def __call__(self, step):
    step = tf.cast(step, tf.float32) + 1.0
    warmup = float(max(self.warmup_steps, 1))
    warm = self.peak * tf.minimum(step / warmup, 1.0)
    if self.decay == "constant":
      return warm
    span = float(max(self.total_steps - self.warmup_steps, 1))
    progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
    cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
    decayed = self.peak * (self.final_ratio + (1.0 - self.final_ratio) * cosine)
    return tf.where(step <= self.warmup_steps, warm, decayed)

  def get_config(self):
    return {"peak": self.peak, "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps, "decay": self.decay,
            "final_ratio": self.final_ratio}


def build_optimizer(optimizer: config_lib.OptimizerConfig, steps: int, mixed_precision: str):
  """``(optimizer, schedule)``: Adam or AdamW on a ``WarmupSchedule`` over
  ``steps``, wrapped for dynamic loss scaling under ``mixed_float16``."""
  schedule = WarmupSchedule(optimizer.learning_rate, optimizer.warmup_steps, steps,
                            optimizer.schedule, optimizer.final_learning_rate_ratio)
  if optimizer.name == "adamw":
    built = keras.optimizers.AdamW(schedule, weight_decay=optimizer.weight_decay)
  else:
    built = keras.optimizers.Adam(schedule)
  if mixed_precision == "mixed_float16":
    built = keras.mixed_precision.LossScaleOptimizer(built)
  return built, schedule
