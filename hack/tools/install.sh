#!/usr/bin/env bash
# Build or install every external tool Blacktop needs, at the versions pinned in versions.env, into
# ${BLACKTOP_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/blacktop}. Idempotent: a tool whose stamp matches
# its pin is skipped, so the second run takes a second.
# Usage: install.sh [kubernetes|tofu|providers|provider-kubernetes|provider-postgresql|helm|demo-app|packages|prometheus-operator-crds]...
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${BLACKTOP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/blacktop}"
BIN="$CACHE/bin"
STAMPS="$CACHE/stamps"
MIRROR="$CACHE/terraform-mirror"
mkdir -p "$BIN" "$STAMPS" "$MIRROR"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly"

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Go builds what the cache lacks; a warm cache needs no Go at all (a fresh shell's PATH may not have it).
go() {
  type -P go >/dev/null || die "Go is required to build the tools the cache lacks (from their Go modules); install Go >= 1.25"
  command go "$@"
}

# The stamp of a Go-built tool: its pin and the checksum of its module's go.sum.
stamp_of() { echo "$1 $(sha256sum "$HERE/$2/go.sum" | cut -c1-16)"; }
up_to_date() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }

# A Go module under hack/tools must require what versions.env pins, so the two never drift apart.
check_pin() {
  local dir=$1 module=$2 version=$3
  grep -Fq "$module $version" "$HERE/$dir/go.mod" ||
    die "hack/tools/$dir/go.mod does not require $module $version as versions.env says"
}

timed() {
  local what=$1; shift
  local start=$SECONDS
  "$@"
  note "$what done in $((SECONDS - start))s"
}

