#!/usr/bin/env bash
# Run the any2kvm_os tempest plugin against a cloud:
#
#   tools/run-tempest.sh OPENRC WORKSPACE
#
# OPENRC is an admin openrc (tools/loopback-cloud writes one); WORKSPACE
# is a directory of this script's own: it holds workspace.yaml and the
# tempest workspace "tempest" (etc/tempest.conf, logs/, .stestr/).  The
# workspace is made with "tempest init" the first time (offline, nothing
# written under ~) and reused afterwards; tempest.conf is written anew on
# every run from OPENRC and the environment below.  Then
#
#   tempest run --regex '^any2kvm_os\.tempest_plugin' --concurrency 1
#
# runs in the workspace, with dynamic credentials (a project and a member
# user of their own, made with the admin credentials), and this script
# exits with its status.
#
# Environment:
#   ANY2KVM_SAMPLE_XENSERVER_TGZ, ANY2KVM_SAMPLE_OVA, ANY2KVM_SAMPLE_VHD
#       sample images ([any2kvm-samples] xenserver_tgz, ova, vhd), each
#       with <VAR>_SHA256 and <VAR>_SIZE: SHA-256 and size in bytes of the
#       raw disk it converts to.  A test whose sample is unset is skipped.
#   ANY2KVM_SAMPLE_VOLUME_SIZE      GiB of the volumes made from samples
#                                   (default: the plugin's, 1)
#   ANY2KVM_TEMPEST_CINDER_HOOK     True when the Cinder hook is enabled
#                                   for the volume type used (False)
#   ANY2KVM_TEMPEST_OSC_IMPORT      False to skip "openstack any2kvm
#                                   import" (True)
#   ANY2KVM_TEMPEST_VOLUME_TYPE     volume type with the hook (the default
#                                   type when unset)
#   ANY2KVM_TEMPEST_VOLUME_CATALOG_TYPE
#                                   Block Storage service type in the
#                                   catalog (block-storage)
#   ANY2KVM_TEMPEST_NOVA            True when the cloud has Nova (False):
#                                   the scenario test boots a server
#   ANY2KVM_BOOT_GUEST_XENSERVER_TGZ, ANY2KVM_BOOT_GUEST_CONSOLE
#                                   a bootable guest as a XenServer tgz and
#                                   a regex of its console's ready line
#                                   ([any2kvm-samples] boot_guest_*)
#   ANY2KVM_BOOT_GUEST_FLAVOR       flavor id of its server ([compute]
#                                   flavor_ref)
#   ANY2KVM_TEMPEST_REGEX           tests to run ('^any2kvm_os\.tempest_plugin')
#   ANY2KVM_TEMPEST                 the tempest command (<repo>/.venv/bin/tempest
#                                   when it exists, else tempest on PATH)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

die() {
    printf 'run-tempest.sh: %s\n' "$*" >&2
    exit 2
}

# True or False, from a variable's value ($2) or its default ($3).
boolean() {
    case ${2:-$3} in
        [Tt]rue | 1 | [Yy]es) echo True ;;
        [Ff]alse | 0 | [Nn]o) echo False ;;
        *) die "$1 must be True or False, not '$2'" ;;
    esac
}

# oslo.config expands $name in values: keep a literal $ as $$.
ini_value() {
    printf '%s' "${1//\$/\$\$}"
}

[ $# -eq 2 ] || usage
[ -f "$1" ] || die "no such openrc: $1"
openrc=$(readlink -f -- "$1")
ws=$2

if [ -n "${ANY2KVM_TEMPEST:-}" ]; then
    tempest=$ANY2KVM_TEMPEST
elif [ -x "$root/.venv/bin/tempest" ]; then
    tempest=$root/.venv/bin/tempest
else
    tempest=$(command -v tempest) ||
        die "no tempest command (pip install tempest, or set ANY2KVM_TEMPEST)"
fi

cinder_hook=$(boolean ANY2KVM_TEMPEST_CINDER_HOOK \
    "${ANY2KVM_TEMPEST_CINDER_HOOK:-}" False)
osc_import=$(boolean ANY2KVM_TEMPEST_OSC_IMPORT \
    "${ANY2KVM_TEMPEST_OSC_IMPORT:-}" True)
nova=$(boolean ANY2KVM_TEMPEST_NOVA "${ANY2KVM_TEMPEST_NOVA:-}" False)
volume_catalog_type=${ANY2KVM_TEMPEST_VOLUME_CATALOG_TYPE:-block-storage}
regex=${ANY2KVM_TEMPEST_REGEX:-'^any2kvm_os\.tempest_plugin'}

# The cloud: read the openrc in a subshell, so that none of its OS_*
# variables reaches tempest (the OSC test builds its own environment).
mapfile -t cloud < <(
    set +u
    # shellcheck source=/dev/null
    . "$openrc" >/dev/null
    printf '%s\n' "${OS_AUTH_URL:-}" "${OS_USERNAME:-}" "${OS_PASSWORD:-}" \
        "${OS_PROJECT_NAME:-${OS_TENANT_NAME:-}}" \
        "${OS_USER_DOMAIN_NAME:-Default}" \
        "${OS_PROJECT_DOMAIN_NAME:-Default}" "${OS_REGION_NAME:-RegionOne}"
)
[ "${#cloud[@]}" -eq 7 ] || die "could not read $openrc"
auth_url=${cloud[0]%/}
for i in 0 1 2 3; do
    [ -n "${cloud[$i]}" ] ||
        die "$openrc sets none of OS_AUTH_URL, OS_USERNAME, OS_PASSWORD," \
            "OS_PROJECT_NAME"
done
case $auth_url in
    */v3) ;;
    *) auth_url=$auth_url/v3 ;;
