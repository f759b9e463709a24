"""Crash-safe runs (issue 24): a checkpoint is whole or absent, --resume verifies before it trusts, a full or
failing disk is one line, one writer per run folder.

The faults are injected, not waited for: every call of a save that creates or changes a file (an open for
writing, safetensors' and tokenizers' own writers, mkdir, link, symlink, rename) is counted, and the k-th one
fails with ENOSPC or EIO, for every k of one save. What a kill -9 at that instant leaves is the run folder as
it is then, copied aside before the error is raised. Each case then resumes and must end with the same
model, byte for byte, as the uninterrupted run of the same seed. Runs are in-process, tiny and 2 steps."""

import builtins
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers.modeling_utils
from transformers.tokenization_utils_tokenizers import TokenizersBackend

import model as modeling
import train
import cli
from cli import UserError

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(domains=("math",), prompts_per_step=2, group_size=2, max_new_tokens=8, save_every=1, keep_checkpoints=2,
             log_samples=1, reward_workers=1)
STEPS = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as train.py gives each run in experiment.py: on 2 shared cores, 2 threads made each tiny
    run 4x slower."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"   # train.py then leaves the thread count alone
    yield
    torch.set_num_threads(threads)
    if env is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = env


def train_run(out: Path, **kw) -> Path:
    train.main(train.Config(out_dir=str(out), **{**SMALL, "steps": STEPS, **kw}))
    return out / "math"


def final_weights(run_dir: Path) -> bytes:
    return (run_dir / "model.safetensors").read_bytes()


