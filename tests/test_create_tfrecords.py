"""The TFRecord converter end to end on a synthesized corpus."""
import filecmp
import functools
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import soundfile as sf

import kws_tf  # noqa: F401
import tensorflow as tf

from conftest import REPO, run_module
from data_prep import corpora
from kws_tf import audio, features, text

MODULE = "data_prep.create_tfrecords"


def convert(corpus, out, *extra, check=True):
  return run_module(MODULE, f"--data_dir={corpus}", "--corpus=vivos", f"--out_dir={out}",
                    *extra, check=check)


def read_records(path, compression=""):
  out = []
  for raw in tf.data.TFRecordDataset(path, compression):
    out.append(tf.train.Example.FromString(raw.numpy()))
  return out


def feature_value(example, key):
  feature = example.features.feature[key]
  kind = feature.WhichOneof("kind")
  return list(getattr(feature, kind).value)


def tree_files(root):
  return sorted(os.path.relpath(p, root) for p in glob.glob(f"{root}/**", recursive=True)
                if os.path.isfile(p))


def inject_bad_files(corpus):
  """Damages the train split; returns {utt id: expected skip reason}."""
  waves = sorted(glob.glob(f"{corpus}/train/waves/*/*.wav"))
  expected = {}

  def utt(path):
    return os.path.splitext(os.path.basename(path))[0]

  with open(waves[0], "wb") as f:  # corrupt: random bytes
    f.write(np.random.default_rng(0).bytes(3000))
  expected[utt(waves[0])] = "unreadable"
  blob = open(waves[1], "rb").read()  # truncated: header claims more frames than exist
  with open(waves[1], "wb") as f:
    f.write(blob[:len(blob) // 2])
  expected[utt(waves[1])] = "truncated"
  sf.write(waves[2], np.zeros(0, np.int16), 16000, subtype="PCM_16")  # empty
  expected[utt(waves[2])] = "empty"
  nan = np.full(16000, np.nan, np.float32)  # NaN samples in a float wav
  sf.write(waves[3], nan, 16000, subtype="FLOAT")
  expected[utt(waves[3])] = "nan"
  os.remove(waves[4])  # listed in prompts.txt, no audio
  expected[utt(waves[4])] = "missing"
  # Resampled and downmixed, not skipped: 44.1 kHz stereo.
  samples, rate = sf.read(waves[5], dtype="float32")
  import soxr
  stereo = soxr.resample(samples, rate, 44100)
  sf.write(waves[5], np.stack([stereo, stereo * 0.5], axis=1), 44100, subtype="PCM_16")
  # A transcript that is not UTF-8, and a wav without a transcript.
  prompts = f"{corpus}/train/prompts.txt"
  lines = open(prompts, "rb").read().splitlines()
  bad_id = lines[6].split(b" ")[0].decode()
  lines[6] = bad_id.encode() + b" \xff\xfe KH\xc3"
  expected[bad_id] = "non-utf8 transcript"
  orphan_id = lines[7].split(b" ")[0].decode()
  del lines[7]
  expected[orphan_id] = "missing transcript"
  open(prompts, "wb").write(b"\n".join(lines) + b"\n")
  return expected


def test_ctc_end_to_end_with_bad_files(corpus_copy, tmp_path):
  expected = inject_bad_files(corpus_copy)
  out = tmp_path / "records"
  result = convert(corpus_copy, out, "--splits=train,test", "--formats=raw,mfcc,logmel",
                   "--task=ctc", "--cores=2", "--examples_per_shard=4",
                   "--max_skip_fraction=0.5")
  assert "skipped" in result.stdout
  metadata = json.load(open(out / "metadata.json"))
  skipped = [json.loads(line) for line in open(out / "skipped.jsonl")]
  reasons = {s["id"]: s["reason"] for s in skipped}
  for utt_id, reason in expected.items():
    assert reason in reasons[utt_id], (utt_id, reasons.get(utt_id))
  assert metadata["skipped"] == len(skipped) == len(expected)

  utts = corpora.read_corpus("vivos", str(corpus_copy), ["train", "test"])
  n_train = sum(u.split == "train" for u in utts)
  assert metadata["splits"]["train"]["examples"] == n_train - len(expected)
  assert metadata["splits"]["test"]["examples"] == sum(u.split == "test" for u in utts)

  vocab = text.Vocabulary.load(out / "vocab.json")
  assert vocab.symbols[0] == "<blank>" and vocab.symbols[1] == " "
  assert metadata["vocabulary"]["symbols"] == vocab.symbols
  by_id = {u.id: u for u in utts}

  # Identical sharding: record i of shard k is the same example in every format.
  shards = metadata["splits"]["train"]["shards"]
  assert [s["name"] for s in shards] == [
      f"train-{k:05d}-of-{len(shards):05d}.tfrecord" for k in range(len(shards))]
  all_ids = []
  for shard in shards:
    per_format = {f: read_records(str(out / f / shard["name"]))
                  for f in ("raw", "mfcc", "logmel")}
    ids = [[feature_value(e, "id")[0] for e in recs] for recs in per_format.values()]
    assert ids[0] == ids[1] == ids[2]
    assert len(ids[0]) == shard["examples"]
    all_ids += ids[0]
  assert all_ids == sorted(all_ids)

  # The stored features are the front end applied to the audio as read.
  example = read_records(str(out / "mfcc" / shards[-1]["name"]))[0]
  utt_id = feature_value(example, "id")[0].decode()
  waveform = audio.read_audio(by_id[utt_id].audio_path)
  mfcc = features.default_config("mfcc")
  expected_features = mfcc.compute(tf.constant(waveform)).numpy()
  stored = np.frombuffer(feature_value(example, "features")[0], "<f4").reshape(
      -1, mfcc.num_channels)
  np.testing.assert_allclose(stored, expected_features, atol=1e-4)
  assert feature_value(example, "num_frames")[0] == len(stored)
  labels = feature_value(example, "labels")
  assert vocab.decode(labels) == text.normalize(by_id[utt_id].text)

  raw = read_records(str(out / "raw" / shards[-1]["name"]))[0]
  samples = np.frombuffer(feature_value(raw, "features")[0], "<i2")
  np.testing.assert_allclose(samples / 32767, waveform, atol=1.5 / 32767)

  # The 44.1 kHz stereo file was resampled and downmixed, not skipped.
  stereo_id = sorted(os.path.splitext(os.path.basename(p))[0]
                     for p in glob.glob(f"{corpus_copy}/train/waves/*/*.wav"))
  assert all(reasons.get(i) != "unreadable" for i in stereo_id[4:6])

  # Normalisation statistics from the train split, one per channel.
  stats = metadata["normalization"]["mfcc"]
  assert len(stats["mean"]) == len(stats["std"]) == 39
  assert metadata["normalization"]["splits"] == ["train"]
  assert metadata["formats"]["logmel"]["num_channels"] == 80
  assert metadata["formats"]["raw"]["dtype"] == "int16"


def test_kws_clips_from_alignments(synthetic_corpus, tmp_path):
  out = tmp_path / "kws"
  convert(synthetic_corpus, out, "--splits=train,test", "--formats=mfcc", "--task=kws",
          f"--alignments={synthetic_corpus}/*/alignments.ctm", "--cores=1",
          "--negatives_per_positive=0.5", "--examples_per_shard=50")
  metadata = json.load(open(out / "metadata.json"))
  classes = metadata["classes"]
  assert classes == list(text.KEYWORDS) + ["negative"]
  alignments = corpora.read_ctm([f"{synthetic_corpus}/train/alignments.ctm"])
  keyword_words = sum(text.normalize(w.word) in text.KEYWORDS
                      for words in alignments.values() for w in words)
  counts = metadata["splits"]["train"]["classes"]
  assert sum(v for k, v in counts.items() if k != "negative") == keyword_words
  assert counts["negative"] == round(0.5 * keyword_words)

  mfcc = features.default_config("mfcc")
  frames = mfcc.num_frames(16000)
  for shard in metadata["splits"]["train"]["shards"]:
    for example in read_records(str(out / "mfcc" / shard["name"])):
      label = feature_value(example, "label")[0]
      word = feature_value(example, "text")[0].decode()
      assert classes[label] == word
      assert feature_value(example, "num_frames")[0] == frames
      utt = feature_value(example, "utterance")[0].decode()
      start = feature_value(example, "start")[0]
      spans = [(w.start, w.end) for w in alignments[utt]
               if text.normalize(w.word) in text.KEYWORDS]
      if word == "negative":
        assert all(start + 1.0 <= s + 1e-3 or start >= e - 1e-3 for s, e in spans)
      else:
        centre = start + 0.5
        assert any(abs((s + e) / 2 - centre) < 2e-3 for s, e in spans)


def test_kws_without_alignments_is_a_clear_error(synthetic_corpus, tmp_path):
  result = convert(synthetic_corpus, tmp_path / "kws", "--task=kws", check=False)
  assert result.returncode != 0
  assert "--alignments" in result.stderr


def test_kill_and_resume_is_byte_identical_and_cores_do_not_matter(synthetic_corpus,
                                                                   tmp_path):
  # 30 s log-mel windows make each shard slow enough to kill the run half-way.
  args = ["--splits=train,test", "--formats=logmel,raw", "--task=ctc",
          "--feature_params=logmel.pad_to_seconds=30", "--examples_per_shard=1",
          "--compression=gzip"]
  reference = tmp_path / "reference"
  convert(synthetic_corpus, reference, *args, "--cores=2")

  resumed = tmp_path / "resumed"
  command = [sys.executable, "-m", MODULE, f"--data_dir={synthetic_corpus}",
             "--corpus=vivos", f"--out_dir={resumed}", "--cores=1", *args]
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
  deadline = time.time() + 120
  while time.time() < deadline:
    if len(glob.glob(f"{resumed}/progress/*.json")) >= 3:
      break
    time.sleep(0.005)
  os.killpg(process.pid, signal.SIGKILL)
  process.wait()
  done = len(glob.glob(f"{resumed}/progress/*.json"))
  total = len(glob.glob(f"{reference}/progress/*.json"))
  assert 3 <= done < total, "the kill should land half-way"
  assert not os.path.exists(resumed / "metadata.json")

  result = convert(synthetic_corpus, resumed, *args, "--cores=1")
  assert f"({done} already complete)" in result.stdout
  assert tree_files(reference) == tree_files(resumed)
  for name in tree_files(reference):
    assert filecmp.cmp(reference / name, resumed / name, shallow=False), name


def test_same_out_dir_with_other_parameters_is_refused(synthetic_corpus, tmp_path):
  out = tmp_path / "records"
  convert(synthetic_corpus, out, "--splits=test", "--formats=mfcc", "--task=ctc",
          "--stats_splits=none")
  result = convert(synthetic_corpus, out, "--splits=test", "--formats=mfcc", "--task=ctc",
                   "--stats_splits=none", "--feature_params=mfcc.num_mel_bins=64", check=False)
  assert result.returncode != 0
  assert "feature_params" in result.stderr and "another --out_dir" in result.stderr


def test_exit_code_when_too_much_is_skipped(corpus_copy, tmp_path):
  for path in glob.glob(f"{corpus_copy}/test/waves/*/*.wav")[:2]:
    open(path, "wb").write(b"not audio")
  result = convert(corpus_copy, tmp_path / "r", "--splits=test", "--formats=mfcc",
                   "--task=ctc", "--stats_splits=none", "--max_skip_fraction=0.1", check=False)
  assert result.returncode == 1
  assert "max_skip_fraction" in result.stderr
  for path in glob.glob(f"{corpus_copy}/test/waves/*/*.wav"):
    open(path, "wb").write(b"not audio")
  result = convert(corpus_copy, tmp_path / "r2", "--splits=test", "--formats=mfcc",
                   "--task=ctc", "--stats_splits=none", "--max_skip_fraction=1", check=False)
  assert result.returncode == 1
  assert "nothing was converted" in result.stderr


def test_reuses_a_vocabulary(corpus_copy, tmp_path):
  prompts = corpus_copy / "test" / "prompts.txt"
  lines = prompts.read_text(encoding="utf-8").splitlines()
  foreign_id = lines[0].split(" ")[0]
  lines[0] += " JAZZ"  # no j or z in Vietnamese, so not in the train vocabulary
  prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
  first = tmp_path / "train"
  convert(corpus_copy, first, "--splits=train", "--formats=mfcc", "--task=ctc")
  second = tmp_path / "test"
  convert(corpus_copy, second, "--splits=test", "--formats=mfcc", "--task=ctc",
          "--stats_splits=none", f"--vocab={first}/vocab.json", "--max_skip_fraction=1")
  assert (json.load(open(second / "metadata.json"))["vocabulary"] ==
          json.load(open(first / "metadata.json"))["vocabulary"])
  skipped = {s["id"]: s["reason"] for s in map(json.loads, open(second / "skipped.jsonl"))}
  assert {"j", "z"} <= set(skipped[foreign_id].rpartition(": ")[2])
  assert all(r.startswith("characters not in the vocabulary") for r in skipped.values())


def test_help_lists_the_flags():
  result = run_module(MODULE, "--helpfull", check=False)  # absl exits 1 after help
  for flag in ("--data_dir", "--corpus", "--out_dir", "--splits", "--formats", "--task",
               "--keywords", "--clip_seconds", "--negatives_per_positive", "--alignments",
               "--cores", "--examples_per_shard", "--vocab", "--oov", "--limit", "--compression",
               "--max_skip_fraction", "--runner", "--beam_pipeline_options"):
    assert flag in result.stdout, flag


def test_feature_params_parse_into_configs():
  from data_prep.shard_plan import parse_feature_params
  params = parse_feature_params(
      ["mfcc", "logmel", "power"],
      ["mfcc.num_mel_bins=64", "mfcc.dft=matmul", "logmel.pad_to_seconds=30",
       "power.log=true", "power.log_offset=1e-3"], 16000)
  assert params["mfcc"]["num_mel_bins"] == 64 and params["mfcc"]["dft"] == "matmul"
  assert params["logmel"]["pad_to_seconds"] == 30
  assert params["power"]["log"] is True and params["power"]["log_offset"] == 1e-3
  with pytest.raises(ValueError, match="not in --formats"):
    parse_feature_params(["mfcc"], ["logmel.pad_to_seconds=30"], 16000)
  with pytest.raises(ValueError, match="frames_per_second"):
    parse_feature_params(["mfcc"], ["mfcc.frames_per_second=3"], 16000)


def test_unknown_split_is_a_clear_error_and_writes_nothing(synthetic_corpus, tmp_path):
  result = convert(synthetic_corpus, tmp_path / "r", "--splits=dev", check=False)
  assert result.returncode != 0
  assert "split 'dev' not found" in result.stderr and "available: test, train" in result.stderr
  assert not (tmp_path / "r").exists()


def test_only_workers_that_fill_the_cpus_are_pinned(monkeypatch):
  from data_prep import affinity, shard_worker
  monkeypatch.setattr(affinity, "usable_cpus", lambda: [3, 5])
  assert shard_worker.worker_cpus(2, pin=True) == [3, 5]
  assert shard_worker.worker_cpus(2, pin=False) is None
  assert shard_worker.worker_cpus(1, pin=True) is None   # another job may run beside it
  assert shard_worker.worker_cpus(3, pin=True) is None   # more workers than CPUs


def _thread_affinities_after_init(config, cpus, started, results):
  """Spawned worker: the converter's set-up, a TensorFlow op and a new thread, then
  the CPU set of every thread of the process."""
  import threading
  from data_prep import shard_worker
  shard_worker.init_worker(config, cpus, started)
  shard_worker._WORKER["front_ends"]["mfcc"].compute(np.zeros(4000, np.float32))
  late = threading.Thread(target=time.sleep, args=(1,))
  late.start()
  results.put(sorted(sorted(os.sched_getaffinity(int(t)))
                     for t in os.listdir("/proc/self/task")))
  late.join()


def test_each_pinned_worker_and_all_its_threads_run_on_its_own_cpu():
  import multiprocessing
  from data_prep import affinity
  cpus = affinity.usable_cpus()
  config = {"feature_params": {"mfcc": features.default_config("mfcc").to_dict()}}
  context = multiprocessing.get_context("spawn")
  started, results = context.Value("i", 0), context.Queue()
  for index in range(2):  # one after the other: worker i takes cpus[i]
    worker = context.Process(target=_thread_affinities_after_init,
                             args=(config, cpus, started, results))
    worker.start()
    threads = results.get(timeout=120)
    worker.join()
    assert worker.exitcode == 0
    assert len(threads) >= 3  # main, TensorFlow's pools, the late thread
    assert threads == [[cpus[index % len(cpus)]]] * len(threads)
  assert started.value == 2


def test_chunks_end_at_the_example_or_sample_budget(synthetic_corpus, monkeypatch):
  from data_prep import shard_plan, shard_worker
  waves = sorted(glob.glob(f"{synthetic_corpus}/train/waves/*/*.wav"))[:5]
  items = [shard_plan.Item(id=f"u{i}", utt=f"u{i}", path=p, text="x")
           for i, p in enumerate(waves)]
  items.insert(2, shard_plan.Item(id="u_missing", utt="u_missing", path="/no/such.wav", text="x"))
  config = {"sample_rate": 16000, "min_seconds": None, "max_seconds": None,
            "clip_seconds": 1.0}

  def chunks():
    cache, skipped, out, begin = {"seconds": {}}, [], [], 0
    while begin < len(items):
      signals, begin = shard_worker._read_chunk(items, begin, config, cache, skipped)
      out.append([item.id for item, _ in signals])
    return out, skipped

  monkeypatch.setattr(shard_worker, "CHUNK_EXAMPLES", 4)
  out, skipped = chunks()
  assert out == [["u0", "u1", "u2"], ["u3", "u4"]]  # the missing file counts
  assert [s["id"] for s in skipped] == ["u_missing"]
  # A budget below two waveforms: every chunk ends at its first signal.
  shortest = min(len(audio.read_audio(p)) for p in waves)
  monkeypatch.setattr(shard_worker, "CHUNK_SAMPLES", shortest)
  out, _ = chunks()
  assert out == [["u0"], ["u1"], ["u2"], ["u3"], ["u4"]]  # u_missing went with u2


def test_batched_features_of_int16_float_and_mixed_signals_agree():
  from data_prep import shard_worker
  rng = np.random.default_rng(4)
  pcm = [rng.integers(-32768, 32768, n, np.int16) for n in (5000, 12000, 700, 8000)]
  floats = [x / np.float32(32768) for x in pcm]
  mixed = [pcm[0], floats[1], pcm[2], floats[3]]
  mfcc = features.default_config("mfcc")
  expected = [mfcc(x).numpy() for x in floats]
  for signals in (pcm, floats, mixed):
    for got, want in zip(shard_worker.batched_features(mfcc, signals), expected):
      np.testing.assert_allclose(got, want, atol=1e-4)


@functools.lru_cache(maxsize=None)
def converter_defaults() -> str:
  """The converter's flags at their defaults, as JSON. Read in a fresh process: its
  flags (``--cores``...) clash with those of other binaries the suite imports here."""
  script = ("import json; from absl import flags; from data_prep import create_tfrecords; "
            "print(json.dumps({f.name: f.default for f in "
            "flags.FLAGS.get_flags_for_module(create_tfrecords.__name__)}))")
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True,
                          capture_output=True, text=True)
  return result.stdout.strip().splitlines()[-1]


def plan_args(data_dir, **overrides):
  """The converter's flags at their defaults, for ``shard_plan.build_plan``."""
  values = json.loads(converter_defaults())
  values.update(data_dir=str(data_dir), splits=["train"], task="ctc", **overrides)
  return types.SimpleNamespace(**values)


def write_vivos(root, prompts):
  """A VIVOS train split: one 0.2 s wav per ``{utterance id: transcript}``."""
  for utt in prompts:
    path = root / "train" / "waves" / utt.rsplit("_", 1)[0] / f"{utt}.wav"
    os.makedirs(path.parent, exist_ok=True)
    sf.write(str(path), np.zeros(3200, np.int16), 16000, subtype="PCM_16")
  (root / "train" / "prompts.txt").write_text(
      "".join(f"{utt} {line}\n" for utt, line in prompts.items()), encoding="utf-8")
  return root


def planned_labels(shards):
  return {item.id: item.labels for chunk in shards["train"] for item in chunk}


PROMPTS = {"VIVOSSPK01_R001": "ĂN CƠM", "VIVOSSPK01_R002": "TÔI ĐI HỌC",
           "VIVOSSPK02_R001": "MỜI ÔNG XƠI NƯỚC"}


def test_removing_a_wav_leaves_every_other_records_labels_unchanged(tmp_path):
  from data_prep import shard_plan
  corpus = write_vivos(tmp_path / "vivos", PROMPTS)  # only R001 holds "ă"
  plan, shards = shard_plan.build_plan(plan_args(corpus))
  before = planned_labels(shards)
  os.remove(corpus / "train" / "waves" / "VIVOSSPK01" / "VIVOSSPK01_R001.wav")
  plan_after, shards = shard_plan.build_plan(plan_args(corpus))
  after = planned_labels(shards)
  assert after == {k: v for k, v in before.items() if k != "VIVOSSPK01_R001"}
  assert plan_after["vocabulary"] == plan["vocabulary"]
  assert plan_after["skipped"][0]["reason"] == "missing audio"


def test_latin_letters_and_digits_in_a_transcript_do_not_change_the_vocabulary(tmp_path):
  from data_prep import shard_plan
  plan, shards = shard_plan.build_plan(plan_args(write_vivos(tmp_path / "a", PROMPTS)))
  foreign = dict(PROMPTS, VIVOSSPK02_R002="XEM WIFI LÚC 5 GIỜ")
  corpus = write_vivos(tmp_path / "b", foreign)
  for oov, kept in [("map", None), ("drop", "xem ii lúc giờ"), ("skip", None)]:
    plan_foreign, shards_foreign = shard_plan.build_plan(plan_args(corpus, oov=oov))
    assert plan_foreign["vocabulary"] == plan["vocabulary"]
    labels = planned_labels(shards_foreign)
    assert {k: v for k, v in labels.items() if k != "VIVOSSPK02_R002"} == planned_labels(shards)
    report, = plan_foreign["oov"]
    assert report["id"] == "VIVOSSPK02_R002" and report["characters"] == "5fw"
    assert report["transcript"] == "xem wifi lúc 5 giờ"
    if kept:
      assert report["action"] == "dropped" and report["text"] == kept
      assert text.Vocabulary.read("vietnamese").decode(labels["VIVOSSPK02_R002"]) == kept
    else:
      assert report["action"] == "skipped" and "VIVOSSPK02_R002" not in labels
      assert plan_foreign["skipped"] == [{
          "id": "VIVOSSPK02_R002", "reason": "characters not in the vocabulary: 5fw",
          "path": str(corpus / "train" / "waves" / "VIVOSSPK02" / "VIVOSSPK02_R002.wav")}]


def test_out_of_vocabulary_characters_are_listed_per_utterance_in_oov_jsonl(corpus_copy,
                                                                            tmp_path):
  prompts = corpus_copy / "test" / "prompts.txt"
  lines = prompts.read_text(encoding="utf-8").splitlines()
  foreign_id = lines[0].split(" ")[0]
  lines[0] += " ZALO 24"
  prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
  out = tmp_path / "records"
  result = convert(corpus_copy, out, "--splits=test", "--formats=mfcc", "--task=ctc",
                   "--oov=drop", "--stats_splits=none")
  assert "1 utterances hold characters outside the vocabulary ('24z'" in result.stdout
  report, = map(json.loads, open(out / "oov.jsonl", encoding="utf-8"))
  assert report["id"] == foreign_id and report["characters"] == "24z"
  assert report["action"] == "dropped" and report["text"].endswith(" alo")
  metadata = json.load(open(out / "metadata.json"))
  assert metadata["vocabulary"] == text.Vocabulary.read("vietnamese").to_json()
  assert metadata["params"]["oov"] == "drop"
  assert metadata["params"]["vocab_source"] == "vietnamese.txt"
  vocab = text.Vocabulary.load(out / "vocab.json")
  for shard in metadata["splits"]["test"]["shards"]:
    for example in read_records(str(out / "mfcc" / shard["name"])):
      if feature_value(example, "id")[0].decode() == foreign_id:
        assert vocab.decode(feature_value(example, "labels")) == report["text"]


def test_manifest_segments_become_records_of_their_audio(tmp_path):
  root = tmp_path / "manifest"
  os.makedirs(root)
  noise = np.random.default_rng(2).integers(-8000, 8000, 3 * 16000).astype(np.int16)
  sf.write(str(root / "talk.wav"), noise, 16000, subtype="PCM_16")
  with open(root / "train.jsonl", "w", encoding="utf-8") as f:
    for offset, duration, line in [(0.5, 1.0, "một"), (1.75, 0.8, "hai")]:
      f.write(json.dumps({"audio_filepath": "talk.wav", "offset": offset,
                          "duration": duration, "text": line}, ensure_ascii=False) + "\n")
  out = tmp_path / "records"
  run_module(MODULE, f"--data_dir={root}", "--corpus=manifest", f"--out_dir={out}",
             "--splits=train", "--formats=raw", "--task=ctc", "--cores=1")
  metadata = json.load(open(out / "metadata.json"))
  shard, = metadata["splits"]["train"]["shards"]
  examples = read_records(str(out / "raw" / shard["name"]))
  got = {feature_value(e, "id")[0].decode(): np.frombuffer(feature_value(e, "features")[0], "<i2")
         for e in examples}
  assert sorted(got) == ["talk-0000500", "talk-0001750"]
  for utt_id, (start, stop) in [("talk-0000500", (8000, 24000)),
                                ("talk-0001750", (28000, 40800))]:
    expected, _ = sf.read(str(root / "talk.wav"), start=start, stop=stop, dtype="int16")
    np.testing.assert_array_equal(got[utt_id], expected)
  assert metadata["splits"]["train"]["seconds"] == 1.8


def test_ctm_words_past_the_audio_end_are_skipped(synthetic_corpus, tmp_path):
  from data_prep import shard_plan, shard_worker
  train_ctm = f"{synthetic_corpus}/train/alignments.ctm"
  alignments = corpora.read_ctm([train_ctm])
  moved = next(utt for utt, words in sorted(alignments.items())
               if any(text.normalize(w.word) in text.KEYWORDS for w in words))
  lines = []
  for line in open(train_ctm, encoding="utf-8").read().splitlines():
    fields = line.split()
    if fields[0] == moved:  # the same words, 30 s later: past the end of its 2-4 s audio
      fields[2] = f"{float(fields[2]) + 30:.3f}"
    lines.append(" ".join(fields))
  lines.append("VSYN999_R001 1 0.000 0.300 MỘT")  # an utterance the corpus lacks
  ctm = tmp_path / "train.ctm"
  ctm.write_text("\n".join(lines) + "\n", encoding="utf-8")
  out = tmp_path / "kws"
  result = convert(synthetic_corpus, out, "--splits=train,test", "--formats=raw,mfcc",
                   "--task=kws", f"--alignments={ctm},{synthetic_corpus}/test/alignments.ctm",
                   "--cores=1", "--context_seconds=0.25")
  assert "1 utterances of the CTM files are not in --splits" in result.stdout
  skipped = {s["id"]: s for s in map(json.loads, open(out / "skipped.jsonl"))}
  assert skipped[moved]["reason"] == shard_worker.PAST_AUDIO_END
  assert "the aligned words end at" in skipped[moved]["message"]
  assert skipped["VSYN999_R001"] == {"id": "VSYN999_R001", "path": str(ctm),
                                     "reason": shard_plan.NOT_IN_SPLITS}
  assert len(skipped) == 2  # the train CTM aligns every other utterance inside its audio
  metadata = json.load(open(out / "metadata.json"))
  assert metadata["skipped"] == 2
  context = int(0.25 * 16000)
  for split, info in metadata["splits"].items():
    for shard in info["shards"]:
      for example in read_records(str(out / "raw" / shard["name"])):
        assert feature_value(example, "utterance")[0].decode() != moved
        samples = np.frombuffer(feature_value(example, "features")[0], "<i2")
        assert np.any(samples[context:len(samples) - context] != 0), \
            feature_value(example, "id")


def test_negative_clips_contain_speech():
  from data_prep import shard_plan
  utt = corpora.Utterance("u1", "/u1.wav", "x", "s", "train")
  # Speech, a 3 s pause, speech, then a keyword.
  words = [corpora.Word(0.0, 0.5, "a"), corpora.Word(3.5, 4.0, "b"),
           corpora.Word(4.5, 4.9, "một")]
  items, skipped = shard_plan.plan_kws([utt], {"u1": words}, ["một"], 1.0, 100.0,
                                       np.random.default_rng(0))
  assert not skipped
  negatives = [i for i in items if i.label == 1]
  assert negatives and all(i.alignment_end == 4.9 for i in items)
  for item in negatives:
    covered = sum(max(min(w.end, item.start + 1.0) - max(w.start, item.start), 0.0)
                  for w in words)
    assert covered >= shard_plan.NEGATIVE_MIN_SPEECH, item.start
  starts = [i.start for i in negatives]
  assert 0.0 in starts and 2.75 in starts and 1.25 not in starts


def test_second_converter_on_a_live_out_dir_is_refused(synthetic_corpus, tmp_path):
  from data_prep import out_dir_lock
  out = tmp_path / "records"
  (out / "mfcc").mkdir(parents=True)
  live = out / "mfcc" / "train-00000-of-00001.tfrecord.tmp-4242"  # the live run's shard
  live.write_bytes(b"partial")
  with out_dir_lock.hold(str(out)) as lock:
    result = convert(synthetic_corpus, out, "--formats=mfcc", "--task=ctc", check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: another converter is writing to {out}: {lock} is held by pid "
        f"{os.getpid()} on {socket.gethostname()}; wait for it to end or stop it")
    assert "Traceback" not in result.stderr
    assert live.exists() and not (out / "plan.json").exists()
  assert not os.path.exists(lock)


def test_lock_of_a_dead_converter_is_taken_over(synthetic_corpus, tmp_path):
  from data_prep import out_dir_lock
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  out = tmp_path / "records"
  out.mkdir()
  lock = out / out_dir_lock.LOCK_FILE
  lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
  result = convert(synthetic_corpus, out, "--splits=test", "--stats_splits=none",
                   "--formats=mfcc", "--task=ctc")
  assert f"taking over the lock of pid {dead.pid}" in result.stdout
  assert (out / "metadata.json").exists() and not lock.exists()


def test_statistics_come_from_the_training_split_only(corpus_copy, tmp_path):
  os.rename(corpus_copy / "train", corpus_copy / "fit")  # no split is named train*
  out = tmp_path / "records"
  refused = convert(corpus_copy, out, "--splits=fit,test", "--formats=mfcc", "--task=ctc",
                    check=False)
  assert refused.returncode != 0 and "Traceback" not in refused.stderr
  error = refused.stderr.strip().splitlines()[-1]
  assert error.startswith("error: --stats_splits:") and "(the splits are fit, test)" in error
  assert not out.exists()

  convert(corpus_copy, out, "--splits=fit,test", "--formats=mfcc", "--task=ctc",
          "--stats_splits=fit")
  metadata = json.load(open(out / "metadata.json"))
  assert metadata["normalization"]["splits"] == ["fit"]
  frames = np.concatenate([
      np.frombuffer(feature_value(e, "features")[0], "<f4").reshape(-1, 39)
      for shard in metadata["splits"]["fit"]["shards"]
      for e in read_records(str(out / "mfcc" / shard["name"]))])
  stats = metadata["normalization"]["mfcc"]
  assert stats["frames"] == len(frames)
  np.testing.assert_allclose(stats["mean"], frames.mean(0), rtol=1e-4, atol=1e-4)


FAILING_WRITER = '''
import errno, os, sys
sys.path.insert(0, {repo!r})
from data_prep import create_tfrecords
from kws_tf import audio
import tensorflow as tf

_TFRecordWriter = tf.io.TFRecordWriter


class FailingWriter:
  """TensorFlow's writer, failing every write to shard 1 of train as FAIL says."""

  def __init__(self, path, options=None):
    self._fails = "train-00001-of-" in path
    self._path = path
    self._writer = _TFRecordWriter(path, options)

  def write(self, record):
    if self._fails and os.environ["FAIL"] == "full_disk":
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if self._fails:  # an exception the pool pickles but cannot unpickle
      raise audio.AudioError(self._path, "unreadable", "not pickle-safe")
    self._writer.write(record)

  def close(self):
    self._writer.close()


tf.io.TFRecordWriter = FailingWriter  # here and, through __mp_main__, in every worker
if __name__ == "__main__":
  create_tfrecords.run()
'''


def _convert_failing(corpus, out, tmp_path, fail, *extra):
  """The converter with writes to shard 1 of train failing as ``fail`` says."""
  script = tmp_path / "failing_writer.py"
  script.write_text(FAILING_WRITER.format(repo=REPO))
  return subprocess.run(
      [sys.executable, str(script), f"--data_dir={corpus}", "--corpus=vivos",
       f"--out_dir={out}", "--splits=train,test", "--formats=mfcc", "--task=ctc",
       "--examples_per_shard=4", "--cores=1", *extra],
      cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ, FAIL=fail))


