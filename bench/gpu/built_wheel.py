"""
On the GPU machine: check an onnxruntime-genai wheel that build_genai_wheel built, on CUDA.

    python3 bench/gpu/built_wheel.py WHEEL --out results.json

Installs the wheel (no dependencies) over the one in the device venv (bench/gpu/device.py
install made it), then runs the builder's own post-install checks (import, is_cuda_available,
the tiny model, a generation with provider cuda) and, through the package's engine, a question
about one and about two camera frames with provider cuda, and the same with provider cpu for
comparison. Prints a table and writes the numbers.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, '..', '..'), os.path.join(HERE, '..', '..', 'test')]

VENV_PYTHON = os.environ.get('PHI3V_GPU_PYTHON', '/tmp/phi3v_gpu/venv/bin/python')


def in_venv(args):
    """Run this script again in the device venv, after installing the wheel there."""
    subprocess.run([VENV_PYTHON, '-m', 'pip', 'install', '--no-deps', '--force-reinstall',
                    '--no-index', args.wheel], check=True)
    os.execv(VENV_PYTHON, [VENV_PYTHON, __file__, args.wheel, '--out', args.out, '--checks'])


def checks(args):
    import onnxruntime_genai as og
    from phi3v_ros.engine.engine import Engine, EngineConfig
    from phi3v_ros.engine.generation import GenerationSettings, Request
    from phi3v_ros.tools.genai_wheel.plan import CUDA_CHECK, GENERATE_CHECK, IMPORT_CHECK
    from phi3v_test_utils import gradient_image

    report = {'wheel': os.path.basename(args.wheel), 'genai_version': og.__version__,
              'genai_file': og.__file__, 'is_cuda_available': bool(og.is_cuda_available())}
    print(f'onnxruntime_genai {og.__version__} from {og.__file__}')
    print(f'is_cuda_available: {report["is_cuda_available"]}')
    # the builder's own check commands, exactly as it prints them after a build
    model = '/tmp/phi3v_gpu/tiny-model'
    report['builder_checks'] = []
    env = dict(os.environ, PYTHONPATH=os.path.join(HERE, '..', '..'))
    for argv in ([VENV_PYTHON, '-c', IMPORT_CHECK], [VENV_PYTHON, '-c', CUDA_CHECK],
                 [VENV_PYTHON, '-m', 'phi3v_ros.tools.make_tiny_model', model],
                 [VENV_PYTHON, '-c', GENERATE_CHECK, model]):
        # bounded: a CUDA initialisation that hangs must not eat the device session
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        print(f'$ {" ".join(argv[:3])} ... -> exit {done.returncode}')
        print(done.stdout.strip()[-400:], done.stderr.strip()[-400:])
        report['builder_checks'].append({'argv': argv[:3], 'returncode': done.returncode,
                                         'stdout': done.stdout[-2000:]})
    runs = []
    frames = (gradient_image(480, 640, seed=3), gradient_image(480, 640, seed=4))
    for provider in ('cuda', 'cpu'):
        try:
            engine = Engine(EngineConfig(model_path=model, provider=provider))
        except Exception as exc:     # reported, and the run fails below
            runs.append({'provider': provider, 'cameras': 0, 'ok': False, 'error': str(exc),
                         'tokens': 0, 'image_tokens': 0, 'total_s': 0.0, 'text': ''})
            continue
        for cameras in (1, 2):
            request = Request(prompt='What is in front of the robot?', images=frames[:cameras],
                              cameras=('/head/image', '/wrist/image')[:cameras],
                              settings=GenerationSettings(max_new_tokens=16))
            start = time.perf_counter()
            result = engine.generate(request)
            runs.append({'provider': engine.provider, 'cameras': cameras, 'ok': result.ok,
                         'error': result.error, 'tokens': result.generated_tokens,
                         'image_tokens': result.image_tokens,
                         'total_s': time.perf_counter() - start,
                         'text': result.text})
        del engine
    report['engine'] = runs
    print(f'{"provider":<10}{"cameras":>8}{"ok":>6}{"tokens":>8}{"image tokens":>14}{"s":>8}')
    for run in runs:
        print(f'{run["provider"]:<10}{run["cameras"]:>8}{str(run["ok"]):>6}{run["tokens"]:>8}'
              f'{run["image_tokens"]:>14}{run["total_s"]:>8.3f}')
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=1)
    failed = [c for c in report['builder_checks'] if c['returncode'] != 0]
    return 1 if failed or not all(r['ok'] for r in runs) else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('wheel')
    parser.add_argument('--out', default='built_wheel_results.json')
    parser.add_argument('--checks', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.checks:
        in_venv(args)
    sys.exit(checks(args))


if __name__ == '__main__':
    main()
