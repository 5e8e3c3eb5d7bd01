"""CPU affinity of the data-preparation worker processes (Linux).

The converter binds each worker to its own CPU when its workers fill every CPU
it may run on; the converter benchmark pins its reader the same way.
"""
import os
from typing import List, Set


def usable_cpus() -> List[int]:
  """The CPUs this process may run on (``taskset``, cgroup cpusets), ascending."""
  return sorted(os.sched_getaffinity(0))


def pin_threads(cpus: Set[int]) -> None:
  """Restricts every thread of this process, and the threads they start, to ``cpus``."""
  for thread in os.listdir("/proc/self/task"):
    try:
      os.sched_setaffinity(int(thread), cpus)
    except ProcessLookupError:  # the thread ended meanwhile
      pass