esac

# [any2kvm-samples]: only the options whose variable is set.
samples=''
for name in xenserver_tgz ova vhd; do
    var=ANY2KVM_SAMPLE_${name^^}
    path=${!var:-}
    if [ -n "$path" ]; then
        path=$(readlink -f -- "$path")
        samples+="$name = $(ini_value "$path")"$'\n'
    fi
    for suffix in sha256 size; do
        var=ANY2KVM_SAMPLE_${name^^}_${suffix^^}
        if [ -n "${!var:-}" ]; then
            samples+="${name}_$suffix = ${!var}"$'\n'
        fi
    done
done
if [ -n "${ANY2KVM_BOOT_GUEST_XENSERVER_TGZ:-}" ]; then
    path=$(readlink -f -- "$ANY2KVM_BOOT_GUEST_XENSERVER_TGZ")
    samples+="boot_guest_xenserver_tgz = $(ini_value "$path")"$'\n'
fi
if [ -n "${ANY2KVM_BOOT_GUEST_CONSOLE:-}" ]; then
    samples+="boot_guest_console = $(ini_value "$ANY2KVM_BOOT_GUEST_CONSOLE")"$'\n'
fi
if [ -n "${ANY2KVM_BOOT_GUEST_FLAVOR:-}" ]; then
    samples+="boot_guest_flavor = $(ini_value "$ANY2KVM_BOOT_GUEST_FLAVOR")"$'\n'
fi
if [ -n "${ANY2KVM_SAMPLE_VOLUME_SIZE:-}" ]; then
    samples+="volume_size = $ANY2KVM_SAMPLE_VOLUME_SIZE"$'\n'
fi
volume_type=''
if [ -n "${ANY2KVM_TEMPEST_VOLUME_TYPE:-}" ]; then
    volume_type="volume_type = $(ini_value "$ANY2KVM_TEMPEST_VOLUME_TYPE")"
fi

mkdir -p "$ws"
ws=$(cd "$ws" && pwd)
dir=$ws/tempest
if [ ! -f "$dir/.stestr.conf" ]; then
    # An empty global config dir keeps "tempest init" from creating
    # ~/.tempest/etc.
    mkdir -p "$ws/global-etc"
    "$tempest" init --workspace-path "$ws/workspace.yaml" \
        --config-dir "$ws/global-etc" "$dir"
fi

# Admin credentials are in it: readable by its owner only.
(
    umask 077
    rm -f "$dir/etc/tempest.conf"
    cat > "$dir/etc/tempest.conf" <<EOF
# Written by tools/run-tempest.sh from $openrc
[DEFAULT]
log_dir = $dir/logs
log_file = tempest.log

[oslo_concurrency]
lock_path = $dir/tempest_lock

[auth]
use_dynamic_credentials = true
admin_username = $(ini_value "${cloud[1]}")
admin_password = $(ini_value "${cloud[2]}")
admin_project_name = $(ini_value "${cloud[3]}")
admin_domain_name = $(ini_value "${cloud[4]}")
admin_user_domain_name = $(ini_value "${cloud[4]}")
admin_project_domain_name = $(ini_value "${cloud[5]}")

[identity]
auth_version = v3
uri_v3 = $auth_url
region = ${cloud[6]}
v3_endpoint_type = public

[service_available]
glance = true
cinder = true
nova = $nova
neutron = false
swift = false
any2kvm = true

[image]
endpoint_type = publicURL

[volume]
catalog_type = $volume_catalog_type
endpoint_type = publicURL

[compute]
endpoint_type = publicURL
# Boots under TCG on a loaded machine.
build_timeout = 900
build_interval = 3
# The tests make their own images; tempest wants an image id all the same.
image_ref = 00000000-0000-0000-0000-000000000000
image_ref_alt = 00000000-0000-0000-0000-000000000000

[any2kvm-feature-enabled]
cinder_hook = $cinder_hook
osc_import = $osc_import
$volume_type

[any2kvm-samples]
$samples
EOF
)

cd "$dir"
echo "run-tempest.sh: tempest run in $dir (cinder_hook = $cinder_hook, nova = $nova," \
    "osc_import = $osc_import)" >&2
rc=0
"$tempest" run --workspace tempest --workspace-path "$ws/workspace.yaml" \
    --regex "$regex" --concurrency 1 || rc=$?
exit "$rc"
