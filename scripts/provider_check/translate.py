"""The offline plan as a Terraform JSON configuration for the real AWS provider.

pulumi-aws is bridged from terraform-provider-aws: `pulumi preview` hands every input to that
provider's validators. This module rewrites the resources the program registers under the mock
engine into `main.tf.json` so that the same provider, run by `terraform validate/plan`, judges
them. What it does, and why:

* Type tokens become Terraform types by pulumi-aws's naming rule, checked against the provider
  schema (two exceptions pulumi-aws spells differently are listed).
* camelCase properties become snake_case; list blocks get the singular name Terraform uses
  (`defaultActions` -> `default_action`); blocks pulumi-aws flattens to one object become
  one-element lists. The schema decides, a few pulumi-aws renames are listed.
* Where the program sets no name, pulumi-aws's auto-name (`<logical name>-<7 hex>`) is applied:
  that is the name the provider and AWS will see.
* A value equal to an output of a resource the input depends on becomes a reference
  (`${aws_vpc.network-vpc.id}`): unknown at plan time, as in a real preview.
* Nothing is dropped silently: an input the schema does not know is a problem of the check.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from harness.mock_engine import Plan, PlannedResource
from scripts.provider_check.schema import Block, ProviderSchema

Path = tuple[Any, ...]

# pulumi-aws tokens whose Terraform type does not follow the module/name rule (provider/resources.go).
TYPE_EXCEPTIONS = {
    "aws:lb/loadBalancer:LoadBalancer": "aws_lb",
    "aws:s3/bucketObjectv2:BucketObjectv2": "aws_s3_object",
}
# Modules whose Terraform types carry another prefix than the module name.
MODULE_PREFIX = {"ec2": "", "rds": "db_"}

# Properties pulumi-aws names differently from Terraform (top level only).
PROPERTY_RENAMES: dict[str, dict[str, str]] = {
    "aws_lambda_function": {"name": "function_name", "code": "filename"},
    "aws_lambda_permission": {"function": "function_name"},
    "aws_cloudwatch_metric_alarm": {"name": "alarm_name"},
}

# Where pulumi-aws 7 (built on terraform-provider-aws v6) and the mirrored v5 provider differ for
# a property: the property is left out of the translation and the difference is reported as
# "not judged" in the output; never an error, never silent. Keys: Terraform type or "*".
V6_DIFFERENCES: dict[str, dict[str, str]] = {
    "*": {"region": "v6 adds a per-resource region; v5 has none"},
    "aws_lambda_function": {"code_sha256": "an input in v6 (update trigger); computed-only in v5"},
}


@dataclass(frozen=True)
class AutoName:
    """How pulumi-aws names a resource the program leaves unnamed (provider/resources.go)."""

    field: str = "name"
    max_length: int = 255
    lowercase: bool = False
    conflicts: tuple[str, ...] = ("namePrefix",)


AUTONAMES: dict[str, AutoName] = {
    "aws_s3_bucket": AutoName("bucket", 63, lowercase=True, conflicts=("bucketPrefix",)),
    "aws_db_instance": AutoName("identifier", 255, conflicts=("identifierPrefix",)),
    "aws_elasticache_replication_group": AutoName("replicationGroupId", 40, lowercase=True, conflicts=()),
    "aws_lb": AutoName("name", 32),
    "aws_lb_target_group": AutoName("name", 32),
    "aws_lambda_function": AutoName("name", 64),
}
AUTONAME_RANDOM_HEX = 7


@dataclass(frozen=True)
class Problem:
    """Something the translation could not carry over faithfully: the check fails on it."""

    resource_type: str
    resource_name: str
    property_path: str
    message: str
    # True when pulumi-aws or the provider would refuse the input (e.g. a name too long);
    # False when the translation itself fell short (a property it cannot carry over).
    refused: bool = False

    def line(self) -> str:
        where = f".{self.property_path}" if self.property_path else ""
        return f"{self.resource_type} {self.resource_name}{where}: {self.message}"


@dataclass(frozen=True)
class Origin:
    """Where a Terraform resource came from."""

    resource: PlannedResource
    paths: dict[Path, str]  # Terraform attribute path -> Pulumi property path

    def pulumi_path(self, tf_path: Path) -> str:
        """The Pulumi property path for the longest known prefix of a Terraform path."""
        for length in range(len(tf_path), 0, -1):
            found = self.paths.get(tuple(tf_path[:length]))
            if found is not None:
                return found
        return ""


@dataclass
class Translation:
    config: dict[str, Any]
    origins: dict[str, Origin] = field(default_factory=dict)  # "aws_vpc.label" -> origin
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    autonamed: dict[str, str] = field(default_factory=dict)  # address -> generated name

    @property
    def resource_count(self) -> int:
        return sum(len(v) for v in self.config.get("resource", {}).values())


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def terraform_type(token: str, schema: ProviderSchema) -> str:
    if token in TYPE_EXCEPTIONS:
        return TYPE_EXCEPTIONS[token]
    _, module_path, type_name = token.split(":")
    module = module_path.split("/")[0]
    candidates = dict.fromkeys([
        f"aws_{MODULE_PREFIX.get(module, module + '_')}{snake(type_name)}",
        f"aws_{module}_{snake(type_name)}",
    ])
    found = [c for c in candidates if schema.has_resource(c)]
    if len(found) != 1:
        raise LookupError(f"no single Terraform type for {token} (tried {', '.join(candidates)}; found {found})")
    return found[0]


def label(name: str) -> str:
    """A Terraform resource label for a Pulumi logical name."""
    text = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    return text if re.match(r"[A-Za-z_]", text) else f"r_{text}"


def auto_name(stack: str, logical_name: str, rule: AutoName) -> tuple[str, Optional[str]]:
    """(name, problem): pulumi-aws's `<logical name>-<7 hex>`, refused when it would not fit."""
    suffix = hashlib.sha256(f"{stack}/{logical_name}".encode()).hexdigest()[:AUTONAME_RANDOM_HEX]
    name = f"{logical_name}-{suffix}"
    if rule.lowercase:
        name = name.lower()
    if len(name) > rule.max_length:
        return name, (f"the auto-name {name!r} is {len(name)} characters, over the {rule.max_length} "
                      f"pulumi-aws allows for {rule.field}: set {rule.field} explicitly or shorten the logical name")
    return name, None


