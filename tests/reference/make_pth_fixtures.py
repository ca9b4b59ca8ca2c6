#!/usr/bin/python3
"""Small torch.save files for tests/runtime/pth_test.cc, written by PyTorch 1.13.

Run with Debian's python:  /usr/bin/python3 tests/reference/make_pth_fixtures.py
Writes tests/reference/fixtures/pth/:
  NAME.pth              what torch.save wrote, for each NAME in SAVED below;
  expected.safetensors  the same tensors, contiguous, as "NAME.<dotted path>" (written by
                        safetensors_writer.py, so the C++ test compares against torch's values
                        without hard-coding them);
  legacy.pth            torch.save(..., _use_new_zipfile_serialization=False) (the only file that
                        changes from run to run: its storage keys are Python object ids);
  zip64.pth             the entries of a torch.save archive rewritten with ZIP64 records (APPNOTE
                        4.3.14/4.3.15/4.5.3) and data at odd offsets, checked here with zipfile and
                        torch.load; its expected values are "zip64.<name>";
  broken archives       bad_opcode, truncated, compressed, no_data_pkl, missing_storage,
                        short_storage (see BROKEN below).
"""
import argparse
import collections
import io
import os
import struct
import zipfile
import zlib

import torch

from safetensors_writer import save_safetensors

torch.manual_seed(0)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "pth")
os.makedirs(OUT, exist_ok=True)
EXPECTED = {}


def out(name):
    return os.path.join(OUT, name)


def expect(prefix, obj):
    """Records every tensor of obj under its dotted path, as load_pth names them."""
    if isinstance(obj, torch.Tensor):
        EXPECTED[prefix] = obj.detach().clone().contiguous()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            expect(f"{prefix}.{k}", v)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            expect(f"{prefix}.{i}", v)


def save(name, obj, via_buffer=False, **kwargs):
    """torch.save to NAME.pth; via a buffer the archive root is 'archive', else the file stem."""
    if via_buffer:
        buf = io.BytesIO()
        torch.save(obj, buf, **kwargs)
        with open(out(name + ".pth"), "wb") as f:
            f.write(buf.getvalue())
    else:
        torch.save(obj, out(name + ".pth"), **kwargs)
    expect(name, obj)


# --- files torch.save writes -------------------------------------------------------------------

save("dtypes", {
    "f32": torch.randn(3, 4),
    "f16": torch.randn(5).half(),
    "bf16": torch.randn(2, 3).bfloat16(),
    "f64": torch.randn(2, 2).double(),
    "i64": torch.tensor([-(2**40), -1, 0, 7, 2**50]),
    "i32": torch.tensor([-3, 0, 2**30], dtype=torch.int32),
    "u8": torch.tensor([0, 1, 255], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "empty": torch.zeros(0, 3),
    "scalar": torch.tensor(2.5),
})


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)
        self.register_buffer("steps", torch.tensor([1, 2, 3], dtype=torch.int64))


with torch.no_grad():
    module = Small()
    module.norm.weight.uniform_()
    module.norm.bias.uniform_()
save("module", module.state_dict(), via_buffer=True)  # an OrderedDict with _metadata, root 'archive'

