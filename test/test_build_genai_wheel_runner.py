"""Executing a build_genai_wheel plan: resume, failures with hints, prebuilt fallback, progress."""
import hashlib
import io
import json
from pathlib import Path
import tarfile

from phi3v_ros.tools.genai_wheel import versions as V
from phi3v_ros.tools.genai_wheel.failures import match_failures
from phi3v_ros.tools.genai_wheel.ort_libs import from_folder
from phi3v_ros.tools.genai_wheel.plan import make_plan, Options, Step
from phi3v_ros.tools.genai_wheel.platform import CommandResult, preset_platform
from phi3v_ros.tools.genai_wheel.runner import (action_fetch_headers, Context, execute, expand_env,
                                                Progress, State, StepError)
import pytest
from test_build_genai_wheel_ort import fake_ort_release, FakeResponse, source_archive

COMMIT = V.find_release('0.9.2').commit
WHEEL = 'onnxruntime_genai_cuda-0.9.2-cp310-cp310-linux_aarch64.whl'


class FakeMachine:
    """Stands in for git, build.py, pip and the checks; records what ran."""

    def __init__(self, fail_build=None, interrupt_build=False, head=COMMIT, fail=()):
        self.calls = []
        self.fail_build = fail_build
        self.interrupt_build = interrupt_build
        self.head = head
        self.fail = set(fail)

    def run(self, argv, cwd, env, log, on_line):
        argv = list(argv)
        self.calls.append(argv)
        if log:
            Path(log).parent.mkdir(parents=True, exist_ok=True)
        if argv[0] == 'mkdir':
            for folder in argv[2:]:
                Path(folder).mkdir(parents=True, exist_ok=True)
            return 0
        if argv[:2] == ['git', 'clone']:
            (Path(argv[-1]) / '.git').mkdir(parents=True)
            return 0
        if len(argv) > 1 and argv[1].endswith('build.py'):
            if self.interrupt_build:
                raise KeyboardInterrupt
            lines = ['-- Configuring done', '[ 10%] Building CXX object src/x.o',
                     '[ 55%] Building CUDA object', '[ 55%] Linking', '[100%] Built target python']
            if self.fail_build:
                lines = lines[:2] + [self.fail_build]
            with open(log, 'a') as handle:
                handle.write('\n'.join(lines) + '\n')
            for line in lines:
                on_line(line)
            if self.fail_build:
                return 2
            wheel_dir = Path(argv[argv.index('--build_dir') + 1]) / 'Release' / 'wheel'
            wheel_dir.mkdir(parents=True, exist_ok=True)
            (wheel_dir / WHEEL).write_bytes(b'PK fake wheel')
            return 0
        if argv[1:4] == ['-m', 'pip', 'download']:
            if 'pip-download' in self.fail:
                return 1
            dest = Path(argv[argv.index('-d') + 1])
            dest.mkdir(parents=True, exist_ok=True)
            (dest / WHEEL).write_bytes(b'prebuilt wheel')
            return 0
        return 1 if argv[1:3] == ['-m', 'pip'] and 'pip-install' in self.fail else 0

    def capture(self, argv):
        if argv[:2] == ['git', '-C'] and argv[3:] == ['rev-parse', 'HEAD']:
            cloned = (Path(argv[2]) / '.git').exists()
            return CommandResult(0, self.head + '\n') if cloned else CommandResult(128)
        return CommandResult(127)

    def ran(self, predicate):
        return [c for c in self.calls if predicate(c)]


def is_build(argv):
    return len(argv) > 1 and argv[1].endswith('build.py')


def make_test_plan(tmp_path, install=False, **options):
    source = from_folder(fake_ort_release(tmp_path / 'ort-rel'))
    plat = preset_platform('jp6-orin')
    plat.cmake = '3.28.3'
    choice = V.choose_versions(source.version)
    # no look-up on the real jetson-ai-lab index in a test (test_build_genai_wheel_prebuilt.py
    # runs it against a loopback one)
    options.setdefault('build_from_source', 'prebuilt_index' not in options)
    opts = Options(work_root=tmp_path / 'w', install=install, package_root=Path('/ws'), **options)
    return make_plan(plat, choice, source, opts)


def context(machine, lines, restart=False):
    return Context(out=lines.append, run=machine.run, capture=machine.capture, restart=restart,
                   clock=iter(range(0, 100000, 7)).__next__)


