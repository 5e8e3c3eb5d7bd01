"""CTranslate2 Whisper model directories (faster-whisper's format): the encoder's weights.

A CTranslate2 Whisper directory holds ``model.bin`` (every weight), a
``config.json`` (decoding settings only: suppressed tokens, language ids,
alignment heads; no sizes) and vocabulary / tokenizer files. This module reads
``model.bin`` with numpy alone (``ctranslate2`` is not needed at run time),
takes the encoder's variables and converts them to float32 arrays under
Hugging Face names; ``kws_tf.models.whisper.load_ctranslate2_encoder`` sets
them into the Keras port ``WhisperEncoder``.

``model.bin`` layout, as CTranslate2's writer (``ModelSpec._serialize`` in
``ctranslate2/specs/model_spec.py``) and reader (``Model::load`` in
``src/models/model.cc``) define it; integers are little-endian:

  uint32 binary_version                       (1..6; 6 since CTranslate2 3.x)
  string spec_name, uint32 spec_revision      (binary_version >= 2)
  uint32 num_variables, then per variable:
    string name, uint8 rank, uint32 dims[rank],
    binary_version >= 4: uint8 dtype id, uint32 byte count
    binary_version <  4: uint8 item size, uint32 element count
    raw bytes (row-major)
  binary_version >= 3: uint32 num_aliases, then per alias:
    string alias, string variable name

A string is a uint16 length (NUL included) followed by its UTF-8 bytes and a
NUL. dtype ids: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16
(before version 4 the item size gives float32 / int16 / int8). The writer
stores a variable equal to an earlier one (in name order) once and aliases
the others to it; an alias of ``x`` also aliases ``x_scale``.

Spec ``WhisperSpec`` revisions 1 to 3 (3 is CTranslate2 4.x's) share the
encoder's layout; the encoder variables and their Keras counterparts:

  encoder/conv1/weight [d, mels, 3], conv1/bias   -> conv1 (kernel transposed)
  encoder/conv2/weight [d, d, 3], conv2/bias      -> conv2
  encoder/position_encodings/encodings [P, d]     -> embed_positions
  encoder/layer_{i}/self_attention/layer_norm/{gamma,beta} -> self_attn_layer_norm
  encoder/layer_{i}/self_attention/linear_0/{weight [3d, d], bias [3d]}
      the fused q, k, v projections (rows q, then k, then v)
  encoder/layer_{i}/self_attention/linear_1/{weight,bias} -> self_attn.out_proj
  encoder/layer_{i}/ffn/layer_norm/{gamma,beta}   -> final_layer_norm
  encoder/layer_{i}/ffn/linear_0/{weight,bias}    -> fc1
  encoder/layer_{i}/ffn/linear_1/{weight,bias}    -> fc2
  encoder/layer_norm/{gamma,beta}                 -> layer_norm
  encoder/num_heads (int16 scalar)                -> the number of heads

The fused bias's k part is dropped: Whisper's k projection has no bias (the
converter writes zeros there), and a k bias adds the same score to every key
of a query, which softmax ignores. Weights are stored as PyTorch lays them out
(``[out, in]``, ``[out, in, k]``), transposed for Keras.

Weights in float16 or bfloat16 become float32 exactly; int8 weights (per-row
float scales ``<name>_scale``, CTranslate2's ``int8*`` quantizations) and
int16 weights (one scale) are dequantized as ``value / scale``; AWQ weights
(``weight_zero``) are refused. The encoder's sizes come from the variables'
shapes and ``encoder/num_heads``.
"""
import dataclasses
import os
import re
import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

MODEL_FILE = "model.bin"
SUPPORTED_BINARY_VERSIONS = (1, 2, 3, 4, 5, 6)
# spec name -> supported revisions (their encoder layouts are identical).
SUPPORTED_SPECS = {"WhisperSpec": (1, 2, 3)}
# Every released Whisper size has 64-dimensional heads: the number of heads of
# a file without ``encoder/num_heads`` is d_model // 64.
WHISPER_HEAD_DIM = 64

