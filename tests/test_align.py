"""data_prep.align: alignment against true word times, boundary errors, the binary end to end."""
import dataclasses
import json
import math
import os
import shutil

import numpy as np
import pytest
import soundfile

import kws_tf  # noqa: F401
import tensorflow as tf

from conftest import run_module
from data_prep import alignment, corpora
from kws_tf import config as config_lib
from kws_tf import model_dir as model_dir_lib
from kws_tf import records
from kws_tf import text as text_lib
from kws_tf.training import loop

FRAME_SECONDS = 0.02


def oracle_log_probs(words, num_frames, vocabulary):
  """Log-probabilities ``[num_frames, V]`` of a perfect CTC model for true word times.

  Word ``w`` owns the frames from ``floor(start / FRAME_SECONDS)`` to
  ``ceil(end / FRAME_SECONDS)``, its characters spread evenly over them. Between
  two words, the frame holding the midpoint of their gap (for contiguous words,
  the frame the boundary falls in) is the space; the words give it up. Every
  other frame is blank. So each recovered boundary is within one frame of the truth.
  """
  space = vocabulary.symbols.index(" ")
  target = np.zeros(num_frames, np.int64)  # blank
  firsts = [math.floor(w.start / FRAME_SECONDS) for w in words]
  lasts = [math.ceil(w.end / FRAME_SECONDS) for w in words]  # exclusive
  for i in range(len(words) - 1):
    k = math.floor((words[i].end + words[i + 1].start) / 2 / FRAME_SECONDS)
    lasts[i] = min(lasts[i], k)
    firsts[i + 1] = max(firsts[i + 1], k + 1)
    target[k] = space
  for word, first, last in zip(words, firsts, lasts):
    tokens = vocabulary.encode(word.word)
    for t in range(first, last):
      target[t] = tokens[(t - first) * len(tokens) // (last - first)]
  logits = np.full((num_frames, len(vocabulary)), -10.0)
  logits[np.arange(num_frames), target] = 0.0
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def test_oracle_log_probs_give_the_true_word_times(synthetic_corpus):
  utterances = corpora.read_corpus("vivos", str(synthetic_corpus), ["train", "test"])
  truth = corpora.read_ctm([f"{synthetic_corpus}/*/alignments.ctm"])
  vocabulary = text_lib.Vocabulary.from_texts(u.text for u in utterances)
  hypothesis = {}
  for utterance in utterances:
    seconds = soundfile.info(utterance.audio_path).duration
    num_frames = math.ceil(seconds / FRAME_SECONDS)
    log_probs = oracle_log_probs(truth[utterance.id], num_frames, vocabulary)
    words = alignment.align_utterance(log_probs, text_lib.normalize(utterance.text), vocabulary,
                                  FRAME_SECONDS, seconds)
    hypothesis[utterance.id] = [corpora.Word(w.start, w.end, w.word) for w in words]
  errors = alignment.boundary_errors(hypothesis, truth)
  assert errors.utterances == len(utterances) == 24
  assert not errors.mismatched and not errors.unreferenced
  assert errors.start.size == sum(len(w) for w in truth.values())
  assert np.abs(errors.start).max() <= FRAME_SECONDS + 1e-9
  assert np.abs(errors.end).max() <= FRAME_SECONDS + 1e-9


def test_align_utterance_clips_to_the_features_and_refuses_what_cannot_fit():
  vocabulary = text_lib.Vocabulary([text_lib.BLANK, " ", "a", "b"])
  # 6 frames: a a - b b b, the last word ends at 6 frames (0.12 s) but the
  # features end at 0.11 s.
  logits = np.full((6, 4), -10.0)
  logits[np.arange(6), [2, 2, 1, 3, 3, 3]] = 0.0
  words = alignment.align_utterance(logits, "a b", vocabulary, FRAME_SECONDS, 0.11)
  assert [w.word for w in words] == ["a", "b"]
  assert words[0].start == 0.0 and words[0].end == pytest.approx(0.04)
  assert words[1].start == pytest.approx(0.06) and words[1].end == pytest.approx(0.11)
  with pytest.raises(ValueError, match="need at least 5 frames"):
    alignment.align_utterance(logits[:4], "ab ba", vocabulary, FRAME_SECONDS, 0.08)


def W(start, end, word):
  return corpora.Word(start, end, word)


def test_boundary_errors_by_hand():
  reference = {"u1": [W(0.0, 0.2, "MỘT"), W(0.2, 0.5, "HAI")],
               "u2": [W(0.1, 0.3, "ba")],
               "u3": [W(0.0, 0.4, "bốn")]}
  hypothesis = {"u1": [W(0.02, 0.18, "một"), W(0.22, 0.56, "hai")],  # words normalised
                "u2": [W(0.0, 0.3, "bốn")],  # other words: not compared
                "u4": [W(0.0, 0.1, "năm")]}  # no reference
  errors = alignment.boundary_errors(hypothesis, reference)
  np.testing.assert_allclose(errors.start, [0.02, 0.02])
  np.testing.assert_allclose(errors.end, [-0.02, 0.06])
  assert errors.utterances == 1
  assert errors.mismatched == ["u2"] and errors.unreferenced == ["u4"]
  table = alignment.error_table(errors)
  assert table["start"] == pytest.approx({"median": 20, "mean": 20, "p90": 20,
                                          "signed_mean": 20})
  # |end| = 20, 60 ms: median 40, p90 20 + 0.9 * 40 = 56, signed mean (-20 + 60) / 2.
  assert table["end"] == pytest.approx({"median": 40, "mean": 40, "p90": 56,
                                        "signed_mean": 20})
  # Both: 20, 20, 20, 60 ms -> median 20, mean 30, p90 20 + 0.7 * 40 = 48.
  assert table["both"] == pytest.approx({"median": 20, "mean": 30, "p90": 48,
                                         "signed_mean": 20})
  text = alignment.format_error_table(errors)
  assert "1 utterances, 2 words compared; 1 with other words, 1 without reference" in text
  assert "| end | 40.0 | 40.0 | 56.0 | +20.0 |" in text
  with pytest.raises(ValueError, match="no word to compare"):
    alignment.error_table(alignment.boundary_errors({"u2": hypothesis["u2"]}, reference))


def _tiny_ctc_model(records_dir, model_dir):
  """A wav2letter ctc model on mfcc after 4 steps: alignment quality is irrelevant here."""
  config = config_lib.load(None, [
      "task=ctc", "model.name=wav2letter", "model.params.filters=[32,32]",
      "model.params.widths=[5,3]", "model.params.strides=[2,1]", "model.params.dropouts=[0,0]",
      "data.batch_size=4", "train.steps=4", "train.eval_every=4", "train.checkpoint_every=4",
      "data.validation_split=test"])
  loop.Trainer(config, model_dir, records_dir).run()


def _rewrite_labels(shard, utterance_id, labels):
  """Replaces the labels of one record of a shard (in place)."""
  examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(shard)]
  writer = records.ShardWriter(shard)
  for example in examples:
    if example.features.feature["id"].bytes_list.value[0].decode() == utterance_id:
      example.features.feature["labels"].int64_list.value[:] = labels
    writer.write(example.SerializeToString())
  writer.commit()


