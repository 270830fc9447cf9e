"""
Fakes shared by the build_genai_wheel tests.

A probe over a fixture tree with scripted command output. (Named like the tests so it sits in the
files the builder owns; the two tests here check the fakes.)
"""
import json
import os
from pathlib import Path
import shutil

from phi3v_ros.tools.genai_wheel.platform import CommandResult, Probe

FIXTURES = Path(__file__).parent / 'fixtures' / 'jetson'


def python_probe_json(version='3.10.12', ort=None, has_dev_headers=True, has_pip=True,
                      in_venv=False, externally_managed=False, is_root=False,
                      modules=('numpy', 'onnx', 'tokenizers', 'cv2', 'requests'),
                      ort_error="ModuleNotFoundError: No module named 'onnxruntime'"):
    info = {'version': version, 'executable': '/usr/bin/python3',
            'include_dir': f'/usr/include/python{".".join(version.split(".")[:2])}',
            'has_dev_headers': has_dev_headers, 'has_pip': has_pip, 'in_venv': in_venv,
            'externally_managed': externally_managed, 'is_root': is_root, 'modules': list(modules)}
    if ort:
        info['ort'] = ort
    else:
        info['ort_error'] = ort_error
    return 'PHI3V_PROBE ' + json.dumps(info) + '\n'


class FakeCommands:
    """Answers probe commands from a table: program name (or full path) -> (returncode, stdout)."""

    def __init__(self, answers=None):
        self.answers = {
            'gcc': (0, 'gcc (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0\nCopyright (C) 2021\n'),
            'cmake': (0, 'cmake version 3.22.1\n\n'
                         'CMake suite maintained and supported by Kitware\n'),
            'python3': (0, python_probe_json()),
            'nvidia-smi': (127, ''),
            'nvcc': (127, ''),
        }
        self.answers.update(answers or {})
        self.calls = []

    def __call__(self, argv):
        self.calls.append(list(argv))
        name = os.path.basename(argv[0])
        for key in (argv[0], name):
            if key in self.answers:
                rc, out = self.answers[key]
                return CommandResult(rc, out if rc == 0 else '',
                                     '' if rc == 0 else f'{name}: not found')
        return CommandResult(127, '', f'{name}: not found')


def fixture_tree(name, tmp_path, tools=('cmake', 'git', 'python3')):
    """
    Copy test/fixtures/jetson/<name> to tmp_path.

    The copy has executable stand-ins for the named tools in usr/bin.
    """
    root = Path(tmp_path) / name
    shutil.copytree(FIXTURES / name, root, symlinks=True)
    (root / 'usr' / 'bin').mkdir(parents=True, exist_ok=True)
    for tool in tools:
        path = root / 'usr' / 'bin' / tool
        path.write_text('#!/bin/sh\n')
        path.chmod(0o755)
    return root


def make_probe(name, tmp_path, answers=None, env=None, machine='aarch64', cpu_count=8,
               tools=('cmake', 'git', 'python3')):
    root = fixture_tree(name, tmp_path, tools)
    commands = FakeCommands(answers)
    environment = {'PATH': '/usr/local/bin:/usr/bin:/bin', 'HOME': '/home/jetson'}
    environment.update(env or {})
    probe = Probe(root=root, run=commands, env=environment, machine=machine, cpu_count=cpu_count)
    return probe, commands


def test_fake_commands_answer_by_program_name():
    commands = FakeCommands({'/usr/bin/cmake': (0, 'cmake version 3.28.3\n')})
    assert commands(['/usr/bin/cmake', '--version']).stdout.startswith('cmake version 3.28.3')
    assert commands(['gcc', '--version']).returncode == 0
    assert commands(['nvidia-smi']).returncode == 127


def test_fixture_tree_adds_executable_tools(tmp_path):
    probe, _ = make_probe('orin-jp62', tmp_path)
    assert probe.which('cmake') == '/usr/bin/cmake'
    assert probe.which('docker') is None
