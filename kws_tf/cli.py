"""Running an absl app from a console script, with a useful ``--help``.

absl's ``--help`` prints the docstring of ``__main__`` and the flags of the
module named by ``sys.argv[0]``. For a console script (``kws-train``) those
are the installer's wrapper, which has neither, so ``--help`` showed only
"USAGE: kws-train [flags]". ``run_app`` lends the app module's docstring and
flags to the wrapper first.
"""
import sys
from typing import Callable

from absl import app, flags


def run_app(main: Callable, module_name: str) -> None:
  """``app.run(main)`` with ``--help`` describing the module ``module_name``."""
  if module_name != "__main__":
    module = sys.modules[module_name]
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    sys.modules["__main__"].__doc__ = module.__doc__
  app.run(main)
