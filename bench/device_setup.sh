# Source on the device machine: install carried wheels and make the checkout importable as
# `litelang` without pip-installing it (the device has no network).
set -e
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/litelang
export PYTHONPATH=/tmp/pkg:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# the console scripts pip would install (tests start `litelang-launch` beside the interpreter)
BIN=$(dirname "$(command -v python3)")
for script in scheduler.launch:litelang-launch scheduler.main:litelang-scheduler worker.main:litelang-worker client.cli:litelang; do
  module=${script%%:*} name=${script##*:}
  [ -e "$BIN/$name" ] || printf '#!/bin/sh\nexec python3 -c "import sys; from litelang.%s import main; sys.exit(main())" "$@"\n' \
    "$module" > "$BIN/$name" && chmod +x "$BIN/$name" || true
done
set +e
