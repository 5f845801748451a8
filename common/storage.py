"""One storage layer for every job: local paths and s3:// through pyarrow filesystems."""
from __future__ import annotations

import json
import os
import posixpath
import tempfile
from typing import Any

from pyarrow import fs

from common.config import UserError
from common.s3 import redact

OWNER_MARKER = ".evolray-job"


def filesystem(path: str) -> tuple[fs.FileSystem, str]:
    """pyarrow reads AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 itself (checked with pyarrow 26 on moto)."""
    try:
        return fs.FileSystem.from_uri(absolute(path))
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError with long texts
        raise UserError(f"cannot open {redact(path)}: {str(exc).splitlines()[0]}") from None


def absolute(path: str) -> str:
    """Ray workers run in folders of their own: a local path handed to them must be absolute.

    `~` is expanded here, so every function below (all go through filesystem()) expands it.
    """
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def join(path: str, *parts: str) -> str:
    return posixpath.join(path, *parts) if "://" in path else os.path.join(path, *parts)


def exists(path: str) -> bool:
    filesys, inner = filesystem(path)
    return filesys.get_file_info(inner).type != fs.FileType.NotFound


def is_dir(path: str) -> bool:
    filesys, inner = filesystem(path)
    return filesys.get_file_info(inner).type == fs.FileType.Directory


def is_nonempty_dir(path: str) -> bool:
    filesys, inner = filesystem(path)
    if filesys.get_file_info(inner).type != fs.FileType.Directory:
        return False
    return bool(filesys.get_file_info(fs.FileSelector(inner, recursive=False)))


def list_files(path: str) -> list[str]:
    """Every file under a folder (recursive), as paths of the same kind as `path`; [] if it is missing."""
    filesys, inner = filesystem(path)
    infos = filesys.get_file_info(fs.FileSelector(inner, recursive=True, allow_not_found=True))
    files = sorted(info.path for info in infos if info.type == fs.FileType.File)
    if "://" in path:
        scheme = path.split("://", 1)[0]
        return [f"{scheme}://{f}" for f in files]
    return files


def delete_dir(path: str) -> None:
    filesys, inner = filesystem(path)
    if filesys.get_file_info(inner).type == fs.FileType.Directory:
        filesys.delete_dir(inner)


def owner(path: str) -> str | None:
    """The job named in a folder's owner marker, or None when it has none."""
    marker = join(path, OWNER_MARKER)
    return read_text(marker).strip() if exists(marker) else None


def mark_owned(path: str, job: str) -> None:
    """Write the marker that lets `delete_owned_dir` delete this folder later; call it first."""
    write_bytes_atomic(join(path, OWNER_MARKER), f"{job}\n".encode())


def delete_owned_dir(path: str, job: str, key: str = "output.path") -> None:
    """Empty a folder only if `job` created it, so an overwrite can never wipe a user's folder.

    The folder's contents go, the folder stays (a bucket root or a mount point must survive);
    a missing or empty folder is left alone.
    """
    if not exists(path):
        return
    if not is_dir(path):
        raise UserError(f"{key}: {redact(path)} is a file, not a folder; refusing to delete it")
    if not is_nonempty_dir(path):
        return
    if owner(path) != job:
        raise UserError(f"{key}: {redact(path)} was not created by an evolray {job} run; refusing to delete it")
    filesys, inner = filesystem(path)
    filesys.delete_dir_contents(inner)


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one (completion markers, summaries).

    Local: a temp file in the same folder, then os.replace. S3: an object appears only once its
    upload completes (pyarrow uses a multipart upload even for a few bytes; that is atomic too).
    """
    if "://" in path:
        filesys, inner = filesystem(path)
        with filesys.open_output_stream(inner) as out:
            out.write(data)
        return
    target = absolute(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), _new_file_mode())
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _new_file_mode() -> int:
    """The mode open() gives a new file (0666 less the umask): mkstemp's 0600 hid a run's records,
    reports and figures from the group. The umask is read, not set and restored (threads)."""
    try:
        with open("/proc/self/status") as status:
            mask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = 0o022
    return 0o666 & ~mask


def write_text(path: str, text: str) -> None:
    filesys, inner = filesystem(path)
    if "://" not in path:  # on S3 a folder is a key prefix; create_dir would add empty "folder/" objects
        filesys.create_dir(posixpath.dirname(inner), recursive=True)
    with filesys.open_output_stream(inner) as out:
        out.write(text.encode())


def read_text(path: str) -> str:
    filesys, inner = filesystem(path)
    with filesys.open_input_stream(inner) as stream:
        return stream.read().decode()


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_writable(path: str) -> None:
    """Fail before any model loads if the output location cannot be written."""
    probe = join(path, ".evolray-write-check")
    try:
        write_text(probe, "ok")
        filesys, inner = filesystem(probe)
        filesys.delete_file(inner)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot write to {redact(path)}: {str(exc).splitlines()[0]}") from None
