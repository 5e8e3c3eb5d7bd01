"""Loss terms of kws_tf.distill.losses against numpy formulas written out here."""
import itertools

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf

from kws_tf.config import ConfigError, DistillConfig
from kws_tf.distill import losses

RNG = np.random.default_rng(7)


def np_log_softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def np_softmax(x, axis=-1):
  return np.exp(np_log_softmax(x, axis))


def np_kl(teacher_logits, student_logits, temperature):
  """KL(softmax(t/T) || softmax(s/T)) over the last axis."""
  p = np_softmax(teacher_logits / temperature)
  return (p * (np.log(p) - np_log_softmax(student_logits / temperature))).sum(-1)


def np_cross_entropy(labels, logits):
  return -np_log_softmax(logits)[np.arange(len(labels)), labels].mean()


def np_ctc_brute_force(label, logits, blank):
  """-log sum of the probabilities of every path over ``logits`` [T, V] giving ``label``."""
  probs = np_softmax(logits.astype(np.float64))
  frames, vocabulary = probs.shape
  total = 0.0
  for path in itertools.product(range(vocabulary), repeat=frames):
    merged = [s for i, s in enumerate(path) if i == 0 or s != path[i - 1]]
    if [s for s in merged if s != blank] == list(label):
      total += np.prod(probs[np.arange(frames), path])
  return -np.log(total)


def kws_batch(batch=5, classes=10, dim=8):
  return (RNG.integers(0, classes, size=batch),
          RNG.normal(size=(batch, classes)).astype(np.float32) * 3,
          RNG.normal(size=(batch, classes)).astype(np.float32) * 3,
          RNG.normal(size=(batch, dim)).astype(np.float32),
          RNG.normal(size=(batch, dim)).astype(np.float32))


def ctc_batch(batch=3, frames=6, vocabulary=5, dim=4):
  """Student and teacher logits and features; examples 1 and 2 have padding frames."""
  labels = np.array([[1, 2, 2], [3, 1, 0], [4, 0, 0]], np.int32)[:batch]
  label_length = np.array([3, 2, 1], np.int32)[:batch]
  logit_length = np.array([frames, frames - 2, frames - 3], np.int32)[:batch]
  shape = (batch, frames)
  return (labels, label_length, logit_length,
          RNG.normal(size=shape + (vocabulary,)).astype(np.float32) * 2,
          RNG.normal(size=shape + (vocabulary,)).astype(np.float32) * 2,
          RNG.normal(size=shape + (dim,)).astype(np.float32),
          RNG.normal(size=shape + (dim,)).astype(np.float32))


def scramble_padding(array, logit_length):
  """A copy of ``array`` [B, T, ...] with new values at frames >= logit_length."""
  array = array.copy()
  for b, length in enumerate(logit_length):
    array[b, length:] = RNG.normal(size=array[b, length:].shape) * 10
  return array


def test_cross_entropy_matches_numpy_and_keras():
  labels, logits, _, _, _ = kws_batch()
  value = losses.cross_entropy(tf.constant(labels), tf.constant(logits))
  assert value.dtype == tf.float32 and value.shape == ()
  np.testing.assert_allclose(value.numpy(), np_cross_entropy(labels, logits), rtol=1e-5)
  keras_loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  np.testing.assert_allclose(value.numpy(), keras_loss(labels, logits).numpy(), rtol=1e-5)


@pytest.mark.parametrize("blank_index", [0, 2])
def test_ctc_matches_brute_force_with_real_lengths(blank_index):
  # T=4, V=3; the last example has 3 valid frames and one padding frame.
  vocabulary = 3
  symbols = [s for s in range(vocabulary) if s != blank_index]
  a, b = symbols
  labels = np.array([[a, b], [a, a], [b, 7]], np.int32)  # 7: padding, ignored
  label_length = np.array([2, 2, 1], np.int32)
  logit_length = np.array([4, 4, 3], np.int32)
  logits = RNG.normal(size=(3, 4, vocabulary)).astype(np.float32)
  expected = [np_ctc_brute_force(labels[i, :label_length[i]], logits[i, :logit_length[i]],
                                 blank_index) for i in range(3)]
  value = losses.ctc(labels, label_length, logits, logit_length, blank_index=blank_index)
  assert value.dtype == tf.float32 and value.shape == ()
  np.testing.assert_allclose(value.numpy(), np.mean(expected), rtol=1e-5)
  normalized = losses.ctc(labels, label_length, logits, logit_length,
                          blank_index=blank_index, normalize_by_label_length=True)
  np.testing.assert_allclose(normalized.numpy(), np.mean(np.array(expected) / label_length),
                             rtol=1e-5)
  padded = scramble_padding(logits, logit_length)
  np.testing.assert_allclose(
      losses.ctc(labels, label_length, padded, logit_length, blank_index=blank_index).numpy(),
      value.numpy(), rtol=1e-6)