# dtype ids of binary version >= 4 (CTranslate2's DataType enum, types.h).
_DTYPES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16",
           5: "bfloat16"}
# item size -> dtype before binary version 4 (model.cc: get_dtype_from_item_size).
_LEGACY_DTYPES = {4: "float32", 2: "int16", 1: "int8"}
_ITEM_SIZES = {"float32": 4, "int8": 1, "int16": 2, "int32": 4, "float16": 2,
               "bfloat16": 2}
_NUMPY_DTYPES = {"float32": "<f4", "int8": "i1", "int16": "<i2", "int32": "<i4",
                 "float16": "<f2", "bfloat16": "<u2"}
_FLOATS = ("float32", "float16", "bfloat16")

PathLike = Union[str, os.PathLike]


class CTranslate2FormatError(ValueError):
  """``model.bin`` is not a CTranslate2 model this reader can take."""


@dataclasses.dataclass(frozen=True)
class VariableInfo:
  """One variable of ``model.bin``: where its bytes are and what they are."""
  name: str
  shape: Tuple[int, ...]
  dtype: str      # float32, int8, int16, int32, float16 or bfloat16
  offset: int     # byte offset of the data in the file
  num_bytes: int


@dataclasses.dataclass
class ModelBin:
  """The index of a ``model.bin``: header, variables and aliases.

  Values are read on demand (``array``); a 145 MB Whisper-base file is
  indexed without reading its weights.
  """
  path: str
  binary_version: int
  spec_name: str
  spec_revision: int
  variables: Dict[str, VariableInfo]
  aliases: Dict[str, str]   # alias -> variable name

  def resolve(self, name: str) -> Optional[str]:
    """The stored variable that ``name`` is or aliases, or None.

    As CTranslate2 does, an alias of ``x`` also makes ``<alias>_scale`` an
    alias of ``x_scale``.
    """
    if name in self.variables:
      return name
    if name in self.aliases:
      target = self.aliases[name]
      return target if target in self.variables else None
    if name.endswith("_scale"):
      base = name[:-len("_scale")]
      if base in self.aliases:
        target = self.aliases[base] + "_scale"
        return target if target in self.variables else None
    return None

  def __contains__(self, name: str) -> bool:
    return self.resolve(name) is not None

  def names(self) -> List[str]:
    """Every name, stored or alias (scale aliases excluded)."""
    return sorted(set(self.variables) | set(self.aliases))

  def info(self, name: str) -> VariableInfo:
    resolved = self.resolve(name)
    if resolved is None:
      raise KeyError(f"{self.path} has no variable {name}")
    return self.variables[resolved]

  def array(self, name: str) -> np.ndarray:
    """The stored value of ``name`` (or of the variable it aliases), in its dtype.

    bfloat16 comes back as its uint16 bit patterns (``to_float32`` converts).
    """
    info = self.info(name)
    with open(self.path, "rb") as f:
      f.seek(info.offset)
      data = f.read(info.num_bytes)
    if len(data) != info.num_bytes:
      raise CTranslate2FormatError(f"{self.path} is truncated inside variable {name}")
    return np.frombuffer(data, dtype=_NUMPY_DTYPES[info.dtype]).reshape(info.shape)

  def float32(self, name: str) -> np.ndarray:
    """``name`` as float32: float16/bfloat16 converted, int8/int16 dequantized."""
    info = self.info(name)
    value = self.array(name)
    if info.dtype in _FLOATS:
      return to_float32(value, info.dtype)
    return self._dequantize(name, info, value)

  def _dequantize(self, name: str, info: VariableInfo,
                  value: np.ndarray) -> np.ndarray:
    if name + "_zero" in self:
      raise CTranslate2FormatError(
          f"{name} is AWQ-quantized ({info.dtype} with {name}_zero): AWQ "
          "quantization is not supported; convert the model with "
          "--quantization float16 or float32")
    if info.dtype not in ("int8", "int16"):
      raise CTranslate2FormatError(
          f"{name} has dtype {info.dtype}, which is not a float or a "
          "CTranslate2 int8/int16 quantized weight")
    scale_name = name + "_scale"
    if scale_name not in self:
      raise CTranslate2FormatError(
          f"{name} is {info.dtype}-quantized but {scale_name} is missing: "
          "cannot dequantize it")
    scale_info = self.info(scale_name)
    scale = to_float32(self.array(scale_name), scale_info.dtype)
    value = value.astype(np.float32)
    if info.dtype == "int16":
      # One scale for the whole weight (model_spec.py, quantization "int16").
      if scale.size != 1:
        raise CTranslate2FormatError(
            f"{scale_name} has shape {scale.shape}; int16 quantization has one scale")
      return value / scale.reshape(())
    # int8: one scale per output row; a Conv1D weight [out, in, k] is
    # quantized as [out, in * k] (model_spec.py, quantizations "int8*").
    if scale.shape != (info.shape[0],):
      raise CTranslate2FormatError(
          f"{scale_name} has shape {scale.shape}; the int8 weight {name} of "
          f"shape {info.shape} needs one scale per row ({info.shape[0]},)")
    flat = value.reshape(info.shape[0], -1) / scale[:, np.newaxis]
    return flat.reshape(info.shape)


