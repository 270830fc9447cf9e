"""
managed_vision_qa_node: the node as a lifecycle (managed) node.

For a robot that needs its vision-language model only at some moments: the model is loaded when
a lifecycle manager (Nav2's, launch's, `ros2 lifecycle set`) configures the node, and its memory
is given back at cleanup. The wiring is shell.py's, one phase per transition:

- configure: the worker starts and loads the model; the transition waits for it (bounded by
  load_timeout) and fails with the reason when it cannot (a bad model_path, no CUDA, ...): the
  node is then unconfigured again and a later configure may succeed;
- activate: the cameras are subscribed and prompts and requests answered;
- deactivate: prompts and requests are refused again; those waiting and the one being answered
  get an ERROR (the answer in flight is cancelled, not finished: a deactivation is prompt);
- cleanup: the worker is stopped and its memory given back;
- shutdown (from any state): the orderly stop of the plain node.

In every state a prompt or request gets exactly one reply: unconfigured and inactive ones an
ERROR naming the state. /diagnostics says the state (lifecycle_state). The parameters that need a
reload (the model, the worker's settings, the cameras) may be changed in any state and apply at
the next configure; the topics of the interface need a restart, as on the plain node.

Threads: a MultiThreadedExecutor; the lifecycle services run in the node's default callback group
and everything else in one group of its own, so that prompts are answered (refused) while a
configure waits for the model.
"""
from __future__ import annotations

import sys

from lifecycle_msgs.srv import ChangeState
from phi3v_ros.base.errors import ConfigurationError, EngineError
from phi3v_ros.node.shell import RELOADED, run, VisionQAShell
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn


class ManagedVisionQANode(VisionQAShell, LifecycleNode):
    """Raises ConfigurationError, naming the parameter, for a parameter it cannot start with."""

    def __init__(self, **kwargs) -> None:
        super().__init__('vision_qa', **kwargs)
        self._interface_group = MutuallyExclusiveCallbackGroup()
        self._refuse_transitions_not_allowed()
        self._init_shell(writable=RELOADED)
        self.get_logger().info('unconfigured: configure and activate me to get answers '
                               '(ros2 lifecycle set <node> configure)')

    def _refuse_transitions_not_allowed(self) -> None:
        """
        Answer success=False to a transition the state has not (activate while unconfigured).

        Humble's and Jazzy's rclpy raise out of the change_state service then (Kilted's answer
        False): the caller never gets its response and the error reaches the executor. The
        state machine refuses before any callback of ours runs, so the state is unchanged.
        """
        for service in self.services:
            if service.srv_type is ChangeState:
                service.callback = self._answering_refusals(service.callback)

    def _answering_refusals(self, change_state):
        def guarded(request, response):
            try:
                return change_state(request, response)
            except Exception as exc:  # noqa: BLE001 - rclpy's RCLError, whose module is private
                self.get_logger().warning(
                    f'transition {request.transition.label or request.transition.id} refused '
                    f'in state {self._phase}: {exc}')
                response.success = False
                return response
        return guarded

    def _callback_group(self):
        return self._interface_group

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
            load_timeout = self._values['load_timeout']
            if not self._engine.wait_ready(load_timeout):
                raise EngineError(f'the model did not load within {load_timeout:g} s '
                                  '(load_timeout)')
        except (ConfigurationError, EngineError) as exc:
            self.get_logger().error(f'configure failed: {exc}')
            self._cleanup()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._activate()
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.shutdown()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()      # back to unconfigured, the worker stopped
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        if hasattr(self, '_shut_down'):
            self.shutdown()
        super().destroy_node()


def main(args=None) -> int:
    """Run the managed node; exit codes as vision_qa_node's (0 after the shutdown transition)."""
    return run('managed_vision_qa_node', ManagedVisionQANode,
               lambda: MultiThreadedExecutor(num_threads=4), args)


if __name__ == '__main__':
    sys.exit(main())
