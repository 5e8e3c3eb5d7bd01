"""kws_tf.distill.quantization against numpy references written out here."""
import math

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from kws_tf.distill import quantization
from kws_tf.models import registry

RNG = np.random.default_rng(11)


def np_buckets(values, bucket_size):
  """The real values of each bucket of ``values`` (flattened), as a list of arrays."""
  flat = np.asarray(values).reshape(-1)
  return [flat[i:i + bucket_size] for i in range(0, flat.size, bucket_size)]


def np_quantize_nearest(values, bits, bucket_size):
  """Each value replaced by the nearest of its bucket's levels, in float64."""
  out = []
  for bucket in np_buckets(values.astype(np.float64), bucket_size):
    low, high = bucket.min(), bucket.max()
    grid = low + (high - low) * np.arange(2**bits) / (2**bits - 1)
    out.append(grid[np.abs(bucket[:, None] - grid[None, :]).argmin(axis=1)])
  return np.concatenate(out).reshape(values.shape)


def grid_levels(quantized, original, bits, bucket_size):
  """Per bucket: ``k = s * (q - min) / (max - min)`` of ``quantized``, with min and
  max those of ``original``'s bucket (float64); ``s * (q - min)`` for a constant one."""
  levels = []
  for q, v in zip(np_buckets(quantized, bucket_size), np_buckets(original, bucket_size)):
    low, high = float(v.min()), float(v.max())
    levels.append((2**bits - 1) * (q.astype(np.float64) - low) / ((high - low) or 1.0))
  return levels


def test_bucket_scales_are_max_minus_min_and_min():
  values = RNG.normal(size=(5, 7)).astype(np.float32)  # 35 values: 4 full buckets + 3
  alpha, beta = quantization.bucket_scales(values, 8)
  buckets = np_buckets(values, 8)
  assert alpha.dtype == tf.float32 and alpha.shape == (5,) and beta.shape == (5,)
  np.testing.assert_array_equal(beta, [b.min() for b in buckets])
  np.testing.assert_array_equal(alpha, [b.max() - b.min() for b in buckets])


def test_padding_of_last_bucket_does_not_change_its_range():
  # The last bucket [10, 11] would get min 0 if padded with zeros.
  values = np.array([-3.0, 0.5, 2.0, 7.0, 10.0, 11.0], np.float32)
  alpha, beta = quantization.bucket_scales(values, 4)
  np.testing.assert_array_equal(alpha, [10.0, 1.0])
  np.testing.assert_array_equal(beta, [-3.0, 10.0])
  quantized = quantization.quantize(values, 2, 4).numpy()
  np.testing.assert_array_equal(quantized[4:], quantization.quantize(values[4:], 2, 4))
  np.testing.assert_array_equal(quantized[:4], quantization.quantize(values[:4], 2, 4))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_values_lie_on_the_grid_of_their_bucket(bits):
  values = RNG.normal(size=(6, 50)).astype(np.float32)  # 300 values: 4 buckets of 64 + 44
  quantized = quantization.quantize(values, bits, 64).numpy()
  assert quantized.shape == values.shape and quantized.dtype == np.float32
  for q, levels in zip(np_buckets(quantized, 64), grid_levels(quantized, values, bits, 64)):
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    assert levels.min() > -1e-4 and levels.max() < 2**bits - 1 + 1e-4
    assert len(np.unique(q)) <= 2**bits


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_spread_bucket_uses_every_level(bits):
  values = np.linspace(-1.0, 2.0, 100, dtype=np.float32)
  for stochastic in (False, True):
    quantized = quantization.quantize(values, bits, 100, stochastic=stochastic,
                                      seed=tf.constant([bits, 1], tf.int64))
    assert len(np.unique(quantized)) == 2**bits


def test_deterministic_rounding_is_to_the_nearest_level():
  values = RNG.normal(size=(3, 4, 25)).astype(np.float32)
  for bits, bucket_size in [(2, 16), (3, 64), (8, 100)]:
    quantized = quantization.quantize(values, bits, bucket_size).numpy()
    expected = np_quantize_nearest(values, bits, bucket_size)
    np.testing.assert_allclose(quantized, expected, rtol=0, atol=1e-5)


def test_constant_bucket_comes_back_unchanged():
  values = np.concatenate([np.full(8, 0.3), RNG.normal(size=8), np.full(3, -2.5)])
  values = values.astype(np.float32)
  for stochastic in (False, True):
    quantized = quantization.quantize(values, 2, 8, stochastic=stochastic,
                                      seed=tf.constant([0, 1], tf.int64)).numpy()
    assert np.all(np.isfinite(quantized))
    np.testing.assert_array_equal(quantized[:8], values[:8])
    np.testing.assert_array_equal(quantized[16:], values[16:])
  alpha, _ = quantization.bucket_scales(values, 8)
  np.testing.assert_array_equal(alpha.numpy()[[0, 2]], [0.0, 0.0])