def leftovers(run_dir: Path) -> list[str]:
    """Anything a save leaves behind when it fails: temporary files or folders, old copies."""
    return [str(p) for p in run_dir.rglob("*") if ".tmp" in p.name or p.name.startswith(".old-")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> bytes:
    """The uninterrupted run's final weights."""
    return final_weights(train_run(tmp_path_factory.mktemp("ref")))


@pytest.fixture(scope="module")
def one_step(tmp_path_factory) -> Path:
    """A run stopped after step 1 (checkpoints step_0 and step_1): the starting point of every fault below, whose
    save of step 2 (the last) is the one that fails."""
    return train_run(tmp_path_factory.mktemp("one"), steps=1)


class Faults:
    """Counts the file-changing calls of the save of step `step`; the k-th raises OSError(code) after leaving what
    a real failure would (an empty or partial file) and after copying the run folder to `snapshot`, which is then
    what a kill -9 at that write would have left."""

    def __init__(self, monkeypatch, run_dir: Path, step: int, k: int | None = None, code: int = errno.ENOSPC,
                 snapshot: Path | None = None):
        self.n, self.k, self.code, self.run_dir, self.snapshot, self.active = 0, k, code, run_dir, snapshot, False
        self.paths = []   # what each counted call writes, in order
        real_save = modeling.save_checkpoint

        def save(run_dir, s, *a, **kw):
            self.active = s == step
            try:
                return real_save(run_dir, s, *a, **kw)
            finally:
                self.active = False
        monkeypatch.setattr(modeling, "save_checkpoint", save)
        real_open, real_mkdir = builtins.open, os.mkdir

        def opened(path, mode="r", *a, **kw):
            if any(c in mode for c in "wax+"):
                self.hit(path, lambda: real_open(path, mode, *a, **kw).close())
            return real_open(path, mode, *a, **kw)
        monkeypatch.setattr(builtins, "open", opened)
        monkeypatch.setattr(os, "mkdir", lambda path, *a, **kw: (
            None if os.path.exists(path) else self.hit(path, lambda: None), real_mkdir(path, *a, **kw))[1])
        for name in ("link", "symlink", "replace"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, lambda src, dst, *a, _real=real, **kw: (
                self.hit(dst, lambda: None), _real(src, dst, *a, **kw))[1])
        real_safe = transformers.modeling_utils.safe_save_file

        def safe(tensors, filename, *a, **kw):
            self.hit(filename, lambda: Path(filename).write_bytes(b"\0" * 100))   # a partly written file
            return real_safe(tensors, filename, *a, **kw)
        monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", safe)
        backend = TokenizersBackend.backend_tokenizer
        faults = self

        class Saving:   # the Rust tokenizer, with its save counted
            def __init__(self, tok):
                self._tok = tok

            def __getattr__(self, name):
                return getattr(self._tok, name)

            def save(self, path, *a, **kw):
                faults.hit(path, lambda: Path(path).write_text("{"))
                return self._tok.save(path, *a, **kw)
        monkeypatch.setattr(TokenizersBackend, "backend_tokenizer",
                            property(lambda tok: Saving(backend.fget(tok)) if faults.active else backend.fget(tok)))

    def hit(self, path, leave) -> None:
        if not self.active:
            return
        self.n += 1
        self.paths.append(str(path))
        if self.n == self.k:
            leave()
            if self.snapshot is not None:
                self.active = False
                shutil.copytree(self.run_dir, self.snapshot, symlinks=True)
            raise OSError(self.code, os.strerror(self.code), str(path))


def copy_run(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest / "math", symlinks=True)
    return dest / "math"


def digests(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def last_save(tmp_path_factory, one_step):
    """The arguments of the last save (step 2) of the run continued from one_step: calling save_checkpoint with
    them on a copy of one_step is what train.py does at that point, without redoing step 2 each time."""
    seen = []
    with pytest.MonkeyPatch.context() as mp:
        real = modeling.save_checkpoint
        mp.setattr(modeling, "save_checkpoint", lambda *a: (seen.append(a), real(*a))[1])
        out = tmp_path_factory.mktemp("last")
        copy_run(one_step, out)
        train_run(out, resume=True)
    (args,) = [a for a in seen if a[1] == STEPS]
    return args[2:]


@pytest.fixture(scope="module")
def writes_per_save(tmp_path_factory, one_step, last_save) -> list[str]:
    """The paths the calls of one save write, in order."""
    with pytest.MonkeyPatch.context() as mp:
        run_dir = copy_run(one_step, tmp_path_factory.mktemp("count"))
        faults = Faults(mp, run_dir, STEPS)
        modeling.save_checkpoint(str(run_dir), STEPS, *last_save)
    assert faults.n >= 15, faults.paths   # mkdtemp, 7 files, the rename, 6 links, the top-level switch...
    return faults.paths


def test_a_failed_save_in_train_py_stops_the_run_with_one_line(tmp_path, monkeypatch, one_step, reference):
    """The whole path once, through train.main: the weights' file of the last save hits a full disk."""
    run_dir = copy_run(one_step, tmp_path)
    Faults(monkeypatch, run_dir, STEPS, k=4, code=errno.ENOSPC)
    with pytest.raises(UserError) as e:
        train_run(tmp_path, resume=True)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"saving checkpoint {run_dir / 'checkpoints' / 'step_000002'} failed")
    assert "No space left on device" in msg and "bytes" in msg and "--resume" in msg
    assert leftovers(run_dir) == [] and not (run_dir / train.LOCK).exists()
    monkeypatch.undo()
    train_run(tmp_path, resume=True)
    assert final_weights(run_dir) == reference


def test_every_write_of_a_save_failing_or_killed_resumes_to_the_same_model(tmp_path, monkeypatch, one_step,
                                                                           last_save, writes_per_save, reference):
    """For every k: the k-th write fails with ENOSPC, and with EIO (both leave the same folder, so one resume
    covers the two), and a kill -9 at the k-th write; each resumes to the uninterrupted run's model."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)   # it guards against power cuts, which are not simulated here
    # the k of the rename that makes step_2 a checkpoint: after it, step_2 is whole and the latest
    renamed = 1 + [p.endswith(os.path.join("checkpoints", "step_000002")) for p in writes_per_save].index(True)
    for k in range(1, len(writes_per_save) + 1):
        after, killed = {}, tmp_path / f"{k}-killed" / "math"
        for code in (errno.ENOSPC, errno.EIO):
            out = tmp_path / f"{k}-{code}"
            run_dir = copy_run(one_step, out)
            with monkeypatch.context() as mp:
                Faults(mp, run_dir, STEPS, k, code, killed if code == errno.ENOSPC else None)
                with pytest.raises(UserError) as e:
                    modeling.save_checkpoint(str(run_dir), STEPS, *last_save)
            msg = str(e.value)
            assert "\n" not in msg and str(run_dir / "checkpoints" / "step_000002") in msg
            assert "bytes" in msg and os.strerror(code) in msg and "--resume" in msg, msg
            assert leftovers(run_dir) == [], (k, code)
            # the latest checkpoint is whole: step_1, or step_2 when only the top level's switch failed; the top
            # level holds step_1's model or, once switched, step_2's
            latest = modeling.latest_checkpoint(str(run_dir))
            assert latest.endswith("step_000001" if k <= renamed else "step_000002"), (k, code)
            assert modeling.checkpoint_problem(latest) is None, (k, code)
            assert final_weights(run_dir) in [(Path(c) / "model.safetensors").read_bytes()
                                              for c in modeling.checkpoints(str(run_dir))[-2:]], (k, code)
            after[code] = digests(run_dir)
        assert after[errno.ENOSPC] == after[errno.EIO], k
        train_run(out, resume=True)
        assert final_weights(run_dir) == reference, k
        assert leftovers(run_dir) == [], k
        train_run(killed.parent, resume=True)   # a kill -9 at the k-th write: resume from what it left
        assert final_weights(killed) == reference, (k, "killed")
        assert leftovers(killed) == [], k
        shutil.rmtree(tmp_path / f"{k}-{errno.ENOSPC}")
        shutil.rmtree(out)
        shutil.rmtree(killed.parent)


def test_a_truncated_file_of_the_latest_checkpoint_is_skipped(tmp_path, reference, capfd):
    """Each file of the newest checkpoint cut to half its size in turn: --resume names it, uses step_1, and
    ends where the uninterrupted run does."""
    done = tmp_path / "done"
    train_run(done)   # finished: step_2 is the latest
    names = sorted(p.name for p in (done / "math" / "checkpoints" / "step_000002").iterdir())
    assert "manifest.json" in names and "trainer_state.pt" in names and "model.safetensors" in names
    for name in names:
        out = tmp_path / name
        run_dir = copy_run(done / "math", out)
        victim = run_dir / "checkpoints" / "step_000002" / name
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
        capfd.readouterr()
        train_run(out, resume=True)
        said = [line for line in capfd.readouterr().out.splitlines() if "skipping" in line]
        assert len(said) == 1 and "step_000002" in said[0], said
        assert name in said[0] or name == "manifest.json", said
        assert final_weights(run_dir) == reference, name
        assert modeling.checkpoint_problem(str(run_dir / "checkpoints" / "step_000002")) is None


def test_a_flipped_byte_is_caught_by_the_checksum(tmp_path, one_step):
    run_dir = copy_run(one_step, tmp_path)
    ckpt = run_dir / "checkpoints" / "step_000001"
    data = bytearray((ckpt / "trainer_state.pt").read_bytes())
    data[len(data) // 2] ^= 1
    (ckpt / "trainer_state.pt").write_bytes(bytes(data))
    assert modeling.checkpoint_problem(str(ckpt)) == "trainer_state.pt does not match its checksum"
    assert modeling.resume_checkpoint(str(run_dir), say=lambda s: None).endswith("step_000000")


def test_no_valid_checkpoint_is_one_line_and_deletes_nothing(tmp_path, one_step):
    run_dir = copy_run(one_step, tmp_path)
    for ckpt in (run_dir / "checkpoints").iterdir():
        (ckpt / "model.safetensors").write_bytes(b"")
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    with pytest.raises(UserError, match="no valid checkpoint") as e:
        train_run(tmp_path, resume=True)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before


def test_a_checkpoint_from_before_manifests_still_resumes(tmp_path, one_step, reference):
    """A run written before this change: no manifest.json, and real files at the top level."""
    run_dir = copy_run(one_step, tmp_path)
    for ckpt in (run_dir / "checkpoints").iterdir():
        (ckpt / modeling.MANIFEST).unlink()
    for p in list(run_dir.iterdir()):
        if p.is_symlink() and p.name != "model":
            data = p.read_bytes()
            p.unlink()
            p.write_bytes(data)
    (run_dir / "model").unlink()
    shutil.rmtree(run_dir / ".model")
    assert modeling.checkpoint_problem(str(run_dir / "checkpoints" / "step_000001")) is None
    train_run(tmp_path, resume=True)
    assert final_weights(run_dir) == reference
    # without a manifest a truncated old checkpoint is still caught, by its safetensors header
    old = run_dir / "checkpoints" / "step_000001"
    assert not (old / modeling.MANIFEST).exists()   # still the old one (rotation keeps it)
    (old / "model.safetensors").write_bytes((old / "model.safetensors").read_bytes()[:1000])
    assert "unreadable" in modeling.checkpoint_problem(str(old))


def test_too_little_free_space_stops_before_writing(tmp_path, monkeypatch, one_step):
    run_dir = copy_run(one_step, tmp_path)
    before = sorted(str(p.relative_to(run_dir)) for p in (run_dir / "checkpoints").rglob("*"))
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=5_000_000))
    with pytest.raises(UserError, match="no room for checkpoint") as e:
        train_run(tmp_path, resume=True)
    # weights 3.7 MB and Adam's two moments 7.4 MB, plus room for the tokenizer and configs
    need = int(str(e.value).split("needs about ")[1].split(" bytes")[0].replace(",", ""))
    assert 11_000_000 < need < 11_000_000 + (17 << 20)
    assert "5,000,000 free" in str(e.value)
    assert sorted(str(p.relative_to(run_dir)) for p in (run_dir / "checkpoints").rglob("*")) == before


# --- one writer per run folder

def test_the_lock_refuses_a_second_writer_even_at_the_same_instant(tmp_path):
    """flock is atomic: whichever of two writers locks second is refused, with the first one's host and pid."""
    run_dir = str(tmp_path / "r")
    with train.run_lock(run_dir):
        owner = (tmp_path / "r" / train.LOCK).read_text()
        assert owner.split()[0] == "host" and owner.split()[3] == str(os.getpid())
        with pytest.raises(UserError, match=f"being written by another run \\(host .* pid {os.getpid()}"):
            with train.run_lock(run_dir):
                pass
    assert not (tmp_path / "r").exists()   # made for the lock, and nothing was written


def test_a_live_owner_stops_train_py_in_one_line(tmp_path, one_step, capfd):
    """Another process holds the lock: train.py's entry (cli.run around train.main) stops in one line naming it,
    exit 2, and the run folder is untouched."""
    run_dir = copy_run(one_step, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
         "f.write(f'host h pid {os.getpid()}'); f.flush(); print('locked', flush=True); sys.stdin.read()",
         str(run_dir / train.LOCK)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        before = {str(p): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.name != train.LOCK}
        capfd.readouterr()
        with pytest.raises(SystemExit) as e:
            cli.run(train.main, train.Config(out_dir=str(tmp_path), **{**SMALL, "steps": STEPS, "resume": True}),
                    "train.py")
        err = capfd.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1, err
        assert err[0].startswith(f"train.py: error: {run_dir} is being written by another run (host h pid {holder.pid}")
        assert {str(p): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.name != train.LOCK} == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_dead_owners_lock_is_taken_over_with_a_note(tmp_path, one_step, reference, capfd):
    run_dir = copy_run(one_step, tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run_dir / train.LOCK).write_text(f"host {os.uname().nodename} pid {dead.stdout.strip()}\n")
    train_run(tmp_path, resume=True)
    out = capfd.readouterr().out
    assert f"taking over the lock {run_dir / train.LOCK} left by host" in out and f"pid {dead.stdout.strip()}" in out
    assert final_weights(run_dir) == reference
    assert not (run_dir / train.LOCK).exists()


# --- errors during training are one line

def test_a_full_disk_during_training_is_one_line_without_traceback(tmp_path, monkeypatch, capfd):
    """train.py's entry (cli.run around train.main) when run.json cannot be written, as on a full disk: /dev/full
    answers every write with ENOSPC. One line, exit 2, no traceback; M2RL_DEBUG=1 lets the traceback through."""
    run_dir = tmp_path / "math"
    run_dir.mkdir()
    os.symlink("/dev/full", run_dir / "run.json.tmp")
    cfg = train.Config(domains=("math",), steps=0, out_dir=str(tmp_path))
    monkeypatch.delenv("M2RL_DEBUG", raising=False)
    capfd.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.run(train.main, cfg, "train.py")
    err = capfd.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err == ["train.py: error: [Errno 28] No space left on device"], err
    monkeypatch.setenv("M2RL_DEBUG", "1")
    with pytest.raises(OSError, match="No space left on device"):
        cli.run(train.main, train.Config(domains=("math",), steps=0, out_dir=str(tmp_path), resume=True), "train.py")
