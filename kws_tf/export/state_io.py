"""int8 state at a streaming file's interface.

A ``stream_int8`` file quantizes its network but keeps float32 signature
inputs and outputs, so each state a layer-by-layer stream carries (a
convolution's buffer of int8 frames, the pooled frames) leaves the file through
a DEQUANTIZE and comes back through a QUANTIZE every call: two ops per state
and a float copy four times the size. ``int8_state`` removes both: the state
input becomes the int8 tensor its QUANTIZE made, the state output the int8
tensor its DEQUANTIZE read. The values are unchanged: a state output is a slice
of the concatenation the state input feeds, and int8 concatenations and slices
keep their input's scale, so the state's int8 values go round unchanged where
the float state was dequantized and quantized again with the same scale and
zero point (the rewrite checks that they are the same, per state, and leaves a
state whose ends differ float32).

The caller feeds back the int8 outputs as they come and starts from the
initial state quantized with the input's scale and zero point
(``quantize``). Only state tensors change; the waveform input and the
posteriors stay float32.
"""
from typing import Dict, Optional, Tuple

import numpy as np

from kws_tf import inference
from kws_tf.export import metadata

STATE_PREFIX = "state_"
NEXT_PREFIX = "next_state_"


def _opcode(model, op) -> int:
  code = model.operatorCodes[op.opcodeIndex]
  return max(code.builtinCode, code.deprecatedBuiltinCode)


def _quantization(tensor) -> Optional[Tuple[float, int]]:
  q = tensor.quantization
  if q is None or q.scale is None or len(q.scale) != 1:
    return None
  return float(q.scale[0]), int(q.zeroPoint[0])


def int8_state(content: bytes) -> bytes:
  """``content`` (a streaming TFLite file) with int8 state inputs and outputs
  wherever a state enters through a QUANTIZE to int8 and leaves through a
  DEQUANTIZE from int8 of the same scale and zero point; the file unchanged
  when no state does."""
  schema, flatbuffer_utils = metadata.model_schema()
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
  signature = model.signatureDefs[0]
  subgraph = model.subgraphs[signature.subgraphIndex]
  tensors, operators = subgraph.tensors, subgraph.operators
  inputs = {m.name.decode(): m for m in signature.inputs}
  outputs = {m.name.decode(): m for m in signature.outputs}

  def consumers(index):
    return [op for op in operators if index in list(op.inputs)]

  def producer(index):
    return next((op for op in operators if index in list(op.outputs)), None)

  rewired = False
  for name, entry in inputs.items():
    out = outputs.get(NEXT_PREFIX + name[len(STATE_PREFIX):])
    if not name.startswith(STATE_PREFIX) or out is None:
      continue
    readers, writer = consumers(entry.tensorIndex), producer(out.tensorIndex)
    if (len(readers) != 1 or _opcode(model, readers[0]) != schema.BuiltinOperator.QUANTIZE
        or writer is None or _opcode(model, writer) != schema.BuiltinOperator.DEQUANTIZE
        or consumers(out.tensorIndex)):
      continue
    quantize, dequantize = readers[0], writer
    state_in = tensors[quantize.outputs[0]]
    state_out = tensors[dequantize.inputs[0]]
    if (state_in.type != schema.TensorType.INT8 or state_out.type != schema.TensorType.INT8
        or _quantization(state_in) is None
        or _quantization(state_in) != _quantization(state_out)):
      continue
    subgraph.inputs = [quantize.outputs[0] if i == entry.tensorIndex else i
                       for i in subgraph.inputs]
    subgraph.outputs = [dequantize.inputs[0] if i == out.tensorIndex else i
                        for i in subgraph.outputs]
    entry.tensorIndex, out.tensorIndex = quantize.outputs[0], dequantize.inputs[0]
    operators.remove(quantize)
    operators.remove(dequantize)
    rewired = True
  if not rewired:
    return content
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def quantize(value: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
  """``value`` (float) as TFLite's QUANTIZE makes int8 of it: rounded half away
  from zero, clamped to [-128, 127]."""
  scaled = np.asarray(value, np.float64) / scale
  rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
  return np.clip(rounded + zero_point, -128, 127).astype(np.int8)


def state_inputs(path: str) -> Dict[str, dict]:
  """The state inputs of a streaming file's signature: name -> its interpreter
  detail (``dtype``, ``quantization``, ...)."""
  from ai_edge_litert.interpreter import Interpreter
  runner = Interpreter(model_path=path).get_signature_runner(inference.SIGNATURE)
  return {name: detail for name, detail in runner.get_input_details().items()
          if name.startswith(STATE_PREFIX)}
