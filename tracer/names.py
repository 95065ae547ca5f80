"""Many short names kept compactly: one bytes blob and an offsets array, compressed in
blocks on request. The kernel's symbol names (tracer/symbols.py) for the recorder's
whole life: 120k names as Python strings cost ~10 MB, as one blob 2.8 MB, compressed
~0.7 MB.
"""

from __future__ import annotations

from array import array
from itertools import accumulate
from collections.abc import Iterable, Sequence


class PackedNames:
    """Symbol names packed into one bytes blob with an offsets array; compact() keeps the
    blob zlib-compressed in blocks instead (2.8 MB -> ~0.7 MB for 122k names here), a
    name then read by inflating its block (tens of microseconds; the last few kept)."""

    BLOCK = 512  # names a compressed block holds

    def __init__(self, blob: bytes, offsets: array):
        self._blob, self.offsets = blob, offsets
        self._blocks: list[bytes] | None = None
        self._inflated: dict[int, bytes] = {}

    @classmethod
    def of(cls, names: Iterable[str]) -> "PackedNames":
        """From str names (ASCII; anything else replaced)."""
        return cls.of_bytes([n.encode("ascii", "replace") for n in names])

    @classmethod
    def of_bytes(cls, names: Sequence[bytes]) -> "PackedNames":
        """From names as bytes, in their order."""
        return cls(b"".join(names), array("I", accumulate(map(len, names), initial=0)))

    @property
    def compacted(self) -> bool:
        """Whether compact() ran."""
        return self._blocks is not None

    @property
    def blob(self) -> bytes:
        """Every name, end to end (offsets say where each starts); inflated whole when
        compacted (slabfilter searches it in C, once per table)."""
        if self._blocks is None:
            return self._blob
        import zlib

        return b"".join(map(zlib.decompress, self._blocks))

    def compact(self) -> None:
        """Keep the names compressed from now on (for a long-lived table: the sampler's)."""
        if self._blocks is not None:
            return
        import zlib

        offs, n = self.offsets, len(self)
        self._blocks = [zlib.compress(self._blob[offs[i]:offs[min(i + self.BLOCK, n)]], 1)
                        for i in range(0, n, self.BLOCK)]
        self._blob = b""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        if self._blocks is None:
            return self._blob[self.offsets[i]:self.offsets[i + 1]].decode("ascii", "replace")
        b = i // self.BLOCK
        data = self._inflated.get(b)
        if data is None:
            import zlib

            if len(self._inflated) >= 8:
                self._inflated.pop(next(iter(self._inflated)))
            data = self._inflated[b] = zlib.decompress(self._blocks[b])
        base = self.offsets[b * self.BLOCK]
        return data[self.offsets[i] - base:self.offsets[i + 1] - base].decode("ascii", "replace")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def index(self, name: str) -> int:
        """The index of `name` (a linear search: rare)."""
        for i, n in enumerate(self):
            if n == name:
                return i
        raise ValueError(f"{name!r} is not a symbol")
