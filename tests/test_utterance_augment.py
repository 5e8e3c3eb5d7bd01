"""Augmentation of whole ctc utterances (kws_tf/utterance_augment.py) against numpy
references, and the augmented ctc training pipeline (data) on converted records."""
import os

import numpy as np
import pytest

import kws_tf  # noqa: F401
import tensorflow as tf

from conftest import TEACHER, run_module
from data_prep import guidance
from kws_tf import augment, config as config_lib, data
from kws_tf import model_dir as model_dir_lib
from kws_tf import records, utterance_augment
from kws_tf.training import loop

SR = 16000


def quiet(**overrides) -> config_lib.AugmentConfig:
  """Every step off (probabilities 0, gain 0 dB), then ``overrides``."""
  fields = dict(enabled=True, max_shift_seconds=0.0, speed_prob=0.0, reverb_prob=0.0,
                noise_prob=0.0, telephone_prob=0.0, gain_db_min=0.0, gain_db_max=0.0)
  fields.update(overrides)
  return config_lib.AugmentConfig(**fields)


def tones(lengths, hertz=440.0):
  """A zero-padded batch of sines, ``[len(lengths), max(lengths)]``, amplitude 0.3."""
  out = np.zeros([len(lengths), max(lengths)], np.float32)
  for row, n in enumerate(lengths):
    out[row, :n] = 0.3 * np.sin(2 * np.pi * hertz * np.arange(n) / SR)
  return out


def run(config, waveforms, lengths, seeds, max_samples=None, **banks):
  augmenter = augment.Augmenter(config, SR, 1.0, **banks)
  utterances = utterance_augment.UtteranceAugmenter(augmenter, max_samples or max(lengths))
  choices = utterances.draw(tf.constant(seeds, tf.int64), tf.shape(waveforms)[1])
  x, new_lengths = utterances.apply(tf.constant(waveforms), tf.constant(lengths, tf.int32),
                                    choices)
  return x.numpy(), new_lengths.numpy()


def peak_hertz(x):
  spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
  return np.argmax(spectrum) * SR / len(x)


@pytest.mark.parametrize("factor", [0.85, 1.15])
def test_speed_resamples_each_utterance_to_its_own_length(factor):
  """Speed alone: a row of n samples becomes round(n / factor) samples, sample j
  read at (j + 0.5) * factor - 0.5 by linear interpolation (np.interp, zeros past
  the end), and a 440 Hz tone moves to 440 * factor Hz."""
  lengths = [16000, 9000]
  batch = tones(lengths)
  x, new = run(quiet(speed_prob=1.0, speed_min=factor, speed_max=factor), batch, lengths,
               [[1, 2], [3, 4]])
  assert list(new) == [round(n / factor) for n in lengths]
  assert x.shape[1] == int(np.ceil(batch.shape[1] / min(factor, 1.0)))
  for row, (n, m) in enumerate(zip(lengths, new)):
    position = (np.arange(m) + 0.5) * factor - 0.5
    expected = np.interp(position, np.arange(n + 1), np.append(batch[row, :n], 0.0))
    np.testing.assert_allclose(x[row, :m], expected, atol=1e-6)
    assert not x[row, m:].any()
    assert peak_hertz(x[row, :m]) == pytest.approx(440.0 * factor, abs=3.0)


def test_noise_is_at_the_drawn_snr_over_each_utterances_valid_samples():
  lengths = [16000, 4000, 12000]
  batch = tones(lengths)
  x, new = run(quiet(noise_prob=1.0, snr_db_min=10.0, snr_db_max=10.0), batch, lengths,
               [[5, 1], [5, 2], [5, 3]])
  assert list(new) == lengths
  for row, n in enumerate(lengths):
    speech = batch[row, :n].astype(np.float64)
    noise = x[row, :n] - speech
    snr = 10 * np.log10(np.mean(speech ** 2) / np.mean(noise ** 2))
    assert snr == pytest.approx(10.0, abs=0.01)
    assert not x[row, n:].any()