def to_float32(value: np.ndarray, dtype: str) -> np.ndarray:
  """A float32 copy of a stored float (bfloat16: uint16 bit patterns)."""
  if dtype == "bfloat16":
    # bfloat16 is the top half of a float32: shift the bits into place.
    return (value.astype(np.uint32) << 16).view(np.float32)
  if dtype not in _FLOATS:
    raise CTranslate2FormatError(f"expected a float variable, got {dtype}")
  return value.astype(np.float32)


def _reader(f, path: str):
  """Little-endian readers of ``f`` that fail clearly at the end of the file."""

  def read(size: int, what: str) -> bytes:
    position = f.tell()
    data = f.read(size)
    if len(data) != size:
      raise CTranslate2FormatError(
          f"{path} is truncated: expected {size} bytes of {what} at byte "
          f"{position}, found {len(data)}")
    return data

  def number(fmt: str, what: str) -> int:
    return struct.unpack("<" + fmt, read(struct.calcsize(fmt), what))[0]

  def string(what: str) -> str:
    length = number("H", f"the length of {what}")
    data = read(length, what)
    return data.split(b"\0", 1)[0].decode("utf-8")

  return read, number, string


def read_model_bin(path: PathLike) -> ModelBin:
  """Indexes a CTranslate2 ``model.bin`` (a file, or a directory holding one).

  Raises:
    FileNotFoundError: no such file.
    CTranslate2FormatError: an unsupported binary version, an unknown dtype,
      a byte count that does not match the shape, or a truncated file.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, MODEL_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no CTranslate2 model file {path}")
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    read, number, string = _reader(f, path)
    version = number("I", "the binary version")
    if version not in SUPPORTED_BINARY_VERSIONS:
      raise CTranslate2FormatError(
          f"{path} has binary version {version}; this reader takes versions "
          f"{SUPPORTED_BINARY_VERSIONS[0]}..{SUPPORTED_BINARY_VERSIONS[-1]} "
          "(is it a CTranslate2 model.bin?)")
    spec_name, revision = "", 1
    if version >= 2:
      spec_name = string("the spec name")
      revision = number("I", "the spec revision")
    variables: Dict[str, VariableInfo] = {}
    for index in range(number("I", "the variable count")):
      name = string(f"the name of variable {index}")
      rank = number("B", f"the rank of {name}")
      shape = tuple(number("I", f"the shape of {name}") for _ in range(rank))
      if version >= 4:
        type_id = number("B", f"the dtype of {name}")
        if type_id not in _DTYPES:
          raise CTranslate2FormatError(
              f"{path}: variable {name} has unknown dtype id {type_id} "
              f"(known: {_DTYPES})")
        dtype = _DTYPES[type_id]
        num_bytes = number("I", f"the byte count of {name}")
      else:
        item_size = number("B", f"the item size of {name}")
        if item_size not in _LEGACY_DTYPES:
          raise CTranslate2FormatError(
              f"{path}: variable {name} has unknown item size {item_size}")
        dtype = _LEGACY_DTYPES[item_size]
        num_bytes = number("I", f"the element count of {name}") * item_size
      expected = int(np.prod(shape, dtype=np.int64)) * _ITEM_SIZES[dtype]
      if num_bytes != expected:
        raise CTranslate2FormatError(
            f"{path}: variable {name} of shape {shape} and dtype {dtype} "
            f"declares {num_bytes} bytes, expected {expected}")
      offset = f.tell()
      if offset + num_bytes > size:
        raise CTranslate2FormatError(
            f"{path} is truncated inside variable {name} (needs bytes "
            f"{offset}..{offset + num_bytes}, the file has {size})")
      f.seek(num_bytes, os.SEEK_CUR)
      variables[name] = VariableInfo(name, shape, dtype, offset, num_bytes)
    aliases: Dict[str, str] = {}
    if version >= 3:
      for index in range(number("I", "the alias count")):
        alias = string(f"alias {index}")
        aliases[alias] = string(f"the target of alias {alias}")
    trailing = size - f.tell()
  if trailing:
    raise CTranslate2FormatError(
        f"{path} has {trailing} unexpected bytes after its aliases "
        "(a corrupt or wrongly joined file?)")
  return ModelBin(path, version, spec_name, revision, variables, aliases)


def is_ctranslate2_dir(path: PathLike) -> bool:
  """True for a directory that holds a CTranslate2 ``model.bin``.

  Checked by the file's first 4 bytes (a supported binary version), so a
  Hugging Face directory (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``) is never taken for one.
  """
  path = os.fspath(path)
  model = os.path.join(path, MODEL_FILE)
  if not (os.path.isdir(path) and os.path.isfile(model)):
    return False
  with open(model, "rb") as f:
    head = f.read(4)
  return len(head) == 4 and struct.unpack("<I", head)[0] in SUPPORTED_BINARY_VERSIONS


def _check_spec(model: ModelBin) -> None:
  if model.spec_name not in SUPPORTED_SPECS:
    raise CTranslate2FormatError(
        f"{model.path} holds a {model.spec_name or 'nameless (binary version 1)'} "
        f"model; this reader takes {', '.join(SUPPORTED_SPECS)} (a Whisper model "
        "converted by CTranslate2 / faster-whisper)")
  revisions = SUPPORTED_SPECS[model.spec_name]
  if model.spec_revision not in revisions:
    raise CTranslate2FormatError(
        f"{model.path}: {model.spec_name} revision {model.spec_revision} is not "
        f"supported (supported revisions: {', '.join(map(str, revisions))}); it "
        "was probably written by a newer CTranslate2")


def _num_layers(model: ModelBin) -> int:
  indices = {int(m.group(1)) for name in model.names()
             if (m := re.match(r"encoder/layer_(\d+)/", name))}
  if not indices:
    raise CTranslate2FormatError(f"{model.path} has no encoder layers "
                                 "(no encoder/layer_* variables)")
  return max(indices) + 1


def _shape(model: ModelBin, name: str) -> Tuple[int, ...]:
  if name not in model:
    raise CTranslate2FormatError(
        f"{model.path} lacks {name}, needed to size the encoder")
  return model.info(name).shape


def config_from_model(model: ModelBin) -> Dict[str, Any]:
  """The encoder config (``whisper.encoder_config`` fields) of an indexed model.

  Sizes come from the shapes of ``encoder/conv1/weight`` (d_model, mel bins),
  ``encoder/position_encodings/encodings`` (max_source_positions),
  ``encoder/layer_0/ffn/linear_0/weight`` (ffn size), the number of
  ``encoder/layer_*`` scopes, and ``encoder/num_heads`` (or
  ``d_model // 64`` when a file lacks it).
  """
  _check_spec(model)
  conv1 = _shape(model, "encoder/conv1/weight")
  if len(conv1) != 3:
    raise CTranslate2FormatError(
        f"encoder/conv1/weight has shape {conv1}, expected [d_model, mels, 3]")
  d_model, mels = conv1[0], conv1[1]
  positions = _shape(model, "encoder/position_encodings/encodings")
  ffn = _shape(model, "encoder/layer_0/ffn/linear_0/weight")
  if "encoder/num_heads" in model:
    heads = int(model.array("encoder/num_heads").reshape(()))
  else:
    heads = d_model // WHISPER_HEAD_DIM
  return {"num_mel_bins": int(mels), "d_model": int(d_model),
          "encoder_layers": _num_layers(model),
          "encoder_attention_heads": heads, "encoder_ffn_dim": int(ffn[0]),
          "max_source_positions": int(positions[0]), "dropout": 0.0,
          "attention_dropout": 0.0, "activation_dropout": 0.0,
          "activation_function": "gelu", "init_std": 0.02}


def ctranslate2_config(model_dir: PathLike) -> Dict[str, Any]:
  """The encoder config of a CTranslate2 Whisper directory (see ``config_from_model``)."""
  return config_from_model(read_model_bin(model_dir))


# One map entry: (CTranslate2 name, its shape, [(Hugging Face name or None
# to drop, row range or None for all)]). The Hugging Face names are those of
# ``whisper._weight_map``, which maps them onto the Keras weights.
_MapEntry = Tuple[str, Tuple[int, ...], List[Tuple[Optional[str], Optional[slice]]]]


def _name_map(config: Dict[str, Any]) -> List[_MapEntry]:
  """Every encoder variable a CTranslate2 Whisper ``model.bin`` must hold."""
  d, mels = config["d_model"], config["num_mel_bins"]
  ffn, positions = config["encoder_ffn_dim"], config["max_source_positions"]
  q, k, v = slice(0, d), slice(d, 2 * d), slice(2 * d, 3 * d)

  def whole(name):
    return [(name, None)]

  entries: List[_MapEntry] = [
      ("encoder/conv1/weight", (d, mels, 3), whole("conv1.weight")),
      ("encoder/conv1/bias", (d,), whole("conv1.bias")),
      ("encoder/conv2/weight", (d, d, 3), whole("conv2.weight")),
      ("encoder/conv2/bias", (d,), whole("conv2.bias")),
      ("encoder/position_encodings/encodings", (positions, d),
       whole("embed_positions.weight"))]
  for i in range(config["encoder_layers"]):
    ct2, hf = f"encoder/layer_{i}/", f"layers.{i}."
    entries += [
        (ct2 + "self_attention/layer_norm/gamma", (d,),
         whole(hf + "self_attn_layer_norm.weight")),
        (ct2 + "self_attention/layer_norm/beta", (d,),
         whole(hf + "self_attn_layer_norm.bias")),
        (ct2 + "self_attention/linear_0/weight", (3 * d, d),
         [(hf + "self_attn.q_proj.weight", q), (hf + "self_attn.k_proj.weight", k),
          (hf + "self_attn.v_proj.weight", v)]),
        (ct2 + "self_attention/linear_0/bias", (3 * d,),
         [(hf + "self_attn.q_proj.bias", q), (None, k),
          (hf + "self_attn.v_proj.bias", v)]),
        (ct2 + "self_attention/linear_1/weight", (d, d),
         whole(hf + "self_attn.out_proj.weight")),
        (ct2 + "self_attention/linear_1/bias", (d,),
         whole(hf + "self_attn.out_proj.bias")),
        (ct2 + "ffn/layer_norm/gamma", (d,), whole(hf + "final_layer_norm.weight")),
        (ct2 + "ffn/layer_norm/beta", (d,), whole(hf + "final_layer_norm.bias")),
        (ct2 + "ffn/linear_0/weight", (ffn, d), whole(hf + "fc1.weight")),
        (ct2 + "ffn/linear_0/bias", (ffn,), whole(hf + "fc1.bias")),
        (ct2 + "ffn/linear_1/weight", (d, ffn), whole(hf + "fc2.weight")),
        (ct2 + "ffn/linear_1/bias", (d,), whole(hf + "fc2.bias"))]
  entries += [("encoder/layer_norm/gamma", (d,), whole("layer_norm.weight")),
              ("encoder/layer_norm/beta", (d,), whole("layer_norm.bias"))]
  return entries


# Encoder variables that are read for the config, not mapped to a weight.
_CONFIG_VARIABLES = ("encoder/num_heads",)


def encoder_tensors(model: ModelBin,
                    config: Optional[Dict[str, Any]] = None) -> Dict[str, np.ndarray]:
  """The encoder's weights as float32 arrays under Hugging Face names.

  Names are those of transformers' ``WhisperEncoder`` (``conv1.weight``,
  ``layers.0.self_attn.q_proj.weight``, ...), in PyTorch layouts, as
  ``whisper._set_weights`` takes them.

  Raises:
    CTranslate2FormatError: an unsupported spec or revision; encoder variables
      missing, unexpected (including an unused quantization scale) or of the
      wrong shape (every offending variable is listed); or a quantization
      this reader does not take.
  """
  config = config or config_from_model(model)
  entries = _name_map(config)
  expected = {name for name, _, _ in entries}
  encoder_names = {name for name in model.names() if name.startswith("encoder/")}
  awq = sorted(name for name in encoder_names if name.endswith("_zero"))
  if awq:
    raise CTranslate2FormatError(
        f"{model.path} is AWQ-quantized ({', '.join(awq[:3])}...): AWQ "
        "quantization is not supported; use a model converted with "
        "--quantization float16, bfloat16, float32, int8* or int16")
  missing = sorted(name for name in expected if name not in model)
  scales = {name + "_scale" for name in expected}
  unexpected = sorted(encoder_names - expected - set(_CONFIG_VARIABLES)
                      - {name for name in scales if _is_quantized(model, name)})
  wrong_shapes = [f"{name} {model.info(name).shape} (expected {shape})"
                  for name, shape, _ in entries
                  if name in model and model.info(name).shape != shape]
  if missing or unexpected or wrong_shapes:
    raise CTranslate2FormatError(
        f"{model.path} does not hold the Whisper encoder its shapes describe "
        f"({config['encoder_layers']} layers, d_model {config['d_model']}, "
        f"ffn {config['encoder_ffn_dim']}, {config['num_mel_bins']} mel bins, "
        f"{config['max_source_positions']} positions): missing variables "
        f"{missing or 'none'}; unexpected variables {unexpected or 'none'}; "
        f"wrong shapes {wrong_shapes or 'none'}")
  tensors = {}
  for name, _, targets in entries:
    value = model.float32(name)
    for target, rows in targets:
      if target is not None:
        tensors[target] = value if rows is None else value[rows]
  return tensors


def _is_quantized(model: ModelBin, scale_name: str) -> bool:
  """Whether ``scale_name`` is the scale of a stored integer weight."""
  base = scale_name[:-len("_scale")]
  return scale_name in model and base in model and \
      model.info(base).dtype in ("int8", "int16")


def summary(model: ModelBin) -> Dict[str, Any]:
  """Counts of a model for checks and logs: variables, aliases, dtypes, parameters."""
  dtypes: Dict[str, int] = {}
  for info in model.variables.values():
    dtypes[info.dtype] = dtypes.get(info.dtype, 0) + 1
  return {"binary_version": model.binary_version, "spec": model.spec_name,
          "revision": model.spec_revision, "variables": len(model.variables),
          "aliases": len(model.aliases), "dtypes": dtypes,
          "parameters": int(sum(int(np.prod(v.shape, dtype=np.int64))
                                for v in model.variables.values()))}


__all__: Sequence[str] = (
    "CTranslate2FormatError", "ModelBin", "VariableInfo", "config_from_model",
    "ctranslate2_config", "encoder_tensors", "is_ctranslate2_dir", "read_model_bin",
    "summary", "to_float32")
