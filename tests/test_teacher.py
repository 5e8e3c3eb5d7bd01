"""Teachers: heads on the Whisper encoder, teacher training, guidance records and their join."""
import dataclasses
import json
import os

import numpy as np
import pytest

import kws_tf  # noqa: F401
import tensorflow as tf
from transformers import WhisperConfig, WhisperForConditionalGeneration

from conftest import TEACHER, run_module
from data_prep import guidance
from kws_tf import config as config_lib
from kws_tf import augment, data, records
from kws_tf import model_dir as model_dir_lib
from kws_tf.evaluation import report as report_lib
from kws_tf.models import heads, registry, teacher, whisper
from kws_tf.training import loop

TINY_ENCODER = {"d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2,
                "encoder_ffn_dim": 64, "dropout": 0.0}


def _inputs(batch, frames, channels=80, seed=0):
  rng = np.random.default_rng(seed)
  return {"features": tf.constant(rng.normal(size=(batch, frames, channels)), tf.float32),
          "num_frames": tf.constant([frames] * batch, tf.int32)}


@pytest.mark.parametrize("task, classes, pooling",
                         [("kws", 10, "mean"), ("kws", 10, "attention"), ("ctc", 30, "mean")])
def test_teacher_heads_follow_the_model_contract(task, classes, pooling):
  model = registry.build("whisper_teacher", task=task, num_channels=80, num_classes=classes,
                         encoder=TINY_ENCODER, hidden_sizes=(32, 16), ctc_hidden=16,
                         pooling=pooling)
  inputs = _inputs(2, 101)
  inputs["num_frames"] = tf.constant([101, 60])
  out = model(inputs)
  if task == "kws":
    assert out["logits"].shape == (2, classes) and out["projection"].shape == (2, 16)
  else:
    assert out["logits"].shape == (2, 51, classes)
    assert out["logit_frames"].numpy().tolist() == [51, 30]
    assert out["projection"].shape == (2, 51, 16)
  # Padding does not change the shorter example's output (masked attention and pooling).
  alone = model({"features": inputs["features"][1:, :60], "num_frames": tf.constant([60])})
  if task == "kws":
    np.testing.assert_allclose(out["logits"][1], alone["logits"][0], atol=1e-5)
  else:
    np.testing.assert_allclose(out["logits"][1, :30], alone["logits"][0], atol=1e-5)


def test_kws_teacher_is_encoder_mean_then_adaptation_layers():
  model = teacher.whisper_teacher(task="kws", num_channels=80, num_classes=10,
                                  encoder=TINY_ENCODER, hidden_sizes=(32, 16), dropout=0.0)
  inputs = _inputs(1, 40)
  hidden = model.get_layer("encoder")(inputs["features"])["last_hidden_state"].numpy()[0]
  x = hidden.mean(axis=0)
  for name in ("adapt_0", "adapt_1"):
    kernel, bias = model.get_layer(name).get_weights()
    x = np.maximum(x @ kernel + bias, 0)
  kernel, bias = model.get_layer("logits").get_weights()
  np.testing.assert_allclose(model(inputs)["logits"][0], x @ kernel + bias, atol=1e-5)


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
  """A tiny random Whisper checkpoint in the Hugging Face layout."""
  import torch
  torch.manual_seed(0)
  config = WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2,
                         decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, num_mel_bins=80, vocab_size=60,
                         max_source_positions=1500, max_target_positions=32, pad_token_id=1,
                         bos_token_id=2, eos_token_id=3, decoder_start_token_id=2)
  path = tmp_path_factory.mktemp("whisper") / "tiny"
  WhisperForConditionalGeneration(config).eval().save_pretrained(path)
  return str(path)


@pytest.mark.parametrize("top_k, trainable_blocks", [(None, 0), (1, 1)])
def test_checkpoint_teacher_is_frozen_by_default(hf_checkpoint, top_k, trainable_blocks):
  params = {} if top_k is None else {"trainable_blocks": top_k}
  model = registry.build("whisper_teacher", task="kws", num_channels=80, num_classes=10,
                         checkpoint=hf_checkpoint, hidden_sizes=(32, 16), **params)
  encoder = model.get_layer("encoder")
  reference = whisper.load_encoder(hf_checkpoint)
  def by_name(layer):
    return {w.name.split("/", 1)[1]: w.numpy() for w in layer.weights}
  loaded, expected_weights = by_name(encoder), by_name(reference)
  assert loaded.keys() == expected_weights.keys()
  for name, value in loaded.items():
    np.testing.assert_array_equal(value, expected_weights[name])
  trainable = {v.name.split("/")[1] for v in encoder.trainable_weights}
  expected = set() if trainable_blocks == 0 else {"layers_1", "layer_norm"}
  assert trainable == expected
  # The heads always train.
  assert any(v.name.startswith("adapt_0") for v in model.trainable_weights)


