# Shared by scripts/demo, scripts/test and scripts/bench: installs what is missing, idempotently.
# Sourced, not run.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_MAJOR=15
PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"
PG_CONFIG="${PG_BIN}/pg_config"
PGRX_VERSION="$(sed -n 's/^pgrx = "=\([0-9.]*\)"/\1/p' "${REPO_ROOT}/Cargo.toml")"
export PATH="${HOME}/.cargo/bin:${PATH}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Runs a command as the postgres OS user (initdb refuses root).
as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else as_root sudo -u postgres -- "$@"; fi
}

ensure_packages() {
    local missing=()
    [ -x "${PG_BIN}/postgres" ] || missing+=("postgresql-${PG_MAJOR}")
    [ -x "${PG_CONFIG}" ] && [ -d "/usr/include/postgresql/${PG_MAJOR}/server" ] || missing+=("postgresql-server-dev-${PG_MAJOR}")
    ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev clang)
    command -v sudo >/dev/null 2>&1 || missing+=(sudo)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

ensure_cargo_pgrx() {
    if ! cargo pgrx --version 2>/dev/null | grep -q " ${PGRX_VERSION}\$"; then
        log "installing cargo-pgrx ${PGRX_VERSION} (a few minutes, once)"
        cargo install cargo-pgrx --version "${PGRX_VERSION}" --locked
    fi
    # Register Debian's PostgreSQL with pgrx; never let pgrx download or build one.
    if ! grep -qs "pg${PG_MAJOR} = \"${PG_CONFIG}\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
        log "registering ${PG_CONFIG} with pgrx"
        cargo pgrx init --pg${PG_MAJOR} "${PG_CONFIG}" >/dev/null
    fi
}

ensure_all() {
    ensure_packages
    ensure_cargo_pgrx
}

# Builds and installs the extension into Debian's PostgreSQL (release unless PROFILE=dev).
install_extension() {
    local profile=(--release)
    [ "${PROFILE:-release}" = dev ] && profile=()
    # Overwriting the library under a running server crashes it: stop our demo cluster first
    # (scripts/demo starts it again).
    cluster_stop "${REPO_ROOT}/target/demo-cluster"
    log "building and installing pg_dialpad (${PROFILE:-release})"
    (cd "${REPO_ROOT}" && as_root env PATH="${PATH}" PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}" \
        cargo pgrx install "${profile[@]}" --pg-config "${PG_CONFIG}" >/dev/null)
}

# A private cluster: own data directory, port and socket directory, never the system one.
# Usage: cluster_start DIR PORT [extra postgresql.conf lines...]
cluster_start() {
    local dir="$1" port="$2"; shift 2
    as_root mkdir -p "${dir}"
    as_root chown postgres:postgres "${dir}"
    if [ ! -f "${dir}/data/PG_VERSION" ]; then
        as_postgres "${PG_BIN}/initdb" -D "${dir}/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
        as_postgres mkdir -p "${dir}/socket"
        as_postgres tee -a "${dir}/data/postgresql.conf" >/dev/null <<CONF
port = ${port}
listen_addresses = ''
unix_socket_directories = '${dir}/socket'
shared_preload_libraries = 'pg_dialpad'
$(printf '%s\n' "$@")
CONF
    fi
    if ! as_postgres "${PG_BIN}/pg_ctl" -D "${dir}/data" status >/dev/null 2>&1; then
        as_postgres "${PG_BIN}/pg_ctl" -D "${dir}/data" -l "${dir}/server.log" -w start >/dev/null
    fi
}

cluster_stop() {
    local dir="$1"
    if [ -f "${dir}/data/PG_VERSION" ]; then
        as_postgres "${PG_BIN}/pg_ctl" -D "${dir}/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

# Builds the package of every released version (scripts/released-versions) from its commit,
# once: target/released/<version>/ holds its library, control file and SQL, for the upgrade
# test. A git worktree keeps the current tree and install untouched.
package_released_versions() {
    local version commit out wt
    while read -r version commit; do
        case "${version}" in ''|'#'*) continue ;; esac
        out="${REPO_ROOT}/target/released/${version}"
        [ -f "${out}/.complete" ] && continue
        log "packaging released pg_dialpad ${version} (${commit}) for the upgrade test"
        wt="${REPO_ROOT}/target/released/src-${version}"
        rm -rf "${wt}" "${out}"
        git -C "${REPO_ROOT}" worktree prune
        git -C "${REPO_ROOT}" worktree add --detach "${wt}" "${commit}" >/dev/null
        # Its own target dir: the current build's artifacts stay as they are.
        (cd "${wt}" && CARGO_TARGET_DIR="${REPO_ROOT}/target/released/build" \
            cargo pgrx package --debug --pg-config "${PG_CONFIG}" --out-dir "${out}" >/dev/null)
        git -C "${REPO_ROOT}" worktree remove --force "${wt}"
        touch "${out}/.complete"
    done < "${REPO_ROOT}/scripts/released-versions"
}
