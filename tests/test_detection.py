"""Detection on continuous audio (kws_tf/detection.py), the always-on metric
(kws_tf/evaluation/always_on.py, data_prep/always_on_set.py) and kws-infer on a
streaming file fed raw PCM through standard input."""
import json
import os
import select
import subprocess
import sys

import numpy as np
import pytest

import kws_tf  # noqa: F401

from conftest import REPO, run_module
from kws_tf import detection, inference
from kws_tf.evaluation import always_on

D = detection.Detection
O = always_on.Occurrence
CLASSES = ["a", "b", "negative"]
HOP = 0.1


def _posteriors(a=(), b=(), hops=30):
  """``[hops, 3]`` posteriors: keyword "a" at ``a``'s (hop, value) pairs, "b" likewise,
  the rest "negative"."""
  p = np.zeros((hops, 3))
  for column, pairs in ((0, a), (1, b)):
    for hop, value in pairs:
      p[hop, column] = value
  p[:, 2] = 1 - p[:, 0] - p[:, 1]
  return p


def test_one_detection_per_plateau():
  plateau = [(h, 0.9) for h in range(5, 20)]
  found = detection.detect(_posteriors(a=plateau), CLASSES, HOP, 0.5, smooth_seconds=0,
                           refractory_seconds=0)
  # At the end of the plateau's first hop (hop 5: 6 hops pushed), once.
  assert found == [D("a", pytest.approx(0.6), pytest.approx(0.9))]
  # Two plateaus of different keywords: one detection each.
  two = _posteriors(a=[(h, 0.8) for h in range(2, 6)], b=[(h, 0.7) for h in range(12, 20)])
  assert [(d.keyword, round(d.time, 6)) for d in detection.detect(
      two, CLASSES, HOP, 0.5, smooth_seconds=0, refractory_seconds=0)] == [("a", 0.3), ("b", 1.3)]


def test_back_to_back_keywords_are_two_detections_and_refractory_is_per_keyword():
  # "a" then "b" with no hop between: the best score never falls below the threshold.
  adjacent = _posteriors(a=[(h, 0.9) for h in range(2, 6)], b=[(h, 0.9) for h in range(6, 10)])
  found = detection.detect(adjacent, CLASSES, HOP, 0.5, smooth_seconds=0, refractory_seconds=1.0)
  assert [(d.keyword, round(d.time, 6)) for d in found] == [("a", 0.3), ("b", 0.7)]
  # "b" rising above the threshold while "a" is still the best fires once "b" leads.
  overlap = _posteriors(a=[(h, 0.6) for h in range(2, 6)], b=[(h, 0.35) for h in range(4, 10)])
  found = detection.detect(overlap, CLASSES, 0.1, 0.3, smooth_seconds=0, refractory_seconds=0)
  assert [(d.keyword, round(d.time, 6)) for d in found] == [("a", 0.3), ("b", 0.7)]


def test_negative_is_never_detected():
  always_negative = _posteriors()
  assert detection.detect(always_negative, CLASSES, HOP, 0.5) == []
  assert detection.Detector(CLASSES, HOP, 0.5).keywords == ["a", "b"]


def test_refractory_time_suppresses_a_second_rise_of_the_same_keyword():
  # Above the threshold for hops 2-4, below for hops 5-6, above again from hop 7.
  dip = _posteriors(a=[(h, 0.9) for h in (2, 3, 4, 7, 8, 9)])
  times = [d.time for d in detection.detect(dip, CLASSES, HOP, 0.5, smooth_seconds=0,
                                            refractory_seconds=1.0)]
  assert times == [pytest.approx(0.3)]
  # Without the refractory time (or with one shorter than the dip), the second rise counts.
  for refractory in (0.0, 0.5):
    times = [d.time for d in detection.detect(dip, CLASSES, HOP, 0.5, smooth_seconds=0,
                                              refractory_seconds=refractory)]
    assert times == [pytest.approx(0.3), pytest.approx(0.8)], refractory
  # A rise after the refractory time: detected.
  late = _posteriors(a=[(2, 0.9), (13, 0.9)])
  assert len(detection.detect(late, CLASSES, HOP, 0.5, smooth_seconds=0,
                              refractory_seconds=1.0)) == 2


