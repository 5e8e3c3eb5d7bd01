"""kws_tf: distil PhoWhisper into tiny Vietnamese keyword spotters and CTC recognisers.

Importing this package sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is
imported, so ``tf.keras`` is Keras 2 (tf-keras), which tensorflow-model-optimization
and the TensorFlow classes of transformers need. It also sets
``TF_CPP_MIN_LOG_LEVEL=2`` (TensorFlow's C++ log: errors only) unless the
environment sets it; the console scripts choose it from ``--verbosity``
(``kws_tf.cli``).
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TF_CPP_MIN_LOG_LEVEL as the environment gave it (None: unset); kws_tf.cli keeps it.
USER_TF_CPP_MIN_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
