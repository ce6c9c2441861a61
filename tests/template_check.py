#!/usr/bin/env python3
"""Offline check of template.yaml: what the deployed stack will really contain.

Run it with the tools venv's python (it needs aws-sam-translator, cfn-lint and sam):

    .venv-tools/bin/python tests/template_check.py [--template template.yaml ...]

Without --template it checks both deployments: template.yaml (classic Lambda) and
template-managed-instances.yaml (Lambda Managed Instances).

Why more than `sam validate --lint`: cfn-lint 1.x lints the *untransformed* SAM template
and misses FunctionUrlConfig, Runtime and Ref mistakes (see lambda-tooling.md §5). So this
script

1. runs `sam validate --lint` and `sam validate --region us-east-1`;
2. transforms the template with samtranslator (local CodeUri replaced by an S3
   placeholder, a managed-policy loader that returns {} so IAM is never called) and
   runs cfn-lint on the resulting CloudFormation JSON (errors fail, warnings are shown);
3. evaluates the transformed template's intrinsics (Ref, Fn::Sub, Fn::If, ...) for a few
   parameter sets and asserts what matters for OpenDify: the function URL streams, the
   conversation table, the runtime, logging, the environment, and least-privilege IAM.

Nothing here needs AWS credentials or network access. Exit status 0 only if every check
passed.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
ACCOUNT = "123456789012"
PARTITION = "aws"
STACK = "opendify"
PLACEHOLDER_CODE = "s3://placeholder-bucket/placeholder.zip"

# Statements whose Resource may contain "*": each entry is (why, actions, resource
# pattern). Only SAM's own policy templates need them; anything else with a wildcard
# action or resource fails. "{table}" is the conversation table's Ref.
# The template writes its own statements, scoped to the table and the two parameters, so
# no wildcard is allowed in them (SAM's policy templates would need ssm:DescribeParameters
# on * and the table's index/* ARN; the template does not use them).
WILDCARD_ALLOW_LIST: list = []
# AWS managed policies the role may carry. AWSLambdaBasicExecutionRole (added by SAM to
# every function role) grants logs:CreateLogGroup/CreateLogStream/PutLogEvents on "*".
MANAGED_POLICY_ALLOW_LIST = {
    f"arn:{PARTITION}:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole":
        "logs:CreateLogGroup, logs:CreateLogStream, logs:PutLogEvents on * (SAM adds it to every function role)",
}
# The capacity provider's operator role (Managed Instances only): Lambda assumes it to run
# the EC2 instances; SAM creates it with exactly this AWS managed policy.
OPERATOR_POLICY = f"arn:{PARTITION}:iam::aws:policy/AWSLambdaManagedEC2ResourceOperator"

TEMPLATES = ["template.yaml", "template-managed-instances.yaml"]
# Parameters without a default, per template, added to every scenario.
REQUIRED = {
    "template-managed-instances.yaml": {
        "SubnetIds": "subnet-0123456789abcdef0,subnet-0fedcba9876543210",
        "SecurityGroupIds": "sg-0123456789abcdef0",
    },
}
# A maximal answer peaks at about this multiple of MAX_UPSTREAM_BYTES in resident memory
# (an estimate for MAX_UPSTREAM_BYTES blocking delivery; tests/load.rs measures the real peak
# against the template's MemorySize in a_maximal_answer_fits_in_the_function_memory).
PEAK_PER_UPSTREAM_BYTE = 2.7

# Parameter sets the transformed template is evaluated with (on top of the defaults).
SCENARIOS = {
    "defaults (secrets from SSM, aws/ssm key)": {},
    "secrets as NoEcho parameters, customer managed KMS key": {
        "ModelConfig": '{"my-app":"app-xxxxxxxxxxxxxxxxxxxx"}',
        "ProxyApiKeys": "k1,k2",
        "ParameterKmsKeyId": "1234abcd-12ab-34cd-56ef-1234567890ab",
        "Architecture": "x86_64",
        "LogLevel": "DEBUG",
    },
}


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"PASS {what}" + (f": {detail}" if detail else ""))
        else:
            self.failed += 1
            print(f"FAIL {what}" + (f": {detail}" if detail else ""))
        return ok

    def info(self, text: str) -> None:
        print(f"     {text}")


# ---------------------------------------------------------------------------------------
# Tools


def tool(name: str) -> str:
    """A console script of this venv (next to sys.executable), else from PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        sys.exit(
            f"template_check: `{name}` not found next to {sys.executable} or on PATH; "
            "run with .venv-tools/bin/python (pip install aws-sam-cli==1.170.0 cfn-lint==1.58.0)"
        )
    return found


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SAM_CLI_TELEMETRY="0",
        AWS_EC2_METADATA_DISABLED="true",
        # No profile or credentials are needed; make sure none is picked up by accident.
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    env.pop("AWS_PROFILE", None)
    return env