def test_smoothing_averages_the_posteriors_over_the_stated_hops():
  spike = _posteriors(a=[(5, 0.9)])
  # A one-hop spike averaged over 3 hops (0.3 s) is 0.3: below 0.5.
  assert detection.detect(spike, CLASSES, HOP, 0.5, smooth_seconds=0.3) == []
  assert len(detection.detect(spike, CLASSES, HOP, 0.5, smooth_seconds=0)) == 1
  # Three hops of 0.9: the 3-hop average is 0.3, 0.6, 0.9: fires at the second (hop 6).
  run = _posteriors(a=[(5, 0.9), (6, 0.9), (7, 0.9)])
  assert detection.detect(run, CLASSES, HOP, 0.5, smooth_seconds=0.3) == [
      D("a", pytest.approx(0.7), pytest.approx(0.6))]
  assert detection.Detector(CLASSES, 0.02, 0.5, smooth_seconds=0.3).smooth_hops == 15


def test_several_thresholds_are_independent_detectors():
  rng = np.random.default_rng(0)
  posteriors = rng.dirichlet([0.3, 0.3, 1.0], size=400)
  thresholds = [0.2, 0.4, 0.6, 0.8]
  sweep = detection.Detector(CLASSES, HOP, thresholds, 0.2, 0.5)
  found = [[] for _ in thresholds]
  for row in posteriors:
    for t, hit in sweep.push(row):
      found[t].append(hit)
  for t, threshold in enumerate(thresholds):
    alone = detection.detect(posteriors, CLASSES, HOP, threshold, 0.2, 0.5)
    assert found[t] == alone and alone, threshold


def test_detector_refuses_bad_settings():
  with pytest.raises(ValueError, match="hop_seconds must be > 0"):
    detection.Detector(CLASSES, 0, 0.5)
  with pytest.raises(ValueError, match="must be >= 0"):
    detection.Detector(CLASSES, HOP, 0.5, smooth_seconds=-1)
  with pytest.raises(ValueError, match="no keyword"):
    detection.Detector(["negative"], HOP, 0.5)
  with pytest.raises(ValueError, match="2 posteriors, expected one per class"):
    detection.Detector(CLASSES, HOP, 0.5).push(np.zeros(2))


def test_a_detection_matches_its_keyword_from_start_to_end_plus_tolerance():
  occurrences = [O("a", 1.0, 1.5), O("b", 3.0, 3.4), O("a", 10.0, 10.5)]
  detections = [D("a", 1.8, 0.9),    # within [1.0, 1.5 + 0.5]: matches the first "a"
                D("a", 1.9, 0.9),    # the same spoken word again: a false alarm
                D("b", 2.9, 0.9),    # before its word starts: a false alarm
                D("a", 3.2, 0.9),    # during a "b": a false alarm
                D("a", 11.2, 0.9)]   # after 10.5 + 0.5: a false alarm
  assert always_on.match(detections, occurrences, 0.5) == [0, None, None, None, None]
  counts = always_on.count(detections, occurrences, 0.5)
  assert counts == {"occurrences": 3, "missed": 2, "false_alarms": 4,
                    "delays": [pytest.approx(0.3)]}
  # At the edges: the start and end + tolerance count.
  assert always_on.match([D("a", 1.0, 1), D("a", 11.0, 1)], occurrences, 0.5) == [0, 2]


def test_frr_at_false_alarms_per_hour_and_the_threshold_of_the_target():
  # Two recordings of 30 minutes: 1 hour. Per threshold (0.3, 0.6, 0.9):
  # 10 keywords, missed 1 / 3 / 6, false alarms 12 / 2 / 0 in all.
  def c(missed, false_alarms, occurrences=5):
    return {"occurrences": occurrences, "missed": missed, "false_alarms": false_alarms,
            "delays": [0.1] * (occurrences - missed)}

  rows = [{"seconds": 1800.0, "condition": "clean"}, {"seconds": 1800.0, "condition": "noise"}]
  counts = [[c(0, 10), c(1, 1), c(3, 0)], [c(1, 2), c(2, 1), c(3, 0)]]
  groups = always_on.summarize(rows, counts, [0.3, 0.6, 0.9], target_rate=2.0)
  everything = groups["all"]
  assert everything["hours"] == 1.0 and everything["occurrences"] == 10
  assert [(p["frr"], p["false_alarms_per_hour"]) for p in everything["curve"]] == [
      (0.1, 12.0), (0.3, 2.0), (0.6, 0.0)]
  frr_at = {rate: point and point["threshold"] for rate, point in everything["frr_at"].items()}
  assert frr_at == {"0.5": 0.9, "1": 0.9, "5": 0.6}
  assert everything["frr_at"]["5"]["frr"] == 0.3
  assert everything["target"]["threshold"] == 0.6
  assert everything["target"]["median_delay_ms"] == pytest.approx(100.0)
  # Per condition: half an hour each, so one false alarm is 2 per hour.
  noise = groups["condition=noise"]
  assert [p["false_alarms_per_hour"] for p in noise["curve"]] == [4.0, 2.0, 0.0]
  assert noise["frr_at"]["0.5"]["frr"] == 0.6 and noise["target"]["frr"] == 0.4
  # No threshold of the sweep reaches the rate: none.
  assert always_on.operating_point(everything["curve"][:1], 5.0) is None


