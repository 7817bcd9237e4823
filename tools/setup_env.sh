#!/usr/bin/env bash
# Create (or confirm) the epropnp development venv: pinned Python packages from
# requirements/lock.txt, the project installed editable, and the ROS 2 interface packages that are
# not on PyPI (vision_msgs, tf2_msgs, autoware_perception_msgs) built from interfaces/ into the venv.
#
# Usage: tools/setup_env.sh [--check]
#   --check   only report: exit 0 if the venv is complete and up to date, 1 if it would be
#             (re)built. Changes nothing.
#
# Environment:
#   EPROPNP_VENV    venv location (default: <repo>/.venv)
#   EPROPNP_PYTHON  Python 3.11 interpreter to build the venv from (default: python3.11)
#   EPROPNP_LOCK    pinned requirements to install (default: <repo>/requirements/lock.txt)
#
# Idempotent. A stamp file in the venv holds a hash of everything the venv is built from
# (lock.txt, the interface definitions, this script's SETUP_VERSION, the interpreter, ROS_DISTRO).
# It is written only at the very end, after every step and a smoke import succeeded:
#   stamp matches  -> nothing to do (about a second);
#   missing/stale  -> the venv is deleted and rebuilt from scratch, so a half-built venv never
#                     looks complete and a change of pinned requirements always rebuilds.
# A change of setup.py / setup.cfg / pyproject.toml / package.xml / this script only re-runs the
# cheap part: the editable install of the project and its ament index entries.
set -euo pipefail

# Bump when the build logic below changes in a way that needs existing venvs rebuilt.
SETUP_VERSION=1

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EPROPNP_VENV:-$REPO/.venv}"
VENV="${VENV%/}"
PYTHON="${EPROPNP_PYTHON:-python3.11}"
LOCK="${EPROPNP_LOCK:-$REPO/requirements/lock.txt}"
COLCON_LOCK="$REPO/requirements/colcon.txt"
STAMP="$VENV/.epropnp-setup-stamp"
PROJECT_STAMP="$VENV/.epropnp-project-stamp"
INTERFACE_PKGS=(vision_msgs tf2_msgs autoware_perception_msgs)
MIN_CMAKE=3.22

CHECK_ONLY=0
case "${1:-}" in
  "") ;;
  --check) CHECK_ONLY=1 ;;
  -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "setup_env: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

log() { echo "setup_env: $*" >&2; }
die() { echo "setup_env: ERROR: $*" >&2; exit 1; }

cd "$REPO"
# Never resolve tools from the venv being (re)built.
PATH="$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$VENV/bin" | paste -sd: -)"
# The ROS wheels' bootstrapper re-executes every venv interpreter once with LD_LIBRARY_PATH set,
# guarded by this variable; inherited from a caller that runs another venv it would skip that.
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE

# --- 1. the interpreter ----------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 \
  || die "Python 3.11 is required but '$PYTHON' was not found on PATH. Install Python 3.11 (e.g. 'apt-get install python3.11 python3.11-venv' or 'pyenv install 3.11') or point EPROPNP_PYTHON at one."
PY_INFO="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2], sys.version.split()[0], sys.base_prefix)' 2>/dev/null)" \
  || die "Python 3.11 is required but '$PYTHON' does not run as a Python interpreter. Install Python 3.11 or point EPROPNP_PYTHON at one."
PY_MINOR="${PY_INFO%% *}"
# The base interpreter (not a venv's python, which may be the very venv rebuilt below).
PY_BASE="$("$PYTHON" -c 'import sys; print(getattr(sys, "_base_executable", "") or sys.executable)' 2>/dev/null || true)"
[[ "$PY_MINOR" == "3.11" ]] \
  || die "Python 3.11 is required but '$PYTHON' is Python $PY_MINOR (the ROS 2 Kilted wheels and the pinned torch build are cp311). Install Python 3.11 or point EPROPNP_PYTHON at one."
[[ -f "$LOCK" ]] || die "missing $LOCK"

# Two set-ups of the same venv at once (e.g. two make targets) wait for each other.
if [[ $CHECK_ONLY == 0 ]] && command -v flock >/dev/null 2>&1; then
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.setup.lock"
  flock 9
fi

# --- 2. up to date? --------------------------------------------------------------------------
sha256_stdin() { sha256sum | cut -d' ' -f1; }

