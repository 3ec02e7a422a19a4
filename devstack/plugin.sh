#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
#
# devstack/plugin.sh - devstack plugin of any2kvm_os.
#
# devstack sources this file as "plugin.sh <mode> [<phase>]" after
# devstack/settings (the #! line only names the shell, as in devstack's
# own lib/ files).  Sourced without arguments it only defines the
# functions, which is how tests/functional/test_devstack_plugin.py
# drives them.  README.rst in this directory describes each phase.

# Save trace setting
_XTRACE_ANY2KVM=$(set +o | grep xtrace)
set -o xtrace

# The Cinder hook: a volume driver that wraps the backend's real one.
ANY2KVM_HOOK_DRIVER=any2kvm_os.cinder.driver.Any2KvmDriver


# stack install
# -------------

# install_any2kvm() - install any2kvm_os and what it needs
function install_any2kvm {
    # -bindep installs the default profile of the project's bindep.txt:
    # qemu-utils (qemu-img on rpm platforms).  The Python requirements
    # come from requirements.txt, under devstack's upper constraints,
    # with the extras of ANY2KVM_OS_EXTRAS (default zstd: zstandard, so
    # that zstd XVAs, archives and qcow2 clusters are read, not refused).
    setup_develop -bindep "$ANY2KVM_OS_DIR" \
        ${ANY2KVM_OS_EXTRAS:+"$ANY2KVM_OS_EXTRAS"}
}


# stack post-config
# -----------------

