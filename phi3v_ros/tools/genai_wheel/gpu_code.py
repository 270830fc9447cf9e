"""
Which GPUs a wheel's shared libraries have code for, read from their embedded fatbins.

nvcc puts each ``-gencode`` result into the ``.nv_fatbin`` section of the ELF file: one or more
fatbin blobs (magic 0xBA55ED50, a 16-byte header whose last field is the size of what follows),
each a list of entries with a header giving the entry's kind (1: PTX, 2: machine code, a
"cubin"), its header and payload sizes and the architecture (``sm_87`` is 87). The layout was
read off nvcc 13's output for known ``-gencode`` flags (test_build_genai_wheel_prebuilt.py checks
it against nvcc where there is one). No payload is decompressed: only headers are read.

A GPU of compute capability X.Y runs machine code for sm_XZ with Z <= Y (the same major), and
PTX for any architecture up to X.Y, which the driver compiles when the library loads.
"""
from __future__ import annotations

from dataclasses import dataclass
import io
from pathlib import Path
import struct
from typing import BinaryIO, Dict, Iterable, List, Optional, Tuple
import zipfile

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_CUBIN = 1, 2
SECTION_NAMES = (b'.nv_fatbin', b'__nv_relfatbin')
# What one library, and all the libraries of a wheel together, may be (uncompressed): above the
# largest CUDA libraries (ONNX Runtime's CUDA provider is several hundred MB), and a bound on the
# time a hostile wheel can cost (each library is streamed through zlib a few times, never held).
MAX_LIBRARY_BYTES = 2 << 30
MAX_WHEEL_BYTES = 4 << 30
# Entries of all the fatbins of one library (real ones have thousands): a bound on the work.
MAX_ENTRIES = 1_000_000
_MAGIC = struct.pack('<I', FATBIN_MAGIC)
_SEARCH_CHUNK = 1 << 16


@dataclass(frozen=True)
class GpuCode:
    kind: str       # 'sass' (machine code) or 'ptx'
    arch: int       # 87 for sm_87 / compute_87

    def __str__(self) -> str:
        return f'sm_{self.arch}' if self.kind == 'sass' else f'compute_{self.arch} (PTX)'


class _Stream:
    """
    Pieces of a seekable binary stream of ``size`` bytes, read at offsets: never all of it.

    A file, an mmap, or a member of a zip archive (a backward seek there decompresses again from
    the start, in bounded pieces: time, not memory).
    """

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self.stream, self.size = stream, size

    def at(self, offset: int, length: int) -> bytes:
        """Return the bytes at offset, fewer (maybe none) where the stream ends."""
        if offset < 0 or offset >= self.size or length <= 0:
            return b''
        self.stream.seek(offset)
        return self.stream.read(min(length, self.size - offset))


