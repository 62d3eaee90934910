"""Hypothesis strategies for any protobuf message, read from its descriptor.

Values aim at the edges a client can send: empty, huge and control-character strings,
long and nested lists, extreme and non-finite numbers, enum numbers the schema does not
name, out-of-range timestamps and durations.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
MAX_DEPTH = 3

# Any Unicode scalar value except surrogates (protobuf strings must be valid UTF-8).
_any_character = st.characters(exclude_categories=["Cs"])
_control_character = st.characters(max_codepoint=0x1F) | st.sampled_from("\x7f\u200b\u202e\ufeff")
STRINGS: st.SearchStrategy[str] = st.one_of(
    st.just(""),
    st.text(_any_character, max_size=40),
    st.text(_control_character, min_size=1, max_size=40),
    st.sampled_from(["rag.answer", "gpt-4o-mini", "premium", "models/x", "../../etc", "%s%n"]),
    # Huge: past every documented length limit, well under the 8 MiB message limit.
    st.builds(
        lambda char, size: char * size, _any_character, st.sampled_from([129, 257, 2001, 70_000])
    ),
)


def _integers(bounds: tuple[int, int]) -> st.SearchStrategy[int]:
    low, high = bounds
    edges = sorted({low, high, 0, 1, -1 if low < 0 else 0, low + 1, high - 1})
    return st.sampled_from(edges) | st.integers(low, high)


_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_STRING: STRINGS,
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=64),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True, allow_infinity=True),
    FieldDescriptor.TYPE_INT32: _integers(INT32),
    FieldDescriptor.TYPE_SINT32: _integers(INT32),
    FieldDescriptor.TYPE_SFIXED32: _integers(INT32),
    FieldDescriptor.TYPE_INT64: _integers(INT64),
    FieldDescriptor.TYPE_SINT64: _integers(INT64),
    FieldDescriptor.TYPE_SFIXED64: _integers(INT64),
    FieldDescriptor.TYPE_UINT32: _integers(UINT32),
    FieldDescriptor.TYPE_FIXED32: _integers(UINT32),
    FieldDescriptor.TYPE_UINT64: _integers(UINT64),
    FieldDescriptor.TYPE_FIXED64: _integers(UINT64),
}


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_ENUM:
        # Open enums: any int32 is valid on the wire, named or not.
        assert field.enum_type is not None
        return st.sampled_from([v.number for v in field.enum_type.values]) | _integers(INT32)
    if field.message_type is not None:
        return messages(field.message_type, depth + 1)
    return _SCALARS[field.type]


MAX_LIST_BYTES = 2_000_000  # long lists stay well under the server's 8 MiB message limit


def _size(item: Any) -> int:
    return item.ByteSize() if isinstance(item, Message) else len(str(item))


def _repeated(element: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(element, max_size=8) | st.builds(
        lambda item, count: [item] * min(count, MAX_LIST_BYTES // max(1, _size(item))),
        element,
        st.integers(30, 1_100),
    )


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    message_type = field.message_type
    if message_type is not None and message_type.GetOptions().map_entry:
        key = _value(message_type.fields_by_name["key"], depth)
        value = _value(message_type.fields_by_name["value"], depth)
        return st.dictionaries(key, value, max_size=6) | st.builds(
            lambda count: {f"k{i}": "" for i in range(count)}, st.integers(30, 200)
        )
    if field.is_repeated:
        return _repeated(_value(field, depth))
    return _value(field, depth)


def _fill(message: Message, values: dict[str, Any]) -> Message:
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name) if field.type == FieldDescriptor.TYPE_MESSAGE else None
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entries = getattr(message, name)
            for key, item in value.items():
                if isinstance(item, Message):
                    entries[key].CopyFrom(item)
                else:
                    entries[key] = item
        elif field.is_repeated:
            getattr(message, name).extend(value)
        elif target is not None:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type with any subset of fields set to edge values."""
    message_class = message_factory.GetMessageClass(descriptor)
    if depth > MAX_DEPTH:
        return st.just(message_class())
    fields = {
        field.name: _field(field, depth)
        for field in descriptor.fields
        # One member of each oneof: setting several keeps only the last anyway.
        if field.containing_oneof is None or field is field.containing_oneof.fields[0]
    }
    optional = {name: strategy | st.none() for name, strategy in fields.items()}
    return st.fixed_dictionaries({}, optional=fields).map(
        lambda values: _fill(message_class(), values)
    ) | st.fixed_dictionaries(optional).map(
        lambda values: _fill(message_class(), {k: v for k, v in values.items() if v is not None})
    )
