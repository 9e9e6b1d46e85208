"""The sandbox's pure parts: the value wire format, assert splitting, observation parsing, the seccomp program,
the root's mount plan, and the bubblewrap command line. (Real runs are in tests/test_sandbox*.py.)"""

from __future__ import annotations

import collections
import enum
import struct

import pytest

from intellect.sandbox import _inside, seccomp
from intellect.sandbox.api import Limits, Request, check_relative
from intellect.sandbox.bwrap import command
from intellect.sandbox.harness import _NO_LITERAL, parse_observations, same, split_assert
from intellect.sandbox.process import rlimit_flags
from intellect.sandbox.rootfs import Mount, Root, parse_ldd, plan

# ------------------------------------------------------------------------------------------------ values


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -7,
        2**200,
        -(2**70),
        1.5,
        float("inf"),
        "héllo\n",
        [1, [2, (3, "x")]],
        (),
        {"a": 1, (1, 2): [3]},
        {1, 2},
        frozenset({"x"}),
        b"\x00\xff",
        complex(1, -2),
    ],
)
def test_values_survive_the_trip_with_their_exact_types(value: object) -> None:
    back = _inside.decode(_inside.loads(_inside.dumps(_inside.encode(value))))
    assert back == value and type(back) is type(value)


def test_nan_survives_as_nan() -> None:
    back = _inside.decode(_inside.loads(_inside.dumps(_inside.encode(float("nan")))))
    assert type(back) is float and back != back


def test_builtin_subclasses_travel_as_their_base_contents_and_other_objects_not_at_all() -> None:
    class Liar(int):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = int.__hash__

    class AlwaysEqual:
        def __eq__(self, other: object) -> bool:
            return True

    class Colour(enum.IntEnum):
        RED = 3

    assert (
        _inside.decode(_inside.encode(Liar(5))) == 5 and type(_inside.decode(_inside.encode(Liar(5)))) is int
    )
    assert _inside.decode(_inside.encode(Colour.RED)) == 3
    counter = _inside.decode(_inside.encode(collections.Counter("aab")))
    assert counter == {"a": 2, "b": 1} and type(counter) is dict
    point = collections.namedtuple("point", "x y")(1, 2)
    assert _inside.decode(_inside.encode(point)) == (1, 2)
    with pytest.raises(TypeError, match="cannot compare a AlwaysEqual"):
        _inside.encode(AlwaysEqual())
    with pytest.raises(TypeError, match="nested too deeply"):
        nested: list[object] = []
        for _ in range(100):
            nested = [nested]
        _inside.encode(nested)


@pytest.mark.parametrize(
    "data",
    [
        {"list": [1], "tuple": [2]},
        {"object": []},
        {"list": "abc"},
        {"dict": [[1]]},
        {"float": "1.0"},
        {"complex": [1, 2]},
        {"bytes": 3},
        [1, 2],
    ],
)
def test_decode_refuses_what_encode_cannot_have_written(data: object) -> None:
    with pytest.raises(ValueError):
        _inside.decode(data)


def test_json_nan_literals_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN is not allowed"):
        _inside.loads("[NaN]")


def test_same_compares_plain_values_as_the_datasets_expect() -> None:
    assert same([0, 1], [0, 1]) and same((0, 1), [0, 1]) and same(3, [3]) and same(2, 2.0)
    assert not same([0, 1], [1, 0]) and not same("3", 3) and not same(None, [])


def test_a_stdio_digest_compares_tokens() -> None:
    assert _inside.digest("1  2\n3\n") == _inside.digest("1 2 3")
    assert _inside.digest("1 2 3") != _inside.digest("1 23")


# ------------------------------------------------------------------------------------------------ asserts


def test_a_literal_assert_is_compared_on_the_host() -> None:
    split = split_assert("assert f(3, [1, 2]) == {'a': (1, -2)}")
    assert split.observe == ("f(3, [1, 2])",) and split.expected == {"a": (1, -2)}
    assert split_assert("assert [1, 2] == twoSum([2, 7], 9)").expected == [1, 2]
    method = split_assert("assert Solution().twoSum([2, 7], 9) == [0, 1]")
    assert method.observe == ("Solution().twoSum([2, 7], 9)",) and method.expected == [0, 1]


