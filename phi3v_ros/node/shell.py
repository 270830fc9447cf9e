"""
The ROS 2 shell around VisionQA, shared by the plain node and the managed (lifecycle) one.

It wires topics, services, parameters and diagnostics to the core and does nothing else (see
core/vision_qa.py for the request logic, engine/engine_client.py for the worker process). Its
phases are the lifecycle's, so that the plain node runs them all at once and the managed node
one per transition:

- _declare_parameters, _open_interface (at construction): parameters; the prompt and request
  subscriptions, the answer, response and stream publishers, ~/cancel, ~/reset, /diagnostics.
  Prompts and requests that come while the node is not active are answered with an ERROR saying
  so (the lifecycle state), so that every prompt gets exactly one reply in every state;
- _configure: the cameras, the worker (started, its model loaded) and a VisionQA;
- _activate: the camera subscriptions and the dispatcher: prompts are answered;
- _deactivate: prompts are refused again, those waiting and the one in flight get an ERROR
  (cancelled), the camera subscriptions go;
- _cleanup: the worker is stopped, its memory given back;
- shutdown: the orderly stop, from any phase.

Threads: the executor runs every ROS callback; none of them blocks on the engine (the managed
node's configure transition waits for the model to load, bounded by load_timeout, while its
other callbacks are served by other executor threads), and each is guarded, so that a message
that breaks one costs that callback and not the node. The dispatcher publishes replies and
stream pieces from its own thread (rclpy publishers are thread-safe). _phase_lock guards the
phase and the objects a phase makes (_engine, _qa, _cameras, the camera subscriptions): taken
by transitions and read under it by the callbacks that use them, never held while waiting.
"""
from __future__ import annotations

import difflib
import itertools
import signal
import sys
import threading
import time
import traceback
from typing import Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from phi3v_ros.base.errors import ConfigurationError
from phi3v_ros.base.guarded_thread import ThreadHealth
from phi3v_ros.core.responses import refusal_message, response_message
from phi3v_ros.core.vision_qa import Counters, Reply, Ticket, VisionQA
from phi3v_ros.engine.engine import EngineConfig
from phi3v_ros.engine.engine_client import EngineClient, EngineState
from phi3v_ros.frames.cameras import Cameras, describe_frames
from phi3v_ros.frames.frame_cache import FrameAge
from phi3v_ros.frames.frame_conversion import FrameConverter
from phi3v_ros.interface.qos import response_qos
from phi3v_ros.interface.replies import ERROR_PREFIX
from phi3v_ros.interface.requests import (CancelRequest, parse_request, piece_json, RequestError,
                                          response_json, STATUS_ERROR)
from phi3v_ros.node.cv_bridge_fallback import load_cv_bridge_converter
from phi3v_ros.node.diagnostics import camera_statuses, engine_status, idle_status
from phi3v_ros.node.parameters import (check_value, default_for, PARAMETERS, qa_options,
                                       type_mismatch)
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import LoggingSeverity
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
# The topics of the node's interface, made at construction: these need a restart to change.
INTERFACE_TOPICS = ('prompt_topic', 'answer_topic', 'request_topic', 'response_topic')
TOPIC_PARAMETERS = ('image_topic',) + INTERFACE_TOPICS
# What needs a reload (a new worker, new camera subscriptions): read-only on the plain node; the
# managed node takes changes and applies them at its next configure.
RELOADED = frozenset(spec.name for spec in PARAMETERS
                     if spec.read_only and spec.name not in INTERFACE_TOPICS)
# How long main() waits in the executor before it looks at the stop flag (Python runs signal
# handlers only between the executor's waits).
SPIN_PERIOD_S = 0.1
# How long main() goes on spinning after the shutdown transition, for its response to go out.
FINISH_GRACE_S = 2.0
# How long shutdown waits for subscribers to acknowledge the last replies.
REPLIES_ACKED_TIMEOUT_S = 3.0
# What the prompts of a node that is not answering are told, by phase.
NOT_ANSWERING = {
    'unconfigured': 'the node is unconfigured (lifecycle): configure and activate it to get '
                    'answers.',
    'inactive': 'the node is inactive (lifecycle): activate it to get answers.',
    'finalized': 'the node is shutting down.',
}


def _descriptor(spec, read_only: bool) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=spec.description, read_only=read_only)
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