build_kubernetes() {
  local stamp; stamp="$(stamp_of "$KUBERNETES_VERSION/$ETCD_VERSION" kubernetes)"
  local binary
  if up_to_date kubernetes "$stamp"; then
    local missing=0
    for binary in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd pause; do
      [[ -x "$BIN/$binary" ]] || missing=1
    done
    ((missing)) || { note "kubernetes $KUBERNETES_VERSION + etcd $ETCD_VERSION: cached"; return; }
  fi
  check_pin kubernetes k8s.io/kubernetes "$KUBERNETES_VERSION"
  local minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  say "building kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl $KUBERNETES_VERSION and etcd $ETCD_VERSION (cold: ~12-25 min on 2 cores)"
  local out; out="$(mktemp -d)"
  (cd "$HERE/kubernetes" && go build -trimpath -o "$out/" -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
      -X k8s.io/component-base/version.gitTreeState=clean" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy \
      k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3)
  mv "$out/kube-apiserver" "$out/kube-controller-manager" "$out/kube-scheduler" "$out/kubelet" "$out/kube-proxy" \
     "$out/kubectl" "$BIN/"
  mv "$out/v3" "$BIN/etcd" 2>/dev/null || mv "$out/server" "$BIN/etcd"
  # The node's sandbox (pause) image: Kubernetes' own pause.c from the same module, static.
  local moddir; moddir="$(cd "$HERE/kubernetes" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
  gcc -Os -Wall -static -DVERSION="v3.10.1-blacktop" -o "$out/pause" "$moddir/build/pause/linux/pause.c"
  mv "$out/pause" "$BIN/pause"
  rm -rf "$out"
  echo "$stamp" > "$STAMPS/kubernetes"
}

build_tofu() {
  local stamp; stamp="$(stamp_of "$OPENTOFU_VERSION" opentofu)"
  if up_to_date tofu "$stamp" && [[ -x "$BIN/tofu" ]]; then note "tofu $OPENTOFU_VERSION: cached"; return; fi
  check_pin opentofu github.com/opentofu/opentofu "$OPENTOFU_VERSION"
  say "building tofu $OPENTOFU_VERSION (cold: ~5-10 min on 2 cores)"
  # version.dev=no: a release build, so `tofu version` says v1.10.6 and not v1.10.6-dev.
  (cd "$HERE/opentofu" && go build -trimpath -ldflags "-s -w -X github.com/opentofu/opentofu/version.dev=no" \
      -o "$BIN/tofu" github.com/opentofu/opentofu/cmd/tofu)
  echo "$stamp" > "$STAMPS/tofu"
}

# Put a provider binary into the mirror under both registry hosts: `tofu` asks for
# registry.opentofu.org, `terraform` for registry.terraform.io, and neither is reachable here.
# $1: the built binary, $2: <namespace>/<type>/<version>/linux_amd64/<binary name>.
to_mirror() {
  local built=$1 rel=$2
  for host in registry.opentofu.org registry.terraform.io; do
    mkdir -p "$(dirname "$MIRROR/$host/$rel")" && cp "$built" "$MIRROR/$host/$rel"
  done
}

build_providers() {
  local stamp; stamp="$(stamp_of "$RANDOM_PROVIDER_VERSION" providers)"
  local name="terraform-provider-random_v$RANDOM_PROVIDER_VERSION"
  if up_to_date providers "$stamp" && [[ -x "$MIRROR/registry.opentofu.org/hashicorp/random/$RANDOM_PROVIDER_VERSION/linux_amd64/$name" ]]; then
    note "providers (hashicorp/random $RANDOM_PROVIDER_VERSION): cached"
  else
    check_pin providers github.com/hashicorp/terraform-provider-random "$RANDOM_PROVIDER_MODULE"
    say "building provider hashicorp/random $RANDOM_PROVIDER_VERSION (cold: ~1-3 min)"
    local out; out="$(mktemp -d)"
    (cd "$HERE/providers" && go build -trimpath -ldflags "-s -w" -o "$out/$name" github.com/terraform-providers/terraform-provider-random)
    to_mirror "$out/$name" "hashicorp/random/$RANDOM_PROVIDER_VERSION/linux_amd64/$name"
    rm -rf "$out"
    echo "$stamp" > "$STAMPS/providers"
  fi
  write_cli_config
}

# The CLI configuration every run uses (TF_CLI_CONFIG_FILE): providers come from the mirror only.
write_cli_config() {
  cat > "$CACHE/tofu.tfrc" <<TFRC
# Written by hack/tools/install.sh: install providers only from the offline filesystem mirror.
provider_installation {
  filesystem_mirror {
    path    = "$MIRROR"
    include = ["registry.opentofu.org/*/*", "registry.terraform.io/*/*"]
  }
}
TFRC
}

# hashicorp/kubernetes (the service golden path): its own Go module, so its Kubernetes client
# libraries never meet the random provider's dependencies. Its releases are tagged v2.x/v3.x on a v1
# module path, so the module proxy has them only as pseudo-versions (see the module's go.mod).
build_provider_kubernetes() {
  local stamp; stamp="$(stamp_of "$KUBERNETES_PROVIDER_VERSION" provider-kubernetes)"
  local name="terraform-provider-kubernetes_v$KUBERNETES_PROVIDER_VERSION"
  local rel="hashicorp/kubernetes/$KUBERNETES_PROVIDER_VERSION/linux_amd64/$name"
  if up_to_date provider-kubernetes "$stamp" && [[ -x "$MIRROR/registry.opentofu.org/$rel" && -x "$MIRROR/registry.terraform.io/$rel" ]]; then
    note "provider hashicorp/kubernetes $KUBERNETES_PROVIDER_VERSION: cached"
  else
    check_pin provider-kubernetes github.com/hashicorp/terraform-provider-kubernetes "$KUBERNETES_PROVIDER_MODULE"
    say "building provider hashicorp/kubernetes $KUBERNETES_PROVIDER_VERSION (cold: ~3-6 min on 2 cores)"
    local out; out="$(mktemp -d)"
    (cd "$HERE/provider-kubernetes" && go build -trimpath -ldflags "-s -w" -o "$out/$name" github.com/hashicorp/terraform-provider-kubernetes)
    to_mirror "$out/$name" "$rel"
    rm -rf "$out"
    echo "$stamp" > "$STAMPS/provider-kubernetes"
  fi
  write_cli_config
}

# Blacktop's own PostgreSQL provider (blacktop/postgresql): its source is the Go module in
# hack/tools/provider-postgresql, so the stamp covers the sources as well as go.sum.
build_provider_postgresql() {
  local dir="$HERE/provider-postgresql"
  local stamp; stamp="$POSTGRESQL_PROVIDER_VERSION $(cat "$dir"/go.sum "$dir"/*.go | sha256sum | cut -c1-16)"
  local name="terraform-provider-postgresql_v$POSTGRESQL_PROVIDER_VERSION"
  local rel="blacktop/postgresql/$POSTGRESQL_PROVIDER_VERSION/linux_amd64/$name"
  if up_to_date provider-postgresql "$stamp" && [[ -x "$MIRROR/registry.opentofu.org/$rel" && -x "$MIRROR/registry.terraform.io/$rel" ]]; then
    note "provider blacktop/postgresql $POSTGRESQL_PROVIDER_VERSION: cached"
  else
    say "building provider blacktop/postgresql $POSTGRESQL_PROVIDER_VERSION (cold: ~1-2 min)"
    local out; out="$(mktemp -d)"
    (cd "$dir" && go build -trimpath -ldflags "-s -w -X main.version=$POSTGRESQL_PROVIDER_VERSION" -o "$out/$name" .)
    to_mirror "$out/$name" "$rel"
    rm -rf "$out"
    echo "$stamp" > "$STAMPS/provider-postgresql"
  fi
  write_cli_config
}

# The node's test and example workload (hack/tools/demo-app: an HTTP service and client, standard library
# only, static), so an image for it needs nothing but the binary.
build_demo_app() {
  local dir="$HERE/demo-app"
  local stamp; stamp="$(cat "$dir"/go.mod "$dir"/*.go | sha256sum | cut -c1-16)"
  if up_to_date demo-app "$stamp" && [[ -x "$BIN/demo-app" ]]; then note "demo-app: cached"; return; fi
  say "building demo-app (seconds)"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/demo-app" .)
  echo "$stamp" > "$STAMPS/demo-app"
}

build_helm() {
  local stamp; stamp="$(stamp_of "$HELM_VERSION" helm)"
  if up_to_date helm "$stamp" && [[ -x "$BIN/helm" ]]; then note "helm $HELM_VERSION: cached"; return; fi
  check_pin helm helm.sh/helm/v3 "$HELM_VERSION"
  say "building helm $HELM_VERSION (cold: ~2-4 min on 2 cores)"
  (cd "$HERE/helm" && go build -trimpath -o "$BIN/helm" \
      -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
      helm.sh/helm/v3/cmd/helm)
  echo "$stamp" > "$STAMPS/helm"
}

# The real prometheus-operator CRDs (monitoring.coreos.com), for the monitoring tests: the Go module
# carries them as YAML, so they come from the Go module proxy like everything else, checked against
# the pinned go.sum hash.
install_prometheus_operator_crds() {
  local dest="$CACHE/crds/monitoring.coreos.com" module=github.com/prometheus-operator/prometheus-operator
  local stamp="$PROMETHEUS_OPERATOR_VERSION $PROMETHEUS_OPERATOR_SUM"
  if up_to_date prometheus-operator-crds "$stamp" && [[ -f "$dest/monitoring.coreos.com_prometheusrules.yaml" ]]; then
    note "prometheus-operator CRDs $PROMETHEUS_OPERATOR_VERSION: cached"; return
  fi
  say "fetching the prometheus-operator $PROMETHEUS_OPERATOR_VERSION CRDs (Go module)"
  local info dir sum
  info="$(cd "$(mktemp -d)" && GOFLAGS= go mod download -json "$module@$PROMETHEUS_OPERATOR_VERSION")"
  dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$info")"
  sum="$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$/\1/p' <<<"$info")"
  [[ "$sum" == "$PROMETHEUS_OPERATOR_SUM" ]] || die "$module@$PROMETHEUS_OPERATOR_VERSION has sum $sum, versions.env pins $PROMETHEUS_OPERATOR_SUM"
  [[ -d "$dir/example/prometheus-operator-crd" ]] || die "$module@$PROMETHEUS_OPERATOR_VERSION has no example/prometheus-operator-crd"
  rm -rf "$dest" && mkdir -p "$dest"
  cp "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_*.yaml "$dest/"
  chmod u+w "$dest"/*.yaml  # the module cache is read-only; the copies need not be
  echo "$stamp" > "$STAMPS/prometheus-operator-crds"
}

install_packages() {
  local missing=()
  for pkg in $DEBIAN_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || die "Debian packages missing: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}"
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # No init system here: stop package scripts from starting services (policy-rc.d exit 101 = "deny").
    local policy=/usr/sbin/policy-rc.d created=0
    if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy && created=1; fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    ((created)) && rm -f $policy
  else
    note "Debian packages ($DEBIAN_PACKAGES): installed"
  fi
  # One place for every tool: link the server binaries of the packages into the cache.
  local pgbin; pgbin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  for tool in postgres initdb pg_ctl psql; do ln -sf "$pgbin/$tool" "$BIN/$tool"; done
  for tool in prometheus promtool; do ln -sf "$(command -v $tool || echo /usr/bin/$tool)" "$BIN/$tool"; done
  # The portal's browser tests drive Debian's Chromium (Playwright never downloads a browser here).
  ln -sf "$(command -v chromium || echo /usr/bin/chromium)" "$BIN/chromium"
}

main() {
  local start=$SECONDS
  local wanted=("$@")
  ((${#wanted[@]})) || wanted=(packages kubernetes tofu providers provider-kubernetes provider-postgresql helm demo-app prometheus-operator-crds)
  say "tools for blacktop in $CACHE"
  for tool in "${wanted[@]}"; do
    case $tool in
      kubernetes) timed "kubernetes" build_kubernetes ;;
      tofu) timed "tofu" build_tofu ;;
      providers) timed "providers" build_providers ;;
      provider-kubernetes) timed "provider-kubernetes" build_provider_kubernetes ;;
      provider-postgresql) timed "provider-postgresql" build_provider_postgresql ;;
      helm) timed "helm" build_helm ;;
      demo-app) timed "demo-app" build_demo_app ;;
      packages) timed "packages" install_packages ;;
      prometheus-operator-crds) timed "prometheus-operator-crds" install_prometheus_operator_crds ;;
      *) die "unknown tool $tool (kubernetes, tofu, providers, provider-kubernetes, provider-postgresql, helm, demo-app, packages, prometheus-operator-crds)" ;;
    esac
  done
  say "all tools ready in $((SECONDS - start))s; binaries in $BIN"
}

main "$@"
