# noqa: A005 - the module name is public (plan, checks, runner, tests); stdlib's is _platform here
"""
Platform detection for the wheel builder, through an injectable ``Probe``.

Every file is read under ``Probe.root`` and every command goes through ``Probe.run``, so tests
point the probe at fixture trees (``test/fixtures/jetson/...``) and fake command outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import json
import os
from pathlib import Path
import platform as _platform
import re
import shutil
import subprocess
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from .cuda_libs import toolkit_missing
from .versions import jetpack_for_l4t, JetPackRelease, parse_version

GIB = 1024 ** 3


@dataclass
class CommandResult:
    returncode: int
    stdout: str = ''
    stderr: str = ''


def run_command(argv: Sequence[str], timeout: float = 60.0) -> CommandResult:
    """Run a short probe command; never raises (a missing program gives returncode 127)."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False)
    except FileNotFoundError as exc:
        return CommandResult(127, '', str(exc))
    except (OSError, subprocess.SubprocessError) as exc:
        return CommandResult(126, '', str(exc))
    return CommandResult(done.returncode, done.stdout, done.stderr)


def free_disk_bytes(path: Path) -> Optional[int]:
    """Free bytes on the file system that holds path, or its nearest existing parent folder."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


class Probe:
    """
    Reads the machine.

    Files are read under ``root``, commands go through ``run``, the environment is ``env``.
    """

    def __init__(self, root: os.PathLike = Path('/'),
                 run: Callable[[Sequence[str]], CommandResult] = None,
                 env: Optional[Mapping[str, str]] = None, machine: Optional[str] = None,
                 cpu_count: Optional[int] = None):
        self.root = Path(root)
        self.run = run or run_command
        self.env = dict(os.environ if env is None else env)
        self.machine = machine or _platform.machine()
        self.cpu_count = cpu_count or os.cpu_count() or 1

    def path(self, absolute: str) -> Path:
        return self.root / str(absolute).lstrip('/')

    def real(self, path: Path) -> str:
        """Show a path under root as the path on the probed machine."""
        try:
            return ('/' + str(Path(path).relative_to(self.root)).lstrip('/')
                    if str(self.root) != '/' else str(path))
        except ValueError:
            return str(path)

    def read_text(self, absolute: str) -> Optional[str]:
        try:
            return self.path(absolute).read_text(encoding='utf-8', errors='replace')
        except OSError:
            return None

    def read_bytes(self, absolute: str) -> Optional[bytes]:
        try:
            return self.path(absolute).read_bytes()
        except OSError:
            return None

    def which(self, name: str) -> Optional[str]:
        for folder in self.env.get('PATH', '').split(os.pathsep):
            if not folder:
                continue
            candidate = self.path(folder) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(Path(folder) / name)
        return None

    def disk_free(self, absolute: str) -> Optional[int]:
        return free_disk_bytes(self.path(absolute))


@dataclass
class CudaInstall:
    path: str           # on the probed machine, e.g. /usr/local/cuda-12.6
    version: str        # e.g. 12.6.68

    @property
    def major(self) -> int:
        return parse_version(self.version)[0]


@dataclass
class PythonInfo:
    path: str
    source: str                         # how it was chosen
    version: Optional[str] = None
    include_dir: Optional[str] = None
    has_dev_headers: bool = False
    has_pip: bool = False
    in_venv: bool = False
    externally_managed: bool = False
    is_root: bool = False
    # of numpy, onnx, tokenizers, cv2, requests, setuptools, wheel: those importable
    modules: List[str] = field(default_factory=list)
    error: Optional[str] = None


@dataclass
class OrtRuntime:
    """
    The onnxruntime Python package in the ROS interpreter.

    onnxruntime-genai loads it at run time.
    """

    version: str
    providers: List[str]
    capi_dir: str

    @property
    def has_cuda(self) -> bool:
        return 'CUDAExecutionProvider' in self.providers


@dataclass
class Platform:
    machine: str
    is_jetson: bool
    l4t: Optional[str] = None
    jetpack: Optional[JetPackRelease] = None
    board: Optional[str] = None
    soc: Optional[str] = None
    ubuntu: Optional[str] = None
    cuda_installs: List[CudaInstall] = field(default_factory=list)
    cuda: Optional[CudaInstall] = None
    cuda_reason: str = ''
    compute_capability: Optional[str] = None
    cc_source: str = ''
    python: Optional[PythonInfo] = None
    ros_distro: Optional[str] = None
    gcc: Optional[str] = None
    cmake: Optional[str] = None
    cmake_path: Optional[str] = None
    git: Optional[str] = None
    cargo: Optional[str] = None     # Rust's cargo version: builds guidance (constrained answers)
    docker: Optional[str] = None
    mem_total: Optional[int] = None
    mem_available: Optional[int] = None
    swap_free: Optional[int] = None
    cpu_count: int = 1
    disk_free: Optional[int] = None
    ort_runtime: Optional[OrtRuntime] = None
    ort_runtime_error: Optional[str] = None
    cudnn_majors: List[int] = field(default_factory=list)
    # the headers and libraries the build links that the CUDA toolkit lacks (cuda_libs)
    cuda_missing: List[str] = field(default_factory=list)
    synthetic: bool = False             # a --target preset, not this machine

    @property
    def jetpack_major(self) -> Optional[int]:
        if self.jetpack is None:
            return None
        parts = parse_version(self.jetpack.jetpack)
        return parts[0] if parts else None

    def summary(self) -> List[str]:
        """List what was found, one item a line, for printing before anything else."""
        def gib(value):
            return 'unknown' if value is None else f'{value / GIB:.1f} GiB'
        jp = f'JetPack {self.jetpack.jetpack} (L4T R{self.l4t})' if self.jetpack else \
            (f'L4T R{self.l4t}' if self.l4t else 'not a Jetson')
        lines = [
            f'architecture     {self.machine}',
            f'Jetson release   {jp}' + (f' (OS version {self.ubuntu})' if self.ubuntu else ''),
            f'board            {self.board or "unknown"}' + (f' ({self.soc})' if self.soc else ''),
            f'GPU              compute capability {_cc_label(self.compute_capability)}'
            + (f' ({self.cc_source})' if self.cc_source else ''),
        ]
        if self.cuda_installs:
            for install in self.cuda_installs:
                mark = '*' if self.cuda and install.path == self.cuda.path else ' '
                lines.append(f'CUDA           {mark} {install.version} at {install.path}')
            if self.cuda:
                lines.append(f'                 using {self.cuda.path}: {self.cuda_reason}')
        else:
            lines.append('CUDA             none found under /usr/local')
        py = self.python
        if py:
            lines.append(f'ROS Python       {py.path} ({py.version or "version unknown"}; '
                         f'{py.source})')
        lines.append(f'ROS distro       {self.ros_distro or "none sourced/installed"}')
        if self.ort_runtime:
            rt = self.ort_runtime
            lines.append(f'onnxruntime      {rt.version} in ROS Python, providers: '
                         f'{", ".join(rt.providers)}')
        else:
            lines.append('onnxruntime      not importable in ROS Python'
                         + (f' ({self.ort_runtime_error})' if self.ort_runtime_error else ''))
        lines += [
            f'GCC              {self.gcc or "not found"}',
            f'CMake            {self.cmake or "not found"}'
            + (f' ({self.cmake_path})' if self.cmake_path else ''),
            f'git / docker     {"yes" if self.git else "no"} / {"yes" if self.docker else "no"}',
            f'Rust (cargo)     {self.cargo or "not found"}',
            f'memory           {gib(self.mem_available)} available of {gib(self.mem_total)}, '
            f'swap free {gib(self.swap_free)}, {self.cpu_count} CPUs',
            f'disk free        {gib(self.disk_free)} in the work folder',
        ]
        return lines


def _cc_label(cc: Optional[str]) -> str:
    if not cc:
        return 'unknown'
    return f'{cc[:-1]}.{cc[-1]} (sm_{cc})'


# ----------------------------------------------------------------------------------------- parsing

_TEGRA_RE = re.compile(r'#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)', re.IGNORECASE)


def parse_nv_tegra_release(text: str) -> Optional[str]:
    """
    Read the L4T version in /etc/nv_tegra_release.

    '# R36 (release), REVISION: 4.3, ...' -> '36.4.3';
    '# R35 (release), REVISION: 4.1' -> '35.4.1'.
    """
    match = _TEGRA_RE.search(text or '')
    if not match:
        return None
    major, revision = match.group(1), match.group(2).strip('.')
    parts = [p for p in revision.split('.') if p != '']
    while len(parts) < 2:
        parts.append('0')
    return '.'.join([major] + parts)


def parse_l4t_core_version(dpkg_status: str) -> Optional[str]:
    """
    Read the nvidia-l4t-core package version in /var/lib/dpkg/status.

    '36.4.3-2025...' -> '36.4.3'.
    """
    for block in (dpkg_status or '').split('\n\n'):
        if re.search(r'^Package:\s*nvidia-l4t-core\s*$', block, re.MULTILINE):
            match = re.search(r'^Version:\s*([0-9][0-9.]*)', block, re.MULTILINE)
            if match:
                return match.group(1).rstrip('.')
    return None


def parse_cuda_version(version_json: Optional[str], version_txt: Optional[str]) -> Optional[str]:
    """version.json ({"cuda": {"version": "12.6.68"}}) or version.txt ('CUDA Version 10.2.300')."""
    if version_json:
        try:
            data = json.loads(version_json)
            version = (data.get('cuda') or {}).get('version')
            if version:
                return str(version)
        except (ValueError, AttributeError):
            pass
    if version_txt:
        match = re.search(r'CUDA Version\s+([0-9.]+)', version_txt)
        if match:
            return match.group(1)
    return None


def parse_nvcc_version(output: str) -> Optional[str]:
    """Parse nvcc --version: 'Cuda compilation tools, release 12.6, V12.6.68' -> '12.6.68'."""
    match = re.search(r'release\s+[0-9.]+,\s*V([0-9.]+)', output or '')
    if match:
        return match.group(1)
    match = re.search(r'release\s+([0-9.]+)', output or '')
    return match.group(1) if match else None


def parse_first_version(output: str) -> Optional[str]:
    """
    Return the first dotted version in a --version output.

    E.g. 'gcc (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0' -> '11.4.0'.
    """
    match = re.search(r'\)\s*(\d+\.\d+(?:\.\d+)?)', output or '') or \
        re.search(r'(\d+\.\d+(?:\.\d+)?)', output or '')
    return match.group(1) if match else None


def parse_meminfo(text: str) -> Dict[str, int]:
    values = {}
    for line in (text or '').splitlines():
        match = re.match(r'(\w+):\s+(\d+)\s*kB', line)
        if match:
            values[match.group(1)] = int(match.group(2)) * 1024
    return values


# compute capability by Tegra SoC (device-tree compatible string)
SOC_COMPUTE_CAPABILITY = {
    'tegra264': '110',  # Thor (sm_110 from CUDA 13; sm_101 before)
    'tegra234': '87',   # Orin (AGX Orin, Orin NX, Orin Nano)
    'tegra194': '72',   # Xavier (AGX Xavier, Xavier NX)
    'tegra186': '62',   # TX2
    'tegra210': '53',   # Nano, TX1
}


def parse_device_tree_compatible(data: Optional[bytes]) -> Optional[str]:
    if not data:
        return None
    for entry in data.split(b'\0'):
        text = entry.decode('ascii', errors='replace')
        match = re.match(r'nvidia,(tegra\d+)$', text)
        if match:
            return match.group(1)
    return None


# ----------------------------------------------------------------------------------------- probing

def detect_l4t(probe: Probe) -> Optional[str]:
    l4t = parse_nv_tegra_release(probe.read_text('/etc/nv_tegra_release') or '')
    if l4t:
        return l4t
    return parse_l4t_core_version(probe.read_text('/var/lib/dpkg/status') or '')


def detect_cuda_installs(probe: Probe) -> List[CudaInstall]:
    """
    Find every CUDA toolkit under /usr/local (cuda, cuda-X.Y), by resolved folder.

    Each comes with its version.
    """
    installs: Dict[str, CudaInstall] = {}
    base = probe.path('/usr/local')
    candidates = sorted(base.glob('cuda-*')) + [base / 'cuda'] if base.is_dir() else []
    for folder in candidates:
        if not (folder / 'bin' / 'nvcc').exists():
            continue
        resolved = folder.resolve()
        key = str(resolved)
        if key in installs:
            continue
        real = probe.real(folder) if not folder.is_symlink() else probe.real(resolved)
        version = parse_cuda_version(_read(folder / 'version.json'), _read(folder / 'version.txt'))
        if not version:
            result = probe.run([str(Path(real) / 'bin' / 'nvcc'), '--version'])
            version = parse_nvcc_version(result.stdout) if result.returncode == 0 else None
        if not version:
            match = re.search(r'cuda-(\d+\.\d+)', real)
            version = match.group(1) if match else 'unknown'
        installs[key] = CudaInstall(real, version)
    return sorted(installs.values(), key=lambda c: parse_version(c.version))


def choose_cuda(probe: Probe, installs: List[CudaInstall],
                requested: Optional[str] = None) -> (Optional[CudaInstall], str):
    if not installs:
        return None, 'no CUDA toolkit found'
    by_path = {i.path: i for i in installs}
    if requested:
        for install in installs:
            if install.path.rstrip('/') == requested.rstrip('/') or \
                    install.version.startswith(requested):
                return install, '--cuda-home'
        return None, f'--cuda-home {requested} is not a CUDA toolkit (no bin/nvcc)'
    for var in ('CUDA_PATH', 'CUDA_HOME'):
        value = probe.env.get(var)
        if value:
            folder = probe.path(value)
            real = probe.real(folder.resolve()) if folder.exists() else value
            if real in by_path:
                return by_path[real], f'${var}'
    link = probe.path('/usr/local/cuda')
    if link.exists():
        real = probe.real(link.resolve())
        if real in by_path:
            return by_path[real], '/usr/local/cuda points to it'
    return installs[-1], 'the newest installed'


def detect_compute_capability(
        probe: Probe, requested: Optional[str] = None) -> (Optional[str], str, Optional[str]):
    """(compute capability like '87', how it was found, SoC name)."""
    soc = parse_device_tree_compatible(probe.read_bytes('/proc/device-tree/compatible'))
    if requested:
        return requested.replace('.', '').replace('sm_', ''), '--cuda-arch', soc
    if soc in SOC_COMPUTE_CAPABILITY:
        return SOC_COMPUTE_CAPABILITY[soc], f'device tree: {soc}', soc
    result = probe.run(['nvidia-smi', '--query-gpu=compute_cap', '--format=csv,noheader'])
    if result.returncode == 0:
        match = re.search(r'(\d+)\.(\d+)', result.stdout)
        if match:
            return match.group(1) + match.group(2), 'nvidia-smi', soc
    return None, '', soc


PYTHON_PROBE = r"""
import json, os, sys, sysconfig, importlib.util
info = {"version": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable}
inc = sysconfig.get_paths().get("include") or ""
info["include_dir"] = inc
info["has_dev_headers"] = os.path.exists(os.path.join(inc, "Python.h"))
info["has_pip"] = importlib.util.find_spec("pip") is not None
info["in_venv"] = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
stdlib = sysconfig.get_paths().get("stdlib") or ""
info["externally_managed"] = os.path.exists(os.path.join(stdlib, "EXTERNALLY-MANAGED"))
info["is_root"] = hasattr(os, "geteuid") and os.geteuid() == 0
info["modules"] = [m for m in ("numpy", "onnx", "tokenizers", "cv2", "requests", "setuptools",
                                "wheel")
                   if importlib.util.find_spec(m) is not None]
