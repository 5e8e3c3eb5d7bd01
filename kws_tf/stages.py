"""Stages: programs whose finished runs are stamped, so an unchanged one is skipped.

A ``Stage`` is one program (a module, run as ``python -m <program>``) with its
options (arguments), the inputs it reads and the outputs it writes. Its
fingerprint is a SHA-256 of the program, the options and every input's
fingerprint:

* another ``Stage``: that stage's stamp (its fingerprint and when it finished),
  so a stage rerun for any reason reruns every stage that reads it;
* a file: its bytes;
* a directory: its listing (relative path, size and modification time of
  every file), not the bytes (a Whisper checkpoint is hundreds of MB);
* a missing path: ``missing``.

A ``Runner`` runs stages and keeps one stamp per stage, ``<stamps>/<key>.json``
(written atomically): ``running`` before the program starts, ``complete`` with
the fingerprint once it exits 0. A stage is skipped only when its stamp is
complete, its fingerprint is the current one and its ``done`` files exist.
Otherwise it runs, after moving its outputs aside to ``<output>.stale`` (one
generation kept) and printing one line that says why (which options, inputs or
program changed). The one exception is a ``resumable`` stage killed mid-way
with the current fingerprint: its partial output is kept for the program to
resume (the corpus synthesizer skips finished speakers, the converter finished
shards, the trainer restarts from its last checkpoint).
"""
import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Union


class StageError(RuntimeError):
  """A stage failed or cannot run (the message says what to do)."""


def quote(command: Sequence[str]) -> str:
  """``command`` as one shell-quoted line."""
  return " ".join(shlex.quote(c) for c in command)


@dataclasses.dataclass
class Stage:
  """One program run.

  Fields:
    name: what the log calls it, e.g. ``teacher (kws)``.
    program: the module run as ``python -m``.
    options: its arguments that decide what it writes (fingerprinted).
    inputs: what it reads: paths, or the Stages that write them.
    outputs: the paths it writes (moved aside before a rerun).
    done: files that exist once it has finished (default: ``outputs``).
    untracked: arguments that do not change what it writes (worker counts);
      passed after ``options``, left out of the fingerprint.
    resumable: a run killed mid-way with the same fingerprint keeps its
      partial output (the program resumes it) instead of starting clean.
    key: the stamp's file name (default: ``name`` with runs of other
      characters than letters and digits as ``_``); stages writing to
      different places need different keys.
    adopt: with no stamp but every ``done`` file present, take the output as
      complete with the current fingerprint (for output folders already named
      after everything that made them, written before stamps existed).
  """
  name: str
  program: str
  options: List[str]
  inputs: Sequence[Union[str, "Stage"]] = ()
  outputs: Sequence[str] = ()
  done: Optional[Sequence[str]] = None
  untracked: Sequence[str] = ()
  resumable: bool = False
  key: Optional[str] = None
  adopt: bool = False

  @property
  def stamp_name(self) -> str:
    return (self.key or re.sub(r"[^A-Za-z0-9]+", "_", self.name).strip("_")) + ".json"

  @property
  def done_files(self) -> Sequence[str]:
    return self.outputs if self.done is None else self.done

  def command(self) -> List[str]:
    """The command line: this interpreter, ``-m program``, options, untracked."""
    return [sys.executable, "-m", self.program, *self.options, *self.untracked]


def path_fingerprint(path: str) -> str:
  """A file by its bytes, a directory by its listing (path, size, mtime), else ``missing``."""
  digest = hashlib.sha256()
  if os.path.isfile(path):
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  elif os.path.isdir(path):
    for root, dirs, files in os.walk(path):
      dirs.sort()
      for name in sorted(files):
        full = os.path.join(root, name)
        info = os.stat(full)
        digest.update(f"{os.path.relpath(full, path)}\0{info.st_size}\0"
                      f"{info.st_mtime_ns}\n".encode())
  else:
    return "missing"
  return digest.hexdigest()


