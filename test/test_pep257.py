"""The package's own Python files pass ament_pep257 (docstring conventions, ament's defaults)."""
import glob
import os

import pytest

main = pytest.importorskip('ament_pep257.main').main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What this package's linting covers: bench/*.py at the top of bench/ is not part of it.
PATHS = [os.path.join(ROOT, path)
         for path in ('phi3v_ros', 'test', 'launch/vision_qa.launch.py', 'setup.py')]
PATHS += sorted(glob.glob(os.path.join(ROOT, 'bench', 'gpu', '*.py')))


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    rc = main(argv=PATHS)
    assert rc == 0, 'Found code style errors / warnings'
