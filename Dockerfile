# vvtrt on an NVIDIA GPU: the base image's CUDA PyTorch and TensorRT, plus ONNX Runtime GPU and the server.
# Build:  docker build -t vvtrt .
# Serve:  docker run --gpus all -p 8000:8000 -v $PWD/work:/work -e VVTRT_API_KEY=... vvtrt   (the work dir /work/model)
#         It listens on 0.0.0.0, so it refuses to start without VVTRT_API_KEY unless VVTRT_INSECURE=1 is set.
# Other verbs:  docker run --gpus all -v $PWD/work:/work vvtrt vvtrt demo -w /work/demo
FROM nvcr.io/nvidia/pytorch:25.10-py3
# Every RUN is a bash script with -e -u -o pipefail: any failed install or check fails the build.
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
WORKDIR /opt/vvtrt
COPY pyproject.toml README.md ./
COPY vvtrt ./vvtrt
# The base image's CUDA torch satisfies the torch requirement. Only the GPU flavour of ONNX Runtime goes
# in: `onnxruntime` (CPU) and `onnxruntime-gpu` provide the same module and must never both be installed.
RUN pip install --no-cache-dir -e ".[gpu,tensorrt,serve,ray,dev]"; \
    python -c "import importlib.metadata as m; d={x.metadata['Name'].lower() for x in m.distributions()}; \
assert not {'onnxruntime','onnxruntime-gpu'} <= d, 'both onnxruntime and onnxruntime-gpu are installed'"; \
    python -c "import vvtrt.cli, vvtrt.server.app, onnxruntime, tensorrt, fastapi, uvicorn; \
print('vvtrt ready; onnxruntime', onnxruntime.__version__, 'tensorrt', tensorrt.__version__)"; \
    vvtrt serve --help > /dev/null
ENV HF_HUB_OFFLINE=1 VVTRT_WORKDIR=/work/model VVTRT_PORT=8000
EXPOSE 8000
# Ready = the engine is loaded, its graphs captured and the voices encoded (GET /ready answers 200).
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD python -c "import os, sys, urllib.request; \
sys.exit(0 if urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['VVTRT_PORT']}/ready\", timeout=4).status == 200 else 1)"
ENTRYPOINT []
# SIGTERM (docker stop) drains: no new requests, running streams finish within --grace, exit 0.
STOPSIGNAL SIGTERM
CMD ["bash", "-c", "exec vvtrt serve -w \"$VVTRT_WORKDIR\" --host 0.0.0.0 --port \"$VVTRT_PORT\" --device cuda --grace 10"]
