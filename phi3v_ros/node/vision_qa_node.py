"""
vision_qa_node: the ROS 2 shell around VisionQA.

It wires topics, services, parameters and diagnostics to the core and does nothing else (see
vision_qa.py for the request logic, engine_client.py for the worker process).

Threads: the executor (main thread) runs every ROS callback; none of them blocks on the engine,
and each is guarded, so that a message that breaks one costs that callback and not the node.
The dispatcher publishes replies and stream pieces from its own thread (rclpy publishers are
thread-safe). SIGINT and SIGTERM only set a flag (rclpy's own handlers are not installed): main()
then stops taking prompts, replies to every prompt still waiting or in flight while the ROS
context is still valid, stops the worker (bounded: asked, then killed), and exits 0.
"""
from __future__ import annotations

import difflib
import signal
import sys
import time
import traceback

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from phi3v_ros.base.errors import ConfigurationError
from phi3v_ros.base.guarded_thread import ThreadHealth
from phi3v_ros.core.responses import refusal_message, response_message
from phi3v_ros.core.vision_qa import Reply, Ticket, VisionQA
from phi3v_ros.engine.engine import EngineConfig
from phi3v_ros.engine.engine_client import EngineClient, EngineState
from phi3v_ros.frames.cameras import Cameras, describe_frames
from phi3v_ros.frames.frame_cache import FrameAge
from phi3v_ros.frames.frame_conversion import FrameConverter
from phi3v_ros.interface.requests import CancelRequest, parse_request, piece_json, RequestError
from phi3v_ros.node.cv_bridge_fallback import load_cv_bridge_converter
from phi3v_ros.node.diagnostics import camera_statuses, engine_status
from phi3v_ros.node.parameters import (check_value, default_for, PARAMETERS, qa_options,
                                       type_mismatch)
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import LoggingSeverity
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

RELIABLE_DEPTH = 10
STREAM_DEPTH = 100
# Prompts and answers: reliable, keep last 1000. With a depth of 10, a burst of prompts (a client
# publishing in a loop, several clients at once) overflowed the subscription's history before the
# executor took them, and those prompts were lost in the middleware without any reply; a burst of
# replies (busy rejections) likewise overwrote answers not yet acknowledged by a subscriber.
PROMPT_DEPTH = ANSWER_DEPTH = 1000
# ~/cancel and ~/reset: with the default depth of 10, a burst of calls (a client retrying in a
# loop) lost all but about 10 requests in the middleware, and their callers waited forever.
SERVICE_DEPTH = 1000
TOPIC_PARAMETERS = ('image_topic', 'prompt_topic', 'answer_topic', 'request_topic',
                    'response_topic')
# How long main() waits in the executor before it looks at the stop flag (Python runs signal
# handlers only between the executor's waits).
SPIN_PERIOD_S = 0.1
# How long shutdown waits for subscribers to acknowledge the last replies.
REPLIES_ACKED_TIMEOUT_S = 3.0


def _descriptor(spec) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if isinstance(spec.default, list):
        # rclpy types an empty [] default as a byte array and would then refuse a list of
        # strings (ros2/rclpy#912): typed dynamically, checked by parameters.type_mismatch.
        descriptor.dynamic_typing = True
    if spec.choices:
        descriptor.additional_constraints = 'one of: ' + ', '.join(spec.choices)
    if spec.max_chars is not None:
        descriptor.additional_constraints = f'at most {spec.max_chars} characters'
    if spec.value_range is not None:
        low, high = spec.value_range
        if isinstance(spec.default, float):
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(low),
                                                                  to_value=float(high))]
        else:
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high),
                                                     step=1)]
    return descriptor