def test_other_asserts_keep_a_residual_for_the_judge() -> None:
    split = split_assert("assert math.isclose(area(2), 12.56, rel_tol=1e-3) and sorted(g(x)) == [1]")
    assert split.observe == ("area(2)", "g(x)") and split.expected is _NO_LITERAL
    assert split.residual == "math.isclose(__v[0], 12.56, rel_tol=0.001) and sorted(__v[1]) == [1]"
    assert split.modules == ("math",)
    assert split_assert("assert f(1) != 2").expected is _NO_LITERAL
    assert split_assert("assert f(1) == g(2)").observe == ("f(1)", "g(2)")
    # a candidate function named like a standard module is still the candidate's when called directly
    assert split_assert("assert array(3) == [0, 0, 0]").observe == ("array(3)",)


@pytest.mark.parametrize(
    "test, why",
    [
        ("f(1) == 2", "one assert statement"),
        ("assert f(1) == 2\nassert f(2) == 3", "one assert statement"),
        ("assert all(f(x) == x for x in range(3))", "lambda or comprehension"),
        ("assert (y := f(1)) == 1", "lambda or comprehension"),
        ("assert f(1) ==", "does not parse"),
    ],
)
def test_asserts_that_cannot_be_judged_outside_are_refused(test: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        split_assert(test)


def test_observations_keep_the_first_valid_report_per_case() -> None:
    stdout = b"\n".join(
        [
            b'{"i": 0, "status": "ok", "value": [1]}',
            b'{"i": 0, "status": "ok", "value": [2]}',
            b"garbage",
            b'{"i": 5, "status": "ok", "value": [1]}',
            b'{"i": 1, "status": "pwned"}',
            b'{"i": true, "status": "ok"}',
            b'[{"i": 1}]',
            b'{"i": 1, "status": "timeout"}',
        ]
    )
    found = parse_observations(stdout, 3)
    assert found[0] == {"i": 0, "status": "ok", "value": [1]}
    assert found[1] == {"i": 1, "status": "timeout"} and found[2] is None


# ------------------------------------------------------------------------------------------------ seccomp


def _insns(prog: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack("=HBBI", prog[i : i + 8]) for i in range(0, len(prog), 8)]


def test_seccomp_denies_each_listed_call_and_allows_the_rest() -> None:
    denied = {"ptrace": 101, "bpf": 321}
    insns = _insns(seccomp.assemble(denied))
    # load arch, arch check, kill, load nr, x32 check, kill, two tests, allow, eperm
    assert len(insns) == 10
    assert insns[1][3] == seccomp.AUDIT_ARCH_X86_64 and insns[2][3] == 0x80000000
    assert insns[-2][3] == 0x7FFF0000 and insns[-1][3] == 0x00050001
    for pc in (6, 7):  # each equality test jumps to the final EPERM
        code, jt, _, nr = insns[pc]
        assert code == 0x15 and nr in denied.values() and pc + 1 + jt == len(insns) - 1


def test_seccomp_program_only_for_x86_64(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "aarch64")
    assert seccomp.program() is None
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "x86_64")
    assert seccomp.program() == seccomp.assemble(seccomp.DENIED_X86_64)


# ------------------------------------------------------------------------------------------------ root


LDD = """/usr/bin/python3:
\tlinux-vdso.so.1 (0x00007ffd8a5f2000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f0c1a6c3000)
\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f0c1a6a4000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0c1a9a1000)
/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so:
\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f0c1a6a4000)
\tnot a dynamic executable
"""


def test_parse_ldd_lists_each_library_once() -> None:
    assert parse_ldd(LDD) == [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/lib64/ld-linux-x86-64.so.2",
    ]


