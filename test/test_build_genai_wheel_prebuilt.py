"""
The prebuilt wheel: looked up on a real HTTP server on loopback with a PEP 503 simple index.

Cases the issue names: the wheel present, absent, the index down, a wheel without sm_87; and the
GPU code reader itself, on ELF files written here and, where nvcc is installed, on nvcc's own,
which also refuses an ONNX Runtime whose CUDA provider has no code for the device.
"""
import functools
import hashlib
import http.server
import io
from pathlib import Path
import shutil
import socket
import struct
import subprocess
import threading
import zipfile

from phi3v_ros.tools.genai_wheel import gpu_code
from phi3v_ros.tools.genai_wheel import prebuilt
from phi3v_ros.tools.genai_wheel import versions as V
from phi3v_ros.tools.genai_wheel.checks import check_prerequisites
from phi3v_ros.tools.genai_wheel.ort_libs import from_folder
from phi3v_ros.tools.genai_wheel.plan import make_plan, Options
from phi3v_ros.tools.genai_wheel.platform import preset_platform
from phi3v_ros.tools.genai_wheel.runner import Context, execute
import pytest
from test_build_genai_wheel_ort import fake_ort_release
from test_build_genai_wheel_runner import FakeMachine, is_build

PY = 'cp310'


# --------------------------------------------------------------------- ELF files with GPU code

def fatbin(entries):
    """Return a fatbin blob of (kind, arch) entries (1: PTX, 2: machine code), as nvcc 13."""
    body = b''
    for kind, arch in entries:
        payload = b'\xAB' * 40
        header = struct.pack('<HHIQIIII', kind, 0x0101, 64, len(payload), 0, 0, 0x10008, arch)
        body += header + b'\0' * (64 - len(header)) + payload
    return struct.pack('<IHHQ', gpu_code.FATBIN_MAGIC, 1, 16, len(body)) + body


