"""The launch descriptions of the launch_testing tests: vision_qa.launch.py, once per namespace."""
import os
import tempfile

from ament_index_python.packages import get_package_share_directory
import launch
from launch.launch_description_sources import PythonLaunchDescriptionSource
import launch_testing.actions
from phi3v_ros.tools.make_tiny_model import make_tiny_model

# The tiny model of the launches; removed when the test process exits.
MODEL_DIR = tempfile.TemporaryDirectory(prefix='phi3v_ros_launch_test_')


def vision_qa_launches(launches) -> launch.LaunchDescription:
    """Include vision_qa.launch.py for each (namespace, launch arguments), on the tiny model."""
    model = make_tiny_model(os.path.join(MODEL_DIR.name, 'model'))
    launch_file = os.path.join(get_package_share_directory('phi3v_ros'), 'launch',
                               'vision_qa.launch.py')
    includes = []
    for namespace, arguments in launches:
        includes.append(launch.actions.IncludeLaunchDescription(
            PythonLaunchDescriptionSource(launch_file),
            launch_arguments={'model_path': str(model), 'provider': 'cpu',
                              'namespace': namespace, **arguments}.items()))
    return launch.LaunchDescription(includes + [launch_testing.actions.ReadyToTest()])
