"""Console scripts: ``--help`` describes the program and its flags; TensorFlow's
start-up lines and log stay out of the terminal unless ``--verbosity`` asks."""
import json
import os
import re
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize("script, first_line, flag", [
    ("kws-train", "Trains a teacher or a student", "--data_dir"),
    ("kws-create-tfrecords", "Converts a speech corpus into sharded TFRecords", "--context_seconds"),
    ("kws-make-robustness-set", "Builds a keyword-spotting robustness test set", "--max_offset_seconds"),
    ("kws-build-lm", "Builds a word n-gram language model (ARPA)", "--text_files"),
])
def test_help_shows_the_docstring_and_the_flags(script, first_line, flag):
  path = os.path.join(BIN, script)
  if not os.path.exists(path):
    pytest.skip(f"{script} is not installed in {BIN} (pip install -e .)")
  result = subprocess.run([path, "--help"], capture_output=True, text=True)
  # absl ends --help with exit status 1.
  assert first_line in result.stdout and flag in result.stdout


# --------------------------------------------------------------- quiet start-up

from kws_tf import cli  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What TensorFlow prints at start-up on a machine without a GPU.
NOISE = ("cuInit", "oneDNN", "absl::InitializeLog", "cuda drivers")


def _child_env(**extra):
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env.update(extra)
  return env


@pytest.mark.parametrize("argv, expected", [
    (["prog"], None),
    (["prog", "--verbosity=0"], 0),
    (["prog", "--verbosity", "1"], 1),
    (["prog", "-v", "0"], 0),
    (["prog", "-v=-2", "--data_dir=x"], -2),
    (["prog", "--v=0"], 0),
    (["prog", "--", "--verbosity=0"], None),
    (["pytest", "-v", "tests/test_cli.py"], None),
])
def test_verbosity_from_argv(argv, expected):
  assert cli.verbosity_from_argv(argv) == expected


def test_cpp_log_level_follows_verbosity():
  assert [cli.cpp_log_level(v) for v in (None, 1, 0, -1, -2, -3, -5)] == [3, 0, 0, 1, 2, 3, 3]


STARTUP = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796507460.302404   21076 port.cc:153] oneDNN custom operations are on.\n"
    "I0000 00:00:1796507460.302743   21076 cudart_stub.cc:31] Could not find cuda drivers.\n"
    "/x/warnings.py:1: UserWarning: a real warning\n"
    "W0000 00:00:1796507460.4   21076 some.cc:1] a C++ warning\n"
    "E0000 00:00:1796507460.5   21076 other.cc:2] a C++ error\n")


def test_filter_startup_lines_keeps_what_is_at_or_above_the_level():
  assert cli.filter_startup_lines(STARTUP, 3) == "/x/warnings.py:1: UserWarning: a real warning\n"
  assert cli.filter_startup_lines(STARTUP, 2) == (
      "/x/warnings.py:1: UserWarning: a real warning\n"
      "E0000 00:00:1796507460.5   21076 other.cc:2] a C++ error\n")
  assert cli.filter_startup_lines(STARTUP, 0) == STARTUP
  assert cli.filter_startup_lines("Traceback\n  boom\n", 3) == "Traceback\n  boom\n"


CHILD = """
import json, sys
sys.argv = ["prog"] + sys.argv[1:]
import json
import os
import re
import kws_tf.cli
print(json.dumps({"level": os.environ["TF_CPP_MIN_LOG_LEVEL"],
                  "filtering": any(type(f).__name__ == "_QuietTensorFlowImport"
                                   for f in sys.meta_path)}))
"""


@pytest.mark.parametrize("args, env, level, filtering", [
    ([], {}, "3", True),
    (["--verbosity=0"], {}, "0", False),
    (["-v", "-1"], {}, "1", True),
    (["--verbosity=0"], {"TF_CPP_MIN_LOG_LEVEL": "1"}, "1", True),  # the user's setting stays
    ([], {"TF_CPP_MIN_LOG_LEVEL": "0"}, "0", False),
])
def test_the_log_level_a_program_starts_with(args, env, level, filtering):
  result = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=REPO, capture_output=True,
                          text=True, env=_child_env(**env), check=True)
  assert json.loads(result.stdout) == {"level": level, "filtering": filtering}


def test_a_program_that_imports_tensorflow_starts_quietly():
  """create_tfrecords imports TensorFlow before its flags are parsed."""
  command = [sys.executable, "-m", "data_prep.create_tfrecords", "--help"]
  quiet = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=_child_env())
  assert "--verbosity=0" in quiet.stdout and "-v,--verbosity" in quiet.stdout
  lines = quiet.stderr.splitlines()
  assert not [l for l in lines if any(n in l for n in NOISE) or cli._LOG_LINE.match(l)], quiet.stderr
  loud = subprocess.run(command + ["--verbosity=0"], cwd=REPO, capture_output=True, text=True,
                        env=_child_env())
  assert loud.stdout == quiet.stdout
  # What the quiet run printed, the loud one prints too (and, on most machines, the noise).
  assert set(lines) <= set(loud.stderr.splitlines())


SPY = """
import importlib, sys
import kws_tf

class Spy:
  def find_spec(self, name, path, target=None):
    if name == "tensorflow":
      print("cli first" if "kws_tf.cli" in sys.modules else "tensorflow first")
      raise ImportError("tensorflow blocked by the test")
    return None

sys.meta_path.insert(0, Spy())
try:
  importlib.import_module(sys.argv[1])
  print("cli imported" if "kws_tf.cli" in sys.modules else "cli not imported")
except ImportError:
  pass
"""


def _console_script_modules():
  with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
    return re.findall(r'"kws-[\w-]+=([\w.]+):run"', f.read())


def test_the_console_scripts_are_found():
  assert len(_console_script_modules()) >= 10


@pytest.mark.parametrize("module", _console_script_modules())
def test_a_console_script_imports_cli_before_tensorflow(module):
  """The quiet start-up is decided in kws_tf.cli: before TensorFlow loads."""
  result = subprocess.run([sys.executable, "-c", SPY, module], cwd=REPO, capture_output=True,
                          text=True, env=_child_env(), check=True)
  assert result.stdout.split("\n")[0] in ("cli first", "cli imported"), result.stdout
