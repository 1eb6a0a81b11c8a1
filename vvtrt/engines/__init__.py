"""Engines: TensorRT / TensorRT-RTX builds from the exported ONNX files, and their manifests.

Nothing here imports TensorRT at import time; `load_trt` does, when called.
"""
from vvtrt.engines.builder import BuildTarget, build_engines, build_one, resolve_target
from vvtrt.engines.manifest import (RuntimeInfo, check_engine, check_engine_file, find_engine, read_manifest,
                                    rebuild_command, write_manifest)
from vvtrt.engines.trt_api import FLAVORS, TrtModule, available_flavors, load_trt

__all__ = ["FLAVORS", "BuildTarget", "RuntimeInfo", "TrtModule", "available_flavors", "build_engines", "build_one",
           "check_engine", "check_engine_file", "find_engine", "load_trt", "read_manifest", "rebuild_command",
           "resolve_target", "write_manifest"]
