"""MobileNetV3 Small and Large (Howard et al. 2019) over spectrogram-like features.

The input ``[batch, frames, channels]`` is a one-channel image
``[batch, time, frequency = channels, 1]``. The body follows the paper's
Tables 1 and 2 as the reference implementations build them (TF-slim,
keras.applications, torchvision): a 3x3 stride-2 stem of 16 channels, the
inverted-residual blocks (1x1 expansion, depthwise k x k, optional
squeeze-excite, 1x1 linear projection, residual when shape is kept), and a 1x1
conv to 6 x the last block's channels (576 Small, 960 Large), each conv
followed by batch norm. Squeeze-excite reduces to ``_make_divisible(exp / 4)``
channels with ReLU and gates with the hard sigmoid. The classifier of the
paper (pooling, 1x1 conv to 1024 / 1280, 1x1 conv to classes) is replaced by
the shared heads of ``heads``.

Options: ``alpha`` multiplies every width (rounded to multiples of 8 as in the
paper); ``minimalistic`` (keras.applications' variant) uses 3x3 depthwise
kernels, no squeeze-excite and ReLU everywhere instead of hard swish.
Hard swish and hard sigmoid are the layers ``heads.HardSwish`` /
``heads.HardSigmoid`` (``relu6(x + 3) / 6`` forms, which TFLite fuses).

Strides: for kws the usual ones, 2 on both axes at the stem and at each
stride-2 block (total 32 x 32, 320 ms frames before pooling). For ctc the time
stride stops at 2 after the stem and later stride-2 blocks stride on
frequency only, so ``logit_frames = ceil(num_frames / 2)``; frequency is then
averaged before the per-frame classifier.

Registered: ``mobilenet_v3_small`` and ``mobilenet_v3_large``, params
``alpha=1.0``, ``minimalistic=False``, ``head_dropout=0.2`` (keras.applications'
dropout before the classifier). Parameters (batch-norm statistics included;
kws with 10 classes / ctc with a vocabulary of 100; the input width does not
matter): Small 944,602 / 996,532, Large 3,005,674 / 3,092,164. Without the
classifier they equal keras.applications' ``include_top=False`` models with a
one-channel input.

QAT: ``heads.quantize_model(model)``; required to work for minimalistic
models (the ones without hard swish and squeeze-excite).
"""
from typing import Sequence, Tuple

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from kws_tf.models import heads, registry

# Block tables: (kernel, expansion channels, output channels, squeeze-excite,
# activation, stride), from Tables 1 and 2 of the paper.
_SMALL = (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hard_swish", 2),
    (5, 240, 40, True, "hard_swish", 1),
    (5, 240, 40, True, "hard_swish", 1),
    (5, 120, 48, True, "hard_swish", 1),
    (5, 144, 48, True, "hard_swish", 1),
    (5, 288, 96, True, "hard_swish", 2),
    (5, 576, 96, True, "hard_swish", 1),
    (5, 576, 96, True, "hard_swish", 1),
)
_LARGE = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hard_swish", 2),
    (3, 200, 80, False, "hard_swish", 1),
    (3, 184, 80, False, "hard_swish", 1),
    (3, 184, 80, False, "hard_swish", 1),
    (3, 480, 112, True, "hard_swish", 1),
    (3, 672, 112, True, "hard_swish", 1),
    (5, 672, 160, True, "hard_swish", 2),
    (5, 960, 160, True, "hard_swish", 1),
    (5, 960, 160, True, "hard_swish", 1),
)
_STEM_CHANNELS = 16
_LAST_EXPANSION = 6


