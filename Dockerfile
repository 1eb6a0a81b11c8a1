# vvtrt on an NVIDIA GPU: the base image's CUDA PyTorch and TensorRT, plus ONNX Runtime GPU.
# Build:  docker build -t vvtrt .      Run:  docker run --gpus all -v $PWD/work:/work vvtrt vvtrt demo -w /work/demo
# Every RUN fails the build when its install fails: steps are chained with `&&`, and no failure is ignored.
FROM nvcr.io/nvidia/pytorch:25.10-py3
WORKDIR /opt/vvtrt
COPY pyproject.toml README.md ./
COPY vvtrt ./vvtrt
# The base image's CUDA torch satisfies the torch requirement. Only the GPU flavour of ONNX Runtime goes
# in: `onnxruntime` (CPU) and `onnxruntime-gpu` provide the same module and must never both be installed.
RUN pip install --no-cache-dir -e ".[gpu,tensorrt,dev]" \
 && python -c "import importlib.metadata as m; d={x.metadata['Name'].lower() for x in m.distributions()}; \
assert not {'onnxruntime','onnxruntime-gpu'} <= d, 'both onnxruntime and onnxruntime-gpu are installed'" \
 && python -c "import vvtrt.cli, onnxruntime, tensorrt; print('vvtrt ready; onnxruntime', onnxruntime.__version__, 'tensorrt', tensorrt.__version__)"
ENV HF_HUB_OFFLINE=1
ENTRYPOINT []
CMD ["vvtrt", "--help"]