def test_shape_and_dtype_are_kept():
  values = tf.constant(RNG.normal(size=(3, 1, 5, 2)), tf.float16)
  quantized = quantization.quantize(values, 4, 7)
  assert quantized.shape == values.shape and quantized.dtype == tf.float16


def test_stochastic_rounding_is_unbiased_between_neighbour_levels():
  bits, bucket_size, draws = 2, 64, 500
  values = RNG.normal(size=256).astype(np.float32)
  quantize = tf.function(lambda seed: quantization.quantize(values, bits, bucket_size,
                                                            stochastic=True, seed=seed))
  samples = np.stack([quantize(tf.constant([5, i], tf.int64)).numpy() for i in range(draws)])
  levels = np.stack([np.concatenate(grid_levels(s, values, bits, bucket_size)) for s in samples])
  exact = np.concatenate(grid_levels(values, values, bits, bucket_size))
  # Each draw is a level less than one interval away: the one below or above.
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
  np.testing.assert_array_less(np.abs(levels - exact), 1 + 1e-4)
  # Unbiased: a draw is within one interval of the value, so its standard
  # deviation is at most half an interval; allow 5 standard errors.
  spacing = np.concatenate([np.full(b.size, (b.max() - b.min()) / (2**bits - 1))
                            for b in np_buckets(values, bucket_size)])
  np.testing.assert_array_less(np.abs(samples.mean(axis=0) - values),
                               5 * spacing / 2 / math.sqrt(draws))
  # Not merely nearest rounding, and reproducible from the seed.
  assert np.abs(samples.mean(axis=0) - values).mean() < 0.2 * np.abs(
      quantization.quantize(values, bits, bucket_size).numpy() - values).mean()
  np.testing.assert_array_equal(samples[3], quantize(tf.constant([5, 3], tf.int64)))


def test_quantize_compiles_with_xla():
  values = tf.constant(RNG.normal(size=(9, 13)), tf.float32)
  seed = tf.constant([2, 9], tf.int64)
  compiled = tf.function(lambda x, s: (quantization.quantize(x, 3, 32),
                                       quantization.quantize(x, 3, 32, stochastic=True, seed=s)),
                         jit_compile=True)
  nearest, stochastic = compiled(values, seed)
  np.testing.assert_allclose(nearest, quantization.quantize(values, 3, 32), atol=1e-6)
  # XLA draws other random numbers than the kernels do, but on the same grid.
  levels = np.concatenate(grid_levels(stochastic.numpy(), values.numpy(), 3, 32))
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
  np.testing.assert_array_equal(stochastic, compiled(values, seed)[1])


def test_stochastic_needs_a_seed_and_arguments_are_checked():
  with pytest.raises(ValueError, match="seed"):
    quantization.quantize(tf.ones([4]), 2, 4, stochastic=True)
  with pytest.raises(ValueError, match="bits"):
    quantization.quantize(tf.ones([4]), 0, 4)
  with pytest.raises(ValueError, match="bucket_size"):
    quantization.QuantizedWeights([], 2, 0)


def small_model(projection=False):
  """features [batch, 6, 3] -> Conv2D(4, bias) -> BN -> DepthwiseConv2D -> pool -> Dense
  logits (+ Dense projection), outputs a dict as ``kws_tf.models`` do."""
  features = keras.Input((6, 3), name="features")
  x = keras.layers.Reshape((6, 1, 3))(features)
  x = keras.layers.Conv2D(4, (3, 1), padding="same", name="conv")(x)
  x = keras.layers.BatchNormalization(name="conv_bn")(x)
  x = keras.layers.DepthwiseConv2D((3, 1), padding="same", name="depthwise")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = {"logits": keras.layers.Dense(5, name="logits")(x)}
  if projection:
    outputs["projection"] = keras.layers.Dense(2, name="projection")(x)
  return keras.Model(features, outputs)


def names(variables):
  return [v.name.split(":")[0] for v in variables]


