"""
An index that lies, or whoever sits on the way to it: each case ends in building from source.

Never in a file outside the work folder, a downgraded connection, an unbounded download or read,
or a traceback: the documented fallback.

Every server here is a real one on loopback: the simple index of test_build_genai_wheel_prebuilt
(http), an https one with a self-signed certificate the test trusts through SSL_CERT_FILE, and a
raw socket server for answers no well-behaved server gives.
"""
import hashlib
import http.server
import json
from pathlib import Path
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import zipfile

from phi3v_ros.tools.genai_wheel import download as dl
from phi3v_ros.tools.genai_wheel import gpu_code
from phi3v_ros.tools.genai_wheel import prebuilt
import pytest
from test_build_genai_wheel_prebuilt import (elf_with_fatbin, fatbin, make_wheel, orin_wheel,
                                             plan_and_run, SimpleIndex)
from test_build_genai_wheel_runner import is_build

WHEEL_NAME = 'onnxruntime_genai-0.9.2-cp310-cp310-linux_aarch64.whl'


@pytest.fixture
def index(tmp_path):
    server = SimpleIndex(tmp_path / 'index')
    yield server
    server.close()


def publish_as(index, project, href_name, wheel, served_at=None):
    """List wheel under the link name href_name (in the href as written), served at served_at."""
    target = index.root / (served_at or f'files/{wheel.name}')
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(wheel, target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    page = index.root / 'simple' / project
    page.mkdir(exist_ok=True)
    links = page / 'index.html'
    old = links.read_text() if links.exists() else ''
    links.write_text(old + f'<a href="../../files/{href_name}#sha256={digest}">x</a><br/>\n')
    return digest


# ------------------------------------------------------- 1. names that leave the work folder

def test_a_link_whose_name_climbs_out_of_the_work_folder_writes_nothing_there(tmp_path, index):
    # Where the review's link landed: the name is joined onto <work>/prebuilt, and its '..'
    # segments count from the folder 'onnxruntime_genai-...aarch64.' made inside it.
    _, _, _, plan = plan_and_run(tmp_path / 'dry', 'http://127.0.0.1:9/simple/')
    depth = len((plan.work_dir / 'prebuilt').relative_to(tmp_path / 'dry').parts) + 1
    victim = tmp_path / 'escaped' / 'x.whl'
    victim.parent.mkdir()
    victim.write_bytes(b'a file of the user')
    name = 'onnxruntime_genai-0.9.2-cp310-cp310-linux_aarch64.' + '%2F..' * depth + \
        '%2Fescaped%2Fx.whl'
    # the server answers that path (normalised: /escaped/x.whl) with a real wheel, so the hash
    # the index gives is right
    publish_as(index, 'onnxruntime-genai', name, orin_wheel(tmp_path), served_at='escaped/x.whl')
    status, text, machine, _ = plan_and_run(tmp_path, index.url)
    assert status == 0 and machine.ran(is_build), text
    assert victim.read_bytes() == b'a file of the user'
    assert [p for p in tmp_path.rglob('x.whl')
            if p != victim and index.root not in p.parents] == []
    assert 'building from source instead' in text


@pytest.mark.parametrize('href', [
    'onnxruntime_genai-0.9.2-cp310-cp310-linux_aarch64.%2F..%2Fx.whl',
    'onnxruntime_genai-0.9.2-cp310-cp310-linux_aarch64%2F..%2F..%2Fx.whl',
    'onnxruntime_genai-0.9.2%2F..-cp310-cp310-linux_aarch64.whl',
    'onnxruntime_genai-0.9.2-cp310-cp310-linux_aarch64%5C..%5Cx.whl',
    'onnxruntime_genai-0.9.2-cp310-cp310-linux_aarch64%00.whl',
    '..%2Fonnxruntime_genai-0.9.2-cp310-cp310-linux_aarch64.whl',
])
def test_file_names_with_separators_or_dot_segments_are_not_wheels(href):
    found = prebuilt.parse_links('http://idx/simple/onnxruntime-genai/',
                                 f'<a href="../../f/{href}#sha256={"a" * 64}">x</a>',
                                 'onnxruntime-genai')
    assert found == []


def test_a_wheel_of_another_project_on_the_page_is_not_taken(tmp_path, index):
    numpy = make_wheel(tmp_path, 'numpy-0.9.2-cp310-cp310-linux_aarch64.whl',
                       {'lib.so': elf_with_fatbin(fatbin([(2, 87)]))})
    publish_as(index, 'onnxruntime-genai', numpy.name, numpy)
    index.publish('onnxruntime-genai', orin_wheel(tmp_path, version='0.9.1'))
    status, text, machine, _ = plan_and_run(tmp_path, index.url)
    assert status == 0 and not machine.ran(is_build), text
    assert 'found onnxruntime_genai-0.9.1-cp310-cp310-linux_aarch64.whl' in text
    assert 'numpy' not in text


def test_the_project_part_is_compared_as_pep_503_normalises_it():
    page = ''.join(f'<a href="/f/{name}#sha256={"b" * 64}">x</a>' for name in (
        'onnxruntime_genai_cuda-0.9.2-cp310-cp310-linux_aarch64.whl',
        'onnxruntime.genai_CUDA-0.9.2-cp310-cp310-linux_aarch64.whl',
        'onnxruntime_genai-0.9.2-cp310-cp310-linux_aarch64.whl'))      # another project
    found = prebuilt.parse_links('http://idx/simple/onnxruntime-genai-cuda/', page,
                                 'onnxruntime-genai-cuda')
    assert [c.file_name for c in found] == [
        'onnxruntime_genai_cuda-0.9.2-cp310-cp310-linux_aarch64.whl',
        'onnxruntime.genai_CUDA-0.9.2-cp310-cp310-linux_aarch64.whl']


def test_the_download_target_is_proven_inside_its_folder(tmp_path):
    assert dl.inside(tmp_path, WHEEL_NAME) == tmp_path / WHEEL_NAME
    for name in ('../x.whl', 'a/b.whl', '/etc/x.whl', '..', '.', '', 'a\\b.whl'):
        with pytest.raises(dl.DownloadError, match='not a plain file name'):
            dl.inside(tmp_path, name)
    (tmp_path / 'link').symlink_to(tmp_path.parent)
    with pytest.raises(dl.DownloadError, match='outside'):
        dl.inside(tmp_path, 'link')


# ------------------------------------------------------------- 2. no downgrade on redirects

@pytest.fixture
def trusted_certificate(tmp_path, monkeypatch):
    """Make a self-signed certificate for 127.0.0.1, trusted by this process's TLS context."""
    if shutil.which('openssl') is None:
        pytest.skip('needs the openssl command')
    key, cert = tmp_path / 'key.pem', tmp_path / 'cert.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
                    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
                    '-keyout', str(key), '-out', str(cert)], check=True, capture_output=True,
                   timeout=60)
    monkeypatch.setenv('SSL_CERT_FILE', str(cert))
    return key, cert


