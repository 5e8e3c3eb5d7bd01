"""Pieces shared by the student models: frame masks, masked pooling, heads, QAT.

Every student body works on a 4-D feature map ``[batch, time, frequency,
channels]`` (wav2letter keeps ``frequency`` 1 and its input channels as
channels; MobileNetV3 and ResNet treat the input channels as a frequency axis
of one channel), so 1-D convolutions are ``Conv2D((k, 1))`` and
tensorflow-model-optimization can quantize them.

Padding never changes the valid outputs. Frame ``t`` of the input is valid
when ``t < num_frames``; after a total time stride ``S`` frame ``t`` is valid
when ``t < ceil(num_frames / S)`` (``output_frames``). Two rules make the valid
outputs of an example exactly those it gets alone, whatever its padded frames
hold:

* every layer that mixes frames (a convolution or pooling wider than one
  frame) reads a feature map whose invalid frames were set to zero by
  multiplying with a ``FrameMask`` (``FrameMasks.apply``), which is what the
  zero padding of the example alone supplies at its end;
* a strided layer pads explicitly (``pad_for_conv``): ``(k - 1) // 2`` frames
  before and ``k // 2`` after, then "valid". TensorFlow's "same" padding with
  stride 2 moves its extra frame from one side to the other with the parity
  of the input length, which would shift the frames an example's outputs read
  when the batch is padded to a different length. Stride-1 layers use "same",
  which pads ``(k - 1) // 2`` before whatever the length.

A kws model may pad nowhere instead (wav2letter ``padding="valid"``): every
time convolution is "valid", output frame ``t`` reads input frames ``[t * S,
t * S + receptive_field)`` and is valid while all of them are
(``output_frames`` with the receptive field); no mask is needed before a layer,
only at the pooling, whose mask excludes every frame that read a padded one.

Batch normalization in training mode still sees the zeroed padding frames in
its batch statistics; inference uses the moving statistics, so it is exact.

Heads: ``kws`` pools the final feature map with a mean over valid frames and
all frequencies (``MaskedMean``, or ``CentredMean`` weighted towards the clip's
centre), then dropout and ``Dense(num_classes)``;
``ctc`` averages over frequency and applies ``Dense(vocabulary)`` per frame,
and reports ``logit_frames = ceil(num_frames / time_stride)``. The optional
``projection`` is ``Dense(projection_dim)`` on the same features the classifier
reads (pooled for kws, per frame for ctc). Final layers are float32 under any
mixed-precision policy.

Quantization-aware training: ``tfmot.quantization.keras.quantize_model`` refuses
any layer that its default 8-bit registry does not know, and these models have
such layers on purpose (``FrameMask``, ``MaskedMean``, ``HardSwish``,
``HardSigmoid``, ``Multiply``), so it cannot be applied as is. ``quantize_model``
here annotates every layer itself and then calls tfmot's ``quantize_apply``:
registry layers get tfmot's default configs (conv + batch norm + activation
go through tfmot's layout transforms as usual); the data-path layers the
registry lacks get an output-only 8-bit config; the side branch that turns
``num_frames`` into masks and ``logit_frames`` (``FrameMask``,
``FrameLengths``) stays unquantized, so no fake quantizer touches the int32
``num_frames``. QAT thus applies to the whole model, dict inputs and masks
included, and the QAT model keeps the contract.
"""
from typing import Dict, Tuple

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras as keras

TASKS = ("kws", "ctc")
# Total time stride of every ctc student: 10 ms input frames -> 20 ms logit
# frames, the frame rate of the Whisper encoder that teaches them.
CTC_TIME_STRIDE = 2


def output_frames(num_frames, time_stride: int, receptive_field: int = 1):
  """Frames after a total time stride: ``ceil(num_frames / time_stride)``, or
  after unpadded ("valid") layers of a total ``receptive_field`` (input frames
  per output frame), the frames whose receptive field lies inside:
  ``max(0, (num_frames - receptive_field) // time_stride + 1)`` (the same
  formula, for ``receptive_field`` 1).

  ``num_frames`` is an int or an int32 tensor (the result has its type/shape).
  """
  frames = (num_frames - receptive_field) // time_stride + 1
  if receptive_field == 1:  # never negative: no clamp (and no op) needed
    return frames
  return tf.maximum(frames, 0) if tf.is_tensor(frames) else max(frames, 0)


