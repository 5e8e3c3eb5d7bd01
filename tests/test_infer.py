"""Inference over audio files: sliding windows, merged detections, transcripts, the CLI."""
import glob
import json
import os

import numpy as np
import pytest
import soundfile as sf

import kws_tf  # noqa: F401
import tensorflow as tf

from conftest import run_module
from kws_tf import audio, config as config_lib, inference, records, text
from kws_tf.export import tflite
from kws_tf.training import loop

D = inference.Detection
CLASSES = ["có", "là", "negative"]
CARD = {"task": "kws", "sample_rate": 100, "clip_samples": 100,
        "labels": {"classes": CLASSES, "negative": "negative"}}


def test_window_starts_cover_the_audio_and_pad_the_last():
  assert inference.window_starts(50, 100, 25) == [0]
  assert inference.window_starts(100, 100, 25) == [0]
  assert inference.window_starts(101, 100, 25) == [0, 25]
  assert inference.window_starts(300, 100, 50) == [0, 50, 100, 150, 200]
  with pytest.raises(ValueError):
    inference.window_starts(300, 100, 0)


def test_merge_joins_overlapping_detections_of_one_keyword():
  merged = inference.merge_detections([
      D("có", 1.25, 2.25, 0.7), D("có", 1.0, 2.0, 0.6), D("có", 1.5, 2.5, 0.9),
      D("là", 1.25, 2.25, 0.8),   # another keyword at the same time: kept apart
      D("có", 4.0, 5.0, 0.55),    # a later occurrence: kept apart
  ])
  assert merged == [D("có", 1.0, 2.5, 0.9), D("là", 1.25, 2.25, 0.8), D("có", 4.0, 5.0, 0.55)]


def test_merge_joins_consecutive_windows_only_within_the_gap():
  windows = [D("có", 0.0, 1.0, 0.6), D("có", 1.5, 2.5, 0.7)]  # hop 1.5 s, clip 1 s
  assert inference.merge_detections(windows) == windows
  assert inference.merge_detections(windows, gap=0.5) == [D("có", 0.0, 2.5, 0.7)]
  assert inference.merge_detections([D("có", 0.0, 1.0, 0.6), D("có", 1.0, 2.0, 0.7)]) == [
      D("có", 0.0, 2.0, 0.7)]


class LoudnessDetector:
  """A stand-in kws model: "có" when a window holds samples above 0.5, "negative" else."""

  def __call__(self, window):
    loud = float(np.max(np.abs(window)) > 0.5)
    return {"probabilities": np.array([[0.9 * loud, 0.05, 1.0 - 0.95 * loud]], np.float32)}


def test_detect_keywords_slides_windows_and_merges_one_occurrence():
  waveform = np.zeros(600, np.float32)  # 6 s at 100 Hz
  waveform[300:340] = 0.8  # from 3.0 s to 3.4 s
  found = inference.detect_keywords(LoudnessDetector(), CARD, [waveform], threshold=0.5,
                                    hop_seconds=0.25)
  # Windows [s, s + 1) overlapping [3.0, 3.4): s = 2.25 .. 3.25.
  assert found == [D("có", 2.25, 4.25, pytest.approx(0.9))]
  # "negative" never counts, however likely; a higher threshold drops the keyword.
  assert inference.detect_keywords(LoudnessDetector(), CARD, [waveform * 0], 0.5, 0.25) == []
  assert inference.detect_keywords(LoudnessDetector(), CARD, [waveform], 0.95, 0.25) == []
  # The same audio in small blocks gives the same detection.
  assert inference.detect_keywords(LoudnessDetector(), CARD, np.split(waveform, 40), 0.5,
                                   0.25) == found


def test_sliding_windows_over_blocks_are_the_windows_of_the_whole_waveform():
  rng = np.random.default_rng(0)
  for n, window, hop in ((1003, 100, 37), (1003, 100, 150), (50, 100, 25), (100, 100, 25)):
    waveform = rng.standard_normal(n).astype(np.float32)
    blocks = np.split(waveform, np.sort(rng.choice(np.arange(1, n), 20, replace=False)))
    windows = list(inference.sliding_windows(iter(blocks), window, hop))
    assert [start for start, _ in windows] == inference.window_starts(n, window, hop)
    for start, samples in windows:
      expected = np.zeros(window, np.float32)
      piece = waveform[start:start + window]
      expected[:len(piece)] = piece
      np.testing.assert_array_equal(samples, expected)


