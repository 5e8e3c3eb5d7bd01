"""Name -> model builder.

A builder is a function ``builder(*, task, num_channels, num_classes,
projection_dim, **params) -> tf_keras.Model`` that returns a model following
the contract of ``kws_tf.models``; its signature names every parameter it
takes (``check_params`` reads it). Presets are registered builders with fixed
defaults.
"""
import importlib
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional

_BUILDERS: Dict[str, Callable] = {}
_TIME_STRIDES: Dict[str, int] = {}
# Modules that register builders when imported.
_MODULES = ("kws_tf.models.wav2letter", "kws_tf.models.mobilenet_v3",
            "kws_tf.models.resnet", "kws_tf.models.teacher")
# Builder arguments that come from the model spec (records and config), not
# from ``model.params``.
SPEC_ARGUMENTS = ("task", "num_channels", "num_classes", "projection_dim")


def register(name: str, time_stride: Optional[int] = None) -> Callable[[Callable], Callable]:
  """Decorator: registers ``builder`` under ``name``; a name may be used once.

  ``time_stride``: input frames per frame of the model's frame-level outputs,
  when the model has one for every task (the Whisper teacher's encoder frames);
  see ``time_stride``.
  """
  def decorate(builder: Callable) -> Callable:
    if name in _BUILDERS and _BUILDERS[name] is not builder:
      raise ValueError(f"model name {name!r} is already registered")
    _BUILDERS[name] = builder
    if time_stride is not None:
      _TIME_STRIDES[name] = time_stride
    return builder
  return decorate


def _load_all() -> None:
  for module in _MODULES:
    importlib.import_module(module)


def names() -> List[str]:
  """All registered model names, sorted."""
  _load_all()
  return sorted(_BUILDERS)


def get(name: str) -> Callable:
  """The builder registered as ``name``; a KeyError lists the known names."""
  _load_all()
  if name not in _BUILDERS:
    raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(_BUILDERS))}")
  return _BUILDERS[name]


def time_stride(name: str) -> Optional[int]:
  """The fixed time stride registered with ``name``'s builder, or None (the stride
  depends on the task and parameters)."""
  get(name)
  return _TIME_STRIDES.get(name)


def check_params(name: str, params: Mapping[str, Any]) -> None:
  """Checks ``params`` (a config's ``model.params``) against the signature of
  the builder of ``name``.

  KeyError for an unknown model (``get``); ValueError naming a key the builder
  does not take and listing those it takes, or naming the parameters without
  a default that ``params`` leaves out.
  """
  named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  takes = [p for p in inspect.signature(get(name)).parameters.values()
           if p.kind in named and p.name not in SPEC_ARGUMENTS]
  accepted = sorted(p.name for p in takes)
  for key in params:
    if key not in accepted:
      raise ValueError(f"model {name!r} takes no parameter {key!r}; it takes "
                       f"{', '.join(accepted)}")
  missing = [p.name for p in takes if p.default is inspect.Parameter.empty
             and p.name not in params]
  if missing:
    raise ValueError(f"model {name!r} needs parameters {', '.join(missing)}")


def build(name: str, **params):
  """Builds the model registered as ``name`` with ``params``."""
  return get(name)(**params)