def test_ctc_feasibility_counts_repeats():
  labels = np.array([[1, 1, 2], [1, 2, 3], [1, 1, 1], [2, 2, 0]], np.int32)
  label_length = np.array([3, 3, 3, 1], np.int32)
  # needs 4, 3, 5 and 1 frames.
  logit_length = np.array([3, 3, 5, 1], np.int32)
  feasible = losses.ctc_feasible(labels, label_length, logit_length)
  np.testing.assert_array_equal(feasible.numpy(), [False, True, True, True])


def test_ctc_drops_infeasible_examples_and_counts_them():
  vocabulary = 3
  labels = np.array([[1, 2], [1, 1], [2, 0]], np.int32)
  label_length = np.array([2, 2, 1], np.int32)
  logit_length = np.array([4, 2, 3], np.int32)  # [1, 1] needs 3 frames, has 2
  logits = tf.constant(RNG.normal(size=(3, 4, vocabulary)).astype(np.float32))
  expected = np.mean([np_ctc_brute_force([1, 2], logits.numpy()[0], 0),
                      np_ctc_brute_force([2], logits.numpy()[2, :3], 0)])
  with tf.GradientTape() as tape:
    tape.watch(logits)
    terms = losses.standard_terms("ctc", labels, logits, label_length, logit_length)
  np.testing.assert_allclose(terms["hard"].numpy(), expected, rtol=1e-5)
  assert terms["infeasible"].dtype == tf.int32 and int(terms["infeasible"]) == 1
  assert sorted(terms) == ["hard", "infeasible", "total"]
  gradient = tape.gradient(terms["total"], logits).numpy()
  assert np.isfinite(gradient).all()
  np.testing.assert_array_equal(gradient[1], 0.0)

  none_fit = losses.ctc(labels, label_length, logits, np.array([1, 1, 0], np.int32))
  assert none_fit.numpy() == 0.0


def test_kd_matches_numpy_and_scales_with_temperature_squared():
  _, student, teacher, _, _ = kws_batch()
  for temperature in (1.0, 2.0, 6.0):
    value = losses.distillation_kl(student, teacher, temperature)
    expected = temperature ** 2 * np_kl(teacher, student, temperature).mean()
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5)
  # Logits scaled by T at temperature T: the same distributions, T**2 times the value.
  np.testing.assert_allclose(
      losses.distillation_kl(student * 4, teacher * 4, 4.0).numpy(),
      16 * losses.distillation_kl(student, teacher, 1.0).numpy(), rtol=1e-5)
  assert losses.distillation_kl(teacher, teacher, 3.0).numpy() == pytest.approx(0, abs=1e-6)


def test_kd_alpha_zero_is_hard_only():
  labels, student, teacher, _, _ = kws_batch()
  terms = losses.distillation_terms("kws", DistillConfig(temperature=4.0, alpha=0.0),
                                    labels, student, teacher)
  assert sorted(terms) == ["hard", "kd", "total"]
  assert terms["kd"].numpy() > 0
  np.testing.assert_allclose(terms["total"].numpy(), np_cross_entropy(labels, student),
                             rtol=1e-6)


def test_kd_gradient_has_closed_form_and_spares_the_teacher():
  labels, student, teacher, _, _ = kws_batch()
  temperature, alpha = 3.0, 0.7
  config = DistillConfig(temperature=temperature, alpha=alpha, beta=0.0)
  student, teacher = tf.constant(student), tf.constant(teacher)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([student, teacher])
    total = losses.distillation_terms("kws", config, labels, student, teacher)["total"]
  expected = alpha * temperature * (np_softmax(student.numpy() / temperature)
                                    - np_softmax(teacher.numpy() / temperature)) / len(labels)
  np.testing.assert_allclose(tape.gradient(total, student).numpy(), expected,
                             rtol=1e-4, atol=1e-7)
  assert tape.gradient(total, teacher) is None


def test_hinton_total_matches_numpy():
  labels, student, teacher, _, _ = kws_batch()
  config = DistillConfig(temperature=2.0, alpha=0.6)
  terms = losses.distillation_terms("kws", config, labels, student, teacher)
  expected = (0.4 * np_cross_entropy(labels, student)
              + 0.6 * 4.0 * np_kl(teacher, student, 2.0).mean())
  np.testing.assert_allclose(terms["total"].numpy(), expected, rtol=1e-5)