def test_transcribe_decodes_greedily():
  vocabulary = [text.BLANK, " ", "a", "b"]
  path = [2, 2, 0, 2, 3, 3, 1, 3, 0]  # a a _ a b b ' ' b _  ->  "aab b"
  logits = np.eye(4, dtype=np.float32)[path][np.newaxis] * 5.0

  def model(waveform):
    return {"logits": logits, "logit_frames": np.array([len(path) - 1], np.int32)}

  card = {"labels": {"vocabulary": vocabulary, "blank_index": 0}, "sample_rate": 100,
          "logit_frame_seconds": 0.02, "receptive_field": None}
  assert inference.transcribe(model, card, [np.zeros(10, np.float32)], chunk_seconds=0) == "aab b"


def test_transcribe_merges_repeats_across_chunks(monkeypatch):
  """A chunk boundary inside a run of one symbol does not repeat it; a blank between
  two runs of one symbol still separates them."""
  vocabulary = [text.BLANK, "a", "b"]
  path = np.array([1, 1, 1, 0, 1, 2, 2, 2, 0, 0, 2])  # a a a _ a b b b _ _ b  ->  "aabb"
  pieces = [path[:2], path[2:4], path[4:6], path[6:9], path[9:]]
  card = {"labels": {"vocabulary": vocabulary, "blank_index": 0}}
  chunks = iter([np.eye(3, dtype=np.float32)[p] for p in pieces])
  monkeypatch.setattr(inference, "ctc_logits", lambda model, card, blocks, seconds: chunks)
  assert inference.transcribe(None, card, [], 1.0) == "aabb"


def _write(path, waveform, rate):
  sf.write(str(path), waveform, rate, subtype="PCM_16")
  return str(path)


@pytest.fixture(scope="module")
def exported_kws(kws_train_records, synthetic_corpus, tmp_path_factory):
  """A kws model trained for 2 steps and exported as float32 (what infer reads)."""
  base = tmp_path_factory.mktemp("infer")
  config = config_lib.load(None, [
      "model.name=wav2letter_kws_tiny", "data.batch_size=8", "train.steps=2",
      "train.eval_every=2", "optimizer.warmup_steps=1", "train.early_stopping_patience=0"])
  loop.Trainer(config, str(base / "model"), kws_train_records).run()
  tflite.export(str(base / "model"), kws_train_records, str(base / "export"),
                tflite.ExportConfig(formats=("float32",), audio_dir=str(synthetic_corpus),
                                    num_parity=4, command="pytest"), log=lambda line: None)
  return base / "export"


def _keyword_clip(corpus):
  """The audio of the first aligned "có" of a test speaker, 16 kHz, and its duration."""
  for line in open(os.path.join(corpus, "test", "alignments.ctm"), encoding="utf-8"):
    utt, _, start, duration, word = line.split()
    if text.normalize(word) == "có":
      speaker = utt.rsplit("_", 1)[0]
      waveform = audio.read_audio(os.path.join(corpus, "test", "waves", speaker, utt + ".wav"))
      begin = int(float(start) * 16000)
      return waveform[begin:begin + int(float(duration) * 16000)]
  raise AssertionError("no 'có' in the test alignments")


def test_cli_on_a_long_file_an_unreadable_file_and_a_folder(exported_kws, synthetic_corpus,
                                                            tmp_path):
  folder = tmp_path / "audio"
  folder.mkdir()
  clip = _keyword_clip(synthetic_corpus)
  silence = np.zeros(16000 * 2, np.float32)
  long_wave = np.concatenate([silence, clip, silence, clip, silence])
  _write(folder / "a_long.wav", long_wave, 16000)
  # Another sample rate: resampled to the card's 16 kHz.
  _write(folder / "b_short_22k.flac", np.concatenate([clip, clip]), 22050)
  (folder / "c_broken.wav").write_bytes(b"RIFF not really a wav file")
  model = exported_kws / "model_float32.tflite"

  result = run_module("kws_tf.bin.infer", f"--model={model}", f"--audio={folder}",
                      "--threshold=0", "--output=jsonl", check=False)
  assert result.returncode == 1
  assert f"{folder / 'c_broken.wav'}: unreadable" in result.stderr
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert [os.path.basename(r["file"]) for r in lines] == ["a_long.wav", "b_short_22k.flac"]
  card = json.load(open(exported_kws / "model_float32.json"))
  keywords = [c for c in card["labels"]["classes"] if c != "negative"]
  # With threshold 0 every window detects every keyword: one merged detection each,
  # from the first window's start to the last (padded) window's end.
  seconds = len(long_wave) / 16000
  last_end = inference.window_starts(len(long_wave), 16000, 4000)[-1] / 16000 + 1.0
  detections = lines[0]["detections"]
  assert sorted(d["keyword"] for d in detections) == sorted(keywords)
  for d in detections:
    assert d["start"] == 0.0 and d["end"] == pytest.approx(last_end) and last_end >= seconds
    assert 0.0 <= d["score"] <= 1.0

  text_result = run_module("kws_tf.bin.infer", f"--model={model}",
                           f"--audio={folder / 'a_long.wav'},{folder / 'missing.wav'}",
                           "--threshold=1.0", check=False)
  assert text_result.returncode == 1
  assert text_result.stdout.splitlines() == [f"{folder / 'a_long.wav'}\t-"]
  assert f"{folder / 'missing.wav'}: missing" in text_result.stderr


