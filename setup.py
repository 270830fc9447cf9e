from glob import glob

from setuptools import find_packages, setup

package_name = 'phi3v_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'bench', 'bench.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml')),
        ('share/' + package_name + '/schemas', glob('phi3v_ros/interface/schemas/*.json')),
    ],
    package_data={'phi3v_ros.interface': ['schemas/*.json']},
    # Runtime Python dependencies come from rosdep (numpy, opencv) and pip (onnxruntime-genai,
    # see README): install_requires stays empty so `colcon build` works without them.
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='phi3v_ros maintainers',
    maintainer_email='maintainers@phi3v-ros.invalid',
    description='Phi-3-vision visual question answering node for ROS 2 (onnxruntime-genai).',
    license='MIT',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'vision_qa_node = phi3v_ros.node.vision_qa_node:main',
            'managed_vision_qa_node = phi3v_ros.node.managed_node:main',
            'ask = phi3v_ros.client.ask:main',
            'synthetic_camera = phi3v_ros.tools.synthetic_camera:main',
            'make_tiny_model = phi3v_ros.tools.make_tiny_model:main',
            'build_genai_wheel = phi3v_ros.tools.build_genai_wheel:main',
            'fetch_model = phi3v_ros.tools.fetch_model:main',
        ],
    },
)