env_hash() {
  {
    echo "setup-version $SETUP_VERSION"
    echo "python $PY_INFO"
    echo "ros-distro ${ROS_DISTRO:-}"
    sha256sum "$LOCK" | cut -d' ' -f1
    sha256sum "$COLCON_LOCK" | cut -d' ' -f1
    # The interface packages: every file below interfaces/<pkg>/ (not interfaces/README.md).
    find interfaces -mindepth 2 -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256_stdin
}

# The cheap part: the editable install of the project (which compiles the C extension, hence its
# sources here) and its ament index entries. This script is included so that a change of it re-runs
# that part; bump SETUP_VERSION for a full rebuild.
project_hash() {
  sha256sum setup.py setup.cfg pyproject.toml package.xml tools/setup_env.sh \
    epropnp_lib/_native.c epropnp_lib/_native_kernels.h | sha256_stdin
}

WANT="$(env_hash)"
WANT_PROJECT="$(project_hash)"
HAVE="$(cat "$STAMP" 2>/dev/null || true)"
HAVE_PROJECT="$(cat "$PROJECT_STAMP" 2>/dev/null || true)"

if [[ "$HAVE" == "$WANT" && "$HAVE_PROJECT" == "$WANT_PROJECT" ]]; then
  [[ $CHECK_ONLY == 1 ]] && { log "venv $VENV is up to date"; exit 0; }
  log "venv $VENV is up to date (stamp matches); nothing to do"
  exit 0
fi
if [[ $CHECK_ONLY == 1 ]]; then
  if [[ "$HAVE" == "$WANT" ]]; then
    log "venv $VENV: project metadata changed; the editable install would be refreshed"
  else
    log "venv $VENV is missing or stale; it would be rebuilt from scratch"
  fi
  exit 1
fi

VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)

# An editable install does not install setup.py's data_files. Register the package in the venv's
# ament index the way `colcon build --symlink-install` would (links into the repository, so new
# launch/config files appear without a reinstall): ament_index_python then finds
# share/epropnp/{package.xml,launch,config} as on a ROS install.
link_ament_share() {
  local index="$VENV/share/ament_index/resource_index/packages" share="$VENV/share/epropnp" d
  mkdir -p "$index" "$share" || return 1
  ln -sfn "$REPO/resource/epropnp" "$index/epropnp" || return 1
  ln -sfn "$REPO/package.xml" "$share/package.xml" || return 1
  for d in launch config; do ln -sfn "$REPO/$d" "$share/$d" || return 1; done
}

install_project() {
  PYTHONWARNINGS=ignore "${PIP[@]}" install --quiet --no-deps --no-build-isolation -e "$REPO" \
    || die "step 'pip install -e . (epropnp, editable)' failed"
  link_ament_share || die "step 'register epropnp in the venv's ament index' failed"
}

# Only the project's metadata changed: refresh the editable install, keep the rest.
if [[ "$HAVE" == "$WANT" ]]; then
  log "project metadata changed: refreshing the editable install of epropnp"
  install_project
  echo "$WANT_PROJECT" > "$PROJECT_STAMP"
  log "done"
  exit 0
fi

# --- 3. full (re)build -------------------------------------------------------------------------
# Refuse to delete anything that does not look like a venv (a mistyped EPROPNP_VENV).
if [[ -e "$VENV" && ! -f "$VENV/pyvenv.cfg" ]] && [[ -n "$(ls -A "$VENV" 2>/dev/null)" ]]; then
  die "refusing to delete '$VENV': it exists, is not empty and is not a venv (no pyvenv.cfg). Check EPROPNP_VENV."
fi

version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

