"""TFLite Metadata of the exported kws files, and their MediaPipe variant.

MediaPipe Tasks' ``AudioClassifier`` (Python, Android and iOS share its C++
engine) runs a ``.tflite`` file only when it carries TFLite Model Metadata,
and reads there:

  input    AudioProperties (sample rate, channels) of the one input tensor; it
           feeds that tensor float32 audio ``[1, samples]`` at that rate,
           ``samples`` being the input's last dimension (a kws clip);
  outputs  one classification head per output tensor (float32 scores), named
           by its tensor metadata, its class names in the TENSOR_AXIS_LABELS
           file associated with it.

Layout (the TFLite metadata spec, as TFLite Support's and MediaPipe's
``MetadataPopulator`` write it): a ModelMetadata flatbuffer (file identifier
"M001", built with the object API of MediaPipe's
``metadata_schema_py_generated``) is a buffer of the model flatbuffer
(TensorFlow's ``schema_py_generated``) named by the model's metadata entry
"TFLITE_METADATA"; the associated files (``labels.txt``) are a ZIP archive,
stored uncompressed, appended after the model flatbuffer. TFLite interpreters
ignore both.

``with_metadata`` gives a kws file (outputs ``logits`` and ``probabilities``)
its metadata. ``write_mediapipe_variant`` writes, next to it,
``model_<format>_mediapipe.tflite``: the same graph whose only output is
``probabilities`` float32 ``[1, classes]``, the one head an AudioClassifier
app wants, with its metadata and model card.
"""
import dataclasses
import io
import os
import zipfile
from typing import Optional, Tuple

import flatbuffers
import numpy as np

import kws_tf
from kws_tf import model_dir as model_dir_lib
from kws_tf import records, text
from kws_tf.export import card as card_lib
from kws_tf.export.errors import ExportError

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
# The oldest metadata parser that reads every field written here: AudioProperties
# came with schema 1.3.0, the other fields with 1.0.0 (the rule of the metadata
# populator's GetMinimumMetadataParserVersion).
MIN_PARSER_VERSION = "1.3.0"
LABELS_FILE = "labels.txt"
WAVEFORM = "waveform"
SCORES = "probabilities"
MEDIAPIPE_SUFFIX = "_mediapipe"
INPUT_DESCRIPTION = ("Mono audio in [-1, 1] at the sample rate of the audio properties; "
                     "the input's last dimension is the clip length in samples.")
OUTPUT_DESCRIPTIONS = {
    "logits": f"Logit of each class, in the order of {LABELS_FILE}.",
    "probabilities": f"Probability of each class (softmax of the logits), in the order "
                     f"of {LABELS_FILE}.",
}


@dataclasses.dataclass(frozen=True)
class ClassifierMetadata:
  """What the metadata of an audio classifier says.

  Fields:
    name, version, description: of the model.
    labels: class names by score index (the TENSOR_AXIS_LABELS file, one a line).
    sample_rate: Hz of the input audio; channels: of the input audio.
    outputs: names of the output tensors in the model's output order, each
      a key of ``OUTPUT_DESCRIPTIONS``.
  """
  name: str
  version: str
  description: str
  labels: Tuple[str, ...]
  sample_rate: int
  outputs: Tuple[str, ...]
  channels: int = 1


def _metadata_schema():
  """MediaPipe's metadata flatbuffer schema module; ExportError when not installed."""
  try:
    from mediapipe.tasks.metadata import metadata_schema_py_generated
  except ImportError as e:
    raise ExportError(f"TFLite Metadata is written with mediapipe's metadata schema, which "
                      f"does not import ({e}); install it with `pip install --no-deps "
                      f"mediapipe==1.2.3 opencv-python-headless` (scripts/setup.sh does)") from e
  return metadata_schema_py_generated


def model_schema():
  """TensorFlow's TFLite model flatbuffer schema and its object-API helpers."""
  from tensorflow.lite.python import schema_py_generated
  from tensorflow.lite.tools import flatbuffer_utils
  return schema_py_generated, flatbuffer_utils