def _assert_stopped_cleanly_then_resumed(corpus, out, result, message, *extra):
  """``message``: a regular expression of the error between "error: " and the advice;
  ``extra``: flags of the rerun."""
  assert result.returncode != 0 and "Traceback" not in result.stderr
  error = result.stderr.strip().splitlines()[-1]
  assert re.fullmatch(f"error: {message} \\(the finished shards are kept: the same command "
                      "resumes\\)", error), error
  assert not glob.glob(f"{out}/**/*.tmp-*", recursive=True)
  assert not (out / "convert.lock").exists() and not (out / "metadata.json").exists()
  done = len(glob.glob(f"{out}/progress/*.json"))
  assert (out / "mfcc" / "train-00000-of-00005.tfrecord").exists() and done >= 1
  again = convert(corpus, out, "--splits=train,test", "--formats=mfcc", "--task=ctc",
                  "--examples_per_shard=4", "--cores=1", *extra)
  assert f"({done} already complete)" in again.stdout
  assert json.load(open(out / "metadata.json"))["splits"]["train"]["examples"] == 18


def test_full_disk_is_a_one_line_error_and_the_rerun_resumes(synthetic_corpus, tmp_path):
  out = tmp_path / "records"
  result = _convert_failing(synthetic_corpus, out, tmp_path, "full_disk")
  _assert_stopped_cleanly_then_resumed(
      synthetic_corpus, out, result,
      re.escape(f"{out}/mfcc/train-00001-of-00005.tfrecord: No space left on device"))


