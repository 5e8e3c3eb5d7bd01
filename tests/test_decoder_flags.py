"""The CTC decoder flags of kws-evaluate and kws-infer (kws_tf/evaluation/decoder_flags.py),
and kws-infer's transcripts with them: NFC text, beam search with a language model."""
import json
import unicodedata

import numpy as np
import pytest
import soundfile as sf

import kws_tf  # noqa: F401
import tensorflow as tf

from conftest import run_module
from data_prep import build_lm
from kws_tf import text

BINARIES = ("kws_tf.bin.evaluate", "kws_tf.bin.infer")
REQUIRED = {"kws_tf.bin.evaluate": ("--model_dirs=unused", "--data_dir=unused"),
            "kws_tf.bin.infer": ("--model=unused", "--audio=unused")}


@pytest.fixture(scope="module")
def tiny_arpa(tmp_path_factory):
  path = tmp_path_factory.mktemp("lm") / "tiny.arpa"
  build_lm.KneserNey([s.split() for s in ("tôi ăn cơm", "bạn ăn cơm", "tôi ăn phở")],
                     3).write_arpa(str(path))
  return str(path)


@pytest.mark.parametrize("module", BINARIES)
def test_help_lists_the_decoder_flags(module):
  result = run_module(module, "--help", check=False)
  for flag in ("--decoder", "--beam_width", "--lm", "--lm_weight", "--word_bonus",
               "--hotwords", "--hotword_weight"):
    assert flag in result.stdout, flag


@pytest.mark.parametrize("module", BINARIES)
def test_decoder_flag_errors_are_one_line_naming_the_flag(module, tiny_arpa, tmp_path):
  bad = tmp_path / "bad.arpa"
  bad.write_text("hello\n", encoding="utf-8")
  cases = [
      (["--decoder=beam_lm"], "error: --decoder=beam_lm needs --lm=<ARPA or KenLM binary "
                              "file> (kws-build-lm writes one)"),
      (["--decoder=beam_lm", f"--lm={tmp_path / 'nope.arpa'}"],
       f"error: --lm={tmp_path / 'nope.arpa'}: no such language model file"),
      (["--decoder=beam_lm", f"--lm={bad}"],
       f"error: --lm={bad}: KenLM cannot read it as an ARPA or binary language model "
       "(FormatLoadException. first non-empty line was \"hello\" not \\data\\. Byte: 6)"),
      (["--decoder=greedy", f"--lm={tiny_arpa}"],
       "error: --lm is used only with --decoder=beam_lm (got --decoder=greedy)"),
      (["--decoder=beam_lm", f"--lm={tiny_arpa}", "--beam_width=0"],
       "error: --decoder=beam_lm needs --beam_width >= 1"),
      (["--decoder=beam_lm", f"--lm={tiny_arpa}", f"--hotwords={tmp_path / 'h.txt'}"],
       f"error: --hotwords={tmp_path / 'h.txt'}: no such file"),
  ]
  for flags, expected in cases:
    result = run_module(module, *REQUIRED[module], *flags, check=False)
    assert result.returncode == 2, (flags, result.stderr)
    assert result.stderr.strip().splitlines() == [expected]


def _fixed_ctc_model(folder, vocabulary, logits):
  """An exported-style ctc SavedModel whose output is ``logits [T, V]`` whatever the
  audio, with its model card."""
  logits = np.asarray(logits, np.float32)[np.newaxis]

  class Module(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([1, None], tf.float32, "waveform")])
    def serve(self, waveform):
      del waveform
      return {"logits": tf.constant(logits),
              "logit_frames": tf.constant([logits.shape[1]], tf.int32)}

  module = Module()
  tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
  card = {"task": "ctc", "sample_rate": 16000, "logit_frame_seconds": 0.02,
          "receptive_field": {"left_samples": 0, "right_samples": 0},
          "labels": {"vocabulary": vocabulary, "blank_index": 0}}
  (folder.parent / (folder.name + ".json")).write_text(json.dumps(card, ensure_ascii=False),
                                                       encoding="utf-8")
  return str(folder)


def test_kws_infer_prints_nfc_and_decodes_with_the_lm(tiny_arpa, tmp_path):
  # The shipped vocabulary plus a combining acute accent: the model spells "tôi ăn cớm ca"
  # + U+0301 with "ớ" barely ahead of "ơ" (logits 5 against 4.9).
  vocabulary = text.Vocabulary.read("vietnamese").symbols + ["\u0301"]
  ids = {s: i for i, s in enumerate(vocabulary)}
  path = [ids[c] for c in "tôi ăn cớm ca"] + [len(vocabulary) - 1]
  path = [x for i in path for x in (i, 0)]  # a blank after each symbol
  logits = 5.0 * np.eye(len(vocabulary))[path]
  logits[path.index(ids["ớ"]), ids["ơ"]] = 4.9
  model = _fixed_ctc_model(tmp_path / "ctc", vocabulary, logits)
  audio = tmp_path / "a.wav"
  sf.write(str(audio), np.zeros(1600, np.float32), 16000)
  greedy = run_module("kws_tf.bin.infer", f"--model={model}", f"--audio={audio}")
  printed = greedy.stdout.strip().split("\t")[1]
  assert printed == "tôi ăn cớm cá" and unicodedata.is_normalized("NFC", printed)
  assert printed.endswith("\u00e1")  # one code point, not "a" + U+0301
  with_lm = run_module("kws_tf.bin.infer", f"--model={model}", f"--audio={audio}",
                       "--decoder=beam_lm", f"--lm={tiny_arpa}", "--output=jsonl")
  assert json.loads(with_lm.stdout)["transcript"] == "tôi ăn cơm cá"


def test_kws_evaluate_reports_greedy_beam_and_beam_lm(ctc_train_records, tiny_arpa, tmp_path):
  from kws_tf import config as config_lib
  from kws_tf.training import loop
  config = config_lib.load(None, [
      "task=ctc", "model.name=wav2letter", "model.params.filters=[32,32]",
      "model.params.widths=[5,3]", "model.params.strides=[2,1]", "model.params.dropouts=[0,0]",
      "data.batch_size=4", "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
      "data.validation_split=test"])
  model_dir = tmp_path / "run"
  loop.Trainer(config, str(model_dir), ctc_train_records).run()
  result = run_module("kws_tf.bin.evaluate", f"--model_dirs={model_dir}",
                      f"--data_dir={ctc_train_records}", "--decoder=beam_lm",
                      f"--lm={tiny_arpa}", "--beam_width=2", "--lm_weight=0.3",
                      "--word_bonus=0.5")
  assert "beam+LM CER | beam+LM WER |" in result.stdout
  assert "  beam+LM: " in result.stdout
  results = json.loads((model_dir / "eval" / "test" / "results.json").read_text("utf-8"))
  assert {"cer", "beam_cer", "beam_lm_cer", "beam_lm_wer"} <= set(results)
  assert results["beam_width"] == 2
  assert results["lm"] == {"path": tiny_arpa, "beam_width": 2, "lm_weight": 0.3,
                           "word_bonus": 0.5, "hotwords": [], "hotword_weight": 5.0}