def test_a_full_run_builds_and_collects_the_wheel(tmp_path):
    plan = make_test_plan(tmp_path)
    machine, lines = FakeMachine(), []
    assert execute(plan, context(machine, lines)) == 0
    assert [c[0] for c in machine.calls] == ['mkdir', 'git', '/usr/bin/python3']
    assert (plan.work_dir / 'dist' / WHEEL).read_bytes() == b'PK fake wheel'
    assert (plan.work_dir / 'ort' / 'lib' / 'libonnxruntime.so').is_symlink()
    state = json.loads((plan.work_dir / 'state.json').read_text())
    assert state['key'] == plan.key and state['done'] == [s.id for s in plan.steps]
    assert state['data']['wheel'] == str(plan.work_dir / 'dist' / WHEEL)
    text = '\n'.join(lines)
    assert 'build  10%' in text and 'build 100%' in text
    assert 'sha256 ' + hashlib.sha256(b'PK fake wheel').hexdigest() in text


def test_a_second_run_skips_what_is_done(tmp_path):
    plan = make_test_plan(tmp_path)
    execute(plan, context(FakeMachine(), []))
    machine, lines = FakeMachine(), []
    assert execute(plan, context(machine, lines)) == 0
    assert machine.calls == []   # only the always-run ORT check ran, and it runs no command
    text = '\n'.join(lines)
    assert 'resuming: 6 steps were done' in text and 'done before, skipped' in text
    assert 'ok: C API 22' in text


def test_a_failed_build_shows_the_fix_and_resumes_at_the_build(tmp_path):
    plan = make_test_plan(tmp_path)
    killed = 'c++: fatal error: Killed signal terminated program cc1plus'
    machine, lines = FakeMachine(fail_build=killed), []
    assert execute(plan, context(machine, lines)) == 1
    text = '\n'.join(lines)
    assert 'FAILED: Build onnxruntime-genai 0.9.2' in text
    assert 'last lines of' in text and 'Killed signal terminated program cc1plus' in text
    assert 'known problem: the compiler is killed' in text and '--jobs 1' in text
    done = json.loads((plan.work_dir / 'state.json').read_text())['done']
    assert done == ['workdir', 'clone', 'ort-gather', 'ort-check']
    machine, lines = FakeMachine(), []
    assert execute(plan, context(machine, lines)) == 0
    assert not machine.ran(lambda c: c[:2] == ['git', 'clone']), 'the source is not fetched again'
    assert len(machine.ran(is_build)) == 1
    build = machine.ran(is_build)[0]
    assert build[build.index('--build_dir') + 1] == str(plan.work_dir / 'build'), \
        'the same build folder'


def test_a_second_failure_shows_only_its_own_hints(tmp_path):
    """The log keeps every attempt; the hints come from this attempt's lines only."""
    plan = make_test_plan(tmp_path)
    killed = 'c++: fatal error: Killed signal terminated program cc1plus'
    assert execute(plan, context(FakeMachine(fail_build=killed), [])) == 1
    other = "src/models/model.cpp:12:3: error: 'Foo' was not declared in this scope"
    machine, lines = FakeMachine(fail_build=other), []
    assert execute(plan, context(machine, lines)) == 1
    text = '\n'.join(lines)
    assert 'Killed signal' not in text and 'the compiler is killed' not in text, text
    assert "'Foo' was not declared" in text
    build_log = next(step.log for step in plan.steps if step.id == 'build')
    assert killed in Path(build_log).read_text()   # the earlier attempt is still in the log


def test_an_interrupted_build_resumes(tmp_path):
    plan = make_test_plan(tmp_path)
    lines = []
    assert execute(plan, context(FakeMachine(interrupt_build=True), lines)) == 130
    assert 'run the same command again to resume' in '\n'.join(lines)
    machine = FakeMachine()
    assert execute(plan, context(machine, [])) == 0
    assert [c[0] for c in machine.calls] == ['/usr/bin/python3']


def test_state_of_another_plan_is_discarded(tmp_path):
    plan = make_test_plan(tmp_path)
    execute(plan, context(FakeMachine(), []))
    state = json.loads((plan.work_dir / 'state.json').read_text())
    state['key'] = 'something else'
    (plan.work_dir / 'state.json').write_text(json.dumps(state))
    machine = FakeMachine()
    execute(plan, context(machine, []))
    assert machine.ran(is_build)


def test_restart_runs_everything_again(tmp_path):
    plan = make_test_plan(tmp_path)
    execute(plan, context(FakeMachine(), []))
    machine = FakeMachine()
    assert execute(plan, context(machine, [], restart=True)) == 0
    assert machine.ran(is_build) and not machine.ran(lambda c: c[:2] == ['git', 'clone']), \
        'the clone is already at the pinned commit'


def test_a_moved_tag_is_refused(tmp_path):
    plan = make_test_plan(tmp_path)
    lines = []
    assert execute(plan, context(FakeMachine(head='0' * 40), lines)) == 1
    assert 'the tag moved' in '\n'.join(lines)


