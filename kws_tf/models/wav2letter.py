"""Wav2letter students (Collobert et al. 2016) as in deep-speech-compression.

The models of "Listen to the Teacher!" (deep-speech-compression, S. Garda
2018): a stack of 1-D convolutions over ``[batch, frames, channels]``
features, layer ``i`` given by ``filters[i]``, ``widths[i]`` (kernel width,
frames), ``strides[i]`` and ``dropouts[i]``:

  conv:  Conv(filters, width, stride) -> [BatchNorm] -> activation -> [Dropout]
  gated: the gated linear unit (GLU): a conv of 2 x filters split into halves
         a and b, [BatchNorm], out = a * sigmoid(b), [Dropout]. It is written
         as two Conv2D of ``filters`` each (``conv{i}_linear`` gives a,
         ``conv{i}_gate`` gives b), the same function and parameters as one
         conv of 2 x filters, and no activation follows (the gate is the
         nonlinearity); ``activation`` applies to "conv" only.

Padding (``padding``): "same" pads every conv with zeros at the input's edges
(``heads.pad_for_conv``), so a clip of ``n`` frames gives ``ceil(n / stride)``
frames. "valid" (kws only) pads nowhere: the convs keep only the frames whose
receptive field lies inside the clip (a stack of receptive field ``R`` frames
and total stride ``S`` gives ``(n - R) // S + 1``) and the pooling averages
those. Each frame of every layer is then a function of a fixed span of input
frames alone, so a stream can compute each layer's new frames only
(``kws_tf.export.stream_layers``); the clip must hold at least ``R`` frames.

Each 1-D conv is ``Conv2D(filters, (width, 1), strides=(stride, 1))`` on a
``[batch, time, 1, channels]`` map (the features are reshaped once and the
4-D layout kept), because tensorflow-model-optimization cannot quantize
``Conv1D``. With batch norm the convs have no bias (the norm's beta replaces it).

The lists describe the hidden layers only. The classifier comes from the
shared heads (``heads.head``): for ctc it is wav2letter's last layer, the
width-1 conv to the vocabulary, written as the per-frame ``Dense(vocabulary)``
(the same function); for kws the head pools the last hidden layer over valid
frames and applies ``Dense(num_classes)``. A ctc model must have a total time
stride (product of ``strides``) of 2: 20 ms logit frames, those of the
Whisper teacher, ``logit_frames = ceil(num_frames / 2)``.

Presets (``PRESETS``; filters of the hidden layers; parameters with batch
norm for 39-channel MFCC input, kws with 10 classes / ctc with a vocabulary
of 100):
  wav2letter_v1          the deep-speech-compression teacher: 8 x 250, 2000,
                         2000; widths 48, 7 (x7), 32, 1; stride 2 first.
                         23,574,510 / 23,754,600
  wav2letter_student_v0  4 x 250, 2000, 2000   21,820,510 / 22,000,600
  wav2letter_student_v1  4 x 250, 1000, 1000   10,802,510 / 10,892,600
  wav2letter_student_v2  4 x 200, 500, 500      4,676,610 /  4,721,700
                         (students: widths 48, 7, 7, 7, 32, 1; stride 2 first)
  wav2letter_kws_small   5 x 80, 160; widths 11, 5, 5, 5, 5, 1; stride 2
                         first; dropout 0.1.     178,970 / 193,460
  wav2letter_kws_tiny    5 x 48, 96; as small.    73,594 /  82,324
Preset parameters may be overridden (e.g. ``dropouts``, ``batch_norm``).

QAT: ``heads.quantize_model(model)`` (tfmot's ``quantize_model`` refuses the
masking layers; see ``heads``).
"""
import inspect
import math
from typing import Sequence

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras as keras

from kws_tf.models import heads, registry