def test_selection_of_kernels_and_biases():
  model = small_model(projection=True)
  assert names(quantization.quantizable_weights(model)) == [
      "conv/kernel", "conv/bias", "depthwise/depthwise_kernel", "depthwise/bias",
      "logits/kernel", "logits/bias", "projection/kernel", "projection/bias"]
  # First = the conv reading the input; last = the logits layer, not the
  # projection that follows it in model.layers.
  assert names(quantization.quantizable_weights(model, keep_first_last_float=True)) == [
      "depthwise/depthwise_kernel", "depthwise/bias", "projection/kernel", "projection/bias"]
  sequential = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
                                 keras.layers.BatchNormalization(), keras.layers.Dense(4),
                                 keras.layers.Dense(2)])
  assert [v.shape for v in quantization.quantizable_weights(sequential, True)] == [(4, 4), (4,)]


def tiny_mlp():
  """3 -> Dense(7, tanh) -> BN -> Dense(3)."""
  return keras.Sequential([keras.Input((3,)), keras.layers.Dense(7, activation="tanh"),
                           keras.layers.BatchNormalization(), keras.layers.Dense(3)])


def test_model_size_bits_by_hand():
  model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(7),
                            keras.layers.BatchNormalization(), keras.layers.Dense(3)])
  assert model.count_params() == 70 + 7 + 4 * 7 + 21 + 3
  variables = quantization.quantizable_weights(model)
  size = quantization.model_size_bits(model, variables, bits=4, bucket_size=16)
  # Buckets of 16 x 4 + 64 = 128 bits: kernel 70 -> 5, bias 7 -> 1, kernel 21 -> 2, bias 3 -> 1.
  assert size == {"quantized_parameters": 101, "float_parameters": 28,
                  "quantized_bits": 9 * 128, "float_bits": 28 * 32, "total_bits": 2048,
                  "float32_bits": 129 * 32, "compression_ratio": 4128 / 2048}
  first_last = quantization.quantizable_weights(model, keep_first_last_float=True)
  assert first_last == [] and quantization.model_size_bits(
      model, first_last, 4, 16)["compression_ratio"] == 1.0
  with pytest.raises(ValueError, match="not weights"):
    quantization.model_size_bits(model, quantization.quantizable_weights(tiny_mlp()), 4, 16)


def kws_inputs(batch=2, frames=30):
  return {"features": tf.constant(RNG.normal(size=(batch, frames, 39)), tf.float32),
          "num_frames": tf.constant([frames, frames - 7], tf.int32)}


@pytest.mark.parametrize("name,params,first", [
    ("wav2letter_kws_tiny", {}, "conv0"),
    ("mobilenet_v3_small", {"minimalistic": True}, "stem")])
def test_student_selection_and_post_training_quantization(name, params, first):
  model = registry.build(name, task="kws", num_channels=39, num_classes=10, **params)
  weight_layers = [layer for layer in model.layers if isinstance(
      layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense))]
  expected = [w for layer in weight_layers for w in layer.trainable_weights]
  selected = quantization.quantizable_weights(model)
  assert [v.ref() for v in selected] == [w.ref() for w in expected]
  assert not any("_bn/" in variable_name for variable_name in names(selected))
  kept = quantization.quantizable_weights(model, keep_first_last_float=True)
  assert set(names(selected)) - set(names(kept)) == {
      w.name.split(":")[0] for w in model.get_layer(first).weights + model.get_layer(
          "logits").weights}

  inputs = kws_inputs()
  before = model(inputs)["logits"].numpy()
  weights = {w.name: w.numpy() for w in model.weights}
  quantized = quantization.post_training_quantize(model, 2, 64, keep_first_last_float=True)
  assert [v.ref() for v in quantized] == [v.ref() for v in kept]
  after = model(inputs)["logits"].numpy()
  assert np.all(np.isfinite(after)) and not np.allclose(after, before)
  for w in model.weights:
    if any(w is v for v in kept):
      assert not np.array_equal(w.numpy(), weights[w.name])
      assert all(len(np.unique(bucket)) <= 4 for bucket in np_buckets(w.numpy(), 64))
    else:  # first and last layers, batch norm: bit-identical
      np.testing.assert_array_equal(w.numpy(), weights[w.name])


def straight_through_data():
  return (tf.constant(RNG.normal(size=(16, 3)), tf.float32),
          tf.constant(RNG.normal(size=(16, 3)), tf.float32))


def mse(model, x, y):
  return tf.reduce_mean(tf.square(model(x, training=True) - y))