def _digest(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


class Runner:
  """Runs stages, skipping those whose stamp matches.

  Args:
    stamps: the folder of the stamps (made when needed).
    cwd: the programs' working directory (None: this process's).

  ``timings`` maps the name of every stage run by this runner to its seconds.
  """

  def __init__(self, stamps: str, cwd: Optional[str] = None):
    self.stamps = stamps
    self.cwd = cwd
    self.timings: Dict[str, float] = {}

  def stamp_path(self, stage: Stage) -> str:
    return os.path.join(self.stamps, stage.stamp_name)

  def read_stamp(self, stage: Stage) -> Optional[dict]:
    """The stage's stamp, or None."""
    try:
      with open(self.stamp_path(stage), encoding="utf-8") as f:
        return json.load(f)
    except FileNotFoundError:
      return None

  def _write_stamp(self, stage: Stage, stamp: dict) -> None:
    os.makedirs(self.stamps, exist_ok=True)
    path = self.stamp_path(stage)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(stamp, f, indent=1)
    os.replace(path + ".tmp", path)

  def input_fingerprint(self, item: Union[str, Stage]) -> str:
    """An input's fingerprint (see the module docstring)."""
    if isinstance(item, Stage):
      stamp = self.read_stamp(item)
      if not stamp or stamp["state"] != "complete":
        raise StageError(f"input stage {item.name} has not finished; run it first")
      return _digest([stamp["fingerprint"], stamp["finished"]])
    return path_fingerprint(item)

  def describe(self, stage: Stage) -> dict:
    """What the fingerprint covers: program, options, input label -> fingerprint,
    and the fingerprint itself."""
    inputs = {item.name if isinstance(item, Stage) else item: self.input_fingerprint(item)
              for item in stage.inputs}
    parts = {"program": stage.program, "options": list(stage.options), "inputs": inputs}
    return dict(parts, fingerprint=_digest(parts))

  @staticmethod
  def changes(old: dict, new: dict) -> str:
    """Why ``new`` differs from the stamp ``old``, in a few words."""
    said = []
    if old.get("program") != new["program"]:
      said.append(f"program {old.get('program')} -> {new['program']}")
    before, after = old.get("options", []), new["options"]
    gone = [o for o in before if o not in after]
    added = [o for o in after if o not in before]
    if gone or added:
      said.append(f"options {' '.join(gone) or '(none)'} -> {' '.join(added) or '(none)'}")
    elif before != after:
      said.append("options reordered")
    old_inputs = old.get("inputs", {})
    changed = [k for k, v in new["inputs"].items() if old_inputs.get(k) != v]
    changed += [k for k in old_inputs if k not in new["inputs"]]
    if changed:
      said.append("inputs changed: " + ", ".join(changed))
    return "; ".join(said) or "fingerprint changed"

  def _move_aside(self, stage: Stage) -> List[str]:
    moved = []
    for path in stage.outputs:
      if os.path.lexists(path):
        aside = path.rstrip(os.sep) + ".stale"
        if os.path.isdir(aside) and not os.path.islink(aside):
          shutil.rmtree(aside)
        elif os.path.lexists(aside):
          os.remove(aside)
        os.rename(path, aside)
        moved.append(aside)
    return moved

  def run(self, stage: Stage) -> bool:
    """Runs ``stage`` unless its stamp matches; returns whether it ran.

    Prints ``== <name>: <command>`` and ``== <name>: done in <s> s`` around a
    run, ``== <name>: complete (<output>)`` for a skip, and a line saying why
    before a rerun. StageError when the program fails (its stamp stays
    ``running``).
    """
    now = self.describe(stage)
    stamp = self.read_stamp(stage)
    finished = all(os.path.exists(p) for p in stage.done_files)
    where = (list(stage.done_files) + list(stage.outputs) + [""])[0]
    reason = None
    if stamp is None:
      if finished and stage.done_files and stage.adopt:
        self._write_stamp(stage, dict(now, state="complete", finished=time.time(),
                                      adopted=True))
        print(f"== {stage.name}: complete ({where}; made before stamps, adopted)", flush=True)
        return False
      if any(os.path.lexists(p) for p in stage.outputs):
        reason = "its output has no stamp saying what made it"
    elif stamp["fingerprint"] != now["fingerprint"]:
      reason = self.changes(stamp, now)
    elif stamp["state"] == "complete":
      if finished:
        print(f"== {stage.name}: complete ({where})", flush=True)
        return False
      reason = "its output is missing"
    elif stage.resumable:
      print(f"== {stage.name}: resuming the run that stopped", flush=True)
    else:
      reason = "the previous run stopped before the end"
    if reason:
      moved = self._move_aside(stage)
      print(f"== {stage.name}: rerun, {reason}"
            + (f" (old output moved to {', '.join(moved)})" if moved else ""), flush=True)
    self._write_stamp(stage, dict(now, state="running", finished=None))
    command = stage.command()
    print(f"== {stage.name}: {quote(command)}", flush=True)
    started = time.time()
    result = subprocess.run(command, cwd=self.cwd)
    if result.returncode != 0:
      raise StageError(f"stage {stage.name} failed (exit {result.returncode}); fix the cause "
                       "and run the same command again: finished stages are kept")
    missing = [p for p in stage.done_files if not os.path.exists(p)]
    if missing:
      raise StageError(f"stage {stage.name} exited 0 but did not write {', '.join(missing)}")
    self.timings[stage.name] = time.time() - started
    self._write_stamp(stage, dict(now, state="complete", finished=time.time()))
    print(f"== {stage.name}: done in {self.timings[stage.name]:.0f} s", flush=True)
    return True
