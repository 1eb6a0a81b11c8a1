# vvtrt on an NVIDIA GPU: CUDA PyTorch + ONNX Runtime GPU (+ TensorRT if you add it).
# Build:  docker build -t vvtrt .      Run:  docker run --gpus all -v $PWD/work:/work vvtrt vvtrt demo -w /work/demo
FROM nvcr.io/nvidia/pytorch:25.10-py3
WORKDIR /opt/vvtrt
COPY pyproject.toml README.md ./
COPY vvtrt ./vvtrt
# The base image's CUDA torch satisfies the torch requirement; add the GPU runtime extras.
RUN pip install --no-cache-dir -e ".[gpu,dev]" && pip install --no-cache-dir "tensorrt>=10.0" || true
ENV HF_HUB_OFFLINE=1
ENTRYPOINT []
CMD ["vvtrt", "--help"]