def test_pretrained_teacher_recipe_feeds_log_mel_as_whisper_computes_it(
    hf_checkpoint, kws_train_records, tmp_path):
  configs = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")
  checkpoint = [f"model.params.checkpoint={hf_checkpoint}"]
  # The from-scratch recipe standardises its features: not what a pretrained encoder takes.
  with pytest.raises(config_lib.ConfigError, match="set data.normalize=false"):
    config_lib.load(os.path.join(configs, "teacher_kws.yaml"), checkpoint)
  params = config_lib.load(os.path.join(configs, "teacher_kws.yaml"),
                           checkpoint + ["data.normalize=false"]).model.params
  with pytest.raises(ValueError, match="model.params.encoder=null"):
    registry.build("whisper_teacher", task="kws", num_channels=80, num_classes=10, **params)

  model_dir = str(tmp_path / "teacher")
  config = config_lib.load(os.path.join(configs, "teacher_kws_whisper.yaml"), checkpoint + [
      "model.params.hidden_sizes=[32,16]", "data.batch_size=8", "train.steps=2",
      "train.eval_every=2", "train.checkpoint_every=2", "data.validation_fraction=0.3"])
  loop.Trainer(config, model_dir, kws_train_records).run()
  spec = model_dir_lib.read_spec(model_dir)
  assert spec.normalization is None
  teacher_model = model_dir_lib.load_trained_model(model_dir)
  assert isinstance(teacher_model.get_layer("pool"), heads.AttentivePooling)
  assert teacher_model.get_layer("encoder").whisper_config["d_model"] == 32

  # Guidance runs the teacher on the log-mel records exactly as stored.
  out = str(tmp_path / "guidance")
  guidance.create_guidance(model_dir, kws_train_records, out, kind="logits", dtype="float32",
                           batch_size=5)
  path = data.shard_paths(kws_train_records, "logmel", "test")[0]
  meta = records.load_metadata(kws_train_records)
  example = next(iter(data.records_dataset([path], "none").map(
      data.make_parser(meta, "logmel", normalize=False))))
  expected = teacher_model({"features": example["features"][None],
                            "num_frames": example["num_frames"][None]})["logits"][0]
  stored = _guidance_records(os.path.join(out, os.path.basename(path)))[0]
  np.testing.assert_allclose(np.frombuffer(stored["logits"].bytes_list.value[0], "<f4"),
                             expected, atol=1e-4)

  # Fine-tuned further with more blocks trained (--init_from; trainable_blocks and dropout
  # change which weights train, not which exist): at a learning rate far below the
  # weights' resolution, it keeps the weights it started from, and its top block trains.
  tuned_dir = str(tmp_path / "more_blocks")
  tuned = config_lib.load(os.path.join(configs, "teacher_kws_whisper.yaml"), checkpoint + [
      "model.params.hidden_sizes=[32,16]", "model.params.trainable_blocks=1",
      "model.params.dropout=0.3", "optimizer.learning_rate=1e-30", "data.batch_size=8",
      "train.steps=2", "train.eval_every=2", "data.validation_fraction=0.3"])
  results = loop.Trainer(tuned, tuned_dir, kws_train_records, init_from=model_dir).run()
  assert results["initialised_from"].startswith(os.path.join(model_dir, "best"))
  tuned_model = model_dir_lib.load_trained_model(tuned_dir)
  assert tuned_model.get_layer("encoder").blocks[-1].trainable
  assert not teacher_model.get_layer("encoder").blocks[-1].trainable
  def best_weights(run_dir):
    path = model_dir_lib.checkpoint_path(run_dir, "best")
    return {name: tf.train.load_variable(path, name) for name, _ in tf.train.list_variables(path)
            if name.startswith("model/") and "OPTIMIZER_SLOT" not in name}
  weights, tuned_weights = best_weights(model_dir), best_weights(tuned_dir)
  assert len(weights) == len(teacher_model.weights) and tuned_weights.keys() == weights.keys()
  moved = set()
  for name, value in weights.items():
    np.testing.assert_allclose(tuned_weights[name], value, rtol=0, atol=1e-25, err_msg=name)
    if not np.array_equal(tuned_weights[name], value):
      moved.add(name)
  # The top block moved (by about the learning rate, where a weight was 0); the lower block
  # and the convolutions stay frozen.
  assert any("/blocks/1/" in name for name in moved)
  assert not [name for name in moved if "/blocks/0/" in name or "/conv" in name]
  # Weights of another shape cannot be the starting point.
  other = dataclasses.replace(spec, params={**spec.params, "hidden_sizes": [32, 8]})
  with pytest.raises(ValueError, match="its model differs in params"):
    model_dir_lib.restore_run(model_dir_lib.build_model(other), other, model_dir)


def test_teacher_rejects_mismatched_inputs():
  with pytest.raises(ValueError, match="80 mel bins but the features have 39"):
    teacher.whisper_teacher(task="kws", num_channels=39, num_classes=10, encoder=TINY_ENCODER)
  with pytest.raises(ValueError, match="projection_dim must be 0 or 16"):
    teacher.whisper_teacher(task="kws", num_channels=80, num_classes=10, encoder=TINY_ENCODER,
                            hidden_sizes=(32, 16), projection_dim=8)


def test_teacher_training_reports_and_saves_accuracy(kws_teacher_dir, kws_train_records):
  results = json.load(open(os.path.join(kws_teacher_dir, "results.json")))
  assert results["role"] == "teacher" and results["test_split"] == "test"
  # The test accuracy reported is that of the best weights on the test split.
  report = report_lib.evaluate_model(kws_teacher_dir, kws_train_records, "test", beam_width=1,
                                     batch_size=32)
  assert results["test"]["accuracy"] == pytest.approx(report["accuracy"])
  spec = model_dir_lib.read_spec(kws_teacher_dir)
  assert spec.format == "logmel" and spec.classes[-1] == "negative"


def _guidance_records(path, compression="none"):
  out = []
  for record in tf.data.TFRecordDataset(path, records.tf_compression(compression)):
    out.append(tf.train.Example.FromString(record.numpy()).features.feature)
  return out


