# revise for GPU sites. Build and run with the NVIDIA container toolkit:
#   docker build -t revise:0.1 .
#   docker run --rm --gpus all -v "$PWD/site:/data" revise:0.1 demo -o /data/demo
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# gcc and the Python headers: torch.compile's Triton kernels are built at run time (--compile)
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip python3-dev gcc \
 && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/revise PATH=/opt/revise/bin:$PATH PIP_NO_CACHE_DIR=1
RUN python3 -m venv $VIRTUAL_ENV

# CUDA torch first, then the project with the GPU extra (onnxruntime-gpu, never the CPU package).
RUN pip install --index-url https://download.pytorch.org/whl/cu128 "torch>=2.7"
COPY pyproject.toml README.md /src/
COPY revise /src/revise
RUN pip install "/src[gpu]"
# ONNX models as --model: onnx2torch without its torchvision requirement (it would replace torch)
RUN pip install --no-deps "onnx2torch>=1.5"

# Ubuntu 24.04 images ship a user "ubuntu" with UID 1000, which useradd would refuse to reuse
RUN if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi
RUN useradd --create-home --uid 1000 revise
USER revise
WORKDIR /home/revise
ENTRYPOINT ["revise"]
CMD ["--help"]
