"""kws_tf: distil PhoWhisper into tiny Vietnamese keyword spotters and CTC recognisers.

Importing this package sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is
imported, so ``tf.keras`` is Keras 2 (tf-keras), which tensorflow-model-optimization
and the TensorFlow classes of transformers need.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