def _loudness_tflite(path):
  """A TFLite "keyword spotter" with the exported signature: "có" when loud."""
  class Module(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([1, 16000], tf.float32, "waveform")])
    def serve(self, waveform):
      loudness = tf.sqrt(tf.reduce_max(tf.nn.avg_pool1d(
          tf.square(waveform)[:, :, tf.newaxis], 800, 400, "VALID"), axis=[1, 2]))
      keyword = 200.0 * (loudness - 0.02)
      logits = tf.stack([keyword, tf.zeros_like(keyword), -keyword], axis=1)
      return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

  module = Module()
  tf.saved_model.save(module, str(path) + "_saved", signatures={"serving_default": module.serve})
  content = tf.lite.TFLiteConverter.from_saved_model(str(path) + "_saved").convert()
  path.write_bytes(content)
  records.write_json(inference.card_path(str(path)), dict(CARD, sample_rate=16000,
                                                          clip_samples=16000))
  return str(path)


def test_a_keyword_in_long_audio_is_found_near_its_time(synthetic_corpus, tmp_path):
  """Keyword clips placed in silence, through a TFLite file whose scores are known
  (loudness), with the CLI's code path: times come out where the clips are."""
  model = _loudness_tflite(tmp_path / "loudness.tflite")
  clip = _keyword_clip(synthetic_corpus)
  starts = [2.0, 7.5]
  waveform = np.zeros(16000 * 11, np.float32)
  for start in starts:
    waveform[int(start * 16000):int(start * 16000) + len(clip)] = clip
  path = _write(tmp_path / "long.wav", waveform, 16000)

  class Lines:
    def __init__(self):
      self.lines = []

    def write(self, s):
      self.lines.extend(line for line in s.splitlines() if line)

    def flush(self):
      pass

  out, err = Lines(), Lines()
  assert inference.run(model, [path], threshold=0.5, hop_seconds=0.25, output="jsonl",
                       out=out, err=err) == 0
  detections = json.loads(out.lines[0])["detections"]
  assert [d["keyword"] for d in detections] == ["có", "có"]
  duration = len(clip) / 16000
  for d, start in zip(detections, starts):
    # Every window overlapping the word fires, no other: the merged span starts less
    # than a window before the word and ends less than a window after it.
    assert start - 1.0 <= d["start"] <= start and start + duration <= d["end"] <= start + 2.0
    assert d["score"] > 0.5


def test_stream_audio_gives_the_samples_of_read_audio(tmp_path):
  rng = np.random.default_rng(1)
  mono = rng.uniform(-0.9, 0.9, 40000).astype(np.float32)
  same_rate = _write(tmp_path / "same.wav", mono, 16000)
  stereo = str(tmp_path / "stereo_22k.flac")
  sf.write(stereo, np.stack([mono, -0.5 * mono], axis=1), 22050, subtype="PCM_16")
  for path in (same_rate, stereo):
    blocks = list(audio.stream_audio(path, 16000, block_samples=4096))
    assert len(blocks) >= 7 and all(len(b) for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), audio.read_audio(path, 16000))
  cut = tmp_path / "cut.wav"
  cut.write_bytes(open(same_rate, "rb").read()[:-1000])
  with pytest.raises(audio.AudioError, match="truncated"):
    list(audio.stream_audio(str(cut)))
  with pytest.raises(audio.AudioError, match="missing"):
    list(audio.stream_audio(str(tmp_path / "none.wav")))


