"""Reading records back with tf.data: round trip, bucketing, SpecAugment, guidance joins."""
import os

import numpy as np
import pytest

import kws_tf  # noqa: F401
import tensorflow as tf

from conftest import run_module
from kws_tf import data, records


@pytest.fixture(scope="module")
def ctc_records(synthetic_corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("ctc") / "records"
  run_module("data_prep.create_tfrecords", f"--data_dir={synthetic_corpus}",
             "--corpus=vivos", f"--out_dir={out}", "--splits=train,test",
             "--formats=mfcc,raw", "--task=ctc", "--examples_per_shard=5", "--cores=1")
  return str(out)


@pytest.fixture(scope="module")
def kws_records(synthetic_corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("kws") / "records"
  run_module("data_prep.create_tfrecords", f"--data_dir={synthetic_corpus}",
             "--corpus=vivos", f"--out_dir={out}", "--splits=train,test",
             "--formats=mfcc", "--task=kws", "--examples_per_shard=16", "--cores=1",
             f"--alignments={synthetic_corpus}/*/alignments.ctm", "--compression=gzip")
  return str(out)


def stored_examples(records_dir, fmt, split):
  """id -> (features [frames, channels], labels) decoded with numpy, not tf.data."""
  metadata = records.load_metadata(records_dir)
  channels = metadata.formats[fmt].num_channels
  dtype = "<i2" if metadata.formats[fmt].raw else "<f4"
  out = {}
  compression = records.tf_compression(metadata.compression)
  for path in data.shard_paths(records_dir, fmt, split):
    for raw in tf.data.TFRecordDataset(path, compression):
      example = tf.train.Example.FromString(raw.numpy()).features.feature
      values = np.frombuffer(example["features"].bytes_list.value[0], dtype)
      if dtype == "<i2":
        values = values.astype(np.float32) / 32768.0
      labels = (list(example["labels"].int64_list.value) if "labels" in example
                else example["label"].int64_list.value[0])
      out[example["id"].bytes_list.value[0].decode()] = (values.reshape(-1, channels), labels)
  return out


def test_ctc_round_trip_with_normalisation_and_buckets(ctc_records):
  metadata = records.load_metadata(ctc_records)
  stats = metadata.normalization["mfcc"]
  expected = stored_examples(ctc_records, "mfcc", "train")
  ds = data.make_dataset(ctc_records, "mfcc", "train", batch_size=4)
  seen = {}
  for batch in ds:
    frames = batch["features"].shape[1]
    assert int(tf.reduce_max(batch["num_frames"])) <= frames
    for i, utt in enumerate(batch["id"].numpy()):
      n = int(batch["num_frames"][i])
      length = int(batch["label_length"][i])
      seen[utt.decode()] = (batch["features"][i, :n].numpy(),
                            batch["labels"][i, :length].numpy().tolist())
      assert not np.any(batch["labels"][i, length:].numpy())
  assert sorted(seen) == sorted(expected)
  for utt, (values, labels) in expected.items():
    normalised = (values - np.array(stats["mean"])) / np.array(stats["std"])
    np.testing.assert_allclose(seen[utt][0], normalised, rtol=1e-5, atol=1e-4)
    assert seen[utt][1] == labels


def test_train_statistics_standardise_the_train_split(ctc_records):
  ds = data.make_dataset(ctc_records, "mfcc", "train", batch_size=64, bucket=False)
  frames = []
  for batch in ds:
    for i in range(len(batch["id"])):
      frames.append(batch["features"][i, :int(batch["num_frames"][i])].numpy())
  frames = np.concatenate(frames)
  np.testing.assert_allclose(frames.mean(0), 0.0, atol=1e-3)
  np.testing.assert_allclose(frames.std(0), 1.0, atol=1e-3)


def test_raw_round_trip_without_normalisation(ctc_records):
  expected = stored_examples(ctc_records, "raw", "test")
  ds = data.make_dataset(ctc_records, "raw", "test", batch_size=2, normalize=False,
                         bucket=False)
  for batch in ds:
    assert batch["features"].shape[-1] == 1
    for i, utt in enumerate(batch["id"].numpy()):
      n = int(batch["num_frames"][i])
      np.testing.assert_array_equal(batch["features"][i, :n].numpy(), expected[utt.decode()][0])


def test_bucket_boundaries_are_increasing_and_cover_the_maximum():
  bounds = data.bucket_boundaries(1000)
  assert bounds == sorted(set(bounds)) and bounds[-1] == 1001 and bounds[0] == 50
  assert data.bucket_boundaries(30) == [31]


def test_kws_batches_and_shuffle_is_seeded(kws_records):
  expected = stored_examples(kws_records, "mfcc", "train")
  first = [b["id"].numpy().tolist() for b in data.make_dataset(
      kws_records, "mfcc", "train", batch_size=8, training=True, seed=5)]
  again = [b["id"].numpy().tolist() for b in data.make_dataset(
      kws_records, "mfcc", "train", batch_size=8, training=True, seed=5)]
  assert first == again
  flat = [i.decode() for batch in first for i in batch]
  assert sorted(flat) == sorted(expected) and flat != sorted(flat)
  batch = next(iter(data.make_dataset(kws_records, "mfcc", "train", batch_size=8)))
  assert batch["features"].shape == (8, 101, 39)
  for i, utt in enumerate(batch["id"].numpy()):
    assert int(batch["label"][i]) == expected[utt.decode()][1]


def test_training_pipelines_do_not_autotune(kws_records):
  """Deleting a training run's iterator with autotuning on waited for tf.data's
  autotuning thread (up to 26 s at the end of a demo run). Training pipelines
  turn autotuning off and still read every example; evaluation pipelines keep
  TensorFlow's default."""
  train = data.make_dataset(kws_records, "mfcc", "train", batch_size=8, training=True, seed=1)
  assert train.options().autotune.enabled is False
  ids = [i for b in train for i in b["id"].numpy().tolist()]
  assert sorted(ids) == sorted(i.encode() for i in stored_examples(kws_records, "mfcc", "train"))
  evaluation = data.make_dataset(kws_records, "mfcc", "test", batch_size=8)
  assert evaluation.options().autotune.enabled is not False


def test_spec_augment_masks_channels_and_frames(kws_records):
  augment = data.SpecAugment(freq_masks=2, freq_mask_param=10, time_masks=2,
                             time_mask_param=20)
  plain = next(iter(data.make_dataset(kws_records, "mfcc", "train", batch_size=16)))
  masked = next(iter(data.make_dataset(kws_records, "mfcc", "train", batch_size=16,
                                       training=True, spec_augment=augment,
                                       shuffle_buffer=1)))
  assert plain["features"].shape == masked["features"].shape
  np.testing.assert_array_equal(plain["id"].numpy(), masked["id"].numpy())
  zeroed = masked["features"].numpy() == 0
  assert zeroed.any()
  changed = masked["features"].numpy() != plain["features"].numpy()
  assert np.array_equal(changed, zeroed & (plain["features"].numpy() != 0))
  # A time mask zeroes every channel of a frame; a frequency mask every frame of a channel.
  whole_frames = zeroed.all(axis=2).any(axis=1)
  whole_channels = zeroed.all(axis=1).any(axis=1)
  assert (whole_frames | whole_channels).mean() > 0.5


def _zeroed_bands(mask_2d):
  """(channel bands, frame bands): lengths of the runs of fully zeroed columns / rows."""
  def runs(flags):
    edges = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    return list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
  return runs(mask_2d.all(axis=0)), runs(mask_2d.all(axis=1))


def test_spec_augment_masks_are_tensorflow_io_masks():
  """One frequency and one time mask: the same band structure as tfio's masks."""
  import tensorflow_io as tfio
  ones = tf.ones([100, 40])
  ours = data.SpecAugment(freq_masks=1, freq_mask_param=12, time_masks=0)
  ours_t = data.SpecAugment(freq_masks=0, time_masks=1, time_mask_param=15)
  widths = {"ours_f": [], "tfio_f": [], "ours_t": [], "tfio_t": []}
  for i in range(200):
    seed = tf.constant([i, 7], tf.int64)
    for name, masked in (("ours_f", ours(ones, seed)),
                         ("tfio_f", tfio.audio.freq_mask(ones, param=12)),
                         ("ours_t", ours_t(ones, seed)),
                         ("tfio_t", tfio.audio.time_mask(ones, param=15))):
      zeroed = masked.numpy() == 0
      channel_bands, frame_bands = _zeroed_bands(zeroed)
      bands = channel_bands if name.endswith("f") else frame_bands
      # At most one contiguous band, nothing else touched.
      assert len(bands) <= 1
      assert zeroed.sum() == (sum(bands) * (100 if name.endswith("f") else 40))
      widths[name].append(bands[0] if bands else 0)
  for ours_name, ref_name, param in (("ours_f", "tfio_f", 12), ("ours_t", "tfio_t", 15)):
    assert max(widths[ours_name]) <= param and max(widths[ref_name]) <= param
    # Widths are uniform on 0..param for both: means agree within sampling error.
    assert abs(np.mean(widths[ours_name]) - np.mean(widths[ref_name])) < 1.5


def test_spec_augment_is_a_function_of_the_seed(kws_records):
  augment = data.SpecAugment(freq_masks=2, freq_mask_param=10, time_masks=2, time_mask_param=20)

  def first_batch():
    ds = data.make_dataset(kws_records, "mfcc", "train", batch_size=8, training=True,
                           spec_augment=augment, seed=5)
    return next(iter(ds))["features"].numpy()

  np.testing.assert_array_equal(first_batch(), first_batch())


def write_guidance(records_dir, guidance_dir, split, mutate=None):
  """Fake guidance shards: per record its id and a 'logits' vector derived from the id."""
  os.makedirs(guidance_dir, exist_ok=True)
  metadata = records.load_metadata(records_dir)
  compression = records.tf_compression(metadata.compression)
  for path in data.shard_paths(records_dir, "mfcc", split):
    ids = [tf.train.Example.FromString(r.numpy()).features.feature["id"].bytes_list.value[0]
           for r in tf.data.TFRecordDataset(path, compression)]
    if mutate:
      ids = mutate(os.path.basename(path), ids)
    with tf.io.TFRecordWriter(os.path.join(guidance_dir, os.path.basename(path))) as w:
      for utt in ids:
        logits = [float(len(utt)), float(sum(utt) % 97)]
        w.write(tf.train.Example(features=tf.train.Features(feature={
            "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[utt])),
            "logits": tf.train.Feature(float_list=tf.train.FloatList(value=logits)),
        })).SerializeToString())


GUIDANCE_SPEC = {"id": tf.io.FixedLenFeature([], tf.string),
                 "logits": tf.io.FixedLenFeature([2], tf.float32)}


def test_guidance_join_matches_ids(kws_records, tmp_path):
  write_guidance(kws_records, tmp_path / "g", "train")
  guidance = data.Guidance(str(tmp_path / "g"), GUIDANCE_SPEC)
  n = 0
  for batch in data.make_dataset(kws_records, "mfcc", "train", batch_size=8,
                                 guidance=guidance):
    for utt, logits in zip(batch["id"].numpy(), batch["guidance_logits"].numpy()):
      assert logits.tolist() == [float(len(utt)), float(sum(utt) % 97)]
      n += 1
  assert n == records.load_metadata(kws_records).splits["train"].examples


@pytest.mark.parametrize("damage", ["swap", "short", "long"])
def test_guidance_mismatch_is_a_clear_error(kws_records, tmp_path, damage):
  def mutate(name, ids):
    if not name.startswith("train-00001"):
      return ids
    if damage == "swap":
      return ids[:2][::-1] + ids[2:]
    if damage == "short":
      return ids[:-1]
    return ids + [b"extra"]

  write_guidance(kws_records, tmp_path / "g", "train", mutate)
  guidance = data.Guidance(str(tmp_path / "g"), GUIDANCE_SPEC)
  ds = data.make_dataset(kws_records, "mfcc", "train", batch_size=8, guidance=guidance)
  with pytest.raises(tf.errors.InvalidArgumentError, match="guidance does not match"):
    for _ in ds:
      pass


def test_missing_guidance_shard(kws_records, tmp_path):
  write_guidance(kws_records, tmp_path / "g", "train")
  victim = sorted(os.listdir(tmp_path / "g"))[0]
  os.remove(tmp_path / "g" / victim)
  with pytest.raises(FileNotFoundError, match=victim):
    data.make_dataset(kws_records, "mfcc", "train", batch_size=8,
                      guidance=data.Guidance(str(tmp_path / "g"), GUIDANCE_SPEC))


def test_unknown_split_or_format(kws_records):
  with pytest.raises(ValueError, match="no split 'dev'"):
    data.make_dataset(kws_records, "mfcc", "dev", batch_size=8)
  with pytest.raises(ValueError, match="no format 'logmel'"):
    data.make_dataset(kws_records, "logmel", "train", batch_size=8)
