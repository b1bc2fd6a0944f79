"""ONNX export (``earshot export``) and decoding on onnxruntime (needs earshot[onnx])."""
