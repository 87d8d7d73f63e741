# syntax=docker/dockerfile:1.7
# The Blacktop operator image: the `blacktop` command, OpenTofu, the providers the shipped golden paths
# use (in an offline filesystem mirror) and the shipped modules, on Debian bookworm's python3. Build
# from the repository root:
#
#   docker build -t ghcr.io/blacktop-dev/blacktop:0.1.0 .
#
# `make image` builds the same contents without Docker (operator/blacktop/localcluster/images.py), from
# the same files: hack/image/packages.txt and dpkg.cfg (the Debian base), setup-base.sh (user 65532),
# requirements.lock (the pinned, hashed dependencies), install-venv.sh (the virtualenv). Tools are
# built from their Go modules by hack/tools/install.sh, the script `make tools` runs, so the image has
# exactly the versions hack/tools/versions.env pins. tests/unit/test_image_build.py fails if this file
# and the builder disagree on ENV, USER, ENTRYPOINT, CMD, ports, labels or paths. See README "The image".

ARG GO_IMAGE=docker.io/library/golang:1.26.8-bookworm
ARG DEBIAN_IMAGE=docker.io/library/debian:12.12-slim
# Only downloads the locked wheels (their hashes are checked); nothing of it reaches the image.
ARG PYTHON_IMAGE=docker.io/library/python:3.11.14-slim-bookworm

# -- 1. tofu and the providers, laid out like the tool cache (~/.cache/blacktop) ---------------------
FROM ${GO_IMAGE} AS tools
# install.sh tool names: OpenTofu and every provider of the mirror.
ARG TOOLS="tofu providers provider-kubernetes provider-postgresql"
ENV BLACKTOP_CACHE_DIR=/opt/blacktop/cache CGO_ENABLED=0
WORKDIR /src
COPY hack/tools/ hack/tools/
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    bash hack/tools/install.sh ${TOOLS}

# -- 2. the wheels of the lock files -------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheels
COPY hack/image/requirements.lock hack/image/build-requirements.lock /locks/
RUN pip download --no-cache-dir --no-deps --require-hashes -d /wheels \
      -r /locks/requirements.lock -r /locks/build-requirements.lock

# -- 3. the base: Debian bookworm, hack/image/packages.txt, the user 65532 -----------------------------
FROM ${DEBIAN_IMAGE} AS base
# The name mmdebstrap gives its --dpkgopt file, so both bases carry the same dpkg configuration.
COPY hack/image/dpkg.cfg /etc/dpkg/dpkg.cfg.d/99mmdebstrap
COPY hack/image/packages.txt hack/image/setup-base.sh /tmp/image/
# Upgraded like mmdebstrap's base, which installs bookworm as it is today (updates and security fixes).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(sed 's/#.*//' /tmp/image/packages.txt) \
 && rm -rf /var/lib/apt/lists/* \
 && sh /tmp/image/setup-base.sh \
 && rm -rf /tmp/image

# -- 4. the virtualenv, by the base's own python3, offline from the wheels ----------------------------
FROM base AS python
COPY --from=wheels /wheels /build/wheels
COPY hack/image/requirements.lock hack/image/install-venv.sh /build/
RUN sh /build/install-venv.sh deps /build/wheels /build/requirements.lock
COPY pyproject.toml README.md /src/
COPY operator/ /src/operator/
RUN sh /build/install-venv.sh app /build/wheels /src

# -- 5. runtime: non-root, read-only friendly (writes go to /tmp and /var/lib/blacktop) ----------------
FROM base
LABEL org.opencontainers.image.title="blacktop" \
      org.opencontainers.image.description="Blacktop: self-service environments and infrastructure on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
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
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
EXPOSE 8080 8081 9443
ENTRYPOINT ["blacktop"]
CMD ["run"]
