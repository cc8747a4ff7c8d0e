"""What a start created on disk, so that a start that fails leaves nothing behind."""

from __future__ import annotations

import contextlib
from pathlib import Path

# The files SQLite may add beside a database file.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


class CreatedFiles:
    """Files and directories this start created, removable in reverse order."""

    def __init__(self) -> None:
        self._paths: list[Path] = []

    def mkdir(self, directory: Path, mode: int = 0o700) -> None:
        """Create `directory` and its missing parents, remembering each one created."""
        missing: list[Path] = []
        for path in (directory, *directory.parents):
            if path.exists():
                break
            missing.append(path)
        for path in reversed(missing):
            try:
                path.mkdir(mode=mode)
            except FileExistsError:  # another process made it meanwhile: theirs
                continue
            self._paths.append(path)

    def add_file(self, path: Path) -> None:
        """Remember a file this start wrote."""
        self._paths.append(path)

    def add_sqlite_if_new(self, database: Path) -> None:
        """Remember an SQLite database (and its companions) that does not exist yet."""
        if not database.exists():
            self._paths.extend(Path(f"{database}{suffix}") for suffix in ("", *SQLITE_COMPANIONS))

    def remove_all(self) -> None:
        """Remove every file and (empty) directory remembered, newest first."""
        for path in reversed(self._paths):
            with contextlib.suppress(OSError):
                if path.is_dir():
                    path.rmdir()  # only if empty: never anything someone else put there
                else:
                    path.unlink(missing_ok=True)
        self._paths.clear()