def elf_with_fatbin(*blobs, section=b'.nv_fatbin'):
    """Return a minimal 64-bit little-endian ELF file with a section of these fatbin blobs."""
    names = b'\0.shstrtab\0' + section + b'\0'
    data = b''.join(blobs)
    names_at, data_at = 64, 64 + len(names)
    shoff = data_at + len(data)
    shoff += -shoff % 8
    ident = b'\x7fELF' + bytes([2, 1, 1]) + b'\0' * 9
    header = ident + struct.pack('<HHIQQQIHHHHHH', 3, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 1)
    section_header = functools.partial(struct.pack, '<IIQQQQIIQQ')
    headers = (section_header(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
               + section_header(1, 3, 0, 0, names_at, len(names), 0, 0, 1, 0)
               + section_header(11, 1, 2, 0, data_at, len(data), 0, 0, 8, 0))
    body = header + names + data
    return body + b'\0' * (shoff - len(body)) + headers


def make_wheel(folder, name, libraries):
    """Write a wheel (a zip) holding these shared libraries: file name -> bytes."""
    path = Path(folder) / name
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('onnxruntime_genai/__init__.py', '')
        for lib, data in libraries.items():
            archive.writestr(f'onnxruntime_genai/{lib}', data)
    return path


def test_the_gpu_code_of_a_library_is_read_from_its_fatbin_headers():
    data = elf_with_fatbin(fatbin([(2, 87)]), fatbin([(2, 87), (1, 90)]))
    codes = gpu_code.gpu_code(data)
    assert [str(c) for c in codes] == ['sm_87', 'compute_90 (PTX)']
    assert str(gpu_code.runs_on(codes, '87')) == 'sm_87'
    assert str(gpu_code.runs_on(codes, '90')) == 'compute_90 (PTX)'
    assert gpu_code.gpu_code(b'not an ELF file') == []
    assert gpu_code.gpu_code(elf_with_fatbin(fatbin([(2, 87)]), section=b'.text')) == []


def test_malformed_fatbin_headers_end_the_reading_instead_of_looping():
    empty_blob = struct.pack('<IHHQ', gpu_code.FATBIN_MAGIC, 1, 0, 0)     # sizes 0: no progress
    assert gpu_code.fatbin_entries(empty_blob + fatbin([(2, 87)])) == \
        [gpu_code.GpuCode('sass', 87)]
    truncated = fatbin([(2, 87), (1, 90)])[:-50]        # the last payload cut off
    assert [str(c) for c in gpu_code.fatbin_entries(truncated)] == ['sm_87', 'compute_90 (PTX)']


def test_entries_of_other_kinds_are_skipped_not_the_rest_of_the_blob():
    # kind 4 stands for what is no code to run (e.g. LTO IR); the entries after it still count
    assert [str(c) for c in gpu_code.fatbin_entries(fatbin([(4, 87), (2, 87)]))] == ['sm_87']


def test_a_library_is_read_from_its_file_or_a_mapping_in_pieces(tmp_path):
    from phi3v_ros.tools.genai_wheel.ort_libs import mapped
    library = tmp_path / 'lib.so'
    library.write_bytes(elf_with_fatbin(fatbin([(2, 87)])))
    with open(library, 'rb') as f:
        assert [str(c) for c in gpu_code.gpu_code(f)] == ['sm_87']
    with mapped(library) as data:
        assert [str(c) for c in gpu_code.gpu_code(data)] == ['sm_87']
    (tmp_path / 'empty.so').write_bytes(b'')
    with mapped(tmp_path / 'empty.so') as data:
        assert gpu_code.gpu_code(data) == []


@pytest.mark.parametrize('entries, cc, used', [
    ([(2, 86)], '87', 'sm_86'),                     # same major, older minor: binary compatible
    ([(2, 80), (2, 86)], '87', 'sm_86'),
    ([(2, 89), (2, 90)], '87', None),               # newer minor, newer major: no
    ([(1, 80)], '87', 'compute_80 (PTX)'),          # PTX is compiled for the device at load
    ([(1, 90)], '87', None),
    ([(2, 72), (2, 87)], '72', 'sm_72'),
])
def test_which_code_a_gpu_runs(entries, cc, used):
    codes = gpu_code.fatbin_entries(fatbin(entries))
    found = gpu_code.runs_on(codes, cc)
    assert (str(found) if found else None) == used


@pytest.mark.skipif(shutil.which('nvcc') is None, reason='needs nvcc')
def test_the_reader_agrees_with_what_nvcc_wrote(tmp_path):
    kernel = tmp_path / 'k.cu'
    kernel.write_text('__global__ void add(float *a) { a[threadIdx.x] += 1.0f; }\n'
                      'extern "C" void launch(float *a) { add<<<1, 32>>>(a); }\n')
    built = {}
    for label, gencodes in (('orin', ['arch=compute_87,code=sm_87',
                                      'arch=compute_90,code=compute_90']),
                            ('pypi-like', ['arch=compute_89,code=sm_89',
                                           'arch=compute_90,code=sm_90'])):
        out = tmp_path / f'lib{label}.so'
        argv = ['nvcc', '-shared', '-Xcompiler', '-fPIC', '-o', str(out), str(kernel)]
        for gencode in gencodes:
            argv += ['-gencode', gencode]
        subprocess.run(argv, check=True, capture_output=True, timeout=300)
        built[label] = out.read_bytes()
    assert [str(c) for c in gpu_code.gpu_code(built['orin'])] == ['sm_87', 'compute_90 (PTX)']
    assert [str(c) for c in gpu_code.gpu_code(built['pypi-like'])] == ['sm_89', 'sm_90']
    wheel = make_wheel(tmp_path, 'w.whl', {'libonnxruntime-genai.so': built['pypi-like']})
    with pytest.raises(ValueError, match=r'no GPU code for this GPU \(sm_87\).*sm_89, sm_90'):
        gpu_code.check_wheel(wheel, '87')


def test_a_wheel_without_gpu_code_is_not_a_cuda_build(tmp_path):
    wheel = make_wheel(tmp_path, 'w.whl', {'libonnxruntime-genai.so': elf_with_fatbin()})
    with pytest.raises(ValueError, match='not a CUDA build'):
        gpu_code.check_wheel(wheel, '87')


def test_an_onnx_runtime_without_code_for_the_device_is_refused_before_building(tmp_path):
    plat = preset_platform('jp6-orin')
    plat.cmake = '3.28.3'
    choice = V.choose_versions('1.22.0')
    for archs, refused in (([(2, 89), (2, 90), (2, 120)], True), ([(2, 80), (2, 86)], False)):
        root = fake_ort_release(tmp_path / f'ort-{archs[0][1]}')
        provider = root / 'lib' / 'libonnxruntime_providers_cuda.so'
        provider.write_bytes(elf_with_fatbin(fatbin(archs)) + provider.read_bytes())
        ort = from_folder(root)
        problems = [p for p in check_prerequisites(plat, choice, ort, install=False)
                    if 'no GPU code for this GPU' in p.what]
        assert bool(problems) == refused, (archs, problems)
    assert problems == [] and [str(c) for c in ort.gpu_codes] == ['sm_80', 'sm_86']


# ----------------------------------------------------------------------- the loopback index

class SimpleIndex:
    """A PEP 503 index served from a folder by a real HTTP server on 127.0.0.1."""

    def __init__(self, root):
        self.root = Path(root)
        (self.root / 'simple').mkdir(parents=True)
        (self.root / 'files').mkdir()
        handler = functools.partial(_QuietHandler, directory=str(self.root))
        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
        self.server.fail_with = None        # an HTTP status every request gets, when set
        self.server.redirect_to = None      # a path prefix every request is redirected to
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       kwargs={'poll_interval': 0.05})
        self.thread.start()
        self.url = f'http://127.0.0.1:{self.server.server_address[1]}/simple/'

    def publish(self, project, wheel, with_hash=True, sha=None):
        target = self.root / 'files' / wheel.name
        shutil.copy2(wheel, target)
        digest = sha or hashlib.sha256(target.read_bytes()).hexdigest()
        page = self.root / 'simple' / project
        page.mkdir(exist_ok=True)
        links = page / 'index.html'
        old = links.read_text() if links.exists() else ''
        href = f'../../files/{wheel.name}' + (f'#sha256={digest}' if with_hash else '')
        links.write_text(old + f'<a href="{href}">{wheel.name}</a><br/>\n')
        return digest

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.server.fail_with:
            self.send_error(self.server.fail_with)
            return
        if self.server.redirect_to and not self.path.startswith(self.server.redirect_to):
            self.send_response(301)
            self.send_header('Location', self.server.redirect_to + self.path)
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        json_page = Path(self.translate_path(self.path)) / 'index.json'
        if self.path.endswith('/') and json_page.is_file():    # a PEP 691 JSON project page
            body = json_page.read_bytes()
            self.send_response(200)
            self.send_header('Content-Type', 'application/vnd.pypi.simple.v1+json')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def index(tmp_path):
    server = SimpleIndex(tmp_path / 'index')
    yield server
    server.close()