@registry.register("wav2letter")
def wav2letter(*, task: str, num_channels: int, num_classes: int, projection_dim: int = 0,
               filters: Sequence[int], widths: Sequence[int], strides: Sequence[int],
               dropouts: Sequence[float], conv_type: str = "conv", batch_norm: bool = True,
               activation: str = "relu", head_dropout: float = 0.0, pooling: str = "mean",
               padding: str = "same", name: str = "wav2letter") -> keras.Model:
  """A wav2letter model following the contract of ``kws_tf.models``.

  Args:
    task: "kws" or "ctc".
    num_channels: input feature channels.
    num_classes: kws classes, or the ctc vocabulary size including blank.
    projection_dim: size of the ``projection`` output; 0 for none.
    filters, widths, strides, dropouts: one entry per hidden conv layer:
      output channels, kernel width (frames), time stride, dropout rate.
    conv_type: "conv" or "gated" (GLU).
    batch_norm: batch normalization after each conv.
    activation: Keras activation name after each "conv" layer.
    head_dropout: dropout rate before the classifier.
    pooling: kws: "mean" over the clip, "centred" (weighted towards its centre,
      ``heads.CentredMean``) or "attention" (weighted by a learned score of each
      frame, ``heads.AttentivePooling``).
    padding: "same" (zeros at the edges) or "valid" (kws: none; module docstring).
    name: the model's name.
  """
  lengths = {"filters": len(filters), "widths": len(widths), "strides": len(strides),
             "dropouts": len(dropouts)}
  if len(set(lengths.values())) != 1:
    raise ValueError("filters, widths, strides and dropouts must have equal lengths, got "
                     + ", ".join(f"{key} {value}" for key, value in lengths.items()))
  if conv_type not in ("conv", "gated"):
    raise ValueError(f"conv_type must be 'conv' or 'gated', got {conv_type!r}")
  if padding not in ("same", "valid"):
    raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
  if padding == "valid" and task != "kws":
    raise ValueError(f"padding 'valid' is for kws models (a {task} model gives a logit "
                     "frame for every 2 input frames)")
  heads.check_task(task)
  heads.check_time_stride(task, math.prod(strides))

  inputs = heads.model_inputs(num_channels)
  masks = heads.FrameMasks(inputs)
  x = keras.layers.Reshape((-1, 1, num_channels), name="features_2d")(inputs["features"])
  time_stride, receptive_field = 1, 1
  for i, (size, width, stride, dropout) in enumerate(zip(filters, widths, strides, dropouts)):
    if padding == "same":
      if width > 1:
        x = masks.apply(x, time_stride, name=f"conv{i}_mask")
      x, conv_padding = heads.pad_for_conv(x, (width, 1), (stride, 1), name=f"conv{i}_pad")
    else:
      conv_padding = "valid"
      receptive_field += (width - 1) * time_stride
    conv = dict(kernel_size=(width, 1), strides=(stride, 1), padding=conv_padding,
                use_bias=not batch_norm)
    if conv_type == "conv":
      x = keras.layers.Conv2D(size, name=f"conv{i}", **conv)(x)
      if batch_norm:
        x = keras.layers.BatchNormalization(name=f"conv{i}_bn")(x)
      x = keras.layers.Activation(activation, name=f"conv{i}_{activation}")(x)
    else:
      linear = keras.layers.Conv2D(size, name=f"conv{i}_linear", **conv)(x)
      gate = keras.layers.Conv2D(size, name=f"conv{i}_gate", **conv)(x)
      if batch_norm:
        linear = keras.layers.BatchNormalization(name=f"conv{i}_linear_bn")(linear)
        gate = keras.layers.BatchNormalization(name=f"conv{i}_gate_bn")(gate)
      gate = keras.layers.Activation("sigmoid", name=f"conv{i}_sigmoid")(gate)
      x = keras.layers.Multiply(name=f"conv{i}_glu")([linear, gate])
    if dropout > 0:
      x = keras.layers.Dropout(dropout, name=f"conv{i}_dropout")(x)
    time_stride *= stride
  outputs = heads.head(task, x, masks, inputs["num_frames"], time_stride=time_stride,
                       num_classes=num_classes, projection_dim=projection_dim,
                       dropout=head_dropout, pooling=pooling,
                       receptive_field=receptive_field)
  return keras.Model(inputs, outputs, name=name)


def _students(filters: Sequence[int]) -> dict:
  """The students' layout (widths 48, 7, 7, 7, 32, 1; stride 2 first) with ``filters``."""
  return dict(filters=tuple(filters), widths=(48, 7, 7, 7, 32, 1), strides=(2, 1, 1, 1, 1, 1),
              dropouts=(0.0,) * 6)


# Registered presets: name -> overridable defaults of ``wav2letter``.
PRESETS = {
    "wav2letter_v1": dict(filters=(250,) * 8 + (2000, 2000), widths=(48,) + (7,) * 7 + (32, 1),
                          strides=(2,) + (1,) * 9, dropouts=(0.0,) * 10),
    "wav2letter_student_v0": _students((250,) * 4 + (2000, 2000)),
    "wav2letter_student_v1": _students((250,) * 4 + (1000, 1000)),
    "wav2letter_student_v2": _students((200,) * 4 + (500, 500)),
    "wav2letter_kws_small": dict(filters=(80,) * 5 + (160,), widths=(11, 5, 5, 5, 5, 1),
                                 strides=(2, 1, 1, 1, 1, 1), dropouts=(0.1,) * 6),
    "wav2letter_kws_tiny": dict(filters=(48,) * 5 + (96,), widths=(11, 5, 5, 5, 5, 1),
                                strides=(2, 1, 1, 1, 1, 1), dropouts=(0.1,) * 6),
}


def _register_preset(name: str, preset: dict) -> None:
  """Registers ``name``: ``wav2letter`` with ``preset`` as overridable defaults.

  The preset's signature is ``wav2letter``'s with those defaults, so
  ``registry.check_params`` sees the parameters it takes.
  """
  defaults = {"name": name, **preset}

  def build(**params) -> keras.Model:
    return wav2letter(**{**defaults, **params})
  build.__doc__ = f"The {name} preset of ``wav2letter``: {preset}."
  signature = inspect.signature(wav2letter)
  build.__signature__ = signature.replace(parameters=[
      p.replace(default=defaults.get(p.name, p.default)) for p in signature.parameters.values()])
  registry.register(name)(build)


for _name, _preset in PRESETS.items():
  _register_preset(_name, _preset)
