"""
Start vision_qa_node: ros2 launch phi3v_ros vision_qa.launch.py model_path:=/path/to/model.

Arguments left empty keep the value from params_file (default: config/vision_qa.yaml of this
package). managed:=true starts the managed (lifecycle) node instead, unconfigured, for a
lifecycle manager to drive; with autostart:=true this launch configures and activates it itself.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition
import yaml

# Launch arguments that set the node parameter of the same name when they are not empty.
PARAMETER_ARGUMENTS = [
    ('model_path', 'Phi-3-vision ONNX model folder (default: the fetch_model folder)'),
    ('provider', 'execution provider: auto, cuda or cpu'),
    ('image_topic', 'camera topic (sensor_msgs/Image)'),
    ('image_topics', 'several cameras, replacing image_topic: "[head/image_raw, wrist/image_raw]" '
                     'or head/image_raw,wrist/image_raw'),
    ('prompt_topic', 'question topic (std_msgs/String)'),
    ('answer_topic', 'answer topic (std_msgs/String); pieces go to <answer_topic>/stream'),
    ('request_topic', 'request topic (std_msgs/String, one JSON object each)'),
    ('response_topic', 'response topic (std_msgs/String, JSON); pieces go to '
                       '<response_topic>/stream'),
    ('use_compressed', 'true: subscribe <image_topic>/compressed (sensor_msgs/CompressedImage)'),
]
BOOLEANS = {'true': True, '1': True, 'yes': True, 'on': True,
            'false': False, '0': False, 'no': False, 'off': False}


def _node(context):
    overrides = {}
    for name, _ in PARAMETER_ARGUMENTS:
        value = LaunchConfiguration(name).perform(context)
        if value != '' and name == 'use_compressed':
            overrides[name] = _boolean(name, value)
        elif value != '' and name == 'image_topics':
            overrides[name] = _topics(name, value)
        elif value != '':
            overrides[name] = value
    common = {
        'package': 'phi3v_ros',
        'name': 'vision_qa',
        'namespace': LaunchConfiguration('namespace'),
        'output': 'screen',
        'emulate_tty': True,
        'parameters': [LaunchConfiguration('params_file'), overrides],   # later entries win
        'arguments': ['--ros-args', '--log-level', LaunchConfiguration('log_level')],
        # The node exits with code 1 only when one of its threads died (it recovers from
        # everything else in place); a bad parameter exits 2 and would respawn in a loop.
        'respawn': _boolean('respawn', LaunchConfiguration('respawn').perform(context)),
        'respawn_delay': float(LaunchConfiguration('respawn_delay').perform(context)),
    }
    if not _boolean('managed', LaunchConfiguration('managed').perform(context)):
        return [Node(executable='vision_qa_node', **common)]
    node = LifecycleNode(executable='managed_vision_qa_node', **common)
    if not _boolean('autostart', LaunchConfiguration('autostart').perform(context)):
        return [node]      # a lifecycle manager drives it

    def change(transition):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                           transition_id=transition))
    # configured (the model loaded): activate; a configure that fails leaves it unconfigured
    return [node,
            RegisterEventHandler(OnStateTransition(
                target_lifecycle_node=node, goal_state='inactive',
                entities=[change(Transition.TRANSITION_ACTIVATE)])),
            change(Transition.TRANSITION_CONFIGURE)]


def _topics(name, value):
    """Return the topic names of a YAML list ("[a, b]") or of comma-separated names (a,b)."""
    topics = yaml.safe_load(value) if value.lstrip().startswith('[') else value.split(',')
    if not isinstance(topics, list) or not all(isinstance(t, str) and t.strip() for t in topics):
        raise ValueError(f'{name} must be topic names such as "[head/image_raw, '
                         f'wrist/image_raw]", not {value!r}')
    return [topic.strip() for topic in topics]


def _boolean(name, value):
    if value.lower() not in BOOLEANS:
        raise ValueError(f'{name} must be true or false, not {value!r}')
    return BOOLEANS[value.lower()]


def generate_launch_description():
    share = get_package_share_directory('phi3v_ros')
    declared = [DeclareLaunchArgument(name, default_value='', description=description)
                for name, description in PARAMETER_ARGUMENTS]
    declared += [
        DeclareLaunchArgument('namespace', default_value='', description='namespace of the node'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'vision_qa.yaml'),
                              description='parameter file'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description='debug, info, warn or error'),
        DeclareLaunchArgument('respawn', default_value='false',
                              description='true: start the node again when it exits (it exits '
                                          'with code 1 only when one of its threads died)'),
        DeclareLaunchArgument('respawn_delay', default_value='2.0',
                              description='seconds before a respawn'),
        DeclareLaunchArgument('managed', default_value='false',
                              description='true: the managed (lifecycle) node, which loads the '
                                          'model at configure and frees it at cleanup'),
        DeclareLaunchArgument('autostart', default_value='false',
                              description='with managed:=true: configure and activate it here '
                                          '(false: leave it to a lifecycle manager)'),
    ]
    return LaunchDescription(declared + [OpaqueFunction(function=_node)])
