"""What an uploaded archive is, and the bounds checked before a library reads it.

zipfile and tarfile read some structures whole into memory before any limit of
app.datasets.archive can look at a member: a zip's central directory, a tar's header
extensions and sparse maps. These are refused first, from what their headers declare.
"""

import tarfile
import zipfile
from pathlib import Path

from app.core.errors import Invalid

# A central directory entry takes 46 bytes plus its name; names average far below this.
_DIRECTORY_BYTES_PER_MEMBER = 256
# A tar header extension holds a long name or pax records: a path is at most a few KiB.
_MAX_HEADER_EXTENSION = 1 << 20
_EXTENSIONS = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class BoundedTarInfo(tarfile.TarInfo):
    """A tar header that refuses an oversized extension before tarfile reads it.

    tarfile reads a GNU long name or a pax header's records whole into memory, before any
    limit of ours can look at the member: one claiming 8 GiB, zeros that gzip to 8 MB,
    would take 8 GiB of the API's memory.
    """

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENSIONS and self.size > _MAX_HEADER_EXTENSION:
            raise Invalid(
                f"The archive has a header extension of {self.size} bytes; at most "
                f"{_MAX_HEADER_EXTENSION} are read.",
                code="archive_unsafe",
            )
        if self.type == tarfile.GNUTYPE_SPARSE:
            _sparse()
        return super()._proc_member(tarfile_)  # type: ignore[misc]

    # GNU sparse files, in any of their pax forms: their maps are read without bound and
    # fail with ValueError or IndexError when malformed; no image needs one.
    def _proc_gnusparse_00(self, *_: object) -> None:
        _sparse()

    def _proc_gnusparse_01(self, *_: object) -> None:
        _sparse()

    def _proc_gnusparse_10(self, *_: object) -> None:
        _sparse()


def _sparse() -> None:
    raise Invalid("Sparse files in a tar are not supported.", code="archive_unsafe")


def kind(archive: Path) -> str | None:
    """`zip`, `tar` (plain or compressed) or None."""
    with archive.open("rb") as fh:
        zip_magic = fh.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    # A tar whose last member is a zip also passes is_zipfile, so the zip magic decides first.
    if zip_magic and zipfile.is_zipfile(archive):
        return "zip"
    is_tar = _is_tar(archive)
    if not is_tar and zipfile.is_zipfile(archive):
        return "zip"
    return "tar" if is_tar else None


def _is_tar(archive: Path) -> bool:
    """tarfile.is_tarfile, reading the first header as the archive's reader will."""
    try:
        tarfile.open(archive, "r:*", tarinfo=BoundedTarInfo).close()
    except tarfile.TarError:
        return False
    return True


def check_zip_directory(archive: Path, max_members: int) -> None:
    """Refuse a zip whose central directory is too large before ZipFile reads it: ZipFile
    holds the whole directory and builds an object per entry (~400 bytes each), so a 1 GB
    directory of 20 million entries would take ~8 GB of the API's memory before the count
    of entries could be checked."""
    with archive.open("rb") as fh:
        end = zipfile._EndRecData(fh)  # the end record ZipFile itself reads first
    if end is None:
        return  # ZipFile will say what is wrong
    check_count(end[zipfile._ECD_ENTRIES_TOTAL], max_members)
    if end[zipfile._ECD_SIZE] > _DIRECTORY_BYTES_PER_MEMBER * max_members:
        raise Invalid(
            f"The archive's directory of {end[zipfile._ECD_SIZE]} bytes is too large for "
            f"{max_members} entries.",
            code="archive_too_large",
        )


def check_count(count: int, max_members: int) -> None:
    if count > max_members:
        raise Invalid(f"The archive has more than {max_members} entries.", code="archive_too_large")