def metadata_buffer(info: ClassifierMetadata) -> bytes:
  """The ModelMetadata flatbuffer of ``info``: one subgraph, the input tensor with
  its AudioProperties, each output tensor with the labels file."""
  schema = _metadata_schema()
  labels = schema.AssociatedFileT(
      name=LABELS_FILE, description="Class names, one a line, in the order of the scores.",
      type=schema.AssociatedFileType.TENSOR_AXIS_LABELS)
  audio = schema.ContentT(
      contentPropertiesType=schema.ContentProperties.AudioProperties,
      contentProperties=schema.AudioPropertiesT(sampleRate=info.sample_rate,
                                                channels=info.channels))
  subgraph = schema.SubGraphMetadataT(
      inputTensorMetadata=[schema.TensorMetadataT(name=WAVEFORM, description=INPUT_DESCRIPTION,
                                                  content=audio)],
      outputTensorMetadata=[schema.TensorMetadataT(name=name,
                                                   description=OUTPUT_DESCRIPTIONS[name],
                                                   associatedFiles=[labels])
                            for name in info.outputs])
  model = schema.ModelMetadataT(name=info.name, description=info.description,
                                version=info.version, subgraphMetadata=[subgraph],
                                minParserVersion=MIN_PARSER_VERSION)
  builder = flatbuffers.Builder(0)
  builder.Finish(model.Pack(builder), METADATA_IDENTIFIER)
  return bytes(builder.Output())


def attach(model: bytes, info: ClassifierMetadata) -> bytes:
  """``model`` with the metadata of ``info`` and its labels file.

  The metadata becomes the buffer of the model's "TFLITE_METADATA" entry
  (replacing one already there); the labels file is the ZIP archive after the
  flatbuffer (an archive already there is dropped).
  """
  schema, flatbuffer_utils = model_schema()
  tflite_model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
  buffer = schema.BufferT()
  buffer.data = np.frombuffer(metadata_buffer(info), np.uint8)
  entry = next((e for e in tflite_model.metadata or [] if e.name.decode() == METADATA_NAME),
               None)
  if entry is None:
    tflite_model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(tflite_model.buffers) - 1
    tflite_model.metadata = (tflite_model.metadata or []) + [entry]
  else:
    tflite_model.buffers[entry.buffer] = buffer
  out = io.BytesIO()
  out.write(flatbuffer_utils.convert_object_to_bytearray(tflite_model))
  # Appending to a file that is no ZIP archive starts one after its end.
  with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
    archive.writestr(LABELS_FILE, "".join(f"{label}\n" for label in info.labels))
  return out.getvalue()


def read_metadata(model: bytes):
  """The ModelMetadata (object API, ``ModelMetadataT``) of a model and its associated
  files by name; ValueError when the model has no TFLite Metadata."""
  schema, _ = model_schema()
  tflite_model = schema.Model.GetRootAs(model, 0)
  for i in range(tflite_model.MetadataLength()):
    entry = tflite_model.Metadata(i)
    if entry.Name().decode() == METADATA_NAME:
      data = tflite_model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
      break
  else:
    raise ValueError(f"the model has no {METADATA_NAME} metadata entry")
  metadata_schema = _metadata_schema()
  if not metadata_schema.ModelMetadata.ModelMetadataBufferHasIdentifier(data, 0):
    raise ValueError(f"the {METADATA_NAME} buffer is no ModelMetadata flatbuffer "
                     f"(identifier {data[4:8]!r}, expected {METADATA_IDENTIFIER!r})")
  metadata = metadata_schema.ModelMetadataT.InitFromObj(
      metadata_schema.ModelMetadata.GetRootAs(data, 0))
  with zipfile.ZipFile(io.BytesIO(model)) as archive:
    files = {name: archive.read(name) for name in archive.namelist()}
  return metadata, files


def read_classifier_metadata(model: bytes) -> ClassifierMetadata:
  """The ``ClassifierMetadata`` of a model written by ``attach``."""
  metadata, files = read_metadata(model)
  subgraph = metadata.subgraphMetadata[0]
  audio = subgraph.inputTensorMetadata[0].content.contentProperties
  outputs = subgraph.outputTensorMetadata
  labels_file = outputs[0].associatedFiles[0].name.decode()
  return ClassifierMetadata(
      name=metadata.name.decode(), version=metadata.version.decode(),
      description=metadata.description.decode(),
      labels=tuple(files[labels_file].decode("utf-8").splitlines()),
      sample_rate=audio.sampleRate, channels=audio.channels,
      outputs=tuple(t.name.decode() for t in outputs))


