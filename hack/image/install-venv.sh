#!/bin/sh
# The operator's virtualenv, /opt/blacktop/venv, installed offline from a folder of wheels whose hashes
# the lock files pin. Runs inside the image's root filesystem with the image's own python3:
# `blacktop image build` runs it in a chroot without network, the Dockerfile in a build stage.
#
#   install-venv.sh deps WHEELS LOCK   the venv and every runtime dependency of LOCK (requirements.lock)
#   install-venv.sh app  WHEELS SRC    the blacktop package from the source tree SRC, without dependencies
#
# WHEELS holds the wheels (and sdists) of requirements.lock and build-requirements.lock, pip among
# them: pip runs from its wheel, so the image itself has no pip. Bytecode is compiled hash-checked
# with a fixed hash seed, so the .pyc files are the same on every build and valid whatever mtimes
# the layer carries.
set -eu
umask 022
mode=$1 wheels=$2 input=$3
venv=/opt/blacktop/venv
site=$venv/lib/python3.11/site-packages
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$wheels" PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
  PIP_ROOT_USER_ACTION=ignore PYTHONDONTWRITEBYTECODE=1 PYTHONHASHSEED=0
pip() {
  set -- "$(echo "$wheels"/pip-*.whl)/pip" "$@"
  "$venv/bin/python" "$@"
}
case $mode in
  deps)
    python3 -m venv --without-pip "$venv"
    pip install --quiet --require-hashes --no-deps --no-compile -r "$input"
    "$venv/bin/python" -m compileall -q --invalidation-mode checked-hash "$site"
    ;;
  app)
    pip install --quiet --no-deps --no-compile "$input"
    "$venv/bin/python" -m compileall -q --invalidation-mode checked-hash "$site/blacktop"
    ;;
  *)
    echo "usage: install-venv.sh deps|app WHEELS LOCK|SRC" >&2
    exit 2
    ;;
esac