try:
    import onnxruntime as ort
    info["ort"] = {"version": ort.__version__, "providers": list(ort.get_available_providers()),
                   "capi_dir": os.path.join(os.path.dirname(ort.__file__), "capi")}
except Exception as exc:
    info["ort_error"] = "%s: %s" % (type(exc).__name__, exc)
print("PHI3V_PROBE " + json.dumps(info))
"""


def detect_ros_python(probe: Probe, requested: Optional[str] = None) -> (str, str, Optional[str]):
    """(interpreter path, how it was chosen, ROS distro)."""
    distro = probe.env.get('ROS_DISTRO')
    ros_root = probe.path('/opt/ros')
    if not distro and ros_root.is_dir():
        distros = sorted(p.name for p in ros_root.iterdir() if (p / 'setup.bash').exists())
        distro = distros[-1] if distros else None
    if requested:
        return requested, '--python', distro
    if distro:
        ros2 = probe.path(f'/opt/ros/{distro}/bin/ros2')
        head = _read(ros2)
        if head and head.startswith('#!'):
            interpreter = head.splitlines()[0][2:].strip().split()[0]
            if interpreter and not interpreter.endswith('/env'):
                return interpreter, f'the interpreter of /opt/ros/{distro}/bin/ros2', distro
    for candidate in ('/usr/bin/python3',):
        if probe.path(candidate).exists():
            return candidate, 'system python3 (ROS 2 binary packages use it)', distro
    found = probe.which('python3')
    return found or 'python3', 'python3 on PATH', distro


def detect_python(probe: Probe, path: str,
                  source: str) -> (PythonInfo, Optional[OrtRuntime], Optional[str]):
    info = PythonInfo(path=path, source=source)
    result = probe.run([path, '-c', PYTHON_PROBE])
    line = next((text for text in result.stdout.splitlines()
                 if text.startswith('PHI3V_PROBE ')), None)
    if result.returncode != 0 or line is None:
        output = result.stderr or result.stdout or 'no output'
        info.error = output.strip().splitlines()[-1:] or ['failed']
        info.error = info.error[0]
        return info, None, None
    data = json.loads(line[len('PHI3V_PROBE '):])
    info.version = data.get('version')
    info.include_dir = data.get('include_dir')
    info.has_dev_headers = bool(data.get('has_dev_headers'))
    info.has_pip = bool(data.get('has_pip'))
    info.in_venv = bool(data.get('in_venv'))
    info.externally_managed = bool(data.get('externally_managed'))
    info.is_root = bool(data.get('is_root'))
    info.modules = list(data.get('modules', []))
    runtime = None
    if data.get('ort'):
        ort = data['ort']
        runtime = OrtRuntime(ort['version'], list(ort.get('providers', [])), ort['capi_dir'])
    return info, runtime, data.get('ort_error')


def detect_cudnn_majors(probe: Probe, cuda: Optional[CudaInstall]) -> List[int]:
    folders = ['/usr/lib/aarch64-linux-gnu', '/usr/lib/x86_64-linux-gnu', '/usr/lib64']
    if cuda:
        folders += [f'{cuda.path}/lib64', f'{cuda.path}/targets/aarch64-linux/lib']
    majors = set()
    for folder in folders:
        base = probe.path(folder)
        if base.is_dir():
            for lib in base.glob('libcudnn.so.*'):
                match = re.match(r'libcudnn\.so\.(\d+)', lib.name)
                if match:
                    majors.add(int(match.group(1)))
    return sorted(majors)


def detect(probe: Probe, work_dir: str = '/tmp', python: Optional[str] = None,
           cuda_home: Optional[str] = None, cuda_arch: Optional[str] = None) -> Platform:
    """Everything the builder needs to know about this machine."""
    l4t = detect_l4t(probe)
    soc_bytes = probe.read_bytes('/proc/device-tree/compatible')
    is_jetson = bool(l4t) or parse_device_tree_compatible(soc_bytes) is not None
    plat = Platform(machine=probe.machine, is_jetson=is_jetson, l4t=l4t,
                    jetpack=jetpack_for_l4t(l4t), cpu_count=probe.cpu_count)
    model = probe.read_bytes('/proc/device-tree/model')
    if model:
        plat.board = model.split(b'\0')[0].decode('utf-8', errors='replace').strip() or None
    os_release = probe.read_text('/etc/os-release') or ''
    match = re.search(r'^VERSION_ID="?([0-9.]+)"?', os_release, re.MULTILINE)
    plat.ubuntu = match.group(1) if match else None
    plat.cuda_installs = detect_cuda_installs(probe)
    plat.cuda, plat.cuda_reason = choose_cuda(probe, plat.cuda_installs, cuda_home)
    plat.compute_capability, plat.cc_source, plat.soc = detect_compute_capability(probe, cuda_arch)
    path, source, plat.ros_distro = detect_ros_python(probe, python)
    plat.python, plat.ort_runtime, plat.ort_runtime_error = detect_python(probe, path, source)
    result = probe.run(['gcc', '--version'])
    plat.gcc = parse_first_version(result.stdout.splitlines()[0]) if result.returncode == 0 and \
        result.stdout else None
    plat.cmake_path = probe.which('cmake')
    if plat.cmake_path:
        result = probe.run([plat.cmake_path, '--version'])
        plat.cmake = parse_first_version(result.stdout) if result.returncode == 0 else None
    plat.git = probe.which('git')
    cargo = probe.which('cargo')
    if cargo:
        result = probe.run([cargo, '--version'])
        plat.cargo = parse_first_version(result.stdout) if result.returncode == 0 else None
    plat.docker = probe.which('docker')
    mem = parse_meminfo(probe.read_text('/proc/meminfo') or '')
    plat.mem_total = mem.get('MemTotal')
    plat.mem_available = mem.get('MemAvailable', mem.get('MemFree'))
    plat.swap_free = mem.get('SwapFree')
    plat.disk_free = probe.disk_free(work_dir)
    plat.cudnn_majors = detect_cudnn_majors(probe, plat.cuda)
    plat.cuda_missing = toolkit_missing(probe.path(plat.cuda.path)) if plat.cuda else []
    return plat


def _read(path: Path) -> Optional[str]:
    try:
        return Path(path).read_text(encoding='utf-8', errors='replace')
    except OSError:
        return None


# ----------------------------------------------------------------------------------------- presets

PRESETS = {
    'jp6-orin': 'JetPack 6.2 (L4T R36.4.3) on a Jetson AGX Orin 64GB, CUDA 12.6, ROS 2 Humble',
    'jp6-orin-nano': 'JetPack 6.2 (L4T R36.4.3) on a Jetson Orin Nano 8GB, CUDA 12.6, '
                     'ROS 2 Humble',
    'jp60-orin': 'JetPack 6.0 (L4T R36.3.0) on a Jetson AGX Orin, CUDA 12.2 and 12.6 installed, '
                 'ROS 2 Humble',
    'jp5-xavier': 'JetPack 5.1.2 (L4T R35.4.1) on a Jetson AGX Xavier, CUDA 11.4, ROS 2 Foxy',
    'jp7-thor': 'JetPack 7.0 (L4T R38.2) on a Jetson AGX Thor, CUDA 13.0, ROS 2 Jazzy',
}
DEFAULT_PRESET = 'jp6-orin'


def preset_platform(name: str, ort_version: str = '1.22.0', work_dir: str = '') -> Platform:
    """
    Describe a target: what detection would find there.

    For --dry-run on a machine that is not one.
    """
    if name not in PRESETS:
        raise ValueError(f'unknown target {name!r}; choose one of {", ".join(sorted(PRESETS))}')
    l4t, cuda, cc, soc, board, py, ros, gcc, cmake, mem, cpus = {
        'jp6-orin': ('36.4.3', ['12.6.68'], '87', 'tegra234',
                     'NVIDIA Jetson AGX Orin Developer Kit',
                     '3.10.12', 'humble', '11.4.0', '3.22.1', 64, 12),
        'jp6-orin-nano': ('36.4.3', ['12.6.68'], '87', 'tegra234',
                          'NVIDIA Jetson Orin Nano Developer Kit',
                          '3.10.12', 'humble', '11.4.0', '3.22.1', 8, 6),
        'jp60-orin': ('36.3.0', ['12.2.140', '12.6.68'], '87', 'tegra234',
                      'NVIDIA Jetson AGX Orin Developer Kit',
                      '3.10.12', 'humble', '11.4.0', '3.22.1', 32, 8),
        'jp5-xavier': ('35.4.1', ['11.4.315'], '72', 'tegra194', 'Jetson-AGX', '3.8.10', 'foxy',
                       '9.4.0', '3.16.3', 32, 8),
        'jp7-thor': ('38.2.0', ['13.0.48'], '110', 'tegra264',
                     'NVIDIA Jetson AGX Thor Developer Kit',
                     '3.12.3', 'jazzy', '13.3.0', '3.28.3', 128, 14),
    }[name]
    jetpack = jetpack_for_l4t(l4t)
    installs = [CudaInstall(f'/usr/local/cuda-{".".join(v.split(".")[:2])}', v) for v in cuda]
    chosen = installs[0]
    py_short = '.'.join(py.split('.')[:2])
    plat = Platform(
        machine='aarch64', is_jetson=True, l4t=l4t, jetpack=jetpack, board=board, soc=soc,
        ubuntu=jetpack.ubuntu if jetpack else None, cuda_installs=installs, cuda=chosen,
        cuda_reason='/usr/local/cuda points to it', compute_capability=cc,
        cc_source=f'device tree: {soc}',
        python=PythonInfo(path='/usr/bin/python3',
                          source=f'the interpreter of /opt/ros/{ros}/bin/ros2',
                          version=py, include_dir=f'/usr/include/python{py_short}',
                          has_dev_headers=True, has_pip=True,
                          externally_managed=py_short == '3.12',
                          modules=['numpy', 'onnx', 'tokenizers', 'cv2', 'requests']),
        ros_distro=ros, gcc=gcc, cmake=cmake, cmake_path='/usr/bin/cmake', git='/usr/bin/git',
        docker=None, mem_total=mem * GIB, mem_available=int(mem * GIB * 0.8), swap_free=0,
        cpu_count=cpus,
        disk_free=100 * GIB, cudnn_majors=[9] if parse_version(cuda[0]) >= (12, 6) else [8],
        synthetic=True)
    capi_dir = f'/usr/local/lib/python{py_short}/dist-packages/onnxruntime/capi'
    plat.ort_runtime = OrtRuntime(ort_version, ['CUDAExecutionProvider', 'CPUExecutionProvider'],
                                  capi_dir)
    return plat