@pytest.fixture(scope="module")
def exported_ctc(ctc_train_records, synthetic_corpus, tmp_path_factory):
  """A small wav2letter ctc student (8 steps) exported as float32 and int8."""
  base = tmp_path_factory.mktemp("infer_ctc")
  config = config_lib.load(None, [
      "task=ctc", "model.name=wav2letter", "model.params.filters=[32,32]",
      "model.params.widths=[5,3]", "model.params.strides=[2,1]", "model.params.dropouts=[0,0]",
      "data.batch_size=4", "data.validation_split=test", "train.steps=8", "train.eval_every=8",
      "optimizer.warmup_steps=1", "train.early_stopping_patience=0"])
  loop.Trainer(config, str(base / "model"), ctc_train_records).run()
  # The CER of 8 steps means nothing: the accuracy gate is open.
  tflite.export(str(base / "model"), ctc_train_records, str(base / "export"),
                tflite.ExportConfig(formats=("float32", "int8"), audio_dir=str(synthetic_corpus),
                                    num_parity=4, num_calibration=8, max_accuracy_drop=100.0,
                                    command="pytest"), log=lambda line: None)
  return base / "export"


def _long_utterances(corpus, repeats=2):
  """Every test utterance of the corpus, one after the other, ``repeats`` times, 16 kHz,
  over noise 60 dB below full scale. (In digital silence, mel levels 80 dB below the
  file's loudest are clamped to each chunk's loudest: not the logits of one pass.)"""
  paths = sorted(glob.glob(os.path.join(corpus, "test", "waves", "*", "*.wav")))
  speech = np.concatenate([audio.read_audio(p) for p in paths] * repeats)
  return speech + np.random.default_rng(2).normal(0, 1e-3, len(speech)).astype(np.float32)


def test_ctc_chunks_of_a_long_file_give_the_logits_of_one_pass(exported_ctc, synthetic_corpus,
                                                               tmp_path):
  waveform = _long_utterances(synthetic_corpus)
  path = _write(tmp_path / "long.wav", waveform, 16000)
  waveform = audio.read_audio(path)
  assert len(waveform) > 20 * 16000
  for kind, tolerance in (("float32", 1e-4), ("int8", 1e-6)):
    model_path = str(exported_ctc / f"model_{kind}.tflite")
    card, model = inference.read_card(model_path), inference.load_model(model_path)
    assert card["receptive_field"]["right_samples"] > 1000
    whole = model(waveform)
    expected = whole["logits"][0, :int(whole["logit_frames"][0])]
    # 1 s chunks (each with its context) of blocks of 5000 samples.
    pieces = list(inference.ctc_logits(model, card, audio.stream_audio(path, 16000, 5000),
                                       chunk_seconds=1.0))
    assert len(pieces) > 20
    np.testing.assert_allclose(np.concatenate(pieces), expected, atol=tolerance, rtol=0)
  # Without the receptive field as context, the frames near the chunk edges differ.
  blind = dict(card, receptive_field={"left_samples": 0, "right_samples": 0,
                                      "logit_hop_samples": 320})
  chunked = np.concatenate(list(inference.ctc_logits(model, blind, [waveform], 1.0)))
  assert chunked.shape == expected.shape and np.max(np.abs(chunked - expected)) > 1e-3

  model_path = str(exported_ctc / "model_float32.tflite")
  one_pass = run_module("kws_tf.bin.infer", f"--model={model_path}", f"--audio={path}",
                        "--chunk_seconds=0")
  in_chunks = run_module("kws_tf.bin.infer", f"--model={model_path}", f"--audio={path}",
                         "--chunk_seconds=0.7")
  assert in_chunks.stdout == one_pass.stdout and in_chunks.stdout.startswith(f"{path}\t")
  assert "note:" not in in_chunks.stderr


def test_ctc_model_without_a_bounded_receptive_field_says_chunks_are_approximate(
    exported_ctc, synthetic_corpus, tmp_path):
  path = _write(tmp_path / "short.wav", _long_utterances(synthetic_corpus, 1)[:16000], 16000)
  card = json.load(open(exported_ctc / "model_float32.json"))
  for name, field in (("whole_input", {"receptive_field": None}), ("old_card", {})):
    model_path = tmp_path / f"{name}.tflite"
    model_path.write_bytes((exported_ctc / "model_float32.tflite").read_bytes())
    records.write_json(inference.card_path(str(model_path)),
                       {**{k: v for k, v in card.items() if k != "receptive_field"}, **field})
    result = run_module("kws_tf.bin.infer", f"--model={model_path}", f"--audio={path}")
    why = "reads the whole input" if field else "has no receptive field in its card"
    assert f"note: {model_path} {why}" in result.stderr
    assert "can differ from one pass" in result.stderr


def test_help_lists_the_flags():
  result = run_module("kws_tf.bin.infer", "--help", check=False)
  for flag in ("--model", "--audio", "--threshold", "--hop_seconds", "--output",
               "--chunk_seconds"):
    assert flag in result.stdout + result.stderr
