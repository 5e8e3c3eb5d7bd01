"""What every console script shares: a quiet start-up and a useful ``--help``.

Quiet start-up. Every console script imports this module before anything
imports TensorFlow. Without ``--verbosity`` (``-v``) on the command line:

- ``TF_CPP_MIN_LOG_LEVEL`` is set to 3 (TensorFlow's C++ log: fatal only; it
  hides e.g. ``failed call to cuInit``), unless the environment sets it;
- the lines TensorFlow's libraries print while ``import tensorflow`` loads
  them, before TensorFlow's log level applies (``All log messages before
  absl::InitializeLog() ...``, ``oneDNN custom operations are on``, ``Could
  not find cuda drivers``), are held back when their severity is below that
  level; every other line of that import (a Python warning, an error) still
  reaches stderr;
- ``run_app`` sets absl's Python log to WARNING and the ``tensorflow``
  logger to ERROR (no ``Found untraced functions``, no ``Sharding callback
  duration``).

``--verbosity=N`` (absl's flag: 0 info, -1 warning, -2 error, 1 debug)
instead sets the Python log to N and TensorFlow's C++ log level to
``max(0, min(3, -N))``: ``--verbosity=0`` shows everything. A
``TF_CPP_MIN_LOG_LEVEL`` set in the environment is never overridden.

``--help``. absl's ``--help`` prints the docstring of ``__main__`` and the key
flags of the module named by ``sys.argv[0]``. For a console script
(``kws-train``) those are the installer's wrapper, which has neither;
``run_app`` lends the app module's docstring and flags to the wrapper.
"""
import importlib.abc
import importlib.util
import logging as std_logging
import os
import re
import sys
import tempfile
from typing import Callable, List, Optional

from absl import app, flags, logging

import kws_tf

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LOG_LEVEL = 3
HELP_NOTE = ("\nTensorFlow's start-up lines and INFO/WARNING log are hidden; --verbosity=0 "
             "(-v 0) shows them.\n")

# A line of absl's C++ log: severity letter, MMDD, e.g. "I0000 00:00:17.5 123 port.cc:153] ...".
_LOG_LINE = re.compile(r"^([IWEF])\d{4} ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
# absl prints this once before its first log line when nothing initialised it.
_PRE_INIT_LINE = "WARNING: All log messages before absl::InitializeLog() is called"


def verbosity_from_argv(argv: List[str]) -> Optional[int]:
  """The value of ``--verbosity`` / ``-v`` in ``argv`` (absl's forms), or None."""
  value = None
  for i, arg in enumerate(argv[1:], start=1):
    if arg == "--":
      break
    name, equals, text = arg.lstrip("-").partition("=")
    if not arg.startswith("-") or name not in ("verbosity", "v"):
      continue
    if not equals:
      text = argv[i + 1] if i + 1 < len(argv) else ""
    try:
      value = int(text)
    except ValueError:
      pass
  return value


def cpp_log_level(verbosity: Optional[int]) -> int:
  """TensorFlow's C++ log level (0 info .. 3 fatal) for absl's ``verbosity``."""
  if verbosity is None:
    return QUIET_LOG_LEVEL
  return max(0, min(3, -verbosity))


def filter_startup_lines(text: str, level: int) -> str:
  """``text`` without the C++ log lines below ``level`` and, when any is
  dropped, without absl's pre-initialisation notice; other lines are kept."""
  lines = text.splitlines(keepends=True)
  below = [bool(m) and _SEVERITY[m.group(1)] < level for m in map(_LOG_LINE.match, lines)]
  if not any(below):
    return text
  return "".join(line for line, drop in zip(lines, below)
                 if not drop and not line.startswith(_PRE_INIT_LINE))


class _QuietLoader(importlib.abc.Loader):
  """Runs the real loader of ``tensorflow`` with fd 2 in a temporary file."""

  def __init__(self, loader, level: int):
    self._loader = loader
    self._level = level

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    module.__spec__.loader = module.__loader__ = self._loader
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
      os.dup2(captured.fileno(), 2)
      failed = True
      try:
        self._loader.exec_module(module)
        failed = False
      finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        captured.seek(0)
        text = captured.read().decode("utf-8", "replace")
        if not failed:
          text = filter_startup_lines(text, self._level)
        sys.stderr.write(text)
        sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
  """Finds ``tensorflow`` once, through the other finders, with a ``_QuietLoader``."""

  def __init__(self, level: int):
    self._level = level

  def find_spec(self, fullname, path, target=None):
    if fullname != "tensorflow":
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(fullname)
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader, self._level)
    return spec


def quiet_startup(argv: List[str]) -> int:
  """Sets TensorFlow's C++ log level from ``argv`` (unless the environment set
  it) and holds back the start-up lines below it; returns the level."""
  user_level = kws_tf.USER_TF_CPP_MIN_LOG_LEVEL
  if user_level is None:
    level = cpp_log_level(verbosity_from_argv(argv))
    os.environ[LOG_LEVEL_VARIABLE] = str(level)
  else:
    try:
      level = int(user_level)
    except ValueError:
      level = 0
  if level > 0 and "tensorflow" not in sys.modules and not any(
      isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietTensorFlowImport(level))
  return level


quiet_startup(sys.argv)


def _quiet_python_logs() -> None:
  """absl's log at WARNING and the ``tensorflow`` logger at ERROR, unless
  ``--verbosity`` was given."""
  if flags.FLAGS["verbosity"].present:
    return
  logging.set_verbosity(logging.WARNING)
  std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)


def run_app(main: Callable, module_name: str) -> None:
  """``app.run(main)`` with ``--help`` describing the module ``module_name``,
  and the Python logs quiet unless ``--verbosity`` is given."""
  module = sys.modules[module_name]
  if module_name != "__main__":
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS["verbosity"])
  sys.modules["__main__"].__doc__ = (module.__doc__ or "") + HELP_NOTE

  def quiet_main(argv):
    _quiet_python_logs()
    return main(argv)

  app.run(quiet_main)
