"""Exports for deployment: the .keras model, SavedModel, ONNX and TFLite with preprocessing inside, and their manifest."""
