"""
Version tables: onnxruntime-genai releases, the ONNX Runtime each needs, JetPack releases.

Sources (checked when the tables were written; see docs/jetson.md):

- ``min_ort``: the ``onnxruntime-gpu>=`` requirement in the metadata of each
  ``onnxruntime-genai-cuda`` release on PyPI (the ONNX Runtime the release was built and tested
  against).
- ``commit``: the commit of the release tag ``v<version>`` in
  github.com/microsoft/onnxruntime-genai; the builder clones that tag and refuses any other commit.
- ``cmake_min``: ``cmake_minimum_required`` of the release's CMakeLists.txt (3.26 in 0.4, 3.28
  since 0.5).
- ``phi3v_export``: 0.5 re-designed Phi-3-vision support (onnxruntime-genai PR #882); releases
  before it read the May-2024 exports, later ones the Nov-2024 re-exports.
- ``ORT_SOURCE_ARCHIVES``: sha256 of
  github.com/microsoft/onnxruntime/archive/refs/tags/v<version>.tar.gz, as pinned by the
  conda-forge onnxruntime feedstock (recipe/meta.yaml).
- JetPack table: NVIDIA's JetPack / Jetson Linux release notes (L4T R35 = JetPack 5.x with CUDA
  11.4, R36.2/36.3 = JetPack 6.0 with CUDA 12.2, R36.4 = JetPack 6.1/6.2 with CUDA 12.6, R38 =
  JetPack 7 with CUDA 13).

onnxruntime-genai loads ``libonnxruntime.so`` at run time and asks it for the C API version it was
compiled against (ORT_API_VERSION, the minor number of the ONNX Runtime release whose headers it
used), falling back to older ones down to 18. So the ONNX Runtime library used at run time must be
at least as new as the headers used at build time, and those must be at least the release's
``min_ort``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

GENAI_REPO_URL = 'https://github.com/microsoft/onnxruntime-genai'
ORT_ARCHIVE_URL = 'https://github.com/microsoft/onnxruntime/archive/refs/tags/v{version}.tar.gz'


# onnxruntime-genai builds guidance (llguidance, a Rust library: constrained answers) from 0.8,
# when build.py is given --use_guidance
GUIDANCE_SINCE = (0, 8)


def parse_version(text: str) -> Tuple[int, ...]:
    """
    Parse a version: '1.22.0' -> (1, 22, 0); '12.6' -> (12, 6).

    Non-numeric suffixes ('0.16.0-dev') are dropped.
    """
    parts = []
    for piece in str(text).strip().split('.'):
        digits = ''
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def version_at_least(version: str, minimum: str) -> bool:
    have, need = parse_version(version), parse_version(minimum)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def ort_api_version(ort_version: str) -> int:
    """Return the C API version an ONNX Runtime release provides: its minor (1.22.x -> 22)."""
    parts = parse_version(ort_version)
    if len(parts) < 2 or parts[0] != 1:
        raise ValueError(f'not an ONNX Runtime 1.x version: {ort_version!r}')
    return parts[1]


@dataclass(frozen=True)
class GenaiRelease:
    version: str
    # commit of tag v<version>; None: not pinned here (give --genai-commit)
    commit: Optional[str]
    min_ort: str                   # onnxruntime-gpu>= of the PyPI release
    cmake_min: str = '3.28'
    phi3v_export: str = 'nov2024'  # which published Phi-3-vision ONNX export this release reads
    # 0.4 builds C# unless --skip_csharp; later releases need --build_csharp
    skip_csharp_flag: bool = False
    skip_examples_flag: bool = True  # --skip_examples exists since 0.9

    @property
    def ort_api(self) -> int:
        return ort_api_version(self.min_ort)

    @property
    def cuda_cxx_standard(self) -> int:
        """
        Return the C++ standard of this release's CUDA build (cmake/cxx_standard.cmake).

        Up to 0.11 a build with CUDA is C++17; from 0.12 it is C++20 like the others (with GCC
        10 or newer; an older GCC gets a C++17 fallback the release does not test its CUDA build
        with).
        """
        return 17 if parse_version(self.version) < (0, 12) else 20

    @property
    def min_gcc(self) -> str:
        """Return the oldest GCC for the CUDA build: 9 for C++17 (<filesystem>), 10 for C++20."""
        return '9' if self.cuda_cxx_standard == 17 else '10'


GENAI_RELEASES: Tuple[GenaiRelease, ...] = (
    GenaiRelease('0.4.0', 'b77e76855c735b95a5a9f6f45dbdc54b16003db0', '1.19.0', cmake_min='3.26',
                 phi3v_export='may2024', skip_csharp_flag=True, skip_examples_flag=False),
    GenaiRelease('0.5.2', '27bcf6c5e94bff5d6b44e7feb8090b55521d7808', '1.20.1',
                 skip_examples_flag=False),
    GenaiRelease('0.6.0', '97d44f6cc438e41c8876ff92716c628519d62ba6', '1.20.1',
                 skip_examples_flag=False),
    GenaiRelease('0.7.1', 'efab0818081be3ea9c95af3267e5f5cf94a8fd7f', '1.21.0',
                 skip_examples_flag=False),
    GenaiRelease('0.8.3', 'dc2d850790a61efcf7b5098144df90344ad19d6e', '1.22.0',
                 skip_examples_flag=False),
    GenaiRelease('0.9.2', 'fc6f8d7e7079c6a749a7a46910502fae57afa12c', '1.22.0'),
    GenaiRelease('0.10.0', '6deb570f75adb833780dfd3a1882446a0cd4a93f', '1.23.0'),
    GenaiRelease('0.11.4', 'a8a6136854e9de6128ae99d930258b586555ed23', '1.23.2'),
    GenaiRelease('0.12.2', '935d4267453cfdd32b6eae6df10a632066ab0132', '1.24.1'),
    GenaiRelease('0.13.2', '53deb8925fb59c0d7c077713b7f5fdc5ad65ff3b', '1.25.1'),
    GenaiRelease('0.14.0', 'b7a6ec307bea84e3b64aa33d59bcad817122d9af', '1.26.0'),
    GenaiRelease('0.15.2', 'ed5f4e87147731e5b07810f9f5c90103b3603cdf', '1.28.0'),
    GenaiRelease('0.16.0', None, '1.30.0'),
    GenaiRelease('0.17.1', None, '1.30.0'),
    GenaiRelease('0.18.0', None, '1.31.0'),
)

# The default pair: onnxruntime-genai 0.9.2 reads the re-exported Phi-3-vision folders, has every
# API the engine uses (Config.overlay, Images.open_bytes, Generator.set_inputs), and needs ONNX
# Runtime 1.22, for which onnxruntime-gpu builds exist for JetPack 6 (CUDA 12.6).
DEFAULT_GENAI = '0.9.2'
DEFAULT_ORT = '1.22.0'
# The oldest release the package supports: 0.5 re-designed Phi-3-vision support and reads the
# Nov-2024 re-exported models; the engine handles the API differences from 0.5 on.
OLDEST_SUPPORTED_GENAI = '0.5.0'

# GitHub source archives of ONNX Runtime releases (headers only are used): version -> sha256.
ORT_SOURCE_ARCHIVES = {
    '1.18.0': '630612317ea9eeba2a8ce57b9b553f86d46b2ee7966dd9c23af9a04629b8087b',
    '1.18.1': '480ff5d2450ff18d02db48908c9c0c6a602993942cb47866b8effe32d0469a2c',
    '1.19.2': '870ee3772d265d1c7b0799ac7280071f8ecd55b11ee3f11868a3e79c7f4cab0f',
    '1.20.1': 'd4c005506a2bbf88a838b14f8d1578406b8be2fb64abb50beeff908fb272529e',
    '1.21.1': 'afd53e380d534c5285598f0010b9fe99c6c05ea83de11bddf3b9d51686746a03',
    '1.22.0': '08b078eb7afbf376064b2b0f1781e3d78151cac0592988a0c0ec78bf72fde810',
    '1.22.1': '9eacbf624d6f7466da81d9beb4399cb8683808b15c1276b7cd56c6907bf59f77',
    '1.22.2': '6f82b949636df0c964cc6f1ef4f1b39b397dce456f92b204d87b46d258687b41',
    '1.24.1': '65bc043f5c1f386fc3e04aa2efdab91ac53f5195d4f78fc7e22eb0fe9caeadc6',
    '1.24.2': 'e4f44579f0bdd06d1cc7abdb2a6740dc06ac10699d502c0f8d9576203550bd4d',
    '1.24.4': '0cf4d2ee4392fbb8aedaabc6b2ba11b4a680d1071fa4f75546c2289ca5b404cf',
    '1.25.1': 'b0c49a093976bf84f099a19aa13a46bd1d213e1d13b34ffe3b0916657209a844',
    '1.26.0': '2a90eb9a306c1eeb29213f5b165a55008ac5cb7d27e0935c4458c51a49ef091d',
}


@dataclass(frozen=True)
class JetPackRelease:
    # Jetson Linux release, e.g. '36.4.3' (a prefix matches: '36.4' covers 36.4.x)
    l4t: str
    jetpack: str
    cuda: str           # the CUDA toolkit JetPack installs
    ubuntu: str
    python: str         # Ubuntu's python3, which ROS 2 binary packages use
    ros_distro: str


JETPACK_RELEASES: Tuple[JetPackRelease, ...] = (
    JetPackRelease('32', '4.x', '10.2', '18.04', '3.6', 'none (ROS 2 needs Ubuntu 20.04+)'),
    JetPackRelease('34.1', '5.0 DP', '11.4', '20.04', '3.8', 'foxy'),
    JetPackRelease('35.1.0', '5.0.2', '11.4', '20.04', '3.8', 'foxy'),
    JetPackRelease('35.2.1', '5.1', '11.4', '20.04', '3.8', 'foxy'),
    JetPackRelease('35.3.1', '5.1.1', '11.4', '20.04', '3.8', 'foxy'),
    JetPackRelease('35.4.1', '5.1.2', '11.4', '20.04', '3.8', 'foxy'),
    JetPackRelease('35.5.0', '5.1.3', '11.4', '20.04', '3.8', 'foxy'),
    JetPackRelease('35.6.0', '5.1.4', '11.4', '20.04', '3.8', 'foxy'),
    JetPackRelease('35', '5.1.x', '11.4', '20.04', '3.8', 'foxy'),
    JetPackRelease('36.2', '6.0 DP', '12.2', '22.04', '3.10', 'humble'),
    JetPackRelease('36.3', '6.0', '12.2', '22.04', '3.10', 'humble'),
    JetPackRelease('36.4.0', '6.1', '12.6', '22.04', '3.10', 'humble'),
    JetPackRelease('36.4.3', '6.2', '12.6', '22.04', '3.10', 'humble'),
    JetPackRelease('36.4.4', '6.2.1', '12.6', '22.04', '3.10', 'humble'),
    JetPackRelease('36', '6.x', '12.6', '22.04', '3.10', 'humble'),
    JetPackRelease('38.2', '7.0', '13.0', '24.04', '3.12', 'jazzy'),
    JetPackRelease('38.4', '7.1', '13.0', '24.04', '3.12', 'jazzy'),
    JetPackRelease('38', '7.x', '13.0', '24.04', '3.12', 'jazzy'),
)

# Where onnxruntime-gpu for each JetPack comes from (a hint in error messages; not downloaded by
# the tool).
ORT_GPU_HINTS = {
    5: 'JetPack 5 has CUDA 11.4, and its onnxruntime-gpu builds (1.16 and older) are older than '
       'any onnxruntime-genai release needs: upgrade the Jetson to JetPack 6',
    6: 'python3 -m pip install onnxruntime-gpu=={ort} --index-url '
       'https://pypi.jetson-ai-lab.io/jp6/cu126 (JetPack 6.1/6.2, CUDA 12.6), or install the '
       'onnxruntime_gpu wheel of your own ONNX Runtime build',
    7: 'install an onnxruntime-gpu {ort} (or newer) build for CUDA 13 (for example from '
       'jetson-containers), or the onnxruntime_gpu wheel of your own ONNX Runtime build',
}


def jetpack_for_l4t(l4t: Optional[str]) -> Optional[JetPackRelease]:
    """
    Return the JetPack release of a Jetson Linux version ('36.4.3').

    The longest matching prefix wins.
    """
    if not l4t:
        return None
    have = parse_version(l4t)
    best = None
    for release in JETPACK_RELEASES:
        prefix = parse_version(release.l4t)
        if have[:len(prefix)] == prefix and \
                (best is None or len(prefix) > len(parse_version(best.l4t))):
            best = release
    return best


def find_release(version: str) -> Optional[GenaiRelease]:
    """Return the table row for '0.9.2', or the newest patch of a minor given as '0.9'."""
    wanted = parse_version(version)
    matches = [r for r in GENAI_RELEASES if parse_version(r.version)[:len(wanted)] == wanted]
    return matches[-1] if matches else None


def default_release() -> GenaiRelease:
    release = find_release(DEFAULT_GENAI)
    assert release is not None
    return release


def ort_archive_for(api_version: int, at_most: Optional[str] = None) -> Optional[str]:
    """
    Return a pinned ONNX Runtime source archive with the given C API version (minor).

    The newest patch comes first.
    """
    candidates = [v for v in ORT_SOURCE_ARCHIVES if ort_api_version(v) == api_version
                  and (at_most is None or version_at_least(at_most, v))]
    candidates.sort(key=parse_version)
    return candidates[-1] if candidates else None


class VersionError(ValueError):
    """The requested versions cannot work together; the message says what to do."""


@dataclass(frozen=True)
class VersionChoice:
    genai: GenaiRelease
    # the ONNX Runtime the build targets (headers and, at run time, the library)
    ort: str
    reason: str


def newest_compatible(
        ort_version: str,
        releases: Sequence[GenaiRelease] = GENAI_RELEASES) -> Optional[GenaiRelease]:
    """Return the newest supported release whose ONNX Runtime requirement ``ort_version`` meets."""
    usable = [r for r in releases if version_at_least(ort_version, r.min_ort)
              and version_at_least(r.version, OLDEST_SUPPORTED_GENAI) and r.commit]
    return usable[-1] if usable else None


def choose_versions(found_ort: Optional[str] = None, genai: Optional[str] = None,
                    ort: Optional[str] = None,
                    genai_commit: Optional[str] = None) -> VersionChoice:
    """
    Pick the onnxruntime-genai release and the ONNX Runtime to build against.

    ``found_ort``: the version of the ONNX Runtime libraries that were found (None: none found
    yet); ``genai`` / ``ort``: the --genai-version / --ort-version overrides.
    Raises VersionError for a combination that cannot work.
    """
    target_ort = ort or found_ort
    if genai:
        release = find_release(genai)
        if release is None:
            if not (genai_commit and ort):
                raise VersionError(
                    f'onnxruntime-genai {genai} is not in the version table; give its tag commit '
                    'with --genai-commit SHA and the ONNX Runtime it needs with '
                    '--ort-version X.Y.Z')
            release = GenaiRelease(genai, genai_commit, ort)
        elif genai_commit:
            release = GenaiRelease(release.version, genai_commit, release.min_ort,
                                   release.cmake_min, release.phi3v_export,
                                   release.skip_csharp_flag, release.skip_examples_flag)
        elif release.commit is None:
            raise VersionError(
                f'onnxruntime-genai {release.version} has no pinned tag commit here; give it with '
                f'--genai-commit SHA (the commit of tag v{release.version}), or use '
                f'--genai-version {DEFAULT_GENAI}')
        reason = f'--genai-version {genai}'
    elif target_ort and not version_at_least(target_ort, default_release().min_ort):
        release = newest_compatible(target_ort)
        if release is None:
            raise VersionError(
                f'ONNX Runtime {target_ort} is older than every supported onnxruntime-genai '
                f'release needs (0.5 needs 1.20.1; the default {DEFAULT_GENAI} needs '
                f'{DEFAULT_ORT}): install onnxruntime-gpu {DEFAULT_ORT} or newer')
        reason = (f'ONNX Runtime {target_ort} is older than the default pair needs, so the newest '
                  f'release that works with it')
    else:
        release = default_release()
        reason = f'default pair (onnxruntime-genai {DEFAULT_GENAI} + ONNX Runtime {DEFAULT_ORT})'
    if not version_at_least(release.version, OLDEST_SUPPORTED_GENAI):
        raise VersionError(
            f'onnxruntime-genai {release.version} reads only the May-2024 Phi-3-vision exports '
            f'and predates the API this package uses; choose {OLDEST_SUPPORTED_GENAI} or newer '
            f'(default {DEFAULT_GENAI})')
    chosen_ort = target_ort or release.min_ort
    if not version_at_least(chosen_ort, release.min_ort):
        raise VersionError(
            f'onnxruntime-genai {release.version} needs the C API of ONNX Runtime '
            f'{release.min_ort} or newer, but ONNX Runtime {chosen_ort} was given: install '
            f'onnxruntime-gpu {release.min_ort} or newer, or choose an older --genai-version (the '
            f'newest for {chosen_ort} is {_newest_label(chosen_ort)})')
    return VersionChoice(release, chosen_ort, reason)


def _newest_label(ort_version: str) -> str:
    release = newest_compatible(ort_version)
    return release.version if release else 'none'


def table_rows() -> List[Tuple[str, str, str, str, str]]:
    """(genai, min ORT, ORT C API, CMake, Phi-3-vision export) for --list-versions and the docs."""
    rows = []
    for r in GENAI_RELEASES:
        export = 'May-2024 (cuda-int4-rtn-block-32)' if r.phi3v_export == 'may2024' else \
            'Nov-2024 (gpu/gpu-int4-rtn-block-32)'
        rows.append((r.version, r.min_ort, str(r.ort_api), r.cmake_min, export))
    return rows