# _any2kvm_backend_selected() - whether ANY2KVM_CINDER_BACKENDS selects
# a CINDER_ENABLED_BACKENDS entry (type:name); empty selects them all
function _any2kvm_backend_selected {
    local be=$1
    local wanted
    if [[ -z "$ANY2KVM_CINDER_BACKENDS" ]]; then
        return 0
    fi
    for wanted in ${ANY2KVM_CINDER_BACKENDS//,/ }; do
        if [[ "$wanted" == "$be" || "$wanted" == "${be##*:}" ]]; then
            return 0
        fi
    done
    return 1
}

# _any2kvm_check_backend_names() - warn about ANY2KVM_CINDER_BACKENDS
# entries that name no CINDER_ENABLED_BACKENDS entry (likely typos)
function _any2kvm_check_backend_names {
    local wanted be found
    for wanted in ${ANY2KVM_CINDER_BACKENDS//,/ }; do
        found=False
        for be in ${CINDER_ENABLED_BACKENDS//,/ }; do
            if [[ "$wanted" == "$be" || "$wanted" == "${be##*:}" ]]; then
                found=True
            fi
        done
        if [[ "$found" == "False" ]]; then
            warn $LINENO "ANY2KVM_CINDER_BACKENDS: no enabled backend $wanted"
        fi
    done
}

# _any2kvm_first_wrapped_backend() - print the name of the first
# CINDER_ENABLED_BACKENDS entry the hook wraps (nothing if none)
function _any2kvm_first_wrapped_backend {
    local be
    for be in ${CINDER_ENABLED_BACKENDS//,/ }; do
        if _any2kvm_backend_selected "$be"; then
            echo "${be##*:}"
            return 0
        fi
    done
}

# configure_any2kvm_cinder() - put the hook in front of the drivers of
# the selected Cinder backends, keeping each real driver in
# any2kvm_wrapped_driver.  Running it again changes nothing.
function configure_any2kvm_cinder {
    local be be_name driver
    if [[ "$(trueorfalse True ANY2KVM_CINDER_HOOK)" != "True" ]]; then
        echo "ANY2KVM_CINDER_HOOK is False: Cinder is left alone"
        return 0
    fi
    if ! is_service_enabled c-vol; then
        echo "c-vol is not enabled here: no Cinder backend to wrap"
        return 0
    fi
    _any2kvm_check_backend_names
    for be in ${CINDER_ENABLED_BACKENDS//,/ }; do
        be_name=${be##*:}
        if ! _any2kvm_backend_selected "$be"; then
            continue
        fi
        driver=$(iniget "$CINDER_CONF" "$be_name" volume_driver)
        if [[ -z "$driver" ]]; then
            warn $LINENO "no volume_driver in [$be_name]: not wrapped"
        elif [[ "$driver" == "$ANY2KVM_HOOK_DRIVER" ]]; then
            # Wrapped by an earlier run: any2kvm_wrapped_driver already
            # holds the real driver, which must not become the hook.
            echo "Cinder backend $be_name is already wrapped"
            if [[ -z "$(iniget "$CINDER_CONF" "$be_name" \
                    any2kvm_wrapped_driver)" ]]; then
                warn $LINENO "[$be_name] lacks any2kvm_wrapped_driver"
            fi
        else
            iniset "$CINDER_CONF" "$be_name" any2kvm_wrapped_driver "$driver"
            iniset "$CINDER_CONF" "$be_name" volume_driver \
                "$ANY2KVM_HOOK_DRIVER"
        fi
    done
    if [[ -n "$ANY2KVM_SCRATCH_DIR" ]]; then
        sudo install -d -o "$STACK_USER" "$ANY2KVM_SCRATCH_DIR"
        iniset "$CINDER_CONF" any2kvm scratch_dir "$ANY2KVM_SCRATCH_DIR"
    fi
}


# stack extra
# -----------

# _any2kvm_upload_sample() - upload one sample image to Glance
# _any2kvm_upload_sample <setting name> <image name> <disk> <container>
function _any2kvm_upload_sample {
    local setting=$1
    local name=$2
    local disk_format=$3
    local container_format=$4
    local path=${!setting:-}
    if [[ -z "$path" ]]; then
        warn $LINENO "$setting is empty: sample image $name not uploaded"
        return 0
    fi
    if [[ ! -f "$path" ]]; then
        warn $LINENO "$setting=$path is no file: $name not uploaded"
        return 0
    fi
    if openstack --os-cloud=devstack-admin --os-region-name="$REGION_NAME" \
            image show "$name" >/dev/null 2>&1; then
        echo "Glance already has an image named $name: not uploaded again"
        return 0
    fi
    openstack --os-cloud=devstack-admin --os-region-name="$REGION_NAME" \
        image create "$name" --public \
        --disk-format "$disk_format" --container-format "$container_format" \
        --file "$path"
}

# upload_any2kvm_samples() - upload the sample images to Glance when
# ANY2KVM_UPLOAD_SAMPLES is True
function upload_any2kvm_samples {
    if [[ "$(trueorfalse False ANY2KVM_UPLOAD_SAMPLES)" != "True" ]]; then
        return 0
    fi
    if ! is_service_enabled glance; then
        warn $LINENO "Glance is not enabled: no sample image uploaded"
        return 0
    fi
    _any2kvm_upload_sample ANY2KVM_SAMPLE_XENSERVER_TGZ \
        "$ANY2KVM_SAMPLE_XENSERVER_TGZ_NAME" vhd ovf
    _any2kvm_upload_sample ANY2KVM_SAMPLE_OVA \
        "$ANY2KVM_SAMPLE_OVA_NAME" vmdk ova
}


# stack test-config
# -----------------

# install_any2kvm_tempest_plugin() - install any2kvm_os (and so its
# tempest plugin) into tempest's tox venv, as devstack's
# install_tempest_plugins does for TEMPEST_PLUGINS
function install_any2kvm_tempest_plugin {
    local install constraints
    install=$(trueorfalse True ANY2KVM_INSTALL_TEMPEST_PLUGIN)
    if [[ "$install" != "True" ]]; then
        return 0
    fi
    # devstack has already installed whatever TEMPEST_PLUGINS names.
    if [[ " ${TEMPEST_PLUGINS:-} " == *" $ANY2KVM_OS_DIR "* ]]; then
        return 0
    fi
    constraints=$(mktemp -t any2kvm_u_c_m.XXXXXXXXXX)
    set_tempest_venv_constraints "$constraints"
    (cd "$TEMPEST_DIR" &&
        tox -evenv-tempest -- pip install -c "$constraints" "$ANY2KVM_OS_DIR")
    rm -f "$constraints"
}

# configure_any2kvm_tempest() - tell tempest what this cloud offers
function configure_any2kvm_tempest {
    local cinder_hook volume_type wrapped sample suffix setting value
    if ! is_service_enabled tempest; then
        return 0
    fi
    cinder_hook=$(trueorfalse True ANY2KVM_CINDER_HOOK)
    volume_type=$ANY2KVM_TEMPEST_VOLUME_TYPE
    wrapped=$(_any2kvm_first_wrapped_backend)
    if ! is_service_enabled cinder || [[ -z "$wrapped" ]]; then
        cinder_hook=False
    elif [[ -n "$ANY2KVM_CINDER_BACKENDS" && -z "$volume_type" ]]; then
        # Only some backends are wrapped: the tests need the volume type
        # of one of them (devstack names each type after its backend).
        volume_type=$wrapped
    fi
    iniset "$TEMPEST_CONFIG" service_available any2kvm True
    iniset "$TEMPEST_CONFIG" any2kvm-feature-enabled cinder_hook \
        "$cinder_hook"
    iniset "$TEMPEST_CONFIG" any2kvm-feature-enabled osc_import True
    if [[ "$cinder_hook" == "True" && -n "$volume_type" ]]; then
        iniset "$TEMPEST_CONFIG" any2kvm-feature-enabled volume_type \
            "$volume_type"
    fi
    # [any2kvm-samples] <sample>, <sample>_sha256 and <sample>_size from
    # ANY2KVM_SAMPLE_<SAMPLE>[_SHA256|_SIZE], each only when set.
    for sample in xenserver_tgz ova vhd; do
        for suffix in "" _sha256 _size; do
            setting=ANY2KVM_SAMPLE_${sample^^}${suffix^^}
            value=${!setting:-}
            if [[ -n "$value" ]]; then
                iniset "$TEMPEST_CONFIG" any2kvm-samples \
                    "$sample$suffix" "$value"
            fi
        done
    done
    if [[ -n "$ANY2KVM_SAMPLE_VOLUME_SIZE" ]]; then
        iniset "$TEMPEST_CONFIG" any2kvm-samples volume_size \
            "$ANY2KVM_SAMPLE_VOLUME_SIZE"
    fi
    install_any2kvm_tempest_plugin
}


# clean
# -----

# cleanup_any2kvm() - remove the scratch directory, if one was set
function cleanup_any2kvm {
    if [[ -n "$ANY2KVM_SCRATCH_DIR" ]]; then
        sudo rm -rf "$ANY2KVM_SCRATCH_DIR"
    fi
}


# Dispatcher
# ----------

if is_service_enabled any2kvm; then
    if [[ "${1:-}" == "stack" && "${2:-}" == "install" ]]; then
        echo_summary "Installing any2kvm_os"
        install_any2kvm
    elif [[ "${1:-}" == "stack" && "${2:-}" == "post-config" ]]; then
        echo_summary "Wrapping Cinder volume drivers with the any2kvm hook"
        configure_any2kvm_cinder
    elif [[ "${1:-}" == "stack" && "${2:-}" == "extra" ]]; then
        echo_summary "Uploading any2kvm sample images"
        upload_any2kvm_samples
    elif [[ "${1:-}" == "stack" && "${2:-}" == "test-config" ]]; then
        echo_summary "Configuring tempest for any2kvm_os"
        configure_any2kvm_tempest
    fi

    if [[ "${1:-}" == "unstack" ]]; then
        # Nothing to stop: the hook runs inside c-vol, which devstack
        # stops itself, and the plugin starts no process of its own.
        :
    fi

    if [[ "${1:-}" == "clean" ]]; then
        # clean.sh has already run unstack.sh.
        cleanup_any2kvm
    fi
elif [[ "${1:-}" == "stack" && "${2:-}" == "install" ]]; then
    warn $LINENO "any2kvm_os does nothing without: enable_service any2kvm"
fi

# Restore xtrace
$_XTRACE_ANY2KVM
