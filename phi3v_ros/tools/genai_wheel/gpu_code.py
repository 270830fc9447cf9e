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
from pathlib import Path
import struct
from typing import Dict, Iterable, List, Optional
import zipfile

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_CUBIN = 1, 2
SECTION_NAMES = (b'.nv_fatbin', b'__nv_relfatbin')


@dataclass(frozen=True)
class GpuCode:
    kind: str       # 'sass' (machine code) or 'ptx'
    arch: int       # 87 for sm_87 / compute_87

    def __str__(self) -> str:
        return f'sm_{self.arch}' if self.kind == 'sass' else f'compute_{self.arch} (PTX)'


def _sections(data: bytes) -> Iterable[memoryview]:
    """
    Yield the fatbin sections of a 64-bit little-endian ELF file (nothing for anything else).

    ``data`` may be an mmap: the sections are views, not copies (a CUDA provider library is
    mostly fatbin, hundreds of MB, read on boards with 8 GB).
    """
    if len(data) < 64 or data[:4] != b'\x7fELF' or data[4] != 2 or data[5] != 1:
        return
    shoff, = struct.unpack_from('<Q', data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', data, 0x3A)
    if not shoff or shentsize < 64 or shoff + shnum * shentsize > len(data) or shstrndx >= shnum:
        return
    headers = [struct.unpack_from('<IIQQQQ', data, shoff + i * shentsize) for i in range(shnum)]
    names_offset = headers[shstrndx][4]
    for name, kind, _flags, _addr, offset, size in headers:
        start = names_offset + name
        label = data[start:data.find(b'\0', start)]
        if label in SECTION_NAMES and kind != 8 and offset + size <= len(data):   # 8: NOBITS
            yield memoryview(data)[offset:offset + size]


def fatbin_entries(section) -> List[GpuCode]:
    """Return the code entries of the fatbin blobs in one section."""
    codes: List[GpuCode] = []
    pos = 0
    while pos + 16 <= len(section):
        magic, _version, header_size, fat_size = struct.unpack_from('<IHHQ', section, pos)
        if magic != FATBIN_MAGIC or header_size < 16:
            # blobs are 8-byte aligned; padding between them is zeros
            pos += 8
            continue
        entry, end = pos + header_size, min(pos + header_size + fat_size, len(section))
        while entry + 32 <= end:
            kind, _ever, entry_header, payload = struct.unpack_from('<HHIQ', section, entry)
            arch, = struct.unpack_from('<I', section, entry + 28)
            if entry_header < 32:
                break
            if kind in (KIND_PTX, KIND_CUBIN):  # other kinds (e.g. LTO IR) are no code to run
                code = GpuCode('ptx' if kind == KIND_PTX else 'sass', arch)
                if code not in codes:
                    codes.append(code)
            entry += entry_header + payload
        # the next blob starts 8-byte aligned after this one
        pos += (header_size + fat_size + 7) // 8 * 8
    return codes


def gpu_code(data) -> List[GpuCode]:
    """Return every GPU code entry of an ELF shared library (bytes or mmap), without repeats."""
    codes: List[GpuCode] = []
    for section in _sections(data):
        for code in fatbin_entries(section):
            if code not in codes:
                codes.append(code)
    return codes


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
    """Return, for each shared library in the wheel that holds GPU code, its entries."""
    found = {}
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            name = info.filename
            if not (name.endswith('.so') or '.so.' in name.rsplit('/', 1)[-1]):
                continue
            codes = gpu_code(archive.read(info))
            if codes:
                found[name] = codes
    return found


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
