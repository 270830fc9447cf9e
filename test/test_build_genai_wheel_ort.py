"""Gathering ONNX Runtime libraries and headers (fake ONNX Runtime folders); verified downloads."""
import hashlib
import io
import os
from pathlib import Path
import tarfile

from phi3v_ros.tools.genai_wheel import download as dl
from phi3v_ros.tools.genai_wheel import ort_libs as ol
import pytest


def fake_ort_release(root, version='1.22.0', provider=True, headers=True, api=None, links=True):
    """
    Write an extracted ONNX Runtime release with CUDA.

    lib/ holds the versioned library and links, include/ the headers.
    """
    lib = Path(root) / 'lib'
    lib.mkdir(parents=True)
    (lib / f'libonnxruntime.so.{version}').write_bytes(
        b'\x7fELF...OrtGetApiBase\0VERS_' + version.encode() + b'\0VERS_1.2.0\0')
    if links:
        os.symlink(f'libonnxruntime.so.{version}', lib / 'libonnxruntime.so.1')
    if provider:
        (lib / 'libonnxruntime_providers_cuda.so').write_bytes(
            b'\x7fELF\0libcublasLt.so.12\0libcublas.so.12\0libcudnn.so.9\0libcudart.so.12\0')
    (lib / 'libonnxruntime_providers_shared.so').write_bytes(b'\x7fELF shared')
    if headers:
        inc = Path(root) / 'include'
        inc.mkdir()
        minor = version.split('.')[1] if api is None else api
        (inc / 'onnxruntime_c_api.h').write_text(
            f'#pragma once\n#define ORT_API_VERSION {minor}\n')
        (inc / 'onnxruntime_float16.h').write_text('#pragma once\n')
        (inc / 'onnxruntime_cxx_api.h').write_text('#pragma once\n')
    return Path(root)


def test_folder_source_is_inspected(tmp_path):
    source = ol.from_folder(fake_ort_release(tmp_path / 'ort-rel'))
    assert source.kind == 'folder' and source.version == '1.22.0'
    assert source.main_lib == 'libonnxruntime.so.1.22.0'
    assert source.libs == ['libonnxruntime.so.1.22.0', 'libonnxruntime_providers_cuda.so',
                           'libonnxruntime_providers_shared.so']
    assert (source.cuda_major, source.cudnn_major, source.header_api) == (12, 9, 22)
    assert 'CUDA provider present' in source.describe()


def test_gather_copies_libraries_headers_and_makes_the_link(tmp_path):
    source = ol.from_folder(fake_ort_release(tmp_path / 'ort-rel'))
    dest = tmp_path / 'work' / 'ort'
    done = ol.gather(source, dest)
    lib = dest / 'lib'
    assert os.readlink(lib / 'libonnxruntime.so') == 'libonnxruntime.so.1.22.0'
    assert os.readlink(lib / 'libonnxruntime.so.1') == 'libonnxruntime.so.1.22.0'
    assert (lib / 'libonnxruntime.so').read_bytes().startswith(b'\x7fELF')
    assert (lib / 'libonnxruntime_providers_cuda.so').is_file()
    assert sorted(p.name for p in (dest / 'include').iterdir()) == [
        'onnxruntime_c_api.h', 'onnxruntime_cxx_api.h', 'onnxruntime_float16.h']
    assert 'linked libonnxruntime.so -> libonnxruntime.so.1.22.0' in done
    # idempotent: a second gather (a resumed run) replaces the files
    ol.gather(source, dest)
    assert ol.verify_ort_home(dest, min_api=22) == 22


def test_gather_refuses_a_cpu_only_runtime(tmp_path):
    source = ol.from_folder(fake_ort_release(tmp_path / 'cpu', provider=False))
    assert not source.has_cuda_provider
    with pytest.raises(ol.OrtError, match='CPU-only'):
        ol.gather(source, tmp_path / 'ort')


def test_python_package_source_has_no_headers(tmp_path):
    capi = tmp_path / 'site' / 'onnxruntime' / 'capi'
    fake_ort_release(tmp_path / 'rel', version='1.23.0', headers=False, links=False)
    capi.mkdir(parents=True)
    for file in (tmp_path / 'rel' / 'lib').iterdir():
        (capi / file.name).write_bytes(file.read_bytes())
    source = ol.from_python_package(capi, 'onnxruntime 1.23.0 in /usr/bin/python3')
    assert source.version == '1.23.0' and source.header_dir is None and source.has_cuda_provider
    dest = tmp_path / 'ort'
    ol.gather(source, dest)
    with pytest.raises(ol.OrtError, match='lacks onnxruntime_c_api.h, onnxruntime_float16.h'):
        ol.verify_ort_home(dest)


def test_python_package_without_library(tmp_path):
    capi = tmp_path / 'capi'
    capi.mkdir()
    with pytest.raises(ol.OrtError, match='has no libonnxruntime.so'):
        ol.from_python_package(capi)