def test_beta_form_with_features_matches_the_pytorch_recipe():
  labels, student, teacher, projection, features = kws_batch()
  config = DistillConfig(temperature=6.0, alpha=0.8, beta=0.2, feature_weight=0.3)
  assert config.hard_weight == 0.2
  terms = losses.distillation_terms("kws", config, labels, student, teacher,
                                    student_projection=projection,
                                    teacher_features=features)
  hard = np_cross_entropy(labels, student)
  kd = 36.0 * np_kl(teacher, student, 6.0).mean()
  feature = ((projection - features) ** 2).mean()
  for name, value in (("hard", hard), ("kd", kd), ("feature", feature)):
    np.testing.assert_allclose(terms[name].numpy(), value, rtol=1e-5)
  np.testing.assert_allclose(terms["total"].numpy(), 0.8 * kd + 0.2 * hard + 0.3 * feature,
                             rtol=1e-5)
  # beta need not be 1 - alpha.
  heavy = DistillConfig(temperature=6.0, alpha=0.8, beta=1.0, feature_weight=0.3)
  total = losses.distillation_terms("kws", heavy, labels, student, teacher,
                                    student_projection=projection,
                                    teacher_features=features)["total"]
  np.testing.assert_allclose(total.numpy(), 0.8 * kd + hard + 0.3 * feature, rtol=1e-5)


def test_teacher_weights_weigh_the_teacher_terms_per_example():
  labels, student, teacher, projection, features = kws_batch()
  weights = np.zeros(len(labels), np.float32)
  weights[1:3] = [1.0, 3.0]
  config = DistillConfig(temperature=2.0, alpha=0.6, feature_weight=0.5)
  student_t = tf.constant(student)
  with tf.GradientTape() as tape:
    tape.watch(student_t)
    terms = losses.distillation_terms("kws", config, labels, student_t, teacher,
                                      student_projection=projection, teacher_features=features,
                                      teacher_weights=weights)
  kl = np_kl(teacher, student, 2.0)
  np.testing.assert_allclose(terms["kd"].numpy(), 4.0 * (kl[1] + 3 * kl[2]) / 4, rtol=1e-5)
  squared = ((projection - features) ** 2).mean(-1)
  np.testing.assert_allclose(terms["feature"].numpy(), (squared[1] + 3 * squared[2]) / 4,
                             rtol=1e-5)
  np.testing.assert_allclose(terms["hard"].numpy(), np_cross_entropy(labels, student), rtol=1e-6)
  # An example of weight 0 gets the hard term's gradient alone.
  hard_only = (1 - 0.6) * (np_softmax(student) - np.eye(student.shape[1])[labels]) / len(labels)
  np.testing.assert_allclose(tape.gradient(terms["total"], student_t).numpy()[0], hard_only[0],
                             rtol=1e-4, atol=1e-7)
  c_labels, c_label_length, logit_length, c_student, c_teacher, _, _ = ctc_batch()
  with pytest.raises(ValueError, match="kws"):
    losses.distillation_terms("ctc", config, c_labels, c_student, c_teacher,
                              label_length=c_label_length, logit_length=logit_length,
                              teacher_weights=np.ones(len(c_labels), np.float32))


def test_frame_kl_is_a_mean_over_valid_frames_and_ignores_padding():
  _, _, logit_length, student, teacher, _, _ = ctc_batch()
  value = losses.frame_distillation_kl(student, teacher, logit_length, 2.0)
  kl = np_kl(teacher, student, 2.0)
  expected = 4.0 * np.concatenate([kl[b, :n] for b, n in enumerate(logit_length)]).mean()
  np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5)
  scrambled = losses.frame_distillation_kl(scramble_padding(student, logit_length),
                                           scramble_padding(teacher, logit_length),
                                           logit_length, 2.0)
  assert scrambled.numpy() == value.numpy()


def test_frame_kl_rejects_a_frame_mismatch():
  _, _, logit_length, student, teacher, _, _ = ctc_batch()
  with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="20 ms"):
    losses.frame_distillation_kl(student, teacher[:, :-1], logit_length, 2.0)

  @tf.function(input_signature=[tf.TensorSpec([None, None, None])] * 2)
  def traced(s, t):
    return losses.frame_distillation_kl(s, t, logit_length, 2.0)

  with pytest.raises(tf.errors.InvalidArgumentError, match="sliced"):
    traced(student, teacher[:, :-1])