def run(report: Report, what: str, cmd: list[str], cwd: Path, ok_codes=(0,)) -> bool:
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        return report.check(False, what, "timed out after 300 s")
    out = (proc.stdout + proc.stderr).strip()
    ok = proc.returncode in ok_codes
    report.check(ok, what, f"exit {proc.returncode}")
    if out:
        for line in out.splitlines()[:60]:
            report.info(line)
    return ok


# ---------------------------------------------------------------------------------------
# Transform


def transform(template_path: Path) -> dict:
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    from samtranslator.translator.transform import transform as sam_transform
    from samtranslator.yaml_helper import yaml_parse

    template = yaml_parse(template_path.read_text())
    for resource in template.get("Resources", {}).values():
        props = resource.get("Properties") or {}
        if resource.get("Type") in ("AWS::Serverless::Function", "AWS::Serverless::LayerVersion"):
            for key in ("CodeUri", "ContentUri"):
                if isinstance(props.get(key), str) and not props[key].startswith("s3://"):
                    props[key] = PLACEHOLDER_CODE

    class NoIamPolicyLoader:
        """Managed policies by name would need iam:ListPolicies; none are used by name."""

        def load(self) -> dict:
            return {}

    return sam_transform(template, {}, NoIamPolicyLoader())


# ---------------------------------------------------------------------------------------
# Evaluating intrinsics for one parameter set

NO_VALUE = object()


