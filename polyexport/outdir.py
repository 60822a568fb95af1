"""The output folder as a transaction: checked before any work, written aside, moved into place at the end.

What it protects against (each seen with careless or hostile `--out` values):
- deleting what is not polyexport's: `--out .`, `--out ~`, a folder holding the model. Such targets are
  refused before any work, and `--force` replaces only a folder that carries polyexport's marker;
- losing a result: a folder that appeared at `--out` while the run went on is never deleted without
  `--force`, and two runs to one `--out` both keep their results (the later one goes beside it, and says so);
- debris: the staging folder (artifacts and scratch files) is removed on any failure or signal, and so are
  the parent folders the run created;
- `mkdtemp`'s mode 0700: the committed folder gets the mode the umask gives a new folder.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import BadInput

MARKER = ".polyexport"  # in every folder polyexport wrote; --force replaces only such a folder


def _protected(target: Path) -> str | None:
    """Why `target` must never be an output folder (it would be replaced wholesale), or None."""
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    if target == Path(target.anchor):
        return "the filesystem root"
    if target == home:
        return "your home folder"
    if target == cwd or target in cwd.parents:
        return "the working directory" if target == cwd else "an ancestor of the working directory"
    return None


def check_out(out: str, force: bool, inputs: list[str] = ()) -> Path:
    """Validate `--out` before any work; BadInput (exit 2, nothing written) names what is wrong with it."""
    if not out or not out.strip():
        raise BadInput("--out is empty: name a folder for the artifacts")
    target = Path(out).expanduser()
    try:
        resolved = target.resolve()
        exists = target.exists()
    except (OSError, RuntimeError) as e:  # too long a name, a symlink loop
        raise BadInput(f"--out {out}: {e.strerror if isinstance(e, OSError) and e.strerror else e}") from e
    why = _protected(resolved)
    if why:
        raise BadInput(f"--out {out} is {why}: polyexport replaces its output folder as a whole; choose a new folder")
    for path in inputs:
        p = Path(path).resolve()
        if p == resolved or resolved in p.parents:
            raise BadInput(f"--out {out} holds the input {path}: choose another folder")
    if exists and not target.is_dir():
        raise BadInput(f"--out {out} is a file, not a folder")
    if exists and not force:
        raise BadInput(f"output folder {out} exists; pass --force to replace it (or choose another --out)")
    if exists and force and not (target / MARKER).is_file() and any(target.iterdir()):
        raise BadInput(f"--out {out} exists and was not written by polyexport (no {MARKER} marker): "
                       "--force replaces only polyexport's own output folders; remove it yourself or choose another")
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise BadInput(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"--out {out}: cannot write in {parent}")
    if len(resolved.name.encode()) > 200:  # room for the staging folder's and the sibling's suffixes
        raise BadInput(f"--out {out}: the folder name is too long")
    return resolved


class OutputTransaction:
    """Artifacts go to `staging/out`, scratch files (diagnostic graphs, the raw export) to `staging/scratch`;
    `commit()` moves the artifacts into place, anything else (`abort()`, an exception) removes all of it."""

    def __init__(self, out: str, force: bool, inputs: list[str] = ()):
        self.target = check_out(out, force, list(inputs))
        self.force = force
        self.created: list[Path] = []  # parent folders this run made, removed again if it fails
        missing = []
        parent = self.target.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        try:
            for p in reversed(missing):
                p.mkdir()
                self.created.append(p)
            self.staging = Path(tempfile.mkdtemp(prefix=".polyexport-", dir=self.target.parent))
        except OSError as e:
            self._remove_created()
            raise BadInput(f"--out {out}: cannot create it ({e.strerror or e})") from e
        self.artifacts = self.staging / "out"
        self.scratch = self.staging / "scratch"
        self.artifacts.mkdir()
        self.scratch.mkdir()
        self.committed: Path | None = None

    def commit(self) -> Path:
        """Move the artifacts into place; returns where they went (beside `--out` when it appeared meanwhile)."""
        (self.artifacts / MARKER).write_text(json.dumps({"written_by": "polyexport"}) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.artifacts, 0o777 & ~umask)
        dest = self.target
        if dest.is_dir() and self.force and (dest / MARKER).is_file():
            os.replace(dest, self.staging / "replaced")  # ours: replaced as asked
        try:
            os.replace(self.artifacts, dest)  # an empty folder is replaced; anything else refuses
        except OSError:  # appeared while this run went on: never deleted without --force
            dest = self._free_sibling()
            os.replace(self.artifacts, dest)
        self.committed = dest
        shutil.rmtree(self.staging, ignore_errors=True)
        return dest

    def _free_sibling(self) -> Path:
        for i in range(1, 1000):
            candidate = self.target.with_name(f"{self.target.name}.{i}")
            if not candidate.exists():
                return candidate
        raise BadInput(f"--out {self.target}: it and its 999 numbered siblings exist")

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self._remove_created()

    def _remove_created(self) -> None:
        for p in reversed(self.created):
            try:
                p.rmdir()  # only if still empty
            except OSError:
                break

    def __enter__(self) -> "OutputTransaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.committed is None:
            self.abort()
