"""Stand-in for `google.colab.drive`: the mount point becomes a link to a folder shared by every "runtime"."""

import os
from pathlib import Path

DRIVE_ENV = "FAKE_COLAB_DRIVE"


def mount(mountpoint: str, force_remount: bool = False, timeout_ms: int = 120000, readonly: bool = False) -> None:
    storage = os.environ.get(DRIVE_ENV)
    if not storage:
        raise RuntimeError(f"fake google.colab.drive: set ${DRIVE_ENV} to the folder that plays Google Drive")
    (Path(storage) / "MyDrive").mkdir(parents=True, exist_ok=True)
    point = Path(mountpoint)
    if point.is_symlink() and not force_remount:
        print(f"Drive already mounted at {mountpoint}; to attempt to forcibly remount, call "
              f"drive.mount(\"{mountpoint}\", force_remount=True).")
        return
    if point.is_symlink():
        point.unlink()
    elif point.exists():
        raise ValueError("Mountpoint must not already contain files")
    point.parent.mkdir(parents=True, exist_ok=True)
    point.symlink_to(Path(storage).resolve(), target_is_directory=True)
    print(f"Mounted at {mountpoint}")