def test_manifest_errors_name_the_file_and_line(tmp_path):
  (tmp_path / "manifest.jsonl").write_text(
      '{"path": "r.wav", "seconds": 3, "condition": "clean", "keywords": []}\n'
      '{"path": "s.wav", "seconds": 3, "condition": "clean", "keywords": [{"start": 1}]}\n')
  with pytest.raises(ValueError, match=r"manifest.jsonl:2: 'keyword'"):
    always_on.read_manifest(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="kws-make-always-on-set"):
    always_on.read_manifest(str(tmp_path / "none"))


def test_read_pcm16_gives_the_samples_and_refuses_half_a_sample(tmp_path):
  import io
  from kws_tf import audio
  samples = np.array([0, 16384, -32768, 32767, 5], "<i2")
  blocks = list(audio.read_pcm16(io.BytesIO(samples.tobytes()), 2))
  assert [len(b) for b in blocks] == [2, 2, 1]
  np.testing.assert_array_equal(np.concatenate(blocks), samples / 32768.0)
  with pytest.raises(audio.AudioError, match="truncated.*odd number"):
    list(audio.read_pcm16(io.BytesIO(samples.tobytes()[:-1]), 2))
  with pytest.raises(audio.AudioError, match="empty"):
    list(audio.read_pcm16(io.BytesIO(b""), 2))


def test_card_always_on_settings_are_kws_infers_defaults():
  card = {"always_on": {"threshold": 0.83, "smooth_seconds": 0.2, "refractory_seconds": 0.7}}
  assert inference.detection_settings(card) == (0.83, 0.2, 0.7)
  assert inference.detection_settings(card, 0.5, 0.1, 0.0) == (0.5, 0.1, 0.0)
  assert inference.detection_settings({}) == (inference.THRESHOLD, detection.SMOOTH_SECONDS,
                                              detection.REFRACTORY_SECONDS)


# End to end: a tiny streaming file, built as tests/test_streaming.py builds one.

CLIP = 16000
MODEL_CLASSES = ["có", "là", "negative"]
PHONE_MFCC = {"format": "mfcc", "frame_length": 320, "fft_length": 320, "frame_step": 320,
              "upper_edge_hertz": 4000, "dft": "matmul"}


def _bursts(seconds, seed):
  """Tone bursts in noise: posteriors of an untrained model that move."""
  rng = np.random.RandomState(seed)
  t = np.arange(int(seconds * 16000)) / 16000
  on = np.sin(2 * np.pi * 0.6 * t + seed) > 0.4
  wave = 0.4 * np.sin(2 * np.pi * (300 + 150 * seed) * t) * on + 0.01 * rng.randn(len(t))
  return wave.astype(np.float32)


@pytest.fixture(scope="module")
def stream_file(tmp_path_factory):
  """``model_stream_float32.tflite`` of an untrained wav2letter_kws_tiny with a full card."""
  from kws_tf import model_dir as model_dir_lib
  from kws_tf.export import card as card_lib
  from kws_tf.export import serving, streaming
  folder = tmp_path_factory.mktemp("stream")
  rng = np.random.RandomState(1)
  spec = model_dir_lib.ModelSpec(
      name="wav2letter_kws_tiny", task="kws", role="student", num_channels=39, num_classes=3,
      projection_dim=0, params={}, format="mfcc", feature_params=PHONE_MFCC,
      normalization={"mean": (rng.randn(39) * 5).tolist(),
                     "std": rng.uniform(1.0, 10.0, 39).tolist()},
      data_fingerprint="", classes=MODEL_CLASSES)
  model = model_dir_lib.build_model(spec)
  module = streaming.StreamingModule(model, spec, CLIP, 1600)
  module.save(str(folder / "saved"))
  path = str(folder / "model_stream_float32.tflite")
  with open(path, "wb") as f:
    f.write(streaming.convert(str(folder / "saved"), "stream_float32", model.name))
  stream_card = streaming.streaming_card(module, 16000)
  runner = inference.StreamingTFLiteModel(path, stream_card)
  parity = {"num_examples": 0, "max_abs_logit_error": 0.0, "exported": {"accuracy": 0.0},
            "keras": {"accuracy": 0.0}, "drop_points": 0.0}
  card = card_lib.model_card(
      spec, "model_stream_float32", "stream_float32", path, module.layout.front_end, CLIP,
      card_lib.tensor(runner.input_detail),
      {k: card_lib.tensor(v) for k, v in runner.output_details.items()
       if k in streaming.OUTPUTS}, parity, model.count_params(), "pytest", str(folder), "best")
  card["streaming"] = stream_card
  card_lib.write_card(path[:-len(".tflite")], card)
  return path


