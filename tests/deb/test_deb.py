"""The Debian package: built by `cargo deb` from the release binary already built, installed with
the real dpkg into a scratch root, and checked there.

How the install works, and why it is a real one: `dpkg --root=R --force-script-chrootless` unpacks
into R and runs the package's own maintainer scripts on this host with DPKG_ROOT=R, the way dpkg
installs into another root without a chroot (an empty scratch root has no shell to chroot into).
The postinst honours DPKG_ROOT (`useradd --prefix`, paths under $DPKG_ROOT), and so does
deb-systemd-helper, whose state lands in R; the host is left alone (checked). `--force-depends`:
the scratch root's dpkg database lists no libc6 or passwd; the host provides both.

`systemd-analyze verify --root=R` checks the installed unit against R: its ExecStart must exist
there, and its dependencies (network-online.target, ...) resolve through the host's unit files,
copied into R because an empty root has none. `systemd-analyze security --offline` scores its
sandboxing. Both need the `systemd` package (scripts/setup.sh installs it); without it those
tests skip and say so.

The scripts' normal path (no DPKG_ROOT) runs too: a plain `dpkg -i` on an overlay of this host's
root in a private mount namespace (host_view_install.sh), followed by the operator's steps as the
kestrel user up to a node running from the packaged config; skipped, saying why, where namespaces
or overlay mounts are not allowed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from kestrel_node import REPO_ROOT, kestrel_bin

UNIT = "kestrel-validator.service"
UNIT_PATH = Path("usr/lib/systemd/system") / UNIT
# The unit's systemd-analyze exposure score, x10 (1.5 today, "OK"): losing a sandboxing directive
# raises it past this.
EXPOSURE_MAX_X10 = 20


def run(*args, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 240)
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)


def ok(*args, **kw) -> subprocess.CompletedProcess:
    r = run(*args, **kw)
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    """The package, from the binary that KESTREL_BIN names (its target directory)."""
    binary = kestrel_bin()
    assert binary.exists(), f"{binary}: cargo build --release --bin kestrel first"
    if shutil.which("cargo-deb") is None:
        pytest.fail("cargo-deb not installed: bash scripts/setup.sh (cargo install cargo-deb)")
    out = tmp_path_factory.mktemp("deb") / "kestrel.deb"
    env = {**os.environ, "CARGO_TARGET_DIR": str(binary.parent.parent)}
    # --no-build: package what was built and tested; --no-strip: byte for byte (cargo deb strips
    # a binary built without debug info, as CI builds it); --fast: gzip-speed compression (xz
    # takes ~2 min of CI time on this 80 MB binary).
    ok("cargo", "deb", "-p", "kestrel-node", "--no-build", "--no-strip", "--fast", "-o", out,
       cwd=REPO_ROOT, env=env)
    return out


def scratch_root(base: Path) -> Path:
    """An empty root with a dpkg database and the account files useradd edits."""
    root = base / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "etc"):
        (root / d).mkdir(parents=True)
    for f in ("var/lib/dpkg/status", "var/lib/dpkg/available"):
        (root / f).touch()
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    for f, line in (("shadow", "root:*:19000:0:99999:7:::\n"), ("gshadow", "root:*::\n")):
        (root / "etc" / f).write_text(line)
        (root / "etc" / f).chmod(0o640)
    return root


def dpkg(root: Path, *args) -> subprocess.CompletedProcess:
    return ok("dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", *args)


def host_state() -> tuple:
    """What a chrootless install must not touch on the host."""
    dsh = Path("/var/lib/systemd/deb-systemd-helper-enabled")
    entries = sorted(p.name for p in dsh.rglob("*")) if dsh.exists() else []
    try:
        user = pwd.getpwnam("kestrel")
    except KeyError:
        user = None
    return (user, Path("/etc/passwd").read_bytes(), entries, Path("/usr/bin/kestrel").exists())


@pytest.fixture(scope="module")
def installed(deb, tmp_path_factory) -> Path:
    root = scratch_root(tmp_path_factory.mktemp("install"))
    before = host_state()
    dpkg(root, "-i", deb)
    assert host_state() == before, "the install touched the host"
    return root


def kestrel_user(root: Path) -> list[str]:
    lines = [l for l in (root / "etc/passwd").read_text().splitlines() if l.startswith("kestrel:")]
    assert len(lines) == 1, lines
    return lines[0].split(":")


def test_package_holds_the_binary_the_unit_and_a_conffile(deb):
    info = ok("dpkg-deb", "--info", deb).stdout
    assert "Package: kestrel" in info
    depends = next(l for l in info.splitlines() if l.strip().startswith("Depends:"))
    assert "passwd" in depends and "libc6" in depends, depends
    contents = ok("dpkg-deb", "--contents", deb).stdout
    entries = {line.split()[-1]: line.split()[0] for line in contents.splitlines()}
    assert entries["./usr/bin/kestrel"] == "-rwxr-xr-x"
    assert f"./{UNIT_PATH}" in entries
    assert "./etc/kestrel/config.toml" in entries
    assert "./usr/share/doc/kestrel/OPERATORS.md" in entries
    assert not any("loadgen" in e for e in entries), "kestrel-loadgen is not for validators"
    control = Path(deb).parent / "control"
    ok("dpkg-deb", "--control", deb, control)
    assert (control / "conffiles").read_text().split() == ["/etc/kestrel/config.toml"]


def test_install_creates_the_system_user_and_its_private_directories(installed):
    name, _, uid, gid, _, home, shell = kestrel_user(installed)
    assert 0 < int(uid) < 1000, f"a system uid: {uid}"
    assert (home, shell) == ("/var/lib/kestrel", "/usr/sbin/nologin")
    assert any(l.startswith(f"kestrel:x:{gid}:") for l in (installed / "etc/group").read_text().splitlines())
    for d in ("etc/kestrel", "var/lib/kestrel"):
        st = (installed / d).stat()
        assert (st.st_uid, st.st_gid) == (int(uid), int(gid)), d
        assert stat.S_IMODE(st.st_mode) == 0o700, f"{d}: {oct(st.st_mode)}"
    status = ok("dpkg", f"--root={installed}", "-s", "kestrel").stdout
    assert "Status: install ok installed" in status


def test_the_installed_binary_is_the_release_binary_and_runs(installed):
    binary = installed / "usr/bin/kestrel"
    assert binary.read_bytes() == kestrel_bin().read_bytes()
    assert ok(binary, "--version").stdout.startswith("kestrel ")
    # The example config parses: the node gets as far as the genesis it names, which an operator
    # has not put there yet.
    config = installed / "etc/kestrel/config.toml"
    r = run(binary, "node", "--config", config, timeout=30)
    assert r.returncode != 0
    assert "/etc/kestrel/genesis.json" in r.stderr and "TOML" not in r.stderr, r.stderr


def test_unit_runs_the_packaged_binary_as_kestrel_with_its_sandbox(installed):
    unit = (installed / UNIT_PATH).read_text()
    for line in ("User=kestrel", "ExecStart=/usr/bin/kestrel node --config /etc/kestrel/config.toml",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/var/lib/kestrel",
                 "Restart=on-failure"):
        assert line in unit.splitlines(), line
    # Not enabled: a validator needs its genesis, keystore and password file first.
    assert not list(installed.glob("etc/systemd/system/*/" + UNIT))


@pytest.fixture(scope="module")
def systemd_root(installed) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd): unit not verified")
    units = installed / "usr/lib/systemd/system"
    for src in Path("/usr/lib/systemd/system").iterdir():
        if not (units / src.name).exists():
            if src.is_dir() and not src.is_symlink():
                shutil.copytree(src, units / src.name, symlinks=True)
            else:
                shutil.copy2(src, units / src.name, follow_symlinks=False)
    return installed


def test_unit_passes_systemd_analyze_verify(systemd_root):
    r = run("systemd-analyze", "verify", f"--root={systemd_root}", UNIT)
    # Unknown or unparsable directives are only warnings: any output fails the test too.
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    # And it can fail: without the binary the unit's ExecStart is refused.
    binary = systemd_root / "usr/bin/kestrel"
    binary.rename(binary.with_suffix(".moved"))
    try:
        r = run("systemd-analyze", "verify", f"--root={systemd_root}", UNIT)
        assert r.returncode != 0 and "/usr/bin/kestrel" in r.stderr, r.stderr
    finally:
        binary.with_suffix(".moved").rename(binary)


def test_unit_sandbox_exposure_stays_low(systemd_root):
    r = run("systemd-analyze", "security", "--offline=true", f"--root={systemd_root}",
            f"--threshold={EXPOSURE_MAX_X10}", UNIT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    print(r.stdout.strip().splitlines()[-1])


def test_reinstall_keeps_the_user_and_the_administrators_changes(deb, tmp_path):
    root = scratch_root(tmp_path)
    dpkg(root, "-i", deb)
    uid = kestrel_user(root)[2]
    (root / "etc/kestrel").chmod(0o750)
    config = root / "etc/kestrel/config.toml"
    config.write_text(config.read_text().replace('listen = "0.0.0.0:30303"', 'listen = "10.0.0.1:30303"'))
    dpkg(root, "-i", deb)
    assert kestrel_user(root)[2] == uid, "one user, the same"
    assert stat.S_IMODE((root / "etc/kestrel").stat().st_mode) == 0o750
    assert "10.0.0.1:30303" in config.read_text(), "the conffile edit survives"


def test_purge_removes_the_package_but_never_a_key(deb, tmp_path):
    root = scratch_root(tmp_path)
    dpkg(root, "-i", deb)
    keystore = root / "etc/kestrel/keystore.json"
    keystore.write_text("{}")
    dpkg(root, "--purge", "kestrel")
    assert not (root / "usr/bin/kestrel").exists()
    assert not (root / UNIT_PATH).exists()
    assert not (root / "etc/kestrel/config.toml").exists(), "purge removes the conffile"
    assert keystore.exists(), "a validator key is never deleted by the package"
    # The user stays: files it owns (the datadir, the key) would otherwise be orphaned.
    kestrel_user(root)


def test_dpkg_i_on_a_copy_of_this_host_then_the_operator_procedure(deb, tmp_path):
    """A plain `dpkg -i` (the maintainer scripts' normal path: getent, useradd, chown by name) on
    an overlay of this host's root, then OPERATORS.md's steps as the kestrel user: password file,
    keygen, and the node started from the packaged config opens the keystore."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare (util-linux): cannot make a private view of the host")
    probe = run("unshare", "--mount", "--net", "true")
    if probe.returncode != 0:
        pytest.skip(f"cannot make mount and network namespaces here: {probe.stderr.strip()}")
    genesis = REPO_ROOT / "node/tests/data/geth_genesis_cancun.json"
    scratch = tmp_path / "view"
    scratch.mkdir()
    before = host_state()
    r = run("unshare", "--mount", "--net", "--propagation", "private", "sh",
            Path(__file__).parent / "host_view_install.sh", scratch, deb, genesis, timeout=120)
    assert host_state() == before, "the install touched the host"
    out = r.stdout + r.stderr
    if r.returncode != 0 and "overlay" in out:
        pytest.skip(f"no overlay mount over / here: {out.strip()[-300:]}")
    assert r.returncode == 0, out
    lines = out.splitlines()
    passwd = next(l for l in lines if l.startswith("passwd: ")).split(":")
    assert passwd[1].strip() == "kestrel" and int(passwd[3]) < 1000, passwd
    for d in ("/etc/kestrel", "/var/lib/kestrel"):
        assert f"dir: {d} kestrel:kestrel 700" in lines, out
    for f in ("/etc/kestrel/keystore.json", "/etc/kestrel/password.txt"):
        assert f"key: {f} kestrel:kestrel 600" in lines, out
    if shutil.which("systemd-analyze"):
        assert "verify: ok" in lines, out
    address = next(l.split()[-1] for l in lines if l.startswith("address: "))
    assert any("validator key loaded" in l and f"address={address}" in l for l in lines), out
    assert any("committed number=1 " in l for l in lines), out
    assert "node: exit 0" in lines, "SIGINT: a clean shutdown\n" + out