check_build_tools() {
  local missing=() v
  command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || missing+=("a C compiler (cc/gcc)")
  command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || missing+=("a C++ compiler (c++/g++)")
  if command -v cmake >/dev/null 2>&1; then
    v="$(cmake --version | head -n1 | awk '{print $3}')"
    version_ge "$v" "$MIN_CMAKE" || missing+=("cmake >= $MIN_CMAKE (found $v)")
  else
    missing+=("cmake >= $MIN_CMAKE")
  fi
  command -v ninja >/dev/null 2>&1 || command -v ninja-build >/dev/null 2>&1 || missing+=("ninja")
  if ((${#missing[@]})); then
    local list
    list="$(printf '%s, ' "${missing[@]}")"
    die "building the interface packages needs ${list%, }. On Debian/Ubuntu: apt-get install build-essential cmake ninja-build."
  fi
}

# Without a sourced ROS distro the interfaces will certainly be built: fail before the long
# download if the toolchain is missing.
[[ -z "${ROS_DISTRO:-}" ]] && check_build_tools

T0=$SECONDS
step_t=$SECONDS
step_done() { log "  ... $1 took $((SECONDS - step_t)) s"; step_t=$SECONDS; }

log "building venv $VENV from $LOCK (Python ${PY_INFO#* })"
rm -rf "$VENV"
[[ -x "$PY_BASE" ]] || PY_BASE="$PYTHON"
"$PY_BASE" -m venv "$VENV" || die "step 'create venv' failed ($PY_BASE -m venv $VENV)"
step_done "create venv"

PIP_PIN="$(grep -E '^pip==' "$LOCK" || true)"
if [[ -n "$PIP_PIN" ]]; then
  "${PIP[@]}" install --quiet "$PIP_PIN" || die "step 'pip install $PIP_PIN' failed"
fi
log "installing pinned requirements (torch, ROS 2 wheels, ...): this is the long step"
"${PIP[@]}" install --quiet -r "$LOCK" \
  || die "step 'pip install -r requirements/lock.txt' failed (see pip's message above)"
step_done "pip install -r lock.txt"
# colcon, a test tool, apart from site-packages (see requirements/colcon.txt).
"${PIP[@]}" install --quiet --no-deps --target "$VENV/colcon" -r "$COLCON_LOCK" \
  || die "step 'pip install -r requirements/colcon.txt (into $VENV/colcon)' failed"
step_done "pip install colcon"

install_project
step_done "pip install -e ."

# Environment of the venv (AMENT_PREFIX_PATH etc.); LOCALHOST-only discovery.
# shellcheck source=tools/env.sh
EPROPNP_VENV="$VENV" source "$REPO/tools/env.sh"

# --- 4. interface packages not on PyPI -------------------------------------------------------
# The packages of INTERFACE_PKGS that do not import yet (a sourced distro may provide some).
missing_interfaces() {
  local pkg
  for pkg in "${INTERFACE_PKGS[@]}"; do
    "$VPY" -c "import $pkg.msg" >/dev/null 2>&1 || echo "$pkg"
  done
}

build_interfaces() {
  local -a pkgs=("$@")
  check_build_tools
  local inc npinc build_root pkg logf
  inc="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
    || die "step 'locate Python headers' failed"
  [[ -f "$inc/Python.h" ]] \
    || die "Python headers not found ($inc/Python.h): install the development files of Python 3.11 (e.g. apt-get install python3.11-dev)"
  npinc="$("$VPY" -c 'import numpy; print(numpy.get_include())')" \
    || die "step 'locate numpy headers' failed"

  # The wheels' exported CMake files point at the wheel builder's Python and numpy include
  # directories; point them at this venv's.
  local files
  files="$(grep -rlE '/opt/python/cp311-cp311' "$VENV"/share/*/cmake/*.cmake 2>/dev/null || true)"
  if [[ -n "$files" ]]; then
    # shellcheck disable=SC2086
    sed -i -E \
      -e "s#/opt/python/cp311-cp311/lib/python3\.11/site-packages/numpy/(_core|core)/include#${npinc}#g" \
      -e "s#/opt/python/cp311-cp311/include/python3\.11#${inc}#g" \
      $files || die "step 'rewrite wheel CMake paths' failed"
  fi
  if grep -rqE '/opt/python/' "$VENV"/share/*/cmake/*.cmake 2>/dev/null; then
    die "step 'rewrite wheel CMake paths' left paths to /opt/python in $VENV/share/*/cmake (new wheel layout?)"
  fi

  build_root="$VENV/.interfaces-build"
  rm -rf "$build_root"
  mkdir -p "$build_root"
  for pkg in "${pkgs[@]}"; do
    logf="$build_root/$pkg.log"
    log "building $pkg from interfaces/$pkg (CMake + Ninja; log: $logf)"
    if ! {
      AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" \
        cmake -S "$REPO/interfaces/$pkg" -B "$build_root/$pkg" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
        -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VPY" \
        && cmake --build "$build_root/$pkg" \
        && cmake --install "$build_root/$pkg"
    } >"$logf" 2>&1; then
      tail -n 40 "$logf" >&2
      die "step 'build $pkg' failed (full log: $logf)"
    fi
    step_done "build $pkg"
  done
  # Keep the logs, drop the build trees.
  for pkg in "${pkgs[@]}"; do rm -rf "${build_root:?}/$pkg"; done
}

mapfile -t MISSING < <(missing_interfaces)
if ((${#MISSING[@]} == 0)); then
  log "${INTERFACE_PKGS[*]} are importable (ROS_DISTRO=${ROS_DISTRO:-unset}): not building them"
else
  build_interfaces "${MISSING[@]}"
fi

# --- 5. smoke test, then the stamp ----------------------------------------------------------
"$VPY" -c 'import rclpy, torch, vision_msgs.msg, tf2_msgs.msg, autoware_perception_msgs.msg, diagnostic_msgs.msg, epropnp_lib' \
  || die "step 'smoke import (rclpy, torch, vision_msgs, tf2_msgs, autoware_perception_msgs, diagnostic_msgs, epropnp_lib)' failed"
step_done "smoke import"

echo "$WANT_PROJECT" > "$PROJECT_STAMP"
echo "$WANT" > "$STAMP"
log "venv $VENV is ready ($((SECONDS - T0)) s in all). Activate: source tools/env.sh"
