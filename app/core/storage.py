"""Content-addressed file storage for uploaded images.

Files live at `<root>/<hash[:2]>/<hash[2:4]>/<hash><ext>`; the client's filename never reaches a
path. Writes go to a staging file first, are fsynced, then renamed into place, so a file either
exists whole or not at all. Synchronous: callers run these methods off the event loop.
"""

import os
import tempfile
from pathlib import Path


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging_dir = root / ".staging"
        self.thumbnail_dir = root / ".thumbnails"

    def prepare(self) -> None:
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.thumbnail_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def relative_path(content_hash: str, extension: str) -> str:
        return f"{content_hash[:2]}/{content_hash[2:4]}/{content_hash}{extension}"

    def absolute_path(self, relative_path: str) -> Path:
        return self.root / relative_path

    def thumbnail_path(self, content_hash: str, size: int, image_format: str) -> Path:
        return self.thumbnail_dir / f"{content_hash}-{size}.{image_format}"

    def remove_thumbnails(self, content_hash: str) -> None:
        for path in self.thumbnail_dir.glob(f"{content_hash}-*"):
            path.unlink(missing_ok=True)

    def write(self, data: bytes, relative_path: str) -> None:
        self.write_file(self.absolute_path(relative_path), data)

    def write_file(self, target: Path, data: bytes) -> None:
        """Write `data` to `target` atomically and durably (staged, fsynced, renamed)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, staging_name = tempfile.mkstemp(dir=self.staging_dir, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as staging_file:
                staging_file.write(data)
                staging_file.flush()
                os.fsync(staging_file.fileno())
            os.replace(staging_name, target)
        except BaseException:
            Path(staging_name).unlink(missing_ok=True)
            raise
        _fsync_directory(target.parent)

    def remove(self, relative_path: str) -> None:
        self.absolute_path(relative_path).unlink(missing_ok=True)

    def exists(self, relative_path: str) -> bool:
        return self.absolute_path(relative_path).is_file()

    def stored_files(self) -> dict[str, float]:
        """Every stored image file (relative path -> modification time)."""
        files: dict[str, float] = {}
        if not self.root.is_dir():
            return files
        for path in self.root.rglob("*"):
            relative = path.relative_to(self.root)
            # Image files only: the staging area and the thumbnail cache start with a dot.
            if path.is_file() and not relative.parts[0].startswith("."):
                files[relative.as_posix()] = path.stat().st_mtime
        return files

    def staging_files(self) -> dict[Path, float]:
        if not self.staging_dir.is_dir():
            return {}
        return {path: path.stat().st_mtime for path in self.staging_dir.iterdir() if path.is_file()}


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable: without it a crash can forget a file already acknowledged.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
