"""The package's own Python files pass ament_flake8 (the ROS 2 flake8 configuration)."""
import glob
import os

import pytest

main_with_errors = pytest.importorskip('ament_flake8.main').main_with_errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What this package's linting covers: bench/*.py at the top of bench/ is not part of it.
PATHS = [os.path.join(ROOT, path)
         for path in ('phi3v_ros', 'test', 'launch/vision_qa.launch.py', 'setup.py')]
PATHS += sorted(glob.glob(os.path.join(ROOT, 'bench', 'gpu', '*.py')))


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    rc, errors = main_with_errors(argv=PATHS)
    assert rc == 0, \
        'Found %d code style errors / warnings:\n' % len(errors) + \
        '\n'.join(errors)
