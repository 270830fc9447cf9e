"""The planner and --dry-run of build_genai_wheel: exact commands for representative platforms."""
from pathlib import Path
import shlex

from phi3v_ros.tools import build_genai_wheel as tool
from phi3v_ros.tools.genai_wheel import versions as V
from phi3v_ros.tools.genai_wheel.checks import check_prerequisites
from phi3v_ros.tools.genai_wheel.ort_libs import source_summary_for_preset
from phi3v_ros.tools.genai_wheel.plan import (header_archive, make_plan, Options, parallel_jobs,
                                              render_plan, use_guidance, wheel_name)
from phi3v_ros.tools.genai_wheel.platform import GIB, preset_platform
import pytest
from test_build_genai_wheel_fakes import make_probe, python_probe_json
from test_build_genai_wheel_ort import fake_ort_release

WORK = Path('/home/jetson/.cache/phi3v_ros/genai-build')
CAPI = '/usr/local/lib/python3.10/dist-packages/onnxruntime/capi'


def plan_for(preset, install=False, **options):
    plat = preset_platform(preset)
    source = source_summary_for_preset(plat.ort_runtime.capi_dir, plat.ort_runtime.version, 12)
    choice = V.choose_versions(source.version)
    opts = Options(work_root=WORK, install=install, package_root=Path('/ws/src/phi3v_ros'),
                   home=Path('/home/jetson'), **options)
    return plat, choice, make_plan(plat, choice, source, opts)


def step(plan, step_id):
    return next(s for s in plan.steps if s.id == step_id)


def test_default_target_build_command_is_exact():
    plat, choice, plan = plan_for('jp6-orin')
    work = WORK / 'genai-0.9.2-ort-1.22.0-sm87-cuda12.6-py3.10'
    assert plan.work_dir == work
    build = step(plan, 'build')
    assert build.argv == [
        '/usr/bin/python3', f'{work}/src/build.py', '--config', 'Release', '--update', '--build',
        '--skip_tests', '--use_cuda', '--cuda_home', '/usr/local/cuda-12.6', '--ort_home',
        f'{work}/ort', '--build_dir', f'{work}/build', '--skip_examples', '--cmake_path',
        '/usr/bin/cmake', '--cmake_extra_defines',
        'CMAKE_CUDA_ARCHITECTURES=87', 'ENABLE_TESTS=OFF', 'ENABLE_MODEL_BENCHMARK=OFF',
        'Python_EXECUTABLE=/usr/bin/python3', 'PYTHON_EXECUTABLE=/usr/bin/python3']
    assert build.cwd == f'{work}/src' and build.log == f'{work}/logs/build.log' and build.progress
    assert build.env == {'CUDA_PATH': '/usr/local/cuda-12.6', 'CUDA_HOME': '/usr/local/cuda-12.6',
                         'CUDACXX': '/usr/local/cuda-12.6/bin/nvcc',
                         'PATH': '/usr/local/cuda-12.6/bin:$PATH',
                         'CMAKE_BUILD_PARALLEL_LEVEL': '12', 'MAKEFLAGS': '-j12'}
    assert '--parallel' not in build.argv, 'unbounded --parallel runs small Jetsons out of memory'
    assert [s.id for s in plan.steps] == ['workdir', 'prebuilt', 'clone', 'ort-gather',
                                          'ort-headers', 'ort-check', 'build', 'collect-wheel']


def test_default_target_source_and_headers_are_pinned():
    _, _, plan = plan_for('jp6-orin')
    clone = step(plan, 'clone')
    assert (clone.params['commit'] == 'fc6f8d7e7079c6a749a7a46910502fae57afa12c'
            and clone.params['tag'] == 'v0.9.2')
    assert any('git clone --branch v0.9.2 --depth 1 --single-branch '
               'https://github.com/microsoft/onnxruntime-genai'
               in line for line in clone.detail)
    headers = step(plan, 'ort-headers')
    assert headers.params['url'] == \
        'https://github.com/microsoft/onnxruntime/archive/refs/tags/v1.22.0.tar.gz'
    assert headers.params['sha256'] == V.ORT_SOURCE_ARCHIVES['1.22.0']
    gather = step(plan, 'ort-gather')
    assert gather.params['lib_dir'] == CAPI and gather.params['min_api'] == 22
    assert any(d.startswith('ln -sf libonnxruntime.so.1.22.0 ')
               and '/ort/lib/libonnxruntime.so   #' in d
               for d in gather.detail)


