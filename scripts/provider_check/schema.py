"""The Terraform AWS provider's own schema (`terraform providers schema -json`), as lookups.

The translation asks it, not a hand-kept list, which resource types exist, which names are
attributes or nested blocks, how blocks nest, and which attributes are computed-only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

AWS_PROVIDER = "registry.terraform.io/hashicorp/aws"


@dataclass(frozen=True)
class Block:
    """One schema block: a resource's top level or a nested block."""

    raw: dict[str, Any]

    @property
    def attributes(self) -> dict[str, dict[str, Any]]:
        return self.raw.get("attributes") or {}

    @property
    def blocks(self) -> dict[str, dict[str, Any]]:
        return self.raw.get("block_types") or {}

    def attribute(self, name: str) -> Optional[dict[str, Any]]:
        return self.attributes.get(name)

    def nested(self, name: str) -> Optional[tuple[str, Block]]:
        """(nesting mode, block) of a nested block, or None."""
        spec = self.blocks.get(name)
        if spec is None:
            return None
        return spec["nesting_mode"], Block(spec["block"])

    def settable(self, name: str) -> bool:
        """True for an argument a configuration may set (not a computed-only attribute)."""
        if name in self.blocks:
            return True
        attribute = self.attributes.get(name)
        return bool(attribute and (attribute.get("optional") or attribute.get("required")))

    def knows(self, name: str) -> bool:
        return name in self.attributes or name in self.blocks


@dataclass(frozen=True)
class ProviderSchema:
    version: str
    resources: dict[str, dict[str, Any]]
    provider: Block

    @classmethod
    def from_json(cls, document: dict[str, Any], version: str) -> ProviderSchema:
        schemas = document.get("provider_schemas", {})
        aws = schemas.get(AWS_PROVIDER)
        if aws is None:
            raise ValueError(f"the schema document has no {AWS_PROVIDER} provider (found {sorted(schemas)})")
        return cls(version=version, resources=aws.get("resource_schemas", {}),
                   provider=Block(aws.get("provider", {}).get("block", {})))

    def has_resource(self, tf_type: str) -> bool:
        return tf_type in self.resources

    def resource(self, tf_type: str) -> Block:
        return Block(self.resources[tf_type]["block"])
