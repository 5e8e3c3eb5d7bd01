"""ResNet18 (He et al. 2016) over one-channel spectrogram-like features.

The "tiny" student of the PyTorch Vietnamese KWS distillation project, which
took torchvision's resnet18 with a one-channel first conv. The input
``[batch, frames, channels]`` is an image ``[batch, time, frequency =
channels, 1]``; the body is torchvision's: a 7x7 stride-2 conv of 64 channels,
batch norm, ReLU, 3x3 stride-2 max pooling, then four stages of two basic
blocks (3x3 conv, BN, ReLU, 3x3 conv, BN, + shortcut, ReLU) of 64, 128, 256
and 512 channels, stages 2-4 starting with stride 2 and a 1x1 conv + BN
shortcut. Convs have no bias. ``width`` multiplies every channel count. The
average pooling and fully connected classifier are the shared heads of
``heads``.

Strides: for kws 2 on both axes at the stem, the max pooling and stages 2-4
(total 32 x 32). For ctc only the stem strides in time (total 2, so
``logit_frames = ceil(num_frames / 2)``); the later stride-2 layers stride on
frequency only, and frequency is averaged before the per-frame classifier.

Registered: ``resnet18``, params ``width=1.0``, ``head_dropout=0.0``.
Parameters (batch-norm statistics included; kws with 10 classes / ctc with a
vocabulary of 100): 11,184,970 / 11,231,140; the trainable ones without the
classifier, 11,170,240, are torchvision's one-channel resnet18 without fc.

QAT: ``heads.quantize_model(model)`` (not required to work for this model).
"""
from typing import Tuple

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from kws_tf.models import heads, registry

_STAGE_CHANNELS = (64, 128, 256, 512)
_BLOCKS_PER_STAGE = 2
_STEM_CHANNELS = 64


def _basic_block(x: tf.Tensor, masks: heads.FrameMasks, time_stride: int, channels: int,
                 strides: Tuple[int, int], name: str) -> Tuple[tf.Tensor, int]:
  """One basic block on ``x`` at ``time_stride``; returns (output, its time stride)."""
  x = masks.apply(x, time_stride, name=f"{name}_mask")
  shortcut = x
  x, padding = heads.pad_for_conv(x, (3, 3), strides, name=f"{name}_pad")
  x = keras.layers.Conv2D(channels, 3, strides=strides, padding=padding, use_bias=False,
                          name=f"{name}_conv1")(x)
  x = keras.layers.BatchNormalization(name=f"{name}_conv1_bn")(x)
  x = keras.layers.ReLU(name=f"{name}_conv1_relu")(x)
  time_stride *= strides[0]
  x = masks.apply(x, time_stride, name=f"{name}_conv1_mask")
  x = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"{name}_conv2")(x)
  x = keras.layers.BatchNormalization(name=f"{name}_conv2_bn")(x)
  if strides != (1, 1) or shortcut.shape[-1] != channels:
    shortcut = keras.layers.Conv2D(channels, 1, strides=strides, use_bias=False,
                                   name=f"{name}_downsample")(shortcut)
    shortcut = keras.layers.BatchNormalization(name=f"{name}_downsample_bn")(shortcut)
  x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
  x = keras.layers.ReLU(name=f"{name}_relu")(x)
  return x, time_stride


@registry.register("resnet18")
def resnet18(*, task: str, num_channels: int, num_classes: int, projection_dim: int = 0,
             width: float = 1.0, head_dropout: float = 0.0) -> keras.Model:
  """ResNet18 following the contract of ``kws_tf.models``.

  Args:
    task: "kws" or "ctc".
    num_channels: input feature channels (the frequency axis).
    num_classes: kws classes, or the ctc vocabulary size including blank.
    projection_dim: size of the ``projection`` output; 0 for none.
    width: channel multiplier (64 x width channels in the first stage).
    head_dropout: dropout rate before the classifier.
  """
  heads.check_task(task)
  late_time_stride = 2 if task == "kws" else 1
  inputs = heads.model_inputs(num_channels)
  masks = heads.FrameMasks(inputs)
  x = keras.layers.Reshape((-1, num_channels, 1), name="features_2d")(inputs["features"])
  x = masks.apply(x, 1, name="stem_mask")
  x, padding = heads.pad_for_conv(x, (7, 7), (2, 2), name="stem_pad")
  x = keras.layers.Conv2D(max(1, round(_STEM_CHANNELS * width)), 7, strides=2, padding=padding,
                          use_bias=False, name="stem")(x)
  x = keras.layers.BatchNormalization(name="stem_bn")(x)
  x = keras.layers.ReLU(name="stem_relu")(x)
  x = masks.apply(x, 2, name="pool_mask")
  # After ReLU and the mask every value is >= 0, so zero padding is neutral
  # for the maximum, as torchvision's padding with -inf.
  pool_strides = (late_time_stride, 2)
  x, padding = heads.pad_for_conv(x, (3, 3), pool_strides, name="pool_pad")
  x = keras.layers.MaxPooling2D(3, strides=pool_strides, padding=padding, name="stem_pool")(x)
  time_stride = 2 * late_time_stride
  for stage, channels in enumerate(_STAGE_CHANNELS):
    for block in range(_BLOCKS_PER_STAGE):
      strides = (late_time_stride, 2) if stage > 0 and block == 0 else (1, 1)
      x, time_stride = _basic_block(x, masks, time_stride, max(1, round(channels * width)),
                                    strides, name=f"stage{stage + 1}_block{block + 1}")
  outputs = heads.head(task, x, masks, inputs["num_frames"], time_stride=time_stride,
                       num_classes=num_classes, projection_dim=projection_dim,
                       dropout=head_dropout)
  return keras.Model(inputs, outputs, name="resnet18")