def test_install_adds_install_and_the_checks():
    _, _, plan = plan_for('jp6-orin', install=True)
    ids = [s.id for s in plan.steps]
    assert ids[-6:] == ['install', 'check-import', 'check-cuda', 'tiny-model', 'check-generate',
                        'check-guidance']
    guided = step(plan, 'check-guidance')
    assert 'answer_format=("choices"' in guided.argv[2] and guided.allow_fail, \
        'said, not failed, for a wheel built (or found) without guidance'
    install = step(plan, 'install')
    assert install.argv == ['/usr/bin/python3', '-m', 'pip', 'install', '--no-deps',
                            '--force-reinstall', '--user', '{wheel}']
    cuda = step(plan, 'check-cuda')
    assert 'og.is_cuda_available()' in cuda.argv[2] and cuda.always
    tiny = step(plan, 'tiny-model')
    assert tiny.argv == ['/usr/bin/python3', '-m', 'phi3v_ros.tools.make_tiny_model',
                         f'{plan.work_dir}/tiny-model']
    assert tiny.env == {'PYTHONPATH': '/ws/src/phi3v_ros:$PYTHONPATH'}
    generate = step(plan, 'check-generate')
    assert generate.argv[-2:] == [f'{plan.work_dir}/tiny-model', 'cuda']
    code = generate.argv[2]
    assert 'EngineConfig(model_path=sys.argv[1], provider=sys.argv[2])' in code
    assert 'GenerationSettings(max_new_tokens=4)' in code and 'assert r.ok' in code
    compile(code, '<check>', 'exec')


def test_without_install_the_commands_are_printed_after():
    _, _, plan = plan_for('jp6-orin')
    text = '\n'.join(plan.after)
    wheel = f'{plan.work_dir}/dist/onnxruntime_genai_cuda-0.9.2-cp310-cp310-linux_aarch64.whl'
    assert f'pip install --no-deps --force-reinstall --user {wheel}' in text
    assert 'phi3v_ros.tools.make_tiny_model' in text


def test_orin_nano_jobs_are_bounded_by_memory():
    plat, _, plan = plan_for('jp6-orin-nano')
    assert plat.mem_available == int(8 * GIB * 0.8)
    assert plan.jobs == 3, '(6.4 GiB - 1.5 GiB reserve) / 1.5 GiB a job'
    assert step(plan, 'build').env['CMAKE_BUILD_PARALLEL_LEVEL'] == '3'


@pytest.mark.parametrize('available_gib, cpus, jobs',
                         [(64, 12, 12), (28, 8, 8), (8, 6, 4), (6.4, 6, 3), (2.9, 6, 1),
                          (1.0, 6, 1),
                          (None, 4, 1)])
def test_parallel_jobs(available_gib, cpus, jobs):
    available = None if available_gib is None else int(available_gib * GIB)
    assert parallel_jobs(available, cpus)[0] == jobs
    assert parallel_jobs(available, cpus, requested=3)[0] == 3


def test_two_cuda_installs_pin_the_chosen_one():
    plat, choice, plan = plan_for('jp60-orin')
    build = step(plan, 'build')
    cuda_home = build.argv[build.argv.index('--cuda_home') + 1]
    assert build.env['CUDA_PATH'] == '/usr/local/cuda-12.2' == cuda_home
    assert build.env['CUDACXX'] == '/usr/local/cuda-12.2/bin/nvcc'


def test_thor_and_xavier_arch():
    _, _, plan = plan_for('jp7-thor')
    assert 'CMAKE_CUDA_ARCHITECTURES=110' in step(plan, 'build').argv
    name = wheel_name(V.choose_versions(), preset_platform('jp7-thor'))
    assert name.endswith('-cp312-cp312-linux_aarch64.whl')
    _, _, plan = plan_for('jp5-xavier')
    assert 'CMAKE_CUDA_ARCHITECTURES=72' in step(plan, 'build').argv


