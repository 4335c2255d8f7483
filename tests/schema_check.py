"""The part of JSON Schema (2020-12) that recsvc's /openapi.json uses, as a checker for tests.

``problems(value, schema, document)`` lists where ``value`` breaks
``schema`` (empty when it conforms), resolving ``$ref`` inside
``document``. A keyword the checker does not know fails loudly, so the
document cannot grow a constraint that the tests silently skip.
"""

from __future__ import annotations

import re

KNOWN = {"$ref", "type", "enum", "const", "required", "properties", "additionalProperties", "items", "oneOf",
         "pattern", "minLength", "maxLength", "minimum", "maximum", "format", "description", "default",
         "contentMediaType"}
TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def resolve(schema: dict, document: dict) -> dict:
    while "$ref" in schema:
        node = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def problems(value, schema: dict, document: dict, where: str = "$") -> list[str]:
    schema = resolve(schema, document)
    unknown = set(schema) - KNOWN
    if unknown:
        raise ValueError(f"{where}: the checker does not know {sorted(unknown)}")
    found: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(TYPES[name](value) for name in types):
            return [f"{where}: {value!r} is not of type {types}"]
    if "const" in schema and value != schema["const"]:
        found.append(f"{where}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "oneOf" in schema:
        matching = [option for option in schema["oneOf"] if not problems(value, option, document, where)]
        if len(matching) != 1:
            found.append(f"{where}: {value!r} matches {len(matching)} of oneOf, not exactly 1")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            found.append(f"{where}: {value!r} does not match {schema['pattern']!r}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            found.append(f"{where}: length {len(value)} outside {schema.get('minLength')}..{schema.get('maxLength')}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            found.append(f"{where}: {value} outside {schema.get('minimum')}..{schema.get('maximum')}")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                found.append(f"{where}: {name!r} is missing")
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                found += problems(item, properties[name], document, f"{where}.{name}")
            elif schema.get("additionalProperties", True) is False:
                found.append(f"{where}: {name!r} is not allowed")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += problems(item, schema["items"], document, f"{where}[{index}]")
    return found
