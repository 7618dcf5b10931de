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
    # pg_cron, for tests/pg_cron.rs (pg_dialpad driven by pg_cron instead of its workers).
    [ -f "/usr/lib/postgresql/${PG_MAJOR}/lib/pg_cron.so" ] || missing+=("postgresql-${PG_MAJOR}-cron")
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

# Golden SQL tests (tests/regress: sql/ + expected/, run by pg_regress) and isolation specs
# (tests/isolation: specs/ + expected/, run by pg_isolation_regress), against a private
# cluster with the installed build preloaded and the workers off (processing is then
# deterministic: the tests call dialpad.process_events()). A diff is printed on failure.
# REGRESS_ACCEPT=1 copies the results over the expected files (review the diff first).
run_sql_suites() {
    local dir="${REPO_ROOT}/target/sql-suites" port=28817 out="${REPO_ROOT}/target/sql-suites-out"
    local pgxs; pgxs="$("${PG_CONFIG}" --pkglibdir)/pgxs/src/test"
    cluster_stop "${dir}"
    as_root rm -rf "${dir}" "${out}"
    cluster_start "${dir}" "${port}" "dialpad.workers = 0"
    mkdir -p "${out}/regress" "${out}/isolation"
    local conn=(--use-existing --host="${dir}/socket" --port="${port}" --user=postgres --bindir="${PG_BIN}")
    as_postgres "${PG_BIN}/psql" -h "${dir}/socket" -p "${port}" -U postgres -q \
        -c "CREATE DATABASE dialpad_regress" -c "CREATE DATABASE dialpad_isolation" postgres
    local status=0 regress isolation
    regress=$(cd "${REPO_ROOT}/tests/regress/sql" && ls ./*.sql | sed 's|^\./||; s|\.sql$||' | sort)
    isolation=$(cd "${REPO_ROOT}/tests/isolation/specs" && ls ./*.spec | sed 's|^\./||; s|\.spec$||' | sort)
    log "golden SQL tests (pg_regress): $(echo ${regress})"
    # shellcheck disable=SC2086
    "${pgxs}/regress/pg_regress" "${conn[@]}" --dbname=dialpad_regress \
        --inputdir="${REPO_ROOT}/tests/regress" --outputdir="${out}/regress" ${regress} || status=1
    log "isolation specs (pg_isolation_regress): $(echo ${isolation})"
    # shellcheck disable=SC2086
    "${pgxs}/isolation/pg_isolation_regress" "${conn[@]}" --dbname=dialpad_isolation \
        --inputdir="${REPO_ROOT}/tests/isolation" --outputdir="${out}/isolation" ${isolation} || status=1
    cluster_stop "${dir}"
    if [ "${REGRESS_ACCEPT:-0}" = 1 ]; then
        cp "${out}/regress/results/"*.out "${REPO_ROOT}/tests/regress/expected/"
        cp "${out}/isolation/results/"*.out "${REPO_ROOT}/tests/isolation/expected/"
        log "results copied to tests/regress/expected and tests/isolation/expected"
        return 0
    fi
    if [ "${status}" != 0 ]; then
        for d in "${out}/regress" "${out}/isolation"; do
            [ -f "${d}/regression.diffs" ] && cat "${d}/regression.diffs"
        done
    fi
    return "${status}"
}