def orin_wheel(folder, version='0.9.2', archs=((2, 87),), py=PY, plat='linux_aarch64'):
    name = f'onnxruntime_genai-{version}-{py}-{py}-{plat}.whl'
    return make_wheel(folder, name, {
        'libonnxruntime-genai.so': elf_with_fatbin(fatbin(list(archs))),
        'onnxruntime_genai.cpython-310-aarch64-linux-gnu.so': b'\x7fELF no GPU code here'})


def closed_port_url():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    return f'http://127.0.0.1:{port}/simple/'     # nothing listens there any more


def plan_and_run(tmp_path, index_url, sha=None, install=False):
    plat = preset_platform('jp6-orin')
    plat.cmake = '3.28.3'
    opts = Options(work_root=tmp_path / 'w', package_root=Path('/ws'), prebuilt_index=index_url,
                   prebuilt_sha256=sha, install=install)
    ort = from_folder(fake_ort_release(tmp_path / 'ort-rel'))
    plan = make_plan(plat, V.choose_versions(ort.version), ort, opts)
    machine, lines = FakeMachine(), []
    context = Context(out=lines.append, run=machine.run, capture=machine.capture)
    status = execute(plan, context)
    return status, '\n'.join(lines), machine, plan


def test_the_wheel_on_the_index_is_downloaded_checked_and_used(tmp_path, index):
    digest = index.publish('onnxruntime-genai', orin_wheel(tmp_path))
    status, text, machine, plan = plan_and_run(tmp_path, index.url)
    assert status == 0, text
    assert 'found onnxruntime_genai-0.9.2-cp310-cp310-linux_aarch64.whl' in text
    assert 'GPU code for sm_87: libonnxruntime-genai.so: sm_87' in text
    assert not machine.ran(is_build) and not machine.ran(lambda c: c[:2] == ['git', 'clone'])
    used = plan.work_dir / 'dist' / 'onnxruntime_genai-0.9.2-cp310-cp310-linux_aarch64.whl'
    assert hashlib.sha256(used.read_bytes()).hexdigest() == digest


