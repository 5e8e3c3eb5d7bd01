"""SavedModel -> TFLite flatbuffer, one conversion per format.

``convert(saved_model_dir, kind, ...)`` converts the serving signature of a
``kws_tf.export.serving.ServingModule`` SavedModel:

  float32  plain conversion
  float16  float16 weights (computation in float32)
  dynamic  int8 weights of the model (the front end's stay float32),
           activations quantized at run time
  int8     int8 weights and activations of the model, calibrated on
           representative waveforms; the front end and the normalisation stay
           float32; the waveform input and the outputs are int8 or float32
           (``int8_io``)
  qat      as int8, from the SavedModel of a model fine-tuned with
           quantization-aware training (``kws_tf.export.qat``)

Why the front end stays float32: a power spectrum spans far more than the 8
bits of an int8 tensor. int8 (and qat) files quantize the model's layers only
(the front end's tensors are on the quantizer's deny list); dynamic files
get the front end's constants (DFT, mel, delta matrices) back as float32
(``keep_front_end_float``). The errors of both ways: BUILD.md, TFLite export
internals.
"""
from typing import List, Optional, Sequence

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from kws_tf.export import serving
from kws_tf.export.errors import ExportError

FORMATS = ("float32", "float16", "dynamic", "int8", "qat")


def in_model(tensor_name: str, model_name: str) -> bool:
  """True for tensors of the Keras model's ops (named ``<model_name>/...``) and the
  signature outputs (``StatefulPartitionedCall...``); the rest are the front end's."""
  return tensor_name.startswith((f"{model_name}/", "StatefulPartitionedCall"))


def front_end_nodes(calibrated: bytes, model_name: str) -> List[str]:
  """Tensors of a calibrated TFLite model that int8 quantization must leave float:
  those of the front end and the normalisation."""
  from ai_edge_litert.interpreter import Interpreter
  return [t["name"] for t in Interpreter(model_content=calibrated).get_tensor_details()
          if not in_model(t["name"], model_name)]


def keep_front_end_float(quantized: bytes, float_model: bytes, model_name: str) -> bytes:
  """A dynamic-range model with the front end's weights float32 again.

  TFLite's dynamic-range conversion has no deny list: it stores every large
  constant matrix in int8, the front end's (DFT, mel, delta filters) too, and
  its hybrid kernels then quantize the power spectrum to 8 bits at run time.
  Here each int8 constant read by a front-end op takes back its float32 value
  from ``float_model`` (the same SavedModel converted as float32): the
  constant of the same shape that its dequantized values are closest to,
  within one quantization step. Those ops then run in float; the model keeps
  its int8 weights.
  """
  from tensorflow.lite.python import schema_py_generated as schema
  from tensorflow.lite.tools import flatbuffer_utils
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(quantized))
  reference = flatbuffer_utils.convert_bytearray_to_object(bytearray(float_model))
  originals = []
  for t in reference.subgraphs[0].tensors:
    data = reference.buffers[t.buffer].data
    if t.type == schema.TensorType.FLOAT32 and data is not None:
      originals.append((t, np.frombuffer(bytes(data), np.float32).reshape(t.shape)))
  graph = model.subgraphs[0]
  for op in graph.operators:
    if in_model(graph.tensors[op.outputs[0]].name.decode("utf-8"), model_name):
      continue
    for index in op.inputs:
      tensor = graph.tensors[index] if index >= 0 else None
      if (tensor is None or tensor.type != schema.TensorType.INT8
          or model.buffers[tensor.buffer].data is None):
        continue
      q = tensor.quantization
      axis = q.quantizedDimension
      shape = [1] * len(tensor.shape)
      shape[axis] = -1
      scale = np.asarray(q.scale, np.float32).reshape(shape if len(q.scale) > 1 else [1])
      zero = np.asarray(q.zeroPoint, np.float32).reshape(scale.shape)
      values = (np.frombuffer(bytes(model.buffers[tensor.buffer].data), np.int8)
                .reshape(tensor.shape).astype(np.float32) - zero) * scale
      best = min(((float(np.max(np.abs(values - w))), t, w) for t, w in originals
                  if tuple(w.shape) == tuple(values.shape)),
                 key=lambda c: c[0], default=None)
      if best is None or best[0] > float(np.max(scale)):
        raise ExportError(f"no float32 original of the front end's int8 constant "
                          f"{tensor.name.decode('utf-8')} {list(tensor.shape)}")
      _, original, weights = best
      tensor.type, tensor.quantization = schema.TensorType.FLOAT32, original.quantization
      model.buffers[tensor.buffer].data = np.ascontiguousarray(weights).view(np.uint8).ravel()
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def convert(saved_model_dir: str, kind: str, model_name: str = "",
            representative: Optional[Sequence[np.ndarray]] = None,
            int8_io: bool = False) -> bytes:
  """A TFLite flatbuffer of the SavedModel's serving signature.

  Args:
    saved_model_dir: a ``ServingModule`` SavedModel.
    kind: one of ``FORMATS`` (module docstring).
    model_name: the Keras model's name (dynamic, int8, qat: tells its ops from
      the front end's).
    representative: int8 and qat: calibration waveforms float32 ``[samples]``.
    int8_io: int8 and qat: int8 waveform input and int8 float outputs
      (``logit_frames`` stays int32) instead of float32.

  Raises ValueError for an unknown ``kind`` or int8 / qat without
  ``representative``; the converter's ``ConverterError`` passes through.
  """
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
  if kind == "float32":
    return converter.convert()
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if kind == "float16":
    converter.target_spec.supported_types = [tf.float16]
    return converter.convert()
  if kind == "dynamic":
    return keep_front_end_float(converter.convert(), convert(saved_model_dir, "float32"),
                                model_name)
  if kind not in ("int8", "qat"):
    raise ValueError(f"unknown TFLite format {kind!r}, expected one of {FORMATS}")
  if not representative:
    raise ValueError(f"{kind} conversion needs representative waveforms")

  def dataset():
    for waveform in representative:
      yield {serving.WAVEFORM: np.asarray(waveform, np.float32)[np.newaxis]}

  converter.representative_dataset = dataset
  # Calibrate, then quantize the model's ops only: the same two steps as
  # converter.convert(), with the front end on the deny list (what
  # tf.lite.experimental.QuantizationDebugger does with denylisted_nodes).
  from tensorflow.lite.python import convert as lite_convert
  converter._experimental_calibrate_only = True  # pylint: disable=protected-access
  calibrated = converter.convert()
  io_type = tf.int8 if int8_io else tf.float32
  return lite_convert.mlir_quantize(
      calibrated, fully_quantize=int8_io, input_data_type=io_type, output_data_type=io_type,
      denylisted_nodes=front_end_nodes(calibrated, model_name))