def _make_divisible(value: float, divisor: int = 8) -> int:
  """``value`` rounded to a multiple of ``divisor``, never below 90% of it."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


def _activation(x: tf.Tensor, activation: str, name: str) -> tf.Tensor:
  if activation == "relu":
    return keras.layers.ReLU(name=f"{name}_relu")(x)
  return heads.HardSwish(name=f"{name}_hard_swish")(x)


def _conv_bn(x: tf.Tensor, channels: int, name: str) -> tf.Tensor:
  """1x1 conv without bias, then batch norm."""
  x = keras.layers.Conv2D(channels, 1, use_bias=False, name=name)(x)
  return keras.layers.BatchNormalization(name=f"{name}_bn")(x)


def _squeeze_excite(x: tf.Tensor, mask: tf.Tensor, name: str) -> tf.Tensor:
  """``x`` gated per channel by squeeze-excite over its valid frames."""
  channels = x.shape[-1]
  s = heads.MaskedMean(keepdims=True, name=f"{name}_squeeze")([x, mask])
  s = keras.layers.Conv2D(_make_divisible(channels / 4), 1, name=f"{name}_reduce")(s)
  s = keras.layers.ReLU(name=f"{name}_reduce_relu")(s)
  s = keras.layers.Conv2D(channels, 1, name=f"{name}_expand")(s)
  s = heads.HardSigmoid(name=f"{name}_hard_sigmoid")(s)
  return keras.layers.Multiply(name=f"{name}_excite")([x, s])


def _inverted_residual(x: tf.Tensor, masks: heads.FrameMasks, time_stride: int, *,
                       kernel: int, expansion: int, channels: int, squeeze_excite: bool,
                       activation: str, strides: Tuple[int, int],
                       name: str) -> Tuple[tf.Tensor, int]:
  """One bottleneck block on ``x`` at ``time_stride``; returns (output, its time stride)."""
  shortcut = x
  if expansion != x.shape[-1]:
    x = _activation(_conv_bn(x, expansion, f"{name}_expand"), activation, f"{name}_expand")
  x = masks.apply(x, time_stride, name=f"{name}_mask")
  x, padding = heads.pad_for_conv(x, (kernel, kernel), strides, name=f"{name}_pad")
  x = keras.layers.DepthwiseConv2D(kernel, strides=strides, padding=padding, use_bias=False,
                                   name=f"{name}_depthwise")(x)
  x = keras.layers.BatchNormalization(name=f"{name}_depthwise_bn")(x)
  x = _activation(x, activation, f"{name}_depthwise")
  time_stride *= strides[0]
  if squeeze_excite:
    x = _squeeze_excite(x, masks(time_stride), f"{name}_se")
  x = _conv_bn(x, channels, f"{name}_project")
  if strides == (1, 1) and shortcut.shape[-1] == channels:
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
  return x, time_stride


def _mobilenet_v3(blocks: Sequence[tuple], *, task: str, num_channels: int, num_classes: int,
                  projection_dim: int, alpha: float, minimalistic: bool, head_dropout: float,
                  name: str) -> keras.Model:
  """MobileNetV3 with the block table ``blocks`` (see the module docstring)."""
  heads.check_task(task)
  stem_activation = "relu" if minimalistic else "hard_swish"
  inputs = heads.model_inputs(num_channels)
  masks = heads.FrameMasks(inputs)
  x = keras.layers.Reshape((-1, num_channels, 1), name="features_2d")(inputs["features"])
  x = masks.apply(x, 1, name="stem_mask")
  x, padding = heads.pad_for_conv(x, (3, 3), (2, 2), name="stem_pad")
  x = keras.layers.Conv2D(_make_divisible(_STEM_CHANNELS * alpha), 3, strides=2, padding=padding,
                          use_bias=False, name="stem")(x)
  x = keras.layers.BatchNormalization(name="stem_bn")(x)
  x = _activation(x, stem_activation, "stem")
  time_stride = 2
  for i, (kernel, expansion, channels, squeeze_excite, activation, stride) in enumerate(blocks):
    time_step = stride if task == "kws" else 1
    x, time_stride = _inverted_residual(
        x, masks, time_stride, kernel=3 if minimalistic else kernel,
        expansion=_make_divisible(expansion * alpha), channels=_make_divisible(channels * alpha),
        squeeze_excite=squeeze_excite and not minimalistic,
        activation="relu" if minimalistic else activation, strides=(time_step, stride),
        name=f"block{i}")
  x = _conv_bn(x, _LAST_EXPANSION * x.shape[-1], "last")
  x = _activation(x, stem_activation, "last")
  outputs = heads.head(task, x, masks, inputs["num_frames"], time_stride=time_stride,
                       num_classes=num_classes, projection_dim=projection_dim,
                       dropout=head_dropout)
  return keras.Model(inputs, outputs, name=name)


@registry.register("mobilenet_v3_small")
def mobilenet_v3_small(*, task: str, num_channels: int, num_classes: int,
                       projection_dim: int = 0, alpha: float = 1.0, minimalistic: bool = False,
                       head_dropout: float = 0.2) -> keras.Model:
  """MobileNetV3 Small following the contract of ``kws_tf.models``.

  Args:
    task: "kws" or "ctc".
    num_channels: input feature channels (the frequency axis).
    num_classes: kws classes, or the ctc vocabulary size including blank.
    projection_dim: size of the ``projection`` output; 0 for none.
    alpha: width multiplier.
    minimalistic: 3x3 kernels, no squeeze-excite, ReLU only.
    head_dropout: dropout rate before the classifier.
  """
  return _mobilenet_v3(_SMALL, task=task, num_channels=num_channels, num_classes=num_classes,
                       projection_dim=projection_dim, alpha=alpha, minimalistic=minimalistic,
                       head_dropout=head_dropout, name="mobilenet_v3_small")


@registry.register("mobilenet_v3_large")
def mobilenet_v3_large(*, task: str, num_channels: int, num_classes: int,
                       projection_dim: int = 0, alpha: float = 1.0, minimalistic: bool = False,
                       head_dropout: float = 0.2) -> keras.Model:
  """MobileNetV3 Large following the contract of ``kws_tf.models``; args as ``mobilenet_v3_small``."""
  return _mobilenet_v3(_LARGE, task=task, num_channels=num_channels, num_classes=num_classes,
                       projection_dim=projection_dim, alpha=alpha, minimalistic=minimalistic,
                       head_dropout=head_dropout, name="mobilenet_v3_large")