def test_worker_error_that_cannot_be_unpickled_is_a_one_line_error(synthetic_corpus, tmp_path):
  out = tmp_path / "records"
  result = _convert_failing(synthetic_corpus, out, tmp_path, "unpicklable")
  shard = re.escape(f"{out}/mfcc/train-00001-of-00005.tfrecord")
  _assert_stopped_cleanly_then_resumed(
      synthetic_corpus, out, result,
      f"shard train-00001-of-00005\\.tfrecord: AudioError: {shard}\\.tmp-\\d+: unreadable: "
      "not pickle-safe")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_shard_writer_on_a_full_disk_names_the_shard_and_leaves_no_temporary(tmp_path):
  from kws_tf import records
  shard = str(tmp_path / "train-00000-of-00001.tfrecord")
  os.symlink("/dev/full", f"{shard}.tmp-{os.getpid()}")  # every write fails with ENOSPC
  writer = records.ShardWriter(shard)
  with pytest.raises(OSError) as error:
    for _ in range(3):
      writer.write(b"x" * 100)
    writer.commit()
  assert error.value.filename == shard and error.value.strerror == "No space left on device"
  writer.abort()
  assert os.listdir(tmp_path) == []


def test_beam_runner_writes_the_bytes_of_the_process_pool(corpus_copy, tmp_path):
  bad = inject_bad_files(corpus_copy)
  args = ["--splits=train,test", "--formats=raw,mfcc", "--task=ctc", "--examples_per_shard=4",
          "--max_skip_fraction=0.5"]
  pool = tmp_path / "pool"
  convert(corpus_copy, pool, *args, "--cores=2")
  beam = tmp_path / "beam"
  result = convert(corpus_copy, beam, *args, "--runner=beam",
                   "--beam_pipeline_options=--direct_num_workers=2 "
                   "--direct_running_mode=multi_processing")
  assert re.search(r"\d shards to write \(0 already complete\), \d+ utterances, Apache Beam",
                   result.stdout)
  assert tree_files(pool) == tree_files(beam)  # no lock, task file or temporary left
  for name in tree_files(pool):
    assert filecmp.cmp(pool / name, beam / name, shallow=False), name
  metadata = json.load(open(beam / "metadata.json"))
  assert metadata["skipped"] == len(bad) and metadata["normalization"]["mfcc"]["frames"] > 0


