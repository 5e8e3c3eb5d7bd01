"""Quantized distillation: uniform bucketed weight quantization and its bookkeeping.

Polino, Pascanu, Alistarh (2018), "Model compression via distillation and
quantization". A weight tensor is flattened and cut into buckets of
``bucket_size`` consecutive values (the last one padded); each bucket has its
own scale ``alpha = max - min`` and offset ``beta = min``, its values are
normalised to ``[0, 1]``, rounded to one of the ``2**bits`` levels
``k / s`` (``s = 2**bits - 1`` intervals, ``k = 0 .. s``) and de-normalised::

  q(v) = beta + alpha * round(s * (v - beta) / alpha) / s

``round`` is to the nearest level (deterministic), or stochastic and unbiased:
up with probability equal to the fractional part, so ``E[q(v)] = v``. A
constant bucket (``alpha = 0``) comes back unchanged. Stochastic rounding uses
stateless random ops driven by an int32/int64 ``[2]`` seed tensor, so a step's
quantized weights depend only on its seed (reproducible, nothing to
checkpoint); under XLA the same seed draws other (equally reproducible)
numbers than the TensorFlow kernels do.

Which weights (``quantizable_weights``): the kernels and biases of the weight
layers (Dense and every convolution: Conv1D/2D/3D, DepthwiseConv1D/2D,
SeparableConv1D/2D), the weights Polino quantized. Batch normalization stays
float32: its gamma and beta are 2 values per channel (0.1% to 3% of the
students' parameters, so little to gain), each scales or shifts a whole channel, so a
rounding error there moves every activation of the channel; and at deployment
batch normalization is folded into the preceding convolution, so it has no
weights of its own to store. Its moving statistics are not trained and stay
float32 as well. Optionally the first weight layer (it reads the input
features) and the classifier stay float32 too, a common choice in low-bit
quantization: both are sensitive, and usually small (not wav2letter's first
layer, about a quarter of ``wav2letter_kws_tiny``).

Quantized distillation (``QuantizedTraining``, straight-through estimator):
the model's variables hold the full-precision weights between steps; the
train step's gradient computation is wrapped (``QuantizedTraining.wrap``) so
that it assigns the quantized values (``QuantizedWeights.quantize_in_place``),
runs forward and backward, and assigns the full-precision values back
(``restore``); the caller then applies the gradient, computed at the
quantized weights, to the full-precision ones. Checkpoints written between
steps thus hold full-precision weights and a resumed run goes on exactly.
Validation and the saved best model use deterministic rounding
(``QuantizedTraining.rounded``). ``post_training_quantize`` alone is
deep-speech-compression's post-training quantization baseline.

Sizes (``model_size_bits``): a quantized tensor of ``n`` values takes
``ceil(n / bucket_size)`` buckets of ``bucket_size * bits`` bits plus 64 bits
for its float32 ``alpha`` and ``beta``; every other weight 32 bits.
"""
import contextlib
import math
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras as keras

# Layers whose kernels and biases are quantized.
WEIGHT_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
                 keras.layers.Conv3D, keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
                 keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_Result = TypeVar("_Result")
# Bits of the float32 scale and offset stored with each bucket.
SCALE_BITS = 64
FLOAT_BITS = 32


def _check(bits: int, bucket_size: int) -> None:
  """ValueError unless 1 <= bits <= 16 and bucket_size >= 1."""
  if not 1 <= bits <= 16:
    raise ValueError(f"bits must be in [1, 16], got {bits}")
  if bucket_size < 1:
    raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")


def _buckets(tensor: tf.Tensor, bucket_size: int) -> tf.Tensor:
  """The values of ``tensor`` as float32 ``[num_buckets, bucket_size]``.

  The flattened values fill the buckets in order; the last bucket is padded
  with copies of the last value, which lies in that bucket, so the padding
  changes no bucket's min or max. ``num_buckets = ceil(size / bucket_size)``;
  ``tensor`` must not be empty.
  """
  flat = tf.reshape(tf.cast(tensor, tf.float32), [-1])
  size = tf.size(flat)
  padding = (bucket_size - size % bucket_size) % bucket_size
  flat = tf.concat([flat, tf.fill([padding], flat[-1])], axis=0)
  return tf.reshape(flat, [-1, bucket_size])