class RedirectingHttps:
    """Answer every GET with a redirect to target + path, over https on loopback."""

    def __init__(self, key, cert, target):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.asked.append(self.path)
                self.send_response(301)
                self.send_header('Location', target.rstrip('/') + self.path)
                self.send_header('Content-Length', '0')
                self.end_headers()

            def log_message(self, *args):
                pass

        self.asked = []
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                       kwargs={'poll_interval': 0.05})
        self.thread.start()
        self.url = f'https://127.0.0.1:{self.httpd.server_address[1]}/simple/'

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def test_an_https_index_redirecting_to_http_is_refused(tmp_path, index, trusted_certificate):
    index.publish('onnxruntime-genai', orin_wheel(tmp_path))
    plain = f'http://127.0.0.1:{index.server.server_address[1]}'
    secure = RedirectingHttps(*trusted_certificate, plain)
    try:
        status, text, machine, plan = plan_and_run(tmp_path, secure.url)
    finally:
        secure.close()
    assert secure.asked, 'the https index was asked'
    assert status == 0 and machine.ran(is_build), text
    assert 'from https to http' in text and 'building from source instead' in text
    assert list((plan.work_dir / 'prebuilt').glob('*.whl')) == []


def test_an_https_index_linking_to_http_files_is_refused():
    page = f'<a href="http://files.example/{WHEEL_NAME}#sha256={"c" * 64}">x</a>'
    found = prebuilt.parse_links('https://idx/simple/onnxruntime-genai/', page,
                                 'onnxruntime-genai')
    assert found == []
    for scheme in ('file:///tmp/', 'ftp://idx/'):
        assert prebuilt.parse_links('http://idx/simple/onnxruntime-genai/',
                                    f'<a href="{scheme}{WHEEL_NAME}#sha256={"c" * 64}">x</a>',
                                    'onnxruntime-genai') == []


# ------------------------------------------------------------------ 3. bounded downloads