def test_beam_shard_on_a_full_disk_is_a_one_line_error_and_the_rerun_resumes(
    synthetic_corpus, tmp_path):
  out = tmp_path / "records"
  result = _convert_failing(synthetic_corpus, out, tmp_path, "full_disk", "--runner=beam")
  assert not (out / "beam").exists()
  assert len(glob.glob(f"{out}/progress/*.json")) == 6  # every other shard was written
  _assert_stopped_cleanly_then_resumed(
      synthetic_corpus, out, result,
      re.escape(f"{out}/mfcc/train-00001-of-00005.tfrecord: No space left on device"),
      "--runner=beam")


def test_normalization_combined_across_workers_sums_in_plan_order():
  from data_prep import beam_shards, shard_worker

  def summary(split, index, total):  # one channel, 2 frames
    return {"split": split, "index": index, "moments": {"mfcc": [[total], [1.0]]},
            "frame_count": {"mfcc": 2}}

  # 1e17 + 3 rounds to 1e17: the sum of these depends on the order of the additions.
  summaries = [summary("train", 0, 1e17), summary("train", 1, 3.0),
               summary("train", 2, -1e17), summary("train", 3, 5.0),
               {"split": "test", "index": 0, "moments": {"mfcc": None},
                "frame_count": {"mfcc": 0}}]
  expected = shard_worker.normalization(summaries, ["mfcc"])
  assert expected["mfcc"]["mean"] == [0.625] and expected["mfcc"]["frames"] == 8
  combine = beam_shards.NormalizationFn(["mfcc"])
  accumulators = []
  for part in (summaries[3:], summaries[1:3][::-1], summaries[:1]):  # three workers
    accumulator = combine.create_accumulator()
    for s in part:
      accumulator = combine.add_input(accumulator, s)
    accumulators.append(accumulator)
  assert combine.extract_output(combine.merge_accumulators(accumulators)) == expected