class VisionQANode(Node):
    """Raises ConfigurationError, naming the parameter, for a parameter it cannot start with."""

    def __init__(self, **kwargs) -> None:
        super().__init__('vision_qa', **kwargs)
        self._qa = self._engine = None
        self._shut_down = False
        self.health = ThreadHealth()
        self._values = {}
        overrides = _parameter_overrides(self)
        self._warn_unknown_overrides(overrides)
        # provider first: the default of model_path follows it (parameters.default_for)
        for spec in sorted(PARAMETERS, key=lambda spec: spec.name != 'provider'):
            given = overrides.get(spec.name)
            if given is not None:
                mismatch = type_mismatch(spec.name, given.value)
                if mismatch:
                    raise ConfigurationError(mismatch)
            try:
                value = self.declare_parameter(spec.name, default_for(spec.name, self._values),
                                               _descriptor(spec)).value
            except (ParameterException, ValueError, TypeError) as exc:
                raise ConfigurationError(f'parameter {spec.name}: {exc}') from None
            problem = check_value(spec.name, value)
            if problem:
                raise ConfigurationError(problem)
            self._values[spec.name] = value
        v = self._values
        for name in TOPIC_PARAMETERS:
            self._check_topic(name, v[name])
        for topic in v['image_topics']:
            self._check_topic('image_topics', topic)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        # One camera per topic of image_topics, or the one of image_topic (its name not told to
        # the model, as before image_topics existed); named by resolved topic.
        topics = list(v['image_topics']) or [v['image_topic']]
        resolved = [self._resolved(topic) for topic in topics]
        if len(set(resolved)) != len(resolved):   # cam and /cam in the root namespace
            raise ConfigurationError(f'image_topics names the same topic twice: {topics} '
                                     f'resolve to {resolved}')
        self._cameras = Cameras(
            resolved,
            FrameAge(v['frame_age_source'], self._clock_s, log=self.get_logger().warning),
            labelled=bool(v['image_topics']))
        # A measurement hook for the benchmarks (bench/responsiveness.py): at debug level, every
        # frame's delay from its header stamp to the image callback is logged. Decided once, so
        # that the callback costs one attribute read otherwise. Meaningful only when the camera
        # stamps with this clock.
        self._trace_frames = self.get_logger().is_enabled_for(LoggingSeverity.DEBUG)
        fallback, why_not = load_cv_bridge_converter()
        if why_not:
            self.get_logger().warning(why_not)
        self._engine = EngineClient(
            EngineConfig(model_path=v['model_path'], provider=v['provider'],
                         device_id=v['device_id'], image_preprocessing=v['image_preprocessing'],
                         max_image_side=v['max_image_side'], image_format=v['image_format'],
                         cuda_graph=v['cuda_graph'], stream_interval_s=v['stream_interval']),
            warmup=v['warmup'], stall_timeout_s=v['stall_timeout'],
            load_timeout_s=v['load_timeout'],
            on_state=self._on_engine_state, log=self.get_logger().info, health=self.health)
        converter = FrameConverter(v['max_image_pixels'], fallback,
                                   allocate=self._engine.frame_buffer)
        self._qa = VisionQA(self._engine, self._cameras, converter,
                            on_reply=self._publish_reply, on_piece=self._publish_piece,
                            options=qa_options(v), log=self.get_logger().info,
                            health=self.health)

        self._answer_pub = self.create_publisher(String, v['answer_topic'], ANSWER_DEPTH)
        self._stream_pub = self.create_publisher(String, v['answer_topic'] + '/stream',
                                                 STREAM_DEPTH)
        self._response_pub = self.create_publisher(String, v['response_topic'], ANSWER_DEPTH)
        self._response_stream_pub = self.create_publisher(
            String, v['response_topic'] + '/stream', STREAM_DEPTH)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics',
                                                      RELIABLE_DEPTH)
        image_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=v['image_qos_depth'],
            reliability=(ReliabilityPolicy.RELIABLE if v['image_reliability'] == 'reliable'
                         else ReliabilityPolicy.BEST_EFFORT))
        suffix = '/compressed' if v['use_compressed'] else ''
        for topic, camera in zip(topics, self._cameras.names):
            self.create_subscription(CompressedImage if suffix else Image, topic + suffix,
                                     self._guarded(self._image_callback(camera)), image_qos)
        self.create_subscription(String, v['prompt_topic'], self._guarded(self._on_prompt),
                                 PROMPT_DEPTH)
        self.create_subscription(String, v['request_topic'], self._guarded(self._on_request),
                                 PROMPT_DEPTH)
        service_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=SERVICE_DEPTH,
                                 reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.VOLATILE)
        self.create_service(Trigger, '~/cancel', self._guarded_service(self._on_cancel),
                            qos_profile=service_qos)
        self.create_service(Trigger, '~/reset', self._guarded_service(self._on_reset),
                            qos_profile=service_qos)
        # On the steady clock: under use_sim_time a ROS-time timer stops with a paused /clock,
        # and diagnostics are most wanted then.
        self.create_timer(v['diagnostics_period'], self._guarded(self._publish_diagnostics),
                          clock=Clock(clock_type=ClockType.STEADY_TIME))

        self._engine.start()
        self._qa.start()
        cameras = ', '.join(camera + suffix for camera in self._cameras.names)
        self.get_logger().info(
            f'listening on {cameras}, {self._resolved(v["prompt_topic"])} and '
            f'{self._resolved(v["request_topic"])}, answering on '
            f'{self._resolved(v["answer_topic"])} and {self._resolved(v["response_topic"])}; '
            f'loading {v["model_path"]} (provider {v["provider"]})')

    def _warn_unknown_overrides(self, overrides: dict) -> None:
        """Warn of every parameter given (-p, a params file) that this node does not declare."""
        known = sorted({spec.name for spec in PARAMETERS}
                       | {name for name in overrides if self.has_parameter(name)})
        for name in sorted(set(overrides) - set(known)):
            close = difflib.get_close_matches(name, known, n=1)
            advice = (f'did you mean {close[0]}?' if close
                      else 'the parameters are listed by `ros2 param list` and in the README')
            self.get_logger().warning(
                f'parameter {name} is not a parameter of this node and is ignored: {advice}')

    def _check_topic(self, parameter: str, topic: str) -> None:
        try:
            self.resolve_topic_name(topic)
        except (RuntimeError, ValueError) as exc:
            raise ConfigurationError(f'{parameter} {topic!r} is not a valid topic name: '
                                     f'{str(exc).split(", at ")[0]}') from None

    def _resolved(self, topic: str) -> str:
        return self.resolve_topic_name(topic)

    def _clock_s(self) -> float:
        """Return the node's clock in seconds: ROS time, simulated time under use_sim_time."""
        return self.get_clock().now().nanoseconds * 1e-9

    @property
    def dead_threads(self):
        return self.health.dead_threads

    def _internal_error(self, where: str, exc: Exception) -> None:
        self.health.record_error(where, exc)
        self.get_logger().error(f'internal error in {where} (the node goes on): '
                                f'{traceback.format_exc()}')

    def _guarded(self, callback):
        """Wrap a subscription or timer callback: its exception is logged, never raised."""
        def guarded(*args):
            try:
                callback(*args)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the node
                self._internal_error(callback.__name__, exc)
        return guarded

    def _guarded_service(self, callback):
        """Wrap a service callback: on an exception it answers success=False with the reason."""
        def guarded(request, response):
            try:
                return callback(request, response)
            except Exception as exc:  # noqa: BLE001 - the caller gets an answer in any case
                self._internal_error(callback.__name__, exc)
                response.success = False
                response.message = f'internal error: {type(exc).__name__}: {exc}'
                return response
        return guarded

    # -- callbacks ----------------------------------------------------------------------------

    def _image_callback(self, camera: str):
        cache = self._cameras.cache(camera)

        def on_image(message) -> None:
            arrived = time.time()
            stamp = message.header.stamp
            stamp_s = stamp.sec + stamp.nanosec * 1e-9
            cache.store(message, stamp_s)
            if self._trace_frames:   # only with --log-level debug (see __init__)
                self.get_logger().debug(f'{camera} frame #{cache.received}: header stamp to '
                                        f'image callback {(arrived - stamp_s) * 1e3:.2f} ms')
        on_image.__name__ = f'on_image({camera})'
        return on_image

    def _on_prompt(self, message: String) -> None:
        self._qa.ask(message.data)

    def _on_request(self, message: String) -> None:
        try:
            request = parse_request(message.data)
        except RequestError as error:     # one response, with the id when it had one
            self._qa.count_refused_request()
            self._publish(self._response_pub, refusal_message(error))
            self.get_logger().warning(f'request {error.request_id or "(no id)"} refused: {error}')
            return
        if isinstance(request, CancelRequest):
            if not self._qa.cancel_request(request.id):
                self.get_logger().info(f'cancel of request {request.id!r}: no such request is '
                                       'waiting or being answered')
            return
        self._qa.ask(request.question, request)

    def _on_cancel(self, request, response):
        response.success = self._qa.cancel()
        response.message = ('cancelling the current answer' if response.success
                            else 'nothing to cancel')
        return response

    def _on_reset(self, request, response):
        self._qa.reset_history()
        response.success = True
        response.message = 'conversation history cleared'
        return response

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        try:
            return self._apply_parameters(parameters)
        except Exception as exc:  # noqa: BLE001 - refuse the change, keep the node
            self._internal_error('_on_set_parameters', exc)
            return SetParametersResult(successful=False,
                                       reason=f'internal error: {type(exc).__name__}: {exc}')

    def _apply_parameters(self, parameters) -> SetParametersResult:
        values = dict(self._values)
        for parameter in parameters:
            if parameter.name not in values:
                continue
            problem = check_value(parameter.name, parameter.value)
            if problem:
                return SetParametersResult(successful=False, reason=problem)
            values[parameter.name] = parameter.value
        try:
            options = qa_options(values)
            options.settings.validate()
            self._qa.configure(options)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self._values = values
        return SetParametersResult(successful=True)

    def _on_engine_state(self, state: EngineState, detail: str) -> None:
        text = f'engine {state.value}' + (f': {detail}' if detail else '')
        logger = self.get_logger()
        if state == EngineState.FAILED:
            logger.error(text)
        elif state == EngineState.RESTARTING:
            logger.warning(text)
        elif state in (EngineState.LOADING, EngineState.READY) and detail:
            logger.info(text)   # loading, and ready after loading ('ready: cuda provider')
        elif state != EngineState.STOPPED:   # stopped comes after shutdown: no logger any more
            logger.debug(text)

    # -- output -------------------------------------------------------------------------------

    def _publish_piece(self, ticket: Ticket, piece: str) -> None:
        if ticket.request is None:
            self._publish(self._stream_pub, piece)
        else:
            self._publish(self._response_stream_pub, piece_json(ticket.request.id, piece))

    def _publish_reply(self, reply: Reply) -> None:
        start = time.monotonic()
        if reply.ticket.request is None:
            self._publish(self._answer_pub, reply.text)
        else:
            self._publish(self._response_pub, response_message(reply))
        published = time.monotonic()
        logger = self.get_logger()
        used = 'frames: ' + describe_frames(reply.frames) if reply.frames else 'no frame'
        result = reply.result
        cost = '' if result is None else (
            f' in {result.total_s:.4f} s (first token {result.time_to_first_token_s:.4f} s, '
            f'{result.prompt_tokens} prompt + {result.generated_tokens} new tokens, '
            f'{result.decode_tokens_per_s:.1f} tok/s)')
        if result is not None and result.image_crops:
            cost += f', {result.image_crops} crops ({result.image_tokens} image tokens)'
        line = f'prompt #{reply.ticket.id} {reply.outcome}{cost}, {used}'
        if reply.ticket.request is not None:
            line += f', request {reply.ticket.request.id!r}'
        if result is not None and reply.timings:
            line += '; ' + _node_timings(reply.timings, published - start,
                                         published - reply.ticket.received)
        if reply.ok:
            logger.info(line)
        else:
            logger.warning(f'{line}: {reply.text}')

    def _publish(self, publisher, text: str) -> None:
        try:
            publisher.publish(String(data=text))
        except Exception as exc:  # noqa: BLE001 - publishing after shutdown must not kill a thread
            self.get_logger().debug(f'could not publish: {exc}')

    def _publish_diagnostics(self) -> None:
        node = self.get_fully_qualified_name()
        level, message, values = engine_status(self._engine, self._qa, self._cameras,
                                               self._values['model_path'], self.health)
        statuses = [_diagnostic_status(level, f'{node}: engine', message,
                                       self._values['model_path'], values)]
        for level, camera, message, values in camera_statuses(
                self._cameras, self._qa.options.max_image_age_s):
            statuses.append(_diagnostic_status(level, f'{node}: camera {camera}', message,
                                               camera, values))
        array = DiagnosticArray(status=statuses)
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)

    def shutdown(self) -> None:
        """
        Stop in order, bounded (about 7 s at most: a wedged worker, slow subscribers).

        Prompts still waiting and the one in flight get their 'shutting down' reply; the worker
        is asked to stop and killed when it does not within 2 s.
        """
        if self._shut_down:
            return
        self._shut_down = True
        if self._qa is not None:
            self._qa.close()
        if self._engine is not None:
            self._engine.close()
        if self._qa is not None:
            self._qa.join(2.0)
        # The last replies were just published: give subscribers a moment to take them before
        # the publisher goes away with the node (milliseconds usually; 1 s was seen too short
        # on a machine at load average 17).
        deadline = time.monotonic() + REPLIES_ACKED_TIMEOUT_S
        for name in ('_answer_pub', '_response_pub'):
            publisher = getattr(self, name, None)
            if publisher is not None:
                left = max(0.0, deadline - time.monotonic())
                publisher.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9)))

    def destroy_node(self) -> None:
        # Also called (by main, and on newer rclpy by the context's shutdown) on a node whose
        # constructor failed half-way, e.g. on a parameter refused by its descriptor.
        if hasattr(self, '_shut_down'):
            self.shutdown()
        super().destroy_node()