# LAVIS style: {'model': state_dict, 'epoch': ..., 'config': ...}, with an optimizer's int keys.
save("checkpoint", {
    "model": collections.OrderedDict([
        ("Qformer.bert.embeddings.LayerNorm.weight", torch.randn(8)),
        ("Qformer.bert.encoder.layer.0.attention.self.query.weight", torch.randn(8, 8)),
        ("query_tokens", torch.randn(1, 4, 8)),
        ("ln_vision.weight", torch.randn(6).half()),
        ("ln_vision.bias", torch.randn(6).half()),
    ]),
    "optimizer": {"state": {0: {"step": 3, "exp_avg": torch.randn(2)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
    "epoch": 3,
    "config": {"lr": 0.1, "name": "x", "big": 2**40, "neg": -5, "mid": 70000, "flags": [True, None, 1.5]},
    "pair": (torch.arange(3), "not a tensor"),
})

base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
long_row = torch.randn(100)
save("shared", {
    "base": base,
    "view": base.view(6, 4),
    "transposed": base.t(),
    "slice": base[1:3, 2:5],
    "row": base[2],
    "tail": long_row[10:12],  # only a slice is saved, but torch writes the whole storage
})

save("parameters", {
    "weight": torch.nn.Parameter(torch.randn(2, 3)),
    "frozen": torch.nn.Parameter(torch.randn(3), requires_grad=False),
})

# More than 256 memo entries: LONG_BINPUT, and LONG_BINGET for a tensor object saved twice.
rows = torch.randn(80, 2)
many = {f"row{i}": rows[i] for i in range(80)}
many["alias"] = many["row79"]
save("long_memo", many)
# pickle_protocol=4 brings FRAME, MEMOIZE, SHORT_BINUNICODE and STACK_GLOBAL.
save("protocol4", {"a": torch.randn(2, 2), "b": {"c": torch.arange(3)}, "n": -(2**40)}, pickle_protocol=4)

torch.save({"w": torch.ones(2), "args": argparse.Namespace(lr=1)}, out("unsupported_global.pth"))
torch.save({"ok": torch.ones(2), "s": torch.tensor([1, 2], dtype=torch.int16)}, out("unsupported_dtype.pth"))
torch.save({"w": torch.ones(2)}, out("legacy.pth"), _use_new_zipfile_serialization=False)

# --- rewritten archives ------------------------------------------------------------------------


def entries_of(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(buf) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def rezip(name, entries, compress=()):
    """Writes entries (name, bytes) with Python's zipfile; names in `compress` are deflated."""
    with zipfile.ZipFile(out(name), "w") as z:
        for entry, data in entries:
            info = zipfile.ZipInfo(entry, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if entry in compress else zipfile.ZIP_STORED
            z.writestr(info, data)


small = entries_of({"w": torch.arange(4, dtype=torch.float32)})
assert [n for n, _ in small] == ["archive/data.pkl", "archive/data/0", "archive/version"], small
pkl = small[0][1]
assert pkl[2:3] == b"}", pkl[:8]  # PROTO 2, then EMPTY_DICT at offset 2
BROKEN = {
    # EXT1 (0x82, protocol 2's extension registry) in place of EMPTY_DICT at offset 2
    "bad_opcode.pth": [("archive/data.pkl", pkl[:2] + b"\x82" + pkl[3:])] + small[1:],
    "compressed.pth": small,
    "no_data_pkl.pth": small[1:],
    "missing_storage.pth": [small[0], small[2]],
    "short_storage.pth": [small[0], ("archive/data/0", small[1][1][:12]), small[2]],
}
for name, entries in BROKEN.items():
    rezip(name, entries, compress={"archive/data.pkl"} if name == "compressed.pth" else ())

with open(out("dtypes.pth"), "rb") as f:
    whole = f.read()
with open(out("truncated.pth"), "wb") as f:
    f.write(whole[: len(whole) * 3 // 5])


def write_zip64(path, entries):
    """A stored zip in which every size and offset goes through the ZIP64 records: the central
    headers hold 0xFFFFFFFF and a zip64 extra field (APPNOTE 4.5.3), the end record holds 0xFFFF
    / 0xFFFFFFFF and is preceded by a zip64 end record (4.3.14) and its locator (4.3.15). Each
    entry's local extra field is padded so its data starts at an odd offset: a reader must copy."""
    blob, central = bytearray(), bytearray()
    for name, data in entries:
        offset, raw, crc = len(blob), name.encode(), zlib.crc32(data)
        local_extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        unaligned = (offset + 30 + len(raw) + len(local_extra) + 4) % 8
        pad = (1 - unaligned) % 8
        local_extra += struct.pack("<HH", 0xCAFE, pad) + b"\0" * pad
        blob += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(raw),
                            len(local_extra)) + raw + local_extra
        assert len(blob) % 8 == 1
        blob += data
        extra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), offset)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                               len(raw), len(extra), 0, 0, 0, 0, 0xFFFFFFFF) + raw + extra
    cd_offset, n = len(blob), len(entries)
    blob += central
    record = len(blob)
    blob += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), cd_offset)
    blob += struct.pack("<IIQI", 0x07064B50, 0, record, 1)
    blob += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with open(path, "wb") as f:
        f.write(blob)


z64 = torch.randn(6)
zip64_obj = {"f32": z64, "view": z64[1:4], "i64": torch.tensor([5, -6, 2**40]), "bf16": torch.randn(3).bfloat16()}
write_zip64(out("zip64.pth"), entries_of(zip64_obj))
with zipfile.ZipFile(out("zip64.pth")) as z:  # an independent reader agrees the records are right
    assert z.testzip() is None
reloaded = torch.load(out("zip64.pth"))
assert all(torch.equal(reloaded[k], v) for k, v in zip64_obj.items())
expect("zip64", zip64_obj)

save_safetensors(out("expected.safetensors"), EXPECTED)
for name in sorted(os.listdir(OUT)):
    print(f"{os.path.getsize(out(name)):7d}  {name}")
