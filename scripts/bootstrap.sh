#!/usr/bin/env bash
# Set-up shared by scripts/demo.sh and scripts/test.sh (sourced by both).
# On a fresh Debian 12 machine, as root, it installs:
#   - the Debian packages the lab, the experiment and the tests use;
#   - a virtual environment (.venv) with the pinned requirements-dev.txt;
#   - a second one (.venv-galaxy) with the release checks of the build stage
#     (galaxy-importer, ansible-builder: requirements-dev-galaxy.txt);
#   - a third one (.venv-docs) with the docs stage's tools (antsibull-docs,
#     Sphinx, sphinx-ansible-theme: requirements-docs.txt);
#   - this checkout where Ansible finds it by FQCN:
#     .build/collections/ansible_collections/tcplab/keepalive -> the checkout.
# Each step is skipped when already done, so re-running is cheap.

TCPLAB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export TCPLAB_ROOT

tcplab_die() { echo "tcplab: $*" >&2; exit 1; }
tcplab_step() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  tcplab_die "run this as root (e.g. sudo $0): the lab creates network namespaces, and the experiment sets sysctls and iptables rules inside them"
fi

TCPLAB_APT_PACKAGES=(
  iproute2 iptables tcpdump tshark openssh-server openssh-client util-linux procps
  netcat-openbsd curl bc sudo python3 python3-venv python3-pip git ca-certificates
  chromium fonts-dejavu-core shellcheck pandoc
  mmdebstrap qemu-system-x86 qemu-utils apt-cacher-ng e2fsprogs
  redis-server nginx-light postgresql
)

tcplab_apt() {
  local missing=() pkg
  for pkg in "${TCPLAB_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  tcplab_step "installing Debian packages: ${missing[*]}"
  echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The lab runs its own apt-cacher-ng on the lab bridge for its VMs; the
  # package's system service (a proxy on every address) is not wanted.
  if command -v systemctl >/dev/null && systemctl is-enabled apt-cacher-ng >/dev/null 2>&1; then
    systemctl disable --now apt-cacher-ng >/dev/null 2>&1 || true
  fi
  # The audit's daemon tests run redis, nginx and PostgreSQL inside lab namespaces with their own
  # configuration: the system services that this install just added are not wanted (one the machine
  # had before is left as it was).
  local unit
  for unit in redis-server nginx-light:nginx postgresql; do
    [[ " ${missing[*]} " == *" ${unit%%:*} "* ]] || continue
    if command -v systemctl >/dev/null && systemctl is-enabled "${unit##*:}" >/dev/null 2>&1; then
      systemctl disable --now "${unit##*:}" >/dev/null 2>&1 || true
    fi
  done
}

# tcplab_venv [DIR REQUIREMENTS]: the virtual environment DIR (default .venv)
# with the pinned REQUIREMENTS (default requirements-dev.txt).
tcplab_venv() {
  local venv="$TCPLAB_ROOT/${1:-.venv}" reqs="${2:-requirements-dev.txt}" stamp want
  want=$(sha256sum "$TCPLAB_ROOT/$reqs" | cut -d' ' -f1)
  stamp="$venv/.tcplab-requirements"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  tcplab_step "creating the virtual environment ${1:-.venv} (pinned $reqs)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$TCPLAB_ROOT/$reqs"
  echo "$want" > "$stamp"
}

tcplab_collection() {
  local base="$TCPLAB_ROOT/.build/collections/ansible_collections/tcplab"
  mkdir -p "$base"
  if [ "$(readlink "$base/keepalive")" != "../../../.." ]; then
    ln -sfn ../../../.. "$base/keepalive"
  fi
}

tcplab_apt
tcplab_venv
tcplab_venv .venv-galaxy requirements-dev-galaxy.txt
tcplab_venv .venv-docs requirements-docs.txt
tcplab_collection

# Let Python cache bytecode: every ansible run imports hundreds of modules,
# and without the cache each run compiles them again (seconds per command).
unset PYTHONDONTWRITEBYTECODE
export PATH="$TCPLAB_ROOT/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$TCPLAB_ROOT/ansible.cfg"
export ANSIBLE_COLLECTIONS_PATH="$TCPLAB_ROOT/.build/collections"
export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-0}"
cd "$TCPLAB_ROOT" || tcplab_die "cannot enter $TCPLAB_ROOT"
