"""
demo: the whole path on the tiny model, no GPU and no download needed.

Generates the tiny model, starts vision_qa_node and a synthetic camera as their own processes
(their log goes to <workdir>/demo.log), waits until the model is loaded, asks a question with the
`ask` client and prints the question, the answer and the time the answer took; then stops all.
    python -m phi3v_ros.tools.demo [--workdir DIR] [--question TEXT]
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional

from phi3v_ros.tools.make_tiny_model import make_tiny_model

COMMANDS = {'vision_qa_node': 'phi3v_ros.node.vision_qa_node', 'ask': 'phi3v_ros.client.ask',
            'synthetic_camera': 'phi3v_ros.tools.synthetic_camera'}
LOAD_TIMEOUT_S = 120.0
# The node's log line for each answer: 'prompt #1 answered in 0.5198 s (first token 0.4988 s,
# 1950 prompt + 40 new tokens, 1858.6 tok/s), ...'
ANSWERED = re.compile(r'prompt #\d+ answered in (?P<total>[\d.]+) s '
                      r'\(first token (?P<first>[\d.]+) s, (?P<prompt>\d+) prompt \+ '
                      r'(?P<new>\d+) new tokens, (?P<rate>[\d.]+) tok/s\)')


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


class NodeLog:
    """The node's output lines, kept and written to the demo's log file as they come."""

    def __init__(self, process: subprocess.Popen, log) -> None:
        self.lines: List[str] = []
        self._changed = threading.Condition()
        self._log = log
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self._log.write(line)
            self._log.flush()
            with self._changed:
                self.lines.append(line.rstrip('\n'))
                self._changed.notify_all()
        with self._changed:
            self.lines.append('')   # end of output: wakes the waiters
            self._changed.notify_all()

    def wait_for(self, pattern: 'str | re.Pattern', timeout_s: float, ended=lambda: False):
        """Return the first line matching pattern (a regex), or None at the timeout or exit."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for line in self.lines:
                    if regex.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or ended():
                    return None
                self._changed.wait(min(remaining, 0.5))


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
    log_path = os.path.join(args.workdir, 'demo.log')
    with open(log_path, 'w', encoding='utf-8') as log:
        print('2. starting vision_qa_node and synthetic_camera '
              f'(ROS_DOMAIN_ID={env["ROS_DOMAIN_ID"]}; their log: {log_path})', flush=True)
        started = time.monotonic()
        node = subprocess.Popen(command('vision_qa_node') + [
            '--ros-args', '-p', f'model_path:={model}', '-p', 'provider:=auto',
            '-p', 'max_new_tokens:=40'],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        node_log = NodeLog(node, log)
        camera = subprocess.Popen(command('synthetic_camera') + ['--rate', '10'], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            return _ask(args.question, env, node, node_log, started, log_path)
        finally:
            stop(camera)
            stop(node)


def _ask(question: str, env: dict, node: subprocess.Popen, node_log: NodeLog, started: float,
         log_path: str) -> int:
    ready = node_log.wait_for(r'engine (ready|failed)', LOAD_TIMEOUT_S,
                              ended=lambda: node.poll() is not None)
    if ready is None or 'engine failed' in ready:
        print(f'the node did not load the model: {ready or "no sign within the timeout"}; '
              f'see {log_path}', flush=True)
        return 1
    print(f'3. the model is loaded: the node was ready {time.monotonic() - started:.1f} s after '
          'it started (start-up, loading and warm-up; not part of the answer time below)',
          flush=True)
    print(f'4. asking with `ask` (the answer streams in as it is generated)\n\n'
          f'question: {question}\nanswer:', flush=True)
    asked_at = time.monotonic()
    # ask prints the answer (streamed, then a line end) to our stdout, its errors to our stderr
    asked = subprocess.run(
        command('ask') + [question, '--timeout', '60', '--connect-timeout', '60'], env=env)
    ask_s = time.monotonic() - asked_at
    if asked.returncode != 0:
        print(f'no answer: ask exited with {asked.returncode}; see {log_path}', flush=True)
        return asked.returncode
    answered = node_log.wait_for(ANSWERED, 10.0, ended=lambda: node.poll() is not None)
    found = ANSWERED.search(answered) if answered else None
    if found:
        print(f'\nthe answer took {float(found["total"]):.2f} s in the model (first token '
              f'{float(found["first"]):.2f} s for {found["prompt"]} prompt tokens, then '
              f'{found["new"]} new tokens at {float(found["rate"]):.0f} tok/s); `ask` took '
              f'{ask_s:.1f} s in all, with its own start-up, finding the node and waiting for a '
              'camera frame', flush=True)
    else:
        print(f'\n`ask` took {ask_s:.1f} s in all (the node logged no answer time: see '
              f'{log_path})', flush=True)
    print('\nThe tiny model has random weights, so the words are random too: the path is what '
          'is real.', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