class Evaluator:
    def __init__(self, cfn: dict, overrides: dict[str, str]) -> None:
        self.cfn = cfn
        self.params: dict[str, object] = {}
        for name, spec in cfn.get("Parameters", {}).items():
            if name in overrides and str(spec.get("Type", "")).startswith("List<"):
                self.params[name] = overrides[name].split(",")
            elif name in overrides:
                self.params[name] = overrides[name]
            elif "Default" in spec:
                self.params[name] = spec["Default"]
            else:
                raise SystemExit(f"template_check: parameter {name} has no default; add it to SCENARIOS")
        self.params.update(
            {
                "AWS::Region": REGION,
                "AWS::AccountId": ACCOUNT,
                "AWS::Partition": PARTITION,
                "AWS::StackName": STACK,
                "AWS::URLSuffix": "amazonaws.com",
            }
        )
        self.conditions: dict[str, bool] = {}
        for name, expr in cfn.get("Conditions", {}).items():
            self.conditions[name] = bool(self.eval(expr))

    def ref(self, name: str):
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.params:
            return self.params[name]
        if name in self.cfn.get("Resources", {}):
            return f"<{name}>"  # physical id, unknown until deploy
        raise KeyError(f"Ref to unknown name {name}")

    def sub(self, text: str, local: dict) -> str:
        out, i = "", 0
        while i < len(text):
            j = text.find("${", i)
            if j < 0:
                out += text[i:]
                break
            out += text[i:j]
            k = text.index("}", j)
            key = text[j + 2 : k]
            if key.startswith("!"):
                out += "${" + key[1:] + "}"
            elif key in local:
                out += str(local[key])
            elif "." in key:
                res, attr = key.split(".", 1)
                out += f"<{res}.{attr}>"
            else:
                out += str(self.ref(key))
            i = k + 1
        return out

    def eval(self, node):
        if isinstance(node, list):
            items = [self.eval(x) for x in node]
            return [x for x in items if x is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::Sub":
                if isinstance(arg, str):
                    return self.sub(arg, {})
                text, local = arg
                return self.sub(text, {k: self.eval(v) for k, v in local.items()})
            if key == "Fn::If":
                name, yes, no = arg
                return self.eval(yes if self.conditions[name] else no)
            if key == "Fn::Equals":
                a, b = (self.eval(x) for x in arg)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.eval(arg[0])
            if key == "Fn::And":
                return all(self.eval(x) for x in arg)
            if key == "Fn::Or":
                return any(self.eval(x) for x in arg)
            if key == "Condition":
                return self.conditions[arg]
            if key == "Fn::GetAtt":
                res, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return f"<{res}.{attr}>"
            if key == "Fn::Join":
                sep, parts = arg
                return sep.join(str(p) for p in self.eval(parts))
            if key == "Fn::Select":
                index, items = arg
                return self.eval(items)[int(self.eval(index))]
            if key == "Fn::Split":
                sep, text = arg
                return str(self.eval(text)).split(sep)
        out = {}
        for k, v in node.items():
            value = self.eval(v)
            if value is not NO_VALUE:
                out[k] = value
        return out

    def resources(self) -> dict[str, dict]:
        """Resources whose Condition holds, with intrinsics evaluated."""
        out = {}
        for name, res in self.cfn.get("Resources", {}).items():
            cond = res.get("Condition")
            if cond and not self.conditions[cond]:
                continue
            out[name] = {"Type": res["Type"], "Properties": self.eval(res.get("Properties", {}))}
        return out


# ---------------------------------------------------------------------------------------
# Assertions


def as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def of_type(resources: dict, type_: str) -> dict:
    return {k: v for k, v in resources.items() if v["Type"] == type_}


def check_raw(report: Report, cfn: dict) -> None:
    """Checks on the transformed template before evaluation (references, not values)."""
    res = cfn.get("Resources", {})
    functions = {k: v for k, v in res.items() if v["Type"] == "AWS::Lambda::Function"}
    report.check(len(functions) == 1, "exactly one AWS::Lambda::Function", ", ".join(functions))
    if not functions:
        return
    fname, fn = next(iter(functions.items()))
    props = fn["Properties"]
    params = cfn.get("Parameters", {})
    arch_param = params.get("Architecture", {})
    report.check(
        props.get("Architectures") == [{"Ref": "Architecture"}]
        and set(arch_param.get("AllowedValues", [])) == {"arm64", "x86_64"},
        "Architectures come from the Architecture parameter (arm64 | x86_64)",
        f"Architectures={props.get('Architectures')}, AllowedValues={arch_param.get('AllowedValues')}",
    )
    logging = props.get("LoggingConfig", {})
    report.check(
        logging.get("LogFormat") == "JSON" and logging.get("ApplicationLogLevel") == {"Ref": "LogLevel"},
        "LoggingConfig: LogFormat JSON, ApplicationLogLevel from the LogLevel parameter",
        json.dumps(logging, sort_keys=True),
    )
    meta = fn.get("Metadata", {})
    report.check(
        meta.get("BuildMethod") == "rust-cargolambda"
        and meta.get("BuildProperties", {}).get("Binary") == "opendify",
        "sam build uses cargo-lambda for the opendify binary",
        json.dumps(meta, sort_keys=True),
    )
    outputs = cfn.get("Outputs", {})
    urls = [k for k, v in res.items() if v["Type"] == "AWS::Lambda::Url"]
    value = outputs.get("FunctionUrl", {}).get("Value")
    report.check(
        bool(urls) and value == {"Fn::GetAtt": [urls[0], "FunctionUrl"]},
        "output FunctionUrl is the function URL",
        json.dumps(value),
    )
    report.check(
        fname in json.dumps(res.get(urls[0], {}).get("Properties", {}).get("TargetFunctionArn")) if urls else False,
        "the function URL targets the function",
    )


def check_scenario(report: Report, cfn: dict, label: str, overrides: dict) -> None:
    print(f"\n== scenario: {label}" + (f" ({', '.join(sorted(overrides))} set)" if overrides else ""))
    ev = Evaluator(cfn, overrides)
    res = ev.resources()
    p = ev.params

    # Function URL
    urls = of_type(res, "AWS::Lambda::Url")
    url = next(iter(urls.values()), {}).get("Properties", {})
    report.check(
        len(urls) == 1 and url.get("InvokeMode") == "RESPONSE_STREAM" and url.get("AuthType") == "NONE",
        "AWS::Lambda::Url with InvokeMode RESPONSE_STREAM and AuthType NONE",
        f"{len(urls)} url(s), InvokeMode={url.get('InvokeMode')}, AuthType={url.get('AuthType')}",
    )
    perms = [v["Properties"] for v in of_type(res, "AWS::Lambda::Permission").values()]
    report.check(
        any(x.get("Action") == "lambda:InvokeFunctionUrl" and x.get("FunctionUrlAuthType") == "NONE" for x in perms)
        and any(x.get("Action") == "lambda:InvokeFunction" and x.get("InvokedViaFunctionUrl") is True for x in perms),
        "public permissions: lambda:InvokeFunctionUrl (AuthType NONE) and lambda:InvokeFunction via the URL",
        "; ".join(f"{x.get('Action')} principal={x.get('Principal')}" for x in perms),
    )

    # Conversation table
    tables = of_type(res, "AWS::DynamoDB::Table")
    tname, table = next(iter(tables.items()), ("", {"Properties": {}}))
    t = table["Properties"]
    report.check(len(tables) == 1, "exactly one DynamoDB table", tname)
    report.check(
        t.get("TimeToLiveSpecification") == {"AttributeName": "expires_at", "Enabled": True},
        "table TTL enabled on expires_at",
        json.dumps(t.get("TimeToLiveSpecification")),
    )
    report.check(t.get("BillingMode") == "PAY_PER_REQUEST", "table billing PAY_PER_REQUEST", str(t.get("BillingMode")))
    report.check(
        t.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled") is True,
        "table point-in-time recovery on",
        json.dumps(t.get("PointInTimeRecoverySpecification")),
    )
    report.check(
        t.get("KeySchema") == [{"AttributeName": "pk", "KeyType": "HASH"}]
        and t.get("AttributeDefinitions") == [{"AttributeName": "pk", "AttributeType": "S"}],
        "table key: pk (S, HASH) only",
        json.dumps([t.get("KeySchema"), t.get("AttributeDefinitions")]),
    )

    # Function
    fns = of_type(res, "AWS::Lambda::Function")
    fname, fn = next(iter(fns.items()), ("", {"Properties": {}}))
    f = fn["Properties"]
    report.check(
        f.get("Runtime") == "provided.al2023" and f.get("Handler") == "bootstrap",
        "runtime provided.al2023, handler bootstrap",
        f"Runtime={f.get('Runtime')}, Handler={f.get('Handler')}",
    )
    report.check(
        f.get("Architectures") == [p["Architecture"]],
        "architecture is the parameter's value",
        f"{f.get('Architectures')} (Architecture={p['Architecture']})",
    )
    lc = f.get("LoggingConfig", {})
    report.check(
        lc.get("LogFormat") == "JSON" and lc.get("ApplicationLogLevel") == p["LogLevel"],
        "logging JSON at the LogLevel parameter",
        f"{lc.get('LogFormat')} {lc.get('ApplicationLogLevel')} (LogLevel={p['LogLevel']})",
    )
    timeout = f.get("Timeout", 3)
    report.check(0 < int(timeout) <= 900, "timeout within Lambda's 900 s cap", str(timeout))
    check_concurrency(report, res, f, url, p)

    env = f.get("Environment", {}).get("Variables", {})
    report.info("function environment: " + ", ".join(f"{k}={'<hidden>' if k in ('MODEL_CONFIG', 'PROXY_API_KEYS') else v}" for k, v in sorted(env.items())))
    report.check(env.get("CONVERSATION_TABLE") == f"<{tname}>", "env CONVERSATION_TABLE is the table", str(env.get("CONVERSATION_TABLE")))
    ssm_mode_models = p["ModelConfig"] == ""
    ssm_mode_keys = p["ProxyApiKeys"] == ""
    expected_params = {}
    for var, value_param, name_param, ssm_mode in (
        ("MODEL_CONFIG", "ModelConfig", "ModelConfigParameterName", ssm_mode_models),
        ("PROXY_API_KEYS", "ProxyApiKeys", "ProxyApiKeysParameterName", ssm_mode_keys),
    ):
        if ssm_mode:
            want = "/" + str(p[name_param])
            expected_params[var] = want
            report.check(
                env.get(f"{var}_PARAMETER") == want and var not in env,
                f"env {var}_PARAMETER names the SSM parameter (and {var} is unset)",
                f"{var}_PARAMETER={env.get(f'{var}_PARAMETER')}",
            )
        else:
            report.check(
                env.get(var) == p[value_param] and f"{var}_PARAMETER" not in env,
                f"env {var} comes from the {value_param} parameter (and {var}_PARAMETER is unset)",
            )

    # IAM
    check_iam(report, res, fname, tname, p, ssm_mode_models and ssm_mode_keys)


def check_concurrency(report: Report, res: dict, f: dict, url: dict, p: dict) -> None:
    """Classic: one invocation per environment. Managed Instances: a capacity provider in
    the given subnets, MaxConcurrency invocations per environment, and memory for them."""
    env = f.get("Environment", {}).get("Variables", {})
    report.check(
        "AWS_LAMBDA_MAX_CONCURRENCY" not in env,
        "AWS_LAMBDA_MAX_CONCURRENCY is left to Lambda (it sets it from the capacity provider config)",
    )
    providers = of_type(res, "AWS::Lambda::CapacityProvider")
    config = f.get("CapacityProviderConfig")
    if "MaxConcurrency" not in p:
        report.check(
            not providers and config is None,
            "classic deployment: no capacity provider, one invocation per environment",
            f"{len(providers)} provider(s), CapacityProviderConfig={config}",
        )
        return
    pname, provider = next(iter(providers.items()), ("", {"Properties": {}}))
    cp = provider["Properties"]
    report.check(len(providers) == 1, "exactly one capacity provider", pname)
    vpc = cp.get("VpcConfig", {})
    report.check(
        vpc.get("SubnetIds") == p["SubnetIds"] and vpc.get("SecurityGroupIds") == p["SecurityGroupIds"],
        "capacity provider instances in the SubnetIds / SecurityGroupIds parameters",
        json.dumps(vpc),
    )
    report.check(
        cp.get("InstanceRequirements", {}).get("Architectures") == [p["Architecture"]],
        "capacity provider instances have the function's architecture",
        json.dumps(cp.get("InstanceRequirements")),
    )
    report.check(
        cp.get("CapacityProviderScalingConfig", {}).get("MaxVCpuCount") == p["MaxVCpuCount"],
        "capacity provider capped at MaxVCpuCount",
        json.dumps(cp.get("CapacityProviderScalingConfig")),
    )
    operator = cp.get("PermissionsConfig", {}).get("CapacityProviderOperatorRoleArn", "")
    report.check(
        operator.endswith("OperatorRole.Arn>"),
        "capacity provider has its operator role",
        operator,
    )
    lmi = (config or {}).get("LambdaManagedInstancesCapacityProviderConfig", {})
    report.check(
        lmi.get("CapacityProviderArn")
        in (f"<{pname}.Arn>", f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT}:capacity-provider:<{pname}>")
        and str(lmi.get("PerExecutionEnvironmentMaxConcurrency")) == str(p["MaxConcurrency"]),
        "the function runs on the capacity provider, MaxConcurrency invocations per environment",
        json.dumps(lmi),
    )
    memory_mib = int(f.get("MemorySize", 128))
    upstream = int(env.get("MAX_UPSTREAM_BYTES", 33554432))
    worst_mib = int(p["MaxConcurrency"]) * PEAK_PER_UPSTREAM_BYTE * upstream / 2**20
    report.check(
        memory_mib >= 2048 and worst_mib < memory_mib,
        "memory holds MaxConcurrency maximal answers at once (MaxConcurrency x 2.7 x MAX_UPSTREAM_BYTES)",
        f"MemorySize {memory_mib} MiB, worst case {worst_mib:.0f} MiB",
    )
    aliases = of_type(res, "AWS::Lambda::Alias")
    target = url.get("TargetFunctionArn")
    report.check(
        len(aliases) == 1 and target == f"<{next(iter(aliases))}>",
        "the function URL serves the published alias (Managed Instances run versions only)",
        f"TargetFunctionArn={target}, aliases={list(aliases)}",
    )


def statement_actions(st: dict) -> list[str]:
    return [str(a) for a in as_list(st.get("Action", []))]


def k_is_lambda_assumed(role: dict) -> bool:
    statements = as_list(role["Properties"].get("AssumeRolePolicyDocument", {}).get("Statement", []))
    return bool(statements) and all(
        as_list(st.get("Principal", {}).get("Service")) == ["lambda.amazonaws.com"]
        and statement_actions(st) == ["sts:AssumeRole"]
        for st in statements
    )


def check_iam(report: Report, res: dict, fname: str, tname: str, p: dict, ssm_mode: bool) -> None:
    roles = of_type(res, "AWS::IAM::Role")
    operators = {
        k: v for k, v in roles.items()
        if v["Properties"].get("ManagedPolicyArns") == [OPERATOR_POLICY]
        and not v["Properties"].get("Policies")
    }
    for oname in operators:
        report.check(
            k_is_lambda_assumed(roles[oname]),
            f"{oname}: capacity provider operator role, only {OPERATOR_POLICY}, assumed by Lambda",
        )
    roles = {k: v for k, v in roles.items() if k not in operators}
    fn_role = res.get(fname, {}).get("Properties", {}).get("Role", "")
    report.check(
        len(roles) == 1 and fn_role == f"<{next(iter(roles), '')}.Arn>",
        "one IAM role (besides an operator role), used by the function",
        f"roles={list(roles)}, function Role={fn_role}",
    )
    statements: list[tuple[str, dict]] = []
    for rname, role in roles.items():
        for pol in role["Properties"].get("Policies", []):
            for st in as_list(pol.get("PolicyDocument", {}).get("Statement", [])):
                statements.append((f"{rname}/{pol.get('PolicyName')}", st))
        for arn in role["Properties"].get("ManagedPolicyArns", []):
            known = MANAGED_POLICY_ALLOW_LIST.get(arn)
            report.check(known is not None, f"managed policy {arn} is allow-listed", known or "not allow-listed")
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for pname, pol in of_type(res, kind).items():
            for st in as_list(pol["Properties"].get("PolicyDocument", {}).get("Statement", [])):
                statements.append((pname, st))

    print("     wildcard allow-list used:")
    for why, actions, pattern in WILDCARD_ALLOW_LIST:
        print(f"       - {pattern.format(table=f'<{tname}>')}: {', '.join(sorted(actions))} ({why})")
    for arn, why in MANAGED_POLICY_ALLOW_LIST.items():
        print(f"       - managed {arn}: {why}")

    ssm_get_resources: set[str] = set()
    for where, st in statements:
        actions = statement_actions(st)
        resources = [str(r) for r in as_list(st.get("Resource", []))]
        line = f"{where}: {st.get('Effect')} {', '.join(actions)} on {', '.join(resources)}"
        if st.get("Effect") != "Allow":
            report.info("(not an Allow) " + line)
            continue
        problems = []
        if "NotAction" in st or "NotResource" in st:
            problems.append("NotAction/NotResource")
        if any(a == "*" or a.endswith(":*") or "*" in a for a in actions):
            problems.append("wildcard Action")
        for r in resources:
            if "*" not in r:
                continue
            allowed = any(
                r == pattern.format(table=f"<{tname}>") and set(actions) <= acts
                for _, acts, pattern in WILDCARD_ALLOW_LIST
            )
            if not allowed:
                problems.append(f"wildcard Resource {r}")
        report.check(not problems, "IAM statement " + line, "; ".join(problems))
        # Any action pattern that grants reading a parameter's value ("ssm:Get*", "ssm:*").
        if any(
            fnmatch.fnmatchcase(get, a.lower())
            for a in actions
            for get in ("ssm:getparameter", "ssm:getparameters", "ssm:getparametersbypath")
        ):
            ssm_get_resources.update(resources)
        if any(a.lower() == "kms:decrypt" for a in actions):
            want = f"arn:{PARTITION}:kms:{REGION}:{ACCOUNT}:key/{p['ParameterKmsKeyId']}"
            report.check(
                resources == [want] and p["ParameterKmsKeyId"] != "",
                "kms:Decrypt only on the ParameterKmsKeyId key",
                ", ".join(resources),
            )

    want = {
        f"arn:{PARTITION}:ssm:{REGION}:{ACCOUNT}:parameter/{p['ModelConfigParameterName']}",
        f"arn:{PARTITION}:ssm:{REGION}:{ACCOUNT}:parameter/{p['ProxyApiKeysParameterName']}",
    }
    report.check(
        ssm_get_resources == want,
        "the role reads exactly the two SSM parameters",
        f"got {sorted(ssm_get_resources)}, want {sorted(want)}",
    )
    if ssm_mode:
        # The env var names the parameter (leading slash); the ARN drops that slash.
        env = res.get(fname, {}).get("Properties", {}).get("Environment", {}).get("Variables", {})
        named = {
            f"arn:{PARTITION}:ssm:{REGION}:{ACCOUNT}:parameter{env.get(v, '')}"
            for v in ("MODEL_CONFIG_PARAMETER", "PROXY_API_KEYS_PARAMETER")
        }
        report.check(named == want, "the parameters the function reads are the ones the role may read", ", ".join(sorted(named)))


# ---------------------------------------------------------------------------------------


def check_template(report: Report, template: Path, keep: str | None) -> None:
    print(f"\n######## template_check: {template}")
    required = REQUIRED.get(template.name, {})

    # samconfig.toml is looked up next to the template, so run sam there.
    run(report, "sam validate --lint", [tool("sam"), "validate", "--lint", "-t", str(template)], template.parent)
    run(
        report,
        f"sam validate --region {REGION}",
        [tool("sam"), "validate", "--region", REGION, "-t", str(template)],
        template.parent,
    )

    try:
        cfn = transform(template)
    except Exception as e:  # samtranslator raises InvalidDocumentException & co.
        report.check(False, "SAM transform (samtranslator)", f"{type(e).__name__}: {e}")
        return
    report.check(True, "SAM transform (samtranslator)", f"{len(cfn.get('Resources', {}))} resources: " + ", ".join(f"{k} ({v['Type']})" for k, v in cfn["Resources"].items()))

    with tempfile.TemporaryDirectory(prefix="template-check-") as tmp:
        out = Path(tmp) / "cfn.json"
        out.write_text(json.dumps(cfn, indent=1))
        if keep:
            shutil.copyfile(out, keep)
        # cfn-lint exit status is a bit mask: 2 = errors, 4 = warnings, 8 = informational.
        proc = subprocess.run(
            [tool("cfn-lint"), "--regions", REGION, "--", str(out)],
            env=tool_env(), capture_output=True, text=True, timeout=300,
        )
        lint = (proc.stdout + proc.stderr).strip()
        report.check(
            proc.returncode & 3 == 0,
            "cfn-lint on the transformed template (errors fail, warnings shown)",
            f"exit {proc.returncode}",
        )
        for line in lint.splitlines()[:80]:
            report.info(line)

    print("\n== transformed template")
    check_raw(report, cfn)
    for label, overrides in SCENARIOS.items():
        try:
            check_scenario(report, copy.deepcopy(cfn), label, {**required, **overrides})
        except Exception as e:  # a template shape this script does not understand
            report.check(False, f"scenario {label!r} evaluated", f"{type(e).__name__}: {e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--template", action="append",
        help="SAM template; repeat for several (default: " + ", ".join(TEMPLATES) + ")",
    )
    ap.add_argument("--keep", help="also write the transformed CloudFormation JSON here (last template)")
    args = ap.parse_args()
    templates = [Path(t).resolve() for t in (args.template or [REPO / t for t in TEMPLATES])]
    report = Report()
    for template in templates:
        check_template(report, template, args.keep)
    print(f"\ntemplate_check: {report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
