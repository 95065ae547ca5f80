"""Struct layouts of the running kernel from its BTF (/sys/kernel/btf/vmlinux).

Why: the optional kprobe extra reads a few struct fields (folio, address_space, inode,
super_block). With bcc that meant #including linux/fs.h, which under emulation made the
compile 8× slower (37 s instead of 4.5 s in the TCG guest), and it needed headers of
exactly the running kernel. The kernel describes its own layouts in BTF
(CONFIG_DEBUG_INFO_BTF, on in Debian's kernels); the extra is compiled with the offsets
read here, from any close header tree.

Relies on the BTF format of include/uapi/linux/btf.h: a header, then type records
(12 bytes + a kind-dependent tail) numbered from 1, then a string section. Only what the
extra needs is decoded: struct/union members (anonymous ones searched through), enum
values, and a function's parameter types.

    btf = Btf.load()
    btf.member_offset("inode", "i_sb")            # bytes
    btf.enum_value("pageflags", "PG_head")
    btf.func_params("shmem_add_to_page_cache")    # ["struct folio *", ...]
"""

from __future__ import annotations

import struct
from array import array

from .errors import FootprintError

VMLINUX = "/sys/kernel/btf/vmlinux"
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_MEMBER = struct.Struct("<III")
_ENUM = struct.Struct("<Ii")
_PARAM = struct.Struct("<II")
MAGIC = 0xEB9F

(INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC,
 FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64) = range(1, 20)
# Bytes after the 12-byte record: fixed, and per entry of vlen.
_TAIL = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_ENTRY = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