def test_logit_guidance_mirrors_the_data_and_matches_the_teacher(kws_teacher_dir,
                                                                 kws_train_records, tmp_path):
  out = str(tmp_path / "guidance")
  meta = guidance.create_guidance(kws_teacher_dir, kws_train_records, out,
                                         kind="logits", dtype="float32", batch_size=5)
  data_meta = records.load_metadata(kws_train_records)
  assert meta["data_fingerprint"] == data_meta.fingerprint
  assert meta["outputs"] == {"logits": {"shape": [10]}, "features": {"shape": [16]}}
  teacher_model = model_dir_lib.load_trained_model(kws_teacher_dir)
  for split in ("train", "test"):
    for path in data.shard_paths(kws_train_records, "logmel", split):
      name = os.path.basename(path)
      guide = _guidance_records(os.path.join(out, name))
      examples = [data.make_parser(data_meta, "logmel")(r)
                  for r in data.records_dataset([path], "none")]
      assert [g["id"].bytes_list.value[0] for g in guide] == \
          [e["id"].numpy() for e in examples]
  # Stored logits are the teacher's raw logits for that example.
  example = examples[-1]
  expected = teacher_model({"features": example["features"][None],
                            "num_frames": example["num_frames"][None]})["logits"][0]
  stored = np.frombuffer(guide[-1]["logits"].bytes_list.value[0], "<f4")
  np.testing.assert_allclose(stored, expected, atol=1e-4)

  # The joiner decodes them, batch by batch, next to the data.
  ds = data.make_dataset(kws_train_records, "logmel", "test", batch_size=4,
                         guidance=data.open_guidance(out, data_meta))
  batch = next(iter(ds))
  assert batch["guidance_logits"].shape == (4, 10)
  assert batch["guidance_features"].shape == (4, 16)


def test_ensemble_guidance_stores_the_log_of_the_teachers_mean_probabilities(
    kws_teacher_dir, kws_train_records, tmp_path):
  second_dir = str(tmp_path / "second")
  loop.Trainer(config_lib.load(None, TEACHER + ["train.seed=1"]), second_dir,
               kws_train_records).run()
  out = str(tmp_path / "guidance")
  run_module("data_prep.create_guidance", f"--teacher_dir={kws_teacher_dir}",
             f"--ensemble={second_dir}", f"--data_dir={kws_train_records}", f"--out_dir={out}",
             "--splits=test", "--dtype=float32", "--nofeatures")
  meta = records.read_json(os.path.join(out, records.METADATA_FILE))
  assert meta["teachers"] == 2 and meta["outputs"] == {"logits": {"shape": [10]}}
  assert [m["teacher_dir"] for m in meta["ensemble"]] == [second_dir]
  teachers = [model_dir_lib.load_trained_model(d) for d in (kws_teacher_dir, second_dir)]
  data_meta = records.load_metadata(kws_train_records)
  path = data.shard_paths(kws_train_records, "logmel", "test")[0]
  examples = [data.make_parser(data_meta, "logmel")(r)
              for r in data.records_dataset([path], "none")]
  stored = np.stack([np.frombuffer(g["logits"].bytes_list.value[0], "<f4") for g in
                     _guidance_records(os.path.join(out, os.path.basename(path)))])
  assert len(stored) == len(examples)
  for example, logits in zip(examples[:3], stored):
    inputs = {"features": example["features"][None], "num_frames": example["num_frames"][None]}
    probabilities = [tf.nn.softmax(t(inputs)["logits"][0]).numpy() for t in teachers]
    assert not np.allclose(probabilities[0], probabilities[1], atol=1e-3)
    np.testing.assert_allclose(np.exp(logits), np.mean(probabilities, axis=0), atol=1e-5)
  # The teachers' fingerprints make the plan: guidance of one of them is another folder.
  single = guidance.create_guidance(kws_teacher_dir, kws_train_records, str(tmp_path / "one"),
                                    splits=["test"], with_features=False)
  assert single["teacher_fingerprint"] != meta["teacher_fingerprint"]
  assert "teachers" not in single and "ensemble" not in single
  # Teachers of another input cannot join; an ensemble gives logits alone.
  spec = model_dir_lib.read_spec(kws_teacher_dir)
  other_dir = str(tmp_path / "other_input")
  os.makedirs(other_dir)
  model_dir_lib.write_spec(other_dir, dataclasses.replace(
      spec, feature_params={**spec.feature_params, "frame_step": 320}))
  with pytest.raises(ValueError, match="ensemble differ in feature_params"):
    guidance.create_guidance(kws_teacher_dir, kws_train_records, str(tmp_path / "x"),
                             with_features=False, ensemble=[other_dir])
  with pytest.raises(ValueError, match="logits only"):
    guidance.create_guidance(kws_teacher_dir, kws_train_records, str(tmp_path / "x"),
                             ensemble=[second_dir])


def test_guidance_of_other_data_is_refused(kws_teacher_dir, kws_train_records, tmp_path):
  out = str(tmp_path / "guidance")
  guidance.create_guidance(kws_teacher_dir, kws_train_records, out, splits=["test"])
  meta = records.read_json(os.path.join(out, records.METADATA_FILE))
  meta["data_fingerprint"] = "0" * 64
  records.write_json(os.path.join(out, records.METADATA_FILE), meta)
  with pytest.raises(ValueError, match="made from other data.*" + "0" * 64):
    data.open_guidance(out, records.load_metadata(kws_train_records))