def test_version_from_symbol_tags_when_the_name_has_none(tmp_path):
    lib = tmp_path / 'libonnxruntime.so.1'
    lib.write_bytes(b'junk VERS_1.2.0 VERS_1.21.1 VERS_1.10.0 junk')
    assert ol.library_version(lib) == '1.21.1'
    assert ol.library_version(tmp_path / 'libonnxruntime.so.1.20.1') == '1.20.1'


def test_install_prefix_layout_from_a_container(tmp_path):
    root = tmp_path / 'image'
    (root / 'usr' / 'local' / 'lib').mkdir(parents=True)
    (root / 'usr' / 'local' / 'include' / 'onnxruntime').mkdir(parents=True)
    (root / 'usr/local/lib/libonnxruntime.so.1').write_bytes(b'VERS_1.21.0')
    (root / 'usr/local/lib/libonnxruntime_providers_cuda.so').write_bytes(b'libcudart.so.12')
    (root / 'usr/local/include/onnxruntime/onnxruntime_c_api.h').write_text(
        '#define ORT_API_VERSION 21\n')
    (root / 'usr/local/include/onnxruntime/onnxruntime_float16.h').write_text('//\n')
    source = ol.from_folder(root)
    assert source.version == '1.21.0' and source.main_lib == 'libonnxruntime.so.1'
    assert source.header_dir == root / 'usr' / 'local' / 'include' / 'onnxruntime'
    dest = tmp_path / 'ort'
    ol.gather(source, dest)
    assert os.readlink(dest / 'lib' / 'libonnxruntime.so') == 'libonnxruntime.so.1'


def test_folder_without_libraries(tmp_path):
    with pytest.raises(ol.OrtError, match='no libonnxruntime.so'):
        ol.from_folder(tmp_path)
    with pytest.raises(ol.OrtError, match='is not a folder'):
        ol.from_folder(tmp_path / 'missing')


def test_verify_ort_home_catches_old_headers_and_missing_link(tmp_path):
    source = ol.from_folder(fake_ort_release(tmp_path / 'rel', api=21))
    dest = tmp_path / 'ort'
    ol.gather(source, dest)
    with pytest.raises(ol.OrtError, match='C API 21, older than the 22'):
        ol.verify_ort_home(dest, min_api=22)
    (dest / 'lib' / 'libonnxruntime.so').unlink()
    with pytest.raises(ol.OrtError, match='libonnxruntime.so is missing'):
        ol.verify_ort_home(dest)


def test_docker_commands_copy_without_running(tmp_path):
    commands = ol.docker_commands('dustynv/onnxruntime:r36.4.0', tmp_path / 'img', 'phi3v-ort-x')
    assert commands[1] == ['docker', 'create', '--name', 'phi3v-ort-x',
                           'dustynv/onnxruntime:r36.4.0']
    assert ['docker', 'cp', '-L', 'phi3v-ort-x:/usr/local/lib/libonnxruntime_providers_cuda.so',
            str(tmp_path / 'img' / 'lib' / 'libonnxruntime_providers_cuda.so')] in commands
    assert commands[-1] == ['docker', 'rm', '-f', 'phi3v-ort-x']
    assert not any(c[:2] == ['docker', 'run'] for c in commands)


# --------------------------------------------------------------------------------------- downloads

class FakeResponse(io.BytesIO):
    def __init__(self, data):
        super().__init__(data)
        self.headers = {'Content-Length': str(len(data))}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def opener_for(data, calls=None):
    def opener(request, timeout=None):
        if calls is not None:
            calls.append(request.full_url)
        return FakeResponse(data)
    return opener


def test_download_verifies_and_keeps_a_good_file(tmp_path):
    data = b'the pinned content'
    sha = hashlib.sha256(data).hexdigest()
    seen = []
    path = dl.download('https://example.invalid/a.tgz', tmp_path / 'a.tgz', sha,
                       opener=opener_for(data),
                       progress=lambda got, total: seen.append((got, total)))
    assert path.read_bytes() == data and seen[-1] == (len(data), len(data))
    assert not (tmp_path / 'a.tgz.part').exists()


def test_download_refuses_a_corrupted_file(tmp_path):
    sha = hashlib.sha256(b'the pinned content').hexdigest()
    with pytest.raises(dl.DownloadError, match='does not match its pinned sha256'):
        dl.download('https://example.invalid/a.tgz', tmp_path / 'a.tgz', sha,
                    opener=opener_for(b'tampered'))
    assert not (tmp_path / 'a.tgz').exists() and not (tmp_path / 'a.tgz.part').exists()