class Btf:
    """The type records of one BTF blob, indexed by id (offsets into the type section)."""

    def __init__(self, data: bytes):
        if len(data) < _HEADER.size:
            raise FootprintError("BTF is truncated: check /sys/kernel/btf/vmlinux")
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise FootprintError("not BTF (bad magic): check /sys/kernel/btf/vmlinux")
        self.types = memoryview(data)[hdr_len + type_off: hdr_len + type_off + type_len]
        self.strings = bytes(data[hdr_len + str_off: hdr_len + str_off + str_len])
        # One pass to find where each record starts: ~126k types in 0.15 s natively.
        self.offsets = array("I", [0])  # id 0 is void
        self.name_offs = array("I", [0])
        pos, n, unpack = 0, len(self.types), _TYPE.unpack_from
        offsets, names = self.offsets, self.name_offs
        while pos < n:
            name_off, info, _ = unpack(self.types, pos)
            offsets.append(pos)
            names.append(name_off)
            kind = (info >> 24) & 0x1F
            pos += 12 + _TAIL.get(kind, 0) + _PER_ENTRY.get(kind, 0) * (info & 0xFFFF)

    @classmethod
    def load(cls, path: str = VMLINUX) -> "Btf":
        """The BTF at `path` (the running kernel's by default); FootprintError when absent."""
        try:
            with open(path, "rb") as f:
                return cls(f.read())
        except OSError as err:
            raise FootprintError(f"no kernel BTF ({path}: {err.strerror}): the kernel needs "
                                 "CONFIG_DEBUG_INFO_BTF") from None

    # -- records ----------------------------------------------------------------------
    def _record(self, tid: int) -> tuple[int, int, int, int]:
        """(kind, vlen, size_or_type, kind_flag) of type `tid`."""
        _, info, size_or_type = _TYPE.unpack_from(self.types, self.offsets[tid])
        return (info >> 24) & 0x1F, info & 0xFFFF, size_or_type, info >> 31

    def name(self, tid: int) -> str:
        """The name of type `tid` ("" for anonymous ones)."""
        return self._name_at(self.name_offs[tid])

    def _ids_named(self, name: str, kinds: tuple) -> list[int]:
        """Ids of the types called `name` of one of `kinds` (pahole deduplicates strings,
        but nothing in the format promises it: every copy of the name is looked at)."""
        needle = b"\0" + name.encode() + b"\0"
        found = []
        at = self.strings.find(needle)
        while at >= 0:
            off, start = at + 1, 1
            while True:
                try:
                    tid = self.name_offs.index(off, start)
                except ValueError:
                    break
                if self._record(tid)[0] in kinds:
                    found.append(tid)
                start = tid + 1
            at = self.strings.find(needle, at + 1)
        return sorted(found)

    def _struct(self, name: str) -> int:
        for tid in self._ids_named(name, (STRUCT, UNION)):
            if self._record(tid)[1]:  # a definition, not an empty forward shape
                return tid
        raise KeyError(f"struct {name}")

    def _members(self, tid: int):
        kind, vlen, _, kind_flag = self._record(tid)
        base = self.offsets[tid] + 12
        for i in range(vlen):
            name_off, mtype, offset = _MEMBER.unpack_from(self.types, base + 12 * i)
            yield name_off, mtype, (offset & 0xFFFFFF) if kind_flag else offset

    def _strip(self, tid: int) -> int:
        while tid and self._record(tid)[0] in _MODIFIERS:
            tid = self._record(tid)[2]
        return tid

    # -- what the extra asks ------------------------------------------------------------
    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of `member` in `struct struct_name`, looking through anonymous
        unions and structs (struct folio keeps its fields in those)."""
        bits, _ = self._member(struct_name, member)
        if bits % 8:
            raise KeyError(f"struct {struct_name}.{member} is a bit field")
        return bits // 8

    def struct_size(self, struct_name: str) -> int:
        """sizeof(struct struct_name) in bytes (squashfs' formula asks ZSTD_DCtx's)."""
        return self._record(self._struct(struct_name))[2]

    def member_size(self, struct_name: str, member: str) -> int:
        """Size in bytes of `member` (an int or a pointer)."""
        _, tid = self._member(struct_name, member)
        kind, _, size, _ = self._record(self._strip(tid))
        return 8 if kind == PTR else size

    def _member(self, struct_name: str, member: str) -> tuple[int, int]:
        found = self._find_member(self._struct(struct_name), member)
        if found is None:
            raise KeyError(f"struct {struct_name}.{member}")
        return found

    def _find_member(self, tid: int, member: str, base: int = 0) -> tuple[int, int] | None:
        """(bit offset, type id) of `member` in type `tid`, searched depth first."""
        for name_off, mtype, bit_off in self._members(tid):
            if name_off and self._name_at(name_off) == member:
                return base + bit_off, mtype
            inner = self._strip(mtype)
            if not name_off and self._record(inner)[0] in (STRUCT, UNION):
                found = self._find_member(inner, member, base + bit_off)
                if found is not None:
                    return found
        return None

    def _name_at(self, off: int) -> str:
        return self.strings[off: self.strings.index(b"\0", off)].decode()

    def enum_value(self, enum_name: str, member: str) -> int:
        """The value of `member` of enum `enum_name`; KeyError if either is absent."""
        for tid in self._ids_named(enum_name, (ENUM,)):
            _, vlen, _, _ = self._record(tid)
            base = self.offsets[tid] + 12
            for i in range(vlen):
                name_off, value = _ENUM.unpack_from(self.types, base + 8 * i)
                if self._name_at(name_off) == member:
                    return value
        raise KeyError(f"enum {enum_name}.{member}")

    def func_params(self, func: str) -> list[str]:
        """C spelling of a function's parameter types ("struct folio *", "long", ...)."""
        ids = self._ids_named(func, (FUNC,))
        if not ids:
            raise KeyError(f"function {func}")
        proto = self._record(ids[0])[2]
        kind, vlen, _, _ = self._record(proto)
        if kind != FUNC_PROTO:
            raise KeyError(f"function {func} has no prototype")
        base = self.offsets[proto] + 12
        return [self.type_name(_PARAM.unpack_from(self.types, base + 8 * i)[1]) for i in range(vlen)]

    def type_name(self, tid: int) -> str:
        """Type `tid` as C spells it ("struct folio *"), modifiers and typedefs stripped."""
        tid = self._strip(tid)
        if tid == 0:
            return "void"
        kind, _, ref, _ = self._record(tid)
        if kind == PTR:
            return self.type_name(ref) + " *"
        prefix = {STRUCT: "struct ", UNION: "union ", ENUM: "enum ", FWD: "struct "}.get(kind, "")
        return prefix + self.name(tid)
