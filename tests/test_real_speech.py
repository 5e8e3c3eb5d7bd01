"""Real recorded speech through every stage of the ctc data path.

The only real recorded speech installable here is English: Debian's
``pocketsphinx-testdata`` ships 5 LibriVox utterances of one reader (Sense and
Sensibility, chapter 1; 3.0 .. 7.1 s, 16 kHz, 16-bit) with transcripts. The
module arranges them in the LibriSpeech layout
(``test-clean/<speaker>/<chapter>/<id>.flac`` and ``<speaker>-<chapter>.trans.txt``,
upper-case transcripts as LibriSpeech writes them), converts them with
``data_prep.create_tfrecords --corpus=librispeech --task=ctc --vocab=english``
(formats raw, logmel, mfcc) and checks:

* the records hold every utterance, its audio sample for sample and its
  transcript (lower-cased by the converter's normalisation) as labels;
* the records' log-mel, the Whisper teachers' input (records_ctc, data.normalize
  false), matches transformers' WhisperFeatureExtractor on the same recording
  (``padding="longest"``, the variable-length window the teachers read), and
  so does the 30 s window (``LogMelConfig(pad_to_seconds=30)``), within
  ``LOGMEL_BOUND``;
* a tiny random Whisper encoder (written by transformers' ``save_pretrained``)
  gives the same hidden states in our TensorFlow port as in PyTorch on one
  recording's 30 s log-mel window, within ``test_whisper.PARITY``; the ctc
  teacher built on it decodes the records' batch to finite logits at 20 ms.

It shows that real recordings pass every stage with sane features; it says
nothing about recognition accuracy (the encoder is random, the speech English).
Skipped when the package's files are absent (``scripts/setup.sh`` installs it).
"""
import os
import re

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import pytest
import soundfile
import torch
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

from conftest import run_module
from kws_tf import data, records, text
from kws_tf.features import LogMelConfig
from kws_tf.models import teacher, whisper
from test_whisper import PARITY, assert_states_close, tiny_config

LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox"
SPEAKER, CHAPTER = "austen", "sense01"
SAMPLE_RATE = 16000
# Our float32 TensorFlow log-mel vs the extractor's (numpy STFT, float32 mel
# bank): measured max |difference| 1.1e-5 .. 1.8e-5 on these recordings, whose
# log-mel spans [-0.98, 1.32]; the bound of tests/test_features.py.
LOGMEL_BOUND = 2e-4

pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(LIBRIVOX, "transcription")),
    reason=f"no real speech: {LIBRIVOX} is missing (Debian package pocketsphinx-testdata, "
           "which scripts/setup.sh installs: apt-get install pocketsphinx-testdata)")


def librivox_utterances():
  """``{id: (waveform int16 [samples], transcript)}`` of the package's LibriVox clips.

  Its transcription lines read ``<s> words </s> (file stem)``; the id is the
  LibriSpeech-style ``<speaker>-<chapter>-<number>`` of the stem's number.
  """
  utterances = {}
  with open(os.path.join(LIBRIVOX, "transcription"), encoding="utf-8") as f:
    for line in f:
      words, stem = re.fullmatch(r"<s> (.*) </s> \((\S+)\)", line.strip()).groups()
      waveform, rate = soundfile.read(os.path.join(LIBRIVOX, stem + ".wav"), dtype="int16")
      assert rate == SAMPLE_RATE and waveform.ndim == 1, stem
      utterances[f"{SPEAKER}-{CHAPTER}-{stem.rsplit('-', 1)[1]}"] = (waveform, words)
  return utterances


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """The clips as a LibriSpeech test-clean split, converted; returns
  ``(records_dir, {id: (waveform, transcript)})``."""
  utterances = librivox_utterances()
  root = tmp_path_factory.mktemp("librispeech")
  chapter = root / "test-clean" / SPEAKER / CHAPTER
  chapter.mkdir(parents=True)
  for utt_id, (waveform, words) in utterances.items():
    soundfile.write(chapter / f"{utt_id}.flac", waveform, SAMPLE_RATE, subtype="PCM_16")
  (chapter / f"{SPEAKER}-{CHAPTER}.trans.txt").write_text(
      "".join(f"{utt_id} {words.upper()}\n" for utt_id, (_, words) in utterances.items()),
      encoding="utf-8")
  out = root / "records"
  run_module("data_prep.create_tfrecords", "--task=ctc", "--corpus=librispeech",
             f"--data_dir={root}", f"--out_dir={out}", "--formats=raw,logmel,mfcc",
             "--vocab=english", "--splits=test", "--stats_splits=test", "--cores=1")
  return str(out), utterances


