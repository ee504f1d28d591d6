"""Reads parquet files with pyarrow, independently of the Rust writer, and prints what it found
as one JSON object, for connectors/tests/export.rs.

    python3 read_parquet.py FILE...   -> {"files": [{"path", "schema", "num_rows", "codecs",
                                                      "row_groups", "rows"}, ...]}
    python3 read_parquet.py --dir DIR -> {"num_rows": N, "files": [...]} as pyarrow.dataset sees
                                         DIR (it skips names starting with "." or "_")

A schema is a list of fields {"name", "nullable", "type"}, where "type" is "string", "int64", ...,
{"list": field} or {"struct": [field, ...]}.
"""

import json
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def describe_type(t):
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return {"list": describe_field(t.value_field)}
    if pa.types.is_struct(t):
        return {"struct": [describe_field(t.field(i)) for i in range(t.num_fields)]}
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return str(t)


def describe_field(f):
    return {"name": f.name, "nullable": f.nullable, "type": describe_type(f.type)}


def describe_file(path):
    pf = pq.ParquetFile(path)
    meta = pf.metadata
    codecs = sorted(
        {
            meta.row_group(g).column(c).compression
            for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)
        }
    )
    table = pf.read()
    return {
        "path": path,
        "schema": [describe_field(f) for f in table.schema],
        "num_rows": table.num_rows,
        "row_groups": meta.num_row_groups,
        "codecs": codecs,
        "rows": table.to_pylist(),
    }


def main(args):
    if args and args[0] == "--dir":
        dataset = ds.dataset(args[1], format="parquet")
        out = {"num_rows": dataset.count_rows(), "files": sorted(dataset.files)}
    else:
        out = {"files": [describe_file(p) for p in args]}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
