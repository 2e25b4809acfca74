"""Helpers for tests/infra.rs, run with the tools venv's Python (boto3, cfn-lint's SAM translator).

  cfn.py metrics TEMPLATE...          JSON: alarms (namespace, metric, dimensions) and dashboard metric names
  cfn.py deploy TEMPLATE ENDPOINT     SAM-translate, deploy to moto's CloudFormation, print what was created
  cfn.py alarm-topics TEMPLATE...     JSON: each SNS topic an alarm notifies, its key, and what the key grants CloudWatch
  cfn.py state-machine TEMPLATE RESOURCE
                                      JSON: the state machine's definition (substitutions left as ${NAME}), its
                                      DefinitionSubstitutions, and each schedule's input, as deployed with the
                                      parameters' defaults
  cfn.py alarm TEMPLATE RESOURCE      JSON: that alarm's properties as deployed with the parameters' defaults under the
                                      stack name lstm-forecast; an action on a resource of the stack is {"resource": NAME}
"""
import json
import re
import os
import sys

import yaml


class CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        # The YAML short form `!GetAtt Res.Attr` is a list in JSON templates.
        value = value.split(".", 1)
    name = "Ref" if suffix == "Ref" else "Fn::" + suffix
    return {name: value}


CfnLoader.add_multi_constructor("!", _tag)


def load(path):
    with open(path) as f:
        return yaml.load(f, Loader=CfnLoader)


def text_of(value):
    """A Sub/Ref-free rendering of a value, enough to find metric names in it."""
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return sub[0] if isinstance(sub, list) else sub
    return value if isinstance(value, str) else json.dumps(value)


def metrics(paths):
    alarms, dashboard_text = [], ""
    for path in paths:
        template = load(path)
        for name, resource in template.get("Resources", {}).items():
            props = resource.get("Properties", {})
            if resource["Type"] == "AWS::CloudWatch::Alarm":
                stats = []
                if "MetricName" in props:
                    stats.append({"Namespace": props["Namespace"], "MetricName": props["MetricName"], "Dimensions": props.get("Dimensions", [])})
                for m in props.get("Metrics", []):
                    if "MetricStat" in m:
                        stats.append(m["MetricStat"]["Metric"])
                for s in stats:
                    alarms.append({
                        "alarm": name, "template": path, "namespace": s["Namespace"], "metric": s["MetricName"],
                        "dimensions": [d["Name"] for d in s.get("Dimensions", [])],
                    })
            if resource["Type"] == "AWS::CloudWatch::Dashboard":
                dashboard_text += text_of(props["DashboardBody"])
    def probe(call):
        # moto applies some properties and not others; report what it did, not a crash.
        try:
            return call()
        except Exception as e:  # noqa: BLE001
            return {"not_applied_by_moto": type(e).__name__}

    print(json.dumps({"alarms": alarms, "dashboard": dashboard_text}))


# moto's CloudFormation skips these types, and an Output or attribute pointing at them fails.
SKIPPED_BY_MOTO = ("AWS::CloudWatch::Alarm", "AWS::CloudWatch::CompositeAlarm", "AWS::ApiGatewayV2::")
# ... and these it does not know at all: a stack that has them fails to create.
UNKNOWN_TO_MOTO = ("AWS::KinesisFirehose::", "AWS::Logs::SubscriptionFilter")