def _expected_lines(path, waveform, threshold):
  card = inference.read_card(path)
  found = inference.stream_detections(inference.load_model(path), card, [waveform], threshold)
  return [f"-\t{d.time:.2f}\t{d.keyword}\t{d.score:.3f}" for d in found]


def test_infer_reads_pcm_from_stdin_and_prints_each_detection_as_it_fires(stream_file):
  waveform = _bursts(12.0, seed=0)
  card = inference.read_card(stream_file)
  model = inference.load_model(stream_file)
  posteriors = np.array(list(inference.hop_posteriors(model, [waveform])))
  assert len(posteriors) == 120
  # A threshold the smoothed keyword posteriors cross more than once.
  smoothed = np.array([np.convolve(posteriors[:, i], np.ones(3) / 3)[:120] for i in (0, 1)])
  threshold = float(np.quantile(smoothed.max(axis=0), 0.6))
  expected = _expected_lines(stream_file, waveform, threshold)
  assert len(expected) >= 2
  pcm = np.round(waveform * 32767).astype("<i2").tobytes()
  first = float(expected[0].split("\t")[1])
  cut = int(round((first + 0.3) * 16000)) * 2
  process = subprocess.Popen(
      [sys.executable, "-m", "kws_tf.bin.infer", f"--model={stream_file}", "--audio=-",
       f"--threshold={threshold}"], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=False)
  try:
    # The audio up to just past the first detection, standard input left open: its line
    # comes out before the stream ends.
    process.stdin.write(pcm[:cut])
    process.stdin.flush()
    ready, _, _ = select.select([process.stdout], [], [], 60)
    assert ready, "no detection printed while the stream is open"
    assert process.stdout.readline().decode().rstrip("\n") == expected[0]
    process.stdin.write(pcm[cut:])
    process.stdin.close()
    rest = process.stdout.read().decode().splitlines()
    assert process.wait(60) == 0, process.stderr.read().decode()
  finally:
    process.kill()
  assert [expected[0]] + rest == expected
  assert card["streaming"]["hop_samples"] == 1600


def test_infer_stdin_errors_are_one_line(stream_file):
  result = run_module("kws_tf.bin.infer", f"--model={stream_file}", "--audio=-", "--output=jsonl",
                      input="abc", check=False)
  assert result.returncode == 1
  assert "error: standard input: truncated: the stream ended inside a 16-bit sample" in (
      result.stderr)
  result = run_module("kws_tf.bin.infer", f"--model={stream_file}", "--audio=-",
                      "--smooth_seconds=-1", input="", check=False)
  assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: ")