def test_hint_guidance_is_resumable_and_byte_identical(kws_teacher_dir, kws_train_records,
                                                      tmp_path):
  first, second = str(tmp_path / "first"), str(tmp_path / "second")
  args = [f"--teacher_dir={kws_teacher_dir}", f"--data_dir={kws_train_records}",
          "--guidance=hints", "--up_to=1", "--splits=test"]
  run_module("data_prep.create_guidance", *args, f"--out_dir={first}")
  meta = records.read_json(os.path.join(first, records.METADATA_FILE))
  assert meta["outputs"] == {"hint": {"shape": [None, 32]}, "hint_pooled": {"shape": [32]}}
  assert meta["layer"] == 1 and meta["dtype"] == "float16"
  run_module("data_prep.create_guidance", *args, f"--out_dir={second}")
  # Remove a finished shard (as if killed before it): the rerun writes only it, identically.
  shards = sorted(n for n in os.listdir(second) if n.endswith(".tfrecord"))
  os.remove(os.path.join(second, shards[0]))
  rerun = run_module("data_prep.create_guidance", *args, f"--out_dir={second}")
  assert f"1 guidance shards to write ({len(shards) - 1} already complete)" in rerun.stdout
  for name in shards:
    assert open(os.path.join(first, name), "rb").read() == \
        open(os.path.join(second, name), "rb").read()
  # Other parameters into the same folder are refused.
  refused = run_module("data_prep.create_guidance", *args[:-2], "--guidance=hints",
                       "--up_to=0", "--splits=test", f"--out_dir={second}", check=False)
  assert refused.returncode == 2 and "differs in: layer" in refused.stderr


@pytest.fixture(scope="module")
def kws_guidance(kws_teacher_dir, kws_train_records, tmp_path_factory):
  guidance_dir = str(tmp_path_factory.mktemp("guidance") / "kws")
  guidance.create_guidance(kws_teacher_dir, kws_train_records, guidance_dir)
  return guidance_dir


QUANTIZED = ["mode=quantized_distill", "model.name=wav2letter_kws_tiny", "quantization.bits=2",
             "quantization.bucket_size=64", "quantization.stochastic=true", "data.batch_size=8",
             "train.steps=6", "train.eval_every=3", "train.checkpoint_every=2",
             "data.validation_fraction=0.3", "model.params.dropouts=[0.2,0.2,0.2,0.2,0.2,0.2]"]


def test_quantized_distillation_keeps_quantized_weights_and_resumes_exactly(
    kws_guidance, kws_train_records, tmp_path):
  from kws_tf.distill import quantization
  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  config = config_lib.load(None, QUANTIZED)
  results = loop.Trainer(config, whole, kws_train_records, kws_guidance).run()
  report = results["quantization"]
  assert report["bits"] == 2 and report["compression_ratio"] > 8
  # The best (saved) model holds 2-bit weights: at most 4 levels per bucket of 64.
  model = model_dir_lib.load_trained_model(whole)
  variables = quantization.quantizable_weights(model)
  assert variables
  for variable in variables:
    values = variable.numpy().reshape(-1)
    for start in range(0, len(values), 64):
      assert len(np.unique(values[start:start + 64])) <= 4
  assert report["quantized_parameters"] == sum(int(np.prod(v.shape)) for v in variables)
  # The training checkpoints hold full-precision weights, and a resumed run is exact.
  loop.Trainer(config, parts, kws_train_records, kws_guidance).run(stop_after=4)
  loop.Trainer(config, parts, kws_train_records, kws_guidance).run()
  for name in ("last", "best"):
    for a, b in zip(model_dir_lib.load_trained_model(whole, name).variables,
                    model_dir_lib.load_trained_model(parts, name).variables):
      np.testing.assert_array_equal(a.numpy(), b.numpy())
  last = model_dir_lib.load_trained_model(whole, "last")
  assert any(len(np.unique(v.numpy())) > 4 for v in quantization.quantizable_weights(last))


