"""FitNets: the hint regressor, the hint loss, both stages through the train loop."""
import json
import os

import numpy as np
import pytest

import kws_tf  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from conftest import TEACHER, run_module
from data_prep import guidance
from kws_tf import config as config_lib
from kws_tf import data, records
from kws_tf import model_dir as model_dir_lib
from kws_tf.distill import fitnet
from kws_tf.evaluation import report as report_lib
from kws_tf.models import registry
from kws_tf.training import fitnet_stages, loop

TINY_W2L = ["model.name=wav2letter", "model.params.filters=[16,16,16,24]",
            "model.params.widths=[5,3,3,1]", "model.params.strides=[2,1,1,1]",
            "model.params.dropouts=[0,0,0,0]"]
TINY_MOBILENET = ["model.name=mobilenet_v3_small", "model.params.minimalistic=true",
                  "model.params.alpha=0.25"]
RUN = ["mode=fitnet", "data.batch_size=8", "data.validation_fraction=0.3", "train.steps=2",
       "train.eval_every=2", "train.log_every=1", "fitnet.hint_steps=2"]


def _student(*overrides, task="kws", channels=39, classes=10):
  cfg = config_lib.load(None, list(overrides) + [f"task={task}"])
  return registry.build(cfg.model.name, task=task, num_channels=channels, num_classes=classes,
                        projection_dim=0, **cfg.model.params)


# ------------------------------------------------------------------ units
def test_alignment_pools_finer_frames_repeats_coarser_and_refuses_the_rest():
  assert fitnet.alignment(0.01, 0.02, "x") == ("pool", 2)
  assert fitnet.alignment(0.02, 0.02, "x") == ("pool", 1)
  assert fitnet.alignment(0.08, 0.02, "x") == ("repeat", 4)
  with pytest.raises(fitnet.FitNetError, match=r"conv1.*30 ms.*20 ms.*whole multiple"):
    fitnet.alignment(0.03, 0.02, "conv1")


def test_hint_loss_is_the_mse_over_common_valid_frames():
  rng = np.random.default_rng(0)
  student = rng.normal(size=(2, 6, 3)).astype(np.float32)
  teacher = rng.normal(size=(2, 5, 3)).astype(np.float32)
  student_frames, teacher_frames = np.array([6, 2]), np.array([4, 5])
  # Example 0: 4 common valid frames; example 1: 2. Padding values do not count.
  expected = np.concatenate([((student[0, :4] - teacher[0, :4]) ** 2).ravel(),
                             ((student[1, :2] - teacher[1, :2]) ** 2).ravel()]).mean()
  loss = fitnet.hint_loss(student, student_frames, teacher, teacher_frames)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  poisoned = student.copy()
  poisoned[1, 2:] = np.nan
  assert np.isfinite(float(fitnet.hint_loss(poisoned, student_frames, teacher,
                                            teacher_frames)))
  # The gradient reaches the student, not the teacher.
  s, t = tf.Variable(student), tf.Variable(teacher)
  with tf.GradientTape() as tape:
    value = fitnet.hint_loss(s, student_frames, t, teacher_frames)
  grad_s, grad_t = tape.gradient(value, [s, t])
  assert grad_t is None and np.abs(grad_s.numpy()).sum() > 0
  assert np.all(grad_s.numpy()[1, 2:] == 0)


def test_kd_weight_anneals_linearly():
  weights = [float(fitnet.kd_weight(step, 5, 4.0, 1.0)) for step in range(7)]
  np.testing.assert_allclose(weights, [4.0, 3.25, 2.5, 1.75, 1.0, 1.0, 1.0])


def test_default_guided_layer_is_the_middle_block():
  w2l = _student(*TINY_W2L)
  assert fitnet.block_outputs(w2l) == ["conv0_relu", "conv1_relu", "conv2_relu", "conv3_relu"]
  assert fitnet.default_guided_layer(w2l) == "conv1_relu"
  mobilenet = _student(*TINY_MOBILENET)
  blocks = fitnet.block_outputs(mobilenet)
  assert len(blocks) == 11 and all(b.startswith(f"block{i}_") for i, b in enumerate(blocks))
  assert fitnet.default_guided_layer(mobilenet) == blocks[5]
  with pytest.raises(fitnet.FitNetError, match="has no layer 'conv9'.*conv0_relu"):
    fitnet.guided_output(w2l, "conv9")
  with pytest.raises(fitnet.FitNetError, match="must give"):
    fitnet.guided_output(w2l, "pool")


@pytest.mark.parametrize("overrides, stride, kind, factor", [
    (TINY_W2L, 2, "pool", 1), (TINY_MOBILENET, 16, "repeat", 8)])
