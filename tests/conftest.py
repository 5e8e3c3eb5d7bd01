"""Shared test set-up: Keras 2 before TensorFlow, a quiet TensorFlow log."""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