def test_install_uses_the_collected_wheel_and_runs_the_checks(tmp_path):
    plan = make_test_plan(tmp_path, install=True)
    machine = FakeMachine()
    assert execute(plan, context(machine, [])) == 0
    install = machine.ran(lambda c: c[1:4] == ['-m', 'pip', 'install'])[0]
    assert install[-1] == str(plan.work_dir / 'dist' / WHEEL)
    assert machine.ran(lambda c: c[1:3] == ['-m', 'phi3v_ros.tools.make_tiny_model'])
    machine = FakeMachine()
    execute(plan, context(machine, []))
    assert len(machine.calls) == 6, 'install and the checks run every time'


def test_a_failing_install_stops_with_its_log(tmp_path):
    plan = make_test_plan(tmp_path, install=True)
    lines = []
    assert execute(plan, context(FakeMachine(fail=['pip-install']), lines)) == 1
    assert 'FAILED: Install the wheel' in '\n'.join(lines)


def test_progress_is_throttled():
    lines, now = [], [0.0]
    progress = Progress(lines.append, clock=lambda: now[0], every=5.0)
    build_output = ['[  1%] a', '[  2%] b', '[  2%] c', 'noise', '[ 50%] d', '[100%] e']
    for second, line in enumerate(build_output):
        now[0] = second * 3.0
        progress(line)
    # '[  2%] b' came 3 s after the last line printed: held back; '[  2%] c' 6 s after: printed
    assert [line.split()[1] for line in lines] == ['1%', '2%', '50%', '100%']
    ninja = []
    Progress(ninja.append, clock=lambda: 0.0)('[10/40] Building CUDA object')
    assert ninja[0].split()[1] == '25%'


def test_expand_env_refers_to_the_current_values():
    env = expand_env({'PATH': '/usr/local/cuda-12.6/bin:$PATH', 'PYTHONPATH': '/ws:$PYTHONPATH'},
                     base={'PATH': '/usr/bin'})
    assert env['PATH'] == '/usr/local/cuda-12.6/bin:/usr/bin' and env['PYTHONPATH'] == '/ws'


def test_fetch_headers_verifies_the_archive(tmp_path):
    data = source_archive()
    step = Step('ort-headers', 'headers', 'ort', action='fetch_headers',
                params={'url': 'https://example.invalid/v1.22.0.tar.gz',
                        'sha256': hashlib.sha256(data).hexdigest(),
                        'archive': str(tmp_path / 'dl' / 'ort.tar.gz'),
                        'dest': str(tmp_path / 'inc')})
    ctx = Context(out=[].append, opener=lambda request, timeout=None: FakeResponse(data))
    state = State(tmp_path / 'state.json', 'k')
    action_fetch_headers(step, ctx, state)
    assert (tmp_path / 'inc' / 'onnxruntime_c_api.h').exists()
    step.params['archive'] = str(tmp_path / 'dl' / 'other.tar.gz')
    ctx.opener = lambda request, timeout=None: FakeResponse(data[:-10] + b'corrupted!')
    try:
        action_fetch_headers(step, ctx, state)
    except StepError as exc:
        assert 'does not match its pinned sha256' in str(exc)
    else:
        raise AssertionError('a corrupted archive was accepted')
    assert not (tmp_path / 'dl' / 'other.tar.gz').exists()


def test_state_file_round_trip(tmp_path):
    state = State(tmp_path / 's' / 'state.json', 'key1')
    state.mark_done('a')
    state.data['wheel'] = '/x.whl'
    state.save()
    again = State(tmp_path / 's' / 'state.json', 'key1')
    assert again.resumed and again.done == ['a'] and again.data == {'wheel': '/x.whl'}
    assert State(tmp_path / 's' / 'state.json', 'key2').done == []
    (tmp_path / 's' / 'state.json').write_text('{broken')
    assert State(tmp_path / 's' / 'state.json', 'key1').done == []


def test_tar_fixture_is_a_gzip():
    assert tarfile.open(fileobj=io.BytesIO(source_archive()), mode='r:gz').getnames()


@pytest.mark.parametrize('line, blamed', [
    ("error: 'const struct OrtApi' has no member named 'CreateSessionOptions2'", True),
    ("error: 'Ort::Session' has no member named 'GetOverridableInitializerCount'", True),
    ("error: 'OrtCUDAProviderOptionsV2' was not declared in this scope", True),
    ("error: 'class std::vector<int>' has no member named 'contains'", False),
    ("error: 'struct Generators::Model' has no member named 'device'", False),
    ("error: 'Foo' was not declared in this scope", False),
])
def test_only_errors_about_onnx_runtimes_api_blame_its_version(line, blamed):
    keys = [failure.key for failure in match_failures(line)]
    assert ('api-too-old' in keys) is blamed, keys