class VisionQAShell:
    """
    The node's wiring, for a class that is also an rclpy Node or LifecycleNode (see the module).

    _declare_parameters raises ConfigurationError, naming the parameter, for one the node cannot
    start with.
    """

    def _init_shell(self, writable: frozenset = frozenset()) -> None:
        """Declare the parameters and open the interface; writable: reload parameters made so."""
        self._qa = self._engine = self._cameras = None
        self._camera_subscriptions = []
        self._phase = 'unconfigured'
        self._phase_lock = threading.Lock()
        self._shut_down = False
        self._shutdown_done = False    # set last by shutdown(): main() may end the process
        self.health = ThreadHealth()
        self.counters = Counters()       # kept across VisionQAs (one per activation), as are
        self._ticket_ids = itertools.count(1)    # the prompts' numbers
        self._values = {}
        self._declare_parameters(writable)
        self._open_interface()

    def _declare_parameters(self, writable: frozenset) -> None:
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
                value = self.declare_parameter(
                    spec.name, default_for(spec.name, self._values),
                    _descriptor(spec, read_only=spec.read_only and spec.name not in writable)
                ).value
            except (ParameterException, ValueError, TypeError) as exc:
                raise ConfigurationError(f'parameter {spec.name}: {exc}') from None
            problem = check_value(spec.name, value)
            if problem:
                raise ConfigurationError(problem)
            self._values[spec.name] = value
        for name in TOPIC_PARAMETERS:
            self._check_topic(name, self._values[name])
        for topic in self._values['image_topics']:
            self._check_topic('image_topics', topic)
        self._camera_topics()      # a start error, not a configure error: topics twice
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _camera_topics(self):
        """
        Return (the topics given, their resolved names).

        One camera per topic of image_topics, or the one of image_topic (its name not told to the
        model, as before image_topics existed).
        """
        v = self._values
        topics = list(v['image_topics']) or [v['image_topic']]
        resolved = [self._resolved(topic) for topic in topics]
        if len(set(resolved)) != len(resolved):   # cam and /cam in the root namespace
            raise ConfigurationError(f'image_topics names the same topic twice: {topics} '
                                     f'resolve to {resolved}')
        return topics, resolved

    def _open_interface(self) -> None:
        v = self._values
        self._answer_pub = self.create_publisher(String, v['answer_topic'], ANSWER_DEPTH)
        self._stream_pub = self.create_publisher(String, v['answer_topic'] + '/stream',
                                                 STREAM_DEPTH)
        self._response_pub = self.create_publisher(String, v['response_topic'],
                                                   response_qos(rclpy.qos))
        self._response_stream_pub = self.create_publisher(
            String, v['response_topic'] + '/stream', STREAM_DEPTH)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics',
                                                      RELIABLE_DEPTH)
        group = self._callback_group()
        self.create_subscription(String, v['prompt_topic'], self._guarded(self._on_prompt),
                                 PROMPT_DEPTH, callback_group=group)
        self.create_subscription(String, v['request_topic'], self._guarded(self._on_request),
                                 PROMPT_DEPTH, callback_group=group)
        service_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=SERVICE_DEPTH,
                                 reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.VOLATILE)
        self.create_service(Trigger, '~/cancel', self._guarded_service(self._on_cancel),
                            qos_profile=service_qos, callback_group=group)
        self.create_service(Trigger, '~/reset', self._guarded_service(self._on_reset),
                            qos_profile=service_qos, callback_group=group)
        # On the steady clock: under use_sim_time a ROS-time timer stops with a paused /clock,
        # and diagnostics are most wanted then.
        self.create_timer(v['diagnostics_period'], self._guarded(self._publish_diagnostics),
                          clock=Clock(clock_type=ClockType.STEADY_TIME), callback_group=group)

    def _callback_group(self):
        """Return the callback group of the interface: None (the node's default) here."""
        return None

    # -- phases -------------------------------------------------------------------------------

    def _configure(self) -> None:
        """Make the cameras, the worker (started) and a VisionQA; the model loads meanwhile."""
        v = self._values
        topics, resolved = self._camera_topics()
        cameras = Cameras(
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
        engine = EngineClient(
            EngineConfig(model_path=v['model_path'], provider=v['provider'],
                         device_id=v['device_id'], image_preprocessing=v['image_preprocessing'],
                         max_image_side=v['max_image_side'], image_format=v['image_format'],
                         cuda_graph=v['cuda_graph'], stream_interval_s=v['stream_interval']),
            warmup=v['warmup'], stall_timeout_s=v['stall_timeout'],
            load_timeout_s=v['load_timeout'],
            on_state=self._on_engine_state, log=self.get_logger().info, health=self.health)
        self._converter = FrameConverter(v['max_image_pixels'], fallback,
                                         allocate=engine.frame_buffer)
        with self._phase_lock:
            self._cameras, self._engine, self._topics = cameras, engine, topics
            self._qa = self._new_qa()
            self._phase = 'inactive'
        engine.start()
        suffix = '/compressed' if v['use_compressed'] else ''
        self.get_logger().info(
            f'listening on {", ".join(camera + suffix for camera in cameras.names)}, '
            f'{self._resolved(v["prompt_topic"])} and {self._resolved(v["request_topic"])}, '
            f'answering on {self._resolved(v["answer_topic"])} and '
            f'{self._resolved(v["response_topic"])}; loading {v["model_path"]} '
            f'(provider {v["provider"]})')

    def _new_qa(self) -> VisionQA:
        return VisionQA(self._engine, self._cameras, self._converter,
                        on_reply=self._publish_reply, on_piece=self._publish_piece,
                        options=qa_options(self._values), log=self.get_logger().info,
                        health=self.health, counters=self.counters, ids=self._ticket_ids)

    def _activate(self) -> None:
        """Subscribe the cameras and start answering."""
        v = self._values
        image_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=v['image_qos_depth'],
            reliability=(ReliabilityPolicy.RELIABLE if v['image_reliability'] == 'reliable'
                         else ReliabilityPolicy.BEST_EFFORT))
        suffix = '/compressed' if v['use_compressed'] else ''
        with self._phase_lock:
            if self._qa is None or self._qa.closed:
                self._qa = self._new_qa()
            self._camera_subscriptions = [
                self.create_subscription(CompressedImage if suffix else Image, topic + suffix,
                                         self._guarded(self._image_callback(camera)), image_qos,
                                         callback_group=self._callback_group())
                for topic, camera in zip(self._topics, self._cameras.names)]
            self._qa.start()
            self._phase = 'active'

    def _deactivate(self) -> None:
        """Stop answering: those waiting and the one in flight get an ERROR; the cameras go."""
        with self._phase_lock:
            qa, subscriptions = self._qa, self._camera_subscriptions
            self._camera_subscriptions = []
            self._phase = 'inactive'
        if qa is not None:
            qa.close('the node was deactivated (lifecycle) before the answer was complete.')
            qa.join(2.0)
        for subscription in subscriptions:
            self.destroy_subscription(subscription)

    def _cleanup(self) -> None:
        """Stop the worker (its memory given back) and forget the cameras."""
        with self._phase_lock:
            engine, qa = self._engine, self._qa
            self._engine = self._qa = self._cameras = None
            self._phase = 'unconfigured'
        if qa is not None and not qa.closed:
            qa.close('the node was cleaned up (lifecycle).')
            qa.join(2.0)
        if engine is not None:
            engine.close()

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
    def finished(self) -> bool:
        """Return True once shutdown() has completed (not merely begun, on another thread)."""
        return self._shutdown_done

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

    def _answering(self) -> Optional[VisionQA]:
        """Return the VisionQA when the node answers (active), else None."""
        with self._phase_lock:
            return self._qa if self._phase == 'active' else None

    def _on_prompt(self, message: String) -> None:
        qa = self._answering()
        if qa is None:
            self._refuse(None)
            return
        qa.ask(message.data)

    def _refuse(self, request_id: Optional[str], request: bool = False) -> None:
        """Reply to a prompt (or request) that came while the node does not answer."""
        reason = NOT_ANSWERING.get(self._phase, NOT_ANSWERING['inactive'])
        self.counters.count_refused()
        if request:
            self._publish(self._response_pub, response_json(
                request_id, STATUS_ERROR, '', None, reason, frames=[], missing_cameras=[],
                choice_probabilities=None, constrained_by=None, prompt_tokens=0,
                image_tokens=0, generated_tokens=0, time_to_first_token_s=None, total_s=None,
                stop_reason=None))
        else:
            self._publish(self._answer_pub, ERROR_PREFIX + reason)

    def _on_request(self, message: String) -> None:
        try:
            request = parse_request(message.data)
        except RequestError as error:     # one response, with the id when it had one
            self.counters.count_refused()
            self._publish(self._response_pub, refusal_message(error))
            self.get_logger().warning(f'request {error.request_id or "(no id)"} refused: {error}')
            return
        qa = self._answering()
        if isinstance(request, CancelRequest):
            if qa is None or not qa.cancel_request(request.id):
                self.get_logger().info(f'cancel of request {request.id!r}: no such request is '
                                       'waiting or being answered')
            return
        if qa is None:
            self._refuse(request.id, request=True)
            return
        qa.ask(request.question, request)

    def _on_cancel(self, request, response):
        qa = self._answering()
        response.success = qa is not None and qa.cancel()
        response.message = ('cancelling the current answer' if response.success
                            else 'nothing to cancel')
        return response

    def _on_reset(self, request, response):
        qa = self._answering()
        if qa is not None:
            qa.reset_history()
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
            with self._phase_lock:
                if self._qa is not None:
                    self._qa.configure(options)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        reloads = sorted(parameter.name for parameter in parameters
                         if parameter.name in self._values and parameter.name in RELOADED)
        if reloads:
            self.get_logger().info(f'{", ".join(reloads)} changed: applied at the next '
                                   'configure')
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
        note = reply.conversation
        if note is not None:
            line += (f", follow-up {note.follow_up} (its conversation's frames)" if note.continued
                     else f', a new conversation ({note.new_because})' if note.new_because
                     else ', a new conversation' if note.open else '')
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
        with self._phase_lock:
            phase, engine, qa, cameras = self._phase, self._engine, self._qa, self._cameras
        if engine is None:
            level, message, values = idle_status(phase, self.counters,
                                                 self._values['model_path'], self.health)
        else:
            level, message, values = engine_status(engine, qa, cameras,
                                                   self._values['model_path'], self.health)
            values.append(('lifecycle_state', phase))
        statuses = [_diagnostic_status(level, f'{node}: engine', message,
                                       self._values['model_path'], values)]
        for level, camera, message, values in (camera_statuses(
                cameras, qa.options.max_image_age_s) if cameras is not None else ()):
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
        try:
            with self._phase_lock:
                qa, engine = self._qa, self._engine
                self._phase = 'finalized'
            if qa is not None:
                qa.close()
            if engine is not None:
                engine.close()
            if qa is not None:
                qa.join(2.0)
            # The last replies were just published: give subscribers a moment to take them before
            # the publisher goes away with the node (milliseconds usually; 1 s was seen too short
            # on a machine at load average 17).
            deadline = time.monotonic() + REPLIES_ACKED_TIMEOUT_S
            for name in ('_answer_pub', '_response_pub'):
                publisher = getattr(self, name, None)
                if publisher is not None:
                    left = max(0.0, deadline - time.monotonic())
                    publisher.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9)))
        finally:
            self._shutdown_done = True


