"""Export of trained models: SavedModel and TFLite files with the front end inside.

``tflite.export`` runs an export: ``serving`` builds the waveform-in graph,
``convert`` turns it into a TFLite file of each format, ``qat`` fine-tunes a
student with quantization-aware training before its int8 conversion,
``examples`` loads the labelled examples and waveforms of the parity check and
of calibration, ``parity`` compares an exported file with the Keras model,
``card`` writes the model card of each file, ``metadata`` the TFLite Metadata
of kws files and their MediaPipe AudioClassifier variant; ``errors`` holds
their ``ExportError``.
"""
