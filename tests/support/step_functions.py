"""Runs a Step Functions execution against ministack, for the Rust tests, with the tools venv's Python.

The tests drive the Distributed Map batch job the way AWS does (Step Functions invoking the Lambda
function), and ministack runs both services offline. The crate has no aws-sdk-sfn dependency, and
adding aws-sdk-sfn and aws-sdk-lambda as dev-dependencies would add two SDK crates to every test
build on a 2-core machine; boto3 is a real AWS SDK and already in the tools venv.

  step_functions.py --endpoint URL --function-name NAME --binary PATH [--env KEY=VALUE]...
                    --state-machine-name NAME --definition FILE
                    --execution-name NAME [--input JSON] [--timeout-seconds N] [--copy-binary]

Creates (or updates) the `provided.al2023` function, creates (or updates) the state machine, starts
the execution, polls until it ends and prints one JSON object: {"status", "output", "error",
"cause"}. Exits 0 whenever it can report a status, FAILED included.

By default the function's zip holds no copy of the binary, only a `bootstrap` launcher that execs
it by its absolute path (as `bootstrap`, so the binary starts as a Lambda function): ministack runs
functions as local processes, so this skips zipping and uploading the binary, and ministack's
250 MiB unzipped limit. --copy-binary zips the binary itself (stored, not compressed) instead.
The function's process inherits ministack's environment plus the --env pairs; give it
AWS_ENDPOINT_URL=<the ministack endpoint> there, or its AWS calls go to AWS.
"""
import argparse
import io
import json
import os
import sys
import time
import zipfile

import boto3
import botocore.config
import botocore.exceptions

ROLE = "arn:aws:iam::000000000000:role/lstm-forecast"


def client(service, endpoint):
    config = botocore.config.Config(read_timeout=900, retries={"max_attempts": 1})
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", config=config,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def package(binary, copy):
    """The function's zip: `bootstrap` is the binary itself, or a launcher that execs it."""
    binary = os.path.abspath(binary)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        entry = zipfile.ZipInfo("bootstrap")
        entry.external_attr = 0o100755 << 16  # a regular file, executable; ministack restores the mode
        if copy:
            with open(binary, "rb") as f:
                zf.writestr(entry, f.read())
        else:
            # The binary's size and mtime change the zip, hence CodeSha256, when it is rebuilt.
            stat = os.stat(binary)
            launcher = f"#!/bin/bash\n# {stat.st_size} {stat.st_mtime_ns}\nexec -a bootstrap '{binary}'\n"
            zf.writestr(entry, launcher)
    return buffer.getvalue()


def deploy_function(lam, name, code, env):
    config = dict(Runtime="provided.al2023", Handler="bootstrap", Role=ROLE, Timeout=900, MemorySize=1024,
                  Environment={"Variables": env})
    try:
        lam.create_function(FunctionName=name, Code={"ZipFile": code}, **config)
    except lam.exceptions.ResourceConflictException:
        lam.update_function_code(FunctionName=name, ZipFile=code)
        lam.update_function_configuration(FunctionName=name, **config)


def deploy_state_machine(sfn, name, definition):
    try:
        return sfn.create_state_machine(name=name, definition=definition, roleArn=ROLE)["stateMachineArn"]
    except sfn.exceptions.StateMachineAlreadyExists:
        pages = sfn.get_paginator("list_state_machines").paginate()
        arn = next(m["stateMachineArn"] for page in pages for m in page["stateMachines"] if m["name"] == name)
        sfn.update_state_machine(stateMachineArn=arn, definition=definition, roleArn=ROLE)
        return arn


def wait_for_end(sfn, execution_arn, timeout):
    deadline = time.monotonic() + timeout
    while True:
        execution = sfn.describe_execution(executionArn=execution_arn)
        if execution["status"] != "RUNNING" or time.monotonic() >= deadline:
            return execution
        time.sleep(0.2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--function-name", required=True)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--copy-binary", action="store_true")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--state-machine-name", required=True)
    parser.add_argument("--definition", required=True, metavar="FILE")
    parser.add_argument("--execution-name", required=True)
    parser.add_argument("--input", default="{}", metavar="JSON")
    parser.add_argument("--timeout-seconds", type=float, default=300)
    args = parser.parse_args()
    if not all("=" in e for e in args.env):
        parser.error("--env takes KEY=VALUE")
    env = dict(e.split("=", 1) for e in args.env)
    with open(args.definition) as f:
        definition = f.read()

    lam, sfn = client("lambda", args.endpoint), client("stepfunctions", args.endpoint)
    deploy_function(lam, args.function_name, package(args.binary, args.copy_binary), env)
    machine_arn = deploy_state_machine(sfn, args.state_machine_name, definition)
    execution_arn = sfn.start_execution(stateMachineArn=machine_arn, name=args.execution_name,
                                        input=args.input)["executionArn"]
    execution = wait_for_end(sfn, execution_arn, args.timeout_seconds)
    if execution["status"] == "RUNNING":
        sys.exit(f"step_functions.py: {execution_arn} still RUNNING after {args.timeout_seconds:g} s")
    output = execution.get("output")
    print(json.dumps({"status": execution["status"], "output": json.loads(output) if output else None,
                      "error": execution.get("error"), "cause": execution.get("cause")}))


if __name__ == "__main__":
    try:
        main()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as e:
        sys.exit(f"step_functions.py: {e}")