def test_download_skips_a_verified_file_and_replaces_a_bad_one(tmp_path):
    data = b'content'
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / 'a.tgz').write_bytes(data)
    calls = []
    url = 'https://example.invalid/a.tgz'
    dl.download(url, tmp_path / 'a.tgz', sha, opener=opener_for(b'never', calls))
    assert calls == []
    (tmp_path / 'a.tgz').write_bytes(b'half a file')
    dl.download(url, tmp_path / 'a.tgz', sha, opener=opener_for(data, calls))
    assert calls == [url] and (tmp_path / 'a.tgz').read_bytes() == data


def test_download_network_error(tmp_path):
    def opener(request, timeout=None):
        raise OSError('Name or service not known')
    with pytest.raises(dl.DownloadError, match='could not download'):
        dl.download('https://example.invalid/a', tmp_path / 'a', 'f' * 64, opener=opener)


class RangeServer:
    """
    A loopback HTTP server of one file that honours Range requests.

    With cut_first, the first answer announces the whole file but sends half and closes; with
    stall, it answers nothing until released (a server that hangs).
    """

    def __init__(self, data, cut_first=False, stall=False):
        import http.server
        import threading
        self.data, self.ranges, self.release = data, [], threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.ranges.append(self.headers.get('Range'))
                if stall:
                    server.release.wait(30)
                    return
                start = 0
                if self.headers.get('Range'):
                    start = int(self.headers['Range'].split('=')[1].rstrip('-'))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header('Content-Length', '0')
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header('Content-Range',
                                     f'bytes {start}-{len(data) - 1}/{len(data)}')
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                if cut_first and len(server.ranges) == 1:
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/a.tgz'

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path):
    data = bytes(range(256)) * 4096          # 1 MiB
    sha = hashlib.sha256(data).hexdigest()
    server = RangeServer(data, cut_first=True)
    try:
        with pytest.raises(dl.DownloadError, match='resumes from there'):
            dl.download(server.url, tmp_path / 'a.tgz', sha, timeout_s=10)
        kept = (tmp_path / 'a.tgz.part').stat().st_size
        assert 0 < kept < len(data)
        path = dl.download(server.url, tmp_path / 'a.tgz', sha, timeout_s=10)
    finally:
        server.close()
    assert path.read_bytes() == data
    assert server.ranges == [None, f'bytes={kept}-']   # the second asked only for the rest


def test_a_complete_part_is_used_and_a_too_long_one_downloaded_again(tmp_path):
    data = b'the pinned content'
    sha = hashlib.sha256(data).hexdigest()
    server = RangeServer(data)
    try:
        # stopped after the last byte, before the rename: no request at all
        (tmp_path / 'a.tgz.part').write_bytes(data)
        assert dl.download(server.url, tmp_path / 'a.tgz', sha).read_bytes() == data
        assert server.ranges == []
        # a part as long as the file but wrong: the server answers 416, the file comes whole
        (tmp_path / 'b.tgz.part').write_bytes(b'x' * len(data))
        assert dl.download(server.url, tmp_path / 'b.tgz', sha).read_bytes() == data
        assert server.ranges == [f'bytes={len(data)}-', None]
    finally:
        server.close()


def test_a_server_that_sends_nothing_fails_within_the_timeout(tmp_path):
    import time
    server = RangeServer(b'x', stall=True)
    try:
        start = time.monotonic()
        with pytest.raises(dl.DownloadError, match='could not download.*timed out'):
            dl.download(server.url, tmp_path / 'a.tgz', 'f' * 64, timeout_s=0.5)
        assert time.monotonic() - start < 10
    finally:
        server.close()


def source_archive(version='1.22.0', api=22):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
        files = {
            f'onnxruntime-{version}/include/onnxruntime/core/session/onnxruntime_c_api.h':
                f'#define ORT_API_VERSION {api}\n',
            f'onnxruntime-{version}/include/onnxruntime/core/session/onnxruntime_float16.h':
                '//\n',
            f'onnxruntime-{version}/include/onnxruntime/core/providers/cuda/'
            'cuda_provider_factory.h': '//\n',
            f'onnxruntime-{version}/onnxruntime/core/session/inference_session.h': '//\n',
            f'onnxruntime-{version}/README.md': 'readme',
        }
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_extract_headers_takes_only_the_session_headers(tmp_path):
    archive = tmp_path / 'ort.tar.gz'
    archive.write_bytes(source_archive())
    names = dl.extract_headers(archive, tmp_path / 'include')
    assert names == ['onnxruntime_c_api.h', 'onnxruntime_float16.h']
    assert sorted(p.name for p in (tmp_path / 'include').iterdir()) == names


def test_extract_headers_refuses_another_archive(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
        info = tarfile.TarInfo('x/README')
        info.size = 1
        tar.addfile(info, io.BytesIO(b'x'))
    (tmp_path / 'x.tgz').write_bytes(buffer.getvalue())
    with pytest.raises(dl.DownloadError, match='not an ONNX Runtime source archive'):
        dl.extract_headers(tmp_path / 'x.tgz', tmp_path / 'inc')
