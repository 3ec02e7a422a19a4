#!/usr/bin/env bash
# Install everything any2kvm_os needs to run and to be tested, on Debian 12.
#
#  * the system packages of bindep.txt (qemu-utils, python3-libvhdi,
#    python3-libvmdk, openssh-server, ...), installed with apt only when
#    missing, and without letting apt start a service (policy-rc.d): the
#    tests run their own sshd, the system one stays stopped;
#  * a virtualenv at <repo>/.venv holding the project (editable) and
#    test-requirements.txt.  It is reused while requirements.txt,
#    test-requirements.txt and setup.cfg are unchanged (a sha256 of the
#    three is kept in .venv/.any2kvm-deps.sha256) and refreshed otherwise.
#
# Run it directly, or source it and call install_deps (tools/run-tests.sh
# and tools/demo.sh do).  After it, $ANY2KVM_VENV is the virtualenv.
#
# Environment:
#   PYTHON          interpreter that creates the virtualenv (python3)
#   ANY2KVM_VENV    where the virtualenv lives (<repo>/.venv)
#   ANY2KVM_NO_APT  set to 1 to never call apt-get (missing system
#                   packages are then only reported)

ANY2KVM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ANY2KVM_VENV=${ANY2KVM_VENV:-$ANY2KVM_ROOT/.venv}
ANY2KVM_STAMP=$ANY2KVM_VENV/.any2kvm-deps.sha256

any2kvm_log() {
    printf '[install-deps] %s\n' "$*" >&2
}

# Run a command as root: directly if we are root, through sudo otherwise.
any2kvm_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        any2kvm_log "need root for: $* (and sudo is not installed)"
        return 1
    fi
}

# The Debian packages bindep.txt asks for: entries without a platform
# restriction or restricted to platform:dpkg, whatever their profile, but
# for the profile loopback-cloud, which tools/loopback-cloud installs itself
# (without letting apt start the services).
any2kvm_bindep_packages() {
    # shellcheck disable=SC2016  # $1 is awk's, not the shell's
    local program='/^[[:space:]]*(#|$)/ || /loopback-cloud/ { next }
        !/platform:/ || /platform:dpkg/ { print $1 }'
    awk "$program" "$ANY2KVM_ROOT/bindep.txt"
}

any2kvm_install_system_packages() {
    local pkg status
    local -a wanted missing=()
    mapfile -t wanted < <(any2kvm_bindep_packages)
    if ! command -v dpkg-query >/dev/null 2>&1; then
        any2kvm_log "not a Debian system: install by hand: ${wanted[*]}"
        return 0
    fi
    # Debian's python3 ships venv without ensurepip; python3-venv has it.
    if ! "${PYTHON:-python3}" -c 'import ensurepip' >/dev/null 2>&1; then
        wanted+=(python3-venv)
    fi
    for pkg in "${wanted[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        case "$status" in
            *" installed") ;;
            *) missing+=("$pkg") ;;
        esac
    done
    if [ ${#missing[@]} -eq 0 ]; then
        any2kvm_log "system packages present: ${wanted[*]}"
        return 0
    fi
    if [ "${ANY2KVM_NO_APT:-0}" = 1 ]; then
        any2kvm_log "missing system packages (ANY2KVM_NO_APT=1):" \
            "${missing[*]}"
        return 0
    fi
    any2kvm_log "installing system packages: ${missing[*]}"
    # As root: in the same bash, so that the function comes along.
    any2kvm_as_root env DEBIAN_FRONTEND=noninteractive bash -c \
        "$(declare -f any2kvm_apt_no_services); any2kvm_apt_no_services \"\$@\"" \
        any2kvm-apt "${missing[@]}"
}

# apt-get update and install "$@" (as root) with a policy-rc.d that keeps
# apt from starting any service the packages bring: openssh-server's sshd
# stays stopped (the tests run their own, on 127.0.0.1).  A policy-rc.d
# already there is put back afterwards, whatever happens, as
# tools/loopback-cloud does.
any2kvm_apt_no_services() {
    (
        set -euo pipefail
        policy=/usr/sbin/policy-rc.d
        saved=
        if [ -e "$policy" ]; then
            saved=$(mktemp "$policy.any2kvm.XXXXXX")
            cp -p "$policy" "$saved"
        fi
        trap 'if [ -n "$saved" ]; then mv -f "$saved" "$policy";
            else rm -f "$policy"; fi' EXIT
        printf '#!/bin/sh\n# tools/install-deps.sh: start nothing\nexit 101\n' \
            >"$policy"
        chmod 755 "$policy"
        apt-get update -q
        apt-get install -y -q --no-install-recommends "$@"
    )
}

any2kvm_deps_hash() {
    (cd "$ANY2KVM_ROOT" &&
        cat requirements.txt test-requirements.txt setup.cfg) |
        sha256sum | cut -d' ' -f1
}

# True when the virtualenv's interpreter exists and runs.
any2kvm_venv_works() {
    "$ANY2KVM_VENV/bin/python" -c '' >/dev/null 2>&1
}

any2kvm_install_venv() {
    local want have
    want=$(any2kvm_deps_hash)
    have=$(cat "$ANY2KVM_STAMP" 2>/dev/null || true)
    if any2kvm_venv_works && [ "$have" = "$want" ]; then
        any2kvm_log "reusing $ANY2KVM_VENV (requirements unchanged)"
        return 0
    fi
    if ! any2kvm_venv_works; then
        any2kvm_log "creating virtualenv $ANY2KVM_VENV"
        rm -rf -- "$ANY2KVM_VENV"
        "${PYTHON:-python3}" -m venv "$ANY2KVM_VENV"
    fi
    any2kvm_log "installing any2kvm_os and test-requirements.txt" \
        "into $ANY2KVM_VENV"
    rm -f -- "$ANY2KVM_STAMP"
    "$ANY2KVM_VENV/bin/python" -m pip install -q \
        --disable-pip-version-check --upgrade pip
    "$ANY2KVM_VENV/bin/python" -m pip install -q \
        --disable-pip-version-check \
        -e "$ANY2KVM_ROOT" -r "$ANY2KVM_ROOT/test-requirements.txt"
    printf '%s\n' "$want" >"$ANY2KVM_STAMP"
}

install_deps() {
    any2kvm_install_system_packages
    any2kvm_install_venv
}

# Executed rather than sourced: do the installation.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    install_deps
fi
