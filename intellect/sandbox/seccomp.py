"""A seccomp filter for the sandbox, assembled here as classic BPF (no libseccomp needed): bubblewrap loads it
from a file descriptor (``--seccomp FD``) just before it runs the program.

It is a deny list, built for x86-64 only: a system call through another ABI (32-bit x86, x32) kills the
process, and the calls below fail with EPERM. They are kernel attack surface that a program scored on its
output never needs: tracing and poking other processes, new namespaces, mounts, kernel keyrings, BPF, perf,
userfaultfd, io_uring, module loading, clocks, reboot. (New user namespaces are refused by bubblewrap's
``--disable-userns``; every other namespace needs a capability the sandbox does not have.)
On other machines ``program()`` returns None and the runner reports ``seccomp=False``.
"""

from __future__ import annotations

import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

# BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06

_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000
_EPERM = 1

# offsets in struct seccomp_data
_NR, _ARCH = 0, 4

DENIED_X86_64: dict[str, int] = {
    "ptrace": 101,
    "syslog": 103,
    "uselib": 134,
    "pivot_root": 155,
    "_sysctl": 156,
    "adjtimex": 159,
    "chroot": 161,
    "acct": 163,
    "settimeofday": 164,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "sethostname": 170,
    "setdomainname": 171,
    "iopl": 172,
    "ioperm": 173,
    "init_module": 175,
    "delete_module": 176,
    "quotactl": 179,
    "lookup_dcookie": 212,
    "clock_settime": 227,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "move_pages": 279,
    "perf_event_open": 298,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "clock_adjtime": 305,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "pidfd_getfd": 438,
    "mount_setattr": 442,
}


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def assemble(denied: dict[str, int]) -> bytes:
    """The filter as the bytes of a ``struct sock_filter`` array: kill on a foreign architecture or the x32
    ABI, EPERM for each of ``denied``, allow the rest."""
    nrs = sorted(set(denied.values()))
    out = [
        _insn(_LD_W_ABS, 0, 0, _ARCH),
        _insn(_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _insn(_RET_K, 0, 0, _RET_KILL_PROCESS),
        _insn(_LD_W_ABS, 0, 0, _NR),
        _insn(_JGE_K, 0, 1, X32_SYSCALL_BIT),
        _insn(_RET_K, 0, 0, _RET_KILL_PROCESS),
    ]
    # each test jumps, when equal, over the remaining tests and the allow to the final EPERM
    for i, nr in enumerate(nrs):
        out.append(_insn(_JEQ_K, len(nrs) - i, 0, nr))
    out.append(_insn(_RET_K, 0, 0, _RET_ALLOW))
    out.append(_insn(_RET_K, 0, 0, _RET_ERRNO | _EPERM))
    return b"".join(out)


def program() -> bytes | None:
    """This machine's filter, or None where none is built (not x86-64)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    return assemble(DENIED_X86_64)