def deploy(path, endpoint):
    import boto3
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self):
            return {}

    template = load(path)
    function = template["Resources"]["ForecastFunction"]["Properties"]
    # `sam build` fills ImageUri from the Dockerfile; here a placeholder stands in.
    function.setdefault("ImageUri", "123456789012.dkr.ecr.us-east-1.amazonaws.com/lstm-forecast:test")
    # The translator reads the region from the environment to build ARNs.
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    translated = transform(template, {}, NoManagedPolicies())
    resources = translated["Resources"]
    translated_types = sorted({r["Type"] for r in resources.values()})
    # What invokes the function, and through what: under SnapStart only published versions are
    # snapshotted, so every invoker must name the alias SAM publishes, never the bare function.
    invoking = {"AWS::Events::Rule": ["Targets"], "AWS::Lambda::Permission": ["FunctionName"],
                "AWS::ApiGatewayV2::Integration": ["IntegrationUri"],
                "AWS::CloudWatch::Alarm": ["AlarmActions", "OKActions", "InsufficientDataActions"]}
    invokers = {}
    for name, resource in resources.items():
        keys = invoking.get(resource["Type"], [])
        text = json.dumps([resource["Properties"].get(k) for k in keys])
        targets = sorted(set(re.findall(r'"(ForecastFunction(?:Alias\w*)?)"', text)))
        if targets:
            invokers[name] = targets
    translated_function = dict(resources["ForecastFunction"]["Properties"])
    # How a new function version takes traffic: CodeDeploy's deployment group, and the alias's
    # update policy that hands each new version to it.
    groups = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::CodeDeploy::DeploymentGroup"]
    deployment = {
        "config": [json.dumps(g.get("DeploymentConfigName")) for g in groups],
        "alarms": sorted(a["Name"]["Ref"] for g in groups for a in g.get("AlarmConfiguration", {}).get("Alarms", [])),
        "rollback_on_alarm": [g.get("AutoRollbackConfiguration", {}).get("Events") for g in groups],
        "alias_update_policy": sorted(r.get("UpdatePolicy", {}) for r in resources.values() if r["Type"] == "AWS::Lambda::Alias"),
    }
    aliases = sorted(n for n, r in resources.items() if r["Type"] == "AWS::Lambda::Alias")
    # moto has no AWS::Lambda::Alias: a Ref to one resolves to nothing and fails the stack. For
    # moto only, invokers call the function's ARN (the check above already ran on the alias).
    for alias in aliases:
        del resources[alias]
        for name, resource in list(resources.items()):
            resources[name] = json.loads(json.dumps(resource).replace(
                json.dumps({"Ref": alias}), json.dumps({"Fn::GetAtt": ["ForecastFunction", "Arn"]})))
    # Types moto's CloudFormation does not know fail the whole stack; they leave, with whatever
    # refers to them (cfn-lint checks them instead).
    # Alarms it skips silently, but an attribute of one (an alarm widget's ARN) fails the stack too.
    removed = {n for n, r in resources.items() if r["Type"].startswith(UNKNOWN_TO_MOTO)}
    removed |= {n for n, r in resources.items() if r["Type"].startswith(SKIPPED_BY_MOTO)
                and any(f'{n}.Arn' in json.dumps(o) or f'"{n}", "Arn"' in json.dumps(o) for o in resources.values())}
    while True:
        dependents = {n for n, r in resources.items() if n not in removed
                      and any(f'"{d}"' in json.dumps(r) or "${" + d in json.dumps(r) for d in removed)}
        if not dependents:
            break
        removed |= dependents
    for name in removed:
        del resources[name]
    skipped = {n for n, r in resources.items() if r["Type"].startswith(SKIPPED_BY_MOTO)} | removed
    translated["Outputs"] = {
        k: v for k, v in translated.get("Outputs", {}).items() if not any(s in json.dumps(v) for s in skipped)
    }
    kwargs = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    cfn = boto3.client("cloudformation", **kwargs)
    cfn.create_stack(
        StackName="lstm-forecast",
        TemplateBody=json.dumps(translated),
        Parameters=[{"ParameterKey": "AlertEmail", "ParameterValue": "ops@example.com"}],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = cfn.describe_stacks(StackName="lstm-forecast")["Stacks"][0]
    created = cfn.describe_stack_resources(StackName="lstm-forecast")["StackResources"]
    physical = {r["LogicalResourceId"]: r.get("PhysicalResourceId") for r in created if "LogicalResourceId" in r}
    s3 = boto3.client("s3", **kwargs)
    bucket = physical["ArtifactsBucket"]
    lam = boto3.client("lambda", **kwargs)
    fn = lam.get_function(FunctionName=physical["ForecastFunction"])["Configuration"]
    events = boto3.client("events", **kwargs)
    rules = [r for r in events.list_rules()["Rules"]]
    inputs = []
    for r in rules:
        for t in events.list_targets_by_rule(Rule=r["Name"])["Targets"]:
            inputs.append(t.get("Input"))
    sns = boto3.client("sns", **kwargs)
    subscriptions = sns.list_subscriptions()["Subscriptions"]
    def probe(call):
        # moto applies some properties and not others; report what it did, not a crash.
        try:
            return call()
        except Exception as e:  # noqa: BLE001
            return {"not_applied_by_moto": type(e).__name__}

    print(json.dumps({
        "status": stack["StackStatus"],
        "snap_start": translated_function.get("SnapStart"),
        "ephemeral_storage": translated_function.get("EphemeralStorage"),
        "aliases": aliases,
        "deployment": deployment,
        "invokers": invokers,
        "translated_types": translated_types,
        "created": sorted(physical),
        "bucket_versioning": probe(lambda: s3.get_bucket_versioning(Bucket=bucket).get("Status")),
        "bucket_encryption": probe(lambda: s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"]),
        "bucket_public_access_block": probe(lambda: s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]),
        "bucket_policy": probe(lambda: json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])),
        "function": {"package_type": fn.get("PackageType"), "memory": fn["MemorySize"], "timeout": fn["Timeout"],
                     "environment": fn.get("Environment", {}).get("Variables", {})},
        "schedule_inputs": inputs,
        "subscriptions": [{"protocol": s["Protocol"], "endpoint": s["Endpoint"]} for s in subscriptions],
    }, default=str))


