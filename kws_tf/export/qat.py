"""A short quantization-aware fine-tune of a trained student before int8 export.

``fine_tune`` wraps the model with ``heads.quantize_model`` (fake 8-bit
quantization of weights and activations, tensorflow-model-optimization) and
trains it for a few hundred steps with the task's plain loss (cross-entropy or
CTC, ``kws_tf.distill.losses.standard_terms``) on the train split's records,
normalised with the model's own statistics, so the weights adapt to the
rounding the int8 file will do.

Supported students: the wav2letter family and minimalistic MobileNetV3
(tensorflow-model-optimization fails on the hard swish / squeeze-excite of the
standard MobileNetV3). Others get an ExportError naming the model.
"""
from typing import Callable

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from kws_tf import data
from kws_tf import model_dir as model_dir_lib
from kws_tf.distill import losses
from kws_tf.export.errors import ExportError
from kws_tf.models import heads, wav2letter


def supports_qat(spec: model_dir_lib.ModelSpec) -> bool:
  """True for wav2letter students and MobileNetV3 with ``minimalistic=True``."""
  name = spec.name
  if name == "wav2letter" or name in wav2letter.PRESETS:
    return True
  return name.startswith("mobilenet_v3_") and bool(spec.params.get("minimalistic"))


def check_supported(spec: model_dir_lib.ModelSpec) -> None:
  """ExportError unless the model of ``spec`` supports QAT."""
  if not supports_qat(spec):
    params = f" with params {spec.params}" if spec.params else ""
    raise ExportError(
        f"QAT is not supported for model {spec.name!r}{params}: only wav2letter students "
        "and mobilenet_v3_small / mobilenet_v3_large with minimalistic=true can be fine-tuned "
        "with quantization-aware training; use --formats=int8 (post-training) instead")


def train_batches(model_dir: str, data_dir: str, split: str, batch_size: int,
                  seed: int) -> tf.data.Dataset:
  """Shuffled, repeated, padded batches of ``split``, normalised as the model was trained."""
  spec, metadata, parse = model_dir_lib.model_records(model_dir, data_dir)
  paths = data.shard_paths(data_dir, spec.format, split, metadata)
  ds = data.records_dataset(paths, metadata.compression).map(
      parse, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.map(lambda x: {k: v for k, v in x.items() if k != "id"})
  return ds.shuffle(1024, seed=seed).repeat().padded_batch(batch_size).prefetch(2)


def fine_tune(model: keras.Model, spec: model_dir_lib.ModelSpec, model_dir: str, data_dir: str,
              split: str, steps: int, learning_rate: float, batch_size: int, seed: int = 0,
              log: Callable = print) -> keras.Model:
  """The QAT copy of ``model`` after ``steps`` Adam steps (module docstring)."""
  check_supported(spec)
  keras.utils.set_random_seed(seed)
  qat_model = heads.quantize_model(model)
  optimizer = keras.optimizers.Adam(learning_rate)
  task = spec.task
  batches = train_batches(model_dir, data_dir, split, batch_size, seed)

  @tf.function(input_signature=[batches.element_spec])
  def step(batch):
    with tf.GradientTape() as tape:
      outputs = qat_model({"features": batch["features"], "num_frames": batch["num_frames"]},
                          training=True)
      if task == "kws":
        terms = losses.standard_terms("kws", labels=batch["label"], logits=outputs["logits"])
      else:
        terms = losses.standard_terms("ctc", labels=batch["labels"],
                                      label_length=batch["label_length"],
                                      logits=outputs["logits"],
                                      logit_length=outputs["logit_frames"])
      loss = terms["total"]
    variables = qat_model.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  iterator = iter(batches)
  for index in range(steps):
    loss = float(step(next(iterator)))
    if (index + 1) % max(1, steps // 5) == 0 or index + 1 == steps:
      log(f"QAT step {index + 1}/{steps}: loss {loss:.4f}")
  return qat_model