def test_install_cmake_step_uses_the_user_cmake():
    _, _, plan = plan_for('jp6-orin', install_cmake=True)
    cmake = step(plan, 'cmake')
    assert cmake.argv == ['/usr/bin/python3', '-m', 'pip', 'install', '--user', 'cmake>=3.28,<4']
    build = step(plan, 'build')
    assert build.argv[build.argv.index('--cmake_path') + 1] == '/home/jetson/.local/bin/cmake'


def test_old_release_flags():
    plat = preset_platform('jp6-orin')
    release = V.find_release('0.4.0')
    choice = V.VersionChoice(release, '1.19.2', 'test')
    plan = make_plan(plat, choice, source_summary_for_preset(CAPI, '1.19.2', 12),
                     Options(work_root=WORK))
    argv = step(plan, 'build').argv
    assert '--skip_csharp' in argv and '--skip_examples' not in argv


@pytest.mark.parametrize('cargo,guidance,deps,built,why', [
    (None, 'auto', False, False, 'no Rust (cargo) here'),
    ('1.88.0', 'auto', False, True, 'cargo 1.88.0'),
    ('1.88.0', 'off', False, False, '--guidance off'),
    ('1.88.0', 'auto', True, False, 'downloaded by cargo'),
])
def test_guidance_is_built_where_cargo_is_and_the_build_is_online(cargo, guidance, deps,
                                                                  built, why, tmp_path):
    plat = preset_platform('jp6-orin')
    plat.cargo = cargo
    source = source_summary_for_preset(plat.ort_runtime.capi_dir, plat.ort_runtime.version, 12)
    choice = V.choose_versions(source.version)
    opts = Options(work_root=WORK, guidance=guidance, deps_dir=tmp_path if deps else None)
    assert use_guidance(plat, choice, opts) == (built, use_guidance(plat, choice, opts)[1])
    assert why in use_guidance(plat, choice, opts)[1]
    if not deps:    # the plan says it, and build.py gets the flag
        plan = make_plan(plat, choice, source, opts)
        assert ('--use_guidance' in step(plan, 'build').argv) == built
        (note,) = [n for n in plan.notes if n.startswith('guidance (constrained answers)')]
        assert ('built in' in note) == built and why in note, note


def test_guidance_checks_warn_or_refuse():
    plat = preset_platform('jp6-orin')
    source = source_summary_for_preset(plat.ort_runtime.capi_dir, plat.ort_runtime.version, 12)
    choice = V.choose_versions(source.version)

    def said(**options):
        return [str(p) for p in check_prerequisites(plat, choice, source, install=False,
                                                    **options)
                if 'guidance' in str(p) or 'Rust' in str(p)]
    assert plat.cargo is None and any(line.startswith('WARNING') for line in said())
    assert any(line.startswith('ERROR') and 'rustup' in line for line in said(guidance='on'))
    assert said(guidance='off') == []
    old = V.VersionChoice(V.find_release('0.7.1'), '1.19.2', 'test')
    assert any('has no guidance (0.8 and later)' in str(problem) for problem in
               check_prerequisites(plat, old, source, install=False, guidance='on'))


def test_prebuilt_wheel_is_looked_for_first_on_a_jetson():
    _, _, plan = plan_for('jp6-orin')
    (look,) = [s for s in plan.steps if s.phase == 'prebuilt']
    assert look.id == 'prebuilt' and look.fallback and plan.steps.index(look) == 1
    assert look.params['index'] == 'https://pypi.jetson-ai-lab.io/jp6/cu126/+simple/'
    assert look.params['python_tag'] == 'cp310' and look.params['compute_capability'] == '87'
    assert look.params['sha256'] is None
    _, _, plan = plan_for('jp6-orin', prebuilt_index='https://index.example/jp6/cu126',
                          prebuilt_sha256='AB' * 32)
    look = step(plan, 'prebuilt')
    assert look.params['index'] == 'https://index.example/jp6/cu126/'
    assert look.params['sha256'] == 'ab' * 32
    _, _, plan = plan_for('jp6-orin', build_from_source=True)
    assert 'prebuilt' not in [s.id for s in plan.steps]
    assert any('not looked for (--build-from-source)' in n for n in plan.notes)


