"""Export of trained models: SavedModel and TFLite files with the front end inside.

``serving`` builds the waveform-in graph, ``tflite`` converts it, checks parity
with the Keras model and writes model cards, ``qat`` fine-tunes a student with
quantization-aware training before its int8 conversion; ``errors`` holds their
``ExportError``.
"""
