#!/usr/bin/env bash
# Run the whole any2kvm_os test suite, from any directory:
#
#   tools/run-tests.sh [PYTEST-ARGS...]
#
# Installs what is missing first (tools/install-deps.sh), then runs pytest
# from the repository root with ANY2KVM_REQUIRE_TOOLS=1, so that tests
# needing qemu-img or the libvhdi and libvmdk oracles fail rather than
# skip when those are absent.
#
# Three pytest processes run side by side (see below for what each
# runs): the integration layer (tests/integration: the loopback cloud,
# Nova boots), the guest inspection module, and the rest of the
# functional, unit and style layers.
# Each process gets PYTEST-ARGS.  One "python -m pytest tests/ ARGS"
# process runs instead when an argument names a test path (a selection
# of one's own: tests/unit, tests/x.py::test_y) or when
# ANY2KVM_TEST_SERIAL=1.
#
# Exits non-zero when a process failed; "no tests collected" (5) is a
# failure too, unless another process ran tests.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/install-deps.sh
. "$root/tools/install-deps.sh"
install_deps

export ANY2KVM_REQUIRE_TOOLS=1
cd "$root"
py=$ANY2KVM_VENV/bin/python

split=1
if [ "${ANY2KVM_TEST_SERIAL:-0}" = 1 ]; then
    split=0
fi
for arg in "$@"; do
    case $arg in
        -*) ;;
        *) if [ -e "${arg%%::*}" ]; then split=0; fi ;;
    esac
done

if [ "$split" = 0 ]; then
    rc=0
    "$py" -m pytest tests/ "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "run-tests.sh: pytest collected no tests: failing" >&2
    fi
    exit "$rc"
fi

mkdir -p run
# Every pytest process runs in the background, so that a signal reaches
# this script's traps at once (not when a foreground child ends).  A
# background command of a non-interactive shell starts with SIGINT
# ignored, and a Python started so keeps it ignored: the wrapper gives
# pytest its KeyboardInterrupt back, so that an interrupt (^C, or the
# trap below) still runs its teardown (the loopback cloud's "down").
start_pytest() {
    "$py" -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execv(sys.executable, [sys.executable, "-m", "pytest"] + sys.argv[1:])' \
        "$@" </dev/null &
}
pids=()
# On the way out before the end: interrupt what still runs (unless a ^C
# did: the terminal sends SIGINT to every process) and wait for its
# teardown.
# shellcheck disable=SC2317  # called by the EXIT trap
stop_pytests() {
    local pid
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            echo "run-tests.sh: stopping pytest (pid $pid)" >&2
            if [ "$signalled" != INT ]; then
                kill -INT "$pid" 2>/dev/null || true
            fi
            wait "$pid" 2>/dev/null || true
        fi
    done
}
signalled=
trap stop_pytests EXIT
trap 'signalled=INT; exit 130' INT
trap 'signalled=TERM; exit 143' TERM

# Three processes.  (1) The integration layer, started first (the
# cloud's start-up is its longest step), with BESIDE: one virt-v2v run
# and two TCG boots, 5-10 minutes.  (2) GUESTS: the guest inspection
# module, about fifteen libguestfs appliance runs under TCG (each 15 s
# to start and 15-40 s per guest inspected), a third of the other
# layers' time.  (3) The rest of the functional, unit and style layers.
# Each of the three is mostly one single-threaded QEMU under TCG, a wait
# on the cloud or a short-lived command: two processes kept the two
# cores busy 60% of the time (68 min of CPU in 65 min), three keep them
# busier.  The output of (1) and (2) is kept in run/test-integration.log
# and run/test-guests.log and shown after the output of (3).  The
# slowest tests of each process are listed at its end (--durations):
# where the suite's time goes, for keeping it under its bound.
beside=(tests/functional/test_guest_v2v.py)
guests=(tests/functional/test_guest_inspection.py)
ignore=()
for module in "${beside[@]}" "${guests[@]}"; do
    ignore+=("--ignore=$module")
done
logs=(run/test-integration.log run/test-guests.log)
names=("tests/integration (and ${beside[*]})" "${guests[*]}")
start_pytest tests/integration "${beside[@]}" --durations=10 "$@" \
    >"${logs[0]}" 2>&1
pids+=("$!")
start_pytest "${guests[@]}" --durations=10 "$@" >"${logs[1]}" 2>&1
pids+=("$!")
for i in 0 1; do
    echo "run-tests.sh: ${names[$i]} runs beside the others (pid" \
         "${pids[$i]}); its output follows theirs (log: $root/${logs[$i]})"
done
start_pytest tests/ --ignore=tests/integration "${ignore[@]}" \
    --durations=25 "$@"
pids+=("$!")
rcs=()
for pid in "${pids[@]}"; do
    rc=0
    wait "$pid" || rc=$?
    rcs+=("$rc")
done
pids=()
for i in 0 1; do
    echo
    echo "======================== ${names[$i]}" \
         "(run beside the above) ========================"
    cat "${logs[$i]}"
done
echo "run-tests.sh: pytest exit ${rcs[2]} (functional, unit and style)," \
     "${rcs[0]} (integration), ${rcs[1]} (guest inspection)"
ran=0
for rc in "${rcs[@]}"; do
    if [ "$rc" -ne 5 ]; then
        ran=1
    fi
done
if [ "$ran" = 0 ]; then
    echo "run-tests.sh: pytest collected no tests: failing" >&2
    exit 5
fi
for rc in "${rcs[@]}"; do
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
        exit "$rc"
    fi
done
exit 0