class _References:
    """Output values of translated resources, to turn matching inputs into references."""

    MIN_LENGTH = 6

    def __init__(self) -> None:
        self._by_value: dict[str, list[tuple[str, str, str]]] = {}  # value -> (name, address, attr)

    def add(self, resource: PlannedResource, address: str, block: Block) -> None:
        pairs: list[tuple[str, Any]] = [("id", resource.id)]
        if block.attribute("arn"):
            pairs.append(("arn", resource.outputs.get("arn")))
        for key, value in resource.outputs.items():
            attr = block.attribute(snake(key))
            if attr and attr.get("computed") and key not in ("arn", "id", "tags", "tagsAll"):
                pairs.append((snake(key), value))
        for attr_name, value in pairs:
            if isinstance(value, str) and len(value) >= self.MIN_LENGTH:
                self._by_value.setdefault(value, []).append((resource.name, address, attr_name))

    def lookup(self, value: str, depends_on: Iterable[str], own_address: str) -> Optional[str]:
        allowed = set(depends_on)
        found = [(a, attr) for n, a, attr in self._by_value.get(value, []) if n in allowed and a != own_address]
        addresses = {a for a, _ in found}
        if len(addresses) != 1:
            return None
        rank = {"id": 0, "arn": 1}
        address, attr = min(found, key=lambda f: rank.get(f[1], 2))
        return f"${{{address}.{attr}}}"


