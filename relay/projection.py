"""An answer built from the fields its serializer documents, and nothing else.

The relay does not copy an upstream's JSON and strip what is known to leak: any field an upstream
added tomorrow would reach the internet. It keeps only the fields of the route's documented
response serializer (`relay/serializers.py`, the same classes the OpenAPI schema is made from),
at every level. Running DRF serializers per answer would cost the hot path several times the
upstream call's own overhead (field objects, validation, `to_representation` per value), so each
serializer is compiled once, at import, into a plain function: a dict comprehension over the
allowed keys, nested projections where a field is itself an object or a list of objects.

Values are not converted or validated (the upstream's own types pass); only keys are chosen. A
documented key the upstream did not send stays absent (e.g. `image_base64` without
`include_image`). Where an object or a list of objects is documented and something else comes,
the answer holds null there (a list keeps only its objects): nothing undocumented can ride along
inside it. `DictField`/`ListField`/`JSONField` values are free-form by documentation and pass
whole; an `AlwaysNullField` is null whatever came.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.utils import PolymorphicProxySerializer
from rest_framework import serializers

from relay.serializers import AlwaysNullField

Projection = Callable[[Any], Any]


def projection(shape: Any) -> Projection:
    """The projection of a serializer (class or instance, `many=True` included) or of a
    `PolymorphicProxySerializer` (the variant named by its discriminator field)."""
    compiled = _nested(shape)
    if compiled is None:
        raise TypeError(f"{shape!r} documents no object: nothing to project")
    return compiled


def _nested(field: Any) -> Projection | None:
    """The projection of a field holding an object or a list of them; None for a value that is
    passed as it is (scalars, and the free-form `DictField`/`ListField`/`JSONField`)."""
    if isinstance(field, type) and issubclass(field, serializers.BaseSerializer):
        field = field()
    if isinstance(field, PolymorphicProxySerializer):
        return _variants(field)
    if isinstance(field, serializers.ListSerializer):
        return _many(projection(field.child))
    if isinstance(field, serializers.ListField):
        child = _nested(field.child)
        return None if child is None else _many(child)
    if isinstance(field, serializers.Serializer):
        return _object(field)
    if isinstance(field, AlwaysNullField):
        return _null
    return None


def _null(value: Any) -> None:
    return None


def _object(serializer: serializers.Serializer) -> Projection:
    plain: list[str] = []
    nested: list[tuple[str, Projection]] = []
    for name, field in serializer.fields.items():
        if field.source != name:
            raise TypeError(f"{type(serializer).__name__}.{name}: a renamed field is not projected")
        inner = _nested(field)
        if inner is None:
            plain.append(name)
        else:
            nested.append((name, inner))
    keys = tuple(plain)
    if not nested:

        def flat(value: Any) -> Any:
            if not isinstance(value, dict):
                return None
            return {key: value[key] for key in keys if key in value}

        return flat

    inner_fields = tuple(nested)

    def deep(value: Any) -> Any:
        if not isinstance(value, dict):
            return None
        result = {key: value[key] for key in keys if key in value}
        for key, project in inner_fields:
            if key in value:
                result[key] = project(value[key])
        return result

    return deep


def _many(project: Projection) -> Projection:
    def each(value: Any) -> Any:
        if not isinstance(value, list):
            return None
        return [project(item) for item in value if isinstance(item, dict)]

    return each


def _variants(proxy: PolymorphicProxySerializer) -> Projection:
    if not isinstance(proxy.serializers, dict):
        raise TypeError(f"{proxy.component_name}: name each variant (a dict of serializers)")
    discriminator = proxy.resource_type_field_name
    variants = {name: projection(shape) for name, shape in proxy.serializers.items()}

    def variant(value: Any) -> Any:
        if not isinstance(value, dict):
            return None
        project = variants.get(value.get(discriminator))
        return None if project is None else project(value)

    return variant