def test_distillation_from_teacher_guidance(kws_teacher_dir, kws_train_records, kws_guidance,
                                            tmp_path):
  guidance_dir = kws_guidance
  config = config_lib.load(None, [
      "mode=distill", "model.name=wav2letter_kws_tiny", "model.projection_dim=16",
      "distill.temperature=6", "distill.alpha=0.8", "distill.beta=0.2",
      "distill.feature_weight=0.3", "data.batch_size=8", "train.steps=4", "train.log_every=2",
      "train.eval_every=4", "data.validation_fraction=0.3"])
  model_dir = str(tmp_path / "student")
  results = loop.Trainer(config, model_dir, kws_train_records, guidance_dir).run()
  assert results["mode"] == "distill" and np.isfinite(results["test"]["loss"])
  tags = set()
  for name in os.listdir(os.path.join(model_dir, "tensorboard", "train")):
    for event in tf.compat.v1.train.summary_iterator(
        os.path.join(model_dir, "tensorboard", "train", name)):
      tags |= {v.tag for v in event.summary.value}
  assert {"loss/hard", "loss/kd", "loss/feature", "loss/total"} <= tags

  # Teacher (log-mel) and student (MFCC) evaluated on the same split, side by side.
  result = run_module("kws_tf.bin.evaluate", f"--model_dirs={kws_teacher_dir},{model_dir}",
                      f"--data_dir={kws_train_records}", "--split=test")
  table = [line for line in result.stdout.splitlines() if line.startswith("| whisper_teacher")
           or line.startswith("| wav2letter_kws_tiny")]
  assert len(table) == 2
  for folder in (kws_teacher_dir, model_dir):
    out = os.path.join(folder, "eval", "test")
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["split"] == "test" and saved["report"]["num_examples"] == \
        records.load_metadata(kws_train_records).splits["test"].examples
    assert set(saved["detection"]) == {"frr_at_far_0.01", "frr_at_far_0.05"}
    for name in ("confusion.png", "det.png"):
      assert open(os.path.join(out, name), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "true \\ predicted" in open(os.path.join(out, "confusion.txt")).read()

  # Post-training quantization of the float student: the baseline of quantized distillation.
  from kws_tf.evaluation import report
  quantized = report.evaluate_model(model_dir, kws_train_records, "test", beam_width=0,
                                    batch_size=16, quantize_bits=2, bucket_size=64)
  assert quantized["output_dir"].endswith(os.path.join("eval", "test-q2"))

  # Quantized distillation fine-tuned from that float student (--init_from): at a learning
  # rate far below float32's resolution of the weights (a learning rate must be > 0; Adam's
  # first steps move a weight by about the learning rate, 1e-30, which rounds away on
  # weights of 1e-3 and more), its quantized weights are exactly the post-training
  # quantized float weights.
  tuned_dir = str(tmp_path / "quantized_from_float")
  tuned = config_lib.load(None, [
      "mode=quantized_distill", "model.name=wav2letter_kws_tiny", "model.projection_dim=16",
      "quantization.bits=2", "quantization.bucket_size=64", "optimizer.learning_rate=1e-30",
      "data.batch_size=8", "train.steps=2", "train.eval_every=2",
      "data.validation_fraction=0.3"])
  results = loop.Trainer(tuned, tuned_dir, kws_train_records, guidance_dir,
                         init_from=model_dir).run()
  assert results["initialised_from"].startswith(os.path.join(model_dir, "best"))
  from kws_tf.distill import quantization
  float_model = model_dir_lib.load_trained_model(model_dir)
  expected = quantization.post_training_quantize(float_model, 2, 64)
  got = quantization.quantizable_weights(model_dir_lib.load_trained_model(tuned_dir))
  assert len(got) == len(expected)
  for a, b in zip(got, expected):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  # Another model cannot be the starting point.
  other = config_lib.load(None, ["mode=quantized_distill", "model.name=wav2letter_kws_tiny",
                                 "train.steps=2"])
  with pytest.raises(loop.TrainingError, match="its model differs in projection_dim"):
    loop.Trainer(other, str(tmp_path / "other"), kws_train_records, guidance_dir,
                 init_from=model_dir).run()
  assert quantized["quantization"]["post_training"] and \
      quantized["quantization"]["compression_ratio"] > 8


def test_ctc_teacher_guidance_and_distillation(ctc_train_records, tmp_path):
  """ctc: frame logits guidance [frames, vocabulary] and a distilled ctc student."""
  teacher_dir = str(tmp_path / "teacher")
  loop.Trainer(config_lib.load(None, TEACHER + ["task=ctc", "data.validation_split=test",
                                                "data.batch_size=4"]),
               teacher_dir, ctc_train_records).run()
  guidance_dir = str(tmp_path / "guidance")
  meta = guidance.create_guidance(teacher_dir, ctc_train_records, guidance_dir, dtype="float32")
  vocabulary = len(records.load_metadata(ctc_train_records).vocabulary["symbols"])
  assert meta["outputs"] == {"logits": {"shape": [None, vocabulary]},
                             "features": {"shape": [None, 16]}}
  data_meta = records.load_metadata(ctc_train_records)
  batch = next(iter(data.make_dataset(ctc_train_records, "mfcc", "test", batch_size=3,
                                      guidance=data.open_guidance(guidance_dir, data_meta))))
  # Teacher frames (log-mel: samples // 160, halved) are the student's 20 ms frames, +-1.
  teacher_frames = batch["guidance_frames"].numpy()
  student_frames = (batch["num_frames"].numpy() + 1) // 2
  assert np.all(np.abs(teacher_frames - student_frames) <= 1)
  assert batch["guidance_logits"].shape[1] == teacher_frames.max()

  config = config_lib.load(None, [
      "task=ctc", "mode=distill", "model.name=wav2letter", "model.params.filters=[16,16]",
      "model.params.widths=[5,3]", "model.params.strides=[2,1]", "model.params.dropouts=[0,0]",
      "model.projection_dim=16", "distill.feature_weight=0.1", "data.batch_size=4",
      "train.steps=2", "train.eval_every=2", "data.validation_split=test"])
  results = loop.Trainer(config, str(tmp_path / "student"), ctc_train_records,
                         guidance_dir).run()
  assert np.isfinite(results["test"]["loss"])


@pytest.fixture(scope="module")
def ctc_coarse_teacher(synthetic_corpus, tmp_path_factory):
  """ctc records whose log-mel hop is 20 ms (mfcc: 10 ms), and an untrained Whisper
  ctc teacher on that log-mel: its logits and hints come every 40 ms."""
  root = tmp_path_factory.mktemp("coarse")
  records_dir = str(root / "records")
  run_module("data_prep.create_tfrecords", f"--data_dir={synthetic_corpus}", "--corpus=vivos",
             f"--out_dir={records_dir}", "--splits=train,test", "--formats=mfcc,logmel",
             "--feature_params=logmel.frame_step=320", "--task=ctc", "--cores=2")
  meta = records.load_metadata(records_dir)
  spec = model_dir_lib.ModelSpec(
      name="whisper_teacher", task="ctc", role="teacher", num_channels=80,
      num_classes=len(meta.vocabulary["symbols"]), projection_dim=0,
      params={"encoder": TINY_ENCODER, "ctc_hidden": 16}, format="logmel",
      feature_params=meta.formats["logmel"].params, normalization=None,
      data_fingerprint=meta.fingerprint, vocabulary=meta.vocabulary)
  teacher_dir = str(root / "teacher")
  os.makedirs(teacher_dir)
  model_dir_lib.write_spec(teacher_dir, spec)
  with open(os.path.join(teacher_dir, "config.yaml"), "w") as f:
    f.write("{}\n")
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model_dir_lib.build_model(spec)),
                             os.path.join(teacher_dir, "best"), max_to_keep=1).save(0)
  return records_dir, teacher_dir