def _diagnostic_status(level: int, name: str, message: str, hardware_id: str,
                       values) -> DiagnosticStatus:
    return DiagnosticStatus(level=bytes([level]), name=name, message=message,
                            hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in values])


def _parameter_overrides(node: Node) -> dict:
    """
    Return the parameter overrides (-p, params files) given to node: name -> rclpy Parameter.

    rclpy keeps them in Node._parameter_overrides (Humble to Kilted) and has no public accessor.
    """
    overrides = getattr(node, '_parameter_overrides', None)
    return dict(overrides) if isinstance(overrides, dict) else {}


def _node_timings(timings: dict, publish_s: float, node_s: float) -> str:
    """
    Format the node's own time for one answer, by stage.

    The node's own time runs from the arrival of the prompt to the answer published, less
    Engine.generate in the worker: 'node 3.1 ms: queue 0.1, wait 0.0, ... ms, 5 stream messages'.
    """
    names = ('queue', 'wait', 'convert', 'to_worker', 'handoff', 'reply')
    stages = [(name, timings.get(name, 0.0)) for name in names] + [('publish', publish_s)]
    own = sum(seconds for _, seconds in stages)
    parts = ', '.join(f'{name} {seconds * 1e3:.2f}' for name, seconds in stages)
    return (f'node {own * 1e3:.2f} ms of {node_s * 1e3:.1f} ms: {parts} ms, '
            f'{int(timings.get("stream_messages", 0))} stream messages')


