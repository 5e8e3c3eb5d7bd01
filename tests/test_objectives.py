"""The objective of each mode against totals written out by hand in numpy."""
import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf

from kws_tf import config as config_lib
from kws_tf.distill import objectives

STUDENT = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], np.float32)
TEACHER = np.array([[3.0, 0.0, -2.0], [0.5, 0.5, 1.0]], np.float32)
LABELS = np.array([0, 2], np.int32)


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def cross_entropy():
  return -log_softmax(STUDENT)[np.arange(2), LABELS].mean()


def kl(temperature):
  """KL(softmax(t/T) || softmax(s/T)), mean over the examples, without T^2."""
  teacher = log_softmax(TEACHER / temperature)
  student = log_softmax(STUDENT / temperature)
  return (np.exp(teacher) * (teacher - student)).sum(-1).mean()


def kws_batch():
  return ({"label": LABELS, "guidance_logits": TEACHER}, {"logits": STUDENT})


def stage2(*overrides, steps=5):
  config = config_lib.load(None, ["mode=fitnet", "fitnet.stage=2", f"train.steps={steps}",
                                  *overrides])
  objective = objectives.for_config(config)
  assert isinstance(objective, objectives.FitNetKD)
  return objective


def test_fitnet_stage2_total_applies_t_squared_once_and_honours_alpha_and_beta():
  batch, outputs = kws_batch()
  objective = stage2("distill.temperature=3", "distill.alpha=0.4", "distill.beta=0.7",
                     "fitnet.kd_weight_start=4", "fitnet.kd_weight_end=1")
  # Step 2 of 5: lambda = 4 + (1 - 4) * 2 / 4 = 2.5.
  terms = objective(batch, outputs, tf.constant(2, tf.int64))
  assert sorted(terms) == ["hard", "kd", "kd_weight", "total"]
  np.testing.assert_allclose(float(terms["kd_weight"]), 2.5)
  np.testing.assert_allclose(float(terms["kd"]), 9 * kl(3.0), rtol=1e-5)
  expected = 0.7 * cross_entropy() + 2.5 * 0.4 * 9 * kl(3.0)
  np.testing.assert_allclose(float(terms["total"]), expected, rtol=1e-5)


def test_fitnet_stage2_total_follows_alpha_and_beta():
  batch, outputs = kws_batch()
  step = tf.constant(0, tf.int64)
  totals = {alpha: float(stage2(f"distill.alpha={alpha}")(batch, outputs, step)["total"])
            for alpha in (0.2, 0.8)}
  assert totals[0.2] != pytest.approx(totals[0.8])
  # beta=None: the hard weight is 1 - alpha.
  np.testing.assert_allclose(
      totals[0.2], 0.8 * cross_entropy() + 4.0 * 0.2 * 25 * kl(5.0), rtol=1e-5)
  # alpha = 1 / T^2 and beta = 1 give Romero et al.'s hard + lambda * KL.
  paper = stage2("distill.temperature=2", "distill.alpha=0.25", "distill.beta=1")
  np.testing.assert_allclose(float(paper(batch, outputs, step)["total"]),
                             cross_entropy() + 4.0 * kl(2.0), rtol=1e-5)


def test_fitnet_stage2_is_distill_when_lambda_is_one():
  batch, outputs = kws_batch()
  overrides = ["distill.temperature=4", "distill.alpha=0.6"]
  fitnet_terms = stage2(*overrides, "fitnet.kd_weight_start=1")(batch, outputs,
                                                                tf.constant(3, tf.int64))
  distill = objectives.for_config(config_lib.load(None, ["mode=distill", *overrides]))
  distill_terms = distill(batch, outputs, tf.constant(3, tf.int64))
  for name in ("hard", "kd", "total"):
    np.testing.assert_allclose(float(fitnet_terms[name]), float(distill_terms[name]),
                               rtol=1e-6)


def test_distill_and_standard_kws():
  batch, outputs = kws_batch()
  config = config_lib.load(None, ["mode=distill", "distill.temperature=2", "distill.alpha=0.3"])
  terms = objectives.for_config(config)(batch, outputs, tf.constant(0, tf.int64))
  np.testing.assert_allclose(float(terms["total"]),
                             0.7 * cross_entropy() + 0.3 * 4 * kl(2.0), rtol=1e-5)
  standard = objectives.for_config(config_lib.load(None))(batch, outputs, None)
  assert sorted(standard) == ["hard", "total"]
  np.testing.assert_allclose(float(standard["total"]), cross_entropy(), rtol=1e-6)
  quantized = objectives.for_config(config_lib.load(None, ["mode=quantized_distill"]))
  assert isinstance(quantized, objectives.Distill)


