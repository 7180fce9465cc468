"""Values from the landing zone that become part of a path or a file name, encoded in one place.

A region name comes from the landing zone's `region` table: untrusted. Written into a folder name as
it is, `X/../../ESCAPED` would put files outside the sink's root (and let two regions share a folder).
Every sink builds such names through this module:

- `partition_folder`: a Hive partition folder (`region=<value>`), the value escaped as Hive and Spark
  escape it (`%XX` for `/`, `\\`, `%`, `=`, `:`, `#`, `?`, `*`, quotes, brackets, `^`, `{`, DEL and the
  control characters): one path segment, whatever the value; readers of hive folders (pyarrow, DuckDB,
  Spark) decode it back. `partition_value` is the reverse.
- `file_part`: a piece of a file name of letters, digits and `-` only, every other byte `_XX`: two
  different values never give one name (`MIDDLE EAST` and `MIDDLE_EAST` stay apart).
"""

from __future__ import annotations

from urllib.parse import unquote

#: The characters Hive escapes in a partition value (FileUtils.escapePathName), besides controls.
_HIVE_ESCAPED = frozenset('"#%\'*/:=?\\\x7f{[]^')


def partition_folder(column: str, value: object) -> str:
    """`column=value` as one folder name, the value Hive-escaped (it can hold no `/` and no `..`)."""
    text = "" if value is None else str(value)
    escaped = "".join(f"%{ord(c):02X}" if c in _HIVE_ESCAPED or ord(c) < 0x20 else c for c in text)
    return f"{column}={escaped}"


def partition_value(segment: str, column: str) -> str | None:
    """The value of a `column=` folder name (decoded as hive readers decode it), or None for another."""
    prefix = f"{column}="
    return unquote(segment[len(prefix):]) if segment.startswith(prefix) else None


def file_part(value: object) -> str:
    """`value` as a piece of a file name: letters, digits and `-` kept, every other UTF-8 byte `_XX`
    (so the encoding is one-to-one)."""
    out = []
    for byte in str(value).encode():
        char = chr(byte)
        out.append(char if char.isascii() and (char.isalnum() or char == "-") else f"_{byte:02X}")
    return "".join(out)
