"""One converter at a time per output folder: a lock on ``<out_dir>/convert.lock``.

The lock is an exclusive ``flock`` on that file, held for the whole run. The
kernel releases it when its holder exits, however it exits, so a lock file
left by a run that was killed (its pid no longer running) is taken over by
the next run. The file holds the holder's ``pid`` and ``host`` (JSON) for the
error that refuses a second run; the holder removes it when it finishes,
also on an error.
"""
import contextlib
import fcntl
import json
import os
import socket
from typing import Iterator

LOCK_FILE = "convert.lock"


def _holder(fd: int) -> dict:
  """The ``pid`` and ``host`` written in the open lock file ``fd``; {} when unreadable."""
  try:
    return json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
  except (OSError, ValueError):
    return {}


@contextlib.contextmanager
def hold(out_dir: str) -> Iterator[str]:
  """Holds the lock of ``out_dir`` (an existing folder) while the block runs; yields its path.

  Raises SystemExit with a one-line error naming the lock file and its
  holder's pid and host when another live process holds it.
  """
  path = os.path.join(out_dir, LOCK_FILE)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder(fd)
      os.close(fd)
      raise SystemExit(
          f"error: another converter is writing to {out_dir}: {path} is held by pid "
          f"{holder.get('pid', '?')} on {holder.get('host', '?')}; wait for it to end "
          "or stop it") from None
    try:
      if os.path.samestat(os.fstat(fd), os.stat(path)):
        break
    except FileNotFoundError:
      pass
    # The previous holder removed the file between our open and our lock: lock a new one.
    os.close(fd)
  try:
    stale = _holder(fd)
    if stale:
      print(f"{path}: taking over the lock of pid {stale.get('pid')} on "
            f"{stale.get('host')}, which ended without removing it", flush=True)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
    yield path
  finally:
    os.remove(path)
    os.close(fd)