@pytest.mark.parametrize("stochastic,jit_compile", [(False, False), (True, False), (True, True)])
def test_straight_through_step(stochastic, jit_compile):
  x, y = straight_through_data()
  model, learning_rate = tiny_mlp(), 0.1
  optimizer = keras.optimizers.SGD(learning_rate)
  for variable in model.trainable_variables:  # random biases and batch-norm weights too
    variable.assign(RNG.normal(size=variable.shape) * 0.5)
  weights = quantization.QuantizedWeights(quantization.quantizable_weights(model), bits=2,
                                          bucket_size=8, stochastic=stochastic)
  initial_weights = model.get_weights()
  initial_selected = [v.numpy() for v in weights.variables]
  full_precision = [v.numpy() for v in model.trainable_variables]
  seed = tf.constant([4, 0], tf.int64)

  @tf.function(jit_compile=jit_compile)
  def step(x, y, seed):
    saved = weights.quantize_in_place(seed)
    quantized = [v.read_value() for v in weights.variables]
    with tf.GradientTape() as tape:
      loss = mse(model, x, y)
    grads = tape.gradient(loss, model.trainable_variables)
    weights.restore(saved)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return grads, quantized

  grads, quantized = step(x, y, seed)
  for value, start in zip(quantized, initial_selected):
    if stochastic:  # on the grid of the full-precision values
      levels = np.concatenate(grid_levels(value.numpy(), start, 2, 8))
      np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    else:
      np.testing.assert_allclose(value, quantization.quantize(start, 2, 8), atol=1e-6)
  # By hand: a clone holding the quantized weights (those the step used), its
  # gradient applied with SGD to the full-precision values.
  clone = keras.models.clone_model(model)
  clone.set_weights(initial_weights)
  selected = {v.ref() for v in weights.variables}
  values = iter(quantized)
  for variable, clone_variable in zip(model.trainable_variables, clone.trainable_variables):
    if variable.ref() in selected:
      clone_variable.assign(next(values))
  with tf.GradientTape() as tape:
    loss = mse(clone, x, y)
  expected_grads = tape.gradient(loss, clone.trainable_variables)
  for variable, start, grad, expected in zip(model.trainable_variables, full_precision, grads,
                                             expected_grads):
    assert np.all(np.abs(grad.numpy()) > 0)  # every full-precision value gets a gradient
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(variable.numpy(), start - learning_rate * expected.numpy(),
                               rtol=1e-6, atol=1e-7)
  # The gradient at the quantized weights differs from the float one.
  clone.set_weights(initial_weights)
  with tf.GradientTape() as tape:
    loss = mse(clone, x, y)
  float_kernel_grad = tape.gradient(loss, clone.trainable_variables)[0]
  assert not np.allclose(grads[0], float_kernel_grad, rtol=1e-3)


def test_quantized_training_wraps_the_gradient_and_rounds_for_validation():
  x, y = straight_through_data()
  model = tiny_mlp()
  for variable in model.trainable_variables:
    variable.assign(RNG.normal(size=variable.shape) * 0.5)
  training = quantization.QuantizedTraining(model, bits=2, bucket_size=8, seed=3)
  full_precision = [v.numpy() for v in model.trainable_variables]
  step = tf.Variable(0, dtype=tf.int64)

  def gradients(x, y):
    with tf.GradientTape() as tape:
      loss = mse(model, x, y)
    return tape.gradient(loss, model.trainable_variables), [v.read_value()
                                                             for v in training.variables]

  grads, seen = tf.function(training.wrap(gradients, step))(x, y)
  # The gradient was taken at the deterministically rounded weights...
  for value, variable in zip(seen, training.variables):
    np.testing.assert_allclose(value, quantization.quantize(
        full_precision[[v.ref() for v in model.trainable_variables].index(variable.ref())],
        2, 8), atol=1e-6)
  clone = keras.models.clone_model(model)
  clone.set_weights(model.get_weights())
  selected = iter(seen)
  for variable, clone_variable in zip(model.trainable_variables, clone.trainable_variables):
    if any(variable is v for v in training.variables):
      clone_variable.assign(next(selected))
  with tf.GradientTape() as tape:
    loss = mse(clone, x, y)
  for grad, expected in zip(grads, tape.gradient(loss, clone.trainable_variables)):
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
  # ...and the model holds the full-precision weights again.
  for variable, value in zip(model.trainable_variables, full_precision):
    np.testing.assert_array_equal(variable.numpy(), value)
  with training.rounded():
    for variable in training.variables:
      assert all(len(np.unique(b)) <= 4 for b in np_buckets(variable.numpy(), 8))
  for variable, value in zip(model.trainable_variables, full_precision):
    np.testing.assert_array_equal(variable.numpy(), value)
  report = training.report()
  assert report["bits"] == 2 and report["stochastic"] is False
  assert report["quantized_parameters"] == 3 * 7 + 7 + 7 * 3 + 3