def test_container_image_source():
    _, _, plan = plan_for('jp6-orin', ort_image='dustynv/onnxruntime:r36.4.0')
    image_steps = [s for s in plan.steps if s.id.startswith('ort-image-')]
    assert image_steps[0].argv[:3] == ['docker', 'rm', '-f'] and image_steps[0].allow_fail
    assert image_steps[1].argv[:3] == ['docker', 'create', '--name']
    gather = step(plan, 'ort-gather')
    assert (gather.params['lib_dir'].endswith('ort-image/lib')
            and gather.params['header_dir'].endswith('ort-image/include'))
    assert 'ort-headers' not in [s.id for s in plan.steps]


def test_given_headers_folder():
    _, _, plan = plan_for('jp6-orin', ort_headers=Path('/opt/ort/include'))
    headers = step(plan, 'ort-headers')
    assert headers.action == 'copy_headers' and headers.params['src'] == '/opt/ort/include'


def test_header_archive_choice():
    choice = V.choose_versions('1.22.0')
    assert header_archive(choice, source_summary_for_preset(CAPI, '1.22.0', 12)) == '1.22.0'
    choice = V.choose_versions('1.23.0')
    assert header_archive(choice, source_summary_for_preset(CAPI, '1.23.0', 12)) == '1.22.2'
    choice = V.choose_versions('1.21.0')
    assert header_archive(choice, source_summary_for_preset(CAPI, '1.21.0', 12)) == '1.21.1'
    choice = V.choose_versions(genai='0.10.0', ort='1.23.2')
    assert header_archive(choice, source_summary_for_preset(CAPI, '1.23.2', 12)) is None
    assert header_archive(choice, source_summary_for_preset(CAPI, '1.24.2', 12)) == '1.24.2'
    assert header_archive(choice, source_summary_for_preset(CAPI, '1.24.3', 12)) == '1.24.4'


def test_render_is_readable_and_exact():
    _, _, plan = plan_for('jp6-orin', install=True)
    lines = render_plan(plan)
    text = '\n'.join(lines)
    assert lines[1] == f'      export WORK={plan.work_dir}'
    build_line = next(line for line in lines if '$WORK/src/build.py' in line)
    command = build_line.split('$ ', 1)[1]
    words = shlex.split(command.replace('$WORK', str(plan.work_dir)).replace('$PATH', '/usr/bin'))
    assert words[words.index('/usr/bin/python3'):] == [a.replace('$PATH', '/usr/bin')
                                                       for a in step(plan, 'build').argv]
    assert '$WORK/dist/onnxruntime_genai_cuda-0.9.2-cp310-cp310-linux_aarch64.whl' in text
    assert '[runs every time]' in text


# ------------------------------------------------------------------------------------------ main()

def run_main(argv, probe):
    lines = []
    status = tool.main(argv, probe=probe, out=lines.append)
    return status, '\n'.join(lines)


def test_dry_run_on_a_desktop_shows_the_default_target(tmp_path):
    probe, _ = make_probe('x86-desktop', tmp_path, machine='x86_64')
    status, text = run_main(['--dry-run', '--work-dir', str(tmp_path / 'w')], probe)
    assert status == 0
    assert ('This machine is not a Jetson (x86_64' in text
            and 'JetPack 6.2 (L4T R36.4.3) on a Jetson AGX Orin' in text)
    assert 'onnxruntime-genai 0.9.2 + ONNX Runtime 1.22.0' in text
    assert 'CMAKE_CUDA_ARCHITECTURES=87' in text and '(dry run: nothing was run)' in text
    assert not (tmp_path / 'w').exists(), 'a dry run creates nothing'


def test_dry_run_for_another_target(tmp_path):
    probe, _ = make_probe('x86-desktop', tmp_path, machine='x86_64')
    status, text = run_main(['--dry-run', '--target', 'jp5-xavier', '--work-dir',
                             str(tmp_path / 'w')], probe)
    assert status == 0 and 'CUDA 11.4' in text and 'a real run stops' in text


def test_real_run_refuses_a_desktop(tmp_path):
    probe, _ = make_probe('x86-desktop', tmp_path, machine='x86_64')
    status, text = run_main(['--work-dir', str(tmp_path / 'w')], probe)
    assert status == 2 and 'not a Jetson' in text and '--dry-run' in text


