"""Export stage: each component's traceable wrapper -> ONNX with explicit state and dynamic axes."""
from vvtrt.export.onnx_export import export_all, export_component

__all__ = ["export_all", "export_component"]