class EndlessServer:
    """Answer every GET with 200, a Content-Type and (optionally) a length, then data forever."""

    def __init__(self, content_length=None):
        self.listener = socket.socket()
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen()
        self.sent = 0
        self.content_length = content_length
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.url = f'http://127.0.0.1:{self.listener.getsockname()[1]}/'

    def _serve(self):
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        with connection:
            connection.recv(65536)
            head = 'HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n'
            if self.content_length is not None:
                head += f'Content-Length: {self.content_length}\r\n'
            connection.sendall((head + 'Connection: close\r\n\r\n').encode())
            block = b'<html>' * 10923
            try:
                while self.sent < (1 << 30):
                    connection.sendall(block)
                    self.sent += len(block)
            except OSError:
                pass    # the client hung up: what this test wants

    def close(self):
        self.listener.close()
        self.thread.join(timeout=30)


def test_a_download_without_a_length_stops_at_its_bound(tmp_path):
    server = EndlessServer()
    try:
        with pytest.raises(dl.DownloadError, match=r'more than 1 MiB'):
            dl.download(server.url + 'x.whl', tmp_path / 'x.whl', '0' * 64, max_bytes=1 << 20)
    finally:
        server.close()
    assert not (tmp_path / 'x.whl').exists() and not (tmp_path / 'x.whl.part').exists()
    assert server.sent < 64 << 20, 'the client stopped reading'


def test_a_download_announcing_too_much_is_refused_before_reading(tmp_path):
    server = EndlessServer(content_length=5 << 30)
    try:
        with pytest.raises(dl.DownloadError, match=r'announces 5120 MiB, more than 1 MiB'):
            dl.download(server.url + 'x.whl', tmp_path / 'x.whl', '0' * 64, max_bytes=1 << 20)
    finally:
        server.close()
    assert not (tmp_path / 'x.whl.part').exists()


def test_a_prebuilt_wheel_is_bounded_by_the_size_the_index_gives(tmp_path, index):
    # PEP 691 JSON with PEP 700 sizes: the wheel may be exactly that long, and no longer
    wheel = orin_wheel(tmp_path)
    digest = index.publish('onnxruntime-genai', wheel)
    page = index.root / 'simple' / 'onnxruntime-genai'
    (page / 'index.html').unlink()
    files = [{'filename': wheel.name, 'url': f'../../files/{wheel.name}',
              'hashes': {'sha256': digest}, 'size': wheel.stat().st_size - 1}]
    (page / 'index.json').write_text(json.dumps(
        {'meta': {'api-version': '1.1'}, 'name': 'onnxruntime-genai', 'files': files}))
    status, text, machine, _ = plan_and_run(tmp_path, index.url)
    assert status == 0 and machine.ran(is_build), text
    assert f'more than the {wheel.stat().st_size - 1} bytes the index gives' in text
    files[0]['size'] = wheel.stat().st_size
    (page / 'index.json').write_text(json.dumps(
        {'meta': {'api-version': '1.1'}, 'name': 'onnxruntime-genai', 'files': files}))
    status, text, machine, _ = plan_and_run(tmp_path / 'exact', index.url)
    assert status == 0 and not machine.ran(is_build), text


def test_a_prebuilt_download_without_a_size_has_the_fixed_cap(tmp_path, index, monkeypatch):
    monkeypatch.setattr(prebuilt, 'MAX_WHEEL_BYTES', 2 << 20)
    server = EndlessServer()
    page = index.root / 'simple' / 'onnxruntime-genai'
    page.mkdir()
    (page / 'index.html').write_text(f'<a href="{server.url}{WHEEL_NAME}#sha256={"d" * 64}">x</a>')
    try:
        status, text, machine, plan = plan_and_run(tmp_path, index.url)
    finally:
        server.close()
    assert status == 0 and machine.ran(is_build), text
    assert 'more than 2 MiB' in text
    assert list((plan.work_dir / 'prebuilt').iterdir()) == []


# ------------------------------------------------------ 3. bounded reading of a wheel's code

def large_library_wheel(folder, library_bytes, archs=((2, 87),)):
    """Write a small wheel holding one library of library_bytes, its section headers at the end."""
    small = elf_with_fatbin(fatbin(list(archs)))
    shoff, = struct.unpack_from('<Q', small, 0x28)
    body, headers = small[:shoff], small[shoff:]
    padding = library_bytes - len(small)
    head = bytearray(body)
    struct.pack_into('<Q', head, 0x28, shoff + padding)     # the headers move to the end
    path = Path(folder) / WHEEL_NAME
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr('onnxruntime_genai/__init__.py', '')
        with archive.open('onnxruntime_genai/libonnxruntime-genai.so', 'w',
                          force_zip64=True) as member:
            member.write(bytes(head))
            zeros = bytes(8 << 20)
            left = padding
            while left:
                member.write(zeros[:min(left, len(zeros))])
                left -= min(left, len(zeros))
            member.write(headers)
    return path