def test_the_mount_plan_recreates_symlinks_and_binds_real_paths_once() -> None:
    links = {
        "/lib": "usr/lib",
        "/lib64": "usr/lib64",
        "/usr/lib64/ld-linux-x86-64.so.2": "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "/usr/lib/x86_64-linux-gnu/libz.so.1": "libz.so.1.2.13",
        "/usr/bin/python3": "python3.11",
        "/loop": "/loop",
    }
    mounts = plan(
        [
            "/usr/bin/python3",
            "/usr/lib/python3.11",
            "/usr/lib/python3.11/lib-dynload",
            "/lib/x86_64-linux-gnu/libz.so.1",
            "/lib64/ld-linux-x86-64.so.2",
            "/loop/x",
        ],
        readlink=links.get,
    )
    binds = [m.dest for m in mounts if m.kind == "ro-bind"]
    assert binds == [
        "/usr/bin/python3.11",
        "/usr/lib/python3.11",
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
    ]
    assert all(m.src == m.dest for m in mounts if m.kind == "ro-bind")
    symlinks = {m.dest: m.src for m in mounts if m.kind == "symlink"}
    assert symlinks == {k: v for k, v in links.items() if k != "/loop"} | {"/loop": "/loop"}


# ------------------------------------------------------------------------------------------------ command


ROOT = Root(
    python="/usr/bin/python3",
    version="3.11",
    helpers={"prlimit": "/usr/bin/prlimit"},
    mounts=(
        Mount("ro-bind", "/usr/bin/python3.11", "/usr/bin/python3.11"),
        Mount("symlink", "usr/lib", "/lib"),
    ),
)


def test_the_command_isolates_and_limits_every_run() -> None:
    limits = Limits(cpu_s=2.5, memory_mb=256, processes=16, file_mb=4, open_files=32, tmp_mb=8)
    request = Request(["python3", "-I", "main.py"], files={"main.py": "", "d/e/f.txt": ""}, limits=limits)
    argv = command(
        ROOT,
        request,
        bwrap="/usr/bin/bwrap",
        file_fds={"main.py": 5, "d/e/f.txt": 6},
        status_fd=7,
        seccomp_fd=8,
        drop_to=("/usr/bin/setpriv", 65534),
    )
    assert argv[:5] == ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"):
        assert flag in argv
    for flag in ("--die-with-parent", "--as-pid-1", "--new-session", "--disable-userns", "--clearenv"):
        assert flag in argv
    text = " ".join(argv)
    assert "--ro-bind /usr/bin/python3.11 /usr/bin/python3.11 --symlink usr/lib /lib" in text
    assert "--size 8388608 --tmpfs /tmp" in text
    assert "--dir /tmp/d --dir /tmp/d/e --file 6 /tmp/d/e/f.txt" in text and "--file 5 /tmp/main.py" in text
    assert "--remount-ro /dev --remount-ro / --chdir /tmp --json-status-fd 7 --seccomp 8" in text
    # the only host paths are the root's binds
    binds = [argv[i + 1] for i, a in enumerate(argv) if a in ("--bind", "--ro-bind", "--dev-bind")]
    assert binds == ["/usr/bin/python3.11"]
    sep = argv.index("/usr/bin/prlimit")
    assert argv[sep - 1] == "--" and argv[-3:] == ["/usr/bin/python3", "-I", "main.py"]
    assert argv[sep + 1 : -4] == [
        "--as=268435456:268435456",
        "--cpu=3:3",
        "--nproc=16:16",
        "--fsize=4194304:4194304",
        "--nofile=32:32",
        "--core=0:0",
    ]


def test_under_a_cgroup_memory_is_left_to_it() -> None:
    assert not any(f.startswith("--as=") for f in rlimit_flags(Limits(), memory=False))


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "", ".", "a\0b"])
def test_file_names_must_stay_in_the_working_directory(name: str) -> None:
    with pytest.raises(ValueError, match="relative path"):
        check_relative(name)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="Limits.wall_s must be > 0"):
        Limits(wall_s=0)