def test_install_takes_the_prebuilt_wheel_and_runs_the_checks(tmp_path, index):
    index.publish('onnxruntime-genai', orin_wheel(tmp_path))
    status, text, machine, plan = plan_and_run(tmp_path, index.url, install=True)
    assert status == 0, text
    (install,) = machine.ran(lambda c: c[1:4] == ['-m', 'pip', 'install'])
    assert install[-1] == str(plan.work_dir / 'dist' /
                              'onnxruntime_genai-0.9.2-cp310-cp310-linux_aarch64.whl')
    checks = machine.ran(lambda c: c[1:2] == ['-c'])
    assert len(checks) == 4, 'import, is_cuda_available, the generation, a constrained answer'


def test_an_index_without_the_project_means_building(tmp_path, index):
    status, text, machine, _ = plan_and_run(tmp_path, index.url)
    assert status == 0 and machine.ran(is_build)
    assert 'has no onnxruntime-genai-cuda or onnxruntime-genai project' in text
    assert 'building from source instead' in text


def test_a_project_without_a_wheel_for_this_python_means_building(tmp_path, index):
    index.publish('onnxruntime-genai', orin_wheel(tmp_path, py='cp312'))
    index.publish('onnxruntime-genai', orin_wheel(tmp_path, plat='manylinux_2_28_x86_64'))
    status, text, machine, _ = plan_and_run(tmp_path, index.url)
    assert status == 0 and machine.ran(is_build)
    assert 'no wheel for cp310 on aarch64' in text and 'cp312-cp312-linux_aarch64.whl' in text


def test_an_index_that_is_down_means_building(tmp_path):
    status, text, machine, _ = plan_and_run(tmp_path, closed_port_url())
    assert status == 0 and machine.ran(is_build)
    assert 'the index is down' in text and 'could not be reached' in text


def test_an_index_answering_errors_means_building(tmp_path, index):
    index.publish('onnxruntime-genai', orin_wheel(tmp_path))
    index.server.fail_with = 503
    status, text, machine, _ = plan_and_run(tmp_path, index.url)
    assert status == 0 and machine.ran(is_build)
    assert 'the index is down' in text and 'answered HTTP 503' in text


def test_links_are_relative_to_the_page_after_a_redirect(tmp_path, index):
    # the index moved: /simple/... answers 301 to /moved/simple/..., whose links are relative
    moved = index.root / 'moved'
    moved.mkdir()
    index.publish('onnxruntime-genai', orin_wheel(tmp_path))
    for folder in ('simple', 'files'):
        shutil.copytree(index.root / folder, moved / folder)
    shutil.rmtree(index.root / 'files')
    index.server.redirect_to = '/moved'
    status, text, machine, _ = plan_and_run(tmp_path, index.url)
    assert status == 0 and not machine.ran(is_build), text
    # the log names the page the wheel was listed on after the redirect, and where it came from
    moved_url = index.url.replace('/simple/', '/moved/simple/')
    assert ('found onnxruntime_genai-0.9.2-cp310-cp310-linux_aarch64.whl on '
            f'{moved_url}onnxruntime-genai/') in text
    assert f'from {moved_url.replace("/simple/", "/files/")}onnxruntime_genai-0.9.2' in text


def test_an_answer_cut_off_mid_page_means_building(tmp_path):
    # a server that sends a status line and headers promising more than it sends, then closes
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen()

    def answer_badly():
        try:
            connection, _ = listener.accept()
        except OSError:     # the test closed the listener: nobody asked
            return
        with connection:
            connection.recv(65536)
            connection.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n<a href')

    thread = threading.Thread(target=answer_badly, daemon=True)
    thread.start()
    url = f'http://127.0.0.1:{listener.getsockname()[1]}/simple/'
    try:
        status, text, machine, _ = plan_and_run(tmp_path, url)
    finally:
        listener.close()
    assert status == 0 and machine.ran(is_build), text
    assert 'the index is down' in text and 'gave a broken answer (IncompleteRead' in text
    thread.join(timeout=10)


def test_what_one_project_page_lists_is_kept_when_the_other_fails():
    pages = {'onnxruntime-genai-cuda': b'<a href="../../f/onnxruntime_genai_cuda-0.9.2-cp310-'
                                       b'cp310-linux_aarch64.whl?x=1#sha256=' + b'a' * 64 + b'">'
                                       b'</a><a href="../../f/other.tar.gz">sdist</a>'}

    class Page:
        def __init__(self, url, body):
            self.url, self.body = url, io.BytesIO(body)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, limit=-1):
            return self.body.read(limit)

        def geturl(self):
            return self.url

    def opener(request, timeout):
        project = request.full_url.rstrip('/').rsplit('/', 1)[-1]
        if project not in pages:
            raise TimeoutError('timed out')
        return Page(request.full_url, pages[project])

    found = prebuilt.look_up('http://idx/simple/', PY, 'aarch64', '0.9.2', opener=opener)
    assert found.status == 'found', found.reason
    assert found.candidate.url == ('http://idx/f/onnxruntime_genai_cuda-0.9.2-cp310-cp310-'
                                   'linux_aarch64.whl?x=1')
    assert found.candidate.sha256 == 'a' * 64


