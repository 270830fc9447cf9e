"""
fetch_model: folder selection by onnxruntime-genai version, messages.

The download is replaced by a local one.
"""
import json
from pathlib import Path
import sys

from phi3v_ros.engine import model_paths as M
from phi3v_ros.tools import fetch_model as F
import pytest


@pytest.fixture(autouse=True)
def model_root(tmp_path, monkeypatch):
    root = tmp_path / 'models'
    monkeypatch.setenv(M.MODEL_DIR_ENV, str(root))
    return root


def versions(table):
    def version_of(name):
        if name in table:
            return table[name]
        raise LookupError(name)
    return version_of


def write_model(folder, broken=None):
    """Write a stand-in for a downloaded phi3v folder (tiny files, the published names)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {'model': {'type': 'phi3v',
                        'decoder': {'filename': 'phi-3-v-128k-instruct-text.onnx'},
                        'embedding': {'filename': 'phi-3-v-128k-instruct-text-embedding.onnx'},
                        'vision': {'filename': 'phi-3-v-128k-instruct-vision.onnx'}}}
    (folder / 'genai_config.json').write_text(json.dumps(config))
    (folder / 'processor_config.json').write_text('{}')
    (folder / 'tokenizer.json').write_text('{}')
    for part in ('text', 'text-embedding', 'vision'):
        (folder / f'phi-3-v-128k-instruct-{part}.onnx').write_bytes(b'\x08\x07onnx')
        (folder / f'phi-3-v-128k-instruct-{part}.onnx.data').write_bytes(b'\0' * 16)
    if broken == 'no-processor':
        (folder / 'processor_config.json').unlink()
    if broken == 'lfs':
        (folder / 'phi-3-v-128k-instruct-text.onnx.data').write_bytes(
            b'version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 2090000000\n')
    return folder


class FakeHub:
    """
    Replaces huggingface_hub.snapshot_download.

    It writes the folder the patterns ask for under local_dir.
    """

    def __init__(self, broken=None, error=None):
        self.calls = []
        self.broken = broken
        self.error = error

    def __call__(self, repo_id, allow_patterns, local_dir, revision=None):
        self.calls.append((repo_id, list(allow_patterns), local_dir, revision))
        if self.error:
            raise self.error
        (pattern,) = allow_patterns
        write_model(Path(local_dir) / pattern[:-2], self.broken)
        return local_dir


def run(argv, hub=None, table=None, free=10 ** 12, cuda=True):
    lines = []
    status = F.main(argv, download=hub or FakeHub(), version_of=versions(table or {}),
                    out=lines.append, disk_free=lambda path: free, cuda_available=lambda: cuda)
    return status, '\n'.join(lines)


@pytest.mark.parametrize('variant, genai, expected', [
    ('int4', '0.18.0', M.NOV2024_INT4),
    ('int4', '0.9.2', M.NOV2024_INT4),
    ('int4', '0.5.0', M.NOV2024_INT4),
    ('cpu', '0.9.2', M.NOV2024_CPU),
    ('int4', '0.4.0', M.MAY2024_INT4),
    ('fp16', '0.4.0', M.MAY2024_FP16),
    ('cpu', '0.4.0', M.MAY2024_CPU),
    ('int4', None, M.NOV2024_INT4),
    ('phi3.5-int4', '0.18.0', M.PHI35_INT4),
    ('phi3.5-cpu', '0.5.0', M.PHI35_CPU),
    ('phi3.5-int4', None, M.PHI35_INT4),
])
def test_folder_follows_the_onnxruntime_genai_version(variant, genai, expected):
    assert F.select_folder(variant, genai) == expected


def test_published_names():
    assert (M.NOV2024_INT4.repo_id, M.NOV2024_INT4.folder) == \
        ('microsoft/Phi-3-vision-128k-instruct-onnx', 'gpu/gpu-int4-rtn-block-32')
    assert (M.MAY2024_INT4.repo_id, M.MAY2024_INT4.folder) == \
        ('microsoft/Phi-3-vision-128k-instruct-onnx-cuda', 'cuda-int4-rtn-block-32')
    assert M.MAY2024_FP16.folder == 'cuda-fp16' and M.MAY2024_CPU.repo_id.endswith('-onnx-cpu')


def test_phi35_vision_names_as_published():
    # microsoft/Phi-3.5-vision-instruct-onnx's file tree on huggingface.co (checked 2026-12):
    # gpu/gpu-int4-rtn-block-32 (2.6 GB),
    # cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4 (3.22 GB)
    assert (M.PHI35_INT4.repo_id, M.PHI35_INT4.folder) == \
        ('microsoft/Phi-3.5-vision-instruct-onnx', 'gpu/gpu-int4-rtn-block-32')
    assert (M.PHI35_CPU.repo_id, M.PHI35_CPU.folder) == \
        ('microsoft/Phi-3.5-vision-instruct-onnx',
         'cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4')
    assert M.PHI35_CPU.for_cpu and not M.PHI35_INT4.for_cpu


def test_phi35_vision_needs_a_release_that_reads_its_export():
    with pytest.raises(F.FetchError, match='0.5 and newer, not 0.4.0'):
        F.select_folder('phi3.5-int4', '0.4.0')


def test_phi35_vision_download_prints_its_model_path(model_root):
    hub = FakeHub()
    status, text = run(['--variant', 'phi3.5-int4'], hub, {'onnxruntime-genai-cuda': '0.9.2'})
    target = model_root / 'Phi-3.5-vision-instruct-onnx' / 'gpu' / 'gpu-int4-rtn-block-32'
    assert status == 0 and hub.calls[0][:2] == ('microsoft/Phi-3.5-vision-instruct-onnx',
                                                ['gpu/gpu-int4-rtn-block-32/*'])
    assert f'model_path: {target}' in text and f'-p model_path:={target}' in text
    hint = M.missing_model_hint(str(target))
    assert '`ros2 run phi3v_ros fetch_model --variant phi3.5-int4`' in hint, hint
    status, text = run(['--variant', 'phi3.5-int4'], FakeHub(), {'onnxruntime-genai': '0.18.0'},
                       cuda=False)
    assert '--variant phi3.5-cpu is the model made for CPU' in text


def test_fp16_with_a_new_release_is_refused_with_the_reason():
    with pytest.raises(F.FetchError) as info:
        F.select_folder('fp16', '0.9.2')
    message = str(info.value)
    assert 'cuda-fp16' in message and 'onnxruntime-genai 0.4,' in message
    assert 'the installed 0.9.2' in message
    assert '--variant int4' in message


@pytest.mark.parametrize('genai', ['0.2.1', '0.3.0'])
def test_a_release_the_engine_refuses_gets_no_folder(genai):
    # 0.3 reads the May-2024 folder, but the engine refuses it: downloading 2.6 GB for it would
    # only lead to that refusal
    with pytest.raises(F.FetchError, match='0.4 is the oldest it runs') as info:
        F.select_folder('int4', genai)
    assert 'install 0.4 or newer' in str(info.value)


def test_installed_version_prefers_the_cuda_build():
    both = versions({'onnxruntime-genai-cuda': '0.9.2', 'onnxruntime-genai': '0.18.0'})
    assert F.installed_genai(both) == ('onnxruntime-genai-cuda', '0.9.2')
    assert F.installed_genai(versions({'onnxruntime-genai': '0.18.0'})) == \
        ('onnxruntime-genai', '0.18.0')
    assert F.installed_genai(versions({})) is None


def test_download_prints_the_default_model_path(model_root):
    hub = FakeHub()
    status, text = run([], hub, {'onnxruntime-genai-cuda': '0.9.2'})
    assert status == 0, text
    target = model_root / 'Phi-3-vision-128k-instruct-onnx' / 'gpu' / 'gpu-int4-rtn-block-32'
    assert hub.calls == [('microsoft/Phi-3-vision-128k-instruct-onnx',
                          ['gpu/gpu-int4-rtn-block-32/*'],
                          str(model_root / 'Phi-3-vision-128k-instruct-onnx'), None)]
    assert f'model_path: {target}' in text
    assert str(target) == M.default_model_path()
    assert "node's default model_path" in text
    assert F.validate_model_folder(target) == []


def test_may_2024_folder_for_0_4_into_another_dest(tmp_path):
    hub = FakeHub()
    status, text = run(['--dest', str(tmp_path / 'elsewhere'), '--revision', 'abc123'], hub,
                       {'onnxruntime-genai-cuda': '0.4.0'})
    assert status == 0
    assert hub.calls[0][:2] == ('microsoft/Phi-3-vision-128k-instruct-onnx-cuda',
                                ['cuda-int4-rtn-block-32/*'])
    assert hub.calls[0][3] == 'abc123'
    target = (tmp_path / 'elsewhere' / 'Phi-3-vision-128k-instruct-onnx-cuda'
              / 'cuda-int4-rtn-block-32')
    assert f'model_path: {target}' in text and 'May-2024' in text
    assert f'-p model_path:={target}' in text


def test_a_build_without_cuda_gets_a_note_whatever_its_name(model_root):
    for name in ('onnxruntime-genai', 'onnxruntime-genai-cuda'):   # the CUDA one failing to load
        status, text = run([], FakeHub(), {name: '0.18.0'}, cuda=False)
        assert status == 0 and f'the installed {name} has no CUDA' in text, text
    status, text = run(['--variant', 'cpu'], FakeHub(), {'onnxruntime-genai': '0.18.0'},
                       cuda=False)
    assert status == 0 and 'cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4' in text
    # a wheel built here is named onnxruntime-genai and has CUDA: no note
    status, text = run([], FakeHub(), {'onnxruntime-genai': '0.11.4'}, cuda=True)
    assert status == 0 and 'has no CUDA' not in text


def test_genai_has_cuda_asks_the_installed_release():
    og = pytest.importorskip('onnxruntime_genai')
    assert F.genai_has_cuda() is bool(og.is_cuda_available())


def test_refusal_exits_before_downloading():
    hub = FakeHub()
    status, text = run(['--variant', 'fp16'], hub, {'onnxruntime-genai-cuda': '0.9.2'})
    assert status == 2 and text.startswith('error: the only published fp16') and hub.calls == []


def test_nothing_installed_assumes_the_current_folders():
    status, text = run(['--dry-run'], FakeHub(), {})
    assert (status == 0 and 'not installed in this Python' in text
            and 'gpu/gpu-int4-rtn-block-32/*' in text)


def test_genai_version_option_overrides_the_installed_one():
    hub = FakeHub()
    status, _ = run(['--genai-version', '0.4.0', '--variant', 'fp16'], hub,
                    {'onnxruntime-genai-cuda': '0.9.2'})
    assert status == 0 and hub.calls[0][1] == ['cuda-fp16/*']


def test_complete_folder_is_not_downloaded_again(model_root):
    write_model(M.NOV2024_INT4.local_path(model_root))
    hub = FakeHub()
    status, text = run([], hub, {'onnxruntime-genai-cuda': '0.9.2'})
    assert status == 0 and hub.calls == [] and 'already downloaded and complete' in text


def test_incomplete_download_is_reported():
    status, text = run([], FakeHub(broken='no-processor'), {'onnxruntime-genai-cuda': '0.9.2'})
    assert status == 1 and 'processor_config.json is missing' in text and 'resume' in text


def test_lfs_pointer_is_not_a_model(tmp_path):
    folder = write_model(tmp_path / 'm', broken='lfs')
    assert F.validate_model_folder(folder) == [
        'phi-3-v-128k-instruct-text.onnx.data is a Git LFS pointer, not the weights (cloned '
        'without git-lfs?)']
    # the same check the node makes at load (model_paths), for every file of the folder
    (folder / 'tokenizer.json').write_bytes((folder / 'phi-3-v-128k-instruct-text.onnx.data')
                                            .read_bytes())
    assert M.lfs_pointer_files(folder) == ['phi-3-v-128k-instruct-text.onnx.data',
                                           'tokenizer.json']
    assert len(F.validate_model_folder(folder)) == 2


def test_only_small_files_starting_with_the_lfs_line_are_pointers(tmp_path):
    pointer = b'version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n'
    (tmp_path / 'pointer.onnx').write_bytes(pointer)
    (tmp_path / 'large.onnx.data').write_bytes(pointer + b'\0' * 2048)   # over the 1024-byte cap
    (tmp_path / 'weights.onnx').write_bytes(b'\x08\x07' + pointer)
    assert M.is_lfs_pointer(tmp_path / 'pointer.onnx')
    assert not M.is_lfs_pointer(tmp_path / 'large.onnx.data')
    assert not M.is_lfs_pointer(tmp_path / 'missing')
    assert M.lfs_pointer_files(tmp_path) == ['pointer.onnx']


def test_validation_of_a_bad_config(tmp_path):
    folder = write_model(tmp_path / 'm')
    (folder / 'phi-3-v-128k-instruct-vision.onnx').unlink()
    assert F.validate_model_folder(folder) == [
        'phi-3-v-128k-instruct-vision.onnx (named in genai_config.json) is missing']
    (folder / 'genai_config.json').write_text('{not json')
    assert any('not valid JSON' in p for p in F.validate_model_folder(folder))
    assert F.validate_model_folder(tmp_path / 'none') == [f'{tmp_path / "none"} does not exist']


def test_network_error_says_it_resumes():
    status, text = run([], FakeHub(error=ConnectionError('Name or service not known')),
                       {'onnxruntime-genai-cuda': '0.9.2'})
    assert status == 1 and 'ConnectionError' in text and 'it resumes' in text


def test_not_enough_disk():
    hub = FakeHub()
    status, text = run([], hub, {'onnxruntime-genai-cuda': '0.9.2'}, free=10 ** 9)
    assert status == 1 and 'only 0.9 GiB free' in text and '--dest' in text and hub.calls == []


def test_missing_huggingface_hub_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'huggingface_hub', None)
    with pytest.raises(F.FetchError, match='pip install huggingface_hub'):
        F.hf_download('microsoft/Phi-3-vision-128k-instruct-onnx', ['gpu/gpu-int4-rtn-block-32/*'],
                      '/tmp/x')
    lines = []
    status = F.main([], version_of=versions({'onnxruntime-genai-cuda': '0.9.2'}), out=lines.append,
                    disk_free=lambda path: 10 ** 12)
    assert status == 1 and 'pip install huggingface_hub' in lines[-1]


def test_dry_run_downloads_nothing(model_root):
    hub = FakeHub()
    status, text = run(['--dry-run'], hub, {'onnxruntime-genai-cuda': '0.9.2'})
    assert (status == 0 and hub.calls == []
            and 'would call huggingface_hub.snapshot_download' in text)
    assert not model_root.exists()


# ------------------------------------------------------------------------------------- model_paths

def test_model_root_and_default_path(model_root, monkeypatch):
    assert M.model_root() == model_root
    assert M.default_model_path() == str(model_root / 'Phi-3-vision-128k-instruct-onnx' / 'gpu' /
                                         'gpu-int4-rtn-block-32')
    monkeypatch.delenv(M.MODEL_DIR_ENV)
    assert M.model_root() == Path.home() / '.cache' / 'phi3v_ros' / 'models'


def test_default_model_path_follows_the_provider(model_root):
    cpu = model_root / 'Phi-3-vision-128k-instruct-onnx' / 'cpu_and_mobile' / \
        'cpu-int4-rtn-block-32-acc-level-4'
    assert M.default_model_path('cpu') == str(cpu)
    assert M.default_model_path('cuda') == M.default_model_path('auto') == M.default_model_path()
    assert '`ros2 run phi3v_ros fetch_model --variant cpu`' in M.missing_model_hint(str(cpu))


def test_model_folders_below_finds_the_folder_one_or_two_levels_down(tmp_path):
    for folder in ('repo/gpu/gpu-int4-rtn-block-32', 'repo/cpu_and_mobile/cpu-int4',
                   'repo/.cache/hidden', 'repo/onnx', 'repo/a/b/too-deep'):
        (tmp_path / folder).mkdir(parents=True)
    for folder in ('repo/gpu/gpu-int4-rtn-block-32', 'repo/cpu_and_mobile/cpu-int4',
                   'repo/.cache/hidden', 'repo/a/b/too-deep'):
        (tmp_path / folder / 'genai_config.json').write_text('{}')
    assert M.model_folders_below(tmp_path / 'repo') == [
        str(tmp_path / 'repo/cpu_and_mobile/cpu-int4'),
        str(tmp_path / 'repo/gpu/gpu-int4-rtn-block-32')]
    assert M.model_folders_below(tmp_path / 'repo' / 'gpu') == [
        str(tmp_path / 'repo/gpu/gpu-int4-rtn-block-32')]
    assert M.model_folders_below(tmp_path / 'nothing') == []


def test_missing_model_hint_names_the_command(model_root, tmp_path):
    hint = M.missing_model_hint(M.default_model_path())
    assert '`ros2 run phi3v_ros fetch_model`' in hint and '2.6 GB' in hint
    cpu = str(tmp_path / 'x' / 'Phi-3-vision-128k-instruct-onnx' / 'cpu_and_mobile' /
              'cpu-int4-rtn-block-32-acc-level-4')
    assert f'`ros2 run phi3v_ros fetch_model --variant cpu --dest {tmp_path / "x"}`' \
        in M.missing_model_hint(cpu)
    other = M.missing_model_hint('/opt/my-model')
    assert '`ros2 run phi3v_ros fetch_model`' in other and M.default_model_path() in other
    assert '\n' not in hint and '\n' not in other