def test_align_binary_end_to_end(synthetic_corpus, ctc_train_records, tmp_path):
  data_dir = str(tmp_path / "records")
  shutil.copytree(ctc_train_records, data_dir)
  model_dir = str(tmp_path / "model")
  _tiny_ctc_model(data_dir, model_dir)
  utterances = {u.id: u for u in corpora.read_corpus("vivos", str(synthetic_corpus),
                                                     ["train", "test"])}
  transcripts = {i: text_lib.normalize(u.text) for i, u in utterances.items()}
  meta = records.load_metadata(data_dir)
  symbols = meta.vocabulary["symbols"]

  # The model's vocabulary loses the rarest letter of the transcripts (renamed
  # "#"): utterances with it are skipped. One test utterance gets a transcript
  # too long for its frames: skipped too.
  counts = {c: sum(c in t for t in transcripts.values()) for c in symbols[2:]}
  rare = min((c for c in counts if counts[c]), key=lambda c: (counts[c], c))
  spec = model_dir_lib.read_spec(model_dir)
  renamed = [s if s != rare else "#" for s in symbols]
  model_dir_lib.write_spec(model_dir, dataclasses.replace(
      spec, vocabulary=dict(spec.vocabulary, symbols=renamed)))
  test_ids = sorted(i for i, u in utterances.items() if u.split == "test")
  too_long = next(i for i in test_ids if rare not in transcripts[i])
  shard = os.path.join(data_dir, "mfcc", meta.splits["test"].shards[0].name)
  _rewrite_labels(shard, too_long, [symbols.index("a")] * 2000)
  unknown = sorted(i for i, t in transcripts.items() if rare in t)

  out = tmp_path / "ctm" / "{split}.ctm"
  result = run_module("data_prep.align", f"--model_dir={model_dir}", f"--data_dir={data_dir}",
                      f"--out={out}", "--batch_size=5",
                      f"--reference={synthetic_corpus}/*/alignments.ctm")
  skipped_count = len(unknown) + 1
  assert f"aligned {24 - skipped_count} utterances, skipped {skipped_count}" in result.stdout
  assert "| both |" in result.stdout
  ctm_paths = [str(tmp_path / "ctm" / f"{split}.ctm") for split in ("test", "train")]
  for path in ctm_paths:
    assert f"{path} (skipped:" in result.stdout

  skipped = {}
  for path in ctm_paths:
    with open(alignment.skipped_file(path), encoding="utf-8") as f:
      skipped.update({e["id"]: e for e in map(json.loads, f)})
  assert sorted(skipped) == sorted(unknown + [too_long])
  assert skipped[too_long]["split"] == "test"
  assert skipped[too_long]["reason"].startswith("transcript does not fit: ")
  for i in unknown:
    assert skipped[i]["reason"] == f"characters not in the model's vocabulary: {rare}"
    assert skipped[i]["split"] == utterances[i].split

  alignments = corpora.read_ctm(ctm_paths)
  assert sorted(alignments) == sorted(set(utterances) - set(skipped))
  for utt, words in alignments.items():
    assert [w.word for w in words] == transcripts[utt].split()
    duration = soundfile.info(utterances[utt].audio_path).duration
    times = [t for w in words for t in (w.start, w.end)]
    assert times == sorted(times) and times[0] >= 0 and times[-1] <= duration + 1e-9

  kws_dir = tmp_path / "kws"
  kws = run_module("data_prep.create_tfrecords", f"--data_dir={synthetic_corpus}",
                   "--corpus=vivos", f"--out_dir={kws_dir}", "--splits=train,test",
                   "--formats=mfcc", "--task=kws", f"--alignments={tmp_path}/ctm/*.ctm",
                   "--cores=1", "--max_skip_fraction=0.5")
  assert "examples from 24 utterances" in kws.stdout
  with open(kws_dir / "skipped.jsonl", encoding="utf-8") as f:
    not_aligned = [e["id"] for e in map(json.loads, f)]
  assert sorted(not_aligned) == sorted(skipped)

  error = run_module("data_prep.align", f"--model_dir={model_dir}", f"--data_dir={data_dir}",
                     "--splits=dev", check=False)
  assert error.returncode == 2
  assert f"error: {data_dir} has no split 'dev'" in error.stderr