def test_frame_feature_mse_is_masked():
  _, _, logit_length, _, _, projection, features = ctc_batch()
  value = losses.frame_feature_mse(projection, features, logit_length)
  squared = ((projection - features) ** 2).mean(-1)
  expected = np.concatenate([squared[b, :n] for b, n in enumerate(logit_length)]).mean()
  np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5)
  scrambled = losses.frame_feature_mse(scramble_padding(projection, logit_length),
                                       scramble_padding(features, logit_length),
                                       logit_length)
  assert scrambled.numpy() == value.numpy()


def test_ctc_distillation_terms():
  labels, label_length, logit_length, student, teacher, projection, features = ctc_batch()
  config = DistillConfig(temperature=2.0, alpha=0.5, feature_weight=0.25)
  terms = losses.distillation_terms("ctc", config, labels, student, teacher,
                                    label_length=label_length, logit_length=logit_length,
                                    student_projection=projection, teacher_features=features)
  assert sorted(terms) == ["feature", "hard", "infeasible", "kd", "total"]
  assert int(terms["infeasible"]) == 0
  np.testing.assert_allclose(
      terms["hard"].numpy(),
      losses.ctc(labels, label_length, student, logit_length).numpy(), rtol=1e-6)
  np.testing.assert_allclose(
      terms["total"].numpy(),
      0.5 * terms["hard"].numpy() + 0.5 * terms["kd"].numpy() + 0.25 * terms["feature"].numpy(),
      rtol=1e-6)
  scrambled = losses.distillation_terms(
      "ctc", config, labels, scramble_padding(student, logit_length),
      scramble_padding(teacher, logit_length), label_length=label_length,
      logit_length=logit_length, student_projection=scramble_padding(projection, logit_length),
      teacher_features=scramble_padding(features, logit_length))
  np.testing.assert_allclose(scrambled["total"].numpy(), terms["total"].numpy(), rtol=1e-6)

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)]
               + [tf.TensorSpec([None], tf.int32)] * 2
               + [tf.TensorSpec([None, None, None])] * 4)
  def traced(labels, label_length, logit_length, student, teacher, projection, features):
    return losses.distillation_terms("ctc", config, labels, student, teacher, label_length,
                                     logit_length, projection, features)

  graph_terms = traced(labels, label_length, logit_length, student, teacher, projection,
                       features)
  for name, value in terms.items():
    np.testing.assert_allclose(graph_terms[name].numpy(), value.numpy(), rtol=1e-5)


def test_bfloat16_inputs_give_float32_terms():
  labels, student, teacher, projection, features = kws_batch()
  config = DistillConfig(temperature=2.0, alpha=0.5, feature_weight=0.3)
  low = [tf.cast(x, tf.bfloat16) for x in (student, teacher, projection, features)]
  rounded = [tf.cast(x, tf.float32) for x in low]
  terms = losses.distillation_terms("kws", config, labels, low[0], low[1],
                                    student_projection=low[2], teacher_features=low[3])
  reference = losses.distillation_terms("kws", config, labels, rounded[0], rounded[1],
                                        student_projection=rounded[2],
                                        teacher_features=rounded[3])
  for name, value in terms.items():
    assert value.dtype == tf.float32, name
    np.testing.assert_allclose(value.numpy(), reference[name].numpy(), rtol=1e-6)

  labels, label_length, logit_length, student, _, _, _ = ctc_batch()
  terms = losses.standard_terms("ctc", labels, tf.cast(student, tf.float16),
                                label_length, logit_length)
  assert terms["total"].dtype == tf.float32


def test_arguments_are_checked():
  labels, student, teacher, _, _ = kws_batch()
  for bad, key in ((DistillConfig(temperature=0.0, alpha=0.5), "distill.temperature"),
                   (DistillConfig(temperature=1.0, alpha=1.5), "distill.alpha"),
                   (DistillConfig(temperature=1.0, beta=-1.0), "distill.beta"),
                   (DistillConfig(feature_weight=-0.1), "distill.feature_weight")):
    with pytest.raises(ConfigError, match=key):
      losses.distillation_terms("kws", bad, labels, student, teacher)
  assert DistillConfig(temperature=1.0, alpha=0.25).hard_weight == 0.75
  with pytest.raises(ValueError, match="task"):
    losses.standard_terms("asr", labels, student)
  with pytest.raises(ValueError, match="label_length"):
    losses.standard_terms("ctc", labels, student)
  with pytest.raises(ValueError, match="student_projection"):
    losses.distillation_terms(
        "kws", DistillConfig(temperature=1.0, alpha=0.5, feature_weight=0.1),
        labels, student, teacher)
