"""
The pinned sets in requirements/: what a ROS install gets, and what each CI leg installed.

A ROS install shares its Python with cv_bridge and python3-opencv, both built for numpy 1: its
file must keep numpy below 2 and bring no pip OpenCV. The venv this suite runs in must hold what
its leg's file pins (a drifted venv would test another set than the one the README names).
"""
from importlib import metadata
import os
import pathlib
import re

from packaging.requirements import Requirement
import pytest

REQUIREMENTS = pathlib.Path(__file__).resolve().parent.parent / 'requirements'


def requirements(name):
    """Return the Requirement objects of requirements/name, following -r includes."""
    found = []
    for line in (REQUIREMENTS / name).read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line.startswith('-r '):
            found += requirements(line[3:].strip())
        elif line:
            found.append(Requirement(line))
    return found


def test_a_ros_install_keeps_numpy_1_and_the_system_opencv():
    pins = {r.name.lower(): r for r in requirements('ros.txt')}
    assert not any(re.match(r'opencv', name) for name in pins), sorted(pins)
    numpy = pins['numpy'].specifier
    assert '1.26.4' in numpy and '1.21.6' in numpy and '2.0.0' not in numpy


@pytest.mark.skipif(not os.environ.get('PHI3V_LEG_REQUIREMENTS'),
                    reason="run by make test, which names the leg's requirements file")
def test_this_venv_holds_what_its_leg_pins():
    wanted = requirements(pathlib.Path(os.environ['PHI3V_LEG_REQUIREMENTS']).name)
    outside = []
    for requirement in wanted:
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            outside.append(f'{requirement} (installed: {installed})')
    assert not outside, f'this venv is not the set its leg pins, make clean and retry: {outside}'