def check_task(task: str) -> None:
  """ValueError unless ``task`` is one of ``TASKS``."""
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def check_time_stride(task: str, time_stride: int) -> None:
  """ValueError if a ctc model's total time stride is not ``CTC_TIME_STRIDE``."""
  if task == "ctc" and time_stride != CTC_TIME_STRIDE:
    raise ValueError(f"a ctc model must have a total time stride of {CTC_TIME_STRIDE} "
                     f"(20 ms logit frames), got {time_stride}")


@keras.saving.register_keras_serializable(package="kws_tf")
class FrameMask(keras.layers.Layer):
  """1 at valid frames, 0 past them, at one time stride (and receptive field).

  Inputs ``[features, num_frames]``: the model's input features
  ``[batch, frames, channels]`` (only its frame count is read) and int32
  ``[batch]``. Output ``[batch, output_frames(frames), 1, 1]`` in the compute
  dtype, 1 where ``t < output_frames(num_frames)`` (``output_frames`` with
  ``time_stride`` and ``receptive_field``: 1 for padded layers).
  """

  def __init__(self, time_stride: int = 1, receptive_field: int = 1, **kwargs):
    super().__init__(**kwargs)
    self.time_stride = time_stride
    self.receptive_field = receptive_field

  def call(self, inputs):
    features, num_frames = inputs
    frames = output_frames(tf.shape(features)[1], self.time_stride, self.receptive_field)
    valid = tf.range(frames)[tf.newaxis, :] < output_frames(
        num_frames, self.time_stride, self.receptive_field)[:, tf.newaxis]
    return tf.cast(valid, self.compute_dtype)[:, :, tf.newaxis, tf.newaxis]

  def get_config(self):
    return dict(super().get_config(), time_stride=self.time_stride,
                receptive_field=self.receptive_field)


@keras.saving.register_keras_serializable(package="kws_tf")
class FrameLengths(keras.layers.Layer):
  """int32 ``[batch]``: ``ceil(num_frames / time_stride)`` of int32 ``num_frames``."""

  def __init__(self, time_stride: int = 1, **kwargs):
    super().__init__(**kwargs)
    self.time_stride = time_stride

  def call(self, num_frames):
    return output_frames(tf.cast(num_frames, tf.int32), self.time_stride)

  def get_config(self):
    return dict(super().get_config(), time_stride=self.time_stride)