def test_reverb_with_a_given_rir_is_a_convolution_at_the_dry_power():
  rir = np.zeros([1, 800], np.float32)
  rir[0, 0], rir[0, 400], rir[0, 799] = 1.0, 0.5, -0.25
  lengths = [8000, 5000]
  rng = np.random.default_rng(0)
  batch = np.zeros([2, 8000], np.float32)
  for row, n in enumerate(lengths):
    batch[row, :n] = rng.normal(0, 0.05, n)
  x, _ = run(quiet(reverb_prob=1.0), batch, lengths, [[1, 1], [1, 2]], rirs=rir)
  for row, n in enumerate(lengths):
    wet = np.convolve(batch[row, :n], rir[0])[:n]
    wet *= np.sqrt(np.sum(batch[row, :n] ** 2) / np.sum(wet ** 2))
    np.testing.assert_allclose(x[row, :n], wet, atol=1e-5)


def test_an_utterance_does_not_depend_on_the_batch_around_it():
  """Every step on but the telephone band (an FFT over the batch's width): a row
  augmented alone equals the same row (same seed) in a wider batch, to the
  rounding of the reverberation's FFT."""
  config = config_lib.AugmentConfig(enabled=True, speed_prob=0.7, reverb_prob=0.7,
                                    noise_prob=1.0, telephone_prob=0.0, tempo_prob=0.5)
  rng = np.random.default_rng(3)
  lengths = [7000, 20000, 11000]
  batch = np.zeros([3, 20000], np.float32)
  for row, n in enumerate(lengths):
    batch[row, :n] = np.clip(rng.normal(0, 0.1, n), -1, 1)
  seeds = [[9, row] for row in range(3)]
  together, new = run(config, batch, lengths, seeds, max_samples=20000)
  for row, n in enumerate(lengths):
    alone, alone_new = run(config, batch[row:row + 1, :n], [n], seeds[row:row + 1],
                           max_samples=20000)
    assert alone_new[0] == new[row]
    np.testing.assert_allclose(alone[0, :new[row]], together[row, :new[row]], atol=2e-5)


def test_telephone_rows_keep_the_300_3400_hz_band():
  rng = np.random.default_rng(4)
  lengths = [16000, 12000]
  batch = np.zeros([2, 16000], np.float32)
  for row, n in enumerate(lengths):
    batch[row, :n] = rng.normal(0, 0.05, n)
  x, _ = run(quiet(telephone_prob=1.0), batch, lengths, [[2, 1], [2, 2]])
  for row, n in enumerate(lengths):
    spectrum = np.abs(np.fft.rfft(x[row, :n])) ** 2
    hertz = np.fft.rfftfreq(n, 1 / SR)
    inside = spectrum[(hertz > 400) & (hertz < 3300)].mean()
    assert spectrum[hertz > 4500].mean() < 1e-3 * inside
    assert spectrum[hertz < 150].mean() < 1e-2 * inside


