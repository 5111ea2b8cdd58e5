"""Field types that render well in both Prefect UIs (the Vue "V1" and the React "V2" block forms).

Why these exist: pydantic's schema for `Optional[str]` is `anyOf [string, null]`, which both UIs
draw as "string | null" tabs; a one-value `Literal` discriminator is drawn as an editable field.
The types below keep the Python API (`None` means "use the default", `kind` still discriminates
the provider union) while the JSON schema the UI sees is a plain text or password input.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import BeforeValidator, SecretStr, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema


def _blank_to_none(value: Any) -> Any:
    """An emptied text input comes back as "" (or not at all): both mean "not set"."""
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, SecretStr) and not value.get_secret_value().strip():
        return None
    return value


OptionalText = Annotated[Optional[str], BeforeValidator(_blank_to_none), WithJsonSchema({"type": "string"})]
"""An optional string shown as one text input; empty means None (the documented default)."""

OptionalCount = Annotated[Optional[int], BeforeValidator(_blank_to_none), WithJsonSchema({"type": "integer", "minimum": 0})]
"""An optional whole number shown as one number input; empty means None."""

OptionalSecret = Annotated[
    Optional[SecretStr],
    BeforeValidator(_blank_to_none),
    WithJsonSchema({"type": "string", "format": "password", "writeOnly": True}),
]
"""An optional one-line secret: a password input where the UI has one (V2); masked by the API."""

OptionalSecretText = Annotated[
    Optional[SecretStr],
    BeforeValidator(_blank_to_none),
    WithJsonSchema({"type": "string", "writeOnly": True}),
]
"""An optional multi-line secret (a kubeconfig): a text area, since a password input drops the
newlines; still a secret field, so the API masks it when the form is read back."""

Hidden = SkipJsonSchema
"""A field the UI never shows (the provider `kind`): it is not in the form, nor in saved data."""