def _tiny_corpus(root):
  """A VIVOS-layout test split: 2 speakers x 2 utterances of tone "words", with a CTM."""
  from kws_tf import audio
  ctm, prompts = [], []
  for s, speaker in enumerate(("SPKA", "SPKB")):
    for u in range(2):
      utt = f"{speaker}_R00{u + 1}"
      audio.write_wav(str(root / "test" / "waves" / speaker / f"{utt}.wav"),
                      _bursts(2.0, seed=2 * s + u + 1), 16000)
      ctm += [f"{utt} 1 0.200 0.300 CÓ", f"{utt} 1 0.600 0.300 nhà", f"{utt} 1 1.100 0.250 là"]
      prompts.append(f"{utt} CÓ NHÀ LÀ")
  (root / "test" / "alignments.ctm").write_text("\n".join(ctm) + "\n", encoding="utf-8")
  (root / "test" / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
  return root


def test_always_on_set_and_metric_end_to_end(stream_file, tmp_path):
  corpus = _tiny_corpus(tmp_path / "corpus")
  out = tmp_path / "set"
  made = run_module("data_prep.always_on_set", f"--corpus_dir={corpus}", f"--out_dir={out}",
                    "--conditions=clean,telephone", "--gap_seconds=0.5,1.0")
  assert "always-on set: 4 recordings" in made.stdout
  rows = always_on.read_manifest(str(out))
  assert [r["id"] for r in rows] == ["SPKA-clean", "SPKB-clean", "SPKA-telephone",
                                     "SPKB-telephone"]
  first = rows[0]
  # Keywords only ("nhà" is not one), moved by the pause before each utterance.
  assert [o.keyword for o in first["keywords"]] == ["có", "là", "có", "là"]
  gap = first["keywords"][0].start - 0.2
  assert 0.5 <= gap <= 1.0
  assert first["keywords"][1].start == pytest.approx(gap + 1.1, abs=1e-3)
  assert 4.0 + 1.5 <= first["seconds"] <= 4.0 + 3.0
  assert rows[2]["keywords"] == first["keywords"] and rows[2]["seconds"] == first["seconds"]

  model = tmp_path / "model_stream_float32.tflite"
  model.write_bytes(open(stream_file, "rb").read())
  card = inference.read_card(stream_file)
  with open(inference.card_path(str(model)), "w", encoding="utf-8") as f:
    json.dump(card, f)
  result = run_module("kws_tf.bin.evaluate", f"--always_on_model={model}",
                      f"--always_on_set={out}", "--target_false_alarms_per_hour=1000")
  results = json.load(open(tmp_path / "model_stream_float32_always_on" / "results.json"))
  assert os.path.getsize(tmp_path / "model_stream_float32_always_on" / "det_per_hour.png") > 0
  assert set(results["groups"]) == {"all", "condition=clean", "condition=telephone"}
  everything = results["groups"]["all"]
  assert everything["occurrences"] == 16
  assert everything["hours"] == pytest.approx(sum(r["seconds"] for r in rows) / 3600)
  assert set(everything["frr_at"]) == {"0.5", "1", "5"}
  # The highest threshold of the sweep fires on nothing: all missed, no false alarm.
  assert everything["curve"][-1]["frr"] == 1.0
  assert everything["curve"][-1]["false_alarms_per_hour"] == 0.0
  written = inference.read_card(str(model))["always_on"]
  assert written["threshold"] == everything["target"]["threshold"]
  assert written["target_false_alarms_per_hour"] == 1000.0
  assert written["false_alarms_per_hour"] <= 1000.0
  assert "FRR@0.5/h" in result.stdout and "condition=telephone" in result.stdout
  markdown = open(str(model)[:-len(".tflite")] + ".md", encoding="utf-8").read()
  assert "- Always on (" in markdown and "- Streaming: 1600 samples" in markdown

  refused = run_module("kws_tf.bin.evaluate", f"--always_on_model={model}", check=False)
  assert refused.returncode != 0 and "--always_on_set" in refused.stderr


def test_always_on_refuses_a_file_that_does_not_stream():
  with pytest.raises(ValueError, match="x.tflite is not a streaming kws file"):
    always_on.check_streaming({"task": "kws", "labels": {}}, "x.tflite")


def test_det_per_hour_plot_is_written_and_refuses_bad_points(tmp_path):
  from kws_tf.evaluation import plots
  path = str(tmp_path / "det.png")
  plots.plot_det_per_hour({"all": [(0.0, 0.9), (2.0, 0.5), (1.0, 0.7), (40.0, 0.6)]}, path,
                          always_on.RATES)
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="'all' must be \\[K, 2\\]"):
    plots.plot_det_per_hour({"all": [0.1, 0.2]}, path)


@pytest.mark.parametrize("module,names", [
    ("kws_tf.bin.infer", ("--smooth_seconds", "--refractory_seconds", "--threshold")),
    ("kws_tf.bin.evaluate", ("--always_on_model", "--always_on_set", "--always_on_out_dir",
                             "--target_false_alarms_per_hour", "--smooth_seconds",
                             "--refractory_seconds", "--tolerance_seconds"))])
def test_help_lists_the_detection_flags(module, names):
  result = run_module(module, "--help", check=False)
  for name in names:
    assert name in result.stdout, name