def bucket_scales(tensor: tf.Tensor, bucket_size: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """Per-bucket scale and offset of ``tensor``.

  Args:
    tensor: a non-empty float tensor of any shape, bucketed in flattened
      (row-major) order.
    bucket_size: values per bucket.

  Returns:
    ``(alpha, beta)``, float32 ``[ceil(size / bucket_size)]`` each: ``max - min``
    and ``min`` of the real values of each bucket.
  """
  buckets = _buckets(tensor, bucket_size)
  beta = tf.reduce_min(buckets, axis=1)
  return tf.reduce_max(buckets, axis=1) - beta, beta


def quantize(tensor: tf.Tensor, bits: int, bucket_size: int, stochastic: bool = False,
             seed: Optional[tf.Tensor] = None) -> tf.Tensor:
  """Uniform quantization of ``tensor`` with buckets (see the module docstring).

  Computed in float32; runs eagerly, in a ``tf.function`` and under XLA.

  Args:
    tensor: a non-empty float tensor (or variable) of any shape.
    bits: 1 to 16; each bucket has ``2**bits`` levels.
    bucket_size: values per bucket (flattened row-major order).
    stochastic: unbiased stochastic rounding instead of rounding to the
      nearest level (ties to even).
    seed: int32 or int64 ``[2]``, required when ``stochastic``: the same seed
      gives the same result.

  Returns:
    The quantized values, with the shape and dtype of ``tensor``.
  """
  _check(bits, bucket_size)
  tensor = tf.convert_to_tensor(tensor)
  buckets = _buckets(tensor, bucket_size)
  beta = tf.reduce_min(buckets, axis=1, keepdims=True)
  alpha = tf.reduce_max(buckets, axis=1, keepdims=True) - beta
  intervals = float(2**bits - 1)
  # In [0, intervals]; 0 for a constant bucket (alpha = 0), which then stays beta.
  scaled = tf.math.divide_no_nan(buckets - beta, alpha) * intervals
  if stochastic:
    if seed is None:
      raise ValueError("stochastic rounding needs a seed")
    lower = tf.floor(scaled)
    uniform = tf.random.stateless_uniform(tf.shape(scaled), seed)
    levels = lower + tf.cast(uniform < scaled - lower, tf.float32)
  else:
    levels = tf.round(scaled)
  values = beta + alpha * (levels / intervals)
  values = tf.reshape(values, [-1])[:tf.size(tensor)]
  return tf.cast(tf.reshape(values, tf.shape(tensor)), tensor.dtype)


def _weight_layers(model: keras.Model) -> List[keras.layers.Layer]:
  """The ``WEIGHT_LAYERS`` of ``model`` with trainable weights, in ``model.layers``
  order, nested models expanded in place."""
  layers = []
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      layers.extend(_weight_layers(layer))
    elif isinstance(layer, WEIGHT_LAYERS) and layer.trainable_weights:
      layers.append(layer)
  return layers


def _classifier(model: keras.Model, layers: Sequence[keras.layers.Layer]) -> keras.layers.Layer:
  """The layer computing the ``logits`` output of a model with dict outputs
  (the contract of ``kws_tf.models``), else the last of ``layers``."""
  if isinstance(model.output, dict) and "logits" in model.output:
    classifier = model.output["logits"]._keras_history.layer
    if classifier not in layers:
      raise ValueError(f"the logits layer {classifier.name!r} is not a weight layer")
    return classifier
  return layers[-1]


def quantizable_weights(model: keras.Model,
                        keep_first_last_float: bool = False) -> List[tf.Variable]:
  """The variables that quantized training and post-training quantization quantize.

  The trainable weights (kernels, depthwise/pointwise kernels, biases) of the
  ``WEIGHT_LAYERS`` of ``model`` in ``model.layers`` order (topological for a
  functional model), each layer's in its ``trainable_weights`` order. Batch
  normalization and all other layers stay float32 (see the module docstring).

  Args:
    model: a built Keras model.
    keep_first_last_float: leave out the first weight layer in ``model.layers``
      order (the one reading the input features) and the classifier: the layer
      computing the ``logits`` output of a ``kws_tf.models`` model (a
      ``projection`` head is quantized), or for other models the last weight
      layer.

  Returns:
    The selected ``tf.Variable``s, each once.
  """
  layers = _weight_layers(model)
  if not layers:
    raise ValueError(f"model {model.name!r} has no trainable weight layers")
  if keep_first_last_float:
    kept = (layers[0], _classifier(model, layers))
    layers = [layer for layer in layers if all(layer is not k for k in kept)]
  variables, seen = [], set()
  for layer in layers:
    for variable in layer.trainable_weights:
      if variable.ref() not in seen:
        seen.add(variable.ref())
        variables.append(variable)
  return variables


def model_size_bits(model: keras.Model, variables: Sequence[tf.Variable], bits: int,
                    bucket_size: int) -> Dict[str, float]:
  """Storage of ``model`` with ``variables`` quantized, in bits.

  Every weight of ``model`` (trainable or not: batch-norm moving statistics
  are stored too) counts 32 bits per value unless it is in ``variables``; a
  quantized tensor of ``n`` values counts ``ceil(n / bucket_size) *
  (bucket_size * bits + 64)`` bits (padding of the last bucket included).

  Args:
    model: a built Keras model.
    variables: weights of ``model`` to count as quantized.
    bits, bucket_size: as in ``quantize``.

  Returns:
    A dict of ints ``quantized_parameters``, ``float_parameters``,
    ``quantized_bits``, ``float_bits``, ``total_bits`` (their sum),
    ``float32_bits`` (the all-float32 model) and the float
    ``compression_ratio = float32_bits / total_bits``.
  """
  _check(bits, bucket_size)
  weights = {w.ref(): w for w in model.weights}
  quantized = {v.ref() for v in variables}
  if not quantized <= weights.keys():
    raise ValueError(f"some variables are not weights of model {model.name!r}")
  quantized_parameters = float_parameters = quantized_bits = 0
  for ref, weight in weights.items():
    size = weight.shape.num_elements()
    if ref in quantized:
      quantized_parameters += size
      quantized_bits += math.ceil(size / bucket_size) * (bucket_size * bits + SCALE_BITS)
    else:
      float_parameters += size
  float_bits = FLOAT_BITS * float_parameters
  total_bits = quantized_bits + float_bits
  float32_bits = FLOAT_BITS * (quantized_parameters + float_parameters)
  return {"quantized_parameters": quantized_parameters, "float_parameters": float_parameters,
          "quantized_bits": quantized_bits, "float_bits": float_bits, "total_bits": total_bits,
          "float32_bits": float32_bits, "compression_ratio": float32_bits / total_bits}


def post_training_quantize(model: keras.Model, bits: int, bucket_size: int,
                           keep_first_last_float: bool = False) -> List[tf.Variable]:
  """Assigns to each ``quantizable_weights`` variable its quantized value.

  Deterministic rounding to the nearest level; the other weights are left
  unchanged. Used after quantized training and as the post-training
  quantization baseline.

  Returns:
    The quantized variables (for ``model_size_bits``).
  """
  variables = quantizable_weights(model, keep_first_last_float)
  for variable in variables:
    variable.assign(quantize(variable, bits, bucket_size))
  return variables


class QuantizedWeights:
  """Swaps quantized values in and out of variables around a train step.

  Straight-through: ``saved = quantize_in_place(seed)`` before the forward
  pass, the gradient taken at the quantized weights, ``restore(saved)``, then
  the optimizer applies that gradient to the full-precision values. Both
  methods work eagerly, in a ``tf.function`` and under XLA (a ``tf.function``
  orders the reads and assigns of a variable as written).

  Attributes:
    variables: the variables to quantize (e.g. ``quantizable_weights(model)``).
    bits, bucket_size, stochastic: as in ``quantize``.
  """

  def __init__(self, variables: Sequence[tf.Variable], bits: int, bucket_size: int,
               stochastic: bool = False):
    _check(bits, bucket_size)
    self.variables = list(variables)
    self.bits = bits
    self.bucket_size = bucket_size
    self.stochastic = stochastic

  def quantized_values(self, seed: Optional[tf.Tensor] = None) -> List[tf.Tensor]:
    """The quantized values of ``variables``, in order.

    Args:
      seed: int32 or int64 ``[2]``, required when ``stochastic``; variable
        ``i`` is rounded with ``tf.random.experimental.stateless_fold_in(seed, i)``.
    """
    if self.stochastic and seed is None:
      raise ValueError("stochastic rounding needs a seed")
    return [quantize(variable, self.bits, self.bucket_size, self.stochastic,
                     None if seed is None else tf.random.experimental.stateless_fold_in(seed, i))
            for i, variable in enumerate(self.variables)]

  def quantize_in_place(self, seed: Optional[tf.Tensor] = None) -> List[tf.Tensor]:
    """Assigns the quantized values to ``variables``.

    Args:
      seed: as in ``quantized_values``.

    Returns:
      The full-precision values read before the assignment, for ``restore``.
    """
    saved = [variable.read_value() for variable in self.variables]
    for variable, value in zip(self.variables, self.quantized_values(seed)):
      variable.assign(value)
    return saved

  def restore(self, saved: Sequence[tf.Tensor]) -> None:
    """Assigns ``saved`` (from ``quantize_in_place``) back to ``variables``."""
    for variable, value in zip(self.variables, saved):
      variable.assign(value)


class QuantizedTraining:
  """Quantized distillation of ``model``: its quantized weights around a train step.

  Args:
    model: a built Keras model.
    bits, bucket_size: as in ``quantize``.
    stochastic: stochastic rounding in the train step (validation rounds to
      the nearest level).
    keep_first_last_float: as in ``quantizable_weights``.
    seed: with the step number, picks a step's stochastic rounding.

  Attributes:
    variables: the quantized variables (``quantizable_weights``).
  """

  def __init__(self, model: keras.Model, bits: int, bucket_size: int, stochastic: bool = False,
               keep_first_last_float: bool = False, seed: int = 0):
    self.model = model
    self.settings = {"bits": bits, "bucket_size": bucket_size, "stochastic": stochastic,
                     "keep_first_last_float": keep_first_last_float}
    self.variables = quantizable_weights(model, keep_first_last_float)
    self._training = QuantizedWeights(self.variables, bits, bucket_size, stochastic)
    self._rounding = QuantizedWeights(self.variables, bits, bucket_size)
    self._seed = seed

  def wrap(self, gradients: Callable[..., _Result], step: tf.Variable) -> Callable[..., _Result]:
    """``gradients`` run at the quantized weights (straight-through).

    Args:
      gradients: computes a gradient (and anything else) from the model's
        current weights; called inside a ``tf.function``.
      step: the int optimizer step; stochastic rounding of step ``n`` is
        seeded with ``[seed, n]``.

    Returns:
      A function of the same arguments that assigns the quantized weights,
      calls ``gradients`` and assigns the full-precision weights back before
      returning its result, for the caller to apply to them.
    """
    def wrapped(*args, **kwargs):
      seed = tf.stack([tf.constant(self._seed, tf.int64), tf.cast(step, tf.int64)])
      full_precision = self._training.quantize_in_place(seed)
      result = gradients(*args, **kwargs)
      self._training.restore(full_precision)
      return result

    return wrapped

  @contextlib.contextmanager
  def rounded(self) -> Iterator[None]:
    """Inside the block the model holds the weights rounded to the nearest
    level (eagerly: validation, the best checkpoint); full precision after."""
    full_precision = self._rounding.quantize_in_place()
    try:
      yield
    finally:
      self._rounding.restore(full_precision)

  def report(self) -> Dict[str, float]:
    """The settings and ``model_size_bits`` of the model with ``variables`` quantized."""
    return {**self.settings, **model_size_bits(self.model, self.variables,
                                               self.settings["bits"],
                                               self.settings["bucket_size"])}