class Translator:
    def __init__(self, plan: Plan, schema: ProviderSchema):
        self.plan = plan
        self.schema = schema
        self.translation = Translation(config={})
        self._references = _References()
        self._notes: set[str] = set()

    # --- whole plan ------------------------------------------------------------------
    def run(self) -> Translation:
        resources = [r for r in self.plan.resources if r.custom and r.type.startswith("aws:")]
        typed: list[tuple[PlannedResource, str, str]] = []
        used: dict[str, set[str]] = {}
        for resource in resources:
            try:
                tf_type = terraform_type(resource.type, self.schema)
            except LookupError as err:
                self._problem(resource, "", str(err))
                continue
            name = label(resource.name)
            while name in used.setdefault(tf_type, set()):
                name += "_"
            used[tf_type].add(name)
            address = f"{tf_type}.{name}"
            typed.append((resource, tf_type, address))
            self._references.add(resource, address, self.schema.resource(tf_type))
        body: dict[str, dict[str, Any]] = {}
        for resource, tf_type, address in typed:
            body.setdefault(tf_type, {})[address.split(".", 1)[1]] = self._resource(resource, tf_type, address)
        self.translation.config = {
            "terraform": {"required_providers": {"aws": {"source": "hashicorp/aws", "version": self.schema.version}}},
            "provider": {"aws": self._provider()},
            "resource": body,
        }
        self.translation.notes = sorted(self._notes)
        return self.translation

    def _provider(self) -> dict[str, Any]:
        """The program's provider settings, and nothing that calls AWS (the fake credentials come
        from the environment terraform runs in, never from the configuration)."""
        settings: dict[str, Any] = {
            "region": "eu-central-1",
            "skip_credentials_validation": True, "skip_requesting_account_id": True,
            "skip_metadata_api_check": True, "skip_region_validation": True, "max_retries": 1,
        }
        providers = [r for r in self.plan.resources if r.type == "pulumi:providers:aws"]
        if providers:
            inputs = providers[0].revealed_inputs
            settings["region"] = inputs.get("region", settings["region"])
            default_tags = inputs.get("defaultTags") or {}
            if isinstance(default_tags, str):  # provider inputs arrive JSON-encoded
                default_tags = json.loads(default_tags)
            tags = default_tags.get("tags")
            if tags:
                settings["default_tags"] = [{"tags": tags}]
        return settings

    # --- one resource ------------------------------------------------------------------
    def _resource(self, resource: PlannedResource, tf_type: str, address: str) -> dict[str, Any]:
        block = self.schema.resource(tf_type)
        inputs = dict(resource.revealed_inputs)
        self._apply_autoname(resource, tf_type, address, block, inputs)
        paths: dict[Path, str] = {}
        self.translation.origins[address] = Origin(resource, paths)
        context = _Context(resource, address, paths)
        return self._block(block, inputs, (), "", context, renames=PROPERTY_RENAMES.get(tf_type, {}))

    def _apply_autoname(self, resource: PlannedResource, tf_type: str, address: str, block: Block,
                        inputs: dict[str, Any]) -> None:
        rule = AUTONAMES.get(tf_type, AutoName())
        tf_field = PROPERTY_RENAMES.get(tf_type, {}).get(rule.field, snake(rule.field))
        if tf_type not in AUTONAMES and not block.settable(tf_field):
            return
        if inputs.get(rule.field) or any(inputs.get(c) for c in rule.conflicts):
            return
        name, problem = auto_name(self.plan.stack, resource.name, rule)
        inputs[rule.field] = name
        self.translation.autonamed[address] = name
        if problem:
            self._problem(resource, rule.field, problem, refused=True)

    def _block(self, block: Block, values: dict[str, Any], tf_path: Path, pulumi_path: str,
               context: _Context, renames: Optional[dict[str, str]] = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            if key.startswith("__") or value is None:
                continue
            here = f"{pulumi_path}.{key}" if pulumi_path else key
            tf_name = self._tf_name(block, key, renames or {})
            if self._v6_difference(context, tf_path, tf_name or snake(key)):
                continue
            if tf_name is None:
                self._problem(context.resource, here, f"no attribute or block {snake(key)!r} in the provider schema "
                                                      f"for {context.tf_type}")
                continue
            if not block.settable(tf_name):
                self._problem(context.resource, here, f"{tf_name!r} is computed-only in the provider schema "
                                                      f"for {context.tf_type}: the provider would refuse a value")
                continue
            context.paths[(*tf_path, tf_name)] = here
            if tf_name in block.blocks:
                translated = self._nested_block(block, tf_name, value, (*tf_path, tf_name), here, context)
            else:
                translated = self._value(block.attributes[tf_name], value, (*tf_path, tf_name), here, context)
            out[tf_name] = translated
        return out

    def _v6_difference(self, context: _Context, tf_path: Path, tf_name: str) -> bool:
        if tf_path:
            return False
        for scope in ("*", context.tf_type):
            reason = V6_DIFFERENCES.get(scope, {}).get(tf_name)
            if reason is not None:
                self._notes.add(f"{context.tf_type}.{tf_name}: {reason}")
                return True
        return False

    @staticmethod
    def _tf_name(block: Block, key: str, renames: dict[str, str]) -> Optional[str]:
        if key in renames:
            return renames[key]
        name = snake(key)
        if block.knows(name):
            return name
        singulars = [name[:-3] + "y"] if name.endswith("ies") else []
        singulars += [name[:-2]] if name.endswith("es") else []
        singulars += [name[:-1]] if name.endswith("s") else []
        return next((s for s in singulars if s in block.blocks or _is_collection(block.attribute(s))), None)

    def _nested_block(self, parent: Block, tf_name: str, value: Any, tf_path: Path, pulumi_path: str,
                      context: _Context) -> Any:
        nested = parent.nested(tf_name)
        assert nested is not None
        mode, block = nested
        if mode == "single":
            return self._block(block, value, tf_path, pulumi_path, context)
        if mode == "map":
            return {k: self._block(block, v, (*tf_path, k), f"{pulumi_path}.{k}", context) for k, v in value.items()}
        items = value if isinstance(value, list) else [value]
        flattened = not isinstance(value, list)
        return [self._block(block, item, (*tf_path, i),
                            pulumi_path if flattened else f"{pulumi_path}[{i}]", context)
                for i, item in enumerate(items)]

    def _value(self, attribute: dict[str, Any], value: Any, tf_path: Path, pulumi_path: str,
               context: _Context) -> Any:
        if isinstance(value, dict) and ("asset" in value or "archive" in value):
            return self._asset(value, context)
        if "nested_type" in attribute:
            nested = attribute["nested_type"]
            block = Block({"attributes": nested.get("attributes", {})})
            if nested.get("nesting_mode") == "single":
                return self._block(block, value, tf_path, pulumi_path, context)
            items = value if isinstance(value, list) else [value]
            return [self._block(block, item, (*tf_path, i), f"{pulumi_path}[{i}]", context)
                    for i, item in enumerate(items)]
        return self._typed(attribute.get("type"), value, context, pulumi_path)

    def _typed(self, cty: Any, value: Any, context: _Context, path: str = "") -> Any:
        if isinstance(value, str):
            reference = self._references.lookup(value, context.resource.depends_on, context.address)
            return reference or value
        if isinstance(cty, list) and cty[0] in ("list", "set") and isinstance(value, list):
            return [self._typed(cty[1], v, context, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(cty, list) and cty[0] == "map" and isinstance(value, dict):
            return {k: self._typed(cty[1], v, context, f"{path}.{k}") for k, v in value.items()}
        if isinstance(cty, list) and cty[0] == "object" and isinstance(value, dict):
            return self._object(cty[1], value, context, path)
        return value

    def _object(self, fields: dict[str, Any], value: dict[str, Any], context: _Context, path: str) -> dict[str, Any]:
        """An object-typed attribute: Terraform's conversion would drop a key its type lacks
        without a word, so such a key is a problem of the check, as at the top level."""
        out = {}
        for key, item in value.items():
            if item is None:
                continue
            if snake(key) not in fields:
                self._problem(context.resource, f"{path}.{key}", f"no attribute {snake(key)!r} in the object type "
                                                                 f"of {path} for {context.tf_type}")
                continue
            out[snake(key)] = self._typed(fields[snake(key)], item, context, f"{path}.{key}")
        return out

    @staticmethod
    def _asset(value: dict[str, Any], context: _Context) -> Any:
        if "text" in value:
            return value["text"]
        source = value.get("asset") or value.get("archive")
        return source if isinstance(source, str) else f"{context.resource.name}.zip"

    def _problem(self, resource: PlannedResource, path: str, message: str, refused: bool = False) -> None:
        self.translation.problems.append(Problem(resource.type, resource.name, path, message, refused))


def _is_collection(attribute: Optional[dict[str, Any]]) -> bool:
    """A list or set attribute: pulumi-aws gives those a plural name where Terraform's is singular."""
    if attribute is None:
        return False
    cty = attribute.get("type")
    nesting = (attribute.get("nested_type") or {}).get("nesting_mode")
    return (isinstance(cty, list) and cty[0] in ("list", "set")) or nesting in ("list", "set")


@dataclass
class _Context:
    resource: PlannedResource
    address: str
    paths: dict[Path, str]

    @property
    def tf_type(self) -> str:
        return self.address.split(".", 1)[0]


def translate(plan: Plan, schema: ProviderSchema) -> Translation:
    return Translator(plan, schema).run()
