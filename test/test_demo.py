"""`make demo` (phi3v_ros/tools/demo.py): the real node, camera and ask on the tiny model."""
import re
import subprocess
import sys

import pytest
from ros_harness import isolate_ros_domain

pytest.importorskip('rclpy')
pytest.importorskip('onnxruntime_genai')

QUESTION = 'What is on the table?'
ROS_LOG_LINE = re.compile(r'^\[(DEBUG|INFO|WARN|ERROR|FATAL)\] ')


def test_demo_prints_question_answer_and_answer_time_apart_from_loading(tmp_path):
    isolate_ros_domain()
    result = subprocess.run([sys.executable, '-m', 'phi3v_ros.tools.demo', '--workdir',
                             str(tmp_path), '--question', QUESTION],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # the node's and the camera's log go to a file, not between the demo's lines
    assert not [line for line in lines if ROS_LOG_LINE.match(line)], result.stdout
    log = (tmp_path / 'demo.log').read_text()
    assert 'engine ready' in log and 'prompt #1 answered in' in log, log
    loaded = next(i for i, line in enumerate(lines) if 'the model is loaded' in line)
    assert re.search(r'ready \d+\.\d s after it started', lines[loaded]), lines[loaded]
    asked = lines.index(f'question: {QUESTION}')
    assert loaded < asked and lines[asked + 1] == 'answer:', result.stdout
    answer = lines[asked + 2]
    assert answer.strip() and not answer.startswith('ERROR'), result.stdout
    took = [line for line in lines[asked + 3:] if line.startswith('the answer took ')]
    assert len(took) == 1, result.stdout
    assert re.match(r'the answer took \d+\.\d\d s in the model \(first token \d+\.\d\d s for '
                    r'\d+ prompt tokens, then \d+ new tokens at \d+ tok/s\); `ask` took '
                    r'\d+\.\d s in all', took[0]), took[0]
    # the answer is on its own line(s): from the line after 'answer:' up to the time line
    assert lines[lines.index(took[0]) - 1] == '', result.stdout
