# Segmentation service: a slim CPU image with the `serve` extra only (no torch).
#   docker build -t groupnet-seg .
#   docker run --rm -p 8000:8000 groupnet-seg                      # models from /app/weights
#   docker run --rm -p 8000:8000 -v $PWD/my-models:/app/weights:ro groupnet-seg --workers 2
# Settings: flags after the image name, or SEG_* environment variables (docs/service.md).

ARG PYTHON_VERSION=3.12

# ---- build: compile the C++ kernels into a wheel (needs a compiler; the runtime image does not) ----
FROM python:${PYTHON_VERSION}-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY seg_service ./seg_service
# The kernels choose their ISA path (AVX-512 / AVX2 / scalar) at run time: no -march, so the image
# runs on any x86-64 host, whatever CPU built it.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[serve]"

# ---- runtime ----
FROM python:${PYTHON_VERSION}-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEG_MODEL_DIR=/app/weights
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin seg
# The wheels are bind-mounted from the build stage, not copied: a COPY layer would keep them in the
# image (about 100 MB) even after an `rm` in a later step.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "groupnet-seg[serve]" \
 && python -c "import seg_service.kernels as k; print('kernels:', k.isa())"
WORKDIR /app
COPY --chown=seg:seg weights/ /app/weights/
USER seg
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]
# SIGTERM (docker stop) lets running requests finish (--graceful-timeout, default 30 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["seg-service", "--host", "0.0.0.0"]
CMD ["--port", "8000"]