def test_guidance_records_the_teachers_frame_rate_and_ctc_refuses_another(ctc_coarse_teacher,
                                                                          tmp_path):
  records_dir, teacher_dir = ctc_coarse_teacher
  assert model_dir_lib.read_spec(teacher_dir).output_frame_seconds == pytest.approx(0.04)
  logits_dir, hints_dir = str(tmp_path / "logits"), str(tmp_path / "hints")
  meta = guidance.create_guidance(teacher_dir, records_dir, logits_dir, splits=["test"],
                                  with_features=False, dtype="float32")
  assert meta["frame_seconds"] == pytest.approx(0.04)  # 320 samples at 16 kHz, stride 2
  data_meta = records.load_metadata(records_dir)
  opened = data.open_guidance(logits_dir, data_meta)
  assert opened.frame_seconds == pytest.approx(0.04)
  # A ctc student on 10 ms mfcc has 20 ms logit frames: refused, both rates named.
  with pytest.raises(ValueError, match=r"a frame every 40 ms but the student's logits have "
                                       r"a frame every 20 ms"):
    data.make_dataset(records_dir, "mfcc", "test", batch_size=2, guidance=opened)
  # On the teacher's 20 ms log-mel the student's logits come every 40 ms, as the teacher's.
  batch = next(iter(data.make_dataset(records_dir, "logmel", "test", batch_size=2,
                                      guidance=opened)))
  assert np.all(batch["guidance_frames"].numpy() == (batch["num_frames"].numpy() + 1) // 2)

  # Hints carry the same rate; FitNet pools a 20 ms guided layer two frames to one.
  from kws_tf.distill import fitnet
  guidance.create_guidance(teacher_dir, records_dir, hints_dir, kind="hints", up_to=1,
                           splits=["test"])
  hints = fitnet.hint_metadata(hints_dir)
  assert hints["hint_frame_seconds"] == pytest.approx(0.04)
  assert fitnet.alignment(0.02, hints["hint_frame_seconds"], "conv1") == ("pool", 2)
  with pytest.raises(fitnet.FitNetError, match="every 30 ms and the hint a frame every 40 ms"):
    fitnet.alignment(0.03, hints["hint_frame_seconds"], "conv1")


VIEWS = 3
VIEW_SEED = 5


@pytest.fixture(scope="module")
def view_guidance(kws_teacher_dir, kws_raw_records, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("views") / "guidance")
  meta = guidance.create_guidance(
      kws_teacher_dir, kws_raw_records, out, dtype="float32", splits=["train"],
      views=VIEWS, augment_config=config_lib.AugmentConfig(enabled=True), view_seed=VIEW_SEED)
  return out, meta


def _view_windows(records_dir, example, augmenter):
  wave = example["features"][:, 0]
  return [augmenter(wave, augment.view_seed(example["id"], v, VIEW_SEED),
                    example["shift_range"]) for v in range(VIEWS)]


def test_view_guidance_holds_the_teachers_logits_of_each_view(kws_teacher_dir, kws_raw_records,
                                                              view_guidance):
  out, meta = view_guidance
  teacher_model = model_dir_lib.load_trained_model(kws_teacher_dir)
  width = teacher_model.output["projection"].shape[-1]
  assert meta["views"] == VIEWS and meta["outputs"] == {"logits": {"shape": [VIEWS, 10]},
                                                        "features": {"shape": [VIEWS, width]}}
  data_meta = records.load_metadata(kws_raw_records)
  augmenter = data.make_augmenter(kws_raw_records, config_lib.AugmentConfig(enabled=True),
                                  "train")
  spec = model_dir_lib.read_spec(kws_teacher_dir)
  front_end = data.WaveformFrontEnd(spec.feature_params, spec.normalization)
  path = data.shard_paths(kws_raw_records, "raw", "train")[0]
  parse = data.make_parser(data_meta, "raw", normalize=False, shift_range=True)
  examples = [parse(r) for r in data.records_dataset([path], "none").take(3)]
  stored = _guidance_records(os.path.join(out, os.path.basename(path)))[:3]
  for example, guide in zip(examples, stored):
    assert guide["id"].bytes_list.value[0] == example["id"].numpy()
    logits = np.frombuffer(guide["logits"].bytes_list.value[0], "<f4").reshape(VIEWS, 10)
    projections = np.frombuffer(guide["features"].bytes_list.value[0], "<f4").reshape(VIEWS,
                                                                                      width)
    windows = _view_windows(kws_raw_records, example, augmenter)
    assert not np.allclose(windows[0], windows[1])  # the views differ
    assert not np.allclose(projections[0], projections[1])
    for view, window in enumerate(windows):
      features = front_end(window[None])
      expected = teacher_model({"features": features, "num_frames": tf.shape(features)[1:2]})
      np.testing.assert_allclose(logits[view], expected["logits"][0], atol=1e-4)
      np.testing.assert_allclose(projections[view], expected["projection"][0], atol=1e-4)


def _stored_views(records_dir, guidance_dir, name="logits"):
  """The stored output ``name`` of each training clip, ``[VIEWS, size]``, by id."""
  stored = {}
  for path in data.shard_paths(records_dir, "raw", "train"):
    for guide in _guidance_records(os.path.join(guidance_dir, os.path.basename(path))):
      stored[guide["id"].bytes_list.value[0]] = np.frombuffer(
          guide[name].bytes_list.value[0], "<f4").reshape(VIEWS, -1)
  return stored


def _raw_train_examples(records_dir):
  """The parsed raw training clips (with their shift ranges), by id."""
  parse = data.make_parser(records.load_metadata(records_dir), "raw", normalize=False,
                           shift_range=True)
  raw = {}
  for record in data.records_dataset(data.shard_paths(records_dir, "raw", "train"), "none"):
    example = parse(record)
    raw[example["id"].numpy()] = example
  return raw


def test_student_sees_the_view_whose_logits_it_gets(kws_raw_records, view_guidance):
  out, _ = view_guidance
  data_meta = records.load_metadata(kws_raw_records)
  cfg = config_lib.AugmentConfig(enabled=True)
  augmenter = data.make_augmenter(kws_raw_records, cfg, "train")
  ds = data.make_dataset(kws_raw_records, "mfcc", "train", batch_size=6, training=True,
                         seed=2, guidance=data.open_guidance(out, data_meta),
                         augmenter=augmenter)
  batch = next(iter(ds))
  assert batch["guidance_logits"].shape == (6, 10)
  stored = _stored_views(kws_raw_records, out)
  projections = _stored_views(kws_raw_records, out, "features")
  raw = _raw_train_examples(kws_raw_records)
  front_end = data.WaveformFrontEnd.of_records(data_meta, "mfcc", normalize=True)
  for i, example_id in enumerate(batch["id"].numpy()):
    view = [v for v in range(VIEWS)
            if np.allclose(stored[example_id][v], batch["guidance_logits"][i], atol=1e-6)]
    assert len(view) == 1
    # The teacher's features come from the same view as its logits.
    np.testing.assert_allclose(batch["guidance_features"][i], projections[example_id][view[0]],
                               atol=1e-6)
    window = _view_windows(kws_raw_records, raw[example_id], augmenter)[view[0]]
    features = front_end(window[None])[0]
    np.testing.assert_allclose(batch["features"][i], features, atol=1e-5)


def test_fresh_views_take_the_steps_draws_and_no_teacher(kws_raw_records, view_guidance):
  out, _ = view_guidance
  data_meta = records.load_metadata(kws_raw_records)
  cfg = config_lib.AugmentConfig(enabled=True, fresh_view_prob=0.5)
  augmenter = data.make_augmenter(kws_raw_records, cfg, "train")
  batch_size, seed = 12, 4
  ds = data.make_dataset(kws_raw_records, "mfcc", "train", batch_size=batch_size, training=True,
                         seed=seed, guidance=data.open_guidance(out, data_meta),
                         augmenter=augmenter)
  batch = next(iter(ds))
  weights = batch["guidance_weight"].numpy()
  assert set(weights) == {0.0, 1.0}  # both kinds in one batch
  # The pipeline's draws: four per example from the seed's random stream.
  keys = np.array(list(tf.data.Dataset.random(seed=seed).take(4 * batch_size))).reshape(-1, 4)
  stored = _stored_views(kws_raw_records, out)
  raw = _raw_train_examples(kws_raw_records)
  front_end = data.WaveformFrontEnd.of_records(data_meta, "mfcc", normalize=True)
  for i, example_id in enumerate(batch["id"].numpy()):
    example = raw[example_id]
    view = [v for v in range(VIEWS)
            if np.allclose(stored[example_id][v], batch["guidance_logits"][i], atol=1e-6)]
    assert len(view) == 1
    if weights[i]:
      window = _view_windows(kws_raw_records, example, augmenter)[view[0]]
    else:
      window = augmenter(example["features"][:, 0], keys[i, 2:], example["shift_range"])
    np.testing.assert_allclose(batch["features"][i], front_end(window[None])[0], atol=1e-4)


def test_trainer_refuses_guidance_of_other_views(kws_raw_records, view_guidance, kws_teacher_dir,
                                                 tmp_path):
  out, _ = view_guidance
  student = ["mode=distill", "model.name=wav2letter_kws_tiny", "data.batch_size=8",
             "train.steps=2", "train.eval_every=2", "data.validation_fraction=0.3"]
  trained = loop.Trainer(config_lib.load(None, student + ["augment.enabled=true"]),
                         str(tmp_path / "ok"), kws_raw_records, out).run()
  assert np.isfinite(trained["test"]["loss"])
  # fresh_view_prob is the student's alone: the same guidance serves.
  fresh = loop.Trainer(config_lib.load(None, student + ["augment.enabled=true",
                                                        "augment.fresh_view_prob=0.5"]),
                       str(tmp_path / "fresh"), kws_raw_records, out).run()
  assert np.isfinite(fresh["test"]["loss"])
  clean = str(tmp_path / "clean")
  guidance.create_guidance(kws_teacher_dir, kws_raw_records, clean, splits=["train"])
  cases = [(student + ["augment.enabled=true"], clean, "--views"),
           (student + ["augment.enabled=true", "augment.snr_db_min=5"], out, "snr_db_min"),
           (student, out, "augment.enabled=true")]
  for index, (overrides, guidance_dir, message) in enumerate(cases):
    with pytest.raises(loop.TrainingError, match=message):
      loop.Trainer(config_lib.load(None, overrides), str(tmp_path / f"bad{index}"),
                   kws_raw_records, guidance_dir).run()


def test_student_distils_the_teachers_features_of_its_views(kws_raw_records, view_guidance,
                                                            tmp_path):
  out, meta = view_guidance
  width = meta["outputs"]["features"]["shape"][-1]
  student = ["mode=distill", "model.name=wav2letter_kws_tiny", "data.batch_size=8",
             "train.steps=2", "train.eval_every=2", "data.validation_fraction=0.3",
             "augment.enabled=true", "distill.feature_weight=0.3",
             f"model.projection_dim={width}"]
  trained = loop.Trainer(config_lib.load(None, student), str(tmp_path / "features"),
                         kws_raw_records, out).run()
  assert np.isfinite(trained["test"]["loss"])
  # A projection of another width cannot be matched to the teacher's features.
  wrong = student[:-1] + [f"model.projection_dim={width + 1}"]
  with pytest.raises((loop.TrainingError, ValueError, tf.errors.InvalidArgumentError)):
    loop.Trainer(config_lib.load(None, wrong), str(tmp_path / "wrong"), kws_raw_records,
                 out).run()


def test_extending_views_gives_the_guidance_of_all_views(kws_teacher_dir, kws_raw_records,
                                                        view_guidance, tmp_path):
  out, meta = view_guidance
  cfg = config_lib.AugmentConfig(enabled=True)
  one = str(tmp_path / "one")
  guidance.create_guidance(kws_teacher_dir, kws_raw_records, one, dtype="float32",
                           splits=["train"], views=1, augment_config=cfg, view_seed=VIEW_SEED)
  extended = str(tmp_path / "extended")
  extended_meta = guidance.create_guidance(
      kws_teacher_dir, kws_raw_records, extended, dtype="float32", splits=["train"],
      views=VIEWS, augment_config=cfg, view_seed=VIEW_SEED, extend=one)
  assert extended_meta == meta  # as if all views were made in one run
  for name in meta["shards"]["train"]:
    full = _guidance_records(os.path.join(out, name))
    first = _guidance_records(os.path.join(one, name))
    both = _guidance_records(os.path.join(extended, name))
    assert [g["id"].bytes_list.value[0] for g in both] == [g["id"].bytes_list.value[0] for g in full]
    for f, o, b in zip(full, first, both):
      for name in ("logits", "features"):
        values = np.frombuffer(b[name].bytes_list.value[0], "<f4").reshape(VIEWS, -1)
        # The first view is copied as it was; every view equals a run of all of them.
        np.testing.assert_array_equal(values[0], np.frombuffer(o[name].bytes_list.value[0], "<f4"))
        np.testing.assert_allclose(
            values, np.frombuffer(f[name].bytes_list.value[0], "<f4").reshape(VIEWS, -1),
            atol=1e-4)
  # Guidance made another way, or of as many views, is refused by name.
  cases = [(dict(view_seed=VIEW_SEED + 1, extend=one), "view_seed"),
           (dict(view_seed=VIEW_SEED, extend=one, with_features=False), "features"),
           (dict(view_seed=VIEW_SEED, extend=out), f"{VIEWS} views"),
           (dict(view_seed=VIEW_SEED, extend=str(tmp_path / "nothing")), "no finished guidance")]
  for index, (options, message) in enumerate(cases):
    with pytest.raises(ValueError, match=message):
      guidance.create_guidance(kws_teacher_dir, kws_raw_records, str(tmp_path / f"bad{index}"),
                               dtype="float32", splits=["train"], views=VIEWS,
                               augment_config=cfg, **options)


def test_evaluation_also_scores_windows_moved_off_centre(kws_teacher_dir, kws_raw_records):
  from kws_tf.evaluation import report
  results = report.evaluate_model(kws_teacher_dir, kws_raw_records, "test", beam_width=0,
                                  batch_size=16, offset_seconds=0.3, offset_seed=2)
  offset = results["offset"]
  assert offset["max_seconds"] == 0.3 and offset["seed"] == 2
  for key in ("accuracy", "keyword_recall", "false_accepts"):
    assert 0.0 <= offset[key] <= 1.0 and 0.0 <= results[key if key != "accuracy" else
                                                         "accuracy"] <= 1.0
  # Centred keyword recall and false accepts agree with the confusion matrix.
  matrix = np.array(results["report"]["confusion_matrix"])
  negative = results["report"]["class_names"].index("negative")
  keyword = [i for i in range(len(matrix)) if i != negative]
  assert results["keyword_recall"] == pytest.approx(
      sum(matrix[i, i] for i in keyword) / matrix[keyword].sum())
  assert results["false_accepts"] == pytest.approx(
      1 - matrix[negative, negative] / matrix[negative].sum())
  table = report.side_by_side([results])
  assert "offset: keyword recall" in table and "n/a" not in table
  assert "offset" not in report.evaluate_model(kws_teacher_dir, kws_raw_records, "test", 0, 16,
                                               offset_seconds=0.0)