def output_names(model: bytes) -> Tuple[str, ...]:
  """The names of a model's outputs, in its output order (from its signature)."""
  schema, _ = model_schema()
  tflite_model = schema.Model.GetRootAs(model, 0)
  signature = tflite_model.SignatureDefs(0)
  by_tensor = {signature.Outputs(i).TensorIndex(): signature.Outputs(i).Name().decode()
               for i in range(signature.OutputsLength())}
  graph = tflite_model.Subgraphs(signature.SubgraphIndex())
  return tuple(by_tensor[int(t)] for t in graph.OutputsAsNumpy())


def with_metadata(model: bytes, spec: model_dir_lib.ModelSpec, kind: str,
                  clip_samples: int) -> bytes:
  """A kws TFLite file of format ``kind`` with its TFLite Metadata (module docstring)."""
  info = ClassifierMetadata(
      name=f"{spec.name} keyword spotter ({kind})",
      version=f"kws_tf {kws_tf.__version__}, training data {spec.data_fingerprint}",
      description=(f"Keyword spotting: one clip of {clip_samples} samples "
                   f"({clip_samples / spec.sample_rate:g} s) of {spec.sample_rate} Hz mono "
                   f"audio in [-1, 1], the feature front end inside, to a score for each of "
                   f"{len(spec.classes)} classes ({LABELS_FILE}; \"{text.NEGATIVE_LABEL}\": "
                   f"none of the keywords)."),
      labels=tuple(spec.classes), sample_rate=spec.sample_rate, outputs=output_names(model))
  return attach(model, info)


def scores_only(model: bytes, output: str = SCORES) -> bytes:
  """The model with ``output`` as its only output (subgraph and signature); the other
  outputs' tensors stay in the graph as intermediate tensors. Metadata and
  associated files are not kept consistent: ``attach`` them again."""
  _, flatbuffer_utils = model_schema()
  tflite_model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
  signature = tflite_model.signatureDefs[0]
  kept = [t for t in signature.outputs if t.name.decode() == output]
  if not kept:
    raise ValueError(f"the model has no output {output!r} (outputs: "
                     f"{', '.join(t.name.decode() for t in signature.outputs)})")
  signature.outputs = kept
  tflite_model.subgraphs[signature.subgraphIndex].outputs = [kept[0].tensorIndex]
  return bytes(flatbuffer_utils.convert_object_to_bytearray(tflite_model))


def mediapipe_path(path: str) -> str:
  """``<dir>/model_<format>.tflite`` -> ``<dir>/model_<format>_mediapipe.tflite``."""
  stem, extension = os.path.splitext(path)
  return stem + MEDIAPIPE_SUFFIX + extension


def write_mediapipe_variant(path: str, card: dict, log=print) -> Optional[str]:
  """Writes the MediaPipe variant of the kws file ``path`` and its card; returns its path.

  The variant is ``path``'s graph with ``probabilities`` as its only output and
  metadata saying so; its card is ``card`` (the file's) with the name, file,
  outputs and size of the variant and ``variant_of`` naming ``path``: parity
  and latency are those measured on ``path``, the same computation. A file
  with int8 input or scores (``--int8_io=int8``) gets no variant (logged):
  MediaPipe feeds float32 audio and reads float32 scores.
  """
  dtypes = {"input": card["input"]["dtype"], SCORES: card["outputs"][SCORES]["dtype"]}
  if set(dtypes.values()) != {"float32"}:
    log(f"{path}: no MediaPipe variant: MediaPipe's AudioClassifier needs a float32 input "
        f"and float32 scores, this file has {dtypes}")
    return None
  with open(path, "rb") as f:
    content = f.read()
  info = dataclasses.replace(read_classifier_metadata(content), outputs=(SCORES,))
  variant = mediapipe_path(path)
  records.write_bytes(variant, attach(scores_only(content), info))
  name = os.path.splitext(os.path.basename(variant))[0]
  variant_card = dict(card, name=name, file=os.path.basename(variant),
                      outputs={SCORES: card["outputs"][SCORES]},
                      size_bytes=os.path.getsize(variant), variant_of=card["file"])
  stem = os.path.splitext(variant)[0]
  records.write_json(stem + ".json", variant_card)
  markdown = card_lib.card_markdown(variant_card) + (
      f"- MediaPipe AudioClassifier file: `{card['file']}` with `{SCORES}` as its only output "
      f"(parity and latency measured on that file)\n")
  records.write_bytes(stem + ".md", markdown.encode("utf-8"))
  log(f"{variant}: {variant_card['size_bytes']:,} bytes, MediaPipe AudioClassifier variant")
  return variant
