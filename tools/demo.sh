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
