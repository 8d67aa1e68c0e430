# Shared by scripts/*.sh: make sure .venv exists and holds the project (run: up.sh) or the project and its
# test tools (test: everything else). Installs with uv, fetched from the package index into the venv, when
# it can (a fresh machine: about 10 s instead of about 40 s with pip); falls back to pip. Every step says
# what it does on stderr, with its time; a later start finds the stamp and installs nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
WANT="${ECHELON_INSTALL:-test}" # run | test
HASH=$(sha256sum pyproject.toml | cut -c1-16)

_say() { printf 'echelon: %s\n' "$*" >&2; }
_installed() { [ -f ".venv/.installed-$1-$HASH" ]; }

if ! _installed test && { [ "$WANT" = test ] || ! _installed run; }; then
  started=$SECONDS
  spec="."
  what="the project"
  if [ "$WANT" = test ]; then
    spec=".[test]"
    what="the project and its test tools"
  fi
  if [ ! -x .venv/bin/python ]; then
    _say "first start: creating .venv (later starts skip all of this)"
    "$PY" -m venv --without-pip .venv
  fi
  if [ ! -x .venv/bin/uv ]; then
    _say "fetching uv, a fast installer, into .venv"
    "$PY" -m pip --python .venv/bin/python install --quiet --disable-pip-version-check uv >/dev/null 2>&1 ||
      _say "uv is not available here: installing with pip instead (slower)"
  fi
  if [ -x .venv/bin/uv ]; then
    _say "installing $what with uv"
    # Bytecode now, in parallel: otherwise the first start compiles every module it imports, one by one.
    .venv/bin/uv pip install --python .venv/bin/python --compile-bytecode -e "$spec"
  else
    [ -x .venv/bin/pip ] || .venv/bin/python -m ensurepip --default-pip >/dev/null
    _say "installing $what with pip"
    .venv/bin/python -m pip install --disable-pip-version-check --progress-bar on -e "$spec"
  fi
  rm -f .venv/.installed-*
  touch ".venv/.installed-$WANT-$HASH"
  _say "installed in $((SECONDS - started)) s"
fi
# The dashboard's browser test drives Debian's chromium (Playwright cannot download a browser here).
if [ "$WANT" = test ] && [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  _say "installing chromium for the browser tests (apt-get)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 ||
      _say "could not install chromium: the browser tests will be skipped"
  fi
fi
export PATH="$ROOT/.venv/bin:$PATH"
