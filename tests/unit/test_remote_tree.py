"""RemoteStorage on a filesystem with real folders: trees arrive whole, folders made first."""

from pathlib import Path

from app.core.hostcache import HostCache
from app.core.storage import RemoteStorage
from tests.support.files import write_tree


def test_put_dir_and_publish_make_the_folders_their_files_need(tmp_path: Path) -> None:
    # fsspec's local filesystem stands for any with folders (SFTP, HDFS): a file put into a
    # folder that does not exist fails there, unlike on S3.
    storage = RemoteStorage(
        f"local://{tmp_path / 'store'}", HostCache(tmp_path / "cache", 2**20), tmp_path / "ws"
    )
    files = {"manifest.json": "{}", "files/0/a.png": "a", "files/1/deep/b.png": "b"}
    storage.put_dir(write_tree(tmp_path / "upload", files), "datasets/d1")
    assert not (tmp_path / "upload").exists(), "the staged tree is consumed"
    root = storage.local("datasets/d1")
    got = {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}
    assert got == files

    write_tree(storage.workspace("jobs/j1/logs"), {"run/events.out": "1"})
    storage.publish("jobs/j1/logs")
    assert (tmp_path / "store/jobs/j1/logs/run/events.out").read_text() == "1"