def test_a_wheel_without_code_for_orin_is_refused(tmp_path, index):
    # what PyPI's aarch64 wheels carry: sm_89 and newer, no PTX
    index.publish('onnxruntime-genai', orin_wheel(
        tmp_path, archs=[(2, 89), (2, 90), (2, 100), (2, 120)]))
    status, text, machine, _ = plan_and_run(tmp_path, index.url)
    assert status == 0 and machine.ran(is_build)
    assert ('refused: onnxruntime_genai-0.9.2-cp310-cp310-linux_aarch64.whl has no GPU code for '
            'this GPU (sm_87): onnxruntime_genai/libonnxruntime-genai.so has only sm_89, sm_90, '
            'sm_100, sm_120') in text


def test_a_wheel_whose_download_does_not_match_its_hash_is_refused(tmp_path, index):
    index.publish('onnxruntime-genai', orin_wheel(tmp_path), sha='0' * 64)
    status, text, machine, plan = plan_and_run(tmp_path, index.url)
    assert status == 0 and machine.ran(is_build)
    assert 'does not match its pinned sha256' in text and 'building from source instead' in text
    assert list((plan.work_dir / 'prebuilt').iterdir()) == [], 'nothing unverified is kept'


def test_a_wheel_without_a_hash_needs_one_pinned(tmp_path, index):
    wheel = orin_wheel(tmp_path)
    index.publish('onnxruntime-genai', wheel, with_hash=False)
    status, text, machine, _ = plan_and_run(tmp_path, index.url)
    assert machine.ran(is_build) and 'pass --prebuilt-sha256' in text
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    status, text, machine, _ = plan_and_run(tmp_path / 'pinned', index.url, sha=sha)
    assert status == 0 and not machine.ran(is_build), text


def test_the_wanted_release_is_preferred_else_the_newest_supported():
    names = ['onnxruntime_genai-0.4.0-cp310-cp310-linux_aarch64.whl',
             'onnxruntime_genai-0.9.2-cp310-cp310-linux_aarch64.whl',
             'onnxruntime_genai-0.13.1-cp310-cp310-linux_aarch64.whl',
             'onnxruntime_genai-0.13.1-cp311-cp311-linux_aarch64.whl']
    found = [prebuilt.Candidate(n, 'http://x/' + n, n.split('-')[1], None) for n in names]
    assert prebuilt.choose(found, PY, 'aarch64', wanted='0.9.2')[0].version == '0.9.2'
    assert prebuilt.choose(found, PY, 'aarch64', wanted='0.11.4')[0].version == '0.13.1'
    # 0.13 needs ONNX Runtime 1.25; with 1.22 installed, 0.9.2 is the newest that loads
    assert prebuilt.choose(found, PY, 'aarch64', runtime_ort='1.22.0')[0].version == '0.9.2'
    assert prebuilt.choose(found[:1], PY, 'aarch64')[0] is None, '0.4 is older than supported'
    # a release the table does not know: which ONNX Runtime it needs is unknown, so not taken
    newer = prebuilt.Candidate('onnxruntime_genai-0.99.0-cp310-cp310-linux_aarch64.whl', 'u',
                               '0.99.0', None)
    assert prebuilt.choose(found + [newer], PY, 'aarch64', wanted='0.11.4',
                           runtime_ort='1.22.0')[0].version == '0.9.2'
    assert prebuilt.choose([newer], PY, 'aarch64')[0] is None


def test_the_jetson_ai_lab_index_of_a_jetpack():
    assert prebuilt.jetson_ai_lab_index(6, '12.6') == \
        'https://pypi.jetson-ai-lab.io/jp6/cu126/+simple/'
    assert prebuilt.jetson_ai_lab_index(7, '13.0') == \
        'https://pypi.jetson-ai-lab.io/jp7/cu130/+simple/'
    assert prebuilt.jetson_ai_lab_index(None, '12.6') is None
