"""Names of exported TFLite files and the accuracy gate's placement of them.

A file is checked under a scratch name; ``place`` then moves it to
``model_<format>.tflite`` when it passed the gate, or to
``model_<format>.rejected.tflite`` when it failed, removing the other name
(and its card) so no stale file of an earlier run keeps the name.
"""
import os


def tflite_path(out_dir: str, kind: str) -> str:
  """``<out_dir>/model_<kind>.tflite``."""
  return os.path.join(out_dir, f"model_{kind}.tflite")


def rejected_path(out_dir: str, kind: str) -> str:
  """``<out_dir>/model_<kind>.rejected.tflite``: a file that failed the accuracy gate."""
  return os.path.join(out_dir, f"model_{kind}.rejected.tflite")


def remove_file_and_card(path: str) -> None:
  """Removes ``path`` and its card (``.json``, ``.md``) where they exist."""
  stem = os.path.splitext(path)[0]
  for name in (path, stem + ".json", stem + ".md"):
    if os.path.exists(name):
      os.remove(name)


def place(checked: str, out_dir: str, kind: str, passed: bool) -> str:
  """Moves the checked file ``checked`` to its name (``passed``) or its rejected
  name, removes the other one with its card, and returns the new path."""
  path, stale = tflite_path(out_dir, kind), rejected_path(out_dir, kind)
  if not passed:
    path, stale = stale, path
  remove_file_and_card(stale)
  os.replace(checked, path)
  return path
