"""tracer/btf.py: struct layouts from BTF, on a hand-built blob (every record kind the
walk has to step over) and on this machine's kernel."""

from __future__ import annotations

import os
import struct

import pytest

from tracer import kprobes
from tracer.btf import (ARRAY, CONST, ENUM, FUNC, FUNC_PROTO, INT, PTR, STRUCT, TYPEDEF, UNION,
                        VAR, Btf)
from tracer.errors import FootprintError


class Blob:
    """A BTF blob written record by record (include/uapi/linux/btf.h)."""

    def __init__(self):
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.count = 0

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, size_or_type: int, tail: bytes = b"",
            kind_flag: int = 0) -> int:
        info = (kind_flag << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.s(name), info, size_or_type) + tail
        self.count += 1
        return self.count

    def struct(self, name, size, members, kind=STRUCT, bitfields=False):
        tail = b"".join(struct.pack("<III", self.s(m), t, off) for m, t, off in members)
        return self.add(name, kind, len(members), size, tail, kind_flag=int(bitfields))

    def bytes(self) -> bytes:
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types),
                          len(self.strings))
        return hdr + bytes(self.types) + bytes(self.strings)


@pytest.fixture
def blob() -> Btf:
    b = Blob()
    ulong = b.add("long unsigned int", INT, 0, 8, struct.pack("<I", 64))
    uchar = b.add("unsigned char", INT, 0, 1, struct.pack("<I", 8))
    b.add("", ARRAY, 0, 0, struct.pack("<III", uchar, ulong, 16))  # steps over an array
    b.add("x", VAR, 0, ulong, struct.pack("<I", 1))
    fwd_folio = b.add("folio", STRUCT, 0, 0)  # an empty shape first: must be skipped
    inner = b.struct("", 16, [("flags", ulong, 0), ("mapping", ulong, 64)])
    tail = b.struct("", 16, [("_flags_1", ulong, 0), ("_folio_order", uchar, 64)])
    u1 = b.struct("", 16, [("", inner, 0)], kind=UNION)
    folio = b.struct("folio", 48, [("", u1, 0), ("", tail, 128)])
    b.add("pageflags", ENUM, 3, 4, struct.pack("<IiIiIi", b.s("PG_locked"), 0,
                                               b.s("PG_writeback"), 1, b.s("PG_head"), 6))
    mapping = b.struct("address_space", 8, [("host", ulong, 0)])
    p_folio = b.add("", PTR, 0, folio)
    c_map = b.add("", CONST, 0, mapping)
    p_map = b.add("", PTR, 0, c_map)
    pgoff = b.add("pgoff_t", TYPEDEF, 0, ulong)
    proto = b.add("", FUNC_PROTO, 3, 0, struct.pack("<IIIIII", b.s("folio"), p_folio,
                                                    b.s("mapping"), p_map, b.s("index"), pgoff))
    b.add("shmem_add_to_page_cache", FUNC, 0, proto)
    b.struct("bits", 4, [("a", uchar, (3 << 24) | 0), ("b", uchar, (5 << 24) | 3)], bitfields=True)
    assert fwd_folio < folio
    return Btf(b.bytes())


def test_members_through_anonymous_unions(blob):
    assert blob.member_offset("folio", "flags") == 0
    assert blob.member_offset("folio", "mapping") == 8
    assert blob.member_offset("folio", "_flags_1") == 16
    assert blob.member_offset("folio", "_folio_order") == 24
    assert blob.member_size("folio", "_folio_order") == 1
    assert blob.member_offset("address_space", "host") == 0
    with pytest.raises(KeyError):
        blob.member_offset("folio", "lru")
    with pytest.raises(KeyError):
        blob.member_offset("inode", "i_sb")
    with pytest.raises(KeyError, match="bit field"):
        blob.member_offset("bits", "b")


def test_enums_and_function_parameters(blob):
    assert blob.enum_value("pageflags", "PG_head") == 6
    assert blob.func_params("shmem_add_to_page_cache") == [
        "struct folio *", "struct address_space *", "long unsigned int"]
    with pytest.raises(KeyError):
        blob.func_params("filemap_add_folio")


def test_not_btf_is_a_clean_error(tmp_path):
    p = tmp_path / "vmlinux"
    p.write_bytes(b"\x7fELF" + b"\0" * 60)
    with pytest.raises(FootprintError, match="not BTF"):
        Btf.load(str(p))
    with pytest.raises(FootprintError, match="no kernel BTF"):
        Btf.load(str(tmp_path / "absent"))


def test_the_shmem_extra_refuses_another_signature(blob):
    """Older kernels passed a struct page: the extra is not compiled there."""
    b = Blob()
    page = b.struct("page", 8, [("flags", b.add("long", INT, 0, 8, struct.pack("<I", 64)), 0)])
    proto = b.add("", FUNC_PROTO, 1, 0, struct.pack("<II", b.s("page"), b.add("", PTR, 0, page)))
    b.add("shmem_add_to_page_cache", FUNC, 0, proto)
    with pytest.raises(KeyError, match="is not"):
        kprobes.shmem_offsets(Btf(b.bytes()))


@pytest.mark.skipif(not os.path.exists("/sys/kernel/btf/vmlinux"), reason="kernel without BTF")
def test_this_kernels_btf():
    """Layouts that have not moved in years, read from the running kernel."""
    btf = Btf.load()
    assert btf.member_offset("list_head", "next") == 0
    assert btf.member_offset("list_head", "prev") == 8
    assert btf.member_offset("super_block", "s_dev") == 16  # after s_list
    assert btf.member_size("inode", "i_sb") == 8
    assert btf.func_params("vfs_read")[:2] == ["struct file *", "char *"]
    assert 0 < btf.enum_value("pageflags", "PG_head") < 64
