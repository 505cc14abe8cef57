# syntax=docker/dockerfile:1
# One image for the worker, Flower and the producer: all three then run the same code and
# read the same VISIONQ_* settings, so a queue name or a task signature cannot drift apart.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# CPU wheels by default: PyPI's Linux torch is a CUDA build several GB larger, wasted on a
# CPU host. GPU builds override this (docker-compose.gpu.yml); an empty value means PyPI only.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Must match the `worker` extra in pyproject.toml (tests/unit/test_compose.py checks it).
# torch gets its own layer so that editing the source does not download it again.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_HOME=/models

RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# Installed as a regular package and the source removed, so the image runs exactly what the
# package ships (a file missing from the distribution fails here, not in production).
COPY . /tmp/src
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "/tmp/src[worker,flower,s3]" \
    && rm -rf /tmp/src

# A fixed uid lets operators chown bind mounts (./out) to it. /models is created here, owned
# by that user, because an empty named volume copies the ownership of the directory it hides;
# no VOLUME line, or every container (producer runs included) would leave an anonymous volume.
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin visionq \
    && mkdir -p /models /data /out \
    && chown visionq:visionq /models /out

USER visionq
WORKDIR /home/visionq

# Flower's port; workers publish nothing (their metrics port is scraped inside the network).
EXPOSE 5555

CMD ["celery", "-A", "workers", "worker", "-P", "prefork", "--loglevel=INFO"]
