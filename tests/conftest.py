"""Shared test set-up: Keras 2 before TensorFlow, a quiet TensorFlow log."""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny Whisper teacher (kws-train overrides): 2 layers of width 32, 4 steps.
TEACHER = ["role=teacher", "data.format=logmel", "model.name=whisper_teacher",
           "model.params.encoder.d_model=32", "model.params.encoder.encoder_layers=2",
           "model.params.encoder.encoder_attention_heads=2",
           "model.params.encoder.encoder_ffn_dim=64", "model.params.hidden_sizes=[32,16]",
           "model.params.ctc_hidden=16", "data.batch_size=8", "train.steps=4",
           "train.eval_every=4", "train.checkpoint_every=4", "train.early_stopping_patience=0",
           "data.validation_fraction=0.3"]


def run_module(module, *args, check=True, **kwargs):
  """Runs ``python -m module args`` from the repository root; returns the result."""
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          capture_output=True, text=True, **kwargs)
  if check and result.returncode != 0:
    raise AssertionError(f"{module} failed ({result.returncode}):\n"
                         f"{result.stdout}\n{result.stderr}")
  return result


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory):
  """A small synthetic corpus in the VIVOS layout: 4 speakers (1 test) x 6 utterances."""
  out = tmp_path_factory.mktemp("corpus") / "vivos"
  run_module("data_prep.synthesize_corpus", f"--out_dir={out}", "--speakers=4",
             "--test_speakers=1", "--utterances_per_speaker=6", "--seed=3", "--cores=2")
  return out


@pytest.fixture
def corpus_copy(synthetic_corpus, tmp_path):
  """A private copy of the synthetic corpus that a test may damage."""
  out = tmp_path / "corpus"
  shutil.copytree(synthetic_corpus, out)
  return out


def _records(synthetic_corpus, out, task):
  args = [f"--data_dir={synthetic_corpus}", "--corpus=vivos", f"--out_dir={out}",
          "--splits=train,test", "--formats=mfcc,logmel", f"--task={task}",
          "--examples_per_shard=40", "--cores=2"]
  if task == "kws":
    args.append(f"--alignments={synthetic_corpus}/*/alignments.ctm")
  run_module("data_prep.create_tfrecords", *args)
  return str(out)


@pytest.fixture(scope="session")
def kws_train_records(synthetic_corpus, tmp_path_factory):
  """KWS clips of the synthetic corpus, mfcc and logmel, shards of 40."""
  return _records(synthetic_corpus, tmp_path_factory.mktemp("kws_train") / "records", "kws")


@pytest.fixture(scope="session")
def ctc_train_records(synthetic_corpus, tmp_path_factory):
  """Utterances of the synthetic corpus with character labels, mfcc and logmel."""
  return _records(synthetic_corpus, tmp_path_factory.mktemp("ctc_train") / "records", "ctc")


@pytest.fixture(scope="module")
def kws_teacher_dir(kws_train_records, tmp_path_factory):
  """A tiny Whisper kws teacher (``TEACHER``) trained on ``kws_train_records``."""
  from kws_tf import config as config_lib
  from kws_tf.training import loop
  model_dir = str(tmp_path_factory.mktemp("teacher") / "kws")
  loop.Trainer(config_lib.load(None, TEACHER), model_dir, kws_train_records).run()
  return model_dir


@pytest.fixture(scope="module")
def kws_raw_records(synthetic_corpus, tmp_path_factory):
  """KWS clips with raw audio and 0.5 s of context, beside logmel and mfcc."""
  out = tmp_path_factory.mktemp("kws_raw") / "records"
  run_module("data_prep.create_tfrecords", f"--data_dir={synthetic_corpus}", "--corpus=vivos",
             f"--out_dir={out}", "--splits=train,test", "--formats=raw,logmel,mfcc",
             "--task=kws", f"--alignments={synthetic_corpus}/*/alignments.ctm",
             "--context_seconds=0.5", "--cores=2")
  return str(out)
