"""The one custom train loop: outputs, exact resume after a kill, NaN stop, precision, strategies."""
import dataclasses
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import kws_tf  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from conftest import REPO, run_module
from kws_tf import config as config_lib
from kws_tf import model_dir as model_dir_lib
from kws_tf import records
from kws_tf.evaluation import report as report_lib
from kws_tf.training import loop

TINY_KWS = ["model.name=wav2letter_kws_tiny", "data.batch_size=8", "data.eval_batch_size=32",
            "optimizer.warmup_steps=2", "train.log_every=2", "train.early_stopping_patience=0"]


@pytest.fixture(autouse=True)
def float32_policy():
  yield
  keras.mixed_precision.set_global_policy("float32")


def _config(*overrides):
  return config_lib.load(None, [*TINY_KWS, *overrides])


def _events(folder):
  """tag -> list of (step, value) from the TensorBoard event files in ``folder``."""
  found = {}
  for path in glob.glob(os.path.join(folder, "events.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
            else value.simple_value
        found.setdefault(value.tag, []).append((event.step, number))
  return found


def _weights(model_dir, which="last"):
  return [v.numpy() for v in model_dir_lib.load_trained_model(model_dir, which).variables]


def test_standard_kws_run_writes_everything(kws_train_records, tmp_path):
  model_dir = str(tmp_path / "run")
  config = _config("train.steps=8", "train.eval_every=4", "train.checkpoint_every=4")
  results = loop.Trainer(config, model_dir, kws_train_records).run()

  assert results["steps"] == 8 and results["stop_reason"] == "finished"
  # The test accuracy reported is that of the best weights on the test split.
  report = report_lib.evaluate_model(model_dir, kws_train_records, "test", beam_width=1,
                                     batch_size=32)
  assert results["test_split"] == "test" and report["num_examples"] == 12
  assert results["test"]["accuracy"] == pytest.approx(report["accuracy"])
  assert results["parameters"] > 0 and results["train_examples_per_second"] > 0
  assert json.load(open(os.path.join(model_dir, "results.json")))["steps"] == 8
  history = [json.loads(line) for line in open(os.path.join(model_dir, "history.jsonl"))]
  assert [h["step"] for h in history] == [4, 8]
  best = json.load(open(os.path.join(model_dir, "best", "best.json")))
  assert best["metric"] == "accuracy" and best["step"] in (4, 8)
  assert sorted(os.path.basename(p) for p in glob.glob(f"{model_dir}/checkpoints/*.index")) == \
      ["ckpt-4.index", "ckpt-8.index"]
  assert config_lib.load(os.path.join(model_dir, "config.yaml")) == config

  train = _events(os.path.join(model_dir, "tensorboard", "train"))
  for tag in ("loss/hard", "loss/total", "learning_rate", "grad_norm", "examples_per_second"):
    assert [step for step, _ in train[tag]] == [2, 4, 6, 8], tag
  # Warm-up over 2 steps then cosine: the learning rate falls after step 2.
  rates = [value for _, value in train["learning_rate"]]
  assert rates[0] == pytest.approx(1e-3, rel=1e-5) and rates[-1] < rates[1] < rates[0]
  validation = _events(os.path.join(model_dir, "tensorboard", "validation"))
  assert [step for step, _ in validation["accuracy"]] == [4, 8]

  # The model dir alone rebuilds the best model.
  model = model_dir_lib.load_trained_model(model_dir)
  assert model.count_params() == results["parameters"]


def test_changed_config_is_refused(kws_train_records, tmp_path):
  model_dir = str(tmp_path / "run")
  loop.Trainer(_config("train.steps=2", "train.eval_every=2"), model_dir,
               kws_train_records).run()
  with pytest.raises(loop.TrainingError, match="differs in: optimizer.learning_rate"):
    loop.Trainer(_config("train.steps=2", "train.eval_every=2", "optimizer.learning_rate=0.1"),
                 model_dir, kws_train_records).run()
  # A config.yaml written before a field existed (so without it) holds its default: accepted.
  path = os.path.join(model_dir, "config.yaml")
  text = open(path).read()
  assert "  normalize: true\n" in text
  open(path, "w").write(text.replace("  normalize: true\n", ""))
  again = loop.Trainer(_config("train.steps=2", "train.eval_every=2"), model_dir,
                       kws_train_records).run()
  assert again["steps"] == 2


def _other_records(records_dir, out):
  """A copy of ``records_dir`` whose metadata names another data fingerprint."""
  shutil.copytree(records_dir, out)
  metadata = records.load_metadata(str(out))
  records.write_metadata(str(out), dataclasses.replace(metadata, fingerprint="f" * 64))
  return str(out)


def test_model_dir_of_other_records_is_refused(kws_train_records, tmp_path):
  """A model dir is bound to the data fingerprint of its model.json: resuming it
  (or training it again) on other records is refused, naming both fingerprints,
  and model.json keeps the records it was trained on."""
  model_dir = str(tmp_path / "run")
  config = _config("train.steps=4", "train.eval_every=2", "train.checkpoint_every=2")
  loop.Trainer(config, model_dir, kws_train_records).run(stop_after=2)
  first = model_dir_lib.read_spec(model_dir)
  assert first.data_fingerprint == records.load_metadata(kws_train_records).fingerprint
  other = _other_records(kws_train_records, tmp_path / "other")
  with pytest.raises(loop.TrainingError) as error:
    loop.Trainer(config, model_dir, other).run()
  message = str(error.value)
  assert "\n" not in message
  assert f"{model_dir} was trained on other data: its data fingerprint (model.json) is " \
      f"{first.data_fingerprint}, the records' fingerprint in {other} is {'f' * 64}" in message
  assert model_dir_lib.read_spec(model_dir) == first
  assert [os.path.basename(p) for p in glob.glob(f"{model_dir}/checkpoints/*.index")] == \
      ["ckpt-2.index"]


def test_model_json_missing_next_to_config_yaml_is_written_again(kws_train_records, tmp_path):
  """A run killed between config.yaml and model.json (or a model.json removed)
  gets model.json back on the next run, before any checkpoint."""
  model_dir = str(tmp_path / "run")
  config = _config("train.steps=4", "train.eval_every=2", "train.checkpoint_every=2")
  loop.Trainer(config, model_dir, kws_train_records).run(stop_after=2)
  spec = model_dir_lib.read_spec(model_dir)
  os.remove(model_dir_lib.spec_path(model_dir))
  loop.Trainer(config, model_dir, kws_train_records).run()
  assert model_dir_lib.read_spec(model_dir) == spec
  assert model_dir_lib.load_trained_model(model_dir).count_params() > 0


def test_truncated_checkpoint_is_a_one_line_error_naming_its_files(kws_train_records, tmp_path):
  """A truncated .data file of the latest checkpoint stops the resume with one
  line naming the checkpoint's files and TensorFlow's reason; removing them, as
  the line says, resumes from the checkpoint before it. A truncated best
  checkpoint is a CheckpointError for every reader of the model dir."""
  model_dir = str(tmp_path / "run")
  config = _config("train.steps=6", "train.eval_every=2", "train.checkpoint_every=2")
  loop.Trainer(config, model_dir, kws_train_records).run(stop_after=4)
  prefix = os.path.join(model_dir, "checkpoints", "ckpt-4")
  data_file = prefix + ".data-00000-of-00001"
  os.truncate(data_file, os.path.getsize(data_file) // 2)
  with pytest.raises(loop.TrainingError) as error:
    loop.Trainer(config, model_dir, kws_train_records).run()
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"checkpoint {prefix} (ckpt-4.data-00000-of-00001, ckpt-4.index) "
                            "is truncated or corrupt: ")
  assert f"remove {prefix}.* and run again" in message

  for path in glob.glob(prefix + ".*"):
    os.remove(path)
  results = loop.Trainer(config, model_dir, kws_train_records).run()
  assert results["steps"] == 6

  best = tf.train.latest_checkpoint(os.path.join(model_dir, "best"))
  os.truncate(best + ".data-00000-of-00001", 10)
  with pytest.raises(model_dir_lib.CheckpointError,
                     match=f"checkpoint {re.escape(best)} .* is truncated or corrupt: .*; "
                           "restore .* from a copy, or train it again"):
    model_dir_lib.load_trained_model(model_dir)


def test_resume_finds_the_records_however_their_folder_is_spelled(kws_train_records, tmp_path,
                                                                   monkeypatch):
  """A run started on a relative records path resumes when given the absolute one."""
  model_dir = str(tmp_path / "run")
  config = _config("train.steps=6", "train.eval_every=2", "train.checkpoint_every=2")
  monkeypatch.chdir(os.path.dirname(kws_train_records))
  loop.Trainer(config, model_dir, os.path.basename(kws_train_records)).run(stop_after=4)
  monkeypatch.chdir(tmp_path)
  assert loop.Trainer(config, model_dir, kws_train_records).run()["steps"] == 6


def test_resume_after_the_records_moved_names_the_cause_and_keeps_the_checkpoint(
    kws_train_records, tmp_path):
  """Records moved after a checkpoint: the resume stops with one line that says the
  input pipeline's files are not there, and does not ask to remove the checkpoint."""
  records = str(tmp_path / "records")
  shutil.copytree(kws_train_records, records)
  model_dir = str(tmp_path / "run")
  config = _config("train.steps=6", "train.eval_every=2", "train.checkpoint_every=2")
  loop.Trainer(config, model_dir, records).run(stop_after=4)
  moved = str(tmp_path / "moved")
  os.rename(records, moved)
  with pytest.raises(loop.TrainingError) as error:
    loop.Trainer(config, model_dir, moved).run()
  message = str(error.value)
  assert "\n" not in message
  assert "input pipeline's position in record files that are not there" in message
  assert records in message and "remove" not in message
  assert os.path.exists(os.path.join(model_dir, "checkpoints", "ckpt-4.index"))
  os.rename(moved, records)
  assert loop.Trainer(config, model_dir, records).run()["steps"] == 6


RESUME = ["train.steps=12", "train.eval_every=4", "train.checkpoint_every=3",
          "data.spec_augment=true", "model.params.dropouts=[0.3,0.3,0.3,0.3,0.3,0.3]",
          "data.shuffle_buffer=64"]


def test_resume_after_kill_is_exact(kws_train_records, tmp_path):
  """A run killed (SIGKILL) after a checkpoint and resumed ends with the same weights."""
  whole = str(tmp_path / "whole")
  loop.Trainer(_config(*RESUME), whole, kws_train_records).run()

  killed = str(tmp_path / "killed")
  args = [sys.executable, "-m", "kws_tf.bin.train", f"--data_dir={kws_train_records}",
          f"--model_dir={killed}"] + [f"--override={o}" for o in TINY_KWS + RESUME]
  process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  # The manager's state file names a checkpoint only once it is complete.
  while tf.train.latest_checkpoint(os.path.join(killed, "checkpoints")) is None:
    assert process.poll() is None and time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  done = glob.glob(os.path.join(killed, "checkpoints", "ckpt-12.index"))
  assert not done, "the run finished before it was killed; nothing was resumed"
  resumed = run_module("kws_tf.bin.train", *args[3:])
  assert "resuming from" in resumed.stderr + resumed.stdout

  for a, b in zip(_weights(whole), _weights(killed)):
    np.testing.assert_array_equal(a, b)
  # The early-stopping state and the best checkpoint agree too.
  assert json.load(open(f"{whole}/best/best.json")) == json.load(open(f"{killed}/best/best.json"))


def test_in_process_stop_and_resume_is_exact(kws_train_records, tmp_path):
  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  loop.Trainer(_config(*RESUME), whole, kws_train_records).run()
  loop.Trainer(_config(*RESUME), parts, kws_train_records).run(stop_after=6)
  loop.Trainer(_config(*RESUME), parts, kws_train_records).run()
  for a, b in zip(_weights(whole), _weights(parts)):
    np.testing.assert_array_equal(a, b)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(kws_train_records, tmp_path):
  model_dir = str(tmp_path / "run")
  config = _config("train.steps=20", "train.checkpoint_every=1", "train.eval_every=100",
                   "optimizer.learning_rate=1e30", "optimizer.warmup_steps=0",
                   "optimizer.clip_norm=0", "model.params.batch_norm=false")
  with pytest.raises(loop.TrainingError, match="not finite at step") as error:
    loop.Trainer(config, model_dir, kws_train_records).run()
  step = int(str(error.value).split("not finite at step ")[1].split()[0])
  saved = sorted(int(p.split("ckpt-")[1].split(".")[0])
                 for p in glob.glob(f"{model_dir}/checkpoints/ckpt-*.index"))
  assert saved and max(saved) == step - 1
  assert f"ckpt-{step - 1}" in str(error.value)
  # The kept checkpoint holds finite weights.
  assert all(np.isfinite(w).all() for w in _weights(model_dir))


# Trains in a fresh process (XLA reads XLA_FLAGS once, logical devices are set before
# TensorFlow starts) and prints what the test checks as JSON on the last line.
_SUBPROCESS_TRAINING = """
import json, sys
import kws_tf
import tensorflow as tf
from kws_tf import config as config_lib
from kws_tf import model_dir as model_dir_lib
from kws_tf.training import loop

records, root, replicas = sys.argv[1], sys.argv[2], int(sys.argv[3])
if replicas > 1:
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
out = {}
for name, overrides in json.loads(sys.argv[4]).items():
  model_dir = f"{root}/{name}"
  trainer = loop.Trainer(config_lib.load(None, overrides), model_dir, records)
  results = trainer.run()
  model = trainer.model
  channels = model_dir_lib.read_spec(model_dir).num_channels
  logits = model({"features": tf.zeros([1, 8, channels]), "num_frames": tf.constant([8])},
                 training=False)["logits"]
  last = model_dir_lib.load_trained_model(model_dir, "last")
  out[name] = {
      "replicas": trainer._strategy.num_replicas_in_sync,
      "variable_dtypes": sorted({v.dtype.name for v in model.variables}),
      "compute_dtypes": {l.name: l.compute_dtype for l in model.layers if l.weights},
      "logits_dtype": logits.dtype.name, "loss": results["test"]["loss"],
      "weights": [w.tolist() for w in last.get_weights()]}
print(json.dumps(out))
"""


def _train_in_subprocess(records, root, runs, replicas=1, env=None):
  """{run name: what _SUBPROCESS_TRAINING reports} of each run's TINY_KWS overrides."""
  result = subprocess.run(
      [sys.executable, "-c", _SUBPROCESS_TRAINING, records, str(root), str(replicas),
       json.dumps({name: TINY_KWS + list(overrides) for name, overrides in runs.items()})],
      cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


def test_mixed_bfloat16_and_xla_run_on_cpu(kws_train_records, tmp_path):
  """The policy is in effect (float32 variables, bfloat16 layer computation, float32
  logits) and XLA compiled the train step (it dumps the step's HLO module)."""
  dump = tmp_path / "xla"
  run = _train_in_subprocess(
      kws_train_records, tmp_path, {"run": ["train.steps=3", "train.eval_every=3",
                                            "train.mixed_precision=mixed_bfloat16",
                                            "train.jit_compile=true"]},
      env={"XLA_FLAGS": f"--xla_dump_to={dump}"})["run"]
  # Every layer computes in bfloat16 but the classifier, float32 by design (heads).
  assert run["variable_dtypes"] == ["float32"] and run["compute_dtypes"].pop("logits") == "float32"
  assert len(run["compute_dtypes"]) == 12 and set(run["compute_dtypes"].values()) == {"bfloat16"}
  assert run["logits_dtype"] == "float32" and np.isfinite(run["loss"])
  dumped = os.listdir(dump) if os.path.isdir(dump) else []
  assert any("compiled_step" in name for name in dumped), f"no XLA module of the step: {dumped}"


def test_mixed_float16_uses_loss_scaling(kws_train_records, tmp_path):
  trainer = loop.Trainer(_config("train.steps=2", "train.eval_every=2",
                                 "train.mixed_precision=mixed_float16"),
                         str(tmp_path / "run"), kws_train_records)
  results = trainer.run()
  assert isinstance(trainer.optimizer, keras.mixed_precision.LossScaleOptimizer)
  assert {v.dtype.name for v in trainer.model.variables} == {"float32"}
  compute = {layer.name: layer.compute_dtype for layer in trainer.model.layers if layer.weights}
  assert compute.pop("logits") == "float32" and set(compute.values()) == {"float16"}
  assert np.isfinite(results["test"]["loss"])


def test_mirrored_replicas_clip_the_summed_gradient_like_one_replica(kws_train_records, tmp_path):
  """Two replicas, each on half of the global batch, make the update of one replica on
  the whole batch, gradient clipping included: the clip (bound at every step) applies to
  the gradient summed over the replicas, not to each replica's half (no batch norm or
  dropout: both see a replica's batch)."""
  exact = ["train.steps=4", "train.eval_every=4", "train.log_every=1",
           "model.params.batch_norm=false", "model.params.dropouts=[0,0,0,0,0,0]",
           "optimizer.clip_norm=0.05"]
  runs = _train_in_subprocess(kws_train_records, tmp_path,
                              {"mirrored": exact + ["train.strategy=mirrored"], "one": exact},
                              replicas=2)
  assert runs["mirrored"]["replicas"] == 2 and runs["one"]["replicas"] == 1
  train = {name: _events(str(tmp_path / name / "tensorboard" / "train")) for name in runs}
  assert all(norm > 0.5 for _, norm in train["one"]["grad_norm"])  # the clip binds
  for a, b in zip(runs["mirrored"]["weights"], runs["one"]["weights"]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  for tag in ("loss/total", "grad_norm"):
    assert [step for step, _ in train["mirrored"][tag]] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in train["mirrored"][tag]],
                               [v for _, v in train["one"][tag]], rtol=1e-5)
  assert runs["mirrored"]["loss"] == pytest.approx(runs["one"]["loss"], rel=1e-5)


def test_batch_size_not_dividing_among_replicas_is_refused(kws_train_records, tmp_path):
  """A global batch of 8 cannot be cut into 3 equal replica slices: one line naming the
  key and the replica count, before anything is written."""
  result = run_module("kws_tf.bin.train", f"--data_dir={kws_train_records}",
                      f"--model_dir={tmp_path}/run", "--cpu_replicas=3",
                      *[f"--override={o}" for o in TINY_KWS], "--override=train.strategy=mirrored",
                      check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: data.batch_size=8 does not divide among the 3 replicas of the run; "
      "use a multiple of 3")
  assert not os.path.exists(f"{tmp_path}/run")


def test_early_stopping_stops_on_a_flat_validation_metric_and_keeps_the_best(
    kws_train_records, tmp_path):
  """No learning (learning rate 1e-30: its steps round away on float32 weights): the
  accuracy of the first validation is never beaten, so patience 2 runs out at the third
  validation, long before the configured steps."""
  model_dir = str(tmp_path / "run")
  results = loop.Trainer(_config("train.steps=40", "train.eval_every=2",
                                 "train.early_stopping_patience=2", "optimizer.learning_rate=1e-30"),
                         model_dir, kws_train_records).run()
  assert results["stop_reason"] == "early stopping" and results["steps"] == 6
  assert results["best_step"] == 2 and results["best_checkpoint"].endswith("best/ckpt-2")
  history = [json.loads(line) for line in open(os.path.join(model_dir, "history.jsonl"))]
  assert [h["step"] for h in history] == [2, 4, 6]
  assert json.load(open(os.path.join(model_dir, "best", "best.json")))["step"] == 2
  assert sorted(os.path.basename(p) for p in glob.glob(f"{model_dir}/best/*.index")) == [
      "ckpt-2.index"]
  # The last checkpoint is the stopping step; a rerun does not train on.
  assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-6")
  again = loop.Trainer(_config("train.steps=40", "train.eval_every=2",
                               "train.early_stopping_patience=2", "optimizer.learning_rate=1e-30"),
                       model_dir, kws_train_records).run()
  assert again["steps"] == 6 and again["stop_reason"] == "early stopping"


def test_ctc_student_trains_and_reports_error_rates(ctc_train_records, tmp_path):
  config = config_lib.load(None, [
      "task=ctc", "model.name=wav2letter", "model.params.filters=[32,32]",
      "model.params.widths=[5,3]", "model.params.strides=[2,1]", "model.params.dropouts=[0,0]",
      "data.batch_size=4", "train.steps=4", "train.eval_every=2", "train.checkpoint_every=2",
      "data.validation_split=test"])
  model_dir = str(tmp_path / "run")
  results = loop.Trainer(config, model_dir, ctc_train_records).run()
  assert results["validation_metric"] == "cer"
  assert set(results["test"]) >= {"cer", "wer", "loss"}

  report = report_lib.evaluate_model(model_dir, ctc_train_records, "test", beam_width=4,
                                   batch_size=4)
  assert report["cer"] == pytest.approx(results["test"]["cer"])
  assert {"beam_cer", "beam_wer"} <= set(report) and report["beam_width"] == 4
  assert report["examples"][0]["reference"]
  assert "| wav2letter (run) |" in report_lib.side_by_side([report])


def test_empty_validation_set_is_a_clear_error(ctc_train_records, tmp_path):
  config = config_lib.load(None, [
      "task=ctc", "model.name=wav2letter", "model.params.filters=[8]", "model.params.widths=[3]",
      "model.params.strides=[2]", "model.params.dropouts=[0]", "train.steps=1",
      "train.eval_every=1", "data.validation_fraction=0.0001"])
  with pytest.raises(loop.TrainingError, match="validation set .* is empty"):
    loop.Trainer(config, str(tmp_path / "run"), ctc_train_records).run()


def test_train_binary_reports_config_errors(kws_train_records, tmp_path):
  result = run_module("kws_tf.bin.train", f"--data_dir={kws_train_records}",
                      f"--model_dir={tmp_path}/run", "--override=train.stpes=3", check=False)
  assert result.returncode == 2
  assert "unknown config key 'train.stpes'" in result.stderr
  assert "Traceback" not in result.stderr


def test_train_binary_refuses_a_negative_learning_rate_before_any_work(kws_train_records,
                                                                       tmp_path):
  result = run_module("kws_tf.bin.train", f"--data_dir={kws_train_records}",
                      f"--model_dir={tmp_path}/run", "--override=optimizer.learning_rate=-1e-3",
                      check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == \
      "error: optimizer.learning_rate must be > 0; got -0.001"
  assert "Traceback" not in result.stderr
  assert not os.path.exists(f"{tmp_path}/run")


def _free_ports(count):
  """``count`` distinct free localhost ports (all held open while picking)."""
  import socket
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(("localhost", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


# Exact multi-worker training: no batch norm or dropout (each replica sees its slice),
# a gradient clip that binds (it must apply to the gradient summed over the workers).
MULTI_WORKER = ["train.steps=12", "train.eval_every=3", "train.checkpoint_every=3",
                "model.params.batch_norm=false", "model.params.dropouts=[0,0,0,0,0,0]",
                "optimizer.clip_norm=0.05", "data.shuffle_buffer=64"]


def _start_workers(records_dir, model_dir, run_dir):
  """Two local workers of one cluster (TF_CONFIG on free localhost ports) training into
  one ``model_dir``; worker i logs to ``run_dir/worker<i>.log`` and has ``run_dir/tmp<i>``
  as its temporary dir."""
  cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
  processes = []
  for index in range(2):
    os.makedirs(f"{run_dir}/tmp{index}")
    env = dict(os.environ, TMPDIR=f"{run_dir}/tmp{index}", TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))
    args = [sys.executable, "-m", "kws_tf.bin.train", f"--data_dir={records_dir}",
            f"--model_dir={model_dir}", "--override=train.strategy=multi_worker",
            *[f"--override={o}" for o in TINY_KWS + MULTI_WORKER]]
    with open(f"{run_dir}/worker{index}.log", "w") as log:
      processes.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=log,
                                        stderr=subprocess.STDOUT))
  return processes


def test_two_workers_write_once_match_one_worker_and_resume_after_a_kill(
    kws_train_records, tmp_path):
  """Two local workers sharing a model dir: a worker SIGKILLed mid-run and the job run
  again resumes from the chief's last checkpoint; the chief ends with the weights of one
  worker on the same global batch; only the chief wrote the model dir (one TensorBoard
  file per run, one history line per validation, the other worker's temporary dir gone)."""
  single = str(tmp_path / "single")
  loop.Trainer(_config(*MULTI_WORKER), single, kws_train_records).run()

  model_dir = str(tmp_path / "workers")
  processes = _start_workers(kws_train_records, model_dir, tmp_path / "killed")
  deadline = time.time() + 300
  try:
    # The manager's state file names a checkpoint only once it is complete.
    while tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")) is None:
      assert all(p.poll() is None for p in processes) and time.time() < deadline, \
          open(tmp_path / "killed" / "worker0.log").read()[-3000:]
      time.sleep(0.02)
    # Worker 1 dies; the chief cannot pass the step's all-reduce without it.
    processes[1].send_signal(signal.SIGKILL)
  finally:
    for process in processes:
      process.kill()
      process.wait()
  last = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  killed_at = int(last.rsplit("-", 1)[1])
  assert killed_at < 12, "the run finished before the kill; nothing was resumed"

  processes = _start_workers(kws_train_records, model_dir, tmp_path / "again")
  for index, process in enumerate(processes):
    try:
      process.wait(timeout=300)
    finally:
      process.kill()
    output = open(tmp_path / "again" / f"worker{index}.log").read()
    assert process.returncode == 0, output[-3000:]
    assert f"resuming from {last} (step {killed_at})" in output

  for a, b in zip(_weights(model_dir), _weights(single)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert json.load(open(f"{model_dir}/results.json"))["steps"] == 12
  assert sorted(os.listdir(model_dir)) == ["best", "checkpoints", "config.yaml",
                                           "history.jsonl", "model.json", "results.json",
                                           "tensorboard"]
  for writer in ("train", "validation"):  # one file per run of the chief
    assert len(glob.glob(f"{model_dir}/tensorboard/{writer}/events.*")) == 2
  steps = [json.loads(line)["step"] for line in open(f"{model_dir}/history.jsonl")]
  assert sorted(set(steps)) == [3, 6, 9, 12] and len(steps) <= 5
  for index in range(2):
    assert glob.glob(f"{tmp_path}/again/tmp{index}/kws_tf_worker_*") == []
