"""Nested blocks that both Prefect UIs show and keep: saved on their own, referenced, self-stamped.

A ClusterConfig holds a provider and a container block. The Prefect UIs treat those fields as
block pickers, and each UI keeps only one shape of nested data:

- the Vue UI (V1, `/blocks/...`) reads the parent's `block_document_references`: it shows and
  keeps a *referenced* block, and drops an embedded one on save;
- the React UI (V2, `/v2/blocks/...`, the default at `/`) reads the nested value itself: it shows
  a picked block only when that value carries `{"$ref": {"block_document_id": ...}}`, else it
  saves the value back as an embedded copy, with secrets replaced by the API's mask.

So every provider and container document that our code saves is (1) its own named document,
referenced by the ClusterConfig, and (2) stamped with a `$ref` to itself in its own data. The
API resolves a reference by inlining the referenced data, stamp included, so V2 sees a picked
block and sends the reference back on save, and the server (which turns any nested dict with a
`$ref` into a reference) keeps the link and the real secrets.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Iterable, Optional
from uuid import UUID

log = logging.getLogger("prefect_dockerparallel.blocks")

SELF_REF = "$ref"
MASK = "*" * 8  # what the Prefect API shows in place of a secret value


def stamp_of(document_id: UUID | str) -> dict[str, Any]:
    return {SELF_REF: {"block_document_id": str(document_id)}}


def is_stamped(data: Any, document_id: UUID | str) -> bool:
    ref = data.get(SELF_REF) if isinstance(data, dict) else None
    return isinstance(ref, dict) and str(ref.get("block_document_id")) == str(document_id)


def without_stamp(data: Any) -> Any:
    if isinstance(data, dict) and SELF_REF in data:
        return {k: v for k, v in data.items() if k != SELF_REF}
    return data


def _update(document_id: UUID | str) -> Any:
    from prefect.client.schemas.actions import BlockDocumentUpdate

    return BlockDocumentUpdate(data=stamp_of(document_id), merge_existing_data=True)


def stamp_sync(document_ids: Iterable[UUID | str]) -> None:
    """Write the self-reference into each document (a merge: nothing else changes)."""
    from prefect.client.orchestration import get_client

    ids = list(document_ids)
    if not ids:
        return
    with get_client(sync_client=True) as client:
        for document_id in ids:
            client.update_block_document(UUID(str(document_id)), _update(document_id))


async def stamp_async(document_ids: Iterable[UUID | str]) -> None:
    from prefect.client.orchestration import get_client

    ids = list(document_ids)
    if not ids:
        return
    async with get_client() as client:
        for document_id in ids:
            await client.update_block_document(UUID(str(document_id)), _update(document_id))


class SelfReferencing:
    """Mixin (before `Block`) for blocks nested in a ClusterConfig: every save stamps the
    document with a reference to itself; loading ignores the stamp."""

    @classmethod
    def _from_block_document(cls, block_document: Any) -> Any:
        block_document = block_document.model_copy(update={"data": without_stamp(block_document.data)})
        return super()._from_block_document(block_document)  # type: ignore[misc]

    def _save_sync(self, name: Optional[str] = None, is_anonymous: bool = False, overwrite: bool = False) -> UUID:
        document_id = super()._save_sync(name=name, is_anonymous=is_anonymous, overwrite=overwrite)  # type: ignore[misc]
        stamp_sync([document_id])
        return document_id

    async def _save(
        self, name: Optional[str] = None, is_anonymous: bool = False, overwrite: bool = False, client: Any = None
    ) -> UUID:
        document_id = await super()._save(  # type: ignore[misc]
            name=name, is_anonymous=is_anonymous, overwrite=overwrite, client=client
        )
        await stamp_async([document_id])
        return document_id


def masked_secret_fields(block: Any, prefix: str) -> list[str]:
    """Secret fields of `block` whose value is the API's mask: the real value was lost when a UI
    saved a masked copy of a referenced block into its parent."""
    found = []
    for name in type(block).model_fields:
        value = getattr(block, name, None)
        if hasattr(value, "get_secret_value") and value.get_secret_value() == MASK:
            found.append(f"{prefix}.{name}")
    return found


_NAME_IN_USE = (
    "You are attempting to save values with a name that is already in use for this block type. "
    "If you would like to overwrite the values that are saved, then save with `overwrite=True`."
)


class ReferencingParent:
    """Mixin (before `Block`) for a block whose `_nested_fields` hold blocks: saving it saves
    each nested block as its own named document first, so the parent stores references.

    A nested block that was loaded or saved before is written back to its own document (an
    edit of `config.provider` is not lost); a new one becomes `<parent name>-<field>`."""

    _nested_fields: ClassVar[tuple[str, ...]] = ()

    def _nested_plan(self, name: Optional[str], overwrite: bool) -> list[tuple[str, str, bool]]:
        name = name or self._block_document_name  # type: ignore[attr-defined]
        if not name:
            return []  # Prefect's own save reports the missing name
        plan = []
        for field in self._nested_fields:
            nested = getattr(self, field)
            if nested._block_document_name and not nested._is_anonymous:
                plan.append((field, nested._block_document_name, True))
            else:
                plan.append((field, f"{name}-{field}", overwrite))
        return plan

    def _nested_exists(self, field: str, nested_name: str) -> ValueError:
        cls = type(getattr(self, field))
        return ValueError(
            f"{type(self).__name__}: its {field} would be saved as the {cls.get_block_type_name()} block "
            f"{nested_name!r}, which already exists: save with overwrite=True, or pass a loaded block "
            f"({cls.__name__}.load({nested_name!r})) to reference it"
        )

    def _save_sync(self, name: Optional[str] = None, is_anonymous: bool = False, overwrite: bool = False) -> UUID:
        if not is_anonymous:
            from prefect.client.orchestration import get_client
            from prefect.exceptions import ObjectNotFound

            plan = self._nested_plan(name, overwrite)
            if plan and not overwrite:  # fail before saving nested blocks: no orphans left behind
                with get_client(sync_client=True) as client:
                    try:
                        client.read_block_document_by_name(name or self._block_document_name, self.get_block_type_slug())  # type: ignore[attr-defined]
                        raise ValueError(_NAME_IN_USE)
                    except ObjectNotFound:
                        pass
            for field, nested_name, nested_overwrite in plan:
                try:
                    getattr(self, field)._save_sync(name=nested_name, overwrite=nested_overwrite)
                except ValueError:
                    raise self._nested_exists(field, nested_name) from None
        return super()._save_sync(name=name, is_anonymous=is_anonymous, overwrite=overwrite)  # type: ignore[misc]

    async def _save(
        self, name: Optional[str] = None, is_anonymous: bool = False, overwrite: bool = False, client: Any = None
    ) -> UUID:
        if not is_anonymous:
            from prefect.client.orchestration import get_client
            from prefect.exceptions import ObjectNotFound

            plan = self._nested_plan(name, overwrite)
            if plan and not overwrite:
                async with get_client() as api:
                    try:
                        await api.read_block_document_by_name(name or self._block_document_name, self.get_block_type_slug())  # type: ignore[attr-defined]
                        raise ValueError(_NAME_IN_USE)
                    except ObjectNotFound:
                        pass
            for field, nested_name, nested_overwrite in plan:
                try:
                    await getattr(self, field)._save(name=nested_name, overwrite=nested_overwrite, client=client)
                except ValueError:
                    raise self._nested_exists(field, nested_name) from None
        return await super()._save(  # type: ignore[misc]
            name=name, is_anonymous=is_anonymous, overwrite=overwrite, client=client
        )
