"""INT8 / FP8 quantization: which GEMMs of which components are quantized (`QuantSpec`, declared in the
component specs), calibration from the model's own runs (`calibrate`), Q/DQ graphs for ONNX Runtime and
TensorRT (`qdq`), the same quantization in PyTorch (`torch_path`) and the quality gate (`gate`)."""
