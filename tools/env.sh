# shellcheck shell=bash
# Environment of the epropnp venv. Source it (bash): `source tools/env.sh`.
#
# Activates the venv (EPROPNP_VENV, default <repo>/.venv), makes its ROS 2 packages findable
# (AMENT_PREFIX_PATH) and keeps DDS on this machine:
#   ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST   nothing multicasts beyond loopback (always set)
#   ROS_DOMAIN_ID                             kept if set, else a random one in 1..100
#   ROS_LOG_DIR                               kept if set, else <repo>/.ros_log (git-ignored)
#   FASTDDS_DEFAULT_PROFILES_FILE             kept if set, else <repo>/config/fastdds.xml (large
#                                             images over shared memory, see that file)
_epropnp_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_epropnp_venv="${EPROPNP_VENV:-$_epropnp_repo/.venv}"
_epropnp_venv="${_epropnp_venv%/}"

export VIRTUAL_ENV="$_epropnp_venv"
case ":$PATH:" in
  *":$_epropnp_venv/bin:"*) ;;
  *) export PATH="$_epropnp_venv/bin:$PATH" ;;
esac
unset PYTHONHOME

# ament_index (package share directories, message definitions) and CMake find the wheels and the
# interface packages built into the venv. On a sourced ROS distro the distro's prefix stays too.
case ":${AMENT_PREFIX_PATH:-}:" in
  *":$_epropnp_venv:"*) ;;
  *) export AMENT_PREFIX_PATH="$_epropnp_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;;
esac

export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((RANDOM % 100 + 1))}"
export ROS_LOG_DIR="${ROS_LOG_DIR:-$_epropnp_repo/.ros_log}"
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$_epropnp_repo/config/fastdds.xml}"
# The venv has one RMW (Fast DDS); naming it skips the lookup of others.
if [[ -z "${ROS_DISTRO:-}" ]]; then
  export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
fi

unset _epropnp_repo _epropnp_venv
