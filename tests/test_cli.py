"""Console scripts: ``--help`` describes the program and its flags."""
import os
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize("script, first_line, flag", [
    ("kws-train", "Trains a teacher or a student", "--data_dir"),
    ("kws-create-tfrecords", "Converts a speech corpus into sharded TFRecords", "--context_seconds"),
    ("kws-make-robustness-set", "Builds a keyword-spotting robustness test set", "--max_offset_seconds"),
])
def test_help_shows_the_docstring_and_the_flags(script, first_line, flag):
  path = os.path.join(BIN, script)
  if not os.path.exists(path):
    pytest.skip(f"{script} is not installed in {BIN} (pip install -e .)")
  result = subprocess.run([path, "--help"], capture_output=True, text=True)
  # absl ends --help with exit status 1.
  assert first_line in result.stdout and flag in result.stdout
