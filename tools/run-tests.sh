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
# The integration layer (tests/integration: the loopback cloud, Nova
# boots) and the other layers (tests/functional, tests/unit,
# tests/test_style.py) run as two pytest processes side by side: most of
# either is one single-threaded QEMU under TCG or a wait on the cloud, so
# two cores serve both at once.  The integration process starts first (the
# cloud's start-up is its longest step); its output is kept in
# run/test-integration.log and shown after the other layers' output.
# The longest test module of the other layers (BESIDE: one virt-v2v run
# and two TCG boots, 4-6 minutes alone) runs in the integration process,
# which ended about ten minutes before the other one: the two end closer
# together, and the suite sooner.
# Each process gets PYTEST-ARGS.  One "python -m pytest tests/ ARGS"
# process runs instead when an argument names a test path (a selection
# of one's own: tests/unit, tests/x.py::test_y) or when
# ANY2KVM_TEST_SERIAL=1.
#
# Exits non-zero when a process failed; "no tests collected" (5) is a
# failure too, unless the other process ran tests.
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
log=run/test-integration.log
# Both pytest processes run in the background, so that a signal reaches
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

# The slowest tests of each process are listed at its end (--durations):
# where the suite's time goes, for keeping it under its bound.
beside=(tests/functional/test_guest_v2v.py)
ignore=()
for module in "${beside[@]}"; do
    ignore+=("--ignore=$module")
done
start_pytest tests/integration "${beside[@]}" --durations=10 "$@" \
    >"$log" 2>&1
bg_pid=$!
pids+=("$bg_pid")
echo "run-tests.sh: the integration layer (and ${beside[*]}) runs beside" \
     "the others (pid $bg_pid); its output follows theirs" \
     "(log: $root/$log)"
start_pytest tests/ --ignore=tests/integration "${ignore[@]}" \
    --durations=25 "$@"
fg_pid=$!
pids+=("$fg_pid")
fg_rc=0
wait "$fg_pid" || fg_rc=$?
bg_rc=0
wait "$bg_pid" || bg_rc=$?
pids=()
echo
echo "======================== tests/integration" \
     "(run beside the above) ========================"
cat "$log"
echo "run-tests.sh: functional, unit and style: pytest exit $fg_rc;" \
     "integration: pytest exit $bg_rc"
if [ "$fg_rc" -eq 5 ] && [ "$bg_rc" -eq 5 ]; then
    echo "run-tests.sh: pytest collected no tests: failing" >&2
    exit 5
fi
for rc in "$fg_rc" "$bg_rc"; do
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
        exit "$rc"
    fi
done
exit 0