@pytest.fixture(scope="module")
def ctc_raw_records(synthetic_corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("ctc_raw") / "records"
  run_module("data_prep.create_tfrecords", f"--data_dir={synthetic_corpus}", "--corpus=vivos",
             f"--out_dir={out}", "--splits=train,test", "--formats=raw,mfcc,logmel", "--task=ctc",
             "--cores=2")
  return str(out)


def stored(records_dir, split):
  ds = data.make_dataset(records_dir, "mfcc", split, batch_size=64, bucket=False)
  return {i.decode(): (f[:n], l[:m]) for b in ds for i, f, n, l, m in zip(
      b["id"].numpy(), b["features"].numpy(), b["num_frames"].numpy(), b["labels"].numpy(),
      b["label_length"].numpy())}


def test_pipeline_without_augmentation_gives_the_stored_features(ctc_raw_records):
  augmenter = data.make_augmenter(ctc_raw_records, quiet(), "train")
  clean = stored(ctc_raw_records, "train")
  ds = data.make_dataset(ctc_raw_records, "mfcc", "train", batch_size=4, training=True,
                         augmenter=augmenter, seed=2)
  seen = set()
  for batch in ds:
    for i, example_id in enumerate(batch["id"].numpy()):
      values, labels = clean[example_id.decode()]
      n = int(batch["num_frames"][i])
      assert n == len(values)
      np.testing.assert_allclose(batch["features"][i, :n].numpy(), values, atol=2e-3)
      assert not batch["features"][i, n:].numpy().any()
      np.testing.assert_array_equal(batch["labels"][i, :len(labels)].numpy(), labels)
      seen.add(example_id)
  assert len(seen) == len(clean)


def test_augmented_pipeline_is_a_function_of_the_seed(ctc_raw_records):
  config = config_lib.AugmentConfig(enabled=True, speed_prob=1.0)
  augmenter = data.make_augmenter(ctc_raw_records, config, "train")
  assert augmenter.noise_kinds == ("coloured", "babble")
  clean = stored(ctc_raw_records, "train")

  def batches(seed):
    ds = data.make_dataset(ctc_raw_records, "mfcc", "train", batch_size=4, training=True,
                           augmenter=augmenter, seed=seed)
    return [(b["id"].numpy(), b["features"].numpy(), b["num_frames"].numpy())
            for b in ds.take(3)]

  first, again, other = batches(5), batches(5), batches(6)
  for a, b in zip(first, again):
    for u, v in zip(a, b):
      np.testing.assert_array_equal(u, v)
  assert any(not np.array_equal(a[1], b[1]) for a, b in zip(first, other))
  # Every utterance was sped up: its frame count is no longer the stored one.
  for ids, _, frames in first:
    assert all(n != len(clean[i.decode()][0]) for i, n in zip(ids, frames))


VIEWS = 3
VIEW_SEED = 4
# Every step but the telephone band, whose FFT spans the padded row (batch-dependent).
VIEW_CONFIG = dict(enabled=True, speed_prob=0.5, reverb_prob=0.5, noise_prob=0.8,
                   telephone_prob=0.0)


@pytest.fixture(scope="module")
def view_guidance(ctc_raw_records, tmp_path_factory):
  """A tiny Whisper ctc teacher and its logits for ``VIEWS`` views of every training
  utterance."""
  root = tmp_path_factory.mktemp("ctc_views")
  teacher_dir, out = str(root / "teacher"), str(root / "guidance")
  loop.Trainer(config_lib.load(None, TEACHER + ["task=ctc", "data.validation_split=test",
                                                "data.batch_size=4"]),
               teacher_dir, ctc_raw_records).run()
  meta = guidance.create_guidance(
      teacher_dir, ctc_raw_records, out, dtype="float32", splits=["train"], views=VIEWS,
      augment_config=config_lib.AugmentConfig(**VIEW_CONFIG), view_seed=VIEW_SEED,
      batch_size=8)
  return teacher_dir, out, meta


def one_view(records_dir, example, view, front_end, warp="student"):
  """View ``view`` of one parsed raw utterance, alone in its batch: the front end's
  features of its valid samples ``[frames, channels]``."""
  augmenter = data.make_augmenter(records_dir, config_lib.AugmentConfig(**VIEW_CONFIG), "train")
  max_samples = records.load_metadata(records_dir).splits["train"].max_frames["raw"]
  utterances = utterance_augment.UtteranceAugmenter(augmenter, max_samples)
  waveform = example["features"][tf.newaxis, :, 0]
  choices = utterances.draw(augment.view_seed(example["id"][tf.newaxis], view, VIEW_SEED),
                            tf.shape(waveform)[1])
  x, lengths = utterances.apply(waveform, example["num_frames"][tf.newaxis], choices)
  warp_index = augmenter.teacher_warp(choices) if warp == "teacher" else choices["warp"]
  return front_end(x, warp_index, lengths)[0, :front_end.config.num_frames(lengths)[0]]


def test_ctc_view_guidance_holds_the_teachers_logits_of_each_view(ctc_raw_records,
                                                                   view_guidance):
  teacher_dir, out, meta = view_guidance
  vocabulary = len(records.load_metadata(ctc_raw_records).vocabulary["symbols"])
  assert meta["views"] == VIEWS and meta["outputs"] == {"logits": {"shape": [None, vocabulary]}}
  data_meta = records.load_metadata(ctc_raw_records)
  spec = model_dir_lib.read_spec(teacher_dir)
  teacher = model_dir_lib.load_trained_model(teacher_dir)
  front_end = data.WaveformFrontEnd(spec.feature_params, spec.normalization)
  path = data.shard_paths(ctc_raw_records, "raw", "train")[0]
  parse = data.make_parser(data_meta, "raw", normalize=False)
  spec_keys = {"id": tf.io.FixedLenFeature([], tf.string),
               "frames": tf.io.FixedLenFeature([VIEWS], tf.int64),
               "logits": tf.io.FixedLenFeature([], tf.string)}
  guides = data.records_dataset([os.path.join(out, os.path.basename(path))], "none")
  checked = 0
  for record, guide in zip(data.records_dataset([path], "none").take(3), guides):
    example, guide = parse(record), tf.io.parse_single_example(guide, spec_keys)
    assert guide["id"].numpy() == example["id"].numpy()
    frames = guide["frames"].numpy()
    logits = np.frombuffer(guide["logits"].numpy(), "<f4").reshape(-1, vocabulary)
    assert len(logits) == frames.sum()
    starts = np.concatenate([[0], np.cumsum(frames)])
    for view in range(VIEWS):
      features = one_view(ctc_raw_records, example, view, front_end, warp="teacher")
      expected = teacher({"features": features[tf.newaxis],
                          "num_frames": tf.shape(features)[:1]})["logits"][0]
      assert frames[view] == len(expected)
      np.testing.assert_allclose(logits[starts[view]:starts[view + 1]], expected, atol=2e-4)
    checked += 1
    # The views differ from each other (their lengths or their values).
    assert len(set(frames)) > 1 or not np.allclose(logits[:frames[0]],
                                                   logits[frames[0]:2 * frames[0]])
  assert checked == 3


def test_extended_ctc_views_equal_the_views_made_at_once(ctc_raw_records, view_guidance,
                                                         tmp_path):
  teacher_dir, out, meta = view_guidance
  cfg = config_lib.AugmentConfig(**VIEW_CONFIG)
  two, extended = str(tmp_path / "two"), str(tmp_path / "extended")
  for views, folder, base in ((2, two, ""), (VIEWS, extended, two)):
    made = guidance.create_guidance(teacher_dir, ctc_raw_records, folder, dtype="float32",
                                    splits=["train"], views=views, augment_config=cfg,
                                    view_seed=VIEW_SEED, batch_size=8, extend=base)
  assert made == meta
  spec_keys = {"id": tf.io.FixedLenFeature([], tf.string),
               "frames": tf.io.VarLenFeature(tf.int64),
               "logits": tf.io.FixedLenFeature([], tf.string)}

  def read(folder, name):
    return [tf.io.parse_single_example(r, spec_keys)
            for r in data.records_dataset([os.path.join(folder, name)], "none")]

  compared = 0
  for name in meta["shards"]["train"]:
    for full, first, both in zip(read(out, name), read(two, name), read(extended, name)):
      assert both["id"].numpy() == full["id"].numpy()
      frames = both["frames"].values.numpy()
      np.testing.assert_array_equal(frames, full["frames"].values.numpy())
      logits = np.frombuffer(both["logits"].numpy(), "<f4")
      copied = np.frombuffer(first["logits"].numpy(), "<f4")
      np.testing.assert_array_equal(logits[:len(copied)], copied)
      np.testing.assert_allclose(logits, np.frombuffer(full["logits"].numpy(), "<f4"), atol=2e-4)
      compared += 1
  assert compared == records.load_metadata(ctc_raw_records).splits["train"].examples


def test_ctc_student_sees_the_view_whose_logits_it_gets(ctc_raw_records, view_guidance,
                                                        tmp_path):
  _, out, _ = view_guidance
  data_meta = records.load_metadata(ctc_raw_records)
  augmenter = data.make_augmenter(ctc_raw_records, config_lib.AugmentConfig(**VIEW_CONFIG),
                                  "train")
  opened = data.open_guidance(out, data_meta)
  ds = data.make_dataset(ctc_raw_records, "mfcc", "train", batch_size=4, training=True, seed=1,
                         guidance=opened, augmenter=augmenter)
  stored = {}
  for path in data.shard_paths(ctc_raw_records, "raw", "train"):
    for guide in data.records_dataset([os.path.join(out, os.path.basename(path))], "none"):
      parsed = opened.parse(guide)
      example_id = tf.io.parse_single_example(
          guide, {"id": tf.io.FixedLenFeature([], tf.string)})["id"].numpy()
      stored[example_id] = parsed
  parse = data.make_parser(data_meta, "raw", normalize=False)
  raw = {parse(r)["id"].numpy(): parse(r) for r in data.records_dataset(
      data.shard_paths(ctc_raw_records, "raw", "train"), "none")}
  front_end = data.WaveformFrontEnd.of_records(data_meta, "mfcc", normalize=True,
                                               warp_factors=augmenter.warp_factors)
  batch = next(iter(ds))
  for i, example_id in enumerate(batch["id"].numpy()):
    frames = int(batch["guidance_frames"][i])
    views = [v for v in range(VIEWS) if opened.utterance_view(stored[example_id], v)[
        "guidance_frames"] == frames and np.allclose(opened.utterance_view(
            stored[example_id], v)["guidance_logits"], batch["guidance_logits"][i, :frames])]
    assert len(views) >= 1
    assert not batch["guidance_logits"][i, frames:].numpy().any()
    features = one_view(ctc_raw_records, raw[example_id], views[0], front_end).numpy()
    n = int(batch["num_frames"][i])
    assert n == len(features) and abs((n + 1) // 2 - frames) <= 1
    np.testing.assert_allclose(batch["features"][i, :n], features, atol=1e-4)

  # A distilled student trains on them; guidance of the clean utterances is refused.
  student = ["task=ctc", "mode=distill", "model.name=wav2letter", "model.params.filters=[16,16]",
             "model.params.widths=[5,3]", "model.params.strides=[2,1]",
             "model.params.dropouts=[0,0]", "data.batch_size=4", "train.steps=2",
             "train.eval_every=2", "data.validation_split=test"]
  student += [f"augment.{key}={value}" for key, value in VIEW_CONFIG.items()]
  results = loop.Trainer(config_lib.load(None, student), str(tmp_path / "student"),
                         ctc_raw_records, out).run()
  assert results["steps"] == 2 and np.isfinite(results["test"]["loss"])
  with pytest.raises(loop.TrainingError, match="snr_db_min"):
    loop.Trainer(config_lib.load(None, student + ["augment.snr_db_min=3"]),
                 str(tmp_path / "other"), ctc_raw_records, out).run()


def test_a_ctc_model_trains_on_augmented_utterances(ctc_raw_records, tmp_path):
  config = config_lib.load(None, [
      "task=ctc", "model.name=wav2letter", "model.params.filters=[16,16]",
      "model.params.widths=[5,3]", "model.params.strides=[2,1]", "model.params.dropouts=[0,0]",
      "data.batch_size=4", "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
      "data.validation_split=test", "augment.enabled=true"])
  results = loop.Trainer(config, str(tmp_path / "run"), ctc_raw_records).run()
  assert results["steps"] == 2 and np.isfinite(results["test"]["loss"])