class _StopSignals:
    """SIGINT and SIGTERM set a flag; main() stops in order when it sees it (see module text)."""

    def __init__(self) -> None:
        self.received: str = ''
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        # A second signal (launch forwards Ctrl-C after the terminal has sent it) changes nothing:
        # the shutdown under way is bounded.
        if not self.received:
            self.received = signal.Signals(signum).name


def spin_until_stopped(executor, node: VisionQANode, stop) -> int:
    """Spin until stop.received is set (0), or until a thread of the node has died (1)."""
    while not stop.received:
        try:
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
        except ExternalShutdownException:
            return 0
        except Exception as exc:  # noqa: BLE001 - rclpy itself failed in a take or a wait
            node._internal_error('the executor', exc)
            time.sleep(SPIN_PERIOD_S)
        if node.dead_threads:
            node.get_logger().fatal(f'thread {", ".join(node.dead_threads)} ended: exiting with '
                                    'code 1 (launch with respawn:=true restarts the node)')
            return 1
    return 0


def main(args=None) -> int:
    """Run the node; exit code 0 on SIGINT/SIGTERM, 2 on a bad parameter, 1 on a dead thread."""
    stop = _StopSignals()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    code = 0
    try:
        node = VisionQANode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        code = spin_until_stopped(executor, node, stop)
    except ConfigurationError as exc:
        # a parameter out of its range or of the wrong type (`-p max_queue:=0`), a bad topic name:
        # one line saying which, not a traceback
        print(f'vision_qa_node: {exc}', file=sys.stderr)
        code = 2
    except KeyboardInterrupt:     # SIGINT before our handler was in place
        pass
    finally:
        if node is not None:
            if stop.received:
                node.get_logger().info(f'{stop.received}: stopping')
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == '__main__':
    sys.exit(main())
