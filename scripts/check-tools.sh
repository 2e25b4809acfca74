#!/usr/bin/env bash
# Checks, before cargo starts, that every tool the tests drive is installed and works, and names
# each one that is not in one line (instead of a Python traceback deep inside a test).
#   scripts/check-tools.sh VENV
set -uo pipefail
VENV="${1:?usage: check-tools.sh TOOLS_VENV}"
missing=()
check() { # check NAME HOW-TO-FIX COMMAND...
  local name="$1" fix="$2"; shift 2
  if ! "$@" >/dev/null 2>&1; then missing+=("$name: $fix"); fi
}
reinstall="delete $VENV and run make test again (scripts/python-tools.sh reinstalls it from the lock)"
check "moto (S3/CloudFormation emulator)" "$reinstall" "$VENV/bin/moto_server" --help
# ministack has no --help (it would start serving); its import and cbor2's (without which every
# CloudWatch call answers 500) are what can break.
check "ministack (CloudWatch/SNS/SQS emulator, with cbor2)" "$reinstall" \
  "$VENV/bin/python" -c "import ministack.app, cbor2"
check "cfn-lint" "$reinstall" "$VENV/bin/cfn-lint" --version
check "aws-sam-translator (samtranslator, used by tests/infra/cfn.py)" "$reinstall" \
  "$VENV/bin/python" -c "from samtranslator.translator.transform import transform"
check "cfn-lint-serverless" "$reinstall" "$VENV/bin/python" -c "import cfn_lint_serverless"
check "boto3" "$reinstall" "$VENV/bin/python" -c "import boto3"
check "kubernetes-validate" "$reinstall" "$VENV/bin/kubernetes-validate" --version
check "check-jsonschema (the Compose Specification schema, for infra/swarm)" "$reinstall" "$VENV/bin/check-jsonschema" --version
check "statsmodels and scipy (the Diebold-Mariano reference, tests/support/dm_reference.py)" "$reinstall" \
  "$VENV/bin/python" -c "import statsmodels.api, scipy.stats"
check "model-signing (the OpenSSF model_signing CLI, with pyopenssl)" "$reinstall" \
  "$VENV/bin/model_signing" --help
check "cargo-lambda (Lambda Runtime API emulator)" "$reinstall" "$VENV/bin/cargo-lambda" lambda --version
check "promtool (Debian package prometheus)" "run scripts/system-tools.sh as root, or apt-get install prometheus" promtool --version
if [ ${#missing[@]} -gt 0 ]; then
  for m in "${missing[@]}"; do echo "make test: missing or broken tool: $m" >&2; done
  exit 1
fi
