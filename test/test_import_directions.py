"""
The package's subpackages import only downwards, as each one's __init__.py says.

Read from the source with ast (imports inside functions count too), so that a lazy import cannot
slip through: the core, frames and engine never import ROS (rclpy, messages, cv_bridge); the
engine never imports the request core; a client never imports the engine (ask must start fast);
nothing imports a subpackage above it.
"""
import ast
import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'phi3v_ros'
# What each subpackage may import of the others (besides itself).
ALLOWED = {
    'base': set(),
    'interface': {'base'},
    'frames': {'base'},
    'engine': {'base', 'frames'},
    'core': {'base', 'interface', 'frames', 'engine'},
    'node': {'base', 'interface', 'frames', 'engine', 'core'},
    'client': {'base', 'interface'},
    'tools': {'base', 'interface', 'frames', 'engine'},
}
ROS_FREE = {'base', 'interface', 'frames', 'engine', 'core'}
ROS_MODULES = {'rclpy', 'rcl_interfaces', 'rosidl_runtime_py', 'builtin_interfaces', 'std_msgs',
               'sensor_msgs', 'std_srvs', 'diagnostic_msgs', 'lifecycle_msgs', 'geometry_msgs',
               'action_msgs', 'unique_identifier_msgs', 'cv_bridge', 'image_transport',
               'message_filters', 'launch', 'launch_ros', 'ament_index_python'}


def imported_modules(path: pathlib.Path, package: str):
    """Yield (line, absolute module name) of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding='utf-8'), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(parts + ([node.module] if node.module else []))
            yield node.lineno, base
            for alias in node.names:    # `from phi3v_ros import engine` imports a subpackage
                yield node.lineno, f'{base}.{alias.name}'


def violations(root: pathlib.Path):
    """Return one line per import against the rules, for the package at root."""
    found = []
    for path in sorted(root.rglob('*.py')):
        relative = path.relative_to(root)
        if len(relative.parts) == 1:
            if relative.name != '__init__.py':
                found.append(f'{relative}: a module outside the subpackages')
            continue
        layer = relative.parts[0]
        package = '.'.join((root.name,) + relative.parts[:-1])
        for line, module in imported_modules(path, package):
            top = module.split('.')[0]
            if layer in ROS_FREE and top in ROS_MODULES:
                found.append(f'{relative}:{line}: {layer} imports {top} (ROS)')
            names = module.split('.')
            if names[0] == root.name and len(names) > 1 and names[1] in ALLOWED:
                target = names[1]
                if target != layer and target not in ALLOWED[layer]:
                    found.append(f'{relative}:{line}: {layer} imports {target}')
    return sorted(set(found))


def test_every_import_follows_the_layers():
    assert violations(PACKAGE) == []


def test_every_subpackage_is_known_and_says_what_it_may_import():
    subpackages = {p.parent.name for p in PACKAGE.glob('*/__init__.py')}
    assert subpackages == set(ALLOWED)
    for name, allowed in ALLOWED.items():
        text = (PACKAGE / name / '__init__.py').read_text(encoding='utf-8')
        said = re.search(r'May import: ([^;.]*)', text)
        assert said, f'{name}/__init__.py does not say what it may import'
        assert set(re.findall(r'\w+', said.group(1))) & set(ALLOWED) == allowed, (name, said[1])


@pytest.mark.parametrize('layer,source,rule', [
    ('engine', 'from phi3v_ros.core.vision_qa import VisionQA', 'engine imports core'),
    ('frames', 'def f():\n    import rclpy\n', 'frames imports rclpy (ROS)'),
    ('core', 'from sensor_msgs.msg import Image', 'core imports sensor_msgs (ROS)'),
    ('client', 'from phi3v_ros.engine import engine', 'client imports engine'),
    ('client', 'from phi3v_ros import engine', 'client imports engine'),
    ('engine', 'from ..node import parameters', 'engine imports node'),
    ('frames', 'import phi3v_ros.engine.prompt', 'frames imports engine'),
])
def test_the_check_finds_an_import_against_the_direction(tmp_path, layer, source, rule):
    root = tmp_path / 'phi3v_ros'
    for name in ALLOWED:
        (root / name).mkdir(parents=True)
        (root / name / '__init__.py').write_text('')
    (root / '__init__.py').write_text('')
    (root / layer / 'bad.py').write_text(source + '\n')
    found = violations(root)
    assert len(found) == 1 and f'{layer}/bad.py:' in found[0] and rule in found[0], found
    (root / 'loose.py').write_text('')
    assert any('loose.py: a module outside the subpackages' in line for line in violations(root))