def test_hint_model_aligns_the_guided_layer_to_20ms_frames_and_shares_weights(
    overrides, stride, kind, factor):
  student = _student(*overrides)
  hints = {"hint_layer": 1, "hint_splits": ["train"], "hint_dim": 7,
           "hint_frame_seconds": 0.02}
  plan = fitnet.plan(student, "", 0.01, hints)
  assert (plan["stride"], plan["alignment"], plan["factor"]) == (stride, kind, factor)
  model = fitnet.build_hint_model(student, plan)
  num_frames = np.array([101, 64], np.int32)
  features = np.random.default_rng(1).normal(size=(2, 101, 39)).astype(np.float32)
  out = model({"features": features, "num_frames": num_frames}, training=False)
  expected_frames = -(-num_frames // 2)  # ceil to 20 ms frames
  if kind == "repeat":
    expected_frames = -(-num_frames // stride) * factor
  np.testing.assert_array_equal(out["hint_frames"].numpy(), expected_frames)
  assert out["hint"].shape[-1] == 7 and out["hint"].shape[1] >= expected_frames.max()
  # The guided part of the student is the hint model's: one set of weights.
  guided = {id(v) for v in model.trainable_variables}
  assert {id(v) for v in student.get_layer(plan["guided_layer"]).trainable_variables} <= guided
  assert not {id(v) for v in student.get_layer("logits").trainable_variables} & guided


# ------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def kws_teacher_guidance(kws_train_records, tmp_path_factory):
  """A tiny trained KWS teacher's logits and its layer-1 hints."""
  root = tmp_path_factory.mktemp("fitnet_kws")
  teacher_dir = str(root / "teacher")
  loop.Trainer(config_lib.load(None, TEACHER), teacher_dir, kws_train_records).run()
  logits, hints = str(root / "logits"), str(root / "hints")
  guidance.create_guidance(teacher_dir, kws_train_records, logits)
  guidance.create_guidance(teacher_dir, kws_train_records, hints, kind="hints", up_to=1)
  return logits, hints


def _hint_error(model, records_dir, hints_dir):
  meta = records.load_metadata(records_dir)
  ds = data.make_dataset(records_dir, "mfcc", "train", batch_size=16,
                         guidance=data.open_guidance(hints_dir, meta))
  total = count = 0.0
  for batch in ds:
    out = model({"features": batch["features"], "num_frames": batch["num_frames"]},
                training=False)
    t, c = fitnet.hint_error_sums(out["hint"], out["hint_frames"], batch["guidance_hint"],
                                  batch["guidance_frames"])
    total, count = total + float(t), count + float(c)
  return total / count


def test_stage1_reduces_the_hint_loss_and_stage2_starts_from_its_weights(
    kws_train_records, kws_teacher_guidance, tmp_path):
  logits_dir, hints_dir = kws_teacher_guidance
  model_dir = str(tmp_path / "fitnet")
  config = config_lib.load(None, TINY_W2L + RUN + [
      "fitnet.hint_steps=40", "optimizer.warmup_steps=0", "optimizer.learning_rate=3e-3",
      "fitnet.stage=1", "train.eval_every=20"])
  results = fitnet_stages.train(config, model_dir, kws_train_records, logits_dir, hints_dir)
  stage1 = os.path.join(model_dir, fitnet.STAGE1_DIR)
  plan = records.read_json(os.path.join(stage1, fitnet.SPEC_FILE))
  assert plan["guided_layer"] == "conv1_relu" and plan["hint_dim"] == 32
  assert plan["hint_layer"] == 1 and results["validation_metric"] == "hint"
  assert np.isfinite(results["test"]["hint"])

  # The stage-1 model at its initial weights (same seed) against its best weights.
  spec = model_dir_lib.read_spec(stage1)
  keras.utils.set_random_seed(0)
  initial = fitnet.build_hint_model(model_dir_lib.build_model(spec), plan)
  before = _hint_error(initial, kws_train_records, hints_dir)
  student = model_dir_lib.build_model(spec)
  trained = fitnet.build_hint_model(student, plan)
  best = tf.train.latest_checkpoint(os.path.join(stage1, "best"))
  tf.train.Checkpoint(model=trained).restore(best).assert_existing_objects_matched()
  after = _hint_error(trained, kws_train_records, hints_dir)
  assert after < 0.7 * before, (before, after)

  # Stage 2 alone, at a learning rate far below float32's resolution of the weights (it
  # must be > 0; one Adam step moves a weight by about 1e-30, which rounds away): its
  # kernels are stage 1's.
  stage2 = config_lib.load(None, TINY_W2L + RUN + ["fitnet.stage=2", "train.steps=1",
                                                   "optimizer.learning_rate=1e-30"])
  results = fitnet_stages.train(stage2, model_dir, kws_train_records, logits_dir, None)
  assert results["fitnet"]["initialised_from"] == best
  final = model_dir_lib.load_trained_model(model_dir, "last")
  for name in ("conv0", "conv1"):
    np.testing.assert_array_equal(final.get_layer(name).kernel.numpy(),
                                  student.get_layer(name).kernel.numpy())
    assert not np.allclose(final.get_layer(name).kernel.numpy(),
                           initial.get_layer(name).kernel.numpy())


def test_fitnet_both_stages_from_the_command_line(kws_train_records, kws_teacher_guidance,
                                                  tmp_path):
  logits_dir, hints_dir = kws_teacher_guidance
  model_dir = str(tmp_path / "cli")
  overrides = [f"--override={o}" for o in TINY_W2L + RUN if not o.startswith("mode=")]
  result = run_module("kws_tf.bin.train", "--mode=fitnet", f"--model_dir={model_dir}",
                      f"--data_dir={kws_train_records}", f"--guidance_dir={logits_dir}",
                      f"--hints_dir={hints_dir}", *overrides)
  assert "FitNet stage 2 starts from stage 1's weights" in result.stderr + result.stdout
  results = json.load(open(os.path.join(model_dir, "results.json")))
  assert results["mode"] == "fitnet"
  # The test accuracy reported is that of stage 2's best weights on the test split.
  report = report_lib.evaluate_model(model_dir, kws_train_records, "test", beam_width=1,
                                     batch_size=32)
  assert results["test"]["accuracy"] == pytest.approx(report["accuracy"])
  assert results["fitnet"]["kd_weight_start"] == 4.0
  tags = {}
  for stage, folder in (("1", os.path.join(model_dir, fitnet.STAGE1_DIR)), ("2", model_dir)):
    tags[stage] = set()
    events = os.path.join(folder, "tensorboard", "train")
    for name in os.listdir(events):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(events, name)):
        tags[stage] |= {v.tag for v in event.summary.value}
  assert "loss/hint" in tags["1"] and {"loss/kd", "loss/kd_weight"} <= tags["2"]
  # Stage 2 needs a finished stage 1; stage 1 needs hints, not logits.
  alone = run_module("kws_tf.bin.train", "--mode=fitnet", "--fitnet_stage=2",
                     f"--model_dir={tmp_path / 'alone'}", f"--data_dir={kws_train_records}",
                     f"--guidance_dir={logits_dir}", *overrides, check=False)
  assert alone.returncode == 2 and "no finished FitNet stage 1" in alone.stderr
  wrong = run_module("kws_tf.bin.train", "--mode=fitnet", "--fitnet_stage=1",
                     f"--model_dir={tmp_path / 'wrong'}", f"--data_dir={kws_train_records}",
                     f"--hints_dir={logits_dir}", *overrides, check=False)
  assert wrong.returncode == 2 and "holds no frame hints" in wrong.stderr


def test_guided_layer_at_an_incompatible_frame_rate_is_refused(kws_train_records,
                                                               kws_teacher_guidance, tmp_path):
  _, hints_dir = kws_teacher_guidance
  config = config_lib.load(None, TINY_W2L + RUN + ["fitnet.stage=1",
                                                   "model.params.strides=[3,1,1,1]"])
  with pytest.raises(loop.TrainingError, match="30 ms and the hint a frame every 20 ms"):
    fitnet_stages.train(config, str(tmp_path / "m"), kws_train_records, None, hints_dir)


def test_fitnet_ctc_mobilenet_student(ctc_train_records, tmp_path):
  """The other task and the other student family: a ctc MobileNetV3 through both stages."""
  teacher_dir = str(tmp_path / "teacher")
  loop.Trainer(config_lib.load(None, TEACHER + ["task=ctc", "data.validation_split=test",
                                                "data.batch_size=4"]),
               teacher_dir, ctc_train_records).run()
  logits, hints = str(tmp_path / "logits"), str(tmp_path / "hints")
  guidance.create_guidance(teacher_dir, ctc_train_records, logits)
  guidance.create_guidance(teacher_dir, ctc_train_records, hints, kind="hints", up_to=2)
  config = config_lib.load(None, TINY_MOBILENET + RUN + [
      "task=ctc", "data.batch_size=4", "data.validation_split=test"])
  results = fitnet_stages.train(config, str(tmp_path / "student"), ctc_train_records, logits,
                                hints)
  plan = records.read_json(os.path.join(tmp_path, "student", fitnet.STAGE1_DIR,
                                        fitnet.SPEC_FILE))
  # ctc MobileNetV3 keeps 20 ms frames: no time alignment needed.
  assert (plan["stride"], plan["alignment"], plan["factor"]) == (2, "pool", 1)
  assert np.isfinite(results["test"]["loss"]) and "cer" in results["test"]