@keras.saving.register_keras_serializable(package="kws_tf")
class MaskedMean(keras.layers.Layer):
  """Mean over valid frames and all frequencies.

  Inputs ``[x, mask]``: ``x [batch, time, frequency, channels]`` and its
  ``FrameMask`` ``[batch, time, 1, 1]``. Output ``[batch, channels]``, or
  ``[batch, 1, 1, channels]`` with ``keepdims``. Sums run in float32; an
  example with no valid frame gives zeros.
  """

  def __init__(self, keepdims: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.keepdims = keepdims

  def call(self, inputs):
    x, mask = inputs
    x = tf.cast(x, tf.float32)
    mask = tf.cast(mask, tf.float32)
    total = tf.reduce_sum(x * mask, axis=[1, 2], keepdims=self.keepdims)
    count = tf.reduce_sum(mask, axis=[1, 2], keepdims=self.keepdims)
    count *= tf.cast(tf.shape(x)[2], tf.float32)
    return tf.cast(total / tf.maximum(count, 1.0), self.compute_dtype)

  def get_config(self):
    return dict(super().get_config(), keepdims=self.keepdims)


@keras.saving.register_keras_serializable(package="kws_tf")
class CentredMean(keras.layers.Layer):
  """Mean over valid frames and all frequencies, weighted towards the clip's centre.

  A keyword clip is labelled with the word at its centre, but a mean over the
  whole clip weighs a neighbouring word at its edge as much. Frame ``t`` of an
  example with ``n`` valid frames gets the weight ``exp(-((t - (n - 1) / 2) /
  n)^2 / (2 width^2))``: a Gaussian over the offset from the centre in clip
  lengths, of a trainable ``width`` (initially ``initial_width``, kept
  positive by a softplus). The weights depend only on ``n``, so an exported
  file with a fixed input length holds them as constants.

  Inputs ``[x, mask]`` as for ``MaskedMean``: ``x [batch, time, frequency,
  channels]``, ``mask [batch, time, 1, 1]``. Output ``[batch, channels]``;
  float32 arithmetic; an example with no valid frame gives zeros.
  """

  def __init__(self, initial_width: float = 0.25, **kwargs):
    super().__init__(**kwargs)
    if initial_width <= 0:
      raise ValueError(f"initial_width must be > 0, got {initial_width}")
    self.initial_width = initial_width

  def build(self, input_shape):
    # softplus(raw) == initial_width
    raw = float(self.initial_width + np.log(-np.expm1(-self.initial_width)))
    self.raw_width = self.add_weight(
        name="raw_width", shape=(), initializer=keras.initializers.Constant(raw),
        dtype=tf.float32, trainable=True)
    super().build(input_shape)

  @property
  def width(self) -> tf.Tensor:
    """The Gaussian's standard deviation, in clip lengths."""
    return tf.nn.softplus(self.raw_width)

  def call(self, inputs):
    x, mask = inputs
    x = tf.cast(x, tf.float32)
    mask = tf.cast(mask, tf.float32)
    frames = tf.reduce_sum(mask, axis=1, keepdims=True)  # [batch, 1, 1, 1]
    position = tf.reshape(tf.range(tf.shape(x)[1], dtype=tf.float32), [1, -1, 1, 1])
    offset = (position - (frames - 1.0) / 2.0) / tf.maximum(frames, 1.0)
    weight = tf.exp(-0.5 * tf.square(offset / self.width)) * mask
    total = tf.reduce_sum(x * weight, axis=[1, 2])
    count = tf.reduce_sum(weight, axis=[1, 2]) * tf.cast(tf.shape(x)[2], tf.float32)
    return tf.cast(total / tf.maximum(count, 1e-6), self.compute_dtype)

  def get_config(self):
    return dict(super().get_config(), initial_width=self.initial_width)


@keras.saving.register_keras_serializable(package="kws_tf")
class AttentivePooling(keras.layers.Layer):
  """Attention-weighted mean over valid frames and all frequencies.

  The mean part of attentive statistics pooling (Okabe, Koshinaka and
  Shinoda 2018): each position gets a score ``v . tanh(W x + b)`` (``units``
  wide), the scores are a softmax over the valid positions, and the output is
  the weighted sum. Unlike ``MaskedMean`` it can single out the frames that
  hold the word, which a frozen encoder cannot learn to do itself.

  Inputs ``[x, mask]`` as for ``MaskedMean``: ``x [batch, time, frequency,
  channels]``, ``mask [batch, time, 1, 1]``. Output ``[batch, channels]``;
  float32 arithmetic; an example with no valid frame gives zeros.
  """

  def __init__(self, units: int = 128, **kwargs):
    super().__init__(**kwargs)
    self.units = units

  def build(self, input_shape):
    channels = int(input_shape[0][-1])
    self.hidden = keras.layers.Dense(self.units, activation="tanh", dtype="float32",
                                     name="hidden")
    self.score = keras.layers.Dense(1, dtype="float32", name="score")
    self.hidden.build([None, channels])
    self.score.build([None, self.units])
    super().build(input_shape)

  def call(self, inputs):
    x, mask = inputs
    x = tf.cast(x, tf.float32)
    batch, channels = tf.shape(x)[0], tf.shape(x)[-1]
    valid = tf.broadcast_to(tf.cast(mask, tf.float32) > 0, tf.shape(x[..., :1]))
    flat = tf.reshape(x, [batch, -1, channels])
    valid = tf.reshape(valid, [batch, -1])
    scores = tf.squeeze(self.score(self.hidden(flat)), -1)
    scores = tf.where(valid, scores, tf.fill(tf.shape(scores), -1e9))
    weights = tf.nn.softmax(scores, axis=-1) * tf.cast(valid, tf.float32)
    return tf.cast(tf.einsum("bp,bpc->bc", weights, flat), self.compute_dtype)

  def get_config(self):
    return dict(super().get_config(), units=self.units)


@keras.saving.register_keras_serializable(package="kws_tf")
class HardSigmoid(keras.layers.Layer):
  """``relu6(x + 3) / 6``, the hard sigmoid of MobileNetV3 (any shape)."""

  def call(self, x):
    return tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


@keras.saving.register_keras_serializable(package="kws_tf")
class HardSwish(keras.layers.Layer):
  """``x * relu6(x + 3) / 6``, the hard swish of MobileNetV3 (any shape)."""

  def call(self, x):
    return x * (tf.nn.relu6(x + 3.0) * (1.0 / 6.0))


def model_inputs(num_channels: int) -> Dict[str, keras.Input]:
  """The contract's inputs: ``features [batch, frames, num_channels]``, ``num_frames [batch]``."""
  return {"features": keras.Input(shape=(None, num_channels), name="features"),
          "num_frames": keras.Input(shape=(), dtype=tf.int32, name="num_frames")}


class FrameMasks:
  """The ``FrameMask`` layers of one model, one per time stride and receptive
  field, made on first use."""

  def __init__(self, inputs: Dict[str, tf.Tensor]):
    self._inputs = inputs
    self._masks = {}

  def __call__(self, time_stride: int, receptive_field: int = 1) -> tf.Tensor:
    """The mask ``[batch, output_frames(frames), 1, 1]``."""
    key = (time_stride, receptive_field)
    if key not in self._masks:
      name = f"frame_mask_{time_stride}" + (
          f"_{receptive_field}" if receptive_field > 1 else "")
      self._masks[key] = FrameMask(time_stride, receptive_field, name=name)(
          [self._inputs["features"], self._inputs["num_frames"]])
    return self._masks[key]

  def apply(self, x: tf.Tensor, time_stride: int, name: str) -> tf.Tensor:
    """``x [batch, time, frequency, channels]`` with its invalid frames zeroed."""
    return keras.layers.Multiply(name=name)([x, self(time_stride)])


def pad_for_conv(x: tf.Tensor, kernel_size: Tuple[int, int], strides: Tuple[int, int],
                 name: str) -> Tuple[tf.Tensor, str]:
  """``(x, padding)`` for a conv or pooling layer over ``x [batch, time, frequency, channels]``.

  ``kernel_size`` and ``strides`` are (time, frequency). With strides (1, 1)
  ``x`` is returned with ``"same"``; otherwise ``x`` zero-padded by
  ``(k - 1) // 2`` before and ``k // 2`` after on each axis, with ``"valid"``:
  either way an axis of length ``n`` gives ``ceil(n / stride)`` outputs, and
  output ``t`` reads inputs ``t * stride - (k - 1) // 2`` onwards whatever ``n``.
  """
  if tuple(strides) == (1, 1):
    return x, "same"
  padding = tuple(((k - 1) // 2, k // 2) for k in kernel_size)
  return keras.layers.ZeroPadding2D(padding, name=name)(x), "valid"


POOLINGS = ("mean", "centred", "attention")
ATTENTION_UNITS = 32  # width of a student's attention scorer (``pooling="attention"``)


def head(task: str, x: tf.Tensor, masks: FrameMasks, num_frames: tf.Tensor, *,
         time_stride: int, num_classes: int, projection_dim: int = 0,
         dropout: float = 0.0, pooling: str = "mean",
         receptive_field: int = 1) -> Dict[str, tf.Tensor]:
  """The outputs of a student from its final feature map.

  Args:
    task: "kws" or "ctc".
    x: ``[batch, time, frequency, channels]`` at total time stride ``time_stride``.
    masks: the model's frame masks.
    num_frames: the model's int32 ``[batch]`` input.
    time_stride: total time stride of ``x`` against the input frames.
    receptive_field: kws: 1 when every layer pads (frame ``t`` of ``x`` is
      valid while ``t < ceil(num_frames / time_stride)``); the input frames
      each frame of ``x`` reads when no layer pads (valid while all of them are).
    num_classes: kws classes, or the ctc vocabulary size including blank.
    projection_dim: size of the ``projection`` output; 0 for none.
    dropout: dropout rate before the classifier.
    pooling: kws: "mean" (``MaskedMean``), "centred" (``CentredMean``) or
      "attention" (``AttentivePooling`` of ``ATTENTION_UNITS``).

  Returns:
    kws: ``logits [batch, num_classes]`` (+ ``projection [batch, projection_dim]``);
    ctc: ``logits [batch, time, num_classes]``, ``logit_frames [batch]``
    (+ ``projection [batch, time, projection_dim]``). Float outputs are float32.
  """
  check_task(task)
  check_time_stride(task, time_stride)
  if pooling not in POOLINGS:
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
  if task == "kws":
    if pooling == "attention":
      pool = AttentivePooling(ATTENTION_UNITS, name="pool")
    else:
      pool = CentredMean(name="pool") if pooling == "centred" else MaskedMean(name="pool")
    features = pool([x, masks(time_stride, receptive_field)])
    outputs = {"logits": _classifier(features, num_classes, dropout)}
  else:
    frequencies, channels = x.shape[2], x.shape[3]
    if frequencies > 1:
      x = keras.layers.AveragePooling2D((1, frequencies), name="frequency_pool")(x)
    features = keras.layers.Reshape((-1, channels), name="frames")(x)
    outputs = {"logits": _classifier(features, num_classes, dropout),
               "logit_frames": FrameLengths(time_stride, name="logit_frames")(num_frames)}
  if projection_dim > 0:
    outputs["projection"] = keras.layers.Dense(projection_dim, dtype="float32",
                                               name="projection")(features)
  return outputs


def _classifier(features: tf.Tensor, num_classes: int, dropout: float) -> tf.Tensor:
  if dropout > 0:
    features = keras.layers.Dropout(dropout, name="head_dropout")(features)
  return keras.layers.Dense(num_classes, dtype="float32", name="logits")(features)


def quantize_model(model: keras.Model) -> keras.Model:
  """A quantization-aware-training copy of a student (see the module docstring).

  Same inputs and outputs as ``model``; weights are copied. Load a saved one
  under ``tfmot.quantization.keras.quantize_scope()``.
  """
  import tensorflow_model_optimization as tfmot
  # tfmot 0.8.1 has no public name for its output-only config.
  from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
      default_8bit_quantize_configs)
  quantize = tfmot.quantization.keras
  quantize_registry = quantize.default_8bit.Default8BitQuantizeRegistry()

  def annotate(layer):
    if isinstance(layer, (FrameMask, FrameLengths)):
      return layer
    # A product with a 0/1 frame mask keeps its input's range, so it gets no quantizer
    # of its own: with one, TFLite's PAD after it (once the converter folds a constant
    # mask away) would meet two different scales.
    if isinstance(layer, keras.layers.Multiply) and layer.name.endswith("_mask"):
      return quantize.quantize_annotate_layer(
          layer, default_8bit_quantize_configs.NoOpQuantizeConfig())
    # Batch norm after a conv is folded by tfmot's layout transforms.
    if (quantize_registry.supports(layer)
        or isinstance(layer, keras.layers.BatchNormalization)):
      return quantize.quantize_annotate_layer(layer)
    return quantize.quantize_annotate_layer(
        layer, default_8bit_quantize_configs.Default8BitOutputQuantizeConfig())

  annotated = keras.models.clone_model(model, clone_function=annotate)
  annotated.set_weights(model.get_weights())
  with quantize.quantize_scope():
    return quantize.quantize_apply(annotated)
