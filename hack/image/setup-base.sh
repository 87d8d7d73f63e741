#!/bin/sh
# The operator image's base, finished inside its root filesystem as root: `blacktop image build` runs it
# in mmdebstrap's customize hook (chroot), the Dockerfile in a RUN step, so both bases end up the same.
set -eu

# The operator's user and group, 65532 (the chart's runAsUser/runAsGroup): home /tmp (writable in the
# pod), no shell, no password. Written directly rather than with useradd: the passwd package is not
# in the Essential set, and useradd would stamp today's date into /etc/shadow.
grep -q '^blacktop:' /etc/group || echo 'blacktop:x:65532:' >>/etc/group
grep -q '^blacktop:' /etc/passwd || echo 'blacktop:x:65532:65532:Blacktop operator:/tmp:/usr/sbin/nologin' >>/etc/passwd
# The shadow files exist only where the passwd package is installed (Debian's container images).
[ ! -f /etc/gshadow ] || grep -q '^blacktop:' /etc/gshadow || echo 'blacktop:!::' >>/etc/gshadow
[ ! -f /etc/shadow ] || grep -q '^blacktop:' /etc/shadow || echo 'blacktop:*:::::::' >>/etc/shadow

# Workspaces live under /var/lib/blacktop (an emptyDir in the chart), owned by the operator.
install -d -o 65532 -g 65532 -m 0755 /var/lib/blacktop

# Debian byte-compiles the standard library at install time into timestamp-checked .pyc files, which
# go stale as soon as a reproducible layer clamps the sources' mtimes (SOURCE_DATE_EPOCH): Python
# would then recompile the standard library in memory at every start. Hash-checked .pyc files stay
# valid whatever the mtimes; PYTHONHASHSEED=0 makes them byte-identical from build to build.
PYTHONHASHSEED=0 python3 -m compileall -q -f --invalidation-mode checked-hash /usr/lib/python3.11