def read_split(records_dir, fmt):
  """``{id: parsed example (numpy)}`` of the test split in ``fmt``, unnormalised."""
  metadata = records.load_metadata(records_dir)
  dataset = data.records_dataset(data.shard_paths(records_dir, fmt, "test-clean", metadata),
                                 metadata.compression)
  parse = data.make_parser(metadata, fmt, normalize=False)
  examples = {}
  for example in dataset.map(parse):
    example = {k: v.numpy() for k, v in example.items()}
    examples[example["id"].decode()] = example
  return examples


def test_real_recordings_become_records_with_their_audio_and_transcripts(converted):
  records_dir, utterances = converted
  metadata = records.load_metadata(records_dir)
  assert metadata.skipped == 0
  assert metadata.splits["test-clean"].examples == len(utterances) == 5
  vocabulary = text.Vocabulary(metadata.vocabulary["symbols"])
  raw = read_split(records_dir, "raw")
  assert sorted(raw) == sorted(utterances)
  for utt_id, (waveform, words) in utterances.items():
    np.testing.assert_array_equal(raw[utt_id]["features"][:, 0], waveform / 32768.0)
    assert vocabulary.decode(raw[utt_id]["labels"].tolist()) == words
  for fmt in ("logmel", "mfcc"):
    examples = read_split(records_dir, fmt)
    assert sorted(examples) == sorted(utterances)
    for utt_id in utterances:
      features = examples[utt_id]["features"]
      assert features.shape[0] == examples[utt_id]["num_frames"] > 0
      assert np.isfinite(features).all(), (fmt, utt_id)
    stats = metadata.normalization[fmt]
    assert np.isfinite(stats["mean"]).all() and np.min(stats["std"]) > 0, fmt


def test_records_logmel_matches_whisper_feature_extractor(converted):
  records_dir, utterances = converted
  extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE)
  logmel = read_split(records_dir, "logmel")
  window = LogMelConfig(pad_to_seconds=30.0)
  for utt_id, (waveform, _) in utterances.items():
    audio = waveform.astype(np.float32) / 32768.0
    ours = logmel[utt_id]["features"]
    theirs = extractor(audio, sampling_rate=SAMPLE_RATE, padding="longest",
                       return_tensors="np").input_features[0].T
    assert ours.shape == theirs.shape == (len(audio) // 160, 80), utt_id
    assert np.abs(ours - theirs).max() <= LOGMEL_BOUND, utt_id
    ours_30s = window(audio).numpy()
    theirs_30s = extractor(audio, sampling_rate=SAMPLE_RATE,
                           return_tensors="np").input_features[0].T
    assert ours_30s.shape == theirs_30s.shape == (3000, 80), utt_id
    assert np.abs(ours_30s - theirs_30s).max() <= LOGMEL_BOUND, utt_id


def test_tiny_whisper_matches_pytorch_on_real_recording(converted, tmp_path):
  records_dir, utterances = converted
  torch.manual_seed(0)
  reference_model = WhisperForConditionalGeneration(tiny_config()).eval()
  reference_model.save_pretrained(tmp_path / "tiny")
  waveform, _ = utterances[f"{SPEAKER}-{CHAPTER}-0870"]
  features = LogMelConfig(pad_to_seconds=30.0)(waveform / 32768.0).numpy()[np.newaxis]
  with torch.no_grad():
    reference = reference_model.get_encoder()(
        torch.from_numpy(features.transpose(0, 2, 1)), output_hidden_states=True)
  encoder = whisper.load_encoder(tmp_path / "tiny")
  assert_states_close(encoder(features), [s.numpy() for s in reference.hidden_states],
                      PARITY)

  # The ctc teacher on that encoder reads the records' variable-length log-mel batch.
  metadata = records.load_metadata(records_dir)
  model = teacher.whisper_teacher(task="ctc", num_channels=80,
                                  num_classes=len(metadata.vocabulary["symbols"]),
                                  checkpoint=str(tmp_path / "tiny"))
  parse = data.make_parser(metadata, "logmel", normalize=False)
  batch = next(iter(data.records_dataset(
      data.shard_paths(records_dir, "logmel", "test-clean", metadata), metadata.compression)
      .map(parse).padded_batch(len(utterances))))
  outputs = model({"features": batch["features"], "num_frames": batch["num_frames"]})
  frames = int(batch["features"].shape[1])
  assert outputs["logits"].shape == (len(utterances), (frames + 1) // 2,
                                     len(metadata.vocabulary["symbols"]))
  assert np.isfinite(outputs["logits"].numpy()).all()
  np.testing.assert_array_equal(outputs["logit_frames"].numpy(),
                                (batch["num_frames"].numpy() + 1) // 2)
