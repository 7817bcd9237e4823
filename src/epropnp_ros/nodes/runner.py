"""The entry-point body of every estimator node executable (``detector_node``,
``pose_estimator_node``, ``rig_detector_node``): init, build, autostart, spin, clean up."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions

from epropnp_lib.allocator import apply_heap_policy
from epropnp_lib.errors import EProPnPError
from epropnp_ros.dds import release_rclpy, use_profile

if TYPE_CHECKING:
    from epropnp_ros.nodes.base import EstimatorNode


def run(
    node_factory: Callable[[], EstimatorNode[Any, Any, Any]], args: Sequence[str] | None = None
) -> int:
    """Entry point body: init, build the node, optionally configure + activate it (parameter
    ``autostart``), spin until Ctrl-C or an external shutdown, then clean up. Returns the exit
    status: 0 after a clean shutdown, 1 when autostart's configure or activate failed, 2 for
    invalid start-up parameters (out of range, wrong type), each with the reason logged.

    SIGINT / SIGTERM only set a flag that the spin loop checks (at least every 0.1 s): no
    ``KeyboardInterrupt`` is raised at an arbitrary point of rclpy's code (which can leave a
    half-built ``Task`` whose destructor then prints a traceback), and the node is cleaned up
    from the main thread. During start-up (model loading) the signals act as usual."""
    use_profile()  # large images over shared memory (epropnp_ros.dds), unless set already
    rclpy.init(args=None if args is None else list(args),
               signal_handler_options=SignalHandlerOptions.NO)
    node = None
    executor = None
    status = 0
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # Freed tensor memory stays mapped for the next frame (epropnp_lib.allocator), unless
        # EPROPNP_HEAP_POLICY=default.
        heap_kept = apply_heap_policy()
        node = node_factory()
        node.get_logger().info("heap policy: " + ("freed memory kept for reuse" if heap_kept
                                                  else "the C library's default"))
        if node.params.autostart:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error("autostart: configure failed (see above)")
                return 1
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error("autostart: activate failed (see above)")
                return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        for sig in previous:
            signal.signal(sig, lambda _signum, _frame: stop.set())
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (EProPnPError, ParameterException) as exc:
        # Invalid start-up parameters (out of range, wrong type, e.g. an int literal for a
        # float parameter in the YAML): a clear message, no traceback.
        rclpy.logging.get_logger("epropnp").error(f"invalid parameters: {exc}")
        status = 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node._stop_inputs()
            node.destroy_node()
        node = executor = None
        release_rclpy()  # its shared-memory segments leave /dev/shm now (epropnp_ros.dds)
    return status
