#!/usr/bin/env bash
# The main job of any2kvm_os, end to end, on sample data:
#
#   a XenServer-style tgz (0.vhd leaf .. 2.vhd base) -> one raw disk for KVM
#
# The chain is the one XenServer's own vhd-util wrote, from the shared
# corpus (../shared/corpus/generated/vhdutil-chain.tar.gz); its raw
# SHA-256 is known, so the result is checked.  Without ../shared, a
# 3-level chain is made with FATtools instead and the hash is only shown.
#
# Then, unless ANY2KVM_DEMO_NO_CLOUD=1, the real job: a loopback OpenStack
# cloud (tools/loopback-cloud: Keystone, Glance, RabbitMQ, Cinder,
# Placement, Nova and libvirt on 127.0.0.1) comes up.  A running VM moves
# off a XenServer host (the tests' stand-in xe behind a real sshd on
# 127.0.0.1) with "any2kvm migration": create, two syncs while its guest
# writes, a verify of the volume against the disk read again, a cutover
# --fix that applies only the last delta, fixes the
# guest's Xen device names and console, creates the Nova server and waits
# for the guest to boot (tools/demo_migration.py; skipped with
# LOOPBACK_CLOUD_NOVA=0).  Then the chain and an OVA made from it are
# imported into Glance with "openstack any2kvm import", and the images and
# their properties are shown; then the tgz itself goes to Glance as
# vhd/ovf and "openstack volume create --image" turns it into a bootable
# volume through the any2kvm Cinder hook (checked), where stock Cinder
# fails.  The cloud is stopped at the end unless ANY2KVM_DEMO_KEEP_CLOUD=1.
#
# Usage: tools/demo.sh   (from any directory; installs what is missing)
# ANY2KVM_DEMO_CHAIN names another vhdutil-chain.tar.gz (a missing file
# selects the FATtools chain).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
corpus_chain=${ANY2KVM_DEMO_CHAIN:-$root/../shared/corpus/generated/vhdutil-chain.tar.gz}
expected_sha256=e8c993f619828e77140e820379dd47ace9a05320a7363648f272e49810386424

step_no=0
step() {
    step_no=$((step_no + 1))
    printf '\n=== Step %d: %s\n' "$step_no" "$*"
}

# Show a command, then run it.
run() {
    printf '$ %s\n' "$*"
    "$@"
}

step "install what is missing (system packages, .venv)"
# shellcheck source=tools/install-deps.sh
. "$root/tools/install-deps.sh"
install_deps
export PATH=$ANY2KVM_VENV/bin:$PATH
# Guest inspection (libguestfs) is on by default; the demo's sample chain
# holds no operating system to inspect.
export ANY2KVM_INSPECT=${ANY2KVM_INSPECT:-0}
# The warm migration boots the moved VM in Nova (libvirt, TCG); with
# LOOPBACK_CLOUD_NOVA=0 the cloud has no Nova and that part is skipped.
export LOOPBACK_CLOUD_NOVA=${LOOPBACK_CLOUD_NOVA:-1}