def test_a_wheel_is_read_by_streaming_not_a_library_at_a_time(tmp_path):
    wheel = large_library_wheel(tmp_path, 512 << 20)
    assert wheel.stat().st_size < 4 << 20
    # in a child whose address space could not hold the library: reading it whole fails there
    script = ('import resource, sys\n'
              'from phi3v_ros.tools.genai_wheel import gpu_code\n'
              'limit = 256 << 20\n'
              'with open("/proc/self/status") as f:\n'
              '    size = next(int(l.split()[1]) << 10 for l in f if l.startswith("VmSize"))\n'
              'resource.setrlimit(resource.RLIMIT_AS, (size + limit, size + limit))\n'
              'print(gpu_code.check_wheel(sys.argv[1], "87"))\n')
    done = subprocess.run([sys.executable, '-c', script, str(wheel)], capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'GPU code for sm_87: libonnxruntime-genai.so: sm_87' in done.stdout


def test_a_library_larger_than_the_bound_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_code, 'MAX_LIBRARY_BYTES', 8 << 20)
    wheel = large_library_wheel(tmp_path, 16 << 20)
    with pytest.raises(ValueError, match='larger than the 8 MiB'):
        gpu_code.check_wheel(wheel, '87')


def unsupported_compression(wheel):
    """Mark every member of the zip as compressed with method 99, which zipfile cannot read."""
    data = bytearray(wheel.read_bytes())
    for signature, offset in ((b'PK\x03\x04', 8), (b'PK\x01\x02', 10)):
        at = data.find(signature)
        while at >= 0:
            struct.pack_into('<H', data, at + offset, 99)
            at = data.find(signature, at + 4)
    wheel.write_bytes(bytes(data))


def test_a_wheel_the_reader_cannot_open_means_building_not_a_traceback(tmp_path, index):
    wheel = orin_wheel(tmp_path)
    unsupported_compression(wheel)
    index.publish('onnxruntime-genai', wheel)
    status, text, machine, _ = plan_and_run(tmp_path, index.url)
    assert status == 0 and machine.ran(is_build), text
    assert 'refused' in text and 'building from source instead' in text


def test_a_zip_member_that_lies_about_its_size_is_refused(tmp_path):
    wheel = orin_wheel(tmp_path)
    data = bytearray(wheel.read_bytes())
    name = b'onnxruntime_genai/libonnxruntime-genai.so'
    # the central directory entry of the library: its name follows the 46 bytes of its header
    at = next(at for at in range(len(data))
              if data[at:at + 4] == b'PK\x01\x02' and data[at + 46:at + 46 + len(name)] == name)
    struct.pack_into('<I', data, at + 24, 4)       # its uncompressed size: 4 bytes, it says
    wheel.write_bytes(bytes(data))
    # refused by the size check here, or by zipfile's CRC check on what was read
    with pytest.raises((ValueError, zipfile.BadZipFile)):
        gpu_code.check_wheel(wheel, '87')


def test_a_plain_http_index_elsewhere_needs_a_pinned_hash(tmp_path):
    status, text, machine, _ = plan_and_run(tmp_path, 'http://index.invalid/simple/')
    assert status == 0 and machine.ran(is_build), text
    assert 'is not an https index' in text and 'pin the wheel with --prebuilt-sha256' in text
    assert prebuilt.untrusted_index('https://pypi.jetson-ai-lab.io/jp6/cu126/+simple/') is None
    assert prebuilt.untrusted_index('http://127.0.0.1:8080/simple/') is None
    assert prebuilt.untrusted_index('ftp://mirror/simple/') is not None


def test_the_entries_read_from_a_library_are_bounded(monkeypatch):
    many = elf_with_fatbin(fatbin([(2, arch) for arch in range(100)]))
    assert len(gpu_code.gpu_code(many)) == 100
    monkeypatch.setattr(gpu_code, 'MAX_ENTRIES', 50)
    with pytest.raises(ValueError, match='more than 50 GPU code entries'):
        gpu_code.gpu_code(many)


def test_a_version_too_long_to_be_a_number_is_not_a_wheel():
    name = f'onnxruntime_genai-0.{"9" * 5000}-cp310-cp310-linux_aarch64.whl'
    assert prebuilt.parse_links('http://idx/simple/onnxruntime-genai/',
                                f'<a href="/f/{name}#sha256={"e" * 64}">x</a>',
                                'onnxruntime-genai') == []
