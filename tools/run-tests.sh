#!/usr/bin/env bash
# Run the whole any2kvm_os test suite, from any directory:
#
#   tools/run-tests.sh [PYTEST-ARGS...]
#
# Installs what is missing first (tools/install-deps.sh), then runs
# "python -m pytest tests/" from the repository root with
# ANY2KVM_REQUIRE_TOOLS=1, so that tests needing qemu-img or the libvhdi
# and libvmdk oracles fail rather than skip when those are absent.
# Exits with pytest's status; "no tests collected" (5) is a failure too.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/install-deps.sh
. "$root/tools/install-deps.sh"
install_deps

export ANY2KVM_REQUIRE_TOOLS=1
cd "$root"
rc=0
"$ANY2KVM_VENV/bin/python" -m pytest tests/ "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "run-tests.sh: pytest collected no tests: failing" >&2
fi
exit "$rc"
