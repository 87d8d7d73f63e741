# syntax=docker/dockerfile:1.7
# The Blacktop operator image: the `blacktop` command, OpenTofu, the providers the shipped golden paths
# use (in an offline filesystem mirror) and the shipped modules. Build from the repository root:
#
#   docker build -t ghcr.io/blacktop-dev/blacktop:0.1.0 .
#
# Tools are built from their Go modules by hack/tools/install.sh, the script `make tools` runs, so the
# image has exactly the versions hack/tools/versions.env pins (and CI tests). See README "Install with Helm".

ARG GO_IMAGE=docker.io/library/golang:1.26.8-bookworm
ARG PYTHON_IMAGE=docker.io/library/python:3.11.7-slim-bookworm

# -- 1. tofu and the providers, laid out like the tool cache (~/.cache/blacktop) ---------------------
FROM ${GO_IMAGE} AS tools
# install.sh tool names: OpenTofu, hashicorp/random, the PostgreSQL provider.
ARG TOOLS="tofu providers provider-postgresql"
ENV BLACKTOP_CACHE_DIR=/opt/blacktop/cache CGO_ENABLED=0
WORKDIR /src
COPY hack/tools/ hack/tools/
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    bash hack/tools/install.sh ${TOOLS}

# -- 2. the operator in a virtualenv --------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS python
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m venv /opt/blacktop/venv \
 && /opt/blacktop/venv/bin/pip install --no-cache-dir --no-compile . \
 && /opt/blacktop/venv/bin/python -m compileall -q /opt/blacktop/venv

# -- 3. runtime: python slim, non-root, read-only friendly (writes go to /tmp and /var/lib/blacktop) --
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="blacktop" \
      org.opencontainers.image.description="Blacktop: self-service environments and infrastructure on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 65532 blacktop \
 && useradd --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin blacktop \
 && mkdir -p /var/lib/blacktop && chown 65532:65532 /var/lib/blacktop
COPY --from=python /opt/blacktop/venv /opt/blacktop/venv
COPY --from=tools /opt/blacktop/cache/bin/tofu /opt/blacktop/cache/bin/tofu
COPY --from=tools /opt/blacktop/cache/terraform-mirror /opt/blacktop/cache/terraform-mirror
COPY --from=tools /opt/blacktop/cache/tofu.tfrc /opt/blacktop/cache/tofu.tfrc
COPY terraform-modules/ /opt/blacktop/modules/
ENV PATH=/opt/blacktop/venv/bin:/opt/blacktop/cache/bin:/usr/local/bin:/usr/bin:/bin \
    BLACKTOP_CACHE_DIR=/opt/blacktop/cache \
    BLACKTOP_MODULES_ROOT=/opt/blacktop/modules \
    BLACKTOP_WORKSPACE_ROOT=/var/lib/blacktop/workspaces \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
EXPOSE 8080 8081 8090 9443
ENTRYPOINT ["blacktop"]
CMD ["run"]