def _diagnostic_status(level: int, name: str, message: str, hardware_id: str,
                       values) -> DiagnosticStatus:
    return DiagnosticStatus(level=bytes([level]), name=name, message=message,
                            hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in values])


def _parameter_overrides(node) -> dict:
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


class StopSignals:
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


def spin_until_stopped(executor, node: VisionQAShell, stop) -> int:
    """
    Spin until stop.received is set (0), or until a thread of the node has died (1).

    A node that has shut down (the managed node's shutdown transition) ends it too (0), after
    FINISH_GRACE_S more of spinning: the transition's response must still go out.
    """
    finished_at = None
    while not stop.received:
        try:
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
        except ExternalShutdownException:
            return 0
        except Exception as exc:  # noqa: BLE001 - rclpy itself failed in a take or a wait
            node._internal_error('the executor', exc)
            time.sleep(SPIN_PERIOD_S)
        if node.finished and finished_at is None:
            finished_at = time.monotonic()
        if finished_at is not None and time.monotonic() - finished_at > FINISH_GRACE_S:
            return 0
        if node.dead_threads:
            node.get_logger().fatal(f'thread {", ".join(node.dead_threads)} ended: exiting with '
                                    'code 1 (launch with respawn:=true restarts the node)')
            return 1
    return 0


def run(program: str, make_node, make_executor, args=None) -> int:
    """
    Run a node until SIGINT/SIGTERM: main() of both nodes (program names them in messages).

    Exit code 0 on a signal (or the managed node's shutdown transition), 2 on a bad parameter,
    1 on a dead thread. rclpy's own signal handlers are not installed: StopSignals only sets a
    flag, and the node stops in order, replying to every prompt, while the context is valid.
    """
    stop = StopSignals()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    code = 0
    try:
        node = make_node()
        executor = make_executor()
        executor.add_node(node)
        code = spin_until_stopped(executor, node, stop)
    except ConfigurationError as exc:
        # a parameter out of its range or of the wrong type (`-p max_queue:=0`), a bad topic name:
        # one line saying which, not a traceback
        print(f'{program}: {exc}', file=sys.stderr)
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