work=$(mktemp -d "${TMPDIR:-/tmp}/any2kvm-demo.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
cd "$work"
echo "work directory: $work (removed at exit)"

if [ -f "$corpus_chain" ]; then
    step "unpack a chain written by XenServer's vhd-util" \
        "(l0 base <- l1 <- l2 leaf)"
    run tar xzvf "$corpus_chain"
    echo "name them the way a XenServer export does: 0.vhd is the leaf"
    run mv l2.vhd 0.vhd
    run mv l1.vhd 1.vhd
    run mv l0.vhd 2.vhd
else
    step "no corpus chain ($corpus_chain):" \
        "make a 3-level VHD chain with FATtools"
    expected_sha256=
    python - <<'PYEOF'
import os

from FATtools import vhdutils

MIB = 1 << 20
layers = [
    # (file, parent, [(offset, bytes)]) - base first
    ('2.vhd', None, [(0, b'A' * MIB), (5 * MIB, b'a' * (64 << 10))]),
    ('1.vhd', '2.vhd', [(512 << 10, b'B' * (512 << 10)),
                        (3 * MIB, b'b' * 4096)]),
    ('0.vhd', '1.vhd', [(MIB - 2048, b'C' * 4096),
                        (5 * MIB, b'\0' * 4096)]),
]
for name, parent, writes in layers:
    if parent is None:
        vhdutils.mk_dynamic(name, 8 * MIB)
        kind = 'dynamic, 8 MiB'
    else:
        vhdutils.mk_diff(name, os.path.abspath(parent))
        kind = 'differencing, parent %s' % parent
    image = vhdutils.Image(os.path.abspath(name), 'r+b')
    for offset, data in writes:
        image.seek(offset)
        image.write(data)
        print('%s (%s): wrote %d bytes of %r at offset %d'
              % (name, kind, len(data), data[:1], offset))
    image.close()
PYEOF
fi
run ls -l 0.vhd 1.vhd 2.vhd

step "pack them as a XenServer-style tgz"
run tar czf chain.tgz 0.vhd 1.vhd 2.vhd
run rm 0.vhd 1.vhd 2.vhd
run tar tzvf chain.tgz

step "describe the chain the archive holds"
run any2kvm info chain.tgz

step "convert the chain to one raw disk"
run any2kvm convert chain.tgz disk.raw --progress

step "look at the result with qemu-img"
run qemu-img info disk.raw
echo "allocated on disk: $(du -h disk.raw | cut -f1)" \
    "(apparent size $(du -h --apparent-size disk.raw | cut -f1))"

step "check the content"
actual_sha256=$(sha256sum disk.raw | cut -d' ' -f1)
echo "SHA-256 of disk.raw: $actual_sha256"
if [ -z "$expected_sha256" ]; then
    echo "no reference hash for a freshly made chain: comparison skipped"
elif [ "$actual_sha256" = "$expected_sha256" ]; then
    echo "expected:            $expected_sha256"
    echo "OK: the raw disk matches the reference readers"
else
    echo "expected:            $expected_sha256"
    echo "MISMATCH: the raw disk differs from the reference readers"
    exit 1
fi

if [ "${ANY2KVM_DEMO_NO_CLOUD:-0}" = 1 ]; then
    exit 0
fi

if [ "$LOOPBACK_CLOUD_NOVA" = 1 ]; then
    step "bring up the loopback cloud (real Keystone, Glance, Cinder," \
        "Placement, Nova and libvirt on 127.0.0.1)"
else
    step "bring up the loopback cloud (real Keystone, Glance, Cinder on 127.0.0.1)"
fi
openrc=$("$root/tools/loopback-cloud" up | tail -n 1)
if [ "${ANY2KVM_DEMO_KEEP_CLOUD:-0}" != 1 ]; then
    trap '"$root/tools/loopback-cloud" down >/dev/null || true; rm -rf -- "$work"' EXIT
fi
echo "openrc: $openrc"
# shellcheck source=/dev/null
. "$openrc"

if [ "$LOOPBACK_CLOUD_NOVA" = 1 ]; then
    step "warm migration: a running VM moves off a XenServer host into Cinder" \
        "and boots in Nova (tools/demo_migration.py)"
    run python "$root/tools/demo_migration.py" "$work/migration" \
        "$(dirname "$openrc")/lib/cinder/mnt"
fi

step "import the XenServer chain into Glance"
run openstack any2kvm import chain.tgz --name demo-xenserver-chain \
    -c id -c name -c size -c sha256 -c os_hash_value

step "make an OVA: a streamOptimized VMDK of that disk, an OVF and a manifest"
run qemu-img convert -f raw -O vmdk -o subformat=streamOptimized disk.raw \
    demo-disk1.vmdk
disk_bytes=$(stat -c %s demo-disk1.vmdk)
cat > demo.ovf <<OVFEOF
<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="demo-disk1.vmdk" ovf:id="file1" ovf:size="$disk_bytes"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20"
        ovf:diskId="vmdisk1" ovf:fileRef="file1"
        ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="demo-vm">
    <Info>A virtual machine</Info>
    <Name>demo-vm</Name>
    <OperatingSystemSection ovf:id="94" vmw:osType="ubuntu64Guest">
      <Info>Guest OS</Info>
      <Description>Ubuntu Linux (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware</Info>
      <Item>
        <rasd:ElementName>2 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
        <vmw:CoresPerSocket ovf:required="false">2</vmw:CoresPerSocket>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>2048MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
OVFEOF
{
    echo "SHA256(demo.ovf)= $(sha256sum demo.ovf | cut -d' ' -f1)"
    echo "SHA256(demo-disk1.vmdk)= $(sha256sum demo-disk1.vmdk | cut -d' ' -f1)"
} > demo.mf
run tar cf demo.ova demo.ovf demo-disk1.vmdk demo.mf
run openstack any2kvm inspect demo.ova -f yaml -c vm -c format -c virtual_size

step "import the OVA into Glance"
run openstack any2kvm import demo.ova --name demo-ova-vm \
    -c id -c name -c size -c sha256 -c properties

step "the images in Glance, and what Nova will boot them with"
run openstack image list --name demo-xenserver-chain
run openstack image list --name demo-ova-vm
run openstack image show demo-ova-vm -c disk_format -c min_ram -c min_disk \
    -c properties
for name in demo-xenserver-chain demo-ova-vm; do
    openstack image save "$name" --file "$name.img"
    got=$(sha256sum "$name.img" | cut -d' ' -f1)
    echo "SHA-256 of Glance image $name: $got"
    if [ -n "$expected_sha256" ] && [ "$got" != "$expected_sha256" ]; then
        echo "MISMATCH: the image differs from the reference readers"
        exit 1
    fi
done
[ -n "$expected_sha256" ] && echo "OK: both images hold the disk the reference readers read"
run openstack image delete demo-xenserver-chain demo-ova-vm

# Prints the volume's status once it is available or error.
wait_volume() {
    local i status
    for ((i = 0; i < 150; i++)); do
        status=$(openstack volume show "$1" -f value -c status)
        case $status in
            available | error) echo "$status"; return 0 ;;
        esac
        sleep 2
    done
    echo "still $status after 300 s"
}

step "the XenServer tgz as operators keep it in Glance (vhd/ovf): Cinder makes" \
    "the volume itself, through the any2kvm hook (volume type any2kvm)"
run openstack image create --disk-format vhd --container-format ovf \
    --file chain.tgz demo-xenserver-tgz -c id -c disk_format -c container_format
run openstack volume create --image demo-xenserver-tgz --size 1 \
    --type any2kvm demo-hook-volume -c id -c type
status=$(wait_volume demo-hook-volume)
echo "demo-hook-volume: $status"
run openstack volume show demo-hook-volume -c status -c bootable \
    -c volume_image_metadata
volume_id=$(openstack volume show demo-hook-volume -f value -c id)
# On the loopback cloud the volume is a file on its NFS share.
volume_file=$(dirname "$openrc")/lib/cinder/export/volume-$volume_id
got=$(head -c 8388608 "$volume_file" | sha256sum | cut -d' ' -f1)
echo "SHA-256 of the volume's first 8 MiB: $got"
wrong=0
[ "$status" = available ] || wrong=1
[ -z "$expected_sha256" ] || [ "$got" = "$expected_sha256" ] || wrong=1
if [ "$wrong" = 1 ]; then
    echo "MISMATCH: the hook did not make the expected volume"
    exit 1
fi
[ -n "$expected_sha256" ] && echo "OK: the volume holds the disk the reference readers read"

step "the same request to stock Cinder (volume type loopback) fails"
run openstack volume create --image demo-xenserver-tgz --size 1 \
    --type loopback demo-stock-volume -c id -c type
echo "demo-stock-volume: $(wait_volume demo-stock-volume)"
run openstack volume delete demo-hook-volume demo-stock-volume
run openstack image delete demo-xenserver-tgz
if [ "${ANY2KVM_DEMO_KEEP_CLOUD:-0}" = 1 ]; then
    echo "The cloud stays up: . $openrc; stop it with tools/loopback-cloud down"
fi