def test_guidance_weight_leaves_fresh_views_out_of_the_teacher_term():
  batch, outputs = kws_batch()
  config = config_lib.load(None, ["mode=distill", "distill.temperature=2", "distill.alpha=0.3"])
  objective = objectives.for_config(config)
  teacher = log_softmax(TEACHER / 2)
  per_example_kl = (np.exp(teacher) * (teacher - log_softmax(STUDENT / 2))).sum(-1)
  # Example 0 on a fresh view: the teacher term is example 1's alone; the
  # hard term still takes both.
  terms = objective(dict(batch, guidance_weight=np.array([0.0, 1.0], np.float32)), outputs,
                    tf.constant(0, tf.int64))
  np.testing.assert_allclose(float(terms["kd"]), 4 * per_example_kl[1], rtol=1e-5)
  np.testing.assert_allclose(float(terms["hard"]), cross_entropy(), rtol=1e-6)
  np.testing.assert_allclose(float(terms["total"]),
                             0.7 * cross_entropy() + 0.3 * 4 * per_example_kl[1], rtol=1e-5)
  # Every example fresh: label loss only.
  fresh = objective(dict(batch, guidance_weight=np.zeros(2, np.float32)), outputs,
                    tf.constant(0, tf.int64))
  assert float(fresh["kd"]) == 0.0
  np.testing.assert_allclose(float(fresh["total"]), 0.7 * cross_entropy(), rtol=1e-6)
  # Weights of one are the plain mean.
  ones = objective(dict(batch, guidance_weight=np.ones(2, np.float32)), outputs,
                   tf.constant(0, tf.int64))
  np.testing.assert_allclose(float(ones["kd"]), 4 * kl(2.0), rtol=1e-5)


def test_ctc_distill_runs_over_the_frames_both_sides_have():
  rng = np.random.default_rng(3)
  student = rng.normal(size=(2, 6, 4)).astype(np.float32)
  teacher = rng.normal(size=(2, 7, 4)).astype(np.float32)  # one frame more
  batch = {"labels": np.array([[1, 2], [3, 0]], np.int32),
           "label_length": np.array([2, 1], np.int32),
           "guidance_logits": teacher, "guidance_frames": np.array([7, 4], np.int32)}
  outputs = {"logits": student, "logit_frames": np.array([6, 5], np.int32)}
  config = config_lib.load(None, ["task=ctc", "mode=distill", "distill.temperature=2",
                                  "distill.alpha=0.5"])
  terms = objectives.for_config(config)(batch, outputs, tf.constant(0, tf.int64))
  # Valid frames: min of both counts, 6 and 4.
  t, s = log_softmax(teacher[:, :6] / 2), log_softmax(student / 2)
  frame_kl = (np.exp(t) * (t - s)).sum(-1)
  expected_kd = 4 * np.concatenate([frame_kl[0, :6], frame_kl[1, :4]]).mean()
  np.testing.assert_allclose(float(terms["kd"]), expected_kd, rtol=1e-5)
  assert int(terms["infeasible"]) == 0
  np.testing.assert_allclose(float(terms["total"]),
                             0.5 * float(terms["hard"]) + 0.5 * expected_kd, rtol=1e-5)


def test_fitnet_hint_and_stage_checks():
  config = config_lib.load(None, ["mode=fitnet", "fitnet.stage=1"])
  objective = objectives.for_config(config)
  student = np.ones((1, 3, 2), np.float32)
  teacher = np.zeros((1, 3, 2), np.float32)
  terms = objective({"guidance_hint": teacher, "guidance_frames": np.array([2])},
                    {"hint": student, "hint_frames": np.array([3])}, None)
  assert sorted(terms) == ["hint", "total"] and float(terms["total"]) == 1.0
  with pytest.raises(ValueError, match="one FitNet stage"):
    objectives.for_config(config_lib.load(None, ["mode=fitnet"]))
