"""
demo: the whole path on the tiny model, no GPU and no download needed.

Generates the tiny model, starts vision_qa_node and a synthetic camera as their own processes, asks
a question with the `ask` client and prints the streamed answer; then stops everything.
    python -m phi3v_ros.tools.demo [--workdir DIR] [--question TEXT]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
from typing import List, Optional

from phi3v_ros.tools.make_tiny_model import make_tiny_model

COMMANDS = {'vision_qa_node': 'phi3v_ros.vision_qa_node', 'ask': 'phi3v_ros.ask',
            'synthetic_camera': 'phi3v_ros.tools.synthetic_camera'}


def command(name: str) -> List[str]:
    """Return the installed console script next to this Python, else `python -m` on its module."""
    script = shutil.which(name, path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, '-m', COMMANDS[name]]


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='demo', description=__doc__.split('\n\n')[0])
    parser.add_argument('--workdir', default='.cache/demo')
    parser.add_argument('--question', default='What do you see in front of you?')
    args = parser.parse_args(argv)

    model = os.path.join(args.workdir, 'tiny_model')
    print(f'1. tiny random-weight Phi-3-vision model -> {make_tiny_model(model, layout="auto")}',
          flush=True)
    env = dict(os.environ)
    # A private, localhost-only ROS domain: the demo must not talk to a real robot's nodes.
    env.setdefault('ROS_DOMAIN_ID', str(random.randint(101, 215)))
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    if env.get('ROS_DISTRO') == 'humble':
        env['ROS_LOCALHOST_ONLY'] = '1'
    else:   # deprecated after Humble: Jazzy's rcl warns whenever it is set
        env.pop('ROS_LOCALHOST_ONLY', None)
    print('2. starting vision_qa_node and synthetic_camera '
          f'(ROS_DOMAIN_ID={env["ROS_DOMAIN_ID"]})', flush=True)
    node = subprocess.Popen(command('vision_qa_node') + [
        '--ros-args', '-p', f'model_path:={model}', '-p', 'provider:=auto',
        '-p', 'max_new_tokens:=40'],
        env=env)
    camera = subprocess.Popen(command('synthetic_camera') + ['--rate', '10'], env=env)
    try:
        print(f'3. ask "{args.question}"', flush=True)
        asked = subprocess.run(command('ask') + [args.question, '--timeout', '60',
                                                 '--connect-timeout', '60'], env=env)
        print(f'4. ask exited with {asked.returncode} '
              f'({"answer" if asked.returncode == 0 else "no answer"}); the tiny model has random '
              'weights, so the words are random too: the path is what is real.', flush=True)
        return asked.returncode
    finally:
        stop(camera)
        stop(node)


if __name__ == '__main__':
    sys.exit(main())
