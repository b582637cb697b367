import shutil
import subprocess

import pytest

from expertsteer.provenance import git_commit


def test_outside_a_checkout_there_is_no_commit(tmp_path):
    assert git_commit(tmp_path) is None
    assert git_commit(tmp_path / "missing") is None


@pytest.mark.skipif(shutil.which("git") is None, reason="no git binary")
def test_the_commit_of_a_checkout(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip

    git("init", "-q")
    (tmp_path / "f").write_text("x")
    git("add", "f")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    assert git_commit(tmp_path) == git("rev-parse", "HEAD")
    assert len(git_commit(tmp_path)) == 40


def test_git_failures_give_none(monkeypatch, tmp_path):
    calls = []

    def fake(argv, **kw):
        calls.append((argv, kw["cwd"]))
        return subprocess.CompletedProcess(argv, fake.rc, fake.out, "")

    monkeypatch.setattr(subprocess, "run", fake)
    fake.rc, fake.out = 0, "0123456789abcdef0123456789abcdef01234567\n"
    assert git_commit(tmp_path) == "0123456789abcdef0123456789abcdef01234567"
    assert calls == [(["git", "rev-parse", "HEAD"], tmp_path)]
    git_commit()
    assert calls[-1][1].name == "expertsteer"  # default: the library's own folder
    fake.out = "not a sha"
    assert git_commit(tmp_path) is None
    fake.rc, fake.out = 128, "fatal: not a git repository"
    assert git_commit(tmp_path) is None

    def missing(argv, **kw):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", missing)
    assert git_commit(tmp_path) is None