def refs_in(value):
    """Every resource a value `Ref`s, through `Fn::If` branches and lists."""
    if isinstance(value, dict):
        if "Ref" in value:
            return [value["Ref"]]
        return [r for v in value.values() for r in refs_in(v)]
    if isinstance(value, list):
        return [r for v in value for r in refs_in(v)]
    return []


def alarm_topics(paths):
    found = []
    for path in paths:
        resources = load(path).get("Resources", {})
        topics = set()
        for resource in resources.values():
            if resource["Type"] == "AWS::CloudWatch::Alarm":
                props = resource.get("Properties", {})
                for action in props.get("AlarmActions", []) + props.get("OKActions", []):
                    topics.update(r for r in refs_in(action) if resources.get(r, {}).get("Type") == "AWS::SNS::Topic")
        for topic in sorted(topics):
            key = resources[topic]["Properties"].get("KmsMasterKeyId")
            key_refs = refs_in(key)
            grants = []
            if key_refs and resources.get(key_refs[0], {}).get("Type") == "AWS::KMS::Key":
                for statement in resources[key_refs[0]]["Properties"]["KeyPolicy"]["Statement"]:
                    principal = statement.get("Principal", {})
                    if isinstance(principal, dict) and principal.get("Service") == "cloudwatch.amazonaws.com" and statement.get("Effect") == "Allow":
                        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                        condition = statement.get("Condition", {}).get("StringEquals", {})
                        grants.append({"actions": actions, "source_account": "aws:SourceAccount" in condition})
            found.append({"template": path, "topic": topic, "key": key if isinstance(key, str) else (key_refs[0] if key_refs else None),
                          "key_in_stack": bool(key_refs), "cloudwatch_grants": grants})
    print(json.dumps(found))


STACK_NAME = "lstm-forecast"


def resolve(value, parameters):
    """A property value with Ref/Sub on parameters and pseudo parameters resolved (defaults, the
    stack name); a Ref or GetAtt on a resource becomes {"resource": NAME}, for the caller to map."""
    if isinstance(value, list):
        return [resolve(v, parameters) for v in value]
    if not isinstance(value, dict):
        return value
    if "Ref" in value:
        name = value["Ref"]
        if name == "AWS::StackName":
            return STACK_NAME
        if name in parameters:
            return parameters[name].get("Default")
        return {"resource": name}
    if "Fn::GetAtt" in value:
        return {"resource": value["Fn::GetAtt"][0], "attribute": value["Fn::GetAtt"][1]}
    if "Fn::Sub" in value and isinstance(value["Fn::Sub"], str):
        text = value["Fn::Sub"].replace("${AWS::StackName}", STACK_NAME)
        for name, parameter in parameters.items():
            text = text.replace("${" + name + "}", str(parameter.get("Default")))
        if "${" in text:
            sys.exit(f"unresolved substitution in {text}")
        return text
    return {k: resolve(v, parameters) for k, v in value.items()}


def alarm(path, name):
    template = load(path)
    resource = template["Resources"][name]
    if resource["Type"] != "AWS::CloudWatch::Alarm":
        sys.exit(f"{name} is a {resource['Type']}")
    print(json.dumps(resolve(resource["Properties"], template.get("Parameters", {}))))


def state_machine(path, name):
    template = load(path)
    resource = template["Resources"][name]
    if resource["Type"] != "AWS::Serverless::StateMachine":
        sys.exit(f"{name} is a {resource['Type']}")
    parameters = template.get("Parameters", {})
    props = resource["Properties"]
    schedules = {event: json.loads(resolve(spec["Properties"]["Input"], parameters))
                 for event, spec in props.get("Events", {}).items() if spec["Type"] == "Schedule"}
    print(json.dumps({"definition": props["Definition"],
                      "substitutions": resolve(props.get("DefinitionSubstitutions", {}), parameters),
                      "schedules": schedules}))


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "metrics":
        metrics(sys.argv[2:])
    elif command == "deploy":
        deploy(sys.argv[2], sys.argv[3])
    elif command == "alarm-topics":
        alarm_topics(sys.argv[2:])
    elif command == "state-machine":
        state_machine(sys.argv[2], sys.argv[3])
    elif command == "alarm":
        alarm(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {command}")