def test_list_versions(tmp_path):
    lines = []
    assert tool.main(['--list-versions'], out=lines.append) == 0
    assert any(line.startswith('0.9.2') and '(default)' in line for line in lines)


def jetson_probe(tmp_path, ort_version='1.22.0', cmake='3.28.3'):
    ort = {'version': ort_version, 'providers': ['CUDAExecutionProvider', 'CPUExecutionProvider'],
           'capi_dir': CAPI}
    probe, commands = make_probe('orin-jp62', tmp_path, answers={
        'python3': (0, python_probe_json(ort=ort)), 'cmake': (0, f'cmake version {cmake}\n'),
        'cargo': (0, 'cargo 1.88.0 (873a06493 2025-05-10)\n')},
        env={'ROS_DISTRO': 'humble'}, tools=('cmake', 'git', 'python3', 'cargo'))
    release = fake_ort_release(tmp_path / 'rel', version=ort_version, headers=False, links=False)
    capi = probe.path(CAPI)
    capi.mkdir(parents=True)
    for file in (release / 'lib').iterdir():
        (capi / file.name).write_bytes(file.read_bytes())
    return probe


def test_dry_run_on_a_jetson_uses_what_it_finds(tmp_path):
    probe = jetson_probe(tmp_path)
    status, text = run_main(['--dry-run', '--install', '--work-dir', str(tmp_path / 'w')], probe)
    assert status == 0, text
    assert 'This machine is not a Jetson' not in text
    assert 'JetPack 6.2 (L4T R36.4.3)' in text and 'Checks: all prerequisites are there.' in text
    assert 'ONNX Runtime source: python onnxruntime 1.22.0 in /usr/bin/python3' in text
    assert 'compile jobs: 8' in text     # 56 GiB available, 8 CPUs in the fake
    assert 'CMAKE_BUILD_PARALLEL_LEVEL=8' in text
    assert not (tmp_path / 'w').exists()


def test_jetson_with_older_onnxruntime_picks_an_older_release(tmp_path):
    probe = jetson_probe(tmp_path, ort_version='1.21.0')
    status, text = run_main(['--dry-run', '--work-dir', str(tmp_path / 'w')], probe)
    assert status == 0 and 'onnxruntime-genai 0.7.1 + ONNX Runtime 1.21.0' in text
    assert 'v1.21.1.tar.gz' in text


def test_explicit_versions_that_cannot_work(tmp_path):
    probe = jetson_probe(tmp_path)
    status, text = run_main(['--dry-run', '--genai-version', '0.14', '--work-dir',
                             str(tmp_path / 'w')], probe)
    assert status == 2 and 'needs the C API of ONNX Runtime 1.26.0' in text


def test_real_run_stops_on_failed_checks(tmp_path):
    probe = jetson_probe(tmp_path, cmake='3.22.1')
    status, text = run_main(['--work-dir', str(tmp_path / 'w')], probe)
    assert status == 1 and 'needs CMake 3.28' in text and 'Fix the errors above' in text
    assert not (tmp_path / 'w').exists()


def test_bad_ort_source_folder(tmp_path):
    probe = jetson_probe(tmp_path)
    # the dry run goes on (the rest of what is missing is listed too); a real run stops
    status, text = run_main(['--dry-run', '--ort-source', str(tmp_path / 'nope')], probe)
    assert status == 0 and 'ERROR: --ort-source' in text and 'is not a folder' in text
    assert 'a real run stops until they are fixed' in text
    status, text = run_main(['--ort-source', str(tmp_path / 'nope')], probe)
    assert status == 1 and 'is not a folder' in text and 'Fix the errors above' in text


def test_ort_source_folder_with_headers(tmp_path):
    probe = jetson_probe(tmp_path)
    release = fake_ort_release(tmp_path / 'ort-1.22', version='1.22.0')
    status, text = run_main(['--dry-run', '--ort-source', str(release), '--work-dir',
                             str(tmp_path / 'w')], probe)
    assert status == 0 and 'headers in' in text
    assert 'ort-headers' not in text   # the folder has them: nothing to download