def _sections(data: _Stream) -> List[Tuple[int, int]]:
    """
    Return (offset, size) of each fatbin section of a 64-bit little-endian ELF file.

    Nothing for anything else. Only the ELF header, the section headers and their names are read.
    """
    header = data.at(0, 64)
    if len(header) < 64 or header[:4] != b'\x7fELF' or header[4] != 2 or header[5] != 1:
        return []
    shoff, = struct.unpack_from('<Q', header, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', header, 0x3A)
    if not shoff or shentsize < 64 or shoff + shnum * shentsize > data.size or \
            shstrndx >= shnum:
        return []
    table = data.at(shoff, shnum * shentsize)
    if len(table) < shnum * shentsize:
        return []
    headers = [struct.unpack_from('<IIQQQQ', table, i * shentsize) for i in range(shnum)]
    names_offset, names_size = headers[shstrndx][4], headers[shstrndx][5]
    names = data.at(names_offset, min(names_size, 1 << 20))     # names of sections: small
    found = []
    longest = max(map(len, SECTION_NAMES)) + 1
    for name, kind, _flags, _addr, offset, size in headers:
        label = names[name:name + longest].split(b'\0', 1)[0]
        if label in SECTION_NAMES and kind != 8 and offset + size <= data.size:   # 8: NOBITS
            found.append((offset, size))
    return sorted(found)


def _next_blob(data: _Stream, start: int, end: int) -> int:
    """Return the offset of the next 8-byte aligned fatbin magic from start (end if none)."""
    pos = start
    while pos < end:
        chunk = data.at(pos, min(_SEARCH_CHUNK, end - pos))
        if not chunk:
            return end
        at = chunk.find(_MAGIC)
        while at >= 0 and at % 8:
            at = chunk.find(_MAGIC, at + 1)
        if at >= 0:
            return pos + at
        # a magic cut at the chunk's end is found again from the last aligned offset before it
        pos += max(8, (len(chunk) - 3) // 8 * 8)
    return end


def _entries(data: _Stream, start: int, size: int, budget: List[int]) -> Dict[GpuCode, None]:
    """Return the code entries of the fatbin blobs of the section at start (headers only)."""
    codes: Dict[GpuCode, None] = {}     # in order, without repeats, each looked up in O(1)
    pos, end = start, start + size
    while pos + 16 <= end:
        pos = _next_blob(data, pos, end)
        head = data.at(pos, 16)
        if len(head) < 16:
            break
        magic, _version, header_size, fat_size = struct.unpack('<IHHQ', head)
        if magic != FATBIN_MAGIC or header_size < 16:   # sizes 0: no progress
            pos += 8
            continue
        entry, blob_end = pos + header_size, min(pos + header_size + fat_size, end)
        while entry + 32 <= blob_end:
            budget[0] -= 1
            if budget[0] < 0:
                raise ValueError(f'more than {MAX_ENTRIES} GPU code entries in one library')
            fields = data.at(entry, 32)
            if len(fields) < 32:
                break
            kind, _ever, entry_header, payload = struct.unpack_from('<HHIQ', fields)
            arch, = struct.unpack_from('<I', fields, 28)
            if entry_header < 32:
                break
            if kind in (KIND_PTX, KIND_CUBIN):  # other kinds (e.g. LTO IR) are no code to run
                codes[GpuCode('ptx' if kind == KIND_PTX else 'sass', arch)] = None
            entry += entry_header + payload
        # the next blob starts 8-byte aligned after this one
        pos += (header_size + fat_size + 7) // 8 * 8
    return codes


def fatbin_entries(section: bytes) -> List[GpuCode]:
    """Return the code entries of the fatbin blobs in one section (its bytes)."""
    return list(_entries(_Stream(io.BytesIO(section), len(section)), 0, len(section),
                         [MAX_ENTRIES]))


def gpu_code(data, size: Optional[int] = None) -> List[GpuCode]:
    """
    Return every GPU code entry of an ELF shared library, without repeats.

    data: bytes, or a seekable binary stream (an open file, an mmap, a zip member) of size bytes
    (found by seeking to its end when not given); only headers are read from a stream.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        data, size = io.BytesIO(data), len(data)
    elif size is None:
        data.seek(0, io.SEEK_END)     # mmap.seek returns None before Python 3.13: tell()
        size = data.tell()
    stream = _Stream(data, size)
    codes: Dict[GpuCode, None] = {}
    budget = [MAX_ENTRIES]
    for offset, length in _sections(stream):
        codes.update(_entries(stream, offset, length, budget))
    return list(codes)


def runs_on(codes: Iterable[GpuCode], compute_capability: str) -> Optional[GpuCode]:
    """Return the entry a GPU of this capability ('87') would use, or None."""
    cc = int(compute_capability)
    major = cc // 10
    sass = [c for c in codes if c.kind == 'sass' and c.arch // 10 == major and c.arch <= cc]
    if sass:
        return max(sass, key=lambda c: c.arch)
    ptx = [c for c in codes if c.kind == 'ptx' and c.arch <= cc]
    return max(ptx, key=lambda c: c.arch) if ptx else None


def wheel_gpu_code(wheel: Path) -> Dict[str, List[GpuCode]]:
    """
    Return, for each shared library in the wheel that holds GPU code, its entries.

    Each library is streamed out of the archive, never read whole; a library larger than
    MAX_LIBRARY_BYTES, or libraries larger than MAX_WHEEL_BYTES together, raise ValueError (as
    does a member whose size the archive misstates, by zipfile's own check).
    """
    found = {}
    with zipfile.ZipFile(wheel) as archive:
        libraries = [info for info in archive.infolist()
                     if info.filename.endswith('.so')
                     or '.so.' in info.filename.rsplit('/', 1)[-1]]
        for info in libraries:
            if info.file_size > MAX_LIBRARY_BYTES:
                raise ValueError(f'{info.filename} is {info.file_size} bytes, larger than the '
                                 f'{MAX_LIBRARY_BYTES >> 20} MiB a library may be here')
        total = sum(info.file_size for info in libraries)
        if total > MAX_WHEEL_BYTES:
            raise ValueError(f'its libraries are {total} bytes together, more than the '
                             f'{MAX_WHEEL_BYTES >> 20} MiB read here')
        for info in libraries:
            with archive.open(info) as member:
                codes = gpu_code(member, info.file_size)
                _check_whole(member, info)
            if codes:
                found[info.filename] = codes
    return found


def _check_whole(member, info: zipfile.ZipInfo) -> None:
    """Raise ValueError if the member does not hold the size its entry gives."""
    member.seek(max(0, info.file_size - 1))
    if len(member.read(2)) != (1 if info.file_size else 0):
        raise ValueError(f'{info.filename} does not hold the {info.file_size} bytes the '
                         'archive gives')


def check_wheel(wheel: Path, compute_capability: str) -> str:
    """
    Say which GPU code of the wheel a GPU of this capability runs; raise ValueError if none.

    Every library that carries GPU code must have some for the device: the CUDA kernels of
    onnxruntime-genai (sampling, beam search, ...) are spread over them.
    """
    libraries = wheel_gpu_code(wheel)
    label = f'sm_{compute_capability}'
    if not libraries:
        raise ValueError(f'{Path(wheel).name} holds no GPU code in any shared library: '
                         'it is not a CUDA build')
    used = []
    for name, codes in libraries.items():
        code = runs_on(codes, compute_capability)
        if code is None:
            raise ValueError(f'{Path(wheel).name} has no GPU code for this GPU ({label}): '
                             f'{name} has only {", ".join(map(str, codes))}; its kernels would '
                             "fail with 'no kernel image is available for execution on the "
                             "device'")
        used.append(f'{name.rsplit("/", 1)[-1]}: {code}')
    return f'GPU code for {label}: ' + '; '.join(used)
